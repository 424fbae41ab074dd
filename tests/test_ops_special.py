"""What the tables cannot say: dropout's randomness, softmax on huge inputs, gradients at kinks,
and repeated indices, each stated as a plain assertion."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tinynorm as tn
from tinynorm.ops import _adjoint
from tinynorm.ops._adjoint import scatter_add, sorted_scatter_add
from tinynorm.testing import gradcheck
from tinynorm.testing.strategies import arrays, shapes
from tinynorm.testing.compare import to_host as host
from torch_pairs import num_threads

F = tn.nn.functional


def leaf(array, dtype=np.float64):
    return tn.tensor(np.asarray(array, dtype=dtype), requires_grad=True)


# ---- dropout ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [dict(p=0.0), dict(p=0.5, training=False),
                                    dict(p=1.0, training=False)])
def test_dropout_identity_at_p0_and_in_eval(kwargs):
    x = leaf(np.random.default_rng(0).standard_normal((4, 5)))
    y = F.dropout(x, **kwargs)
    g = np.random.default_rng(1).standard_normal((4, 5))
    y.backward(g)
    np.testing.assert_array_equal(host(y), host(x))
    np.testing.assert_array_equal(host(x.grad), g)


def test_dropout_p1_zeroes_everything():
    x = leaf(np.random.default_rng(0).standard_normal(50))
    y = F.dropout(x, 1.0)
    y.backward(np.random.default_rng(1).standard_normal(50))
    assert not host(y).any() and not x.grad.any()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_inverted_scaling_statistics(p, dtype):
    """A fraction p of the elements is zeroed, the rest scaled by 1/(1 − p): E[y] = x.

    n = 200,000 elements: the zeroed fraction has standard deviation √(p(1−p)/n) ≤ 0.0012 and
    the mean of y (for x = 1) √(p/((1−p)n)) ≤ 0.0045; the bounds below are 5 standard
    deviations, so a false failure has probability < 1e-6 while a missing 1/(1−p) (mean off by
    p ≥ 0.1) or an inverted mask (fraction 1 − p) fails for certain.
    """
    tn.manual_seed(1234)
    n = 200_000
    x = tn.ones(n, dtype=dtype)
    y = host(F.dropout(x, p))
    assert y.dtype == dtype
    zeroed = float((y == 0).mean())
    assert abs(zeroed - p) < 5 * np.sqrt(p * (1 - p) / n)
    assert abs(float(y.mean(dtype=np.float64)) - 1.0) < 5 * np.sqrt(p / ((1 - p) * n))
    kept = y[y != 0]
    np.testing.assert_allclose(kept, 1.0 / (1.0 - p), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_backward_uses_the_forward_mask(dtype):
    """y = x · s with s fixed in forward, so dx must be grad_out · (y / x) element by element."""
    rng = np.random.default_rng(0)
    x = leaf(rng.choice([-1.0, 1.0], (64, 33)) * rng.uniform(0.5, 2.0, (64, 33)), dtype)
    g = rng.standard_normal((64, 33)).astype(dtype)
    tn.manual_seed(7)
    y = F.dropout(x, 0.4)
    tn.randn(10)  # drawing more random numbers must not change the saved mask
    y.backward(g)
    expected = g * (host(y) / host(x))
    np.testing.assert_allclose(host(x.grad), expected, rtol=2e-7 if dtype == np.float32 else 1e-15)
    assert ((host(x.grad) == 0) == (host(y) == 0)).all()
    assert 0 < (host(y) == 0).sum() < y.numel()


def test_dropout_saves_a_bool_mask_and_only_when_recording():
    """It saved the scaled mask in x's dtype, 4 bytes an element in float32, where the bool
    mask (1 byte) and 1/(1 − p) as a number give the same bits."""
    x = tn.randn(1000, requires_grad=True)
    y = F.dropout(x, 0.3)
    (keep,) = y.grad_fn.saved_tensors
    assert keep.dtype == np.bool_ and keep.shape == (1000,)
    scale = np.float32(1 / 0.7)
    np.testing.assert_array_equal(host(y), host(x) * keep * scale)
    g = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    y.backward(g)
    np.testing.assert_array_equal(x.grad, g * keep * scale)
    with tn.no_grad():
        assert F.dropout(x, 0.3).grad_fn is None


def test_float16_dropout_keeps_float16_and_scales_by_the_rounded_factor():
    """float16 in, float16 out: the kept elements are x·(1/(1 − p) rounded to float16), the
    dropped ones 0, and dx is grad_out on the same mask by the same factor; the mask is drawn
    in float32 (keep_mask), so the dropped fraction is p within 5 standard deviations."""
    rng = np.random.default_rng(4)
    p, n = 0.3, 50_000
    x = tn.tensor(rng.standard_normal(n).astype(np.float16), requires_grad=True)
    y = F.dropout(x, p)
    g = rng.standard_normal(n).astype(np.float16)
    y.backward(g)
    keep = host(y) != 0
    factor = np.float16(1 / (1 - p))
    assert y.dtype == np.float16 and x.grad.dtype == np.float16
    assert abs((~keep).mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_equal(host(y), np.where(keep, host(x) * factor, 0))
    np.testing.assert_array_equal(x.grad, np.where(keep, g * factor, 0))


def test_dropout_is_reproducible_under_manual_seed():
    x = tn.randn(1000)
    tn.manual_seed(3)
    first = host(F.dropout(x, 0.5))
    tn.manual_seed(3)
    again = host(F.dropout(x, 0.5))
    other = host(F.dropout(x, 0.5))
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_rejects_bad_probability(p):
    with pytest.raises(ValueError, match="dropout.*between 0 and 1"):
        F.dropout(tn.randn(3), p)


# ---- softmax and log_softmax on huge inputs --------------------------------------------------
@pytest.mark.parametrize("scale", [1e4, 1e30])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_and_log_softmax_stay_finite_on_huge_inputs(scale, dtype):
    """Naive e^x overflows at x ≈ 89 (float32) or 710 (float64); max-shifting never does."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal((3, 5)) * scale,
                             [[scale, -scale, 0.0, scale, 1.0]]])
    x = leaf(values.astype(dtype), dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    for op in (tn.softmax, tn.log_softmax):
        x.grad = None
        y = op(x, -1)
        y.backward(g)
        assert np.isfinite(host(y)).all(), op.__name__
        assert np.isfinite(x.grad).all(), op.__name__
        t = torch.tensor(values.astype(dtype), requires_grad=True)
        expected = getattr(torch, op.__name__)(t, -1)
        expected.backward(torch.tensor(g))
        np.testing.assert_allclose(host(y), expected.detach().numpy(), rtol=1e-6, atol=1e-6)
        # the last row's two tied maxima give a gradient that is not 0
        np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(host(tn.softmax(x, -1)).sum(-1), 1.0, rtol=1e-6)


def test_softmax_with_masked_minus_inf_entries():
    """Masked scores of −inf get probability exactly 0 and gradient exactly 0."""
    x = leaf([[0.5, float("-inf"), 2.0], [float("-inf"), 1.0, float("-inf")]])
    y = tn.softmax(x, -1)
    y.backward(np.array([[1.0, 2.0, -1.0], [0.5, -3.0, 4.0]]))
    assert host(y)[0, 1] == 0 and host(y)[1, 1] == 1
    assert x.grad[0, 1] == 0 and not x.grad[1].any()


# ---- float16 is computed in float32 -----------------------------------------------------------
SLACK = 1.01  # float32's own rounding on top, a few 2^-24 relative per operation


def rounding(exact):
    """The most that rounding ``exact`` to float16 can move it: half an ulp, 2^-11 relative,
    or 2^-25 absolute below 2^-14, where float16's spacing is the fixed 2^-24."""
    return 2.0**-11 * np.abs(exact) + 2.0**-25


def _float16_problem(shape, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 4).astype(np.float16)
    g = rng.standard_normal(shape).astype(np.float16)
    return x, g, x.astype(np.float64), g.astype(np.float64)


FLOAT16_CASES = [((64, 256), -1), ((512, 1000), -1), ((300, 7, 5), 1)]


@pytest.mark.parametrize("shape, dim", FLOAT16_CASES)
def test_float16_softmax_rounds_an_exact_result_once(shape, dim):
    """float16 softmax is computed in float32, as PyTorch's is, so y is the float16 rounding of
    the exact value. Backward starts from that rounded y, ŷ (saved, as PyTorch saves it):
    dx_j = ŷ_j (g_j − Σ_i g_i ŷ_i) then moves by at most ε_j |g_j − s| + y_j Σ_i |g_i| ε_i
    (ε = rounding(y), s = Σ_i g_i y_i) before its own rounding. Computed in float16, all
    three cases broke this bound (errors 2-4 times PyTorch's)."""
    x, g, x64, g64 = _float16_problem(shape, seed=len(shape) + shape[-1])
    e = np.exp(x64 - x64.max(axis=dim, keepdims=True))
    y = e / e.sum(axis=dim, keepdims=True)
    s = (g64 * y).sum(axis=dim, keepdims=True)
    dx = y * (g64 - s)
    t = leaf(x, np.float16)
    out = tn.softmax(t, dim)
    out.backward(g)
    assert host(out).dtype == t.grad.dtype == np.float16
    assert (np.abs(host(out) - y) <= SLACK * rounding(y)).all()
    eps = rounding(y)
    moved = eps * np.abs(g64 - s) + y * (np.abs(g64) * eps).sum(axis=dim, keepdims=True)
    assert (np.abs(t.grad - dx) <= SLACK * (moved + rounding(dx))).all()


@pytest.mark.parametrize("shape, dim", FLOAT16_CASES)
def test_float16_log_softmax_rounds_an_exact_result_once(shape, dim):
    """As softmax: y = x − log Σ e^x is the float16 rounding of the exact value, give or take
    float32's own error in log Σ (a few 2^-24 absolute, which tells where y ≈ 0). Backward
    dx = g − e^ŷ Σ g, with e^ŷ = p e^(ŷ − y): moved by at most p_j ε_j |Σ g| (ε the error
    of ŷ) before its own rounding."""
    x, g, x64, g64 = _float16_problem(shape, seed=2 * len(shape) + shape[-1])
    m = x64.max(axis=dim, keepdims=True)
    y = x64 - m - np.log(np.exp(x64 - m).sum(axis=dim, keepdims=True))
    dx = g64 - np.exp(y) * g64.sum(axis=dim, keepdims=True)
    t = leaf(x, np.float16)
    out = tn.log_softmax(t, dim)
    out.backward(g)
    assert host(out).dtype == t.grad.dtype == np.float16
    eps = SLACK * rounding(y) + 2.0**-22
    assert (np.abs(host(out) - y) <= eps).all()
    moved = np.exp(y) * eps * np.abs(g64.sum(axis=dim, keepdims=True))
    assert (np.abs(t.grad - dx) <= SLACK * (moved + rounding(dx))).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_float16_cross_entropy_rounds_an_exact_result_once(reduction):
    """The loss is the float16 rounding of the exact value (summed in float32 over 4096 rows),
    and dx = a (p̂ − onehot) moves by at most |a| rounding(p) before its own rounding, p̂ the
    saved float16 rounding of p. Computed in float16, the mean loss broke its bound, and dx
    broke its bound in the other two cases."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4096, 64)) * 3).astype(np.float16)
    target = rng.integers(0, 64, 4096)
    x64 = x.astype(np.float64)
    m = x64.max(axis=1, keepdims=True)
    p = np.exp(x64 - m) / np.exp(x64 - m).sum(axis=1, keepdims=True)
    rows = np.arange(4096)
    loss = -np.log(p[rows, target])
    upstream = {"mean": np.float16(0.7), "sum": np.float16(-1.3),
                "none": rng.standard_normal(4096).astype(np.float16)}[reduction]
    a = np.broadcast_to(upstream.astype(np.float64) / (4096 if reduction == "mean" else 1),
                        (4096,))[:, None]
    dx = a * p
    dx[rows, target] -= a[:, 0]
    want = {"mean": loss.mean(), "sum": loss.sum(), "none": loss}[reduction]
    t = leaf(x, np.float16)
    out = F.cross_entropy(t, tn.tensor(target), reduction=reduction)
    out.backward(np.asarray(upstream))
    assert host(out).dtype == t.grad.dtype == np.float16
    assert (np.abs(host(out) - want) <= SLACK * rounding(want)).all()
    assert (np.abs(t.grad - dx) <= SLACK * (np.abs(a) * rounding(p) + rounding(dx))).all()


@pytest.mark.parametrize("op", ["sum", "mean"])
def test_float16_sum_and_mean_along_any_axis_are_summed_in_float32(op):
    """NumPy sums float16 in float32 along the last axis only; along the first, 3000 numbers
    in [0, 1) were added in float16 and came out 0.6% low. Now each result is the float16
    rounding of the float32 sum: within a float16 ulp of the exact one, as PyTorch's."""
    x = np.random.default_rng(0).random((3000, 4)).astype(np.float16)
    exact = getattr(x.astype(np.float64), op)(axis=0)
    got = host(getattr(tn.tensor(x), op)(0))
    assert got.dtype == np.float16
    assert (np.abs(got - exact) <= np.spacing(np.abs(exact).astype(np.float16))).all()


def test_float16_gradients_of_broadcasts_and_biases_are_summed_in_float32():
    """A (4,) float16 bias broadcast over 8192 rows got 2048 in every gradient, where the
    sums are about 4100 (a float16 running sum stops at 2048), through add, mul, expand and
    linear's bias alike; torch's sums are float32 rounded once. Each is now within a float16
    ulp of the exact sum."""
    rng = np.random.default_rng(1)
    g = rng.random((8192, 4)).astype(np.float16)
    x = tn.tensor(rng.uniform(0.5, 1.5, (8192, 4)).astype(np.float16))
    b0 = rng.uniform(0.5, 1.5, 4).astype(np.float16)
    calls = {"add": lambda b: x + b, "mul": lambda b: x * b,
             "expand": lambda b: b.expand(8192, 4), "linear": lambda b: F.linear(
                 x, tn.tensor(np.eye(4, dtype=np.float16)), b)}
    for name, call in calls.items():
        b = tn.tensor(b0, requires_grad=True)
        call(b).backward(g)
        upstream = g.astype(np.float64) * (x.data if name == "mul" else 1)  # db = Σ g (·x)
        exact = upstream.sum(axis=0)
        assert b.grad.dtype == np.float16, name
        assert (np.abs(b.grad - exact) <= np.spacing(exact.astype(np.float16))).all(), name


def test_float16_mean_and_max_gradients_over_many_elements_are_not_zero():
    """dx = g / n was divided in float16, where n = 70000 is inf: every gradient was 0
    (torch: 1/70000, a float16 subnormal). So was a share of a max tied 70000 times."""
    n = 70000
    upstream = np.float16(0.75)
    for op, values in (("mean", np.ones(n)), ("max", np.full(n, 3.0))):
        x = tn.tensor(values.astype(np.float16), requires_grad=True)
        getattr(x, op)().backward(upstream)
        t = torch.tensor(values, dtype=torch.float16, requires_grad=True)
        (t.mean() if op == "mean" else t.amax()).backward(torch.tensor(upstream))
        assert x.grad.dtype == np.float16 and x.grad[0] > 0, op
        np.testing.assert_array_equal(x.grad, t.grad.numpy(), err_msg=op)


def test_relu_gives_zero_where_it_is_flat_whatever_the_upstream_gradient():
    """dx was grad_out · [y > 0], so inf or NaN upstream at x ≤ 0 gave NaN; PyTorch
    selects, and gives 0 there."""
    values = np.array([-1.0, 0.0, 2.0, np.nan, -3.0])
    g = np.array([np.inf, np.nan, 1.0, 5.0, -np.inf])
    x = leaf(values)
    tn.relu(x).backward(g)
    t = torch.tensor(values, requires_grad=True)
    torch.relu(t).backward(torch.tensor(g))
    np.testing.assert_array_equal(host(x.grad), t.grad.numpy())


def test_mul_and_div_save_a_float16_operand_as_given_not_a_float32_copy():
    """A float16 activation times (or over) a float32 weight saved the float32 copy that
    promotion made, 4 new bytes an element; the caller's array gives the same gradients."""
    rng = np.random.default_rng(2)
    a16 = tn.tensor(rng.standard_normal((3, 5)).astype(np.float16), requires_grad=True)
    w32 = tn.tensor(rng.standard_normal(5).astype(np.float32) + 3, requires_grad=True)
    g = rng.standard_normal((3, 5)).astype(np.float32)
    for y, saved in ((a16 * w32, 1), (w32 / a16, 0)):
        node = y.grad_fn
        assert node.saved_tensors[saved] is a16.data  # not a float32 copy
        y.backward(g)
    wide = a16.data.astype(np.float32)
    want_w = (g * wide).sum(axis=0) + (g / wide).sum(axis=0)
    np.testing.assert_allclose(w32.grad, want_w, rtol=1e-5)
    want_a = g * w32.data - g * (w32.data / wide) / wide
    np.testing.assert_allclose(a16.grad.astype(np.float32), want_a, rtol=2e-3, atol=1e-2)


def test_mean_of_integers_is_an_error_naming_the_dtype():
    """PyTorch refuses it too (a RuntimeError: "could not infer output dtype"); NumPy gave
    float64."""
    with pytest.raises(TypeError, match="mean: expected a floating-point input, got dtype int64"):
        tn.arange(3).mean()


# ---- kinks and repeated indices ---------------------------------------------------------------
@pytest.mark.parametrize("op", ["relu", "abs"])
def test_gradient_is_zero_at_the_kink(op):
    """PyTorch's convention: relu'(0) = 0 and abs'(0) = sign(0) = 0."""
    x = leaf([-2.0, -0.0, 0.0, 3.0])
    getattr(tn, op)(x).backward(np.array([5.0, 7.0, 11.0, 13.0]))
    expected = {"relu": [0.0, 0.0, 0.0, 13.0], "abs": [-5.0, 0.0, 0.0, 13.0]}[op]
    np.testing.assert_array_equal(host(x.grad), expected)


@pytest.mark.parametrize("op", ["relu", "abs"])
def test_a_nan_input_gets_pytorchs_gradient(op):
    """relu passes grad_out through at NaN (PyTorch's threshold_backward tests x ≤ 0) and abs
    gives 0 there (PyTorch's sign(NaN) is 0); NumPy's comparison and sign gave 0 and NaN."""
    values = np.array([np.nan, -2.0, 0.0, 3.0])
    g = np.array([5.0, 7.0, 11.0, 13.0])
    x = leaf(values)
    getattr(tn, op)(x).backward(g)
    t = torch.tensor(values, requires_grad=True)
    getattr(torch, op)(t).backward(torch.tensor(g))
    np.testing.assert_array_equal(host(x.grad), t.grad.numpy())


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("size", [9, 3 * 300_000])  # one call, and the threaded blocks
def test_float16_gelu_is_computed_in_float32_and_rounded_once(approximate, size):
    """Exact GELU on a small float16 input came back float64 (SciPy's erfc has no float16
    loop). Now y and dx are float16, within an ulp of the float64 maths (2 · rounding). The
    tanh form adds float32's own error where 1 + t or 1 − t² cancels (x ≪ 0): about 2^-24
    absolute in t, times ½|x| and the polynomial's |x|², so a few 2^-24 (1 + |x|)³ |g|; PyTorch's
    float16 has the same (its worst dx here: 101 times rounding(exact), ours 125)."""
    rng = np.random.default_rng(size)
    values = (rng.standard_normal(size) * 3).astype(np.float16)
    g = rng.standard_normal(size).astype(np.float16)
    x = leaf(values, np.float16)
    y = F.gelu(x, approximate=approximate)
    y.backward(g)
    t = torch.tensor(values.astype(np.float64), requires_grad=True)
    want = torch.nn.functional.gelu(t, approximate=approximate)
    want.backward(torch.tensor(g.astype(np.float64)))
    assert host(y).dtype == x.grad.dtype == np.float16
    cancelled = 0 if approximate == "none" else 2.0**-21 * (1 + np.abs(t.detach().numpy())) ** 3
    for got, ref, scale in ((host(y), want.detach().numpy(), 1),
                            (x.grad, t.grad.numpy(), np.abs(g.astype(np.float64)))):
        assert (np.abs(got - ref) <= 2 * rounding(ref) + cancelled * scale).all()


def test_integer_index_backward_accumulates_repeats():
    x = leaf(np.arange(12.0).reshape(4, 3))
    index = tn.tensor([2, 0, 2, 2, -1])
    g = np.arange(15.0).reshape(5, 3) + 1
    x[index].backward(g)
    expected = np.zeros((4, 3))
    expected[2] = g[0] + g[2] + g[3]
    expected[0] = g[1]
    expected[3] = g[4]
    np.testing.assert_array_equal(host(x.grad), expected)


def test_boolean_mask_backward_scatters_to_the_selected_positions():
    x = leaf(np.arange(6.0).reshape(2, 3))
    mask = tn.tensor([[True, False, True], [False, False, True]])
    x[mask].backward(np.array([10.0, 20.0, 30.0]))
    np.testing.assert_array_equal(host(x.grad), [[10.0, 0.0, 20.0], [0.0, 0.0, 30.0]])


def test_max_splits_the_gradient_evenly_among_ties():
    """As torch.amax: each of k equal maxima receives grad_out / k."""
    x = leaf([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    x.max(1).backward(np.array([6.0, 9.0]))
    np.testing.assert_array_equal(host(x.grad), [[0.0, 3.0, 3.0], [3.0, 3.0, 3.0]])


def test_max_over_a_nonreduced_empty_dim_is_empty_and_over_an_empty_dim_raises():
    assert tn.zeros(0, 3).max(1).shape == (0,)
    with pytest.raises(RuntimeError, match=r"max: .*\(0, 3\)"):
        tn.zeros(0, 3).max(0)


def test_mixed_float_dtypes_promote_and_each_input_gets_its_own_dtype():
    """As PyTorch: float32 · float64 computes in float64; each gradient keeps its input's dtype."""
    a, b = leaf([1.5, 2.0], np.float32), leaf([3.0, -1.0], np.float64)
    y = a * b
    assert y.dtype == np.float64
    y.backward(np.array([1.0, 2.0]))
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64
    np.testing.assert_array_equal(host(a.grad), [3.0, -2.0])
    np.testing.assert_array_equal(host(b.grad), [1.5, 4.0])


TORCH_DTYPES = {np.dtype(name): getattr(torch, name) for name in
                ("float16", "float32", "float64", "int64", "int32", "uint8", "bool")}
OPERANDS = ([("tensor", name) for name in ("float16", "float32", "float64", "int64", "int32",
                                          "bool", "uint8")]
            + [("0-d", name) for name in ("float16", "float32", "float64", "int64", "bool")]
            + [("number", v) for v in (2, 1.5, True, np.float64(1.5), np.float32(1.5),
                                      np.int32(2))])


def _operand(kind, value):
    """(tinynorm operand, torch operand) of one kind: a tensor with dims, 0-d, or a number."""
    if kind == "number":
        return value, value
    array = np.array([1, 2, 3] if kind == "tensor" else 2).astype(value)
    return tn.tensor(array), torch.tensor(array)


def _dtype_or_error(make, op=None):
    """The result's dtype, or "error"; with ``op`` (tinynorm's side), an error counts only
    if its message names the op (another error, from an unrelated bug, is a mismatch)."""
    try:
        return make().dtype
    except (TypeError, ValueError, RuntimeError) as err:
        return "error" if op is None or str(err).startswith(op) else f"error: {err}"


def _where(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.where(torch.tensor([True, False, True]), a, b)
    return tn.where(tn.tensor(np.array([True, False, True])), a, b)


BINARY = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
          "div": lambda a, b: a / b, "where": _where}


@pytest.mark.parametrize("op", list(BINARY))
def test_elementwise_results_take_pytorchs_dtype(op):
    """PyTorch's type promotion, not NumPy's: the highest category (bool < int < float) wins,
    its dtype taken from tensors with dims, then 0-d tensors, then numbers (the default
    float32 or int64); NumPy scalars count as numbers; int / int is float32; bool − bool is
    an error. NumPy gave float64 for float32 / np.sqrt(3), float32 · an int tensor and
    float32 + a 0-d float64 tensor, silently doubling a float32 model's memory."""
    mismatches = []
    for a in OPERANDS:
        for b in OPERANDS:
            if a[0] == b[0] == "number":
                continue
            (ta, pa), (tb, pb) = _operand(*a), _operand(*b)
            want = _dtype_or_error(lambda: BINARY[op](pa, pb))
            got = _dtype_or_error(lambda: BINARY[op](ta, tb), op)
            if TORCH_DTYPES.get(got, got) != want:
                mismatches.append(f"{a} {op} {b}: {got}, PyTorch {want}")
    assert not mismatches, "\n".join(mismatches)


def test_a_complex_number_takes_the_float_tensors_precision_as_pytorch():
    for dtype in (np.float32, np.float64):
        values = np.ones(2, dtype)
        want = str((torch.tensor(values) * 1j).dtype).replace("torch.", "")
        assert str((tn.tensor(values) * 1j).dtype) == want  # complex64, complex128


def test_pow_takes_pytorchs_dtype_and_names_negative_integer_powers():
    for kind, name in OPERANDS[:12]:
        for p in (2, 2.0, np.float64(2), np.float32(0.5), np.int32(3), 0):
            t, pt = _operand(kind, name)
            assert TORCH_DTYPES[(t ** p).dtype] == (pt ** p).dtype, (kind, name, p)
    with pytest.raises(ValueError, match=r"pow: an integer tensor \(dtype int64\) to a "
                                         r"negative integer power \(-1\)"):
        tn.tensor([1, 2]) ** -1


def test_promoted_operands_get_gradients_in_their_own_dtypes():
    """float32 · a 0-d float64 tensor computes in float32, as PyTorch; the float64 scalar's
    gradient comes back in float64, summed over the broadcast."""
    a, s = leaf([1.5, 2.0], np.float32), leaf(3.0, np.float64)
    y = a * s / np.sqrt(np.float64(4.0))
    assert y.dtype == np.float32
    y.backward(np.array([1.0, -2.0], np.float32))
    assert a.grad.dtype == np.float32 and s.grad.dtype == np.float64
    np.testing.assert_allclose(host(a.grad), [1.5, -3.0])
    np.testing.assert_allclose(host(s.grad), (1.5 - 4.0) / 2)


REDUCTIONS = {"sum": {}, "mean": {}, "max": {}, "min": {}, "var": {"unbiased": False},
              "std": {"unbiased": False}}


def _torch_reduction(t, op, **kwargs):
    """torch's reduction ``op``; max and min as amax and amin, values only, as tinynorm's."""
    return getattr(t, "a" + op if op in ("max", "min") else op)(**kwargs)


@pytest.mark.parametrize("op", list(REDUCTIONS))
def test_a_0d_tensor_takes_dims_0_and_minus_1_and_dim_empty_reduces_every_dim(op):
    """As PyTorch: dim 0 or −1 of a 0-d tensor reduces nothing (NumPy raised AxisError or
    IndexError), and dim=() or [] reduces every dim (it reduced none)."""
    kwargs = REDUCTIONS[op]
    scalar = np.array(2.5)
    for dim in (0, -1, (0,), ()):
        x = leaf(scalar)
        y = getattr(x, op)(dim=dim, **kwargs)
        y.backward(np.array(3.0))
        t = torch.tensor(scalar, requires_grad=True)
        want = _torch_reduction(t, op, dim=dim, **kwargs)
        want.backward(torch.tensor(3.0))
        np.testing.assert_array_equal(host(y), want.detach().numpy())
        np.testing.assert_array_equal(host(x.grad), t.grad.numpy())
    values = np.arange(6.0).reshape(2, 3)
    for dim in ((), []):
        got = getattr(leaf(values), op)(dim=dim, **kwargs)
        t = torch.tensor(values)
        want = _torch_reduction(t, op, dim=dim, **kwargs)
        assert host(got).shape == () and np.isclose(host(got), want.numpy()), dim


def test_transpose_of_a_0d_tensor_and_an_empty_index_as_pytorch():
    assert host(leaf(2.0).transpose(0, -1)) == 2.0  # IndexError before
    x = leaf(np.arange(6.0).reshape(2, 3))
    y = x[[]]  # NumPy: "arrays used as indices must be of integer type"
    assert y.shape == (0, 3)
    y.sum().backward()
    assert (host(x.grad) == 0).all()


@pytest.mark.parametrize("base", [2, 0.5, 2.0, 0, -2.0])
def test_a_number_to_a_tensors_power_matches_pytorch(base):
    """``c ** x`` (``__rpow__``; a TypeError before): y = c^x, dx = g · y · ln c, with
    PyTorch's 0 where c = 0 and x ≥ 0, and NaN for c < 0."""
    values = np.array([-1.5, 0.0, 0.5, 2.0, np.nan])  # NaN: 0 ** x gave dx = 0, PyTorch NaN
    g = np.array([1.0, 2.0, -3.0, 0.5, 1.5])
    x = leaf(values)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = base ** x
        y.backward(g)
    t = torch.tensor(values, requires_grad=True)
    want = base ** t
    want.backward(torch.tensor(g))
    np.testing.assert_allclose(host(y), want.detach().numpy(), rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(host(x.grad), t.grad.numpy(), rtol=1e-12, equal_nan=True)
    assert (2 ** tn.tensor([1, 2])).dtype == np.int64
    assert (2.0 ** tn.tensor([1])).dtype == np.float32
    powers = np.array([-3, -2, -1, 0, 3])  # integers: NumPy raises on the negative ones
    for c in (0, 1, -1, 2, -2):
        assert (c ** tn.tensor(powers)).tolist() == (c ** torch.tensor(powers)).tolist(), c


def test_a_tensor_to_a_tensors_power_is_refused_naming_both():
    """An array base went to the number-base op and failed on NumPy's "truth value of an
    array is ambiguous"."""
    for base in (leaf([2.0, 3.0]), np.array([2.0, 3.0]), np.array(2.0)):
        with pytest.raises(TypeError, match="pow: a tensor to a tensor's power is not "
                                            "supported"):
            tn.pow(base, leaf([1.0, 2.0]))


@settings(max_examples=20, deadline=None)
@given(x=arrays(shapes(max_dims=2, max_side=4)), base=st.floats(0.1, 5.0))
def test_a_number_to_a_tensors_power_gradcheck(x, base):
    gradcheck(lambda t: base ** t, (leaf(x),))


def test_zero_dim_results_are_arrays():
    """NumPy returns scalars from 0-d reductions and ufuncs; a Tensor always holds an array
    (a scalar would break in-place updates such as an optimizer's ``p.data -= lr * g``)."""
    x = leaf(2.0)
    for y in (x.sum(), x.exp(), x * x, x.max(), tn.tensor(np.ones(3)) @ tn.tensor(np.ones(3))):
        assert tn.backend.is_array(y.data), type(y.data)
    (x * x).exp().backward()
    assert tn.backend.is_array(x.grad) and x.grad.shape == ()


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_in_threaded_blocks_equals_one_sweep(approximate, compiled, on_cpu):
    """Large arrays go through ``elementwise`` (blocks on the thread pool); the values must
    be the same bits as one sweep, forward and backward, including the ragged last block:
    of the compiled float32 kernel (exact GELU, where numba is installed) or of the
    reference expressions. On the CPU: the thread pool is the CPU path's."""
    from tinynorm import kernels
    from tinynorm.ops import _rows, pointwise

    size = 7 * ((2 * _rows.BLOCK_ELEMENTS + 12345) // 7)  # not a multiple of the block
    rng = np.random.default_rng(3)
    x = rng.standard_normal(size).astype(np.float32).reshape(-1, 7)
    g = rng.standard_normal(x.shape).astype(np.float32)
    with kernels.fused(compiled):
        t = tn.tensor(x, requires_grad=True)
        y = tn.nn.functional.gelu(t, approximate=approximate)
        y.backward(g)
    if compiled and approximate == "none" and kernels.cpu_available():
        one_sweep, one_sweep_grad = (kernels.cpu_gelu.gelu_forward, kernels.cpu_gelu.gelu_backward)
    else:
        one_sweep = pointwise._gelu_none if approximate == "none" else pointwise._gelu_tanh
        one_sweep_grad = (pointwise._gelu_none_backward if approximate == "none"
                          else pointwise._gelu_tanh_backward)
    np.testing.assert_array_equal(y.data, one_sweep(x))
    np.testing.assert_array_equal(t.grad, one_sweep_grad(x, g))


@given(arrays(shapes(max_dims=3)), st.sampled_from([0.1, 0.5, 0.9]))
def test_dropout_gradcheck_with_a_fixed_mask(x, p):
    """Dropout is random, but reseeding before every call fixes its mask, which makes it a
    deterministic function that finite differences can check like any other."""
    def dropout_with_fixed_mask(t):
        tn.manual_seed(1234)
        return tn.nn.functional.dropout(t, p, training=True)

    assert gradcheck(dropout_with_fixed_mask, (tn.tensor(x, requires_grad=True),))


def test_dropout_matches_pytorch_given_the_same_mask():
    """PyTorch draws its mask from its own generator, so parity is checked on the mask
    tinynorm drew: torch's x·m/(1 − p) and its gradient against tinynorm's, in float64."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 9))
    g = rng.standard_normal((6, 9))
    p = 0.3
    tn.manual_seed(0)
    t = tn.tensor(x, requires_grad=True)
    y = tn.nn.functional.dropout(t, p)
    y.backward(g)
    mask = torch.tensor(host(y) != 0)
    tx = torch.tensor(x, requires_grad=True)
    ty = tx * mask / (1 - p)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(host(t.grad), tx.grad.numpy(), rtol=1e-12, atol=0)
    assert 0 < mask.float().mean() < 1  # the mask really drops some and keeps some


@pytest.mark.parametrize("shape_a, shape_b", [((2048, 96), (96, 64)), ((5, 7), (7, 3)),
                                              ((64, 2048), (2048, 3))])
def test_matmul_by_rows_is_the_same_product_on_any_thread_count(shape_a, shape_b):
    """Linear's products run their rows on tinynorm's threads: the same bits as NumPy's one
    call, for 1 and 2 threads, a transposed operand included."""
    import importlib

    matmul_ops = importlib.import_module("tinynorm.ops.matmul")

    rng = np.random.default_rng(8)
    a = rng.standard_normal(shape_a).astype(np.float32)
    b = rng.standard_normal(shape_b[::-1]).astype(np.float32).T  # a transposed view
    results = []
    for threads in (1, 2):
        with num_threads(threads):
            results.append(matmul_ops.matmul_by_rows(a, b))
    for r in results:
        np.testing.assert_array_equal(r, a @ b)
        assert r.shape == (shape_a[0], shape_b[1]) and r.dtype == np.float32
    bias = rng.standard_normal(shape_b[1]).astype(np.float32)  # added by each thread to its rows
    np.testing.assert_array_equal(matmul_ops.matmul_by_rows(a, b, bias), a @ b + bias)


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_matmuls_by_rows_makes_several_products_together_with_the_same_bits(threads):
    """Linear's backward makes dx = G W and dW = Gᵀ X together (``matmuls_by_rows``): each
    result is NumPy's product bit for bit, whatever the thread count and however the rows
    are cut (3 threads: each product cut in two, four blocks)."""
    import importlib

    matmul_ops = importlib.import_module("tinynorm.ops.matmul")

    rng = np.random.default_rng(9)
    g = rng.standard_normal((300, 200)).astype(np.float32)
    w = rng.standard_normal((200, 96)).astype(np.float32)
    x = rng.standard_normal((300, 96)).astype(np.float32)
    bias = rng.standard_normal(96).astype(np.float32)
    with num_threads(threads):
        dx, dw = matmul_ops.matmuls_by_rows((g, w), (g.T, x), biases=(bias, None))
    np.testing.assert_array_equal(dx, g @ w + bias)
    np.testing.assert_array_equal(dw, g.T @ x)
    assert dx.shape == (300, 96) and dw.shape == (200, 96)


def test_a_product_of_one_block_runs_on_single_threaded_blas(monkeypatch):
    """A one-row product (one block) takes the calling thread's path, with OpenBLAS held to
    one thread as everywhere else, not the threaded path, where OpenBLAS would thread it and
    leave its spinning workers in the next op's way."""
    import contextlib
    import importlib

    from tinynorm import backend
    matmul_ops = importlib.import_module("tinynorm.ops.matmul")

    entered = []
    original = backend.single_threaded_blas

    @contextlib.contextmanager
    def counting():
        entered.append(True)
        with original():
            yield

    def no_pool():
        raise AssertionError("a one-block product was handed to the thread pool")

    monkeypatch.setattr(backend, "single_threaded_blas", counting)
    monkeypatch.setattr(importlib.import_module("tinynorm.ops._rows"), "_executor", no_pool)
    rng = np.random.default_rng(8)
    a = rng.standard_normal((1, 4096)).astype(np.float32)
    b = rng.standard_normal((4096, 2048)).astype(np.float32)
    with num_threads(2):
        out = matmul_ops.matmul_by_rows(a, b)
    assert entered and out.shape == (1, 2048)
    np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-3)


# ---- repeated indices: scatter_add without atomics -----------------------------------------------
@st.composite
def scatter_cases(draw):
    """A target, an index of one of the kinds getitem and embedding pass (a 1-D index of rows,
    a tuple of integer arrays, one n-D integer array, an integer array after ``...``) with
    repeats and negatives, and values."""
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    kind = draw(st.sampled_from(["rows", "tuple", "nd", "sliced"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "rows":
        index = rng.integers(-shape[0], shape[0], size=draw(st.integers(0, 30)))
        selected = index.shape + shape[1:]
    elif kind == "tuple":
        count = draw(st.integers(0, 12))
        index = tuple(rng.integers(0, size, size=count) for size in shape)
        selected = index[0].shape
    elif kind == "nd":
        index = rng.integers(0, shape[0], size=(3, 2))
        selected = (3, 2) + shape[1:]
    else:  # x[..., idx]: a slice before the integer array, as getitem passes it
        index = (Ellipsis, rng.integers(-shape[-1], shape[-1], size=draw(st.integers(0, 9))))
        selected = shape[:-1] + index[1].shape
    broadcast = draw(st.booleans()) and len(selected) > 1  # values broadcast over the index
    values = rng.standard_normal(selected[1:] if broadcast else selected)
    return rng.standard_normal(shape), index, values


def on_backend(a):
    if isinstance(a, tuple):
        return tuple(on_backend(i) for i in a)
    return a if a is Ellipsis else tn.backend.xp().asarray(a)


@settings(max_examples=150, deadline=None)
@given(case=scatter_cases(), fortran=st.booleans())
def test_sorted_scatter_add_matches_add_at(case, fortran):
    """Repeated positions accumulate, negatives count from the end, values broadcast, and a
    target that is not C-contiguous is written in place; within float64 rounding of np.add.at
    (the order of the sum differs)."""
    target, index, values = case
    expected = target.copy()
    # values broadcast by hand: NumPy 2.4.6's add.at, given values (2,) for an index (3, 2),
    # added one row of them, or read memory it does not own (1e219 came back)
    np.add.at(expected, index, np.broadcast_to(values, expected[index].shape))
    on_device = on_backend(np.asfortranarray(target) if fortran else target)
    sorted_scatter_add(on_device, on_backend(index), on_backend(values))
    np.testing.assert_allclose(tn.backend.to_numpy(on_device), expected, rtol=1e-13, atol=1e-13)


def test_sorted_scatter_add_sums_each_run_as_a_pairwise_tree():
    """A run [a, b, c, d, e] is ((a + b) + (c + d)) + e, whatever the order of the GPU's
    threads. In float64, 1e16 + 1 rounds back to 1e16 (its ulp is 2), so the tree gives
    (1e16 + 1) + (−1e16 + 1) = 0 where a sum from the left gives 1: the values tell the order."""
    xp = tn.backend.xp()
    target = xp.zeros(3)
    index = xp.asarray([2, 0, 2, 2, 2, 2])
    values = xp.asarray([1e16, 7.0, 1.0, -1e16, 1.0, 5.0])
    sorted_scatter_add(target, index, values)
    assert tn.backend.to_numpy(target).tolist() == [7.0, 0.0, 5.0]
    left_to_right = np.zeros(3)
    np.add.at(left_to_right, tn.backend.to_numpy(index), tn.backend.to_numpy(values))
    assert left_to_right.tolist() == [7.0, 0.0, 6.0]  # so the test above can tell the two apart


class FakeCupyArray:
    """Enough of a CuPy array for backend.device_of: a module named cupy.* and .device.id."""

    __module__ = "cupy._core.core"
    device = types.SimpleNamespace(id=0)


def test_scatter_add_on_a_gpu_is_the_sorted_one(monkeypatch):
    """scatter_add sends CuPy arrays to sorted_scatter_add (never to CuPy's atomic scatter)
    and NumPy arrays to add.at."""
    calls = []
    monkeypatch.setattr(_adjoint, "sorted_scatter_add", lambda *args: calls.append(args))
    gpu = FakeCupyArray()
    scatter_add(gpu, np.array([0, 0]), 1.0)
    assert len(calls) == 1 and calls[0][0] is gpu
    cpu = np.zeros(3)
    scatter_add(cpu, np.array([0, 0]), 1.0)
    assert len(calls) == 1 and cpu.tolist() == [2.0, 0.0, 0.0]
