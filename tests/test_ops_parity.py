"""PyTorch parity of every core op: the forward values and every input's gradient.

One table drives everything. A row names the op, a function ``fn(lib, *inputs)`` that is
written once and run with ``lib`` = tinynorm and ``lib`` = torch (their APIs share names;
where PyTorch spells an op differently, as torch.amax for tinynorm's values-only max, a small
helper branches on ``lib``), and the input makers.
Float inputs require grad; bool and int inputs (masks, indices) do not. The upstream gradient
is random normal, never all ones (a ones gradient hides a backward that sums where it should
weight).

Tolerances:
* float64: within 1e-10 relative. ``atol`` is 1e-12 times the largest |expected|, so an
  element that cancels to near zero (a − b with a ≈ b, a sum of mixed signs) is not held to
  a relative precision its float64 rounding cannot give; everything else is held to 1e-10.
* float32: PyTorch's own float32 tolerance (``torch.testing.assert_close``: rtol 1.3e-6,
  atol 1e-5), the defaults of ``tinynorm.testing.assert_close``. Inputs are O(1) and every
  reduction has at most a few dozen terms, so summation-order differences stay a few float32
  ulps, inside that bound. (The 1e4-scale softmax rows are max-shifted in both libraries;
  their outputs differ by rounding of the shifted values only.)
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import tinynorm as tn
from tinynorm.testing import assert_close


# ---- input makers: each takes a NumPy Generator and returns a host array -----------------
def normal(*shape):
    return lambda rng: rng.standard_normal(shape)


def positive(*shape):
    return lambda rng: rng.uniform(0.5, 2.0, shape)


def away_from_zero(*shape):
    return lambda rng: rng.choice([-1.0, 1.0], shape) * rng.uniform(0.5, 2.0, shape)


def with_zeros(*shape):
    """Normal values with about a third set to exactly 0 (relu's and abs's kink)."""
    return lambda rng: np.where(rng.random(shape) < 0.35, 0.0, rng.standard_normal(shape))


def with_ties(*shape):
    """Small integers as floats: many equal maxima, to test how max shares its gradient."""
    return lambda rng: rng.integers(0, 3, shape).astype(np.float64)


def scaled(scale, *shape):
    return lambda rng: scale * rng.standard_normal(shape)


def bools(*shape):
    return lambda rng: rng.random(shape) < 0.5


def indices(high, *shape):
    """int64 indices in [0, high); with shape larger than high, repeats are certain."""
    return lambda rng: rng.integers(0, high, shape)


def fixed(array):
    return lambda rng: np.array(array)


def amax(lib, x, dim, keepdim=False):
    """tinynorm's max(dim) returns values only, which is torch.amax."""
    if lib is tn:
        return x.max(dim, keepdim)
    return torch.amax(x, dim=() if dim is None else dim, keepdim=keepdim)


def amin(lib, x, dim, keepdim=False):
    """tinynorm's min(dim) returns values only, which is torch.amin."""
    if lib is tn:
        return x.min(dim, keepdim)
    return torch.amin(x, dim=() if dim is None else dim, keepdim=keepdim)


@dataclass
class Case:
    op: str  # the op under test (several rows may share it)
    label: str  # what this row adds
    fn: object  # fn(lib, *inputs) -> Tensor or tuple of Tensors
    inputs: list  # input makers

    @property
    def id(self):
        return f"{self.op}-{self.label}"


C = Case
DIMS = (None, 1, -1, (0, 2), (0, -1), (-1, -3))  # reductions' dims, some counted from the end
CASES = [
    # ---- arithmetic with broadcasting ----
    C("add", "same", lambda lib, a, b: a + b, [normal(3, 4), normal(3, 4)]),
    C("add", "bcast-trailing", lambda lib, a, b: a + b, [normal(2, 3, 4), normal(4)]),
    C("add", "bcast-both", lambda lib, a, b: lib.add(a, b), [normal(3, 1), normal(1, 4)]),
    C("add", "scalar-left", lambda lib, a: 2.5 + a, [normal(2, 3)]),
    C("add", "0d", lambda lib, a, b: a + b, [normal(), normal(3)]),
    C("add", "empty", lambda lib, a, b: a + b, [normal(0, 4), normal(4)]),
    C("sub", "bcast", lambda lib, a, b: a - b, [normal(2, 1, 4), normal(3, 1)]),
    C("sub", "scalar-left", lambda lib, a: 1.5 - a, [normal(3)]),
    C("sub", "scalar-right", lambda lib, a: a - 1.5, [normal(2, 3)]),
    C("sub", "fn", lambda lib, a, b: lib.sub(a, b), [normal(4, 1), normal(4)]),
    C("mul", "same", lambda lib, a, b: a * b, [normal(3, 4), normal(3, 4)]),
    C("mul", "bcast", lambda lib, a, b: lib.mul(a, b), [normal(2, 3, 1), normal(1, 4)]),
    C("mul", "scalar", lambda lib, a: a * -0.75, [normal(5)]),
    C("mul", "self", lambda lib, a: a * a, [normal(2, 3)]),
    C("div", "same", lambda lib, a, b: a / b, [normal(3, 4), away_from_zero(3, 4)]),
    C("div", "bcast", lambda lib, a, b: lib.div(a, b), [normal(2, 3), away_from_zero(3, 1, 1)]),
    C("div", "scalar-left", lambda lib, b: 2.0 / b, [away_from_zero(4)]),
    C("div", "scalar-right", lambda lib, a: a / -2.5, [normal(3, 2)]),
    C("neg", "2d", lambda lib, a: -a, [normal(3, 4)]),
    C("neg", "fn", lambda lib, a: lib.neg(a), [normal(5)]),
    C("pow", "p=2", lambda lib, x: x ** 2, [normal(3, 4)]),
    C("pow", "p=3", lambda lib, x: lib.pow(x, 3), [normal(5)]),
    C("pow", "p=0.5", lambda lib, x: x ** 0.5, [positive(3, 2)]),
    C("pow", "p=-1.5", lambda lib, x: x ** -1.5, [positive(4)]),
    C("pow", "p=0-at-zero", lambda lib, x: x ** 0, [with_zeros(6)]),
    C("pow", "p=1", lambda lib, x: x ** 1, [normal(2, 2)]),
    C("rpow", "number-base", lambda lib, x: 2.0 ** x, [normal(3, 4)]),
    C("rpow", "fn", lambda lib, x: lib.pow(0.5, x), [normal(5)]),
    # ---- matrix products ----
    C("matmul", "2d", lambda lib, a, b: a @ b, [normal(3, 4), normal(4, 5)]),
    C("matmul", "batched", lambda lib, a, b: lib.matmul(a, b), [normal(2, 3, 4), normal(2, 4, 5)]),
    C("matmul", "bcast-batch", lambda lib, a, b: a @ b, [normal(2, 1, 3, 4), normal(5, 4, 2)]),
    C("matmul", "3d@2d", lambda lib, a, b: a @ b, [normal(2, 3, 4), normal(4, 5)]),
    C("matmul", "1d@2d", lambda lib, a, b: a @ b, [normal(4), normal(4, 5)]),
    C("matmul", "2d@1d", lambda lib, a, b: a @ b, [normal(3, 4), normal(4)]),
    C("matmul", "1d@1d", lambda lib, a, b: a @ b, [normal(4), normal(4)]),
    C("matmul", "1d@3d", lambda lib, a, b: a @ b, [normal(4), normal(2, 4, 5)]),
    C("matmul", "3d@1d", lambda lib, a, b: a @ b, [normal(2, 3, 4), normal(4)]),
    C("matmul", "k=0", lambda lib, a, b: a @ b, [normal(3, 0), normal(0, 2)]),
    C("linear", "2d-bias", lambda lib, x, w, b: lib.nn.functional.linear(x, w, b),
      [normal(5, 4), normal(3, 4), normal(3)]),
    C("linear", "3d-nobias", lambda lib, x, w: lib.nn.functional.linear(x, w),
      [normal(2, 3, 4), normal(6, 4)]),
    C("linear", "4d-bias", lambda lib, x, w, b: lib.nn.functional.linear(x, w, b),
      [normal(2, 1, 3, 4), normal(2, 4), normal(2)]),
    C("linear", "1d-bias", lambda lib, x, w, b: lib.nn.functional.linear(x, w, b),
      [normal(4), normal(3, 4), normal(3)]),
    C("linear", "empty-rows", lambda lib, x, w, b: lib.nn.functional.linear(x, w, b),
      [normal(0, 4), normal(3, 4), normal(3)]),
    C("linear", "no-in-features", lambda lib, x, w, b: lib.nn.functional.linear(x, w, b),
      [normal(2, 5, 0), normal(3, 0), normal(3)]),
    C("linear", "no-out-features", lambda lib, x, w, b: lib.nn.functional.linear(x, w, b),
      [normal(5, 4), normal(0, 4), normal(0)]),
    # ---- pointwise ----
    C("tanh", "2d", lambda lib, x: lib.tanh(x), [scaled(2.0, 3, 4)]),
    C("tanh", "empty-method", lambda lib, x: x.tanh(), [normal(0, 3)]),
    C("relu", "zeros", lambda lib, x: lib.relu(x), [with_zeros(4, 5)]),
    C("relu", "method", lambda lib, x: x.relu(), [normal(7)]),
    C("gelu", "none", lambda lib, x: lib.nn.functional.gelu(x), [scaled(2.0, 3, 5)]),
    C("gelu", "tanh", lambda lib, x: lib.nn.functional.gelu(x, approximate="tanh"),
      [scaled(2.0, 3, 5)]),
    C("gelu", "none-tails", lambda lib, x: lib.nn.functional.gelu(x),
      [fixed([-9.0, -5.0, 0.0, 5.0, 9.0])]),
    C("exp", "2d", lambda lib, x: lib.exp(x), [normal(3, 4)]),
    C("exp", "0d", lambda lib, x: x.exp(), [normal()]),
    C("log", "2d", lambda lib, x: lib.log(x), [positive(3, 4)]),
    C("log", "0d-method", lambda lib, x: x.log(), [positive()]),
    C("sqrt", "2d", lambda lib, x: lib.sqrt(x), [positive(3, 4)]),
    C("sqrt", "3d-method", lambda lib, x: x.sqrt(), [positive(2, 1, 3)]),
    C("abs", "zeros", lambda lib, x: lib.abs(x), [with_zeros(4, 5)]),
    C("abs", "method", lambda lib, x: x.abs(), [away_from_zero(6)]),
    # ---- reductions ----
    *[C(name, f"dim={dim}-keep={keep}",
        (lambda n, d, k: lambda lib, x: getattr(x, n)(dim=d, keepdim=k))(name, dim, keep),
        [normal(2, 3, 4)])
      for name in ("sum", "mean") for dim in DIMS for keep in (False, True)],
    C("sum", "empty-dim", lambda lib, x: x.sum(dim=1), [normal(2, 0, 3)]),
    C("sum", "0d", lambda lib, x: x.sum(), [normal()]),
    C("mean", "fn", lambda lib, x: lib.mean(x, 0), [normal(4, 2)]),
    *[C(name, f"dim={dim}-keep={keep}",
        (lambda n, d, k: lambda lib, x: getattr(x, n)(dim=d, keepdim=k))(name, dim, keep),
        [scaled(3.0, 2, 3, 4)])
      for name in ("var", "std") for dim in DIMS for keep in (False, True)],
    *[C(name, "seed",
        (lambda n: lambda lib, x: getattr(x, n)(dim=-1, keepdim=True, unbiased=False))(name),
        [fixed(np.linspace(-3.0, 3.0, 24).reshape(2, 3, 4) ** 3 + 1e3)])  # |μ| >> σ
      for name in ("var", "std")],
    C("var", "positional", lambda lib, x: x.var(0, False), [normal(5, 3)]),
    C("var", "flag-alone", lambda lib, x: x.var(False), [normal(5, 3)]),
    C("var", "correction", lambda lib, x: lib.var(x, (0, 1), correction=2.5), [normal(4, 3, 2)]),
    C("std", "correction-0", lambda lib, x: lib.std(x, 1, correction=0), [normal(4, 3)]),
    C("std", "constant-rows", lambda lib, x: x.std(dim=1),
      [fixed([[2.0, 2.0, 2.0], [1.0, 2.0, 4.0]])]),
    C("std", "single", lambda lib, x: x.std(dim=0, unbiased=False), [normal(1, 3)]),
    *[C("max", f"dim={dim}-keep={keep}",
        (lambda d, k: lambda lib, x: amax(lib, x, d, k))(dim, keep),
        [normal(2, 3, 4)])
      for dim in DIMS for keep in (False, True)],
    C("max", "ties-all", lambda lib, x: amax(lib, x, None), [with_ties(3, 4)]),
    C("max", "ties-dim", lambda lib, x: amax(lib, x, 1, True), [with_ties(3, 6)]),
    C("max", "ties-tuple", lambda lib, x: amax(lib, x, (0, 2)), [with_ties(3, 2, 3)]),
    *[C("min", f"dim={dim}-keep={keep}",
        (lambda d, k: lambda lib, x: amin(lib, x, d, k))(dim, keep),
        [normal(2, 3, 4)])
      for dim in DIMS for keep in (False, True)],
    C("min", "ties-dim", lambda lib, x: amin(lib, x, 1, True), [with_ties(3, 6)]),
    # ---- shape ----
    C("reshape", "2d", lambda lib, x: x.reshape(6, 4), [normal(2, 3, 4)]),
    C("reshape", "-1", lambda lib, x: lib.reshape(x, (-1,)), [normal(2, 3, 4)]),
    C("reshape", "view", lambda lib, x: x.view(4, -1), [normal(2, 3, 4)]),
    C("reshape", "flatten", lambda lib, x: x.flatten(), [normal(2, 3, 4)]),
    C("reshape", "flatten-1", lambda lib, x: x.flatten(1), [normal(2, 3, 4)]),
    C("reshape", "flatten-0-1", lambda lib, x: lib.flatten(x, 0, 1), [normal(2, 3, 4)]),
    C("transpose", "0-2", lambda lib, x: x.transpose(0, 2), [normal(2, 3, 4)]),
    C("transpose", "neg", lambda lib, x: lib.transpose(x, -1, -2), [normal(2, 3, 4)]),
    C("permute", "201", lambda lib, x: x.permute(2, 0, 1), [normal(2, 3, 4)]),
    C("permute", "T", lambda lib, x: x.T, [normal(3, 4)]),
    C("unsqueeze", "1", lambda lib, x: x.unsqueeze(1), [normal(2, 3)]),
    C("unsqueeze", "-1", lambda lib, x: lib.unsqueeze(x, -1), [normal(2, 3)]),
    C("squeeze", "all", lambda lib, x: x.squeeze(), [normal(2, 1, 3, 1)]),
    C("squeeze", "1", lambda lib, x: x.squeeze(1), [normal(2, 1, 3, 1)]),
    C("squeeze", "not-1", lambda lib, x: x.squeeze(0), [normal(2, 1, 3)]),
    C("squeeze", "tuple", lambda lib, x: lib.squeeze(x, (1, 3)), [normal(2, 1, 3, 1)]),
    C("expand", "new-dims", lambda lib, x: x.expand(2, 3, 4), [normal(3, 1)]),
    C("expand", "-1", lambda lib, x: x.expand(2, -1, 4), [normal(3, 1)]),
    C("expand", "same", lambda lib, x: x.expand(3, 4), [normal(3, 4)]),
    # ---- indexing ----
    C("getitem", "int", lambda lib, x: x[1], [normal(3, 4)]),
    C("getitem", "slices", lambda lib, x: x[:, 1:3], [normal(3, 4)]),
    C("getitem", "step-ellipsis", lambda lib, x: x[..., ::2], [normal(2, 3, 5)]),
    C("getitem", "none-neg", lambda lib, x: x[None, -1], [normal(3, 4)]),
    C("getitem", "int-array-repeats", lambda lib, x, i: x[i], [normal(4, 3), indices(4, 9)]),
    C("getitem", "int-array-2d", lambda lib, x, i: x[i], [normal(4, 3), indices(4, 3, 5)]),
    C("getitem", "int-array-dim1", lambda lib, x, i: x[:, i], [normal(2, 3, 4), indices(3, 7)]),
    C("getitem", "list-in-tuple", lambda lib, x: x[[0, 2, 0, 0], 1:], [normal(3, 4)]),
    C("getitem", "list", lambda lib, x: x[[1, 1, -1]], [normal(3, 4)]),
    C("getitem", "two-arrays", lambda lib, x, i, j: x[i, j],
      [normal(3, 4), indices(3, 10), indices(4, 10)]),
    C("getitem", "bool-mask", lambda lib, x, m: x[m], [normal(3, 4), bools(3, 4)]),
    C("getitem", "bool-rows", lambda lib, x, m: x[m], [normal(5, 2), bools(5)]),
    # ---- selection ----
    C("where", "same", lambda lib, c, a, b: lib.where(c, a, b),
      [bools(3, 4), normal(3, 4), normal(3, 4)]),
    C("where", "bcast", lambda lib, c, a, b: lib.where(c, a, b),
      [bools(3, 1), normal(4), normal(2, 1, 1)]),
    C("where", "scalar-other", lambda lib, c, a: lib.where(c, a, 0.5), [bools(3, 4), normal(3, 4)]),
    C("masked_fill", "same", lambda lib, x, m: x.masked_fill(m, -2.5), [normal(3, 4), bools(3, 4)]),
    C("masked_fill", "bcast", lambda lib, x, m: lib.masked_fill(x, m, 7.0),
      [normal(2, 3, 4), bools(1, 4)]),
    C("masked_fill", "-inf-softmax", lambda lib, x, m: x.masked_fill(m, float("-inf")).softmax(-1),
      [normal(3, 4), fixed([[False, True, True, False]] * 3)]),
    # ---- joining and splitting ----
    C("cat", "dim0", lambda lib, a, b: lib.cat([a, b], dim=0), [normal(2, 3), normal(4, 3)]),
    C("cat", "dim-1-three", lambda lib, a, b, c: lib.cat([a, b, c], -1),
      [normal(2, 1), normal(2, 3), normal(2, 2)]),
    C("cat", "empty-piece", lambda lib, a, b: lib.cat([a, b], 1), [normal(2, 0), normal(2, 3)]),
    C("cat", "same-twice", lambda lib, a: lib.cat([a, a], 0), [normal(2, 3)]),
    C("stack", "dim0", lambda lib, a, b: lib.stack([a, b]), [normal(2, 3), normal(2, 3)]),
    C("stack", "dim-1", lambda lib, a, b, c: lib.stack([a, b, c], dim=-1),
      [normal(2, 3), normal(2, 3), normal(2, 3)]),
    C("split", "size", lambda lib, x: x.split(2, dim=1), [normal(3, 5)]),
    C("split", "sections", lambda lib, x: lib.split(x, [1, 3, 1], 1), [normal(3, 5)]),
    C("split", "one-used", lambda lib, x: x.split(2, dim=0)[1], [normal(5, 2)]),
    C("chunk", "uneven", lambda lib, x: x.chunk(3, dim=0), [normal(7, 2)]),
    C("chunk", "fn", lambda lib, x: lib.chunk(x, 2, -1), [normal(2, 4)]),
    # ---- softmax ----
    C("softmax", "last", lambda lib, x: x.softmax(-1), [scaled(2.0, 3, 5)]),
    C("softmax", "dim0", lambda lib, x: lib.softmax(x, 0), [scaled(2.0, 3, 5)]),
    # near-tied tops: a row that one entry dominates has a gradient of 0 in both libraries
    C("softmax", "huge", lambda lib, x: x.softmax(-1),
      [fixed([[1e4, 1e4 + 0.5, 1e4 - 2.0, -1e4, 0.0],
              [-2e4, -1e4 + 1.5, -1e4, -1e4 - 1.0, -3e4]])]),
    C("log_softmax", "last", lambda lib, x: x.log_softmax(-1), [scaled(2.0, 3, 5)]),
    C("log_softmax", "dim1", lambda lib, x: lib.log_softmax(x, 1), [scaled(2.0, 2, 3, 4)]),
    C("log_softmax", "huge", lambda lib, x: x.log_softmax(-1),
      [fixed([[1e4, -1e4, 0.0], [-2e4, -1e4 + 1.5, -1e4], [3e4, 3e4 + 0.5, 3e4 - 2.0]])]),
    # ---- dtype ----
    C("cast", "to-float32", lambda lib, x: x.to(lib.float32) * 3.0, [normal(3, 4)]),
    C("cast", "to-float16", lambda lib, x: x.to(lib.float16) * 3.0, [normal(3, 4)]),
    C("cast", "double", lambda lib, x: x.double(), [normal(3, 4)]),
    C("cast", "to-float64", lambda lib, x: x.to(dtype=lib.float64), [normal(2, 2)]),
]

CASE_IDS = [c.id for c in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS), "duplicate case ids"


def _make_inputs(case: Case, dtype):
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    arrays = [np.asarray(make(rng)) for make in case.inputs]
    return [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays], rng


def _tn_device():
    return "cuda" if tn.backend.current() == "cupy" else "cpu"


def _run(lib, case: Case, arrays, upstreams, frozen=None):
    """Forward and backward in ``lib``; returns (outputs, input gradients) as host arrays.
    Float inputs require grad, but for input number ``frozen``."""
    needs = [a.dtype.kind == "f" and i != frozen for i, a in enumerate(arrays)]
    if lib is tn:
        tensors = [tn.tensor(a, device=_tn_device(), requires_grad=need)
                   for a, need in zip(arrays, needs)]
        out = case.fn(tn, *tensors)
    else:
        tensors = [torch.tensor(a, requires_grad=need) for a, need in zip(arrays, needs)]
        out = case.fn(torch, *tensors)
    outs = out if isinstance(out, tuple) else (out,)
    if upstreams is None:  # first call: draw the upstream gradients from the output shapes
        return outs, tensors
    if len(outs) == 1:
        outs[0].backward(_as(lib, upstreams[0], outs[0]))
    else:  # several outputs: backward of Σ_k sum(out_k · G_k) sends G_k into output k
        total = sum((o * _as(lib, g, o)).sum() for o, g in zip(outs, upstreams))
        total.backward()
    to_host = ((lambda t: tn.backend.to_numpy(t.data)) if lib is tn
               else (lambda t: t.detach().numpy()))
    grads = [None if t.grad is None
             else (tn.backend.to_numpy(t.grad) if lib is tn else t.grad.numpy())
             for t in tensors]
    return [to_host(o) for o in outs], grads, tensors


def _as(lib, array, like):
    if lib is tn:
        return tn.tensor(array, dtype=like.dtype, device=_tn_device())
    return torch.tensor(array, dtype=like.dtype)


def _check(actual, expected, dtype, what):
    assert actual.shape == expected.shape, (
        f"{what}: shape {actual.shape} != torch's {expected.shape}")
    assert actual.dtype == expected.dtype, (
        f"{what}: dtype {actual.dtype} != torch's {expected.dtype}")
    if dtype == np.float64:
        scale = float(np.max(np.abs(expected), initial=0.0)) if np.isfinite(expected).all() else 1.0
        rtol, atol = 1e-10, 1e-12 * max(scale, 1e-300)
    else:
        rtol = atol = None  # PyTorch's float32 defaults
    try:
        assert_close(actual, expected, rtol=rtol, atol=atol)
    except AssertionError as err:
        raise AssertionError(f"{what}:\n{err}") from None


def _parity(case: Case, dtype, frozen=None):
    arrays, rng = _make_inputs(case, dtype)
    outs, _ = _run(tn, case, arrays, None)
    upstreams = [rng.standard_normal(o.shape) for o in outs]
    tn_outs, tn_grads, tn_inputs = _run(tn, case, arrays, upstreams, frozen)
    th_outs, th_grads, _ = _run(torch, case, arrays, upstreams, frozen)
    assert len(tn_outs) == len(th_outs), (
        f"{case.id}: {len(tn_outs)} outputs, torch has {len(th_outs)}")
    for k, (a, e) in enumerate(zip(tn_outs, th_outs)):
        _check(a, e, dtype, f"{case.id} [{np.dtype(dtype)}] forward output {k}")
    for i, (a, e) in enumerate(zip(tn_grads, th_grads)):
        if e is None:
            assert a is None, f"{case.id}: input {i} got a gradient; torch gives none"
            continue
        assert a is not None, f"{case.id}: input {i} got no gradient; torch gives one"
        _check(a, e, dtype, f"{case.id} [{np.dtype(dtype)}] gradient of input {i}")
    for t in tn_inputs:  # gradients are plain arrays of each input's own dtype, not views
        if t.grad is not None:
            assert tn.backend.is_array(t.grad) and t.grad.dtype == t.dtype


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_parity_float64(case):
    _parity(case, np.float64)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_parity_float32(case):
    _parity(case, np.float32)


GELU_CASES = [c for c in CASES if c.op == "gelu"]


@pytest.mark.parametrize("case", GELU_CASES, ids=[c.id for c in GELU_CASES])
def test_parity_float32_gelu_on_the_numpy_path(case):
    """float32 exact GELU runs the compiled kernel where numba is installed (as in CI), so
    the rows above test that; the NumPy path (SciPy's erfc), which runs without numba, is
    held to the same bound against PyTorch here."""
    with tn.kernels.fused(False):
        _parity(case, np.float32)


def _float_inputs(case: Case) -> list:
    arrays, _ = _make_inputs(case, np.float64)
    return [i for i, a in enumerate(arrays) if a.dtype.kind == "f"]


# every row with two or more float inputs, once with each of them not requiring grad: an
# op saves for backward only what the gradients it must give need (matmul, linear, mul and
# div keep the other operand), and a swap of what is saved shows only there
FROZEN = [(c, i) for c in CASES if len(_float_inputs(c)) > 1 for i in _float_inputs(c)]


@pytest.mark.parametrize("case, frozen", FROZEN, ids=[f"{c.id}-frozen{i}" for c, i in FROZEN])
def test_parity_float64_with_one_input_frozen(case, frozen):
    _parity(case, np.float64, frozen)


def test_every_core_op_has_parity_cases():
    """The table covers the whole list of core ops the project promises."""
    promised = {"add", "sub", "mul", "div", "neg", "pow", "matmul", "linear", "tanh", "relu",
                "gelu", "exp", "log", "sqrt", "abs", "sum", "mean", "max", "reshape", "transpose",
                "permute", "unsqueeze", "squeeze", "expand", "getitem", "where", "masked_fill",
                "cat", "stack", "split", "chunk", "softmax", "log_softmax", "cast"}
    assert promised <= {c.op for c in CASES}
