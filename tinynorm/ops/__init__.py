"""Every differentiable op of tinynorm, one Function each, forward beside backward.

The functions here take and return Tensors; ``tinynorm.nn.functional`` and the Tensor
methods are thin names over them.
"""
from .arithmetic import add, div, mul, neg, pow, sub
from .attention import scaled_dot_product_attention
from .cast import cast
from .cross_entropy import cross_entropy
from .dropout import dropout
from .embedding import embedding
from .layer_norm import layer_norm
from .matmul import linear, matmul
from .pointwise import abs, exp, gelu, log, relu, sqrt, tanh
from .rms_norm import rms_norm
from ._rows import get_num_threads, set_num_threads
from .reduce import max, mean, min, std, sum, var
from .select import masked_fill, where
from .shape import (cat, chunk, expand, flatten, getitem, permute, reshape, split, squeeze,
                    stack, transpose, unsqueeze, view)
from .softmax import log_softmax, softmax
