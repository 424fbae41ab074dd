"""The seed tutorial's PyTorch classes: its from-scratch norms and its blocks.

Written once here, for the demos that run them beside tinynorm, the tests that check
tinynorm.models against them (state_dicts move between the two unchanged) and the benchmarks.
The architecture, class names, constructor arguments, defaults and parameter names are the
seed's. The norms are named ``Seed*`` because the seed's ``LayerNorm`` and ``RMSNorm`` would
hide torch's; the blocks keep the seed's names.

Imported only where PyTorch is installed (demos are outside the package; tinynorm itself
never imports torch).
"""
from __future__ import annotations

import torch
from torch import nn


# ---- norms ------------------------------------------------------------------------------------
class SeedLayerNorm(nn.Module):
    """The tutorial's LayerNorm: parameters ``gamma`` and ``beta``, biased variance."""

    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(d_model))
        self.beta = nn.Parameter(torch.zeros(d_model))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        x_norm = (x - mean) / torch.sqrt(var + self.eps)
        return self.gamma * x_norm + self.beta


class SeedRMSNorm(nn.Module):
    """The tutorial's RMSNorm: parameter ``weight``, eps 1e-5."""

    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        rms = torch.sqrt(torch.mean(x ** 2, dim=-1, keepdim=True) + self.eps)
        return self.weight * (x / rms)


# ---- deep networks: tanh layers without and with residuals ------------------------------------
class DeepNetworkWithoutResiduals(nn.Module):
    def __init__(self, d_model, num_layers):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d_model, d_model) for _ in range(num_layers)])

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


class DeepNetworkWithResiduals(DeepNetworkWithoutResiduals):
    def forward(self, x):
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
        return x


# ---- sequence-first blocks (the seed's MHA is not batch_first): (L, N, E) ---------------------
def _relu_feed_forward(d_model, d_ff):
    return nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))


class TransformerBlockWithResiduals(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.1):
        super().__init__()
        self.attention = nn.MultiheadAttention(d_model, num_heads, dropout=dropout)
        self.feed_forward = _relu_feed_forward(d_model, d_ff)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        attn_output, _ = self.attention(x, x, x)
        x = x + self.dropout(attn_output)
        ff_output = self.feed_forward(x)
        return x + self.dropout(ff_output)


class PostNormTransformerBlock(nn.Module):
    """Add, then normalise. The seed's attention here has no dropout of its own."""

    def __init__(self, d_model, num_heads, d_ff, dropout=0.1):
        super().__init__()
        self.attention = nn.MultiheadAttention(d_model, num_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.feed_forward = _relu_feed_forward(d_model, d_ff)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        attn_output, _ = self.attention(x, x, x)
        x = self.norm1(x + self.dropout(attn_output))
        ff_output = self.feed_forward(x)
        return self.norm2(x + self.dropout(ff_output))


class PreNormTransformerBlock(PostNormTransformerBlock):
    """Normalise, then add: the same layers as the post-norm block, in another order."""

    def forward(self, x):
        normed_x = self.norm1(x)
        attn_output, _ = self.attention(normed_x, normed_x, normed_x)
        x = x + self.dropout(attn_output)
        normed_x = self.norm2(x)
        return x + self.dropout(self.feed_forward(normed_x))


# ---- the modern block and the stack (batch_first): (N, L, E) ----------------------------------
class ModernTransformerBlock(nn.Module):
    """Pre-norm block, GELU feed-forward, LayerNorm or (``use_rms_norm``) the seed's RMSNorm.

    ``need_weights`` is what the attention is called with. The seed's call leaves PyTorch's
    default, True, which makes PyTorch also build the head-averaged weights (discarded here)
    and skip its fused attention kernel; the output is the same either way.
    ``with_need_weights(False)`` gives the classes that pass False, for timing.
    """

    need_weights = True

    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, use_rms_norm=False):
        super().__init__()
        norm_class = SeedRMSNorm if use_rms_norm else nn.LayerNorm
        self.norm1 = norm_class(d_model)
        self.norm2 = norm_class(d_model)
        self.attention = nn.MultiheadAttention(d_model, num_heads, dropout=dropout,
                                               batch_first=True)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(d_ff, d_model), nn.Dropout(dropout),
        )

    def forward(self, x, mask=None):
        normed = self.norm1(x)
        attn_output, _ = self.attention(normed, normed, normed, attn_mask=mask,
                                        need_weights=self.need_weights)
        x = x + attn_output
        normed = self.norm2(x)
        return x + self.feed_forward(normed)


class Transformer(nn.Module):
    """``num_layers`` ModernTransformerBlocks (LayerNorm) and a final LayerNorm."""

    block_class = ModernTransformerBlock

    def __init__(self, num_layers, d_model, num_heads, d_ff, dropout=0.1):
        super().__init__()
        self.layers = nn.ModuleList([
            self.block_class(d_model, num_heads, d_ff, dropout) for _ in range(num_layers)
        ])
        self.final_norm = nn.LayerNorm(d_model)

    def forward(self, x, mask=None):
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)


def with_need_weights(need_weights: bool):
    """``(ModernTransformerBlock, Transformer)`` whose attention is called with ``need_weights``.

    True gives the seed's classes themselves; False, subclasses that differ only in that call
    (same parameters and state_dict keys, so weights load between all four).
    """
    if need_weights:
        return ModernTransformerBlock, Transformer

    class ModernTransformerBlockNoWeights(ModernTransformerBlock):
        need_weights = False

    class TransformerNoWeights(Transformer):
        block_class = ModernTransformerBlockNoWeights

    return ModernTransformerBlockNoWeights, TransformerNoWeights
