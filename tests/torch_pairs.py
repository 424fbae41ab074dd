"""Helpers shared by the tests: the same float64 data as a tinynorm leaf and a torch leaf, the
float64 parity check ``close`` (by default 1e-10 relative, plus a 1e-12 absolute floor for
entries that are 0 up to rounding), ``num_threads`` for tinynorm's thread count, and the
``needs_numba`` marker."""
import contextlib

import numpy as np
import pytest

try:  # the torch-free tests import num_threads and needs_numba from here too
    import torch
except ImportError:
    torch = None

import tinynorm as tn
from tinynorm import kernels
from tinynorm.testing import assert_close
from tinynorm.ops import _rows
from tinynorm.testing.compare import to_host as host  # noqa: F401 — imported from here

RTOL, ATOL = 1e-10, 1e-12

# for tests of the compiled CPU kernels, which exist only where numba is installed
needs_numba = pytest.mark.skipif(not kernels.cpu_available(),
                                 reason='numba not installed: pip install "tinynorm[cpu]"')


def close(ours, theirs, *, rtol=RTOL, atol=ATOL, scale_atol=False, min_scale=0.0, what=""):
    """Assert |ours − theirs| ≤ atol + rtol·|theirs| elementwise, shapes equal, NaN matching
    nothing (tinynorm.testing.assert_close). Either side may be a tinynorm Tensor, an array, a
    scalar or a torch tensor.

    With ``scale_atol`` the absolute floor follows the data's size instead:
    ``atol · max(max|theirs|, min_scale)`` (NaNs ignored; an empty ``theirs`` gives
    ``atol · min_scale``). ``what`` names the comparison in the failure message."""
    if torch is not None:
        ours, theirs = (v.detach().numpy() if isinstance(v, torch.Tensor) else v
                        for v in (ours, theirs))
    if scale_atol:
        expected = host(theirs)
        largest = float(np.nanmax(np.abs(expected))) if expected.size else 0.0
        atol = atol * max(largest, min_scale)
    try:
        assert_close(ours, theirs, rtol=rtol, atol=atol)
    except AssertionError as err:
        if not what:
            raise
        raise AssertionError(f"{what}: {err}") from None


@contextlib.contextmanager
def num_threads(n):
    """tinynorm's CPU thread count set to ``n`` inside the block, and the previous count
    restored on leaving it, also when the block raises."""
    before = _rows.get_num_threads()
    _rows.set_num_threads(n)
    try:
        yield
    finally:
        _rows.set_num_threads(before)


def leaf_pair(a):
    """The same float64 array as a tinynorm leaf and a torch leaf, both requiring grad."""
    return tn.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)


def mask_pair(mask):
    """A mask for both libraries: bool masks as plain tensors, float masks as leaves."""
    if mask is None:
        return None, None
    if mask.dtype == bool:
        return tn.tensor(mask), torch.tensor(mask)
    return leaf_pair(mask)


def attention_saved(out):
    """Per attention node in ``out``'s graph (the order of a walk from ``out``), the shapes
    of the float arrays it saved for backward: P (batch + (L, S)) or a log-sum-exp
    (batch + (L, 1)), O, q, k, v (the dropout mask is bool and left out)."""
    from tinynorm.ops.attention import ScaledDotProductAttention
    found, stack, seen = [], [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.fn is ScaledDotProductAttention:
            found.append([a.shape for a in node.saved_tensors
                          if a is not None and a.dtype.kind == "f"])
        stack.extend(getattr(edge, "node", None) for edge in node.edges)
    return found
