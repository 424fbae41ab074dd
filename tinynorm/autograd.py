"""Reverse-mode autodiff: Function, its Context, and the backward engine.

An op is a ``Function`` subclass with two static methods that work on backend arrays::

    class Square(tn.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, grad_out):
            (x,) = ctx.saved_tensors
            return 2 * x * grad_out

    y = Square.apply(t)

``apply`` unwraps Tensors to arrays, runs ``forward``, and, when any input requires grad
and grad mode is on, records a ``Context`` as the output's ``grad_fn``. The Context *is* the
graph node: it keeps the inputs (edges to their nodes), what ``forward`` saved, and
``needs_input_grad``.

The accumulation rule, stated once: gradient arrays flowing through the graph are never
modified in place; contributions to one tensor are summed; a leaf owns its ``.grad`` and
adds later contributions into it with ``+=``.
"""
from __future__ import annotations

import contextlib
import threading
import weakref

from . import backend
from .tensor import Tensor


# ---- grad mode and anomaly mode ---------------------------------------------------------
class _GradMode(threading.local):
    """Whether ops record a graph: one value per thread, as PyTorch's grad mode, so a
    ``no_grad`` block in one thread leaves another thread's training alone. Every thread
    starts with recording on (the class attribute)."""

    enabled = True


class _AnomalyMode:
    """Whether ops check their outputs for NaN and Inf: one value for the whole process, as
    PyTorch's anomaly mode (a thread started inside ``detect_anomaly`` checks too)."""

    enabled = False


_grad_mode, _anomaly_mode = _GradMode(), _AnomalyMode()


def is_grad_enabled() -> bool:
    """True when ops record a graph in this thread."""
    return _grad_mode.enabled


class _Found(threading.local):
    """A stack of found values per thread (``threading.local`` runs ``__init__`` again in
    each thread that first touches it)."""

    def __init__(self):
        self.stack = []


class _FlagMode(contextlib.ContextDecorator):
    """Sets the flag ``_state.enabled`` to ``_mode`` for a block, or for each call of a
    decorated function, and gives it back the value it found on exit, exceptions included.

    The values found are kept on a stack per thread: a decorated function may call itself
    recursively, and may run in several threads at once.
    """

    _state: object
    _mode: bool

    def __init__(self):
        self._found = _Found()

    def __enter__(self):
        self._found.stack.append(self._state.enabled)
        self._state.enabled = self._mode
        return self

    def __exit__(self, *exc):
        self._state.enabled = self._found.stack.pop()
        return False


class no_grad(_FlagMode):
    """No graph is recorded and nothing is saved for backward inside this block (in this
    thread). Decorates with or without parentheses: ``@no_grad()`` or ``@no_grad``."""

    _state, _mode = _grad_mode, False

    def __new__(cls, func=None):
        # @no_grad without parentheses calls the class on the function: return it decorated
        if func is None:
            return super().__new__(cls)
        if not callable(func):
            raise TypeError(f"{cls.__name__}() takes no arguments, or a function to decorate; "
                            f"got {func!r} ({type(func).__name__})")
        return cls()(func)


class enable_grad(no_grad):
    """Graph recording on inside this block, even within ``no_grad``."""

    _mode = True


class set_grad_enabled(no_grad):
    """Turn graph recording on or off: at once when called (PyTorch's function form), for a
    block as a context manager, or per call as a decorator."""

    def __new__(cls, mode: bool = None):
        if callable(mode):  # no bare form: the mode is not optional
            raise TypeError(f"set_grad_enabled(mode) takes a bool, got a callable "
                            f"({type(mode).__name__}); decorate with @set_grad_enabled(False)")
        return _FlagMode.__new__(cls)

    def __init__(self, mode: bool):
        super().__init__()
        self._mode, self._decorating = bool(mode), False
        _FlagMode.__enter__(self)  # takes effect now; __exit__ restores the mode before it

    def __enter__(self):
        return _FlagMode.__enter__(self) if self._decorating else self

    def __call__(self, func):
        _FlagMode.__exit__(self)  # a decorator must not switch the mode at decoration time
        self._decorating = True
        return super().__call__(func)


class detect_anomaly(_FlagMode):
    """Raise as soon as a forward or backward produces NaN or Inf, naming the op (in every
    thread, as PyTorch's)."""

    _state, _mode = _anomaly_mode, True


def _check_finite(arrays, fn_name: str, where: str) -> None:
    for i, a in enumerate(arrays):
        if a is None or not backend.is_array(a) or a.dtype.kind not in "fc":
            continue
        xp = backend.array_module(a)
        if not bool(xp.isfinite(a).all()):
            kind = "nan" if bool(xp.isnan(a).any()) else "inf"
            raise RuntimeError(f"detect_anomaly: {fn_name}.{where} produced {kind} values in "
                               f"its output {i}")


# ---- Function and Context -------------------------------------------------------------
class Edge:
    """Where a gradient goes: the node that made a non-leaf input, and which of its outputs.

    The graph keeps edges, not the intermediate tensors themselves, so an intermediate's
    array is freed as soon as nothing but the graph refers to it (PyTorch does the same).
    """

    __slots__ = ("node", "index", "shape", "dtype", "ref")

    def __init__(self, t: Tensor):
        self.node, self.index, self.shape, self.dtype = t.grad_fn, t.output_index, t.shape, t.dtype
        self.ref = weakref.ref(t)  # only for retain_grad()


class Context:
    """The graph node of one Function call; ``forward`` and ``backward`` receive it as ctx."""

    def __init__(self, fn, needs_input_grad, record: bool):
        self.fn = fn
        self.needs_input_grad = needs_input_grad
        self.edges = ()  # per forward argument: a leaf Tensor, an Edge, or None
        self.outputs = ()  # (shape, dtype) of each output, to make zeros for unused outputs
        self._record = record
        self._saved = ()
        self._released = False

    @property
    def name(self) -> str:
        return f"{self.fn.__name__}Backward"

    @property
    def recording(self) -> bool:
        """True when this call joins the graph (grad mode on, some input requires grad): what
        ``save_for_backward`` gets is kept. A forward may skip building arrays that only
        backward would read when it is False."""
        return self._record

    def save_for_backward(self, *arrays) -> None:
        """Keep arrays for backward; under no_grad nothing is kept."""
        if self._record:
            self._saved = arrays

    @property
    def saved_tensors(self) -> tuple:
        if self._released:
            raise RuntimeError(
                f"Trying to backward through the graph a second time ({self.name}): its saved "
                "arrays were freed after the first backward. Specify retain_graph=True on the "
                "first backward call if you need to backward twice."
            )
        return self._saved

    def release(self) -> None:
        """Drop what forward saved (attributes set on ctx are small by convention and stay)."""
        self._saved = ()
        self._released = True


class Function:
    """Base class of every differentiable op (PyTorch's ``torch.autograd.Function``).

    Subclasses define static ``forward(ctx, *args)`` on backend arrays (and any other
    arguments) and static ``backward(ctx, *grad_outputs)`` returning one gradient per
    forward argument, None for those that need none. A forward that returns a tuple makes
    several outputs; backward then receives one gradient per output (zeros for unused ones).
    """

    @staticmethod
    def forward(ctx, *args):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args):
        for i, a in enumerate(args):
            _refuse_foreign(a, f"{cls.__name__}: argument {i}")
        arrays = tuple(a.data if isinstance(a, Tensor) else a for a in args)
        # mixing devices is an error, raised here once for every op
        xp = backend.array_module(*arrays, op=cls.__name__)
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        record = _grad_mode.enabled and any(needs)
        ctx = Context(cls, needs, record)
        out = cls.forward(ctx, *arrays)
        multiple = isinstance(out, tuple)
        # NumPy reductions and ufuncs on 0-d arrays return scalars; a Tensor always holds an array
        outs = tuple(o if backend.is_array(o) else xp.asarray(o)
                     for o in (out if multiple else (out,)))
        if _anomaly_mode.enabled:
            _check_finite(outs, cls.__name__, "forward")
        if not record:
            results = tuple(Tensor(o) for o in outs)
        else:
            ctx.edges = tuple((a if a.grad_fn is None else Edge(a)) if need else None
                              for a, need in zip(args, needs))
            ctx.outputs = tuple((o.shape, o.dtype) for o in outs)
            results = tuple(Tensor(o, grad_fn=ctx, output_index=i) for i, o in enumerate(outs))
            for r in results:
                r.requires_grad = r.data.dtype.kind == "f"
        return results if multiple else results[0]


# ---- the engine -----------------------------------------------------------------------
def _topological_order(root):
    """Nodes reachable from ``root``, each after every node that consumes its outputs.

    Iterative depth-first search, so a chain of 10,000 ops needs no recursion.
    """
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for e in node.edges:
            if isinstance(e, Edge) and id(e.node) not in visited:
                stack.append((e.node, False))
    order.reverse()
    return order


def _array(g):
    """``g`` as an array: NumPy turns 0-d results (a sum of two 0-d arrays) into scalars."""
    return g if backend.is_array(g) else backend.array_module(g).asarray(g)


def _refuse_foreign(a, what: str) -> None:
    """A TypeError when ``a`` is another library's array (a torch tensor, say): ops and
    backward take tinynorm Tensors, arrays and numbers, and convert nothing else silently."""
    if not isinstance(a, Tensor) and backend.is_foreign_array(a):
        raise TypeError(f"{what} is a {type(a).__module__}.{type(a).__qualname__}, not a "
                        f"tinynorm Tensor; tinynorm converts no other library's arrays "
                        f"silently: make a Tensor of it with tn.tensor")


def backward(tensor: Tensor, gradient=None, retain_graph: bool = False) -> None:
    """Run backward from ``tensor``; see ``Tensor.backward``."""
    if not tensor.requires_grad:
        raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
    if gradient is None:
        if tensor.data.size != 1:
            raise RuntimeError(
                f"grad can be implicitly created only for scalar outputs; this tensor has shape "
                f"{tuple(tensor.shape)}: pass gradient= of that shape"
            )
        gradient = backend.array_module(tensor.data).ones_like(tensor.data)
    else:
        _refuse_foreign(gradient, "backward: gradient")
        given = gradient.data if isinstance(gradient, Tensor) else gradient
        if isinstance(gradient, Tensor) or backend.device_of(given) != "cpu":
            # a tensor (or a GPU array) must be on the tensor's device already
            xp = backend.array_module(tensor.data, given, op="backward")
        else:  # data (a NumPy array, a list, a number) is read onto it, as tn.tensor does
            xp = backend.array_module(tensor.data)
        gradient = xp.asarray(given, dtype=tensor.dtype)
        if gradient.shape != tensor.shape:
            raise RuntimeError(f"backward: gradient has shape {gradient.shape} but the tensor "
                               f"has shape {tensor.shape}")

    pending = {}  # id(node) -> gradient of each of its outputs, summed over consumers
    arrived = {}  # id(tensor) -> [tensor, summed gradient] for leaves and retain_grad tensors

    def deliver(target, g) -> None:
        held = target if isinstance(target, Tensor) else target.ref()
        if held is not None and (held.grad_fn is None or held.retains_grad):
            entry = arrived.setdefault(id(held), [held, None])
            entry[1] = g if entry[1] is None else _array(entry[1] + g)
        if not isinstance(target, Tensor):
            slots = pending.setdefault(id(target.node), [None] * len(target.node.outputs))
            earlier = slots[target.index]  # what other consumers sent this output so far
            slots[target.index] = g if earlier is None else _array(earlier + g)

    deliver(tensor if tensor.grad_fn is None else Edge(tensor), gradient)
    for node in _topological_order(tensor.grad_fn) if tensor.grad_fn is not None else ():
        grad_outs = pending.pop(id(node), None)
        if grad_outs is None:  # a backward above returned None for it: no gradient arrives
            if not retain_graph:
                node.release()  # the graph is freed all the same
            continue
        if node._released:
            node.saved_tensors  # raises, naming retain_graph
        if len(grad_outs) > 1:
            xp = backend.array_module(*grad_outs)
            grad_outs = [g if g is not None else xp.zeros(shape, dtype)
                         for g, (shape, dtype) in zip(grad_outs, node.outputs)]
        grad_ins = node.fn.backward(node, *grad_outs)
        if not isinstance(grad_ins, tuple):
            grad_ins = (grad_ins,)
        if len(grad_ins) != len(node.edges):
            raise RuntimeError(
                f"{node.fn.__name__}.backward returned {len(grad_ins)} gradients; expected "
                f"{len(node.edges)}, one per forward argument (None where not needed)"
            )
        grad_ins = tuple(None if g is None else _array(g) for g in grad_ins)
        if _anomaly_mode.enabled:
            _check_finite(grad_ins, node.fn.__name__, "backward")
        for target, g in zip(node.edges, grad_ins):
            if target is None or g is None:
                continue
            if g.dtype != target.dtype and target.dtype.kind == "f" and any(
                    g.dtype == dtype for _, dtype in node.outputs):
                # an op on mixed float dtypes computes in the wider one, its output's; as in
                # PyTorch's engine, each input receives its gradient in its own dtype. Any
                # other dtype is a bug in the backward, reported below.
                g = g.astype(target.dtype)
            if g.shape != target.shape or g.dtype != target.dtype:
                raise RuntimeError(
                    f"{node.fn.__name__}.backward returned a gradient of shape {g.shape} and "
                    f"dtype {g.dtype} for an input of shape {target.shape} and dtype {target.dtype}"
                )
            deliver(target, g)
        if not retain_graph:
            node.release()

    # Leaves take their gradients last, when no graph buffer refers to them any more. A leaf
    # owns its .grad: it copies an array that another leaf (or the caller) also holds.
    # A leaf frozen since forward (requires_grad_(False)) takes none, as in PyTorch.
    owners = {}
    for t, g in arrived.values():
        if t.grad_fn is None and not t.requires_grad:
            continue
        if t.grad is not None:
            t.grad += g
            continue
        shared = g is gradient or id(g) in owners or getattr(g, "base", None) is not None
        t.grad = g.copy() if shared else g
        owners[id(g)] = t


def zero_grads(params, set_to_none: bool = True) -> None:
    """Forget the gradients of ``params`` (what Module.zero_grad and Optimizer.zero_grad
    do): set each ``.grad`` to None (the default, as PyTorch) or to zero in place, which is
    safe because a leaf owns its ``.grad`` (see ``backward`` above)."""
    for p in params:
        if p.grad is None:
            continue
        if set_to_none:
            p.grad = None
        else:
            p.grad[...] = 0
