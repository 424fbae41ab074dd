"""SGD with momentum, dampening, weight decay and Nesterov momentum, as torch.optim.SGD."""
from __future__ import annotations

from .. import backend
from .optimizer import Optimizer


class SGD(Optimizer):
    """Stochastic gradient descent; PyTorch's update, per parameter θ with gradient g:

        g ← −g                                       (maximize: ascend instead)
        g ← g + λ·θ                                  (weight_decay λ ≠ 0: L2 in the gradient)
        b ← g                    on the first step   (momentum μ ≠ 0)
        b ← μ·b + (1 − τ)·g      afterwards          (dampening τ)
        g ← g + μ·b  if nesterov, else  g ← b
        θ ← θ − lr·g

    State per parameter: ``momentum_buffer`` b (only when μ ≠ 0).
    Note this is PyTorch's momentum form (lr multiplies the buffer, not the gradient
    inside it), which differs from Sutskever et al. when lr changes.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    def _update_group(self, group: dict, params: list) -> None:
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        weight_decay, nesterov = group["weight_decay"], group["nesterov"]
        for p in params:
            xp = backend.array_module(p.data, p.grad, op="SGD")
            g = -p.grad if group["maximize"] else p.grad  # -p.grad: a new array
            if weight_decay != 0:
                g = g + weight_decay * p.data  # a new array: p.grad itself stays unchanged
            if momentum != 0:
                state = self.state.setdefault(p, {})
                buf = state.get("momentum_buffer")
                if buf is None:
                    # an array even for a 0-d parameter, whose g may be a NumPy scalar:
                    # the in-place updates below must reach the stored buffer
                    buf = state["momentum_buffer"] = xp.array(g, dtype=p.dtype, copy=True)
                else:
                    buf *= momentum
                    buf += (1 - dampening) * g
                g = g + momentum * buf if nesterov else buf
            p.data -= lr * g
