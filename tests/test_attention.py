"""scaled_dot_product_attention and nn.MultiheadAttention: finite differences and PyTorch parity.

Parity is in float64 within 1e-10 relative (plus a 1e-12 absolute floor for entries that are
0 up to rounding). Upstream gradients are random normal, never all ones.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tinynorm as tn
from tinynorm import nn
from tinynorm.nn import functional as F
from tinynorm.ops.attention import attention_with_weights
from tinynorm.testing import assert_close, gradcheck
from tinynorm.testing.strategies import arrays, attention_inputs

RTOL, ATOL = 1e-10, 1e-12
rng = np.random.default_rng(1234)


def close(ours, theirs):
    expected = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    assert_close(ours, expected, rtol=RTOL, atol=ATOL)


def leaf_pair(a):
    """The same float64 array as a tinynorm leaf and a torch leaf, both requiring grad."""
    return tn.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)


def mask_pair(mask):
    if mask is None:
        return None, None
    if mask.dtype == bool:
        return tn.tensor(mask), torch.tensor(mask)
    return leaf_pair(mask)


def float_causal(length, source):
    return np.where(np.tri(length, source, dtype=bool), 0.0, -np.inf)


# ======================================================================================
# scaled_dot_product_attention
# ======================================================================================
@given(inputs=attention_inputs(), scale=st.sampled_from([None, 0.7]), recompute=st.booleans())
def test_sdpa_gradcheck(inputs, scale, recompute):
    q, k, v = (tn.tensor(a, requires_grad=True) for a in (inputs.q, inputs.k, inputs.v))
    mask = None
    if inputs.attn_mask is not None:
        mask = tn.tensor(inputs.attn_mask, requires_grad=inputs.mask_kind == "float")

    def attend(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, mask, is_causal=inputs.is_causal,
                                              scale=scale, recompute=recompute)

    assert gradcheck(attend, (q, k, v, mask))


@given(inputs=attention_inputs(mask_kinds=("none", "float", "causal")))
def test_weights_output_gradcheck(inputs):
    """Both outputs (O and the weights) carry gradients, as MultiheadAttention's do."""
    q, k, v = (tn.tensor(a, requires_grad=True) for a in (inputs.q, inputs.k, inputs.v))
    mask = None if inputs.attn_mask is None else tn.tensor(inputs.attn_mask, requires_grad=True)
    assert gradcheck(lambda q, k, v, m: attention_with_weights(q, k, v, m, is_causal=inputs.is_causal),
                     (q, k, v, mask))


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
    for ours, theirs in ((q, tq), (k, tk), (v, tv)) + (((mask, tmask),) if inputs.mask_kind == "float" else ()):
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


@pytest.mark.parametrize("length, source", [(5, 5), (4, 6), (6, 3)])
def test_sdpa_causal_three_ways_identical(length, source):
    """A causal mask as bool, as float −inf and as is_causal: identical outputs and grads,
    and equal to torch's is_causal (top-left aligned when L != S)."""
    q, k, v = (rng.standard_normal(s) for s in [(2, 2, length, 4), (2, 2, source, 4), (2, 2, source, 3)])
    grad = rng.standard_normal((2, 2, length, 3))
    results = []
    for mask, causal in ((np.tri(length, source, dtype=bool), False),
                         (float_causal(length, source), False), (None, True)):
        args = [tn.tensor(a, requires_grad=True) for a in (q, k, v)]
        out = F.scaled_dot_product_attention(*args, None if mask is None else tn.tensor(mask),
                                             is_causal=causal)
        out.backward(grad)
        results.append([out.data] + [a.grad for a in args])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    t_out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    t_out.backward(torch.tensor(grad))
    for ours, theirs in zip(results[0], (t_out, tq.grad, tk.grad, tv.grad)):
        close(ours, theirs)


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
    assert np.all(out.data[:, 1] == 0)
    assert np.all(q.grad[:, 1] == 0)
    for t in (out.data, q.grad, k.grad, v.grad) + ((m.grad,) if kind == "float" else ()):
        assert np.isfinite(t).all()
    close(out, t_out)
    for ours, theirs in ((q, tq), (k, tk), (v, tv)) + (((m, tm),) if kind == "float" else ()):
        close(ours.grad, theirs.grad)


def test_sdpa_float32_matches_torch():
    # float32 rounding: scores and sums of ≤ 64 products with values O(1) carry a relative
    # error of ~64·2⁻²⁴ ≈ 4e-6 in each order of summation; 1e-4 leaves room for the softmax.
    q, k, v = (rng.standard_normal((2, 3, 32, 64)).astype(np.float32) for _ in range(3))
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    args = [tn.tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*args, is_causal=True)
    t_out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    grad = rng.standard_normal(out.shape).astype(np.float32)
    out.backward(grad)
    t_out.backward(torch.tensor(grad))
    assert out.dtype == tn.float32 and args[0].grad.dtype == np.float32
    for ours, theirs in zip([out.data] + [a.grad for a in args], (t_out, tq.grad, tk.grad, tv.grad)):
        assert_close(ours, theirs.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_dropout_acts_on_the_weights():
    """out = P_d V with P_d = P·keep/(1 − p): kept weights are P/(1 − p), about p are 0."""
    q, k, v = (tn.tensor(rng.standard_normal((4, 2, 40, 8))) for _ in range(3))
    probs = attention_with_weights(q, k, v)[1].data
    tn.manual_seed(3)
    out, dropped = attention_with_weights(q, k, v, dropout_p=0.25)
    kept = dropped.data != 0
    assert abs(1 - kept.mean() - 0.25) < 0.02
    np.testing.assert_allclose(dropped.data[kept], probs[kept] / 0.75, rtol=1e-12)
    np.testing.assert_allclose(out.data, dropped.data @ v.data, rtol=1e-12)
    tn.manual_seed(3)
    np.testing.assert_array_equal(F.scaled_dot_product_attention(q, k, v, dropout_p=0.25).data,
                                  out.data)


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
        assert out.grad_fn._saved == ()


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


# ======================================================================================
# nn.MultiheadAttention
# ======================================================================================
def module_pair(embed_dim, num_heads, **kwargs):
    """A torch MultiheadAttention with random (nonzero) biases, and ours loaded from its
    state_dict unchanged."""
    theirs = torch.nn.MultiheadAttention(embed_dim, num_heads, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    ours = nn.MultiheadAttention(embed_dim, num_heads, dtype=tn.float64, **kwargs)
    result = ours.load_state_dict(theirs.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    return ours, theirs


def check_module_parity(ours, theirs, inputs, masks=(None, None), grad_seed=0, **call):
    """Outputs, weights and gradients (inputs, float masks, every parameter) against torch.

    ``inputs`` is (query, key, value) as arrays; the same array object twice means the same
    tensor (self-attention). ``masks`` is (key_padding_mask, attn_mask) as arrays or None.
    """
    pairs = {}
    for a in inputs:
        if id(a) not in pairs:
            pairs[id(a)] = leaf_pair(a)
    (q, tq), (k, tk), (v, tv) = (pairs[id(a)] for a in inputs)
    (kpm, t_kpm), (am, t_am) = (mask_pair(m) for m in masks)
    out, weights = ours(q, k, v, key_padding_mask=kpm, attn_mask=am, **call)
    t_out, t_weights = theirs(tq, tk, tv, key_padding_mask=t_kpm, attn_mask=t_am, **call)
    close(out, t_out)
    upstream = np.random.default_rng(grad_seed)  # the same upstream gradients for every call
    loss = (out * tn.tensor(g := upstream.standard_normal(out.shape))).sum()
    t_loss = (t_out * torch.tensor(g)).sum()
    if t_weights is None:
        assert weights is None
    else:
        close(weights, t_weights)
        loss = loss + (weights * tn.tensor(g := upstream.standard_normal(weights.shape))).sum()
        t_loss = t_loss + (t_weights * torch.tensor(g)).sum()
    loss.backward()
    t_loss.backward()
    for ours_t, theirs_t in list(pairs.values()) + [(kpm, t_kpm), (am, t_am)]:
        if ours_t is not None and ours_t.requires_grad:
            close(ours_t.grad, theirs_t.grad)
    t_params = dict(theirs.named_parameters())
    assert [n for n, _ in ours.named_parameters()] == list(t_params)
    for name, p in ours.named_parameters():
        close(p.grad, t_params[name].grad)
    return out, weights


def seq_inputs(n, length, source, e, kdim, vdim, batch_first, self_attention):
    def shape(steps, features):
        return (n, steps, features) if batch_first else (steps, n, features)
    query = rng.standard_normal(shape(length, e))
    if self_attention:
        return query, query, query
    return query, rng.standard_normal(shape(source, kdim)), rng.standard_normal(shape(source, vdim))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("attention, kdim, vdim", [("self", None, None), ("cross", None, None),
                                                   ("cross", 6, 10)])
@pytest.mark.parametrize("average", [True, False])
def test_mha_matches_torch(batch_first, attention, kdim, vdim, average):
    ours, theirs = module_pair(8, 2, kdim=kdim, vdim=vdim, batch_first=batch_first)
    inputs = seq_inputs(3, 4, 4 if attention == "self" else 5, 8, kdim or 8, vdim or 8,
                        batch_first, attention == "self")
    check_module_parity(ours, theirs, inputs, average_attn_weights=average)


def test_mha_key_is_value_and_no_bias_match_torch():
    ours, theirs = module_pair(12, 3, bias=False)
    query, memory = rng.standard_normal((5, 2, 12)), rng.standard_normal((7, 2, 12))
    check_module_parity(ours, theirs, (query, memory, memory))


def mask_cases(n, heads, length, source):
    """(key_padding_mask, attn_mask) pairs in every kind PyTorch accepts; no query row is
    fully masked (PyTorch's need_weights path gives NaN there; ours gives 0, tested below)."""
    attn_bool = rng.random((length, source)) > 0.6
    pad_bool = rng.random((n, source)) > 0.7
    attn_bool[:, 0] = pad_bool[:, 0] = False  # key 0 is always visible
    return {
        "attn bool 2-D": (None, attn_bool),
        "attn float 3-D": (None, rng.standard_normal((n * heads, length, source))),
        "padding bool": (pad_bool, None),
        "padding float": (rng.standard_normal((n, source)), None),
        "both bool": (pad_bool, attn_bool),
        "both float": (rng.standard_normal((n, source)), rng.standard_normal((length, source))),
    }


@pytest.mark.parametrize("case", list(mask_cases(1, 1, 1, 1)))
@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_masks_match_torch(case, need_weights):
    n, heads, length, source = 3, 2, 4, 6
    kpm, am = mask_cases(n, heads, length, source)[case]
    ours, theirs = module_pair(8, heads)
    inputs = seq_inputs(n, length, source, 8, 8, 8, False, False)
    check_module_parity(ours, theirs, inputs, (kpm, am), need_weights=need_weights,
                        average_attn_weights=False)


@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_causal_three_ways_identical(need_weights):
    """Causal as a bool mask (True = masked out), as float −inf, and as the is_causal hint
    (which, as in torch, comes with the mask): identical to each other and to torch."""
    length = 5
    ours, theirs = module_pair(8, 2, batch_first=True)
    x = seq_inputs(2, length, length, 8, 8, 8, True, True)
    causal_bool = ~np.tri(length, dtype=bool)
    ways = [(causal_bool, False), (np.where(causal_bool, -np.inf, 0.0), False), (causal_bool, True)]
    results = []
    for mask, hint in ways:
        ours.zero_grad()
        theirs.zero_grad()
        out, weights = check_module_parity(ours, theirs, x, (None, mask), is_causal=hint,
                                           need_weights=need_weights)
        results.append([out.data] + [p.grad for p in ours.parameters()])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mask_3d", [False, True])
def test_mha_unbatched_matches_torch(mask_3d):
    ours, theirs = module_pair(8, 2, batch_first=True)
    query, memory = rng.standard_normal((4, 8)), rng.standard_normal((6, 8))
    am = rng.standard_normal((2, 4, 6) if mask_3d else (4, 6))
    pad = rng.standard_normal(6)  # float, like am (torch deprecates mixing the two kinds)
    out, weights = check_module_parity(ours, theirs, (query, memory, memory), (pad, am))
    assert out.shape == (4, 8) and weights.shape == (4, 6)


def test_mha_fully_masked_row_is_finite():
    """A query row with every key masked: ours gives output out_proj.bias there and zero
    gradients, never NaN (torch's need_weights path gives NaN: a documented difference);
    torch with need_weights=False (its SDPA path) agrees with ours."""
    ours, theirs = module_pair(8, 2)
    inputs = seq_inputs(2, 4, 5, 8, 8, 8, False, False)
    am = rng.random((4, 5)) > 0.6
    am[:, 0] = False
    am[2] = True
    out, weights = ours(*(tn.tensor(a, requires_grad=True) for a in inputs), attn_mask=tn.tensor(am))
    assert np.isfinite(out.data).all() and np.all(weights.data[:, 2] == 0)
    check_module_parity(ours, theirs, inputs, (None, am), need_weights=False)
    for p in ours.parameters():
        assert np.isfinite(p.grad).all()


@settings(max_examples=8)
@given(heads=st.sampled_from([1, 2, 3]), head_dim=st.integers(1, 2), n=st.integers(1, 2),
       length=st.integers(1, 3), source=st.integers(1, 3), batch_first=st.booleans(),
       mask_kind=st.sampled_from(["none", "bool", "float", "padding"]), data=st.data())
def test_mha_gradcheck(heads, head_dim, n, length, source, batch_first, mask_kind, data):
    """Finite differences through the whole module: query, key, value, a float mask and every
    parameter (substituted for the module's own so gradcheck can perturb them)."""
    e = heads * head_dim
    mha = nn.MultiheadAttention(e, heads, batch_first=batch_first, dtype=tn.float64)
    shape = (lambda s: (n, s, e)) if batch_first else (lambda s: (s, n, e))
    query, key, value = (data.draw(arrays(shape(s), lo=-1.0, hi=1.0)) for s in (length, source, source))
    kpm = am = None
    if mask_kind == "bool":
        allowed = data.draw(arrays((length, source))) > 0
        allowed[:, 0] = True
        am = tn.tensor(~allowed)
    elif mask_kind == "float":
        am = tn.tensor(data.draw(arrays((n * heads, length, source))), requires_grad=True)
    elif mask_kind == "padding":
        kpm = tn.tensor(data.draw(arrays((n, source))), requires_grad=True)
    names = [name for name, _ in mha.named_parameters()]
    params = tuple(tn.tensor(data.draw(arrays(p.shape, lo=-0.5, hi=0.5)), requires_grad=True)
                   for p in mha.parameters())

    def forward(query, key, value, kpm, am, *params):
        for name, p in zip(names, params):
            owner, _, leaf = name.rpartition(".")
            mha.get_submodule(owner)._parameters[leaf] = p
        return mha(query, key, value, key_padding_mask=kpm, attn_mask=am,
                   average_attn_weights=False)

    tensors = tuple(tn.tensor(a, requires_grad=True) for a in (query, key, value))
    assert gradcheck(forward, tensors + (kpm, am) + params)


def test_mha_dropout_only_in_training():
    tn.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, dropout=0.5, dtype=tn.float64)
    x = tn.tensor(np.random.default_rng(0).standard_normal((40, 2, 8)))
    out_train, w_train = mha(x, x, x, average_attn_weights=False)
    # 6400 weights, each kept with probability 0.5: the zero fraction is 0.5 ± 0.006 (1 sd)
    assert abs((w_train.data == 0).mean() - 0.5) < 0.05
    # kept weights are scaled by 1/(1 − p), so rows still sum to 1 on average (± 0.02, 1 sd)
    np.testing.assert_allclose(w_train.data.sum(-1).mean(), 1.0, atol=0.1)
    mha.eval()
    out_eval, w_eval = mha(x, x, x, average_attn_weights=False)
    assert not (w_eval.data == 0).any()
    np.testing.assert_allclose(w_eval.data.sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(mha(x, x, x)[0].data, out_eval.data)  # deterministic
    assert not np.allclose(out_train.data, out_eval.data)


def test_mha_parameters_init_and_state_dict_keys():
    ours, theirs = nn.MultiheadAttention(64, 4), torch.nn.MultiheadAttention(64, 4)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == [
        "in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    assert not ours.in_proj_bias.data.any() and not ours.out_proj.bias.data.any()
    bound = np.sqrt(6 / (64 + 3 * 64))  # xavier_uniform_ on the (3E, E) in_proj_weight
    w = ours.in_proj_weight.data
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.05)
    out_bound = 1 / np.sqrt(64)  # Linear's default init, kept by torch for out_proj.weight
    assert np.abs(ours.out_proj.weight.data).max() <= out_bound
    separate = nn.MultiheadAttention(8, 2, kdim=5, vdim=3)
    assert list(separate.state_dict()) == list(torch.nn.MultiheadAttention(8, 2, kdim=5, vdim=3).state_dict())
    assert separate.in_proj_weight is None and separate.k_proj_weight.shape == (8, 5)
    # and back: a torch module loads ours unchanged
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    np.testing.assert_array_equal(theirs.in_proj_weight.detach().numpy(), w)


def test_mha_constructor_and_call_errors():
    with pytest.raises(ValueError, match=r"embed_dim=10.*num_heads=3"):
        nn.MultiheadAttention(10, 3)
    with pytest.raises(NotImplementedError, match="add_bias_kv.*documented difference"):
        nn.MultiheadAttention(8, 2, add_bias_kv=True)
    with pytest.raises(NotImplementedError, match="add_zero_attn"):
        nn.MultiheadAttention(8, 2, add_zero_attn=True)
    mha = nn.MultiheadAttention(8, 2)
    x = tn.randn(4, 3, 8)
    with pytest.raises(RuntimeError, match="is_causal"):
        mha(x, x, x, is_causal=True)
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 4\)"):
        mha(x, x, x, attn_mask=tn.zeros(4, 5))
    with pytest.raises(ValueError, match=r"key_padding_mask.*\(3, 4\)"):
        mha(x, x, x, key_padding_mask=tn.zeros(4, 3))
    with pytest.raises(ValueError, match="should end in 8"):
        mha(tn.randn(4, 3, 6), x, x)
