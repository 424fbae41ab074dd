"""Optimizer: parameter groups, per-parameter state, zero_grad and state_dict, as PyTorch.

An optimizer updates ``param.data`` in place from ``param.grad``; both are backend arrays,
so no graph is recorded and no ``no_grad`` block is needed. Subclasses implement
``step()`` for one group at a time.

``state_dict()`` has PyTorch's structure::

    {"state": {0: {"step": 3, "exp_avg": array, ...}, 1: {...}},
     "param_groups": [{"lr": 1e-3, ..., "params": [0, 1]}, ...]}

where parameters are numbered in the order of the groups and of the parameters inside
them. Differences from PyTorch: ``"step"`` is a Python int (PyTorch keeps a tensor), and
the arrays in ``state_dict()`` are the live state arrays (as PyTorch's are): copy them if
you keep them while training continues.
"""
from __future__ import annotations

import os
import sys
import warnings

from .. import backend
from ..autograd import enable_grad, zero_grads
from ..tensor import Tensor


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning raised in this package at the caller's line:
    the first frame outside tinynorm/optim (a constructor's ``add_param_group`` is two or
    three frames deeper than a direct call)."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level


class _RequiredParameter:
    def __repr__(self) -> str:
        return "<required parameter>"


required = _RequiredParameter()


class Optimizer:
    """Base class: holds ``param_groups`` (a list of dicts) and ``state`` (param → dict)."""

    def __init__(self, params, defaults: dict):
        self.defaults = defaults
        self.state: dict = {}
        self.param_groups: list = []
        if isinstance(params, Tensor):
            raise TypeError(f"{type(self).__name__}: params argument given to the optimizer "
                            f"should be an iterable of Tensors or dicts, but got a "
                            f"{type(params).__name__}")
        groups = self._in_order(params, "params argument given to the optimizer should be an "
                                        "ordered iterable (a list) of Tensors or dicts")
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def _in_order(self, params, expected: str) -> list:
        """``params`` as a list; a set is a TypeError (PyTorch's for a group's params, here
        also for the optimizer's): its order changes between runs, and that order numbers
        the parameters in ``state_dict()``."""
        if isinstance(params, (set, frozenset)):
            raise TypeError(f"{type(self).__name__}: {expected}, but got a "
                            f"{type(params).__name__}: a set's order changes between runs, and "
                            f"that order numbers the parameters in state_dict()")
        return list(params)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group; options it does not set take the optimizer's defaults.

        ``params`` holds Tensors, or (name, Tensor) pairs as ``named_parameters()`` gives,
        whose names are kept in the group's ``"param_names"`` (PyTorch's key), in every group
        or none.
        """
        name = type(self).__name__
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else \
            self._in_order(params, "a parameter group's params should be an ordered "
                                   "iterable (a list) of Tensors")
        named = [isinstance(p, tuple) for p in params]
        if any(named):
            if not all(named):
                raise ValueError(f"{name}: all optimizer params should be with/without names. "
                                 f"Some param names are missing")
            for pair in params:
                if len(pair) != 2:
                    raise TypeError(f"{name}: a named parameter is a (name, Tensor) pair, got "
                                    f"a tuple of length {len(pair)}")
            group["param_names"] = [n for n, _ in params]
            params = [p for _, p in params]
        group["params"] = params
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params is "
                                f"{type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        for key, default in self.defaults.items():
            if default is required and key not in group:
                raise ValueError(f"parameter group didn't specify a value of required "
                                 f"optimization parameter {key}")
            group.setdefault(key, default)
        positions = {}  # id(param) -> where it is in this group
        for i, p in enumerate(params):
            positions.setdefault(id(p), []).append(i)
        repeated = [at for at in positions.values() if len(at) > 1]
        if repeated:  # PyTorch warns too ("in future, this will cause an error")
            warnings.warn(f"{name}: parameter group {len(self.param_groups)} holds a parameter "
                          f"more than once (at positions {', '.join(map(str, repeated[0]))}); "
                          f"each step updates it once per occurrence", UserWarning,
                          stacklevel=_caller_level())
        for other in self.param_groups:
            if ("param_names" in other) != ("param_names" in group):
                raise ValueError(f"{name}: all optimizer param groups should be with/without "
                                 f"names. cannot add param group "
                                 f"{'with' if 'param_names' in group else 'without'} names to "
                                 f"the optimizer")
        seen = {id(p) for other in self.param_groups for p in other["params"]}
        if not seen.isdisjoint(positions):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients of every group's parameters: None (default) or zero in
        place (``autograd.zero_grads``)."""
        zero_grads((p for group in self.param_groups for p in group["params"]), set_to_none)

    def step(self, closure=None):
        """One update of every parameter that has a gradient. ``closure``, if given,
        re-evaluates the model and returns the loss (with grad mode on)."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.shape != p.shape:
                    raise RuntimeError(f"{type(self).__name__}.step: a gradient of shape "
                                       f"{p.grad.shape} for a parameter of shape {p.shape}")
            self._update_group(group, params)
        return loss

    def _update_group(self, group: dict, params: list) -> None:
        raise NotImplementedError

    # ---- state_dict ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}``."""
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                packed["params"].append(index[id(p)])
            groups.append(packed)
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def check_state_dict(self, state_dict: dict):
        """Everything ``load_state_dict`` would assign, checked, without assigning it.

        Returns (new state, new param_groups); raises ValueError naming what does not fit:
        the number of groups, a group's size, an unknown parameter index, or a state array
        whose shape is not its parameter's.
        """
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected a dict with keys "
                             f"'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has a different number of parameter groups "
                             f"({len(saved_groups)}) than the optimizer ({len(self.param_groups)})")
        params_of = {}
        new_groups = []
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"loaded state dict contains a parameter group that doesn't "
                                 f"match the size of optimizer's group: group {i} has "
                                 f"{len(saved['params'])} params, the optimizer's has "
                                 f"{len(group['params'])}")
            params_of.update(zip(saved["params"], group["params"]))
            # options the saved group lacks keep their current values
            new_group = {k: v for k, v in group.items() if k != "params"}
            for key, value in saved.items():
                if isinstance(group.get(key), tuple) and isinstance(value, list):
                    value = tuple(value)  # e.g. betas, after a trip through JSON
                new_group[key] = value
            new_group["params"] = group["params"]
            new_groups.append(new_group)
        new_state = {}
        for index, saved in state_dict["state"].items():
            p = params_of.get(int(index))
            if p is None:
                raise ValueError(f"loaded state dict has state for parameter {index}, which is "
                                 f"in none of its parameter groups")
            new_state[p] = {name: _state_value(name, value, p, index)
                            for name, value in saved.items()}
        return new_state, new_groups

    def load_state_dict(self, state_dict: dict) -> None:
        """Replace state and options by those of ``state_dict`` (checked first: on an error
        nothing changes). State arrays are copied onto each parameter's device; floating
        ones take the parameter's dtype, as PyTorch."""
        self._assign_checked(self.check_state_dict(state_dict))

    def _assign_checked(self, checked) -> None:
        """Assign what ``check_state_dict`` returned (checked and copied already; also how
        ``tinynorm.serialization.load`` assigns what it checked, without a second copy)."""
        self.state, self.param_groups = checked

    def __repr__(self) -> str:
        text = type(self).__name__ + " ("
        for i, group in enumerate(self.param_groups):
            text += f"\nParameter Group {i}"
            for key in sorted(group):
                if key != "params":
                    text += f"\n    {key}: {group[key]}"
        return text + "\n)"


def _state_value(name: str, value, param: Tensor, index):
    """A copy of one state entry, on the parameter's device and (if floating) dtype."""
    if name == "step":  # a count: PyTorch keeps it as a 0-d tensor, tinynorm as a number
        count = float(value.item() if hasattr(value, "item") else value)
        return int(count) if count.is_integer() else count
    if isinstance(value, Tensor):
        value = value.data
    elif not backend.is_array(value):
        if not hasattr(value, "__array__"):
            return value  # some other number or flag: kept as it is
        try:
            value = backend.foreign_to_numpy(value)  # e.g. a torch.Tensor
        except Exception as err:  # whatever the other library raises, named in the message
            raise ValueError(f"loaded state dict has {name!r} for parameter {index} that "
                             f"cannot be read as an array ({type(value).__module__}."
                             f"{type(value).__qualname__}): {err}") from err
    if tuple(value.shape) != tuple(param.shape):
        raise ValueError(f"loaded state dict has {name!r} of shape {tuple(value.shape)} for "
                         f"parameter {index} of shape {tuple(param.shape)}")
    dtype = param.dtype if value.dtype.kind == "f" else value.dtype
    moved = backend.asarray(value, dtype=dtype, device=param.device)
    return moved.copy() if moved is value else moved  # a new array either way, copied once
