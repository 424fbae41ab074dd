"""A small causal (GPT-style) language model whose normalisation and residuals can be moved.

    h_0 = E_tok[t] + E_pos[position]            token + learned positional embedding
    h_l = Block_l(h_{l−1}),  l = 1 … N          N = num_layers
    logits = W_head · final_norm(h_N)           untied head (see below)

Each block has two sub-layers, causal self-attention A and a GELU MLP M (written G below for
either). Where the normalisation N(·) (LayerNorm or RMSNorm, ``norm_type``) sits is
``norm``; ``residual=False`` removes the skip connection:

    norm          residual=True                 residual=False
    "pre"         x ← x + G(N(x))               x ← G(N(x))       final N after block N
    "post"        x ← N(x + G(x))               x ← N(G(x))       (Vaswani et al. 2017)
    "deepnorm"    x ← N(α·x + G(x))             x ← N(G(x))       (Wang et al. 2022)
    "none"        x ← x + G(x)                  x ← G(x)          no normalisation at all

Pre-norm leaves an identity path from every block to the output (the stream x grows with
depth, so it ends with a final norm, as GPT-2); post-norm puts a normalisation on that path
after every sub-layer; DeepNorm is post-norm with the skip up-weighted by α and the
sub-layers' initial weights down-scaled by β, for a decoder-only model of N layers
(Wang et al. 2022, "DeepNet", Table 1 / Figure 2):

    α = (2N)^(1/4),    β = (8N)^(−1/4)

    W_fc1, W_fc2, W_v, W_out ~ xavier_normal(gain=β);   W_q, W_k ~ xavier_normal(gain=1)

so that each update moves the output by O(1) however deep the model is (their Theorem).

Initialisation (all placements): every Linear weight xavier_normal (gain 1 unless DeepNorm
scales it), every bias 0, norm weights 1 (and LayerNorm biases 0), token and position
embeddings N(0, 1/2) each, so h_0 has unit variance per element — the scale a
normalisation produces, and the one Xiong et al. 2020's analysis assumes.

The head is *untied* (its own (vocab, d_model) weight, no bias, xavier_normal): tying it to
E_tok would force one scale on two jobs — unit-variance rows for the stream, but logits of
size ~√d_model·|h| for the head — and make the initial loss depend on d_model. Untied, the
initial loss is close to log(vocab_size).

``forward(idx, record=None)``: pass a list as ``record`` and every normalisation's input
(the Tensor N is applied to, in order: block 1's two, block 2's two, …, then the final one)
is appended to it; the ``update_size`` demo measures them.
"""
from __future__ import annotations

import math

from .. import backend, nn, ops
from ..nn import functional as F
from ..nn.attention import merge_heads, split_heads
from ..ops.cross_entropy import IGNORE_INDEX
from ..tensor import Tensor

NORMS = ("pre", "post", "deepnorm", "none")
NORM_TYPES = ("layer", "rms")


def deepnorm_alpha(num_layers: int) -> float:
    """α = (2N)^(1/4): DeepNorm's residual weight for a decoder-only model of N layers."""
    return (2 * num_layers) ** 0.25


def deepnorm_beta(num_layers: int) -> float:
    """β = (8N)^(−1/4): DeepNorm's init gain for W_fc1, W_fc2, W_v, W_out (decoder-only)."""
    return (8 * num_layers) ** -0.25


def _norm(norm_type: str, d_model: int) -> nn.Module:
    return nn.LayerNorm(d_model) if norm_type == "layer" else nn.RMSNorm(d_model, eps=1e-5)


class CausalSelfAttention(nn.Module):
    """softmax(Q Kᵀ/√d_head + causal mask) V per head, heads merged, then W_out.

    Q, K, V come from three Linear(d_model, d_model) layers (``q_proj``, ``k_proj``,
    ``v_proj``; separate so DeepNorm can scale V's init alone). Token t attends to tokens
    ≤ t only (``F.scaled_dot_product_attention(..., is_causal=True)``). What backward keeps
    is the op's default choice: the attention weights P for short sequences, only a
    log-sum-exp per token when P would outgrow q, k and v (T > 6·d_head).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"CausalSelfAttention: d_model={d_model} is not divisible by "
                             f"num_heads={num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        # (B, T, d) → (B, H, T, d_head) and back, as nn.MultiheadAttention with batch_first
        q, k, v = (split_heads(proj(x), self.num_heads, batch_dim=0)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        dropout_p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        return self.out_proj(merge_heads(out, batch_dim=0))


class MLP(nn.Module):
    """fc2(GELU(fc1(x))), d_model → d_ff → d_model; GELU's tanh form (GPT-2's), which on
    the CPU costs a fraction of the exact erf form."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """One layer: attention sub-layer, then MLP sub-layer, each wrapped as ``norm`` says
    (the table in the module docstring). ``norm1``/``norm2`` are Identity for "none"."""

    def __init__(self, d_model, num_heads, d_ff, norm="pre", norm_type="layer",
                 residual=True, dropout=0.0, alpha=1.0):
        super().__init__()
        self.norm, self.residual, self.alpha = norm, residual, alpha
        make = (lambda: nn.Identity()) if norm == "none" else (lambda: _norm(norm_type, d_model))
        self.norm1, self.norm2 = make(), make()
        self.attention = CausalSelfAttention(d_model, num_heads, dropout)
        self.mlp = MLP(d_model, d_ff)
        self.drop = nn.Dropout(dropout)

    def sublayer(self, x, g, norm, record=None):
        """One sub-layer G with its skip connection and normalisation."""
        if self.norm == "pre":
            if record is not None:
                record.append(x)
            y = self.drop(g(norm(x)))
            return x + y if self.residual else y
        if self.norm == "none":
            y = self.drop(g(x))
            return x + y if self.residual else y
        y = self.drop(g(x))  # post and deepnorm: the norm comes last
        if self.residual:
            y = x * self.alpha + y if self.norm == "deepnorm" else x + y
        if record is not None:
            record.append(y)
        return norm(y)

    def forward(self, x, record=None):
        x = self.sublayer(x, self.attention, self.norm1, record)
        return self.sublayer(x, self.mlp, self.norm2, record)


class CausalLM(nn.Module):
    """Token ids (B, T) → next-token logits (B, T, vocab_size); see the module docstring.

    Parameters: ``token_embedding``, ``position_embedding``, ``blocks.{l}.(norm1, norm2,
    attention.{q,k,v,out}_proj, mlp.fc1, mlp.fc2)``, ``final_norm`` (pre-norm only) and
    ``lm_head``.
    """

    def __init__(self, vocab_size: int, d_model: int = 64, num_heads: int = 4,
                 num_layers: int = 2, d_ff: int | None = None, max_len: int = 256,
                 norm: str = "pre", norm_type: str = "layer", residual: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"CausalLM: norm={norm!r}; expected one of {NORMS}")
        if norm_type not in NORM_TYPES:
            raise ValueError(f"CausalLM: norm_type={norm_type!r}; expected one of {NORM_TYPES}")
        self.vocab_size, self.max_len, self.num_layers = vocab_size, max_len, num_layers
        self.norm, self.norm_type, self.residual = norm, norm_type, residual
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.alpha = deepnorm_alpha(num_layers) if norm == "deepnorm" else 1.0
        self.beta = deepnorm_beta(num_layers) if norm == "deepnorm" else 1.0
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList([
            Block(d_model, num_heads, d_ff, norm, norm_type, residual, dropout, self.alpha)
            for _ in range(num_layers)
        ])
        self.final_norm = _norm(norm_type, d_model) if norm == "pre" else nn.Identity()
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of the module docstring (DeepNorm's β included)."""
        nn.init.normal_(self.token_embedding.weight, std=math.sqrt(0.5))
        nn.init.normal_(self.position_embedding.weight, std=math.sqrt(0.5))
        nn.init.xavier_normal_(self.lm_head.weight)
        for block in self.blocks:
            attn, mlp = block.attention, block.mlp
            for layer, gain in ((attn.q_proj, 1.0), (attn.k_proj, 1.0), (attn.v_proj, self.beta),
                                (attn.out_proj, self.beta), (mlp.fc1, self.beta),
                                (mlp.fc2, self.beta)):
                nn.init.xavier_normal_(layer.weight, gain=gain)
                nn.init.zeros_(layer.bias)

    def hidden(self, idx, record=None):
        """h = final_norm(h_N), (B, T, d_model): what the head reads."""
        if idx.ndim != 2:
            raise ValueError(f"CausalLM: expected token ids of shape (batch, length), got "
                             f"shape {tuple(idx.shape)}")
        length = idx.shape[1]
        if length > self.max_len:
            raise ValueError(f"CausalLM: sequence of length {length} is longer than "
                             f"max_len={self.max_len}")
        xp = backend.array_module(idx.data)
        x = self.token_embedding(idx) + self.position_embedding(Tensor(xp.arange(length)))
        for block in self.blocks:
            x = block(x, record)
        if record is not None and self.norm == "pre":
            record.append(x)
        return self.final_norm(x)

    def forward(self, idx, record=None):
        return self.lm_head(self.hidden(idx, record))

    def loss(self, idx, targets, ignore_index: int = IGNORE_INDEX):
        """Mean next-token cross-entropy (nats) of ``targets`` (B, T) given ``idx`` (B, T)."""
        logits = self(idx)
        return F.cross_entropy(ops.reshape(logits, (-1, self.vocab_size)),
                               ops.reshape(targets, (-1,)), ignore_index=ignore_index)

    def extra_repr(self) -> str:
        text = f"norm={self.norm!r}, norm_type={self.norm_type!r}, residual={self.residual}"
        if self.norm == "deepnorm":
            text += f", alpha={self.alpha:.4f}, beta={self.beta:.4f}"
        return text
