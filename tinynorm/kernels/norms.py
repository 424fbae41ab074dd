"""Fused LayerNorm and RMSNorm, forward and backward, on (rows, n) GPU arrays.

Same math, symbols and saved quantities as tinynorm.ops.layer_norm / rms_norm, which stay
the reference. Per row of n elements (one block per row, a loop over the row):

LayerNorm forward   μ0 = Σx / n, refined once: μ = μ0 + mean(x − μ0) (the rounding of Σx
                    would otherwise stay in every x̂ when |μ| ≫ σ; cheap on a GPU, where
                    the row is in registers; the compiled CPU kernel does it too, the
                    NumPy path does not);
                    σ² = mean((x − μ)²), from the same pass over x − μ0 (two reading
                    passes before the one that writes y; never Σx²/n − μ²);
                    r = 1/√(σ² + ε);  x̂ = (x − μ)·r;  y = x̂·γ + β.
                    Saves μ and r: two numbers per row; x̂ is recomputed in backward.
LayerNorm backward  g = dy·γ;  dx = r·(g − mean(g) − x̂·mean(g·x̂));
                    dγ = Σ_rows dy·x̂;  dβ = Σ_rows dy.
RMSNorm forward     r = 1/√(Σx²/n + ε);  x̂ = x·r;  y = x̂·γ.
                    Saves r: one number per row.
RMSNorm backward    g = dy·γ;  dx = r·(g − x̂·mean(g·x̂));  dγ = Σ_rows dy·x̂.

Row sums accumulate in the input's precision (float32 for float32). dγ and dβ are sums over
all rows, so they accumulate in float64 and without atomics: each block of the partial-sum
kernel owns the float64 sums of one run of rows for 32 columns, and a second kernel adds
those runs in a fixed order; the result is the same bits on every run. RMSNorm has no β: its
two kernels sum dγ alone, with x̂ = x·r (no μ to read).
A missing γ (or β) is passed as ones (zeros), which changes no value; dγ is then returned
as None.
"""
from __future__ import annotations

from .. import backend
from ._cuda import (COMMON, PARTIAL_STRANDS, PARTIAL_TILE, Source, fresh_dx, function,
                    like, param_grad_chunks, row_threads, rows_of)

CODE = COMMON + f"""
#define PARTIAL_TILE {PARTIAL_TILE}
#define PARTIAL_STRANDS {PARTIAL_STRANDS}
""" + r"""
// One block per row; j loops over the row's columns with stride blockDim.x.
// Unrolled by 4 so that each thread has several independent loads in flight.
#define FOR_EACH_COLUMN(j) _Pragma("unroll 4") for (int j = threadIdx.x; j < n; j += blockDim.x)

// a·b rounded to T on its own. NVRTC contracts a·b − c into one FMA by default, which keeps
// the product unrounded: then g − mean(g) with g = dy·γ is not 0 where g is constant along
// the row (rows of one element, n = 1, gave dx ≈ 1e-6·|g|·r in float32 on an H100, where
// the maths says 0).
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

template <typename T>
__global__ void ROW_LAUNCH_BOUNDS
layer_norm_forward(const T* __restrict__ x, const T* __restrict__ weight,
                   const T* __restrict__ bias, const T eps, const int n,
                   T* __restrict__ y, T* __restrict__ mean, T* __restrict__ rstd) {
    __shared__ T scratch[32];
    const size_t row = blockIdx.x;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    T sum_x = 0;
    FOR_EACH_COLUMN(j) sum_x += xr[j];
    const T mu0 = block_reduce(sum_x, Add(), T(0), scratch) / T(n);
    T sum_d = 0, sum_d2 = 0;  // d = x − μ0
    FOR_EACH_COLUMN(j) { const T d = xr[j] - mu0; sum_d += d; sum_d2 += d * d; }
    const T residual = block_reduce(sum_d, Add(), T(0), scratch) / T(n);
    const T mean_d2 = block_reduce(sum_d2, Add(), T(0), scratch) / T(n);
    // mean((d − residual)²) = mean(d²) − residual²; residual is rounding-sized, so this
    // difference cancels nothing that matters (fmax guards the sign of a zero variance).
    const T r = T(1) / sqrt(fmax(mean_d2 - residual * residual, T(0)) + eps);
    FOR_EACH_COLUMN(j) yr[j] = ((xr[j] - mu0) - residual) * r * weight[j] + bias[j];
    if (threadIdx.x == 0) { mean[row] = mu0 + residual; rstd[row] = r; }
}

template <typename T>
__global__ void ROW_LAUNCH_BOUNDS
layer_norm_backward_input(const T* __restrict__ dy, const T* __restrict__ x,
                          const T* __restrict__ weight, const T* __restrict__ mean,
                          const T* __restrict__ rstd, const int n, T* __restrict__ dx) {
    __shared__ T scratch[32];
    const size_t row = blockIdx.x;
    const T* dyr = dy + row * n;
    const T* xr = x + row * n;
    T* dxr = dx + row * n;
    const T mu = mean[row], r = rstd[row];
    T sum_g = 0, sum_g_xhat = 0;
    FOR_EACH_COLUMN(j) {
        const T g = mul_rn(dyr[j], weight[j]);  // the same rounded g in both loops
        sum_g += g;
        sum_g_xhat += g * ((xr[j] - mu) * r);
    }
    const T mean_g = block_reduce(sum_g, Add(), T(0), scratch) / T(n);
    const T mean_g_xhat = block_reduce(sum_g_xhat, Add(), T(0), scratch) / T(n);
    FOR_EACH_COLUMN(j) {
        const T g = mul_rn(dyr[j], weight[j]);
        const T x_hat = (xr[j] - mu) * r;
        dxr[j] = r * (g - mean_g - x_hat * mean_g_xhat);
    }
}

template <typename T>
__global__ void ROW_LAUNCH_BOUNDS
rms_norm_forward(const T* __restrict__ x, const T* __restrict__ weight, const T eps,
                 const int n, T* __restrict__ y, T* __restrict__ rstd) {
    __shared__ T scratch[32];
    const size_t row = blockIdx.x;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    T sum_x2 = 0;
    FOR_EACH_COLUMN(j) sum_x2 += xr[j] * xr[j];
    const T r = T(1) / sqrt(block_reduce(sum_x2, Add(), T(0), scratch) / T(n) + eps);
    FOR_EACH_COLUMN(j) yr[j] = xr[j] * r * weight[j];
    if (threadIdx.x == 0) rstd[row] = r;
}

template <typename T>
__global__ void ROW_LAUNCH_BOUNDS
rms_norm_backward_input(const T* __restrict__ dy, const T* __restrict__ x,
                        const T* __restrict__ weight, const T* __restrict__ rstd,
                        const int n, T* __restrict__ dx) {
    __shared__ T scratch[32];
    const size_t row = blockIdx.x;
    const T* dyr = dy + row * n;
    const T* xr = x + row * n;
    T* dxr = dx + row * n;
    const T r = rstd[row];
    T sum_g_xhat = 0;
    FOR_EACH_COLUMN(j) sum_g_xhat += (dyr[j] * weight[j]) * (xr[j] * r);
    const T mean_g_xhat = block_reduce(sum_g_xhat, Add(), T(0), scratch) / T(n);
    FOR_EACH_COLUMN(j) {
        const T g = dyr[j] * weight[j];
        dxr[j] = r * (g - (xr[j] * r) * mean_g_xhat);
    }
}

// dγ and dβ, step 1 of 2. Block (PARTIAL_TILE = 32, PARTIAL_STRANDS = 8), grid
// (ceil(n / 32), chunks): the block owns columns [32·blockIdx.x, +32) of the rows
// [first, last) of chunk blockIdx.y. A warp is one threadIdx.y, so it reads 32 adjacent
// elements of one row. Each thread adds every 8th row of the chunk in order, in float64;
// the 8 strands are then added in order 0..7. No two blocks write the same partial, so no
// atomics. LAYER: LayerNorm, x̂ = (x − μ)·r as in the backward above, and dβ summed too;
// otherwise RMSNorm, x̂ = x·r, dγ alone (``mean``, ``partial_b`` and ``strand_b`` unused).
// ``strand_w``/``strand_b`` are the kernel's shared memory.
template <typename T, bool LAYER>
__device__ __forceinline__ void
param_grad_partials(const T* __restrict__ dy, const T* __restrict__ x,
                    const T* __restrict__ mean, const T* __restrict__ rstd,
                    const int rows, const int n, const int rows_per_chunk,
                    double* __restrict__ partial_w, double* __restrict__ partial_b,
                    double (*strand_w)[PARTIAL_TILE], double (*strand_b)[PARTIAL_TILE]) {
    const int col = blockIdx.x * PARTIAL_TILE + threadIdx.x;
    const int first = blockIdx.y * rows_per_chunk;
    const int last = min(rows, first + rows_per_chunk);
    double sum_w = 0.0, sum_b = 0.0;
    if (col < n) {
        for (int row = first + threadIdx.y; row < last; row += PARTIAL_STRANDS) {
            const size_t i = (size_t)row * n + col;
            const T x_hat = (LAYER ? x[i] - mean[row] : x[i]) * rstd[row];
            sum_w += (double)dy[i] * (double)x_hat;
            if constexpr (LAYER) sum_b += (double)dy[i];
        }
    }
    strand_w[threadIdx.y][threadIdx.x] = sum_w;
    if constexpr (LAYER) strand_b[threadIdx.y][threadIdx.x] = sum_b;
    __syncthreads();
    if (threadIdx.y == 0 && col < n) {
        for (int k = 1; k < PARTIAL_STRANDS; ++k) {
            sum_w += strand_w[k][threadIdx.x];
            if constexpr (LAYER) sum_b += strand_b[k][threadIdx.x];
        }
        partial_w[(size_t)blockIdx.y * n + col] = sum_w;
        if constexpr (LAYER) partial_b[(size_t)blockIdx.y * n + col] = sum_b;
    }
}

template <typename T>
__global__ void __launch_bounds__(PARTIAL_TILE * PARTIAL_STRANDS)
norm_param_grad_partials(const T* __restrict__ dy, const T* __restrict__ x,
                         const T* __restrict__ mean, const T* __restrict__ rstd,
                         const int rows, const int n, const int rows_per_chunk,
                         double* __restrict__ partial_w, double* __restrict__ partial_b) {
    __shared__ double strand_w[PARTIAL_STRANDS][PARTIAL_TILE];
    __shared__ double strand_b[PARTIAL_STRANDS][PARTIAL_TILE];
    param_grad_partials<T, true>(dy, x, mean, rstd, rows, n, rows_per_chunk, partial_w,
                                 partial_b, strand_w, strand_b);
}

template <typename T>
__global__ void __launch_bounds__(PARTIAL_TILE * PARTIAL_STRANDS)
rms_norm_param_grad_partials(const T* __restrict__ dy, const T* __restrict__ x,
                             const T* __restrict__ rstd, const int rows, const int n,
                             const int rows_per_chunk, double* __restrict__ partial_w) {
    __shared__ double strand_w[PARTIAL_STRANDS][PARTIAL_TILE];
    param_grad_partials<T, false>(dy, x, nullptr, rstd, rows, n, rows_per_chunk, partial_w,
                                  nullptr, strand_w, nullptr);
}

// dγ (and dβ), step 2 of 2: one thread per column adds the chunks' partials in chunk order.
template <typename T, bool LAYER>
__device__ __forceinline__ void
param_grad_sum(const double* __restrict__ partial_w, const double* __restrict__ partial_b,
               const int chunks, const int n, T* __restrict__ dw, T* __restrict__ db) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= n) return;
    double sum_w = 0.0, sum_b = 0.0;
    for (int k = 0; k < chunks; ++k) {
        sum_w += partial_w[(size_t)k * n + col];
        if constexpr (LAYER) sum_b += partial_b[(size_t)k * n + col];
    }
    dw[col] = (T)sum_w;
    if constexpr (LAYER) db[col] = (T)sum_b;
}

template <typename T>
__global__ void __launch_bounds__(256)
norm_param_grad_sum(const double* __restrict__ partial_w, const double* __restrict__ partial_b,
                    const int chunks, const int n, T* __restrict__ dw, T* __restrict__ db) {
    param_grad_sum<T, true>(partial_w, partial_b, chunks, n, dw, db);
}

template <typename T>
__global__ void __launch_bounds__(256)
rms_norm_param_grad_sum(const double* __restrict__ partial_w, const int chunks, const int n,
                        T* __restrict__ dw) {
    param_grad_sum<T, false>(partial_w, nullptr, chunks, n, dw, nullptr);
}
"""

SOURCE = Source("norms", CODE, ("layer_norm_forward", "layer_norm_backward_input",
                                "rms_norm_forward", "rms_norm_backward_input",
                                "norm_param_grad_partials", "norm_param_grad_sum",
                                "rms_norm_param_grad_partials", "rms_norm_param_grad_sum"))
SUM_THREADS = 256


def _launch(xp, kernel, dtype, grid, block, args):
    function(xp, SOURCE, kernel, dtype)(grid, block, args)


def _affine(op, what, a, x, n, fill):
    """γ or β as a contiguous (n,) array; None becomes ``fill`` (1 or 0), which changes no value."""
    xp = backend.array_module(x)
    if a is None:
        return xp.full((n,), fill, dtype=x.dtype)
    return like(op, what, a, x, (n,))


def layer_norm_forward(x, weight, bias, eps):
    """y, μ, r of LayerNorm over the last axis of the (rows, n) GPU array ``x``.

    ``weight`` (γ) and ``bias`` (β) are (n,) arrays or None. Returns ``y`` (rows, n) and the
    saved ``mean`` and ``rstd``, each (rows,), all in x's dtype."""
    rows, n = rows_of("layer_norm", x)
    xp = backend.array_module(x, weight, bias, op="layer_norm (fused)")
    x = xp.ascontiguousarray(x)
    weight = _affine("layer_norm", "weight", weight, x, n, 1)
    bias = _affine("layer_norm", "bias", bias, x, n, 0)
    y = xp.empty_like(x)
    mean = xp.empty((rows,), dtype=x.dtype)
    rstd = xp.empty((rows,), dtype=x.dtype)
    _launch(xp, "layer_norm_forward", x.dtype, (rows,), (row_threads(n),),
            (x, weight, bias, x.dtype.type(eps), xp.int32(n), y, mean, rstd))
    return y, mean, rstd


def layer_norm_backward(grad_out, x, weight, mean, rstd, need_param_grads=True, dx_shape=None):
    """dx, dγ, dβ of LayerNorm from ``grad_out`` (rows, n), the input ``x`` and the saved
    ``mean`` and ``rstd`` (any shape of rows elements). dγ is None when ``weight`` is None;
    both are None when ``need_param_grads`` is False (the partial-sum kernels are skipped).
    dx has the shape ``dx_shape`` (see ``_cuda.fresh_dx``)."""
    rows, n = rows_of("layer_norm backward", x)
    xp = backend.array_module(grad_out, x, weight, mean, rstd, op="layer_norm backward (fused)")
    op = "layer_norm backward"
    dy = like(op, "grad_out", grad_out, x, (rows, n))
    x = xp.ascontiguousarray(x)
    mean = like(op, "mean", mean, x, (rows,))
    rstd = like(op, "rstd", rstd, x, (rows,))
    gamma = _affine(op, "weight", weight, x, n, 1)
    dx, dx_rows = fresh_dx(xp, x, dx_shape)
    _launch(xp, "layer_norm_backward_input", x.dtype, (rows,), (row_threads(n),),
            (dy, x, gamma, mean, rstd, xp.int32(n), dx_rows))
    if not need_param_grads:
        return dx, None, None
    dw, db = _param_grads(xp, dy, x, mean, rstd)
    return dx, (dw if weight is not None else None), db


def rms_norm_forward(x, weight, eps):
    """y and r of RMSNorm over the last axis of the (rows, n) GPU array ``x``.

    ``weight`` (γ) is an (n,) array or None. Returns ``y`` (rows, n) and the saved ``rstd``
    (rows,), in x's dtype."""
    rows, n = rows_of("rms_norm", x)
    xp = backend.array_module(x, weight, op="rms_norm (fused)")
    x = xp.ascontiguousarray(x)
    weight = _affine("rms_norm", "weight", weight, x, n, 1)
    y = xp.empty_like(x)
    rstd = xp.empty((rows,), dtype=x.dtype)
    _launch(xp, "rms_norm_forward", x.dtype, (rows,), (row_threads(n),),
            (x, weight, x.dtype.type(eps), xp.int32(n), y, rstd))
    return y, rstd


def rms_norm_backward(grad_out, x, weight, rstd, need_param_grads=True, dx_shape=None):
    """dx and dγ of RMSNorm from ``grad_out`` (rows, n), the input ``x`` and the saved
    ``rstd``. dγ is None when ``weight`` is None or ``need_param_grads`` is False. dx has
    the shape ``dx_shape`` (see ``_cuda.fresh_dx``)."""
    rows, n = rows_of("rms_norm backward", x)
    xp = backend.array_module(grad_out, x, weight, rstd, op="rms_norm backward (fused)")
    op = "rms_norm backward"
    dy = like(op, "grad_out", grad_out, x, (rows, n))
    x = xp.ascontiguousarray(x)
    rstd = like(op, "rstd", rstd, x, (rows,))
    gamma = _affine(op, "weight", weight, x, n, 1)
    dx, dx_rows = fresh_dx(xp, x, dx_shape)
    _launch(xp, "rms_norm_backward_input", x.dtype, (rows,), (row_threads(n),),
            (dy, x, gamma, rstd, xp.int32(n), dx_rows))
    if weight is None or not need_param_grads:
        return dx, None
    return dx, _rms_weight_grad(xp, dy, x, rstd)


def _param_grads(xp, dy, x, mean, rstd):
    """dγ = Σ_rows dy·x̂ and dβ = Σ_rows dy, x̂ = (x − μ)·r, summed in float64 in a fixed order."""
    rows, n = x.shape
    chunks, rows_per_chunk = param_grad_chunks(rows, n)
    partial_w = xp.empty((chunks, n), dtype=backend.float64)
    partial_b = xp.empty((chunks, n), dtype=backend.float64)
    tiles = -(-n // PARTIAL_TILE)
    _launch(xp, "norm_param_grad_partials", x.dtype, (tiles, chunks),
            (PARTIAL_TILE, PARTIAL_STRANDS),
            (dy, x, mean, rstd, xp.int32(rows), xp.int32(n), xp.int32(rows_per_chunk),
             partial_w, partial_b))
    dw = xp.empty((n,), dtype=x.dtype)
    db = xp.empty((n,), dtype=x.dtype)
    _launch(xp, "norm_param_grad_sum", x.dtype, (-(-n // SUM_THREADS),), (SUM_THREADS,),
            (partial_w, partial_b, xp.int32(chunks), xp.int32(n), dw, db))
    return dw, db


def _rms_weight_grad(xp, dy, x, rstd):
    """RMSNorm's dγ = Σ_rows dy·x̂, x̂ = x·r, in the chunks and order of ``_param_grads``."""
    rows, n = x.shape
    chunks, rows_per_chunk = param_grad_chunks(rows, n)
    partial_w = xp.empty((chunks, n), dtype=backend.float64)
    _launch(xp, "rms_norm_param_grad_partials", x.dtype, (-(-n // PARTIAL_TILE), chunks),
            (PARTIAL_TILE, PARTIAL_STRANDS),
            (dy, x, rstd, xp.int32(rows), xp.int32(n), xp.int32(rows_per_chunk), partial_w))
    dw = xp.empty((n,), dtype=x.dtype)
    _launch(xp, "rms_norm_param_grad_sum", x.dtype, (-(-n // SUM_THREADS),), (SUM_THREADS,),
            (partial_w, xp.int32(chunks), xp.int32(n), dw))
    return dw
