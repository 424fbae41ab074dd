"""``tinynorm.nn.init``: PyTorch's initializers, with PyTorch's formulas, filling in place.

Each function overwrites ``tensor.data`` (so nothing is recorded by autograd, as under
PyTorch's ``no_grad``) and returns ``tensor``. Random numbers come from the backend's
generator, so ``tn.manual_seed`` makes initialization reproducible; they are drawn in the
tensor's own dtype, so a float32 and a float64 layer seeded alike get different values.

Fans, for a weight of shape (out, in, *kernel): fan_in = in · prod(kernel),
fan_out = out · prod(kernel).
"""
from __future__ import annotations

import math
import warnings

from .. import backend


def calculate_gain(nonlinearity: str, param=None) -> float:
    """The recommended gain for ``nonlinearity``: tanh 5/3, relu √2, leaky_relu
    √(2 / (1 + slope²)) (slope ``param``, default 0.01), selu 3/4, linear-like 1."""
    linear_fns = ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                  "conv_transpose2d", "conv_transpose3d"]
    if nonlinearity in linear_fns or nonlinearity == "sigmoid":
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _calculate_fan_in_and_fan_out(tensor):
    if tensor.ndim < 2:
        raise ValueError(f"Fan in and fan out can not be computed for tensor with fewer than 2 "
                         f"dimensions (got shape {tuple(tensor.shape)})")
    receptive_field = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive_field, tensor.shape[0] * receptive_field


def _calculate_correct_fan(tensor, mode: str) -> int:
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor, a: float = 0.0, b: float = 1.0):
    """Fill with U(a, b)."""
    u = backend.random(backend.array_module(tensor.data), tensor.shape, tensor.dtype)
    tensor.data[...] = a + (b - a) * u
    return tensor


def normal_(tensor, mean: float = 0.0, std: float = 1.0):
    """Fill with N(mean, std²)."""
    z = backend.standard_normal(backend.array_module(tensor.data), tensor.shape, tensor.dtype)
    tensor.data[...] = mean + std * z
    return tensor


def constant_(tensor, val: float):
    tensor.data[...] = val
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0)


def ones_(tensor):
    return constant_(tensor, 1)


def xavier_uniform_(tensor, gain: float = 1.0):
    """U(−a, a) with a = gain · √(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    a = math.sqrt(3.0) * std  # a uniform on (−a, a) has standard deviation a/√3
    return uniform_(tensor, -a, a)


def xavier_normal_(tensor, gain: float = 1.0):
    """N(0, std²) with std = gain · √(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return normal_(tensor, 0.0, std)


def _kaiming_std(tensor, a: float, mode: str, nonlinearity: str):
    """std = gain / √fan (He et al., 2015); None, with PyTorch's warning, when ``tensor``
    has no elements (there is nothing to fill, and its fan may be 0)."""
    if 0 in tensor.shape:
        warnings.warn("Initializing zero-element tensors is a no-op")
        return None
    return calculate_gain(nonlinearity, a) / math.sqrt(_calculate_correct_fan(tensor, mode))


def kaiming_uniform_(tensor, a: float = 0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu"):
    """U(−bound, bound) with bound = √3 · std, std = gain / √fan (He et al., 2015)."""
    std = _kaiming_std(tensor, a, mode, nonlinearity)
    if std is None:
        return tensor
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a: float = 0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu"):
    """N(0, std²) with std = gain / √fan."""
    std = _kaiming_std(tensor, a, mode, nonlinearity)
    if std is None:
        return tensor
    return normal_(tensor, 0.0, std)
