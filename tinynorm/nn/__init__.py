"""``tinynorm.nn``: Module, Parameter and layers under PyTorch's names and state_dict keys."""
from . import functional  # noqa: F401
from . import init  # noqa: F401
from .module import Module, Parameter  # noqa: F401
from .linear import Identity, Linear  # noqa: F401
