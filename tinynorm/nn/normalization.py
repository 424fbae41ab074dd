"""LayerNorm and RMSNorm layers, as ``torch.nn.LayerNorm`` and ``torch.nn.RMSNorm``.

The maths and its hand-derived backward live in ``F.layer_norm`` and ``F.rms_norm``
(tinynorm/ops/layer_norm.py, rms_norm.py); these modules hold γ (``weight``) and β
(``bias``) under PyTorch's names, so PyTorch state_dicts load unchanged.
"""
from __future__ import annotations

from ..creation import empty
from ..ops._rows import as_normalized_shape
from . import functional as F
from . import init
from .module import Module, Parameter


def _register_affine(module, name: str, present: bool, device, dtype) -> None:
    """``module.<name>``: a Parameter of ``module.normalized_shape`` (``reset_parameters``
    fills it), or None when ``present`` is false, as PyTorch registers it."""
    param = None
    if present:
        param = Parameter(empty(*module.normalized_shape, dtype=dtype, device=device))
    module.register_parameter(name, param)


class LayerNorm(Module):
    """y = (x − μ) / √(σ² + eps) · weight + bias over the trailing dims ``normalized_shape``.

    ``weight`` starts at ones and ``bias`` at zeros (PyTorch's init); ``elementwise_affine=
    False`` makes neither, ``bias=False`` only the weight.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.normalized_shape = as_normalized_shape(type(self).__name__, normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _register_affine(self, "weight", elementwise_affine, device, dtype)
        _register_affine(self, "bias", elementwise_affine and bias, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def forward(self, input):
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}")


class RMSNorm(Module):
    """y = x / √(mean(x²) + eps) · weight over the trailing dims ``normalized_shape``.

    ``eps=None`` (the default, as PyTorch) means ``finfo(input dtype).eps``. ``weight`` starts
    at ones; ``elementwise_affine=False`` makes none.
    """

    def __init__(self, normalized_shape, eps: float | None = None,
                 elementwise_affine: bool = True, device=None, dtype=None):
        super().__init__()
        self.normalized_shape = as_normalized_shape(type(self).__name__, normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _register_affine(self, "weight", elementwise_affine, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            init.ones_(self.weight)

    def forward(self, input):
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")
