"""The seed tutorial's from-scratch PyTorch norms, for demos that run them beside tinynorm.

Imported only where PyTorch is installed (demos are outside the package; tinynorm itself
never imports torch).
"""
from __future__ import annotations

import torch


class SeedLayerNorm(torch.nn.Module):
    """The tutorial's LayerNorm: parameters ``gamma`` and ``beta``, biased variance."""

    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = torch.nn.Parameter(torch.ones(d_model))
        self.beta = torch.nn.Parameter(torch.zeros(d_model))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.gamma * (x - mean) / torch.sqrt(var + self.eps) + self.beta


class SeedRMSNorm(torch.nn.Module):
    """The tutorial's RMSNorm: parameter ``weight``, eps 1e-5."""

    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        rms = torch.sqrt(torch.mean(x ** 2, dim=-1, keepdim=True) + self.eps)
        return self.weight * (x / rms)
