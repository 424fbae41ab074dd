"""The seed tutorial's experiments, run on tinynorm:
``python -m demos list | all | training | NAME``.

Each demo is a module here with ``DESCRIPTION`` and
``main(quick=False, out="tinynorm-out", seed=0, backend="numpy") -> dict``; it prints a
table, saves PNG figures into ``out``, and ends with the seed's claim and a verdict.
"""
from __future__ import annotations

import importlib

# The registry, in two groups. ``all`` runs the seed's experiments, in the order of the
# tutorial (a few minutes on 2 cores); ``training`` runs the training experiments, each of
# which trains many small models (up to 5 minutes each).
SEED_DEMOS = (
    "gradient_flow",
    "activations",
    "layernorm_check",
    "norm_speed",
    "pre_vs_post",
    "gpt2_small",
)
# a small causal LM trained on the standard library's own sources
TRAINING_DEMOS = (
    "warmup",
    "depth",
    "update_size",
    "rms_vs_ln_training",
)
GROUPS = {"all": SEED_DEMOS, "training": TRAINING_DEMOS}
DEMOS = SEED_DEMOS + TRAINING_DEMOS


def load(name: str):
    """The module of demo ``name``; an unknown name raises, listing the known ones."""
    if name not in DEMOS:
        raise KeyError(f"unknown demo {name!r}; the demos are: {', '.join(DEMOS)}")
    return importlib.import_module(f"{__name__}.{name}")
