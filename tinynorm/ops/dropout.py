"""Dropout with inverted scaling."""
from __future__ import annotations

from .. import backend
from ..autograd import Function
from ._adjoint import compute_dtype, require_float


def keep_mask(shape, p, dtype, xp):
    """Which elements survive dropout with probability p: a bool array, each True with
    probability 1 − p, drawn from the backend's generator (reproducible with manual_seed) in
    ``dtype``, float32 for float16 (whose 2^-11 steps would move p)."""
    return backend.random(xp, shape, compute_dtype(dtype)) >= p


def keep_scale(p: float) -> float:
    """1/(1 − p), what the kept elements are multiplied by (0 when every one is dropped)."""
    return 1.0 / (1.0 - p) if p < 1 else 0.0


class Dropout(Function):
    """y = x · m / (1 − p), m_i ~ Bernoulli(1 − p) from the backend's generator.

    Scaling by 1/(1 − p) at training time keeps E[y] = x, so evaluation needs no change.
    """

    @staticmethod
    def forward(ctx, x, p):
        require_float("dropout", x)
        xp = backend.array_module(x)
        keep = keep_mask(x.shape, p, x.dtype, xp)
        ctx.scale = keep_scale(p)
        if ctx.recording:
            ctx.save_for_backward(keep)
        y = x * keep  # x where kept, 0 elsewhere; then scaled in place
        y *= x.dtype.type(ctx.scale)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        """y = x · m · s with the mask m and s = 1/(1 − p) fixed by forward: dx = grad_out ·
        m · s. Saves m as a bool array (1 byte an element) and s as a number: an array of
        the scaled mask would be x's dtype, four times the bytes in float32."""
        (keep,) = ctx.saved_tensors
        dx = grad_out * keep
        dx *= grad_out.dtype.type(ctx.scale)
        return dx, None


def dropout(x, p=0.5, training=True):
    """``F.dropout``: identity when p == 0 or not training."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    return Dropout.apply(x, float(p))
