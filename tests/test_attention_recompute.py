"""F.scaled_dot_product_attention's default ``recompute=None``: backward keeps P, or only a
log-sum-exp per query row when P would hold more than twice q, k and v
(L·S > 2·(L·E + S·E + S·Ev)); True and False force one or the other. Either way the output
and gradients match PyTorch in float64 (1e-10 relative, as test_attention.py).
"""
import numpy as np
import pytest
import torch

import tinynorm as tn
from tinynorm.nn import functional as F
from tinynorm.ops.attention import attention_with_weights, rebuilds_p

from torch_pairs import attention_saved, close, leaf_pair

rng = np.random.default_rng(2024)

# (L, S, E, Ev, whether the default rebuilds P): L·S against 2·(L·E + S·E + S·Ev)
CASES = [
    (12, 12, 2, 2, False),  # 144 = 144: on the line, P is kept
    (13, 13, 2, 2, True),  # 169 > 156
    (4, 30, 2, 3, False),  # 120 < 316: few queries, many keys
    (30, 30, 2, 3, True),  # 900 > 420
    (5, 5, 4, 4, False),  # a short sequence
    (40, 40, 4, 4, True),  # a long one
]


def attention_leaves(length, source, e, ev, batch=(2, 3)):
    return [leaf_pair(rng.standard_normal(batch + shape))
            for shape in ((length, e), (source, e), (source, ev))]


def saved_kind(out, length, source, batch=(2, 3)):
    """"P" or "lse": which of the two the attention node saved for backward, told apart by
    shape, batch + (L, S) or batch + (L, 1), and float dtype (the dropout mask is bool, an
    (L, S) attn_mask has no batch dims; the sizes in CASES keep q, k, v and O apart)."""
    [shapes] = attention_saved(out)
    has_p, has_lse = batch + (length, source) in shapes, batch + (length, 1) in shapes
    assert has_p != has_lse, shapes
    return "P" if has_p else "lse"


@pytest.mark.parametrize("length, source, e, ev, rebuilt", CASES)
def test_rule(length, source, e, ev, rebuilt):
    q, k, v = (np.empty((2, n, d)) for n, d in ((length, e), (source, e), (source, ev)))
    assert rebuilds_p(q, k, v) == rebuilt


@pytest.mark.parametrize("recompute", [None, False, True])
@pytest.mark.parametrize("length, source, e, ev, rebuilt", CASES)
def test_what_is_saved_and_torch_parity(length, source, e, ev, rebuilt, recompute):
    """The default follows the rule, True and False override it; outputs and gradients match
    PyTorch whichever is kept."""
    (q, tq), (k, tk), (v, tv) = attention_leaves(length, source, e, ev)
    kwargs = {} if recompute is None else {"recompute": recompute}
    out = F.scaled_dot_product_attention(q, k, v, **kwargs)
    keeps_lse = rebuilt if recompute is None else recompute
    assert saved_kind(out, length, source) == ("lse" if keeps_lse else "P")

    grad = rng.standard_normal(out.shape)
    out.backward(tn.tensor(grad))
    t_out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
    t_out.backward(torch.tensor(grad))
    close(out, t_out)
    for ours, theirs in ((q, tq), (k, tk), (v, tv)):
        close(ours.grad, theirs.grad)


@pytest.mark.parametrize("mask_kind", ["causal", "bool", "float"])
def test_default_rebuilds_p_with_masks_and_dropout_matches_kept_p(mask_kind):
    """A long sequence with each mask kind, and dropout: the default rebuilds P, and its
    output and gradients (a float mask's too) equal those of recompute=False up to rounding,
    with the same dropout mask (same seed)."""
    length = source = 40
    (q, _), (k, _), (v, _) = attention_leaves(length, source, 4, 4)
    mask, is_causal = None, mask_kind == "causal"
    if mask_kind == "bool":
        allowed = rng.random((length, source)) > 0.5
        allowed[:, 0] = True
        mask = tn.tensor(allowed)
    elif mask_kind == "float":
        mask = tn.tensor(rng.standard_normal((length, source)), requires_grad=True)
    grad = rng.standard_normal((2, 3, length, 4))
    results = {}
    for recompute in (None, False):
        for t in (q, k, v, mask):
            if t is not None:
                t.grad = None
        tn.manual_seed(7)
        kwargs = {} if recompute is None else {"recompute": recompute}
        out = F.scaled_dot_product_attention(q, k, v, mask, dropout_p=0.2, is_causal=is_causal,
                                             **kwargs)
        assert saved_kind(out, length, source) == ("lse" if recompute is None else "P")
        out.backward(tn.tensor(grad))
        results[recompute] = [out.data] + [t.grad for t in (q, k, v, mask)
                                           if t is not None and t.requires_grad]
    for rebuilt, kept in zip(results[None], results[False]):
        close(rebuilt, kept, rtol=1e-12, atol=1e-13)


def test_weights_output_keeps_p_on_long_sequences():
    """With the weights returned (MultiheadAttention's need_weights=True) P is kept, however
    long the sequence: the caller holds it anyway."""
    length = source = 40
    (q, _), (k, _), (v, _) = attention_leaves(length, source, 4, 4)
    out, _ = attention_with_weights(q, k, v)
    assert saved_kind(out, length, source) == "P"
