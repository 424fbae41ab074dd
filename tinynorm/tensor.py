"""Tensor: a backend array, an optional gradient, and the node that made it.

A Tensor is deliberately thin. ``.data`` is a NumPy or CuPy array; ``.grad`` is an array of
the same shape and dtype (or None); ``.grad_fn`` is the autograd node (a ``Context``) that
produced it, None for leaves. Every method that computes something forwards to a function in
``tinynorm.ops``, where the forward and its hand-derived backward live side by side.
"""
from __future__ import annotations

from . import backend


class Tensor:
    """An n-dimensional array that can record the operations applied to it.

    Differences from ``torch.Tensor`` (deliberate): ``.data`` and ``.grad`` are backend
    arrays, not Tensors; ``.device`` is a string (``"cpu"``, ``"cuda:0"``); there are no
    in-place operators, so no version counter is needed.
    """

    __slots__ = ("data", "grad", "requires_grad", "grad_fn", "output_index", "retains_grad",
                 "__weakref__")
    __array_priority__ = 1000  # numpy_array + tensor defers to Tensor.__radd__

    def __init__(self, data, requires_grad: bool = False, grad_fn=None, output_index: int = 0):
        self.data = data
        self.grad = None
        self.grad_fn = grad_fn
        self.output_index = output_index
        self.retains_grad = False
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # ---- attributes -------------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self.ndim

    def numel(self) -> int:
        return int(self.data.size)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        if requires_grad and self.data.dtype.kind != "f":
            raise RuntimeError(
                f"only floating-point tensors can require gradients; got dtype {self.dtype}"
            )
        if not requires_grad and not self.is_leaf:
            raise RuntimeError("requires_grad can only be switched off on leaf tensors; use "
                               ".detach()")
        self.requires_grad = bool(requires_grad)
        return self

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor after backward (leaves always keep it)."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad() on a tensor that does not require grad")
        self.retains_grad = True

    # ---- conversion -------------------------------------------------------------------
    def numpy(self):
        """A NumPy array of the values (copied from the GPU for CuPy tensors)."""
        if self.requires_grad:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. "
                               "Use tensor.detach().numpy() instead.")
        return backend.to_numpy(self.data)

    def tolist(self):
        return backend.to_numpy(self.data).tolist()

    def item(self):
        if self.data.size != 1:
            raise RuntimeError(f"a Tensor with {self.data.size} elements cannot be converted "
                               f"to a Python number")
        return backend.to_numpy(self.data).reshape(()).item()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        return bool(self.item())

    def detach(self) -> "Tensor":
        """The same array, cut from the graph (shares memory, like PyTorch)."""
        return Tensor(self.data)

    def to(self, *args, **kwargs) -> "Tensor":
        """``to(dtype)``, ``to(device)``, ``to(device, dtype)`` or ``to(other)`` (see
        ``parse_to``); differentiable, and ``self`` itself when nothing changes, like PyTorch."""
        dtype, device = parse_to(args, kwargs, "Tensor.to")
        return ops.cast(self, dtype=dtype, device=device)

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def cuda(self) -> "Tensor":
        return self.to("cuda")

    def float(self) -> "Tensor":
        return self.to(backend.float32)

    def double(self) -> "Tensor":
        return self.to(backend.float64)

    def __repr__(self) -> str:
        body = repr(backend.to_numpy(self.data)).replace("array(", "tensor(", 1)
        extra = ""
        if self.grad_fn is not None:
            extra = f", grad_fn=<{self.grad_fn.name}>"
        elif self.requires_grad:
            extra = ", requires_grad=True"
        if self.device != "cpu":
            extra = f", device='{self.device}'" + extra
        return body[:-1] + extra + ")" if extra else body

    # ---- autograd -----------------------------------------------------------------------
    def backward(self, gradient=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) · gradient into every leaf's ``.grad``.

        ``gradient`` (needed unless self has one element): a Tensor on self's device, or
        data (a NumPy array, a list), which is read onto self's device and dtype as
        ``tn.tensor`` would. PyTorch takes a Tensor only."""
        from .autograd import backward

        backward(self, gradient, retain_graph)

    def zero_(self) -> "Tensor":
        """Fill with zeros in place: under ``no_grad``, or on a tensor that does not require
        grad. Anywhere else it is a RuntimeError, for leaves as in PyTorch, and for any other
        tensor too: without version counters nothing would tell that an op had saved it for
        backward, whose gradient would then be silently wrong."""
        from .autograd import is_grad_enabled

        if self.requires_grad and is_grad_enabled():
            raise RuntimeError(f"zero_: a tensor of shape {self.shape} that requires grad can't "
                               f"be changed in place while grad mode is on; use "
                               f"'with tn.no_grad():', or tn.zeros_like for a new tensor")
        self.data[...] = 0
        return self

    # ---- arithmetic (NumPy broadcasting) ----------------------------------------------
    def __add__(self, other):
        return ops.add(self, other)

    def __radd__(self, other):
        return ops.add(other, self)

    def __sub__(self, other):
        return ops.sub(self, other)

    def __rsub__(self, other):
        return ops.sub(other, self)

    def __mul__(self, other):
        return ops.mul(self, other)

    def __rmul__(self, other):
        return ops.mul(other, self)

    def __truediv__(self, other):
        return ops.div(self, other)

    def __rtruediv__(self, other):
        return ops.div(other, self)

    # ``a += b`` and its kin: in place under no_grad, the one place nothing records a graph
    # (PyTorch's hand-written update ``with no_grad(): p -= lr * p.grad`` rebound p to a new
    # tensor, and the module's parameter never changed); elsewhere a new tensor, to which the
    # name is rebound, so the graph stays correct (README, deliberate differences).
    def __iadd__(self, other):
        return self._in_place(ops.add, other, "+=")

    def __isub__(self, other):
        return self._in_place(ops.sub, other, "-=")

    def __imul__(self, other):
        return self._in_place(ops.mul, other, "*=")

    def __itruediv__(self, other):
        return self._in_place(ops.div, other, "/=")

    def _in_place(self, op, other, symbol: str) -> "Tensor":
        """``op(self, other)`` written into self under no_grad; a new tensor elsewhere, but a
        RuntimeError for a leaf that requires grad, as in PyTorch (its new tensor would be a
        non-leaf, and the name would silently leave the parameter behind)."""
        from .autograd import is_grad_enabled

        if is_grad_enabled():
            if self.requires_grad and self.is_leaf:
                raise RuntimeError(f"{symbol}: a leaf tensor of shape {self.shape} that requires "
                                   f"grad can't be changed in place while grad mode is on; "
                                   f"update it under 'with tn.no_grad():' (or write "
                                   f"x = x {symbol[0]} y for a new tensor)")
            return op(self, other)
        result = op(self, other)
        if result.shape != self.shape:
            raise RuntimeError(f"{symbol}: the result has the broadcast shape {result.shape}, "
                               f"which the tensor of shape {self.shape} can't hold in place")
        if backend.category(result.dtype) > backend.category(self.dtype):
            raise RuntimeError(f"{symbol}: the result is {result.dtype}, which can't be cast "
                               f"to the tensor's {self.dtype} in place")
        self.data[...] = result.data
        return self

    def __neg__(self):
        return ops.neg(self)

    def __pow__(self, exponent):
        return ops.pow(self, exponent)

    def __rpow__(self, base):
        return ops.pow(base, self)

    def __matmul__(self, other):
        return ops.matmul(self, other)

    def __rmatmul__(self, other):
        return ops.matmul(other, self)

    # comparisons give tensors without grad
    def _compare(self, other, name):
        other = other.data if isinstance(other, Tensor) else other
        backend.array_module(self.data, other, op=name)
        return Tensor(getattr(self.data, name)(other))

    def __lt__(self, other):
        return self._compare(other, "__lt__")

    def __le__(self, other):
        return self._compare(other, "__le__")

    def __gt__(self, other):
        return self._compare(other, "__gt__")

    def __ge__(self, other):
        return self._compare(other, "__ge__")

    def __eq__(self, other):  # noqa: D105 — elementwise, as PyTorch
        return self._compare(other, "__eq__")

    def __ne__(self, other):
        return self._compare(other, "__ne__")

    __hash__ = object.__hash__

    # ---- methods ------------------------------------------------------------------------
    def sum(self, dim=None, keepdim: bool = False):
        return ops.sum(self, dim, keepdim)

    def mean(self, dim=None, keepdim: bool = False):
        return ops.mean(self, dim, keepdim)

    def max(self, dim=None, keepdim: bool = False):
        return ops.max(self, dim, keepdim)

    def min(self, dim=None, keepdim: bool = False):
        return ops.min(self, dim, keepdim)

    def var(self, dim=None, unbiased=None, keepdim: bool = False, *, correction=None):
        return ops.var(self, dim, unbiased, keepdim, correction=correction)

    def std(self, dim=None, unbiased=None, keepdim: bool = False, *, correction=None):
        return ops.std(self, dim, unbiased, keepdim, correction=correction)

    def exp(self):
        return ops.exp(self)

    def log(self):
        return ops.log(self)

    def sqrt(self):
        return ops.sqrt(self)

    def tanh(self):
        return ops.tanh(self)

    def relu(self):
        return ops.relu(self)

    def abs(self):
        return ops.abs(self)

    def softmax(self, dim: int):
        return ops.softmax(self, dim)

    def log_softmax(self, dim: int):
        return ops.log_softmax(self, dim)

    def reshape(self, *shape):
        return ops.reshape(self, *shape)

    def view(self, *shape):
        return ops.view(self, *shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        return ops.flatten(self, start_dim, end_dim)

    def transpose(self, dim0: int, dim1: int):
        return ops.transpose(self, dim0, dim1)

    def permute(self, *dims):
        return ops.permute(self, *dims)

    @property
    def T(self):
        return ops.permute(self, *reversed(range(self.ndim)))

    def unsqueeze(self, dim: int):
        return ops.unsqueeze(self, dim)

    def squeeze(self, dim=None):
        return ops.squeeze(self, dim)

    def expand(self, *shape):
        return ops.expand(self, *shape)

    def __getitem__(self, index):
        return ops.getitem(self, index)

    def masked_fill(self, mask, value):
        return ops.masked_fill(self, mask, value)

    def split(self, split_size_or_sections, dim: int = 0):
        return ops.split(self, split_size_or_sections, dim)

    def chunk(self, chunks: int, dim: int = 0):
        return ops.chunk(self, chunks, dim)

    def contiguous(self):
        return self


def parse_to(args, kwargs, op: str):
    """``(dtype, device)`` from the arguments of PyTorch's ``.to``, for ``op`` (the method
    named in errors): ``to(dtype)``, ``to(device)``, ``to(device, dtype)``, ``to(other)``
    (other's dtype and device), or the keywords ``device=``, ``dtype=`` and
    ``non_blocking=`` (accepted and ignored: every copy here is synchronous). A device is a
    string, checked by ``backend.backend_of``; the dtype comes back as a NumPy dtype; what
    is not given is None.
    """
    forms = f"{op}(dtype), {op}(device), {op}(device, dtype) or {op}(tensor)"
    unknown = sorted(set(kwargs) - {"device", "dtype", "non_blocking"})
    if unknown:
        raise TypeError(f"{op}: unexpected arguments {unknown}; expected {forms}, with the "
                        f"keywords device=, dtype= and non_blocking=")
    given = {k: kwargs[k] for k in ("device", "dtype") if kwargs.get(k) is not None}
    if args:
        first = args[0]
        if isinstance(first, Tensor):
            positional, most = {"dtype": first.dtype, "device": first.device}, 1
        elif first is None or isinstance(first, str):
            positional, most = {"device": first, "dtype": args[1] if len(args) > 1 else None}, 2
        else:
            positional, most = {"dtype": first}, 1
        if len(args) > most:
            raise TypeError(f"{op}: too many positional arguments {args!r}; expected {forms}")
        positional = {k: v for k, v in positional.items() if v is not None}
        twice = sorted(set(positional) & set(given))
        if twice:
            raise TypeError(f"{op}: {' and '.join(twice)} given both positionally and as a "
                            f"keyword; expected {forms}")
        given.update(positional)
    device, dtype = given.get("device"), given.get("dtype")
    if device is not None:
        backend.backend_of(device, op=op)
    if dtype is not None:
        try:
            dtype = backend.numpy_dtype(dtype)
        except TypeError:
            raise TypeError(f"{op}: {dtype!r} is not a dtype; expected {forms}, where a "
                            f"device is {backend.DEVICES}") from None
    return dtype, device


from . import ops  # noqa: E402 — Tensor's methods are sugar over ops, which build on Tensor
