"""softmax and log_softmax along one dim, numerically stable.

float16 input is computed in float32 (``compute_dtype``), as PyTorch's kernels do, and each
result rounds to float16 once: computed in float16, y and dx were 2-4 times further from the
exact values than PyTorch's. The saved output stays in x's dtype, as PyTorch's does."""
from __future__ import annotations

from .. import backend, kernels
from ..autograd import Function
from ._adjoint import compute_dtype, normalize_dim, require_float, widened


class Softmax(Function):
    """y_i = e^(x_i − m) / Σ_j e^(x_j − m), m = max_j x_j (subtracting m changes nothing
    mathematically and keeps every exponent ≤ 0, so nothing overflows)."""

    @staticmethod
    def forward(ctx, x, dim):
        require_float("softmax", x)
        d = normalize_dim("softmax", dim, x.ndim)
        (xc,) = widened(compute_dtype(x.dtype), x)
        if d == x.ndim - 1 and kernels.use_fused(xc):  # CUDA kernel: same maths
            y = kernels.softmax_forward(xc.reshape(-1, x.shape[-1])).reshape(x.shape)
        else:
            xp = backend.array_module(xc)
            y = xp.exp(xc - xc.max(axis=d, keepdims=True)) if x.size else xc.copy()
            y /= y.sum(axis=d, keepdims=True)
        y = y.astype(x.dtype, copy=False)
        ctx.dim = d
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        """∂y_i/∂x_j = y_i (δ_ij − y_j), so dx_j = Σ_i g_i y_i (δ_ij − y_j)
        = y_j (g_j − Σ_i g_i y_i).  Only the output y is needed: saves y (the output)."""
        (saved,) = ctx.saved_tensors
        y, g = widened(compute_dtype(saved.dtype), saved, grad_out)
        if ctx.dim == y.ndim - 1 and kernels.use_fused(y, g):
            n = y.shape[-1]
            # dx made in y's shape: its own array, not a view (it may become a leaf's .grad)
            dx = kernels.softmax_backward(g.reshape(-1, n), y.reshape(-1, n), dx_shape=y.shape)
        else:
            gy = g * y
            dx = gy - y * gy.sum(axis=ctx.dim, keepdims=True)
        return dx.astype(saved.dtype, copy=False), None


class LogSoftmax(Function):
    """y_i = x_i − m − log Σ_j e^(x_j − m), m = max_j x_j."""

    @staticmethod
    def forward(ctx, x, dim):
        require_float("log_softmax", x)
        d = normalize_dim("log_softmax", dim, x.ndim)
        xp = backend.array_module(x)
        if x.size == 0:
            y = x.copy()
        else:
            (xc,) = widened(compute_dtype(x.dtype), x)
            shifted = xc - xc.max(axis=d, keepdims=True)
            y = shifted - xp.log(xp.exp(shifted).sum(axis=d, keepdims=True))
            y = y.astype(x.dtype, copy=False)
        ctx.dim = d
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        """∂y_i/∂x_j = δ_ij − softmax_j, so dx_j = g_j − softmax_j Σ_i g_i, with
        softmax = e^y. Saves y (the output) and recomputes e^y."""
        (saved,) = ctx.saved_tensors
        y, g = widened(compute_dtype(saved.dtype), saved, grad_out)
        xp = backend.array_module(y)
        dx = g - xp.exp(y) * g.sum(axis=ctx.dim, keepdims=True)
        return dx.astype(saved.dtype, copy=False), None


def softmax(x, dim):
    return Softmax.apply(x, dim)


def log_softmax(x, dim):
    return LogSoftmax.apply(x, dim)
