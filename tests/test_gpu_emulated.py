"""tinynorm.kernels without a GPU: the launch geometry, the switches and errors, the Python
wrappers, and the ops' fused path, run end to end on NumPy emulations of each CUDA kernel
(tests/cuda_emulator.py) and compared with the reference formulas and the reference ops.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from cuda_emulator import EMULATED_CUPY, LAUNCHED, EmulatedModule, _poisoned, on_gpu
from test_gpu import (EPS, assert_matches, inputs, ref_layer_norm, ref_rms_norm,
                      ref_softmax, run_op)
from tinynorm import backend, kernels
from tinynorm.kernels import _cuda

SHAPES = [(1, 1), (5, 3), (64, 1000), (7, 4097), (300, 3), (2, 40000), (200, 64)]


# ---- geometry and switches ------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 3, 31, 32, 255, 256, 257, 1000, 4096, 4097, 8192, 8193, 10**6])
def test_row_threads_is_a_warp_multiple_covering_the_row(n):
    t = kernels.row_threads(n)
    assert t % 32 == 0 and 32 <= t <= 1024 and t & (t - 1) == 0
    assert t * _cuda.ELEMENTS_PER_THREAD >= n or t == 1024  # ~8 elements a thread, capped
    assert t == 32 or t // 2 * _cuda.ELEMENTS_PER_THREAD < n  # and no bigger than needed


@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 100, 1000, 16384, 204800, 10**6])
@pytest.mark.parametrize("n", [1, 3, 64, 1000, 4096, 4097])
def test_param_grad_chunks_cover_every_row_once(rows, n):
    chunks, per = kernels.param_grad_chunks(rows, n)
    assert chunks >= 1 and per >= 1
    assert (chunks - 1) * per < rows <= chunks * per  # every chunk non-empty, all rows covered
    tiles = -(-n // _cuda.PARTIAL_TILE)
    assert tiles * chunks <= max(_cuda.PARTIAL_BLOCKS, tiles)  # grid stays near the target
    assert chunks * n < 2**31  # the kernels index partials with int chunk·n in size_t


def test_fused_is_used_only_for_gpu_float_arrays_and_can_be_switched_off():
    assert not kernels.use_fused(np.ones((2, 3), np.float32))  # NumPy: the reference path
    assert not kernels.use_fused()
    before = kernels.enabled
    with kernels.fused(False):
        assert kernels.enabled is False
    assert kernels.enabled is before


def test_env_switch_and_import_without_cupy():
    code = "import sys, tinynorm, tinynorm.kernels as k; print(k.enabled, 'cupy' in sys.modules)"
    env = dict(os.environ, TINYNORM_FUSED="0")
    env.pop("TINYNORM_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"], out  # switched off, and importing loaded no CuPy


@pytest.mark.parametrize("call", [
    lambda a: kernels.layer_norm_forward(a, None, None, EPS),
    lambda a: kernels.rms_norm_forward(a, None, EPS),
    lambda a: kernels.softmax_forward(a),
])
def test_fused_entry_points_reject_host_arrays_by_name(call):
    with pytest.raises(TypeError, match=r"\(fused\): expected a GPU \(CuPy\) array"):
        call(np.ones((2, 3), np.float32))


@pytest.fixture
def emulated(monkeypatch):
    """tinynorm.kernels running on the emulated kernels, with fresh compile caches."""
    monkeypatch.setattr(backend, "_cupy", EMULATED_CUPY)
    kernels.clear_cache()
    yield
    kernels.clear_cache()


# ---- the wrappers on emulated kernels against the reference ---------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows,n", SHAPES)
def test_wrappers_on_emulated_kernels_match_reference(emulated, rows, n, dtype):
    x, w, b, dy = inputs(rows, n, dtype, seed=rows * 7 + n)
    gx, gw, gb, gdy = (on_gpu(a) for a in (x, w, b, dy))
    y, mean, rstd = kernels.layer_norm_forward(gx, gw, gb, EPS)
    got = (y, mean, rstd) + kernels.layer_norm_backward(gdy, gx, gw, mean[:, None], rstd)
    for name, g, want in zip(("y", "mean", "rstd", "dx", "dweight", "dbias"), got,
                             ref_layer_norm(np, x, w, b, dy)):
        assert g.dtype == dtype, f"layer_norm {name}: dtype {g.dtype}"
        assert_matches(g, want, dtype, f"layer_norm {name}")
    y, r = kernels.rms_norm_forward(gx, gw, EPS)
    for name, g, want in zip(("y", "rstd", "dx", "dweight"),
                             (y, r) + kernels.rms_norm_backward(gdy, gx, gw, r),
                             ref_rms_norm(np, x, w, dy)):
        assert_matches(g, want, dtype, f"rms_norm {name}")
    with np.errstate(over="ignore"):
        s = kernels.softmax_forward(gx * 4)
        for name, g, want in zip(("y", "dx"), (s, kernels.softmax_backward(gdy, s)),
                                 ref_softmax(np, x * 4, dy)):
            assert_matches(g, want, dtype, f"softmax {name}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_wrappers_without_affine_parameters_or_param_grads(emulated, dtype):
    x, _, _, dy = inputs(9, 37, dtype)
    gx, gdy = on_gpu(x), on_gpu(dy)
    ones, zeros = np.ones(37, dtype), np.zeros(37, dtype)
    y, mean, rstd = kernels.layer_norm_forward(gx, None, None, EPS)
    dx, dw, db = kernels.layer_norm_backward(gdy, gx, None, mean, rstd)
    want = ref_layer_norm(np, x, ones, zeros, dy)
    assert_matches(y, want[0], dtype, "y")
    assert_matches(dx, want[3], dtype, "dx")
    assert_matches(db, want[5], dtype, "dbias")
    assert dw is None
    assert kernels.layer_norm_backward(gdy, gx, on_gpu(ones), mean, rstd,
                                       need_param_grads=False)[1:] == (None, None)
    y, r = kernels.rms_norm_forward(gx, None, EPS)
    dx, dw = kernels.rms_norm_backward(gdy, gx, None, r)
    assert_matches(dx, ref_rms_norm(np, x, ones, dy)[2], dtype, "rms dx")
    assert dw is None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows,n", [(300, 3), (196, 64), (3, 4097)])
def test_rms_norm_backward_sums_dgamma_alone(emulated, rows, n, dtype):
    """RMSNorm has no β: its backward launches its own dγ-only kernels, never LayerNorm's
    dγ/dβ ones, and their dγ has the bits LayerNorm's kernels give with μ = 0. (300, 3) and
    (196, 64) sum many row chunks, the last one short; (3, 4097) one chunk, 129 column tiles."""
    from tinynorm.kernels import norms

    x, w, _, dy = inputs(rows, n, dtype, seed=rows + n)
    gx, gw, gdy = on_gpu(x), on_gpu(w), on_gpu(dy)
    _, r = kernels.rms_norm_forward(gx, gw, EPS)
    LAUNCHED.clear()
    dx, dw = kernels.rms_norm_backward(gdy, gx, gw, r)
    assert LAUNCHED == ["rms_norm_backward_input", "rms_norm_param_grad_partials",
                        "rms_norm_param_grad_sum"], LAUNCHED
    _, _, want_dx, want_dw = ref_rms_norm(np, x, w, dy)
    assert_matches(dx, want_dx, dtype, "rms_norm dx")
    assert_matches(dw, want_dw, dtype, "rms_norm dweight")
    with_mean_zero, _ = norms._param_grads(EMULATED_CUPY, gdy, gx, on_gpu(np.zeros(rows, dtype)), r)
    assert np.array_equal(np.asarray(dw).view(np.uint8), np.asarray(with_mean_zero).view(np.uint8))
    for weight, need in ((None, True), (gw, False)):  # no dγ wanted: no column sums at all
        LAUNCHED.clear()
        assert kernels.rms_norm_backward(gdy, gx, weight, r, need_param_grads=need)[1] is None
        assert LAUNCHED == ["rms_norm_backward_input"], LAUNCHED


def test_wrappers_name_the_op_on_mismatched_inputs(emulated):
    x = on_gpu(np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match=r"layer_norm \(fused\): weight has dtype float64"):
        kernels.layer_norm_forward(x, on_gpu(np.ones(3)), None, EPS)
    with pytest.raises(ValueError, match=r"rms_norm \(fused\): weight has shape \(4,\)"):
        kernels.rms_norm_forward(x, on_gpu(np.ones(4, np.float32)), EPS)
    with pytest.raises(ValueError, match=r"expected a non-empty 2-D array"):
        kernels.softmax_forward(on_gpu(np.ones((2, 3, 4), np.float32)))
    with pytest.raises(TypeError, match=r"different devices"):
        kernels.softmax_backward(np.ones((4, 3), np.float32), x)


def test_the_emulated_launch_checks_have_teeth(emulated):
    module = EmulatedModule(kernels.SOURCES[1].code, (), kernels.SOURCES[1].name_expressions())
    fn = module.get_function("softmax_forward<float>")
    x, y = on_gpu(np.ones((2, 3), np.float32)), _poisoned((2, 3), np.float32)
    fn((2,), (32,), (x, np.int32(3), y))  # the right call runs
    for grid, block, args, what in [
        ((2,), (32,), (x, 3, y), "scalar n"),                    # a Python int, not int32
        ((2,), (32,), (y, np.int32(3), x), None),                 # fine for types ...
        ((2,), (32,), (x, np.int32(3), x), "aliases"),           # ... but y is x
        ((2,), (64,), (x, np.int32(3), y), "block"),             # not row_threads(3)
        ((2,), (32,), (x.astype(np.float64), np.int32(3), y), "x float64"),
    ]:
        if what is None:
            continue
        with pytest.raises(AssertionError, match=what):
            fn(grid, block, args)


def test_layer_norm_refines_the_mean_like_the_op(emulated):
    # Rows with |μ| ≫ σ in float32: the rounding of Σx/n (about 1e-3 of σ at μ = 1e4) would
    # stay in every x̂ without the refinement μ ← μ + mean(x − μ); with it x̂ is as good as
    # float32 allows. The truth is float64 on the same float32 inputs.
    rng = np.random.default_rng(3)
    for mu in (1e3, 1e4, 1e5):
        x = (mu + rng.normal(0, 1, (16, 4097))).astype(np.float32)
        x64 = x.astype(np.float64)
        truth = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + EPS)
        y, _, _ = kernels.layer_norm_forward(on_gpu(x), None, None, EPS)
        err = np.abs(np.asarray(y) - truth).max()
        assert err < 2e-6, f"μ = {mu:g}: x̂ off by {err:.2e} (unrefined: ~1e-3 at 1e4)"


# ---- the ops' dispatch, on emulated kernels ---------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(2, 3, 37), (4, 4097), (1, 1)])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "softmax"])
def test_ops_take_the_fused_path_and_match_their_reference(emulated, op, shape, dtype):
    rows, n = int(np.prod(shape[:-1])), shape[-1]
    x, w, b, dy = inputs(rows, n, dtype, seed=11)
    arrays = [on_gpu(x.reshape(shape)), on_gpu(w), on_gpu(b), on_gpu(dy.reshape(shape))]
    LAUNCHED.clear()
    fused = run_op(op, arrays, True)
    launched = list(LAUNCHED)
    LAUNCHED.clear()
    reference = run_op(op, arrays, False)
    assert not LAUNCHED, f"kernels launched with tinynorm.kernels.fused(False): {LAUNCHED}"
    assert any(name.startswith(op) for name in launched), f"{op}: launched {launched}"
    for name, want in reference.items():
        got = fused[name]
        assert (got is None) == (want is None), f"{op} {name}: {got is None} vs {want is None}"
        if want is not None:
            assert got.shape == want.shape and got.dtype == want.dtype, f"{op} {name}"
            assert_matches(got, want, dtype, f"{op} {name} (fused vs reference op)")


@pytest.mark.parametrize("shape", [(2, 3, 37), (4, 4097)])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "softmax"])
def test_fused_backward_gives_the_leaf_the_kernels_own_dx(emulated, monkeypatch, op, shape):
    """x.grad is the array the backward kernel wrote, made in x's shape, not a (rows, n)
    array reshaped: autograd copies a view before making it a leaf's .grad, one more pass
    over memory (a quarter of the fused fwd+bwd time at (16384, 4096) on an H100)."""
    made, original = [], EMULATED_CUPY.empty

    def empty(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(EMULATED_CUPY, "empty", empty)
    rows, n = int(np.prod(shape[:-1])), shape[-1]
    x, w, b, dy = inputs(rows, n, np.float32, seed=5)
    arrays = [on_gpu(x.reshape(shape)), on_gpu(w), on_gpu(b), on_gpu(dy.reshape(shape))]
    dx = run_op(op, arrays, True)["dx"]
    assert dx.shape == shape and any(dx is a for a in made), f"{op}: x.grad is a copy"


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "softmax"])
def test_float16_runs_the_float32_kernels(emulated, op):
    """float16 is computed in float32 (ops/_adjoint.compute_dtype), so on the GPU it launches
    the float32 kernels, where it used to take the reference path in float16. Results come
    back in float16, within one float16 ulp of the host op's (both round a float32 result)."""
    shape = (3, 5, 300)
    x, w, b, dy = inputs(15, 300, np.float16, seed=2)
    host = run_op(op, [x.reshape(shape), w, b, dy.reshape(shape)], True)
    LAUNCHED.clear()
    gpu = run_op(op, [on_gpu(x.reshape(shape)), on_gpu(w), on_gpu(b),
                      on_gpu(dy.reshape(shape))], True)
    assert any(name.startswith(op) for name in LAUNCHED), LAUNCHED  # kernels take no float16
    for name, want in host.items():
        got = gpu[name]
        if want is None:
            assert got is None, name
            continue
        assert isinstance(got, type(on_gpu(want))) and got.dtype == np.float16, name
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        assert got.shape == want.shape, name
        assert (np.abs(got - want) <= np.spacing(np.abs(want).astype(np.float16))).all(), name
