"""gradcheck: compare a hand-written backward with central finite differences in float64.

For each output ``out_k`` of ``fn`` a random, non-uniform upstream gradient ``G_k`` (standard
normal, never all ones: a ones gradient hides a backward that sums where it should weight)
turns the function into a scalar

    L_k(x) = sum(out_k(x) * G_k),   whose gradient is what backward(G_k) returns.

Each input Tensor that requires grad is checked against central differences
``(L_k(x + eps·d) − L_k(x − eps·d)) / 2eps`` (eps absolute, as PyTorch's):

* small inputs (at most FULL_CHECK_MAX_ELEMENTS elements): d runs over every unit vector, so
  every element of the gradient is checked;
* large inputs (or every input with ``fast_mode=True``): d runs over DIRECTIONS random unit
  vectors, comparing ``d·∇L`` (Chainer's check_backward, PyTorch's fast mode); only when one
  disagrees are single elements checked, to name the worst.

A pair agrees when ``|numerical − analytical| <= atol + rtol·|numerical|`` (torch's rule).
Also checked, each failure saying what it found:

* every gradient has its input's shape and dtype;
* two backward runs agree within ``nondet_tol``; so does a run with another call of ``fn``
  (on other values) between the forward and its backward — a backward that reads state kept
  outside ``ctx`` (on the class, a global) fails this;
* a zero upstream gradient gives exactly zero gradients (``check_undefined_grad``: tinynorm's
  engine hands a Function zeros for outputs that received no gradient);
* neither ``fn`` nor its backward writes into its inputs, and backward does not write into its
  upstream gradient (the accumulation rule of ``tinynorm.autograd``).

``fn`` always receives copies of the Tensor and array arguments: the caller's are never
modified. Numerical values are computed with the checked inputs cast to float64.
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

# PyTorch's options that need what tinynorm does not have: turning one on is refused, by name
UNSUPPORTED = {
    "check_forward_ad": "tinynorm has reverse-mode autodiff only",
    "check_batched_grad": "tinynorm has no vmap",
    "check_batched_forward_grad": "tinynorm has no vmap and no forward-mode autodiff",
    "masked": "tinynorm has no sparse tensors",
}


class GradcheckError(RuntimeError, AssertionError):
    """A backward disagrees with finite differences (or fails a structural check).

    A RuntimeError, as PyTorch's ``torch.autograd.gradcheck.GradcheckError``, and also an
    AssertionError, so that pytest reports it as a failed check."""


def gradcheck(fn, inputs, *, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              raise_exception: bool = True, nondet_tol: float = 0.0,
              check_undefined_grad: bool = True, check_grad_dtypes: bool = False,
              check_batched_grad: bool = False, check_batched_forward_grad: bool = False,
              check_forward_ad: bool = False, check_backward_ad: bool = True,
              fast_mode: bool = False, masked: bool | None = None, seed: int = 0) -> bool:
    """True when ``fn``'s backward matches finite differences; see the module docstring.

    ``inputs`` is a Tensor or a tuple of arguments (Tensors and other values); ``fn(*inputs)``
    returns a Tensor or a tuple (or list) of Tensors: real floating outputs are checked (one
    that does not require grad as having zero gradients; PyTorch skips it), integer and bool
    ones skipped, complex ones refused (tinynorm has no complex autograd).
    Inputs that are Tensors with ``requires_grad`` are checked (use float64: other dtypes get
    a warning); the others are passed through. On failure raises GradcheckError whose message
    names the input, the output, the worst element, both values, the errors and the
    tolerance; with ``raise_exception=False`` returns False instead. ``seed`` (not in
    PyTorch) fixes the random upstream gradients and directions, so a failure reproduces.

    PyTorch's keywords keep PyTorch's defaults. ``check_undefined_grad=False`` skips the
    zero-upstream check; ``fast_mode=True`` checks random directions for every input (the
    default checks every element of inputs up to FULL_CHECK_MAX_ELEMENTS). Gradient dtypes are
    always checked (the engine refuses a wrong one), whatever ``check_grad_dtypes`` says.
    ``check_forward_ad``, ``check_batched_grad``, ``check_batched_forward_grad`` and
    ``masked`` can only be off (NotImplementedError says why), and ``check_backward_ad=False``
    would leave nothing to check.
    """
    for name, value in (("check_forward_ad", check_forward_ad),
                        ("check_batched_grad", check_batched_grad),
                        ("check_batched_forward_grad", check_batched_forward_grad),
                        ("masked", masked)):
        if value:
            raise NotImplementedError(f"gradcheck: {name}=True is not supported: "
                                      f"{UNSUPPORTED[name]}")
    if not check_backward_ad:
        raise NotImplementedError("gradcheck: check_backward_ad=False leaves nothing to check "
                                  "(tinynorm has reverse-mode autodiff only)")
    if not eps > 0:
        raise ValueError(f"gradcheck: eps must be positive; got {eps!r}")
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
        check = _Check(fn, args, checked, eps, atol, rtol, nondet_tol, seed)
        if not check.float_outputs:
            warnings.warn("gradcheck: fn has no floating-point output (integer and bool "
                          "outputs have no gradient): nothing was compared", UserWarning,
                          stacklevel=2)
        check.run(zero_upstream=check_undefined_grad, fast_mode=fast_mode)
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
        if o.dtype.kind == "c":
            raise TypeError(f"gradcheck: output {k} has dtype {o.dtype}; tinynorm has no "
                            f"complex autograd, so gradcheck checks real outputs only (return "
                            f"the real and imaginary parts as two outputs)")
    return outs


def _copy(value):
    """A copy of a Tensor (as a new leaf) or of an array; any other value as it is."""
    if isinstance(value, Tensor):
        return Tensor(value.data.copy())
    return value.copy() if backend.is_array(value) else value


def _array_of(value):
    return value.data if isinstance(value, Tensor) else value


def _same(a, b):
    """Elementwise a == b on host arrays, NaN equal to NaN."""
    same = a == b
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        same = same | (np.isnan(a) & np.isnan(b))
    return same


def _change(now, before) -> str | None:
    """Where host array ``now`` first differs from ``before``; None if nowhere."""
    if now.shape != before.shape:
        return f"its shape is now {now.shape}"
    same = _same(now, before)
    if same.all():
        return None
    at = int(np.argmin(same))
    return (f"at index {format_index(at, now.shape)} it holds {now.flat[at].item()!r}, was "
            f"{before.flat[at].item()!r}")


class _Check:
    """One gradcheck call: the inputs, the random upstream gradients, and the checks."""

    def __init__(self, fn, args, checked, eps, atol, rtol, nondet_tol, seed):
        self.fn, self.args, self.checked = fn, args, checked
        self.eps, self.atol, self.rtol, self.nondet_tol = eps, atol, rtol, nondet_tol
        self.rng = np.random.default_rng(seed)
        self.base = {i: backend.to_numpy(args[i].data).astype(np.float64) for i in checked}
        call = self._arguments(self._as_float64(self.base))
        with no_grad():
            outs = _outputs(fn(*call))
        self._check_unmodified(call, "fn")
        self.float_outputs = [k for k, o in enumerate(outs) if o.dtype.kind == "f"]
        self.out_shapes = [tuple(o.shape) for o in outs]
        self.upstream = {k: self.rng.standard_normal(self.out_shapes[k])
                         for k in self.float_outputs}
        self.numerical = {}  # (input, flat index) -> [∂L_k/∂x for each float output k]
        self.without_graph = set()  # outputs that did not require grad: no backward ran

    # ---- evaluating fn ------------------------------------------------------------------
    def _arguments(self, arrays: dict, requires_grad: bool = False) -> list:
        """Copies of ``args``, each checked Tensor replaced by a fresh leaf on ``arrays[i]``."""
        args = [_copy(a) for a in self.args]
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

    def _forward_elsewhere(self) -> None:
        """fn once more, its result dropped, on other values (every float Tensor argument
        rolled by one element): what a training loop may do between a forward and its
        backward. Where fn fails on those values, there is nothing to learn from it."""
        args = self._arguments({})
        for i, a in enumerate(args):
            if isinstance(a, Tensor) and a.dtype.kind == "f":
                rolled = backend.array_module(a.data).roll(a.data.ravel(), 1).reshape(a.shape)
                args[i] = Tensor(rolled, requires_grad=i in self.checked)
        try:
            with enable_grad(), warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                self.fn(*args)
        except Exception:  # noqa: BLE001 — a probe only; the other checks run fn as given
            pass

    def _analytical(self, k: int, upstream, between=None) -> dict:
        """{input index: host gradient of sum(out_k * upstream)} from one fresh backward;
        ``between()`` runs after the forward, before the backward."""
        args = self._arguments({i: self.args[i].data.copy() for i in self.checked},
                               requires_grad=True)
        with enable_grad():  # gradcheck may be called inside a no_grad block
            out = _outputs(self.fn(*args))[k]
        self._check_unmodified(args, "fn")
        if between is not None:
            between()
        if out.requires_grad:
            grad_out = backend.array_module(out.data).asarray(upstream, dtype=out.dtype).copy()
            try:
                out.backward(grad_out)
            except RuntimeError as err:
                raise GradcheckError(f"gradcheck: backward of output {k} (shape "
                                     f"{tuple(out.shape)}) raised: {err}") from err
            change = _change(backend.to_numpy(grad_out), upstream.astype(grad_out.dtype))
            if change:
                raise GradcheckError(
                    f"gradcheck: the backward of output {k} (shape {self.out_shapes[k]}) "
                    f"modified its upstream gradient in place: {change}. Gradients in the "
                    f"graph are shared (summed into others, kept as a leaf's .grad): return a "
                    f"new array (grad_out * 2, never grad_out *= 2)")
            self._check_unmodified(args, f"the backward of output {k}")
        else:
            self.without_graph.add(k)
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
    def run(self, zero_upstream: bool, fast_mode: bool) -> None:
        for k in self.float_outputs:
            first = self._analytical(k, self.upstream[k])
            self._check_same(k, first, self._analytical(k, self.upstream[k]), between=False)
            self._check_same(k, first, self._analytical(k, self.upstream[k],
                                                        self._forward_elsewhere), between=True)
            if zero_upstream:
                self._check_zero_upstream(k)
            for i in self.checked:
                if not fast_mode and self.base[i].size <= FULL_CHECK_MAX_ELEMENTS:
                    self._check_elements(k, i, first[i], range(self.base[i].size), every=True)
                else:
                    self._check_directions(k, i, first[i])

    def _where(self, k: int, i: int) -> str:
        x = self.args[i]
        return (f"input {i} (shape {tuple(x.shape)}, dtype {x.dtype}), output {k} "
                f"(shape {self.out_shapes[k]}) with a random normal upstream gradient")

    def _check_unmodified(self, args, who: str) -> None:
        """Raise when ``who`` wrote into one of the argument copies fn was given."""
        for i, (given, original) in enumerate(zip(args, self.args)):
            if not backend.is_array(_array_of(given)):
                continue
            now, before = backend.to_numpy(_array_of(given)), backend.to_numpy(_array_of(original))
            change = _change(now, before.astype(now.dtype))
            if change:
                raise GradcheckError(
                    f"gradcheck: {who} modified input {i} (shape {before.shape}, dtype "
                    f"{before.dtype}) in place: {change}. An op must not write into its "
                    f"inputs: the caller's tensor would change (gradcheck passes copies, so "
                    f"yours are intact)")

    def _check_same(self, k, first, second, between: bool) -> None:
        """Two analytical gradients must agree within nondet_tol (NaN agrees with NaN)."""
        for i in self.checked:
            a, b = first[i], second[i]
            with np.errstate(invalid="ignore"):  # inf - inf where both are inf: masked
                diff = np.where(_same(a, b), 0.0, np.abs(a - b))
            diff = np.where(np.isnan(diff), np.inf, diff)
            if not (diff.size and diff.max() > self.nondet_tol):
                continue
            worst = int(np.argmax(diff))
            index = format_index(worst, diff.shape)
            values = (f"{float(a.flat[worst])!r} vs {float(b.flat[worst])!r} "
                      f"(|diff| {diff.flat[worst]:.3e} > nondet_tol {self.nondet_tol:g})")
            if not between:
                raise GradcheckError(
                    f"gradcheck: backward is not reproducible for {self._where(k, i)}:\n"
                    f"  two runs with the same inputs differ at index {index}: {values}")
            raise GradcheckError(
                f"gradcheck: backward depends on other calls of fn, for {self._where(k, i)}:\n"
                f"  another call of fn (on other values) between the forward and its backward "
                f"changes the gradient at index {index}: {values}.\n"
                f"  Does the op keep state outside ctx (on the class, in a global) instead of "
                f"ctx.save_for_backward?")

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

    def _note(self, k) -> str:
        if k not in self.without_graph:
            return ""
        return (f"\n  note: output {k} does not require grad, so no backward ran and every "
                f"gradient counts as zero: was it made from .data, under no_grad, or as a new "
                f"Tensor?")

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
                raise GradcheckError(header + "  (no single element checked exceeds the "
                                     "tolerance)" + self._note(k))
            return
        _, flat, numerical = worst
        count = len(flats)
        scope = "all" if every else "sampled"
        raise GradcheckError(
            (header or f"gradcheck: backward disagrees with finite differences for "
                       f"{self._where(k, i)}:\n")
            + f"  failing elements: {failing} of {count} ({scope} elements checked)\n"
            + _pair_message(f"worst element at index {format_index(flat, analytical.shape)}",
                            numerical, analytical.flat[flat], self.atol, self.rtol, self.eps)
            + self._note(k))

    def _check_directions(self, k, i, analytical) -> None:
        position = self.float_outputs.index(k)
        for d in range(DIRECTIONS):
            v = self.rng.standard_normal(self.base[i].shape)
            v /= max(np.linalg.norm(v), np.finfo(np.float64).tiny)  # an empty input has none
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
