"""Ops that move elements without changing them: reshape, permute, indexing, cat, split.

Each backward is the inverse movement applied to ``grad_out``; none saves an array.
"""
from __future__ import annotations

import math
from numbers import Integral

from .. import backend
from ..autograd import Function
from ..tensor import Tensor
from ._adjoint import normalize_dim, scatter_add, unbroadcast


def _sizes(shape, op):
    """The sizes given as ``f(2, 3)`` or ``f((2, 3))``, each an int, or a TypeError naming the
    op (``int()`` would have taken 2.0, and 2.5 as 2)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, Integral):
            raise TypeError(f"{op}: sizes must be ints, got {s!r} in {tuple(shape)}")
    return tuple(int(s) for s in shape)


class Reshape(Function):
    """y = x with a new shape (one -1 allowed); the number of elements must match. ``op`` is
    the name errors give: "reshape", or "view" (the same op here)."""

    @staticmethod
    def forward(ctx, x, shape, op):
        # NumPy infers any negative size, PyTorch only -1: the one rule NumPy does not check
        if any(s < -1 for s in shape):
            raise ValueError(f"{op}: shape {shape} has a size below -1 (only one -1, the "
                             f"inferred size, may be negative); the tensor's shape is {x.shape}")
        try:
            y = x.reshape(shape)
        except ValueError as err:
            raise ValueError(f"{op}: a tensor of shape {x.shape} ({x.size} elements) cannot take "
                             f"the shape {shape}: the sizes must multiply to {x.size}, with at "
                             f"most one -1 (inferred)") from err
        ctx.shape = x.shape
        return y

    @staticmethod
    def backward(ctx, grad_out):
        """Reshaping is a bijection of positions: dx = grad_out reshaped back. Saves the shape."""
        return grad_out.reshape(ctx.shape), None, None


class Permute(Function):
    """y = x with its dims reordered: y.shape[i] = x.shape[dims[i]]."""

    @staticmethod
    def forward(ctx, x, dims):
        axes = tuple(normalize_dim("permute", d, x.ndim) for d in dims)
        if sorted(axes) != list(range(x.ndim)):
            raise ValueError(f"permute: dims {dims} are not a permutation of the {x.ndim} dims of "
                             f"a tensor of shape {x.shape}")
        ctx.dims = axes
        return x.transpose(axes)

    @staticmethod
    def backward(ctx, grad_out):
        """The adjoint of a permutation is its inverse: dx = grad_out.transpose(argsort(dims)).
        Saves dims (a tuple)."""
        inverse = sorted(range(len(ctx.dims)), key=ctx.dims.__getitem__)
        return grad_out.transpose(inverse), None


class Expand(Function):
    """y = x broadcast to ``shape`` (-1 keeps a dim), as torch.Tensor.expand."""

    @staticmethod
    def forward(ctx, x, shape):
        lead = len(shape) - x.ndim
        if lead < 0:
            raise ValueError(f"expand: shape {shape} has fewer dims than the tensor's {x.shape}")
        if -1 in shape[:lead]:
            raise ValueError(f"expand: -1 in shape {shape} is not allowed in a new leading dim "
                             f"(the tensor's shape is {x.shape})")
        target = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(shape))
        ctx.shape = x.shape
        try:
            return backend.array_module(x).broadcast_to(x, target)
        except ValueError:
            raise ValueError(f"expand: a tensor of shape {x.shape} cannot be expanded to "
                             f"{shape}") from None

    @staticmethod
    def backward(ctx, grad_out):
        """The adjoint of broadcasting is summation over the copies (``unbroadcast``): dx =
        grad_out summed over the broadcast dims. Saves x's shape."""
        return unbroadcast(grad_out, ctx.shape), None


class GetItem(Function):
    """y = x[index]: basic slicing, integer-array (advanced) and boolean indexing."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.shape, ctx.dtype, ctx.index = x.shape, x.dtype, index
        try:
            return x[index]
        except IndexError as err:
            raise IndexError(f"getitem: index {index!r} is invalid for a tensor of shape "
                             f"{x.shape}: {err}") from None

    @staticmethod
    def backward(ctx, grad_out):
        """dx is zero except at the selected positions, which receive grad_out.

        With integer arrays a position can be selected several times; its gradient is the
        sum of those contributions, so the scatter accumulates (``scatter_add``) instead of
        assigning. Saves the index (the caller's, needed to scatter back: a boolean mask is
        a byte per element of x, an integer index may be larger than x) and x's shape and
        dtype.
        """
        xp = backend.array_module(grad_out)
        dx = xp.zeros(ctx.shape, dtype=ctx.dtype)
        if _repeats_possible(ctx.index):
            scatter_add(dx, ctx.index, grad_out)
        else:
            dx[ctx.index] = grad_out
        return dx, None


def _repeats_possible(index) -> bool:
    """Only integer arrays can select an element twice; slices, ints and masks cannot."""
    items = index if isinstance(index, tuple) else (index,)
    return any(backend.is_array(i) and i.dtype.kind in "iu" for i in items)


def _pieces(a, sizes, dim):
    """The consecutive slices of ``a`` along ``dim`` with the given sizes (views, no copy):
    Split's forward, and Cat's backward (the adjoint of joining is cutting)."""
    index, start, pieces = [slice(None)] * a.ndim, 0, []
    for n in sizes:
        index[dim] = slice(start, start + n)
        pieces.append(a[tuple(index)])
        start += n
    return tuple(pieces)


class Cat(Function):
    """y = the inputs joined along ``dim``; all other dims must match."""

    @staticmethod
    def forward(ctx, dim, *xs):
        if not xs:
            raise ValueError("cat: expected a non-empty sequence of tensors")
        ref = xs[0]
        for i, x in enumerate(xs):
            if x.ndim == 0:
                raise ValueError(f"cat: tensor {i} is 0-d and cannot be concatenated; expected "
                                 f"tensors with at least one dim (stack joins 0-d tensors)")
        d = normalize_dim("cat", dim, ref.ndim)
        for i, x in enumerate(xs):
            if x.dtype != ref.dtype:
                raise TypeError(f"cat: tensor {i} has dtype {x.dtype}, tensor 0 has {ref.dtype}; "
                                "convert with .to(dtype) first")
            outside = x.shape[:d] + x.shape[d + 1:]
            if x.ndim != ref.ndim or outside != ref.shape[:d] + ref.shape[d + 1:]:
                raise ValueError(f"cat: tensor {i} has shape {x.shape}, which does not match "
                                 f"tensor 0's {ref.shape} outside dim {dim}")
        ctx.dim, ctx.sizes = d, [x.shape[d] for x in xs]
        return backend.array_module(*xs).concatenate(xs, axis=d)

    @staticmethod
    def backward(ctx, grad_out):
        """Each input's gradient is its own slice of grad_out along dim (``_pieces``, as
        Split's forward). Saves the sizes."""
        return (None, *_pieces(grad_out, ctx.sizes, ctx.dim))


class Split(Function):
    """The pieces of x along ``dim`` with the given sizes (several outputs)."""

    @staticmethod
    def forward(ctx, x, sizes, dim):
        d = normalize_dim("split", dim, x.ndim)
        if sum(sizes) != x.shape[d]:
            raise ValueError(f"split: sizes {list(sizes)} do not add up to {x.shape[d]}, the "
                             f"size of dim {dim} of a tensor of shape {x.shape}")
        ctx.dim = d
        return _pieces(x, sizes, d)

    @staticmethod
    def backward(ctx, *grad_outs):
        """Splitting's adjoint is concatenation: dx = cat(grad_outs, dim). Saves the dim only
        (the engine fills an unused piece's gradient with zeros of its shape)."""
        xp = backend.array_module(*grad_outs)
        return xp.concatenate(grad_outs, axis=ctx.dim), None, None


def reshape(x, *shape):
    return Reshape.apply(x, _sizes(shape, "reshape"), "reshape")


def view(x, *shape):
    """``Tensor.view``: reshape, under its own name in errors. Any layout can be viewed here
    (NumPy copies when it must), where PyTorch's view requires compatible strides."""
    return Reshape.apply(x, _sizes(shape, "view"), "view")


def flatten(x, start_dim=0, end_dim=-1):
    if x.ndim == 0:
        return reshape(x, 1)
    s = normalize_dim("flatten", start_dim, x.ndim)
    e = normalize_dim("flatten", end_dim, x.ndim)
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for a "
                         f"tensor of shape {x.shape}")
    return reshape(x, *x.shape[:s], math.prod(x.shape[s:e + 1]), *x.shape[e + 1:])


def permute(x, *dims):
    return Permute.apply(x, _sizes(dims, "permute"))


def transpose(x, dim0, dim1):
    dims = list(range(x.ndim))
    a, b = normalize_dim("transpose", dim0, x.ndim), normalize_dim("transpose", dim1, x.ndim)
    if dims:  # a 0-d tensor takes dims 0 and -1, as in PyTorch, and stays as it is
        dims[a], dims[b] = dims[b], dims[a]
    return Permute.apply(x, tuple(dims))


def unsqueeze(x, dim):
    d = normalize_dim("unsqueeze", dim, x.ndim + 1)
    return reshape(x, *x.shape[:d], 1, *x.shape[d:])


def squeeze(x, dim=None):
    if dim is None:
        return reshape(x, *[n for n in x.shape if n != 1])
    dims = {normalize_dim("squeeze", d, x.ndim) for d in ((dim,) if isinstance(dim, int) else dim)}
    return reshape(x, *[n for i, n in enumerate(x.shape) if not (i in dims and n == 1)])


def expand(x, *shape):
    return Expand.apply(x, _sizes(shape, "expand"))


def getitem(x, index):
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, (tuple, list)):
        # lists become arrays, also inside a tuple: backward must see every integer array to
        # accumulate repeated indices
        xp = backend.array_module(x.data)
        items = index if isinstance(index, tuple) else (index,)
        items = tuple(i.data if isinstance(i, Tensor)
                      else xp.asarray(i, dtype=None if i else backend.int64)  # [] selects none
                      if isinstance(i, list) else i for i in items)
        index = items if isinstance(index, tuple) else items[0]
    return GetItem.apply(x, index)


def cat(tensors, dim=0):
    return Cat.apply(dim, *tensors)


def stack(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: expected a non-empty sequence of tensors")
    for i, t in enumerate(tensors):
        if t.shape != tensors[0].shape:
            raise ValueError(f"stack: tensor {i} has shape {t.shape}, expected "
                             f"{tensors[0].shape} like tensor 0")
        if t.dtype != tensors[0].dtype:
            raise TypeError(f"stack: tensor {i} has dtype {t.dtype}, tensor 0 has "
                            f"{tensors[0].dtype}; convert with .to(dtype) first")
    d = normalize_dim("stack", dim, tensors[0].ndim + 1)
    return cat([unsqueeze(t, d) for t in tensors], d)


def split(x, split_size_or_sections, dim=0):
    if x.ndim == 0:
        raise ValueError("split: a 0-d tensor has no dim to split; expected at least one dim")
    d = normalize_dim("split", dim, x.ndim)
    n = x.shape[d]
    if isinstance(split_size_or_sections, int):
        step = split_size_or_sections
        if step <= 0:
            raise ValueError(f"split: split_size must be positive, got {step}")
        sizes = [min(step, n - i) for i in range(0, n, step)] or [0]
    else:
        sizes = [int(s) for s in split_size_or_sections]
    return Split.apply(x, tuple(sizes), d)


def chunk(x, chunks, dim=0):
    if chunks <= 0:
        raise ValueError(f"chunk: chunks must be positive, got {chunks}")
    if x.ndim == 0:
        raise ValueError("chunk: a 0-d tensor has no dim to split; expected at least one dim")
    n = x.shape[normalize_dim("chunk", dim, x.ndim)]
    if n == 0:  # as torch.chunk: every chunk of an empty dim is empty
        return split(x, [0] * chunks, dim)
    return split(x, -(-n // chunks), dim)
