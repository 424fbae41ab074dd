"""Compiled CPU kernels (numba) for LayerNorm and RMSNorm, forward and backward.

The array code in tinynorm.ops.layer_norm and tinynorm.ops.rms_norm is the reference: these
kernels compute the same formulas, in the same symbols (the ops' docstrings derive them),
and save μ and r as they do (μ refined once, as the LayerNorm op's docstring says), so a
graph recorded on one path can run backward on the other.

Why: a NumPy expression sweeps its whole operand, so a normalisation costs several sweeps
per block of rows (LayerNorm's forward about six). A loop over one row at a time reads the
row from memory once and keeps it in L1 for the next pass, as PyTorch's fused C++ kernels
do: each kernel is one pass over memory.

Each kernel takes the (rows, n) arrays whole and works on rows ``start:stop``, writing only
those rows of its outputs and, in backward, adding into its own float64 row of column sums
(dγ, dβ). The ops hand out the row blocks to threads (``tinynorm.ops._rows``), so the result
is the same bits for any thread count. A missing γ (β) is passed as ones (zeros), which
changes no value.

Row sums accumulate in x's precision. Measured on (8192, 768) float32, float64 sums made the
forward about 20% slower (half as many lanes per vector), and float32 is enough: LLVM splits
each row sum into many vector partial sums, so a sum of n elements carries far fewer than n
roundings; the column sums of dγ and dβ, which add up to 10^5 rows, end in float64.

Only the row sums (the ``row_sum`` helpers below) are compiled with `reassoc`, the licence
to add in another order; the rest runs in the order written (``_numba``). Each row sum is a
loop that only reads memory: a loop that also writes is vectorised behind a run-time check
that its writes miss its reads, with a scalar fallback where the arrays lie within a few
hundred bytes of each other (tiny arrays), and a sum taken by the other version would add in
another order: the same inputs could give other bits depending on where they were allocated.

Kernels are plain Python loops; ``cpu_kernel`` compiles them on first call.
"""
from __future__ import annotations

import math

from ._numba import cpu_kernel, row_sum

# Backward adds each row's dγ (and dβ) terms into a row of column sums in x's precision,
# and those into the block's float64 row every PARAM_ROWS rows: at most 64 roundings in
# float32 before float64 (the reference path allows 256). Adding every row into float64
# directly made LayerNorm's backward about 1.5x slower on (8192, 768) float32 (per element,
# two conversions and two float64 read-modify-writes); every 16 rows cost about 8% more
# than every 64, and every 256 no less.
PARAM_ROWS = 64


# ---- row sums ------------------------------------------------------------------------------
@row_sum
def _sum(a):
    """Σ a."""
    total = a.dtype.type(0)
    for j in range(a.shape[0]):
        total += a[j]
    return total


@row_sum
def _shifted_sums(a, shift):
    """Σ (a − shift) and Σ (a − shift)²."""
    sum_d = sum_d2 = a.dtype.type(0)
    for j in range(a.shape[0]):
        d = a[j] - shift
        sum_d += d
        sum_d2 += d * d
    return sum_d, sum_d2


@row_sum
def _sum_of_squares(a):
    """Σ a²."""
    total = a.dtype.type(0)
    for j in range(a.shape[0]):
        total += a[j] * a[j]
    return total


@row_sum
def _sum_of_products(a, b, c):
    """Σ a·b·c."""
    total = a.dtype.type(0)
    for j in range(a.shape[0]):
        total += a[j] * b[j] * c[j]
    return total


@row_sum
def _gradient_sums(dy, weight, a, shift):
    """Σ g and Σ g·(a − shift), with g = dy·γ."""
    sum_g = sum_g_d = a.dtype.type(0)
    for j in range(a.shape[0]):
        g = dy[j] * weight[j]
        sum_g += g
        sum_g_d += g * (a[j] - shift)
    return sum_g, sum_g_d


# ---- the kernels -----------------------------------------------------------------------------
@cpu_kernel
def layer_norm_forward(x, weight, bias, eps, start, stop, y, mean, rstd):
    """y, μ and r of rows start:stop: LayerNorm's forward, with μ refined and the variance
    of the shifted row (the op's docstring has the formulas):

        μ0 = Σ x / n
        δ  = mean(x − μ0),  s² = mean((x − μ0)²)     one pass for both
        μ  = μ0 + δ                                   the rounding of Σx/n, δ, taken back out
        σ² = s² − δ²                                  δ is rounding-sized: nothing cancels
        r  = 1 / √(σ² + ε)
        y  = ((x − μ0) − δ)·r·γ + β                   in this order: μ0 + δ would round
    """
    n = x.shape[1]
    zero, one, count, eps = x.dtype.type(0), x.dtype.type(1), x.dtype.type(n), x.dtype.type(eps)
    for i in range(start, stop):
        x_i, y_i = x[i], y[i]
        mu0 = _sum(x_i) / count
        sum_d, sum_d2 = _shifted_sums(x_i, mu0)
        delta = sum_d / count
        r = one / math.sqrt(max(sum_d2 / count - delta * delta, zero) + eps)
        for j in range(n):
            y_i[j] = ((x_i[j] - mu0) - delta) * r * weight[j] + bias[j]
        mean[i] = mu0 + delta
        rstd[i] = r


@cpu_kernel
def layer_norm_backward(dy, x, weight, mean, rstd, start, stop, dx, dgamma, dbeta, row_sums,
                        need_x, need_params):
    """dx of rows start:stop (if need_x), and their column sums added into dγ and dβ, this
    block's float64 rows (if need_params): LayerNorm's backward, as the op's docstring.

        g  = dy·γ,  x̂ = (x − μ)·r
        dx = r·((g − mean(g)) − x̂·mean(g·x̂))        mean(g·x̂) = r·mean(g·(x − μ))
        dγ += Σ_rows dy·x̂,   dβ += Σ_rows dy

    g − mean(g) is formed first, so a row whose g is constant (n = 1) gets dx = 0 exactly.
    ``row_sums`` is (2, n) scratch in x's dtype (see PARAM_ROWS). dβ's terms are added in the
    loop that writes dx: a loop of its own over dy made the kernel about 8% slower on one
    thread, (8192, 768) float32.
    """
    n = x.shape[1]
    zero, count = x.dtype.type(0), x.dtype.type(n)
    dgamma_rows, dbeta_rows = row_sums[0], row_sums[1]
    dgamma_rows[:] = zero
    dbeta_rows[:] = zero
    for i in range(start, stop):
        x_i, dy_i, mu, r = x[i], dy[i], mean[i], rstd[i]
        if need_x:
            sum_g, sum_g_c = _gradient_sums(dy_i, weight, x_i, mu)
            mean_g, mean_g_xhat = sum_g / count, r * (sum_g_c / count)
            dx_i = dx[i]
            if need_params:  # the loop twice: LLVM kept a test of need_params in one loop
                for j in range(n):
                    x_hat = (x_i[j] - mu) * r
                    dx_i[j] = r * ((dy_i[j] * weight[j] - mean_g) - x_hat * mean_g_xhat)
                    dgamma_rows[j] += dy_i[j] * x_hat
                    dbeta_rows[j] += dy_i[j]
            else:
                for j in range(n):
                    x_hat = (x_i[j] - mu) * r
                    dx_i[j] = r * ((dy_i[j] * weight[j] - mean_g) - x_hat * mean_g_xhat)
        elif need_params:
            for j in range(n):
                dgamma_rows[j] += dy_i[j] * ((x_i[j] - mu) * r)
                dbeta_rows[j] += dy_i[j]
        if need_params:
            if (i - start) % PARAM_ROWS == PARAM_ROWS - 1 or i == stop - 1:
                for j in range(n):
                    dgamma[j] += dgamma_rows[j]
                    dbeta[j] += dbeta_rows[j]
                dgamma_rows[:] = zero
                dbeta_rows[:] = zero


@cpu_kernel
def rms_norm_forward(x, weight, eps, start, stop, y, rstd):
    """y and r of rows start:stop: RMSNorm's forward, as the op's docstring.

        r = 1 / √(Σ x² / n + ε)
        y = x·r·γ
    """
    n = x.shape[1]
    one, count, eps = x.dtype.type(1), x.dtype.type(n), x.dtype.type(eps)
    for i in range(start, stop):
        x_i, y_i = x[i], y[i]
        r = one / math.sqrt(_sum_of_squares(x_i) / count + eps)
        for j in range(n):
            y_i[j] = x_i[j] * r * weight[j]
        rstd[i] = r


@cpu_kernel
def rms_norm_backward(dy, x, weight, rstd, start, stop, dx, dgamma, row_sums, need_x,
                      need_gamma):
    """dx of rows start:stop (if need_x), and their column sums added into dγ, this block's
    float64 row (if need_gamma): RMSNorm's backward, as the op's docstring.

        g  = dy·γ,  x̂ = x·r
        dx = r·(g − x̂·mean(g·x̂))        mean(g·x̂) = r·mean(g·x)
        dγ += Σ_rows dy·x̂

    ``row_sums`` is (1, n) scratch in x's dtype (see PARAM_ROWS).
    """
    n = x.shape[1]
    zero, count = x.dtype.type(0), x.dtype.type(n)
    dgamma_rows = row_sums[0]
    dgamma_rows[:] = zero
    for i in range(start, stop):
        x_i, dy_i, r = x[i], dy[i], rstd[i]
        if need_x:
            mean_g_xhat = r * (_sum_of_products(dy_i, weight, x_i) / count)
            dx_i = dx[i]
            if need_gamma:  # the loop twice, as in layer_norm_backward
                for j in range(n):
                    x_hat = x_i[j] * r
                    dx_i[j] = r * (dy_i[j] * weight[j] - x_hat * mean_g_xhat)
                    dgamma_rows[j] += dy_i[j] * x_hat
            else:
                for j in range(n):
                    x_hat = x_i[j] * r
                    dx_i[j] = r * (dy_i[j] * weight[j] - x_hat * mean_g_xhat)
        elif need_gamma:
            for j in range(n):
                dgamma_rows[j] += dy_i[j] * (x_i[j] * r)
        if need_gamma:
            if (i - start) % PARAM_ROWS == PARAM_ROWS - 1 or i == stop - 1:
                for j in range(n):
                    dgamma[j] += dgamma_rows[j]
                dgamma_rows[:] = zero
