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
        scale = keep_mask(x.shape, p, x.dtype, xp) * x.dtype.type(keep_scale(p))
        ctx.save_for_backward(scale)
        return x * scale

    @staticmethod
    def backward(ctx, grad_out):
        """y = x · s with s = m / (1 − p) fixed by forward: dx = grad_out · s.
        Saves s (one array of x's size; a bool mask would be a quarter of it in float32,
        but s saves the multiply by 1/(1 − p) in backward)."""
        (scale,) = ctx.saved_tensors
        return grad_out * scale, None


def dropout(x, p=0.5, training=True):
    """``F.dropout``: identity when p == 0 or not training."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    return Dropout.apply(x, float(p))
