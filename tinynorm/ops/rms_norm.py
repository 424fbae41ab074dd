"""rms_norm: RMSNorm as one op, its forward beside its hand-derived backward.

PyTorch's ``F.rms_norm(input, normalized_shape, weight=None, eps=None)``: each row (the
trailing ``normalized_shape`` dims, n elements) is divided by its root mean square and
scaled by γ (``weight``). No mean is subtracted and there is no β: LayerNorm without the
centring (Zhang & Sennrich, 2019), as LLaMA uses it. ``eps=None`` means
``finfo(dtype).eps``, as PyTorch (float32's for float16 input, as PyTorch computes).

Built like ``layer_norm`` (one Function, rows in cache-sized blocks on a few threads); with
no mean to find and subtract, it makes fewer sweeps over each block: forward one (x·(r ⊗ γ))
against LayerNorm's three, backward five against eight. Where numba is installed, each pass
is one compiled loop over the rows (``kernels.cpu_norms``), as for LayerNorm.
"""
from __future__ import annotations

from .. import backend, kernels
from ..autograd import Function
from ._adjoint import compute_dtype, widened
from ._rows import (as_rows, check_norm_args, column_parts, column_total, for_each_block,
                    kernel_blocks, outer, outer_factor, require_tensors, row_blocks, row_dot)


class RMSNorm(Function):
    """Per row x of n elements (γ = 1 when not given):

        r  = 1 / √(Σ x² / n + ε)        ε inside the root: a zero row gives r = 1/√ε
        x̂  = x·r
        y  = x̂·γ
    """

    @staticmethod
    def forward(ctx, x, normalized_shape, weight, eps):
        shape = check_norm_args("rms_norm", x, normalized_shape, weight)
        xp = backend.array_module(x, weight, op="rms_norm")
        dtype = compute_dtype(x.dtype)  # float16 is computed in float32; r stays in float32
        if eps is None:  # as PyTorch: the eps of the precision it computes in (float32 for float16)
            eps = xp.finfo(dtype).eps
        x_rows = as_rows(x, shape)
        ctx.shape = shape
        y, rstd = RMSNorm.normalize(xp, *widened(dtype, x_rows, weight), float(eps))
        ctx.save_for_backward(x_rows, weight, rstd)
        return y.reshape(x.shape).astype(x.dtype, copy=False)

    @staticmethod
    def normalize(xp, x_rows, weight, eps: float):
        """y (as x_rows: rows × n) and r, from x_rows and γ in one dtype."""
        (rows, n), dtype = x_rows.shape, x_rows.dtype
        if kernels.use_fused(x_rows):  # CUDA kernel: same maths, the same r
            w = None if weight is None else weight.reshape(n)
            return kernels.rms_norm_forward(x_rows, w, eps)
        if kernels.use_cpu_kernels(x_rows, weight):  # compiled CPU kernel: the same r
            w = xp.ones(n, dtype=dtype) if weight is None else weight.reshape(n)
            y_rows, rstd = xp.empty((rows, n), dtype=dtype), xp.empty(rows, dtype=dtype)

            def normalize_compiled(k, rows_k):
                kernels.cpu_norms.rms_norm_forward(x_rows, w, eps, rows_k.start, rows_k.stop,
                                                   y_rows, rstd)

            for_each_block(kernel_blocks(rows, n), normalize_compiled, rows * n)
            return y_rows, rstd
        on_cpu = backend.device_of(x_rows) == "cpu"
        blocks = row_blocks(rows, n, on_cpu)
        gamma = None if weight is None else outer_factor(weight.reshape(n))

        y_rows = xp.empty((rows, n), dtype=dtype)  # our own array: written in place below
        rstd = xp.zeros(rows, dtype=dtype)

        def normalize_block(k, rows_k):
            x_k, y_k = x_rows[rows_k], y_rows[rows_k]
            r = 1 / xp.sqrt(row_dot(x_k, x_k) / n + eps)
            if gamma is None:
                xp.multiply(x_k, r[:, None], out=y_k)  # y_k = x̂ = x·r
            else:
                xp.multiply(x_k, outer(r, gamma), out=y_k)  # y_k = x̂·γ = x·(r ⊗ γ), one sweep
            rstd[rows_k] = r

        if x_rows.size:
            for_each_block(blocks, normalize_block, rows * n)
        return y_rows, rstd

    @staticmethod
    def backward(ctx, grad_out):
        """With g = dy·γ, the gradient that reaches x̂ (means over the row's n elements):

            dγ = Σ_rows dy·x̂
            dx = r·(g − x̂·mean(g·x̂))

        Derivation, for one row. x̂_j depends on every x_k through r alone:

            ∂r/∂x_k  = −½ (Σ x²/n + ε)^(−3/2) · 2x_k/n = −r³ x_k / n = −r² x̂_k / n
            ∂x̂_j/∂x_k = r δ_jk + x_j·∂r/∂x_k = r(δ_jk − x̂_j x̂_k / n)

        so dx_k = Σ_j g_j ∂x̂_j/∂x_k = r(g_k − x̂_k Σ_j g_j x̂_j / n). LayerNorm's "− mean(g)"
        term is absent: it comes from ∂(x_j − μ)/∂x_k = δ_jk − 1/n, and RMSNorm subtracts no
        μ, so here that factor is plain δ_jk. What remains removes the gradient's projection
        on x̂, the direction in which moving x only changes r.

        In code (x̂ = x·r, so mean(g·x̂) = r·mean(g·x)) the same lines read, term by term:

            dx = dy·(r ⊗ γ) − x·r³·mean(g·x)        dγ = Σ_rows r·(dy·x)

        so x̂ is never formed and r·γ is one (m, n) factor (``outer``).

        Saved: x (the caller's array, a view unless x was not contiguous: then the
        contiguous copy forward made), γ, and r, one number per row: 4 bytes a row in
        float32 beyond x. dγ's block sums are added in
        float64, in block order.

        float16 is computed in float32, as in LayerNorm: r is saved in float32, and these
        lines run on float32 copies of x, dy and γ, made here and freed on return; each
        gradient rounds to float16 once, at the end.
        """
        x_rows, weight, rstd = ctx.saved_tensors
        dy = as_rows(grad_out, ctx.shape)  # read only: grad_out may be shared in the graph
        # float16: x, dy and γ in float32, as r is; each gradient rounds once at the end
        dx, dgamma = RMSNorm.gradients(
            backend.array_module(x_rows), *widened(rstd.dtype, dy, x_rows, weight), rstd,
            grad_out.shape, ctx.needs_input_grad)
        dtype = x_rows.dtype
        return (None if dx is None else dx.astype(dtype, copy=False), None,
                None if dgamma is None else dgamma.reshape(ctx.shape).astype(dtype, copy=False),
                None)

    @staticmethod
    def gradients(xp, dy, x_rows, weight, rstd, dx_shape, needs_input_grad):
        """dx (in ``dx_shape``, grad_out's) and dγ (flat, n), each None where not needed,
        from arrays all in one dtype: ``backward``'s lines."""
        need_x, _, need_gamma, _ = needs_input_grad
        (rows, n), dtype = x_rows.shape, x_rows.dtype
        if kernels.use_fused(x_rows):
            w = None if weight is None else weight.reshape(n)
            dx, dgamma = kernels.rms_norm_backward(
                dy, x_rows, w, rstd, need_param_grads=need_gamma,
                dx_shape=dx_shape)  # dx its own array, not a view: no copy as a .grad
            return dx if need_x else None, dgamma if need_gamma else None
        if kernels.use_cpu_kernels(dy, x_rows, weight, rstd):  # compiled CPU kernel
            blocks = kernel_blocks(rows, n)
            w = xp.ones(n, dtype=dtype) if weight is None else weight.reshape(n)
            # dx as on the reference path: grad_out's shape, a fresh array; (0, n) if unused
            dx = xp.empty(dx_shape if need_x else (0, n), dtype=dtype)
            dx_rows = dx.reshape(-1, n)
            dgamma_parts = column_parts(blocks, n, xp, True)

            def backward_compiled(k, rows_k):
                kernels.cpu_norms.rms_norm_backward(
                    dy, x_rows, w, rstd, rows_k.start, rows_k.stop, dx_rows, dgamma_parts[k],
                    xp.empty((1, n), dtype=dtype), need_x, need_gamma)

            for_each_block(blocks, backward_compiled, rows * n)
            return (dx if need_x else None,
                    column_total(dgamma_parts if need_gamma else None, n, dtype))
        on_cpu = backend.device_of(x_rows) == "cpu"
        blocks = row_blocks(rows, n, on_cpu) if x_rows.size else []
        gamma = xp.ones(n, dtype=dtype) if weight is None else weight.reshape(n)
        gamma_factor = outer_factor(gamma)

        # dx gets grad_out's shape (a fresh array, not a view: it may become a leaf's .grad)
        dx = xp.empty(dx_shape, dtype=dtype) if need_x else None
        dx_rows = dx.reshape(rows, n) if need_x else None
        dgamma_parts = column_parts(blocks, n, xp, need_gamma)

        def backward_block(k, rows_k):
            dy_k, x_k, r = dy[rows_k], x_rows[rows_k], rstd[rows_k]
            dy_x = dy_k * x_k
            if need_gamma:
                dgamma_parts[k] = xp.einsum("ij,i->j", dy_x, r)  # Σ r·(dy·x)
            if not need_x:
                return
            mean_g_x = row_dot(dy_x, gamma) / n
            dx_k = dx_rows[rows_k]  # written in place, in dx's own rows
            xp.multiply(dy_k, outer(r, gamma_factor), out=dx_k)  # dy·(r ⊗ γ)
            xp.multiply(x_k, (r * r * r * mean_g_x)[:, None], out=dy_x)  # dy·x is spent
            xp.subtract(dx_k, dy_x, out=dx_k)  # − x·r³·mean(g·x)

        for_each_block(blocks, backward_block, rows * n)
        return dx, column_total(dgamma_parts, n, dtype)


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """RMSNorm over the trailing dims ``normalized_shape`` (an int or a tuple), as
    ``torch.nn.functional.rms_norm``; see ``RMSNorm`` for the maths."""
    require_tensors("rms_norm", input=input, weight=weight)
    return RMSNorm.apply(input, normalized_shape, weight, eps)
