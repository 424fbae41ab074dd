"""The seed's two deep tanh networks: the vanishing-gradient experiment.

``DeepNetworkWithoutResiduals`` computes x ← tanh(W_l x + b_l) fifty times; by the chain rule
its input gradient is a product of fifty Jacobians diag(1 − tanh²)·W_l, each of which shrinks
a vector (PyTorch's default init gives W_l singular values mostly below 1, and 1 − tanh² ≤ 1),
so it vanishes geometrically. ``DeepNetworkWithResiduals`` computes x ← x + tanh(W_l x + b_l):
each Jacobian becomes I + diag(1 − tanh²)·W_l, and the identity term carries the gradient
through every layer ("the +1 term" of the tutorial).

Class names, constructor arguments and parameter names ("layers.0.weight", ...) are the
seed's, so each loads the seed's PyTorch state_dict unchanged.
"""
from __future__ import annotations

from .. import nn, ops


class DeepNetworkWithoutResiduals(nn.Module):
    """``num_layers`` of x ← tanh(Linear(x)), all ``d_model`` wide."""

    def __init__(self, d_model, num_layers):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d_model, d_model) for _ in range(num_layers)])

    def forward(self, x):
        for layer in self.layers:
            x = ops.tanh(layer(x))
        return x


class DeepNetworkWithResiduals(nn.Module):
    """``num_layers`` of x ← x + tanh(Linear(x)), all ``d_model`` wide."""

    def __init__(self, d_model, num_layers):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d_model, d_model) for _ in range(num_layers)])

    def forward(self, x):
        for layer in self.layers:
            x = x + ops.tanh(layer(x))
        return x
