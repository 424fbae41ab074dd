"""Elementwise functions: exp, log, sqrt, abs, tanh, relu, gelu.

Where the derivative can be written in terms of the output (exp, sqrt, tanh) the op saves
the output, which the caller keeps alive anyway, instead of the input.
"""
from __future__ import annotations

import math

from .. import backend, kernels
from ..autograd import Function
from ._adjoint import compute_dtype, require_float, widened
from ._rows import BLOCK_ELEMENTS, for_each_block, get_num_threads, slices


class Exp(Function):
    """y = eˣ."""

    @staticmethod
    def forward(ctx, x):
        require_float("exp", x)
        y = backend.array_module(x).exp(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        """dy/dx = eˣ = y: dx = grad_out · y. Saves y (the output)."""
        (y,) = ctx.saved_tensors
        return grad_out * y


class Log(Function):
    """y = ln x."""

    @staticmethod
    def forward(ctx, x):
        require_float("log", x)
        ctx.save_for_backward(x)
        return backend.array_module(x).log(x)

    @staticmethod
    def backward(ctx, grad_out):
        """dy/dx = 1/x: dx = grad_out / x. Saves x."""
        (x,) = ctx.saved_tensors
        return grad_out / x


class Sqrt(Function):
    """y = √x."""

    @staticmethod
    def forward(ctx, x):
        require_float("sqrt", x)
        y = backend.array_module(x).sqrt(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        """dy/dx = 1/(2√x) = 1/(2y): dx = grad_out / (2y). Saves y (the output)."""
        (y,) = ctx.saved_tensors
        return grad_out / (2 * y)


class Abs(Function):
    """y = |x|."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return backend.array_module(x).abs(x)

    @staticmethod
    def backward(ctx, grad_out):
        """dy/dx = sign(x), 0 at x = 0 (PyTorch's choice), and 0 at NaN, as PyTorch's sign.
        Saves x (the input: no new array, though it keeps an intermediate x alive) and takes
        its sign here, as PyTorch defines it: [x > 0] − [x < 0], the two bool masks read as
        int8 (NumPy's sign gives NaN at NaN, and clearing that costs twice as much)."""
        (x,) = ctx.saved_tensors
        xp = backend.array_module(x)
        positive, negative = xp.asarray(x > 0), xp.asarray(x < 0)  # arrays, also for 0-d x
        return grad_out * (positive.view(backend.int8) - negative.view(backend.int8))


class Tanh(Function):
    """y = tanh x."""

    @staticmethod
    def forward(ctx, x):
        require_float("tanh", x)
        y = backend.array_module(x).tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        """d tanh(x)/dx = 1 − tanh²(x) = 1 − y²: dx = grad_out · (1 − y²). Saves y only."""
        (y,) = ctx.saved_tensors
        return grad_out * (1 - y * y)


class ReLU(Function):
    """y = max(x, 0)."""

    @staticmethod
    def forward(ctx, x):
        y = backend.array_module(x).maximum(x, 0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        """dy/dx = 1 where x > 0, else 0 (0 at x = 0, as PyTorch). x > 0 ⇔ y > 0, so the
        output is saved (alive anyway) instead of the input. A selection, not a product, so
        that dx is 0 where y ≤ 0 whatever grad_out holds (inf · 0 would be NaN), and written
        as "where y ≤ 0" so that a NaN input (y = NaN) passes grad_out through, as in
        PyTorch."""
        (y,) = ctx.saved_tensors
        return backend.array_module(y).where(y <= 0, grad_out.dtype.type(0), grad_out)


def elementwise(fn, *arrays, writes_out=False):
    """``fn(*arrays)`` for an elementwise ``fn`` of same-shape arrays, computed in blocks of
    BLOCK_ELEMENTS shared out over the threads (for costly ufuncs such as erf, which NumPy
    runs on one core). Small or GPU arrays go to ``fn`` whole. With ``writes_out``, ``fn``
    takes ``out=`` and writes each block's result into its slice of the output, rather than
    returning a block to be copied there."""
    x = arrays[0]
    if x.size < 2 * BLOCK_ELEMENTS or get_num_threads() == 1 or backend.device_of(x) != "cpu":
        return fn(*arrays)
    xp = backend.array_module(*arrays)
    flat = [xp.ascontiguousarray(a).reshape(-1) for a in arrays]
    out = xp.empty(x.size, dtype=x.dtype)
    blocks = slices(x.size, BLOCK_ELEMENTS)

    def work(k, part):
        if writes_out:
            fn(*(a[part] for a in flat), out=out[part])
        else:
            out[part] = fn(*(a[part] for a in flat))

    for_each_block(blocks, work, x.size)
    return out.reshape(x.shape)


_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_C = 0.044715


def _normal_cdf(x):
    """Φ(x) = ½ (1 + erf(x/√2)) = ½ erfc(−x/√2): the second form has no 1 + erf, which
    cancels for x ≪ 0 (in float32, every digit is gone by x ≈ −5, where Φ ≈ 3e-7)."""
    return 0.5 * backend.erfc(x / -_SQRT_2)


def _tanh_u(x):
    """tanh(u), u = √(2/π) (x + 0.044715 x³): x·x·x, not x ** 3, which NumPy sends to powf
    for float32, ~250x slower than two multiplies."""
    return backend.array_module(x).tanh(_SQRT_2_OVER_PI * (x + _GELU_C * (x * x * x)))


def _gelu_none(x):
    return x * _normal_cdf(x)


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + _tanh_u(x))


def _gelu_none_backward(x, g):
    pdf = _INV_SQRT_2PI * backend.array_module(x).exp(-0.5 * x * x)
    return g * (_normal_cdf(x) + x * pdf)


def _gelu_tanh_backward(x, g):
    t = _tanh_u(x)
    du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * x * x)
    return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)


class GELU(Function):
    """GELU, exact or tanh-approximated, as PyTorch:

    approximate="none":  y = x · Φ(x),           Φ(x) = ½ (1 + erf(x/√2))
    approximate="tanh":  y = ½ x (1 + tanh(u)),  u = √(2/π) (x + 0.044715 x³)

    erf runs on one core and costs as much as a matrix product of the same size, so both
    passes go through ``elementwise``: blocks of the array shared out over the threads.
    Exact float32 GELU on the CPU runs compiled kernels where numba is installed
    (``kernels.cpu_gelu``: the same formulas in one pass, without SciPy's erf). float16 is
    computed in float32 (``compute_dtype``, as PyTorch) and rounded once: SciPy's erfc has no
    float16, and its float64 result made small float16 inputs come back float64.
    """

    @staticmethod
    def forward(ctx, x, approximate="none"):
        require_float("gelu", x)
        if approximate not in ("none", "tanh"):
            raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
        ctx.approximate = approximate
        ctx.save_for_backward(x)
        (xc,) = widened(compute_dtype(x.dtype), x)
        if approximate == "none" and _compiled_gelu(xc):
            y = elementwise(kernels.cpu_gelu.gelu_forward, xc, writes_out=True)
        else:
            y = elementwise(_gelu_none if approximate == "none" else _gelu_tanh, xc)
        return y.astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, grad_out):
        """The exact derivative of each form, g = grad_out:

        none:  y = x·Φ(x) and Φ′ = φ, the normal density, so by the product rule
               dx = g·(Φ(x) + x φ(x)),  φ(x) = e^(−x²/2) / √(2π)
        tanh:  y = ½ x (1 + t) with t = tanh(u); dt/dx = (1 − t²)·du_dx, where
               du_dx = √(2/π) (1 + 3·0.044715 x²), so
               dx = g·(½ (1 + t) + ½ x (1 − t²)·du_dx)

        Saves x; Φ, φ and t are recomputed (one array of x's size held, not three).
        """
        (saved,) = ctx.saved_tensors
        x, g = widened(compute_dtype(saved.dtype), saved, grad_out)
        if ctx.approximate == "none" and _compiled_gelu(x, g):
            dx = elementwise(kernels.cpu_gelu.gelu_backward, x, g, writes_out=True)
        else:
            grad = _gelu_none_backward if ctx.approximate == "none" else _gelu_tanh_backward
            dx = elementwise(grad, x, g)
        return dx.astype(saved.dtype, copy=False), None


def _compiled_gelu(*arrays) -> bool:
    """True where the compiled float32 kernels apply (float64 keeps SciPy's exact erf: the
    kernels' erfc fit is float32-accurate only); any layout, the kernels take flat copies."""
    return (arrays[0].dtype == backend.float32
            and kernels.use_cpu_kernels(*arrays, contiguous=False))


def exp(x):
    return Exp.apply(x)


def log(x):
    return Log.apply(x)


def sqrt(x):
    return Sqrt.apply(x)


def abs(x):  # noqa: A001 — PyTorch's name
    return Abs.apply(x)


def tanh(x):
    return Tanh.apply(x)


def relu(x):
    return ReLU.apply(x)


def gelu(x, approximate="none"):
    return GELU.apply(x, approximate)
