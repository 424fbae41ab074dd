"""The norms benchmark still runs, at a tiny shape and one repetition: it calls the compiled
kernels by their internal signatures (``--floor``), so a change there must not leave it
broken. Speed is never asserted (the benchmarks are run by hand); the rows' contents are."""
from __future__ import annotations

import pytest

from tinynorm.kernels import _numba

norms = pytest.importorskip("benchmarks.norms")


def test_norms_table_has_every_case_and_counts_saved_memory(on_cpu):
    rows = norms.shape_rows((256, 8), repeat=1)
    assert [r["case"] for r in rows] == [
        "LayerNorm forward", "LayerNorm fwd+bwd", "RMSNorm forward", "RMSNorm fwd+bwd",
        "RMSNorm vs LayerNorm fwd+bwd"]
    for r in rows:
        assert r["tinynorm ms"] > 0 and r["baseline ms"] > 0 and r["ok"] in ("yes", "NO")
    saved = {r["case"]: r["saved KiB"] for r in rows if "saved KiB" in r}
    # μ and r per row (LayerNorm), r per row (RMSNorm): 256 rows of float32
    assert saved == {"LayerNorm fwd+bwd": 2.0, "RMSNorm fwd+bwd": 1.0}


@pytest.mark.skipif(not _numba.available(), reason="--floor times the numba kernels")
def test_norms_floor_times_the_traffic_and_both_kernels(on_cpu):
    rows = norms.floor_rows((16, 8), repeat=1)
    by_case = {r["case"]: r for r in rows}
    floor = by_case["floor of a norm's fwd+bwd: copy + add"]
    assert floor["ms"] == pytest.approx(by_case["copy x (read 1, write 1)"]["ms"]
                                        + by_case["add (read 2, write 1)"]["ms"], abs=2e-3)
    for case in ("LayerNorm kernels fwd+bwd", "RMSNorm kernels fwd+bwd"):
        assert by_case[case]["ms"] > 0 and by_case[case]["/ floor"] > 0
    assert "RMSNorm / LayerNorm kernels" in by_case


def test_norms_composed_counts_what_each_chain_keeps(on_cpu):
    """``--composed``: the seed's chain of ops against the fused op. Saved memory is counted
    over the whole graph: tinynorm's chain keeps x̂ (its division saves its output), one
    array of x's size; PyTorch's keeps x − μ and x̂, two (each chain also keeps a few
    numbers per row, 3% of x at 64 features); the fused ops keep μ and r, 2 numbers a row."""
    rows = norms.composed_rows((128, 64), repeat=1)
    by_name = {r["LayerNorm"]: r for r in rows}
    assert by_name["tinynorm, composed as the seed"]["saved / x"] == pytest.approx(1, abs=0.05)
    assert by_name["torch, composed as the seed"]["saved / x"] == pytest.approx(2, abs=0.05)
    for fused in ("tinynorm F.layer_norm", "torch F.layer_norm"):
        assert by_name[fused]["/ fused"] == 1.0
        assert by_name[fused]["saved / x"] == pytest.approx(2 / 64, abs=0.01)  # rounded
    assert all(r["fwd+bwd ms"] > 0 for r in rows)
