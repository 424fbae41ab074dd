"""var and std: the cases the parity table (test_ops_parity.py) cannot hold, because their
results are NaN or inf, and the seed's from-scratch LayerNorm, written with them in tinynorm
(``tinynorm.models.ComposedLayerNorm``).

Gradients of var and std are checked by Hypothesis in test_ops_gradcheck.py and against
PyTorch in test_ops_parity.py, in float64 and float32."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import tinynorm as tn
from tinynorm.models import ComposedLayerNorm
from tinynorm.testing.compare import to_host as host

from torch_pairs import close

rng = np.random.default_rng(17)


def both(call, array):
    """call(x) forward and backward (a random upstream) in tinynorm and in torch, float64:
    [(y, dx) of tinynorm, (y, dx) of torch] as host arrays. NumPy's and PyTorch's warnings
    about dividing by 0 degrees of freedom are expected here."""
    upstream = None
    results = []
    for lib in (tn, torch):
        x = lib.tensor(array, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y = call(x)
            if upstream is None:
                upstream = rng.standard_normal(tuple(y.shape))
            y.backward(lib.tensor(upstream))
        results.append((host(y.detach()), host(x.grad)))
    return results


@pytest.mark.parametrize("name, call, array, expected_y", [
    # a single element with Bessel's correction: 0 / 0
    ("var of one", lambda x: x.var(), [3.0], np.nan),
    ("std of one", lambda x: x.std(), [3.0], np.nan),
    # no elements: the mean is already 0 / 0
    ("var of none", lambda x: x.var(dim=1), np.zeros((2, 0)), [np.nan, np.nan]),
    ("std of none", lambda x: x.std(dim=1), np.zeros((2, 0)), [np.nan, np.nan]),
    # a constant group: std = 0, where √ has no derivative; PyTorch's gradient there is 0
    ("std of a constant row", lambda x: x.std(dim=1), [[2.0, 2.0, 2.0], [1.0, 2.0, 4.0]],
     [0.0, np.sqrt(7 / 3)]),
    ("var of one without correction", lambda x: x.var(unbiased=False), [3.0], 0.0),
])
def test_degenerate_groups_match_torch(name, call, array, expected_y):
    (y, dx), (ty, tdx) = both(call, np.asarray(array, dtype=np.float64))
    np.testing.assert_allclose(y, expected_y, rtol=1e-15)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ty))
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(tdx))
    close(np.nan_to_num(y), np.nan_to_num(ty), rtol=1e-14, atol=1e-15, what=f"{name}: y")
    close(np.nan_to_num(dx), np.nan_to_num(tdx), rtol=1e-14, atol=1e-15, what=f"{name}: dx")


def test_std_of_a_constant_row_has_zero_gradient_and_the_other_rows_theirs():
    """Only the flat row's gradient is 0; the other row's is (x − μ)/(D·s) · upstream."""
    x = tn.tensor([[5.0, 5.0], [1.0, 3.0]], dtype=tn.float64, requires_grad=True)
    x.std(dim=1).backward(tn.tensor([2.0, 3.0]))
    # row 2: μ = 2, D = 1, s = √2: (x − μ)/(D·s) = ∓1/√2, times 3
    np.testing.assert_allclose(host(x.grad), [[0.0, 0.0], [-3 / np.sqrt(2), 3 / np.sqrt(2)]],
                               rtol=1e-15)


def test_divisor_clamped_at_zero_gives_inf_as_torch():
    """correction > n: D = max(n − c, 0) = 0 and the variance is inf, as PyTorch's. The
    gradient, upstream · 2(x − μ)/D, is infinite, with the sign of upstream · (x − μ), as
    PyTorch's with ``dim``; PyTorch's full reduction gives upstream's sign to every element
    (README, deliberate differences)."""
    x = tn.tensor([1.0, 2.0], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = x.var(correction=3)
        y.backward(tn.tensor(0.5))
        assert float(y) == float(torch.tensor([1.0, 2.0]).var(correction=3)) == np.inf
    np.testing.assert_array_equal(host(x.grad), [-np.inf, np.inf])


def test_float32_keeps_float32_and_a_large_offset_is_harmless():
    """Two passes (μ first): float32 rows at 1e4 + N(0, 1) keep their variance to 1e-3,
    where Σx²/n − μ² in float32 would lose it to cancellation."""
    x = (1e4 + rng.standard_normal((64, 256))).astype(np.float32)
    got = host(tn.tensor(x).var(dim=-1, unbiased=False))
    assert got.dtype == np.float32
    want = x.astype(np.float64).var(axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-3)
    naive = (x * x).mean(axis=-1) - x.mean(axis=-1) ** 2
    assert np.abs(naive - want).max() > 0.1  # what the two passes avoid


def test_float16_sums_in_float32_as_torch():
    """5000 float16 values near 100: their sum, 5e5, is past float16's largest number
    (65504), so summed in float16 the mean is inf; summed in float32, as PyTorch sums them,
    var and std agree with PyTorch's to float16's rounding."""
    x = (rng.standard_normal((4, 5000)) * 3 + 100).astype(np.float16)
    for call in (lambda t: t.var(dim=1), lambda t: t.std(dim=1, unbiased=False)):
        got, want = host(call(tn.tensor(x))), call(torch.from_numpy(x)).numpy()
        assert got.dtype == np.float16
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-3)


@pytest.mark.parametrize("case", ["one outlier", "wide spread"])
def test_float16_deviations_past_256_are_squared_in_float32(case):
    """(x − μ)² was squared in float16: a deviation past 256 is past 65504, so var was inf, and
    std too (var rounded to float16 before the root). Now μ, the deviations, σ² and its
    root are float32, each result rounded once, and dx comes from the same float32 maths:
    both within a float16 ulp of the float64 maths."""
    x = np.zeros((3, 1000)) if case == "one outlier" else np.tile(np.arange(64.0) * 9, (3, 1))
    x[:, 0] = 600 if case == "one outlier" else x[:, 0]
    x = x.astype(np.float16)
    g = rng.standard_normal(3).astype(np.float16)
    for name in ("var", "std"):
        t = tn.tensor(x, requires_grad=True)
        y = getattr(t, name)(dim=1)
        y.backward(g)
        ref = torch.tensor(x.astype(np.float64), requires_grad=True)
        want = getattr(ref, name)(dim=1)
        want.backward(torch.tensor(g.astype(np.float64)))
        assert host(y).dtype == t.grad.dtype == np.float16 and np.isfinite(host(y)).all()
        for got, exact in ((host(y), want.detach().numpy()), (t.grad, ref.grad.numpy())):
            ulp = np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64)
            assert (np.abs(got - exact) <= ulp).all(), name


def test_the_seeds_composed_layer_norm_matches_the_fused_op():
    """Written as the seed writes it (``tinynorm.models.ComposedLayerNorm``: mean,
    var(unbiased=False), sqrt, scale and shift, each a separate op), the composed LayerNorm
    gives F.layer_norm's output and gradients (x, γ, β) to 1e-12: the hand-derived backward
    and the chain of simple ops agree. The seed's check prints std() of the output, which is
    1 up to Bessel's factor."""
    composed = ComposedLayerNorm(16).double()
    with tn.no_grad():
        composed.gamma.data[:] = rng.standard_normal(16)
        composed.beta.data[:] = rng.standard_normal(16)
    x_np = rng.standard_normal((2, 5, 16)) * 10 + 5
    upstream = rng.standard_normal((2, 5, 16))
    x = tn.tensor(x_np, requires_grad=True)
    composed(x).backward(tn.tensor(upstream))
    weight, bias = (tn.tensor(host(p), requires_grad=True) for p in (composed.gamma, composed.beta))
    x_fused = tn.tensor(x_np, requires_grad=True)
    y = tn.nn.functional.layer_norm(x_fused, (16,), weight, bias)
    y.backward(tn.tensor(upstream))
    close(composed(tn.tensor(x_np)), y, rtol=1e-12, atol=1e-12, what="y")
    close(x.grad, x_fused.grad, rtol=1e-10, atol=1e-12, what="dx")
    close(composed.gamma.grad, weight.grad, rtol=1e-12, atol=1e-12, what="dγ")
    close(composed.beta.grad, bias.grad, rtol=1e-12, atol=1e-12, what="dβ")
    normalized = tn.nn.functional.layer_norm(tn.tensor(x_np), (16,))
    np.testing.assert_allclose(host(normalized.std(dim=-1)), np.sqrt(16 / 15), rtol=1e-4)


@pytest.mark.parametrize("call, error, words", [
    (lambda: tn.tensor(np.arange(4)).var(), TypeError, ["var", "int64"]),
    (lambda: tn.randn(3).std(unbiased=True, correction=1), TypeError,
     ["std", "unbiased=True", "correction=1"]),
    (lambda: tn.randn(3).var(False, True), TypeError, ["var", "unbiased given twice"]),
    (lambda: tn.randn(3).std(dim=2), IndexError, ["std", "dim 2", "1 dims"]),
])
def test_errors_name_the_problem(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)
