"""F.cross_entropy and F.embedding / nn.Embedding: PyTorch parity, finite differences, errors.

Tolerances: float64 within 1e-10 relative (atol 1e-12 · max|expected|, for entries that
cancel to near zero); float32 with PyTorch's own float32 tolerance (rtol 1.3e-6, atol 1e-5,
tinynorm.testing.assert_close's default): the logits are O(1) and each loss sums at most a
few dozen terms, so summation order moves results by a few float32 ulps only.
Upstream gradients are random normal, never all ones.
"""
from __future__ import annotations

import functools
import math
import zlib

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")  # conftest.py makes this an error in CI
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tinynorm as tn  # noqa: E402
from tinynorm.testing import assert_close, gradcheck  # noqa: E402
from tinynorm.testing import strategies as tst  # noqa: E402
from tinynorm.testing.compare import to_host as host  # noqa: E402
from torch_pairs import close  # noqa: E402

F = tn.nn.functional


# ---- cross_entropy: PyTorch parity ---------------------------------------------------------
CE_CASES = [  # (id, logits shape, target shape, kwargs)
    ("2d", (6, 5), (6,), {}),
    ("2d-sum", (6, 5), (6,), {"reduction": "sum"}),
    ("2d-none", (6, 5), (6,), {"reduction": "none"}),
    ("unbatched", (5,), (), {}),
    ("unbatched-none", (5,), (), {"reduction": "none"}),
    ("spatial", (2, 5, 3, 2), (2, 3, 2), {}),
    ("spatial-none", (2, 5, 3), (2, 3), {"reduction": "none", "label_smoothing": 0.2}),
    ("ignore-default", (7, 4), (7,), {"ignore": -100}),
    ("ignore-class", (7, 4), (7,), {"ignore_index": 2}),
    ("ignore-none", (7, 4), (7,), {"ignore": -100, "reduction": "none"}),
    ("smooth", (6, 5), (6,), {"label_smoothing": 0.1}),
    ("smooth-ignore", (6, 5), (6,), {"label_smoothing": 0.3, "ignore": -100}),
    ("smooth-sum", (6, 5), (6,), {"label_smoothing": 0.3, "reduction": "sum"}),
    ("weight", (6, 5), (6,), {"weight": True}),
    ("weight-none", (6, 5), (6,), {"weight": True, "reduction": "none"}),
    ("weight-ignore", (8, 5), (8,), {"weight": True, "ignore": -100}),
    ("weight-smooth-ignore", (8, 5), (8,), {"weight": True, "label_smoothing": 0.25,
                                            "ignore": -100}),
    ("weight-smooth-sum", (8, 5), (8,), {"weight": True, "label_smoothing": 0.25,
                                         "reduction": "sum"}),
    ("smooth-1", (4, 3), (4,), {"label_smoothing": 1.0}),
    ("large-logits", (4, 6), (4,), {"scale": 300.0}),  # exp would overflow without the max shift
    ("no-rows-sum", (0, 4), (0,), {"reduction": "sum"}),  # no rows' mean: the test below
    ("no-rows-none", (0, 4), (0,), {"reduction": "none", "weight": True}),
]


def ce_inputs(rng, x_shape, t_shape, kwargs):
    kwargs = dict(kwargs)
    classes = x_shape[0] if len(x_shape) == 1 else x_shape[1]
    x = rng.standard_normal(x_shape) * kwargs.pop("scale", 1.0)
    t = rng.integers(0, classes, t_shape)
    ignore = kwargs.pop("ignore", None)
    if ignore is not None:
        t.flat[::3] = ignore  # every third row ignored
        kwargs["ignore_index"] = ignore
    w = rng.uniform(0.2, 2.0, classes) if kwargs.pop("weight", False) else None
    return x, t, w, kwargs


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CE_CASES, ids=[c[0] for c in CE_CASES])
def test_cross_entropy_matches_torch(case, dtype):
    _, x_shape, t_shape, kwargs = case
    rng = np.random.default_rng(zlib.crc32(case[0].encode()))  # fixed per case, unlike hash()
    x, t, w, kwargs = ce_inputs(rng, x_shape, t_shape, kwargs)
    x = x.astype(dtype)
    w = None if w is None else w.astype(dtype)

    xt = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(
        xt, torch.tensor(t), weight=None if w is None else torch.tensor(w), **kwargs)
    upstream = rng.standard_normal(tuple(expected.shape)).astype(dtype) + 0.5
    expected.backward(torch.tensor(upstream))

    xs = tn.tensor(x, requires_grad=True)
    loss = F.cross_entropy(xs, tn.tensor(t), weight=None if w is None else tn.tensor(w), **kwargs)
    loss.backward(tn.tensor(upstream))

    assert loss.dtype == xs.dtype and tuple(loss.shape) == tuple(expected.shape)
    compare = (functools.partial(close, scale_atol=True) if dtype == "float64"
               else assert_close)
    compare(loss.detach(), expected.detach().numpy())
    compare(xs.grad, xt.grad.numpy())


@pytest.mark.parametrize("rows", [3, 0])
def test_cross_entropy_every_row_ignored_gives_nan_and_zero_gradient_as_torch(rows):
    """The mean over no counted rows (all ignored, or none at all) is 0/0: nan, as torch."""
    x = np.random.default_rng(0).standard_normal((rows, 4))
    t = np.full(rows, -100)
    xs = tn.tensor(x, requires_grad=True)
    loss = F.cross_entropy(xs, tn.tensor(t))
    loss.backward(tn.tensor(0.7))
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.cross_entropy(xt, torch.tensor(t)).backward(torch.tensor(0.7))
    assert np.isnan(loss.item())
    assert np.array_equal(host(xs.grad), xt.grad.numpy()) and not host(xs.grad).any()


def test_cross_entropy_is_one_fused_node():
    """The backward runs once on the probabilities, not through log_softmax and a gather."""
    x = tn.randn(4, 3, requires_grad=True)
    loss = F.cross_entropy(x, tn.tensor([0, 2, 1, 2]))
    assert loss.grad_fn.name == "CrossEntropyBackward"
    assert all(e is x for e in loss.grad_fn.edges if e is not None)


def test_cross_entropy_saves_p_and_the_callers_target_and_weight_only():
    """It saved three per-row arrays made in forward (safe targets, row mask, w_t: 13 bytes
    a row); backward rebuilds them from the target and weights it holds anyway."""
    x = tn.randn(4, 3, requires_grad=True)
    target, weight = tn.tensor([0, 2, -100, 2]), tn.tensor([0.5, 1.0, 2.0])
    loss = F.cross_entropy(x, target, weight=weight)
    p, saved_target, saved_weight = loss.grad_fn.saved_tensors
    assert p.shape == (4, 3) and saved_target is target.data and saved_weight is weight.data


# ---- cross_entropy: finite differences ------------------------------------------------------
@st.composite
def ce_problems(draw):
    """Logits of 1 or 2 trailing spatial dims too, and an ignore_index that is -1 or one of
    the classes (whose rows then count nowhere, weight and smoothing included)."""
    rows = draw(st.integers(1, 5))
    classes = draw(st.integers(1, 6))
    spatial = draw(st.sampled_from([(), (2,), (1, 3)]))
    x = draw(tst.arrays((rows, classes) + spatial))
    ignore = draw(st.sampled_from([-1, classes - 1]))
    n_targets = rows * math.prod(spatial)
    t = np.array(draw(st.lists(st.integers(-1, classes - 1), min_size=n_targets,
                               max_size=n_targets))).reshape((rows,) + spatial)
    if ignore != -1:
        t[t == -1] = ignore
    kwargs = {"ignore_index": ignore,
              "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
              "label_smoothing": draw(st.sampled_from([0.0, 0.15, 0.5]))}
    if draw(st.booleans()):
        kwargs["weight"] = draw(tst.arrays((classes,), lo=0.3, hi=2.0))
    return x, t, kwargs


@settings(max_examples=20)
@given(ce_problems())
def test_cross_entropy_gradcheck(problem):
    x, t, kwargs = problem
    weight = kwargs.pop("weight", None)
    target = tn.tensor(t)
    w = None if weight is None else tn.tensor(weight)
    if kwargs["reduction"] == "mean" and not (t != kwargs["ignore_index"]).any():
        kwargs["reduction"] = "sum"  # all rows ignored: the mean is 0/0
    gradcheck(lambda x: F.cross_entropy(x, target, weight=w, **kwargs),
              (tn.tensor(x, requires_grad=True),))


def test_cross_entropy_spatial_gradcheck():
    rng = np.random.default_rng(1)
    x = tn.tensor(rng.standard_normal((2, 3, 4)), requires_grad=True)
    t = tn.tensor(np.array([[0, 2, -100, 1], [1, 1, 0, 2]]))
    gradcheck(lambda x: F.cross_entropy(x, t, label_smoothing=0.2), (x,))


# ---- cross_entropy: errors -------------------------------------------------------------------
@pytest.mark.parametrize("x_shape, target, kwargs, error, words", [
    ((3, 4), [0, 4, 1], {}, IndexError, "target 4 is out of bounds for 4 classes"),
    ((3, 4), [0, -5, 1], {}, IndexError, "target -5 is out of bounds"),
    ((3, 4), [0, 1], {}, ValueError, "needs a target of shape (3,)"),
    ((3, 4), [0.0, 1.0, 2.0], {}, TypeError, "integer tensor of class indices"),
    ((3, 4), [0, 1, 2], {"reduction": "avg"}, ValueError, "reduction='avg' is not valid"),
    ((3, 4), [0, 1, 2], {"label_smoothing": 1.5}, ValueError, "between 0.0 and 1.0"),
    ((3, 4), [0, 1, 2], {"weight": np.ones(3)}, ValueError, "expected shape (4,)"),
])
def test_cross_entropy_errors_name_the_problem(x_shape, target, kwargs, error, words):
    if "weight" in kwargs:
        kwargs["weight"] = tn.tensor(kwargs["weight"], dtype=tn.float32)
    with pytest.raises(error, match="cross_entropy") as info:
        F.cross_entropy(tn.randn(*x_shape), tn.tensor(target), **kwargs)
    assert words in str(info.value)


# ---- embedding -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("idx_shape, padding_idx", [
    ((12,), None), ((3, 5), None), ((3, 5), 2), ((2, 3, 4), -1), ((), None), ((0,), None)])
def test_embedding_matches_torch_with_repeated_indices(idx_shape, padding_idx, dtype):
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((6, 4)).astype(dtype)
    idx = rng.integers(0, 6, idx_shape)  # 6 rows: most shapes repeat indices for sure
    if idx.size >= 4:
        idx.flat[:4] = [5, 5, 0, 5]
    upstream = rng.standard_normal(idx_shape + (4,)).astype(dtype)

    wt = torch.tensor(weight, requires_grad=True)
    expected = torch.nn.functional.embedding(torch.tensor(idx), wt, padding_idx=padding_idx)
    expected.backward(torch.tensor(upstream))
    ws = tn.tensor(weight, requires_grad=True)
    out = F.embedding(tn.tensor(idx), ws, padding_idx=padding_idx)
    out.backward(tn.tensor(upstream))

    assert np.array_equal(host(out), expected.detach().numpy())  # a lookup is exact
    compare = (functools.partial(close, scale_atol=True) if dtype == "float64"
               else assert_close)
    compare(ws.grad, wt.grad.numpy())
    if idx.size >= 4:  # row 5 was looked up at least three times: its gradient is their sum
        rows = (idx == 5).reshape(-1)
        summed = upstream.reshape(-1, 4)[rows].sum(axis=0)
        if padding_idx is None:
            compare(host(ws.grad)[5], summed)
        else:
            assert not host(ws.grad)[padding_idx % 6].any()


@settings(max_examples=15)
@given(rows=st.integers(1, 5), dim=st.integers(1, 3),
       idx=st.lists(st.integers(0, 4), min_size=1, max_size=8), data=st.data())
def test_embedding_gradcheck(rows, dim, idx, data):
    """Without padding_idx: the padding row's zero gradient is a convention (PyTorch's),
    not the derivative, so finite differences would rightly disagree there; the parity
    test above covers it."""
    weight = data.draw(tst.arrays((5, dim)))
    indices = tn.tensor(np.array(idx[: rows * 2]))
    gradcheck(lambda w: F.embedding(indices, w), (tn.tensor(weight, requires_grad=True),))


def test_embedding_with_no_features_matches_torch():
    """An (8, 0) table: lookups of no numbers, and an (8, 0) gradient, as PyTorch; tinynorm
    once failed to reshape the empty upstream gradient to (-1, 0)."""
    idx = np.array([[1, 2], [2, 7]])
    ws = tn.tensor(np.zeros((8, 0)), requires_grad=True)
    out = F.embedding(tn.tensor(idx), ws)
    out.backward(np.zeros((2, 2, 0)))
    wt = torch.zeros((8, 0), dtype=torch.float64, requires_grad=True)
    expected = torch.nn.functional.embedding(torch.tensor(idx), wt)
    expected.backward(torch.zeros((2, 2, 0), dtype=torch.float64))
    assert out.shape == tuple(expected.shape) == (2, 2, 0)
    assert host(ws.grad).shape == tuple(wt.grad.shape) == (8, 0)


def test_embedding_gradient_has_the_same_bits_on_every_run():
    """Thousands of lookups of a few rows, in float32, where the order of a sum shows in its
    last bits: two backward passes give identical gradients. On a GPU this is what the sorted
    scatter (ops._adjoint.sorted_scatter_add) is for: CuPy's atomic scatter, rerun on the same
    lookups on an H100, gave other bits."""
    rng = np.random.default_rng(8)
    idx = tn.tensor(rng.integers(0, 5, 20000))
    upstream = tn.tensor(rng.standard_normal((20000, 64)).astype(np.float32))
    table = rng.standard_normal((5, 64)).astype(np.float32)
    grads = []
    for _ in range(2):
        weight = tn.tensor(table, requires_grad=True)
        F.embedding(idx, weight).backward(upstream)
        grads.append(host(weight.grad))
    np.testing.assert_array_equal(grads[0].view(np.uint32), grads[1].view(np.uint32))
    expected = np.zeros((5, 64))
    np.add.at(expected, host(idx.data), host(upstream.data).astype(np.float64))
    # about 4000 float32 terms a row, sums of size ~60: float32 rounding stays far inside
    np.testing.assert_allclose(grads[0], expected, rtol=1e-4, atol=1e-3)


def test_embedding_module_init_and_padding_like_torch():
    tn.manual_seed(0)
    layer = tn.nn.Embedding(400, 50, padding_idx=3)
    weight = host(layer.weight)
    assert weight.shape == (400, 50) and weight.dtype == np.float32
    assert not weight[3].any()
    others = np.delete(weight, 3, axis=0)
    # N(0, 1): 19,950 samples put the sample mean within 0.03 and std within 0.03 of the
    # truth with probability far beyond 1 − 1e-6 (standard errors 0.007 and 0.005)
    assert abs(others.mean()) < 0.03 and abs(others.std() - 1) < 0.03
    assert repr(layer) == "Embedding(400, 50, padding_idx=3)"
    assert list(layer.state_dict()) == list(torch.nn.Embedding(400, 50).state_dict())

    out = layer(tn.tensor([[3, 1], [1, 3]]))
    out.backward(tn.tensor(np.random.default_rng(0).standard_normal((2, 2, 50)), dtype=tn.float32))
    grad = host(layer.weight.grad)
    assert not grad[3].any() and grad[1].any()
    assert np.count_nonzero(grad.any(axis=1)) == 1


def test_embedding_from_pretrained_shares_and_freezes():
    table = tn.tensor(np.arange(12.0).reshape(4, 3))
    layer = tn.nn.Embedding.from_pretrained(table)
    assert layer.weight.data is table.data and not layer.weight.requires_grad
    assert np.array_equal(host(layer(tn.tensor([2]))), [[6.0, 7.0, 8.0]])


@pytest.mark.parametrize("idx, kwargs, error, words", [
    ([0, 6], {}, IndexError, "index 6 is out of range for a table of 6 rows"),
    ([-1, 2], {}, IndexError, "index -1 is out of range"),
    ([0.0, 1.0], {}, TypeError, "indices must be an integer tensor"),
    ([0, 1], {"padding_idx": 6}, ValueError, "padding_idx 6 must be within num_embeddings"),
])
def test_embedding_errors_name_the_problem(idx, kwargs, error, words):
    with pytest.raises(error, match="embedding") as info:
        F.embedding(tn.tensor(idx), tn.randn(6, 2), **kwargs)
    assert words in str(info.value)
