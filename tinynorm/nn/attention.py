"""MultiheadAttention: PyTorch's constructor, forward, parameter names, init and masks.

The heads are split with a reshape and a permute, and all of them run through one call of
``scaled_dot_product_attention`` (tinynorm/ops/attention.py), whose backward is derived there.
"""
from __future__ import annotations

from .. import backend, ops
from ..creation import empty
from ..ops.attention import attention_with_weights, scaled_dot_product_attention
from ..tensor import Tensor
from . import init
from .linear import Linear
from .module import Module, Parameter

NAME = "MultiheadAttention"


class MultiheadAttention(Module):
    """Multi-head attention as ``torch.nn.MultiheadAttention``; a torch state_dict loads as is.

        head_i = softmax(Q_i K_iᵀ / √head_dim + M) V_i,   Q_i, K_i, V_i = the i-th slices
        out = concat(head_1, …, head_H) W_outᵀ + b_out      of x Wᵀ + b (in-projection)

    Parameters, under PyTorch's names: ``in_proj_weight`` (3E, E) and ``in_proj_bias`` (3E,)
    (or ``q_proj_weight`` (E, E), ``k_proj_weight`` (E, kdim), ``v_proj_weight`` (E, vdim)
    when kdim or vdim differs from embed_dim), and ``out_proj`` a Linear(E, E). Init as
    PyTorch: xavier_uniform_ in-projection, zero in_proj_bias and out_proj.bias, out_proj.weight
    keeps Linear's default init.

    Masks follow PyTorch's MultiheadAttention, which for bool masks is the OPPOSITE of
    ``F.scaled_dot_product_attention``: here True means "masked out, may not attend".
    ``attn_mask`` is (L, S) or (N·num_heads, L, S) (bool, or float added to the scores);
    ``key_padding_mask`` is (N, S) (bool True = padding, ignored; or float added). Masks of
    both kinds may be mixed; float masks are differentiable. ``is_causal`` is a hint, as in
    PyTorch: it requires ``attn_mask`` (the causal mask itself) and may be used instead of it.

    Shapes: query (L, N, E) ((N, L, E) with ``batch_first``), key (S, N, kdim), value
    (S, N, vdim), or unbatched (L, E), (S, kdim), (S, vdim). Returns ``(output, weights)``:
    output shaped like query; weights (N, L, S) averaged over heads, or (N, num_heads, L, S)
    with ``average_attn_weights=False`` (no N when unbatched), or None if not ``need_weights``.
    The weights are those applied to V, after dropout when training, as PyTorch returns them.
    With ``need_weights=False`` the SDPA op chooses what backward keeps (its default
    ``recompute=None``): for long sequences only a log-sum-exp per query row, the attention
    weights being rebuilt block by block, as PyTorch's fused CPU kernel does; for short ones
    the weights. With ``need_weights=True`` the weights are returned, so they are kept.

    Differences from PyTorch (documented): ``add_bias_kv`` and ``add_zero_attn`` are not
    implemented (NotImplementedError); a query row whose keys are all masked gives output 0
    and weights 0, where PyTorch's need_weights path gives NaN; there is no fused fast path;
    ``out_proj`` is a plain Linear (PyTorch's is a Linear subclass, for quantization tools).
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=False, device=None,
                 dtype=None):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"{NAME}: embed_dim and num_heads must be greater than 0, got "
                             f"embed_dim={embed_dim} and num_heads={num_heads}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"{NAME}: embed_dim={embed_dim} is not divisible by "
                             f"num_heads={num_heads}; each head needs embed_dim / num_heads "
                             f"features")
        if add_bias_kv or add_zero_attn:
            raise NotImplementedError(
                f"{NAME}: add_bias_kv=True and add_zero_attn=True are not implemented in "
                f"tinynorm (a documented difference from torch.nn.MultiheadAttention)")
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads

        def weight(*shape):
            return Parameter(empty(*shape, dtype=dtype, device=device))

        if self._qkv_same_embed_dim:
            self.in_proj_weight = weight(3 * embed_dim, embed_dim)
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                self.register_parameter(name, None)
        else:
            self.q_proj_weight = weight(embed_dim, embed_dim)
            self.k_proj_weight = weight(embed_dim, self.kdim)
            self.v_proj_weight = weight(embed_dim, self.vdim)
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = weight(3 * embed_dim)
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, device=device, dtype=dtype)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            init.xavier_uniform_(self.q_proj_weight)
            init.xavier_uniform_(self.k_proj_weight)
            init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            init.constant_(self.in_proj_bias, 0.0)
            init.constant_(self.out_proj.bias, 0.0)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        batched = _check_shapes(self, query, key, value, key_padding_mask, attn_mask)
        if is_causal and attn_mask is None:
            raise RuntimeError(f"{NAME}: is_causal=True is a hint that attn_mask is the causal "
                               f"mask; pass attn_mask as well (as in PyTorch)")
        # PyTorch uses the hint instead of the mask only when nothing else needs the mask
        use_causal = is_causal and key_padding_mask is None and not need_weights
        if use_causal:
            attn_mask = None
        # inputs stay in their layout, (L, N, E) or (N, L, E): batch_dim says which; an
        # unbatched (L, E) becomes (L, 1, E)
        batch_dim = 0 if (self.batch_first and batched) else 1
        same = (query is key and key is value, key is value)  # before unsqueeze makes new tensors
        if not batched:
            query, key, value = (ops.unsqueeze(t, 1) for t in (query, key, value))
        n, length = query.shape[batch_dim], query.shape[1 - batch_dim]
        source = key.shape[1 - batch_dim]

        q, k, v = self._in_projection(query, key, value, *same)
        q, k, v = (split_heads(t, self.num_heads, batch_dim) for t in (q, k, v))
        mask = _merged_mask(attn_mask, key_padding_mask, n, self.num_heads, length, source,
                            batched, q.dtype, backend.array_module(q.data))
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            heads, weights = attention_with_weights(q, k, v, mask, dropout_p)
            if average_attn_weights:
                weights = ops.mean(weights, dim=1)
            if not batched:
                weights = ops.squeeze(weights, 0)
        else:
            heads = scaled_dot_product_attention(q, k, v, mask, dropout_p, use_causal)
        out = self.out_proj(merge_heads(heads, batch_dim))
        return (out if batched else ops.squeeze(out, 1)), weights

    def _in_projection(self, query, key, value, self_attention, key_is_value):
        """x Wᵀ + b for q, k and v, as PyTorch's packed projection: one matmul for
        self-attention (query is key is value), two when key is value, else three."""
        e, w, b = self.embed_dim, self.in_proj_weight, self.in_proj_bias
        if self._qkv_same_embed_dim and self_attention:
            return ops.chunk(ops.linear(query, w, b), 3, dim=-1)
        b_q, b_k, b_v = (None, None, None) if b is None else ops.split(b, e)
        if not self._qkv_same_embed_dim:
            return (ops.linear(query, self.q_proj_weight, b_q),
                    ops.linear(key, self.k_proj_weight, b_k),
                    ops.linear(value, self.v_proj_weight, b_v))
        if key_is_value:
            w_q, w_kv = ops.split(w, [e, 2 * e])
            b_kv = None if b is None else ops.split(b, [e, 2 * e])[1]
            k, v = ops.chunk(ops.linear(key, w_kv, b_kv), 2, dim=-1)
            return ops.linear(query, w_q, b_q), k, v
        w_q, w_k, w_v = ops.split(w, e)
        return ops.linear(query, w_q, b_q), ops.linear(key, w_k, b_k), ops.linear(value, w_v, b_v)


def split_heads(x, num_heads, batch_dim):
    """(L, N, E) or (N, L, E) → (N, num_heads, L, head_dim), a view where possible."""
    a, b, e = x.shape
    heads = ops.reshape(x, a, b, num_heads, e // num_heads)
    return ops.permute(heads, 1, 2, 0, 3) if batch_dim == 1 else ops.permute(heads, 0, 2, 1, 3)


def merge_heads(x, batch_dim):
    """(N, num_heads, L, head_dim) → (L, N, E) or (N, L, E)."""
    n, h, length, d = x.shape
    if batch_dim == 1:
        return ops.reshape(ops.permute(x, 2, 0, 1, 3), length, n, h * d)
    return ops.reshape(ops.permute(x, 0, 2, 1, 3), n, length, h * d)


def _check_shapes(mha, query, key, value, key_padding_mask, attn_mask) -> bool:
    """PyTorch's shape rules; returns whether the inputs are batched."""
    if query.ndim not in (2, 3):
        raise ValueError(f"{NAME}: query should be unbatched 2D or batched 3D, got shape "
                         f"{query.shape}")
    batched = query.ndim == 3
    if key.ndim != query.ndim or value.ndim != query.ndim:
        raise ValueError(f"{NAME}: key {key.shape} and value {value.shape} must have query's "
                         f"{query.ndim} dims (query {query.shape})")
    for name, t, size in (("query", query, mha.embed_dim), ("key", key, mha.kdim),
                          ("value", value, mha.vdim)):
        if t.shape[-1] != size:
            raise ValueError(f"{NAME}: {name} of shape {t.shape} should end in {size} features")
    if key.shape[:-1] != value.shape[:-1]:
        raise ValueError(f"{NAME}: key {key.shape} and value {value.shape} must agree in all "
                         f"dims but the last")
    b_dim = 0 if mha.batch_first else 1
    if batched and query.shape[b_dim] != key.shape[b_dim]:
        raise ValueError(f"{NAME}: query {query.shape} and key {key.shape} have different "
                         f"batch sizes (batch_first={mha.batch_first})")
    n = query.shape[b_dim] if batched else 1
    seq_dim = 1 - b_dim if batched else 0
    length, source = query.shape[seq_dim], key.shape[seq_dim]
    if key_padding_mask is not None:
        expected = (n, source) if batched else (source,)
        if tuple(key_padding_mask.shape) != expected:
            raise ValueError(f"{NAME}: key_padding_mask of shape {key_padding_mask.shape}; "
                             f"expected {expected} (batch, source length)")
    if attn_mask is not None:
        allowed = [(length, source), (n * mha.num_heads, length, source)]
        if tuple(attn_mask.shape) not in allowed:
            raise ValueError(f"{NAME}: attn_mask of shape {attn_mask.shape}; expected "
                             f"{allowed[0]} or {allowed[1]} (batch·num_heads, L, S)")
    for name, m in (("attn_mask", attn_mask), ("key_padding_mask", key_padding_mask)):
        if m is not None and m.dtype.kind not in "bf":
            raise TypeError(f"{NAME}: only bool and floating {name} are supported, got "
                            f"{m.dtype}")
    return batched


def _merged_mask(attn_mask, key_padding_mask, n, num_heads, length, source, batched, dtype, xp):
    """One mask for SDPA, broadcastable to (N, num_heads, L, S), from PyTorch's two.

    Bool masks (True = masked out) become SDPA's bool (True = attend); if either mask is
    float both become float (bool True → −inf) and are added, as PyTorch does. A mask given
    as an array (not a Tensor) is wrapped, so that both kinds take the same path.
    """
    attn_mask, key_padding_mask = (m if m is None or isinstance(m, Tensor) else Tensor(m)
                                   for m in (attn_mask, key_padding_mask))
    masks = []
    if attn_mask is not None:
        masks.append(attn_mask if attn_mask.ndim == 2 else
                     ops.reshape(attn_mask, n, num_heads, length, source))
    if key_padding_mask is not None:
        masks.append(ops.reshape(key_padding_mask, n if batched else 1, 1, 1, source))
    if not masks:
        return None
    if all(m.dtype.kind == "b" for m in masks):
        masked_out = masks[0].data if len(masks) == 1 else masks[0].data | masks[1].data
        return Tensor(~masked_out)
    floats = [m if m.dtype.kind == "f" else Tensor(xp.where(m.data, -xp.inf, 0.0).astype(dtype))
              for m in masks]
    return floats[0] if len(floats) == 1 else ops.add(floats[0], floats[1])
