"""What every demo shares: backend and seed setup, the output folder, a progress bar that
appears only when a demo runs long, plain-text tables, figures, and the closing verdict.

A demo reads like the tutorial: set up, measure, print a table, save a figure, state the
seed's claim and a verdict computed from the numbers.
"""
from __future__ import annotations

import contextlib
import gc
import os
import random
import statistics
import sys
import time
import tracemalloc

import numpy as np

import tinynorm as tn

PROGRESS_DELAY_S = 2.0  # the bar shows only once a loop has run this long
FIGURE_DPI = 90  # figures are committed to docs/figures: keep the PNGs small


@contextlib.contextmanager
def setup(backend: str = "numpy", seed: int = 0):
    """Run the body on ``backend`` with every generator seeded from ``seed``."""
    with tn.backend.use(backend):
        tn.manual_seed(seed)
        yield


def output_dir(out: str) -> str:
    os.makedirs(out, exist_ok=True)
    return out


def progress(iterable, desc: str, total: int | None = None):
    """A tqdm bar on stderr that appears only after PROGRESS_DELAY_S seconds, and only on a
    terminal (in a log file or CI the bar's redraws would be noise)."""
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in the "demos" extra; without it, no bar
        return iterable
    return tqdm(iterable, desc=desc, total=total, delay=PROGRESS_DELAY_S, leave=False,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5, disable=None)


def interleaved(contenders: dict, repeat: int = 15, warmup: int = 2, seed: int = 0, sync=None,
                desc: str | None = None) -> dict:
    """Median seconds per call of each ``name -> zero-argument callable``, interleaved: the
    timing method of the demos and of every benchmark (``benchmarks.harness``).

    Each repetition runs the contenders in a fresh random order (seeded, so a run can be
    repeated): a call right after another framework's can find the memory it is about to
    use handed back to the system by that framework's frees, and pay a page fault per fresh
    page (seen here: tinynorm block steps run after PyTorch's took about 2,000 more faults
    each). In a fixed order, or a rotation of it, every contender would keep the same
    predecessor in every repetition, and that cost would fall on some contenders only.

    ``sync`` (a GPU's synchronize) runs before each call's timer starts and before it stops;
    ``desc`` names a progress bar over the repetitions (``progress``).
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):  # allocations, kernel compilation
        for fn in contenders.values():
            fn()
    sync()
    times = {name: [] for name in contenders}
    names, order = list(contenders), random.Random(seed)
    for _ in (progress(range(repeat), desc) if desc else range(repeat)):
        order.shuffle(names)
        for name in names:
            fn = contenders[name]
            gc.collect()
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def to_float(t) -> float:
    """A tinynorm scalar tensor (or backend array) as a Python float."""
    data = t.data if isinstance(t, tn.Tensor) else t
    return float(tn.backend.to_numpy(data))


def grad_numpy(t) -> np.ndarray:
    """``t.grad`` as a NumPy array (copied from the GPU on cupy)."""
    return tn.backend.to_numpy(t.grad)


class timed_peak_memory:
    """Wall time and peak bytes of arrays allocated inside the block.

    On NumPy the peak comes from tracemalloc, which NumPy reports its array buffers to; it
    counts only what is allocated inside the block (not the model's parameters). On CuPy it
    is the growth of the memory pool's bytes in use, read at the end: a floor of the peak,
    missing every buffer freed before the end (``gpt2_small.timed_peak_memory`` adds a
    memory hook that sees each allocation).
    """

    def __init__(self, backend: str = "numpy"):
        self.backend = backend
        self.seconds = self.peak_bytes = None

    def __enter__(self):
        if self.backend == "cupy":
            import cupy

            cupy.cuda.Device().synchronize()
            self._pool = cupy.get_default_memory_pool()
            self._start_bytes = self._pool.used_bytes()
        else:
            tracemalloc.start()
            tracemalloc.reset_peak()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.backend == "cupy":
            import cupy

            cupy.cuda.Device().synchronize()
            self.seconds = time.perf_counter() - self._t0
            self.peak_bytes = self._pool.used_bytes() - self._start_bytes
        else:
            self.seconds = time.perf_counter() - self._t0
            self.peak_bytes = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        return False


def fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if v == 0.0:
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


def format_table(rows: list, columns: list, cell=fmt) -> str:
    """A plain-text table of ``rows`` (dicts keyed by ``columns``), each value written by
    ``cell``: right-aligned columns under a dashed rule (the demos' and the benchmarks')."""
    cells = [[str(c) for c in columns]] + [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table(rows: list, columns: list, title: str | None = None) -> str:
    """Print and return a plain-text table (``format_table``) under an optional title."""
    text = "\n".join(([title] if title else []) + [format_table(rows, columns)])
    print(text + "\n")
    return text


def figure(nrows: int = 1, ncols: int = 1, width: float = 6.0, height: float = 4.0):
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)


def save(fig, out: str, name: str) -> str:
    import matplotlib.pyplot as plt

    path = os.path.join(output_dir(out), name)
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    print(f"figure: {path}")
    return path


def outcome(checks: dict):
    """``verdict``'s ``holds`` from named checks: True if every one passed, False if none
    did, otherwise a "claim holds in part" line saying which did."""
    passed = sum(checks.values())
    if passed in (0, len(checks)):
        return passed == len(checks)
    return (f"claim holds in part ({passed} of {len(checks)}: "
            + "; ".join(f"{k}: {'yes' if v else 'no'}" for k, v in checks.items()) + ")")


def verdict(claim: str, holds, measured: str) -> str:
    """Print the seed's claim and a one-line verdict; return the verdict line.

    ``holds`` is True, False, or a string for a mixed outcome ("holds in part: ...").
    """
    if isinstance(holds, str):
        outcome = holds
    else:
        outcome = "claim holds" if holds else "claim does NOT hold"
    line = f"Verdict: {measured}: {outcome}"
    print(f"Seed's claim: {claim}")
    print(line)
    return line
