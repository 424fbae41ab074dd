"""Moving a tensor to another dtype or device, differentiably."""
from __future__ import annotations

from .. import backend
from ..autograd import Function


def _device_name(device) -> str:
    d = str(device)
    if not d.startswith(("cpu", "cuda")):
        raise ValueError(f"to: unknown device {device!r}; expected 'cpu' or 'cuda'")
    return "cpu" if d.startswith("cpu") else "cuda"


class Cast(Function):
    """y = x as ``dtype`` on ``device`` (either may be None: unchanged)."""

    @staticmethod
    def forward(ctx, x, dtype, device):
        ctx.dtype, ctx.device = x.dtype, backend.device_of(x)
        y = x
        if device is not None and _device_name(device) != _device_name(ctx.device):
            y = backend.asarray(y, device=_device_name(device))
        if dtype is not None and y.dtype != dtype:
            y = y.astype(dtype)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        """The identity on values: dx = grad_out moved back to x's dtype and device."""
        g = grad_out
        if _device_name(backend.device_of(g)) != _device_name(ctx.device):
            g = backend.asarray(g, device=_device_name(ctx.device))
        return g.astype(ctx.dtype, copy=False), None, None


def cast(x, dtype=None, device=None):
    if dtype is not None:
        dtype = backend.numpy_dtype(dtype)
    if (dtype is None or dtype == x.dtype) and (
            device is None or _device_name(device) == _device_name(x.device)):
        return x
    return Cast.apply(x, dtype, device)
