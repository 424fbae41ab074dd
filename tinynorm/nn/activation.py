"""Activation layers: Tanh, ReLU, GELU, Softmax, LogSoftmax (Identity lives in linear.py,
as in PyTorch). Each is a Module over the op of the same name in ``tinynorm.ops``.

Difference from PyTorch: ``inplace=True`` is accepted (so ported code runs and reprs match)
but the result is computed out of place: tinynorm has no in-place ops.
"""
from __future__ import annotations

from .. import ops
from .module import Module


class Tanh(Module):
    def forward(self, input):
        return ops.tanh(input)


class ReLU(Module):
    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return ops.relu(input)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class GELU(Module):
    """GELU(x) = x·Φ(x) (``approximate="none"``) or its tanh approximation (``"tanh"``)."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate={approximate!r}; expected 'none' or 'tanh'")
        self.approximate = approximate

    def forward(self, input):
        return ops.gelu(input, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


def _require_dim(layer: str, dim):
    if dim is None:
        raise ValueError(f"{layer}: dim is required (PyTorch's implicit-dim choice is "
                         f"deprecated and not supported); pass e.g. {layer}(dim=-1)")
    return dim


class Softmax(Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        return ops.softmax(input, _require_dim("Softmax", self.dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        return ops.log_softmax(input, _require_dim("LogSoftmax", self.dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
