"""The demos' verdict checks as pure functions of measured numbers, fed numbers on both sides
of each threshold (tests/test_demos.py runs the demos themselves).

The CuPy peak-memory hook of gpt2_small is exercised here with a stand-in ``cupy`` module
(no GPU needed): a pool whose bytes in use rise and fall inside the measured block.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from demos import activations, gpt2_small, pre_vs_post

# --- pre_vs_post ----------------------------------------------------------------------------


def test_smoother_flow_compares_distance_from_flat_at_every_depth():
    # the measured Xavier trends: Pre-LN falls further than Post-LN grows, at every depth
    assert not pre_vs_post.smoother_flow([0.61, 0.45, 0.34], [1.0, 1.3, 1.5])
    # Pre-LN nearer flat at every depth
    assert pre_vs_post.smoother_flow([0.9, 1.1, 0.95], [1.3, 0.7, 1.5])
    # a fall and a growth by the same factor are equally far from flat: not smoother
    assert not pre_vs_post.smoother_flow([0.5], [2.0])
    assert pre_vs_post.smoother_flow([0.51], [2.0])
    assert pre_vs_post.smoother_flow([1.96], [0.5])
    assert not pre_vs_post.smoother_flow([2.04], [0.5])
    # one depth where Pre-LN is further from flat is enough to fail
    assert not pre_vs_post.smoother_flow([0.9, 0.9, 0.6], [1.5, 1.5, 1.5])
    with pytest.raises(ValueError):  # one trend per depth on each side
        pre_vs_post.smoother_flow([0.9, 0.9], [1.5, 1.5, 1.5])


@pytest.mark.parametrize("slope, r2, holds", [
    (0.60, 0.995, True),  # the full run
    (0.51, 0.96, True),
    (1.49, 0.99, True),
    (0.49, 0.995, False),  # linear, but slower than Lemma 2's d/2 per layer
    (1.51, 0.995, False),  # faster than 3d/2 per layer
    (0.07, 0.987, False),  # the default init: linear, far too slow
    (0.60, 0.94, False),  # not linear enough
    (-0.6, 0.995, False),
])
def test_stream_linear_needs_the_fit_and_lemma_2s_slope(slope, r2, holds):
    assert pre_vs_post.stream_linear(slope, r2) is holds


def test_in_lemma2_band_counts_blocks_from_the_input():
    # after l blocks the band is 1 + l/2 .. 1 + 3l/2; the input (l = 0) is not counted
    stream = [1.0, 1.49, 2.0, 4.01, 2.5, 3.49]
    assert pre_vs_post.in_lemma2_band(stream) == [False, True, True, False, False]
    assert pre_vs_post.in_lemma2_band([5.0]) == []
    # the upper edge: 1 + 3l/2
    assert pre_vs_post.in_lemma2_band([1.0, 2.5, 4.01]) == [True, False]


def test_linear_fit_recovers_slope_and_r2():
    values = 3.0 + 0.6 * np.arange(1, 25)
    slope, intercept, r2 = pre_vs_post.linear_fit(values)
    assert slope == pytest.approx(0.6) and intercept == pytest.approx(3.0)
    assert r2 == pytest.approx(1.0)
    noisy = values + np.where(np.arange(24) % 2, 2.0, -2.0)
    assert pre_vs_post.linear_fit(noisy)[2] < 0.9


# --- activations ----------------------------------------------------------------------------

# the full run's std without LayerNorm, layers 1 to 10
MEASURED = [0.4611, 0.2506, 0.1437, 0.08635, 0.05652, 0.04053, 0.03417, 0.03301, 0.03404,
            0.03182]


def test_plateau_start_finds_where_the_std_levels_off():
    assert activations.plateau_start(MEASURED) == 7  # 0.0342 .. 0.0318 from layer 7
    # still falling by x0.6 a layer to the end: no plateau
    assert activations.plateau_start([0.6 ** i for i in range(10)]) is None
    # the spread threshold, 1.15, on both sides
    assert activations.plateau_start([1.0, 0.5, 0.114, 0.1, 0.1, 0.1]) == 3
    assert activations.plateau_start([1.0, 0.5, 0.116, 0.1, 0.1, 0.1]) == 4
    # only the last two layers level: fewer than min_layers = 3
    assert activations.plateau_start([1.0, 0.5, 0.25, 0.1, 0.1]) is None


def test_no_ln_checks_report_the_plateau():
    checks = activations.no_ln_checks(MEASURED)
    assert list(checks.values()) == [True, False]  # shrinks, then levels off
    # the seed's claim in full: shrinks at every layer, towards zero
    assert list(activations.no_ln_checks([0.6 ** i for i in range(10)]).values()) == [True, True]
    # a layer that grows before the plateau is not "layer by layer"
    assert not activations.no_ln_checks([0.46, 0.25, 0.3, 0.1, 0.05, 0.05, 0.05])[
        "no LN: shrinks layer by layer"]
    # falling, but by less than half before it levels off
    shallow = [0.1, 0.08, 0.06, 0.055, 0.055, 0.055]
    assert not activations.no_ln_checks(shallow)["no LN: shrinks layer by layer"]
    assert activations.no_ln_checks([0.1, 0.06, 0.045, 0.045, 0.045])[
        "no LN: shrinks layer by layer"]


def test_bias_floor_is_the_fixed_point_of_the_no_ln_layers():
    s = activations.bias_floor(512)
    assert s == pytest.approx(0.03125)
    assert s ** 2 == pytest.approx(s ** 2 / 3 + 1 / (3 * 512))  # Var(Wx) + Var(b)


def test_ln_stable_thresholds():
    assert activations.ln_stable([0.999] * 10, [1e-9] * 10)
    assert activations.ln_stable([0.951, 1.049], [0.049, -0.049])
    assert not activations.ln_stable([0.999, 0.949], [0.0, 0.0])
    assert not activations.ln_stable([0.999, 1.051], [0.0, 0.0])
    assert not activations.ln_stable([1.0, 1.0], [0.0, -0.051])


# --- gpt2_small: the pool's peak on CuPy ----------------------------------------------------


class FakePool:
    def __init__(self, used):
        self.used = used

    def used_bytes(self):
        return self.used


def test_pool_peak_keeps_the_largest_reading_after_any_allocation():
    pool = FakePool(1000)
    peak = gpt2_small.PoolPeak(pool.used_bytes)
    for used in (1300, 1800, 1100, 1500, 1000):  # allocations and frees in between
        pool.used = used
        peak.malloc_postprocess(device_id=0, size=1, mem_size=512, mem_ptr=1, pmem_id=1)
    assert peak.peak_bytes == 800
    assert gpt2_small.PoolPeak(pool.used_bytes).peak_bytes == 0


def _fake_cupy(pool):
    """The few names of CuPy that the measurement uses; the pool calls the registered
    hooks' malloc_postprocess after each allocation, as CuPy's memory pool does."""
    hooks = {}

    class MemoryHook:
        name = "MemoryHook"

        def __enter__(self):
            assert self.name not in hooks
            hooks[self.name] = self
            return self

        def __exit__(self, *exc):
            del hooks[self.name]

    def alloc(nbytes):
        pool.used += nbytes
        for hook in list(hooks.values()):
            hook.malloc_postprocess(device_id=0, size=nbytes, mem_size=nbytes, mem_ptr=1,
                                    pmem_id=1)

    def free(nbytes):
        pool.used -= nbytes

    device = types.SimpleNamespace(synchronize=lambda: None)
    cuda = types.SimpleNamespace(MemoryHook=MemoryHook, Device=lambda: device)
    module = types.ModuleType("cupy")
    module.cuda = cuda
    module.get_default_memory_pool = lambda: pool
    return module, alloc, free, hooks


def test_timed_peak_memory_on_cupy_reports_the_peak_not_the_growth(monkeypatch):
    pool = FakePool(5000)  # the model's parameters, already in use
    cupy, alloc, free, hooks = _fake_cupy(pool)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    with gpt2_small.timed_peak_memory("cupy") as m:
        alloc(300)
        alloc(700)
        free(300)
        alloc(100)  # 5800 in use here, after the peak of 6000
        free(800)
    assert m.peak_bytes == 1000  # the growth read at the end would say 0
    assert m.seconds >= 0
    assert hooks == {}  # the hook is unregistered on the way out
    # what stays allocated after the block: the peak still counts from the start
    with gpt2_small.timed_peak_memory("cupy") as m:
        alloc(400)
        free(100)
    assert m.peak_bytes == 400
    # an error inside the block unregisters the hook too
    with pytest.raises(RuntimeError), gpt2_small.timed_peak_memory("cupy"):
        raise RuntimeError
    assert hooks == {}


def test_timed_peak_memory_on_numpy_is_commons():
    with gpt2_small.timed_peak_memory("numpy") as m:
        a = np.ones(1 << 20)  # 8 MiB, freed before the end
        del a
    assert m.peak_bytes >= 8 << 20
