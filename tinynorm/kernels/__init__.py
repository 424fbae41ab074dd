"""Fused kernels: CUDA for LayerNorm, RMSNorm and softmax on CuPy arrays, and compiled CPU
loops (numba) for LayerNorm, RMSNorm and exact float32 GELU on NumPy arrays.

The plain array-module code in tinynorm.ops is the reference: readable, and what runs
wherever a kernel does not. On the GPU the ops can call CUDA kernels instead, which read and
write each row a minimum number of times in one launch rather than one launch per array
expression; on the CPU, where numba is installed (``pip install "tinynorm[cpu]"``), the norms
call loops compiled by numba (``cpu_norms``), one pass over memory per kernel, and exact
float32 GELU does too (``cpu_gelu``). Both compute
the same math and save the same quantities for backward; tests/test_gpu.py and
tests/test_norms.py check them against the reference.

Switch them off with the environment variable ``TINYNORM_FUSED=0`` (read at import), with
``tinynorm.kernels.enabled = False``, or for a block::

    with tinynorm.kernels.fused(False):
        ...                                  # the reference path, also on the GPU

The same switch turns off the compiled CPU kernels. Importing this package never imports
CuPy or numba: the array module comes from the inputs, a CUDA kernel is compiled (NVRTC, via
CuPy's RawModule) the first time it is launched, and numba is imported the first time a norm
asks ``use_cpu_kernels`` (``cpu_available`` tries the import once).
"""
from __future__ import annotations

import contextlib
import os

from .. import backend
from . import _numba, cpu_gelu, cpu_norms
from ._cuda import CTYPES, clear_cache, param_grad_chunks, row_threads
from .norms import (layer_norm_backward, layer_norm_forward, rms_norm_backward,
                    rms_norm_forward)
from .norms import SOURCE as _NORMS_SOURCE
from .softmax import SOURCE as _SOFTMAX_SOURCE
from .softmax import softmax_backward, softmax_forward

SOURCES = (_NORMS_SOURCE, _SOFTMAX_SOURCE)  # every CUDA source, for the compile test

enabled = os.environ.get("TINYNORM_FUSED", "1").strip().lower() not in ("0", "false", "no", "off")


def use_fused(*arrays) -> bool:
    """True when the fused kernels are on and every array given (None is skipped) is a
    non-empty float32 or float64 GPU array; the ops take the reference path otherwise."""
    given = [a for a in arrays if a is not None]
    return enabled and bool(given) and all(
        backend.is_array(a) and backend.device_of(a) != "cpu" and a.dtype in CTYPES
        and a.size > 0
        for a in given
    )


def cpu_available() -> bool:
    """True when numba can be imported here (tried once per process)."""
    return _numba.available()


def use_cpu_kernels(*arrays, contiguous=True) -> bool:
    """True when the kernels are on, numba is importable, and every array given (None is
    skipped) is a non-empty float32 or float64 CPU array, all of one dtype, and C-contiguous
    unless ``contiguous=False`` (for kernels whose callers make flat copies themselves, as
    GELU's); the ops take the reference path otherwise. (``use_fused`` stays CUDA-only.)"""
    given = [a for a in arrays if a is not None]
    return enabled and bool(given) and all(
        backend.is_array(a) and backend.device_of(a) == "cpu" and a.dtype in CTYPES
        and a.dtype == given[0].dtype and a.size > 0
        and (a.flags.c_contiguous or not contiguous)
        for a in given
    ) and cpu_available()


@contextlib.contextmanager
def fused(on: bool):
    """Turn the fused kernels (CUDA and compiled CPU) on or off for a block (tests and
    benchmarks compare both)."""
    global enabled
    previous, enabled = enabled, bool(on)
    try:
        yield
    finally:
        enabled = previous


__all__ = ["enabled", "use_fused", "fused", "cpu_available", "use_cpu_kernels", "cpu_gelu",
           "cpu_norms", "SOURCES", "clear_cache", "row_threads", "param_grad_chunks",
           "layer_norm_forward", "layer_norm_backward", "rms_norm_forward", "rms_norm_backward",
           "softmax_forward", "softmax_backward"]
