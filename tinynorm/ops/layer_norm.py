"""layer_norm: LayerNorm as one op, its forward beside its hand-derived backward.

PyTorch's ``F.layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5)``: each
row (the trailing ``normalized_shape`` dims, n elements) is centred and scaled to unit
variance, then scaled by γ (``weight``) and shifted by β (``bias``).

One Function rather than a composition of mean, var, sub, sqrt, div, mul and add. Composed
as the seed writes it (``models.ComposedLayerNorm``), autograd keeps arrays the size of x
for the products' backward (x̂ in tinynorm, whose div saves its output; x − μ and x̂ in
PyTorch), and every op sweeps the whole array, forward and backward: eight to twelve times
the fused op's time at (8192, 768) in the two libraries (``python benchmarks/norms.py
--composed``). Fused, backward needs x and two numbers per row, and both passes walk x in
cache-sized blocks on a few threads (see ``_rows``). Where numba is installed, each pass is
instead one compiled loop over the rows (``kernels.cpu_norms``), on the same threads.
"""
from __future__ import annotations

from .. import backend, kernels
from ..autograd import Function
from ._adjoint import compute_dtype, widened
from ._rows import (as_block_rows, as_rows, check_norm_args, column_parts, column_total,
                    for_each_block, kernel_blocks, outer, outer_factor, require_tensors,
                    row_blocks, row_dot)


class LayerNorm(Function):
    """Per row x of n elements (γ = 1 and β = 0 when not given):

        μ  = Σ x / n
        σ² = Σ (x − μ)² / n             two passes over the row, never Σx²/n − μ²: that
                                        difference cancels catastrophically when |μ| ≫ σ
        r  = 1 / √(σ² + ε)              ε inside the root: a constant row gives r = 1/√ε
        x̂  = (x − μ)·r
        y  = x̂·γ + β

    On the NumPy path μ keeps the rounding of Σx in x's precision, a few ulp of |μ| (2e-3 at
    |μ| = 1e4 in float32, as in PyTorch): x̂ is off by that times r. The compiled kernels (CPU
    and CUDA) refine μ once more, μ + mean(x − μ), in the pass that sums (x − μ)² anyway,
    which removes it; on the NumPy path it would cost a fifth of the forward. The μ saved
    for backward is the μ computed, rounded to the dtype it is computed in (float32 for
    float16), as PyTorch saves its mean: refined on the compiled paths, so that in backward
    x̂ is off by up to half an ulp of |μ| times r there (at |μ| = 50, σ = 1e-3 in float32:
    about 6e-4 in one row's dγ), and on the NumPy path by the few ulp of Σx/n, about as
    much as in PyTorch.
    """

    @staticmethod
    def forward(ctx, x, normalized_shape, weight, bias, eps):
        shape = check_norm_args("layer_norm", x, normalized_shape, weight, bias)
        xp = backend.array_module(x, weight, bias, op="layer_norm")
        x_rows = as_rows(x, shape)
        ctx.shape = shape
        # float16 is computed in float32 (see compute_dtype); μ and r stay in float32
        y, mean, rstd = LayerNorm.normalize(
            xp, *widened(compute_dtype(x.dtype), x_rows, weight, bias), float(eps))
        ctx.save_for_backward(x_rows, weight, mean, rstd)
        return y.reshape(x.shape).astype(x.dtype, copy=False)

    @staticmethod
    def normalize(xp, x_rows, weight, bias, eps: float):
        """y (as x_rows: rows × n), μ and r, from x_rows, γ and β all in one dtype."""
        (rows, n), dtype = x_rows.shape, x_rows.dtype
        if kernels.use_fused(x_rows):  # CUDA kernel: the same μ and r (its μ refined once)
            w, b = (None if p is None else p.reshape(n) for p in (weight, bias))
            return kernels.layer_norm_forward(x_rows, w, b, eps)
        if kernels.use_cpu_kernels(x_rows, weight, bias):  # compiled CPU kernel: the same μ, r
            w = xp.ones(n, dtype=dtype) if weight is None else weight.reshape(n)
            b = xp.zeros(n, dtype=dtype) if bias is None else bias.reshape(n)
            y_rows = xp.empty((rows, n), dtype=dtype)
            mean, rstd = xp.empty(rows, dtype=dtype), xp.empty(rows, dtype=dtype)

            def normalize_compiled(k, rows_k):
                kernels.cpu_norms.layer_norm_forward(x_rows, w, b, eps, rows_k.start, rows_k.stop,
                                                     y_rows, mean, rstd)

            for_each_block(kernel_blocks(rows, n), normalize_compiled, rows * n)
            return y_rows, mean, rstd
        on_cpu = backend.device_of(x_rows) == "cpu"
        blocks = row_blocks(rows, n, on_cpu)
        step = blocks[0][1].stop if blocks else 0
        gamma = None if weight is None else outer_factor(weight.reshape(n))
        beta = None if bias is None else as_block_rows(bias.reshape(n), step, on_cpu)
        ones = xp.ones(n, dtype=dtype)

        y_rows = xp.empty((rows, n), dtype=dtype)  # our own array: the steps below write into it
        mean = xp.zeros(rows, dtype=dtype)
        rstd = xp.zeros(rows, dtype=dtype)

        def normalize_block(k, rows_k):
            x_k, y_k = x_rows[rows_k], y_rows[rows_k]
            m = y_k.shape[0]
            mu = row_dot(x_k, ones) / n
            xp.subtract(x_k, mu[:, None], out=y_k)  # y_k = x − μ
            r = 1 / xp.sqrt(row_dot(y_k, y_k) / n + eps)
            if gamma is None:
                xp.multiply(y_k, r[:, None], out=y_k)  # y_k = x̂ = (x − μ)·r
            else:
                y_k *= outer(r, gamma)  # y_k = x̂·γ = (x − μ)·(r ⊗ γ), one sweep
            if beta is not None:
                xp.add(y_k, beta[:m], out=y_k)
            mean[rows_k], rstd[rows_k] = mu, r

        if x_rows.size:
            for_each_block(blocks, normalize_block, rows * n)
        return y_rows, mean, rstd

    @staticmethod
    def backward(ctx, grad_out):
        """With g = dy·γ, the gradient that reaches x̂ (means over the row's n elements):

            dβ = Σ_rows dy
            dγ = Σ_rows dy·x̂
            dx = r·(g − mean(g) − x̂·mean(g·x̂))

        Derivation, for one row. Every x̂_j depends on every x_k, through μ and r:

            ∂μ/∂x_k  = 1/n
            ∂σ²/∂x_k = 2(x_k − μ)/n            (the term through μ is 2Σ_j(x_j − μ)/n² = 0)
            ∂r/∂x_k  = −½ (σ² + ε)^(−3/2) · 2(x_k − μ)/n = −r³(x_k − μ)/n = −r² x̂_k / n
            ∂x̂_j/∂x_k = r(δ_jk − 1/n) + (x_j − μ)·∂r/∂x_k = r(δ_jk − 1/n − x̂_j x̂_k / n)

        so dx_k = Σ_j g_j ∂x̂_j/∂x_k = r(g_k − Σ_j g_j / n − x̂_k Σ_j g_j x̂_j / n), the line
        above: the gradient minus its mean (what moving μ undoes) minus its projection on x̂
        (what moving r undoes). dγ and dβ sum y = x̂·γ + β's partials over the rows.

        In code, with c = x − μ (so x̂ = c·r and mean(g·x̂) = r·mean(g·c)), the same lines
        read, term by term:

            dx = dy·(r ⊗ γ) − r·mean(g) − c·r³·mean(g·c)        dγ = Σ_rows r·(dy·c)

        so x̂ is never formed and r·γ is one (m, n) factor (``outer``): fewer sweeps over
        each block of m rows.

        Saved: x (the caller's array, a view unless x was not contiguous: a strided x is
        held as the contiguous copy that forward made, n numbers a row of new memory), γ,
        and μ and r, two numbers per row: 8 bytes a row in float32 beyond x. x̂ is recomputed
        here, block by block in cache (as c = x − μ), rather than kept from forward, which
        would hold n more numbers a row.

        Each block's column sums for dγ and dβ go to their own float64 row, added in block
        order at the end: accurate over 10^5 rows, and the same bits for any thread count.

        float16 is computed in float32, as in PyTorch (``compute_dtype``): μ and r are saved
        in float32 (still 8 bytes a row), and these lines run on float32 copies of x, dy and
        γ, made here and freed on return; each gradient rounds to float16 once, at the end.
        """
        x_rows, weight, mean, rstd = ctx.saved_tensors
        dy = as_rows(grad_out, ctx.shape)  # read only: grad_out may be shared in the graph
        # float16: x, dy and γ in float32, as μ and r are; each gradient rounds once at the end
        dx, dgamma, dbeta = LayerNorm.gradients(
            backend.array_module(x_rows), *widened(mean.dtype, dy, x_rows, weight), mean, rstd,
            grad_out.shape, ctx.needs_input_grad)
        dtype, shape = x_rows.dtype, ctx.shape
        return (None if dx is None else dx.astype(dtype, copy=False), None,
                None if dgamma is None else dgamma.reshape(shape).astype(dtype, copy=False),
                None if dbeta is None else dbeta.reshape(shape).astype(dtype, copy=False), None)

    @staticmethod
    def gradients(xp, dy, x_rows, weight, mean, rstd, dx_shape, needs_input_grad):
        """dx (in ``dx_shape``, grad_out's), dγ and dβ (flat, n), each None where not needed,
        from arrays all in one dtype: ``backward``'s lines."""
        need_x, _, need_gamma, need_beta, _ = needs_input_grad
        (rows, n), dtype = x_rows.shape, x_rows.dtype
        if kernels.use_fused(x_rows):
            w = None if weight is None else weight.reshape(n)
            dx, dgamma, dbeta = kernels.layer_norm_backward(
                dy, x_rows, w, mean, rstd, need_param_grads=need_gamma or need_beta,
                dx_shape=dx_shape)  # dx its own array, not a view: no copy as a .grad
            return (dx if need_x else None, dgamma if need_gamma else None,
                    dbeta if need_beta else None)
        if kernels.use_cpu_kernels(dy, x_rows, weight, mean, rstd):  # compiled CPU kernel
            blocks = kernel_blocks(rows, n)
            w = xp.ones(n, dtype=dtype) if weight is None else weight.reshape(n)
            # dx as on the reference path: grad_out's shape, a fresh array; (0, n) if unused
            dx = xp.empty(dx_shape if need_x else (0, n), dtype=dtype)
            dx_rows = dx.reshape(-1, n)
            dgamma_parts, dbeta_parts = (column_parts(blocks, n, xp, True) for _ in range(2))

            def backward_compiled(k, rows_k):
                kernels.cpu_norms.layer_norm_backward(
                    dy, x_rows, w, mean, rstd, rows_k.start, rows_k.stop, dx_rows,
                    dgamma_parts[k], dbeta_parts[k], xp.empty((2, n), dtype=x_rows.dtype),
                    need_x, need_gamma or need_beta)

            for_each_block(blocks, backward_compiled, rows * n)
            return (dx if need_x else None,
                    column_total(dgamma_parts if need_gamma else None, n, dtype),
                    column_total(dbeta_parts if need_beta else None, n, dtype))
        on_cpu = backend.device_of(x_rows) == "cpu"
        blocks = row_blocks(rows, n, on_cpu) if x_rows.size else []
        ones = xp.ones(n, dtype=dtype)
        gamma = ones if weight is None else weight.reshape(n)
        gamma_factor = outer_factor(gamma)

        # dx gets grad_out's shape (a fresh array, not a view: it may become a leaf's .grad)
        dx = xp.empty(dx_shape, dtype=dtype) if need_x else None
        dx_rows = dx.reshape(rows, n) if need_x else None
        dgamma_parts = column_parts(blocks, n, xp, need_gamma)
        dbeta_parts = column_parts(blocks, n, xp, need_beta)

        def backward_block(k, rows_k):
            dy_k, r = dy[rows_k], rstd[rows_k]
            if need_beta:
                dbeta_parts[k] = dy_k.sum(axis=0)
            if not (need_gamma or need_x):
                return
            c = xp.subtract(x_rows[rows_k], mean[rows_k][:, None])  # x − μ
            dy_c = dy_k * c
            if need_gamma:
                dgamma_parts[k] = xp.einsum("ij,i->j", dy_c, r)  # Σ r·(dy·c)
            if not need_x:
                return
            mean_g_c = row_dot(dy_c, gamma) / n
            dx_k = dx_rows[rows_k]  # written in place, in dx's own rows
            xp.multiply(dy_k, outer(r, gamma_factor), out=dx_k)  # dy·(r ⊗ γ) = r·g
            # − r·mean(g), taken as the row mean of the r·g just computed: the same rounded
            # numbers, so a row whose g is constant gets exactly that term's 0 (a row of one
            # element, n = 1, gets dx = 0 exactly)
            xp.subtract(dx_k, (row_dot(dx_k, ones) / n)[:, None], out=dx_k)
            c *= (r * r * r * mean_g_c)[:, None]
            xp.subtract(dx_k, c, out=dx_k)  # − c·r³·mean(g·c)

        for_each_block(blocks, backward_block, rows * n)
        return dx, column_total(dgamma_parts, n, dtype), column_total(dbeta_parts, n, dtype)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """LayerNorm over the trailing dims ``normalized_shape`` (an int or a tuple), as
    ``torch.nn.functional.layer_norm``; see ``LayerNorm`` for the maths."""
    require_tensors("layer_norm", input=input, weight=weight, bias=bias)
    return LayerNorm.apply(input, normalized_shape, weight, bias, eps)
