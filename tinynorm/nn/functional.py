"""``tinynorm.nn.functional``: the functional form of every op, under PyTorch's names."""
from ..ops import dropout, gelu, linear, log_softmax, relu, softmax, tanh  # noqa: F401
from ..ops import cross_entropy, embedding  # noqa: F401
from ..ops.attention import scaled_dot_product_attention  # noqa: F401
from ..ops import layer_norm, rms_norm  # noqa: F401
