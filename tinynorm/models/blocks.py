"""The seed's transformer blocks and its ``Transformer``, with the seed's names throughout.

Three blocks differ only in where the residual connection and the normalization sit
(x is the residual stream, A the attention sub-layer, F the feed-forward sub-layer):

    TransformerBlockWithResiduals   x ← x + A(x);          x ← x + F(x)
    PostNormTransformerBlock        x ← LN(x + A(x));      x ← LN(x + F(x))
    PreNormTransformerBlock         x ← x + A(LN(x));      x ← x + F(LN(x))

These three take seq-first input (L, N, E), as the seed's ``nn.MultiheadAttention`` does
with its default ``batch_first=False``. ``ModernTransformerBlock`` is the pre-norm block
with GELU, dropout inside the feed-forward, an optional RMSNorm, batch-first input (N, L, E)
and an attention mask; ``Transformer`` stacks it and ends with a LayerNorm (GPT-2's layout).

Every class has the seed's constructor arguments, defaults, attribute names and parameter
names, so the state_dict of the seed's PyTorch class loads unchanged.

One difference from the seed's code, invisible in the results: the seed calls the attention
with PyTorch's default ``need_weights=True`` and throws the weights away; here the blocks
pass ``need_weights=False``, which gives the same output without building the averaged
attention weights.
"""
from __future__ import annotations

from .. import nn
from .norms import RMSNorm


def _feed_forward(d_model, d_ff):
    return nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))


def _self_attention(attention, x, mask=None):
    output, _ = attention(x, x, x, attn_mask=mask, need_weights=False)
    return output


class TransformerBlockWithResiduals(nn.Module):
    """Residual connections around attention and feed-forward; no normalization."""

    def __init__(self, d_model, num_heads, d_ff, dropout=0.1):
        super().__init__()
        self.attention = nn.MultiheadAttention(d_model, num_heads, dropout=dropout)
        self.feed_forward = _feed_forward(d_model, d_ff)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        x = x + self.dropout(_self_attention(self.attention, x))
        x = x + self.dropout(self.feed_forward(x))
        return x


class _NormedBlock(nn.Module):
    """The layers, and names, that the seed's Post-Norm and Pre-Norm blocks share; the two
    differ only in where ``forward`` places the norms."""

    def __init__(self, d_model, num_heads, d_ff, dropout=0.1):
        super().__init__()
        # the seed's: no dropout on the attention weights
        self.attention = nn.MultiheadAttention(d_model, num_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.feed_forward = _feed_forward(d_model, d_ff)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)


class PostNormTransformerBlock(_NormedBlock):
    """"Attention Is All You Need": add the sub-layer's output, then normalize."""

    def forward(self, x):
        x = self.norm1(x + self.dropout(_self_attention(self.attention, x)))
        x = self.norm2(x + self.dropout(self.feed_forward(x)))
        return x


class PreNormTransformerBlock(_NormedBlock):
    """GPT-2's layout: normalize the sub-layer's input, add its output to the raw stream."""

    def forward(self, x):
        x = x + self.dropout(_self_attention(self.attention, self.norm1(x)))
        x = x + self.dropout(self.feed_forward(self.norm2(x)))
        return x


class ModernTransformerBlock(nn.Module):
    """Pre-norm block with GELU, LayerNorm or (``use_rms_norm``) the seed's RMSNorm.

    Input (N, L, E) (``batch_first``). ``mask`` is passed to the attention as ``attn_mask``
    with PyTorch's MultiheadAttention semantics: a bool mask is True where attention is
    *not* allowed; a float mask is added to the scores (−inf blocks).
    """

    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, use_rms_norm=False):
        super().__init__()
        norm_class = RMSNorm if use_rms_norm else nn.LayerNorm
        self.norm1 = norm_class(d_model)
        self.norm2 = norm_class(d_model)
        self.attention = nn.MultiheadAttention(d_model, num_heads, dropout=dropout,
                                               batch_first=True)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, d_ff),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_ff, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x, mask=None):
        x = x + _self_attention(self.attention, self.norm1(x), mask)
        x = x + self.feed_forward(self.norm2(x))
        return x


class Transformer(nn.Module):
    """``num_layers`` ModernTransformerBlocks and a final LayerNorm; input (N, L, E)."""

    def __init__(self, num_layers, d_model, num_heads, d_ff, dropout=0.1):
        super().__init__()
        self.layers = nn.ModuleList([
            ModernTransformerBlock(d_model, num_heads, d_ff, dropout)
            for _ in range(num_layers)
        ])
        self.final_norm = nn.LayerNorm(d_model)

    def forward(self, x, mask=None):
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)
