"""How far does each early update move the model? Post-LN vs DeepNorm vs Pre-LN
(Wang et al. 2022, "DeepNet", Fig. 4).

Wang et al. trace Post-LN's instability to the size of its early updates: Adam's first
steps change the output by a lot, ||F(x, θ_t) − F(x, θ_0)|| grows quickly, the inputs of
the LayerNorms grow with it, and since a LayerNorm's gradient scales as 1/||input||, the
gradients reaching the lower layers shrink. DeepNorm's α-weighted skip and β-scaled init
bound the update, so its LayerNorm inputs stay where they started.

Here: 18-layer causal character models (d_model = 64, 4 heads, d_ff = 256), Post-LN,
DeepNorm (α = 36^(1/4) = 2.45, β = 144^(−1/4) = 0.289) and Pre-LN, Adam(betas = (0.9,
0.98)) at lr 1e-3 with no warm-up, batches of 8 × 32 characters, 3 seeds. After every one
of the first 100 steps, on one fixed batch of validation text (no gradients):

    ||ΔF||_t       = mean over tokens of ||h(x, θ_t) − h(x, θ_0)||₂, h the normalised final
                     hidden state (what the LM head reads; every variant ends in a norm)
    ||LN input||_t = mean over tokens and over every norm in the model of ||its input||₂
                     (Post-LN: x + G(x); DeepNorm: α·x + G(x); Pre-LN: the stream x)

h is a normalised row (||h||₂ ≈ √d with γ = 1), so ||ΔF|| cannot grow without bound: once
h(x, θ_t) has turned away from h(x, θ_0) it sits near √(2d) (orthogonal rows of norm √d),
which every model reaches within tens of steps. What distinguishes the models is how fast
they get there: the verdict compares the first update, ||ΔF||_1, and the growth of the
LayerNorm inputs over the 100 steps (step 100 / step 0). (The largest ||ΔF|| over the 100
steps, which this demo compared first, only measures that saturation; it is still printed.)

Curves are means over seeds. A run that diverges (a non-finite loss) stops there; its
curves are padded with nan and the mean at each later step is over the seeds still running
(the table and the verdict say how many runs diverged).

``--quick``: 6 layers, d_model = 32, 20 steps, one seed.
"""
from __future__ import annotations

import warnings

import numpy as np

import tinynorm as tn
from tinynorm.data import data_generator

from . import _common as C
from . import _training as T

DESCRIPTION = ("||F(x,θ_t) − F(x,θ_0)|| and LayerNorm input size over the first 100 steps: "
               "Post-LN vs DeepNorm vs Pre-LN, 18 layers (Wang et al. 2022, Fig. 4)")

NORMS = {"post": "Post-LN", "deepnorm": "DeepNorm", "pre": "Pre-LN"}
FULL = dict(layers=18, d_model=64, d_ff=256, steps=100, lr=1e-3, batch=8, seq_len=32,
            seeds=(0, 1, 2))
QUICK = dict(layers=6, d_model=32, d_ff=128, steps=20, lr=1e-3, batch=8, seq_len=32, seeds=(0,))


def token_norms(a) -> float:
    """Mean over tokens of the L2 norm over features of a (B, T, d) Tensor."""
    values = tn.backend.to_numpy(a.data).astype(np.float64)
    return float(np.linalg.norm(values, axis=-1).mean())


def measure(cfg: dict, backend: str = "numpy") -> dict:
    """Train ``cfg`` for ``cfg["steps"]`` steps; ||ΔF|| and ||LN input|| before the first
    update and after every one (run in a worker process, hence a module-level function)."""
    with C.setup(backend, cfg["seed"]):
        run = T.Run(cfg)
        probe, _ = T.corpus().get_batch("val", cfg["batch"], cfg["seq_len"], data_generator(20_000))

        def look():
            record = []
            with tn.no_grad():
                h = run.model.hidden(probe, record)
            return h, float(np.mean([token_norms(r) for r in record]))

        h0, ln0 = look()
        update, ln_input, losses = [0.0], [ln0], []
        for _ in range(cfg["steps"]):
            losses.append(run.step())
            if not np.isfinite(losses[-1]):
                break
            h, ln = look()
            update.append(token_norms(h - h0))
            ln_input.append(ln)
    return {"config": cfg, "update": update, "ln_input": ln_input, "losses": losses}


def padded(curve, length: int) -> np.ndarray:
    """``curve`` as floats, cut or padded with nan to ``length``; inf (a diverged loss) is nan."""
    values = np.full(length, np.nan)
    head = np.asarray(curve[:length], dtype=float)
    values[:len(head)] = np.where(np.isfinite(head), head, np.nan)
    return values


def quiet_nan(reduce, values, **kwargs):
    """``reduce`` (np.nanmean, np.nanmax) without its warning on all-nan input (all the runs
    diverged), whose answer, nan, says it already."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return reduce(values, **kwargs)


def mean_curve(results, norm: str, key: str, length: int) -> np.ndarray:
    """The mean over seeds of ``key`` at each of ``length`` steps, over the runs that have a
    finite value there (nan where none has): a run that diverged drops out of the mean."""
    curves = np.array([padded(r[key], length) for r in results if r["config"]["norm"] == norm])
    return quiet_nan(np.nanmean, curves, axis=0)


def checks(first: dict, growth: dict) -> dict:
    """The verdict's checks from ||ΔF||_1 and the LayerNorm input growth of each model
    (a nan, from runs that all diverged, fails the check it enters)."""
    return {"DeepNorm's first update moves the output less than Post-LN's":
            bool(first["deepnorm"] < first["post"]),
            "Post-LN's LayerNorm inputs grow more than DeepNorm's":
            bool(growth["post"] > growth["deepnorm"])}


def main(quick: bool = False, out: str = "tinynorm-out", seed: int = 0,
         backend: str = "numpy") -> dict:
    s = QUICK if quick else FULL
    runs = [T.RunConfig(num_layers=s["layers"], d_model=s["d_model"], d_ff=s["d_ff"], norm=norm,
                        lr=s["lr"], warmup=0, steps=s["steps"], batch=s["batch"],
                        seq_len=s["seq_len"], seed=seed + k)
            for norm in NORMS for k in s["seeds"]]
    print(f"Ran: {len(runs)} runs ({s['layers']} layers, d_model={s['d_model']}, Adam lr "
          f"{s['lr']:g}, no warm-up, {len(s['seeds'])} seed(s)), measured after each of the "
          f"first {s['steps']} steps; curves are means over seeds.\n")
    results = T.run_grid(runs, backend, desc="update_size", fn=measure)
    lengths = {"update": s["steps"] + 1, "ln_input": s["steps"] + 1, "losses": s["steps"]}
    curves = {n: {k: mean_curve(results, n, k, length) for k, length in lengths.items()}
              for n in NORMS}
    diverged = {n: sum(not np.all(np.isfinite(r["losses"])) for r in results
                       if r["config"]["norm"] == n) for n in NORMS}
    runs_per_norm = len(s["seeds"])

    checkpoints = [t for t in (1, 5, 10, 25, 50, 100) if t <= s["steps"]]
    rows = []
    for n, label in NORMS.items():
        c = curves[n]
        row = {"model": label}
        row.update({f"dF@{t}": c["update"][t] for t in checkpoints if t < len(c["update"])})
        row.update({"LN in@0": c["ln_input"][0], f"LN in@{s['steps']}": c["ln_input"][-1],
                    "LN growth": c["ln_input"][-1] / c["ln_input"][0],
                    "loss@end": float(quiet_nan(np.nanmean, c["losses"][-10:])),
                    "diverged": f"{diverged[n]}/{runs_per_norm}"})
        rows.append(row)
    C.table(rows, list(rows[0]), title="||F(x,θ_t) − F(x,θ_0)|| (dF@t), mean LayerNorm input "
            f"norm (sqrt(d) = {np.sqrt(s['d_model']):.1f} for unit-variance rows), mean over seeds")

    fig, axes = C.figure(1, 3, width=14, height=4)
    for n, label in NORMS.items():
        axes[0, 0].plot(curves[n]["update"], label=label)
        axes[0, 1].plot(curves[n]["ln_input"], label=label)
        axes[0, 2].plot(curves[n]["losses"], label=label, lw=0.8)
    axes[0, 0].set(xlabel="step t", ylabel="||F(x,θ_t) − F(x,θ_0)||", title="Model update")
    axes[0, 1].set(xlabel="step t", ylabel="mean ||LN input||", yscale="log",
                   title="Input of the LayerNorms")
    axes[0, 2].set(xlabel="step t", ylabel="train loss (nats)", title="Loss")
    for ax in axes[0]:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    figure = C.save(fig, out, "training_update_size.png")

    growth = {n: float(curves[n]["ln_input"][-1] / curves[n]["ln_input"][0]) for n in NORMS}
    max_update = {n: float(quiet_nan(np.nanmax, curves[n]["update"])) for n in NORMS}
    first = {n: float(curves[n]["update"][1]) for n in NORMS}
    verdict_checks = checks(first, growth)
    outcome = C.outcome(verdict_checks)
    diverged_text = ("" if not any(diverged.values()) else
                     "; diverged (dropped from the means from then on): " + ", ".join(
                         f"{NORMS[n]} {k}/{runs_per_norm}" for n, k in diverged.items()))
    measured = (f"||dF|| after the first step: Post-LN {first['post']:.3g}, DeepNorm "
                f"{first['deepnorm']:.3g}, Pre-LN {first['pre']:.3g}; largest over {s['steps']} "
                f"steps: Post-LN {max_update['post']:.3g}, DeepNorm {max_update['deepnorm']:.3g}, "
                f"Pre-LN {max_update['pre']:.3g} (sqrt(2d) = {np.sqrt(2 * s['d_model']):.3g}); "
                f"LN input growth (step {s['steps']} / step 0): Post-LN {growth['post']:.3g}, "
                f"DeepNorm {growth['deepnorm']:.3g}, Pre-LN {growth['pre']:.3g}{diverged_text}")
    line = C.verdict("DeepNorm bounds the early model update, and so the growth of the "
                     "LayerNorm inputs, that destabilise Post-LN (Wang et al. 2022)",
                     outcome, measured)
    result = {"settings": s, "curves": {n: {k: v.tolist() for k, v in c.items()}
                                        for n, c in curves.items()},
              "first_update": first, "max_update": max_update, "ln_growth": growth,
              "diverged": diverged, "checks": verdict_checks,
              "runs": results, "figures": [figure], "verdict": line}
    result["json"] = T.save_json(result, out, "training_update_size.json")
    return result
