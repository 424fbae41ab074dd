"""assert_close: compare Tensors, arrays or scalars, with a message that names the worst element.

As ``torch.testing.assert_close``: the default tolerances per dtype are PyTorch's, shapes must
match, dtypes must match (``check_dtype``), NaN equals NaN only with ``equal_nan``, rtol and
atol are given together or not at all, and ``msg`` replaces the message. Deliberately unlike
it: values are compared on the host, so NumPy and CuPy arrays, Tensors on either device and
Python scalars or lists can be mixed; a scalar or list has no dtype of its own to check.
"""
from __future__ import annotations

from .. import backend
from ..tensor import Tensor

np = backend.module("numpy")  # host-side comparison only; see backend.to_numpy

# dtype -> (rtol, atol), as torch.testing.assert_close
DEFAULT_TOLERANCES = {
    backend.float16: (1e-3, 1e-5),
    backend.float32: (1.3e-6, 1e-5),
    backend.float64: (1e-7, 1e-7),
    np.dtype("complex64"): (1.3e-6, 1e-5),
    np.dtype("complex128"): (1e-7, 1e-7),
}
EXACT = (0.0, 0.0)  # integers and bools must match exactly


def to_host(value):
    """A host (NumPy) array of a Tensor, a NumPy/CuPy array, or a Python scalar or list."""
    if isinstance(value, Tensor):
        value = value.data
    return np.asarray(backend.to_numpy(value)) if backend.is_array(value) else np.asarray(value)


def _has_dtype(value) -> bool:
    """Tensors, arrays and NumPy scalars carry a dtype; Python scalars and lists do not."""
    return isinstance(value, (Tensor, np.generic)) or backend.is_array(value)


def default_tolerances(*dtypes):
    """(rtol, atol) for comparing arrays of ``dtypes``: the loosest of their defaults."""
    pairs = [DEFAULT_TOLERANCES.get(np.dtype(d), EXACT) for d in dtypes]
    return max(p[0] for p in pairs), max(p[1] for p in pairs)


def format_index(flat_index: int, shape) -> tuple:
    """The multi-index of ``flat_index`` in ``shape`` as a tuple of Python ints."""
    return tuple(int(i) for i in np.unravel_index(int(flat_index), shape)) if shape else ()


def describe_mismatch(actual, expected, rtol: float, atol: float, *,
                      actual_name="actual", expected_name="expected",
                      equal_nan: bool = False) -> str | None:
    """None when ``|actual - expected| <= atol + rtol·|expected|`` everywhere (equal
    infinities match; NaN matches NaN only with ``equal_nan``); otherwise a message naming the
    worst element.

    "Worst" is the element whose error most exceeds what it is allowed, i.e. the largest
    ``|actual - expected| / (atol + rtol·|expected|)``.
    """
    a = actual.astype(np.float64) if actual.dtype.kind != "c" else actual
    e = expected.astype(np.float64) if expected.dtype.kind != "c" else expected
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        both_nan = np.isnan(a) & np.isnan(e)
        abs_err = np.abs(a - e)
        abs_err = np.where(a == e, 0.0, abs_err)  # equal infinities: inf - inf is nan
        abs_err = np.where(np.isnan(abs_err), np.inf, abs_err)
        if equal_nan:
            abs_err = np.where(both_nan, 0.0, abs_err)
        allowed = atol + rtol * np.abs(e)
        allowed = np.where(np.isnan(allowed), 0.0, allowed)  # NaN matches nothing
        bad = abs_err > allowed
        if not bad.any():
            return None
        ratio = np.where(allowed > 0, abs_err / np.where(allowed > 0, allowed, 1), np.inf)
        ratio = np.where(bad, ratio, -1.0)
        worst = int(np.argmax(ratio))
        rel_err = abs_err.flat[worst] / abs(e.flat[worst]) if e.flat[worst] != 0 else np.inf
    index = format_index(worst, actual.shape)
    nan_note = ("\n  note: NaN matches NaN only with equal_nan=True"
                if not equal_nan and (both_nan & bad).any() else "")
    return (
        f"mismatched elements: {int(bad.sum())} of {bad.size} "
        f"({100.0 * bad.sum() / bad.size:.1f}%)\n"
        f"worst element at index {index}:\n"
        f"  {actual_name:<10} = {actual.flat[worst].item()!r}\n"
        f"  {expected_name:<10} = {expected.flat[worst].item()!r}\n"
        f"  abs error  = {abs_err.flat[worst]:.3e}, rel error = {rel_err:.3e}\n"
        f"  allowed    : atol + rtol*|{expected_name}| = {atol:g} + {rtol:g}*"
        f"{abs(e.flat[worst]):.3e} = {allowed.flat[worst]:.3e}"
        + nan_note
    )


def assert_close(actual, expected, *, rtol: float | None = None, atol: float | None = None,
                 equal_nan: bool = False, check_dtype: bool = True, msg=None) -> None:
    """Raise AssertionError unless ``|actual - expected| <= atol + rtol·|expected|`` elementwise.

    ``actual`` and ``expected`` are Tensors, NumPy or CuPy arrays, or Python scalars/lists;
    their shapes must be equal (no broadcasting, as PyTorch), and so must their dtypes unless
    ``check_dtype=False`` or a side is a Python scalar or list. Unset tolerances (give both or
    neither) take PyTorch's defaults for the dtypes compared, the looser where they differ:
    float16 rtol 1e-3 atol 1e-5; float32 and complex64 rtol 1.3e-6 atol 1e-5; float64 and
    complex128 rtol 1e-7 atol 1e-7; integers and bools exactly. NaN matches NaN only with
    ``equal_nan=True``. The message names a shape or dtype mismatch, or the worst element's
    index, both values, abs/rel error and the tolerances; ``msg`` (a string, or a function of
    that message) replaces it.
    """
    if (rtol is None) != (atol is None):
        given, missing = ("rtol", "atol") if atol is None else ("atol", "rtol")
        raise ValueError(f"assert_close: {given} given without {missing}; give both or neither "
                         f"(as PyTorch), so that neither silently takes its default")
    if rtol is not None and not (float(rtol) >= 0 and float(atol) >= 0):
        raise ValueError(f"assert_close: rtol and atol must be >= 0; got rtol={rtol}, "
                         f"atol={atol}")
    a, e = to_host(actual), to_host(expected)
    if a.shape != e.shape:
        message = (f"assert_close: shapes differ: actual has shape {a.shape}, expected has "
                   f"shape {e.shape} (dtypes {a.dtype} and {e.dtype})")
    elif check_dtype and a.dtype != e.dtype and _has_dtype(actual) and _has_dtype(expected):
        message = (f"assert_close: dtypes differ: actual has dtype {a.dtype}, expected has "
                   f"dtype {e.dtype} (pass check_dtype=False to compare the values)")
    else:
        if rtol is None:
            rtol, atol = default_tolerances(a.dtype, e.dtype)
        rtol, atol = float(rtol), float(atol)
        mismatch = describe_mismatch(a, e, rtol, atol, equal_nan=equal_nan)
        if mismatch is None:
            return
        message = (f"assert_close: values are not close (shape {a.shape}, dtypes {a.dtype} and "
                   f"{e.dtype}, rtol={rtol:g}, atol={atol:g})\n{mismatch}")
    if msg is not None:
        message = msg(message) if callable(msg) else str(msg)
    raise AssertionError(message)
