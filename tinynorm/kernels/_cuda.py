"""What every fused kernel shares: the reduction code, the compile cache, the launch geometry.

The CUDA C lives in Python strings. A source is compiled with NVRTC the first time one of
its kernels is launched (CuPy's RawModule; CuPy also keeps the binary in its on-disk cache),
and the module is kept here for the life of the process. Every kernel is a template over
the element type ``T``, instantiated for ``float`` and ``double``.

The launch geometry (threads per row, row chunks of the parameter-gradient sums) is plain
Python with no GPU in it, so the tests can check it, and an emulation of the kernels built
on it, without a device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .. import backend

CTYPES = {backend.float32: "float", backend.float64: "double"}  # the instantiations
OPTIONS = ("--std=c++17",)  # CuPy adds -arch for the current device and -ftz=true

# Block-wide reductions with a fixed order: each thread folds its strided elements in index
# order, a warp combines its 32 lanes by a butterfly (every lane ends with the same bits),
# then one warp combines the per-warp results. The order depends on blockDim alone, never
# on timing, so a kernel run twice on the same inputs gives the same bits.
COMMON = r"""
// Row kernels run with up to 1024 threads a block. "(1024, 1)": one resident block is
// enough, so ptxas may use up to 64 registers a thread; plain (1024) let it cap them at 32,
// and the float64 loops then spilled to local memory (tests/test_gpu.py checks for spills).
#define ROW_LAUNCH_BOUNDS __launch_bounds__(1024, 1)

struct Add { template <typename T> __device__ T operator()(T a, T b) const { return a + b; } };
struct Max { template <typename T> __device__ T operator()(T a, T b) const { return fmax(a, b); } };

template <typename T> __device__ __forceinline__ T negative_infinity();
template <> __device__ __forceinline__ float negative_infinity<float>() {
    return __int_as_float(static_cast<int>(0xff800000u));
}
template <> __device__ __forceinline__ double negative_infinity<double>() {
    return __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
}

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
        v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// v reduced over the whole block; every thread returns it. blockDim.x is a multiple of 32;
// scratch is a __shared__ T[32]. The first barrier lets a previous call's readers finish
// before scratch is overwritten, so calls can follow each other directly.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T identity, T* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_reduce(v, op);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? scratch[lane] : identity;
    return warp_reduce(v, op);
}
"""

# ---- launch geometry (pure Python) ------------------------------------------------------
ELEMENTS_PER_THREAD = 8   # a row of n elements gets about n / 8 threads ...
MAX_ROW_THREADS = 1024    # ... at most a full block (ROW_LAUNCH_BOUNDS in COMMON)
PARTIAL_TILE = 32         # columns per block of the dγ/dβ partial sums (one warp wide)
PARTIAL_STRANDS = 8       # rows read at once by such a block (blockDim = (32, 8))
PARTIAL_BLOCKS = 2048     # aim for about this many blocks to fill the GPU


def row_threads(n: int) -> int:
    """Threads of the block that handles one row of ``n`` elements: a power of two from 32
    (one warp) to 1024, about ``n / ELEMENTS_PER_THREAD``."""
    want = -(-n // ELEMENTS_PER_THREAD)
    threads = 32
    while threads < want and threads < MAX_ROW_THREADS:
        threads *= 2
    return threads


def param_grad_chunks(rows: int, n: int) -> tuple[int, int]:
    """``(chunks, rows_per_chunk)`` for the dγ/dβ partial sums: the rows are cut into
    ``chunks`` consecutive runs of ``rows_per_chunk`` (the last may be shorter, none empty).

    Depends only on the shape, so the float64 summation order, and the result's bits, are
    the same on every run and every device."""
    tiles = -(-n // PARTIAL_TILE)
    wanted = max(1, PARTIAL_BLOCKS // tiles)
    chunks = min(wanted, -(-rows // PARTIAL_STRANDS))
    rows_per_chunk = -(-rows // chunks)
    return -(-rows // rows_per_chunk), rows_per_chunk


# ---- compile cache ----------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One CUDA source: its name, code, and the kernel templates to instantiate."""

    name: str
    code: str
    kernels: tuple

    def name_expressions(self) -> tuple:
        return tuple(f"{k}<{t}>" for k in self.kernels for t in CTYPES.values())


_modules: dict = {}
_functions: dict = {}


def function(xp, source: Source, kernel: str, dtype):
    """The compiled ``kernel<T>`` of ``source`` for ``dtype`` on the current device,
    compiling on first use (a module is loaded per device, so each device gets its own)."""
    device = xp.cuda.runtime.getDevice()
    key = (source.name, kernel, dtype, device)
    fn = _functions.get(key)
    if fn is None:
        module = _modules.get((source.name, device))
        if module is None:
            module = xp.RawModule(code=source.code, options=OPTIONS,
                                  name_expressions=source.name_expressions())
            _modules[(source.name, device)] = module
        fn = _functions[key] = module.get_function(f"{kernel}<{CTYPES[dtype]}>")
    return fn


def clear_cache() -> None:
    """Forget the compiled modules (the next launch compiles again, or loads CuPy's disk
    cache); the benchmark uses it to time a first call."""
    _modules.clear()
    _functions.clear()


# ---- argument checks --------------------------------------------------------------------
def rows_of(op: str, x) -> tuple[int, int]:
    """``(rows, n)`` of a 2-D float32/float64 GPU array with at least one element."""
    if not backend.is_array(x) or backend.device_of(x) == "cpu":
        raise TypeError(f"{op} (fused): expected a GPU (CuPy) array, got {type(x).__name__} "
                        f"on {backend.device_of(x) if backend.is_array(x) else 'no device'}")
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"{op} (fused): expected a non-empty 2-D array (rows, n), "
                         f"got shape {tuple(x.shape)}")
    if x.dtype not in CTYPES:
        raise TypeError(f"{op} (fused): expected float32 or float64, got {x.dtype}")
    return x.shape


def fresh_dx(xp, x, dx_shape):
    """A backward kernel's dx, made in ``dx_shape`` (rows·n elements; None: x's (rows, n)),
    and the (rows, n) view of it that the kernel writes. The op passes grad_out's own shape,
    so that dx is an array of its own, not a view: autograd then hands it to a leaf as its
    .grad as it is, where a view would be copied first (one more pass over memory)."""
    dx = xp.empty(x.shape if dx_shape is None else dx_shape, dtype=x.dtype)
    return dx, dx.reshape(x.shape)


def like(op: str, what: str, a, x, shape) -> object:
    """``a`` checked to have ``x``'s dtype and device and ``shape`` elements, as a contiguous
    array of that shape."""
    xp = backend.array_module(a, x, op=f"{op} (fused)")
    if a.dtype != x.dtype:
        raise TypeError(f"{op} (fused): {what} has dtype {a.dtype}, expected {x.dtype} like x")
    if a.size != math.prod(shape):
        raise ValueError(f"{op} (fused): {what} has shape {tuple(a.shape)}, expected "
                         f"{math.prod(shape)} elements, shape {tuple(shape)}")
    return xp.ascontiguousarray(a.reshape(shape))
