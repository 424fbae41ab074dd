"""Linear and Identity: the affine layer y = x Wᵀ + b and the layer that does nothing."""
from __future__ import annotations

import math

from .. import ops
from ..creation import empty
from . import init
from .module import Module, Parameter


class Identity(Module):
    """Returns its input; accepts and ignores any arguments, as PyTorch's."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, input):
        return input


class Linear(Module):
    """y = x Wᵀ + b with W of shape (out_features, in_features), as ``torch.nn.Linear``.

    PyTorch's default init: W by kaiming_uniform_(a=√5), whose bound
    √3 · √(2 / (1 + 5)) / √fan_in works out to 1/√fan_in, and b ~ U(±1/√fan_in).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(empty(out_features, in_features, dtype=dtype, device=device))
        if bias:
            self.bias = Parameter(empty(out_features, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_features
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        return ops.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
