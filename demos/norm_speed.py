"""LayerNorm vs RMSNorm: output statistics, and the seed's claim that RMSNorm is faster.

Part 1 is the seed's comparison of outputs: its ``LayerNorm(512)`` and ``RMSNorm(512)``
(``tinynorm.models``) on x = randn(2, 10, 512). Part 2 is its timing: both norms called on
one large x, forward as in the seed (parameters requiring grad), and forward+backward.
The seed times x of shape (100, 2048, 4096) on a GPU; that is the shape with
``--backend cupy``. On the CPU (numpy) the default is (16, 512, 1024), --quick (4, 128, 256).

tinynorm runs twice: its fused ops (``tinynorm.models``), and the seed's forwards written
line for line with tinynorm's ops (mean, var, sqrt, ...), each op differentiated on its own.
Beside it, when PyTorch is installed (on CUDA with --backend cupy, if it has CUDA): the
seed's own PyTorch classes, composed of separate tensor ops as in the tutorial, and
PyTorch's built-in F.layer_norm / F.rms_norm. Each call is timed interleaved (every
repetition runs each contender once, in a random order) and the median reported, so a slow
moment of the machine falls on every contender alike.
"""
from __future__ import annotations

import numpy as np

import tinynorm as tn
from tinynorm.models import ComposedLayerNorm, ComposedRMSNorm, LayerNorm, RMSNorm

from . import _common as C

DESCRIPTION = ("LayerNorm vs RMSNorm: output statistics and timing beside PyTorch "
               "(the seed's claim: RMSNorm is faster)")

SEED_CLASSES, BUILT_IN = "PyTorch, seed's classes", "PyTorch built-in"
COMPOSED = "tinynorm, seed's forwards"  # the seed's code, on tinynorm's ops
SHAPES = {"quick": (4, 128, 256), "numpy": (16, 512, 1024), "cupy": (100, 2048, 4096)}
TIE = 0.1  # a speedup within 10% of 1 is a tie: these medians of a few calls vary that much
REPEATS = {"quick": 5, "numpy": 10, "cupy": 20}


def synchronizer(backend: str, torch_cuda: bool):
    """A function that waits for queued GPU work (timings on a GPU need it)."""
    waits = []
    if backend == "cupy":
        import cupy

        waits.append(cupy.cuda.Device().synchronize)
    if torch_cuda:
        import torch

        waits.append(torch.cuda.synchronize)
    return lambda: [w() for w in waits]


def output_stats(seed_ln, seed_rms) -> list:
    """Part 1, the seed's lines: both norms on x = randn(2, 10, 512)."""
    x = tn.randn(2, 10, 512)
    rows = []
    for name, norm in (("LayerNorm", seed_ln), ("RMSNorm", seed_rms)):
        y = tn.backend.to_numpy(norm(x).detach().data)
        rows.append({"norm": name, "output mean": float(y.mean()),
                     "output std": float(y.std(ddof=1))})
    return rows


def tinynorm_contenders(shape, composed: bool = True):
    """The fused ops' forward and fwd+bwd, and with ``composed`` the seed's forwards on
    tinynorm's ops (``ComposedLayerNorm``, ``ComposedRMSNorm``)."""
    d = shape[-1]
    x = tn.randn(*shape)
    x_grad = tn.randn(*shape, requires_grad=True)
    upstream = tn.randn(*shape)

    def fwd_bwd(norm):
        def step():
            x_grad.grad = None
            norm.zero_grad()
            norm(x_grad).backward(upstream)
        return step

    libraries = {"tinynorm": (LayerNorm(d), RMSNorm(d))}
    if composed:
        libraries[COMPOSED] = (ComposedLayerNorm(d), ComposedRMSNorm(d))
    found = {}
    for library, norms in libraries.items():
        for name, norm in zip(("LayerNorm", "RMSNorm"), norms):
            found[(library, name, "forward")] = (lambda m: lambda: m(x))(norm)
            found[(library, name, "fwd+bwd")] = fwd_bwd(norm)
    return found


def torch_contenders(shape, device: str):
    """The seed's PyTorch classes and PyTorch's built-ins, or {} without PyTorch."""
    import torch

    from ._seed_torch import SeedLayerNorm, SeedRMSNorm

    d = shape[-1]
    x = torch.randn(*shape, device=device)
    x_grad = torch.randn(*shape, device=device, requires_grad=True)
    upstream = torch.randn(*shape, device=device)
    builtins = {"LayerNorm": torch.nn.LayerNorm(d).to(device),
                "RMSNorm": torch.nn.RMSNorm(d, eps=1e-5).to(device)}
    seeds = {"LayerNorm": SeedLayerNorm(d).to(device), "RMSNorm": SeedRMSNorm(d).to(device)}
    found = {}
    for library, modules in ((SEED_CLASSES, seeds), (BUILT_IN, builtins)):
        for name, module in modules.items():
            def forward(m=module):
                m(x)

            def fwd_bwd(m=module):
                x_grad.grad = None
                m.zero_grad()
                m(x_grad).backward(upstream)
            found[(library, name, "forward")] = forward
            found[(library, name, "fwd+bwd")] = fwd_bwd
    return found


def main(quick: bool = False, out: str = "tinynorm-out", seed: int = 0,
         backend: str = "numpy") -> dict:
    size = "quick" if quick else backend
    shape, repeat = SHAPES[size], REPEATS[size]
    try:
        import torch
        torch.manual_seed(seed)
        torch_device = "cuda" if backend == "cupy" else "cpu"
        has_torch = torch_device == "cpu" or torch.cuda.is_available()
    except ImportError:
        has_torch, torch_device = False, None

    with C.setup(backend, seed):
        stats = output_stats(LayerNorm(512), RMSNorm(512))
        C.table(stats, ["norm", "output mean", "output std"],
                title="The seed's LayerNorm(512) and RMSNorm(512) on x = randn(2, 10, 512)")
        # on a GPU, at the seed's shape, each array is 3.4 GB: the chains' graphs beside
        # PyTorch's cached blocks have not been measured there, so they run on the CPU only
        contenders = tinynorm_contenders(shape, composed=backend == "numpy")
        if has_torch:
            contenders.update(torch_contenders(shape, torch_device))
        sync = synchronizer(backend, has_torch and torch_device == "cuda")
        seconds = C.interleaved(contenders, repeat, warmup=1, seed=seed, sync=sync,
                                desc="timing")

    libraries = list(dict.fromkeys(lib for lib, _, _ in seconds))
    rows, speedups = [], {}
    for lib in libraries:
        for mode in ("forward", "fwd+bwd"):
            ln_s, rms_s = seconds[(lib, "LayerNorm", mode)], seconds[(lib, "RMSNorm", mode)]
            speedups[(lib, mode)] = ln_s / rms_s
            rows.append({"library": lib, "pass": mode, "LayerNorm ms": ln_s * 1e3,
                         "RMSNorm ms": rms_s * 1e3, "speedup (LN / RMS)": ln_s / rms_s})
    where = backend + (f", PyTorch on {torch_device}" if has_torch else ", PyTorch not installed")
    C.table(rows, ["library", "pass", "LayerNorm ms", "RMSNorm ms", "speedup (LN / RMS)"],
            title=f"float32 x of shape {shape}: medians of {repeat} interleaved calls ({where})")

    fig, axes = C.figure(1, 2, width=11, height=3.8)
    for ax, mode in zip(axes[0], ("forward", "fwd+bwd")):
        positions = np.arange(len(libraries))
        ln_ms = [seconds[(lib, "LayerNorm", mode)] * 1e3 for lib in libraries]
        rms_ms = [seconds[(lib, "RMSNorm", mode)] * 1e3 for lib in libraries]
        ax.bar(positions - 0.2, ln_ms, 0.4, label="LayerNorm")
        ax.bar(positions + 0.2, rms_ms, 0.4, label="RMSNorm")
        ax.set_xticks(positions, [lib.replace(", ", "\n") for lib in libraries], fontsize=8)
        ax.set(title=f"{mode}, x {shape}", ylabel="ms per call")
        ax.legend(fontsize=8)
    figures = [C.save(fig, out, "norm_speed.png")]

    ours = speedups[("tinynorm", "forward")], speedups[("tinynorm", "fwd+bwd")]
    measured = (f"tinynorm's RMSNorm is {ours[0]:.2f}x LayerNorm's speed forward, "
                f"{ours[1]:.2f}x fwd+bwd")
    composed_speedups = speedups.get((COMPOSED, "forward")), speedups.get((COMPOSED, "fwd+bwd"))
    if composed_speedups[0] is not None:
        measured += (f"; the seed's forwards on tinynorm's ops {composed_speedups[0]:.2f}x "
                     f"forward, {composed_speedups[1]:.2f}x fwd+bwd")
    if has_torch:
        measured += (f"; PyTorch: the seed's classes {speedups[(SEED_CLASSES, 'forward')]:.2f}x, "
                     f"the built-ins {speedups[(BUILT_IN, 'forward')]:.2f}x forward")
    if all(s > 1 + TIE for s in ours):
        holds = True
        if has_torch and speedups[(BUILT_IN, "forward")] <= 1:
            holds = ("holds for tinynorm's fused ops, not for PyTorch's built-ins on this device "
                     "(its RMSNorm is not one fused kernel there): it depends on the "
                     "implementation")
    elif all(s < 1 - TIE for s in ours):
        holds = False
    else:
        composed = (" and gains where a norm is composed of separate operations (the seed's "
                    "forwards), where skipping the mean skips whole ops"
                    if (composed_speedups[0] or 0) > 1 + TIE
                    or (has_torch and speedups[(SEED_CLASSES, "forward")] > 1 + TIE) else "")
        holds = ("holds in part: tinynorm's one-pass kernels run both at about the same speed "
                 "(each reads x and writes y once; the mean that RMSNorm skips is a small part "
                 f"of that){composed}: it depends on the implementation")
    line = C.verdict("RMSNorm is faster than LayerNorm (no mean computation)", holds, measured)
    return {"shape": shape, "output_stats": stats,
            "ms": {" / ".join(key): s * 1e3 for key, s in seconds.items()},
            "speedup": {" / ".join(key): v for key, v in speedups.items()},
            "figures": figures, "verdict": line}


if __name__ == "__main__":
    main()
