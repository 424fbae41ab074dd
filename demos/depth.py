"""Trainability against depth: which of residuals and normalisation does a deep model need?

The same causal character model (d_model = 64, 4 heads, d_ff = 256) at 2, 6, 12, 24 and 48
layers, in six variants of ``CausalLM`` (x is the residual stream, G a sub-layer, N a
LayerNorm):

    plain               x ← G(x)                  neither
    residual            x ← x + G(x)              skip connections only
    LayerNorm only      x ← N(G(x))               normalisation only
    residual + Pre-LN   x ← x + G(N(x))           GPT-2
    residual + Post-LN  x ← N(x + G(x))           the original Transformer
    DeepNorm            x ← N(α·x + G(x)), β-scaled init (Wang et al. 2022)

each trained for 200 steps on the standard-library corpus (batch 8 × 32 characters) with
Adam(betas = (0.9, 0.98)), lr 1e-3 after a 50-step linear warm-up, one seed. A model
"trains" when its final validation loss is more than 0.15 nats below the unigram entropy
H (it has learned something beyond character frequencies); a run whose loss becomes
inf/nan "diverged", one that ends above H + 1 (worse than knowing nothing) "blew up".

The seed's claim: without residual connections and normalisation, deep models "simply
wouldn't train". ``--quick``: d_model = 32, d_ff = 128, depths 2 and 8, 50 steps, lr 3e-3
after a 10-step warm-up (a higher rate, so that 50 steps learn something).
"""
from __future__ import annotations

import numpy as np

from . import _common as C
from . import _training as T

DESCRIPTION = ("trainability vs depth (2-48 layers): plain, residual, LayerNorm only, residual + "
               "Pre-LN, residual + Post-LN, DeepNorm; final loss vs the unigram entropy")

VARIANTS = {  # name: (norm, residual)
    "plain": ("none", False),
    "residual": ("none", True),
    "LayerNorm only": ("post", False),
    "residual + Pre-LN": ("pre", True),
    "residual + Post-LN": ("post", True),
    "DeepNorm": ("deepnorm", True),
}
FULL = dict(depths=(2, 6, 12, 24, 48), d_model=64, d_ff=256, steps=200, warmup=50, lr=1e-3,
            batch=8, seq_len=32)
QUICK = dict(depths=(2, 8), d_model=32, d_ff=128, steps=50, warmup=10, lr=3e-3,
             batch=8, seq_len=32)
BLOWUP_MARGIN = 1.0  # nats above H: worse than knowing nothing, the activations blew up


def blew_up(val: float, entropy: float) -> bool:
    """A final loss above H + BLOWUP_MARGIN (a diverged run's nan is not "blew up")."""
    return bool(val > entropy + BLOWUP_MARGIN)


def off_scale(vals, entropy: float) -> np.ndarray:
    """Which final losses the figure marks with an x on its top edge, as the table marks
    them: diverged (inf/nan) or blew up."""
    vals = np.asarray(vals, dtype=float)
    return ~np.isfinite(vals) | (vals > entropy + BLOWUP_MARGIN)


def checks(trains: dict, depths) -> dict:
    """The verdict's checks from the depths at which each variant trains (did not stall)."""
    deepest, depths = depths[-1], list(depths)
    return {f"plain and LayerNorm-only fail at {deepest} layers":
            all(deepest not in trains[n] for n in ("plain", "LayerNorm only")),
            "residual + Pre-LN trains at every depth": list(trains["residual + Pre-LN"]) == depths,
            "DeepNorm trains at every depth": list(trains["DeepNorm"]) == depths}


def cell_text(r: dict, entropy: float) -> str:
    if r["diverged"]:
        return "diverged"
    if blew_up(r["val"], entropy):
        return f"{r['val']:.4g} (blew up)"
    return f"{r['val']:.3f}" + (" (stall)" if T.stalled(r["val"], entropy) else "")


def main(quick: bool = False, out: str = "tinynorm-out", seed: int = 0,
         backend: str = "numpy") -> dict:
    s = QUICK if quick else FULL
    with C.setup(backend, seed):
        entropy = T.corpus().unigram_entropy
    runs = [T.RunConfig(num_layers=depth, d_model=s["d_model"], d_ff=s["d_ff"], norm=norm,
                        residual=residual, lr=s["lr"], warmup=s["warmup"], steps=s["steps"],
                        batch=s["batch"], seq_len=s["seq_len"], seed=seed, val_batches=8)
            for norm, residual in VARIANTS.values() for depth in s["depths"]]
    print(f"Ran: {len(runs)} runs of {s['steps']} steps, batch {s['batch']} x {s['seq_len']}, "
          f"d_model={s['d_model']}, d_ff={s['d_ff']}, Adam lr {s['lr']:g} after {s['warmup']} "
          f"warm-up steps, betas {T.ADAM_BETAS}, seed {seed}; H = {entropy:.3f} nats.\n")
    results = T.run_grid(runs, backend, desc="depth")
    by = {}
    for r in results:
        c = r["config"]
        name = next(n for n, v in VARIANTS.items() if v == (c["norm"], c["residual"]))
        by[name, c["num_layers"]] = r

    rows = [{"variant": name, **{f"{d} layers": cell_text(by[name, d], entropy)
                                 for d in s["depths"]}} for name in VARIANTS]
    C.table(rows, list(rows[0]), title=f"Final validation loss (nats) after {s['steps']} steps; "
            f"H = {entropy:.3f}; (stall) = within {T.STALL_MARGIN} of H or above; "
            f"(blew up) = above H + {BLOWUP_MARGIN:g}; diverged = inf/nan loss")
    trains = {name: [d for d in s["depths"] if not T.stalled(by[name, d]["val"], entropy)]
              for name in VARIANTS}

    fig, axes = C.figure(1, 2, width=12, height=4.2)
    ax, top = axes[0, 0], entropy + BLOWUP_MARGIN + 0.5  # every value not marked fits below
    positions = np.arange(len(s["depths"]))
    for name in VARIANTS:
        vals = np.array([by[name, d]["val"] for d in s["depths"]])
        off = off_scale(vals, entropy)  # blew up or diverged: an x on the top edge
        line, = ax.plot(positions, np.where(off, np.nan, vals), marker="o", label=name)
        ax.plot(positions[off], np.full(off.sum(), top - 0.05), "x", color=line.get_color(), ms=9)
    ax.axhline(entropy, color="k", ls="--", lw=0.8, label="unigram entropy")
    ax.set(xlabel="layers", ylabel="final validation loss (nats)", ylim=(1.8, top),
           title=f"Trainability vs depth (x on top: above H + {BLOWUP_MARGIN:g} or diverged)")
    ax.set_xticks(positions, [str(d) for d in s["depths"]])
    ax.set_xlim(-0.4, len(positions) - 0.6)  # room for the x marks at either end
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    deepest = s["depths"][-1]
    for name in VARIANTS:
        ax.plot(*T.smooth(by[name, deepest]["losses"]), label=name)
    ax.axhline(entropy, color="k", ls="--", lw=0.8, label="unigram entropy")
    ax.set(xlabel="step", ylabel=f"train loss (nats, {T.SMOOTH_WINDOW}-step mean)",
           ylim=(1.8, 4.8), title=f"Training curves at {deepest} layers")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    figure = C.save(fig, out, "training_depth.png")

    verdict_checks = checks(trains, s["depths"])
    measured = "; ".join(f"{name} trains at {', '.join(map(str, d)) or 'no depth'}"
                         for name, d in trains.items())
    outcome = C.outcome(verdict_checks)
    line = C.verdict("deep models without residual connections and normalisation simply "
                     "would not train; with residuals and (Pre-)LayerNorm, or DeepNorm, they do",
                     outcome, measured)
    result = {"settings": s, "unigram_entropy": entropy, "trains_at": trains,
              "final_val": {f"{n}/{d}": by[n, d]["val"] for n in VARIANTS for d in s["depths"]},
              "diverged": {f"{n}/{d}": by[n, d]["diverged"] for n in VARIANTS for d in s["depths"]},
              "runs": [{k: r[k] for k in ("config", "losses", "val", "diverged",
                                          "seconds_per_step")} for r in results],
              "checks": verdict_checks, "figures": [figure], "verdict": line}
    result["json"] = T.save_json(result, out, "training_depth.json")
    return result
