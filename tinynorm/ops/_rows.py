"""What layer_norm and rms_norm share (their argument checks, the walk over rows), and the
thread pool that they, attention, GELU (``pointwise.elementwise``) and the linear layers'
products (``matmul.matmul_by_rows``) share out their blocks on (``for_each_block``).

Both ops normalise each *row*: the trailing ``normalized_shape`` dims of x flattened into
one axis of n elements, every leading dim a row. They view x as a (rows, n) array and work
on it block by block.

Why blocks: a NumPy expression sweeps its whole operand before the next one starts, and a
normalisation is several sweeps (centre, scale, multiply by γ, add β). On a (8192, 768)
float32 input each sweep would stream 25 MB through main memory. Cut into blocks of about
BLOCK_ELEMENTS elements (512 KB in float32), a block stays in the core's caches across all
of its sweeps, so main memory sees x read once and y written once. (Smaller blocks fit L2
better but cost more Python between NumPy calls; on a 2-core EPYC, 128K elements beat 64K
by about 8% and 256K gained little more.)

Why threads: NumPy releases the GIL inside its loops and BLAS calls, so blocks handed to a
few threads run on several cores at once. Each thread takes the next block not yet taken. The
blocks depend only on the shape, and each block writes its own rows and its own slot of any
per-block partial sums, so the result is the same bits for any number of threads. While
blocks run, NumPy's BLAS runs single-threaded (``backend.single_threaded_blas``), on one
thread of ours as on several: BLAS threads on top of ours would oversubscribe the cores, and
a product OpenBLAS threads itself can come out in other bits.

With numba installed the norms call compiled loops instead (tinynorm.kernels.cpu_norms),
which walk one row at a time and need no cache blocking: they take bigger blocks of rows
(``kernel_blocks``), fewer calls, on the same threads, with the same rule (each block writes
its own rows and its own partial sums).

The thread count is ``get_num_threads()``: the environment variable TINYNORM_NUM_THREADS at
import, else the number of CPUs up to MAX_DEFAULT_THREADS; ``set_num_threads(n)`` changes
it. GPU arrays are one block on the calling thread (the GPU is the parallel part there).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from math import prod
from numbers import Integral

from .. import backend
from ..tensor import Tensor
from ._adjoint import require_float

BLOCK_ELEMENTS = 1 << 17  # 512 KB of float32
MAX_BLOCK_ROWS = 256  # a block's column sums (dγ, dβ) add its rows one after another in
#                       x's precision: at most 256 roundings before the float64 total
KERNEL_BLOCK_ELEMENTS = 1 << 18  # 1 MB of float32: about 0.1 ms of a compiled kernel
MAX_DEFAULT_THREADS = 4  # more threads mostly wait for the GIL between NumPy calls

_num_threads = int(os.environ.get("TINYNORM_NUM_THREADS", "0") or 0) or min(
    os.cpu_count() or 1, MAX_DEFAULT_THREADS)
_pool = None


def get_num_threads() -> int:
    """How many threads the CPU norms use (torch.get_num_threads' counterpart)."""
    return _num_threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (1: everything on the calling thread) for the CPU norms."""
    global _num_threads, _pool
    if int(n) < 1:
        raise ValueError(f"set_num_threads: expected a positive number of threads, got {n}")
    _num_threads = int(n)
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None


# ---- argument checks --------------------------------------------------------------------
def as_normalized_shape(op: str, normalized_shape) -> tuple:
    """``normalized_shape`` (an int or a sequence of ints) as a tuple of at least one dim.

    Each dim must be a non-negative integer: a float, a string or a negative size is an
    error naming the op, not a silent ``int()`` truncation or NumPy's "negative dimensions".
    """
    dims = (normalized_shape,) if isinstance(normalized_shape, Integral) else normalized_shape
    try:
        shape = tuple(dims)
    except TypeError:
        shape = None
    if (shape is None or isinstance(normalized_shape, (str, bytes))
            or not all(isinstance(s, Integral) for s in shape)):
        raise TypeError(f"{op}: normalized_shape must be an int or a sequence of ints, "
                        f"got {normalized_shape!r}")
    if any(s < 0 for s in shape):
        raise ValueError(f"{op}: normalized_shape {shape} has a negative dim; expected sizes >= 0")
    if not shape:
        raise ValueError(f"{op}: normalized_shape must have at least one dim, got ()")
    return tuple(int(s) for s in shape)


def require_tensors(op: str, **arguments) -> None:
    """A TypeError naming the op and the argument unless each one given (None is skipped) is
    a tinynorm Tensor or a NumPy/CuPy array: the norms take no lists or numbers, and (as
    every op, see ``Function.apply``) no other library's tensors. Called before ``apply``,
    so that the error names the argument as the user wrote it."""
    for name, a in arguments.items():
        if a is not None and not isinstance(a, Tensor) and not backend.is_array(a):
            raise TypeError(f"{op}: {name} must be a tinynorm Tensor (or a NumPy/CuPy array), "
                            f"got {type(a).__module__}.{type(a).__qualname__}")


def check_norm_args(op: str, x, normalized_shape, weight=None, bias=None) -> tuple:
    """``normalized_shape`` as a tuple, after checking x, weight and bias against it.

    Errors name the op and both shapes (or the dtypes), as PyTorch's do.
    """
    shape = as_normalized_shape(op, normalized_shape)
    require_float(op, x)
    if x.ndim < len(shape) or tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise ValueError(f"{op}: input of shape {tuple(x.shape)} does not end in normalized_shape "
                         f"{shape}: expected input of shape (*, {', '.join(map(str, shape))})")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        if tuple(p.shape) != shape:
            raise ValueError(f"{op}: {name} of shape {tuple(p.shape)}; expected normalized_shape "
                             f"{shape}")
        if p.dtype != x.dtype:
            raise TypeError(f"{op}: {name} has dtype {p.dtype} but the input has dtype {x.dtype}; "
                            f"expected the same floating-point dtype")
    return shape


def as_rows(x, normalized_shape: tuple):
    """x as a C-contiguous (rows, n) array, n the elements of the trailing
    ``normalized_shape`` and rows the product of the dims before it: a view when x is
    contiguous, else a copy. Both are counted from the shape, not as (-1, n): with n = 0
    (a normalized dim of size 0, as ``LayerNorm(0)``) the size says nothing of rows."""
    xp = backend.array_module(x)
    rows = prod(x.shape[:x.ndim - len(normalized_shape)])
    return xp.ascontiguousarray(x).reshape(rows, prod(normalized_shape))


def row_dot(a, b):
    """Σ_j a_ij · b_ij for each row i (b may be one row, broadcast): one BLAS dot per row.

    ``vecdot`` calls the single-threaded BLAS dot row by row; a matrix-vector product would
    be as fast alone but starts BLAS's own threads inside ours.
    """
    xp = backend.array_module(a)
    if hasattr(xp, "vecdot"):
        return xp.vecdot(a, b)
    return (a * b).sum(axis=-1)  # array modules without vecdot (older CuPy)


def column_parts(blocks: list, n: int, xp, needed: bool):
    """A float64 row per block for that block's column sums (dγ, dβ), or None when the
    gradient is not needed. Each block writes only its own row, so threads share nothing."""
    return xp.zeros((len(blocks), n), dtype=backend.float64) if needed else None


def column_total(parts, shape, dtype):
    """The blocks' column sums added in block order, as ``shape`` in ``dtype``: accurate
    over 10^5 rows, and the same bits for any thread count. None when ``parts`` is None."""
    return None if parts is None else parts.sum(axis=0).reshape(shape).astype(dtype)


# ---- the walk over rows -------------------------------------------------------------------
def block_rows(rows: int, n: int) -> int:
    """Rows per block: about BLOCK_ELEMENTS elements, at least one row, at most all rows
    and at most MAX_BLOCK_ROWS."""
    return max(1, min(rows, MAX_BLOCK_ROWS, BLOCK_ELEMENTS // max(n, 1)))


def slices(total: int, step: int) -> list:
    """``(k, part)`` for k = 0, 1, …: ``part`` the k-th slice of ``step`` out of range(total)."""
    return [(k, slice(start, min(start + step, total)))
            for k, start in enumerate(range(0, total, step))]


def row_blocks(rows: int, n: int, on_cpu: bool) -> list:
    """``(k, rows_k)`` for every block k, rows_k the slice of its rows: CPU blocks of
    ``block_rows`` rows, or one block of every row for GPU arrays."""
    return slices(rows, block_rows(rows, n) if on_cpu else max(rows, 1))


def kernel_blocks(rows: int, n: int) -> list:
    """``(k, rows_k)`` blocks, as ``row_blocks``, for the compiled CPU kernels: as many as
    ``rows·n / KERNEL_BLOCK_ELEMENTS`` (at least one), all of about the same number of rows,
    so the threads' runs of blocks take about the same time."""
    count = max(1, -(-rows * n // KERNEL_BLOCK_ELEMENTS))
    return slices(rows, max(1, -(-rows // count)))


def for_each_block(blocks: list, work, elements: int) -> None:
    """Call ``work(k, part)`` for every ``(k, part)`` of ``blocks`` (rows from ``row_blocks``,
    or any unit of work), the blocks shared out over the threads; ``elements``, the work of
    all blocks together, sets how many threads are worth their hand-over: one per
    BLOCK_ELEMENTS, at most one per block (a GPU caller's single block stays on this thread).
    """
    threads = min(_num_threads, len(blocks), max(1, elements // BLOCK_ELEMENTS))
    if threads <= 1:  # BLAS on one thread here too: the same products, so the same bits
        with backend.single_threaded_blas():
            for k, part in blocks:
                work(k, part)
        return

    pending, taking = iter(blocks), threading.Lock()

    def run():  # each thread takes the next block until none is left
        while True:
            with taking:
                block = next(pending, None)
            if block is None:
                return
            work(*block)

    # our threads are the parallelism: BLAS calls inside the blocks stay on their thread
    with backend.single_threaded_blas():
        futures = [_executor().submit(run) for _ in range(threads - 1)]
        try:
            run()  # the calling thread takes blocks too
        finally:
            wait(futures)  # no worker may still be writing when we return or raise
    for f in futures:
        f.result()  # re-raises a worker's exception here


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(_num_threads - 1, 1),
                                   thread_name_prefix="tinynorm-rows")
    return _pool


def outer_factor(v):
    """The (n,) vector v laid out for ``outer``: over a row of zeros, as a (2, n) array."""
    xp = backend.array_module(v)
    return xp.stack([v, xp.zeros_like(v)])


def outer(u, v_factor):
    """The (m, n) array u_i · v_j, from u (m,) and ``v_factor = outer_factor(v)``.

    One BLAS matrix product, (m, 2) @ (2, n) with a zero second column and row. It runs
    about three times faster than NumPy's broadcasting u[:, None] * v, so a factor that
    varies along both axes (r·γ) costs one sweep over a block instead of two. (With an inner
    dimension of 1, NumPy's matmul does not call BLAS and is slower than broadcasting.) A
    block's product, 2·m·n ≤ 2·BLOCK_ELEMENTS multiply-adds, is below the size at which
    OpenBLAS starts threads of its own, so it runs on the thread that calls it.
    """
    xp = backend.array_module(u)
    u_pair = xp.zeros((u.shape[0], 2), dtype=u.dtype)
    u_pair[:, 0] = u
    return xp.matmul(u_pair, v_factor)


def as_block_rows(v, rows: int, on_cpu: bool):
    """The (n,) vector v as rows to multiply or add to a block of up to ``rows`` rows; take
    ``[:m]`` for a block of m rows. On the CPU, v repeated ``rows`` times: NumPy multiplies
    two same-shape arrays about 1.5x faster than it broadcasts v over a block. On the GPU,
    the (1, n) view, which broadcasts (a GPU block is the whole array)."""
    if not on_cpu:
        return v[None, :]
    xp = backend.array_module(v)
    return xp.broadcast_to(v, (rows, v.shape[0])).copy()
