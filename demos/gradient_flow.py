"""Gradient flow through deep tanh networks, with and without residuals and LayerNorm.

First the seed's experiment exactly: a 50-layer, 512-wide tanh network, one input of shape
(1, 512), loss = output.sum(), and the mean |∂loss/∂x| at the input, without and with
residual connections. Then a depth sweep (5 to 100 layers) of four variants, and the
gradient norm of every layer's weight in the 50-layer networks:

    plain                 x ← tanh(W x + b)                 (DeepNetworkWithoutResiduals)
    residual              x ← x + tanh(W x + b)             (DeepNetworkWithResiduals)
    plain + LayerNorm     x ← LN(tanh(W x + b))             (the seed's activations experiment)
    residual + LayerNorm  x ← x + tanh(W LN(x) + b)         (pre-norm)

The sweep uses loss = Σ output · r with a fixed random r instead of the seed's output.sum():
a network that ends in a LayerNorm has Σ output = Σ β whatever its input (the normalized
values sum to zero), so the seed's loss would give the LayerNorm variants a gradient of
exactly zero, which says nothing about gradient flow.
"""
from __future__ import annotations

import math

import numpy as np

import tinynorm as tn
from tinynorm import nn
from tinynorm.models import DeepNetworkWithoutResiduals, DeepNetworkWithResiduals

from . import _common as C

DESCRIPTION = ("the seed's 50-layer tanh network with and without residuals (input gradient), "
               "a 5-100 layer sweep with LayerNorm variants, per-layer gradient norms")

D_MODEL = 512
SEED_DEPTH = 50
VARIANTS = ("plain", "residual", "plain + LayerNorm", "residual + LayerNorm")


class DeepNetworkWithLayerNorm(nn.Module):
    """The two LayerNorm variants of the sweep (not in the seed's code)."""

    def __init__(self, d_model, num_layers, residual):
        super().__init__()
        self.residual = residual
        self.layers = nn.ModuleList([nn.Linear(d_model, d_model) for _ in range(num_layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(d_model) for _ in range(num_layers)])

    def forward(self, x):
        for layer, norm in zip(self.layers, self.norms):
            if self.residual:
                x = x + tn.tanh(layer(norm(x)))  # pre-norm: the stream itself is never normalized
            else:
                x = norm(tn.tanh(layer(x)))
        return x


def build(variant: str, num_layers: int, d_model: int = D_MODEL) -> nn.Module:
    if variant == "plain":
        return DeepNetworkWithoutResiduals(d_model, num_layers)
    if variant == "residual":
        return DeepNetworkWithResiduals(d_model, num_layers)
    return DeepNetworkWithLayerNorm(d_model, num_layers, residual=variant.startswith("residual"))


def input_gradient(model: nn.Module, d_model: int = D_MODEL, direction=None):
    """The seed's measurement: mean |∂loss/∂x| for x ~ N(0, 1) of shape (1, d), with the
    seed's loss = output.sum(), or Σ output · direction when a direction is given."""
    x = tn.randn(1, d_model, requires_grad=True)
    output = model(x)
    loss = output.sum() if direction is None else (output * direction).sum()
    loss.backward()
    return float(np.abs(C.grad_numpy(x)).mean())


def layer_gradient_norms(model: nn.Module) -> list:
    """Frobenius norm of ∂loss/∂W for each Linear, input side first."""
    return [float(np.linalg.norm(C.grad_numpy(layer.weight))) for layer in model.layers]


def main(quick: bool = False, out: str = "tinynorm-out", seed: int = 0,
         backend: str = "numpy") -> dict:
    depths = (5, 20, 50) if quick else (5, 10, 20, 30, 50, 75, 100)
    trials = 1 if quick else 3
    with C.setup(backend, seed):
        # 1. the seed's experiment, as written
        seed_plain = input_gradient(DeepNetworkWithoutResiduals(D_MODEL, SEED_DEPTH))
        seed_residual = input_gradient(DeepNetworkWithResiduals(D_MODEL, SEED_DEPTH))
        C.table([{"network": "DeepNetworkWithoutResiduals", "mean |dL/dx|": seed_plain},
                 {"network": "DeepNetworkWithResiduals", "mean |dL/dx|": seed_residual}],
                ["network", "mean |dL/dx|"],
                title=f"The seed's experiment: {SEED_DEPTH} layers, d_model={D_MODEL}, "
                      f"x (1, {D_MODEL})")

        # 2. depth sweep (geometric mean over trials) and per-layer norms at the seed's depth
        sweep = {v: {} for v in VARIANTS}
        per_layer = {}
        jobs = [(v, depth, t) for depth in depths for v in VARIANTS for t in range(trials)]
        samples: dict = {}
        for variant, depth, trial in C.progress(jobs, desc="gradient_flow"):
            model = build(variant, depth)
            direction = tn.randn(1, D_MODEL)
            gradient = input_gradient(model, D_MODEL, direction)
            samples.setdefault((variant, depth), []).append(gradient)
            if depth == SEED_DEPTH and trial == 0:
                per_layer[variant] = layer_gradient_norms(model)
        for (variant, depth), values in samples.items():
            sweep[variant][depth] = math.exp(np.mean(np.log(np.maximum(values, 1e-300))))

    rows = [{"layers": d, **{v: sweep[v][d] for v in VARIANTS}} for d in depths]
    C.table(rows, ["layers", *VARIANTS],
            title=f"Mean |dL/dx| by depth, loss = sum(output * r), r random "
                  f"(geometric mean of {trials} init(s))")
    rows = [{"layer": i + 1, **{v: per_layer[v][i] for v in VARIANTS}}
            for i in (0, 1, 9, 24, 39, 48, 49)]
    C.table(rows, ["layer", *VARIANTS],
            title=f"||dL/dW|| per layer, {SEED_DEPTH}-layer networks, same loss "
                  f"(layer 1 = input side)")

    fig, axes = C.figure(1, 2, width=11, height=4)
    for v in VARIANTS:
        axes[0, 0].plot(depths, [sweep[v][d] for d in depths], marker="o", label=v)
        axes[0, 1].plot(range(1, SEED_DEPTH + 1), per_layer[v], label=v)
    axes[0, 0].set(yscale="log", xlabel="number of layers",
                   ylabel="mean |dL/dx| at the input, L = Σ output·r",
                   title="Input gradient vs depth (r random, fixed)")
    axes[0, 1].set(yscale="log", xlabel="layer (1 = input side)",
                   ylabel="||dL/dW||, L = Σ output·r",
                   title=f"Weight gradient per layer ({SEED_DEPTH} layers)")
    for ax in axes[0]:
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    figures = [C.save(fig, out, "gradient_flow.png")]

    ratio = seed_residual / seed_plain if seed_plain > 0 else math.inf
    line = C.verdict(
        "without residuals the input gradient of a 50-layer tanh network vanishes; "
        "with residuals it is much larger",
        ratio > 1e6,
        f"input gradient with residuals / without = {ratio:.1e} "
        f"({seed_residual:.3g} vs {seed_plain:.3g})",
    )
    return {"input_grad_plain": seed_plain, "input_grad_residual": seed_residual,
            "ratio": ratio, "sweep": sweep, "per_layer": per_layer, "depths": list(depths),
            "figures": figures, "verdict": line}
