"""Reductions: sum, mean, max and min (values), var and std."""
from __future__ import annotations

import math

from .. import backend
from ..autograd import Function
from ._adjoint import compute_dtype, reduction_axes, require_float, summed, widened


def _unreduce(grad_out, shape, axes):
    """grad_out with the reduced axes back as size 1, so that it broadcasts over the input."""
    return grad_out.reshape(tuple(1 if i in axes else n for i, n in enumerate(shape)))


def _squeezed(y, axes, keepdim):
    """y (reduced with keepdims) without the reduced axes unless ``keepdim``."""
    return y if keepdim else y.reshape([n for i, n in enumerate(y.shape) if i not in axes])


def _broadcast(g, shape):
    """A read-only broadcast view; the engine copies it if it lands on a leaf's .grad."""
    return backend.array_module(g).broadcast_to(g, shape)


class Sum(Function):
    """y = Σ_{axes} x. float16 is summed in float32 and rounded once, as PyTorch (``summed``):
    in float16 itself, 3000 numbers below 1 summed along dim 0 came out 0.6% low."""

    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False):
        axes = reduction_axes("sum", dim, x.ndim)
        ctx.axes, ctx.shape = axes, x.shape
        return summed(x, axes, keepdim)

    @staticmethod
    def backward(ctx, grad_out):
        """∂y/∂x_i = 1 for every summed element: dx = grad_out broadcast back. Saves the shape."""
        return _broadcast(_unreduce(grad_out, ctx.shape, ctx.axes), ctx.shape), None, None


class Mean(Function):
    """y = (1/n) Σ_{axes} x, n the number of reduced elements."""

    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False):
        require_float("mean", x)  # as PyTorch: the mean of integers has no dtype to be in
        axes = reduction_axes("mean", dim, x.ndim)
        ctx.axes, ctx.shape = axes, x.shape
        ctx.n = math.prod(x.shape[a] for a in axes)
        if x.dtype == backend.float16:  # in float32, rounded once, as Sum
            return x.mean(axis=axes, keepdims=keepdim, dtype=backend.float32).astype(x.dtype)
        return x.mean(axis=axes, keepdims=keepdim)

    @staticmethod
    def backward(ctx, grad_out):
        """∂y/∂x_i = 1/n: dx = grad_out / n broadcast back. Saves the shape, the axes and n.

        float16 is divided in float32 and rounded once: NumPy divides a float16 array by a
        Python int in float16, where n above 65504 is inf, and every gradient was 0."""
        g = _unreduce(grad_out, ctx.shape, ctx.axes)
        scaled = g.astype(compute_dtype(g.dtype), copy=False) / (ctx.n or 1)
        return _broadcast(scaled.astype(g.dtype, copy=False), ctx.shape), None, None


def _extreme(ctx, op: str, x, dim, keepdim):
    """Max's and Min's forward: y = x.max or x.min over the axes, and the mask x == y saved
    for backward (when recording)."""
    axes = reduction_axes(op, dim, x.ndim)
    if any(x.shape[a] == 0 for a in axes):
        raise RuntimeError(f"{op}: cannot reduce over an empty dim of a tensor of shape "
                           f"{x.shape} (dim={dim}); the {op}imum of nothing is undefined")
    y = getattr(x, op)(axis=axes, keepdims=True)
    ctx.axes, ctx.shape = axes, x.shape
    if ctx.recording:  # the mask is for backward alone
        ctx.save_for_backward(x == y)
    return _squeezed(y, axes, keepdim)


class Max(Function):
    """y = max_{axes} x, values only (torch.amax; PyTorch's max(dim) also returns indices)."""

    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False):
        return _extreme(ctx, "max", x, dim, keepdim)

    @staticmethod
    def backward(ctx, grad_out):
        """∂y/∂x_i = 1 where x_i is the maximum, 0 elsewhere; ties share the gradient equally,
        as torch.amax and amin do for any dims (torch.max(dim) sends it to one index
        instead). Saves the boolean mask x == max (1 byte/element).

        The share g / count is taken in ``compute_dtype``: a count above 65504 is inf in
        float16 (and an int64 count would promote g to float64).
        """
        (is_max,) = ctx.saved_tensors
        g = _unreduce(grad_out, ctx.shape, ctx.axes)
        count = is_max.sum(axis=ctx.axes, keepdims=True).astype(compute_dtype(g.dtype))
        return is_max * (g / count).astype(g.dtype, copy=False), None, None


class Min(Max):
    """y = min_{axes} x, values only (torch.amin). Backward is Max's, on the mask x == min."""

    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False):
        return _extreme(ctx, "min", x, dim, keepdim)


def _moments(op, x, dim, correction):
    """(axes, μ, σ², D) over the reduced axes, all kept as size 1: μ the mean of their n
    elements, D = max(n − c, 0) and σ² = Σ (x − μ)² / D. Two passes, μ first: never
    Σx²/n − μ², which cancels when |μ| ≫ σ (see layer_norm). D = 0 gives inf, or NaN where
    the sum is 0 (n = 1 with c = 1, or no elements), with NumPy's warning, as PyTorch's.
    μ and σ² are in ``compute_dtype``: float16 is computed in float32, as PyTorch, since a
    deviation past 256 squares past float16's largest number (its variance was inf)."""
    require_float(op, x)
    axes = reduction_axes(op, dim, x.ndim)
    n = math.prod(x.shape[a] for a in axes)
    divisor = n - correction if n > correction else 0.0
    (x,) = widened(compute_dtype(x.dtype), x)
    mean = x.sum(axis=axes, keepdims=True) / n
    deviation = x - mean
    deviation *= deviation
    var = deviation.sum(axis=axes, keepdims=True) / divisor
    return axes, mean, var, divisor


class Var(Function):
    """y = Σ_{axes} (x − μ)² / D, μ the mean over the reduced axes (n elements), D = n − c
    (at least 0), c the correction: 1 (Bessel's) by default, 0 with unbiased=False."""

    @staticmethod
    def forward(ctx, x, dim, correction, keepdim):
        axes, mean, var, divisor = _moments("var", x, dim, correction)
        ctx.axes, ctx.divisor = axes, divisor
        ctx.save_for_backward(x, mean)
        return _squeezed(var.astype(x.dtype, copy=False), axes, keepdim)

    @staticmethod
    def backward(ctx, grad_out):
        """Each x_k moves y directly and through μ (∂μ/∂x_k = 1/n):

            ∂y/∂x_k = (2/D) Σ_j (x_j − μ)(δ_jk − 1/n) = 2(x_k − μ)/D,

        the term through μ being −(2/(nD)) Σ_j (x_j − μ) = 0: deviations from the mean sum
        to 0. So dx = grad_out · 2(x − μ)/D (inf or NaN where D = 0, as the output). Saves x
        (the caller's array: no new array, though it keeps an intermediate x alive) and μ,
        one number per reduced group; x − μ is recomputed here rather than kept (n more
        numbers per group). float16: μ is kept in float32, and dx is computed in float32
        and rounded once.
        """
        saved, mean = ctx.saved_tensors
        x, grad_out = widened(mean.dtype, saved, grad_out)
        g = _unreduce(grad_out, x.shape, ctx.axes)
        dx = x - mean
        dx *= g * mean.dtype.type(2.0 / ctx.divisor if ctx.divisor else math.inf)
        return dx.astype(saved.dtype, copy=False), None, None, None


class Std(Function):
    """s = √y, y the variance of ``Var`` (same μ, D and correction)."""

    @staticmethod
    def forward(ctx, x, dim, correction, keepdim):
        axes, mean, var, divisor = _moments("std", x, dim, correction)
        std = backend.array_module(x).sqrt(var)  # in float32 for float16: var may pass 65504
        ctx.axes, ctx.divisor = axes, divisor
        ctx.save_for_backward(x, mean, std)
        return _squeezed(std.astype(x.dtype, copy=False), axes, keepdim)

    @staticmethod
    def backward(ctx, grad_out):
        """ds = dy / (2s) by the chain rule through s = √y, with Var's ∂y/∂x_k:

            ∂s/∂x_k = 2(x_k − μ)/D / (2s) = (x_k − μ) / (D·s).

        Where s = 0 (every element of the group equal) √ has no derivative; the gradient
        there is 0, as PyTorch takes it (x − μ is 0 too, and any other choice would move a
        constant group apart). Saves x (no new array), μ and s: two numbers per group, in
        float32 for float16, where dx is computed in float32 and rounded once.
        """
        saved, mean, std = ctx.saved_tensors
        x, grad_out = widened(mean.dtype, saved, grad_out)
        xp = backend.array_module(x)
        g = _unreduce(grad_out, x.shape, ctx.axes)
        flat = std == 0
        scale = xp.where(flat, 0, g / xp.where(flat, 1, std * mean.dtype.type(ctx.divisor)))
        dx = x - mean
        dx *= scale
        return dx.astype(saved.dtype, copy=False), None, None, None


def variance_args(op: str, dim, unbiased, correction) -> tuple:
    """(dim, c) from PyTorch's three forms, ``var(dim, unbiased, keepdim)``,
    ``var(dim, *, correction, keepdim)`` and ``var(unbiased)``: c = 1 unless unbiased=False
    (c = 0) or a correction is given."""
    if isinstance(dim, bool):  # var(False): the flag alone, in dim's place
        if unbiased is not None:
            raise TypeError(f"{op}: unbiased given twice ({dim} in dim's place and {unbiased})")
        dim, unbiased = None, dim
    if unbiased is not None and correction is not None:
        raise TypeError(f"{op}: got unbiased={unbiased} and correction={correction}; give one "
                        f"(unbiased=True is correction=1, False is 0)")
    if correction is None:
        correction = 0 if unbiased is False else 1
    return dim, float(correction)


def var(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    """``torch.var``: the variance over ``dim`` (all dims if None) with Bessel's correction
    unless ``unbiased=False`` or another ``correction`` is given."""
    dim, correction = variance_args("var", dim, unbiased, correction)
    return Var.apply(x, dim, correction, bool(keepdim))


def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    """``torch.std``: the square root of ``var`` with the same arguments."""
    dim, correction = variance_args("std", dim, unbiased, correction)
    return Std.apply(x, dim, correction, bool(keepdim))


def sum(x, dim=None, keepdim=False):  # noqa: A001 — PyTorch's name
    return Sum.apply(x, dim, keepdim)


def mean(x, dim=None, keepdim=False):
    return Mean.apply(x, dim, keepdim)


def max(x, dim=None, keepdim=False):  # noqa: A001 — PyTorch's name
    _refuse_elementwise("max", dim, ">=")
    return Max.apply(x, dim, keepdim)


def min(x, dim=None, keepdim=False):  # noqa: A001 — PyTorch's name
    _refuse_elementwise("min", dim, "<=")
    return Min.apply(x, dim, keepdim)


def _refuse_elementwise(op: str, dim, compare: str) -> None:
    """PyTorch's max(input, other) and min(input, other) are elementwise; here a TypeError
    says so, where the tensor would have been read as dims."""
    if backend.is_array(getattr(dim, "data", dim)):
        raise TypeError(f"{op}: the elementwise form {op}(input, other) is not supported; "
                        f"use tn.where(input {compare} other, input, other)")
