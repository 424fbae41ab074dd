"""assert_close: compare Tensors, arrays or scalars, with a message that names the worst element.

The default tolerances per dtype are PyTorch's (``torch.testing.assert_close``); when the two
sides have different dtypes the looser pair applies. Values are compared on the host, so
NumPy and CuPy arrays (and Tensors on either device) can be mixed.
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
}
EXACT = (0.0, 0.0)  # integers and bools must match exactly


def to_host(value):
    """A host (NumPy) array of a Tensor, a NumPy/CuPy array, or a Python scalar or list."""
    if isinstance(value, Tensor):
        value = value.data
    return np.asarray(backend.to_numpy(value)) if backend.is_array(value) else np.asarray(value)


def default_tolerances(*dtypes):
    """(rtol, atol) for comparing arrays of ``dtypes``: the loosest of their defaults."""
    pairs = [DEFAULT_TOLERANCES.get(np.dtype(d), EXACT) for d in dtypes]
    return max(p[0] for p in pairs), max(p[1] for p in pairs)


def format_index(flat_index: int, shape) -> tuple:
    """The multi-index of ``flat_index`` in ``shape`` as a tuple of Python ints."""
    return tuple(int(i) for i in np.unravel_index(int(flat_index), shape)) if shape else ()


def describe_mismatch(actual, expected, rtol: float, atol: float, *,
                      actual_name="actual", expected_name="expected") -> str | None:
    """None when ``|actual - expected| <= atol + rtol·|expected|`` everywhere (NaN never
    matches, equal infinities do); otherwise a message naming the worst element.

    "Worst" is the element whose error most exceeds what it is allowed, i.e. the largest
    ``|actual - expected| / (atol + rtol·|expected|)``.
    """
    a = actual.astype(np.float64) if actual.dtype.kind != "c" else actual
    e = expected.astype(np.float64) if expected.dtype.kind != "c" else expected
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        abs_err = np.abs(a - e)
        abs_err = np.where(a == e, 0.0, abs_err)  # equal infinities: inf - inf is nan
        abs_err = np.where(np.isnan(abs_err), np.inf, abs_err)
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
    return (
        f"mismatched elements: {int(bad.sum())} of {bad.size} "
        f"({100.0 * bad.sum() / bad.size:.1f}%)\n"
        f"worst element at index {index}:\n"
        f"  {actual_name:<10} = {actual.flat[worst].item()!r}\n"
        f"  {expected_name:<10} = {expected.flat[worst].item()!r}\n"
        f"  abs error  = {abs_err.flat[worst]:.3e}, rel error = {rel_err:.3e}\n"
        f"  allowed    : atol + rtol*|{expected_name}| = {atol:g} + {rtol:g}*"
        f"{abs(e.flat[worst]):.3e} = {allowed.flat[worst]:.3e}"
    )


def assert_close(actual, expected, *, rtol: float | None = None, atol: float | None = None) -> None:
    """Raise AssertionError unless ``|actual - expected| <= atol + rtol·|expected|`` elementwise.

    ``actual`` and ``expected`` are Tensors, NumPy or CuPy arrays, or Python scalars/lists;
    their shapes must be equal (no broadcasting, as PyTorch). Unset tolerances take PyTorch's
    defaults for the dtypes compared: float16 rtol 1e-3 atol 1e-5; float32 rtol 1.3e-6 atol
    1e-5; float64 rtol 1e-7 atol 1e-7; integers and bools exactly. The message names a shape
    mismatch, or the worst element's index, both values, abs/rel error and the tolerances.
    """
    a, e = to_host(actual), to_host(expected)
    if a.shape != e.shape:
        raise AssertionError(
            f"assert_close: shapes differ: actual has shape {a.shape}, expected has shape "
            f"{e.shape} (dtypes {a.dtype} and {e.dtype})"
        )
    default_rtol, default_atol = default_tolerances(a.dtype, e.dtype)
    rtol = default_rtol if rtol is None else float(rtol)
    atol = default_atol if atol is None else float(atol)
    message = describe_mismatch(a, e, rtol, atol)
    if message is not None:
        raise AssertionError(
            f"assert_close: values are not close (shape {a.shape}, dtypes {a.dtype} and "
            f"{e.dtype}, rtol={rtol:g}, atol={atol:g})\n{message}"
        )
