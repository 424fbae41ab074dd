"""The seed tutorial's experiments, run on tinynorm: ``python -m demos list | all | NAME``.

Each demo is a module here with ``DESCRIPTION`` and
``main(quick=False, out="tinynorm-out", seed=0, backend="numpy") -> dict``; it prints a
table, saves PNG figures into ``out``, and ends with the seed's claim and a verdict.
"""
from __future__ import annotations

import importlib

# The registry, in the order of the tutorial (and of ``python -m demos all``).
DEMOS = (
    "gradient_flow",
    "activations",
    "layernorm_check",
    "norm_speed",
    "pre_vs_post",
    "gpt2_small",
    # training experiments (issue 6): a small causal LM trained on the stdlib's own sources
    "warmup",
    "depth",
    "update_size",
    "rms_vs_ln_training",
)


def load(name: str):
    """The module of demo ``name``; an unknown name raises, listing the known ones."""
    if name not in DEMOS:
        raise KeyError(f"unknown demo {name!r}; the demos are: {', '.join(DEMOS)}")
    return importlib.import_module(f"{__name__}.{name}")
