"""``tinynorm.nn``: Module, Parameter and layers under PyTorch's names and state_dict keys."""
from . import functional  # noqa: F401
from . import init  # noqa: F401
from .module import Module, Parameter  # noqa: F401
from .linear import Identity, Linear  # noqa: F401
from .container import ModuleDict, ModuleList, Sequential  # noqa: F401
from .activation import GELU, LogSoftmax, ReLU, Softmax, Tanh  # noqa: F401
from .dropout import Dropout  # noqa: F401
from .normalization import LayerNorm, RMSNorm  # noqa: F401
from .sparse import Embedding  # noqa: F401
from . import utils  # noqa: F401
from .attention import MultiheadAttention  # noqa: F401
