"""The array backend: choosing it, reading it off arrays, refusing to mix devices, and the rule
that only tinynorm/backend.py names NumPy or CuPy."""
from __future__ import annotations

import math
import os
import pathlib
import re
import subprocess
import sys
import types

import numpy as np
import pytest

import tinynorm as tn
from conftest import IN_CI
from tinynorm import backend
from torch_pairs import num_threads

PACKAGE = pathlib.Path(tn.__file__).parent
REPO = PACKAGE.parent
GPU_FIX = 'pip install "tinynorm[gpu]"'


class FakeCupyArray:
    """Just enough of a CuPy array for the backend's checks: a module named cupy.*, .shape,
    .dtype, .device.id and .get()."""

    def __init__(self, array, device_id=0):
        self._array = np.asarray(array)
        self.shape, self.dtype = self._array.shape, self._array.dtype
        self.ndim, self.size = self._array.ndim, self._array.size
        self.device = types.SimpleNamespace(id=device_id)

    def get(self):
        return self._array.copy()


FakeCupyArray.__module__ = "cupy._core.core"


@pytest.fixture
def fake_cupy(monkeypatch):
    """Pretend CuPy and a GPU are present: the module is a stand-in, never used for math."""
    module = types.SimpleNamespace(__name__="cupy")
    monkeypatch.setattr(backend, "_load_cupy", lambda: module)
    return module


# ---- choosing the backend ------------------------------------------------------------------------
@pytest.fixture
def restore_backend():
    """Tests may run under --backend cupy; leave the backend as the run chose it."""
    previous = backend.current()
    yield previous
    backend.use(previous)


def test_use_as_a_function_switches_for_good(restore_backend, fake_cupy):
    backend.use("cupy")
    assert backend.current() == "cupy" and backend.xp() is fake_cupy
    backend.use("numpy")
    assert backend.current() == "numpy" and backend.xp() is np
    assert tn.zeros(2).device == "cpu" and tn.randn(3).device == "cpu"


def test_use_as_a_context_manager_restores_the_previous_backend(restore_backend, fake_cupy):
    with backend.use("cupy") as block:
        assert isinstance(block, backend.use)
        assert backend.current() == "cupy" and backend.xp() is fake_cupy
        with backend.use("numpy"):
            assert backend.current() == "numpy"
        assert backend.current() == "cupy"
    assert backend.current() == restore_backend


def test_use_rejects_an_unknown_backend_by_name(restore_backend):
    with pytest.raises(ValueError, match=r"'jax'.*numpy.*cupy"):
        backend.use("jax")
    assert backend.current() == restore_backend


@pytest.mark.skipif(backend.gpu_available(), reason="CuPy and a GPU are present here")
def test_asking_for_cupy_without_it_says_how_to_install_it():
    before = backend.current()
    with pytest.raises(RuntimeError) as info:
        backend.use("cupy")
    assert GPU_FIX in str(info.value)
    assert backend.current() == before, "a failed switch must leave the backend unchanged"
    assert not backend.gpu_available()
    with pytest.raises(RuntimeError, match=re.escape(GPU_FIX)):
        tn.zeros(2, device="cuda")


def _python(code, **env):
    """Run ``code`` in a fresh interpreter (the backend is chosen at import time)."""
    environ = {k: v for k, v in os.environ.items() if k != "TINYNORM_BACKEND"}
    environ.update(env, PYTHONPATH=str(REPO) + os.pathsep + environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ,
                          cwd=str(REPO), timeout=60)


def test_tinynorm_backend_environment_variable():
    code = "import tinynorm as tn; print(tn.backend.current(), type(tn.zeros(1).data).__module__)"
    chosen = _python(code, TINYNORM_BACKEND="numpy")
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.split() == ["numpy", "numpy"]

    unknown = _python(code, TINYNORM_BACKEND="tpu")
    assert unknown.returncode != 0 and "TINYNORM_BACKEND='tpu'" in unknown.stderr

    if not backend.gpu_available():
        gpu = _python(code, TINYNORM_BACKEND="cupy")
        assert gpu.returncode != 0 and GPU_FIX in gpu.stderr


# ---- arrays and devices --------------------------------------------------------------------------
def test_array_module_reads_the_backend_off_the_arrays():
    assert backend.array_module(np.ones(2)) is np
    assert backend.array_module(np.ones(2), 3.0, None) is np
    assert backend.array_module() is np


def test_array_module_of_a_cupy_array_loads_cupy(fake_cupy):
    assert backend.array_module(FakeCupyArray([1.0]), 2.0) is fake_cupy


def test_only_the_cupy_package_makes_gpu_arrays():
    """A cupyx sparse matrix (module cupyx.scipy.sparse...) passed for a CuPy array, since the
    test was a module name starting with "cupy"; it is another library's array now."""
    class SparseLike:
        shape, dtype, ndim = (2, 2), np.dtype("float32"), 2

        def __array__(self):
            return np.zeros((2, 2))

    SparseLike.__module__ = "cupyx.scipy.sparse._csr"
    assert not backend.is_array(SparseLike()) and backend.is_foreign_array(SparseLike())
    assert backend.is_array(FakeCupyArray([1.0]))


def test_mixing_devices_names_the_op_and_both_devices():
    cpu, gpu = np.ones((2, 3)), FakeCupyArray(np.ones(4), device_id=1)
    with pytest.raises(TypeError) as info:
        backend.array_module(cpu, gpu, op="layer_norm")
    message = str(info.value)
    for part in ("layer_norm", "cpu", "cuda:1", "(2, 3)", "(4,)"):
        assert part in message, f"{part!r} missing from: {message}"

    # every op checks its inputs the same way, before its forward runs
    with pytest.raises(TypeError, match=r"^Add: .*cpu.*cuda:0"):
        tn.tensor(np.ones(2), device="cpu") + tn.Tensor(FakeCupyArray(np.ones(2)))
    with pytest.raises(TypeError, match=r"^MatMul: .*cpu.*cuda:0"):
        tn.Tensor(FakeCupyArray(np.ones((2, 2)))) @ tn.tensor(np.ones((2, 2)), device="cpu")


def test_device_of_and_to_numpy():
    gpu = FakeCupyArray([[1.0, 2.0]], device_id=3)
    assert backend.device_of(np.ones(1)) == "cpu" and backend.device_of(gpu) == "cuda:3"
    assert tn.Tensor(gpu).device == "cuda:3"
    host = backend.to_numpy(gpu)
    assert isinstance(host, np.ndarray) and host.tolist() == [[1.0, 2.0]]
    a = np.arange(3.0)
    assert backend.to_numpy(a) is a
    assert backend.is_array(a) and backend.is_array(gpu) and not backend.is_array([1.0])


def test_erfc():
    x = np.array([-2.0, -0.5, 0.0, 0.3, 3.0])
    np.testing.assert_allclose(backend.erfc(x), [math.erfc(v) for v in x], rtol=1e-15)


def test_generator_is_per_backend_and_reseeded_by_manual_seed():
    tn.manual_seed(5)
    first = backend.generator(np).random(3)
    assert backend.generator(np) is backend.generator(np)
    tn.manual_seed(5)
    np.testing.assert_array_equal(backend.generator(np).random(3), first)


# ---- only backend.py names NumPy or CuPy ---------------------------------------------------------
ALLOWED_TO_NAME_ARRAY_LIBRARIES = {"backend.py"}
# tinynorm.testing works on host copies by design (finite differences in float64 on the CPU,
# Hypothesis draws NumPy arrays): it may use NumPy, but only as ``backend.module("numpy")``.
HOST_SIDE = ("testing/",)
IMPORTING = re.compile(r"\b(import|from) (numpy|cupy)\b")
# `import numpy`, `from cupy ...`, and `numpy.` / `np.` / `cupy.` / `cupyx.` as a name (not as the
# tail of a dotted path such as hypothesis.extra.numpy.arrays)
NAMING = re.compile(r"\b(import|from) (numpy|cupy)\b|(?<![\w.])(numpy|np|cupy|cupyx)\.")


def test_only_backend_py_names_numpy_or_cupy():
    """Everything else takes ``xp`` from its inputs (backend.array_module), so one body serves
    NumPy and CuPy; naming either library directly would pin that code to one device."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in ALLOWED_TO_NAME_ARRAY_LIBRARIES:
            continue
        rule = IMPORTING if relative.startswith(HOST_SIDE) else NAMING
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if rule.search(line):
                offenders.append(f"tinynorm/{relative}:{number}: {line.strip()}")
    assert not offenders, ("only tinynorm/backend.py may name numpy or cupy:\n"
                           + "\n".join(offenders))


def test_the_naming_rule_would_catch_each_spelling():
    for line in ("import numpy as np", "import cupy", "from numpy import ones", "x = np.ones(3)",
                 "numpy.float32", "cupy.asarray(a)", "cupyx.scatter_add(a, i, v)"):
        assert NAMING.search(line), line
    for line in ("xp = backend.array_module(x)", "def numpy(self):", "inp.shape", "t.numpy()",
                 "hypothesis.extra.numpy.arrays", 'backend.module("numpy")'):
        assert not NAMING.search(line), line


def test_blas_runs_single_threaded_only_while_blocks_run_on_threads():
    """Inside for_each_block's threads BLAS has one thread (ours are the parallelism);
    before and after, its own count, also when an error ends the blocks."""
    from tinynorm.ops import _rows

    before = tn.backend.blas_threads()
    if before is None:  # a BLAS other than OpenBLAS 0.3.27+: nothing to switch
        # CI installs NumPy from PyPI, whose OpenBLAS has the setting: there it must be found
        assert not IN_CI, "NumPy's OpenBLAS was not found"
        pytest.skip("NumPy's BLAS has no thread setting tinynorm can switch")
    seen = []
    blocks = [(k, slice(k, k + 1)) for k in range(4)]
    with num_threads(2):
        _rows.for_each_block(blocks, lambda k, rows: seen.append(tn.backend.blas_threads()),
                             4 * _rows.BLOCK_ELEMENTS)
        assert seen == [1, 1, 1, 1]
        assert tn.backend.blas_threads() == before

        def fail(k, rows):
            raise ValueError("block failed")

        with pytest.raises(ValueError, match="block failed"):
            _rows.for_each_block(blocks, fail, 4 * _rows.BLOCK_ELEMENTS)
        assert tn.backend.blas_threads() == before
