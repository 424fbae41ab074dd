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

Speed is judged per width from the steps themselves. Each step of a race gives one paired
sample, log(RMS step time / LN step time), the two measured back to back under the same
load (the first SKIP_STEPS steps pay one-time costs and are left out); the seeds of a width
are pooled. The width's ratio is the geometric mean, exp(mean of the samples), with a 95%
confidence interval from Student's t over the samples (it treats the steps as independent,
which successive steps on a loaded machine are only roughly). RMSNorm is "faster" at a
width when the whole interval lies below 1, "slower" when it lies above 1, and otherwise
the two are tied: no difference this run can resolve. Repeated runs on a shared machine
move single medians by a few percent, which is why a fixed 2% band was not used.

The claim, as the O(d) vs O(d²) argument makes it: RMSNorm's steps are faster where the
norms are a sizeable share of the step (the smallest width), and slower nowhere (a tie
at the wide widths is what the argument predicts, not a failure).

``--quick``: 2 layers, d_model = 32, d_ff = 128, 40 steps, lr 3e-3 after a 5-step warm-up
(so that 40 steps learn something), one seed; timing at d_model = 64 only (10 steps).
"""
from __future__ import annotations

import math
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
SKIP_STEPS = 3  # the first steps pay one-time costs (imports, allocation, kernel compilation)


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


def t_quantile_975(df: int) -> float:
    """Student's t 97.5% quantile with ``df`` degrees of freedom, by the Cornish-Fisher
    expansion around the normal's 1.96 (within 0.003 of the exact value for df >= 5; a
    slight underestimate below that)."""
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def log_ratios(r: dict, skip: int = SKIP_STEPS) -> np.ndarray:
    """One sample per step of race ``r``: log(RMS step time / LN step time)."""
    ln, rms = (np.asarray(r["seconds"][kind][skip:], dtype=float) for kind in ("layer", "rms"))
    return np.log(rms / ln)


def ratio_interval(samples) -> tuple:
    """(geometric-mean ratio, 95% CI low, high) from per-step log ratios."""
    samples = np.asarray(samples, dtype=float)
    center = float(np.mean(samples))
    if len(samples) < 2:
        return math.exp(center), 0.0, math.inf
    half = t_quantile_975(len(samples) - 1) * float(np.std(samples, ddof=1)) / math.sqrt(
        len(samples))
    return math.exp(center), math.exp(center - half), math.exp(center + half)


def speed(low: float, high: float) -> str:
    """RMSNorm against LayerNorm at one width, from the CI of the time ratio RMS/LN."""
    return "faster" if high < 1 else "slower" if low > 1 else "tie"


def speed_holds(verdicts: dict) -> bool:
    """``width -> speed(...)``: faster at the smallest width, slower at none."""
    return (verdicts[min(verdicts)] == "faster"
            and all(v != "slower" for v in verdicts.values()))


def trains_as_well(loss_gap: float) -> bool:
    """The mean final validation losses (RMS − LN) are within SAME_LOSS nats."""
    return abs(loss_gap) < SAME_LOSS


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
          f"layers, d_model={s['d_model']}, batch {s['batch']} x {s['seq_len']}, Adam lr "
          f"{s['lr']:g} after {s['warmup']} warm-up steps, betas {T.ADAM_BETAS}; timing-only "
          f"races of {s['timing_steps']} steps at d_model {s['timing_widths']} (one worker "
          f"process per race, single-threaded BLAS).\n")
    with C.setup(backend, seed):
        entropy = T.corpus().unigram_entropy
    results = T.run_grid(training + timing, backend, desc="rms_vs_ln", fn=race)
    trained, timed = results[:len(training)], results[len(training):]

    def step_ms(r, kind):
        return 1e3 * float(np.median(r["seconds"][kind][SKIP_STEPS:]))

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

    by_width = {}
    for r in trained + timed:
        by_width.setdefault(r["config"]["d_model"], []).append(log_ratios(r))
    intervals = {w: ratio_interval(np.concatenate(v)) for w, v in by_width.items()}
    verdicts = {w: speed(low, high) for w, (_, low, high) in intervals.items()}
    C.table([{"d_model": w, "races": len(by_width[w]),
              "samples": sum(len(v) for v in by_width[w]), "RMS/LN (geo. mean)": ratio,
              "95% CI": f"{low:.3f} - {high:.3f}", "RMSNorm": verdicts[w]}
             for w, (ratio, low, high) in intervals.items()],
            ["d_model", "races", "samples", "RMS/LN (geo. mean)", "95% CI", "RMSNorm"],
            title=f"RMS/LN step time per width, pooled over seeds: one paired sample per step "
            f"(the first {SKIP_STEPS} of each race left out)")

    fig, axes = C.figure(1, 2, width=12, height=4)
    ax = axes[0, 0]
    for kind, color in (("layer", "tab:blue"), ("rms", "tab:orange")):
        for r in trained:
            ax.plot(*T.smooth(r["losses"][kind]), color=color, lw=0.9, alpha=0.8,
                    label=NAMES[kind] if r is trained[0] else None)
    ax.axhline(entropy, color="k", ls="--", lw=0.8, label="unigram entropy")
    ax.set(xlabel="step", ylabel=f"train loss (nats, {T.SMOOTH_WINDOW}-step mean)",
           ylim=(1.5, 4.7),
           title=f"Pre-LN, {s['layers']} layers, d_model {s['d_model']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[0, 1]  # what the verdict decides from: the ratio and its interval per width
    widths = list(intervals)
    ratio, low, high = (np.array([intervals[w][i] for w in widths]) for i in range(3))
    positions = np.arange(len(widths))
    ax.errorbar(positions, ratio, yerr=[ratio - low, np.minimum(high, 10) - ratio], fmt="o",
                capsize=6, color="tab:orange", label="RMS/LN, 95% CI")
    ax.axhline(1.0, color="k", ls="--", lw=0.8, label="equal time")
    ax.set_xticks(positions, [f"d={w}\n{verdicts[w]}" for w in widths])
    ax.set_xlim(-0.5, len(widths) - 0.5)
    ax.set(ylabel="RMSNorm step time / LayerNorm step time",
           title="Time per training step (geometric mean over steps)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    figure = C.save(fig, out, "training_rms_vs_ln.png")

    loss_gap = float(np.mean([r["val"]["rms"] - r["val"]["layer"] for r in trained]))
    checks = {"RMSNorm steps are faster at the smallest width and slower at none (95% CI)":
              speed_holds(verdicts),
              f"RMSNorm trains as well (mean val loss within {SAME_LOSS} nats)":
              trains_as_well(loss_gap)}
    outcome = C.outcome(checks)
    measured = ("RMS/LN time per step " + ", ".join(
        f"d={w}: {ratio:.3f} [{low:.3f}, {high:.3f}] ({verdicts[w]})"
        for w, (ratio, low, high) in intervals.items())
        + f"; mean val loss RMS - LN = {loss_gap:+.3f} nats")
    line = C.verdict("RMSNorm is cheaper than LayerNorm and trains as well (the seed: 'consider "
                     "RMSNorm for efficiency')", outcome, measured)
    result = {"settings": s, "unigram_entropy": entropy,
              "time_ratio": {w: {"ratio": ratio, "ci95": [low, high], "speed": verdicts[w]}
                             for w, (ratio, low, high) in intervals.items()},
              "loss_gap": loss_gap, "checks": checks, "runs": results, "figures": [figure],
              "verdict": line}
    result["json"] = T.save_json(result, out, "training_rms_vs_ln.json")
    return result
