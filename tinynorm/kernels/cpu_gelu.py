"""GELU's compiled CPU kernels (numba), for float32: one pass each for

    forward   y  = x · Φ(x)
    backward  dx = g · (Φ(x) + x·φ(x)),    φ(x) = e^(−x²/2) / √(2π)

the formulas of ``tinynorm.ops.pointwise.GELU`` (its backward's docstring derives them).

Why: NumPy has no erf. SciPy's costs about 10 ns an element in float32, as much as the
matrix products around a transformer's GELU, and the reference path computes it in forward
and again in backward. These loops use only +, ×, ÷ and max, which LLVM turns into vector
instructions (several elements at once): about 1.7 ns an element on one core here.

How Φ is computed, in float64 inside the loop (the result is rounded once, to float32):

    Φ(x) = ½ erfc(|x|/√2)        for x < 0
         = 1 − ½ erfc(|x|/√2)    otherwise
    erfc(z) = t · e^(−z² + P(t)),   t = 1 / (1 + z/2),  z ≥ 0

P is the degree-9 polynomial of Numerical Recipes' ``erfcc`` (Press et al., 2nd ed.,
§6.2), whose fractional error is below 1.2e-7 for every z ≥ 0. Φ is taken from erfc, never
as ½ (1 + erf): far in the left tail, 1 + erf cancels (PyTorch's float32 GELU loses every
digit below x ≈ −5), while ½ erfc keeps ~1e-7 relative accuracy down to where x·Φ(x)
underflows float32 (x ≈ −14).

The exponential is ``_exp_nonpositive``: e^a = (e^(a/256))^256, e^(a/256) from its Taylor
series to degree 10 and then squared eight times. For a ≥ EXP_FLOOR, |a/256| ≤ 0.43, where
the series' truncation error is 2e-12 relative; squaring multiplies a relative error by 256,
to ~1e-9: far below float32's 6e-8. Below EXP_FLOOR every float32 result is 0 anyway.

float64 GELU keeps the reference path (SciPy's erf, correct to float64): the fit above is
only float32-accurate. Tests check these kernels against the float64 reference.
"""
from __future__ import annotations

import math

from .. import backend
from ._numba import compiled_helper, cpu_kernel

# Compiled with _numba.KERNEL_OPTIONS (error_model "numpy": a ÷ 0 gives inf instead of a
# check that raises ZeroDivisionError; that check is a branch in the loop, and it alone kept
# LLVM from vectorising it, about 5x slower) and these fastmath flags: `contract` (fused
# multiply-add) and `reassoc` are safe here, no result depends on a difference that must
# round to exactly 0; not `nnan`/`ninf`, so NaN and ±inf follow the maths.
GELU_FASTMATH = {"reassoc", "nsz", "arcp", "contract"}
EXP_FLOOR = -110.0  # e^−110 ≈ 1.7e−48: below it x·Φ(x) and x·φ(x) are 0 in float32
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@compiled_helper(GELU_FASTMATH)
def _exp_nonpositive(a):
    """e^a for a ≤ ~0 in float64, by scaling and squaring (see the module docstring)."""
    u = max(a, EXP_FLOOR) * (1.0 / 256.0)
    p = 1.0 + u * (1.0 + u * (1 / 2 + u * (1 / 6 + u * (1 / 24 + u * (1 / 120 + u * (
        1 / 720 + u * (1 / 5040 + u * (1 / 40320 + u * (1 / 362880 + u / 3628800)))))))))
    for _ in range(8):
        p = p * p
    return p


@compiled_helper(GELU_FASTMATH)
def _normal_cdf(x):
    """Φ(x) in float64 from Numerical Recipes' erfc fit (see the module docstring)."""
    z = abs(x) * _INV_SQRT_2
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    half_erfc = 0.5 * t * _exp_nonpositive(poly - z * z)
    return half_erfc if x < 0 else 1.0 - half_erfc


@cpu_kernel(fastmath=GELU_FASTMATH)
def _forward(x, y):
    """y = x·Φ(x), element by element (x, y: 1-D float32 arrays of one length)."""
    for j in range(x.size):
        v = float(x[j])
        y[j] = v * _normal_cdf(v)


@cpu_kernel(fastmath=GELU_FASTMATH)
def _backward(x, g, dx):
    """dx = g·(Φ(x) + x·φ(x)), element by element."""
    for j in range(x.size):
        v = float(x[j])
        pdf = _INV_SQRT_2PI * _exp_nonpositive(-0.5 * v * v)
        dx[j] = g[j] * (_normal_cdf(v) + v * pdf)


def gelu_forward(x, out=None):
    """x·Φ(x) of a float32 CPU array (any layout), into ``out`` (C-contiguous, x's shape)
    when given, else into a new array."""
    xp = backend.array_module(x)
    y = xp.empty(x.shape, dtype=x.dtype) if out is None else out
    _forward(xp.ascontiguousarray(x).reshape(-1), y.reshape(-1))
    return y


def gelu_backward(x, grad, out=None):
    """grad·(Φ(x) + x·φ(x)) of float32 CPU arrays of one shape (any layout), into ``out``
    (C-contiguous) when given, else into a new array."""
    xp = backend.array_module(x)
    dx = xp.empty(x.shape, dtype=x.dtype) if out is None else out
    flat = (xp.ascontiguousarray(a).reshape(-1) for a in (x, grad))
    _backward(*flat, dx.reshape(-1))
    return dx
