"""The fused CUDA kernels (tinynorm.kernels) against the reference, in three layers, so that
most of it is checked without a GPU:

1. CPU, always (tests/test_gpu_emulated.py): the launch geometry, the switches and errors,
   and the Python wrappers run against NumPy emulations of each CUDA kernel (same argument
   lists, same reduction order, same row chunks), compared with the reference formulas here.
2. NVRTC, where CuPy's compiler bindings import (no GPU needed): every kernel compiles for
   sm_70/80/90 (those the NVRTC supports), lowers every instantiation, spills nothing, fits its
   block size, and the float32 kernels do no float64 arithmetic except the dγ/dβ sums. CI has
   no CuPy: these skip there with the reason.
3. GPU (``@pytest.mark.gpu``, skipped where there is none): fused against the reference
   formulas (float64 within 1e-12, float32 within 1e-5), bit-identical reruns, PyTorch on CUDA.
"""
import re

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
    mean_g_xhat = (g * x_hat).mean(axis=-1, keepdims=True)
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - x_hat * mean_g_xhat)
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


@pytest.mark.parametrize("arch", [70, 80, 90])
@pytest.mark.parametrize("source", kernels.SOURCES, ids=lambda s: s.name)
def test_every_kernel_compiles_to_ptx(source, arch):
    if arch not in _nvrtc().getSupportedArchs():  # CUDA 13's NVRTC has dropped sm_70
        pytest.skip(f"this NVRTC ({_nvrtc().getVersion()}) does not target sm_{arch}")
    lowered, ptx, _ = _compile(source, f"compute_{arch}")
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
        want, _ = ref_softmax(np, tn.backend.to_numpy(x), np.zeros((2, 3)))  # y only
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


@pytest.mark.gpu
def test_fused_layer_norm_refines_the_mean_like_the_op():
    # |μ| ≫ σ in float32: without μ ← μ + mean(x − μ) the rounding of Σx/n stays in x̂
    # (about 1e-3 at μ = 1e4); with it x̂ is as good as float32 allows.
    cp = tn.backend.module("cupy")
    rng = np.random.default_rng(3)
    for mu in (1e3, 1e4, 1e5):
        x = (mu + rng.normal(0, 1, (16, 4097))).astype(np.float32)
        x64 = x.astype(np.float64)
        truth = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + EPS)
        y, _, _ = kernels.layer_norm_forward(cp.asarray(x), None, None, EPS)
        err = np.abs(tn.backend.to_numpy(y) - truth).max()
        assert err < 2e-6, f"μ = {mu:g}: x̂ off by {err:.2e}"


def run_op(op, arrays, fused):
    """The user-facing op (Tensor in, .backward(dy)) with the fused kernels on or off: its
    output and every gradient, for comparing the fused path with the reference path."""
    F = tn.nn.functional
    x, w, b, dy = arrays
    tx, tw, tb = (tn.Tensor(a, requires_grad=True) for a in (x, w, b))
    n = x.shape[-1]
    with kernels.fused(fused):
        if op == "layer_norm":
            y = F.layer_norm(tx, (n,), tw, tb, EPS)
        elif op == "rms_norm":
            y = F.rms_norm(tx, (n,), tw, EPS)
        else:
            y = tn.softmax(tx, -1)
        y.backward(dy)
    return {"y": y.data, "dx": tx.grad, "dweight": tw.grad, "dbias": tb.grad}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(2, 3, 37), (4, 4097), (1, 1)])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "softmax"])
def test_ops_on_cupy_fused_match_the_reference_path(op, shape, dtype):
    """The user-facing ops (Tensor in, .backward()) with kernels on vs off, on the GPU."""
    cp = tn.backend.module("cupy")
    rows, n = int(np.prod(shape[:-1])), shape[-1]
    x, w, b, dy = (cp.asarray(a) for a in inputs(rows, n, dtype, seed=11))
    arrays = (x.reshape(shape), w, b, dy.reshape(shape))

    fused, reference = run_op(op, arrays, True), run_op(op, arrays, False)
    for name, want in reference.items():
        got = fused[name]
        assert (got is None) == (want is None), name
        if want is not None:
            assert got.shape == want.shape and got.dtype == want.dtype, name
            assert_matches(got, want, dtype, f"{op} {name} (fused vs reference op)")
