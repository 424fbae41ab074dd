"""``tinynorm.nn``: Module, Parameter and layers under PyTorch's names and state_dict keys."""
from . import functional  # noqa: F401
