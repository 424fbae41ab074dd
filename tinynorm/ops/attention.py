"""Scaled-dot-product attention: one Function, its forward beside its hand-derived backward.

    S = scale·Q Kᵀ + M        scores (..., L, S); M the mask (0 / −inf, or a float mask)
    P = softmax(S)            attention weights, row by row over the S keys
    O = P V                   output (..., L, Ev)

Shapes follow ``torch.nn.functional.scaled_dot_product_attention``: q (..., L, E),
k (..., S, E), v (..., S, Ev), batch dims broadcast; a bool mask is True where a query may
attend (the opposite of ``nn.MultiheadAttention``'s bool masks), a float mask is added to S.

A row whose keys are all masked has no softmax (every e^S is 0). It gives P = 0, hence an
output row of 0 and zero gradients for it, never NaN; PyTorch's SDPA behaves so since 2.5.
"""
from __future__ import annotations

import math

from .. import backend
from ..autograd import Function
from ._adjoint import broadcast_shape, unbroadcast

OP = "scaled_dot_product_attention"


def _check_inputs(q, k, v, attn_mask, dropout_p, is_causal):
    """The shapes and dtypes PyTorch accepts; anything else raises, naming what was expected."""
    for name, a in (("query", q), ("key", k), ("value", v)):
        if a.ndim < 2:
            raise ValueError(f"{OP}: {name} needs at least 2 dims (..., length, features), "
                             f"got shape {a.shape}")
        if a.dtype.kind != "f":
            raise TypeError(f"{OP}: expected floating-point {name}, got dtype {a.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"{OP}: query, key and value must have one dtype, got {q.dtype}, "
                        f"{k.dtype} and {v.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{OP}: query {q.shape} and key {k.shape} must share the last dim E")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"{OP}: key {k.shape} and value {v.shape} must share the length S "
                         f"(dim -2)")
    batch = broadcast_shape(OP, q.shape[:-2], k.shape[:-2], v.shape[:-2])
    scores_shape = batch + (q.shape[-2], k.shape[-2])
    if attn_mask is not None:
        if is_causal:
            raise ValueError(f"{OP}: attn_mask and is_causal=True were both given; pass one "
                             f"(is_causal builds the lower-triangular mask itself)")
        if attn_mask.dtype.kind not in "bf":
            raise TypeError(f"{OP}: attn_mask must be bool or floating point, got dtype "
                            f"{attn_mask.dtype}")
        if broadcast_shape(OP, attn_mask.shape, scores_shape) != scores_shape:
            raise ValueError(f"{OP}: attn_mask of shape {attn_mask.shape} does not broadcast to "
                             f"the scores' shape {scores_shape} (batch..., L, S)")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"{OP}: dropout_p has to be between 0 and 1, got {dropout_p}")


def _masked_scores(q, k, attn_mask, is_causal, scale, xp):
    """S = (scale·Q) Kᵀ + M, a fresh array (scaling Q, L×E, costs less than scaling S, L×S)."""
    scores = (q * q.dtype.type(scale)) @ k.swapaxes(-1, -2)
    if is_causal:  # query i sees keys j <= i (top-left aligned, as torch's tril)
        allowed = xp.tri(q.shape[-2], k.shape[-2], dtype=backend.bool_)
        xp.copyto(scores, -xp.inf, where=~allowed)
    elif attn_mask is not None and attn_mask.dtype.kind == "b":
        xp.copyto(scores, -xp.inf, where=~attn_mask)
    elif attn_mask is not None:
        scores += attn_mask
    return scores


def _softmax_rows_(scores, xp):
    """Softmax over the last axis, in place on ``scores`` (our own array); returns
    log Σ e^S per row (the log-sum-exp, what recomputation needs).

    A fully masked row has max −inf; using 0 in its place keeps e^(−inf − 0) = 0 rather than
    e^(−inf + inf) = NaN, and a row sum of 0 is replaced by 1, so the row stays 0.
    """
    row_max = scores.max(axis=-1, keepdims=True)
    row_max[~xp.isfinite(row_max)] = 0
    scores -= row_max
    xp.exp(scores, out=scores)
    row_sum = scores.sum(axis=-1, keepdims=True)
    row_sum[row_sum == 0] = 1
    scores *= 1 / row_sum
    return row_max + xp.log(row_sum)


class ScaledDotProductAttention(Function):
    """O = softmax(scale·Q Kᵀ + M) V, with dropout on P when dropout_p > 0 (see module doc).

    With ``return_weights`` it has two outputs, (O, P_d), P_d the weights actually applied to
    V (after dropout, as ``nn.MultiheadAttention`` returns them); both are differentiable.
    """

    @staticmethod
    def forward(ctx, q, k, v, attn_mask, dropout_p, is_causal, scale, return_weights, recompute):
        _check_inputs(q, k, v, attn_mask, dropout_p, is_causal)
        xp = backend.array_module(q, k, v, attn_mask)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        if k.shape[-2] == 0:  # no keys at all: every row is fully masked
            batch = broadcast_shape(OP, q.shape[:-2], k.shape[:-2], v.shape[:-2])
            probs = xp.zeros(batch + (q.shape[-2], 0), dtype=q.dtype)
            lse = xp.zeros(batch + (q.shape[-2], 1), dtype=q.dtype)
        else:
            probs = _masked_scores(q, k, attn_mask, is_causal, scale, xp)
            lse = _softmax_rows_(probs, xp)
        keep = None
        dropped = probs
        if dropout_p > 0:
            keep = backend.generator(xp).random(probs.shape, dtype=probs.dtype) >= dropout_p
            dropped = probs * keep
            dropped *= 1.0 / (1.0 - dropout_p) if dropout_p < 1 else 0.0
        out = dropped @ v

        ctx.scale, ctx.dropout_p, ctx.is_causal = scale, dropout_p, is_causal
        ctx.recompute = recompute
        ctx.shapes = (q.shape, k.shape, v.shape, None if attn_mask is None else attn_mask.shape)
        ctx.mask_dtype = None if attn_mask is None else attn_mask.dtype
        need_q, need_k, need_v, need_mask = ctx.needs_input_grad[:4]
        need_scores = need_q or need_k or need_mask
        ctx.save_for_backward(
            q if need_k or recompute else None,
            k if need_q or recompute else None,
            v if need_scores else None,
            attn_mask if recompute else None,
            lse if recompute else probs,
            out if need_scores else None,
            keep,
        )
        return (out, dropped) if return_weights else out

    @staticmethod
    def backward(ctx, grad_out, grad_weights=None):
        """With dO = grad_out, D = keep/(1 − p) the dropout factor (D = 1 without dropout),
        P_d = P ⊙ D the weights applied to V, and dW the gradient of the weights output:

            dV = P_dᵀ dO
            dP_d = dO Vᵀ (+ dW)
            dP = dP_d ⊙ D
            dS = P ⊙ (dP − rowsum(dP ⊙ P))          (softmax's backward, row by row)
            dQ = scale·dS K,   dK = scale·dSᵀ Q,   dM = dS (a float mask that requires grad)

        rowsum(dP ⊙ P) = rowsum(dP_d ⊙ P_d) = rowsum(dO ⊙ O) (+ rowsum(dW ⊙ P_d)), since
        O = P_d V: an (L × Ev) product instead of one over (L × S). Broadcast batch dims are
        summed back (``unbroadcast``). A fully masked row has P = 0, so its dS, dQ are 0.
        In the code: dO = grad_out, dW = grad_weights, P = probs, P_d = dropped, D = keep
        scaled by 1/(1 − p), rowsum(dP ⊙ P) = row_dot; grad_scores holds dP_d, then dP, then
        dS, in place (it is our own array).

        Saved: P, (L × S) per head in q's dtype (e.g. 1 MiB per head at L = S = 512, float32),
        the output O (L × Ev per head), the bool dropout mask (L × S bytes) when dropout_p > 0,
        and references to q, k, v (inputs, no new memory), each only when a gradient needs it.
        With ``recompute=True`` P is not kept: only log Σ e^S per row (L per head), and P is
        rebuilt here as exp(scale·Q Kᵀ + M − lse): one more matmul and exp for S× less memory.
        """
        q, k, v, attn_mask, probs, out, keep = ctx.saved_tensors
        need_q, need_k, need_v, need_mask = ctx.needs_input_grad[:4]
        shape_q, shape_k, shape_v, shape_mask = ctx.shapes
        xp = backend.array_module(grad_out)
        if ctx.recompute:
            probs = _recomputed_probs(q, k, attn_mask, ctx, probs, xp)
        dropped = probs
        if keep is not None:
            dropped = probs * keep
            dropped *= 1.0 / (1.0 - ctx.dropout_p) if ctx.dropout_p < 1 else 0.0

        grad_q = grad_k = grad_v = grad_mask = None
        if need_v:
            grad_v = unbroadcast(dropped.swapaxes(-1, -2) @ grad_out, shape_v)
        if need_q or need_k or need_mask:
            grad_scores = grad_out @ v.swapaxes(-1, -2)  # dP_d, our own array from here on
            row_dot = (grad_out * out).sum(axis=-1, keepdims=True)
            if grad_weights is not None:
                grad_scores += grad_weights
                row_dot += (grad_weights * dropped).sum(axis=-1, keepdims=True)
            if keep is not None:
                grad_scores *= keep
                grad_scores *= 1.0 / (1.0 - ctx.dropout_p) if ctx.dropout_p < 1 else 0.0
            grad_scores -= row_dot
            grad_scores *= probs  # dS
            if need_q:
                grad_q = grad_scores @ k
                grad_q *= ctx.scale
                grad_q = unbroadcast(grad_q, shape_q)
            if need_k:
                grad_k = grad_scores.swapaxes(-1, -2) @ q
                grad_k *= ctx.scale
                grad_k = unbroadcast(grad_k, shape_k)
            if need_mask:
                grad_mask = unbroadcast(grad_scores, shape_mask).astype(ctx.mask_dtype, copy=False)
        return grad_q, grad_k, grad_v, grad_mask, None, None, None, None, None


def _recomputed_probs(q, k, attn_mask, ctx, lse, xp):
    """P = exp(S − lse) from the saved log-sum-exp: the forward's P up to rounding."""
    if k.shape[-2] == 0:
        return xp.zeros(lse.shape[:-1] + (0,), dtype=lse.dtype)
    probs = _masked_scores(q, k, attn_mask, ctx.is_causal, ctx.scale, xp)
    probs -= lse
    xp.exp(probs, out=probs)
    return probs


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, *, recompute=False):
    """``F.scaled_dot_product_attention``: softmax(scale·Q Kᵀ + M) V.

    As in PyTorch, dropout is applied to P whenever ``dropout_p > 0`` (the function has no
    training flag: callers pass ``dropout_p=0.0`` in evaluation, as ``nn.MultiheadAttention``
    does); the dropout mask comes from ``backend.generator``. ``recompute=True`` (a tinynorm
    extension) keeps only the row log-sum-exp for backward instead of P (see the backward).
    """
    return ScaledDotProductAttention.apply(query, key, value, attn_mask, float(dropout_p),
                                           bool(is_causal), scale, False, bool(recompute))


def attention_with_weights(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                           scale=None):
    """(O, P_d): the output and the weights applied to V (after dropout), both differentiable;
    what ``nn.MultiheadAttention`` returns with ``need_weights=True``."""
    return ScaledDotProductAttention.apply(query, key, value, attn_mask, float(dropout_p),
                                           bool(is_causal), scale, True, False)
