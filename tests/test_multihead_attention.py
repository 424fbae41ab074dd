"""nn.MultiheadAttention against torch.nn.MultiheadAttention (loaded from its state_dict) and
finite differences.

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
from tinynorm.testing import gradcheck
from tinynorm.testing.strategies import arrays

from torch_pairs import attention_saved, close, host, leaf_pair, mask_pair

rng = np.random.default_rng(4321)


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


@pytest.mark.parametrize("case", list(mask_cases(1, 1, 1, 1)))
def test_mha_masks_given_as_arrays_act_as_tensors(case):
    """A NumPy bool attn_mask failed on ``~memoryview`` (a mask's .data was read as if it
    were a Tensor's); arrays and Tensors now give the same output and weights."""
    n, heads, length, source = 2, 2, 3, 5
    kpm, am = mask_cases(n, heads, length, source)[case]
    mha = nn.MultiheadAttention(8, heads, dtype=tn.float64)
    q, k, v = (tn.tensor(a) for a in seq_inputs(n, length, source, 8, 8, 8, False, False))
    as_arrays = mha(q, k, v, key_padding_mask=kpm, attn_mask=am)
    as_tensors = mha(q, k, v, key_padding_mask=None if kpm is None else tn.tensor(kpm),
                     attn_mask=None if am is None else tn.tensor(am))
    for a, b in zip(as_arrays, as_tensors):
        np.testing.assert_array_equal(host(a), host(b))


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
        results.append([host(out)] + [host(p.grad) for p in ours.parameters()])
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
    leaves = [tn.tensor(a, requires_grad=True) for a in inputs]
    out, weights = ours(*leaves, attn_mask=tn.tensor(am))
    assert np.isfinite(host(out)).all() and np.all(host(weights)[:, 2] == 0)
    check_module_parity(ours, theirs, inputs, (None, am), need_weights=False)
    for p in ours.parameters():
        assert np.isfinite(host(p.grad)).all()


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
    query, key, value = (data.draw(arrays(shape(s), lo=-1.0, hi=1.0))
                         for s in (length, source, source))
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
    assert abs((host(w_train) == 0).mean() - 0.5) < 0.05
    # kept weights are scaled by 1/(1 − p), so rows still sum to 1 on average (± 0.02, 1 sd)
    np.testing.assert_allclose(host(w_train).sum(-1).mean(), 1.0, atol=0.1)
    mha.eval()
    out_eval, w_eval = mha(x, x, x, average_attn_weights=False)
    assert not (host(w_eval) == 0).any()
    np.testing.assert_allclose(host(w_eval).sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(host(mha(x, x, x)[0]), host(out_eval))  # deterministic
    assert not np.allclose(host(out_train), host(out_eval))


def test_mha_parameters_init_and_state_dict_keys():
    ours, theirs = nn.MultiheadAttention(64, 4), torch.nn.MultiheadAttention(64, 4)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == [
        "in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    assert not host(ours.in_proj_bias).any() and not host(ours.out_proj.bias).any()
    bound = np.sqrt(6 / (64 + 3 * 64))  # xavier_uniform_ on the (3E, E) in_proj_weight
    w = host(ours.in_proj_weight)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.05)
    out_bound = 1 / np.sqrt(64)  # Linear's default init, kept by torch for out_proj.weight
    assert np.abs(host(ours.out_proj.weight)).max() <= out_bound
    separate = nn.MultiheadAttention(8, 2, kdim=5, vdim=3)
    torch_separate = torch.nn.MultiheadAttention(8, 2, kdim=5, vdim=3)
    assert list(separate.state_dict()) == list(torch_separate.state_dict())
    assert separate.in_proj_weight is None and separate.k_proj_weight.shape == (8, 5)
    # the same repr, but for the class of out_proj (torch's is a Linear subclass named
    # NonDynamicallyQuantizableLinear, for its quantization tooling)
    assert repr(ours) == repr(theirs).replace("NonDynamicallyQuantizableLinear", "Linear")
    # and back: a torch module loads ours unchanged
    theirs.load_state_dict({k: torch.from_numpy(host(v)) for k, v in ours.state_dict().items()})
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


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("length, rebuilt", [(5, False), (40, True)])
def test_mha_keeps_or_rebuilds_p_and_matches_torch(length, rebuilt, need_weights):
    """need_weights=False leaves the choice to the SDPA op's default: P kept for short
    sequences, rebuilt in backward for long ones (P larger than twice q, k and v: L > 24 at
    4 features a head); need_weights=True returns P, so keeps it. All match torch, gradients
    included."""
    ours, theirs = module_pair(8, 2, batch_first=True)  # 4 features a head
    inputs = seq_inputs(2, length, length, 8, 8, 8, True, True)
    masks = (None, np.triu(np.ones((length, length), bool), 1))
    x = tn.tensor(inputs[0], requires_grad=True)
    out, _ = ours(x, x, x, attn_mask=tn.tensor(masks[1]), need_weights=need_weights)
    [saved] = attention_saved(out)
    keeps_lse = rebuilt and not need_weights
    assert ((2, 2, length, 1) in saved) == keeps_lse, saved
    assert ((2, 2, length, length) in saved) == (not keeps_lse), saved
    check_module_parity(ours, theirs, inputs, masks=masks, need_weights=need_weights)
