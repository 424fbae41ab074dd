"""tinynorm: a small, readable deep-learning engine on NumPy (CPU) and CuPy (GPU).

Backward passes are derived by hand and written beside their forward passes, so that the
code itself shows why residual connections, LayerNorm and RMSNorm make deep transformers
trainable. The API follows PyTorch's names and semantics.
"""
from . import backend
from .tensor import Tensor  # first: tensor.py loads ops, which load autograd
from .autograd import (Function, detect_anomaly, enable_grad, is_grad_enabled, no_grad,
                       set_grad_enabled)
from .backend import bool_, float16, float32, float64, int32, int64
from .creation import (arange, as_tensor, empty, empty_like, full, full_like, ones, ones_like,
                       rand, rand_like, randn, randn_like, tensor, zeros, zeros_like)
from .ops import (abs, add, cat, chunk, div, exp, flatten, log, log_softmax, masked_fill,
                  matmul, max, mean, min, mul, neg, permute, pow, relu, reshape, softmax, split,
                  sqrt, squeeze, stack, std, sub, sum, tanh, transpose, unsqueeze, var, where)

from . import nn  # noqa: E402  (nn builds on everything above)
from . import optim  # noqa: E402
from .serialization import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402

manual_seed = backend.manual_seed
bool = bool_  # noqa: A001 — torch.bool

__version__ = "0.1.0"
