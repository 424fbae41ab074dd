"""numba, imported on first use, and the decorator that compiles a CPU kernel with it.

numba is optional (``pip install "tinynorm[cpu]"``): ``import tinynorm`` never imports it.
The first call of ``available()`` tries the import once and remembers the answer; a kernel
is compiled the first time it is called (numba compiles one version per argument types and
keeps it on disk beside this file, ``cache=True``, so a later process loads it instead).
"""
from __future__ import annotations

import functools
import threading

# How the kernels are compiled. `nogil`: the compiled loop runs without the GIL, so row
# blocks handed to the thread pool run on several cores at once. error_model "numpy": 1/0
# gives inf as in NumPy, where numba's default raises ZeroDivisionError (a zero row with
# eps = 0), and a division is not a branch that stops vectorisation. No fastmath: outside
# row sums the arithmetic runs in the order written (see ROW_SUM_FASTMATH).
KERNEL_OPTIONS = {"nogil": True, "error_model": "numpy", "cache": True}
# Row sums (``row_sum`` helpers) alone may be reassociated: `reassoc` lets LLVM split a sum
# into vector partial sums, which is what makes the loops fast. Nowhere else: there it
# turned (x − μ0) − δ into x − (μ0 + δ), which rounds μ0 + δ first, and `contract` (a
# fused multiply-add of dy·γ − mean(g), which keeps dy·γ unrounded) gave every row of one
# element (n = 1) a dx of the size of that rounding instead of exactly 0.
# Not fastmath=True either, whose `nnan`/`ninf` let LLVM assume that x holds no NaN.
ROW_SUM_FASTMATH = {"reassoc"}

_numba = None
_tried = False
_lock = threading.RLock()  # numba_module is called with it held, from __call__


def numba_module():
    """The numba module, or None where it cannot be imported (tried once per process)."""
    global _numba, _tried
    with _lock:
        if not _tried:
            _tried = True
            try:
                import numba
            except ImportError:  # not installed, or built for another NumPy
                numba = None
            _numba = numba
    return _numba


def available() -> bool:
    """True when numba can be imported here."""
    return numba_module() is not None


_helpers = []  # (python function, fastmath flags): helpers not yet registered with numba


def compiled_helper(fastmath):
    """Decorator: a helper the kernels call, compiled into them (numba's
    ``register_jitable``) with the given fastmath flags. It stays a plain Python function."""
    def register(python_function):
        _helpers.append((python_function, fastmath))
        return python_function
    return register


row_sum = compiled_helper(ROW_SUM_FASTMATH)  # the norms' row-sum helpers


class _Kernel:
    """A Python function compiled by ``numba.njit(**KERNEL_OPTIONS)`` on its first call (the
    helpers registered first), with its own fastmath flags. The Python function stays at
    ``.python_function``."""

    def __init__(self, python_function, fastmath):
        functools.update_wrapper(self, python_function)
        self.python_function = python_function
        self.fastmath = fastmath
        self._compiled = None

    def __call__(self, *args):
        if self._compiled is None:
            with _lock:  # two threads may make the first call at once
                if self._compiled is None:
                    numba = numba_module() or _missing(self.python_function.__name__)
                    while _helpers:
                        helper, flags = _helpers.pop()
                        numba.extending.register_jitable(
                            fastmath=flags, error_model="numpy")(helper)
                    self._compiled = numba.njit(fastmath=self.fastmath, **KERNEL_OPTIONS)(
                        self.python_function)
        return self._compiled(*args)


def cpu_kernel(python_function=None, *, fastmath=False):
    """Decorator, bare (``@cpu_kernel``: no fastmath) or with flags
    (``@cpu_kernel(fastmath={...})``, a set, as numba takes them): the function compiled on
    first call."""
    if python_function is None:
        return lambda function: _Kernel(function, fastmath)
    return _Kernel(python_function, fastmath)


def _missing(name: str):
    raise RuntimeError(f"{name} (compiled CPU kernel): numba is not installed; install it with "
                       f'pip install "tinynorm[cpu]", or use the reference path '
                       f"(tinynorm.kernels.fused(False))")
