"""Selection by a condition: where and masked_fill."""
from __future__ import annotations

from .. import backend
from ..autograd import Function
from ..tensor import Tensor
from ._adjoint import broadcast_shape, operand_shapes, promoted, require_bool, unbroadcast


class Where(Function):
    """y = a where cond is True, b elsewhere (all three broadcast together)."""

    @staticmethod
    def forward(ctx, cond, a, b):
        require_bool("where", "condition", cond)
        a, b = promoted("where", a, b)
        ctx.shapes = operand_shapes("where", cond, a, b)[1:]  # all three checked; a's, b's kept
        ctx.save_for_backward(cond)
        xp = backend.array_module(cond, a, b)
        return xp.where(cond, a, b)

    @staticmethod
    def backward(ctx, grad_out):
        """Each position's output came from exactly one branch: da = grad_out where cond,
        db = grad_out where not cond, each summed to its input's shape. Saves cond (bool)."""
        (cond,) = ctx.saved_tensors
        shape_a, shape_b = ctx.shapes
        zero = grad_out.dtype.type(0)
        xp = backend.array_module(grad_out)
        need_a, need_b = ctx.needs_input_grad[1:3]
        da = unbroadcast(xp.where(cond, grad_out, zero), shape_a) if need_a else None
        db = unbroadcast(xp.where(cond, zero, grad_out), shape_b) if need_b else None
        return None, da, db


def where(condition, input, other):  # noqa: A002 — PyTorch's argument names
    return Where.apply(condition.data if isinstance(condition, Tensor) else condition, input, other)


def masked_fill(x, mask, value):
    """x with ``value`` where mask is True: ``where(mask, value, x)``; value gets no gradient."""
    mask = mask.data if isinstance(mask, Tensor) else mask
    require_bool("masked_fill", "mask", mask)
    if isinstance(value, Tensor):
        if value.ndim != 0:
            raise ValueError(f"masked_fill: value must be a number or a 0-d tensor, got shape "
                             f"{value.shape}")
        value = value.item()
    if broadcast_shape("masked_fill", mask.shape, x.shape) != tuple(x.shape):
        raise ValueError(f"masked_fill: mask of shape {mask.shape} does not broadcast to the "
                         f"tensor's shape {x.shape}")
    try:
        fill = x.data.dtype.type(value)
    except (TypeError, ValueError):
        raise TypeError(f"masked_fill: value must be a number (or a 0-d tensor) that a "
                        f"{x.dtype} tensor can hold, got {value!r}") from None
    return Where.apply(mask, fill, x)
