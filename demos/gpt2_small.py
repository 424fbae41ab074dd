"""The seed's GPT-2-small stack: ``Transformer(12, 768, 12, 3072)`` on (2, 1024, 768).

As the seed does it: a fresh model (training mode, so dropout is on) and
``output = model(torch.randn(2, 1024, 768))`` with gradients recorded. Reported: the
output's shape, the parameter count, the time and the peak memory of arrays allocated
during the call; then the same forward for inference (eval mode, no_grad), and a forward +
backward on a shorter sequence (2, 256, 768).

Peak memory: on NumPy, tracemalloc's peak (``_common.timed_peak_memory``); on CuPy, the
largest number of bytes in use in CuPy's memory pool at any allocation inside the call, above
what was in use before it (a memory hook, ``PoolPeak``; the growth read at the end would miss
every buffer freed before the end, and show about 0 for the no_grad forward).

The parameter count is checked against the formula for this architecture: per block
4d² + 4d (attention) + 2·d·d_ff + d_ff + d (feed-forward) + 4d (two norms), plus 2d for the
final norm: 85,056,000 for GPT-2 small (its token and position embeddings, not in the
seed's class, would add 39M).
"""
from __future__ import annotations

import contextlib

import numpy as np

import tinynorm as tn
from tinynorm.models import Transformer

from . import _common as C

DESCRIPTION = ("the seed's GPT-2-small Transformer(12, 768, 12, 3072) on (2, 1024, 768): shape, "
               "parameters, time, peak memory; forward+backward on (2, 256, 768)")

FULL = dict(num_layers=12, d_model=768, num_heads=12, d_ff=3072, batch=2, seq=1024, train_seq=256)
QUICK = dict(num_layers=2, d_model=64, num_heads=4, d_ff=256, batch=2, seq=128, train_seq=32)
SEED_CALL = "forward, train mode (the seed's call)"
INFERENCE = "forward, eval + no_grad"
TRAINING = "forward+backward, train mode"


class PoolPeak:
    """The largest ``used_bytes()`` read after any allocation, above the reading at creation.

    Bytes in use rise only at an allocation, so the largest reading taken just after each
    one is the peak. On CuPy it is a ``cupy.cuda.MemoryHook`` (``pool_peak_hook``), whose
    ``malloc_postprocess`` CuPy calls after every allocation from its memory pool, in the
    thread that registered the hook.
    """

    name = "demos.gpt2_small.PoolPeak"  # the key CuPy registers the hook under

    def __init__(self, used_bytes):
        self.used_bytes = used_bytes
        self.start = self.peak = used_bytes()

    def malloc_postprocess(self, **kwargs):
        self.peak = max(self.peak, self.used_bytes())

    @property
    def peak_bytes(self) -> int:
        return self.peak - self.start


def pool_peak_hook() -> PoolPeak:
    """A ``PoolPeak`` on CuPy's default memory pool, registered by ``with``."""
    import cupy  # measurement only, and only on the cupy backend

    hook_class = type("PoolPeakHook", (PoolPeak, cupy.cuda.MemoryHook), {})
    return hook_class(cupy.get_default_memory_pool().used_bytes)


@contextlib.contextmanager
def timed_peak_memory(backend: str):
    """``_common.timed_peak_memory``, with the peak on CuPy taken by ``pool_peak_hook``
    rather than read at the end."""
    with C.timed_peak_memory(backend) as m:
        if backend != "cupy":
            yield m
            return
        with pool_peak_hook() as hook:
            yield m
    # m.peak_bytes is the growth at the end: never above the peak, but kept as a floor
    m.peak_bytes = max(m.peak_bytes, hook.peak_bytes)


def expected_parameters(num_layers, d_model, d_ff) -> int:
    d = d_model
    per_block = (4 * d * d + 4 * d) + (2 * d * d_ff + d_ff + d) + 4 * d
    return num_layers * per_block + 2 * d


def main(quick: bool = False, out: str = "tinynorm-out", seed: int = 0,
         backend: str = "numpy") -> dict:
    s = QUICK if quick else FULL
    batch, seq, d_model = s["batch"], s["seq"], s["d_model"]
    runs = {}
    steps = ["build", "forward (seed: train mode, grad recorded)", "forward (eval, no_grad)",
             "forward+backward"]
    with C.setup(backend, seed):
        bar = C.progress(steps, desc="gpt2_small")
        for step in bar:
            if step == "build":
                model = Transformer(s["num_layers"], d_model, s["num_heads"], s["d_ff"],
                                    dropout=0.1)
                num_params = sum(p.numel() for p in model.parameters())
                x = tn.randn(batch, seq, d_model)
                with tn.no_grad():  # warm-up: the first GELU imports SciPy's erf
                    model(tn.randn(1, 4, d_model))
            elif step.startswith("forward (seed"):
                with timed_peak_memory(backend) as m:
                    output = model(x)
                runs[SEED_CALL] = (tuple(x.shape), m)
                shape = tuple(output.shape)
                out_np = tn.backend.to_numpy(output.data)
                finite = bool(np.isfinite(out_np).all())
                stats = (float(out_np.mean()), float(out_np.std()))
                del output, out_np
            elif step.startswith("forward (eval"):
                model.eval()
                with timed_peak_memory(backend) as m, tn.no_grad():
                    model(x)
                runs[INFERENCE] = (tuple(x.shape), m)
                model.train()
            else:
                x_short = tn.randn(batch, s["train_seq"], d_model, requires_grad=True)
                upstream = tn.randn(batch, s["train_seq"], d_model)
                with timed_peak_memory(backend) as m:
                    model(x_short).backward(upstream)
                runs[TRAINING] = (tuple(x_short.shape), m)

    expected = expected_parameters(s["num_layers"], d_model, s["d_ff"])
    config = (f"Transformer(num_layers={s['num_layers']}, d_model={d_model}, "
              f"num_heads={s['num_heads']}, d_ff={s['d_ff']}, dropout=0.1)")
    print(f"{config}: {num_params:,} parameters (formula: {expected:,})")
    print(f"Output shape: {shape}; output mean {stats[0]:.2e}, std {stats[1]:.4f}; "
          f"all finite: {finite}\n")
    rows = [{"call": name, "input": str(shape_in), "time (s)": m.seconds,
             "peak memory (MiB)": m.peak_bytes / 2**20}
            for name, (shape_in, m) in runs.items()]
    C.table(rows, ["call", "input", "time (s)", "peak memory (MiB)"],
            title=f"{config} on backend {backend} (peak: arrays allocated during the call)")

    fig, axes = C.figure(1, 2, width=10, height=3.2)
    short = {SEED_CALL: "forward (seed's call)", INFERENCE: "forward, no_grad", TRAINING: "fwd+bwd"}
    labels = [f"{short[name]}\n{shape_in}" for name, (shape_in, _) in runs.items()]
    for ax, values, unit in ((axes[0, 0], [m.seconds for _, m in runs.values()], "time (s)"),
                             (axes[0, 1], [m.peak_bytes / 2**20 for _, m in runs.values()],
                              "peak memory (MiB)")):
        ax.barh(labels, values, color=["C0", "C1", "C2"])
        ax.set(xlabel=unit)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
    axes[0, 1].set_yticklabels([])
    fig.suptitle(config, fontsize=9)
    figures = [C.save(fig, out, "gpt2_small.png")]

    holds = shape == (batch, seq, d_model) and finite and num_params == expected
    line = C.verdict(
        f"Transformer(num_layers={s['num_layers']}, d_model={d_model}, ...) maps x of shape "
        f"{(batch, seq, d_model)} to an output of the same shape"
        + (" (GPT-2 small: 12 layers, 768 wide)" if not quick else " (--quick: a small stand-in)"),
        holds,
        f"output shape {shape}, {num_params / 1e6:.1f}M parameters, forward "
        f"{runs[SEED_CALL][1].seconds:.2f} s",
    )
    return {"output_shape": shape, "num_parameters": num_params,
            "expected_parameters": expected, "finite": finite, "output_mean_std": stats,
            "timings_s": {k: m.seconds for k, (_, m) in runs.items()},
            "peak_bytes": {k: m.peak_bytes for k, (_, m) in runs.items()},
            "sizes": s, "figures": figures, "verdict": line}
