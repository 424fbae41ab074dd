"""The norm_speed demo's verdict, fed numbers: each pass's speedup interval classified as
faster, slower or a tie, the sentence built from those classes, the bootstrap interval
behind them, and the table title's note on where PyTorch ran.

No timing is asserted (the numbers are made up); what is asserted is that the verdict says
what the numbers say.
"""
from __future__ import annotations

import gc
import itertools

import numpy as np
import pytest

from demos import _common as C
from demos import norm_speed as ns

TN, COMPOSED, SEED, BUILT_IN = "tinynorm", ns.COMPOSED, ns.SEED_CLASSES, ns.BUILT_IN
# a speedup interval of each class (LayerNorm's time / RMSNorm's), and intervals that a
# median alone would have misread: its point lies beyond the band, its interval does not
FASTER, SLOWER, TIE = (1.15, 1.30), (0.70, 0.86), (0.97, 1.04)
NEAR_FASTER, NEAR_SLOWER = (1.08, 1.40), (0.78, 0.93)


def intervals(forward, fwd_bwd, built_in=None, composed=None, seed_classes=None):
    """``judge``'s input: tinynorm's two passes, and optionally the built-ins' two passes
    and the composed norms' forward (their fwd+bwd set to a tie, which judge must not
    read)."""
    found = {(TN, "forward"): forward, (TN, "fwd+bwd"): fwd_bwd}
    if built_in is not None:
        found[(BUILT_IN, "forward")], found[(BUILT_IN, "fwd+bwd")] = built_in
    for library, forward_interval in ((COMPOSED, composed), (SEED, seed_classes)):
        if forward_interval is not None:
            found[(library, "forward")], found[(library, "fwd+bwd")] = forward_interval, TIE
    return found


def verdict_line(found, capsys):
    line = C.verdict("RMSNorm is faster", ns.judge(found), "numbers")
    capsys.readouterr()
    assert line.startswith("Verdict: numbers: ")
    return line.removeprefix("Verdict: numbers: ")


@pytest.mark.parametrize("interval, expected", [
    (FASTER, "faster"), (SLOWER, "slower"), (TIE, "tie"),
    (NEAR_FASTER, "tie"), (NEAR_SLOWER, "tie"),
    ((1.101, 1.2), "faster"), ((1.1, 1.2), "tie"),  # the whole interval beyond 1 + TIE
    ((0.8, 0.899), "slower"), ((0.8, 0.9), "tie"),
    ((0.5, 1.5), "tie"),  # too wide to tell
])
def test_classify_reads_the_whole_interval(interval, expected):
    assert ns.classify(interval) == expected


def test_both_passes_faster_holds(capsys):
    assert ns.judge(intervals(FASTER, FASTER)) is True
    assert ns.judge(intervals(FASTER, FASTER, built_in=(FASTER, FASTER))) is True
    assert verdict_line(intervals(FASTER, FASTER), capsys) == "claim holds"


@pytest.mark.parametrize("built_in, extent, described", [
    ((SLOWER, SLOWER), "not", "slower forward and fwd+bwd"),
    # a built-in speedup of 1.02 (the old rule, `<= 1`, counted it as faster) is a tie
    (((1.0, 1.05), (0.98, 1.03)), "not", "about as fast forward and fwd+bwd"),
    ((FASTER, SLOWER), "only in part", "faster forward, slower fwd+bwd"),
])
def test_holds_for_tinynorm_but_not_for_built_ins(built_in, extent, described, capsys):
    sentence = verdict_line(intervals(FASTER, FASTER, built_in=built_in), capsys)
    assert sentence == (f"claim holds for tinynorm's fused ops, {extent} for PyTorch's "
                        f"built-ins on this device (their RMSNorm is {described}): it depends "
                        "on the implementation")


def test_audit_case_one_pass_slower_one_faster(capsys):
    # the audit's quick run: 0.86x forward, 1.10x fwd+bwd, was called "about the same speed"
    sentence = verdict_line(intervals(SLOWER, FASTER, composed=FASTER), capsys)
    assert sentence.startswith("claim holds in part: tinynorm's RMSNorm is slower forward, "
                               "faster fwd+bwd; RMSNorm gains where a norm is composed")
    assert "about the same" not in sentence and "about as fast" not in sentence
    assert sentence.endswith(": it depends on the implementation")


def test_one_pass_faster_one_tie_holds_in_part(capsys):
    sentence = verdict_line(intervals(NEAR_FASTER, FASTER, built_in=(SLOWER, SLOWER)), capsys)
    assert sentence == ("claim holds in part: tinynorm's RMSNorm is about as fast forward, "
                        "faster fwd+bwd; PyTorch's built-in RMSNorm is slower forward and "
                        "fwd+bwd: it depends on the implementation")


def test_both_ties_hold_in_part_only_where_composed_norms_gain(capsys):
    same_speed = "tinynorm's one-pass kernels run both at about the same speed"
    for composed, seed_classes in ((FASTER, None), (None, FASTER), (TIE, FASTER)):
        sentence = verdict_line(intervals(TIE, NEAR_SLOWER, built_in=(SLOWER, SLOWER),
                                          composed=composed, seed_classes=seed_classes), capsys)
        assert sentence.startswith(f"claim holds in part: {same_speed}")
        assert "composed of separate operations" in sentence
        assert "PyTorch's built-in RMSNorm is slower forward and fwd+bwd" in sentence
    # the composed norms tie too, or are slower: RMSNorm is faster nowhere
    sentence = verdict_line(intervals(TIE, TIE, composed=TIE, seed_classes=SLOWER), capsys)
    assert sentence.startswith(f"claim does NOT hold: {same_speed}")
    assert "composed" not in sentence and "depends" not in sentence
    # the built-ins tie as tinynorm does: nothing points another way, so they go unnamed
    sentence = verdict_line(intervals(TIE, TIE, built_in=(TIE, NEAR_FASTER)), capsys)
    assert sentence.startswith("claim does NOT hold") and "built-in" not in sentence


def test_both_passes_slower_does_not_hold(capsys):
    assert ns.judge(intervals(SLOWER, SLOWER)) is False
    assert ns.judge(intervals(SLOWER, SLOWER, built_in=(SLOWER, SLOWER))) is False
    assert verdict_line(intervals(SLOWER, SLOWER), capsys) == "claim does NOT hold"
    sentence = verdict_line(intervals(SLOWER, SLOWER, built_in=(TIE, TIE)), capsys)
    assert sentence == ("claim does NOT hold: tinynorm's RMSNorm is slower forward and "
                        "fwd+bwd; PyTorch's built-in RMSNorm is about as fast forward and "
                        "fwd+bwd")
    sentence = verdict_line(intervals(TIE, SLOWER), capsys)
    assert sentence == ("claim does NOT hold: tinynorm's RMSNorm is about as fast forward, "
                        "slower fwd+bwd")


def test_slower_tinynorm_but_faster_built_ins_hold_in_part(capsys):
    sentence = verdict_line(intervals(SLOWER, SLOWER, built_in=(FASTER, TIE)), capsys)
    assert sentence == ("claim holds in part: tinynorm's RMSNorm is slower forward and "
                        "fwd+bwd; PyTorch's built-in RMSNorm is faster forward, about as fast "
                        "fwd+bwd: it depends on the implementation")


@pytest.mark.parametrize("forward, fwd_bwd",
                         list(itertools.product((FASTER, SLOWER, TIE), repeat=2)))
@pytest.mark.parametrize("built_in", [None, (FASTER, FASTER), (SLOWER, SLOWER), (TIE, FASTER)])
def test_every_combination_names_what_was_measured(forward, fwd_bwd, built_in, capsys):
    found = intervals(forward, fwd_bwd, built_in=built_in, composed=FASTER)
    sentence = verdict_line(found, capsys)
    kinds = ns.classify(forward), ns.classify(fwd_bwd)
    assert ("about the same speed" in sentence) == (kinds == ("tie", "tie"))
    if kinds != ("tie", "tie") and kinds != ("faster", "faster"):
        assert f"tinynorm's RMSNorm is {ns._passes(*kinds)}" in sentence
    points_elsewhere = built_in is not None and tuple(map(ns.classify, built_in)) != kinds
    assert ("PyTorch's built-in" in sentence) == points_elsewhere
    if kinds == ("faster", "faster"):
        assert sentence.startswith("claim holds")
    else:  # the composed norms gain: RMSNorm is faster somewhere, never everywhere
        assert sentence.startswith("claim holds in part: ")


def test_the_verdict_can_say_each_outcome(capsys):
    outcomes = {verdict_line(intervals(f, b, built_in=bi, composed=c), capsys)
                .split(":")[0].split(" for ")[0]
                for f, b in itertools.product((FASTER, SLOWER, TIE), repeat=2)
                for bi in (None, (SLOWER, SLOWER)) for c in (None, FASTER)}
    assert outcomes == {"claim holds", "claim holds in part", "claim does NOT hold"}


def test_speedup_interval_pairs_the_repetitions():
    rng = np.random.default_rng(0)
    # a slow moment of the machine slows both norms of one repetition alike: resampled
    # together, the ratio of medians stays 1.5; resampled apart, it would spread widely
    machine = np.exp(rng.normal(0, 0.5, size=20))
    low, high = ns.speedup_interval(1.5 * machine, machine, rng)
    assert low == pytest.approx(1.5) and high == pytest.approx(1.5)


def test_speedup_interval_covers_the_noise():
    rng = np.random.default_rng(1)
    ln = 1.0 + rng.normal(0, 0.15, size=25)
    rms = 1.0 + rng.normal(0, 0.15, size=25)
    low, high = ns.speedup_interval(ln, rms, rng)
    point = np.median(ln) / np.median(rms)
    assert low < point < high and low < 1 < high
    assert ns.classify((low, high)) == "tie"
    wider = ns.speedup_interval(ln, rms, np.random.default_rng(1), level=0.99)
    narrower = ns.speedup_interval(ln, rms, np.random.default_rng(1), level=0.5)
    assert wider[0] < narrower[0] < narrower[1] < wider[1]
    # a clear speedup under the same noise is faster, and its interval lies around it
    low, high = ns.speedup_interval(1.6 * ln, rms, rng)
    assert ns.classify((low, high)) == "faster" and low < 1.6 < high


def test_timed_repetitions_times_each_contender_once_per_repetition():
    calls = []
    contenders = {name: (lambda n=name: calls.append(n)) for name in "abcd"}
    times = ns.timed_repetitions(contenders, repeat=6, seed=3)
    assert {name: len(ts) for name, ts in times.items()} == dict.fromkeys("abcd", 6)
    assert all(t >= 0 for ts in times.values() for t in ts)
    assert calls[:4] == list("abcd")  # one warmup call each, then 6 shuffled repetitions
    orders = [tuple(calls[i:i + 4]) for i in range(4, len(calls), 4)]
    assert len(orders) == 6 and all(sorted(o) == list("abcd") for o in orders)
    assert len(set(orders)) > 1  # each repetition in its own order
    calls.clear()
    ns.timed_repetitions(contenders, repeat=6, seed=3)
    assert [tuple(calls[i:i + 4]) for i in range(4, len(calls), 4)] == orders  # seeded
    assert gc.get_freeze_count() == 0


def test_timed_repetitions_unfreezes_the_collector_on_error():
    def fails():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ns.timed_repetitions({"fails": fails}, repeat=2)
    assert gc.get_freeze_count() == 0


def test_setting_names_where_pytorch_ran():
    assert ns.setting("numpy", True, "cpu") == "numpy, PyTorch on cpu"
    assert ns.setting("cupy", True, "cuda") == "cupy, PyTorch on cuda"
    assert ns.setting("cupy", True, None) == "cupy, PyTorch without CUDA"
    assert ns.setting("numpy", False, None) == "numpy, PyTorch not installed"


def test_measured_gives_each_speedup_its_interval():
    found = intervals((0.80, 0.92), (1.12, 1.31), built_in=((0.33, 0.38), (0.18, 0.22)),
                      composed=(1.90, 2.03), seed_classes=(1.95, 2.9))
    speedups = dict.fromkeys(found, 1.0)
    speedups[(TN, "forward")], speedups[(TN, "fwd+bwd")] = 0.861, 1.204
    text = ns.measured(speedups, found)
    assert text.startswith("RMSNorm's speed over LayerNorm's (95% interval): tinynorm "
                           "0.86x forward (0.80–0.92), 1.20x fwd+bwd (1.12–1.31); ")
    assert "the seed's forwards on tinynorm's ops 1.00x forward (1.90–2.03)" in text
    assert "the seed's classes 1.00x forward (1.95–2.90)" in text
    assert "the built-ins 1.00x forward (0.33–0.38), 1.00x fwd+bwd (0.18–0.22)" in text
    ours = [(TN, "forward"), (TN, "fwd+bwd")]  # numpy without PyTorch, or cupy
    text = ns.measured({k: speedups[k] for k in ours}, {k: found[k] for k in ours})
    assert text.endswith("tinynorm 0.86x forward (0.80–0.92), 1.20x fwd+bwd (1.12–1.31)")


def test_main_decides_from_the_repetitions(tmp_path, monkeypatch, capsys):
    """The demo's wiring, on made-up timings: the median speedups are 0.87x forward and
    1.25x fwd+bwd for tinynorm, 2x elsewhere; one repetition in four is slowed by half for
    both norms alike, which the paired resampling must see through."""
    rng = np.random.default_rng(0)
    ratio = {(TN, "forward"): 0.87, (TN, "fwd+bwd"): 1.25}

    def made_up(contenders, repeat, seed=0, sync=None):
        slow = {(lib, mode): np.where(rng.random(repeat) < 0.25, 1.5, 1.0)
                for lib, _, mode in contenders}
        speedup = {(lib, norm, mode): 1 if norm == "LayerNorm" else ratio.get((lib, mode), 2)
                   for lib, norm, mode in contenders}
        return {(lib, norm, mode): list(1e-3 * slow[(lib, mode)] / speedup[(lib, norm, mode)])
                for lib, norm, mode in contenders}

    monkeypatch.setattr(ns, "timed_repetitions", made_up)
    r = ns.main(quick=True, out=str(tmp_path), seed=0, backend="numpy")
    out = capsys.readouterr().out
    assert f"medians of {ns.REPEATS['quick']} interleaved calls" in out
    assert "(numpy, PyTorch on cpu)" in out
    # medians: the slowed repetitions (fewer than half) move no reported time
    assert r["ms"]["tinynorm / LayerNorm / forward"] == pytest.approx(1.0)
    assert r["ms"]["tinynorm / RMSNorm / fwd+bwd"] == pytest.approx(1 / 1.25)
    assert r["speedup_interval"]["tinynorm / forward"] == pytest.approx((0.87, 0.87))
    assert r["speedup_interval"]["tinynorm / fwd+bwd"] == pytest.approx((1.25, 1.25))
    assert r["verdict"] == (
        "Verdict: RMSNorm's speed over LayerNorm's (95% interval): tinynorm 0.87x forward "
        "(0.87–0.87), 1.25x fwd+bwd (1.25–1.25); the seed's forwards on tinynorm's ops 2.00x "
        "forward (2.00–2.00), 2.00x fwd+bwd (2.00–2.00); PyTorch: the seed's classes 2.00x "
        "forward (2.00–2.00), the built-ins 2.00x forward (2.00–2.00), 2.00x fwd+bwd "
        "(2.00–2.00): claim holds in part: tinynorm's RMSNorm is slower forward, faster "
        "fwd+bwd; RMSNorm gains where a norm is composed of separate operations (the seed's "
        "forwards), where skipping the mean skips whole ops; PyTorch's built-in RMSNorm is "
        "faster forward and fwd+bwd: it depends on the implementation")
