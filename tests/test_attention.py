"""F.scaled_dot_product_attention: finite differences and PyTorch parity (MultiheadAttention's
tests are in test_multihead_attention.py).

Parity is in float64 within 1e-10 relative (plus a 1e-12 absolute floor for entries that are
0 up to rounding). Upstream gradients are random normal, never all ones.
"""
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tinynorm as tn
from tinynorm.nn import functional as F
from tinynorm.ops import _attention_blocks as attention_blocks
from tinynorm.ops.attention import attention_with_weights
from tinynorm.testing import assert_close, gradcheck
from tinynorm.testing.strategies import attention_inputs

from torch_pairs import close, host, leaf_pair, mask_pair, num_threads

rng = np.random.default_rng(1234)


def float_causal(length, source):
    return np.where(np.tri(length, source, dtype=bool), 0.0, -np.inf)


def leaf_inputs(inputs):
    """q, k, v and the mask of an ``attention_inputs`` example as leaf tensors; a float mask
    requires grad (a bool one cannot)."""
    q, k, v = (tn.tensor(a, requires_grad=True) for a in (inputs.q, inputs.k, inputs.v))
    mask = None
    if inputs.attn_mask is not None:
        mask = tn.tensor(inputs.attn_mask, requires_grad=inputs.mask_kind == "float")
    return q, k, v, mask


@given(inputs=attention_inputs(), scale=st.sampled_from([None, 0.7]), recompute=st.booleans())
def test_sdpa_gradcheck(inputs, scale, recompute):
    q, k, v, mask = leaf_inputs(inputs)

    def attend(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, mask, is_causal=inputs.is_causal,
                                              scale=scale, recompute=recompute)

    assert gradcheck(attend, (q, k, v, mask))


@given(inputs=attention_inputs(mask_kinds=("none", "float", "causal")))
def test_weights_output_gradcheck(inputs):
    """Both outputs (O and the weights) carry gradients, as MultiheadAttention's do."""
    q, k, v = (tn.tensor(a, requires_grad=True) for a in (inputs.q, inputs.k, inputs.v))
    mask = None if inputs.attn_mask is None else tn.tensor(inputs.attn_mask, requires_grad=True)
    def attend(q, k, v, m):
        return attention_with_weights(q, k, v, m, is_causal=inputs.is_causal)

    assert gradcheck(attend, (q, k, v, mask))


@settings(max_examples=5)
@given(inputs=attention_inputs(mask_kinds=("none", "bool")))
def test_dropout_gradcheck(inputs):
    """With the generator reseeded before each call, dropout's mask is fixed, and the backward
    through D = keep/(1 − p) must match finite differences (weights output included)."""
    q, k, v = (tn.tensor(a, requires_grad=True) for a in (inputs.q, inputs.k, inputs.v))
    mask = None if inputs.attn_mask is None else tn.tensor(inputs.attn_mask)

    def attend(q, k, v):
        tn.manual_seed(7)
        return attention_with_weights(q, k, v, mask, dropout_p=0.4)

    assert gradcheck(attend, (q, k, v))


@given(inputs=attention_inputs(max_len=5, max_embed=5))
def test_sdpa_matches_torch(inputs):
    (q, tq), (k, tk), (v, tv) = (leaf_pair(a) for a in (inputs.q, inputs.k, inputs.v))
    mask, tmask = mask_pair(inputs.attn_mask)
    out = F.scaled_dot_product_attention(q, k, v, mask, is_causal=inputs.is_causal)
    t_out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, tmask,
                                                             is_causal=inputs.is_causal)
    close(out, t_out)
    grad = rng.standard_normal(out.shape)
    out.backward(grad)
    t_out.backward(torch.tensor(grad))
    pairs = [(q, tq), (k, tk), (v, tv)] + ([(mask, tmask)] if inputs.mask_kind == "float" else [])
    for ours, theirs in pairs:
        close(ours.grad, theirs.grad)


def test_sdpa_broadcast_batch_dims_match_torch():
    """Batch dims broadcast across q, k, v and the mask; gradients sum back to each shape."""
    (q, tq), (k, tk), (v, tv), (m, tm) = (leaf_pair(rng.standard_normal(s)) for s in
                                          [(2, 3, 4, 5), (1, 3, 6, 5), (3, 6, 7), (2, 1, 1, 6)])
    out = F.scaled_dot_product_attention(q, k, v, m, scale=0.3)
    t_out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, tm, scale=0.3)
    close(out, t_out)
    grad = rng.standard_normal(out.shape)
    out.backward(grad)
    t_out.backward(torch.tensor(grad))
    for ours, theirs in ((q, tq), (k, tk), (v, tv), (m, tm)):
        assert ours.grad.shape == tuple(theirs.shape)
        close(ours.grad, theirs.grad)


@pytest.mark.parametrize("is_causal", [False, True])
def test_sdpa_without_features_matches_torch(is_causal):
    """q and k with E = 0 features: the default scale 1/√0 is inf in PyTorch and scales only
    empty arrays, so Q Kᵀ = 0 and each query averages the values it may see; tinynorm once
    raised ZeroDivisionError here."""
    (q, tq), (k, tk), (v, tv) = (leaf_pair(rng.standard_normal(s)) for s in
                                 [(2, 4, 0), (2, 4, 0), (2, 4, 3)])
    out = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    t_out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=is_causal)
    close(out, t_out)
    grad = rng.standard_normal(out.shape)
    out.backward(grad)
    t_out.backward(torch.tensor(grad))
    for ours, theirs in ((q, tq), (k, tk), (v, tv)):
        assert ours.grad.shape == tuple(theirs.shape)
        close(ours.grad, theirs.grad)


@pytest.mark.parametrize("length, source", [(5, 5), (4, 6), (6, 3)])
def test_sdpa_causal_three_ways_identical(length, source):
    """A causal mask as bool, as float −inf and as is_causal: the same outputs and grads, and
    equal to torch's is_causal (top-left aligned when L != S).

    The bool mask is recognised as causal and takes is_causal's path: identical bits. The float
    mask's path multiplies P by all S rows of V (zeros of P where masked) where the causal path
    stops at the last key a block can see. Those are sums of the same non-zero terms: the same
    bits from NumPy's BLAS, but cuBLAS may pick another kernel for another inner length (on an
    H100, 1 ulp in 3 of 48 entries at L=4, S=6), so on CuPy that pair agrees to rounding:
    1e-13 relative, 1e-15 absolute for entries that cancel to about 0."""
    q, k, v = (rng.standard_normal(s)
               for s in [(2, 2, length, 4), (2, 2, source, 4), (2, 2, source, 3)])
    grad = rng.standard_normal((2, 2, length, 3))
    results = []
    for mask, causal in ((np.tri(length, source, dtype=bool), False),
                         (float_causal(length, source), False), (None, True)):
        args = [tn.tensor(a, requires_grad=True) for a in (q, k, v)]
        out = F.scaled_dot_product_attention(*args, None if mask is None else tn.tensor(mask),
                                             is_causal=causal)
        out.backward(grad)
        results.append([host(out)] + [host(a.grad) for a in args])
    boolean, float_mask, causal = results
    for a, b in zip(boolean, causal):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(float_mask, causal):
        if tn.backend.current() == "numpy":
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    t_out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    t_out.backward(torch.tensor(grad))
    for ours, theirs in zip(results[0], (t_out, tq.grad, tk.grad, tv.grad)):
        close(ours, theirs)


@pytest.mark.parametrize("length, source", [(300, 300), (300, 200), (200, 300)])
def test_sdpa_causal_row_blocks_match_torch(length, source):
    """Long causal inputs run in row blocks of BLOCK_ROWS queries that skip unseen keys."""
    assert length > attention_blocks.BLOCK_ROWS
    (q, tq), (k, tk), (v, tv) = (leaf_pair(rng.standard_normal(s)) for s in
                                 [(2, length, 8), (2, source, 8), (2, source, 5)])
    out, weights = attention_with_weights(q, k, v, is_causal=True)
    t_out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    close(out, t_out)
    assert not host(weights)[:, np.triu_indices(length, 1, source)[0],
                             np.triu_indices(length, 1, source)[1]].any()
    grad = rng.standard_normal(out.shape)
    out.backward(grad)
    t_out.backward(torch.tensor(grad))
    for ours, theirs in ((q, tq), (k, tk), (v, tv)):
        close(ours.grad, theirs.grad)


@settings(max_examples=10)
@given(inputs=attention_inputs(max_len=5, mask_kinds=("causal",)), recompute=st.booleans(),
       dropout=st.booleans())
def test_causal_row_blocks_gradcheck(inputs, recompute, dropout):
    """Blocks of 2 rows, so that tiny inputs run through several blocks."""
    q, k, v = (tn.tensor(a, requires_grad=True) for a in (inputs.q, inputs.k, inputs.v))

    def attend(q, k, v):
        tn.manual_seed(5)
        if recompute and not dropout:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, recompute=True)
        return attention_with_weights(q, k, v, is_causal=True, dropout_p=0.3 if dropout else 0.0)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention_blocks, "BLOCK_ROWS", 2)
        assert gradcheck(attend, (q, k, v))


@settings(max_examples=15)
@given(inputs=attention_inputs(max_len=5), recompute=st.booleans(), dropout=st.booleans())
def test_row_blocks_without_causal_mask_gradcheck(inputs, recompute, dropout):
    """CPU query blocks of one or two rows (TILE_ELEMENTS patched), every mask kind: each
    block's rows see every key, and a float mask's gradient is assembled block by block."""
    q, k, v, mask = leaf_inputs(inputs)

    def attend(q, k, v, mask):
        tn.manual_seed(5)
        if recompute and not dropout:
            return F.scaled_dot_product_attention(q, k, v, mask, is_causal=inputs.is_causal,
                                                  recompute=True)
        return attention_with_weights(q, k, v, mask, is_causal=inputs.is_causal,
                                      dropout_p=0.3 if dropout else 0.0)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention_blocks, "TILE_ELEMENTS", 2 * inputs.k.shape[-2])
        assert gradcheck(attend, (q, k, v, mask))
        patch.setattr(attention_blocks, "units", units_of("head"))
        assert gradcheck(attend, (q, k, v, mask))


@settings(max_examples=15)
@given(inputs=attention_inputs(max_len=5))
def test_recompute_with_dropout_gradcheck(inputs):
    """Backward rebuilds P from the log-sum-exp and applies the saved dropout mask (what
    nn.MultiheadAttention does with need_weights=False while training)."""
    q, k, v, mask = leaf_inputs(inputs)

    def attend(q, k, v, mask):
        tn.manual_seed(11)
        return F.scaled_dot_product_attention(q, k, v, mask, dropout_p=0.4,
                                              is_causal=inputs.is_causal, recompute=True)

    assert gradcheck(attend, (q, k, v, mask))


@settings(max_examples=15)
@given(inputs=attention_inputs(max_len=5))
def test_dropout_with_p_kept_for_backward_gradcheck(inputs):
    """Dropout without recompute and without returning the weights: backward reads the saved
    P, which the dropped weights P_d must not overwrite (what MultiheadAttention with
    need_weights=False does on short sequences while training)."""
    q, k, v, mask = leaf_inputs(inputs)

    def attend(q, k, v, mask):
        tn.manual_seed(13)
        return F.scaled_dot_product_attention(q, k, v, mask, dropout_p=0.4,
                                              is_causal=inputs.is_causal, recompute=False)

    assert gradcheck(attend, (q, k, v, mask))


def units_of(kind):
    """A stand-in for attention's ``units`` that cuts the heads one way: a unit per head,
    per batch item (an int index), every head in one, or the last batch dim cut in slices of
    two heads (the last slice shorter when the dim is odd)."""
    def units(batch, *_):
        if kind == "all" or not batch:
            return [()], math.prod(batch)
        outer = list(itertools.product(*(range(n) for n in batch[:-1])))
        if kind == "item":
            return outer, batch[-1]
        step = 1 if kind == "head" else 2
        return [i + (slice(j, min(j + step, batch[-1])),) for i in outer
                for j in range(0, batch[-1], step)], step
    return units


@pytest.mark.parametrize("units", ["head", "item", "all", "cut"])
@pytest.mark.parametrize("recompute", [False, True])
def test_row_blocks_without_causal_mask_match_torch(recompute, units):
    """Several blocks of query rows against one: same output and gradients as PyTorch, the
    float mask's gradient included, whether a unit of work is a head, the heads of one
    batch item, every head, or slices of the heads (``units``)."""
    (q, tq), (k, tk), (v, tv) = (leaf_pair(rng.standard_normal(s)) for s in
                                 [(2, 3, 37, 8), (2, 3, 29, 8), (2, 3, 29, 5)])
    m, tm = leaf_pair(rng.standard_normal((37, 29)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention_blocks, "TILE_ELEMENTS", 8 * 29)  # blocks of 8 query rows
        patch.setattr(attention_blocks, "units", units_of(units))
        out = F.scaled_dot_product_attention(q, k, v, m, recompute=recompute)
        grad = rng.standard_normal(out.shape)
        out.backward(grad)
    t_out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, tm)
    t_out.backward(torch.tensor(grad))
    close(out, t_out)
    for ours, theirs in ((q, tq), (k, tk), (v, tv), (m, tm)):
        close(ours.grad, theirs.grad)


@pytest.mark.parametrize("is_causal", [False, True])
def test_heads_on_threads_give_the_same_bits(is_causal, on_cpu):
    """Heads are shared out over the thread pool in units of several heads, cut by the
    thread count (on one thread as many as fit a tile: all 12 causal, 6 without the mask;
    on two, 4 units of 3); each unit writes only its own heads, and a unit's row blocks do
    not depend on how many heads it stacks, so one thread and two give identical outputs
    and gradients (dropout included). On the CPU: the threads are the CPU path's."""
    arrays = [rng.standard_normal(s).astype(np.float32) for s in
              [(2, 6, 200, 16), (2, 6, 150, 16), (2, 6, 150, 16)]]
    grad = rng.standard_normal((2, 6, 200, 16)).astype(np.float32)
    results = []
    for threads in (1, 2):
        with num_threads(threads):
            units, stacked = attention_blocks.units((2, 6), 200, 150, is_causal, True)
            one_thread = (1, 12) if is_causal else (2, 6)
            assert (len(units), stacked) == (one_thread if threads == 1 else (4, 3))
            q, k, v = (tn.tensor(a, requires_grad=True) for a in arrays)
            tn.manual_seed(3)
            out, weights = attention_with_weights(q, k, v, is_causal=is_causal, dropout_p=0.2)
            out.backward(tn.tensor(grad))
        results.append([host(out), host(weights)] + [host(a.grad) for a in (q, k, v)])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_no_grad_forward_never_holds_the_whole_p(on_cpu):
    """Under no_grad P is made a block at a time: the peak of new memory stays far below the
    (heads, L, S) array that recording the graph keeps for backward. On the CPU:
    tracemalloc counts host memory only."""
    import tracemalloc
    q = tn.tensor(rng.standard_normal((2, 512, 8)))
    p_bytes = 2 * 512 * 512 * 8
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention_blocks, "TILE_ELEMENTS", 1 << 14)  # blocks of 32 rows, 128 KiB
        tracemalloc.start()
        try:
            with tn.no_grad():
                F.scaled_dot_product_attention(q, q, q)
            _, no_grad_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            leaf = tn.tensor(q.numpy(), requires_grad=True)
            F.scaled_dot_product_attention(leaf, leaf, leaf, recompute=False)  # P kept
            _, recorded_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert no_grad_peak < p_bytes / 4
    assert recorded_peak >= p_bytes


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_sdpa_fully_masked_row_is_zero_and_finite(kind):
    """Query row 1 may attend to no key: output 0, zero gradient for that row, no NaN anywhere;
    the same as PyTorch's SDPA (since 2.5)."""
    allowed = rng.random((4, 6)) > 0.4
    allowed[:, 2] = True
    allowed[1] = False
    mask = allowed if kind == "bool" else np.where(allowed, rng.standard_normal((4, 6)), -np.inf)
    (q, tq), (k, tk), (v, tv) = (leaf_pair(rng.standard_normal(s)) for s in
                                 [(2, 4, 5), (2, 6, 5), (2, 6, 3)])
    m, tm = mask_pair(mask)
    out = F.scaled_dot_product_attention(q, k, v, m)
    grad = rng.standard_normal(out.shape)
    out.backward(grad)
    t_out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, tm)
    t_out.backward(torch.tensor(grad))
    assert np.all(host(out)[:, 1] == 0)
    assert np.all(host(q.grad)[:, 1] == 0)
    for t in (out.data, q.grad, k.grad, v.grad) + ((m.grad,) if kind == "float" else ()):
        assert np.isfinite(host(t)).all()
    close(out, t_out)
    for ours, theirs in ((q, tq), (k, tk), (v, tv)) + (((m, tm),) if kind == "float" else ()):
        close(ours.grad, theirs.grad)


def float32_masks(kind, n_q, n_k):
    """(mask array or None, is_causal) of one kind, for the float32 parity test."""
    if kind == "bool":  # True = attend; every row sees key 0 (a row that sees nothing is
        mask = rng.random((n_q, n_k)) > 0.3  # NaN in PyTorch, 0 here: tested on its own)
        mask[:, 0] = True
        return mask, False
    if kind == "float":
        return rng.standard_normal((2, 1, 1, n_k)).astype(np.float32), False
    return None, kind == "causal"


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "float"])
@pytest.mark.parametrize("k_batch", [2, 1], ids=["same-batch", "broadcast-kv"])
def test_sdpa_float32_matches_torch(mask_kind, recompute, k_batch):
    """float32 rounding: scores and sums of ≤ 64 products with values O(1) carry a relative
    error of ~64·2⁻²⁴ ≈ 4e-6 in each order of summation; 1e-4 leaves room for the softmax,
    and atol 1e-5 of the largest value for entries that cancel. Every mask kind, P kept or
    rebuilt, k and v broadcast over q's batch, and a float mask that requires grad."""
    n_q, n_k = 32, 40
    arrays = [rng.standard_normal(s).astype(np.float32)
              for s in [(2, 3, n_q, 64), (k_batch, 3, n_k, 64), (k_batch, 3, n_k, 64)]]
    mask, causal = float32_masks(mask_kind, n_q, n_k)
    grad_mask = mask is not None and mask.dtype == np.float32
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in arrays)
    args = [tn.tensor(a, requires_grad=True) for a in arrays]
    t_mask = None if mask is None else torch.tensor(mask, requires_grad=grad_mask)
    our_mask = None if mask is None else tn.tensor(mask, requires_grad=grad_mask)
    out = F.scaled_dot_product_attention(*args, attn_mask=our_mask, is_causal=causal,
                                         recompute=recompute)
    t_out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=t_mask,
                                                             is_causal=causal)
    grad = rng.standard_normal(out.shape).astype(np.float32)
    out.backward(grad)
    t_out.backward(torch.tensor(grad))
    assert out.dtype == tn.float32 and args[0].grad.dtype == np.float32
    pairs = list(zip([out] + [a.grad for a in args], (t_out, tq.grad, tk.grad, tv.grad)))
    if grad_mask:
        pairs.append((our_mask.grad, t_mask.grad))
    for ours, theirs in pairs:
        expected = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
        assert_close(ours, expected, rtol=1e-4, atol=1e-5 * max(np.abs(expected).max(), 1))


def test_dropout_acts_on_the_weights():
    """out = P_d V with P_d = P·keep/(1 − p): kept weights are P/(1 − p), about p are 0."""
    q, k, v = (tn.tensor(rng.standard_normal((4, 2, 40, 8))) for _ in range(3))
    probs = host(attention_with_weights(q, k, v)[1])
    tn.manual_seed(3)
    out, dropped = attention_with_weights(q, k, v, dropout_p=0.25)
    kept = host(dropped) != 0
    assert abs(1 - kept.mean() - 0.25) < 0.02
    np.testing.assert_allclose(host(dropped)[kept], probs[kept] / 0.75, rtol=1e-12)
    np.testing.assert_allclose(host(out), host(dropped) @ host(v), rtol=1e-12)
    tn.manual_seed(3)
    np.testing.assert_array_equal(host(F.scaled_dot_product_attention(q, k, v, dropout_p=0.25)),
                                  host(out))


def test_saved_for_backward():
    """P (L × S per head) is saved, or with recompute=True only one log-sum-exp per row; both
    are dropped after backward."""
    q, k, v = (tn.tensor(rng.standard_normal(s), requires_grad=True)
               for s in [(2, 3, 8, 4), (2, 3, 9, 4), (2, 3, 9, 5)])
    for recompute, row_shape in ((False, (8, 9)), (True, (8, 1))):
        out = F.scaled_dot_product_attention(q, k, v, recompute=recompute)
        saved = [a for a in out.grad_fn.saved_tensors if a is not None]
        assert any(a.shape == (2, 3) + row_shape for a in saved)
        assert any(a.shape[-2:] == (8, 9) for a in saved) == (not recompute)
        out.backward(rng.standard_normal(out.shape))
        with pytest.raises(RuntimeError, match="retain_graph"):
            out.grad_fn.saved_tensors


def test_sdpa_needs_no_grad_saves_nothing():
    q, k, v = (tn.tensor(rng.standard_normal((2, 3, 4))) for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v)
    assert out.grad_fn is None and not out.requires_grad


@pytest.mark.parametrize("args, kwargs, error, words", [
    ([(2, 4, 5), (2, 6, 3), (2, 6, 3)], {}, ValueError, ["(2, 4, 5)", "(2, 6, 3)", "last dim"]),
    ([(2, 4, 5), (2, 6, 5), (2, 7, 3)], {}, ValueError, ["(2, 6, 5)", "(2, 7, 3)"]),
    ([(5,), (6, 5), (6, 3)], {}, ValueError, ["query", "(5,)"]),
    ([(2, 4, 5), (2, 6, 5), (2, 6, 3)], {"attn_mask": np.ones((4, 6), bool), "is_causal": True},
     ValueError, ["is_causal"]),
    ([(2, 4, 5), (2, 6, 5), (2, 6, 3)], {"attn_mask": np.ones((4, 6), np.int64)}, TypeError,
     ["int64"]),
    ([(2, 4, 5), (2, 6, 5), (2, 6, 3)], {"attn_mask": np.ones((3, 4, 6), bool)}, ValueError,
     ["(3, 4, 6)", "(2, 4, 6)"]),
    ([(2, 4, 5), (2, 6, 5), (2, 6, 3)], {"dropout_p": 1.5}, ValueError, ["1.5"]),
])
def test_sdpa_errors_name_the_problem(args, kwargs, error, words):
    tensors = [tn.tensor(rng.standard_normal(s)) for s in args]
    if "attn_mask" in kwargs:
        kwargs["attn_mask"] = tn.tensor(kwargs["attn_mask"])
    with pytest.raises(error) as info:
        F.scaled_dot_product_attention(*tensors, **kwargs)
    assert "scaled_dot_product_attention" in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_a_bool_causal_mask_takes_the_causal_path_with_the_same_results():
    """A bool mask equal to the causal one runs as is_causal=True (its blocks skip the keys
    above the diagonal); outputs and gradients agree with PyTorch given the mask."""
    length = 300  # several causal blocks
    (q, tq), (k, tk), (v, tv) = (leaf_pair(rng.standard_normal((2, length, 8))) for _ in range(3))
    allowed = np.tri(length, dtype=bool)
    calls = []
    original = attention_blocks.row_blocks
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention_blocks, "row_blocks", lambda length, source, causal, *rest: (
            calls.append(causal), original(length, source, causal, *rest))[1])
        out = F.scaled_dot_product_attention(q, k, v, tn.tensor(allowed))
        grad = rng.standard_normal(out.shape)
        out.backward(grad)
    assert calls and all(calls)
    t_out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, torch.tensor(allowed))
    t_out.backward(torch.tensor(grad))
    close(out, t_out)
    for ours, theirs in ((q, tq), (k, tk), (v, tv)):
        close(ours.grad, theirs.grad)
    almost = allowed.copy()
    almost[5, 3] = False  # not causal: the mask path
    calls.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention_blocks, "row_blocks", lambda length, source, causal, *rest: (
            calls.append(causal), original(length, source, causal, *rest))[1])
        F.scaled_dot_product_attention(q, k, v, tn.tensor(almost))
    assert calls and not any(calls)


def test_units_of_work_follow_the_size_of_the_heads():
    """Heads stacked into each unit as far as a query block of each fits a tile, and cut
    into at least two units per thread when there is enough work to share out."""
    with num_threads(2):
        # causal, 256 tokens: blocks of 128 rows, 8 heads fit a tile; 4 units for 2 threads
        assert attention_blocks.units((2, 12), 256, 256, True, True) == (
            [(i, slice(j, j + 6)) for i in range(2) for j in (0, 6)], 6)
        # a head of 512 x 512 scores fills a tile: one head per unit
        assert attention_blocks.units((2, 12), 512, 512, False, True) == (
            [(i, slice(j, j + 1)) for i in range(2) for j in range(12)], 1)
        # small: every head in one call, on the calling thread
        assert attention_blocks.units((8, 4), 24, 24, False, True) == ([()], 32)
        # work enough for two threads: at least two units per thread, even slices
        assert attention_blocks.units((2, 6), 150, 200, False, True) == (
            [(i, slice(j, j + 3)) for i in range(2) for j in (0, 3)], 3)
        assert attention_blocks.units((), 10, 10, True, True) == ([()], 1)
        # the GPU: one unit, every head in each launch
        assert attention_blocks.units((2, 12), 10, 10, False, False) == ([(Ellipsis,)], 24)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_thread_counts_give_the_same_bits_with_a_broadcast_key(on_cpu, dtype):
    """One, two and three threads, a key broadcast over the batch, no mask, float32: the
    same bits (every path holds BLAS to one thread, the one-thread path included, where
    OpenBLAS threading the per-unit products itself gave other bits). On the CPU: the
    threads and BLAS are the CPU path's. float16 too: its float32 blocks are per thread."""
    q, v, g = (rng.standard_normal((5, 600, 4)).astype(dtype) for _ in range(3))
    k = rng.standard_normal((1, 600, 4)).astype(dtype)
    results = []
    for threads in (1, 2, 3):
        with num_threads(threads):
            leaves = [tn.tensor(a, requires_grad=True) for a in (q, k, v)]
            out = F.scaled_dot_product_attention(*leaves)
            out.backward(tn.tensor(g))
        results.append([host(out)] + [host(a.grad) for a in leaves])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def bool_indexing_on_the_emulated_gpu(patch):
    """Makes the emulated CuPy (tests/cuda_emulator.py) tinynorm's, and returns a list to
    which every indexing (get or set) of an emulated GPU array with a bool array appends the
    key's shape: on CuPy such an index waits for the GPU, to read back how many are True."""
    from cuda_emulator import EMULATED_CUPY, EmulatedGPUArray
    patch.setattr(tn.backend, "_cupy", EMULATED_CUPY)
    patch.setattr(tn.backend, "_current", "numpy")  # the suite may run under --backend cupy
    found = []

    def record(key):
        for part in key if isinstance(key, tuple) else (key,):
            if getattr(part, "dtype", None) == np.bool_:
                found.append(part.shape)

    def getitem(self, key):
        record(key)
        return np.ndarray.__getitem__(self, key)

    def setitem(self, key, value):
        record(key)
        np.ndarray.__setitem__(self, key, value)

    patch.setattr(EmulatedGPUArray, "__getitem__", getitem, raising=False)
    patch.setattr(EmulatedGPUArray, "__setitem__", setitem, raising=False)
    return found


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("kind", ["none", "causal", "bool", "float"])
def test_no_bool_indexing_on_the_gpu(kind, recompute, dtype):
    """Neither forward nor backward indexes with a bool array, each a wait for the GPU on
    CuPy: the softmax's fully masked rows once did (row_max[~isfinite(row_max)] = 0 and
    row_sum[row_sum == 0] = 1, two waits per call); xp.copyto(..., where=) needs none. Row 3
    sees no key, so those paths run; its output stays 0. float16 (computed in float32, each
    block rounded into float16 arrays) takes the GPU's one-block path too."""
    from cuda_emulator import on_gpu
    allowed = rng.random((6, 5)) > 0.3
    allowed[3] = False
    mask = {"bool": allowed,
            "float": np.where(allowed, rng.standard_normal((6, 5)), -np.inf).astype(dtype)}
    with pytest.MonkeyPatch.context() as patch:
        found = bool_indexing_on_the_emulated_gpu(patch)
        q, k, v = (tn.tensor(on_gpu(rng.standard_normal(s).astype(dtype)), requires_grad=True)
                   for s in [(2, 3, 6, 4), (2, 3, 5, 4), (2, 3, 5, 3)])
        m = None if kind in ("none", "causal") else tn.tensor(
            on_gpu(mask[kind]), requires_grad=kind == "float")
        out = F.scaled_dot_product_attention(q, k, v, m, is_causal=kind == "causal",
                                             recompute=recompute)
        assert tn.backend.device_of(out.data) == "cuda:0"
        assert not found, f"forward indexed with bool arrays of shapes {found}"
        out.backward(tn.tensor(on_gpu(rng.standard_normal(out.shape).astype(dtype))))
        assert not found, f"backward indexed with bool arrays of shapes {found}"
    if kind in ("bool", "float"):
        assert not np.asarray(out.data)[:, :, 3].any()
    for t in (out.data, q.grad, k.grad, v.grad) + ((m.grad,) if kind == "float" else ()):
        assert t.dtype == dtype and np.isfinite(np.asarray(t)).all()


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("needs", ["q", "k", "v", "qv", "kv", "m", "qm", "vm"])
def test_gradients_for_some_inputs_only(needs, recompute):
    """Only some of q, k, v and a float mask m require grad (a frozen key and value, say):
    backward keeps only what those gradients need, and once failed reading the scores' shape
    off a q or k it had not kept (AttributeError on None). The mask alone needs the scores'
    gradient too (dM = dS), with neither q nor k asking for it."""
    shapes = [(2, 3, 6, 4), (2, 3, 5, 4), (2, 3, 5, 3), (6, 5)]
    arrays = [rng.standard_normal(s) for s in shapes]
    ours = [tn.tensor(a, requires_grad=name in needs) for a, name in zip(arrays, "qkvm")]
    theirs = [torch.tensor(a, requires_grad=name in needs) for a, name in zip(arrays, "qkvm")]
    # causal where the mask needs no gradient (causal blocks skip keys), else the float mask
    masking = dict(is_causal=True) if "m" not in needs else None
    out = F.scaled_dot_product_attention(
        *ours[:3], **(masking or dict(attn_mask=ours[3])), recompute=recompute)
    t_out = torch.nn.functional.scaled_dot_product_attention(
        *theirs[:3], **(masking or dict(attn_mask=theirs[3])))
    grad = rng.standard_normal(out.shape)
    out.backward(grad)
    t_out.backward(torch.tensor(grad))
    for name, a, t in zip("qkvm", ours, theirs):
        assert (a.grad is None) == (name not in needs)
        if name in needs:
            close(a.grad, t.grad)
