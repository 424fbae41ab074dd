"""Scaled-dot-product attention: one Function, its forward beside its hand-derived backward.

    S = scale·Q Kᵀ + M        scores (..., L, S); M the mask (0 / −inf, or a float mask)
    P = softmax(S)            attention weights, row by row over the S keys
    O = P V                   output (..., L, Ev)

Shapes follow ``torch.nn.functional.scaled_dot_product_attention``: q (..., L, E),
k (..., S, E), v (..., S, Ev), batch dims broadcast; a bool mask is True where a query may
attend (the opposite of ``nn.MultiheadAttention``'s bool masks), a float mask is added to S.

A row whose keys are all masked has no softmax (every e^S is 0). It gives P = 0, hence an
output row of 0 and zero gradients for it, never NaN; PyTorch's SDPA behaves so since 2.5.

float16 is computed in float32 (``compute_dtype``), as PyTorch's kernels do: q, k, v and a
float16 float mask are widened, S, P, the log-sum-exp, O and all of backward are float32, and
what is returned (O, the weights, each gradient) is rounded to float16 once, so each lies
within half a float16 ulp of the exact value, plus float32's error. Computed in float16 they
were up to 4 times further off than PyTorch's float16 at (2, 4, 128, 64) (O 1.4e-3 of max |O|
against 3.4e-4), and up to 14 times with scores of ±30 and P rebuilt (dV 4.5e-3 against
3.2e-4). float32 and float64 run as before, with no copy (``widened`` returns the array).
"""
from __future__ import annotations

import math

from .. import backend
from ..autograd import Function
from . import _attention_blocks as blocks
from ._adjoint import broadcast_shape, compute_dtype, unbroadcast, widened
from ._rows import for_each_block
from ._rows import row_dot as row_dot_of
from .dropout import keep_mask, keep_scale

OP = "scaled_dot_product_attention"


def _check_inputs(q, k, v, attn_mask, dropout_p, is_causal) -> tuple:
    """The broadcast batch shape of q, k and v, after checking the shapes and dtypes PyTorch
    accepts; anything else raises, naming what was expected."""
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
    return batch


def rebuilds_p(q, k, v) -> bool:
    """``recompute=None``'s rule: whether backward rebuilds P rather than keeping it.

    It does when P, L·S numbers per head, would hold more than twice q, k and v together
    (L·S > 2·(L·E + S·E + S·Ev)): memory saved for backward then grows with L·S instead of
    L (but for the dropout mask, L·S bytes, kept when dropout_p > 0). Rebuilding costs one
    more Q Kᵀ product and exp per block of P (10-15% of the forward and backward of
    (2, 12, 512, 64) in benchmarks/attention.py), so shorter sequences keep P. With 64
    features a head the line lies at L = S = 384: at 512 P is 2.7x q, k and v (24 MiB for
    (2, 12) heads in float32, against 48 KiB of log-sum-exp), at 1024 5.3x.
    """
    length, source = q.shape[-2], k.shape[-2]
    return length * source > 2 * (length * q.shape[-1] + source * (k.shape[-1] + v.shape[-1]))


def _is_causal_mask(attn_mask, length, source, xp) -> bool:
    """True for a bool (L, S) mask that is exactly the causal one (query i sees keys j <= i),
    as ``nn.MultiheadAttention`` gets it from the seed's blocks: attention then takes the
    causal path, whose blocks skip the keys they cannot see. One comparison of L·S bools,
    and its answer read back: on CuPy, a wait for the GPU per call with such a mask."""
    return (attn_mask is not None and attn_mask.dtype.kind == "b" and attn_mask.ndim == 2
            and bool((attn_mask == xp.tri(length, source, dtype=backend.bool_)).all()))


def _softmax_rows_(scores, xp):
    """Softmax over the last axis, in place on ``scores`` (our own array); returns
    log Σ e^S per row (the log-sum-exp, what recomputation needs).

    A fully masked row has max −inf; using 0 in its place keeps e^(−inf − 0) = 0 rather than
    e^(−inf + inf) = NaN, and a row sum of 0 is replaced by 1, so the row stays 0. Both with
    ``copyto(..., where=)``: assigning through a bool index (``row_sum[row_sum == 0] = 1``)
    made CuPy read the count of Trues back, a wait for the GPU, twice a call.
    """
    row_max = scores.max(axis=-1, keepdims=True)
    xp.copyto(row_max, 0, where=~xp.isfinite(row_max))
    scores -= row_max
    xp.exp(scores, out=scores)
    row_sum = scores.sum(axis=-1, keepdims=True)
    xp.copyto(row_sum, 1, where=row_sum == 0)
    scores *= 1 / row_sum
    return row_max + xp.log(row_sum)


class _Inputs:
    """q, k, v and the mask broadcast to the batch shape, to index by unit and block (None
    where not given), and q·scale when blocks of scores are to be made. q, k, v are taken in
    the compute ``dtype`` (float32 for float16, see ``compute_dtype``: a copy made here; any
    other dtype as it is, no copy), and a float16 float mask in float32 likewise.

    ``scores(unit, r0, r1, keys, out, lse=None)`` writes the block's P into ``out``: softmax
    of scale·Q Kᵀ + M, or with ``lse`` (recomputation in backward) exp(S − lse). It returns
    the block's row log-sum-exp (None when ``lse`` was given). Scaling Q (L × E) once costs
    less than scaling every block of S (L × S).
    """

    def __init__(self, xp, q, k, v, attn_mask, is_causal, scale, scores_shape, dtype,
                 make_scores=True):
        self.xp = xp
        q, k, v = widened(dtype, q, k, v)
        batch = scores_shape[:-2]

        def spread(a):
            return None if a is None else xp.broadcast_to(a, batch + a.shape[-2:])

        self.q, self.k, self.v = spread(q), spread(k), spread(v)
        self.q_scaled = spread(q * q.dtype.type(scale)) if make_scores else None
        # the mask, made once for every block: where S is set to −inf (causal: query i sees
        # keys j <= i, top-left aligned as torch's tril; bool: False = may not attend), or
        # what is added to S (a float mask)
        self.masked_out = self.added = None
        if is_causal:
            self.masked_out = xp.broadcast_to(
                ~xp.tri(*scores_shape[-2:], dtype=backend.bool_), scores_shape)
        elif attn_mask is not None and attn_mask.dtype.kind == "b":
            self.masked_out = xp.broadcast_to(~attn_mask, scores_shape)
        elif attn_mask is not None:
            (attn_mask,) = widened(compute_dtype(attn_mask.dtype), attn_mask)
            self.added = xp.broadcast_to(attn_mask, scores_shape)

    def scores(self, unit, r0, r1, keys, out, lse=None):
        xp = self.xp
        xp.matmul(self.q_scaled[unit][..., r0:r1, :],
                  self.k[unit][..., :keys, :].swapaxes(-1, -2), out=out)
        if self.masked_out is not None:  # S = −inf where masked
            xp.copyto(out, -xp.inf, where=self.masked_out[unit][..., r0:r1, :keys])
        elif self.added is not None:  # S += M
            out += self.added[unit][..., r0:r1, :keys]
        if lse is None:
            return _softmax_rows_(out, xp)
        out -= lse[unit][..., r0:r1, :]
        xp.exp(out, out=out)
        return None


def _new(xp, shape, dtype, zeroed):
    """An array for P (or P_d): zeroed when causal blocks leave keys unwritten."""
    return xp.zeros(shape, dtype=dtype) if zeroed else xp.empty(shape, dtype=dtype)


def _work(target, scratch, name, shape):
    """Where a block is computed: ``target`` (a block of a whole array, or None) when it has
    the compute dtype, else scratch's array of that name, which ``_store`` then copies into
    ``target``, rounding it once (float16). float32 and float64 are written in place."""
    if target is not None and target.dtype == scratch.dtype:
        return target
    return scratch.get(name, shape)


def _store(target, block):
    """Copy ``block`` into ``target``, rounding it to target's dtype, unless it is target."""
    if target is not None and block is not target:
        target[...] = block


def _widened_block(block, scratch, name):
    """``block`` in the compute dtype: itself when it is, else a copy in scratch's array."""
    if block.dtype == scratch.dtype:
        return block
    work = scratch.get(name, block.shape)
    work[...] = block
    return work


class ScaledDotProductAttention(Function):
    """O = softmax(scale·Q Kᵀ + M) V, with dropout on P when dropout_p > 0 (see module doc).

    With ``return_weights`` it has two outputs, (O, P_d), P_d the weights actually applied to
    V (after dropout, as ``nn.MultiheadAttention`` returns them); both are differentiable.

    Forward runs unit by unit (a head, or several heads stacked when they are small: see
    ``blocks.units``) and, within a unit, over blocks of query rows (``blocks.row_blocks``):
    each block of P is made and used while in cache. The whole P is written out only when
    something needs it: backward (unless ``recompute``; None chooses by ``rebuilds_p``) or
    the caller (``return_weights``); otherwise, as under no_grad, a block-sized array serves.
    """

    @staticmethod
    def forward(ctx, q, k, v, attn_mask, dropout_p, is_causal, scale, return_weights, recompute):
        batch = _check_inputs(q, k, v, attn_mask, dropout_p, is_causal)
        if recompute is None:
            recompute = rebuilds_p(q, k, v)
        xp = backend.array_module(q, k, v, attn_mask)
        if scale is None:  # 1/√E; for E = 0, PyTorch's 1/√0 = inf, which then scales only
            # q's and k's empty arrays: Q Kᵀ is 0 and P uniform, as PyTorch gives
            scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] else math.inf
        scale = float(scale)
        length, source = q.shape[-2], k.shape[-2]
        if _is_causal_mask(attn_mask, length, source, xp):  # the same maths, fewer scores
            attn_mask, is_causal = None, True
        shape = batch + (length, source)
        on_cpu = backend.device_of(q) == "cpu"
        # float16 is computed in float32 (``compute_dtype``): what is returned (O, P_d) is
        # rounded to float16 once; what backward reads (P or lse) stays in float32
        dtype, work_dtype = q.dtype, compute_dtype(q.dtype)
        inputs = _Inputs(xp, q, k, v, attn_mask, is_causal, scale, shape, work_dtype)
        need_q, need_k, need_v, need_mask = ctx.needs_input_grad[:4]
        need_scores = need_q or need_k or need_mask
        saving = ctx.recording and (need_scores or need_v)

        factor = keep_scale(dropout_p)
        keep = None
        if dropout_p > 0:  # drawn whole, before the heads split over threads: reproducible
            keep = keep_mask(shape, dropout_p, dtype, xp)
        # the weights returned, P_d (applied to V), are P itself without dropout, when P is
        # in the caller's dtype; else a separate array (never P's: backward reads P)
        shared = return_weights and keep is None and dtype == work_dtype
        probs = (_new(xp, shape, work_dtype, is_causal)
                 if (saving and not recompute) or shared else None)
        if shared:
            dropped = probs
        else:
            dropped = _new(xp, shape, dtype, is_causal) if return_weights else None
        lse = xp.zeros(batch + (length, 1), dtype=work_dtype) if saving and recompute else None
        # every row is written below, unless there are no keys: then O = 0
        out = _new(xp, batch + (length, v.shape[-1]), dtype, zeroed=not source)

        scratch = blocks.Scratch(xp, work_dtype)

        units, stacked = blocks.units(batch, length, source, is_causal, on_cpu)

        def attend(unit):  # one unit: a head, or several stacked (see blocks.units)
            for r0, r1, keys in blocks.row_blocks(length, source, is_causal, on_cpu, stacked):
                block = (Ellipsis, slice(r0, r1), slice(0, keys))
                o = out[unit][..., r0:r1, :]
                p = probs[unit][block] if probs is not None else scratch.get(
                    "p", o.shape[:-1] + (keys,))
                block_lse = inputs.scores(unit, r0, r1, keys, p)
                if lse is not None:
                    lse[unit][..., r0:r1, :] = block_lse
                returned = dropped[unit][block] if dropped is not None and not shared else None
                if keep is not None:
                    p_d = _work(returned, scratch, "p_d", p.shape)
                    xp.multiply(p, keep[unit][block], out=p_d)
                    p_d *= factor
                    _store(returned, p_d)
                    p = p_d
                else:
                    _store(returned, p)  # float16 weights: P rounded once
                o_work = _work(o, scratch, "o", o.shape)
                xp.matmul(p, inputs.v[unit][..., :keys, :], out=o_work)
                _store(o, o_work)

        if source:
            for_each_block(list(enumerate(units)), lambda _, unit: attend(unit),
                           len(units) * stacked * length * source)

        ctx.scale, ctx.dropout_p, ctx.is_causal, ctx.dtype = scale, dropout_p, is_causal, dtype
        ctx.recompute = recompute
        ctx.shapes = (q.shape, k.shape, v.shape, None if attn_mask is None else attn_mask.shape)
        ctx.mask_dtype = None if attn_mask is None else attn_mask.dtype
        ctx.save_for_backward(
            q if need_k or recompute else None,
            k if need_q or recompute else None,
            v if need_scores else None,
            attn_mask if recompute else None,
            lse if recompute else probs,
            out if need_scores and dtype == work_dtype else None,  # see backward: float16
            keep,
        )
        return (out, dropped) if return_weights else out

    @staticmethod
    def backward(ctx, grad_out, grad_weights=None):
        """With dO = grad_out, D = keep·factor the dropout factor (factor = 1/(1 − dropout_p),
        ``keep_scale``; D = 1 without dropout),
        P_d = P ⊙ D the weights applied to V, and dW the gradient of the weights output:

            dV = P_dᵀ dO
            dP_d = dO Vᵀ (+ dW)
            dP = dP_d ⊙ D
            dS = P ⊙ (dP − rowsum(dP ⊙ P))          (softmax's backward, row by row)
            dQ = scale·dS K,   dK = scale·dSᵀ Q,   dM = dS (a float mask that requires grad)

        rowsum(dP ⊙ P) = rowsum(dP_d ⊙ P_d) = rowsum(dO ⊙ O) (+ rowsum(dW ⊙ P_d)), since
        O = P_d V: an (L × Ev) product instead of one over (L × S). That holds for O as P_d V
        made it; a float16 O was rounded (below), so there backward takes rowsum(dP_d ⊙ P_d)
        over each block (dW already in dP_d), in float32. Broadcast batch dims are summed
        back (``unbroadcast``). A fully masked row has P = 0, so its dS, dQ are 0.
        In the code: dO = grad_out, dW = grad_weights, P = p, P_d = p_d, D = keep scaled by
        factor, rowsum(dP ⊙ P) = row_dot; grad_scores holds dP_d, then dP, then dS, in
        place (it is our own array). As in forward, the work runs unit by unit over blocks of
        query rows (``blocks.row_blocks``); causal blocks skip the keys they cannot see (their
        P and dS are 0). Each block adds its rows' share to its unit's dV and dK and writes
        its rows of dQ; heads are independent, so they share out over threads.

        Saved: P, (L × S) per head in the compute dtype (e.g. 1 MiB per head at L = S = 512,
        float32), the output O (L × Ev per head; not for float16, below), the bool dropout
        mask (L × S bytes) when dropout_p > 0, and references to q, k, v (inputs, no new
        memory), each only when a gradient needs it. With ``recompute=True`` P is not kept:
        only log Σ e^S per row (L per head, in the compute dtype), and each block of P is
        rebuilt here as exp(scale·Q Kᵀ + M − lse): one more matmul and exp for S× less
        memory (the dropout mask, L × S bytes, is still kept when dropout_p > 0).
        ``recompute=None`` (the default) rebuilds P when it would hold more than twice q, k
        and v (``rebuilds_p``).

        float16 runs in float32, as forward: q, k, v stay saved as the caller's float16
        arrays and are widened again here (copies that live for this call), as are dO, and
        dW a block at a time; the gradients round to float16 once, at the end. P and the
        lse are kept in float32. P is then 4 bytes a score, not 2, because a float16 P moves
        each term of dV = P_dᵀ dO and dS = P ⊙ (…) by up to 2^-11 of itself: in a float64
        model of these lines that made the gradients up to twice as far from the exact
        values as rounding them once does (dQ 5.5e-4 of max |dQ| against 2.8e-4 at L = 37,
        S = 29). By default P is kept only while it holds at most twice q, k and v, so it
        costs at most 4x their float16 bytes. O is not saved: the O returned was rounded to
        float16, and rowsum(dO ⊙ O) with it is off rowsum(dP ⊙ P) by up to
        2^-11·rowsum(|dO| ⊙ |O|), which moved dQ and dK by up to 1e-3 of their largest
        values with scores of ±30.
        """
        q, k, v, attn_mask, saved_p, out, keep = ctx.saved_tensors
        need_q, need_k, need_v, need_mask = ctx.needs_input_grad[:4]
        shape_q, shape_k, shape_v, shape_mask = ctx.shapes
        xp = backend.array_module(grad_out)
        on_cpu = backend.device_of(grad_out) == "cpu"
        batch, length, source = grad_out.shape[:-2], shape_q[-2], shape_k[-2]
        work_dtype = compute_dtype(ctx.dtype)  # float16: all of it in float32, as forward
        inputs = _Inputs(xp, q, k, v, attn_mask, ctx.is_causal, ctx.scale,
                         batch + (length, source), work_dtype, make_scores=ctx.recompute)
        (grad_out,) = widened(work_dtype, grad_out)
        factor = keep_scale(ctx.dropout_p)
        # unused weights arrive as zeros from the engine: one read (on CuPy, a wait for the
        # GPU) beats three passes over L × S
        weights_used = grad_weights is not None and bool(grad_weights.any())

        def zeros(shape, needed):
            return xp.zeros(batch + shape, dtype=work_dtype) if needed else None

        grad_q, grad_k = zeros(shape_q[-2:], need_q), zeros(shape_k[-2:], need_k)
        grad_v, grad_scores_all = zeros(shape_v[-2:], need_v), zeros((length, source), need_mask)

        scratch = blocks.Scratch(xp, work_dtype)

        units, stacked = blocks.units(batch, length, source, ctx.is_causal, on_cpu)

        def backward_unit(unit):  # one unit: a head, or several stacked (see blocks.units)
            for r0, r1, keys in blocks.row_blocks(length, source, ctx.is_causal, on_cpu,
                                                  stacked):
                rows = (Ellipsis, slice(r0, r1), slice(None))  # this block's query rows
                seen = (Ellipsis, slice(0, keys), slice(None))  # the key rows they may see
                block = (Ellipsis, slice(r0, r1), slice(0, keys))  # their part of P (L × S)
                if ctx.recompute:
                    p = scratch.get("p", grad_out[unit][rows].shape[:-1] + (keys,))
                    inputs.scores(unit, r0, r1, keys, p, lse=saved_p)
                else:
                    p = saved_p[unit][block]
                p_d = p
                if keep is not None:
                    p_d = xp.multiply(p, keep[unit][block], out=scratch.get("p_d", p.shape))
                    p_d *= factor
                d_out = grad_out[unit][rows]
                if need_v:
                    grad_v[unit][seen] += p_d.swapaxes(-1, -2) @ d_out
                if not (need_q or need_k or need_mask):
                    continue
                grad_scores = xp.matmul(d_out, inputs.v[unit][seen].swapaxes(-1, -2),
                                        out=scratch.get("grad_scores", p.shape))  # dP_d
                if weights_used:
                    d_weights = _widened_block(grad_weights[unit][block], scratch, "d_weights")
                    grad_scores += d_weights
                if out is not None:  # rowsum(dO ⊙ O) (+ rowsum(dW ⊙ P_d))
                    row_dot = row_dot_of(d_out, out[unit][rows])[..., None]
                    if weights_used:
                        row_dot += row_dot_of(d_weights, p_d)[..., None]
                else:  # float16: rowsum(dP_d ⊙ P_d), the O it was made from not kept
                    row_dot = row_dot_of(grad_scores, p_d)[..., None]
                if keep is not None:
                    grad_scores *= keep[unit][block]
                    grad_scores *= factor
                grad_scores -= row_dot
                grad_scores *= p  # dS
                if need_q:
                    xp.matmul(grad_scores, inputs.k[unit][seen], out=grad_q[unit][rows])
                if need_k:
                    grad_k[unit][seen] += grad_scores.swapaxes(-1, -2) @ inputs.q[unit][rows]
                if need_mask:
                    grad_scores_all[unit][block] = grad_scores

        if source and length:
            for_each_block(list(enumerate(units)), lambda _, unit: backward_unit(unit),
                           len(units) * stacked * length * source)
        if need_q:
            grad_q *= ctx.scale
        if need_k:
            grad_k *= ctx.scale

        def rounded(grad, shape, dtype):  # summed over broadcast dims, then rounded once
            return None if grad is None else unbroadcast(grad, shape).astype(dtype, copy=False)

        return (rounded(grad_q, shape_q, ctx.dtype), rounded(grad_k, shape_k, ctx.dtype),
                rounded(grad_v, shape_v, ctx.dtype),
                rounded(grad_scores_all, shape_mask, ctx.mask_dtype), None, None, None, None, None)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, *, recompute=None):
    """``F.scaled_dot_product_attention``: softmax(scale·Q Kᵀ + M) V.

    As in PyTorch, dropout is applied to P whenever ``dropout_p > 0`` (the function has no
    training flag: callers pass ``dropout_p=0.0`` in evaluation, as ``nn.MultiheadAttention``
    does); the dropout mask comes from ``backend.generator``.

    ``recompute`` (keyword only) is a tinynorm extension; PyTorch has no such argument. It
    says what backward keeps: with True only the row log-sum-exp, P being rebuilt block by
    block in backward (one more Q Kᵀ product and exp; PyTorch's fused CPU kernel does the
    same), with False P itself (L·S per head). None, the default, rebuilds P when it would
    hold more than twice q, k and v together, L·S > 2·(L·E + S·E + S·Ev) (``rebuilds_p``):
    long sequences. The output and gradients are the same either way, up to rounding.
    """
    return ScaledDotProductAttention.apply(query, key, value, attn_mask, float(dropout_p),
                                           bool(is_causal), scale, False,
                                           None if recompute is None else bool(recompute))


def attention_with_weights(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                           scale=None):
    """(O, P_d): the output and the weights applied to V (after dropout), both differentiable;
    what ``nn.MultiheadAttention`` returns with ``need_weights=True``. P is returned, so it
    is kept for backward too (``recompute=False``)."""
    return ScaledDotProductAttention.apply(query, key, value, attn_mask, float(dropout_p),
                                           bool(is_causal), scale, True, False)
