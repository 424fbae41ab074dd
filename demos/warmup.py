"""Does Post-LN need learning-rate warm-up, and does Pre-LN not? (Xiong et al. 2020, Fig. 2)

A 12-layer causal character model (d_model = 64, 4 heads, d_ff = 256) on the standard
library corpus, trained with Adam(betas = (0.9, 0.98)) at learning rates 1e-3, 3e-3 and
1e-2, each without warm-up and with a linear warm-up over 200 steps (then constant), for
Post-LN and Pre-LN, 3 seeds each; and a 6-layer control (one seed).

A run "stalls" when its final validation loss is within 0.15 nats of the corpus' unigram
entropy H (or above it, or it diverged): it has learned character frequencies and nothing
more. The published expectation: deep Post-LN without warm-up fails at high learning
rates, warm-up rescues it, Pre-LN does not care, and in the shallow control nothing
differs. "Nothing differs" is judged on the control's numbers: Post-LN and Pre-LN stall in
as many runs, and in every (lr, warm-up) cell their final losses differ by less than
CONTROL_GAP = 0.1 nats (a cell where only one of them diverged differs by inf). 0.1 nats is
the noise of this demo: the control has one seed per cell, so its gap is the difference of
two single runs, and in the full run recorded in README.md changing the seed alone moved
one cell of the deep grid by up to 0.098 nats (Post-LN x12, lr 1e-3, warm-up 200: 2.772 to
2.869; the other cells' ranges were at most 0.06). The verdict prints each run's own
largest seed range beside the gap.

Budget: one 12-layer step on 8 × 24 characters is ~28 ms on one core of the machine this
was written on, so the grid (36 deep runs and 12 control runs, split over the cores) fits
in 5 minutes on 2 cores only at 300 steps: warm-up runs spend 200 of them warming up and
100 at the full learning rate. ``--quick`` runs a 4-layer, d = 32 grid of 60 steps at lr
1e-3 and 1e-2, warm-up 0 and 30, one seed, with a 2-layer control.
"""
from __future__ import annotations

import numpy as np

from . import _common as C
from . import _training as T

DESCRIPTION = ("Post-LN vs Pre-LN (12 layers, d=64): Adam lr 1e-3/3e-3/1e-2, warm-up 0 vs 200, "
               "3 seeds; final losses and stalls at the unigram entropy; 6-layer control")

FULL = dict(layers=12, control_layers=6, d_model=64, d_ff=256, lrs=(1e-3, 3e-3, 1e-2),
            warmups=(0, 200), seeds=(0, 1, 2), control_seeds=(0,), steps=300, batch=8,
            seq_len=24)
QUICK = dict(layers=4, control_layers=2, d_model=32, d_ff=128, lrs=(1e-3, 1e-2), warmups=(0, 30),
             seeds=(0,), control_seeds=(0,), steps=60, batch=8, seq_len=32)
NORMS = {"post": "Post-LN", "pre": "Pre-LN"}
CONTROL_GAP = 0.1  # nats: the largest loss gap the control may show and "nothing differs"


def configs(s: dict, seed: int) -> list:
    runs = []
    for layers, seeds in ((s["layers"], s["seeds"]), (s["control_layers"], s["control_seeds"])):
        for norm in NORMS:
            for lr in s["lrs"]:
                for warmup in s["warmups"]:
                    for k in seeds:
                        runs.append(T.RunConfig(
                            num_layers=layers, d_model=s["d_model"], d_ff=s["d_ff"], norm=norm,
                            lr=lr, warmup=warmup, steps=s["steps"], batch=s["batch"],
                            seq_len=s["seq_len"], seed=seed + k, val_batches=8))
    return runs


def summarize(results: list, entropy: float) -> dict:
    """(layers, norm, lr, warmup) → mean final val loss, stalls, count, per-seed values."""
    cells = {}
    for r in results:
        c = r["config"]
        cells.setdefault((c["num_layers"], c["norm"], c["lr"], c["warmup"]), []).append(r["val"])
    summary = {}
    for key, vals in cells.items():
        finite = [v for v in vals if np.isfinite(v)]
        summary[key] = {"mean": float(np.mean(finite)) if finite else float("nan"),
                        "stalled": sum(T.stalled(v, entropy) for v in vals), "runs": len(vals),
                        "values": vals}
    return summary


def fails_without_warmup(stalled: int, runs: int) -> bool:
    """Deep Post-LN without warm-up fails: more than half its runs at the high lrs stall."""
    return stalled > runs / 2


def rescued(stalled_without: int, stalled_with: int) -> bool:
    """Warm-up rescues a cell: fewer of its runs stall with warm-up than without."""
    return stalled_with < stalled_without


def never_stalls(stalled: int) -> bool:
    return stalled == 0


def loss_gap(a: float, b: float) -> float:
    """|a − b| of two cells' mean losses; 0 if both diverged (nan), inf if only one did."""
    finite = np.isfinite(a), np.isfinite(b)
    if all(finite):
        return abs(a - b)
    return 0.0 if not any(finite) else float("inf")


def control_alike(stalled_post: int, stalled_pre: int, gap: float) -> bool:
    """The shallow control's "nothing differs": Post-LN and Pre-LN stall equally often and
    their largest per-cell loss gap is below CONTROL_GAP (the module docstring says why)."""
    return stalled_post == stalled_pre and gap < CONTROL_GAP


def seed_range(summary: dict, layers: int) -> float:
    """The largest max − min over seeds of the final losses in one cell at ``layers`` (nan
    with one seed): how far a change of seed alone moves a result in this run."""
    ranges = [max(c["values"]) - min(c["values"]) for key, c in summary.items()
              if key[0] == layers and len(c["values"]) > 1 and np.all(np.isfinite(c["values"]))]
    return float(max(ranges)) if ranges else float("nan")


def verdict(s: dict, summary: dict, entropy: float):
    deep, control, lrs = s["layers"], s["control_layers"], s["lrs"]
    w0, w1 = s["warmups"]
    high = lrs[1:]  # the learning rates above the lowest

    def cell(layers, norm, lr, warmup):
        return summary[(layers, norm, lr, warmup)]

    post_fails = sum(cell(deep, "post", lr, w0)["stalled"] for lr in high)
    post_runs = sum(cell(deep, "post", lr, w0)["runs"] for lr in high)
    rescued_at = [lr for lr in high if rescued(cell(deep, "post", lr, w0)["stalled"],
                                               cell(deep, "post", lr, w1)["stalled"])]
    pre_stalls = sum(cell(deep, "pre", lr, w)["stalled"] for lr in lrs for w in (w0, w1))
    pre_gap = max(loss_gap(cell(deep, "pre", lr, w0)["mean"], cell(deep, "pre", lr, w1)["mean"])
                  for lr in lrs)
    control_stalls = {n: sum(cell(control, n, lr, w)["stalled"] for lr in lrs for w in (w0, w1))
                      for n in NORMS}
    control_gap = max(loss_gap(cell(control, "post", lr, w)["mean"],
                               cell(control, "pre", lr, w)["mean"]) for lr in lrs for w in (w0, w1))
    noise = seed_range(summary, deep)
    # each expectation of the deep grid is judged by stalls, as the table counts them
    checks = {
        f"deep Post-LN without warm-up stalls at lr >= {high[0]:g}":
            fails_without_warmup(post_fails, post_runs),
        "warm-up rescues deep Post-LN": len(rescued_at) == len(high),
        "Pre-LN never stalls, with or without warm-up": never_stalls(pre_stalls),
        f"at {control} layers nothing differs (equal stalls, loss gap < {CONTROL_GAP} nats)":
            control_alike(control_stalls["post"], control_stalls["pre"], control_gap),
    }

    def stalls(lr, warmup):
        c = cell(deep, "post", lr, warmup)
        return f"{c['stalled']}/{c['runs']}"

    by_lr = ", ".join(f"lr {lr:g} {stalls(lr, w0)} -> {stalls(lr, w1)}" for lr in lrs)
    noise_text = (f"; largest seed-to-seed range of a {deep}-layer cell {noise:.3f} nats"
                  if np.isfinite(noise) else "")
    measured = (f"{deep}-layer Post-LN stalls without -> with warm-up: {by_lr}; warm-up lowered "
                f"the stall count at {len(rescued_at)}/{len(high)} of the lrs >= {high[0]:g}; "
                f"Pre-LN stalled in {pre_stalls} runs, "
                f"largest warm-up effect on its mean loss {pre_gap:.3f} nats; {control}-layer "
                f"control stalls Post-LN {control_stalls['post']}, Pre-LN {control_stalls['pre']}, "
                f"largest Post-vs-Pre gap {control_gap:.3f} nats{noise_text}")
    outcome = C.outcome(checks)
    return checks, measured, outcome


def plot(s, results, entropy, out):
    rows = [(s["layers"], n) for n in NORMS] + [(s["control_layers"], n) for n in NORMS]
    fig, axes = C.figure(len(rows), len(s["lrs"]), width=4.2 * len(s["lrs"]),
                         height=2.6 * len(rows))
    colors = {s["warmups"][0]: "tab:red", s["warmups"][1]: "tab:blue"}
    for i, (layers, norm) in enumerate(rows):
        for j, lr in enumerate(s["lrs"]):
            ax = axes[i, j]
            for r in results:
                c = r["config"]
                if (c["num_layers"], c["norm"], c["lr"]) != (layers, norm, lr):
                    continue
                first_seed = c["seed"] == results[0]["config"]["seed"]
                label = f"warm-up {c['warmup']}" if first_seed else None
                ax.plot(*T.smooth(r["losses"]), color=colors[c["warmup"]], lw=0.9, alpha=0.8,
                        label=label)
            ax.axhline(entropy, color="k", ls="--", lw=0.8, label="unigram entropy")
            ax.set(title=f"{NORMS[norm]}, {layers} layers, lr {lr:g}", xlabel="step",
                   ylabel=f"train loss (nats, {T.SMOOTH_WINDOW}-step mean)", ylim=(1.5, 4.7))
            ax.grid(True, alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    return C.save(fig, out, "training_warmup.png")


def main(quick: bool = False, out: str = "tinynorm-out", seed: int = 0,
         backend: str = "numpy") -> dict:
    s = QUICK if quick else FULL
    with C.setup(backend, seed):
        entropy = T.corpus().unigram_entropy
        description = T.corpus().description
    runs = configs(s, seed)
    print(f"Corpus: {description}; unigram entropy H = {entropy:.3f} nats (stall: final "
          f"validation loss > H - {T.STALL_MARGIN}).")
    print(f"Ran: {len(runs)} runs of {s['steps']} steps, batch {s['batch']} x {s['seq_len']} "
          f"characters, d_model={s['d_model']}, d_ff={s['d_ff']}, 4 heads, Adam betas "
          f"{T.ADAM_BETAS}, lrs {s['lrs']}, warm-up {s['warmups']} steps (linear, then "
          f"constant); {s['layers']} layers x {len(s['seeds'])} seeds, control "
          f"{s['control_layers']} layers x {len(s['control_seeds'])} seed(s).\n")
    results = T.run_grid(runs, backend, desc="warmup")
    summary = summarize(results, entropy)

    rows = []
    for (layers, norm, lr, warmup), cell in summary.items():
        rows.append({"model": f"{NORMS[norm]} x{layers}", "lr": lr, "warm-up": warmup,
                     "final val loss per seed": " ".join(f"{v:.3f}" for v in cell["values"]),
                     "mean": cell["mean"], "stalled": f"{cell['stalled']}/{cell['runs']}"})
    C.table(rows, list(rows[0]), title=f"Final validation loss (nats) after {s['steps']} steps; "
            f"H = {entropy:.3f}")
    figure = plot(s, results, entropy, out)
    checks, measured, outcome = verdict(s, summary, entropy)
    line = C.verdict("deep Post-LN without warm-up fails at high learning rates, warm-up rescues "
                     f"it, Pre-LN does not need warm-up, and at {s['control_layers']} layers "
                     "nothing differs (Xiong et al. 2020; the seed: Pre-Norm needs no warm-up)",
                     outcome, measured)
    result = {"settings": s, "unigram_entropy": entropy, "corpus": description,
              "summary": [{"layers": k[0], "norm": k[1], "lr": k[2], "warmup": k[3], **v}
                          for k, v in summary.items()],
              "runs": [{k: r[k] for k in ("config", "losses", "final", "val", "diverged",
                                          "seconds_per_step")} for r in results],
              "checks": checks, "figures": [figure], "verdict": line}
    result["json"] = T.save_json(result, out, "training_warmup.json")
    return result
