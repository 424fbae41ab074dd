"""The pure functions under the training demos' verdicts, on numbers either side of each
threshold, and the demo runner's argument errors: fast, nothing is trained.

A verdict can be trusted only if its check can both pass and fail on the numbers a run
could measure; these tests put numbers on both sides of every threshold.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest

from demos import __main__ as runner
from demos import _training as T
from demos import depth, rms_vs_ln_training, update_size, warmup

H = 3.064  # the stdlib corpus' unigram entropy (nats); any value would do


# ---- _training.smooth ---------------------------------------------------------------------

def test_smooth_places_each_mean_at_the_last_step_of_its_window():
    losses = np.linspace(4.5, 2.0, 30) ** 2  # not linear: a shifted mean would not match
    steps, means = T.smooth(losses, window=10)
    assert steps[0] == 9 and steps[-1] == 29 and len(steps) == len(means)
    for k, m in zip(steps, means):
        assert m == pytest.approx(np.mean(losses[k - 9:k + 1]))


def test_smooth_of_a_short_or_diverged_curve():
    steps, means = T.smooth([4.0, 3.0, 2.0], window=10)
    assert list(steps) == [0, 1, 2] and list(means) == [4.0, 3.0, 2.0]
    steps, means = T.smooth([3.0] * 12 + [math.nan] * 3, window=10)
    assert list(steps) == list(range(9, 15))
    assert np.all(means[:3] == 3.0) and np.all(np.isnan(means[3:]))


# ---- warmup --------------------------------------------------------------------------------

def test_warmup_stall_checks_either_side():
    assert warmup.fails_without_warmup(2, 3) and warmup.fails_without_warmup(3, 4)
    assert not warmup.fails_without_warmup(2, 4) and not warmup.fails_without_warmup(1, 3)
    assert warmup.rescued(3, 2) and warmup.rescued(1, 0)
    assert not warmup.rescued(3, 3) and not warmup.rescued(0, 0) and not warmup.rescued(1, 2)
    assert warmup.never_stalls(0) and not warmup.never_stalls(1)


def test_warmup_loss_gap_of_diverged_cells():
    assert warmup.loss_gap(2.5, 2.62) == pytest.approx(0.12)
    assert warmup.loss_gap(2.62, 2.5) == pytest.approx(0.12)
    assert warmup.loss_gap(math.nan, math.nan) == 0.0  # both diverged: nothing differs
    assert warmup.loss_gap(math.nan, 2.5) == math.inf == warmup.loss_gap(2.5, math.nan)


def test_warmup_control_alike_either_side():
    gap = warmup.CONTROL_GAP
    assert warmup.control_alike(2, 2, gap - 0.002)
    assert warmup.control_alike(0, 0, 0.0)
    assert not warmup.control_alike(2, 2, gap + 0.002)
    assert not warmup.control_alike(2, 2, gap)  # "below" the threshold
    assert not warmup.control_alike(3, 0, 0.0)  # equal losses, different stall counts
    assert not warmup.control_alike(0, 0, math.inf)  # one of a cell's pair diverged


def _warmup_summary(s, control_post, control_pre, deep_pre=2.3, deep_post=(3.07, 2.5)):
    """A summary as ``warmup.summarize`` makes it: ``control_*`` maps (lr, warmup) to the
    control's final losses; deep Pre-LN trains, deep Post-LN stalls without warm-up only."""
    summary = {}

    def put(key, values):
        summary[key] = {"mean": float(np.mean(values)), "values": list(values),
                        "stalled": sum(T.stalled(v, H) for v in values), "runs": len(values)}

    seeds = len(s["seeds"])
    for lr in s["lrs"]:
        for i, w in enumerate(s["warmups"]):
            put((s["layers"], "pre", lr, w), [deep_pre + 0.01 * k for k in range(seeds)])
            put((s["layers"], "post", lr, w), [deep_post[i] + 0.01 * k for k in range(seeds)])
            put((s["control_layers"], "post", lr, w), [control_post[lr, w]])
            put((s["control_layers"], "pre", lr, w), [control_pre[lr, w]])
    return summary


def test_warmup_verdict_control_check_uses_gap_and_stalls():
    s = warmup.FULL
    cells = [(lr, w) for lr in s["lrs"] for w in s["warmups"]]
    name = f"at {s['control_layers']} layers nothing differs"

    def control_check(post, pre):
        checks, measured, _ = warmup.verdict(s, _warmup_summary(s, post, pre), H)
        (key,) = [k for k in checks if k.startswith(name)]
        return checks[key], measured

    pre = {c: 2.40 for c in cells}
    near = {c: 2.40 + warmup.CONTROL_GAP - 0.01 for c in cells}
    far = {**pre, cells[-1]: 2.40 + warmup.CONTROL_GAP + 0.01}
    both_stall = {c: 3.00 for c in cells}  # all stalled, within 0.1 of each other
    below_stall = {c: H - T.STALL_MARGIN - 0.01 for c in cells}
    one_stalls = {**below_stall, cells[0]: H - T.STALL_MARGIN + 0.01}  # 0.02 nats apart
    assert control_check(near, pre)[0]
    assert control_check(both_stall, {c: 3.05 for c in cells})[0]
    assert control_check(below_stall, below_stall)[0]
    assert not control_check(far, pre)[0]
    assert not control_check(one_stalls, below_stall)[0]  # close losses, unequal stalls
    # the deep grid has 3 seeds here: its largest seed-to-seed range is reported
    assert "largest seed-to-seed range of a 12-layer cell 0.020 nats" in control_check(near, pre)[1]


def test_warmup_deep_checks_from_the_summary():
    s = warmup.FULL
    cells = [(lr, w) for lr in s["lrs"] for w in s["warmups"]]
    control = {c: 2.4 for c in cells}
    checks, _, _ = warmup.verdict(s, _warmup_summary(s, control, control), H)
    assert list(checks.values()) == [True, True, True, True]
    # Post-LN trains without warm-up too: it does not fail, and warm-up rescues nothing
    checks, _, _ = warmup.verdict(s, _warmup_summary(s, control, control,
                                                     deep_post=(2.5, 2.5)), H)
    assert list(checks.values()) == [False, False, True, True]
    # Pre-LN stalls too
    checks, _, _ = warmup.verdict(s, _warmup_summary(s, control, control, deep_pre=3.0), H)
    assert list(checks.values()) == [True, True, False, True]


def test_warmup_seed_range():
    s = warmup.QUICK  # one seed: no range to measure
    cells = {(lr, w): 2.4 for lr in s["lrs"] for w in s["warmups"]}
    assert math.isnan(warmup.seed_range(_warmup_summary(s, cells, cells), s["layers"]))


# ---- depth ---------------------------------------------------------------------------------

def test_depth_figure_and_table_mark_the_same_runs():
    top = H + depth.BLOWUP_MARGIN
    vals = [2.5, H, top - 0.01, top + 0.01, 4.5, 580.6, math.inf, math.nan]
    off = depth.off_scale(vals, H)
    assert list(off) == [False, False, False, True, True, True, True, True]
    for v, marked in zip(vals, off):
        r = {"val": v, "diverged": not math.isfinite(v)}
        text = depth.cell_text(r, H)
        assert marked == ("blew up" in text or text == "diverged"), (v, text)


def test_depth_checks_either_side():
    depths = (2, 8)
    good = {"plain": [2], "residual": [2], "LayerNorm only": [], "residual + Pre-LN": [2, 8],
            "residual + Post-LN": [2], "DeepNorm": [2, 8]}
    assert list(depth.checks(good, depths).values()) == [True, True, True]
    assert list(depth.checks({**good, "plain": [2, 8]}, depths).values()) == [False, True, True]
    assert list(depth.checks({**good, "LayerNorm only": [8]}, depths).values()) == [
        False, True, True]
    assert list(depth.checks({**good, "residual + Pre-LN": [8]}, depths).values()) == [
        True, False, True]
    assert list(depth.checks({**good, "DeepNorm": [2]}, depths).values()) == [True, True, False]


# ---- update_size ---------------------------------------------------------------------------

def _curve_run(norm, update):
    return {"config": {"norm": norm}, "update": update}


def test_update_size_mean_curve_keeps_every_step_when_a_seed_diverges():
    runs = [_curve_run("post", [0.0, 1.0, 2.0, 3.0]), _curve_run("post", [0.0, 3.0]),
            _curve_run("pre", [0.0, 9.0, 9.0, 9.0])]
    curve = update_size.mean_curve(runs, "post", "update", 4)
    assert list(curve) == [0.0, 2.0, 2.0, 3.0]  # step 3 is step 3, from the surviving seed
    assert list(update_size.padded([1.0, math.inf], 3)[:1]) == [1.0]
    assert np.isnan(update_size.padded([1.0, math.inf], 3)[1:]).all()


def test_update_size_mean_curve_of_runs_that_all_diverged_at_step_one():
    runs = [_curve_run("post", [0.0]), _curve_run("post", [0.0])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        curve = update_size.mean_curve(runs, "post", "update", 3)
    assert curve[0] == 0.0 and np.isnan(curve[1:]).all()
    first = {"post": float(curve[1]), "deepnorm": 0.3}
    checks = update_size.checks(first, {"post": 1.2, "deepnorm": 1.0})
    assert list(checks.values()) == [False, True]  # nan fails the check it enters


def test_update_size_checks_either_side():
    first = {"post": 2.75, "deepnorm": 0.32}
    growth = {"post": 1.18, "deepnorm": 1.06}
    assert list(update_size.checks(first, growth).values()) == [True, True]
    assert list(update_size.checks({**first, "deepnorm": 2.8}, growth).values()) == [False, True]
    assert list(update_size.checks(first, {**growth, "deepnorm": 1.2}).values()) == [True, False]
    assert list(update_size.checks(first, {**growth, "deepnorm": 1.18}).values())[1] is False


# ---- rms_vs_ln_training --------------------------------------------------------------------

@pytest.mark.parametrize("df, exact", [(5, 2.5706), (6, 2.4469), (10, 2.2281), (30, 2.0423),
                                       (100, 1.9840), (1000, 1.9623)])
def test_t_quantile(df, exact):
    assert rms_vs_ln_training.t_quantile_975(df) == pytest.approx(exact, abs=0.003)


def test_ratio_interval_is_a_geometric_mean_with_a_t_interval():
    samples = np.log([0.95, 0.97, 1.0, 0.96, 0.94, 0.98])
    ratio, low, high = rms_vs_ln_training.ratio_interval(samples)
    assert ratio == pytest.approx(math.exp(np.mean(samples)))
    half = 2.5706 * np.std(samples, ddof=1) / math.sqrt(6)
    assert low == pytest.approx(math.exp(np.mean(samples) - half), rel=1e-3)
    assert high == pytest.approx(math.exp(np.mean(samples) + half), rel=1e-3)
    assert rms_vs_ln_training.ratio_interval([0.1])[1:] == (0.0, math.inf)  # one sample: no CI


def test_log_ratios_pair_the_steps_and_skip_the_first():
    race = {"seconds": {"layer": [1.0, 1.0, 1.0, 0.010, 0.020], "rms": [0.1, 5, 5, 0.009, 0.022]}}
    assert rms_vs_ln_training.log_ratios(race, skip=3) == pytest.approx(
        np.log([0.9, 1.1]))


def test_speed_either_side_of_one():
    speed = rms_vs_ln_training.speed
    assert speed(0.95, 0.99) == "faster"
    assert speed(1.01, 1.05) == "slower"
    assert speed(0.97, 1.02) == speed(0.99, 1.0) == speed(1.0, 1.03) == "tie"


@pytest.mark.parametrize("true_ratio, expected", [(0.95, "faster"), (1.0, "tie"),
                                                  (1.05, "slower")])
def test_speed_of_noisy_paired_steps(true_ratio, expected):
    """Steps whose times jump by ±30% with the machine's load, as on the shared machine, and
    a true ratio of 0.95, 1 or 1.05: a few hundred paired steps resolve 5%."""
    rng = np.random.default_rng(0)
    load = np.exp(rng.normal(0.0, 0.3, 400))  # shared by both steps of a pair
    ln = 0.010 * load * np.exp(rng.normal(0.0, 0.05, 400))
    rms = 0.010 * true_ratio * load * np.exp(rng.normal(0.0, 0.05, 400))
    samples = rms_vs_ln_training.log_ratios({"seconds": {"layer": ln, "rms": rms}}, skip=0)
    _, low, high = rms_vs_ln_training.ratio_interval(samples)
    assert rms_vs_ln_training.speed(low, high) == expected


def test_speed_claim_faster_at_the_smallest_width_slower_at_none():
    holds = rms_vs_ln_training.speed_holds
    assert holds({64: "faster", 256: "tie", 512: "tie"})
    assert holds({512: "tie", 64: "faster", 256: "faster"})  # the smallest width, not the first
    assert not holds({64: "tie", 256: "faster", 512: "faster"})
    assert not holds({64: "faster", 256: "tie", 512: "slower"})
    assert not holds({64: "slower"}) and holds({32: "faster"})


def test_trains_as_well_either_side():
    same = rms_vs_ln_training.SAME_LOSS
    assert rms_vs_ln_training.trains_as_well(same - 0.001)
    assert rms_vs_ln_training.trains_as_well(-(same - 0.001))
    assert not rms_vs_ln_training.trains_as_well(same + 0.001)
    assert not rms_vs_ln_training.trains_as_well(-(same + 0.001))
    assert not rms_vs_ln_training.trains_as_well(math.nan)


# ---- the runner's argument errors ----------------------------------------------------------

def _fails_before_running(argv, capsys):
    assert runner.main(argv) == 2
    out, err = capsys.readouterr()
    assert "===" not in out  # no demo started
    return err


def test_out_naming_a_file_fails_before_any_demo_runs(tmp_path, capsys):
    path = tmp_path / "results.txt"
    path.write_text("keep me")
    err = _fails_before_running(["warmup", "--quick", "--out", str(path)], capsys)
    assert "--out" in err and "not a folder" in err
    assert path.read_text() == "keep me"
    err = _fails_before_running(["training", "--quick", "--out", str(path / "sub")], capsys)
    assert "--out" in err and "cannot be created" in err


def test_out_may_be_a_folder_yet_to_make(tmp_path):
    assert runner._out_problem(str(tmp_path)) is None
    assert runner._out_problem(str(tmp_path / "a" / "b")) is None
    assert runner._out_problem("") is not None  # os.makedirs("") would fail after the run
    assert not (tmp_path / "a").exists()  # the check creates nothing


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root may write anywhere: a read-only folder cannot be made")
def test_out_in_a_read_only_folder(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        err = _fails_before_running(["depth", "--quick", "--out", str(locked / "x")], capsys)
        assert "not writable" in err
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("seed, message", [("-1", "must be >= 0"), ("1.5", "not an integer")])
def test_bad_seed_is_an_argument_error(seed, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner.main(["warmup", "--quick", "--seed", seed])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--seed" in err and message in err and "Traceback" not in err


def test_unknown_demo_is_named_before_the_backend_is_tried(capsys):
    err = _fails_before_running(["nosuch", "--backend", "cupy"], capsys)
    assert "unknown demo 'nosuch'" in err and "--backend" not in err


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    assert "cupy (an NVIDIA GPU" in text
    assert "non-negative integer seeding" in text
    assert "JSON" in text
    assert "layernorm_check runs the seed's shapes" in text
