"""The seed's from-scratch ``LayerNorm`` and ``RMSNorm``, with the seed's parameter names.

Both are thin: the maths (and its hand-derived backward) lives in ``F.layer_norm`` and
``F.rms_norm``. They exist so that the seed's own modules load unchanged:

- ``LayerNorm(d_model, eps=1e-5)`` names its parameters ``gamma`` and ``beta`` (the seed's),
  where ``nn.LayerNorm`` says ``weight`` and ``bias``;
- ``RMSNorm(d_model, eps=1e-5)`` keeps the seed's eps of 1e-5, where ``nn.RMSNorm``'s
  default (PyTorch's) is ``finfo(dtype).eps``. The seed computes x / sqrt(mean(x²) + eps) ·
  weight, which is exactly ``F.rms_norm`` with that eps.

``ComposedLayerNorm`` and ``ComposedRMSNorm`` are the same classes with the seed's forwards
written out line for line on tinynorm's ops (mean, var, sqrt, ...), so that autograd
differentiates the chain op by op: what the fused ops are measured against (``python
benchmarks/norms.py --composed``, the ``norm_speed`` demo) and checked against
(tests/test_var_std.py). The models use the fused classes.
"""
from __future__ import annotations

from .. import nn, ops
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


class ComposedLayerNorm(LayerNorm):
    """``LayerNorm`` (same parameters, same state_dict) computed as the seed writes it: seven
    ops, each differentiated on its own. Its graph keeps x̂ for backward (the division saves
    its output), an array the size of x, where the fused op keeps μ and r per row."""

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        x_norm = (x - mean) / ops.sqrt(var + self.eps)
        return self.gamma * x_norm + self.beta


class ComposedRMSNorm(RMSNorm):
    """``RMSNorm`` (same parameter ``weight``) computed as the seed writes it, op by op."""

    def forward(self, x):
        rms = ops.sqrt(ops.mean(x ** 2, dim=-1, keepdim=True) + self.eps)
        x_norm = x / rms
        return self.weight * x_norm
