"""gradcheck: compare a hand-written backward with central finite differences in float64.

For each output ``out_k`` of ``fn`` a random, non-uniform upstream gradient ``G_k`` (standard
normal, never all ones: a ones gradient hides a backward that sums where it should weight)
turns the function into a scalar

    L_k(x) = sum(out_k(x) * G_k),   whose gradient is what backward(G_k) returns.

Each input Tensor that requires grad is checked against central differences
``(L_k(x + eps·d) − L_k(x − eps·d)) / 2eps``:

* small inputs (at most FULL_CHECK_MAX_ELEMENTS elements): d runs over every unit vector, so
  every element of the gradient is checked;
* large inputs: d runs over DIRECTIONS random unit vectors, comparing ``d·∇L`` (Chainer's
  check_backward); only when one disagrees are single elements checked, to name the worst.

A pair agrees when ``|numerical − analytical| <= atol + rtol·|numerical|`` (torch's rule).
Also checked: every gradient has its input's shape and dtype; two backward runs agree within
``nondet_tol``; a zero upstream gradient gives exactly zero gradients. Numerical values are
computed with the checked inputs cast to float64, on copies: the caller's arrays are never
modified.
"""
from __future__ import annotations

import warnings

from .. import backend
from ..autograd import enable_grad, no_grad
from ..tensor import Tensor
from .compare import format_index

np = backend.module("numpy")  # host-side random numbers and comparison only

FULL_CHECK_MAX_ELEMENTS = 64  # inputs up to this size get every gradient element checked
DIRECTIONS = 3  # random directions for larger inputs
LOCALIZE_MAX_ELEMENTS = 256  # elements checked one by one to name the worst after a failure


class GradcheckError(AssertionError):
    """A backward disagrees with finite differences (or fails a structural check)."""


def gradcheck(fn, inputs, *, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              raise_exception: bool = True, nondet_tol: float = 0.0, seed: int = 0) -> bool:
    """True when ``fn``'s backward matches finite differences; see the module docstring.

    ``inputs`` is a Tensor or a tuple of arguments (Tensors and other values); ``fn(*inputs)``
    returns a Tensor or a tuple (or list) of Tensors. Inputs that are Tensors with ``requires_grad``
    are checked (use float64: other dtypes get a warning). On failure raises GradcheckError
    whose message names the input, the worst element, both values, the errors and the
    tolerance; with ``raise_exception=False`` returns False instead. ``seed`` fixes the
    random upstream gradients and directions, so a failure reproduces.
    """
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    checked = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input is a Tensor with requires_grad=True; nothing to "
                         "check")
    for i in checked:
        if args[i].dtype != backend.float64:
            warnings.warn(
                f"gradcheck: input {i} (shape {tuple(args[i].shape)}) has dtype {args[i].dtype}; "
                "its backward runs in that precision and may miss tolerances set for float64. "
                "Pass float64 inputs.", UserWarning, stacklevel=2)
    try:
        _Check(fn, args, checked, eps, atol, rtol, nondet_tol, seed).run()
    except GradcheckError:
        if raise_exception:
            raise
        return False
    return True


def _outputs(result) -> tuple:
    outs = tuple(result) if isinstance(result, (tuple, list)) else (result,)
    for k, o in enumerate(outs):
        if not isinstance(o, Tensor):
            raise TypeError(f"gradcheck: fn must return a Tensor or a tuple of Tensors; "
                            f"output {k} is a {type(o).__name__}")
    return outs


class _Check:
    """One gradcheck call: the inputs, the random upstream gradients, and the checks."""

    def __init__(self, fn, args, checked, eps, atol, rtol, nondet_tol, seed):
        self.fn, self.args, self.checked = fn, args, checked
        self.eps, self.atol, self.rtol, self.nondet_tol = eps, atol, rtol, nondet_tol
        self.rng = np.random.default_rng(seed)
        self.base = {i: backend.to_numpy(args[i].data).astype(np.float64) for i in checked}
        with no_grad():
            outs = _outputs(fn(*self._arguments(self._as_float64(self.base))))
        self.float_outputs = [k for k, o in enumerate(outs) if o.dtype.kind == "f"]
        self.out_shapes = [tuple(o.shape) for o in outs]
        self.upstream = {k: self.rng.standard_normal(self.out_shapes[k])
                         for k in self.float_outputs}
        self.numerical = {}  # (input, flat index) -> [∂L_k/∂x for each float output k]

    # ---- evaluating fn ------------------------------------------------------------------
    def _arguments(self, arrays: dict, requires_grad: bool = False) -> list:
        """``args`` with each checked Tensor replaced by a fresh leaf holding ``arrays[i]``."""
        args = list(self.args)
        for i, arr in arrays.items():
            args[i] = Tensor(arr, requires_grad=requires_grad)
        return args

    def _as_float64(self, host_arrays: dict) -> dict:
        """Copies of the host arrays on the inputs' device, in float64."""
        return {i: backend.array_module(self.args[i].data).asarray(a, dtype=backend.float64).copy()
                for i, a in host_arrays.items()}

    def _losses(self, host_arrays: dict):
        """[L_k(x) for each float output k], with the checked inputs set to ``host_arrays``."""
        with no_grad():
            outs = _outputs(self.fn(*self._arguments(self._as_float64(host_arrays))))
        return np.array([float((backend.to_numpy(outs[k].data).astype(np.float64)
                                * self.upstream[k]).sum()) for k in self.float_outputs])

    def _analytical(self, k: int, upstream) -> dict:
        """{input index: host gradient of sum(out_k * upstream)} from one fresh backward."""
        leaves = {i: self.args[i].data.copy() for i in self.checked}
        args = self._arguments(leaves, requires_grad=True)
        with enable_grad():  # gradcheck may be called inside a no_grad block
            out = _outputs(self.fn(*args))[k]
        if out.requires_grad:
            xp = backend.array_module(out.data)
            try:
                out.backward(xp.asarray(upstream, dtype=out.dtype))
            except RuntimeError as err:
                raise GradcheckError(f"gradcheck: backward of output {k} (shape "
                                     f"{tuple(out.shape)}) raised: {err}") from err
        grads = {}
        for i in self.checked:
            g = args[i].grad
            x = self.args[i]
            if g is None:  # no path from this input to the output: its gradient is zero
                grads[i] = np.zeros(x.shape)
                continue
            if tuple(g.shape) != tuple(x.shape) or g.dtype != x.dtype:
                raise GradcheckError(
                    f"gradcheck: the gradient of input {i} has shape {tuple(g.shape)} and dtype "
                    f"{g.dtype}; the input has shape {tuple(x.shape)} and dtype {x.dtype}")
            grads[i] = backend.to_numpy(g).astype(np.float64)
        return grads

    # ---- the checks -----------------------------------------------------------------------
    def run(self) -> None:
        for k in self.float_outputs:
            first = self._analytical(k, self.upstream[k])
            self._check_reproducible(k, first, self._analytical(k, self.upstream[k]))
            self._check_zero_upstream(k)
            for i in self.checked:
                if self.base[i].size <= FULL_CHECK_MAX_ELEMENTS:
                    self._check_elements(k, i, first[i], range(self.base[i].size), every=True)
                else:
                    self._check_directions(k, i, first[i])

    def _where(self, k: int, i: int) -> str:
        x = self.args[i]
        return (f"input {i} (shape {tuple(x.shape)}, dtype {x.dtype}), output {k} "
                f"(shape {self.out_shapes[k]}) with a random normal upstream gradient")

    def _check_reproducible(self, k, first, second) -> None:
        for i in self.checked:
            diff = np.abs(first[i] - second[i])
            if diff.size and not diff.max() <= self.nondet_tol:
                worst = int(np.argmax(np.where(np.isnan(diff), np.inf, diff)))
                raise GradcheckError(
                    f"gradcheck: backward is not reproducible for {self._where(k, i)}:\n"
                    f"  two runs differ at index {format_index(worst, diff.shape)}: "
                    f"{float(first[i].flat[worst])!r} vs {float(second[i].flat[worst])!r} "
                    f"(|diff| {diff.flat[worst]:.3e} > nondet_tol {self.nondet_tol:g})")

    def _check_zero_upstream(self, k) -> None:
        grads = self._analytical(k, np.zeros(self.out_shapes[k]))
        for i, g in grads.items():
            nonzero = g != 0
            if nonzero.any():
                worst = int(np.argmax(nonzero))
                raise GradcheckError(
                    f"gradcheck: a zero upstream gradient must give a zero gradient, but for "
                    f"{self._where(k, i).replace('a random normal', 'a zero')}:\n"
                    f"  {int(nonzero.sum())} of {g.size} elements are not zero; e.g. index "
                    f"{format_index(worst, g.shape)} holds {float(g.flat[worst])!r}")

    def _numerical_element(self, k, i, flat) -> float:
        """∂L_k/∂x_i[flat] by central differences (one pair of evaluations serves every k)."""
        if (i, flat) not in self.numerical:
            plus, minus = dict(self.base), dict(self.base)
            plus[i], minus[i] = self.base[i].copy(), self.base[i].copy()
            plus[i].flat[flat] += self.eps
            minus[i].flat[flat] -= self.eps
            self.numerical[i, flat] = (self._losses(plus) - self._losses(minus)) / (2 * self.eps)
        return float(self.numerical[i, flat][self.float_outputs.index(k)])

    def _check_elements(self, k, i, analytical, flats, every: bool, header: str = "") -> None:
        """Compare single elements; raise naming the worst one that exceeds the tolerance."""
        worst = None  # (ratio, flat, numerical)
        failing = 0
        for flat in flats:
            numerical = self._numerical_element(k, i, flat)
            error = abs(numerical - analytical.flat[flat])
            allowed = self.atol + self.rtol * abs(numerical)
            if not error <= allowed:
                failing += 1
                ratio = error / allowed if allowed > 0 else np.inf
                if worst is None or not ratio <= worst[0]:
                    worst = (ratio, flat, numerical)
        if worst is None:
            if header:  # the directional check failed but no single element we tried does
                raise GradcheckError(header + "  (no single element checked exceeds the tolerance)")
            return
        _, flat, numerical = worst
        count = len(flats)
        scope = "all" if every else "sampled"
        raise GradcheckError(
            (header or f"gradcheck: backward disagrees with finite differences for "
                       f"{self._where(k, i)}:\n")
            + f"  failing elements: {failing} of {count} ({scope} elements checked)\n"
            + _pair_message(f"worst element at index {format_index(flat, analytical.shape)}",
                            numerical, analytical.flat[flat], self.atol, self.rtol, self.eps))

    def _check_directions(self, k, i, analytical) -> None:
        position = self.float_outputs.index(k)
        for d in range(DIRECTIONS):
            v = self.rng.standard_normal(self.base[i].shape)
            v /= np.linalg.norm(v)
            plus, minus = dict(self.base), dict(self.base)
            plus[i], minus[i] = self.base[i] + self.eps * v, self.base[i] - self.eps * v
            difference = self._losses(plus)[position] - self._losses(minus)[position]
            numerical = float(difference) / (2 * self.eps)
            directional = float((analytical * v).sum())
            if abs(numerical - directional) <= self.atol + self.rtol * abs(numerical):
                continue
            header = (f"gradcheck: backward disagrees with finite differences for "
                      f"{self._where(k, i)}:\n"
                      + _pair_message(f"directional derivative along random unit direction "
                                      f"{d + 1} of {DIRECTIONS}", numerical, directional,
                                      self.atol, self.rtol, self.eps))
            self._check_elements(k, i, analytical, self._elements_to_localize(analytical),
                                 every=analytical.size <= LOCALIZE_MAX_ELEMENTS,
                                 header=header + "\n")

    def _elements_to_localize(self, analytical) -> list:
        """Which elements to check one by one after a directional failure: all of a
        moderate input; else the largest analytical values and a random sample."""
        n = analytical.size
        if n <= LOCALIZE_MAX_ELEMENTS:
            return list(range(n))
        largest = np.argsort(-np.abs(analytical.ravel()))[:LOCALIZE_MAX_ELEMENTS // 2]
        sample = self.rng.choice(n, LOCALIZE_MAX_ELEMENTS // 2, replace=False)
        return sorted({int(f) for f in largest} | {int(f) for f in sample})


def _pair_message(what: str, numerical: float, analytical: float, atol, rtol, eps) -> str:
    numerical, analytical = float(numerical), float(analytical)
    error = abs(numerical - analytical)
    relative = error / abs(numerical) if numerical != 0 else np.inf
    return (f"  {what}:\n"
            f"    numerical  = {numerical!r}  (central difference, eps={eps:g})\n"
            f"    analytical = {analytical!r}  (backward)\n"
            f"    abs error  = {error:.3e}, rel error = {relative:.3e}\n"
            f"    tolerance  : atol + rtol*|numerical| = {atol:g} + {rtol:g}*{abs(numerical):.3e}"
            f" = {atol + rtol * abs(numerical):.3e}")
