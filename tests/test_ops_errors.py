"""Bad input fails loudly: the error names the op and the shapes or dtype it was given."""
from __future__ import annotations

import re

import numpy as np
import pytest

import tinynorm as tn
from tinynorm.ops import shape as shape_ops
from tinynorm.testing.compare import to_host as host

F = tn.nn.functional


def t(*shape, dtype=np.float64):
    return tn.tensor(np.ones(shape, dtype=dtype))


def mask(*shape):
    return tn.tensor(np.ones(shape, dtype=bool))


# (op name, call, shapes the message must name)
SHAPE_MISMATCHES = [
    ("add", lambda: t(2, 3) + t(4), [(2, 3), (4,)]),
    ("sub", lambda: tn.sub(t(2, 3), t(3, 2)), [(2, 3), (3, 2)]),
    ("mul", lambda: t(5) * t(4), [(5,), (4,)]),
    ("div", lambda: t(2, 1, 3) / t(2, 2), [(2, 1, 3), (2, 2)]),
    ("matmul", lambda: t(2, 3) @ t(4, 5), [(2, 3), (4, 5)]),
    ("matmul", lambda: t(3) @ t(4), [(3,), (4,)]),
    ("matmul", lambda: t(2, 3, 4) @ t(3, 4, 5), [(2, 3, 4), (3, 4, 5)]),  # batch dims
    ("linear", lambda: F.linear(t(2, 3), t(4, 5)), [(2, 3), (4, 5)]),
    ("linear", lambda: F.linear(t(2, 3), t(4, 3), t(5)), [(5,), (4, 3)]),
    ("cat", lambda: tn.cat([t(2, 3), t(2, 4)], 0), [(2, 3), (2, 4)]),
    ("cat", lambda: tn.cat([t(2, 3), t(2, 3, 1)], 1), [(2, 3), (2, 3, 1)]),
    ("stack", lambda: tn.stack([t(2, 3), t(3, 2)]), [(2, 3), (3, 2)]),
    ("where", lambda: tn.where(mask(2, 3), t(4), t(2, 3)), [(2, 3), (4,)]),
    ("masked_fill", lambda: t(2, 3).masked_fill(mask(3, 2), 0.0), [(2, 3), (3, 2)]),
    ("masked_fill", lambda: t(3).masked_fill(mask(2, 3), 0.0), [(3,), (2, 3)]),
    ("reshape", lambda: t(2, 3).reshape(4, 2), [(2, 3), (4, 2)]),
    ("view", lambda: t(2, 3).view(-1, 4), [(2, 3), (-1, 4)]),
    ("reshape", lambda: t(2, 3).reshape(-1, -1), [(2, 3), (-1, -1)]),
    ("reshape", lambda: t(2, 3).reshape(-2, -3), [(2, 3), (-2, -3)]),  # was NumPy's bare error
    ("reshape", lambda: t(2, 3).reshape(3, -2), [(2, 3), (3, -2)]),  # NumPy would infer 2
    ("reshape", lambda: t(0, 3).reshape(0, -1), [(0, 3), (0, -1)]),  # -1 of an empty tensor
    ("view", lambda: shape_ops.view(t(2, 3), 4, 2), [(2, 3), (4, 2)]),
    ("view", lambda: shape_ops.view(t(2, 3), 3, -2), [(2, 3), (3, -2)]),
    ("expand", lambda: t(2, 3).expand(4, 4), [(2, 3), (4, 4)]),
    ("expand", lambda: t(3, 1).expand(-1, 3, 4), [(3, 1), (-1, 3, 4)]),  # -1 in a new dim
    ("flatten", lambda: t(2, 3, 4).flatten(2, 1), [(2, 3, 4)]),
    ("split", lambda: t(2, 5).split([2, 2], 1), [(2, 5)]),
    ("permute", lambda: t(2, 3).permute(0, 0), [(2, 3)]),
]


@pytest.mark.parametrize("op,call,shapes", SHAPE_MISMATCHES,
                         ids=[f"{op}-{i}" for i, (op, _, _) in enumerate(SHAPE_MISMATCHES)])
def test_shape_mismatch_names_the_op_and_the_shapes(op, call, shapes):
    with pytest.raises((ValueError, RuntimeError, IndexError)) as info:
        call()
    message = str(info.value)
    assert message.startswith(op), message
    for s in shapes:
        assert str(s) in message, f"{s} not named in: {message}"


FLOAT_ONLY = [
    ("tanh", tn.tanh), ("exp", tn.exp), ("log", tn.log), ("sqrt", tn.sqrt),
    ("softmax", lambda x: tn.softmax(x, -1)), ("log_softmax", lambda x: tn.log_softmax(x, 0)),
    ("gelu", F.gelu), ("dropout", lambda x: F.dropout(x, 0.5)),
]


@pytest.mark.parametrize("op,call", FLOAT_ONLY, ids=[op for op, _ in FLOAT_ONLY])
@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_float_only_ops_name_the_dtype(op, call, dtype):
    x = tn.tensor(np.ones((2, 3), dtype=dtype))
    with pytest.raises(TypeError, match=rf"^{op}: .*floating-point.*{dtype}"):
        call(x)


def test_requires_grad_on_an_integer_tensor_raises():
    with pytest.raises(RuntimeError, match="floating-point.*int64"):
        tn.tensor([1, 2, 3], requires_grad=True)
    with pytest.raises(RuntimeError, match="floating-point.*bool"):
        tn.tensor([True, False]).requires_grad_()
    with pytest.raises(RuntimeError, match="floating-point.*int32"):
        tn.zeros(3, dtype=tn.int32, requires_grad=True)


def test_where_and_masked_fill_need_bool_masks():
    with pytest.raises(TypeError, match="where: .*bool.*float64"):
        tn.where(t(2), t(2), t(2))
    with pytest.raises(TypeError, match="masked_fill: .*bool.*int64"):
        t(2).masked_fill(tn.tensor([0, 1]), 0.0)


def test_cat_of_mixed_dtypes_names_both():
    with pytest.raises(TypeError, match="^cat: ") as info:
        tn.cat([t(2, dtype=np.float32), t(2)])
    assert "float32" in str(info.value) and "float64" in str(info.value)


def test_dim_out_of_range_names_the_op_and_range():
    with pytest.raises(IndexError,
                       match=re.escape("softmax: dim 2 is out of range for a tensor of 2 dims")):
        tn.softmax(t(2, 3), 2)
    with pytest.raises(IndexError, match="sum: dim -3"):
        t(2, 3).sum(-3)


def test_pow_rejects_tensor_exponents():
    with pytest.raises(TypeError, match="pow: .*exponent"):
        t(2) ** t(2)


BAD_ARGUMENTS = [  # (error, message pattern, call): each was NumPy's or Python's error, or none
    (TypeError, r"sum: dim must be an int or a tuple of ints, got 1\.0", lambda: t(2, 3).sum(1.0)),
    (ValueError, r"sum: dims \(0, 0\) name one dim more than once", lambda: t(2).sum((0, 0))),
    (TypeError, r"reshape: sizes must be ints, got 2\.0 in \(2\.0, 3\)",
     lambda: t(2, 3).reshape(2.0, 3)),  # int() made it 2
    (ValueError, r"cat: tensor 0 is 0-d", lambda: tn.cat([t()])),
    (ValueError, r"split: a 0-d tensor has no dim", lambda: tn.split(t(), 1)),
    (ValueError, r"chunk: a 0-d tensor has no dim", lambda: tn.chunk(t(), 2)),
    (TypeError, r"stack: tensor 1 has dtype float32, tensor 0 has float64",  # named "cat"
     lambda: tn.stack([t(2), t(2, dtype=np.float32)])),
    (TypeError, r"masked_fill: value must be a number .* float64 tensor can hold, got 'x'",
     lambda: t(2).masked_fill(mask(2), "x")),
    (TypeError, r"max: the elementwise form max\(input, other\) is not supported",
     lambda: tn.max(t(2), t(2))),  # read the tensor as dims
    (TypeError, r"min: the elementwise form min\(input, other\) is not supported",
     lambda: t(2).min(t(2))),
    (RuntimeError, r"min: cannot reduce over an empty dim", lambda: t(0, 2).min(0)),
    (TypeError, r"matmul: other must be a tensor, got list",
     lambda: t(2, 3) @ [[1.0], [2.0], [3.0]]),
    (TypeError, r"linear: weight must be a tensor, got list",
     lambda: F.linear(t(2, 3), [[1.0, 2.0, 3.0]])),
    (TypeError, r"add: expected numbers or numeric tensors, got str", lambda: t(2) + "x"),
    (TypeError, r"sub: subtraction with a bool tensor", lambda: mask(2) - mask(2)),
    (ValueError, r"pow: an integer tensor \(dtype int64\) to a negative integer power",
     lambda: tn.tensor([1, 2]) ** -1),
    (ValueError, r"tinynorm\.tensor: expected a number, an array or a nested sequence",
     lambda: tn.tensor([[1.0], [1.0, 2.0]])),
    (TypeError, r"tinynorm\.tensor: expected numbers, got elements of str",
     lambda: tn.tensor(["a"])),  # was a tensor of dtype <U1
]


@pytest.mark.parametrize("error, pattern, call", BAD_ARGUMENTS,
                         ids=[p.split(":")[0] + f"-{i}" for i, (_, p, _) in
                              enumerate(BAD_ARGUMENTS)])
def test_bad_arguments_are_named_by_the_op(error, pattern, call):
    with pytest.raises(error, match="^" + pattern):
        call()


def test_getitem_out_of_range_names_the_shape():
    with pytest.raises(IndexError, match=re.escape("getitem: ") + ".*" + re.escape("(2, 3)")):
        t(2, 3)[5]


@pytest.mark.parametrize("op, call", [
    ("reshape", lambda: t(2, 3).reshape(4, 2)),
    ("view", lambda: t(2, 3).view(-1, 4)),
    ("view", lambda: shape_ops.view(t(2, 3), -1, -1)),
])
def test_reshape_error_wraps_numpys(op, call):
    """The array library's own error is the cause (``raise ... from``), not swallowed; the
    message in front of it is tinynorm's, naming the op and both shapes."""
    with pytest.raises(ValueError, match=rf"^{op}: .*\(2, 3\)") as info:
        call()
    cause = info.value.__cause__
    assert isinstance(cause, ValueError) and not str(cause).startswith(op), cause


# ---- another library's tensors -------------------------------------------------------------
@pytest.mark.parametrize("name, position, call", [
    ("Linear", 0, lambda x: F.linear(x, t(4, 3))),
    ("Add", 0, lambda x: tn.add(x, t(2, 3))),
    ("Mul", 1, lambda x: t(2, 3) * x),
    ("Softmax", 0, lambda x: tn.softmax(x, -1)),
    ("GELU", 0, lambda x: F.gelu(x)),
    ("CrossEntropy", 0, lambda x: F.cross_entropy(x, tn.tensor(np.array([0, 1])))),
])
def test_a_torch_tensor_is_refused_by_every_op_naming_it(name, position, call):
    """Function.apply refuses another library's arrays for every op. A torch tensor used to
    reach the forward raw: Linear failed in NumPy ("Could not convert tensor(...) to a NumPy
    dtype"), Softmax on torch's max, and Add returned a Tensor, converted silently."""
    torch = pytest.importorskip("torch")
    x = torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match=rf"^\w*{name}\w*: argument {position} is a "
                                        r"torch\.Tensor, not a tinynorm Tensor"):
        call(x)


def test_numbers_numpy_scalars_and_arrays_still_pass_through_apply():
    x = t(2, 3)
    assert np.allclose(host(x + np.float32(2.0)), 3.0)
    assert np.allclose(host(tn.add(np.ones((2, 3)), x)), 2.0)
    assert np.allclose(host(x * 3), 3.0)
