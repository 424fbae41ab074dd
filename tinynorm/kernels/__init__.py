"""Fused CUDA kernels for LayerNorm, RMSNorm and softmax, used only on CuPy arrays.

The plain array-module code in tinynorm.ops is the reference: readable, and what runs on
NumPy. On the GPU the same ops can call these kernels instead, which read and write each
row a minimum number of times in one launch rather than one launch per array expression.
They compute the same math and save the same quantities for backward; tests/test_gpu.py
checks them against the reference.

Switch them off with the environment variable ``TINYNORM_FUSED=0`` (read at import), with
``tinynorm.kernels.enabled = False``, or for a block::

    with tinynorm.kernels.fused(False):
        ...                                  # the reference path, also on the GPU

Importing this package never imports CuPy: the array module comes from the inputs, and a
kernel is compiled (NVRTC, via CuPy's RawModule) the first time it is launched.
"""
from __future__ import annotations

import contextlib
import os

from .. import backend
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


@contextlib.contextmanager
def fused(on: bool):
    """Turn the fused kernels on or off for a block (tests and benchmarks compare both)."""
    global enabled
    previous, enabled = enabled, bool(on)
    try:
        yield
    finally:
        enabled = previous


__all__ = ["enabled", "use_fused", "fused", "SOURCES", "clear_cache", "row_threads",
           "param_grad_chunks", "layer_norm_forward", "layer_norm_backward",
           "rms_norm_forward", "rms_norm_backward", "softmax_forward", "softmax_backward"]
