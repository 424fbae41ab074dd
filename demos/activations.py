"""Activation distributions through 10 tanh layers, without and with LayerNorm.

The seed's ``plot_activation_distribution``: x ~ N(0, 1) of shape (1000, 512) goes through
ten fresh ``Linear(512, 512)`` layers, each followed by tanh; the second run also applies
one LayerNorm (the seed's from-scratch class, shared by all ten layers) after each tanh.
Histograms of every layer's activations, one colour per layer, and a per-layer mean/std
table.
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

    shrink = stats["without"][-1][1] / stats["without"][0][1]
    ln_stds = [s for _, s in stats["with"]]
    ln_means = [m for m, _ in stats["with"]]
    stable = max(abs(s - 1.0) for s in ln_stds) < 0.05 and max(abs(m) for m in ln_means) < 0.05
    line = C.verdict(
        "without LayerNorm the activations shrink towards zero layer by layer; "
        "with LayerNorm they stay stable and centred",
        shrink < 0.5 and stable,
        f"std without LN goes {stats['without'][0][1]:.3f} -> {stats['without'][-1][1]:.3f} "
        f"(x{shrink:.2g}); with LN every layer has std in "
        f"[{min(ln_stds):.3f}, {max(ln_stds):.3f}] and |mean| <= {max(map(abs, ln_means)):.1e}",
    )
    return {"stats": stats, "std_shrink_without_ln": shrink,
            "ln_std_range": (min(ln_stds), max(ln_stds)),
            "ln_max_abs_mean": max(map(abs, ln_means)), "figures": figures, "verdict": line}
