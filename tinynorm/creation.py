"""Making tensors: tensor, zeros, ones, empty, full, randn, rand, arange and the *_like forms.

Defaults follow PyTorch: float32 unless a dtype is given, on the current backend unless a
device is given; random values come from the backend's generator (``tn.manual_seed``).
"""
from __future__ import annotations

from . import backend
from .tensor import Tensor


def _xp(device, op: str):
    """The array module of ``device`` (None: the current backend); ``op`` names the maker in
    errors."""
    return backend.module(backend.backend_of(device, op=op))


def _size(size):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    return tuple(int(s) for s in size)


def _dtype(dtype):
    return backend.DEFAULT_FLOAT if dtype is None else backend.numpy_dtype(dtype)


def _home(array) -> str | None:
    """Where an array goes when no device is named: a CuPy array stays on its GPU (as a CUDA
    tensor does in ``torch.tensor``); a NumPy array, like any other data that is not a
    tensor, goes to the current backend (as ``torch.tensor`` builds it on the default device
    that ``torch.set_default_device`` sets)."""
    device = backend.device_of(array)
    return None if device == "cpu" else device


def tensor(data, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A new tensor holding a copy of ``data``.

    dtype rules, as PyTorch: Python floats (and lists of them) become float32; NumPy/CuPy
    arrays and their scalars keep their dtype (float64 stays float64); integers and bools
    keep an integer or bool dtype, for indices, targets and masks.

    Device, when none is given: the current backend, for NumPy arrays too (under the cupy
    backend ``tensor(numpy_array)`` is on the GPU); a CuPy array stays where it is.

    Another library's array (a torch tensor) is read as ``backend.foreign_to_numpy`` reads
    it: its values, detached, bfloat16 as float32; then as a NumPy array.
    """
    if isinstance(data, Tensor):
        data = data.data
    elif backend.is_foreign_array(data):
        data = backend.foreign_to_numpy(data)
    dtype_ = None if dtype is None else backend.numpy_dtype(dtype)
    if backend.is_array(data):
        name = backend.backend_of(device or _home(data), op="tinynorm.tensor")
        arr = backend.module(name).array(backend.to_numpy(data) if name == "numpy" else data,
                                         dtype=dtype_)
    else:
        data, dtypes = _host_items(data)
        xp = _xp(device, "tinynorm.tensor")
        if dtype_ is None and all(d is not None for d in dtypes):
            # no elements at all (tensor([])): the default float, as PyTorch
            dtype_ = backend.promote_types(*dtypes) if dtypes else backend.DEFAULT_FLOAT
        try:
            arr = xp.array(data, dtype=dtype_)
        except (TypeError, ValueError) as err:
            raise ValueError(f"tinynorm.tensor: expected a number, an array or a nested "
                             f"sequence of equal-length sequences of numbers ({err})") from None
        if arr.dtype.kind not in "biufc":
            raise TypeError(f"tinynorm.tensor: expected numbers, got elements of "
                            f"{type(arr.reshape(-1)[0]).__name__ if arr.size else 'no type'}")
    return Tensor(arr, requires_grad=requires_grad)


# the dtype a Python number stands for in data, as in PyTorch: floats are the default float
_NUMBER_DTYPES = {bool: backend.bool_, int: backend.int64, float: backend.DEFAULT_FLOAT,
                  complex: backend.complex64}


def _host_items(data):
    """(data, dtypes): a nested list or tuple with each Tensor or array in it as a host
    array (as PyTorch, ``tensor([t1, t2])`` takes the values, without grad), and the dtype
    of each element (a tensor's, an array's or a NumPy scalar's own; a Python number's from
    _NUMBER_DTYPES; None for anything else), which ``backend.promote_types`` combines as
    PyTorch does: a float16 NumPy scalar and 2 make float16, ``[t_int64, 1.5]`` float32."""
    if isinstance(data, Tensor):
        return backend.to_numpy(data.data), [data.dtype]
    if backend.is_foreign_array(data):
        data = backend.foreign_to_numpy(data)
    if backend.is_array(data):
        return backend.to_numpy(data), [data.dtype]
    if isinstance(data, (list, tuple)):
        items = [_host_items(item) for item in data]
        return [item for item, _ in items], [d for _, dtypes in items for d in dtypes]
    dtype = getattr(data, "dtype", None)
    return data, [dtype if dtype is not None else _NUMBER_DTYPES.get(type(data))]


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """Like ``tensor`` but shares memory with an array (or is the Tensor itself) when its
    dtype and device already are the ones asked for, as ``torch.as_tensor``."""
    array = data.data if isinstance(data, Tensor) else data
    if backend.is_array(array):
        same_dtype = dtype is None or array.dtype == backend.numpy_dtype(dtype)
        same_device = backend.backend_of(device or _home(array), op="tinynorm.as_tensor") \
            == backend.backend_of(backend.device_of(array))
        if same_dtype and same_device:
            return data if isinstance(data, Tensor) else Tensor(data)
    return tensor(data, dtype=dtype, device=device)


def _filled(fill, size, dtype, device, requires_grad, op):
    xp = _xp(device, op)
    return Tensor(xp.full(_size(size), fill, dtype=_dtype(dtype)), requires_grad=requires_grad)


def zeros(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _filled(0, size, dtype, device, requires_grad, "tinynorm.zeros")


def ones(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _filled(1, size, dtype, device, requires_grad, "tinynorm.ones")


def full(size, fill_value, dtype=None, device=None, requires_grad=False) -> Tensor:
    """As torch.full, the dtype follows fill_value when none is given: bool, int64 or float32."""
    if dtype is None and isinstance(fill_value, (bool, int)):
        dtype = backend.bool_ if isinstance(fill_value, bool) else backend.int64
    return _filled(fill_value, (size,) if isinstance(size, int) else tuple(size), dtype, device,
                   requires_grad, "tinynorm.full")


def empty(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    return Tensor(_xp(device, "tinynorm.empty").empty(_size(size), dtype=_dtype(dtype)),
                  requires_grad=requires_grad)


def randn(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Standard normal samples."""
    xp = _xp(device, "tinynorm.randn")
    dt = _dtype(dtype)
    data = backend.standard_normal(xp, _size(size), dt)
    return Tensor(data, requires_grad=requires_grad)


def rand(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Uniform samples on [0, 1)."""
    xp = _xp(device, "tinynorm.rand")
    data = backend.random(xp, _size(size), _dtype(dtype))
    return Tensor(data, requires_grad=requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Like torch.arange: int64 for integer arguments, float32 otherwise."""
    if end is None:
        start, end = 0, start
    if dtype is None:
        ints = all(isinstance(v, int) for v in (start, end, step))
        dtype = backend.int64 if ints else backend.DEFAULT_FLOAT
    xp = _xp(device, "tinynorm.arange")
    return Tensor(xp.arange(start, end, step, dtype=backend.numpy_dtype(dtype)),
                  requires_grad=requires_grad)


def _like(fn, t: Tensor, dtype, requires_grad):
    """``fn`` (a maker taking a shape) with t's shape, device and, unless given, dtype."""
    return fn(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


def zeros_like(t, dtype=None, requires_grad=False):
    return _like(zeros, t, dtype, requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    return _like(ones, t, dtype, requires_grad)


def empty_like(t, dtype=None, requires_grad=False):
    return _like(empty, t, dtype, requires_grad)


def randn_like(t, dtype=None, requires_grad=False):
    return _like(randn, t, dtype, requires_grad)


def rand_like(t, dtype=None, requires_grad=False):
    return _like(rand, t, dtype, requires_grad)


def full_like(t, fill_value, dtype=None, requires_grad=False):
    return full(t.shape, fill_value, dtype=dtype or t.dtype, device=t.device,
                requires_grad=requires_grad)
