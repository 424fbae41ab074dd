"""Reductions: sum, mean, max (values)."""
from __future__ import annotations

import math

from .. import backend
from ..autograd import Function
from ._adjoint import reduction_axes


def _unreduce(grad_out, shape, axes):
    """grad_out with the reduced axes back as size 1, so that it broadcasts over the input."""
    return grad_out.reshape(tuple(1 if i in axes else n for i, n in enumerate(shape)))


def _broadcast(g, shape):
    """A read-only broadcast view; the engine copies it if it lands on a leaf's .grad."""
    return backend.array_module(g).broadcast_to(g, shape)


class Sum(Function):
    """y = Σ_{axes} x."""

    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False):
        axes = reduction_axes("sum", dim, x.ndim)
        ctx.axes, ctx.shape = axes, x.shape
        return x.sum(axis=axes, keepdims=keepdim)

    @staticmethod
    def backward(ctx, grad_out):
        """∂y/∂x_i = 1 for every summed element: dx = grad_out broadcast back. Saves the shape."""
        return _broadcast(_unreduce(grad_out, ctx.shape, ctx.axes), ctx.shape), None, None


class Mean(Function):
    """y = (1/n) Σ_{axes} x, n the number of reduced elements."""

    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False):
        axes = reduction_axes("mean", dim, x.ndim)
        ctx.axes, ctx.shape = axes, x.shape
        ctx.n = math.prod(x.shape[a] for a in axes)
        return x.mean(axis=axes, keepdims=keepdim)

    @staticmethod
    def backward(ctx, grad_out):
        """∂y/∂x_i = 1/n: dx = grad_out / n broadcast back. Saves the shape and n."""
        g = _unreduce(grad_out, ctx.shape, ctx.axes) / (ctx.n or 1)
        return _broadcast(g, ctx.shape), None, None


class Max(Function):
    """y = max_{axes} x, values only (torch.amax; PyTorch's max(dim) also returns indices)."""

    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False):
        axes = reduction_axes("max", dim, x.ndim)
        if any(x.shape[a] == 0 for a in axes):
            raise RuntimeError(f"max: cannot reduce over an empty dim of a tensor of shape "
                               f"{x.shape} (dim={dim}); the maximum of nothing is undefined")
        y = x.max(axis=axes, keepdims=True)
        ctx.axes, ctx.shape = axes, x.shape
        if ctx.recording:  # the mask is for backward alone
            ctx.save_for_backward(x == y)
        return y if keepdim else y.reshape([n for i, n in enumerate(y.shape) if i not in axes])

    @staticmethod
    def backward(ctx, grad_out):
        """∂y/∂x_i = 1 where x_i is the maximum, 0 elsewhere; ties share the gradient equally
        (PyTorch's rule for a full reduction). Saves the boolean mask x == max (1 byte/element).
        """
        (is_max,) = ctx.saved_tensors
        g = _unreduce(grad_out, ctx.shape, ctx.axes)
        count = is_max.sum(axis=ctx.axes, keepdims=True).astype(g.dtype)  # int64 would promote g
        return is_max * (g / count), None, None


def sum(x, dim=None, keepdim=False):  # noqa: A001 — PyTorch's name
    return Sum.apply(x, dim, keepdim)


def mean(x, dim=None, keepdim=False):
    return Mean.apply(x, dim, keepdim)


def max(x, dim=None, keepdim=False):  # noqa: A001 — PyTorch's name
    return Max.apply(x, dim, keepdim)
