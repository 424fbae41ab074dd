"""Tensor basics: creation and its dtype rules, attributes, conversions, comparisons, seeding."""
from __future__ import annotations

import numpy as np
import pytest

import tinynorm as tn
from tinynorm.testing.compare import to_host as host


# ---- tn.tensor dtype rules ---------------------------------------------------------------------
@pytest.mark.parametrize("data,dtype", [
    (1.5, "float32"),
    ([1.0, 2.0], "float32"),
    ([[1, 2.5], [3, 4]], "float32"),  # a list mixing ints and floats is a float list
    (np.array([1.0, 2.0]), "float64"),  # NumPy arrays keep their dtype
    (np.float64(2.0), "float64"),
    (np.array([1.0], dtype=np.float32), "float32"),
    (np.array([1.0], dtype=np.float16), "float16"),
    (3, "int64"),
    ([1, 2, 3], "int64"),
    (np.array([1, 2], dtype=np.int32), "int32"),
    (True, "bool"),
    ([True, False], "bool"),
    (np.array([True]), "bool"),
])
def test_tensor_dtype_rules(data, dtype):
    assert tn.tensor(data).dtype == np.dtype(dtype)


def test_tensor_explicit_dtype_and_copy():
    source = np.array([1.0, 2.0])
    t = tn.tensor(source, dtype=tn.float32)
    assert t.dtype == np.float32
    t64 = tn.tensor(source)
    source[0] = 99.0
    assert tn.backend.to_numpy(t64.data)[0] == 1.0, "tn.tensor copies its data"
    assert tn.tensor(t64).dtype == np.float64
    assert tn.tensor([1, 2], dtype=tn.float64).dtype == np.float64


# ---- factories -------------------------------------------------------------------------------
@pytest.mark.parametrize("make,value", [(tn.zeros, 0.0), (tn.ones, 1.0)])
def test_zeros_and_ones(make, value):
    for t in (make(2, 3), make((2, 3)), make([2, 3])):
        assert t.shape == (2, 3) and t.dtype == np.float32 and (t.numpy() == value).all()
    assert make(4, dtype=tn.float64).dtype == np.float64
    assert make(3, dtype=tn.int64).dtype == np.int64
    assert make(2, requires_grad=True).requires_grad
    assert make().shape == ()


def test_empty_full_and_arange():
    assert tn.empty(2, 5).shape == (2, 5) and tn.empty(2, 5).dtype == np.float32
    full = tn.full((2, 2), 7.5)
    assert full.dtype == np.float32 and (full.numpy() == 7.5).all()
    assert tn.full(3, 4).dtype == np.int64 and tn.full(3, True).dtype == np.bool_  # as torch.full
    assert tn.full((2,), 1, dtype=tn.float64).dtype == np.float64
    assert tn.arange(5).dtype == np.int64 and tn.arange(5).tolist() == [0, 1, 2, 3, 4]
    assert tn.arange(2, 8, 2).tolist() == [2, 4, 6]
    halves = tn.arange(0, 1, 0.25)
    assert halves.dtype == np.float32 and halves.tolist() == [0.0, 0.25, 0.5, 0.75]
    assert tn.arange(3, dtype=tn.float64).dtype == np.float64


def test_random_factories():
    tn.manual_seed(0)
    normal = tn.randn(20_000, dtype=tn.float64).numpy()
    uniform = tn.rand(20_000).numpy()
    assert tn.randn(2, 3).dtype == np.float32 and tn.randn((2, 3)).shape == (2, 3)
    # 20,000 samples: the mean's standard error is 0.007 (normal) and 0.002 (uniform)
    assert abs(normal.mean()) < 0.05 and abs(normal.std() - 1) < 0.05
    assert uniform.min() >= 0 and uniform.max() < 1 and abs(uniform.mean() - 0.5) < 0.02
    assert tn.rand(3, requires_grad=True).requires_grad


def test_tensor_of_a_list_of_tensors_takes_their_values_and_dtypes_as_pytorch():
    """A list of Tensors made an object array (tensor(tensor(3.), dtype=object) for its sum);
    now their values, without grad, in their own dtype, as torch.tensor does."""
    x = tn.tensor(1.5, requires_grad=True)
    made = tn.tensor([x, x * 2, tn.tensor(np.float64(4.0))])
    assert made.dtype == np.float64 and made.tolist() == [1.5, 3.0, 4.0]
    assert not made.requires_grad and made.grad_fn is None
    assert tn.tensor([np.float64(1.0)]).dtype == np.float64  # a NumPy scalar keeps its dtype
    assert tn.tensor([1.0, 2]).dtype == np.float32  # Python numbers alone: the default


@pytest.mark.parametrize("make", [
    lambda lib: [np.float16(1), 1.0], lambda lib: [np.float16(1), 1],
    lambda lib: [lib.tensor(1), 1.5], lambda lib: [lib.tensor(np.float32(1)), 2.0],
    lambda lib: [True, 1], lambda lib: [np.int32(1), 1], lambda lib: [np.float64(1), 1],
    lambda lib: [[1, 2], [np.float32(1), 2.0]], lambda lib: [], lambda lib: [1.5, 2],
])
def test_tensor_of_mixed_data_takes_pytorchs_dtype(make):
    """Python numbers count as the default dtypes (float32, int64) and the highest category
    wins, as in torch.tensor: with a typed element NumPy decided, and made float64 of
    [float32 tensor, 2.0] and of [float16 scalar, 1]."""
    torch = pytest.importorskip("torch")
    want = str(torch.tensor(make(torch)).dtype).replace("torch.", "")
    assert str(tn.tensor(make(tn)).dtype) == want


def test_tensor_of_a_torch_tensor_takes_its_values_as_torch_tensor_does():
    """tn.tensor(t) of a torch tensor raised "Cannot interpret 'torch.float32' as a data
    type": it is the explicit conversion that ops point to, so it reads the values, as
    torch.tensor reads a NumPy array (detached; bfloat16, which NumPy lacks, as float32)."""
    torch = pytest.importorskip("torch")
    t = torch.tensor([[1.5, -2.0], [3.0, 0.25]], requires_grad=True)
    made = tn.tensor(t)
    assert made.dtype == np.float32 and made.tolist() == t.tolist() and not made.requires_grad
    assert tn.tensor(t.double(), requires_grad=True).dtype == np.float64
    assert tn.tensor(torch.arange(3)).dtype == np.int64
    widened = tn.tensor(t.detach().bfloat16())
    assert widened.dtype == np.float32 and widened.tolist() == t.bfloat16().float().tolist()
    mixed = tn.tensor([t[0], [7.0, 8.0]])  # inside a list too, dtype as torch.tensor's
    assert mixed.dtype == np.float32 and mixed.tolist() == [[1.5, -2.0], [7.0, 8.0]]
    assert tn.as_tensor(t.detach(), dtype=tn.float64).dtype == np.float64


def test_zero_on_a_tensor_that_requires_grad_needs_no_grad():
    """zero_() on x after y = (x·w).sum() gave w a gradient of 0, silently: the forward had
    saved x. PyTorch refuses a leaf; without version counters, tinynorm refuses any tensor
    that requires grad while grad mode is on."""
    x, w = tn.tensor([1.0, 2.0], requires_grad=True), tn.tensor([3.0, 4.0], requires_grad=True)
    y = (x * w).sum()
    with pytest.raises(RuntimeError, match=r"zero_: a tensor of shape \(2,\) that requires grad"):
        x.zero_()
    with pytest.raises(RuntimeError, match="zero_"):
        (x * 1).zero_()
    y.backward(tn.tensor(-1.5))
    np.testing.assert_array_equal(w.grad, [-1.5, -3.0])
    with tn.no_grad():
        x.zero_()
    assert x.tolist() == [0.0, 0.0] and tn.tensor([5.0]).zero_().tolist() == [0.0]


def test_augmented_assignment_under_no_grad_updates_in_place_as_torch():
    """``with no_grad(): p -= lr * p.grad`` rebound p to a new tensor: the module kept its
    parameter unchanged, silently. Now it writes into p, as PyTorch's, with its casting and
    shape rules; on a leaf that requires grad outside no_grad it is PyTorch's error."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0, g, step = rng.standard_normal((3, 2)), rng.standard_normal((3, 2)), rng.standard_normal(2)
    layer = tn.nn.Linear(2, 3, dtype=tn.float64)
    theirs = torch.nn.Parameter(torch.tensor(w0))
    layer.weight.data[...] = w0
    w, data = layer.weight, layer.weight.data
    w.grad, theirs.grad = g.copy(), torch.tensor(g)
    with tn.no_grad(), torch.no_grad():
        w -= 0.1 * tn.tensor(w.grad)
        theirs -= 0.1 * theirs.grad
        w *= tn.tensor(step)  # broadcast into w's shape
        theirs *= torch.tensor(step)
        w /= 2.0
        theirs /= 2.0
        w += 1
        theirs += 1
    assert layer.weight is w and w.data is data and w.is_leaf and w.requires_grad
    np.testing.assert_allclose(host(w), theirs.detach().numpy(), rtol=1e-15)
    for lib, leaf in ((tn, w), (torch, theirs)):
        with pytest.raises(RuntimeError, match="leaf" if lib is tn else "leaf Variable"):
            leaf += 1
    with tn.no_grad():
        ints = tn.arange(3)
        with pytest.raises(RuntimeError, match=r"/=: the result is float32, which can't be "
                                               r"cast to the tensor's int64"):
            ints /= 2
        with pytest.raises(RuntimeError, match=r"\+=: the result has the broadcast shape "
                                               r"\(2, 3\)"):
            small = tn.ones(3)
            small += tn.ones(2, 3)
        half = tn.tensor(np.ones(2, np.float16))
        half += tn.tensor(np.full(2, 0.5, np.float32))  # float, cast back as torch does
        assert half.dtype == np.float16 and half.tolist() == [1.5, 1.5]
    h = w * 2.0  # a non-leaf outside no_grad: a new tensor, in the graph
    h_before = h
    h += 1.0
    assert h is not h_before and h.grad_fn is not None


def test_float16_random_draws_are_float32_draws_rounded():
    """NumPy's generator has no float16 ("Unsupported dtype float16 for random"), so randn,
    rand, float16 layers' init and float16 dropout all failed on the CPU (CuPy's draws float32
    and casts). Now each is the seed's float32 draw, rounded, and rand stays below 1."""
    for factory in (tn.randn, tn.rand):
        tn.manual_seed(3)
        half = factory(50_000, dtype=tn.float16).numpy()
        tn.manual_seed(3)
        rounded = factory(50_000, dtype=tn.float32).numpy().astype(np.float16)
        if factory is tn.rand:  # the draws that round up to 1 are kept just below it
            rounded = np.minimum(rounded, np.nextafter(np.float16(1), np.float16(0)))
        assert half.dtype == np.float16
        np.testing.assert_array_equal(half, rounded)
    assert tn.rand(200_000, dtype=tn.float16).numpy().max() < 1  # 0.9998 would round to 1
    assert tn.nn.Linear(4, 3, dtype=tn.float16).weight.dtype == np.float16
    x = tn.tensor(np.ones(20_000, np.float16), requires_grad=True)
    y = tn.nn.functional.dropout(x, 0.25)
    y.backward(np.full(20_000, 3.0, np.float16))
    kept = y.detach().numpy() != 0
    assert y.dtype == x.grad.dtype == np.float16 and abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_array_equal(x.grad, np.where(kept, np.float16(4.0), 0))


def test_like_factories_copy_shape_dtype_and_device():
    base = tn.tensor(np.ones((2, 3), dtype=np.float64))
    for make in (tn.zeros_like, tn.ones_like, tn.empty_like, tn.randn_like, tn.rand_like):
        t = make(base)
        assert (t.shape, t.dtype, t.device) == ((2, 3), np.float64, base.device), make.__name__
        assert make(base, dtype=tn.float32).dtype == np.float32
        assert make(base, requires_grad=True).requires_grad
    assert (tn.zeros_like(base).numpy() == 0).all() and (tn.ones_like(base).numpy() == 1).all()
    full = tn.full_like(base, 2.5)
    assert full.dtype == np.float64 and (full.numpy() == 2.5).all()


def test_manual_seed_reproduces_every_random_factory():
    def draw():
        return tn.randn(5).numpy(), tn.rand(2, 2).numpy(), tn.randn_like(tn.zeros(3)).numpy()

    tn.manual_seed(42)
    first = draw()
    tn.manual_seed(42)
    again = draw()
    tn.manual_seed(43)
    other = draw()
    for a, b, c in zip(first, again, other):
        np.testing.assert_array_equal(a, b)
        assert (a != c).any()


# ---- attributes and conversions ------------------------------------------------------------------
def test_attributes():
    t = tn.tensor(np.zeros((2, 3, 4)), requires_grad=True)
    assert tn.backend.is_array(t.data) and t.grad is None
    assert t.shape == (2, 3, 4) and t.dtype == np.float64 and t.ndim == 3
    assert t.device == ("cpu" if tn.backend.current() == "numpy" else "cuda:0")
    assert t.requires_grad and t.is_leaf and t.grad_fn is None
    assert (t.size() == (2, 3, 4) and t.size(1) == 3 and t.dim() == 3 and t.numel() == 24
            and len(t) == 2)
    y = t * 2
    assert not y.is_leaf and y.requires_grad and y.grad_fn is not None
    with pytest.raises(TypeError, match="0-d"):
        len(tn.tensor(1.0))


def test_numpy_item_and_python_numbers():
    t = tn.tensor([[1.5, 2.0]])
    assert isinstance(t.numpy(), np.ndarray) and t.numpy().tolist() == [[1.5, 2.0]]
    assert tn.tensor([3.25]).item() == 3.25 and isinstance(tn.tensor(2).item(), int)
    assert float(tn.tensor(1.5)) == 1.5 and int(tn.tensor(7)) == 7 and bool(tn.tensor(True))
    with pytest.raises(RuntimeError, match="2 elements"):
        t.item()
    needs_grad = tn.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="detach"):
        needs_grad.numpy()
    assert needs_grad.detach().numpy().tolist() == [1.0]


def test_detach_shares_memory_and_leaves_the_graph():
    x = tn.tensor(np.arange(3.0), requires_grad=True)
    y = x * 2
    d = y.detach()
    assert d.is_leaf and not d.requires_grad and d.grad_fn is None
    assert d.data is y.data
    with pytest.raises(RuntimeError, match="leaf"):
        y.requires_grad_(False)


def test_to_dtype_is_differentiable_and_cpu_is_identity():
    x = tn.tensor(np.array([1.0, 2.0]), device="cpu", requires_grad=True)
    y = x.to(tn.float32)
    assert y.dtype == np.float32 and y.requires_grad
    (y * tn.tensor([3.0, 4.0], device="cpu")).sum().backward()
    assert x.grad.dtype == np.float64 and x.grad.tolist() == [3.0, 4.0]
    assert x.to(tn.float64) is x and x.cpu() is x and x.to("cpu") is x
    assert x.float().dtype == np.float32 and x.to(dtype=tn.float32).double().dtype == np.float64
    with pytest.raises(ValueError, match="unknown device"):
        x.to("tpu")


def test_comparisons_return_bool_tensors_without_grad():
    x = tn.tensor([1.0, 2.0, 3.0], requires_grad=True)
    other = tn.tensor([3.0, 2.0, 1.0])
    results = {
        "<": (x < 2, [True, False, False]), "<=": (x <= other, [True, True, False]),
        ">": (x > other, [False, False, True]), ">=": (x >= 2, [False, True, True]),
        "==": (x == other, [False, True, False]), "!=": (x != 2.0, [True, False, True]),
    }
    for name, (result, expected) in results.items():
        assert isinstance(result, tn.Tensor), name
        assert (result.dtype == np.bool_ and not result.requires_grad
                and result.grad_fn is None), name
        assert result.tolist() == expected, name


def test_operators_with_python_numbers_and_arrays_on_either_side():
    x = tn.tensor([1.0, 2.0])
    assert (2 * x).tolist() == [2.0, 4.0] and (1 - x).tolist() == [0.0, -1.0]
    assert (4 / x).tolist() == [4.0, 2.0] and (x ** 2).tolist() == [1.0, 4.0]
    assert isinstance(tn.backend.xp().array([1.0, 1.0]) + x, tn.Tensor)  # an array of x's device


def test_repr_names_grad_state():
    assert repr(tn.tensor([1.0])).startswith("tensor(")
    assert "requires_grad=True" in repr(tn.tensor([1.0], requires_grad=True))
    assert "grad_fn=<MulBackward>" in repr(tn.tensor([1.0], requires_grad=True) * 2)
