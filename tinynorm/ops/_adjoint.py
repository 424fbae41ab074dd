"""Small helpers for the adjoints that recur across ops."""
from __future__ import annotations

from numbers import Integral

from .. import backend


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the adjoint of broadcasting is summation.

    Broadcasting copies an input along the dims it lacks or has as size 1; each copy
    contributed to the output, so the input's gradient is the sum over those copies (float16
    summed in float32, see ``summed``).
    """
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1
    )
    return summed(grad, axes).reshape(shape) if axes else grad.reshape(shape)


def summed(a, axis, keepdims: bool = False):
    """``a.sum(axis, keepdims)``, float16 summed in ``compute_dtype`` (float32) and rounded
    once, as PyTorch's sums are. NumPy sums float16 in float32 along the last axis only;
    along another, in float16 itself, where a running sum stops growing at 2048 (2048 + a
    number below 1 rounds back to 2048): a (4,) bias broadcast over 8192 rows got 2048 for
    gradients summing to 4100."""
    if a.dtype == backend.float16:
        return a.sum(axis=axis, keepdims=keepdims, dtype=backend.float32).astype(a.dtype)
    return a.sum(axis=axis, keepdims=keepdims)


def scatter_add(target, index, values) -> None:
    """``target[index] += values`` with repeated indices accumulated: the adjoint of a gather
    (``y = x[index]``, an embedding's lookup), where a position selected k times receives the
    sum of its k gradients. In the same order on every run: NumPy's ``add.at`` on the CPU,
    ``sorted_scatter_add`` on a GPU. ``values`` has ``target[index]``'s shape (the callers pass
    grad_out): NumPy 2.4.6's add.at, given values (2,) for an index of shape (3, 2), added
    them once, not three times.

    CuPy's own scatter_add and add.at accumulate with atomic adds, in whatever order the
    threads arrive: an embedding's gradient then changed in its last bits from one run to the
    next, and training resumed from a checkpoint left the uninterrupted run's trajectory (seen
    on an H100). The price, measured there: GPT-2's token embedding
    (8192 lookups into 50257 × 768, float32) takes 2.0 ms against the atomic 0.16 ms, and
    16384 lookups into 65 × 384 take 3.2 ms against 0.10; a fixed cost of about 2 ms (the
    sort and some twenty array operations), small beside a step of a model that size."""
    if backend.device_of(target) == "cpu":
        backend.array_module(target).add.at(target, index, values)
    else:
        sorted_scatter_add(target, index, values)


def sorted_scatter_add(target, index, values) -> None:
    """``target[index] += values`` without atomics, for any array module (the tests run it on
    NumPy too); ``index`` is anything ``target[index]`` accepts, ``values`` broadcasts to it.

    Each element of ``target[index]`` is a position p of ``target`` (taken from
    ``arange(target.size).reshape(target.shape)[index]``; for an index of the first axis alone,
    a row). The contributions are sorted by position, stably, so the equal positions form runs
    in index order. A run of length m is summed as a pairwise tree in ceil(log2 m) rounds:
    round k adds the element 2^k further along the run into each element whose rank in the
    run is a multiple of 2^(k+1) (whole-array passes: every other element gets + 0, which
    leaves it as it is but for −0.0, which becomes 0.0). No position is written twice in a
    round, so the result does not depend on timing; each run's sum is then added to its
    position once. Rounds that gathered only the pairs' elements were slower on an H100 (each
    waits for the GPU to count them): 2.6 and 5.3 ms in the two cases of ``scatter_add``."""
    xp = backend.array_module(target, values, op="scatter_add")
    work = target if target.flags.c_contiguous else xp.ascontiguousarray(target)
    if backend.is_array(index) and index.dtype.kind in "iu" and index.ndim == 1 and target.ndim:
        # the embedding's case, whole rows: a position is a row number
        positions = xp.arange(target.shape[0])[index]  # negatives counted from the end
        flat = work.reshape(target.shape[0], -1)
        selected = (index.size,) + target.shape[1:]
    else:
        positions = xp.arange(target.size).reshape(target.shape)[index]
        flat = work.reshape(-1, 1)
        selected = positions.shape
    if positions.size == 0:
        return
    contributions = xp.broadcast_to(values, selected).reshape(positions.size, -1)
    positions = positions.reshape(-1)
    order = xp.argsort(positions, kind="stable")
    positions, sums = positions[order], contributions[order]  # sums: a copy, summed in place
    first = xp.empty(positions.size, dtype=bool)
    first[0] = True
    xp.not_equal(positions[1:], positions[:-1], out=first[1:])
    starts = xp.flatnonzero(first)
    run = xp.cumsum(first) - 1  # run number of each element
    rank = xp.arange(positions.size) - starts[run]
    length = xp.diff(xp.append(starts, positions.size))[run]
    # two waits for a GPU per call, in flatnonzero (which counts the runs) and here; the
    # rounds themselves are three whole-array passes each, with none
    step, longest = 1, int(length.max())
    while step < longest:
        pairs = (rank[:-step] % (2 * step) == 0) & (rank[:-step] + step < length[:-step])
        sums[:-step] += xp.where(pairs[:, None], sums[step:], 0)  # elsewhere + 0
        step *= 2
    flat[positions[starts]] += sums[starts]
    if work is not target:
        target[...] = work


def operand_shapes(op: str, *operands) -> tuple:
    """The operands' shapes (() for a Python number), for backward's ``unbroadcast``, after
    checking that they broadcast together (a ValueError naming ``op`` and every shape)."""
    shapes = tuple(a.shape if hasattr(a, "shape") else () for a in operands)
    broadcast_shape(op, *shapes)
    return shapes


_NUMBERS = {bool: 0, int: 1, float: 2, complex: 3}  # Python numbers' categories (bool first)


def _category(a) -> int:
    """PyTorch's category of an array or a number: 0 bool, 1 integer, 2 float, 3 complex."""
    if hasattr(a, "dtype"):
        return backend.category(a.dtype)
    for kind, number_category in _NUMBERS.items():
        if isinstance(a, kind):
            return number_category
    raise TypeError(f"expected numbers or numeric tensors, got {type(a).__name__}")


def result_dtype(*operands):
    """The dtype PyTorch's type promotion gives an elementwise op on ``operands`` (arrays,
    Python numbers, NumPy scalars). The highest category (bool < int < float < complex) wins,
    and its dtype comes from the operands of that category that rank highest: tensors with
    dims, then 0-d tensors, then numbers, whose dtype is the default one (float32, int64; a
    complex number takes the floats' precision). So float32 times a NumPy float64 scalar,
    float32 + a 0-d float64 tensor and int64 · float32 are float32, where NumPy gives float64;
    an int64 tensor + 1.5 is float32, NumPy's float64."""
    category = max(_category(a) for a in operands)
    for rank in (lambda a: a.ndim > 0, lambda a: a.ndim == 0):
        dtypes = [a.dtype for a in operands
                  if backend.is_array(a) and rank(a) and _category(a) == category]
        if dtypes:
            return backend.result_type(*dtypes)
    if category == 3:  # float64 · 1j is complex128, float32 · 1j complex64
        return backend.result_type(backend.complex64, *(
            a.dtype for a in operands if backend.is_array(a) and a.dtype.kind == "f"))
    return (backend.bool_, backend.int64, backend.DEFAULT_FLOAT)[category]


def _unchanged(operands, floating: bool) -> bool:
    """True in the common cases that need no cast: arrays of one dtype, with Python numbers
    of no higher category (x * 0.5 on float32), and a float dtype if ``floating``."""
    dtype = None
    for a in operands:
        if backend.is_array(a):
            if dtype is None:
                dtype = a.dtype
            elif a.dtype != dtype:
                return False
    if dtype is None or (floating and dtype.kind != "f"):
        return False
    top = backend.category(dtype)
    return all(backend.is_array(a) or _NUMBERS.get(type(a), 9) <= top for a in operands)


def promoted(op: str, *operands, floating: bool = False) -> tuple:
    """``operands`` cast to ``result_dtype`` (arrays with ``astype``, no copy when already
    there; numbers stay numbers, NumPy scalars become Python numbers, which NumPy then
    treats as weak, as PyTorch treats all numbers). ``floating``: a bool or integer result
    becomes the default float dtype instead (true division, as PyTorch's)."""
    if _unchanged(operands, floating):
        return operands
    try:
        dtype = result_dtype(*operands)
    except TypeError as error:
        raise TypeError(f"{op}: {error}") from None
    if floating and dtype.kind not in "fc":
        dtype = backend.DEFAULT_FLOAT
    return tuple(a.astype(dtype, copy=False) if backend.is_array(a)
                 else a.item() if hasattr(a, "item") else a for a in operands)


def as_saved(given, cast):
    """What a product's backward saves of an operand: the caller's array ``given`` when it is
    a floating array that ``promoted`` widened into ``cast``, rather than that new copy. Its
    product with grad_out (which has the wider dtype) widens it again, exactly, to the same
    bits, and it is alive anyway: a float16 activation times a float32 weight saved a float32
    copy, 4 new bytes an element. Anything else (an integer operand, a number) is ``cast``."""
    if (cast is given or not backend.is_array(given) or given.dtype.kind != "f"
            or backend.result_type(given.dtype, cast.dtype) != cast.dtype):
        return cast
    return given


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


def require_bool(op: str, name: str, a) -> None:
    """A TypeError naming the op, the argument and what it got, unless ``a`` is a bool array."""
    if not backend.is_array(a) or a.dtype.kind != "b":
        raise TypeError(f"{op}: {name} must be a bool tensor, got "
                        f"{getattr(a, 'dtype', type(a).__name__)}")


def compute_dtype(dtype):
    """The dtype that sums over many elements (the norms, var and std) are taken in for input
    of ``dtype``: float32 for float16, as PyTorch's CPU and CUDA kernels do (its "opmath"
    type), so a result rounds to float16 once; the dtype itself otherwise. In float16 the
    norms were 2-3 ulp off, and a row whose Σx² passed 65504 came out all zeros."""
    return backend.float32 if dtype == backend.float16 else dtype


def widened(dtype, *arrays) -> tuple:
    """Each array as ``dtype`` (None stays None): the array itself where it already is."""
    return tuple(None if a is None else a.astype(dtype, copy=False) for a in arrays)


def normalize_dim(op: str, dim: int, ndim: int) -> int:
    """``dim`` as a non-negative axis, or an IndexError naming the op and the valid range."""
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise IndexError(f"{op}: dim {dim} is out of range for a tensor of {ndim} dims "
                         f"(expected {-max(ndim, 1)} to {max(ndim, 1) - 1})")
    return dim % max(ndim, 1)


def reduction_axes(op: str, dim, ndim: int):
    """``dim`` (None, an int, or a tuple or list of them) as a sorted tuple of non-negative
    axes, as PyTorch reads it: None and () mean every dim; a 0-d tensor takes 0 and −1 and
    has no axis to reduce; a dim given twice is an error."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if not isinstance(dim, (tuple, list)) else tuple(dim)
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, Integral):
            raise TypeError(f"{op}: dim must be an int or a tuple of ints, got {dim!r}")
    if not dims:
        return tuple(range(ndim))
    axes = [normalize_dim(op, int(d), ndim) for d in dims]
    if len(set(axes)) < len(axes):
        raise ValueError(f"{op}: dims {dim} name one dim more than once (tensor of {ndim} dims)")
    return tuple(sorted(axes)) if ndim else ()
