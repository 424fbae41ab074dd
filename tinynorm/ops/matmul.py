"""Matrix products: matmul (batched, broadcast) and linear (x @ Wᵀ + b)."""
from __future__ import annotations

from math import prod

from .. import backend
from ..autograd import Function
from ..tensor import Tensor
from ._adjoint import broadcast_shape, summed, unbroadcast
from ._rows import for_each_block, get_num_threads, slices

MIN_THREADED_PRODUCT = 1 << 22  # multiply-adds below which a product stays on one thread


def matmul_by_rows(a, b, bias=None):
    """``a @ b`` (``+ bias``, an (n,) vector, when given) for 2-D a (m, k) and b (k, n): the
    rows of a, and of the result, shared out over tinynorm's threads, each thread's product
    on single-threaded BLAS and its bias added to its rows while they are in cache.

    Why not let OpenBLAS thread the product itself: its idle worker threads keep spinning on
    their queue for a while after each call, and on a 2-core machine they then compete with
    tinynorm's threads in the next op (attention, the norms, GELU): a transformer block's
    forward ran about 25% slower so. Splitting the rows here keeps every thread tinynorm's;
    OpenBLAS's workers are never woken. Each row of the result is the same product of the
    same numbers whichever thread computes it: the same bits for any thread count.
    """
    return matmuls_by_rows((a, b), biases=(bias,))[0]


def matmuls_by_rows(*products, biases=None):
    """``[a @ b for a, b in products]`` (each as ``matmul_by_rows``, ``biases[i]`` added to
    the i-th when given), computed together: each product's rows are cut into
    ⌈threads / len(products)⌉ parts, and all the parts go to the thread pool at once.

    Why together: Linear's backward makes two products of the same work, dx = G W and
    dW = Gᵀ X. One after the other, each cut in two over 2 threads, every thread makes two
    half-height products, packing (BLAS's copy of an operand into its cache-sized panels)
    each product's b for half the rows; together, each thread makes one whole product and
    packs its b once, and the threads are handed work once instead of twice. In a
    ModernTransformerBlock step (four layers, 2 × 256 rows, 2 cores) Linear's backward took
    73.6 ms instead of 75.9. The rows of each result are the same products as before, so the
    same bits. A product of one block (one row, or one thread) runs on the calling thread.
    """
    first = products[0][0]
    xp = backend.array_module(*(operand for pair in products for operand in pair))
    biases = biases or (None,) * len(products)
    outs = [xp.empty((a.shape[0], b.shape[1]), dtype=xp.result_type(a, b)) for a, b in products]
    work = sum(a.shape[0] * a.shape[1] * b.shape[1] for a, b in products)
    threads = get_num_threads()

    def product(i, rows):
        (a, b), out, bias = products[i], outs[i], biases[i]
        xp.matmul(a[rows], b, out=out[rows])
        if bias is not None:
            out[rows] += bias

    # small work, or the GPU: each product whole, on this thread (``elements`` 0: one thread,
    # where for_each_block holds BLAS to one thread as everywhere else)
    one_thread = backend.device_of(first) != "cpu" or work < MIN_THREADED_PRODUCT
    parts = 1 if one_thread else -(-threads // len(products))
    blocks = [(i, rows) for i, (a, _) in enumerate(products)
              for _, rows in slices(a.shape[0], max(1, -(-a.shape[0] // parts)))]
    for_each_block(blocks, product, 0 if one_thread else work)
    return outs


class MatMul(Function):
    """y = a @ b with NumPy's matmul rules (1-D operands promoted, batch dims broadcast)."""

    @staticmethod
    def forward(ctx, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: both operands need at least 1 dim; got shapes {a.shape} "
                             f"and {b.shape}")
        k_b = b.shape[-2] if b.ndim > 1 else b.shape[0]
        if a.shape[-1] != k_b:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align: "
                             f"{a.shape[-1]} (last dim of a) != {k_b} (contracted dim of b)")
        try:
            broadcast_shape("matmul", a.shape[:-2], b.shape[:-2])
        except ValueError:
            raise ValueError(f"matmul: the batch dims of shapes {a.shape} and {b.shape} cannot be "
                             f"broadcast together ({a.shape[:-2]} and {b.shape[:-2]})") from None
        ctx.save_for_backward(b if ctx.needs_input_grad[0] else None,
                              a if ctx.needs_input_grad[1] else None)
        ctx.shapes = (a.shape, b.shape)
        return a @ b

    @staticmethod
    def backward(ctx, grad_out):
        """Per batch, with A = a and B = b as matrices and G = grad_out: dA = G Bᵀ, dB = Aᵀ G.

        (y_ij = Σ_k A_ik B_kj, so ∂y_ij/∂A_ik = B_kj and ∂y_ij/∂B_kj = A_ik.)
        1-D operands are promoted as in forward, and G gets the axes matmul dropped, so the
        same two products apply; broadcast batch dims are summed back by ``unbroadcast``.
        Saves b only if a needs grad, and a only if b needs grad.
        """
        b, a = ctx.saved_tensors
        shape_a, shape_b = ctx.shapes
        nd_a, nd_b = len(shape_a), len(shape_b)
        g = grad_out
        if nd_b == 1:  # the column axis first: for two 1-D operands grad_out is 0-d
            g = g[..., None]
        if nd_a == 1:
            g = g[..., None, :]
        ga = gb = None
        if ctx.needs_input_grad[0]:
            b2 = b[:, None] if nd_b == 1 else b
            ga2 = g @ b2.swapaxes(-1, -2)
            ga = unbroadcast(ga2, (1,) * (nd_a == 1) + shape_a).reshape(shape_a)
        if ctx.needs_input_grad[1]:
            a2 = a[None, :] if nd_a == 1 else a
            gb2 = a2.swapaxes(-1, -2) @ g
            gb = unbroadcast(gb2, shape_b + (1,) * (nd_b == 1)).reshape(shape_b)
        return ga, gb


class Linear(Function):
    """y = x Wᵀ + b for x of shape (..., in), W (out, in), b (out,) or None."""

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        if weight.ndim != 2 or x.ndim == 0 or x.shape[-1] != weight.shape[1]:
            raise ValueError(f"linear: input of shape {x.shape} and weight of shape "
                             f"{weight.shape} do not fit: expected input (..., "
                             f"{weight.shape[-1]}) and weight (out, in)")
        if bias is not None and bias.shape != (weight.shape[0],):
            raise ValueError(f"linear: bias of shape {bias.shape}; expected ({weight.shape[0]},) "
                             f"for weight of shape {weight.shape}")
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None,
                              weight if ctx.needs_input_grad[0] else None)
        # One 2-D product over all leading dims: NumPy runs (..., rows, in) @ (in, out) as a
        # loop of small products, 10-50x slower when the weight is a transposed view. Its
        # rows are shared out over tinynorm's threads (see matmul_by_rows for why). Rows are
        # counted from the shape: with in = 0 features x.size says nothing of them.
        y = matmul_by_rows(x.reshape(prod(x.shape[:-1]), x.shape[-1]), weight.T, bias)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        """With G = grad_out flattened to (rows, out) and X to (rows, in):

        dx = G W,   dW = Gᵀ X,   db = Σ_rows G   (float16: db summed in float32, ``summed``).

        The leading dims are flattened so dW is one (out, rows) @ (rows, in) product. The two
        products run together on tinynorm's threads (``matmuls_by_rows``: dx split by rows of
        G, dW by its own rows). Saves x only if W needs grad, W only if x needs grad.
        """
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        rows = prod(grad_out.shape[:-1])
        g2 = grad_out.reshape(rows, grad_out.shape[-1])
        products = ([(g2, weight)] if need_x else []) + \
            ([(g2.T, x.reshape(rows, x.shape[-1]))] if need_w else [])
        results = iter(matmuls_by_rows(*products) if products else ())
        dx = next(results).reshape(*grad_out.shape[:-1], weight.shape[1]) if need_x else None
        dw = next(results) if need_w else None
        db = summed(g2, 0) if need_b else None
        return dx, dw, db


def matmul(a, b):
    _require_matrices("matmul", input=a, other=b)
    return MatMul.apply(a, b)


def linear(x, weight, bias=None):
    _require_matrices("linear", input=x, weight=weight, bias=bias)
    return Linear.apply(x, weight, bias)


def _require_matrices(op: str, **arguments) -> None:
    """A TypeError naming the op and the argument for a list or a number, which has no
    shape to multiply (NumPy's error named neither). Another library's tensor is left to
    ``Function.apply``, which refuses it for every op."""
    for name, a in arguments.items():
        if a is not None and not (isinstance(a, Tensor) or backend.is_array(a)
                                  or backend.is_foreign_array(a)):
            raise TypeError(f"{op}: {name} must be a tensor, got {type(a).__name__}; make one "
                            f"with tn.tensor(...)")
