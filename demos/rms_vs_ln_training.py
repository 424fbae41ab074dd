"""LayerNorm vs RMSNorm in training: the same model, loss curves and wall-clock per step.

The seed recommends RMSNorm "for efficiency": it drops the mean (one reduction and one
subtraction per row, and β) and, the claim goes, trains as well. Here two Pre-LN causal
character models (6 layers, d_model = 64, 4 heads, d_ff = 256) that differ only in the norm
(``norm_type="layer"`` or ``"rms"``; same initial weights, same batches) train side by side
on the standard-library corpus for 400 steps, Adam(betas = (0.9, 0.98)), lr 1e-3 after a
50-step warm-up, 3 seeds. Their steps alternate (LN first on even steps, RMS first on odd
ones) so that both see the same machine load; each step's wall time is recorded. Then the
same race, timing only (30 steps each), at d_model = 256 and 512: a norm costs O(d) per
token and the matmuls O(d²), so the wider the model, the smaller the norms' share of a step.
A time ratio within 2% of 1 counts as no measurable difference (repeated runs on a shared
machine move it by about that much).

``--quick``: 2 layers, d_model = 32, 40 steps, one seed; timing at d_model = 64 only.
"""
from __future__ import annotations

import time

import numpy as np

from . import _common as C
from . import _training as T

DESCRIPTION = ("LayerNorm vs RMSNorm in the same Pre-LN model: loss curves and wall-clock time "
               "per training step (d_model 64, 256, 512)")

NAMES = {"layer": "LayerNorm", "rms": "RMSNorm"}
FULL = dict(layers=6, d_model=64, d_ff=256, steps=400, warmup=50, lr=1e-3, batch=8,
            seq_len=32, seeds=(0, 1, 2), timing_widths=(256, 512), timing_steps=30)
QUICK = dict(layers=2, d_model=32, d_ff=128, steps=40, warmup=5, lr=3e-3, batch=8,
             seq_len=32, seeds=(0,), timing_widths=(64,), timing_steps=10)
SAME_LOSS = 0.05  # nats
SAME_TIME = 0.02  # a time ratio within 2% of 1: no measurable difference


def race(cfg: dict, backend: str = "numpy") -> dict:
    """Train the LayerNorm and the RMSNorm variant of ``cfg`` in alternating steps;
    per-step losses and wall times of each (a module-level function, run in a worker)."""
    with C.setup(backend, cfg["seed"]):
        runs = {kind: T.Run({**cfg, "norm_type": kind}) for kind in NAMES}
        losses = {kind: [] for kind in NAMES}
        seconds = {kind: [] for kind in NAMES}
        for step in range(cfg["steps"]):
            order = list(NAMES) if step % 2 == 0 else list(NAMES)[::-1]
            for kind in order:
                start = time.perf_counter()
                losses[kind].append(runs[kind].step())
                seconds[kind].append(time.perf_counter() - start)
        val = {kind: runs[kind].validation_loss() for kind in NAMES}
    return {"config": cfg, "losses": losses, "seconds": seconds, "val": val}


def main(quick: bool = False, out: str = "tinynorm-out", seed: int = 0,
         backend: str = "numpy") -> dict:
    s = QUICK if quick else FULL
    common = dict(num_layers=s["layers"], norm="pre", lr=s["lr"], warmup=s["warmup"],
                  batch=s["batch"], seq_len=s["seq_len"], val_batches=8)
    training = [T.RunConfig(**common, d_model=s["d_model"], d_ff=s["d_ff"], steps=s["steps"],
                            seed=seed + k) for k in s["seeds"]]
    timing = [T.RunConfig(**common, d_model=w, d_ff=4 * w, num_heads=4, steps=s["timing_steps"],
                          seed=seed) for w in s["timing_widths"]]
    print(f"Ran: {len(training)} seed(s) x 2 norms, {s['steps']} steps, {s['layers']} Pre-LN "
          f"layers, d_model={s['d_model']}, batch {s['batch']} x {s['seq_len']}; timing-only "
          f"races of {s['timing_steps']} steps at d_model {s['timing_widths']} (one worker "
          f"process per race, single-threaded BLAS).\n")
    with C.setup(backend, seed):
        entropy = T.corpus().unigram_entropy
    results = T.run_grid(training + timing, backend, desc="rms_vs_ln", fn=race)
    trained, timed = results[:len(training)], results[len(training):]

    def step_ms(r, kind, skip=3):  # the first steps pay one-time costs (imports, allocation)
        return 1e3 * float(np.median(r["seconds"][kind][skip:]))

    rows = []
    for r in trained + timed:
        c = r["config"]
        ln, rms = step_ms(r, "layer"), step_ms(r, "rms")
        rows.append({"d_model": c["d_model"], "seed": c["seed"], "steps": c["steps"],
                     "LN ms/step": ln, "RMS ms/step": rms, "RMS/LN": rms / ln,
                     "LN val loss": r["val"]["layer"] if r in trained else "",
                     "RMS val loss": r["val"]["rms"] if r in trained else ""})
    C.table(rows, list(rows[0]), title="Median wall time per training step (forward, backward, "
            f"Adam) and final validation loss; H = {entropy:.3f}")

    fig, axes = C.figure(1, 2, width=12, height=4)
    ax = axes[0, 0]
    for kind, color in (("layer", "tab:blue"), ("rms", "tab:orange")):
        for r in trained:
            ax.plot(T.smooth(r["losses"][kind]), color=color, lw=0.9, alpha=0.8,
                    label=NAMES[kind] if r is trained[0] else None)
    ax.axhline(entropy, color="k", ls="--", lw=0.8, label="unigram entropy")
    ax.set(xlabel="step", ylabel="train loss (nats, 10-step mean)", ylim=(1.5, 4.5),
           title=f"Pre-LN, {s['layers']} layers, d_model {s['d_model']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    widths = [r["config"]["d_model"] for r in trained[:1] + timed]
    for kind, offset in (("layer", -0.2), ("rms", 0.2)):
        ax.bar(np.arange(len(widths)) + offset, [step_ms(r, kind) for r in trained[:1] + timed],
               width=0.4, label=NAMES[kind])
    ax.set_xticks(np.arange(len(widths)), [f"d={w}" for w in widths])
    ax.set(ylabel="median ms per step", title="Wall-clock time per training step")
    ax.legend(fontsize=8)
    figure = C.save(fig, out, "training_rms_vs_ln.png")

    def race_name(r):
        c = r["config"]
        return c["d_model"] if r in timed else f"{c['d_model']}/seed{c['seed']}"

    ratios = {race_name(r): step_ms(r, "rms") / step_ms(r, "layer") for r in trained + timed}
    loss_gap = float(np.mean([r["val"]["rms"] - r["val"]["layer"] for r in trained]))
    def speed(ratio):
        return ("faster" if ratio < 1 - SAME_TIME else "slower" if ratio > 1 + SAME_TIME
                else "same")

    checks = {f"RMSNorm steps are faster (by > {SAME_TIME:.0%}) at every width":
              all(speed(v) == "faster" for v in ratios.values()),
              f"RMSNorm trains as well (mean val loss within {SAME_LOSS} nats)":
              abs(loss_gap) < SAME_LOSS}
    outcome = C.outcome(checks)
    measured = ("RMS/LN time per step " + ", ".join(f"{k}: {v:.3f} ({speed(v)})"
                                                    for k, v in ratios.items())
                + f"; mean val loss RMS - LN = {loss_gap:+.3f} nats")
    line = C.verdict("RMSNorm is cheaper than LayerNorm and trains as well (the seed: 'consider "
                     "RMSNorm for efficiency')", outcome, measured)
    result = {"settings": s, "unigram_entropy": entropy, "time_ratio": ratios,
              "loss_gap": loss_gap, "checks": checks, "runs": results, "figures": [figure],
              "verdict": line}
    result["json"] = T.save_json(result, out, "training_rms_vs_ln.json")
    return result
