"""Small helpers for the adjoints that recur across ops."""
from __future__ import annotations

from .. import backend


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the adjoint of broadcasting is summation.

    Broadcasting copies an input along the dims it lacks or has as size 1; each copy
    contributed to the output, so the input's gradient is the sum over those copies.
    """
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1
    )
    return grad.sum(axis=axes).reshape(shape) if axes else grad.reshape(shape)


def operand_shape(a):
    """An operand's shape: () for a Python number (the binary ops and where take both)."""
    return a.shape if hasattr(a, "shape") else ()


def broadcast_shape(op: str, *shapes):
    """The broadcast shape of ``shapes``, or a ValueError naming the op and every shape."""
    try:
        return _broadcast_shapes(*shapes)
    except ValueError:
        listed = " and ".join(str(tuple(s)) for s in shapes)
        raise ValueError(f"{op}: shapes {listed} cannot be broadcast together") from None


def _broadcast_shapes(*shapes):
    ndim = max(len(s) for s in shapes)
    out = []
    for i in range(ndim):
        sizes = {s[i - ndim + len(s)] for s in shapes if i - ndim + len(s) >= 0} - {1}
        if len(sizes) > 1:
            raise ValueError
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def require_float(op: str, *arrays) -> None:
    """A TypeError naming the op and dtype when an input is not floating point."""
    for a in arrays:
        if backend.is_array(a) and a.dtype.kind != "f":
            raise TypeError(f"{op}: expected a floating-point input, got dtype {a.dtype}")


def normalize_dim(op: str, dim: int, ndim: int) -> int:
    """``dim`` as a non-negative axis, or an IndexError naming the op and the valid range."""
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise IndexError(f"{op}: dim {dim} is out of range for a tensor of {ndim} dims "
                         f"(expected {-max(ndim, 1)} to {max(ndim, 1) - 1})")
    return dim % max(ndim, 1)


def reduction_axes(op: str, dim, ndim: int):
    """``dim`` (None, an int or a tuple) as a tuple of non-negative axes."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(sorted({normalize_dim(op, d, ndim) for d in dims}))
