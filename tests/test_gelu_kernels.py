"""The compiled float32 GELU kernels (tinynorm.kernels.cpu_gelu) against exact maths.

The reference is Φ from SciPy's float64 erfc (never 1 + erf, which cancels in the left
tail), applied to the same float32 inputs. The kernels promise a relative error of a few
1e-7 everywhere (the erfc fit's 1.2e-7, plus float32 rounding of the result, 6e-8).
"""
import numpy as np
import pytest
import scipy.special
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinynorm as tn
from tinynorm import kernels
from tinynorm.kernels import cpu_gelu
from tinynorm.nn import functional as F
from torch_pairs import needs_numba, num_threads

# every test here runs the compiled CPU kernels: tensors on the CPU under --backend cupy too
pytestmark = [needs_numba, pytest.mark.usefixtures("on_cpu")]

rng = np.random.default_rng(77)
RTOL = 3e-7  # fit 1.2e-7 + rounding to float32 6e-8, with margin; measured 1.7e-7
TINY = 1e-37  # below float32's smallest normal number relative error means nothing


def exact_cdf(x):
    return 0.5 * scipy.special.erfc(-np.asarray(x, np.float64) / np.sqrt(2.0))


def exact_gelu(x):
    return np.asarray(x, np.float64) * exact_cdf(x)


def exact_gelu_grad(x, g):
    x = np.asarray(x, np.float64)
    return g * (exact_cdf(x) + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi))


def relative_error(ours, exact):
    return np.abs(ours - exact) / np.maximum(np.abs(exact), TINY)


def test_forward_relative_error_everywhere_including_the_left_tail():
    x = np.concatenate([np.linspace(-14, 14, 200_001), rng.standard_normal(100_000) * 4])
    x = x.astype(np.float32)
    err = relative_error(cpu_gelu.gelu_forward(x), exact_gelu(x))
    assert err.max() < RTOL
    # the tail is where 1 + erf(x/√2) in float32 would have lost every digit
    tail = x < -6
    assert tail.any() and err[tail].max() < RTOL


def test_backward_error_is_float32_rounding():
    x = np.concatenate([np.linspace(-14, 14, 100_001), rng.standard_normal(50_000) * 4])
    x = x.astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    exact = exact_gelu_grad(x, g.astype(np.float64))
    ours = cpu_gelu.gelu_backward(x, g)
    # dx = g·(Φ + xφ): each term within RTOL of itself, so the error is bounded by
    # |g|·(Φ + |x|φ) times RTOL, not by |dx| (the two terms cancel near x = −0.75)
    scale = np.abs(g) * (exact_cdf(x) + np.abs(x) * np.exp(-0.5 * x.astype(np.float64) ** 2)
                         / np.sqrt(2 * np.pi))
    assert (np.abs(ours - exact) <= RTOL * scale + TINY).all()


def test_special_values_follow_the_maths():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e38, -1e38, -20.0], np.float32)
    y = cpu_gelu.gelu_forward(x)
    assert np.isnan(y[0]) and y[1] == np.inf
    # −∞·Φ(−∞) = −∞·0, NaN as in PyTorch and the reference path
    assert np.isnan(y[2])
    assert y[3] == 0 and y[4] == 0 and y[5] == np.float32(1e38)
    assert y[6] == 0 and y[7] == 0  # x·Φ(x) underflows float32 far left


@settings(max_examples=50, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=20),
                    elements=st.floats(-30, 30, width=32)))
def test_forward_matches_exact_maths_on_any_input(x):
    assert relative_error(cpu_gelu.gelu_forward(x), exact_gelu(x)).max(initial=0) < RTOL


def test_the_op_runs_the_kernel_for_float32_and_the_reference_otherwise(monkeypatch):
    calls = []
    original = cpu_gelu.gelu_forward
    monkeypatch.setattr(cpu_gelu, "gelu_forward",
                        lambda x, out=None: calls.append(x.dtype) or original(x, out))
    F.gelu(tn.tensor(rng.standard_normal(10).astype(np.float32)))
    F.gelu(tn.tensor(rng.standard_normal((4, 5)).astype(np.float32).T))  # any layout
    F.gelu(tn.tensor(rng.standard_normal(10)))  # float64: SciPy's exact erf
    F.gelu(tn.tensor(rng.standard_normal(10).astype(np.float32)), approximate="tanh")
    with kernels.fused(False):
        F.gelu(tn.tensor(rng.standard_normal(10).astype(np.float32)))
    assert calls == [np.float32, np.float32]


@pytest.mark.parametrize("shape", [(7,), (3, 300_000)])  # one block, and blocks on threads
def test_kernel_and_reference_paths_agree(shape):
    x_np = (rng.standard_normal(shape) * 3).astype(np.float32)
    g_np = rng.standard_normal(shape).astype(np.float32)
    results = []
    for on in (True, False):
        with kernels.fused(on):
            x = tn.tensor(x_np, requires_grad=True)
            y = F.gelu(x)
            y.backward(tn.tensor(g_np))
        results.append((y.detach().numpy(), np.asarray(x.grad)))
    (y_k, dx_k), (y_r, dx_r) = results
    # the reference path takes float32 erfc: relative error ~1e-6 (rtol), up to ~1e-5 far in
    # the left tail, where y ≈ 0 and the atol covers it
    np.testing.assert_allclose(y_k, y_r, rtol=1e-6, atol=3e-7 * np.abs(x_np).max())
    np.testing.assert_allclose(dx_k, dx_r, rtol=1e-6, atol=1e-6)


def test_torch_parity_float32():
    """Against torch's float64 GELU of the same float32 inputs within RTOL, for x > −5 (torch
    takes 1 + erf, which cancels even in float64 further left; the tests above cover the
    tail against SciPy's erfc); and against torch's float32 GELU within its own absolute error
    (it takes 1 + erf, which costs it ~1e-6 absolute at |x| ≈ 5..10)."""
    x_np = (rng.standard_normal((64, 512)) * 4).astype(np.float32)
    g_np = rng.standard_normal(x_np.shape).astype(np.float32)
    x = tn.tensor(x_np, requires_grad=True)
    y = F.gelu(x)
    y.backward(tn.tensor(g_np))
    t64 = torch.tensor(x_np, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.gelu(t64).backward(torch.tensor(g_np, dtype=torch.float64))
    exact = torch.nn.functional.gelu(t64).detach().numpy()
    left_of_cancellation = x_np > -5
    assert relative_error(y.detach().numpy(), exact)[left_of_cancellation].max() < RTOL
    np.testing.assert_allclose(np.asarray(x.grad), t64.grad.numpy(), rtol=1e-6, atol=1e-6)
    t32 = torch.tensor(x_np, requires_grad=True)
    torch.nn.functional.gelu(t32).backward(torch.tensor(g_np))
    np.testing.assert_allclose(y.detach().numpy(), torch.nn.functional.gelu(t32).detach().numpy(),
                               rtol=1e-6, atol=2e-6)
    np.testing.assert_allclose(np.asarray(x.grad), t32.grad.numpy(), rtol=1e-5, atol=2e-6)


def test_same_bits_on_one_and_two_threads():
    x_np = rng.standard_normal((4, 200_000)).astype(np.float32)
    g_np = rng.standard_normal(x_np.shape).astype(np.float32)
    results = []
    for threads in (1, 2):
        with num_threads(threads):
            x = tn.tensor(x_np, requires_grad=True)
            y = F.gelu(x)
            y.backward(tn.tensor(g_np))
        results.append((y.detach().numpy(), np.asarray(x.grad)))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_non_contiguous_inputs():
    x_np = (rng.standard_normal((30, 20)) * 3).astype(np.float32).T
    assert relative_error(cpu_gelu.gelu_forward(x_np), exact_gelu(x_np)).max() < RTOL
    g_np = rng.standard_normal((30, 20)).astype(np.float32).T
    x = tn.tensor(x_np, requires_grad=True)
    F.gelu(x).backward(tn.tensor(g_np))
    np.testing.assert_allclose(np.asarray(x.grad), exact_gelu_grad(x_np, g_np),
                               rtol=1e-6, atol=1e-6)
