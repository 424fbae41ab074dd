"""Elementwise arithmetic with NumPy broadcasting: add, sub, mul, div, neg, pow.

Each binary op takes Tensors or Python numbers, and its result has the dtype PyTorch's type
promotion gives (``_adjoint.result_dtype``), not NumPy's. The backward of each is the local
derivative times ``grad_out``, summed back to the input's shape by ``unbroadcast``; the engine
hands each input its gradient in its own dtype.
"""
from __future__ import annotations

import math
from numbers import Number

from .. import backend
from ..autograd import Function
from ..tensor import Tensor
from ._adjoint import as_saved, operand_shapes, promoted, unbroadcast


class Add(Function):
    """y = a + b (the residual add)."""

    @staticmethod
    def forward(ctx, a, b):
        a, b = promoted("add", a, b)
        ctx.shapes = operand_shapes("add", a, b)
        return a + b

    @staticmethod
    def backward(ctx, grad_out):
        """dy/da = dy/db = 1, so each input gets grad_out summed to its shape. Saves shapes only."""
        shape_a, shape_b = ctx.shapes
        return (unbroadcast(grad_out, shape_a) if ctx.needs_input_grad[0] else None,
                unbroadcast(grad_out, shape_b) if ctx.needs_input_grad[1] else None)


class Sub(Function):
    """y = a − b."""

    @staticmethod
    def forward(ctx, a, b):
        if any(v.dtype.kind == "b" if hasattr(v, "dtype") else isinstance(v, bool)
               for v in (a, b)):
            raise TypeError("sub: subtraction with a bool tensor or value is not supported, "
                            "as in PyTorch; for masks use ~ (not) or ^ (xor)")
        a, b = promoted("sub", a, b)
        ctx.shapes = operand_shapes("sub", a, b)
        return a - b

    @staticmethod
    def backward(ctx, grad_out):
        """da = grad_out, db = −grad_out, each summed to its input's shape. Saves shapes only."""
        shape_a, shape_b = ctx.shapes
        return (unbroadcast(grad_out, shape_a) if ctx.needs_input_grad[0] else None,
                unbroadcast(-grad_out, shape_b) if ctx.needs_input_grad[1] else None)


class Mul(Function):
    """y = a · b."""

    @staticmethod
    def forward(ctx, a0, b0):
        a, b = promoted("mul", a0, b0)
        ctx.shapes = operand_shapes("mul", a, b)
        # each gradient needs only the *other* factor, as given (``as_saved``)
        ctx.save_for_backward(as_saved(b0, b) if ctx.needs_input_grad[0] else None,
                              as_saved(a0, a) if ctx.needs_input_grad[1] else None)
        return a * b

    @staticmethod
    def backward(ctx, grad_out):
        """da = grad_out · b, db = grad_out · a. Saves b only if a needs grad, and vice versa:
        the caller's array, not a copy cast to the result dtype (``as_saved``)."""
        b, a = ctx.saved_tensors
        shape_a, shape_b = ctx.shapes
        return (unbroadcast(grad_out * b, shape_a) if ctx.needs_input_grad[0] else None,
                unbroadcast(grad_out * a, shape_b) if ctx.needs_input_grad[1] else None)


class Div(Function):
    """y = a / b."""

    @staticmethod
    def forward(ctx, a0, b0):
        a, b = promoted("div", a0, b0, floating=True)  # true division: int / int is float32
        ctx.shapes = operand_shapes("div", a, b)
        y = a / b
        ctx.save_for_backward(as_saved(b0, b), y if ctx.needs_input_grad[1] else None)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        """da = grad_out / b; db = −grad_out · a / b² = −grad_out · y / b.

        Saves b (the caller's array where it is floating, see ``as_saved``), and y (the
        output, already alive) only when b needs a gradient.
        """
        b, y = ctx.saved_tensors
        shape_a, shape_b = ctx.shapes
        ga = grad_out / b
        return (unbroadcast(ga, shape_a) if ctx.needs_input_grad[0] else None,
                unbroadcast(-ga * y, shape_b) if ctx.needs_input_grad[1] else None)


class Neg(Function):
    """y = −x."""

    @staticmethod
    def forward(ctx, x):
        return -x

    @staticmethod
    def backward(ctx, grad_out):
        """dx = −grad_out. Saves nothing."""
        return -grad_out


class Pow(Function):
    """y = x^p for a scalar exponent p."""

    @staticmethod
    def forward(ctx, x, p):
        x, p = promoted("pow", x, p)
        if x.dtype.kind in "biu" and p < 0:
            raise ValueError(f"pow: an integer tensor (dtype {x.dtype}) to a negative integer "
                             f"power ({p}) is not an integer; expected p >= 0 or a float tensor")
        ctx.p = p
        ctx.save_for_backward(x)
        return x ** p

    @staticmethod
    def backward(ctx, grad_out):
        """dx = grad_out · p · x^(p−1); for p = 0, dx = 0 (as PyTorch; the formula would give
        0 · x^(−1) = nan at x = 0). Saves x (p is a number)."""
        (x,) = ctx.saved_tensors
        p = ctx.p
        if p == 0:
            return backend.array_module(x).zeros_like(grad_out), None
        return grad_out * (p * x ** (p - 1)), None


class ScalarPow(Function):
    """y = c^x for a number c and a tensor x (``c ** x``, ``torch.pow(c, x)``). For integer
    x, a negative power is taken as PyTorch takes it: 1 for c = 1, ±1 for c = −1, and 0 for
    any other c (NumPy raises)."""

    @staticmethod
    def forward(ctx, c, x):
        c, x = promoted("pow", c, x)
        xp = backend.array_module(x)
        if x.dtype.kind == "i":
            negative = x < 0
            y = c ** xp.where(negative, 0, x)  # 0 in place of each negative power, then:
            if c == -1:
                xp.copyto(y, xp.where(x % 2 == 0, 1, -1).astype(y.dtype), where=negative)
            elif c != 1:
                xp.copyto(y, 0, where=negative)
        elif c == 0:  # 0^x: inf below 0, taken on |x| elsewhere (NumPy warns of a division)
            y = xp.where(x < 0, math.inf, c ** xp.abs(x))
        else:
            y = c ** x
        ctx.c = c
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        """dy/dx = c^x · ln c = y · ln c: dx = grad_out · y · ln c. ln c is NaN for c < 0 (so
        is y, but for integer x), as in PyTorch. For c = 0, ln c = −inf, and PyTorch takes
        y · ln c as 0 where y is finite (x ≥ 0: y is 0, or 1 at x = 0, where the product
        would be −inf) and as y · (−inf) = −y elsewhere: −inf where x < 0 (y = inf), NaN
        where x is NaN. Saves y (the output) only."""
        (y,) = ctx.saved_tensors
        c = ctx.c
        if c == 0:
            xp = backend.array_module(y)
            return None, grad_out * xp.where(xp.isfinite(y), 0, -y).astype(grad_out.dtype)
        return None, grad_out * (y * (math.log(c) if c > 0 else math.nan))


def add(a, b):
    return Add.apply(a, b)


def sub(a, b):
    return Sub.apply(a, b)


def mul(a, b):
    return Mul.apply(a, b)


def div(a, b):
    return Div.apply(a, b)


def neg(x):
    return Neg.apply(x)


def pow(x, exponent):  # noqa: A001 — PyTorch's name
    """``torch.pow``: a tensor to a number's power, or a number to a tensor's (``2 ** x``);
    a tensor to a tensor's power is not supported."""
    if isinstance(exponent, Tensor):
        if not isinstance(x, Number):  # a Tensor or an array
            raise TypeError("pow: a tensor to a tensor's power is not supported; one of base "
                            f"and exponent must be a number (got {type(x).__name__} and "
                            f"Tensor)")
        return ScalarPow.apply(x, exponent)
    return Pow.apply(x, exponent)
