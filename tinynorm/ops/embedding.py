"""embedding: look up rows of a weight table by integer index."""
from __future__ import annotations

from .. import backend
from ..autograd import Function
from ..tensor import Tensor
from ._adjoint import require_float, scatter_add


class Embedding(Function):
    """y[..., :] = weight[indices[...], :] for weight of shape (num_embeddings, dim).

    y has shape indices.shape + (dim,). The row ``padding_idx`` (if given) is looked up
    like any other but receives no gradient, as in PyTorch.
    """

    @staticmethod
    def forward(ctx, indices, weight, padding_idx):
        ctx.weight_shape = weight.shape
        ctx.padding_idx = padding_idx
        ctx.save_for_backward(indices)
        return weight[indices]

    @staticmethod
    def backward(ctx, grad_out):
        """y[i] = weight[indices[i]], so ∂y[i]/∂weight[r] = [indices[i] = r] and

            dweight[r] = Σ_{i : indices[i] = r} grad_out[i]

        An index that occurs k times receives the sum of its k gradients: the scatter
        must accumulate (``scatter_add``), since ``dweight[indices] = g`` would keep
        only one of them. dweight[padding_idx] = 0.
        Saves the indices (the caller's, one integer per lookup), and the table's shape and
        padding_idx as attributes; the table itself is not needed.
        """
        (indices,) = ctx.saved_tensors
        xp = backend.array_module(grad_out)
        dim = ctx.weight_shape[1]
        dweight = xp.zeros(ctx.weight_shape, dtype=grad_out.dtype)
        scatter_add(dweight, indices.reshape(-1), grad_out.reshape(indices.size, dim))
        if ctx.padding_idx is not None:
            dweight[ctx.padding_idx] = 0
        return None, dweight, None


def embedding(input, weight, padding_idx=None):
    """``F.embedding(input, weight, padding_idx=None)``: rows of ``weight`` at the integer
    indices ``input``. A negative ``padding_idx`` counts from the end, as PyTorch.

    Difference from PyTorch: ``max_norm``, ``scale_grad_by_freq`` and ``sparse`` are not
    supported.
    """
    idx = input.data if isinstance(input, Tensor) else input
    w = weight.data if isinstance(weight, Tensor) else weight
    if w.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (num_embeddings, embedding_dim), got "
                         f"shape {tuple(w.shape)}")
    require_float("embedding", w)
    if not backend.is_array(idx) or idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be an integer tensor, got "
                        f"{getattr(idx, 'dtype', type(idx).__name__)}")
    num = w.shape[0]
    # one read of both ends (on a GPU each read waits for it; CuPy's gather would wrap an
    # index out of range instead of raising, so the check stays)
    xp = backend.array_module(idx)
    lowest, highest = backend.to_numpy(xp.stack([idx.min(), idx.max()])).tolist() \
        if idx.size else (0, -1)
    if lowest < 0 or highest >= num:
        bad = lowest if lowest < 0 else highest
        raise IndexError(f"embedding: index {bad} is out of range for a table of {num} rows "
                         f"(expected 0 to {num - 1}; indices of shape {tuple(idx.shape)})")
    padding_idx = _normalize_padding_idx(padding_idx, num)
    return Embedding.apply(idx, weight, padding_idx)


def _normalize_padding_idx(padding_idx, num_embeddings: int):
    """``padding_idx`` in [0, num_embeddings), or None; negative values count from the end."""
    if padding_idx is None:
        return None
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"embedding: padding_idx {padding_idx} must be within num_embeddings "
                         f"({num_embeddings}): -{num_embeddings} to {num_embeddings - 1}")
    return int(padding_idx) % num_embeddings
