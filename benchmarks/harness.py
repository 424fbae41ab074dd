"""Shared timing method of every benchmark: same process, interleaved, medians and ratios.

Each repetition runs every contender once (in a random order, see ``interleaved``), so slow
drifts of the machine (another process, frequency scaling) fall on all of them alike; the
median of the repetitions is reported, and ratios are taken against the named baseline
(PyTorch CPU).
"""
from __future__ import annotations

# one timing method and one table layout, shared with the demos
from demos._common import format_table, interleaved  # noqa: F401


def table(rows: list, columns: list) -> str:
    """A plain-text table (the demos' layout); ``rows`` is a list of dicts keyed by
    ``columns``, numbers to three significant digits."""
    return format_table(rows, columns, cell=_fmt)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def torch_saved_bytes(run, exclude) -> int:
    """Bytes of the storages PyTorch saves for backward while ``run()`` records its graph,
    leaving out the storages of ``exclude`` (the inputs and parameters)."""
    import torch

    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(storages.values())
