"""cross_entropy: log-softmax and negative log-likelihood as one op, with a fused backward.

Written as one Function rather than ``nll(log_softmax(x))`` because the composed backward
would pass a (rows, C) gradient through log_softmax that is zero but for one entry per
row; fused, the whole backward is ``dx = a · (Q·p − q)`` on the probabilities p that
forward already computed.
"""
from __future__ import annotations

from .. import backend
from ..autograd import Function
from ..tensor import Tensor
from ._adjoint import compute_dtype, require_float, widened

REDUCTIONS = ("none", "mean", "sum")


class CrossEntropy(Function):
    """Cross-entropy of logits x (rows, C) against class indices t (rows,).

    With p = softmax(x) per row, ε = label_smoothing, w the class weights (all 1 without
    ``weight``) and rows whose target is ``ignore_index`` left out, each row's target
    distribution is (PyTorch's label smoothing, weights included):

        q_c = (1 − ε) · w_t · [c = t] + (ε / C) · w_c
        loss_row = −Σ_c q_c · log p_c

    and the reduction is ``none`` (per row, 0 for ignored rows), ``sum``, or ``mean`` =
    Σ loss_row / W with W = Σ w_t over the rows not ignored (nan when every row is ignored,
    as PyTorch). Without weights W is the count of rows not ignored.
    """

    @staticmethod
    def targets(xp, target, weight, ignore_index, dtype):
        """(valid, safe_t, w_t) per row: whether the row counts, its target with ignored rows
        sent to class 0 (any class works: those rows are masked), and its weight w_t (0 on
        ignored rows), in ``dtype`` without weights."""
        valid = target != ignore_index
        safe_t = xp.where(valid, target, 0)
        w_t = weight[safe_t] * valid if weight is not None else valid.astype(dtype)
        return valid, safe_t, w_t

    @staticmethod
    def forward(ctx, x, target, given_weight, ignore_index, reduction, label_smoothing):
        xp = backend.array_module(x, target, given_weight)
        rows, classes = x.shape
        dtype = x.dtype
        # float16 is computed in float32
        x, weight = widened(compute_dtype(dtype), x, given_weight)
        valid, safe_t, w_t = CrossEntropy.targets(xp, target, weight, ignore_index, x.dtype)
        rows_idx = xp.arange(rows)

        shifted = x - x.max(axis=1, keepdims=True) if x.size else x.copy()
        p = xp.exp(shifted)
        sum_exp = p.sum(axis=1)
        log_sum_exp = xp.log(sum_exp)
        # log p at the target only: log p_t = shifted_t − log Σ e^shifted
        logp_t = shifted[rows_idx, safe_t] - log_sum_exp
        loss = -(w_t * logp_t)
        if label_smoothing > 0:
            # Σ_c w_c log p_c = Σ_c w_c shifted_c − (Σ_c w_c) log Σ e^shifted
            if weight is None:
                smooth = shifted.sum(axis=1) - classes * log_sum_exp
            else:
                smooth = shifted @ weight - weight.sum() * log_sum_exp
            smooth = -(smooth * valid)
            loss = (1 - label_smoothing) * loss + (label_smoothing / classes) * smooth
        del shifted
        if ctx.recording:  # softmax(x), for backward alone: p is our own array, in place
            p /= sum_exp[:, None]
            p = p.astype(dtype, copy=False)  # saved in the input's dtype

        ctx.reduction, ctx.label_smoothing = reduction, label_smoothing
        ctx.ignore_index, ctx.mean_scale = ignore_index, None
        ctx.save_for_backward(p, target, given_weight)
        if reduction == "none":
            return loss.astype(dtype, copy=False)
        total = loss.sum()
        if reduction == "sum":
            return xp.asarray(total, dtype=dtype)
        # Every row ignored (W = 0): the loss is 0/0 = nan and the gradient 0, both as
        # PyTorch. Decided on the device: an `if` on W would wait for a GPU on every call.
        denominator = w_t.sum()
        counted = denominator != 0
        safe = xp.where(counted, denominator, 1)
        ctx.mean_scale = counted / safe  # 1/W, or 0
        return xp.where(counted, total / safe, float("nan")).astype(dtype)

    @staticmethod
    def backward(ctx, grad_out):
        """Per row, with log p_c = x_c − log Σ_k e^(x_k):

            ∂(log p_c)/∂x_j = [c = j] − p_j
            ∂loss_row/∂x_j = −Σ_c q_c ([c = j] − p_j) = Q · p_j − q_j,   Q = Σ_c q_c

        so dx_row = a_row · (Q·p − q) with a_row = grad_out (``sum``), grad_out / W
        (``mean``) or grad_out[row] (``none``). Without weights and smoothing Q = 1 and
        q is one-hot: dx = a · (p − onehot(t)), the familiar form. Ignored rows have q = 0,
        so Q = 0 and their gradient is exactly 0.

        In code: dx = p · (a·Q) per row, then subtract a·(ε/C)·w from every entry and
        a·(1 − ε)·w_t at the target; Q = (1 − ε)·w_t + (ε/C)·Σ_c w_c on valid rows.

        Saves p = softmax(x) (C values per row, computed in forward anyway, in x's dtype) and
        the caller's target and class weights (no new arrays); the row mask, the safe
        targets and w_t are rebuilt here from them (``targets``, O(rows)), not kept from
        forward. float16 is computed in float32, as in forward: p and the weights are
        widened and dx rounds to float16 once.
        """
        saved, target, weight = ctx.saved_tensors
        p, weight, grad_out = widened(compute_dtype(saved.dtype), saved, weight, grad_out)
        xp = backend.array_module(p, grad_out)
        valid, safe_t, w_t = CrossEntropy.targets(xp, target, weight, ctx.ignore_index, p.dtype)
        rows, classes = p.shape
        eps = ctx.label_smoothing
        if ctx.reduction == "mean":
            a = xp.broadcast_to(grad_out * ctx.mean_scale, (rows,))
        else:
            a = xp.broadcast_to(grad_out, (rows,))
        if eps > 0:
            # in p's dtype: a Python int times the bool mask would make Q, hence dx, float64
            weight_sum = weight.sum() if weight is not None else p.dtype.type(classes)
            Q = (1 - eps) * w_t + (eps / classes) * weight_sum * valid
        else:
            Q = w_t
        dx = p * (a * Q)[:, None]
        if eps > 0:
            w = weight if weight is not None else p.dtype.type(1)
            dx -= (a * valid)[:, None] * ((eps / classes) * w)
        dx[xp.arange(rows), safe_t] -= a * ((1 - eps) * w_t)
        return dx.astype(saved.dtype, copy=False), None, None, None, None, None


IGNORE_INDEX = -100  # PyTorch's default: targets with this class are left out of the loss


def cross_entropy(input, target, weight=None, ignore_index: int = IGNORE_INDEX,
                  reduction: str = "mean", label_smoothing: float = 0.0):
    """``F.cross_entropy``: log_softmax over the class dim, then the (weighted, smoothed)
    negative log-likelihood of the target classes.

    Shapes, as PyTorch: input (C,) with target (); (N, C) with target (N,); or
    (N, C, d1, ...) with target (N, d1, ...). For language-model logits of shape
    (B, T, V) pass ``logits.reshape(-1, V)`` and ``targets.reshape(-1)``.
    Difference from PyTorch: target must hold class indices; class-probability targets
    are not supported.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction={reduction!r} is not valid; expected one of "
                         f"{REDUCTIONS}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be between 0.0 and 1.0, got "
                         f"{label_smoothing}")
    x_arr = input.data
    t_arr = target.data if isinstance(target, Tensor) else target
    w_arr = weight.data if isinstance(weight, Tensor) else weight
    require_float("cross_entropy", x_arr)
    _check_target(x_arr, t_arr, ignore_index)
    classes = x_arr.shape[0] if x_arr.ndim == 1 else x_arr.shape[1]
    if w_arr is not None and (tuple(w_arr.shape) != (classes,) or w_arr.dtype != x_arr.dtype):
        raise ValueError(f"cross_entropy: weight of shape {tuple(w_arr.shape)} and dtype "
                         f"{w_arr.dtype}; expected shape ({classes},) and the input's dtype "
                         f"{x_arr.dtype}")

    # Move the class dim last and flatten to (rows, C); the inverse moves run in backward
    # through reshape and permute, which cost nothing when the input is already (N, C).
    if input.ndim == 1:
        logits, targets = input.reshape(1, classes), t_arr.reshape(1)
    elif input.ndim == 2:
        logits, targets = input, t_arr
    else:
        order = (0,) + tuple(range(2, input.ndim)) + (1,)
        logits, targets = input.permute(*order).reshape(-1, classes), t_arr.reshape(-1)
    loss = CrossEntropy.apply(logits, targets, w_arr, int(ignore_index), reduction,
                              float(label_smoothing))
    if reduction == "none":
        return loss.reshape(*t_arr.shape)
    return loss


def _check_target(x, t, ignore_index) -> None:
    """Shapes and values of the class-index target, or an error naming both shapes."""
    if not backend.is_array(t) or t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target must be an integer tensor of class indices, got "
                        f"{getattr(t, 'dtype', type(t).__name__)} (class-probability targets "
                        f"are not supported)")
    if x.ndim == 0:
        raise ValueError("cross_entropy: input must have a class dim; got a 0-d tensor")
    expected = () if x.ndim == 1 else (x.shape[0],) + x.shape[2:]
    if tuple(t.shape) != expected:
        raise ValueError(f"cross_entropy: input of shape {x.shape} needs a target of shape "
                         f"{expected}, got {tuple(t.shape)}")
    classes = x.shape[0] if x.ndim == 1 else x.shape[1]
    bad = (t != ignore_index) & ((t < 0) | (t >= classes))
    if t.size and bool(bad.any()):
        first = backend.to_numpy(t[bad]).ravel()[0]
        raise IndexError(f"cross_entropy: target {first} is out of bounds for {classes} classes "
                         f"(expected 0 to {classes - 1}, or ignore_index={ignore_index})")
