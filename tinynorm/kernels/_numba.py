"""numba, imported on first use, and the decorator that compiles a CPU kernel with it.

numba is optional (``pip install "tinynorm[cpu]"``): ``import tinynorm`` never imports it.
The first call of ``available()`` tries the import once and remembers the answer; a kernel
is compiled the first time it is called (numba compiles one version per argument types and
keeps it on disk beside this file, ``cache=True``, so a later process loads it instead).
"""
from __future__ import annotations

import functools
import threading

# What numba (LLVM) may assume: `reassoc` lets it split a row sum into several vector
# partial sums (the one that makes the loops fast), `nsz` and `arcp` allow the usual
# rewrites. Not `contract`: a fused multiply-add of g − mean(g) would keep g's product
# unrounded, and a row of one element (n = 1) would get dx ≈ 1e-17 instead of exactly 0.
# Not `nnan`/`ninf` (which fastmath=True would add): a NaN or inf in x must give NaN in y,
# as on the reference path; the generated loops are the same without them.
FASTMATH = {"reassoc", "nsz", "arcp"}
# error_model "numpy": 1/0 gives inf, as in NumPy, where numba's default ("python") raises
# ZeroDivisionError (a zero row with eps = 0).
OPTIONS = {"nogil": True, "fastmath": FASTMATH, "error_model": "numpy", "cache": True}

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


class cpu_kernel:
    """Decorator: the Python function, compiled by ``numba.njit(**OPTIONS)`` on first call.

    ``nogil``: the compiled loop runs without the GIL, so row blocks handed to the thread
    pool run on several cores at once. The undecorated function stays at ``.python_function``
    (the kernels are plain Python: run that way they are slow but give the same numbers).
    """

    def __init__(self, python_function):
        functools.update_wrapper(self, python_function)
        self.python_function = python_function
        self._compiled = None

    def __call__(self, *args):
        if self._compiled is None:
            with _lock:  # two threads may make the first call at once
                if self._compiled is None:
                    numba = numba_module() or _missing(self.python_function.__name__)
                    self._compiled = numba.njit(**OPTIONS)(self.python_function)
        return self._compiled(*args)


def _missing(name: str):
    raise RuntimeError(f"{name} (compiled CPU kernel): numba is not installed; install it with "
                       f'pip install "tinynorm[cpu]", or use the reference path '
                       f"(tinynorm.kernels.fused(False))")
