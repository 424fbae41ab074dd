"""Learning-rate schedules: each sets every group's lr to base_lr · factor(step).

Semantics as ``torch.optim.lr_scheduler``: creating a scheduler records each group's
``initial_lr`` and applies the factor of step 0; each ``scheduler.step()`` (called after
``optimizer.step()``) advances ``last_epoch`` by one and applies its factor;
``get_last_lr()`` returns the lrs last applied. All factors here are closed forms of
``last_epoch`` (PyTorch computes LinearLR and CosineAnnealingLR recursively from the
previous lr; the values agree up to rounding), so resuming from ``state_dict()`` gives the
same lrs exactly.

For transformers, ``WarmupLR`` is a linear warm-up followed by a constant, cosine or
inverse-square-root decay.
"""
from __future__ import annotations

import math

DECAYS = ("constant", "cosine", "inverse_sqrt")


class LRScheduler:
    """Base class: subclasses define ``factor(step)``, the multiplier of each base lr."""

    def __init__(self, optimizer, last_epoch: int = -1):
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] "
                                   f"when resuming an optimizer")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def factor(self, step: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list:
        """The lrs for ``last_epoch``."""
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]

    def get_last_lr(self) -> list:
        """The lrs applied by the last ``step()``."""
        return self._last_lr

    def step(self) -> None:
        """Advance one step and set every group's lr."""
        self.last_epoch += 1
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def state_dict(self) -> dict:
        """Every attribute but the optimizer (and functions, which cannot be saved)."""
        return {key: value for key, value in self.__dict__.items()
                if key != "optimizer" and not callable(value) and key != "lr_lambdas"}

    def check_state_dict(self, state_dict: dict) -> None:
        """A ValueError if ``state_dict`` is not this scheduler's kind of state."""
        if not isinstance(state_dict, dict):
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected a dict, got "
                             f"{type(state_dict).__name__}")
        expected = set(self.state_dict())
        if set(state_dict) != expected:
            raise ValueError(f"{type(self).__name__}.load_state_dict: keys "
                             f"{sorted(state_dict)} do not match this scheduler's "
                             f"{sorted(expected)}")
        if len(state_dict["base_lrs"]) != len(self.base_lrs):
            raise ValueError(f"{type(self).__name__}.load_state_dict: state for "
                             f"{len(state_dict['base_lrs'])} parameter groups, the optimizer "
                             f"has {len(self.base_lrs)}")

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the attributes saved by ``state_dict()`` (the lrs themselves live in the
        optimizer's state_dict)."""
        self.check_state_dict(state_dict)
        self.__dict__.update(state_dict)


class LambdaLR(LRScheduler):
    """lr = base_lr · lr_lambda(last_epoch); one function, or one per group."""

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1):
        groups = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != groups:
                raise ValueError(f"Expected {groups} lr_lambdas, but got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * groups
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        return [base_lr * fn(self.last_epoch)
                for fn, base_lr in zip(self.lr_lambdas, self.base_lrs)]


class LinearLR(LRScheduler):
    """factor = start + (end − start) · min(step, total_iters) / total_iters."""

    def __init__(self, optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR: start_factor must be in (0, 1] and end_factor in "
                             f"[0, 1]; got {start_factor} and {end_factor}")
        self.start_factor, self.end_factor, self.total_iters = start_factor, end_factor, total_iters
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if self.total_iters == 0:
            return self.end_factor
        done = min(step, self.total_iters) / self.total_iters
        return self.start_factor + (self.end_factor - self.start_factor) * done


class CosineAnnealingLR(LRScheduler):
    """lr = η_min + (base_lr − η_min) · (1 + cos(π · step / T_max)) / 2.

    Like PyTorch's closed form, the cosine keeps going past T_max (back up again)."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        cos = (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
        return [self.eta_min + (base_lr - self.eta_min) * cos for base_lr in self.base_lrs]


class WarmupLR(LRScheduler):
    """Linear warm-up over ``warmup_steps``, then ``decay``: with s = last_epoch and
    W = warmup_steps,

        s < W:   factor = (s + 1) / W               (lr/W at the first step, lr at s = W − 1)
        s ≥ W:   "constant":      1
                 "cosine":        r + (1 − r) · (1 + cos(π · min(s − W, T) / T)) / 2,
                                  T = total_steps − W, r = min_lr_ratio
                 "inverse_sqrt":  √(W / (s + 1))     (continuous at s = W − 1; Vaswani et al.)

    The cosine form equals PyTorch's ``SequentialLR([LinearLR(1/W, 1, W − 1),
    CosineAnnealingLR(T_max=total_steps − W, eta_min=r·lr)], milestones=[W])``, except that
    it stays at r·lr after total_steps instead of rising again. ``warmup_steps=0`` means no
    warm-up (inverse_sqrt then needs W ≥ 1 and raises).
    """

    def __init__(self, optimizer, warmup_steps: int, decay: str = "constant",
                 total_steps: int | None = None, min_lr_ratio: float = 0.0,
                 last_epoch: int = -1):
        if decay not in DECAYS:
            raise ValueError(f"WarmupLR: decay={decay!r}; expected one of {DECAYS}")
        if warmup_steps < 0 or (decay == "inverse_sqrt" and warmup_steps < 1):
            raise ValueError(f"WarmupLR: warmup_steps={warmup_steps}; expected >= 0 "
                             f"(>= 1 for inverse_sqrt, whose scale is set by it)")
        if decay == "cosine" and (total_steps is None or total_steps <= warmup_steps):
            raise ValueError(f"WarmupLR: cosine decay needs total_steps > warmup_steps "
                             f"({warmup_steps}); got total_steps={total_steps}")
        self.warmup_steps, self.decay = int(warmup_steps), decay
        self.total_steps, self.min_lr_ratio = total_steps, float(min_lr_ratio)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return warmup_factor(step, self.warmup_steps, self.decay, self.total_steps,
                             self.min_lr_ratio)

    def check_state_dict(self, state_dict: dict) -> None:
        super().check_state_dict(state_dict)
        mine = (self.warmup_steps, self.decay, self.total_steps, self.min_lr_ratio)
        theirs = tuple(state_dict[k] for k in ("warmup_steps", "decay", "total_steps",
                                               "min_lr_ratio"))
        if mine != theirs:
            raise ValueError(f"WarmupLR.load_state_dict: saved schedule (warmup_steps, decay, "
                             f"total_steps, min_lr_ratio) = {theirs} differs from this one's "
                             f"{mine}")


def warmup_factor(step: int, warmup_steps: int, decay: str = "constant",
                  total_steps: int | None = None, min_lr_ratio: float = 0.0) -> float:
    """The multiplier of the base lr at ``step`` (0-based); see ``WarmupLR``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    if decay == "inverse_sqrt":
        return math.sqrt(warmup_steps / (step + 1))
    span = total_steps - warmup_steps
    progress = min(step - warmup_steps, span) / span
    return min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * progress)) / 2


def warmup_schedule(optimizer, warmup_steps: int, decay: str = "constant",
                    total_steps: int | None = None, min_lr_ratio: float = 0.0) -> WarmupLR:
    """``WarmupLR(optimizer, warmup_steps, decay, total_steps, min_lr_ratio)``."""
    return WarmupLR(optimizer, warmup_steps, decay, total_steps, min_lr_ratio)
