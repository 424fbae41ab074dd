"""Activation distributions through 10 tanh layers, without and with LayerNorm.

The seed's ``plot_activation_distribution``: x ~ N(0, 1) of shape (1000, 512) goes through
ten fresh ``Linear(512, 512)`` layers, each followed by tanh; the second run also applies
one LayerNorm (the seed's from-scratch class, shared by all ten layers) after each tanh.
Histograms of every layer's activations, one colour per layer, and a per-layer mean/std
table.

Without LayerNorm the std does not shrink to zero: each layer maps a std s to about
√(s²/3 + 1/(3d)) (``nn.Linear``'s weights and biases are U(±1/√d), variance 1/(3d) each, and
tanh is nearly the identity on small values), whose fixed point is s = 1/√(2d) ≈ 0.031 for
d = 512, set by the biases. The verdict reports where the shrinking stops.
"""
from __future__ import annotations

import numpy as np

import tinynorm as tn
from tinynorm import nn
from tinynorm.models import LayerNorm

from . import _common as C

DESCRIPTION = "the seed's activation histograms through 10 tanh layers, without and with LayerNorm"

D_MODEL = 512
NUM_LAYERS = 10


def bias_floor(d_model: int = D_MODEL) -> float:
    """The std that tanh(Linear(x)) settles at without LayerNorm: s² = s²/3 + 1/(3d)."""
    return (2 * d_model) ** -0.5


def plateau_start(stds, spread: float = 1.15, min_layers: int = 3):
    """The first layer (1-based) from which every later layer's std lies within a factor
    ``spread`` of the others, over at least ``min_layers`` layers; None if the std is still
    changing that much in the last ``min_layers`` layers."""
    for start in range(len(stds) - min_layers + 1):
        tail = stds[start:]
        if max(tail) / min(tail) < spread:
            return start + 1
    return None


def no_ln_checks(stds) -> dict:
    """The claim without LayerNorm, "the activations shrink towards zero layer by layer",
    as two checks on the per-layer stds: they fall at every layer until they level off and
    by more than half; and they do not level off (keep falling to the last layer)."""
    plateau = plateau_start(stds)
    falling = stds[:plateau] if plateau else stds
    return {
        "no LN: shrinks layer by layer": (all(a > b for a, b in zip(falling, falling[1:]))
                                          and falling[-1] < 0.5 * falling[0]),
        "no LN: keeps shrinking towards zero (no plateau)": plateau is None,
    }


def ln_stable(stds, means) -> bool:
    """With LayerNorm: every layer's std within 0.05 of 1 and |mean| below 0.05."""
    return max(abs(s - 1.0) for s in stds) < 0.05 and max(abs(m) for m in means) < 0.05


def activations(rows: int, layer_norm: bool) -> list:
    """Each layer's activations as a flat NumPy array, as the seed collects them."""
    x = tn.randn(rows, D_MODEL)
    ln = LayerNorm(D_MODEL)
    collected = []
    with tn.no_grad():
        for _ in range(NUM_LAYERS):
            x = tn.tanh(nn.Linear(D_MODEL, D_MODEL)(x))
            if layer_norm:
                x = ln(x)
            collected.append(tn.backend.to_numpy(x.data).ravel())
    return collected


def main(quick: bool = False, out: str = "tinynorm-out", seed: int = 0,
         backend: str = "numpy") -> dict:
    rows = 256 if quick else 1000
    with C.setup(backend, seed):
        without = activations(rows, layer_norm=False)
        with_ln = activations(rows, layer_norm=True)

    stats = {
        "without": [(float(a.mean()), float(a.std())) for a in without],
        "with": [(float(a.mean()), float(a.std())) for a in with_ln],
    }
    table_rows = [{"layer": i + 1,
                   "mean (no LN)": stats["without"][i][0], "std (no LN)": stats["without"][i][1],
                   "mean (LN)": stats["with"][i][0], "std (LN)": stats["with"][i][1]}
                  for i in range(NUM_LAYERS)]
    C.table(table_rows, ["layer", "mean (no LN)", "std (no LN)", "mean (LN)", "std (LN)"],
            title=f"Activations after each tanh layer, x of shape ({rows}, {D_MODEL})")

    fig, axes = C.figure(1, 2, width=12, height=4.2)
    colours = [f"C{i}" for i in range(NUM_LAYERS)]
    for ax, acts, title in ((axes[0, 0], without, "WITHOUT LayerNorm"),
                            (axes[0, 1], with_ln, "WITH LayerNorm")):
        for i, a in enumerate(acts):
            counts, edges = np.histogram(a, bins=50)
            ax.stairs(counts, edges, fill=True, alpha=0.3, color=colours[i], label=f"Layer {i + 1}")
        ax.set(title=f"Activation Distribution {title}", xlabel="Activation Value",
               ylabel="Frequency")
        ax.legend(fontsize=7, ncol=2)
    figures = [C.save(fig, out, "activations.png")]

    no_ln_stds = [s for _, s in stats["without"]]
    shrink = no_ln_stds[-1] / no_ln_stds[0]
    plateau = plateau_start(no_ln_stds)
    ln_stds = [s for _, s in stats["with"]]
    ln_means = [m for m, _ in stats["with"]]
    checks = {**no_ln_checks(no_ln_stds), "LN: stable and centred": ln_stable(ln_stds, ln_means)}
    if plateau is None:
        without = (f"std without LN goes {no_ln_stds[0]:.3f} -> {no_ln_stds[-1]:.3f} "
                   f"(x{shrink:.2g}), still falling at layer {NUM_LAYERS}")
    else:
        level = no_ln_stds[plateau - 1:]
        without = (f"std without LN shrinks {no_ln_stds[0]:.3f} -> {no_ln_stds[plateau - 1]:.3f} "
                   f"(x{no_ln_stds[plateau - 1] / no_ln_stds[0]:.2g}) until layer {plateau}, then "
                   f"levels off at {min(level):.4f} to {max(level):.4f} through layer "
                   f"{NUM_LAYERS}, near the biases' floor 1/sqrt(2d) = {bias_floor():.4f}")
    line = C.verdict(
        "without LayerNorm the activations shrink towards zero layer by layer; "
        "with LayerNorm they stay stable and centred",
        C.outcome(checks),
        f"{without}; with LN every layer has std in "
        f"[{min(ln_stds):.3f}, {max(ln_stds):.3f}] and |mean| <= {max(map(abs, ln_means)):.1e}",
    )
    return {"stats": stats, "std_shrink_without_ln": shrink, "plateau_layer": plateau,
            "checks": checks,
            "ln_std_range": (min(ln_stds), max(ln_stds)),
            "ln_max_abs_mean": max(map(abs, ln_means)), "figures": figures, "verdict": line}
