"""Shared timing method of every benchmark: same process, interleaved, medians and ratios.

Each repetition runs every contender once (in a random order, see ``interleaved``), so slow
drifts of the machine (another process, frequency scaling) fall on all of them alike; the
median of the repetitions is reported, and ratios are taken against the named baseline
(PyTorch CPU).
"""
from __future__ import annotations

import gc
import random
import statistics
import time


def interleaved(contenders: dict, repeat: int = 15, warmup: int = 2, seed: int = 0) -> dict:
    """Median seconds per call of each ``name -> zero-argument callable``, interleaved.

    Each repetition runs the contenders in a fresh random order (seeded, so a run can be
    repeated): a call right after another framework's can find the memory it is about to
    use handed back to the system by that framework's frees, and pay a page fault per fresh
    page (seen here: tinynorm block steps run after PyTorch's took about 2,000 more faults
    each). In a fixed order, or a rotation of it, every contender would keep the same
    predecessor in every repetition, and that cost would fall on some contenders only.
    """
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times = {name: [] for name in contenders}
    names, order = list(contenders), random.Random(seed)
    for _ in range(repeat):
        order.shuffle(names)
        for name in names:
            fn = contenders[name]
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def table(rows: list, columns: list) -> str:
    """A plain-text table; ``rows`` is a list of dicts keyed by ``columns``."""
    cells = [[str(c) for c in columns]] + [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
