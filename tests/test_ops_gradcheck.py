"""Every core op's backward against finite differences, in float64, on Hypothesis-drawn inputs.

One table: a row names the op, a function of Tensors (and plain arguments), and a Hypothesis
strategy that draws the arguments: random shapes with broadcasting, size-1 dims and, where
the op is defined there, empty dims. Float arrays become float64 leaves that require grad;
bool and int arrays (masks, indices) become plain Tensors; anything else is passed as is.
``tinynorm.testing.gradcheck`` draws a random upstream gradient and compares every gradient
element (or random directions, for inputs of more than 64 elements) with central differences.

The number of examples per row comes from the Hypothesis profile (conftest.py; "ci": 25).
Dropout is absent: its mask is redrawn on every call, so finite differences cannot see one
fixed function; tests/test_ops_special.py checks its backward as dx = grad_out · (y / x).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")  # conftest.py makes this an error in CI
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
import hypothesis.extra.numpy as hnp  # noqa: E402

import tinynorm as tn  # noqa: E402
from tinynorm.testing import gradcheck  # noqa: E402
from tinynorm.testing import strategies as tst  # noqa: E402

F = tn.nn.functional
MAX_SIDE = 4  # small sides keep every element checked (<= 64) in most draws


def shape(min_dims=0, max_dims=3, min_side=1, max_side=MAX_SIDE):
    """Shapes; with ``min_side=0`` one draw in five may hold empty dims (Hypothesis would
    otherwise make most draws empty, which check nothing but the shapes)."""
    if min_side > 0:
        return tst.shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                          max_side=max_side)
    return st.integers(0, 4).flatmap(lambda r: tst.shapes(
        min_dims=min_dims, max_dims=max_dims, min_side=0 if r == 0 else 1, max_side=max_side))


@st.composite
def broadcastable(draw, n):
    """``n`` mutually broadcastable shapes; one draw in five gets a new leading dim that is
    0 in some shapes and 0 or 1 in the others (1 broadcasts against 0, as in PyTorch)."""
    shapes = draw(tst.broadcastable_shapes(n, min_dims=0, max_dims=3, min_side=1,
                                           max_side=MAX_SIDE))
    if draw(st.integers(0, 4)) == 0:
        leading = [draw(st.sampled_from([0, 1])) for _ in shapes]
        leading[draw(st.integers(0, n - 1))] = 0
        rank = max(len(s) for s in shapes)  # align the trailing dims first
        shapes = tuple((lead,) + (1,) * (rank - len(s)) + s for lead, s in zip(leading, shapes))
    return shapes


def values(shape_or_strategy, **kw):
    return tst.arrays(shape_or_strategy, **kw)


# ---- strategies of argument tuples --------------------------------------------------------
@st.composite
def unary(draw, min_dims=0, min_side=0, **kw):
    """One array; empty dims included unless ``min_side=1``."""
    return (draw(values(shape(min_dims=min_dims, min_side=min_side), **kw)),)


@st.composite
def binary(draw, avoid_b=()):
    """Two arrays of mutually broadcastable shapes (missing leading dims, sizes 1 and 0)."""
    shape_a, shape_b = draw(broadcastable(2))
    return (draw(values(shape_a)), draw(values(shape_b, avoid=avoid_b, margin=0.5)))


@st.composite
def with_scalar(draw):
    """(array, Python number), scalar on either side decided by the fn."""
    return (draw(values(shape(min_side=0))), draw(st.sampled_from([-1.5, 0.5, 2.0])))


@st.composite
def powers(draw):
    p = draw(st.sampled_from([0, 1, 2, 3, -2, 0.5, -1.5, 2.5]))
    if float(p).is_integer() and p >= 0:
        x = draw(values(shape(min_side=0)))
    else:  # x^p for negative x is complex (fractional p) or has a pole at 0 (negative p)
        x = draw(values(shape(min_side=0), lo=0.3, hi=3.0))
    return x, p


@st.composite
def matmul_operands(draw):
    """a @ b with broadcast batch dims; a or b 1-D sometimes; the contracted dim may be 0."""
    batch_a, batch_b = draw(tst.broadcastable_shapes(2, min_dims=0, max_dims=2, max_side=3))
    m, n = draw(st.integers(1, MAX_SIDE)), draw(st.integers(1, MAX_SIDE))
    k = draw(st.sampled_from([3, 1, 2, 4, 0]))  # Hypothesis favours the first: k = 0 is rare
    a_1d, b_1d = draw(st.booleans()), draw(st.booleans())
    shape_a = (k,) if a_1d else batch_a + (m, k)
    shape_b = (k,) if b_1d else batch_b + (k, n)
    return draw(values(shape_a)), draw(values(shape_b))


@st.composite
def linear_operands(draw):
    lead = draw(shape(min_dims=0, max_dims=3, min_side=0, max_side=3))
    n_in, n_out = draw(st.integers(1, MAX_SIDE)), draw(st.integers(1, MAX_SIDE))
    bias = draw(values((n_out,))) if draw(st.booleans()) else None
    return draw(values(lead + (n_in,))), draw(values((n_out, n_in))), bias


@st.composite
def dims(draw, ndim):
    """A reduction dim: None, one int (maybe negative) or a tuple of distinct dims."""
    kind = draw(st.sampled_from(["none", "int", "tuple"] if ndim else ["none"]))
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    axes = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    # each axis maybe counted from the end, as a caller may write (0, -1)
    return tuple(d - ndim if draw(st.booleans()) else d for d in axes)


@st.composite
def reduction(draw, allow_empty):
    x = draw(values(shape(min_dims=0, min_side=0 if allow_empty else 1)))
    return x, draw(dims(x.ndim)), draw(st.booleans())


@st.composite
def variance(draw):
    """A reduction's arguments and a correction c below the reduced group's size n (at
    n <= c the divisor is 0 and var is inf or NaN). Drawn values are distinct, so std > 0
    wherever n >= 2; a single element has var = std = 0 for any move, gradient 0."""
    x, dim, keepdim = draw(reduction(allow_empty=False))
    axes = range(x.ndim) if dim is None else [dim] if isinstance(dim, int) else dim
    axes = [a % x.ndim for a in axes] if x.ndim else axes
    n = math.prod(x.shape[a] for a in axes)
    return x, dim, keepdim, draw(st.sampled_from([c for c in (0.0, 0.5, 1.0) if c < n]))


@st.composite
def reshapes(draw):
    """An array and a target shape with the same element count (one -1 sometimes)."""
    x = draw(values(shape(min_dims=0, min_side=1)))
    factors = [f for n in x.shape for f in _factor(n)]
    target = list(draw(st.permutations(factors))) if factors else []
    split = draw(st.integers(0, len(target)))
    target = [math.prod(target[:split])] + target[split:]  # merge a prefix: new ranks
    if draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1
    return x, tuple(target)


def _factor(n):
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


@st.composite
def permutations(draw):
    x = draw(values(shape(min_dims=1, min_side=0)))
    return x, tuple(draw(st.permutations(range(x.ndim))))


@st.composite
def transposes(draw):
    x = draw(values(shape(min_dims=1, min_side=0)))
    return x, draw(st.integers(-x.ndim, x.ndim - 1)), draw(st.integers(-x.ndim, x.ndim - 1))


@st.composite
def unsqueezes(draw):
    x = draw(values(shape(min_dims=0, min_side=0)))
    return x, draw(st.integers(-x.ndim - 1, x.ndim))


@st.composite
def squeezes(draw):
    x = draw(values(shape(min_dims=0, min_side=1, max_side=2)))  # many size-1 dims
    dim = draw(st.none() | st.integers(-x.ndim, x.ndim - 1)) if x.ndim else None
    return x, dim


@st.composite
def expands(draw):
    """x with some size-1 dims, and a target that grows them and adds leading dims."""
    x = draw(values(shape(min_dims=0, min_side=1, max_side=3)))
    lead = draw(shape(min_dims=0, max_dims=2, min_side=1, max_side=3))
    grown = tuple(draw(st.integers(1, 3)) if n == 1 else draw(st.sampled_from([n, -1]))
                  for n in x.shape)
    return x, lead + grown


@st.composite
def basic_indexing(draw):
    x = draw(values(shape(min_dims=1, min_side=1)))
    return x, draw(hnp.basic_indices(x.shape, allow_newaxis=True, allow_ellipsis=True))


@st.composite
def integer_indexing(draw):
    """Integer arrays with repeats (negative indices too), on one dim or on two at once."""
    x = draw(values(shape(min_dims=1, max_dims=3, min_side=1)))
    dim = draw(st.integers(0, x.ndim - 1))
    n = x.shape[dim]
    index_shape = draw(shape(min_dims=1, max_dims=2, min_side=0, max_side=6))
    index = draw(hnp.arrays(np.int64, index_shape, elements=st.integers(-n, n - 1)))
    return x, dim, index


@st.composite
def boolean_indexing(draw):
    x = draw(values(shape(min_dims=1, min_side=0)))
    leading = draw(st.integers(1, x.ndim))  # a mask over the first `leading` dims
    return x, draw(hnp.arrays(np.bool_, x.shape[:leading]))


@st.composite
def where_operands(draw):
    s_cond, s_a, s_b = draw(broadcastable(3))
    return draw(hnp.arrays(np.bool_, s_cond)), draw(values(s_a)), draw(values(s_b))


@st.composite
def masked_fill_operands(draw):
    x = draw(values(shape(min_dims=0, min_side=0)))
    keep = draw(st.integers(0, x.ndim))  # the mask may lack leading dims and have size-1 dims
    mask_shape = tuple(1 if draw(st.booleans()) else n for n in x.shape[x.ndim - keep:])
    # fill values stay O(1): a fill of -1e9 would put 1e9 into the checked sum(out·G), whose
    # rounding (1e9·1e-16/eps = 1e-1) swamps the central difference; the parity table fills
    # with -inf
    return x, draw(hnp.arrays(np.bool_, mask_shape)), draw(st.sampled_from([0.0, -5.0, 2.5]))


@st.composite
def joined(draw, same_size):
    """2-3 arrays equal except (for cat) along dim, where sizes may be 0."""
    base = draw(shape(min_dims=1, max_dims=3, min_side=1, max_side=3))
    dim = draw(st.integers(-len(base), len(base) - 1))
    arrays = []
    for _ in range(draw(st.integers(1, 3))):
        s = list(base)
        if not same_size:
            s[dim] = draw(st.sampled_from([2, 1, 3, 0]))  # an empty piece now and then
        arrays.append(draw(values(tuple(s))))
    return arrays, dim


@st.composite
def splits(draw):
    x = draw(values(shape(min_dims=1, min_side=0)))
    dim = draw(st.integers(-x.ndim, x.ndim - 1))
    n = x.shape[dim]
    if draw(st.booleans()):
        sizes = draw(st.integers(1, max(n, 1)))
    else:
        cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3)))
        sizes = [b - a for a, b in zip([0] + cuts, cuts + [n])]
    return x, sizes, dim


@st.composite
def chunks(draw):
    x = draw(values(shape(min_dims=1, min_side=0)))
    return x, draw(st.integers(1, 5)), draw(st.integers(-x.ndim, x.ndim - 1))


@st.composite
def along_dim(draw, lo=-3.0, hi=3.0):
    x = draw(values(shape(min_dims=1, min_side=1), lo=lo, hi=hi))
    return x, draw(st.integers(-x.ndim, x.ndim - 1))


def _amax(x, dim, keepdim):
    return x.max(dim, keepdim)


# ---- the table: (op, fn(*args), strategy of args) ------------------------------------------
CASES = [
    ("add", lambda a, b: a + b, binary()),
    ("add-scalar", lambda a, s: s + a, with_scalar()),
    ("sub", lambda a, b: a - b, binary()),
    ("sub-scalar", lambda a, s: s - a, with_scalar()),
    ("mul", lambda a, b: a * b, binary()),
    ("mul-scalar", lambda a, s: a * s, with_scalar()),
    ("div", lambda a, b: a / b, binary(avoid_b=(0.0,))),
    ("div-scalar", lambda a, s: s / a, unary(lo=0.5, hi=3.0).map(lambda t: (t[0], 1.5))),
    ("neg", lambda a: -a, unary()),
    ("pow", lambda x, p: x ** p, powers()),
    ("rpow", lambda x: 1.7 ** x, unary(lo=-2.0, hi=2.0)),
    ("matmul", lambda a, b: a @ b, matmul_operands()),
    ("linear", lambda x, w, b: F.linear(x, w, b), linear_operands()),
    ("tanh", tn.tanh, unary()),
    ("relu", tn.relu, unary(avoid=(0.0,))),
    ("gelu-none", lambda x: F.gelu(x), unary(lo=-4.0, hi=4.0)),
    ("gelu-tanh", lambda x: F.gelu(x, approximate="tanh"), unary(lo=-4.0, hi=4.0)),
    ("exp", tn.exp, unary()),
    ("log", tn.log, unary(lo=0.2, hi=4.0)),
    ("sqrt", tn.sqrt, unary(lo=0.2, hi=4.0)),
    ("abs", tn.abs, unary(avoid=(0.0,))),
    ("sum", lambda x, d, k: x.sum(d, k), reduction(allow_empty=True)),
    ("mean", lambda x, d, k: x.mean(d, k), reduction(allow_empty=False)),
    ("max", _amax, reduction(allow_empty=False)),
    ("min", lambda x, dim, keepdim: x.min(dim, keepdim), reduction(allow_empty=False)),
    ("var", lambda x, d, k, c: x.var(d, keepdim=k, correction=c), variance()),
    ("std", lambda x, d, k, c: x.std(d, keepdim=k, correction=c), variance()),
    ("reshape", lambda x, s: x.reshape(*s), reshapes()),
    ("view", lambda x, s: x.view(s), reshapes()),
    ("flatten", lambda x, a, b: x.flatten(a, b),
     unary(min_dims=1).flatmap(lambda t: st.tuples(st.just(t[0]),
                                                    st.integers(0, t[0].ndim - 1),
                                                    st.integers(-1, -1)))),
    ("transpose", lambda x, a, b: x.transpose(a, b), transposes()),
    ("permute", lambda x, p: x.permute(*p), permutations()),
    (".T", lambda x: x.T, unary(min_dims=0)),
    ("unsqueeze", lambda x, d: x.unsqueeze(d), unsqueezes()),
    ("squeeze", lambda x, d: x.squeeze(d), squeezes()),
    ("expand", lambda x, s: x.expand(*s), expands()),
    ("getitem-basic", lambda x, i: x[i], basic_indexing()),
    ("getitem-int-array", lambda x, d, i: x[(slice(None),) * d + (tn.tensor(i),)],
     integer_indexing()),
    ("getitem-bool-mask", lambda x, m: x[m], boolean_indexing()),
    ("where", lambda c, a, b: tn.where(c, a, b), where_operands()),
    ("masked_fill", lambda x, m, v: x.masked_fill(m, v), masked_fill_operands()),
    ("cat", lambda xs, d: tn.cat(xs, d), joined(same_size=False)),
    ("stack", lambda xs, d: tn.stack(xs, d), joined(same_size=True)),
    ("split", lambda x, s, d: x.split(s, d), splits()),
    ("chunk", lambda x, c, d: x.chunk(c, d), chunks()),
    ("softmax", lambda x, d: x.softmax(d), along_dim()),
    ("log_softmax", lambda x, d: x.log_softmax(d), along_dim()),
]


def _tensor(value):
    """Float arrays become float64 leaves requiring grad; bool/int arrays plain Tensors."""
    device = "cuda" if tn.backend.current() == "cupy" else "cpu"
    if isinstance(value, np.ndarray):
        grad = value.dtype.kind == "f"
        return tn.tensor(value.astype(np.float64) if grad else value, device=device,
                         requires_grad=grad)
    return value


def _arguments(drawn):
    """The drawn tuple as gradcheck's inputs; cat/stack take a list of arrays as one argument."""
    args = []
    for value in drawn:
        args.append([_tensor(v) for v in value] if isinstance(value, list) and value and
                    isinstance(value[0], np.ndarray) else _tensor(value))
    return args


def _flat(fn, args):
    """gradcheck checks Tensor arguments; a list of Tensors (cat, stack) is spread into them."""
    if not any(isinstance(a, list) for a in args):
        return fn, tuple(args)
    (position,) = [i for i, a in enumerate(args) if isinstance(a, list)]
    count = len(args[position])

    def spread(*flat):
        tensors = list(flat[position:position + count])
        return fn(*flat[:position], tensors, *flat[position + count:])

    return spread, tuple(args[:position]) + tuple(args[position]) + tuple(args[position + 1:])


@pytest.mark.parametrize("op,fn,strategy", CASES, ids=[c[0] for c in CASES])
@given(data=st.data())
def test_gradcheck(op, fn, strategy, data):
    drawn = data.draw(strategy, label="arguments")
    checked_fn, inputs = _flat(fn, _arguments(drawn))
    assert gradcheck(checked_fn, inputs)


@given(x=values(shape(min_side=0)))
def test_gradcheck_cast_to_float32(x):
    """y = x.to(float32): the identity on values, so dx = grad_out (cast back to float64).

    Finite differences see float32 rounding of the output, about 6e-8 relative, which eps
    turns into an error of ~6e-8·|x|/eps on the slope: eps=1e-3 keeps it below 2e-4 for
    |x| <= 3, inside atol=1e-3. A backward that dropped or doubled the gradient would be off
    by 1·|G|, far outside.
    """
    inputs = (_tensor(x),)
    assert gradcheck(lambda t: t.to(tn.float32), inputs, eps=1e-3, atol=1e-3, rtol=1e-3)
