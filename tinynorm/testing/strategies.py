"""Hypothesis strategies for well-conditioned op inputs (host NumPy arrays).

Finite differences need inputs on which the function is smooth at the scale of ``eps``:
no two elements so close that a max or a sort can swap them, nothing on a kink such as
relu's 0 (``avoid=``), rows with spread for normalisation. ``arrays`` therefore draws a seed
and spreads its n values over ``[lo, hi]``, ends included, any two at least ``L / 2n`` apart
(``L = hi − lo`` less what ``avoid`` takes out). Shapes come from ``hypothesis.extra.numpy``
and shrink as usual; values are a function of the seed, so they do not shrink towards simpler
numbers: a failing example shrinks to the smallest shape and the seed that still fails.

Arrays are on the host: wrap them with ``tn.tensor(a, requires_grad=True)`` (which copies
them to the current backend).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import hypothesis.extra.numpy as hnp
from hypothesis import strategies as st

from .. import backend

np = backend.module("numpy")  # strategies draw host arrays

MASK_KINDS = ("none", "bool", "float", "causal")
_seeds = st.integers(0, 2**32 - 1)


def shapes(min_dims: int = 1, max_dims: int = 4, min_side: int = 1, max_side: int = 5):
    """Array shapes (tuples of ints) of ``min_dims..max_dims`` dims, each side in
    ``min_side..max_side``; shrinks towards fewer and smaller dims."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def _float_dtype(dtype, who: str):
    """``dtype`` as a NumPy dtype, refused unless it is a real floating one."""
    dtype = backend.numpy_dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"{who}: dtype must be a real floating dtype (float16, float32, "
                         f"float64); got {dtype}")
    return dtype


def _shape(shape, who: str):
    """A strategy of shapes as it is; an int or a sequence of ints as a tuple."""
    if isinstance(shape, st.SearchStrategy):
        return shape
    sides = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    if not all(isinstance(s, numbers.Integral) and s >= 0 for s in sides):
        raise ValueError(f"{who}: shape must be a tuple of ints >= 0 or a strategy of them; "
                         f"got {shape!r}")
    return tuple(int(s) for s in sides)


def _allowed_intervals(lo: float, hi: float, avoid, margin: float) -> list:
    """[lo, hi] with the open interval (p − margin, p + margin) removed around each p."""
    intervals = [(lo, hi)]
    for p in sorted(avoid):
        next_intervals = []
        for a, b in intervals:
            if p + margin <= a or p - margin >= b:
                next_intervals.append((a, b))
                continue
            if p - margin > a:
                next_intervals.append((a, p - margin))
            if p + margin < b:
                next_intervals.append((p + margin, b))
        intervals = next_intervals
    return intervals


def _check_allowed(lo, hi, avoid, margin, who: str) -> list:
    """The allowed intervals; ValueError, naming the argument, for a range that is empty or
    not finite, a negative margin, or avoided points that leave nothing."""
    lo, hi, margin = float(lo), float(hi), float(margin)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{who}: need finite lo < hi; got lo={lo}, hi={hi}")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"{who}: margin must be finite and >= 0; got {margin}")
    if not all(math.isfinite(float(p)) for p in avoid):
        raise ValueError(f"{who}: points to avoid must be finite; got {tuple(avoid)}")
    intervals = _allowed_intervals(lo, hi, [float(p) for p in avoid], margin)
    if not sum(b - a for a, b in intervals) > 0:
        raise ValueError(f"{who}: nothing of [{lo}, {hi}] is left after avoiding "
                         f"{tuple(avoid)} by margin {margin}")
    return intervals


def spread_values(rng, n: int, lo: float, hi: float, avoid=(), margin: float = 0.1):
    """``n`` shuffled float64 values in ``[lo, hi]``, pairwise at least ``gap = L / 2n``
    apart (``L`` the length allowed), none closer than ``margin`` to a point of ``avoid``.

    Positions along the allowed length are n sorted uniform draws over ``L − (n − 1)·gap``,
    the j-th moved up by ``j·gap``: uniform over all such sets, so any value may lie at
    either end. Laid over the allowed intervals, gaps only widen across an avoided one.
    """
    intervals = _check_allowed(lo, hi, avoid, margin, "spread_values")
    lengths = np.array([b - a for a, b in intervals])
    gap = lengths.sum() / (2 * max(n, 1))
    positions = np.sort(rng.random(n)) * (lengths.sum() - (n - 1) * gap) + np.arange(n) * gap
    starts = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    which = np.searchsorted(starts, positions, side="right") - 1
    values = np.array([a for a, _ in intervals])[which] + (positions - starts[which])
    return rng.permutation(np.clip(values, lo, hi))  # clip: rounding at the very ends


def arrays(shape, dtype=backend.float64, lo: float = -3.0, hi: float = 3.0, *,
           avoid=(), margin: float = 0.1):
    """Arrays of ``shape`` (a tuple, an int, or a strategy of tuples) and a floating
    ``dtype``, well conditioned for finite differences: finite values in ``[lo, hi]`` (ends
    included), none within ``margin`` of a point in ``avoid`` (e.g. ``avoid=(0.0,)`` for
    relu), and any two at least ``L / 2n`` apart, n the number of elements and ``L = hi − lo``
    less the avoided intervals (no repeated fill value, no near-ties for max). The values are
    drawn in float64 and rounded to ``dtype``, which moves each by up to half its spacing.
    ValueError for a non-float dtype, lo >= hi, or a margin that leaves nothing."""
    dtype = _float_dtype(dtype, "arrays")
    avoid = (avoid,) if isinstance(avoid, numbers.Real) else tuple(avoid)
    _check_allowed(lo, hi, avoid, margin, "arrays")
    return _arrays(_shape(shape, "arrays"), dtype, lo, hi, avoid, margin)


@st.composite
def _arrays(draw, shape, dtype, lo, hi, avoid, margin):
    if isinstance(shape, st.SearchStrategy):
        shape = tuple(draw(shape))
    rng = np.random.default_rng(draw(_seeds))
    size = int(np.prod(shape, dtype=np.int64))
    values = spread_values(rng, size, lo, hi, avoid, margin)
    return values.reshape(shape).astype(dtype)


def broadcastable_shapes(n: int, min_dims: int = 0, max_dims: int = 4, min_side: int = 1,
                         max_side: int = 5):
    """Tuples of ``n`` shapes that broadcast together (sides of 1 and missing leading dims
    mixed in), from ``hypothesis.extra.numpy.mutually_broadcastable_shapes``."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=n, min_dims=min_dims, max_dims=max_dims, min_side=min_side,
        max_side=max_side).map(lambda drawn: tuple(drawn.input_shapes))


def _row_shape(draw, min_dims, max_dims, max_side, features):
    lead = draw(hnp.array_shapes(min_dims=min_dims - 1, max_dims=max_dims - 1, min_side=1,
                                 max_side=max_side))
    return lead + (features,)


def normalizable_rows(*, min_dims: int = 2, max_dims: int = 3, max_side: int = 4,
                      min_features: int = 2, max_features: int = 8, dtype=backend.float64,
                      lo: float = -3.0, hi: float = 3.0):
    """2-D/3-D arrays ``(..., d)`` for LayerNorm/RMSNorm over the last axis: each row holds
    ``d >= 2`` distinct values spread over ``[lo, hi]`` (drawn row by row), so every row's
    standard deviation is at least ``(hi − lo) / 8`` — far above any normalisation eps."""
    if min_features < 2:
        raise ValueError("normalizable_rows: min_features must be at least 2 (use "
                         "degenerate_rows for d=1)")
    if max_features < min_features:
        raise ValueError(f"normalizable_rows: max_features={max_features} < "
                         f"min_features={min_features}")
    dtype = _float_dtype(dtype, "normalizable_rows")
    _check_allowed(lo, hi, (), 0.0, "normalizable_rows")
    return _normalizable_rows(min_dims, max_dims, max_side, min_features, max_features, dtype,
                              lo, hi)


@st.composite
def _normalizable_rows(draw, min_dims, max_dims, max_side, min_features, max_features, dtype,
                       lo, hi):
    d = draw(st.integers(min_features, max_features))
    shape = _row_shape(draw, min_dims, max_dims, max_side, d)
    rng = np.random.default_rng(draw(_seeds))
    rows = [spread_values(rng, d, lo, hi) for _ in range(int(np.prod(shape[:-1])))]
    return np.array(rows).reshape(shape).astype(dtype)


def degenerate_rows(*, min_dims: int = 2, max_dims: int = 3, max_side: int = 4,
                    max_features: int = 8, dtype=backend.float64, lo: float = -3.0,
                    hi: float = 3.0):
    """2-D/3-D arrays ``(..., d)`` whose every row has zero variance: either ``d == 1``, or
    each row is one constant repeated ``d`` times, ``2 <= d <= max_features`` (the case of
    Chainer's LayerNorm divide-by-zero). Constants are arbitrary floats in ``[lo, hi]``, 0
    included (lo and hi must be exact in ``dtype``: Hypothesis says so otherwise)."""
    if max_features < 1:
        raise ValueError(f"degenerate_rows: max_features must be at least 1; got "
                         f"{max_features}")
    dtype = _float_dtype(dtype, "degenerate_rows")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"degenerate_rows: need finite lo <= hi; got lo={lo}, hi={hi}")
    return _degenerate_rows(min_dims, max_dims, max_side, max_features, dtype, lo, hi)


@st.composite
def _degenerate_rows(draw, min_dims, max_dims, max_side, max_features, dtype, lo, hi):
    single = max_features == 1 or draw(st.booleans())
    d = 1 if single else draw(st.integers(2, max_features))
    shape = _row_shape(draw, min_dims, max_dims, max_side, d)
    width = 8 * backend.numpy_dtype(dtype).itemsize
    constants = draw(hnp.arrays(dtype, shape[:-1] + (1,), elements=st.floats(
        lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=width)))
    return np.broadcast_to(constants, shape).copy()


@dataclass(frozen=True)
class AttentionInputs:
    """Inputs of ``scaled_dot_product_attention(q, k, v, attn_mask, is_causal=...)``.

    ``q`` is (B, H, L, E), ``k`` is (B, H, S, E), ``v`` is (B, H, S, Ev), all of the dtype
    asked for (float64 by default; a float mask too).
    ``mask_kind`` is one of ``"none"``, ``"bool"``, ``"float"``, ``"causal"``; ``mask`` is
    None for "none"; for "bool" True means *take part in attention* (PyTorch's convention);
    for "float" it is added to the scores; for "causal" it is the boolean mask that
    ``is_causal=True`` implies, ``tril(ones(L, S))`` (top-left aligned, as PyTorch), given so
    tests can compare both spellings. Masks broadcast to (B, H, L, S).
    """

    q: object
    k: object
    v: object
    mask_kind: str
    mask: object = None

    @property
    def is_causal(self) -> bool:
        return self.mask_kind == "causal"

    @property
    def attn_mask(self):
        """The ``attn_mask`` argument: the mask for "bool"/"float", None otherwise."""
        return self.mask if self.mask_kind in ("bool", "float") else None


def attention_inputs(*, max_batch: int = 2, max_heads: int = 2, max_len: int = 4,
                     max_embed: int = 4, mask_kinds=MASK_KINDS, allow_fully_masked: bool = False,
                     dtype=backend.float64):
    """An ``AttentionInputs`` with small sizes (every size from 1 up to its max) and a mask
    kind drawn from ``mask_kinds``. Boolean masks have at least one True in every query row
    (a fully masked row has no softmax) unless ``allow_fully_masked``. q and k lie in
    [-1, 1] so the scores stay away from softmax saturation; v in [-2, 2]."""
    unknown = set(mask_kinds) - set(MASK_KINDS)
    if unknown or not mask_kinds:
        raise ValueError(f"attention_inputs: mask_kinds {tuple(mask_kinds)}; expected some "
                         f"of {MASK_KINDS}")
    dtype = _float_dtype(dtype, "attention_inputs")
    return _attention_inputs(max_batch, max_heads, max_len, max_embed, tuple(mask_kinds),
                             allow_fully_masked, dtype)


@st.composite
def _attention_inputs(draw, max_batch, max_heads, max_len, max_embed, mask_kinds,
                      allow_fully_masked, dtype):
    side = st.integers(1, max_len)
    b, h = draw(st.integers(1, max_batch)), draw(st.integers(1, max_heads))
    length, source = draw(side), draw(side)
    e, ev = draw(st.integers(1, max_embed)), draw(st.integers(1, max_embed))
    q = draw(arrays((b, h, length, e), dtype, -1.0, 1.0))
    k = draw(arrays((b, h, source, e), dtype, -1.0, 1.0))
    v = draw(arrays((b, h, source, ev), dtype, -2.0, 2.0))
    kind = draw(st.sampled_from(tuple(mask_kinds)))
    mask_shape = draw(st.sampled_from([(length, source), (b, 1, length, source),
                                       (1, h, length, source), (b, h, length, source)]))
    mask = None
    if kind == "causal":
        mask = np.tril(np.ones((length, source), dtype=bool))
    elif kind == "float":
        mask = draw(arrays(mask_shape, dtype, -2.0, 2.0))
    elif kind == "bool":
        mask = draw(hnp.arrays(backend.bool_, mask_shape))
        if not allow_fully_masked:
            rows = mask.reshape(-1, source).copy()
            for r in np.flatnonzero(~rows.any(axis=1)):
                rows[r, r % source] = True
            mask = rows.reshape(mask_shape)
    return AttentionInputs(q=q, k=k, v=v, mask_kind=kind, mask=mask)
