"""tinynorm.kernels' CUDA source itself, compiled for the CPU and run on one OS thread per CUDA
thread (tests/cuda_on_cpu.py): the real indexing, loops, barriers and reduction order, with
no GPU. Three checks:

* through the Python wrappers, against the reference formulas (as tests/test_gpu.py does on
  a GPU);
* bit for bit against the NumPy emulation of tests/cuda_emulator.py, so that the emulation
  used by test_gpu_emulated.py is known to model this code exactly (norms; softmax's exp
  may differ in the last bit between libm and NumPy);
* ThreadSanitizer on every kernel: no data race, and a barrier removed on purpose is caught.

Needs a C++20 compiler (g++ >= 11, with ThreadSanitizer); skipped with the reason otherwise.
About 40 s, most of it compiling.
"""
import numpy as np
import pytest

import cuda_on_cpu
from cuda_emulator import EMULATED_CUPY, EmulatedCupy, on_gpu
from test_gpu import (EPS, assert_matches, inputs, ref_layer_norm, ref_rms_norm,
                      ref_softmax)
from tinynorm import backend, kernels

# Few threads per block (the CPU runs them all): n up to 1000 is 128 threads; (20, 64) sums
# dγ/dβ over 3 chunks, the last one short; (3, 300) loops 5 times per thread.
SHAPES = [(1, 1), (5, 3), (20, 64), (3, 300), (4, 1000)]


@pytest.fixture(scope="module")
def compiled():
    if cuda_on_cpu.compiler() is None:
        pytest.skip("no C++ compiler (g++ >= 11, or $CXX) to run the CUDA source on the CPU")
    try:
        for source in kernels.SOURCES:
            cuda_on_cpu.build(source)
    except RuntimeError as err:
        if "error: " in str(err) and "barrier" in str(err):
            pytest.skip(f"the C++ compiler lacks C++20 <barrier>: {str(err)[:200]}")
        raise


@pytest.fixture(autouse=True)
def _fresh_kernel_cache():
    """No CPU-compiled module may outlive a test (a GPU run of the suite follows)."""
    kernels.clear_cache()
    yield
    kernels.clear_cache()


def _run_on(monkeypatch, module_class):
    monkeypatch.setattr(backend, "_cupy", EmulatedCupy(**{**vars(EMULATED_CUPY),
                                                          "RawModule": module_class}))
    kernels.clear_cache()


def _all_outputs(x, w, b, dy):
    y, mean, rstd = kernels.layer_norm_forward(x, w, b, EPS)
    ln = (y, mean, rstd) + kernels.layer_norm_backward(dy, x, w, mean, rstd)
    z, r = kernels.rms_norm_forward(x, w, EPS)
    rms = (z, r) + kernels.rms_norm_backward(dy, x, w, r)
    s = kernels.softmax_forward(x)
    return ln, rms, (s, kernels.softmax_backward(dy, s))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows,n", SHAPES)
def test_cuda_source_on_cpu_threads_matches_reference_and_emulation(compiled, monkeypatch,
                                                                    rows, n, dtype):
    x, w, b, dy = inputs(rows, n, dtype, seed=rows + n)
    args = [on_gpu(a) for a in (x, w, b, dy)]
    _run_on(monkeypatch, cuda_on_cpu.CpuThreadsModule)
    ln, rms, sm = (tuple(np.asarray(a).copy() for a in out) for out in _all_outputs(*args))
    for name, got, want in zip(("y", "mean", "rstd", "dx", "dweight", "dbias"), ln,
                               ref_layer_norm(np, x, w, b, dy)):
        assert_matches(got, want, dtype, f"layer_norm {name}")
    for name, got, want in zip(("y", "rstd", "dx", "dweight"), rms, ref_rms_norm(np, x, w, dy)):
        assert_matches(got, want, dtype, f"rms_norm {name}")
    for name, got, want in zip(("y", "dx"), sm, ref_softmax(np, x, dy)):
        assert_matches(got, want, dtype, f"softmax {name}")

    _run_on(monkeypatch, EMULATED_CUPY.RawModule)
    e_ln, e_rms, e_sm = (tuple(np.asarray(a) for a in out) for out in _all_outputs(*args))
    for i, (got, emulated) in enumerate(zip(ln + rms, e_ln + e_rms)):
        assert np.array_equal(got.view(np.uint8), emulated.view(np.uint8)), \
            f"norm output {i}: the CUDA source and its NumPy emulation differ in some bit"
    for got, emulated in zip(sm, e_sm):  # libm's exp and NumPy's may differ in the last bit;
        # dx = dy·y − y·Σdy·y cancels, so compare against the largest value, not each one
        scale = 8 * np.finfo(dtype).eps * np.abs(emulated).max()
        np.testing.assert_allclose(got, emulated, rtol=0, atol=scale)


@pytest.mark.parametrize("source", kernels.SOURCES, ids=lambda s: s.name)
def test_no_data_race_under_thread_sanitizer(compiled, source):
    code, report = cuda_on_cpu.run_race_check(source)
    assert code == 0 and "ThreadSanitizer" not in report, report[:3000]


def test_thread_sanitizer_catches_a_missing_barrier(compiled):
    # block_reduce's first barrier keeps a second reduction from overwriting scratch while
    # slower warps still read the first one's result; drop it and the race must be reported.
    source = next(s for s in kernels.SOURCES if s.name == "softmax")
    barrier = "v = warp_reduce(v, op);\n    __syncthreads();"
    program = cuda_on_cpu.race_check_program(source)
    assert barrier in program
    code, report = cuda_on_cpu.run_race_check(source, program.replace(barrier,
                                                                      "v = warp_reduce(v, op);"))
    assert code == 66 and "data race" in report, f"exit {code}:\n{report[:2000]}"
