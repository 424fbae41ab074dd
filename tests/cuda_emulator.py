"""A NumPy stand-in for CuPy and for tinynorm.kernels' CUDA kernels, for tests without a GPU.

* ``EmulatedGPUArray``: a NumPy array that tinynorm.backend takes for a CuPy array (its
  type's module name starts with "cupy");
* ``EMULATED_CUPY``: the CuPy module as tinynorm sees it: ``RawModule`` emulated, ``empty``
  poisoned with NaN (an element a kernel fails to write shows up), any other name NumPy's;
* ``EmulatedModule`` / ``EmulatedKernel``: each kernel reads its parameter list off the CUDA
  source and checks every launch against it (pointer dtypes, exact scalar types, outputs
  aliasing nothing, block sizes), then does what the CUDA code does, in NumPy, in the same
  reduction order (thread strides, warp butterflies, row chunks and strands).

What this cannot check is the CUDA C itself: tests/test_gpu.py compiles it with NVRTC and,
on a GPU, compares it with the same reference.
"""
import re
import types

import numpy as np

from tinynorm import kernels
from tinynorm.kernels import _cuda


class EmulatedGPUArray(np.ndarray):
    """A NumPy array that tinynorm.backend takes for a CuPy array (its type's module is in
    the ``cupy`` package)."""

    device = types.SimpleNamespace(id=0)

    def get(self):
        return np.asarray(self).copy()


EmulatedGPUArray.__module__ = "cupy._emulated"


def on_gpu(a):
    return np.asarray(a).view(EmulatedGPUArray)


def _poisoned(shape, dtype=np.float64):
    """A fresh array full of NaN that owns its memory (base None), as cupy.empty's does."""
    a = EmulatedGPUArray(shape, dtype)
    a[...] = np.nan
    return a


def _butterfly(v, op):
    """__shfl_xor_sync over the last axis (32 lanes): every lane ends with the same value."""
    lanes = np.arange(32)
    for offset in (16, 8, 4, 2, 1):
        v = op(v, v[..., lanes ^ offset])
    return v


def block_reduce(values, threads, op, identity):
    """(rows, n) -> (rows,) in block_reduce's order (_cuda.COMMON) with ``threads`` a block."""
    rows, n = values.shape
    steps = -(-n // threads)
    padded = np.full((rows, steps * threads), identity, values.dtype)
    padded[:, :n] = values
    acc = np.full((rows, threads), identity, values.dtype)
    for k in range(steps):  # thread t folds columns t, t + threads, ... in order
        acc = op(acc, padded[:, k * threads:(k + 1) * threads])
    per_warp = _butterfly(acc.reshape(rows, threads // 32, 32), op)[..., 0]
    scratch = np.full((rows, 32), identity, values.dtype)
    scratch[:, :threads // 32] = per_warp
    return _butterfly(scratch, op)[:, 0]


def _sum(v, t):
    return block_reduce(v, t, np.add, 0)


# Each emulated kernel: (a = arguments by the CUDA parameter names, as flat arrays or scalars;
# rows = gridDim.x for the row kernels; t = blockDim.x). Same formulas, same order as the CUDA.
def _layer_norm_forward(a, grid, block):
    n, t = int(a["n"]), block[0]
    x = a["x"].reshape(grid[0], n)
    mu0 = _sum(x, t) / x.dtype.type(n)
    d = x - mu0[:, None]
    residual, mean_d2 = _sum(d, t) / x.dtype.type(n), _sum(d * d, t) / x.dtype.type(n)
    r = 1 / np.sqrt(np.fmax(mean_d2 - residual * residual, 0) + a["eps"])
    y = ((x - mu0[:, None]) - residual[:, None]) * r[:, None] * a["weight"] + a["bias"]
    a["y"].reshape(x.shape)[...] = y
    a["mean"][...], a["rstd"][...] = mu0 + residual, r


def _layer_norm_backward_input(a, grid, block):
    n, t = int(a["n"]), block[0]
    dy, x = a["dy"].reshape(grid[0], n), a["x"].reshape(grid[0], n)
    mu, r = a["mean"][:, None], a["rstd"][:, None]
    g, x_hat = dy * a["weight"], (x - mu) * r
    mean_g = _sum(g, t)[:, None] / x.dtype.type(n)
    mean_g_xhat = _sum(g * x_hat, t)[:, None] / x.dtype.type(n)
    a["dx"].reshape(x.shape)[...] = r * (g - mean_g - x_hat * mean_g_xhat)


def _rms_norm_forward(a, grid, block):
    n, t = int(a["n"]), block[0]
    x = a["x"].reshape(grid[0], n)
    r = 1 / np.sqrt(_sum(x * x, t) / x.dtype.type(n) + a["eps"])
    a["y"].reshape(x.shape)[...] = x * r[:, None] * a["weight"]
    a["rstd"][...] = r


def _rms_norm_backward_input(a, grid, block):
    n, t = int(a["n"]), block[0]
    dy, x, r = a["dy"].reshape(grid[0], n), a["x"].reshape(grid[0], n), a["rstd"][:, None]
    g = dy * a["weight"]
    mean_g_xhat = _sum(g * (x * r), t)[:, None] / x.dtype.type(n)
    a["dx"].reshape(x.shape)[...] = r * (g - (x * r) * mean_g_xhat)


def _strand_partials(a, grid, block, terms):
    """The partial-sum kernels' order, for each (per-row float64 terms, output name) in
    ``terms``: per chunk of rows, strand s adds rows first+s, first+s+strands, … in float64,
    then the strands are added in order 0..strands−1 into the chunk's row of the output."""
    rows, n, per = int(a["rows"]), int(a["n"]), int(a["rows_per_chunk"])
    tile, strands = block
    assert (tile, strands) == (_cuda.PARTIAL_TILE, _cuda.PARTIAL_STRANDS), block
    assert (grid[0] - 1) * tile < n <= grid[0] * tile, f"grid {grid} misses columns of {n}"
    for values, name in terms:
        for chunk in range(grid[1]):
            first, last = chunk * per, min(rows, chunk * per + per)
            sums = np.zeros((strands, n))
            for s in range(strands):
                for row in range(first + s, last, strands):
                    sums[s] += values[row]
            for s in range(1, strands):
                sums[0] += sums[s]
            a[name][chunk * n:(chunk + 1) * n] = sums[0]


def _chunk_sums(a, grid, block, pairs):
    """The second kernels: each (partials name, output name) of ``pairs``, the chunks'
    partials added in chunk order, per column."""
    chunks, n = int(a["chunks"]), int(a["n"])
    assert grid[0] * block[0] >= n, f"grid {grid} × block {block} misses columns of {n}"
    for partial, out in pairs:
        total = np.zeros(n)
        for k in range(chunks):
            total += a[partial][k * n:(k + 1) * n]
        a[out][...] = total


def _norm_param_grad_partials(a, grid, block):
    rows, n = int(a["rows"]), int(a["n"])
    dy, x = a["dy"].reshape(rows, n), a["x"].reshape(rows, n)
    x_hat = (x - a["mean"][:, None]) * a["rstd"][:, None]
    dy64 = dy.astype(np.float64)
    _strand_partials(a, grid, block, [(dy64 * x_hat.astype(np.float64), "partial_w"),
                                      (dy64, "partial_b")])


def _norm_param_grad_sum(a, grid, block):
    _chunk_sums(a, grid, block, [("partial_w", "dw"), ("partial_b", "db")])


def _rms_norm_param_grad_partials(a, grid, block):
    rows, n = int(a["rows"]), int(a["n"])
    dy, x = a["dy"].reshape(rows, n), a["x"].reshape(rows, n)
    x_hat = x * a["rstd"][:, None]
    _strand_partials(a, grid, block,
                     [(dy.astype(np.float64) * x_hat.astype(np.float64), "partial_w")])


def _rms_norm_param_grad_sum(a, grid, block):
    _chunk_sums(a, grid, block, [("partial_w", "dw")])


def _softmax_forward(a, grid, block):
    n, t = int(a["n"]), block[0]
    x = a["x"].reshape(grid[0], n)
    m = block_reduce(x, t, np.fmax, -np.inf)[:, None]
    s = _sum(np.exp(x - m), t)[:, None]
    a["y"].reshape(x.shape)[...] = np.exp(x - m) / s


def _softmax_backward(a, grid, block):
    n, t = int(a["n"]), block[0]
    dy, y = a["dy"].reshape(grid[0], n), a["y"].reshape(grid[0], n)
    dot = _sum(dy * y, t)[:, None]
    a["dx"].reshape(y.shape)[...] = dy * y - y * dot


EMULATIONS = {f.__name__[1:]: f for f in (
    _layer_norm_forward, _layer_norm_backward_input, _rms_norm_forward,
    _rms_norm_backward_input, _norm_param_grad_partials, _norm_param_grad_sum,
    _rms_norm_param_grad_partials, _rms_norm_param_grad_sum, _softmax_forward,
    _softmax_backward)}
SIGNATURE = re.compile(r"__global__\s+void\s+(?:ROW_LAUNCH_BOUNDS|__launch_bounds__\([^)]*\))"
                       r"\s+(\w+)\s*\(([^)]*)\)")
PARAM = re.compile(r"^(const\s+)?(T|double|int)\s*(\*)?\s*(?:__restrict__\s+)?(\w+)$")


def parse_signatures(code):
    """kernel name -> [(name, base type, is pointer, is const)] read off the CUDA source."""
    out = {}
    for name, params in SIGNATURE.findall(code):
        parsed = []
        for p in params.split(","):
            m = PARAM.match(" ".join(p.split()))
            assert m, f"{name}: cannot read parameter {p.strip()!r}"
            parsed.append((m.group(4), m.group(2), bool(m.group(3)), bool(m.group(1))))
        out[name] = parsed
    return out


LAUNCHED = []  # the names of the kernels launched, in order (cleared by the tests)


class EmulatedKernel:
    def __init__(self, name, dtype, params, module=None):
        self.name, self.dtype, self.params, self.module = name, dtype, params, module

    def __call__(self, grid, block, args):
        where = f"{self.name}<{_cuda.CTYPES[self.dtype]}>"
        assert len(args) == len(self.params), f"{where}: {len(args)} args for {len(self.params)}"
        assert np.prod(block) <= 1024 and np.prod(block) % 32 == 0, f"{where}: block {block}"
        named, pointers = {}, []
        for (name, base, pointer, const), arg in zip(self.params, args):
            want = {"T": self.dtype, "double": np.dtype(np.float64),
                    "int": np.dtype(np.int32)}[base]
            if pointer:
                assert isinstance(arg, EmulatedGPUArray), f"{where}: {name} is not a GPU array"
                assert arg.dtype == want and arg.flags.c_contiguous, f"{where}: {name} {arg.dtype}"
                pointers.append((name, const, arg))
                named[name] = np.asarray(arg).reshape(-1)  # a view: writes reach the caller
            else:
                assert isinstance(arg, np.generic) and arg.dtype == want, \
                    f"{where}: scalar {name} is {type(arg).__name__}, expected {want}"
                named[name] = arg
        for name, const, arg in pointers:  # __restrict__: an output aliases nothing else
            others = [o for other, _, o in pointers if other != name]
            assert const or not any(np.shares_memory(arg, o) for o in others), \
                f"{where}: output {name} aliases another argument"
        if len(block) == 1 and "param_grad" not in self.name:
            assert block[0] == kernels.row_threads(int(named["n"])), f"{where}: block {block}"
        LAUNCHED.append(self.name)
        self.execute(named, grid, block, args)

    def execute(self, named, grid, block, args):
        """Run the kernel: here its NumPy emulation (cuda_on_cpu.py runs the CUDA source)."""
        EMULATIONS[self.name](named, grid, block)


class EmulatedModule:
    """CuPy's RawModule, with EmulatedKernels in place of compiled ones."""

    kernel_class = EmulatedKernel

    def __init__(self, code, options, name_expressions):
        self.code = code
        self.signatures = parse_signatures(code)
        self.name_expressions = name_expressions
        assert set(self.signatures) == {e.split("<")[0] for e in name_expressions}

    def get_function(self, expr):
        assert expr in self.name_expressions, f"{expr} was not instantiated"
        name, ctype = expr[:-1].split("<")
        dtype = {v: k for k, v in _cuda.CTYPES.items()}[ctype]
        return self.kernel_class(name, dtype, self.signatures[name], self)


class EmulatedCupy(types.SimpleNamespace):
    """The CuPy module as tinynorm sees it: RawModule emulated, ``empty`` poisoned, and any
    other name NumPy's, with array results moved "to the GPU"."""

    def __getattr__(self, name):
        value = getattr(np, name)
        if not callable(value) or isinstance(value, type):
            return value

        def on_device(*args, **kwargs):
            out = value(*args, **kwargs)
            return on_gpu(out) if isinstance(out, np.ndarray) else out
        return on_device


EMULATED_CUPY = EmulatedCupy(
    RawModule=EmulatedModule, int32=np.int32,
    cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0)),
    empty=_poisoned, empty_like=lambda a, dtype=None: _poisoned(a.shape, dtype or a.dtype),
)
