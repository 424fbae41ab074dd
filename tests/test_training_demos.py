"""The training demos (warmup, depth, update_size, rms_vs_ln_training) in --quick mode, with
assertions on what they return and on the JSON and PNG they write.

Quick runs are too short to decide the papers' claims, so what is asserted is what any
correct run must show: losses start near log(vocab) and fall, the stall rule agrees with
the numbers, the verdict's checks are the numbers' checks, DeepNorm's first update is
smaller than Post-LN's, and the two norms start from the same weights.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import demos
from demos import _training as T

VOCAB_LOG = math.log(96)  # the stdlib corpus' vocabulary: printable ASCII and newline


def _run(name, tmp_path):
    result = demos.load(name).main(quick=True, out=str(tmp_path), seed=0, backend="numpy")
    for path in result["figures"]:
        assert os.path.getsize(path) > 1000, f"{name}: figure {path} is missing or empty"
    with open(result["json"]) as f:
        saved = json.load(f)
    assert saved["verdict"] == result["verdict"]
    assert result["verdict"].startswith("Verdict: ")
    return result, saved


@pytest.fixture(scope="module")
def entropy():
    return T.corpus().unigram_entropy


def test_training_demos_are_registered():
    for name in ("warmup", "depth", "update_size", "rms_vs_ln_training"):
        assert name in demos.DEMOS
        assert demos.load(name).DESCRIPTION


def test_warmup(tmp_path, entropy):
    r, saved = _run("warmup", tmp_path)
    s = r["settings"]
    seeds = len(s["seeds"]) + len(s["control_seeds"])
    expected_runs = 2 * len(s["lrs"]) * len(s["warmups"]) * seeds
    assert len(r["runs"]) == len(saved["runs"]) == expected_runs
    for run in r["runs"]:
        assert abs(run["losses"][0] - VOCAB_LOG) < 1.0  # an untrained model guesses ~uniformly
        assert not run["diverged"] and np.isfinite(run["val"])
    for cell in r["summary"]:
        assert cell["stalled"] == sum(T.stalled(v, entropy) for v in cell["values"])
        assert cell["mean"] == pytest.approx(np.mean(cell["values"]))
    # Pre-LN at the highest lr learns something beyond frequencies even in 60 steps
    best = min(c["mean"] for c in r["summary"] if c["norm"] == "pre")
    assert best < entropy - T.STALL_MARGIN
    # both runs of a (model, lr) start from the same weights and batches: same first loss
    firsts = {}
    for run in r["runs"]:
        c = run["config"]
        key = (c["num_layers"], c["norm"], c["lr"], c["seed"])
        firsts.setdefault(key, set()).add(run["losses"][0])
    assert all(len(v) == 1 for v in firsts.values())
    assert len(r["checks"]) == 4
    control = s["control_layers"]  # the control's claim names the depth that ran
    assert f"at {control} layers nothing differs" in r["verdict"]
    assert sum(f"at {control} layers" in name for name in r["checks"]) == 1


def test_depth(tmp_path, entropy):
    r, saved = _run("depth", tmp_path)
    depths = r["settings"]["depths"]
    assert len(r["runs"]) == 6 * len(depths)
    for name, trained in r["trains_at"].items():  # "trains" is exactly "did not stall"
        for d in depths:
            val = r["final_val"][f"{name}/{d}"]
            assert (d in trained) == (not T.stalled(val, entropy))
    assert r["trains_at"]["residual + Pre-LN"]  # Pre-LN learns at some depth, even in 60 steps
    assert set(saved["trains_at"]) == set(r["trains_at"])


def test_update_size(tmp_path):
    r, _ = _run("update_size", tmp_path)
    steps = r["settings"]["steps"]
    assert r["diverged"] == {"post": 0, "deepnorm": 0, "pre": 0}
    for curves in r["curves"].values():
        assert curves["update"][0] == 0.0 and len(curves["update"]) == steps + 1
        assert all(u > 0 for u in curves["update"][1:])  # every Adam step moves the output
        assert all(v > 0 for v in curves["ln_input"])
    # DeepNorm's β-scaled init makes its first update smaller than Post-LN's (Wang et al.)
    assert r["curves"]["deepnorm"]["update"][1] < r["curves"]["post"]["update"][1]
    # at init the LayerNorm inputs are sqrt(d)-sized rows times ~sqrt(1 + Var G) (Post-LN) or
    # ~α (DeepNorm): DeepNorm's are the larger ones
    d = r["settings"]["d_model"]
    ln_input = {norm: r["curves"][norm]["ln_input"][0] for norm in ("deepnorm", "post")}
    assert ln_input["deepnorm"] > ln_input["post"] > math.sqrt(d)


def test_rms_vs_ln_training(tmp_path):
    r, _ = _run("rms_vs_ln_training", tmp_path)
    s = r["settings"]
    trained = r["runs"][:len(s["seeds"])]
    for run in trained:
        ln, rms = run["losses"]["layer"], run["losses"]["rms"]
        assert len(ln) == len(rms) == s["steps"]
        # same initial weights and batches; LN and RMS differ at init only by the row means
        assert ln[0] == pytest.approx(rms[0], abs=0.05)
        assert np.mean(ln[-5:]) < ln[0] - 0.5 and np.mean(rms[-5:]) < rms[0] - 0.5
        assert all(t > 0 for t in run["seconds"]["layer"] + run["seconds"]["rms"])
    widths = [s["d_model"], *s["timing_widths"]]
    assert list(r["time_ratio"]) == widths  # one pooled ratio per width, the seeds together
    for t in r["time_ratio"].values():
        low, high = t["ci95"]
        assert 0 < low <= t["ratio"] <= high
        assert t["speed"] == demos.load("rms_vs_ln_training").speed(low, high)
    assert r["loss_gap"] == pytest.approx(np.mean([t["val"]["rms"] - t["val"]["layer"]
                                                   for t in trained]))
