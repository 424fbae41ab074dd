"""Dropout: zero each element with probability p while training, identity in eval mode."""
from __future__ import annotations

from . import functional as F
from .module import Module


class Dropout(Module):
    """``F.dropout(x, p, self.training)``: inverted scaling by 1/(1 − p) while training.

    ``inplace=True`` is accepted for PyTorch compatibility but computed out of place.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        if p < 0 or p > 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p
        self.inplace = inplace

    def forward(self, input):
        return F.dropout(input, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"
