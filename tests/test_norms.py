"""F.layer_norm, F.rms_norm, nn.LayerNorm and nn.RMSNorm: parity with PyTorch, the numerics
the issue asks for, finite-difference gradchecks, bad input, saved memory and threads.

The key tests run on both paths of the ops (``PATHS``): the fused kernels (on the CPU the
compiled numba loops, the default where numba is installed; CUDA under --backend cupy) and
the reference array code (``tinynorm.kernels.fused(False)``). tests/test_norm_kernels.py
compares the two directly."""
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tinynorm as tn
from tinynorm import kernels, nn
from tinynorm.nn import functional as F
from tinynorm.ops import _rows
from tinynorm.testing import assert_close, gradcheck
from tinynorm.testing import strategies as tst
from tinynorm.testing.compare import to_host as host

from demos._seed_torch import SeedLayerNorm  # the seed tutorial's from-scratch LayerNorm
from torch_pairs import close, needs_numba, num_threads

# float64 parity with PyTorch: within 1e-10 relative, and 1e-10 · max(max|expected|, 1) absolute
TOL64 = dict(rtol=1e-10, atol=1e-10, scale_atol=True, min_scale=1.0)

# kernels.fused(on) for the whole test: True runs the kernels (numba on the CPU, which CI
# installs: conftest fails the run without it), False the reference path.
PATHS = [pytest.param(True, id="kernels", marks=needs_numba),
         pytest.param(False, id="reference")]


def run_ours(fn, x, params, upstream, frozen=()):
    """fn(x, *params) forward and backward with ``upstream``: (y, dx, [dparams]). The inputs
    numbered in ``frozen`` (0 for x, 1... for the params) do not require grad."""
    xt = tn.tensor(x, requires_grad=0 not in frozen)
    pt = [None if p is None else tn.tensor(p, requires_grad=i not in frozen)
          for i, p in enumerate(params, 1)]
    y = fn(xt, *pt)
    y.backward(tn.tensor(upstream))
    return y, xt.grad, [None if p is None else p.grad for p in pt]


def run_torch(fn, x, params, upstream, frozen=()):
    xt = torch.tensor(x, requires_grad=0 not in frozen)
    pt = [None if p is None else torch.tensor(p, requires_grad=i not in frozen)
          for i, p in enumerate(params, 1)]
    y = fn(xt, *pt)
    y.backward(torch.tensor(upstream))
    grads = [None if t is None or t.grad is None else t.grad.numpy() for t in [xt] + pt]
    return y.detach().numpy(), grads[0], grads[1:]


def compare(ours, theirs, what):
    """y, dx and each parameter's gradient; a gradient torch does not give (a frozen input)
    must be missing here too."""
    close(ours[0], theirs[0], **TOL64, what=f"{what} y")
    for name, a, b in zip(["dx", "dparam 1", "dparam 2"], [ours[1]] + ours[2],
                          [theirs[1]] + theirs[2]):
        assert (a is None) == (b is None), f"{what} {name}: {a is None=}, torch {b is None=}"
        if b is not None:
            close(a, b, **TOL64, what=f"{what} {name}")


# (x shape, normalized_shape): all three dims, the last two, empty batches, normalized dims
# of size 0 (rows of no elements: the rows are not x.size / n), an int, and one input large
# enough to be cut into several blocks (so the threads take part).
SHAPES = [((1, 2, 3), (1, 2, 3)), ((2, 2, 3), (2, 3)), ((0, 4), (4,)), ((0, 2, 3), (2, 3)),
          ((2, 3, 0), (0,)), ((2, 0, 3), (0, 3)), ((4, 5), 5), ((3, 1), (1,)),
          ((700, 300), (300,))]
AFFINE = [(True, True), (True, False), (False, True), (False, False)]


def draw(shape, normalized_shape, seed=0):
    rng = np.random.default_rng(seed)
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    x = rng.standard_normal(shape) * 3 + 1
    return x, rng.standard_normal(ns), rng.standard_normal(ns), rng.standard_normal(shape)


# ---- parity with PyTorch (float64 within 1e-10) -----------------------------------------------
FROZEN = [("layer_norm", (0,)), ("layer_norm", (1,)), ("layer_norm", (2,)),
          ("layer_norm", (0, 1)), ("layer_norm", (1, 2)), ("rms_norm", (0,)), ("rms_norm", (1,))]


@pytest.mark.parametrize("op, frozen", FROZEN, ids=[f"{op}-frozen{''.join(map(str, f))}"
                                                    for op, f in FROZEN])
@pytest.mark.parametrize("fused", PATHS)
def test_frozen_inputs_get_no_gradient_and_the_others_torchs(op, frozen, fused):
    """x (0) or a parameter (1 weight, 2 bias) that does not require grad, as raw data or a
    frozen layer: it gets no gradient, the others get PyTorch's, on both paths (the kernels
    skip dx, or the parameters' sums, when nobody asks for them)."""
    x, w, b, upstream = draw((6, 2, 5), (5,), seed=3)
    params = [w, b] if op == "layer_norm" else [w]
    ours_fn = getattr(F, op)
    theirs_fn = getattr(torch.nn.functional, op)
    with kernels.fused(fused):
        ours = run_ours(lambda x, *p: ours_fn(x, (5,), *p), x, params, upstream, frozen)
    theirs = run_torch(lambda x, *p: theirs_fn(x, (5,), *p), x, params, upstream, frozen)
    compare(ours, theirs, f"{op} with inputs {frozen} frozen")


@pytest.mark.parametrize("shape, normalized_shape", SHAPES)
@pytest.mark.parametrize("use_weight, use_bias", AFFINE)
@pytest.mark.parametrize("fused", PATHS)
def test_layer_norm_matches_torch(shape, normalized_shape, use_weight, use_bias, fused):
    x, w, b, upstream = draw(shape, normalized_shape)
    params = [w if use_weight else None, b if use_bias else None]
    with kernels.fused(fused):
        ours = run_ours(lambda x, w, b: F.layer_norm(x, normalized_shape, w, b, 1e-5), x, params,
                        upstream)
    theirs = run_torch(lambda x, w, b: torch.nn.functional.layer_norm(
        x, normalized_shape if isinstance(normalized_shape, tuple) else (normalized_shape,),
        w, b, 1e-5), x, params, upstream)
    compare(ours, theirs, f"layer_norm {shape} over {normalized_shape}")


@pytest.mark.parametrize("shape, normalized_shape", SHAPES)
@pytest.mark.parametrize("use_weight", [True, False])
@pytest.mark.parametrize("eps", [None, 1e-6])
@pytest.mark.parametrize("fused", PATHS)
def test_rms_norm_matches_torch(shape, normalized_shape, use_weight, eps, fused):
    x, w, _, upstream = draw(shape, normalized_shape)
    ns = normalized_shape if isinstance(normalized_shape, tuple) else (normalized_shape,)
    params = [w if use_weight else None]
    with kernels.fused(fused):
        ours = run_ours(lambda x, w: F.rms_norm(x, normalized_shape, w, eps), x, params,
                        upstream)
    theirs = run_torch(lambda x, w: torch.nn.functional.rms_norm(x, ns, w, eps), x, params,
                       upstream)
    compare(ours, theirs, f"rms_norm {shape} over {normalized_shape}")


@pytest.mark.parametrize("shape, normalized_shape", [((2, 3, 4), (4,)), ((2, 3, 4), (3, 4))])
@pytest.mark.parametrize("elementwise_affine", [True, False])
def test_rms_norm_module_matches_torch_default_eps(shape, normalized_shape, elementwise_affine):
    """nn.RMSNorm's default eps is None, i.e. finfo(dtype).eps, exactly as torch.nn.RMSNorm."""
    x, w, _, upstream = draw(shape, normalized_shape, seed=1)
    x = x * 1e-8  # tiny rows: here eps = finfo(float64).eps is not negligible beside mean(x²)
    theirs = torch.nn.RMSNorm(normalized_shape, elementwise_affine=elementwise_affine).double()
    ours = nn.RMSNorm(normalized_shape, elementwise_affine=elementwise_affine, dtype=tn.float64)
    assert ours.eps is None and theirs.eps is None
    if elementwise_affine:
        with torch.no_grad():
            theirs.weight.copy_(torch.tensor(w))
        ours.load_state_dict(theirs.state_dict())
    compare(run_ours(ours, x, [], upstream), run_torch(theirs, x, [], upstream), "nn.RMSNorm")
    if elementwise_affine:
        close(ours.weight.grad, theirs.weight.grad.numpy(), **TOL64, what="nn.RMSNorm weight grad")
    # the default eps matters on these rows: without it the output is visibly different
    default = host(F.rms_norm(tn.tensor(x), normalized_shape))
    no_eps = host(F.rms_norm(tn.tensor(x), normalized_shape, None, 0.0))
    assert np.abs(default - no_eps).max() > 1e-3


def test_rms_norm_default_eps_for_float16_is_float32s_as_torch():
    x = np.full((1, 4), 0.03, dtype=np.float16)  # mean(x²) ≈ 9e-4, as large as float16's eps
    want = torch.nn.functional.rms_norm(torch.from_numpy(x), (4,)).numpy()
    got = host(F.rms_norm(tn.tensor(x), 4))
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, want, rtol=2e-3)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("shape, normalized_shape", [((64, 256), (256,)), ((3, 5, 7), (5, 7))])
@pytest.mark.parametrize("fused", PATHS)
def test_float16_is_computed_in_float32_and_rounded_once(op, shape, normalized_shape, fused):
    """As PyTorch's kernels do: y, dx, dγ and dβ are each the float16 rounding of an accurate
    value, so within half a float16 ulp (2^-11 relative) of the float64 maths, plus float32's
    own error. Computed in float16 throughout, they were off by 2-3 ulp."""
    x, w, b, g = (a.astype(np.float16) for a in draw(shape, normalized_shape, seed=7))
    if op == "layer_norm":
        params, ours_fn = [w, b], lambda x, w, b: F.layer_norm(x, normalized_shape, w, b)
        torch_fn = lambda x, w, b: torch.nn.functional.layer_norm(  # noqa: E731
            x, normalized_shape, w, b)
    else:
        eps = float(np.finfo(np.float32).eps)  # float32's, as float16 input gets by default
        params, ours_fn = [w], lambda x, w: F.rms_norm(x, normalized_shape, w)
        torch_fn = lambda x, w: torch.nn.functional.rms_norm(  # noqa: E731
            x, normalized_shape, w, eps)
    with kernels.fused(fused):
        ours = run_ours(ours_fn, x, params, g)
    wide = lambda a: a.astype(np.float64)  # noqa: E731
    want = run_torch(torch_fn, wide(x), [wide(p) for p in params], wide(g))
    got = [host(ours[0]), ours[1], *ours[2]]
    for name, a, r in zip(["y", "dx", "dweight", "dbias"], got, [want[0], want[1], *want[2]]):
        assert a.dtype == np.float16, name
        err = np.abs(a.astype(np.float64) - r)
        bound = 2.0**-11 * np.abs(r) + 1e-6 * np.abs(r).max()
        assert (err <= bound).all(), f"{op} {name}: {(err / bound).max():.2f}x the bound"


@pytest.mark.parametrize("fused", PATHS)
def test_float16_rows_whose_squares_overflow_float16_are_normalized(fused):
    """Σx² of (300, −300, 300, −300) is 3.6e5, past float16's largest number, 65504: summed in
    float16, r was 0 and so was every output. In float32 the rows normalize as in PyTorch."""
    x = np.array([[300, -300, 300, -300], [1e4, 2e4, -1e4, 3e4]], dtype=np.float16)
    with kernels.fused(fused):
        got = {"layer_norm": host(F.layer_norm(tn.tensor(x), 4)),
               "rms_norm": host(F.rms_norm(tn.tensor(x), 4))}
    for op, y in got.items():
        want = getattr(torch.nn.functional, op)(torch.from_numpy(x), (4,)).numpy()
        assert y.dtype == np.float16 and np.abs(want).min() > 0.1, op
        np.testing.assert_allclose(y, want, rtol=2.0**-10, err_msg=op)  # within a float16 ulp


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_module_matches_torch(bias):
    theirs = torch.nn.LayerNorm((3, 4), bias=bias).double()
    ours = nn.LayerNorm((3, 4), bias=bias, dtype=tn.float64)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert_same_repr(ours, theirs)
    rng = np.random.default_rng(2)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.tensor(rng.standard_normal(tuple(p.shape))))
    ours.load_state_dict(theirs.state_dict())
    x, upstream = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    compare(run_ours(ours, x, [], upstream), run_torch(theirs, x, [], upstream), "nn.LayerNorm")
    for name, p in theirs.named_parameters():
        close(dict(ours.named_parameters())[name].grad, p.grad.numpy(), **TOL64,
              what=f"nn.LayerNorm {name}")


def assert_same_repr(ours, theirs):
    """repr(ours) == repr(theirs). tinynorm prints LayerNorm's ``bias=`` as torch 2.13 does;
    older torch releases (2.11, on the GPU image) leave it out, and then so does the
    comparison."""
    expected, got = repr(theirs), repr(ours)
    if "bias=" not in expected:
        got = re.sub(r", bias=(True|False)", "", got)
    assert got == expected


def test_module_options_and_reprs_match_torch():
    for args, kwargs in [((5,), {}), ((5,), {"elementwise_affine": False}), ((5,), {"bias": False}),
                         (((2, 3),), {"eps": 1e-3})]:
        ours, theirs = nn.LayerNorm(*args, **kwargs), torch.nn.LayerNorm(*args, **kwargs)
        assert_same_repr(ours, theirs)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        for name, p in theirs.named_parameters():
            np.testing.assert_array_equal(host(dict(ours.named_parameters())[name]),
                                          p.detach().numpy())
    for args, kwargs in [((5,), {}), ((5,), {"elementwise_affine": False}),
                         (((2, 3),), {"eps": 1e-3})]:
        ours, theirs = nn.RMSNorm(*args, **kwargs), torch.nn.RMSNorm(*args, **kwargs)
        assert_same_repr(ours, theirs)
        assert list(ours.state_dict()) == list(theirs.state_dict())


def test_seed_layer_norm_loads_through_a_key_mapping():
    rng = np.random.default_rng(3)
    theirs = SeedLayerNorm(16).double()
    with torch.no_grad():
        theirs.gamma.copy_(torch.tensor(rng.standard_normal(16)))
        theirs.beta.copy_(torch.tensor(rng.standard_normal(16)))
    key_map = {"gamma": "weight", "beta": "bias"}
    ours = nn.LayerNorm(16, dtype=tn.float64)
    result = ours.load_state_dict({key_map[k]: v for k, v in theirs.state_dict().items()})
    assert result.missing_keys == [] and result.unexpected_keys == []
    x = rng.standard_normal((2, 10, 16)) * 10 + 5  # the seed's "arbitrary mean and std"
    upstream = rng.standard_normal((2, 10, 16))
    compare(run_ours(ours, x, [], upstream), run_torch(theirs, x, [], upstream), "seed LayerNorm")
    close(ours.weight.grad, theirs.gamma.grad.numpy(), **TOL64, what="gamma grad")
    close(ours.bias.grad, theirs.beta.grad.numpy(), **TOL64, what="beta grad")


def test_non_contiguous_input_and_non_leaf_gradient():
    rng = np.random.default_rng(4)
    a, upstream = rng.standard_normal((6, 5)), rng.standard_normal((5, 6))
    x = tn.tensor(a, requires_grad=True)
    y = F.layer_norm(x.transpose(0, 1) * 2.0, 6)  # a transposed (non-contiguous) view
    y.backward(tn.tensor(upstream))
    xt = torch.tensor(a, requires_grad=True)
    torch.nn.functional.layer_norm(xt.T * 2.0, (6,)).backward(torch.tensor(upstream))
    close(x.grad, xt.grad.numpy(), **TOL64, what="dx through a transpose")


@st.composite
def norm_cases(draw):
    """Anything either norm takes, float64: 1 to 4 dims of size 0 to 5 (empty batches and
    normalized dims of size 0 included), the last 1 to ndim of them normalized; rows at three
    scales around an offset; sometimes one NaN or ±inf; sometimes seen through a reversed,
    non-contiguous view; each parameter given or not; LayerNorm's or RMSNorm's eps."""
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=4)))
    normalized = shape[len(shape) - draw(st.integers(1, len(shape))):]
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = (rng.standard_normal(shape) * draw(st.sampled_from([1e-3, 1.0, 50.0]))
         + draw(st.sampled_from([0.0, 3.0])))
    poison = draw(st.sampled_from([None, np.nan, np.inf, -np.inf]))
    if poison is not None and x.size:
        x.flat[draw(st.integers(0, x.size - 1))] = poison
    params = [rng.standard_normal(normalized) if draw(st.booleans()) else None
              for _ in range(2)]
    return dict(x=x, normalized=normalized, params=params, upstream=rng.standard_normal(shape),
                reversed=draw(st.booleans()), op=draw(st.sampled_from(["layer_norm", "rms_norm"])),
                eps=draw(st.sampled_from([None, 1e-5, 0.1])))


def run_case(lib, case, functional):
    """(y, dx, dweight, dbias) of one drawn case in tinynorm or torch: x reversed along dim 0
    (a non-contiguous view in both) when the case says so."""
    x = case["x"][::-1].copy() if case["reversed"] else case["x"]
    leaf = lib.tensor(x, requires_grad=True)
    view = (leaf.flip(0) if lib is torch else leaf[::-1]) if case["reversed"] else leaf
    weight, bias = (None if p is None else lib.tensor(p, requires_grad=True)
                    for p in case["params"])
    if case["op"] == "layer_norm":
        y = functional.layer_norm(view, case["normalized"], weight, bias,
                                  1e-5 if case["eps"] is None else case["eps"])
    else:
        bias = None
        y = functional.rms_norm(view, case["normalized"], weight, case["eps"])
    y.backward(lib.tensor(case["upstream"]))
    grads = [leaf.grad] + [None if p is None else p.grad for p in (weight, bias)]
    return [host(y.detach())] + [None if g is None else host(g) for g in grads]


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's, where NaN and inf spread
@settings(max_examples=40)
@given(case=norm_cases())
def test_drawn_inputs_match_torch(fused, case):
    """Hypothesis against PyTorch in float64, both ops, within 1e-10: outputs, dx, dγ and dβ
    agree, NaN for NaN (a NaN or ±inf poisons its row, and the parameters' gradients, in
    both). Where this draws a normalized dim of size 0, tinynorm once raised."""
    with kernels.fused(fused):
        ours = run_case(tn, case, F)
    theirs = run_case(torch, case, torch.nn.functional)
    for name, a, b in zip(("y", "dx", "dweight", "dbias"), ours, theirs):
        if b is None:
            assert a is None, name
            continue
        assert a.shape == b.shape, name
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        close(np.nan_to_num(a, nan=0.0), np.nan_to_num(b, nan=0.0), **TOL64,
              what=f"{case['op']} {case['x'].shape} over {case['normalized']}: {name}")


# ---- numerics -------------------------------------------------------------------------------
def layer_norm_float64(x, eps=1e-5):
    """The maths in float64 on the same values: two-pass variance."""
    x = x.astype(np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


@pytest.mark.parametrize("fused", PATHS)
def test_large_common_offset_in_float32_matches_float64_maths(fused):
    rng = np.random.default_rng(5)
    x = (1e4 + rng.standard_normal((64, 256))).astype(np.float32)
    want = layer_norm_float64(x)
    with kernels.fused(fused):
        got = host(F.layer_norm(tn.tensor(x), 256))
    assert got.dtype == np.float32
    # the reference path keeps the rounding of Σx/n in float32, ~2e-3; the kernels refine μ
    assert np.abs(got - want).max() <= (1e-5 if fused else 5e-3)
    # the test has teeth: the one-pass E[x²] − E[x]² in float32 misses by far more
    mean = x.mean(axis=-1, keepdims=True)
    naive_var = np.maximum((x * x).mean(axis=-1, keepdims=True) - mean * mean, 0)
    naive = (x - mean) / np.sqrt(naive_var + np.float32(1e-5))
    assert np.abs(naive - want).max() > 0.1


@pytest.mark.parametrize("fused", PATHS)
@settings(max_examples=15)
@given(x=tst.degenerate_rows(), seed=st.integers(0, 2**16))
def test_constant_rows_and_single_features_follow_the_maths(fused, x, seed):
    """A row with zero variance: x − μ = 0, r = 1/√ε, so y = β exactly (to rounding),
    dγ = 0, dβ = Σ dy and dx = r·(g − mean(g)) — not zero: moving one element makes the
    row vary. With one feature (d = 1) g − mean(g) = 0, so dx = 0 there."""
    eps = 1e-5
    rng = np.random.default_rng(seed)
    d = x.shape[-1]
    w, b, upstream = rng.standard_normal(d), rng.standard_normal(d), rng.standard_normal(x.shape)
    with kernels.fused(fused):
        y, dx, (dw, db) = run_ours(lambda x, w, b: F.layer_norm(x, d, w, b, eps), x, [w, b],
                                   upstream)
        y_rms, dx_rms, _ = run_ours(lambda x, w: F.rms_norm(x, d, w, eps), x, [w], upstream)
    y, dx, dw, db = host(y), host(dx), host(dw), host(db)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    np.testing.assert_allclose(y, np.broadcast_to(b, x.shape), rtol=0, atol=1e-9)
    np.testing.assert_allclose(dw, 0, atol=1e-9)
    np.testing.assert_allclose(db, upstream.reshape(-1, d).sum(axis=0), rtol=1e-12, atol=1e-12)
    g = upstream * w
    want_dx = (g - g.mean(axis=-1, keepdims=True)) / np.sqrt(eps)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-9, atol=1e-9)
    if d == 1:
        assert np.abs(dx).max() <= 1e-9

    # RMSNorm on the same rows: r = 1/√(c² + ε) with c the row's constant
    assert np.isfinite(host(y_rms)).all() and np.isfinite(host(dx_rms)).all()
    r = 1 / np.sqrt(x[..., :1] ** 2 + eps)
    np.testing.assert_allclose(host(y_rms), x * r * w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fused", PATHS)
def test_a_single_feature_gives_exactly_zero_dx(dtype, fused):
    """d = 1: x − μ = 0 and g − mean(g) = 0, so dx is 0 exactly, not just to rounding (the
    kernels must not fuse g's product into the subtraction: kernels._numba.ROW_SUM_FASTMATH)."""
    rng = np.random.default_rng(10)
    x, upstream = (rng.standard_normal((300, 1)).astype(dtype) for _ in range(2))
    w, b = (rng.standard_normal(1).astype(dtype) for _ in range(2))
    with kernels.fused(fused):
        y, dx, (dw, _) = run_ours(lambda x, w, b: F.layer_norm(x, 1, w, b), x, [w, b], upstream)
    np.testing.assert_array_equal(host(dx), 0)
    np.testing.assert_array_equal(host(dw), 0)
    np.testing.assert_array_equal(host(y), np.broadcast_to(b, x.shape))


@pytest.mark.parametrize("fused", PATHS)
def test_eps_is_inside_the_square_root(fused):
    x = np.array([[0.0, 2e-3, 4e-3, 6e-3]])  # σ² = 5e-6, σ ≈ 2.2e-3
    eps = 1e-2
    centred = x - x.mean()
    inside = centred / np.sqrt(centred.var() + eps)
    outside = centred / (np.sqrt(centred.var()) + eps)
    with kernels.fused(fused):
        got, got_rms = (host(F.layer_norm(tn.tensor(x), 4, eps=eps)),
                        host(F.rms_norm(tn.tensor(x), 4, eps=eps)))
    np.testing.assert_allclose(got, inside, rtol=1e-12)
    assert np.abs(got - outside).max() > 1e-2
    got = got_rms
    np.testing.assert_allclose(got, x / np.sqrt((x * x).mean() + eps), rtol=1e-12)
    assert np.abs(got - x / (np.sqrt((x * x).mean()) + eps)).max() > 1e-2


@pytest.mark.parametrize("fused", PATHS)
def test_parameter_gradients_over_1e5_rows_in_float32_match_float64(fused):
    """dγ and dβ add 10^5 rows. dy ≈ 1.1 makes every partial sum grow the same way, so plain
    float32 accumulation is off by about 6e-4 relative here (checked below); the blocks'
    float64 totals stay within 1e-4."""
    rng = np.random.default_rng(6)
    rows, d = 100_000, 16
    x = rng.standard_normal((rows, d)).astype(np.float32)
    upstream = (1.1 + 1e-3 * rng.standard_normal((rows, d))).astype(np.float32)
    with kernels.fused(fused):
        _, _, (dw, db) = run_ours(lambda x, w, b: F.layer_norm(x, d, w, b), x,
                                  [np.ones(d, np.float32), np.zeros(d, np.float32)], upstream)
        _, _, (dw_rms,) = run_ours(lambda x, w: F.rms_norm(x, d, w), x,
                                   [np.ones(d, np.float32)], upstream)
    x64, dy64 = x.astype(np.float64), upstream.astype(np.float64)
    x_hat = layer_norm_float64(x)
    rms_hat = x64 / np.sqrt((x64 * x64).mean(axis=1, keepdims=True) + np.finfo(np.float32).eps)
    for got, want in [(db, dy64.sum(axis=0)), (dw, (dy64 * x_hat).sum(axis=0)),
                      (dw_rms, (dy64 * rms_hat).sum(axis=0))]:
        assert host(got).dtype == np.float32
        np.testing.assert_allclose(host(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    plain = np.cumsum(upstream, axis=0, dtype=np.float32)[-1]  # row after row, in float32
    assert np.abs(plain - dy64.sum(axis=0)).max() / np.abs(dy64.sum(axis=0)).max() > 1e-4


# ---- gradients by finite differences (float64, Hypothesis) ----------------------------------
def params_for(x, k, use_weight, use_bias, seed):
    rng = np.random.default_rng(seed)
    shape = x.shape[x.ndim - k:]
    weight = tn.tensor(rng.uniform(0.5, 1.5, shape), requires_grad=True) if use_weight else None
    bias = tn.tensor(rng.uniform(-1, 1, shape), requires_grad=True) if use_bias else None
    return shape, weight, bias


@pytest.mark.parametrize("fused", PATHS)
@settings(max_examples=15)
@given(x=tst.normalizable_rows(), dims=st.sampled_from([1, 2]),
       affine=st.sampled_from(AFFINE), seed=st.integers(0, 2**16))
def test_layer_norm_gradcheck(fused, x, dims, affine, seed):
    dims = min(dims, x.ndim)
    shape, weight, bias = params_for(x, dims, *affine, seed)
    inputs = (tn.tensor(x, requires_grad=True), weight, bias)
    with kernels.fused(fused):
        assert gradcheck(lambda x, w, b: F.layer_norm(x, shape, w, b), inputs)


@pytest.mark.parametrize("fused", PATHS)
@settings(max_examples=15)
@given(x=tst.normalizable_rows(), dims=st.sampled_from([1, 2]),
       use_weight=st.booleans(), seed=st.integers(0, 2**16))
def test_rms_norm_gradcheck(fused, x, dims, use_weight, seed):
    dims = min(dims, x.ndim)
    shape, weight, _ = params_for(x, dims, use_weight, False, seed)
    inputs = (tn.tensor(x, requires_grad=True), weight)
    with kernels.fused(fused):
        assert gradcheck(lambda x, w: F.rms_norm(x, shape, w), inputs)


@pytest.mark.parametrize("fused", PATHS)
@settings(max_examples=10)
@given(x=tst.degenerate_rows(), seed=st.integers(0, 2**16))
def test_gradcheck_on_degenerate_rows(fused, x, seed):
    """Zero-variance rows and d = 1: with ε inside the root both ops stay smooth there. (For
    RMSNorm an ε of 1e-3 rather than finfo(float64).eps keeps x = 0 rows smooth at the scale
    of the finite-difference step.)"""
    shape, weight, bias = params_for(x, 1, True, True, seed)
    xt = tn.tensor(x, requires_grad=True)
    with kernels.fused(fused):
        assert gradcheck(lambda x, w, b: F.layer_norm(x, shape, w, b), (xt, weight, bias))
        assert gradcheck(lambda x, w: F.rms_norm(x, shape, w, 1e-3), (xt, weight))


# ---- bad input --------------------------------------------------------------------------------
def test_normalized_shape_mismatch_names_both_shapes():
    x = tn.randn(2, 4)
    with pytest.raises(ValueError, match=r"layer_norm.*\(2, 4\).*\(3,\)"):
        F.layer_norm(x, 3)
    with pytest.raises(ValueError, match=r"rms_norm.*\(2, 4\).*\(2, 3, 4\)"):
        F.rms_norm(x, (2, 3, 4))
    with pytest.raises(ValueError, match=r"layer_norm: weight of shape \(5,\).*\(4,\)"):
        F.layer_norm(x, 4, tn.ones(5))
    with pytest.raises(ValueError, match=r"rms_norm: weight of shape \(4, 1\).*\(4,\)"):
        F.rms_norm(x, 4, tn.ones(4, 1))
    with pytest.raises(ValueError, match="at least one dim"):
        F.layer_norm(x, ())


@pytest.mark.parametrize("bad", [2.5, (4, 2.0), "4", None])
def test_normalized_shape_that_is_not_ints_is_refused_not_truncated(bad):
    """int() would turn (4, 2.0) into (4, 2) and "4" into (4,); the error names what was given."""
    with pytest.raises(TypeError, match=r"LayerNorm: normalized_shape must be an int or a "):
        nn.LayerNorm(bad)
    with pytest.raises(TypeError, match=r"rms_norm: normalized_shape must be .*got"):
        F.rms_norm(tn.randn(2, 4), bad)


def test_negative_normalized_shape_names_the_op():
    with pytest.raises(ValueError, match=r"RMSNorm: normalized_shape \(3, -1\) has a negative"):
        nn.RMSNorm((3, -1))
    with pytest.raises(ValueError, match=r"LayerNorm: normalized_shape \(-4,\) has a negative"):
        nn.LayerNorm(-4)


def test_a_torch_tensor_or_a_list_is_refused_by_name():
    """A PyTorch user's likeliest slip: a torch tensor given to tinynorm. It used to fail deep
    in NumPy ("Cannot interpret 'torch.float32' as a data type"); a list failed on .ndim."""
    with pytest.raises(TypeError, match=r"rms_norm: input must be a .*torch\.Tensor"):
        F.rms_norm(torch.ones(2, 3), 3)
    with pytest.raises(TypeError, match=r"layer_norm: input must be .*got builtins\.list"):
        nn.LayerNorm(2)([[1.0, 2.0]])
    with pytest.raises(TypeError, match=r"layer_norm: weight must be .*torch\.Tensor"):
        F.layer_norm(tn.ones(2, 3), 3, torch.ones(3, dtype=torch.float32))
    with pytest.raises(TypeError, match=r"layer_norm: bias must be .*builtins\.float"):
        F.layer_norm(tn.ones(2, 3), 3, None, 0.5)


def test_integer_input_and_mixed_dtypes_name_the_dtypes():
    with pytest.raises(TypeError, match="layer_norm.*int64"):
        F.layer_norm(tn.tensor(np.arange(6).reshape(2, 3)), 3)
    with pytest.raises(TypeError, match="rms_norm.*int32"):
        nn.RMSNorm(3)(tn.tensor(np.arange(6, dtype=np.int32).reshape(2, 3)))
    with pytest.raises(TypeError, match="weight has dtype float64.*float32"):
        F.layer_norm(tn.randn(2, 3), 3, tn.ones(3, dtype=tn.float64))
    # PyTorch's rms_norm takes this pair (README, deliberate differences); tinynorm does not
    with pytest.raises(TypeError, match="rms_norm: weight has dtype float32.*float64"):
        F.rms_norm(tn.randn(2, 3, dtype=tn.float64), 3, tn.ones(3))


# ---- memory, threads, no_grad ---------------------------------------------------------------
def shares_memory(a, b) -> bool:
    root = lambda v: v if getattr(v, "base", None) is None else root(v.base)  # noqa: E731
    return root(a) is root(b)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("fused", PATHS)
def test_backward_keeps_x_and_a_few_numbers_per_row(op, fused):
    rows, d = 300, 64
    x = tn.randn(rows, d, requires_grad=True)
    w = tn.ones(d, requires_grad=True)
    with kernels.fused(fused):
        y = F.layer_norm(x, d, w, tn.zeros(d, requires_grad=True)) if op == "layer_norm" else \
            F.rms_norm(x, d, w)
    saved = [a for a in y.grad_fn.saved_tensors if a is not None]
    own = [a for a in saved if not shares_memory(a, x.data) and not shares_memory(a, w.data)]
    assert any(shares_memory(a, x.data) for a in saved)  # x itself, not a copy
    per_row = 2 if op == "layer_norm" else 1  # μ and r, or r
    assert sum(a.nbytes for a in own) == per_row * rows * 4
    with kernels.fused(fused):
        y.backward(tn.randn(rows, d))
    with pytest.raises(RuntimeError, match="second time"):
        y.grad_fn.saved_tensors  # freed after backward
    with tn.no_grad():
        z = F.layer_norm(x, d) if op == "layer_norm" else F.rms_norm(x, d)
    assert z.grad_fn is None


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("fused", PATHS)
def test_results_are_the_same_bits_for_any_thread_count(op, fused):
    rng = np.random.default_rng(7)
    x, upstream, w, b = (rng.standard_normal(shape).astype(np.float32)
                         for shape in [(4500, 300), (4500, 300), 300, 300])
    # enough blocks and work for 3 threads on either path
    assert len(_rows.row_blocks(4500, 300, True)) >= 6
    assert len(_rows.kernel_blocks(4500, 300)) >= 6
    params = [w, b] if op == "layer_norm" else [w]
    fn = (lambda x, w, b: F.layer_norm(x, 300, w, b)) if op == "layer_norm" else \
        (lambda x, w: F.rms_norm(x, 300, w))
    results = []
    for threads in (1, 2, 3):
        with num_threads(threads), kernels.fused(fused):
            y, dx, dparams = run_ours(fn, x, params, upstream)
        results.append([host(y), host(dx)] + [host(p) for p in dparams])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_set_num_threads_rejects_nonsense():
    with pytest.raises(ValueError, match="positive"):
        tn.ops.set_num_threads(0)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("fused", PATHS)
def test_float32_parity_with_torch(op, fused):
    """float32 against PyTorch's float32: both round differently (block sums or the kernels'
    vector partial sums vs vectorised Welford), so we allow a few ulp of the O(1) outputs:
    rtol 1e-5, atol 1e-5 of the largest value."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((300, 96)).astype(np.float32) * 4 + 2
    w, b = rng.standard_normal(96).astype(np.float32), rng.standard_normal(96).astype(np.float32)
    upstream = rng.standard_normal((300, 96)).astype(np.float32)
    if op == "layer_norm":
        ours_fn, params = (lambda x, w, b: F.layer_norm(x, 96, w, b)), [w, b]
        torch_fn = lambda x, w, b: torch.nn.functional.layer_norm(x, (96,), w, b)  # noqa: E731
    else:
        ours_fn, params = (lambda x, w: F.rms_norm(x, 96, w, 1e-5)), [w]
        torch_fn = lambda x, w: torch.nn.functional.rms_norm(x, (96,), w, 1e-5)  # noqa: E731
    with kernels.fused(fused):
        ours = run_ours(ours_fn, x, params, upstream)
    theirs = run_torch(torch_fn, x, params, upstream)
    for a, e in zip([ours[0], ours[1]] + ours[2], [theirs[0], theirs[1]] + theirs[2]):
        assert_close(a, e, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(e).max())))
