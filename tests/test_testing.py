"""Tests of tinynorm.testing: gradcheck must pass correct backwards and catch wrong ones with a
message that explains itself; assert_close's messages; the strategies keep their promises."""
import importlib.util
import os
import pathlib
import sys
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")  # conftest turns a missing one into an error in CI
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tinynorm as tn  # noqa: E402
from tinynorm.testing import (  # noqa: E402
    GradcheckError, assert_close, gradcheck, register_profiles)
from tinynorm.testing import gradient_check  # noqa: E402
from tinynorm.testing import strategies as S  # noqa: E402
from tinynorm.testing.strategies import arrays, shapes  # noqa: E402
from tinynorm.testing.compare import to_host as host


def leaf(a):
    return tn.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


RNG = np.random.default_rng(0)


# ---- ops with a correct backward, and deliberately broken ones ----------------------------
class Cube(tn.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x * x

    @staticmethod
    def backward(ctx, grad_out):
        """y = x³ ⇒ dx = 3x²·dy."""
        (x,) = ctx.saved_tensors
        return 3 * x * x * grad_out


class MulScaledBackward(tn.Function):
    """a·b whose backward for a is 1% too large."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad_out):
        a, b = ctx.saved_tensors
        return 1.01 * b * grad_out, a * grad_out


class XExpMissingTerm(tn.Function):
    """y = x·exp(x); the product rule gives dx = (exp(x) + x·exp(x))·dy. This backward
    forgets the second term."""

    @staticmethod
    def forward(ctx, x):
        xp = tn.backend.array_module(x)
        ctx.save_for_backward(x)
        return x * xp.exp(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        xp = tn.backend.array_module(x)
        return xp.exp(x) * grad_out


class Doubles(tn.Function):
    """y = 2x; the subclasses below give it backwards that are wrong in one way each."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x


class SumRowsWrongShape(Doubles):
    """Returns x·2 but a gradient with the first axis summed away."""

    @staticmethod
    def backward(ctx, grad_out):
        return (2 * grad_out).sum(axis=0)


class LeakyZero(Doubles):
    """Backward adds a constant: right slope, but a zero upstream gradient gives non-zero."""

    @staticmethod
    def backward(ctx, grad_out):
        return 2 * grad_out + 1e-3


class NoisyBackward(Doubles):
    """A correct backward with relative noise of 1e-12: fine for finite differences (and zero
    for a zero grad_out), but two runs differ."""

    @staticmethod
    def backward(ctx, grad_out):
        xp = tn.backend.array_module(grad_out)
        noise = xp.asarray(np.random.default_rng().random(grad_out.shape))
        return 2 * grad_out * (1 + 1e-12 * noise)


class TwoOutputs(tn.Function):
    """(a·b, a + b); the backward drops b's share of the second output's gradient."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b, a + b

    @staticmethod
    def backward(ctx, grad_prod, grad_sum):
        a, b = ctx.saved_tensors
        return b * grad_prod + grad_sum, a * grad_prod


# ---- gradcheck passes correct backwards ---------------------------------------------------
def test_gradcheck_passes_core_ops():
    x, w = leaf(RNG.standard_normal((3, 4))), leaf(RNG.standard_normal((4, 5)))
    assert gradcheck(lambda a, b: (a @ b).tanh(), (x, w))
    assert gradcheck(lambda a: a.softmax(-1), leaf(RNG.standard_normal((2, 7))))
    assert gradcheck(lambda a: a.exp().sum(1), leaf(RNG.standard_normal((3, 4))))


def test_gradcheck_passes_custom_function_large_input():
    # 200 elements: checked along random directions, not element by element
    assert gradcheck(Cube.apply, leaf(RNG.standard_normal((20, 10))))


def test_gradcheck_passes_tuple_outputs_and_non_tensor_arguments():
    x = leaf(RNG.standard_normal((4, 6)))
    assert gradcheck(lambda a, n, dim: a.split(n, dim), (x, 2, 1))
    with tn.no_grad():  # gradcheck records its own graph even inside no_grad
        assert gradcheck(lambda a: (a.tanh(), a.exp()), x)
    const = tn.tensor(RNG.standard_normal((4, 6)))  # no requires_grad: passed through, not checked
    assert gradcheck(lambda a, c: a * c, (x, const))


def test_gradcheck_unused_input_has_zero_gradient():
    x, unused = leaf(RNG.standard_normal(3)), leaf(RNG.standard_normal(2))
    assert gradcheck(lambda a, b: a.tanh(), (x, unused))


@given(arrays(shapes(max_dims=3, max_side=4)))
def test_gradcheck_passes_max_on_drawn_inputs(x):
    # spread values: no near-ties that finite differences could swap
    assert gradcheck(lambda a: a.max(dim=-1), leaf(x))


@given(S.arrays(shapes(max_dims=3, max_side=4), avoid=(0.0,)))
def test_gradcheck_passes_relu_away_from_kink(x):
    assert gradcheck(lambda a: a.relu() * a, leaf(x))


@given(S.broadcastable_shapes(2, max_dims=3, max_side=3).flatmap(
    lambda two: st.tuples(S.arrays(two[0]), S.arrays(two[1]))))
def test_gradcheck_passes_broadcast_mul(pair):
    a, b = pair
    assert gradcheck(lambda x, y: x * y, (leaf(a), leaf(b)))


# ---- gradcheck catches wrong backwards, and says where ------------------------------------
def test_gradcheck_rejects_one_percent_off_and_names_worst_element():
    a, b = leaf(RNG.standard_normal((3, 4))), leaf(RNG.standard_normal((3, 4)))
    with pytest.raises(GradcheckError) as caught:
        gradcheck(MulScaledBackward.apply, (a, b))
    message = str(caught.value)
    assert "input 0 (shape (3, 4), dtype float64)" in message
    for part in ("worst element at index (", "numerical  =", "analytical =", "abs error",
                 "rel error = 1.000e-02", "tolerance", "rtol*|numerical|"):
        assert part in message, part
    assert isinstance(caught.value, AssertionError)


def test_gradcheck_rejects_one_percent_off_on_large_input_via_directions():
    a, b = leaf(RNG.standard_normal((30, 10))), leaf(RNG.standard_normal((30, 10)))
    with pytest.raises(GradcheckError, match=r"(?s)directional derivative.*worst element at index"):
        gradcheck(MulScaledBackward.apply, (a, b))


def test_gradcheck_rejects_missing_product_rule_term():
    x = leaf(np.linspace(-1.5, 1.5, 6).reshape(2, 3))
    with pytest.raises(GradcheckError, match=r"worst element at index \(\d, \d\)"):
        gradcheck(XExpMissingTerm.apply, x)


def test_gradcheck_raise_exception_false_returns_false():
    x = leaf(RNG.standard_normal(5))
    assert gradcheck(XExpMissingTerm.apply, x, raise_exception=False) is False
    assert gradcheck(Cube.apply, x, raise_exception=False) is True


def test_gradcheck_names_the_failing_output_of_a_tuple():
    a, b = leaf(RNG.standard_normal(3)), leaf(RNG.standard_normal(3))
    with pytest.raises(GradcheckError, match=r"input 1 \(shape \(3,\).*output 1 \(shape \(3,\)\)"):
        gradcheck(TwoOutputs.apply, (a, b))


def test_gradcheck_catches_wrong_shape_gradient():
    with pytest.raises(GradcheckError, match=r"shape \(3,\).*shape \(2, 3\)"):
        gradcheck(SumRowsWrongShape.apply, leaf(RNG.standard_normal((2, 3))))


def test_gradcheck_zero_upstream_gradient_gives_zero():
    with pytest.raises(GradcheckError, match="zero upstream gradient must give a zero gradient"):
        gradcheck(LeakyZero.apply, leaf(RNG.standard_normal(4)))


def test_gradcheck_nondeterministic_backward_and_nondet_tol():
    x = leaf(RNG.standard_normal(4))
    with pytest.raises(GradcheckError, match="not reproducible"):
        gradcheck(NoisyBackward.apply, x)
    assert gradcheck(NoisyBackward.apply, x, nondet_tol=1e-9)


def test_gradcheck_warns_on_float32_input():
    x = tn.tensor(RNG.standard_normal(4).astype(np.float32), requires_grad=True)
    with pytest.warns(UserWarning, match="input 0 .* float32"):
        assert gradcheck(lambda a: a.tanh(), x)


def test_gradcheck_does_not_warn_on_float64():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradcheck(lambda a: a.tanh(), leaf(RNG.standard_normal(4)))


def test_gradcheck_leaves_user_inputs_untouched():
    x = leaf(RNG.standard_normal((3, 3)))
    before = host(x).copy()
    gradcheck(Cube.apply, x)
    assert np.array_equal(host(x), before)
    assert x.grad is None


def test_gradcheck_needs_an_input_that_requires_grad():
    with pytest.raises(ValueError, match="requires_grad"):
        gradcheck(lambda a: a * 2, tn.tensor(np.ones(3)))


def test_gradcheck_upstream_gradient_is_not_all_ones():
    # sum() would hide a backward that ignores grad_out's values; a random G does not
    class IgnoresGradOut(Doubles):
        @staticmethod
        def backward(ctx, grad_out):
            xp = tn.backend.array_module(grad_out)
            return 2 * xp.ones_like(grad_out) * (grad_out != 0)

    with pytest.raises(GradcheckError):
        gradcheck(IgnoresGradOut.apply, leaf(RNG.standard_normal(5)))


def test_full_check_up_to_threshold_then_directions():
    n = gradient_check.FULL_CHECK_MAX_ELEMENTS
    for size, expected in ((n, f"failing elements: {n} of {n} \\(all elements checked\\)"),
                           (n + 1, "directional derivative along random unit direction 1")):
        a, b = leaf(RNG.uniform(1, 2, size)), leaf(RNG.uniform(1, 2, size))
        with pytest.raises(GradcheckError, match=expected):
            gradcheck(MulScaledBackward.apply, (a, b))


# ---- gradcheck as torch.autograd.gradcheck: exception type and keywords ---------------------
def test_gradcheck_error_is_a_runtime_error_as_torch():
    # torch.autograd.gradcheck.GradcheckError is a RuntimeError; pytest shows AssertionErrors
    assert issubclass(GradcheckError, RuntimeError) and issubclass(GradcheckError, AssertionError)
    with pytest.raises(RuntimeError, match="disagrees"):
        gradcheck(XExpMissingTerm.apply, leaf(RNG.standard_normal(3)))


class RightOnlyForNonzeroUpstream(Doubles):
    """Right for any random upstream gradient, but a zero one gives ones."""

    @staticmethod
    def backward(ctx, grad_out):
        xp = tn.backend.array_module(grad_out)
        return xp.where(grad_out == 0, 1.0, 2 * grad_out)


def test_gradcheck_takes_torch_keywords_with_torch_defaults():
    x = leaf(RNG.standard_normal(4))
    assert gradcheck(lambda a: a.tanh(), x, eps=1e-6, atol=1e-5, rtol=1e-3, nondet_tol=0.0,
                     check_undefined_grad=True, check_grad_dtypes=True, check_batched_grad=False,
                     check_batched_forward_grad=False, check_forward_ad=False,
                     check_backward_ad=True, fast_mode=False, masked=None)
    # check_undefined_grad is tinynorm's zero-upstream check (the engine gives zeros for
    # outputs that receive no gradient)
    with pytest.raises(GradcheckError, match="zero upstream"):
        gradcheck(RightOnlyForNonzeroUpstream.apply, x)
    assert gradcheck(RightOnlyForNonzeroUpstream.apply, x, check_undefined_grad=False)


def test_gradcheck_keywords_and_defaults_are_torchs():
    import inspect

    torch = pytest.importorskip("torch")
    ours = dict(inspect.signature(gradcheck).parameters)
    theirs = dict(inspect.signature(torch.autograd.gradcheck).parameters)
    ours.pop("fn"), theirs.pop("func")  # the first, positional: STYLE.md's spelling
    assert set(theirs) - set(ours) == set() and set(ours) - set(theirs) == {"seed"}
    for name, parameter in theirs.items():
        assert ours[name].default == parameter.default, name


@pytest.mark.parametrize("option", ["check_forward_ad", "check_batched_grad",
                                    "check_batched_forward_grad", "masked"])
def test_gradcheck_refuses_torch_options_it_cannot_honour(option):
    with pytest.raises(NotImplementedError, match=f"{option}=True"):
        gradcheck(lambda a: a.tanh(), leaf(RNG.standard_normal(3)), **{option: True})


def test_gradcheck_refuses_to_check_nothing_or_with_a_bad_eps():
    x = leaf(RNG.standard_normal(3))
    with pytest.raises(NotImplementedError, match="check_backward_ad=False"):
        gradcheck(lambda a: a.tanh(), x, check_backward_ad=False)
    with pytest.raises(ValueError, match="eps must be positive"):
        gradcheck(lambda a: a.tanh(), x, eps=0.0)


def test_gradcheck_fast_mode_checks_directions_even_for_small_inputs():
    a, b = leaf(RNG.standard_normal((3, 4))), leaf(RNG.standard_normal((3, 4)))
    with pytest.raises(GradcheckError, match=r"(?s)directional derivative.*worst element"):
        gradcheck(MulScaledBackward.apply, (a, b), fast_mode=True)
    assert gradcheck(Cube.apply, a, fast_mode=True)


# ---- gradcheck catches ops that write where they must not, or keep state outside ctx ----------
class DoublesInPlace(tn.Function):
    """y = 2x computed by doubling x in place: the caller's tensor changes."""

    @staticmethod
    def forward(ctx, x):
        x *= 2
        return x

    @staticmethod
    def backward(ctx, grad_out):
        return 2 * grad_out


class ShiftsItsConstant(tn.Function):
    """x·c, but forward adds 1 to the constant c in place (and backward reads the result)."""

    @staticmethod
    def forward(ctx, x, c):
        c += 1
        ctx.save_for_backward(c)
        return x * c

    @staticmethod
    def backward(ctx, grad_out):
        (c,) = ctx.saved_tensors
        return grad_out * c, None


class SquareScribblesOnSaved(tn.Function):
    """y = x²; backward computes 2x by doubling the saved x (the input itself) in place."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        x *= 2
        return x * grad_out


class DoublesGradOutInPlace(Doubles):
    """The right values, written into grad_out: another consumer of it would see them."""

    @staticmethod
    def backward(ctx, grad_out):
        grad_out *= 2
        return grad_out


class SquareWithStateOnTheClass(tn.Function):
    """y = x², but x kept on the class: the backward of one call reads the latest forward's x."""

    last_x = None

    @staticmethod
    def forward(ctx, x):
        SquareWithStateOnTheClass.last_x = x
        return x * x

    @staticmethod
    def backward(ctx, grad_out):
        return 2 * SquareWithStateOnTheClass.last_x * grad_out


def test_gradcheck_catches_forward_writing_into_its_input():
    x = leaf(RNG.standard_normal((2, 3)))
    before = host(x).copy()
    with pytest.raises(GradcheckError,
                       match=r"fn modified input 0 \(shape \(2, 3\), dtype float64\) in place: "
                             r"at index \(0, 0\)"):
        gradcheck(DoublesInPlace.apply, x)
    assert np.array_equal(host(x), before)


def test_gradcheck_catches_and_never_modifies_an_input_that_is_not_checked():
    x, c = leaf(RNG.standard_normal(4)), tn.tensor(RNG.standard_normal(4))
    before = host(c).copy()
    with pytest.raises(GradcheckError, match=r"fn modified input 1 \(shape \(4,\)"):
        gradcheck(ShiftsItsConstant.apply, (x, c))
    assert np.array_equal(host(c), before)  # was written to: fn got the caller's array


def test_gradcheck_catches_backward_writing_into_a_saved_input():
    with pytest.raises(GradcheckError, match="the backward of output 0 modified input 0"):
        gradcheck(SquareScribblesOnSaved.apply, leaf(RNG.standard_normal(4)))


def test_gradcheck_catches_backward_writing_into_grad_out():
    # was reported as "not reproducible": the second run got the doubled upstream gradient
    with pytest.raises(GradcheckError, match="modified its upstream gradient in place"):
        gradcheck(DoublesGradOutInPlace.apply, leaf(RNG.standard_normal(4)))


def test_gradcheck_catches_state_kept_outside_ctx():
    # forward then backward at once is right; another forward in between is what training does
    with pytest.raises(GradcheckError, match=r"(?s)depends on other calls of fn.*outside ctx"):
        gradcheck(SquareWithStateOnTheClass.apply, leaf(RNG.standard_normal(4)))
    assert gradcheck(Cube.apply, leaf(RNG.standard_normal(4)))


def test_gradcheck_reports_a_nan_gradient_as_wrong_not_as_nondeterministic():
    class NanBackward(Doubles):
        @staticmethod
        def backward(ctx, grad_out):
            return 2 * grad_out * np.nan

    with pytest.raises(GradcheckError, match=r"(?s)disagrees.*analytical = nan"):
        gradcheck(NanBackward.apply, leaf(RNG.standard_normal(3)), check_undefined_grad=False)


# ---- gradcheck's outputs: complex refused, none floating warned, no graph explained ------------
def test_gradcheck_refuses_complex_outputs():
    with pytest.raises(TypeError, match="complex"):
        gradcheck(lambda a: tn.Tensor(a.data + 1j), leaf(RNG.standard_normal(3)))


def test_gradcheck_warns_when_no_output_is_floating():
    with pytest.warns(UserWarning, match="no floating-point output"):
        assert gradcheck(lambda a: tn.Tensor(a.data > 0), leaf(RNG.standard_normal(3)))


def test_gradcheck_explains_an_output_without_graph():
    with pytest.raises(GradcheckError, match=r"(?s)analytical = 0.0.*output 0 does not require "
                                             r"grad"):
        gradcheck(lambda a: tn.Tensor(a.data * 2), leaf(RNG.standard_normal(3)))


def test_gradcheck_zero_size_and_0d_inputs():
    assert gradcheck(lambda a: a.tanh(), leaf(np.zeros((0, 3))))
    assert gradcheck(lambda a: a.tanh(), leaf(0.3))
    assert gradcheck(lambda a, b: (a * b).sum(), (leaf(0.3), leaf(RNG.standard_normal(3))))


@pytest.mark.gpu
def test_gradcheck_and_assert_close_on_cupy_arrays():
    x = tn.tensor(RNG.standard_normal((3, 4)), device="cuda", requires_grad=True)
    before = tn.backend.to_numpy(x.data).copy()
    assert gradcheck(Cube.apply, x)
    assert gradcheck(Cube.apply, tn.tensor(RNG.standard_normal((9, 9)), device="cuda",
                                           requires_grad=True))
    assert gradcheck(XExpMissingTerm.apply, x, raise_exception=False) is False
    assert_close(x.detach(), before)
    assert np.array_equal(tn.backend.to_numpy(x.data), before)


# ---- assert_close ---------------------------------------------------------------------------
def test_assert_close_per_dtype_defaults():
    assert_close(np.float32(1.0) + np.float32(5e-6), np.float32(1.0))  # within float32's atol 1e-5
    with pytest.raises(AssertionError, match="rtol=1.3e-06, atol=1e-05"):
        assert_close(np.array([1.0001], dtype=np.float32), np.array([1.0], dtype=np.float32))
    with pytest.raises(AssertionError, match="rtol=1e-07, atol=1e-07"):
        assert_close(np.array([1.000001]), np.array([1.0]))
    assert_close(np.array([1.0, 2.0], dtype=np.float16) + np.float16(1e-3),
                 np.array([1.0, 2.0], dtype=np.float16))
    with pytest.raises(AssertionError):
        assert_close(np.array([1, 2]), np.array([1, 3]))  # integers: exact


def test_assert_close_message_names_worst_element():
    expected = np.zeros((2, 3))
    actual = expected.copy()
    actual[0, 2], actual[1, 1] = 1e-3, 5e-2
    with pytest.raises(AssertionError) as caught:
        assert_close(actual, expected)
    message = str(caught.value)
    for part in ("mismatched elements: 2 of 6", "worst element at index (1, 1)",
                 "actual     = 0.05", "expected   = 0.0", "abs error  = 5.000e-02",
                 "rel error = inf", "atol=1e-07"):
        assert part in message, part


def test_assert_close_shape_mismatch_and_mixed_inputs():
    with pytest.raises(AssertionError, match=r"shapes differ.*\(2, 3\).*\(3, 2\)"):
        assert_close(np.zeros((2, 3)), np.zeros((3, 2)))
    assert_close(tn.tensor(np.array([1.5, 2.5])), [1.5, 2.5])
    assert_close(tn.tensor(np.array(3.0)), 3.0)
    assert_close(np.array([1.0]), np.array([1.1]), rtol=0.0, atol=0.2)
    with pytest.raises(AssertionError):
        assert_close(np.array([np.nan]), np.array([np.nan]))
    assert_close(np.array([np.inf, -np.inf]), np.array([np.inf, -np.inf]))


def test_assert_close_complex_dtypes_have_torch_tolerances():
    # complex64 as float32, complex128 as float64 (were compared exactly)
    assert_close(np.array([1 + 1j]), np.array([1 + 1j + 1e-9]))
    assert_close(np.array([1 + 1j], np.complex64), np.array([1 + 1j + 1e-6], np.complex64))
    with pytest.raises(AssertionError, match="rtol=1e-07, atol=1e-07"):
        assert_close(np.array([1 + 1j]), np.array([1 + 1.001j]))


def test_assert_close_checks_dtypes_as_torch():
    with pytest.raises(AssertionError, match="dtypes differ: actual has dtype float32"):
        assert_close(np.ones(2, np.float32), np.ones(2))
    with pytest.raises(AssertionError, match="dtypes differ"):
        assert_close(tn.tensor(np.ones(2, np.float32)), tn.tensor(np.ones(2)))
    assert_close(np.ones(2, np.float32), np.ones(2), check_dtype=False)
    # Python scalars and lists have no dtype of their own: compared by value
    assert_close(tn.tensor(np.array([1.5, 2.5], np.float32)), [1.5, 2.5])
    assert_close(np.float32(2.0), 2.0)


def test_assert_close_equal_nan():
    with pytest.raises(AssertionError, match="NaN matches NaN only with equal_nan=True"):
        assert_close(np.array([1.0, np.nan]), np.array([1.0, np.nan]))
    assert_close(np.array([1.0, np.nan]), np.array([1.0, np.nan]), equal_nan=True)
    with pytest.raises(AssertionError):
        assert_close(np.array([np.nan]), np.array([1.0]), equal_nan=True)


def test_assert_close_tolerances_together_and_msg():
    with pytest.raises(ValueError, match="atol given without rtol"):
        assert_close(np.array([1.0]), np.array([1.05]), atol=0.1)
    with pytest.raises(ValueError, match=">= 0"):
        assert_close(np.array([1.0]), np.array([1.0]), rtol=-1.0, atol=0.0)
    with pytest.raises(AssertionError, match="^my message$"):
        assert_close(np.array([1.0]), np.array([2.0]), msg="my message")
    with pytest.raises(AssertionError, match=r"(?s)^context\nassert_close: values are not"):
        assert_close(np.array([1.0]), np.array([2.0]), msg=lambda m: "context\n" + m)


# ---- strategies keep their promises ---------------------------------------------------------
@given(shapes(min_dims=2, max_dims=3, min_side=2, max_side=4))
def test_shapes_respect_bounds(shape):
    assert 2 <= len(shape) <= 3 and all(2 <= s <= 4 for s in shape)


@given(arrays(shapes(), lo=-2.0, hi=5.0))
def test_arrays_are_finite_in_range_and_spread(a):
    assert a.dtype == np.float64 and np.isfinite(a).all()
    assert a.min() >= -2.0 and a.max() <= 5.0
    gaps = np.diff(np.sort(a.ravel()))
    assert gaps.size == 0 or gaps.min() >= 7.0 / (2 * a.size) * (1 - 1e-9)


@given(arrays((6, 7), avoid=(0.0, 1.0), margin=0.2))
def test_arrays_avoid_kinks(a):
    assert np.abs(a).min() >= 0.2 - 1e-12 and np.abs(a - 1.0).min() >= 0.2 - 1e-12


@given(arrays(st.just((3, 2)), dtype=np.float32))
def test_arrays_dtype_and_shape_strategy(a):
    assert a.shape == (3, 2) and a.dtype == np.float32


@given(S.broadcastable_shapes(3))
def test_broadcastable_shapes_broadcast_with_numpy(three):
    assert len(three) == 3
    result = np.broadcast_shapes(*three)
    operands = [np.zeros(s) for s in three]
    assert (operands[0] + operands[1] * operands[2]).shape == result


@given(S.normalizable_rows(lo=-1.0, hi=1.0))
def test_normalizable_rows_have_spread(x):
    assert x.ndim in (2, 3) and x.shape[-1] >= 2
    assert x.std(axis=-1).min() >= 2.0 / 8


@given(S.degenerate_rows())
def test_degenerate_rows_are_constant_or_single(x):
    assert x.ndim in (2, 3) and np.isfinite(x).all()
    assert x.shape[-1] == 1 or (x == x[..., :1]).all()


@given(S.attention_inputs())
def test_attention_inputs_have_promised_structure(inputs):
    q, k, v = inputs.q, inputs.k, inputs.v
    b, h, length, e = q.shape
    source = k.shape[2]
    assert k.shape == (b, h, source, e) and v.shape[:3] == (b, h, source)
    assert q.dtype == k.dtype == v.dtype == np.float64
    mask = inputs.mask
    if inputs.mask_kind == "none":
        assert mask is None and inputs.attn_mask is None and not inputs.is_causal
        return
    assert np.broadcast_shapes(mask.shape, (b, h, length, source)) == (b, h, length, source)
    if inputs.mask_kind == "bool":
        assert mask.dtype == np.bool_ and mask.any(axis=-1).all()
    elif inputs.mask_kind == "float":
        assert mask.dtype == np.float64 and np.isfinite(mask).all()
    else:
        assert inputs.is_causal and inputs.attn_mask is None
        assert np.array_equal(mask, np.tril(np.ones((length, source), dtype=bool)))


def test_attention_inputs_may_fully_mask_rows_when_allowed():
    found = hypothesis.find(S.attention_inputs(mask_kinds=("bool",), allow_fully_masked=True),
                            lambda a: not a.mask.any(axis=-1).all(),
                            settings=settings(database=None))
    assert not found.mask.any(axis=-1).all()


def test_strategies_reject_bad_arguments():
    with pytest.raises(ValueError, match="mask_kinds"):
        S.attention_inputs(mask_kinds=("sparse",))
    with pytest.raises(ValueError, match="nothing of"):
        S.arrays((2,), lo=-0.1, hi=0.1, avoid=(0.0,), margin=0.5)


def test_arrays_reach_both_ends_of_the_range():
    # values once stayed in the middle half of each of n bins: one value never left
    # [lo + L/4, hi - L/4], so arrays((), lo=-20, hi=20) never drew |x| > 10
    single = [S.spread_values(np.random.default_rng(seed), 1, -3.0, 3.0)[0] for seed in range(400)]
    assert min(single) < -2.9 and max(single) > 2.9
    three = np.concatenate([S.spread_values(np.random.default_rng(seed), 3, -3.0, 3.0)
                            for seed in range(400)])
    assert three.min() < -2.95 and three.max() > 2.95


@given(arrays(shapes(max_dims=2, max_side=6), lo=-1.0, hi=1.0, avoid=(0.0,), margin=0.6))
def test_arrays_spacing_counts_only_the_allowed_length(a):
    # allowed: [-1, -0.6] and [0.6, 1], L = 0.8: any two at least L / 2n apart
    assert np.abs(a).min() >= 0.6 - 1e-12 and np.abs(a).max() <= 1.0
    gaps = np.diff(np.sort(a.ravel()))
    assert gaps.size == 0 or gaps.min() >= 0.8 / (2 * a.size) * (1 - 1e-9)


def test_strategies_explain_impossible_arguments():
    for kwargs, message in (({"lo": 1.0, "hi": 1.0}, "lo < hi"),
                            ({"lo": 2.0, "hi": 1.0}, "lo < hi"), ({"lo": -np.inf}, "finite"),
                            ({"margin": -0.1}, "margin"), ({"dtype": np.int64}, "floating"),
                            ({"dtype": np.complex128}, "floating")):
        with pytest.raises(ValueError, match=message):
            S.arrays((2,), **kwargs)
    with pytest.raises(ValueError, match="max_features=3 < min_features=5"):
        S.normalizable_rows(min_features=5, max_features=3)
    with pytest.raises(ValueError, match="lo < hi"):
        S.normalizable_rows(lo=1.0, hi=-1.0)
    with pytest.raises(ValueError, match="lo <= hi"):
        S.degenerate_rows(lo=1.0, hi=-1.0)
    with pytest.raises(ValueError, match="floating"):
        S.attention_inputs(dtype=np.int32)


@given(arrays(4), arrays([2, 3]), arrays(np.int64(2), avoid=0.0))
def test_arrays_take_int_and_list_shapes_as_hypothesis_does(a, b, c):
    assert a.shape == (4,) and b.shape == (2, 3) and c.shape == (2,) and np.abs(c).min() >= 0.1


@given(S.degenerate_rows(max_features=1), S.degenerate_rows(max_features=3, dtype=np.float32),
       S.normalizable_rows(dtype=np.float32), S.attention_inputs(dtype=np.float32))
def test_strategies_respect_max_features_and_dtype(single, constant, rows, attention):
    assert single.shape[-1] == 1 and constant.shape[-1] <= 3
    assert constant.dtype == rows.dtype == attention.q.dtype == attention.v.dtype == np.float32


def test_every_strategy_has_a_docstring():
    for name in ("shapes", "arrays", "broadcastable_shapes", "normalizable_rows", "degenerate_rows",
                 "attention_inputs"):
        assert getattr(S, name).__doc__, name
    assert S.AttentionInputs.__doc__


# ---- profiles and conftest --------------------------------------------------------------------
def test_profiles_registered_and_chosen_by_env(monkeypatch):
    original = os.environ.get("HYPOTHESIS_PROFILE", "")
    ci = settings.get_profile("ci")
    assert ci.derandomize and ci.deadline is None and ci.database is None and ci.print_blob
    assert settings.get_profile("dev").max_examples <= 10
    assert settings.get_profile("thorough").max_examples >= 200
    try:
        monkeypatch.setenv("HYPOTHESIS_PROFILE", "thorough")
        assert register_profiles() == "thorough" and settings.default.max_examples >= 200
        monkeypatch.setenv("HYPOTHESIS_PROFILE", "nonsense")
        with pytest.raises(ValueError, match="dev"):
            register_profiles()
    finally:
        monkeypatch.setenv("HYPOTHESIS_PROFILE", original)
        register_profiles()


def test_conftest_in_ci_fails_when_torch_is_missing(monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    path = pathlib.Path(__file__).with_name("conftest.py")
    spec = importlib.util.spec_from_file_location("conftest_under_ci", path)
    with pytest.raises(RuntimeError, match="CI run without 'torch'"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


# ---- the README example, verbatim ("Testing your own ops with tinynorm.testing") --------------
class Softplus(tn.Function):
    """y = log(1 + exp(x)), computed as logaddexp(0, x) so that large x cannot overflow."""

    @staticmethod
    def forward(ctx, x):
        xp = tn.backend.array_module(x)
        y = xp.logaddexp(0, x)
        ctx.save_for_backward(y)  # the output alone gives the derivative, see backward
        return y

    @staticmethod
    def backward(ctx, grad_out):
        """dy/dx = exp(x) / (1 + exp(x)) = sigmoid(x). Since exp(-y) = 1 / (1 + exp(x)),
        sigmoid(x) = 1 - exp(-y) = -expm1(-y): y suffices (expm1 stays exact for tiny y)."""
        (y,) = ctx.saved_tensors
        xp = tn.backend.array_module(y)
        return grad_out * -xp.expm1(-y)


@given(arrays(shapes(max_dims=3), lo=-20.0, hi=20.0))
def test_softplus_gradient(x):
    assert gradcheck(Softplus.apply, tn.tensor(x, requires_grad=True))


def test_strategy_errors_name_the_strategy_and_avoid_takes_a_numpy_scalar():
    """The range errors began "strategies:", whichever strategy was called, and a NumPy
    scalar for ``avoid`` raised "not iterable"."""
    with pytest.raises(ValueError, match=r"^arrays: need finite lo < hi"):
        S.arrays((2,), lo=1.0, hi=0.0)
    with pytest.raises(ValueError, match=r"^normalizable_rows: need finite lo < hi"):
        S.normalizable_rows(lo=2.0, hi=2.0)
    S.arrays((2,), avoid=np.float32(0.0))  # one point, as avoid=0.0
