"""tinynorm.kernels without a GPU: the launch geometry, the switches and errors, and the
Python wrappers run end to end against NumPy emulations of each CUDA kernel.

The emulation stands in for CuPy: arrays whose type tinynorm.backend takes for CuPy arrays,
and a RawModule whose kernels (1) read their parameter lists from the CUDA source and check
every launch argument against them (pointer dtypes, scalar types, outputs that alias no
other argument, block sizes), then (2) do what the CUDA code does, in NumPy, in the same
reduction order (thread strides, warp butterflies, row chunks and strands). Outputs come
from a poisoned (NaN) allocator, so an element a kernel fails to write shows up.
What this cannot check is the CUDA C itself; tests/test_gpu.py compiles it with NVRTC and,
on a GPU, compares it with the same reference.
"""
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest

from test_gpu import (EPS, assert_matches, inputs, ref_layer_norm, ref_rms_norm,
                      ref_softmax)
from tinynorm import backend, kernels
from tinynorm.kernels import _cuda

SHAPES = [(1, 1), (5, 3), (64, 1000), (7, 4097), (300, 3), (2, 40000), (200, 64)]


# ---- geometry and switches ------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 3, 31, 32, 255, 256, 257, 1000, 4096, 4097, 8192, 8193, 10**6])
def test_row_threads_is_a_warp_multiple_covering_the_row(n):
    t = kernels.row_threads(n)
    assert t % 32 == 0 and 32 <= t <= 1024 and t & (t - 1) == 0
    assert t * _cuda.ELEMENTS_PER_THREAD >= n or t == 1024  # ~8 elements a thread, capped
    assert t == 32 or t // 2 * _cuda.ELEMENTS_PER_THREAD < n  # and no bigger than needed


@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 100, 1000, 16384, 204800, 10**6])
@pytest.mark.parametrize("n", [1, 3, 64, 1000, 4096, 4097])
def test_param_grad_chunks_cover_every_row_once(rows, n):
    chunks, per = kernels.param_grad_chunks(rows, n)
    assert chunks >= 1 and per >= 1
    assert (chunks - 1) * per < rows <= chunks * per  # every chunk non-empty, all rows covered
    tiles = -(-n // _cuda.PARTIAL_TILE)
    assert tiles * chunks <= max(_cuda.PARTIAL_BLOCKS, tiles)  # grid stays near the target
    assert chunks * n < 2**31  # the kernels index partials with int chunk·n in size_t


def test_fused_is_used_only_for_gpu_float_arrays_and_can_be_switched_off():
    assert not kernels.use_fused(np.ones((2, 3), np.float32))  # NumPy: the reference path
    assert not kernels.use_fused()
    before = kernels.enabled
    with kernels.fused(False):
        assert kernels.enabled is False
    assert kernels.enabled is before


def test_env_switch_and_import_without_cupy():
    code = "import sys, tinynorm, tinynorm.kernels as k; print(k.enabled, 'cupy' in sys.modules)"
    env = dict(os.environ, TINYNORM_FUSED="0")
    env.pop("TINYNORM_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"], out  # switched off, and importing loaded no CuPy


@pytest.mark.parametrize("call", [
    lambda a: kernels.layer_norm_forward(a, None, None, EPS),
    lambda a: kernels.rms_norm_forward(a, None, EPS),
    lambda a: kernels.softmax_forward(a),
])
def test_fused_entry_points_reject_host_arrays_by_name(call):
    with pytest.raises(TypeError, match=r"\(fused\): expected a GPU \(CuPy\) array"):
        call(np.ones((2, 3), np.float32))


# ---- the stand-in for CuPy --------------------------------------------------------------
class EmulatedGPUArray(np.ndarray):
    """A NumPy array that tinynorm.backend takes for a CuPy array (its type's module name
    starts with "cupy")."""

    device = types.SimpleNamespace(id=0)

    def get(self):
        return np.asarray(self).copy()


EmulatedGPUArray.__module__ = "cupy_emulated"


def on_gpu(a):
    return np.asarray(a).view(EmulatedGPUArray)


def _poisoned(shape, dtype=np.float64):
    return on_gpu(np.full(shape, np.nan, dtype))


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


def _norm_param_grad_partials(a, grid, block):
    rows, n, per = int(a["rows"]), int(a["n"]), int(a["rows_per_chunk"])
    tile, strands = block
    assert (tile, strands) == (_cuda.PARTIAL_TILE, _cuda.PARTIAL_STRANDS), block
    assert (grid[0] - 1) * tile < n <= grid[0] * tile, f"grid {grid} misses columns of {n}"
    dy, x = a["dy"].reshape(rows, n), a["x"].reshape(rows, n)
    x_hat = (x - a["mean"][:, None]) * a["rstd"][:, None]
    for chunk in range(grid[1]):
        first, last = chunk * per, min(rows, chunk * per + per)
        sum_w, sum_b = np.zeros((strands, n)), np.zeros((strands, n))
        for s in range(strands):
            for row in range(first + s, last, strands):
                sum_w[s] += dy[row].astype(np.float64) * x_hat[row].astype(np.float64)
                sum_b[s] += dy[row].astype(np.float64)
        for s in range(1, strands):
            sum_w[0] += sum_w[s]
            sum_b[0] += sum_b[s]
        a["partial_w"][chunk * n:(chunk + 1) * n] = sum_w[0]
        a["partial_b"][chunk * n:(chunk + 1) * n] = sum_b[0]


def _norm_param_grad_sum(a, grid, block):
    chunks, n = int(a["chunks"]), int(a["n"])
    assert grid[0] * block[0] >= n, f"grid {grid} × block {block} misses columns of {n}"
    sum_w, sum_b = np.zeros(n), np.zeros(n)
    for k in range(chunks):
        sum_w += a["partial_w"][k * n:(k + 1) * n]
        sum_b += a["partial_b"][k * n:(k + 1) * n]
    a["dw"][...], a["db"][...] = sum_w, sum_b


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
    _softmax_forward, _softmax_backward)}
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


class EmulatedKernel:
    def __init__(self, name, dtype, params):
        self.name, self.dtype, self.params = name, dtype, params

    def __call__(self, grid, block, args):
        where = f"{self.name}<{_cuda.CTYPES[self.dtype]}>"
        assert len(args) == len(self.params), f"{where}: {len(args)} args for {len(self.params)}"
        assert np.prod(block) <= 1024 and np.prod(block) % 32 == 0, f"{where}: block {block}"
        named, pointers = {}, []
        for (name, base, pointer, const), arg in zip(self.params, args):
            want = {"T": self.dtype, "double": np.dtype(np.float64), "int": np.dtype(np.int32)}[base]
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
        EMULATIONS[self.name](named, grid, block)


class EmulatedModule:
    """CuPy's RawModule, with EmulatedKernels in place of compiled ones."""

    def __init__(self, code, options, name_expressions):
        self.signatures = parse_signatures(code)
        self.name_expressions = name_expressions
        assert set(self.signatures) == {e.split("<")[0] for e in name_expressions}

    def get_function(self, expr):
        assert expr in self.name_expressions, f"{expr} was not instantiated"
        name, ctype = expr[:-1].split("<")
        dtype = {v: k for k, v in _cuda.CTYPES.items()}[ctype]
        return EmulatedKernel(name, dtype, self.signatures[name])


EMULATED_CUPY = types.SimpleNamespace(
    RawModule=EmulatedModule, int32=np.int32,
    empty=_poisoned, empty_like=lambda a: _poisoned(a.shape, a.dtype),
    zeros=lambda shape, dtype=np.float64: on_gpu(np.zeros(shape, dtype)),
    full=lambda shape, value, dtype=None: on_gpu(np.full(shape, value, dtype)),
    ascontiguousarray=lambda a: on_gpu(np.ascontiguousarray(a)),
)


@pytest.fixture
def emulated(monkeypatch):
    """tinynorm.kernels running on the emulated kernels, with fresh compile caches."""
    monkeypatch.setattr(backend, "_cupy", EMULATED_CUPY)
    kernels.clear_cache()
    yield
    kernels.clear_cache()


# ---- the wrappers on emulated kernels against the reference ---------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows,n", SHAPES)
def test_wrappers_on_emulated_kernels_match_reference(emulated, rows, n, dtype):
    x, w, b, dy = inputs(rows, n, dtype, seed=rows * 7 + n)
    gx, gw, gb, gdy = (on_gpu(a) for a in (x, w, b, dy))
    y, mean, rstd = kernels.layer_norm_forward(gx, gw, gb, EPS)
    got = (y, mean, rstd) + kernels.layer_norm_backward(gdy, gx, gw, mean[:, None], rstd)
    for name, g, want in zip(("y", "mean", "rstd", "dx", "dweight", "dbias"), got,
                             ref_layer_norm(np, x, w, b, dy)):
        assert g.dtype == dtype, f"layer_norm {name}: dtype {g.dtype}"
        assert_matches(g, want, dtype, f"layer_norm {name}")
    y, r = kernels.rms_norm_forward(gx, gw, EPS)
    for name, g, want in zip(("y", "rstd", "dx", "dweight"),
                             (y, r) + kernels.rms_norm_backward(gdy, gx, gw, r),
                             ref_rms_norm(np, x, w, dy)):
        assert_matches(g, want, dtype, f"rms_norm {name}")
    with np.errstate(over="ignore"):
        s = kernels.softmax_forward(gx * 4)
        for name, g, want in zip(("y", "dx"), (s, kernels.softmax_backward(gdy, s)),
                                 ref_softmax(np, x * 4, dy)):
            assert_matches(g, want, dtype, f"softmax {name}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_wrappers_without_affine_parameters_or_param_grads(emulated, dtype):
    x, _, _, dy = inputs(9, 37, dtype)
    gx, gdy = on_gpu(x), on_gpu(dy)
    ones, zeros = np.ones(37, dtype), np.zeros(37, dtype)
    y, mean, rstd = kernels.layer_norm_forward(gx, None, None, EPS)
    dx, dw, db = kernels.layer_norm_backward(gdy, gx, None, mean, rstd)
    want = ref_layer_norm(np, x, ones, zeros, dy)
    assert_matches(y, want[0], dtype, "y")
    assert_matches(dx, want[3], dtype, "dx")
    assert_matches(db, want[5], dtype, "dbias")
    assert dw is None
    assert kernels.layer_norm_backward(gdy, gx, on_gpu(ones), mean, rstd,
                                       need_param_grads=False)[1:] == (None, None)
    y, r = kernels.rms_norm_forward(gx, None, EPS)
    dx, dw = kernels.rms_norm_backward(gdy, gx, None, r)
    assert_matches(dx, ref_rms_norm(np, x, ones, dy)[2], dtype, "rms dx")
    assert dw is None


def test_wrappers_name_the_op_on_mismatched_inputs(emulated):
    x = on_gpu(np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match=r"layer_norm \(fused\): weight has dtype float64"):
        kernels.layer_norm_forward(x, on_gpu(np.ones(3)), None, EPS)
    with pytest.raises(ValueError, match=r"rms_norm \(fused\): weight has shape \(4,\)"):
        kernels.rms_norm_forward(x, on_gpu(np.ones(4, np.float32)), EPS)
    with pytest.raises(ValueError, match=r"expected a non-empty 2-D array"):
        kernels.softmax_forward(on_gpu(np.ones((2, 3, 4), np.float32)))
    with pytest.raises(TypeError, match=r"different devices"):
        kernels.softmax_backward(np.ones((4, 3), np.float32), x)


def test_the_emulated_launch_checks_have_teeth(emulated):
    module = EmulatedModule(kernels.SOURCES[1].code, (), kernels.SOURCES[1].name_expressions())
    fn = module.get_function("softmax_forward<float>")
    x, y = on_gpu(np.ones((2, 3), np.float32)), _poisoned((2, 3), np.float32)
    fn((2,), (32,), (x, np.int32(3), y))  # the right call runs
    for grid, block, args, what in [
        ((2,), (32,), (x, 3, y), "scalar n"),                    # a Python int, not int32
        ((2,), (32,), (y, np.int32(3), x), None),                 # fine for types ...
        ((2,), (32,), (x, np.int32(3), x), "aliases"),           # ... but y is x
        ((2,), (64,), (x, np.int32(3), y), "block"),             # not row_threads(3)
        ((2,), (32,), (x.astype(np.float64), np.int32(3), y), "x float64"),
    ]:
        if what is None:
            continue
        with pytest.raises(AssertionError, match=what):
            fn(grid, block, args)
