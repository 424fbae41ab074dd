"""Parameter: the Tensor a Module registers as trainable."""
from __future__ import annotations

from .. import backend
from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable: a leaf that requires grad by default.

    ``Parameter(t)`` shares ``t``'s array, as PyTorch's does.
    """

    __slots__ = ()

    def __init__(self, data=None, requires_grad: bool = True):
        if data is None:
            data = backend.xp().empty((0,), dtype=backend.DEFAULT_FLOAT)
        elif isinstance(data, Tensor):
            data = data.data
        elif not backend.is_array(data):
            raise TypeError(f"Parameter: expected a Tensor or a NumPy/CuPy array, got "
                            f"{type(data).__name__}")
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()
