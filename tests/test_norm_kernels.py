"""The compiled CPU kernels of layer_norm and rms_norm (tinynorm.kernels.cpu_norms, numba)
against the reference path (tinynorm.kernels.fused(False)), and the switches around them.

tests/test_norms.py runs the ops' parity, numerics and gradcheck tests on both paths; here
the two paths are compared with each other, and with numba taken away.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import tinynorm as tn
from tinynorm import kernels
from tinynorm.kernels import cpu_norms
from tinynorm.nn import functional as F
from tinynorm.ops import _rows
from tinynorm.testing.compare import to_host as host
from torch_pairs import needs_numba

# the compiled CPU kernels and the CPU reference path: tensors on the CPU under --backend cupy too
pytestmark = pytest.mark.usefixtures("on_cpu")

OPS = ["layer_norm", "rms_norm"]
KERNELS = ["layer_norm_forward", "layer_norm_backward", "rms_norm_forward", "rms_norm_backward"]


def norm(op, x, d, w, b):
    return F.layer_norm(x, d, w, b) if op == "layer_norm" else F.rms_norm(x, d, w, 1e-5)


def run(op, arrays, need=(True, True, True), fused=True):
    """y, the saved per-row numbers, and the gradients [dx, dγ, dβ] (None where not asked
    for, or for RMSNorm's β) of ``op`` on NumPy arrays x, γ, β, dy, on one path."""
    x, w, b, dy = arrays
    d = x.shape[-1]
    tensors = [None if a is None else tn.tensor(a, requires_grad=r)
               for a, r in zip((x, w, b), need)]
    with kernels.fused(fused):
        y = norm(op, *tensors[:1], d, *tensors[1:])
        saved = [host(a) for a in y.grad_fn.saved_tensors[2:]]  # μ and r, or r
        y.backward(tn.tensor(dy))
    grads = [None if t is None or t.grad is None else host(t.grad) for t in tensors]
    return host(y), saved, grads


def inputs(shape, dtype, seed=0, affine=(True, True)):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w, b = (rng.standard_normal(shape[-1]).astype(dtype) if on else None for on in affine)
    return x, w, b, rng.standard_normal(shape).astype(dtype)


# ---- the switch --------------------------------------------------------------------------------
@needs_numba
def test_use_cpu_kernels_takes_only_what_the_kernels_handle():
    a = np.ones((3, 4), np.float32)
    assert kernels.use_cpu_kernels(a, None, np.ones(4, np.float32))
    assert kernels.use_cpu_kernels(a.astype(np.float64))
    with kernels.fused(False):
        assert not kernels.use_cpu_kernels(a)  # the one switch turns off CUDA and CPU kernels
    assert not kernels.use_cpu_kernels()
    assert not kernels.use_cpu_kernels(a.astype(np.float16))
    assert not kernels.use_cpu_kernels(np.ones((0, 4), np.float32))
    assert not kernels.use_cpu_kernels(np.ones((4, 3), np.float32).T)  # not C-contiguous
    assert not kernels.use_cpu_kernels(a, np.ones(4, np.float64))  # one dtype for all
    assert not kernels.use_fused(a)  # use_fused stays CUDA-only (softmax calls it)


@needs_numba
@pytest.mark.parametrize("op", OPS)
def test_the_ops_call_the_kernels_only_when_on(op, monkeypatch):
    called = []
    for name in KERNELS:
        kernel = getattr(cpu_norms, name)
        monkeypatch.setattr(cpu_norms, name,
                            lambda *args, _k=kernel, _n=name: (called.append(_n), _k(*args))[1])
    arrays = inputs((5, 8), np.float32)
    run(op, arrays, fused=False)
    assert called == []
    run(op, arrays)
    assert set(called) == {op + "_forward", op + "_backward"}


@pytest.mark.parametrize("op", OPS)
def test_without_numba_the_reference_path_runs(op, monkeypatch):
    """numba absent (the availability check says so): no kernel is called, and the results
    are the reference path's, bit for bit."""
    monkeypatch.setattr(kernels, "cpu_available", lambda: False)
    for name in KERNELS:
        monkeypatch.setattr(cpu_norms, name, None)  # calling one would raise TypeError
    arrays = inputs((40, 16), np.float32, seed=3)
    assert not kernels.use_cpu_kernels(arrays[0])
    without = run(op, arrays)
    reference = run(op, arrays, fused=False)
    for a, b in zip([without[0], *without[1], *without[2]],
                    [reference[0], *reference[1], *reference[2]]):
        np.testing.assert_array_equal(a, b)


def test_import_never_imports_numba_and_the_norms_work_without_it():
    code = (
        "import sys\n"
        "import tinynorm as tn\n"
        "print('numba' in sys.modules)\n"
        "sys.modules['numba'] = None  # import numba now raises ImportError\n"
        "x = tn.randn(4, 6, requires_grad=True)\n"
        "w = tn.ones(6, requires_grad=True)\n"
        "(tn.nn.functional.layer_norm(x, 6, w) * tn.randn(4, 6)).sum().backward()\n"
        "tn.nn.functional.rms_norm(x, 6, w).sum()\n"
        "print(tn.kernels.cpu_available(), x.grad.shape)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TINYNORM_BACKEND", "TINYNORM_FUSED")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[:2] == ["False", "False (4, 6)"], out


# ---- the kernels against the reference ---------------------------------------------------------
# float64: both paths are exact to a few ulp of O(1) values. float32: both round at every
# step, in different orders (vector partial sums against BLAS dots and block sums), and dx
# subtracts terms as large as g: a few ulp of the largest value, so rtol 1e-5 of it.
TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape, affine, need", [
    ((2000, 300), (True, True), (True, True, True)),  # several blocks, on the threads
    ((3, 5, 33), (True, False), (True, True, False)),
    ((7, 1), (False, True), (True, False, True)),  # n = 1
    ((64, 96), (True, True), (False, True, True)),  # only dγ, dβ: no dx
    ((64, 96), (False, False), (True, False, False)),
])
def test_the_kernels_match_the_reference_path(op, dtype, shape, affine, need):
    arrays = inputs(shape, dtype, seed=5, affine=affine)
    ours, reference = run(op, arrays, need), run(op, arrays, need, fused=False)
    tol = TOLERANCE[dtype]
    names = ["y"] + [f"saved {i}" for i in range(len(ours[1]))] + ["dx", "dγ", "dβ"]
    for name, a, b in zip(names, [ours[0], *ours[1], *ours[2]],
                          [reference[0], *reference[1], *reference[2]]):
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype == dtype and a.shape == b.shape, name
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, np.abs(b).max()),
                                       err_msg=f"{op} {name}")


@needs_numba
@pytest.mark.parametrize("op", OPS)
def test_a_graph_recorded_on_one_path_runs_backward_on_the_other(op):
    """Both paths save the same arrays (x, γ, μ, r / x, γ, r), so either backward can use
    what either forward saved."""
    x, w, b, dy = inputs((500, 64), np.float64, seed=6)
    results = []
    for forward_fused, backward_fused in [(True, False), (False, True), (False, False)]:
        xt, wt, bt = (tn.tensor(a, requires_grad=True) for a in (x, w, b))
        with kernels.fused(forward_fused):
            y = norm(op, xt, 64, wt, bt)
        with kernels.fused(backward_fused):
            y.backward(tn.tensor(dy))
        results.append([host(xt.grad), host(wt.grad)])
    for other in results[:2]:
        for a, e in zip(other, results[2]):
            np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12 * np.abs(e).max())


@needs_numba
@pytest.mark.parametrize("op", OPS)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference path's, on NaN and inf
def test_nan_and_inf_stay_in_their_rows(op):
    x, w, b, dy = inputs((4, 16), np.float32, seed=8)
    x[1, 3], x[2, 5] = np.nan, np.inf
    y, _, (dx, _, _) = run(op, (x, w, b, dy))
    reference_y, _, (reference_dx, _, _) = run(op, (x, w, b, dy), fused=False)
    assert np.isnan(y[1:3]).any(axis=1).all() and np.isfinite(y[[0, 3]]).all()
    np.testing.assert_array_equal(np.isfinite(y), np.isfinite(reference_y))
    np.testing.assert_array_equal(np.isfinite(dx), np.isfinite(reference_dx))


@needs_numba
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference path's 1/0
def test_a_zero_row_with_eps_zero_gives_inf_rstd_as_numpy():
    """1/0 is inf in the kernels (error_model "numpy"), not a ZeroDivisionError."""
    x = np.zeros((2, 8), np.float32)
    x[1] = 1
    for fused in (True, False):
        with kernels.fused(fused):
            y = host(F.rms_norm(tn.tensor(x), 8, None, 0.0))
        assert np.isnan(y[0]).all() and (y[1] == 1).all()


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [17, 40])
def test_the_bits_do_not_depend_on_where_the_arrays_lie(dtype, n):
    """Each kernel on one tiny row, its output placed at many offsets around its input in one
    buffer: the same bits every time. (A row sum inside a loop that also writes would run
    scalar where the arrays nearly touch and vectorised elsewhere, adding in another order.)"""
    rng = np.random.default_rng(9)
    x0, dy0 = (rng.standard_normal((1, n)).astype(dtype) * 3 + 1 for _ in range(2))
    w, b = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    mean, rstd = np.array([x0.mean()], dtype), np.array([1 / x0.std()], dtype)
    found = {name: set() for name in KERNELS}
    for start in [*range(0, 2 * n + 1, 3), *range(4 * n, 7 * n + 1, 3)]:  # around x, never on it
        buffer = np.zeros(8 * n, dtype)
        x = buffer[3 * n:4 * n].reshape(1, n)
        x[:] = x0
        out = buffer[start:start + n].reshape(1, n)
        outputs = {
            "layer_norm_forward": lambda: cpu_norms.layer_norm_forward(
                x, w, b, 1e-5, 0, 1, out, np.zeros(1, dtype), np.zeros(1, dtype)),
            "rms_norm_forward": lambda: cpu_norms.rms_norm_forward(
                x, w, 1e-5, 0, 1, out, np.zeros(1, dtype)),
            "layer_norm_backward": lambda: cpu_norms.layer_norm_backward(
                dy0, x, w, mean, rstd, 0, 1, out, np.zeros(n), np.zeros(n),
                np.zeros((2, n), dtype), True, True),
            "rms_norm_backward": lambda: cpu_norms.rms_norm_backward(
                dy0, x, w, rstd, 0, 1, out, np.zeros(n), np.zeros((1, n), dtype), True, True),
        }
        for name, call in outputs.items():
            call()
            found[name].add(out.tobytes())
    assert {name: len(bits) for name, bits in found.items()} == {name: 1 for name in KERNELS}


def test_kernel_blocks_cover_every_row_once_in_blocks_of_about_equal_size():
    for rows, n in [(1, 1), (10, 150_000), (8192, 768), (16384, 1024), (100_000, 16)]:
        blocks = _rows.kernel_blocks(rows, n)
        covered = [r for _, rows_k in blocks for r in range(rows_k.start, rows_k.stop)]
        assert covered == list(range(rows)) and [k for k, _ in blocks] == list(range(len(blocks)))
        wanted = -(-rows * n // _rows.KERNEL_BLOCK_ELEMENTS)  # blocks of about that many elements
        sizes = [rows_k.stop - rows_k.start for _, rows_k in blocks]
        assert len(blocks) <= max(wanted, 1) and max(sizes) - min(sizes) < max(wanted, 1)
