"""softmax and log_softmax along one dim, numerically stable."""
from __future__ import annotations

from .. import backend, kernels
from ..autograd import Function
from ._adjoint import normalize_dim, require_float


class Softmax(Function):
    """y_i = e^(x_i − m) / Σ_j e^(x_j − m), m = max_j x_j (subtracting m changes nothing
    mathematically and keeps every exponent ≤ 0, so nothing overflows)."""

    @staticmethod
    def forward(ctx, x, dim):
        require_float("softmax", x)
        d = normalize_dim("softmax", dim, x.ndim)
        if d == x.ndim - 1 and kernels.use_fused(x):  # CUDA kernel: same maths
            y = kernels.softmax_forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        else:
            xp = backend.array_module(x)
            y = xp.exp(x - x.max(axis=d, keepdims=True)) if x.size else x.copy()
            y /= y.sum(axis=d, keepdims=True)
        ctx.dim = d
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        """∂y_i/∂x_j = y_i (δ_ij − y_j), so dx_j = Σ_i g_i y_i (δ_ij − y_j)
        = y_j (g_j − Σ_i g_i y_i).  Only the output y is needed: saves y (the output)."""
        (y,) = ctx.saved_tensors
        if ctx.dim == y.ndim - 1 and kernels.use_fused(y):
            n = y.shape[-1]
            # dx made in y's shape: its own array, not a view (it may become a leaf's .grad)
            return kernels.softmax_backward(grad_out.reshape(-1, n), y.reshape(-1, n),
                                            dx_shape=y.shape), None
        gy = grad_out * y
        return gy - y * gy.sum(axis=ctx.dim, keepdims=True), None


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
            shifted = x - x.max(axis=d, keepdims=True)
            y = shifted - xp.log(xp.exp(shifted).sum(axis=d, keepdims=True))
        ctx.dim = d
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        """∂y_i/∂x_j = δ_ij − softmax_j, so dx_j = g_j − softmax_j Σ_i g_i, with
        softmax = e^y. Saves y (the output) and recomputes e^y."""
        (y,) = ctx.saved_tensors
        xp = backend.array_module(y)
        return grad_out - xp.exp(y) * grad_out.sum(axis=ctx.dim, keepdims=True), None


def softmax(x, dim):
    return Softmax.apply(x, dim)


def log_softmax(x, dim):
    return LogSoftmax.apply(x, dim)
