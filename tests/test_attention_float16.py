"""float16 scaled_dot_product_attention: computed in float32, each result rounded once.

Every result (O, the weights, dQ, dK, dV, dM) is a float32 computation rounded to float16
once, so it lies within half a float16 ulp of the float32 value, and that within float32's
own error e32 of the exact value (float64 maths on the same float16 inputs):

    |got − exact| ≤ ½·ulp16(exact) + e32

ulp16 is taken at the exact value rounded to float16, which covers an exact value just
below a power of two whose float32 neighbour rounds up to it. e32: the products sum at most
300 terms (unit roundoff 2^-24), about 300·2^-24 ≈ 2^-16 of the largest sum; a rebuilt P,
exp(S − lse), adds |S − lse|·2^-24 relative to P, under 2^-18 for the scores of ±30 here
(the largest measured over 40 random cases with scores up to ±100 was 2^-16.1 of max
|exact|). The tests take e32 = 2^-14·max|exact|. Computed in float16, as before, dQ and dK
were up to 28000 half-ulps off (1.1e-3 of their largest value).

The maximum error over max |exact| is also compared with PyTorch's float16 on the same
inputs: no more than 1.5 times it (tinynorm's was up to 14 times).
"""
import numpy as np
import pytest
import torch

import tinynorm as tn
from tinynorm.nn import functional as F
from tinynorm.ops import attention
from tinynorm.ops.attention import attention_with_weights

from torch_pairs import attention_saved, host

FLOAT32_ERROR = 2.0 ** -14  # e32, as a fraction of max |exact| (module docstring)


def within_rounding(got, exact, what):
    """|got − exact| ≤ ½·ulp16(exact) + FLOAT32_ERROR·max|exact|, elementwise; got is
    float16."""
    got = host(got)
    assert got.dtype == np.float16, f"{what}: dtype {got.dtype}, expected float16"
    got, exact = got.astype(np.float64), np.asarray(exact, dtype=np.float64)
    assert got.shape == exact.shape, f"{what}: shape {got.shape}, expected {exact.shape}"
    half_ulp = np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64) / 2
    largest = np.abs(exact).max() if exact.size else 0.0
    error = np.abs(got - exact)
    excess = error - half_ulp - FLOAT32_ERROR * largest
    worst = tuple(int(i) for i in np.unravel_index(np.argmax(excess), excess.shape)) \
        if exact.size else None
    assert not exact.size or excess[worst] <= 0, (
        f"{what}: at {worst} got {float(got[worst])!r}, exact {float(exact[worst])!r}: off by "
        f"{error[worst] / half_ulp[worst]:.1f} half-ulps (allowed: 1 plus "
        f"{FLOAT32_ERROR:.1e} of max |exact| = {largest:.3g})")


def relative_error(got, exact):
    """max |got − exact| / max |exact|."""
    exact = np.asarray(exact, dtype=np.float64)
    return float(np.abs(host(got).astype(np.float64) - exact).max() / np.abs(exact).max())


# (name, q shape, k shape, Ev, mask kind, scale of q and k: 3 gives scores of about ±30)
CASES = [
    ("(2, 4, 128, 64)", (2, 4, 128, 64), (2, 4, 128, 64), 64, "none", 1.0),
    ("(2, 4, 128, 64) causal", (2, 4, 128, 64), (2, 4, 128, 64), 64, "causal", 1.0),
    ("scores of ±30", (1, 2, 64, 16), (1, 2, 64, 16), 16, "none", 3.0),
    ("bool mask", (2, 3, 37, 16), (2, 3, 29, 16), 8, "bool", 1.0),
    ("float16 float mask", (2, 3, 37, 16), (2, 3, 29, 16), 8, "float", 1.0),
    ("causal blocks, L != S", (2, 2, 300, 32), (2, 2, 200, 32), 32, "causal", 1.0),
    ("broadcast key, bool mask", (3, 40, 24), (1, 50, 24), 24, "bool", 3.0),
]


def case_inputs(seed, q_shape, k_shape, ev, kind, spread):
    """q, k, v, an upstream gradient and the mask (None, bool or float16), all float16."""
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal(q_shape) * spread).astype(np.float16)
    k = (rng.standard_normal(k_shape) * spread).astype(np.float16)
    v = rng.standard_normal(k_shape[:-1] + (ev,)).astype(np.float16)
    batch = np.broadcast_shapes(q_shape[:-2], k_shape[:-2])
    grad = rng.standard_normal(batch + (q_shape[-2], ev)).astype(np.float16)
    length, source = q_shape[-2], k_shape[-2]
    mask = None
    if kind == "bool":
        mask = rng.random((length, source)) > 0.3
        mask[3] = False  # a query that sees no key: 0, not NaN
    elif kind == "float":
        mask = (rng.standard_normal((length, source)) * 2).astype(np.float16)
    return q, k, v, grad, mask


def torch_results(arrays, mask, grad, causal, dtype):
    """Output and gradients (the float mask's too) from PyTorch in ``dtype``."""
    leaves = [torch.tensor(a.astype(dtype), requires_grad=True) for a in arrays]
    t_mask = None
    if mask is not None:
        t_mask = torch.tensor(mask if mask.dtype == bool else mask.astype(dtype),
                              requires_grad=mask.dtype != bool)
    out = torch.nn.functional.scaled_dot_product_attention(*leaves, t_mask, is_causal=causal)
    out.backward(torch.tensor(grad.astype(dtype)))
    grads = [t.grad for t in leaves] + ([t_mask.grad] if t_mask is not None
                                        and t_mask.requires_grad else [])
    return [out.detach().numpy()] + [g.numpy() for g in grads]


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("name, q_shape, k_shape, ev, kind, spread", CASES,
                         ids=[c[0] for c in CASES])
def test_float16_is_float32_rounded_once(name, q_shape, k_shape, ev, kind, spread,
                                          recompute):
    """O and every gradient within half a float16 ulp (plus float32's error) of float64
    maths on the same inputs, and no further off than 1.5 times PyTorch's float16."""
    q, k, v, grad, mask = case_inputs(len(name), q_shape, k_shape, ev, kind, spread)
    causal = kind == "causal"
    exact = torch_results((q, k, v), mask, grad, causal, np.float64)
    theirs = torch_results((q, k, v), mask, grad, causal, np.float16)

    leaves = [tn.tensor(a, requires_grad=True) for a in (q, k, v)]
    t_mask = None if mask is None else tn.tensor(mask, requires_grad=kind == "float")
    out = F.scaled_dot_product_attention(*leaves, t_mask, is_causal=causal,
                                         recompute=recompute)
    out.backward(tn.tensor(grad))
    ours = [out.data] + [t.grad for t in leaves] + ([t_mask.grad] if kind == "float" else [])

    assert len(ours) == len(exact)
    for what, got, want, torch_got in zip(["O", "dQ", "dK", "dV", "dM"], ours, exact, theirs):
        within_rounding(got, want, f"{name}, recompute={recompute}: {what}")
        ours_error, torch_error = relative_error(got, want), relative_error(torch_got, want)
        assert ours_error <= 1.5 * torch_error, (
            f"{name}, recompute={recompute}: {what} off by {ours_error:.2e} of max |exact|, "
            f"PyTorch float16 by {torch_error:.2e}")


@pytest.mark.parametrize("causal", [False, True])
def test_float16_weights_and_their_gradient(causal):
    """The weights returned are float16, P rounded once; with a gradient on them too (dW
    widened block by block), dQ, dK, dV are float32 results rounded once. The exact values
    are tinynorm's float64 (checked against PyTorch in test_attention.py)."""
    q, k, v, grad, _ = case_inputs(9, (2, 3, 45, 16), (2, 3, 45, 16), 8, "none", 3.0)
    grad_weights = np.random.default_rng(10).standard_normal((2, 3, 45, 45)).astype(np.float16)
    results = {}
    for dtype in (np.float64, np.float16):
        leaves = [tn.tensor(a.astype(dtype), requires_grad=True) for a in (q, k, v)]
        out, weights = attention_with_weights(*leaves, is_causal=causal)
        # the gradients of this sum are grad and grad_weights, exactly (float16 values)
        loss = (out * tn.tensor(grad.astype(dtype))).sum() + \
            (weights * tn.tensor(grad_weights.astype(dtype))).sum()
        loss.backward()
        results[dtype] = [out.data, weights.data] + [t.grad for t in leaves]
    for what, got, want in zip(["O", "weights", "dQ", "dK", "dV"], results[np.float16],
                               results[np.float64]):
        within_rounding(got, want, f"causal={causal}: {what}")


@pytest.mark.parametrize("recompute", [False, True])
def test_float16_dropout_is_float32_rounded_once(recompute):
    """Dropout's mask is drawn in float32 for float16 too (``keep_mask``), so one seed gives
    float16 and float32 the same mask; the float16 results are then the float32 ones
    rounded once (float32's own error aside), the weights returned with dropout too."""
    q, k, v, grad, _ = case_inputs(4, (2, 3, 40, 16), (2, 3, 40, 16), 8, "none", 1.0)
    results = {}
    for dtype in (np.float32, np.float16):
        leaves = [tn.tensor(a.astype(dtype), requires_grad=True) for a in (q, k, v)]
        tn.manual_seed(21)
        out = F.scaled_dot_product_attention(*leaves, dropout_p=0.3, recompute=recompute)
        out.backward(tn.tensor(grad.astype(dtype)))
        tn.manual_seed(21)
        with tn.no_grad():
            _, weights = attention_with_weights(*leaves, dropout_p=0.3)
        results[dtype] = [out.data, weights.data] + [t.grad for t in leaves]
    for what, got, want in zip(["O", "weights", "dQ", "dK", "dV"], results[np.float16],
                               results[np.float32]):
        within_rounding(got, want, f"recompute={recompute}: {what}")


@pytest.mark.parametrize("recompute", [False, True])
def test_float16_saves_its_inputs_and_float32_p_or_lse(recompute):
    """Backward keeps the caller's float16 q, k, v (no copy), P or the log-sum-exp in
    float32, and not O (backward takes rowsum(dP ⊙ P) instead of rowsum(dO ⊙ O))."""
    q, k, v, _, _ = case_inputs(2, (2, 3, 8, 4), (2, 3, 9, 4), 5, "none", 1.0)
    leaves = [tn.tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*leaves, recompute=recompute)
    saved_q, saved_k, saved_v, _, saved_p, saved_out, _ = out.grad_fn.saved_tensors
    for saved, leaf in zip((saved_q, saved_k, saved_v), leaves):
        assert saved is leaf.data
    assert saved_p.dtype == np.float32
    assert saved_p.shape == (2, 3, 8, 1 if recompute else 9)
    assert saved_out is None
    [shapes] = attention_saved(out)
    assert (2, 3, 8, 5) not in shapes  # O


def test_float32_and_float64_take_no_copies():
    """widened is a no-op for float32 and float64: the blocks read the caller's arrays, and
    backward keeps O itself, using rowsum(dO ⊙ O)."""
    for dtype in (np.float32, np.float64):
        q, k, v, _, mask = case_inputs(3, (2, 6, 4), (2, 7, 4), 3, "float", 1.0)
        q, k, v, mask = (a.astype(dtype) for a in (q, k, v, mask))
        inputs = attention._Inputs(np, q, k, v, mask, False, 0.5, (2, 6, 7), dtype)
        for view, array in ((inputs.q, q), (inputs.k, k), (inputs.v, v), (inputs.added, mask)):
            assert np.shares_memory(view, array)
        leaves = [tn.tensor(a, requires_grad=True) for a in (q, k, v)]
        out = F.scaled_dot_product_attention(*leaves)
        assert out.grad_fn.saved_tensors[5] is out.data
