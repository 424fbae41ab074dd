"""The seed's from-scratch ``LayerNorm`` and ``RMSNorm``, with the seed's parameter names.

Both are thin: the maths (and its hand-derived backward) lives in ``F.layer_norm`` and
``F.rms_norm``. They exist so that the seed's own modules load unchanged:

- ``LayerNorm(d_model, eps=1e-5)`` names its parameters ``gamma`` and ``beta`` (the seed's),
  where ``nn.LayerNorm`` says ``weight`` and ``bias``;
- ``RMSNorm(d_model, eps=1e-5)`` keeps the seed's eps of 1e-5, where ``nn.RMSNorm``'s
  default (PyTorch's) is ``finfo(dtype).eps``. The seed computes x / sqrt(mean(x²) + eps) ·
  weight, which is exactly ``F.rms_norm`` with that eps.
"""
from __future__ import annotations

from .. import nn
from ..creation import ones, zeros


class LayerNorm(nn.Module):
    """γ · (x − μ) / sqrt(σ² + eps) + β over the last dim; parameters ``gamma``, ``beta``."""

    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(ones(d_model))
        self.beta = nn.Parameter(zeros(d_model))

    def forward(self, x):
        return nn.functional.layer_norm(x, tuple(self.gamma.shape), self.gamma, self.beta, self.eps)


class RMSNorm(nn.RMSNorm):
    """weight · x / sqrt(mean(x²) + eps) over the last dim, with the seed's eps = 1e-5."""

    def __init__(self, d_model, eps=1e-5):
        super().__init__(d_model, eps=eps)
