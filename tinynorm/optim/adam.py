"""Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019), as torch.optim's."""
from __future__ import annotations

import math

from .. import backend
from .optimizer import Optimizer


class Adam(Optimizer):
    """Adam; PyTorch's update, per parameter θ with gradient g at step t = 1, 2, ...:

        g ← −g                               (maximize: ascend instead)
        g ← g + λ·θ                          (weight_decay λ ≠ 0: L2 added to the gradient;
                                              decoupled_weight_decay: AdamW's, below)
        m ← m + (1 − β1)·(g − m)             (= β1·m + (1 − β1)·g)
        v ← β2·v + (1 − β2)·g²
        v̂ ← max(v̂, v) if amsgrad, else v̂ = v
        θ ← θ − (lr / (1 − β1^t)) · m / (√v̂ / √(1 − β2^t) + ε)

    ε is added *after* the bias correction of √v, as in PyTorch's implementation (the
    paper's m̂ / (√v̂ + ε) puts it before).
    State per parameter: ``step`` t (an int), ``exp_avg`` m, ``exp_avg_sq`` v and, with
    amsgrad, ``max_exp_avg_sq`` v̂: three or four arrays of the parameter's size.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def _update_group(self, group: dict, params: list) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        weight_decay, amsgrad = group["weight_decay"], group["amsgrad"]
        for p in params:
            xp = backend.array_module(p.data, p.grad, op=type(self).__name__)
            state = self.state.setdefault(p, {})
            if not state:
                state["step"] = 0
                state["exp_avg"] = xp.zeros_like(p.data)
                state["exp_avg_sq"] = xp.zeros_like(p.data)
                if amsgrad:
                    state["max_exp_avg_sq"] = xp.zeros_like(p.data)
            m, v = state["exp_avg"], state["exp_avg_sq"]
            state["step"] += 1
            t = state["step"]

            g = -p.grad if group["maximize"] else p.grad  # -p.grad: a new array
            if weight_decay != 0:
                if group["decoupled_weight_decay"]:
                    p.data *= 1 - lr * weight_decay  # AdamW: shrink θ itself, not through g
                else:
                    g = g + weight_decay * p.data  # a new array: p.grad stays unchanged
            m += (1 - beta1) * (g - m)
            v *= beta2
            g_squared = g * g  # one new array, scaled in place
            g_squared *= 1 - beta2
            v += g_squared
            if amsgrad:
                xp.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
                v_hat = state["max_exp_avg_sq"]
            else:
                v_hat = v

            bias_correction1 = 1 - beta1 ** t
            bias_correction2_sqrt = math.sqrt(1 - beta2 ** t)
            step_size = lr / bias_correction1
            denom = xp.sqrt(v_hat)  # new arrays: the denominator and the update, then in place
            denom /= bias_correction2_sqrt
            denom += eps
            update = m / denom
            update *= step_size
            p.data -= update


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019); PyTorch's update:

        θ ← θ · (1 − lr·λ)                   (before anything else; g is left alone)
        then Adam's update above with λ = 0 in the gradient.

    Default weight_decay λ = 1e-2, as PyTorch. Same state as Adam; its groups say
    ``decoupled_weight_decay=True``, as PyTorch's do.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True)
