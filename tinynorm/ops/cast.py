"""Moving a tensor to another dtype or device, differentiably."""
from __future__ import annotations

from .. import backend
from ..autograd import Function


class Cast(Function):
    """y = x as ``dtype`` on ``device`` (either may be None: unchanged)."""

    @staticmethod
    def forward(ctx, x, dtype, device):
        ctx.dtype, ctx.device = x.dtype, backend.device_of(x)
        y = x
        if device is not None and backend.backend_of(device) != backend.backend_of(ctx.device):
            y = backend.asarray(y, device=device)
        if dtype is not None and y.dtype != dtype:
            y = y.astype(dtype)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        """The identity on values: dx = grad_out moved back to x's dtype and device. Saves
        x's dtype and device (no array)."""
        g = grad_out
        if backend.backend_of(backend.device_of(g)) != backend.backend_of(ctx.device):
            g = backend.asarray(g, device=ctx.device)
        return g.astype(ctx.dtype, copy=False), None, None


def cast(x, dtype=None, device=None):
    if dtype is not None:
        dtype = backend.numpy_dtype(dtype)
    if (dtype is None or dtype == x.dtype) and (
            device is None or backend.backend_of(device, op="to") == backend.backend_of(x.device)):
        return x
    return Cast.apply(x, dtype, device)
