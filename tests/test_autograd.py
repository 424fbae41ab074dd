"""Graph semantics of the autograd engine: accumulation, retained and freed graphs, grad mode,
memory lifetime, anomaly detection, and user-defined Functions."""
from __future__ import annotations

import gc
import sys
import weakref

import numpy as np
import pytest
import torch

import tinynorm as tn
from tinynorm.testing.compare import to_host as host


def leaf(array, dtype=np.float64):
    return tn.tensor(np.asarray(array, dtype=dtype), requires_grad=True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---- accumulation -----------------------------------------------------------------------------
def test_a_tensor_used_twice_receives_both_contributions(rng):
    x0 = rng.standard_normal(5)
    g = rng.standard_normal(5)
    x = leaf(x0)
    (x * x + x.exp()).backward(g)  # d/dx = 2x + e^x
    np.testing.assert_allclose(host(x.grad), g * (2 * x0 + np.exp(x0)), rtol=1e-14)


def test_a_diamond_graph_matches_torch(rng):
    """Every node must run after all of its consumers: y feeds three paths of different depth."""
    x0, g = rng.standard_normal((3, 4)), rng.standard_normal(4)

    def f(lib, x):
        y = x.exp()
        z = y * y + y.tanh()
        return (z * y).sum(0) + y.mean(0) - z.sum(0) * y[0]

    x, xt = leaf(x0), torch.tensor(x0, requires_grad=True)
    f(tn, x).backward(g)
    f(torch, xt).backward(torch.tensor(g))
    np.testing.assert_allclose(host(x.grad), xt.grad.numpy(), rtol=1e-12)


def test_two_backward_calls_accumulate_into_grad(rng):
    x0, g1, g2 = (rng.standard_normal((3, 2)), rng.standard_normal((3, 2)),
                  rng.standard_normal((3, 2)))
    x = leaf(x0)
    x.tanh().backward(g1)
    first = host(x.grad).copy()
    (x * 3.0).backward(g2)
    np.testing.assert_allclose(first, g1 * (1 - np.tanh(x0) ** 2), rtol=1e-14)
    np.testing.assert_allclose(host(x.grad), first + 3.0 * g2, rtol=1e-14)


def test_leaves_that_received_one_gradient_array_do_not_share_it(rng):
    """a + b hands the same array to a and b (and to a retained c); each leaf must own a copy,
    so a later ``+=`` into one .grad leaves the others and the caller's array alone."""
    a, b = leaf(rng.standard_normal(4)), leaf(rng.standard_normal(4))
    w = tn.tensor(rng.standard_normal(4))
    c = a + b
    c.retain_grad()
    (c * w).backward(rng.standard_normal(4))
    before = {name: host(t.grad).copy() for name, t in (("a", a), ("b", b), ("c", c))}
    np.testing.assert_array_equal(before["a"], before["b"])
    np.testing.assert_array_equal(before["a"], before["c"])
    assert not np.shares_memory(a.grad, b.grad) and not np.shares_memory(a.grad, c.grad)

    g2 = rng.standard_normal(4)
    (a * 2.0).backward(g2)  # accumulates into a.grad in place
    np.testing.assert_array_equal(host(a.grad), before["a"] + 2.0 * g2)
    np.testing.assert_array_equal(host(b.grad), before["b"])
    np.testing.assert_array_equal(host(c.grad), before["c"])

    # the caller's gradient array, passed straight through an add, is never adopted either
    p, q = leaf(np.zeros(3)), leaf(np.zeros(3))
    upstream = rng.standard_normal(3)
    kept = upstream.copy()
    (p + q).backward(upstream)
    p.backward(np.ones(3))
    np.testing.assert_array_equal(upstream, kept)
    np.testing.assert_array_equal(host(q.grad), kept)


def test_leaf_grad_is_a_writable_array_of_its_own_shape_and_dtype(on_cpu):
    """sum's backward is a read-only broadcast view; the leaf must get a real array.
    On the CPU: CuPy arrays have no writeable flag."""
    x = leaf(np.ones((2, 3)), np.float32)
    x.sum().backward()
    assert x.grad.shape == (2, 3) and x.grad.dtype == np.float32 and x.grad.flags.writeable
    x.grad[0, 0] = 5.0
    assert x.grad[1, 2] == 1.0


def test_non_leaf_grads_are_not_kept_unless_retained(rng):
    x = leaf(rng.standard_normal(3))
    h = x * 2.0
    kept = x * 3.0
    kept.retain_grad()
    g = rng.standard_normal(3)
    (h * kept).backward(g)
    assert h.grad is None
    assert not h.is_leaf and x.is_leaf
    np.testing.assert_allclose(host(kept.grad), g * host(h), rtol=1e-15)
    with pytest.raises(RuntimeError, match="retain_grad"):
        tn.tensor([1.0]).retain_grad()


def test_a_leaf_frozen_between_forward_and_backward_gets_no_gradient_as_in_torch(rng):
    """requires_grad_(False) after forward: PyTorch skips the leaf when the gradient
    arrives; a leaf still training, and a retained intermediate, get theirs."""
    w0, b0, x0 = rng.standard_normal((3, 2)), rng.standard_normal(3), rng.standard_normal((4, 2))
    upstream = rng.standard_normal((4, 3))  # the same on both sides, and not all ones
    got = []
    for lib in (tn, torch):
        w, b = lib.tensor(w0, requires_grad=True), lib.tensor(b0, requires_grad=True)
        old = rng.standard_normal(3)
        b.grad = old.copy() if lib is tn else torch.tensor(old)  # an earlier gradient stays
        h = lib.tensor(x0) @ w.T + b
        h.retain_grad()
        loss = (h * h * lib.tensor(upstream)).sum()
        w.requires_grad_(False)
        b.requires_grad_(False)
        loss.backward()
        got.append((w.grad, host(h.grad)))
        np.testing.assert_array_equal(host(b.grad), old)
    (w_grad, h_grad), (torch_w_grad, torch_h_grad) = got
    assert w_grad is None and torch_w_grad is None
    np.testing.assert_allclose(h_grad, torch_h_grad, rtol=1e-12)


def test_freezing_one_leaf_leaves_the_others_their_gradients(rng):
    x0, y0 = rng.standard_normal(3), rng.standard_normal(3)
    x, y = leaf(x0), leaf(y0)
    out = x * y
    x.requires_grad_(False)
    g = rng.standard_normal(3)
    out.backward(g)
    assert x.grad is None
    np.testing.assert_allclose(host(y.grad), x0 * g, rtol=1e-15)


# ---- retained and freed graphs -----------------------------------------------------------------
def test_retain_graph_allows_a_second_backward(rng):
    x = leaf(rng.standard_normal(4))
    y = (x * x).exp().sum()
    y.backward(retain_graph=True)
    once = host(x.grad).copy()
    y.backward()
    np.testing.assert_allclose(host(x.grad), 2 * once, rtol=1e-14)


def test_a_second_backward_without_retain_graph_raises_naming_it(rng):
    x = leaf(rng.standard_normal(4))
    y = (x * x).exp().sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()


def test_backward_of_a_non_scalar_needs_a_gradient():
    y = leaf(np.ones((2, 3))) * 2.0
    with pytest.raises(RuntimeError, match=r"scalar outputs.*\(2, 3\)"):
        y.backward()
    with pytest.raises(RuntimeError, match=r"\(3, 2\).*\(2, 3\)"):
        y.backward(np.ones((3, 2)))


def test_backward_refuses_a_torch_gradient_as_ops_do():
    """A torch tensor as gradient was read through __array__ into x.grad, converted
    silently where every op refuses one."""
    torch = pytest.importorskip("torch")
    x = leaf(np.ones(2))
    y = x * 2.0
    with pytest.raises(TypeError, match=r"^backward: gradient is a torch\.Tensor, not a "
                                        r"tinynorm Tensor.*tn\.tensor"):
        y.backward(torch.tensor([1.0, 3.0], dtype=torch.float64))
    assert x.grad is None
    y.backward(tn.tensor(torch.tensor([1.0, 3.0], dtype=torch.float64)))  # made explicitly
    assert x.grad.tolist() == [2.0, 6.0]


def test_backward_of_a_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        tn.tensor([1.0, 2.0]).sum().backward()


def test_deep_chain_needs_no_recursion():
    """10,000 ops deep, ten times Python's default recursion limit."""
    assert sys.getrecursionlimit() < 10_000
    x = leaf([0.5, -1.0])
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward(np.array([1.0, 2.0]))
    np.testing.assert_allclose(host(x.grad), np.array([1.0, 2.0]) * 1.0001 ** 10_000, rtol=1e-10)
    del y  # tearing down the deep graph must not overflow either
    gc.collect()


def test_saved_arrays_are_released_after_backward():
    """An intermediate's array lives as long as the graph saves it, and no longer."""
    def intermediate_graph():
        x = leaf(np.random.default_rng(0).standard_normal((7, 13)))
        h = x.exp()  # Exp saves its output h; Mul saves h and x; Tanh saves its output
        loss = (h * x).tanh().sum()
        return x, loss, weakref.ref(h.data)

    x, loss, h_array = intermediate_graph()
    gc.collect()
    assert h_array() is not None, "the graph should keep what backward needs"
    loss.backward(retain_graph=True)
    gc.collect()
    assert h_array() is not None, "retain_graph=True keeps the saved arrays"
    loss.backward()
    gc.collect()
    assert h_array() is None, "backward must release the arrays the graph saved"
    assert x.grad is not None


def test_saved_arrays_are_released_even_where_no_gradient_arrives():
    """A Function that returns None for an input cuts the flow, not the freeing of the graph."""
    class Stop(tn.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 1.0

        @staticmethod
        def backward(ctx, grad_out):
            return None

    x = leaf(np.random.default_rng(0).standard_normal((7, 13)))
    h = x.exp()
    h_array = weakref.ref(h.data)
    loss = (Stop.apply(h) + x).sum()
    del h
    gc.collect()
    assert h_array() is not None
    loss.backward()
    gc.collect()
    assert h_array() is None
    np.testing.assert_array_equal(host(x.grad), np.ones((7, 13)))


def test_no_grad_records_no_graph_and_saves_nothing():
    contexts = []

    class Spy(tn.Function):
        @staticmethod
        def forward(ctx, x):
            contexts.append(ctx)
            ctx.save_for_backward(x * 2)
            return x * 3

        @staticmethod
        def backward(ctx, grad_out):
            return grad_out * 3

    x = leaf([1.0, 2.0])
    with tn.no_grad():
        assert not tn.is_grad_enabled()
        y = Spy.apply(x)
        h = x.exp()
        h_array = weakref.ref(h.data)
        z = h * x
    assert tn.is_grad_enabled()
    assert y.grad_fn is None and not y.requires_grad and y.is_leaf
    assert z.grad_fn is None and not z.requires_grad
    assert contexts[-1].saved_tensors == ()
    del h
    gc.collect()
    assert h_array() is None  # nothing held on to the exp output for a backward

    Spy.apply(x)  # grad mode: the same Function saves
    assert len(contexts[-1].saved_tensors) == 1


def test_grad_mode_blocks_nest_and_decorate():
    @tn.no_grad()
    def depth(n):  # recursion through one decorator instance must restore grad mode
        assert not tn.is_grad_enabled()
        return 0 if n == 0 else 1 + depth(n - 1)

    assert depth(3) == 3 and tn.is_grad_enabled()
    with tn.no_grad():
        with tn.enable_grad():
            assert tn.is_grad_enabled()
            assert (leaf([1.0]) * 2).requires_grad
        assert not tn.is_grad_enabled()
    assert tn.is_grad_enabled()

    @tn.set_grad_enabled(False)
    def off():
        return tn.is_grad_enabled()

    assert tn.is_grad_enabled(), "decorating must not switch grad mode"
    assert off() is False and tn.is_grad_enabled()
    with tn.set_grad_enabled(False):
        assert not tn.is_grad_enabled()
    assert tn.is_grad_enabled()
    tn.set_grad_enabled(False)  # the function form switches at once
    try:
        assert not tn.is_grad_enabled()
    finally:
        tn.set_grad_enabled(True)
    assert tn.is_grad_enabled()


def test_no_grad_and_enable_grad_decorate_without_parentheses_as_in_torch():
    @tn.no_grad
    def doubled(t):
        """Keeps its name and docstring."""
        return t * 2, tn.is_grad_enabled()

    @torch.no_grad
    def torch_doubled(t):
        return t * 2, torch.is_grad_enabled()

    y, inside = doubled(leaf([1.0]))
    ty, torch_inside = torch_doubled(torch.ones(1, requires_grad=True))
    assert (y.requires_grad, inside) == (ty.requires_grad, torch_inside) == (False, False)
    assert doubled.__name__ == "doubled" and doubled.__doc__ == "Keeps its name and docstring."
    assert tn.is_grad_enabled()

    @tn.enable_grad
    def recorded(t):
        return t * 2

    with tn.no_grad():
        assert recorded(leaf([1.0])).requires_grad and not tn.is_grad_enabled()
    with pytest.raises(TypeError, match=r"no_grad\(\) takes no arguments, or a function to "
                                        r"decorate; got 5 \(int\)"):
        tn.no_grad(5)


def test_set_grad_enabled_needs_its_mode_as_in_torch():
    with pytest.raises(TypeError):
        torch.set_grad_enabled(lambda: None)
    with pytest.raises(TypeError, match=r"set_grad_enabled\(mode\) takes a bool, got a "
                                        r"callable \(function\)"):
        tn.set_grad_enabled(lambda: None)
    assert tn.is_grad_enabled()


def test_outputs_of_non_float_dtype_never_require_grad():
    x = leaf([1.5, -2.0])
    assert not (x > 0).requires_grad
    assert not x.to(tn.int64).requires_grad
    assert not (tn.tensor([1.0]) * 2).requires_grad


# ---- anomaly detection -------------------------------------------------------------------------
def test_detect_anomaly_names_the_forward_that_made_nan():
    x = leaf([1.0, -1.0])
    with np.errstate(invalid="ignore"), tn.detect_anomaly():
        with pytest.raises(RuntimeError, match=r"Log\.forward produced nan"):
            tn.log(x)
    with np.errstate(invalid="ignore"):
        assert np.isnan(host(tn.log(x))[1])  # outside the block: no check


def test_detect_anomaly_names_the_backward_that_made_inf():
    x = leaf([0.0, 4.0])
    with np.errstate(divide="ignore"), tn.detect_anomaly():
        y = (tn.sqrt(x) * 2.0).sum()  # sqrt(0) = 0 is fine; its slope 1/(2·0) is not
        with pytest.raises(RuntimeError, match=r"Sqrt\.backward produced inf"):
            y.backward()
        zero = leaf(0.0)  # 0-d: NumPy hands back scalars, which must be checked all the same
        with pytest.raises(RuntimeError, match=r"Sqrt\.backward produced inf"):
            tn.sqrt(zero).backward()


# ---- user-defined Functions --------------------------------------------------------------------
class ScaledProduct(tn.Function):
    """y = x · w · scale; records needs_input_grad for the test."""

    seen = []

    @staticmethod
    def forward(ctx, x, w, scale):
        ScaledProduct.seen.append(ctx.needs_input_grad)
        ctx.save_for_backward(w if ctx.needs_input_grad[0] else None,
                              x if ctx.needs_input_grad[1] else None)
        ctx.scale = scale
        return x * w * scale

    @staticmethod
    def backward(ctx, grad_out):
        w, x = ctx.saved_tensors
        return (grad_out * w * ctx.scale if ctx.needs_input_grad[0] else None,
                grad_out * x * ctx.scale if ctx.needs_input_grad[1] else None,
                None)


def test_custom_function_needs_input_grad_and_none_gradients(rng):
    x0, w0, g = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(3)
    x, w = leaf(x0), tn.tensor(w0)
    y = ScaledProduct.apply(x, w, 2.5)
    assert ScaledProduct.seen[-1] == (True, False, False)
    assert y.grad_fn.name == "ScaledProductBackward"
    y.backward(g)
    np.testing.assert_allclose(host(x.grad), g * w0 * 2.5, rtol=1e-15)
    assert w.grad is None

    x, w = tn.tensor(x0), leaf(w0)
    ScaledProduct.apply(x, w, 2.5).backward(g)
    assert ScaledProduct.seen[-1] == (False, True, False)
    np.testing.assert_allclose(host(w.grad), g * x0 * 2.5, rtol=1e-15)


class TwoOutputs(tn.Function):
    received = []

    @staticmethod
    def forward(ctx, x):
        return x * 2.0, x * 3.0

    @staticmethod
    def backward(ctx, grad_twice, grad_thrice):
        TwoOutputs.received.append((grad_twice.copy(), grad_thrice.copy()))
        return grad_twice * 2.0 + grad_thrice * 3.0


def test_multi_output_function_gets_zeros_for_unused_outputs(rng):
    x, g = leaf(rng.standard_normal(4)), rng.standard_normal(4)
    _, thrice = TwoOutputs.apply(x)
    thrice.backward(g)
    unused, used = TwoOutputs.received[-1]
    np.testing.assert_array_equal(host(unused), np.zeros(4))
    np.testing.assert_array_equal(host(used), g)
    np.testing.assert_allclose(host(x.grad), 3.0 * g, rtol=1e-15)


def test_split_with_unused_outputs(rng):
    x, w = leaf(rng.standard_normal((5, 2))), rng.standard_normal((2, 2))
    first, middle, last = x.split(2)
    (middle * tn.tensor(w)).sum().backward()
    expected = np.zeros((5, 2))
    expected[2:4] = w
    np.testing.assert_array_equal(host(x.grad), expected)
    assert last.shape == (1, 2) and first.requires_grad


@pytest.mark.parametrize("returned,pattern", [
    (lambda g: (g, g), r"Bad\.backward returned 2 gradients; expected 1"),
    (lambda g: g[:1], r"Bad\.backward returned a gradient of shape \(1,\).*shape \(3,\)"),
    (lambda g: g.astype(np.float16), r"Bad\.backward .*float16.*float32"),
])
def test_engine_reports_a_backward_that_returns_the_wrong_thing(returned, pattern):
    class Bad(tn.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad_out):
            return returned(grad_out)

    with pytest.raises(RuntimeError, match=pattern):
        Bad.apply(leaf(np.ones(3), np.float32)).backward(np.ones(3))
