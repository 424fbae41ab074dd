"""Module: PyTorch's bookkeeping for layers, under PyTorch's names.

A Module holds three ordered tables filled by plain attribute assignment: ``_parameters``
(Parameters), ``_buffers`` (Tensors that are state but not trained) and ``_modules`` (child
Modules). Everything else (iteration, dotted names, state_dict, dtype and device moves,
repr) walks those tables in registration order, so names and order match PyTorch's and a
PyTorch state_dict loads under the same keys.

Differences from ``torch.nn.Module`` (deliberate): no hooks, no ``_version``/``_metadata``
in state_dict, ``state_dict()`` values are NumPy copies (host arrays), and ``to()`` takes a
device string ("cpu", "cuda", "cuda:N"), a dtype, both, or a Tensor (``tensor.parse_to``).
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple

from .. import backend
from ..autograd import zero_grads
from ..tensor import Tensor, parse_to
from .parameter import Parameter

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _addindent(text: str, spaces: int) -> str:
    """Indent every line of ``text`` but the first (PyTorch's nested repr)."""
    first, *rest = text.split("\n")
    return "\n".join([first] + [" " * spaces + line for line in rest])


def _loadable(key: str, value, target: Tensor):
    """``(array, None)``: ``value`` converted to ``target``'s shape, dtype and device, ready
    to copy; or ``(None, message)`` naming ``key`` and why it cannot be loaded."""
    where = f'While copying the parameter named "{key}", '
    if isinstance(value, Tensor):
        value = value.data
    elif not backend.is_array(value):
        if not hasattr(value, "__array__"):
            return None, (f"{where}expected an array or Tensor from checkpoint but received "
                          f"{type(value)}")
        try:
            value = backend.foreign_to_numpy(value)
        except Exception as err:  # whatever the other library raises, named in the message
            source = f"{type(value).__module__}.{type(value).__qualname__}"
            return None, (f"{where}could not read the checkpoint's {source} as an array "
                          f"({type(err).__name__}: {err})")
    kind, dtype = value.dtype.kind, target.dtype
    if kind not in "biuf" and not (kind == "c" and dtype.kind == "c"):
        what = "complex values (their imaginary parts would be lost)" if kind == "c" \
            else "values that are not numbers"
        return None, (f"{where}expected numbers (bool, int or float) to cast to {dtype}, but "
                      f"the checkpoint holds {what}: an array of dtype {value.dtype} and shape "
                      f"{tuple(value.shape)}")
    if tuple(value.shape) != tuple(target.shape):
        return None, (f"size mismatch for {key}: copying a param with shape "
                      f"{tuple(value.shape)} from checkpoint, the shape in current model is "
                      f"{tuple(target.shape)}.")
    return backend.asarray(value, dtype=dtype, device=target.device), None


class Module:
    """Base class of every layer: registers Parameters, buffers and sub-Modules by assignment.

    Subclasses call ``super().__init__()`` first, then assign, then define ``forward``.
    """

    def __init__(self):
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers_set", set())
        object.__setattr__(self, "_modules", OrderedDict())

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f'Module [{type(self).__name__}] is missing the required '
                                  f'"forward" function')

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- registration ---------------------------------------------------------------------
    def _check_name(self, name, kind: str) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {kind} before Module.__init__() call")
        if not isinstance(name, str):
            raise TypeError(f"{kind} name should be a string. Got {type(name).__name__}")
        if name == "" or "." in name:
            raise KeyError(f'{kind} name can\'t be empty or contain ".", got: {name!r}')

    def register_parameter(self, name: str, param) -> None:
        self._check_name(name, "parameter")
        if hasattr(self, name) and name not in self._parameters:
            raise KeyError(f"attribute '{name}' already exists")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign '{type(param).__name__}' object to parameter "
                            f"'{name}' (tinynorm.nn.Parameter or None required)")
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        self._check_name(name, "buffer")
        if hasattr(self, name) and name not in self._buffers:
            raise KeyError(f"attribute '{name}' already exists")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"cannot assign '{type(tensor).__name__}' object to buffer "
                            f"'{name}' (Tensor or None required)")
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers_set.discard(name)
        else:
            self._non_persistent_buffers_set.add(name)

    def add_module(self, name: str, module) -> None:
        self._check_name(name, "module")
        if hasattr(self, name) and name not in self._modules:
            raise KeyError(f"attribute '{name}' already exists")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        self._modules[name] = module

    register_module = add_module

    def __setattr__(self, name: str, value) -> None:
        tables = self.__dict__.get("_parameters"), self.__dict__.get("_buffers"), \
            self.__dict__.get("_modules")
        if isinstance(value, (Parameter, Module)) and tables[0] is None:
            raise AttributeError(f"cannot assign {type(value).__name__} before "
                                 f"Module.__init__() call")

        def forget_elsewhere(keep):
            self.__dict__.pop(name, None)
            for table in tables:
                if table is not keep:
                    table.pop(name, None)
            self._non_persistent_buffers_set.discard(name)

        if isinstance(value, Parameter):
            forget_elsewhere(tables[0])
            self.register_parameter(name, value)
        elif isinstance(value, Module):
            forget_elsewhere(tables[2])
            self._modules[name] = value
        elif tables[0] is not None and name in tables[0]:
            self.register_parameter(name, value)  # None, or a TypeError for anything else
        elif tables[2] is not None and name in tables[2]:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as child module "
                                f"'{name}' (tinynorm.nn.Module or None expected)")
            tables[2][name] = None
        elif tables[1] is not None and name in tables[1]:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign '{type(value).__name__}' as buffer '{name}' "
                                f"(Tensor or None expected)")
            tables[1][name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        # Called only when normal lookup fails: look in the registration tables.
        d = self.__dict__
        for table in ("_parameters", "_buffers", "_modules"):
            if table in d and name in d[table]:
                return d[table][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                self._non_persistent_buffers_set.discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))

    # ---- iteration (PyTorch's order: pre-order over modules, own items first) -------------
    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is not None:
                yield from module.named_modules(memo, prefix + ("." if prefix else "") + name,
                                                remove_duplicate)

    def modules(self):
        for _, module in self.named_modules():
            yield module

    def named_children(self):
        seen = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def children(self):
        for _, module in self.named_children():
            yield module

    def _named_members(self, table: str, prefix: str, recurse: bool, remove_duplicate: bool):
        seen = set()
        owners = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) \
            if recurse else [(prefix, self)]
        for owner_prefix, owner in owners:
            for name, value in getattr(owner, table).items():
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield owner_prefix + ("." if owner_prefix else "") + name, value

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True):
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True):
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True):
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True):
        for _, buf in self.named_buffers(recurse=recurse):
            yield buf

    def get_submodule(self, target: str) -> "Module":
        module = self
        walked = []
        for part in target.split(".") if target else []:
            if not isinstance(module, Module) or part not in module._modules:
                raise AttributeError(f"{type(module).__name__} "
                                     f"{'.'.join(walked) or '(root)'} has no submodule `{part}` "
                                     f"(looking up {target!r})")
            module = module._modules[part]
            walked.append(part)
        return module

    # ---- modes and gradients ----------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        for child in self.children():
            child.train(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        for param in self.parameters():
            param.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients of every parameter: None, or zero in place (``zero_grads``)."""
        zero_grads(self.parameters(), set_to_none)

    def apply(self, fn) -> "Module":
        """Call ``fn`` on every child (recursively), then on ``self``; as PyTorch's."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ---- dtype and device -----------------------------------------------------------------
    def _apply(self, convert) -> "Module":
        """Replace the array of every parameter, gradient and buffer by ``convert(array)``,
        keeping the same Parameter and Tensor objects (optimizers hold on to them)."""
        for module in self.modules():
            for tensor in list(module._parameters.values()) + list(module._buffers.values()):
                if tensor is None:
                    continue
                tensor.data = convert(tensor.data)
                if tensor.grad is not None:
                    tensor.grad = convert(tensor.grad)
        return self

    def to(self, *args, **kwargs) -> "Module":
        """``to(dtype)``, ``to(device)``, ``to(device, dtype)`` or ``to(tensor)`` (as
        ``Tensor.to``, read by ``tensor.parse_to``): in place, returns self.

        Like PyTorch, only floating-point parameters and buffers change dtype.
        """
        dtype, device = parse_to(args, kwargs, "Module.to")
        if dtype is not None and dtype.kind != "f":
            raise TypeError(f"Module.to only accepts floating point dtypes, but got desired "
                            f"dtype={dtype}")
        target = None if device is None else backend.backend_of(device)

        def convert(a):
            if target is not None and backend.backend_of(backend.device_of(a)) != target:
                a = backend.asarray(a, device=device)
            if dtype is not None and a.dtype.kind == "f" and a.dtype != dtype:
                a = a.astype(dtype)
            return a

        return self._apply(convert)

    def cpu(self) -> "Module":
        return self.to("cpu")

    def cuda(self, device=None) -> "Module":
        return self.to("cuda" if device is None else f"cuda:{device}"
                       if isinstance(device, int) else device)

    def double(self) -> "Module":
        return self.to(backend.float64)

    def float(self) -> "Module":
        return self.to(backend.float32)

    def half(self) -> "Module":
        return self.to(backend.float16)

    # ---- state_dict ---------------------------------------------------------------------------
    def _state_items(self, prefix: str = ""):
        """(key, Tensor) in PyTorch's state_dict order: own parameters, own persistent
        buffers, then each child's. Shared tensors appear under every key, as in PyTorch."""
        for name, param in self._parameters.items():
            if param is not None:
                yield prefix + name, param
        for name, buf in self._buffers.items():
            if buf is not None and name not in self._non_persistent_buffers_set:
                yield prefix + name, buf
        for name, module in self._modules.items():
            if module is not None:
                yield from module._state_items(prefix + name + ".")

    def state_dict(self, destination=None, prefix: str = "", keep_vars: bool = False):
        """An OrderedDict of dotted key → NumPy copy of the values (``keep_vars``: the
        Tensors themselves)."""
        out = OrderedDict() if destination is None else destination
        for key, tensor in self._state_items(prefix):
            out[key] = tensor if keep_vars else backend.to_numpy(tensor.data).copy()
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Copy values from ``state_dict`` into the parameters and buffers, in place.

        Values may be NumPy or CuPy arrays, Tensors, or another library's arrays (a
        ``torch.Tensor``, read through ``__array__``: one that requires grad is detached, a
        bfloat16 one widened to float32 first). Numbers (bool, int, float) are cast to each
        parameter's dtype and moved to its device; anything else (strings, objects, complex
        values into a real parameter) is refused. A failed load changes nothing: every key,
        shape and value is checked and converted first, and missing and unexpected keys
        (errors when ``strict``), shape mismatches and unusable values are all listed in one
        RuntimeError. Returns ``(missing_keys, unexpected_keys)``.
        """
        if assign:
            raise NotImplementedError("load_state_dict(assign=True) is not supported; "
                                      "tinynorm always copies into the existing parameters")
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict)}.")
        targets = OrderedDict(self._state_items())
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict.keys() if k not in targets]
        errors, ready = [], []
        for key, target in targets.items():
            if key in state_dict:
                value, error = _loadable(key, state_dict[key], target)
                if error is None:
                    ready.append((target, value))
                else:
                    errors.append(error)
        if strict:
            if unexpected:
                errors.insert(0, "Unexpected key(s) in state_dict: "
                                 + ", ".join(f'"{k}"' for k in unexpected) + ". ")
            if missing:
                errors.insert(0, "Missing key(s) in state_dict: "
                                 + ", ".join(f'"{k}"' for k in missing) + ". ")
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:"
                               f"\n\t" + "\n\t".join(errors))
        for target, value in ready:  # same shape, dtype and device: this cannot fail
            target.data[...] = value
        return IncompatibleKeys(missing, unexpected)

    # ---- repr ---------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """The text inside this module's parentheses; layers override it."""
        return ""

    def _get_name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): " + _addindent(repr(module), 2)
                       for name, module in self._modules.items()]
        lines = extra_lines + child_lines
        text = self._get_name() + "("
        if lines:
            if len(extra_lines) == 1 and not child_lines:
                text += extra_lines[0]
            else:
                text += "\n  " + "\n  ".join(lines) + "\n"
        return text + ")"
