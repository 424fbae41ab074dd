"""Every demo in --quick mode, with assertions on the numbers it returns (CI runs these).

Speed is not asserted here (benchmarks/ does that); what is asserted are the experiments'
outcomes, each of which a broken op or model would change.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import demos
from demos import __main__ as runner


def _run(name, tmp_path):
    result = demos.load(name).main(quick=True, out=str(tmp_path), seed=0, backend="numpy")
    assert isinstance(result, dict)
    for path in result.get("figures", []):
        assert os.path.getsize(path) > 1000, f"{name}: figure {path} is missing or empty"
    return result


def test_registry_lists_every_demo_in_order(capsys):
    # the seed tutorial's experiments first, in its order (later issues append theirs)
    assert demos.DEMOS[:6] == ("gradient_flow", "activations", "layernorm_check", "norm_speed",
                               "pre_vs_post", "gpt2_small")
    assert len(set(demos.DEMOS)) == len(demos.DEMOS)
    assert runner.main(["list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(demos.DEMOS)
    for name in demos.DEMOS:  # every module imports and describes itself
        assert demos.load(name).DESCRIPTION


def test_runner_rejects_an_unknown_demo(capsys):
    assert runner.main(["no_such_demo"]) == 2
    assert "gradient_flow" in capsys.readouterr().err
    with pytest.raises(KeyError, match="gradient_flow"):
        demos.load("no_such_demo")


def test_gradient_flow(tmp_path):
    r = _run("gradient_flow", tmp_path)
    # the seed's 50-layer experiment: vanishing without residuals, not with them
    assert r["input_grad_plain"] < 1e-6
    assert r["input_grad_residual"] > 1e-2
    assert r["ratio"] > 1e6
    assert "claim holds" in r["verdict"]
    # plain networks: the weight gradient shrinks towards the input side by orders of magnitude
    plain = r["per_layer"]["plain"]
    assert plain[0] < 1e-6 * plain[-1]
    # the residual network's input gradient does not vanish with depth
    assert min(r["sweep"]["residual"].values()) > 1e-2
    # the plain network's does, monotonically
    plain_sweep = [r["sweep"]["plain"][d] for d in r["depths"]]
    assert all(a > b for a, b in zip(plain_sweep, plain_sweep[1:]))


def test_activations(tmp_path):
    r = _run("activations", tmp_path)
    assert r["std_shrink_without_ln"] < 0.2  # (1/√3)-ish per layer over nine layers
    low, high = r["ln_std_range"]
    assert 0.95 < low <= high < 1.0  # LayerNorm's output std is √(var / (var + eps)) < 1
    assert r["ln_max_abs_mean"] < 1e-5  # each row is centred, so the overall mean is ~0
    # without LN the std shrinks, then levels off near the biases' floor 1/√(2d), before
    # the last layer: the claim "shrinks towards zero" holds only in part
    assert 2 <= r["plateau_layer"] < 10
    assert r["checks"] == {"no LN: shrinks layer by layer": True,
                           "no LN: keeps shrinking towards zero (no plateau)": False,
                           "LN: stable and centred": True}
    assert "claim holds in part (2 of 3" in r["verdict"]


def test_layernorm_check(tmp_path):
    r = _run("layernorm_check", tmp_path)
    assert abs(r["input_mean"] - 5) < 0.5 and abs(r["input_std"] - 10) < 0.5  # randn * 10 + 5
    assert r["max_abs_row_mean"] < 1e-5
    # the unbiased std of a normalized row of 512 is
    # √(512/511) · √(var / (var + eps)) ≈ 1 + 9.8e-4
    assert r["max_abs_row_std_error"] < 1.1e-3
    if r["torch_max_abs_diff"] is not None:  # the seed's PyTorch class on the same input
        assert r["torch_max_abs_diff"] < 1e-5
    assert "claim holds" in r["verdict"]


def test_norm_speed(tmp_path):
    r = _run("norm_speed", tmp_path)
    assert all(v > 0 for v in r["ms"].values())
    assert ("tinynorm / forward" in r["speedup"]) and ("tinynorm / fwd+bwd" in r["speedup"])
    for mode in ("forward", "fwd+bwd"):  # the seed's forwards, run on tinynorm's ops
        assert f"tinynorm, seed's forwards / {mode}" in r["speedup"]
    stats = {row["norm"]: row for row in r["output_stats"]}
    assert abs(stats["LayerNorm"]["output mean"]) < 1e-5  # centred exactly, up to rounding
    assert abs(stats["RMSNorm"]["output mean"]) < 0.05  # not centred, but x is zero-mean
    for row in stats.values():  # x ~ N(0, 1): both rescale each row to unit root-mean-square
        assert abs(row["output std"] - 1) < 0.01
    assert r["verdict"].startswith("Verdict: ")


def test_pre_vs_post(tmp_path):
    r = _run("pre_vs_post", tmp_path)
    d = r["sizes"]["d_model"]
    for init in ("default", "xavier"):
        # every Post-Norm block ends in a LayerNorm with weight 1, bias 0:
        # ||x||² = d·var/(var+eps)
        post = np.array(r["results"][init]["post"][24]["stream"][1:]) / d
        np.testing.assert_allclose(post, 1.0, atol=1e-3)
        # Pre-Norm's stream is never normalized and grows with depth
        pre = np.array(r["results"][init]["pre"][24]["stream"]) / d
        assert pre[-1] > 1.5 * pre[0]
        for kind in ("post", "pre"):
            for depth in (6, 12, 24):
                norms = r["results"][init][kind][depth]["ffn"]
                assert len(norms) == depth and all(n > 0 and np.isfinite(n) for n in norms)
    # Lemma 2 of Xiong et al.: the Pre-LN stream grows linearly
    assert r["stream_fits"]["xavier"][2] > 0.9
    # Theorem 1: the Pre-LN last layer's gradient shrinks with depth
    # (as 1/sqrt(L): x0.5 from 6 to 24)
    assert 0.3 < r["last_layer_ratio"]["pre"] < 0.8
    assert r["verdict"].startswith("Verdict: ")


def test_gpt2_small(tmp_path):
    r = _run("gpt2_small", tmp_path)
    s = r["sizes"]
    assert r["output_shape"] == (s["batch"], s["seq"], s["d_model"])
    assert r["num_parameters"] == r["expected_parameters"]
    assert r["finite"]
    mean, std = r["output_mean_std"]  # the final LayerNorm: every row has mean 0, std ~1
    assert abs(mean) < 1e-4 and 0.99 < std < 1.0
    assert all(t > 0 for t in r["timings_s"].values())
    peaks = r["peak_bytes"]
    # recording the graph keeps activations alive; inference frees them as it goes
    assert peaks["forward, eval + no_grad"] < peaks["forward, train mode (the seed's call)"]
    assert "claim holds" in r["verdict"]


def test_gpt2_small_expected_parameters_is_gpt2s_count():
    from demos.gpt2_small import expected_parameters

    assert expected_parameters(12, 768, 3072) == 85_056_000


def test_runner_runs_a_demo_and_summarizes(tmp_path, capsys):
    assert runner.main(["activations", "--quick", "--out", str(tmp_path), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "Verdict:" in out and (tmp_path / "activations.png").exists()


def test_all_runs_the_seed_demos_and_training_the_training_ones():
    assert demos.GROUPS["all"] == demos.DEMOS[:6]
    assert demos.GROUPS["training"] == ("warmup", "depth", "update_size", "rms_vs_ln_training")
    assert set(demos.GROUPS["all"]) | set(demos.GROUPS["training"]) == set(demos.DEMOS)
