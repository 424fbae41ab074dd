"""Fused softmax along the last axis, forward and backward, on (rows, n) GPU arrays.

Same math and saved quantity as tinynorm.ops.softmax.Softmax, which stays the reference.
Per row (one block per row, a loop over the row):

forward   m = max x;  s = Σ e^(x − m);  y = e^(x − m) / s.  Subtracting m keeps every
          exponent ≤ 0, so nothing overflows. Saves y, the output (nothing else).
backward  dx = y·(g − Σ g·y), written as g·y − y·Σ(g·y) as the reference does.

The exponential is computed twice (once for s, once for y) rather than stored: a row is
read again from cache instead of written and read back.
"""
from __future__ import annotations

from .. import backend
from ._cuda import COMMON, Source, fresh_dx, function, like, row_threads, rows_of

CODE = COMMON + r"""
// Unrolled by 4 so that each thread has several independent loads in flight.
#define FOR_EACH_COLUMN(j) _Pragma("unroll 4") for (int j = threadIdx.x; j < n; j += blockDim.x)

template <typename T>
__global__ void ROW_LAUNCH_BOUNDS
softmax_forward(const T* __restrict__ x, const int n, T* __restrict__ y) {
    __shared__ T scratch[32];
    const size_t row = blockIdx.x;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    T row_max = negative_infinity<T>();
    FOR_EACH_COLUMN(j) row_max = fmax(row_max, xr[j]);
    const T m = block_reduce(row_max, Max(), negative_infinity<T>(), scratch);
    T sum_e = 0;
    FOR_EACH_COLUMN(j) sum_e += exp(xr[j] - m);
    const T s = block_reduce(sum_e, Add(), T(0), scratch);
    FOR_EACH_COLUMN(j) yr[j] = exp(xr[j] - m) / s;
}

template <typename T>
__global__ void ROW_LAUNCH_BOUNDS
softmax_backward(const T* __restrict__ dy, const T* __restrict__ y, const int n,
                 T* __restrict__ dx) {
    __shared__ T scratch[32];
    const size_t row = blockIdx.x;
    const T* dyr = dy + row * n;
    const T* yr = y + row * n;
    T* dxr = dx + row * n;
    T sum_gy = 0;
    FOR_EACH_COLUMN(j) sum_gy += dyr[j] * yr[j];
    const T dot = block_reduce(sum_gy, Add(), T(0), scratch);
    FOR_EACH_COLUMN(j) dxr[j] = dyr[j] * yr[j] - yr[j] * dot;
}
"""

SOURCE = Source("softmax", CODE, ("softmax_forward", "softmax_backward"))


def softmax_forward(x):
    """y = softmax(x) along the last axis of the (rows, n) GPU array ``x``."""
    rows, n = rows_of("softmax", x)
    xp = backend.array_module(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty_like(x)
    function(xp, SOURCE, "softmax_forward", x.dtype)((rows,), (row_threads(n),),
                                                     (x, xp.int32(n), y))
    return y


def softmax_backward(grad_out, y, dx_shape=None):
    """dx of softmax from ``grad_out`` and the saved output ``y``, both (rows, n); dx has
    the shape ``dx_shape`` (see ``_cuda.fresh_dx``)."""
    rows, n = rows_of("softmax backward", y)
    xp = backend.array_module(grad_out, y, op="softmax backward (fused)")
    dy = like("softmax backward", "grad_out", grad_out, y, (rows, n))
    y = xp.ascontiguousarray(y)
    dx, dx_rows = fresh_dx(xp, y, dx_shape)
    function(xp, SOURCE, "softmax_backward", y.dtype)((rows,), (row_threads(n),),
                                                      (dy, y, xp.int32(n), dx_rows))
    return dx
