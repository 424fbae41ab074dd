"""The array backend: the one module that names NumPy or CuPy.

Every op takes its array module ``xp`` from its inputs (``array_module``), so one body
serves both; this module decides which backend *new* arrays are made on, imports CuPy
only when asked, and owns the random generators.

    import tinynorm as tn
    tn.backend.use("cupy")              # from now on
    with tn.backend.use("numpy"):       # or for a block
        ...

The environment variable ``TINYNORM_BACKEND`` (``numpy`` or ``cupy``) sets the backend at
import time.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import threading

import numpy

GPU_FIX = 'pip install "tinynorm[gpu]"'
BACKENDS = ("numpy", "cupy")

# dtypes under PyTorch's names; arrays of either backend accept NumPy dtypes.
float16 = numpy.dtype("float16")
float32 = numpy.dtype("float32")
float64 = numpy.dtype("float64")
int8 = numpy.dtype("int8")
int32 = numpy.dtype("int32")
int64 = numpy.dtype("int64")
bool_ = numpy.dtype("bool")
complex64 = numpy.dtype("complex64")
DEFAULT_FLOAT = float32


def result_type(*dtypes):
    """NumPy's promotion of ``dtypes`` alone (dtypes, not arrays: CuPy's are NumPy's)."""
    return numpy.result_type(*dtypes)


CATEGORIES = "b", "iu", "f", "c"  # PyTorch's order of dtype kinds: bool < int < float < complex


def category(dtype) -> int:
    """0 for bool, 1 for integers, 2 for floats, 3 for complex (PyTorch's categories); a
    TypeError for any other dtype (strings, objects)."""
    kind = numpy.dtype(dtype).kind
    for i, kinds in enumerate(CATEGORIES):
        if kind in kinds:
            return i
    raise TypeError(f"expected numbers or numeric tensors, got dtype {dtype}")


def promote_types(*dtypes):
    """PyTorch's promotion of ``dtypes``: the highest category wins and its dtypes promote by
    NumPy's rules among themselves (float16 with int64 is float16, where NumPy's is float64)."""
    top = max(category(d) for d in dtypes)
    return result_type(*(d for d in dtypes if category(d) == top))

_cupy = None
_current = "numpy"
_seed = None
_generators: dict = {}


def _load_cupy():
    """Import CuPy on first use and check that a GPU is visible."""
    global _cupy
    if _cupy is not None:
        return _cupy
    try:
        import cupy
    except ImportError as err:
        raise RuntimeError(
            f"tinynorm: the cupy backend needs CuPy, which is not installed ({err}). "
            f"Fix: {GPU_FIX} on a machine with an NVIDIA GPU and CUDA 12."
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDA driver missing or broken
        raise RuntimeError(
            f"tinynorm: CuPy is installed but no CUDA GPU is usable ({err}). "
            f"The cupy backend needs an NVIDIA GPU with its driver; {GPU_FIX} matches CUDA 12."
        ) from None
    if count == 0:
        raise RuntimeError(
            f"tinynorm: CuPy is installed but no CUDA GPU is visible. "
            f"The cupy backend needs an NVIDIA GPU; {GPU_FIX} matches CUDA 12."
        )
    _cupy = cupy
    return cupy


def gpu_available() -> bool:
    """True when the cupy backend can be used here."""
    try:
        _load_cupy()
    except RuntimeError:
        return False
    return True


def module(name: str):
    """The array module of backend ``name``."""
    if name == "numpy":
        return numpy
    if name == "cupy":
        return _load_cupy()
    raise ValueError(f"tinynorm.backend: unknown backend {name!r}; expected one of {BACKENDS}")


class use:
    """Select the backend new arrays are created on.

    Call it to switch for good, or use it as a context manager to switch for a block::

        with tn.backend.use("cupy"):
            x = tn.randn(4, 4)          # on the GPU
    """

    def __init__(self, name: str):
        global _current
        module(name)  # validates the name and, for cupy, the GPU
        self._previous, _current = _current, name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _current
        _current = self._previous
        return False


def current() -> str:
    """Name of the backend new arrays are created on: ``"numpy"`` or ``"cupy"``."""
    return _current


def xp():
    """The array module of the current backend."""
    return module(_current)


def _is_cupy(a) -> bool:
    """A CuPy array: its type comes from the ``cupy`` package (not ``cupyx``, whose sparse
    matrices are no arrays here and are refused as another library's)."""
    return type(a).__module__.partition(".")[0] == "cupy"


def device_of(a) -> str:
    """``"cpu"`` for a NumPy array, ``"cuda:N"`` for a CuPy array."""
    if _is_cupy(a):
        return f"cuda:{a.device.id}"
    return "cpu"


def array_module(*arrays, op: str = "op"):
    """NumPy or CuPy, read off the arrays themselves (Chainer's get_array_module).

    Non-arrays (Python scalars, None) are ignored. Arrays from both backends in one op
    raise a TypeError naming the op and both devices: tinynorm never copies silently.
    """
    found_cpu = found_gpu = None
    for a in arrays:
        if _is_cupy(a):
            found_gpu = a
        elif isinstance(a, numpy.ndarray):
            found_cpu = a
    if found_gpu is not None and found_cpu is not None:
        raise TypeError(
            f"{op}: inputs live on different devices: one on cpu (numpy, shape "
            f"{found_cpu.shape}) and one on {device_of(found_gpu)} (cupy, shape "
            f"{found_gpu.shape}). Move them with .to('cuda') or .cpu() first."
        )
    # _load_cupy, not _cupy: CuPy arrays made outside tinynorm arrive before tinynorm loaded CuPy
    return _load_cupy() if found_gpu is not None else numpy


def to_numpy(a):
    """A NumPy array with ``a``'s values (copied from the GPU when ``a`` is a CuPy array)."""
    if _is_cupy(a):
        return a.get()
    return numpy.asarray(a)


DEVICES = "'cpu', 'cuda' or 'cuda:N'"
_DEVICE = re.compile(r"(cpu|cuda)(:[0-9]+)?")


def backend_of(device: str | None, op: str = "tinynorm") -> str:
    """The backend whose arrays live on ``device``: ``"numpy"`` for ``"cpu"``, ``"cupy"`` for
    ``"cuda"`` or ``"cuda:N"`` (None: the current backend). Every device argument in
    tinynorm is read here; anything else is a ValueError naming ``op`` and the value.

    CuPy arrays are made on CuPy's current device: the ``N`` of ``"cuda:N"`` is accepted
    (it is what ``Tensor.device`` reports) but does not choose a GPU.
    """
    if device is None:
        return _current
    match = _DEVICE.fullmatch(str(device))
    if match is None:
        raise ValueError(f"{op}: unknown device {device!r}; expected {DEVICES}")
    return "numpy" if match.group(1) == "cpu" else "cupy"


def asarray(data, dtype=None, device: str | None = None):
    """``data`` as an array on ``device`` (``"cpu"``, ``"cuda"`` or ``"cuda:N"``, read by
    ``backend_of``; None: the current backend)."""
    if backend_of(device) == "numpy":
        return numpy.asarray(to_numpy(data), dtype=dtype)
    return _load_cupy().asarray(data, dtype=dtype)


def numpy_dtype(dtype):
    """``dtype`` (a NumPy dtype, a scalar type, or a name like "float32") as a NumPy dtype."""
    try:
        return numpy.dtype(dtype)
    except TypeError:
        raise TypeError(f"tinynorm: {dtype!r} is not a dtype") from None


def is_array(a) -> bool:
    return isinstance(a, numpy.ndarray) or _is_cupy(a)


def is_foreign_array(a) -> bool:
    """True for another library's array (a torch tensor, a JAX array): one that offers its
    data through DLPack or the array interfaces but is neither a NumPy nor a CuPy array nor a
    NumPy scalar. tinynorm converts none silently (``autograd.Function.apply`` refuses them)."""
    kind = type(a)
    foreign = _foreign_types.get(kind)
    if foreign is None:  # decided once per type: apply asks for every argument of every op
        foreign = not (is_array(a) or isinstance(a, numpy.generic)) and any(
            hasattr(kind, name) for name in ("__dlpack__", "__array_interface__",
                                             "__cuda_array_interface__", "__array__"))
        _foreign_types[kind] = foreign
    return foreign


_foreign_types: dict = {}


def foreign_to_numpy(value):
    """Another library's array (or anything with ``__array__``) as a NumPy array, read by
    duck typing (tinynorm imports no torch): a torch tensor is detached (a checkpoint may
    hold Parameters that require grad) and moved to the CPU, and a bfloat16 one, which NumPy
    has no dtype for, is widened to float32 (exactly, as PyTorch's ``copy_`` reads it).
    Raises what NumPy raises when the value cannot be read."""
    if is_foreign_array(value) and callable(getattr(value, "detach", None)):
        value = value.detach()
        if callable(getattr(value, "cpu", None)):
            value = value.cpu()
        if str(getattr(value, "dtype", "")).endswith("bfloat16"):
            value = value.float()
    return to_numpy(value)


def manual_seed(seed: int) -> None:
    """Seed the generators of every backend (randn, rand, dropout masks, init)."""
    global _seed
    _seed = int(seed)
    _generators.clear()


def generator(xp_module):
    """The random generator of a backend, made on first use from the last manual_seed."""
    name = "cupy" if xp_module is not numpy else "numpy"
    gen = _generators.get(name)
    if gen is None:
        gen = xp_module.random.default_rng(_seed)
        _generators[name] = gen
    return gen


def random(xp_module, shape, dtype):
    """Uniform samples on [0, 1) in ``dtype`` from the backend's generator. float16 is drawn
    in float32 (NumPy's generator has none; CuPy's draws float32 and casts), then rounded,
    and a value that rounds up to 1 is kept just below it."""
    if numpy.dtype(dtype) != float16:
        return generator(xp_module).random(shape, dtype=dtype)
    u = generator(xp_module).random(shape, dtype=float32).astype(float16)
    return xp_module.minimum(u, numpy.nextafter(float16.type(1), float16.type(0)), out=u)


def standard_normal(xp_module, shape, dtype):
    """Standard normal samples in ``dtype`` from the backend's generator; float16 is drawn in
    float32 and rounded, as ``random``."""
    if numpy.dtype(dtype) != float16:
        return generator(xp_module).standard_normal(shape, dtype=dtype)
    return generator(xp_module).standard_normal(shape, dtype=float32).astype(float16)


def erfc(a):
    """The complementary error function 1 − erf(a), computed without the subtraction, on
    either backend (SciPy on CPU, cupyx on GPU)."""
    if _is_cupy(a):
        import cupyx.scipy.special

        return cupyx.scipy.special.erfc(a)
    import scipy.special

    return scipy.special.erfc(a)


# ---- NumPy's BLAS threads ------------------------------------------------------------------
# tinynorm runs some ops on a few threads of its own (tinynorm.ops._rows), each calling BLAS
# for small products. OpenBLAS would start its own threads inside each call: on 2 cores that
# is 4 threads, and each call waits at OpenBLAS's barrier for a core that the other thread
# holds; with other processes on the machine, attention's forward+backward ran 2x slower.
# So while tinynorm's threads run, BLAS runs single-threaded (OpenBLAS's
# openblas_set_num_threads_local, 0.3.27+, found among the libraries NumPy loaded). Where the
# BLAS is not such an OpenBLAS (MKL, Accelerate, an old OpenBLAS) nothing is changed.
_blas_lock = threading.Lock()
_blas_setter = None
_blas_looked_up = False
_blas_users = 0
_blas_threads_before = None


def _openblas_thread_setter():
    """``openblas_set_num_threads_local`` of a loaded OpenBLAS (returns the previous count),
    or None. Looked up once, in /proc/self/maps (Linux)."""
    global _blas_setter, _blas_looked_up
    if not _blas_looked_up:
        _blas_looked_up = True
        try:
            with open("/proc/self/maps") as maps:
                paths = sorted({line.split()[-1] for line in maps
                                if "openblas" in line.lower() and "/" in line})
        except OSError:
            paths = []
        for path in paths:
            try:
                setter = ctypes.CDLL(path).openblas_set_num_threads_local
            except (OSError, AttributeError):
                continue
            setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
            _blas_setter = setter
            break
    return _blas_setter


@contextlib.contextmanager
def single_threaded_blas():
    """BLAS on one thread inside the block (see above), restored when the last of any
    overlapping blocks (from several threads) ends. A no-op where the BLAS has no setting."""
    global _blas_users, _blas_threads_before
    setter = _openblas_thread_setter()
    if setter is None:
        yield
        return
    with _blas_lock:
        if _blas_users == 0:
            _blas_threads_before = setter(1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                setter(_blas_threads_before)


def blas_threads() -> int | None:
    """How many threads NumPy's OpenBLAS uses now (None where it cannot be told)."""
    setter = _openblas_thread_setter()
    if setter is None:
        return None
    with _blas_lock:
        now = setter(1)
        setter(now)
    return now


_env = os.environ.get("TINYNORM_BACKEND", "").strip().lower()
if _env:
    if _env not in BACKENDS:
        raise ValueError(f"TINYNORM_BACKEND={_env!r}; expected one of {BACKENDS}")
    use(_env)


# ---- random state and array files, for checkpoints (tinynorm.serialization) ----------------
def get_rng_state() -> dict:
    """The state of the random generators as plain data: ``{"seed": the last manual_seed,
    "numpy": the PCG64 state dict (None if the generator was not made yet), "cupy": the
    cuRAND states as a NumPy int8 array (None likewise)}``.

    CuPy has no public API for its generator's state; this copies the device array that
    holds it (``bit_generator._state``) and raises if a CuPy version lacks it.
    """
    state = {"seed": _seed, "numpy": None, "cupy": None}
    if "numpy" in _generators:
        state["numpy"] = _generators["numpy"].bit_generator.state
    if "cupy" in _generators:
        raw = getattr(_generators["cupy"].bit_generator, "_state", None)
        if raw is None:
            raise RuntimeError("get_rng_state: this CuPy version does not expose its "
                               "generator's state (bit_generator._state)")
        state["cupy"] = raw.get()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``get_rng_state`` returned. Everything is checked before anything is
    changed: a malformed state raises ValueError and leaves the generators as they were."""
    seed = state.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ValueError(f"set_rng_state: seed must be an int or None, got {seed!r}")
    fresh = {}
    if state.get("numpy") is not None:
        saved = state["numpy"]
        if not isinstance(saved, dict) or saved.get("bit_generator") != "PCG64":
            raise ValueError("set_rng_state: the numpy state is not a PCG64 state dict")
        bit_generator = numpy.random.PCG64(0)
        try:
            bit_generator.state = saved
        except (TypeError, ValueError, KeyError, OverflowError) as err:
            raise ValueError(f"set_rng_state: malformed PCG64 state ({err})") from None
        fresh["numpy"] = numpy.random.Generator(bit_generator)
    if state.get("cupy") is not None:
        gen = _load_cupy().random.default_rng(seed)
        raw = getattr(gen.bit_generator, "_state", None)
        saved = numpy.asarray(state["cupy"])
        if raw is None or raw.shape != saved.shape or raw.dtype != saved.dtype:
            raise ValueError(f"set_rng_state: saved cuRAND state of shape {saved.shape} does "
                             f"not fit this GPU's generator")
        raw.set(saved)
        fresh["cupy"] = gen
    global _seed
    _seed = seed
    _generators.clear()
    _generators.update(fresh)


def save_npz(file, arrays: dict) -> None:
    """Write ``name -> array`` (moved to the host) to an open binary file as .npz."""
    numpy.savez(file, **{name: to_numpy(a) for name, a in arrays.items()})


def load_npz(path) -> dict:
    """Every array of the .npz at ``path``, read with ``allow_pickle=False`` so that
    loading runs no code; any damage raises the error that NumPy or zipfile finds."""
    with numpy.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
