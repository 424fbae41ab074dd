"""What the training demos share: one training run of ``CausalLM``, and a grid of runs spread
over the CPU cores.

A run is a plain dict (``RunConfig`` fills in the defaults), so that it can be sent to a
worker process and printed as it was run. Each run seeds its own model initialisation
(``tn.manual_seed(seed)``) and its own batch generator (``data_generator(seed)``): two runs
with the same seed see the same batches, whatever their architecture, and a grid gives the
same numbers on one process or on many.
"""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np

import tinynorm as tn
from tinynorm.data import CharCorpus, data_generator
from tinynorm.models import CausalLM
from tinynorm.optim.lr_scheduler import WarmupLR

from . import _common as C

ADAM_BETAS = (0.9, 0.98)  # Xiong et al. 2020 and Vaswani et al. 2017
STALL_MARGIN = 0.15  # nats: a final loss above H − this has learned (almost) only frequencies
SMOOTH_WINDOW = 10  # steps in the running mean of the plotted loss curves
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TINYNORM_NUM_THREADS")

DEFAULTS = dict(num_layers=6, d_model=64, num_heads=4, d_ff=None, norm="pre",
                norm_type="layer", residual=True, lr=1e-3, warmup=0, steps=200, batch=8,
                seq_len=32, seed=0, val_batches=4)


def RunConfig(**overrides) -> dict:  # noqa: N802 — reads as a constructor
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise KeyError(f"RunConfig: unknown settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **overrides}


_corpus_cache: dict = {}


def corpus() -> CharCorpus:
    """The standard-library corpus, built once per process."""
    key = tn.backend.current()
    if key not in _corpus_cache:
        _corpus_cache[key] = CharCorpus.stdlib()
    return _corpus_cache[key]


def build_model(cfg: dict, vocab_size: int) -> CausalLM:
    return CausalLM(vocab_size, cfg["d_model"], cfg["num_heads"], cfg["num_layers"],
                    d_ff=cfg["d_ff"], max_len=cfg["seq_len"],
                    norm=cfg["norm"], norm_type=cfg["norm_type"], residual=cfg["residual"])


def batches(cfg: dict):
    """A function giving the next (x, y) training batch of the corpus, and the vocab size."""
    generator = data_generator(cfg["seed"])
    data = corpus()
    return (lambda: data.get_batch("train", cfg["batch"], cfg["seq_len"], generator),
            data.vocab_size)


class Run:
    """One model of ``cfg`` with its optimizer, schedule and batches, seeded by ``cfg["seed"]``:
    Adam(betas=ADAM_BETAS), a linear warm-up over ``cfg["warmup"]`` steps then a constant lr.
    Build it inside ``C.setup(backend, ...)``."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        tn.manual_seed(cfg["seed"])
        self.next_batch, vocab_size = batches(cfg)
        self.model = build_model(cfg, vocab_size)
        self.optimizer = tn.optim.Adam(self.model.parameters(), lr=cfg["lr"], betas=ADAM_BETAS)
        self.schedule = WarmupLR(self.optimizer, cfg["warmup"], "constant")

    def step(self) -> float:
        """One update; returns the loss before it (nan/inf: the caller should stop)."""
        x, y = self.next_batch()
        loss = self.model.loss(x, y)
        value = C.to_float(loss)
        if math.isfinite(value):
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.schedule.step()
        return value

    def validation_loss(self) -> float:
        """Mean loss on ``val_batches`` validation batches, the same ones for every run."""
        generator = data_generator(10_000)
        with tn.no_grad():
            return float(np.mean([C.to_float(self.model.loss(*corpus().get_batch(
                "val", self.cfg["batch"], self.cfg["seq_len"], generator)))
                for _ in range(self.cfg["val_batches"])]))


def train(cfg: dict, backend: str = "numpy") -> dict:
    """Train one ``Run`` for ``cfg["steps"]`` steps.

    Returns the loss of every step (nan after a divergence, which ends the run), ``final``
    (the mean of the last 10% of steps), ``val`` (``Run.validation_loss``), ``diverged``,
    and the wall time per step.
    """
    with C.setup(backend, cfg["seed"]):
        run = Run(cfg)
        losses, diverged = [], False
        start = time.perf_counter()
        for _ in range(cfg["steps"]):
            losses.append(run.step())
            if not math.isfinite(losses[-1]):
                diverged = True
                break
        seconds = time.perf_counter() - start
        done = len(losses)
        losses += [math.nan] * (cfg["steps"] - done)
        final = math.nan if diverged else float(np.mean(losses[-max(1, cfg["steps"] // 10):]))
        val = math.nan if diverged else run.validation_loss()
    return {"config": cfg, "losses": losses, "final": final, "val": val, "diverged": diverged,
            "seconds_per_step": seconds / max(1, done)}


def _job(args):
    index, fn, cfg, backend = args
    # a model that blows up (the residual-only stacks do) overflows float32 on its way to
    # inf/nan; the run notices the non-finite loss and reports "diverged", so NumPy's
    # overflow warnings would only repeat that, once per op
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return index, fn(cfg, backend)


def run_grid(configs: list, backend: str = "numpy", workers: int | None = None,
             desc: str = "runs", fn=train) -> list:
    """``fn(cfg, backend)`` (default ``train``; a module-level function, so that a worker
    can import it) for every config; results in the order of ``configs``.

    On NumPy the runs go to ``workers`` processes (default: the CPU count, at most 8), each
    with single-threaded BLAS, even for one run: these matrices are far too small for BLAS's
    own threads to pay, and on a busy machine OpenBLAS's threads wait for each other so
    long that a step can take 30 times longer. ``workers=0`` runs here instead; CuPy runs
    always stay in this process (one GPU).
    """
    if workers is None:
        workers = min(os.cpu_count() or 1, 8, len(configs))
    jobs = [(i, fn, cfg, backend) for i, cfg in enumerate(configs)]
    results = [None] * len(jobs)
    if backend != "numpy" or workers < 1:
        for job in C.progress(jobs, desc=desc):
            i, result = _job(job)
            results[i] = result
        return results
    import multiprocessing

    saved = {name: os.environ.get(name) for name in BLAS_ENV}
    os.environ.update({name: "1" for name in BLAS_ENV})  # read by each worker's imports
    try:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for i, result in C.progress(pool.imap_unordered(_job, jobs), desc=desc,
                                        total=len(jobs)):
                results[i] = result
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return results


def stalled(final: float, entropy: float) -> bool:
    """A run that diverged, or ended within STALL_MARGIN of the unigram entropy (or above)."""
    return not math.isfinite(final) or final > entropy - STALL_MARGIN


def smooth(values, window: int = SMOOTH_WINDOW) -> tuple:
    """(steps, means): the running mean of ``values`` over ``window`` steps, and the step
    each mean belongs to.

    ``values[k]`` is the loss at step k (of the weights after k updates; ``Run.step`` returns
    the loss before its update), so the mean of steps k − window + 1 … k is placed at step k
    and the curve starts at step window − 1. A window that holds a nan (the end of a diverged
    run) is nan. Fewer than ``window`` values come back as they are, each at its own step.
    """
    values = np.asarray(values, dtype=float)
    if len(values) < window:
        return np.arange(len(values)), values
    kernel = np.ones(window) / window
    return np.arange(window - 1, len(values)), np.convolve(values, kernel, mode="valid")


def save_json(result: dict, out: str, name: str) -> str:
    """Write ``result`` as JSON (NaN as null) into ``out``; returns the path."""
    def clean(v):
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (np.floating, float)):
            return float(v) if math.isfinite(v) else None
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, np.ndarray):
            return clean(v.tolist())
        return v

    path = os.path.join(C.output_dir(out), name)
    with open(path, "w") as f:
        json.dump(clean(result), f, indent=1)
    print(f"results: {path}")
    return path
