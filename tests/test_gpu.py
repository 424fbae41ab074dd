"""The fused CUDA kernels (tinynorm.kernels) against the reference, in three layers, so that
most of it is checked without a GPU:

1. CPU, always: the launch geometry, the switches and errors, and a NumPy emulation of the
   kernels' algorithms (the same reduction order, the same row chunks) against the plain
   formulas. A logic error in the algorithm shows up here without a device.
2. NVRTC, where CuPy's compiler bindings import (no GPU needed): every kernel compiles for
   sm_70/80/90, lowers every instantiation, spills nothing, fits its block size, and the
   float32 kernels do no float64 arithmetic except the dγ/dβ sums. CI has no CuPy: these
   skip there with the reason.
3. GPU (``@pytest.mark.gpu``, skipped where there is none): fused against the reference
   formulas (float64 within 1e-12, float32 within 1e-5), bit-identical reruns, PyTorch on CUDA.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import tinynorm as tn
from tinynorm import kernels
from tinynorm.kernels import _cuda

EPS = 1e-5
# (rows, n): odd row lengths, rows longer than a full block's 8 elements per thread, many
# short rows, and enough rows that dγ/dβ is summed over several chunks.
SHAPES = [(1, 1), (5, 3), (64, 1000), (7, 4097), (300, 3), (3, 40000), (1000, 64)]
# Tolerances, relative to the largest reference value of each output (sums like dγ grow
# with the rows; elementwise outputs are O(1)): float64 rounding over at most 40000-term
# sums stays far below 1e-12; float32 sums are accumulated in float32 in a different order
# than the reference's pairwise sums, ~√n·2⁻²⁴ ≈ 1e-5 at worst for these n.
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def inputs(rows, n, dtype, seed=0):
    """x with a non-zero mean (centring matters), γ around 1, β, and a random upstream dy."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 2.0, (rows, n))
    w = rng.normal(1.0, 0.5, n)
    b = rng.normal(0.0, 0.5, n)
    dy = rng.normal(0.0, 1.0, (rows, n))
    return [a.astype(dtype) for a in (x, w, b, dy)]


def assert_matches(actual, expected, dtype, what):
    actual, expected = tn.backend.to_numpy(actual), tn.backend.to_numpy(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected.astype(np.float64)).max()))
    tol = TOL[np.dtype(dtype).type] * scale
    err = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max())
    assert err <= tol, f"{what} ({np.dtype(dtype).name}): max error {err:.3e} > {tol:.3e}"


# ---- reference formulas (those of tinynorm.ops), on any array module -------------------
def ref_layer_norm(xp, x, w, b, dy, eps=EPS):
    mean = x.mean(axis=-1, keepdims=True)
    rstd = 1 / xp.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    x_hat = (x - mean) * rstd
    g = dy * w
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - x_hat * (g * x_hat).mean(axis=-1, keepdims=True))
    return x_hat * w + b, mean[:, 0], rstd[:, 0], dx, (dy * x_hat).sum(axis=0), dy.sum(axis=0)


def ref_rms_norm(xp, x, w, dy, eps=EPS):
    rstd = 1 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    x_hat = x * rstd
    g = dy * w
    dx = rstd * (g - x_hat * (g * x_hat).mean(axis=-1, keepdims=True))
    return x_hat * w, rstd[:, 0], dx, (dy * x_hat).sum(axis=0)


def ref_softmax(xp, x, dy):
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    y = e / e.sum(axis=-1, keepdims=True)
    gy = dy * y
    return y, gy - y * gy.sum(axis=-1, keepdims=True)


# ==== 1. CPU: geometry, switches, errors, emulation ======================================
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
    assert chunks * n < 2**31 and rows * n < 2**40  # the kernels' int/size_t indexing holds


def test_fused_is_used_only_for_gpu_float_arrays_and_can_be_switched_off():
    a = np.ones((2, 3), np.float32)
    assert not kernels.use_fused(a)  # NumPy arrays always take the reference path
    assert not kernels.use_fused()
    before = kernels.enabled
    with kernels.fused(False):
        assert kernels.enabled is False
    assert kernels.enabled is before


def test_env_switch_and_import_without_cupy():
    code = ("import sys, tinynorm, tinynorm.kernels as k; "
            "print(k.enabled, 'cupy' in sys.modules)")
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


# -- emulation: the kernels' reduction order in NumPy --------------------------------------
def _butterfly(v, op):
    """__shfl_xor_sync over the last axis (32 lanes): every lane ends with the same value."""
    lanes = np.arange(32)
    for offset in (16, 8, 4, 2, 1):
        v = op(v, v[..., lanes ^ offset])
    return v


def emulate_block_reduce(values, op, identity):
    """(rows, n) -> (rows,), in block_reduce's order (_cuda.COMMON) for row_threads(n)."""
    rows, n = values.shape
    threads = kernels.row_threads(n)
    steps = -(-n // threads)
    padded = np.full((rows, steps * threads), identity, values.dtype)
    padded[:, :n] = values
    acc = np.full((rows, threads), identity, values.dtype)
    for k in range(steps):  # thread t folds columns t, t + threads, ... in order
        acc = op(acc, padded[:, k * threads:(k + 1) * threads])
    per_warp = _butterfly(acc.reshape(rows, threads // 32, 32), op)[..., 0]
    scratch = np.full((rows, 32), identity, values.dtype)
    scratch[:, :threads // 32] = per_warp
    return _butterfly(scratch, op)[:, 0]


def emulate_param_grad(dy, x_hat):
    """Σ_rows dy·x̂ and Σ_rows dy in float64, in the partial-sum kernels' order."""
    rows, n = dy.shape
    chunks, per = kernels.param_grad_chunks(rows, n)
    strands = _cuda.PARTIAL_STRANDS
    dw, db = np.zeros(n), np.zeros(n)
    seen = np.zeros(rows, int)
    for c in range(chunks):
        first, last = c * per, min(rows, (c + 1) * per)
        assert last > first, "empty chunk"
        sw, sb = np.zeros((strands, n)), np.zeros((strands, n))
        for s in range(strands):
            for row in range(first + s, last, strands):
                sw[s] += dy[row].astype(np.float64) * x_hat[row].astype(np.float64)
                sb[s] += dy[row]
                seen[row] += 1
        for s in range(1, strands):
            sw[0] += sw[s]
            sb[0] += sb[s]
        dw += sw[0]
        db += sb[0]
    assert (seen == 1).all(), "a row was summed twice or never"
    return dw.astype(dy.dtype), db.astype(dy.dtype)


def emulate_layer_norm(x, w, b, dy, eps=EPS):
    n = x.shape[1]
    add = np.add
    mu = emulate_block_reduce(x, add, 0) / x.dtype.type(n)
    d = x - mu[:, None]
    r = 1 / np.sqrt(emulate_block_reduce(d * d, add, 0) / x.dtype.type(n) + x.dtype.type(eps))
    x_hat = (x - mu[:, None]) * r[:, None]
    g = dy * w
    mean_g = emulate_block_reduce(g, add, 0) / x.dtype.type(n)
    mean_gx = emulate_block_reduce(g * x_hat, add, 0) / x.dtype.type(n)
    dx = r[:, None] * (g - mean_g[:, None] - x_hat * mean_gx[:, None])
    return (x_hat * w + b, mu, r, dx) + emulate_param_grad(dy, x_hat)


def emulate_rms_norm(x, w, dy, eps=EPS):
    n = x.shape[1]
    r = 1 / np.sqrt(emulate_block_reduce(x * x, np.add, 0) / x.dtype.type(n) + x.dtype.type(eps))
    x_hat = x * r[:, None]
    g = dy * w
    mean_gx = emulate_block_reduce(g * x_hat, np.add, 0) / x.dtype.type(n)
    dx = r[:, None] * (g - x_hat * mean_gx[:, None])
    return x_hat * w, r, dx, emulate_param_grad(dy, x_hat)[0]


def emulate_softmax(x, dy):
    m = emulate_block_reduce(x, np.fmax, -np.inf)
    s = emulate_block_reduce(np.exp(x - m[:, None]), np.add, 0)
    y = np.exp(x - m[:, None]) / s[:, None]
    dot = emulate_block_reduce(dy * y, np.add, 0)
    return y, dy * y - y * dot[:, None]


EMULATED_SHAPES = [(1, 1), (5, 3), (64, 1000), (7, 4097), (300, 3), (2, 40000), (200, 64)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows,n", EMULATED_SHAPES)
def test_emulated_kernels_match_the_reference(rows, n, dtype):
    x, w, b, dy = inputs(rows, n, dtype, seed=rows * 7 + n)
    with np.errstate(over="ignore"):
        names = ("y", "mean", "rstd", "dx", "dweight", "dbias")
        for name, got, want in zip(names, emulate_layer_norm(x, w, b, dy),
                                   ref_layer_norm(np, x, w, b, dy)):
            assert_matches(got, want, dtype, f"layer_norm {name}")
        for name, got, want in zip(("y", "rstd", "dx", "dweight"), emulate_rms_norm(x, w, dy),
                                   ref_rms_norm(np, x, w, dy)):
            assert_matches(got, want, dtype, f"rms_norm {name}")
        for name, got, want in zip(("y", "dx"), emulate_softmax(x, dy), ref_softmax(np, x, dy)):
            assert_matches(got, want, dtype, f"softmax {name}")


def test_emulated_block_reduce_is_exact_on_integers_and_handles_short_rows():
    # Integers below 2**24 add exactly in float32, so any order must give the exact sum; a
    # lost or doubled element (wrong padding, wrong lane) changes it.
    for n in (1, 3, 33, 1000, 4097, 9000):
        v = np.arange(1, n + 1, dtype=np.float32)[None, :]
        assert emulate_block_reduce(v, np.add, 0)[0] == n * (n + 1) // 2
        assert emulate_block_reduce(-v, np.fmax, -np.inf)[0] == -1


# ==== 2. NVRTC: compile every kernel without a GPU ========================================
def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
    except Exception as err:  # noqa: BLE001 — any failure means "no compiler here"
        pytest.skip(f"NVRTC is not usable here (needs CuPy's compiler bindings: "
                    f"pip install 'tinynorm[gpu]'): {type(err).__name__}: {err}")
    return nvrtc


def _compile(source, arch):
    """Compile as CuPy's RawModule does (kernels' OPTIONS, -ftz=true, the device flag)."""
    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(source.code, f"{source.name}.cu", (), ())
    try:
        for expr in source.name_expressions():
            nvrtc.addNameExpression(prog, expr)
        options = list(_cuda.OPTIONS) + [f"-arch={arch}", "-ftz=true",
                                         "--device-as-default-execution-space"]
        if arch.startswith("sm_"):
            options.append("-Xptxas=-v")
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as err:
            pytest.fail(f"{source.name}: NVRTC failed ({err}):\n{nvrtc.getProgramLog(prog)}")
        lowered = {e: nvrtc.getLoweredName(prog, e) for e in source.name_expressions()}
        text = nvrtc.getPTX(prog).decode() if arch.startswith("compute_") else ""
        return lowered, text, nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)


def _ptx_entries(ptx):
    return {m.group(1): m.group(0) for m in
            re.finditer(r"\.entry (\w+)\((?:.|\n)*?\n\}", ptx)}


@pytest.mark.parametrize("arch", ["compute_70", "compute_80", "compute_90"])
@pytest.mark.parametrize("source", kernels.SOURCES, ids=lambda s: s.name)
def test_every_kernel_compiles_to_ptx(source, arch):
    lowered, ptx, _ = _compile(source, arch)
    entries = _ptx_entries(ptx)
    for expr, mangled in lowered.items():
        assert mangled in entries, f"{expr} ({mangled}) is missing from the PTX for {arch}"
        body = entries[mangled]
        uses_f64 = re.search(r"\b(?:add|mul|fma|div|sub)(?:\.rn)?\.f64\b", body) is not None
        if "param_grad" in expr:  # dγ/dβ are summed in float64 for float too
            assert uses_f64, f"{expr}: the dγ/dβ partial sums should be float64"
        elif expr.endswith("<float>"):  # no silent promotion of float32 rows to double
            assert not uses_f64, f"{expr}: float64 arithmetic in a float32 kernel"


@pytest.mark.parametrize("source", kernels.SOURCES, ids=lambda s: s.name)
def test_every_kernel_fits_its_block_without_spills_on_sm90(source):
    _, _, log = _compile(source, "sm_90")
    blocks = re.split(r"Compiling entry function '(\w+)'", log)[1:]
    assert len(blocks) // 2 == len(source.name_expressions()), log
    for name, report in zip(blocks[::2], blocks[1::2]):
        spills = [int(s) for s in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
        registers = int(re.search(r"Used (\d+) registers", report).group(1))
        threads = 256 if "param_grad" in name else _cuda.MAX_ROW_THREADS
        assert spills and not any(spills), f"{name} spills: {report}"
        assert registers * threads <= 65536, f"{name}: {registers} registers × {threads} threads"


# ==== 3. GPU: fused against the reference, determinism, PyTorch ==========================
def _gpu(rows, n, dtype, seed=0):
    cp = tn.backend.module("cupy")
    return cp, [cp.asarray(a) for a in inputs(rows, n, dtype, seed)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows,n", SHAPES)
def test_fused_layer_norm_matches_reference(rows, n, dtype):
    cp, (x, w, b, dy) = _gpu(rows, n, dtype)
    y, mean, rstd = kernels.layer_norm_forward(x, w, b, EPS)
    dx, dw, db = kernels.layer_norm_backward(dy, x, w, mean, rstd)
    for name, got, want in zip(("y", "mean", "rstd", "dx", "dweight", "dbias"),
                               (y, mean, rstd, dx, dw, db), ref_layer_norm(cp, x, w, b, dy)):
        assert got.dtype == x.dtype, f"{name} dtype {got.dtype}"
        assert_matches(got, want, dtype, f"layer_norm {name}")
    # no affine parameters: γ = 1, β = 0, and no dγ
    y0, mean0, rstd0 = kernels.layer_norm_forward(x, None, None, EPS)
    dx0, dw0, db0 = kernels.layer_norm_backward(dy, x, None, mean0, rstd0)
    ones, zeros = cp.ones(n, x.dtype), cp.zeros(n, x.dtype)
    want = ref_layer_norm(cp, x, ones, zeros, dy)
    assert_matches(y0, want[0], dtype, "layer_norm y (no affine)")
    assert_matches(dx0, want[3], dtype, "layer_norm dx (no affine)")
    assert dw0 is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows,n", SHAPES)
def test_fused_rms_norm_matches_reference(rows, n, dtype):
    cp, (x, w, _, dy) = _gpu(rows, n, dtype)
    y, rstd = kernels.rms_norm_forward(x, w, EPS)
    dx, dw = kernels.rms_norm_backward(dy, x, w, rstd)
    for name, got, want in zip(("y", "rstd", "dx", "dweight"), (y, rstd, dx, dw),
                               ref_rms_norm(cp, x, w, dy)):
        assert got.dtype == x.dtype, f"{name} dtype {got.dtype}"
        assert_matches(got, want, dtype, f"rms_norm {name}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows,n", SHAPES)
def test_fused_softmax_matches_reference(rows, n, dtype):
    cp, (x, _, _, dy) = _gpu(rows, n, dtype)
    x = x * 4  # wide logits: the max subtraction matters
    y = kernels.softmax_forward(x)
    dx = kernels.softmax_backward(dy, y)
    for name, got, want in zip(("y", "dx"), (y, dx), ref_softmax(cp, x, dy)):
        assert_matches(got, want, dtype, f"softmax {name}")


@pytest.mark.gpu
def test_fused_softmax_keeps_reference_behaviour_on_infinities():
    cp = tn.backend.module("cupy")
    x = cp.asarray([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf]])
    y = tn.backend.to_numpy(kernels.softmax_forward(x))
    with np.errstate(invalid="ignore"):
        want, _ = ref_softmax(np, tn.backend.to_numpy(x), np.ones((2, 3)))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))  # a fully masked row is NaN
    np.testing.assert_allclose(y[0], want[0], rtol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows,n", [(1000, 64), (64, 4097)])
def test_fused_kernels_are_bit_identical_across_runs(rows, n, dtype):
    cp, (x, w, b, dy) = _gpu(rows, n, dtype, seed=1)

    def run():
        y, mean, rstd = kernels.layer_norm_forward(x, w, b, EPS)
        ln = (y,) + kernels.layer_norm_backward(dy, x, w, mean, rstd)
        z, r = kernels.rms_norm_forward(x, w, EPS)
        rms = (z,) + kernels.rms_norm_backward(dy, x, w, r)
        s = kernels.softmax_forward(x)
        return [a.copy() for a in ln + rms + (s, kernels.softmax_backward(dy, s))]

    first, second = run(), run()
    for i, (a, c) in enumerate(zip(first, second)):
        assert cp.array_equal(a.view(cp.uint8), c.view(cp.uint8)), f"output {i} differs bitwise"


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch here has no CUDA; parity with PyTorch on CUDA needs a CUDA build")
    return torch


@pytest.mark.gpu
@pytest.mark.parametrize("rows,n", [(5, 3), (64, 1000), (7, 4097)])
def test_fused_norms_and_softmax_match_pytorch_cuda(rows, n):
    torch = _torch_cuda()
    cp, (x, w, b, dy) = _gpu(rows, n, np.float64, seed=2)
    tx, tw, tb, tdy = (torch.from_dlpack(a).clone().requires_grad_() for a in (x, w, b, dy))
    close = dict(rtol=1e-10, atol=1e-10)  # float64: different summation orders only

    y, mean, rstd = kernels.layer_norm_forward(x, w, b, EPS)
    got = (y,) + kernels.layer_norm_backward(dy, x, w, mean, rstd)
    ty = torch.nn.functional.layer_norm(tx, (n,), tw, tb, EPS)
    want = (ty,) + torch.autograd.grad(ty, (tx, tw, tb), tdy)
    for g, t in zip(got, want):
        np.testing.assert_allclose(tn.backend.to_numpy(g), t.detach().cpu().numpy(), **close)

    z, r = kernels.rms_norm_forward(x, w, EPS)
    got = (z,) + kernels.rms_norm_backward(dy, x, w, r)
    tz = torch.nn.functional.rms_norm(tx, (n,), tw, EPS)
    want = (tz,) + torch.autograd.grad(tz, (tx, tw), tdy)
    for g, t in zip(got, want):
        np.testing.assert_allclose(tn.backend.to_numpy(g), t.detach().cpu().numpy(), **close)

    s = kernels.softmax_forward(x)
    got = (s, kernels.softmax_backward(dy, s))
    ts = torch.softmax(tx, dim=-1)
    want = (ts,) + torch.autograd.grad(ts, (tx,), tdy)
    for g, t in zip(got, want):
        np.testing.assert_allclose(tn.backend.to_numpy(g), t.detach().cpu().numpy(), **close)
