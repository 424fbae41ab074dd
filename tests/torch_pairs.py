"""Helpers shared by the attention tests: the same float64 data as a tinynorm leaf and a torch
leaf, and the float64 parity check (1e-10 relative, plus a 1e-12 absolute floor for entries
that are 0 up to rounding)."""
import torch

import tinynorm as tn
from tinynorm.testing import assert_close
from tinynorm.testing.compare import to_host as host  # noqa: F401 — imported from here

RTOL, ATOL = 1e-10, 1e-12


def close(ours, theirs):
    expected = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    assert_close(ours, expected, rtol=RTOL, atol=ATOL)


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
