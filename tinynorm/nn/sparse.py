"""Embedding: a table of learned vectors looked up by integer index (token or position)."""
from __future__ import annotations

from ..creation import empty
from ..ops.embedding import _normalize_padding_idx, embedding
from . import init
from .module import Module, Parameter


class Embedding(Module):
    """A (num_embeddings, embedding_dim) weight; ``forward(indices)`` returns its rows.

    As ``torch.nn.Embedding``: weight ~ N(0, 1), and the row ``padding_idx`` (if given)
    starts at zero and never receives a gradient. Used for token embeddings and for
    learned positional embeddings (indices ``arange(T)``).

    Difference from PyTorch: ``max_norm``, ``scale_grad_by_freq`` and ``sparse`` are not
    supported.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None,
                 _weight=None, _freeze: bool = False, device=None, dtype=None):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = _normalize_padding_idx(padding_idx, num_embeddings)
        if _weight is None:
            self.weight = Parameter(empty(num_embeddings, embedding_dim, dtype=dtype,
                                          device=device), requires_grad=not _freeze)
            self.reset_parameters()
        else:
            if tuple(_weight.shape) != (num_embeddings, embedding_dim):
                raise ValueError(f"Embedding: _weight of shape {tuple(_weight.shape)} does not "
                                 f"match ({num_embeddings}, {embedding_dim})")
            self.weight = Parameter(_weight, requires_grad=not _freeze)

    def reset_parameters(self) -> None:
        init.normal_(self.weight)
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    def forward(self, input):
        return embedding(input, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        text = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            text += f", padding_idx={self.padding_idx}"
        return text

    @classmethod
    def from_pretrained(cls, embeddings, freeze: bool = True, padding_idx=None) -> "Embedding":
        """An Embedding whose weight is ``embeddings`` (a 2-D Tensor, shared, as PyTorch)."""
        if embeddings.ndim != 2:
            raise ValueError(f"Embedding.from_pretrained: embeddings must be 2-D, got shape "
                             f"{tuple(embeddings.shape)}")
        rows, dim = embeddings.shape
        return cls(rows, dim, padding_idx=padding_idx, _weight=embeddings, _freeze=freeze)
