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

A speedup (LayerNorm's median time / RMSNorm's) comes with a 95% bootstrap interval over the
repetitions, and the verdict (``judge``) reads the intervals, not the medians: RMSNorm is
faster (slower) only where the whole interval lies above 1 + TIE (below 1 - TIE), and ties
otherwise. A median of a few calls moves by more than 10% between identical runs here, so a
verdict read off the medians alone flipped from run to run.
"""
from __future__ import annotations

import gc

import numpy as np

import tinynorm as tn
from tinynorm.models import ComposedLayerNorm, ComposedRMSNorm, LayerNorm, RMSNorm

from . import _common as C

DESCRIPTION = ("LayerNorm vs RMSNorm: output statistics and timing beside PyTorch "
               "(the seed's claim: RMSNorm is faster)")

SEED_CLASSES, BUILT_IN = "PyTorch, seed's classes", "PyTorch built-in"
COMPOSED = "tinynorm, seed's forwards"  # the seed's code, on tinynorm's ops
SHAPES = {"quick": (4, 128, 256), "numpy": (16, 512, 1024), "cupy": (100, 2048, 4096)}
TIE = 0.1  # a speedup whose 95% interval reaches into 1 ± TIE is a tie
REPEATS = {"quick": 15, "numpy": 25, "cupy": 40}
LEVEL, RESAMPLES = 0.95, 2000  # the bootstrap interval of each speedup
WORDS = {"faster": "faster", "slower": "slower", "tie": "about as fast"}


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


def timed_repetitions(contenders: dict, repeat: int, seed: int = 0, sync=None) -> dict:
    """Seconds of every call of each contender, one per repetition: ``C.interleaved`` run
    one repetition at a time (each in its own seeded random order), so that the repetitions
    can be resampled (``speedup_interval``).

    The interpreter's long-lived objects are frozen out of the garbage collector meanwhile:
    the timer collects before every call, and with PyTorch and numba loaded a full
    collection took 0.14 s here, more than most of the calls it precedes. Frozen, it takes
    microseconds, and the time saved goes to more repetitions."""
    times = {name: [] for name in contenders}
    gc.collect()
    gc.freeze()
    try:
        for i in C.progress(range(repeat), "timing"):
            one = C.interleaved(contenders, repeat=1, warmup=int(i == 0), seed=seed * repeat + i,
                                sync=sync)
            for name, seconds in one.items():
                times[name].append(seconds)
    finally:
        gc.unfreeze()
    return times


def speedup_interval(ln_s, rms_s, rng, level: float = LEVEL,
                     resamples: int = RESAMPLES) -> tuple:
    """A percentile bootstrap interval of median(ln_s) / median(rms_s), per-repetition
    seconds: the repetitions are drawn with replacement, LayerNorm's and RMSNorm's time of
    one repetition together (they ran in the same repetition, through the same slow
    moments of the machine)."""
    ln_s, rms_s = np.asarray(ln_s), np.asarray(rms_s)
    picks = rng.integers(0, len(ln_s), size=(resamples, len(ln_s)))
    ratios = np.median(ln_s[picks], axis=1) / np.median(rms_s[picks], axis=1)
    low, high = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def classify(interval) -> str:
    """RMSNorm is "faster" where the speedup's whole interval lies above 1 + TIE, "slower"
    where it lies below 1 - TIE, and a "tie" where it reaches into 1 ± TIE."""
    low, high = interval
    if low > 1 + TIE:
        return "faster"
    if high < 1 - TIE:
        return "slower"
    return "tie"


def _passes(forward: str, fwd_bwd: str) -> str:
    """'faster forward and fwd+bwd', 'about as fast forward, slower fwd+bwd', ..."""
    if forward == fwd_bwd:
        return f"{WORDS[forward]} forward and fwd+bwd"
    return f"{WORDS[forward]} forward, {WORDS[fwd_bwd]} fwd+bwd"


def judge(intervals: dict):
    """The verdict's outcome from the speedups' intervals, ``(library, pass) -> (low,
    high)``: True (the claim holds), False (it does not), or a sentence.

    The claim holds where tinynorm's fused RMSNorm is faster in both passes, and PyTorch's
    built-ins (where they ran) agree; it holds in part where RMSNorm is faster somewhere:
    one of tinynorm's passes, the norms composed of separate ops (the seed's forwards, on
    tinynorm's ops or in its PyTorch classes, forward as the seed times them), or the
    built-ins; otherwise it does not hold. The sentence names each pass as faster, slower
    or about as fast (``classify``), and the built-ins where they point another way."""
    kind = {key: classify(interval) for key, interval in intervals.items()}
    ours = kind[("tinynorm", "forward")], kind[("tinynorm", "fwd+bwd")]
    built_in = ((kind[(BUILT_IN, "forward")], kind[(BUILT_IN, "fwd+bwd")])
                if (BUILT_IN, "forward") in kind else None)
    composed_gains = any(kind.get((lib, "forward")) == "faster"
                         for lib in (COMPOSED, SEED_CLASSES))
    if ours == ("tie", "tie"):
        parts = ["tinynorm's one-pass kernels run both at about the same speed (each reads x "
                 "and writes y once; the mean that RMSNorm skips is a small part of that)"]
    else:
        parts = [f"tinynorm's RMSNorm is {_passes(*ours)}"]
    if composed_gains:
        parts.append("RMSNorm gains where a norm is composed of separate operations (the "
                     "seed's forwards), where skipping the mean skips whole ops")
    if built_in is not None and built_in != ours:
        parts.append(f"PyTorch's built-in RMSNorm is {_passes(*built_in)}")

    if ours == ("faster", "faster"):
        if built_in is None or built_in == ours:
            return True
        extent = "only in part" if "faster" in built_in else "not"
        return (f"claim holds for tinynorm's fused ops, {extent} for PyTorch's built-ins on "
                f"this device (their RMSNorm is {_passes(*built_in)}): it depends on the "
                "implementation")
    if "faster" in ours or composed_gains or (built_in is not None and "faster" in built_in):
        return "claim holds in part: " + "; ".join(parts) + ": it depends on the implementation"
    if ours == ("slower", "slower") and len(parts) == 1:
        return False
    return "claim does NOT hold: " + "; ".join(parts)


def measured(speedups: dict, intervals: dict) -> str:
    """The verdict's numbers: each speedup the verdict reads, with its interval."""
    def x(library, mode):
        low, high = intervals[(library, mode)]
        return f"{speedups[(library, mode)]:.2f}x {mode} ({low:.2f}–{high:.2f})"

    text = (f"RMSNorm's speed over LayerNorm's (95% interval): tinynorm "
            f"{x('tinynorm', 'forward')}, {x('tinynorm', 'fwd+bwd')}")
    if (COMPOSED, "forward") in speedups:
        text += (f"; the seed's forwards on tinynorm's ops {x(COMPOSED, 'forward')}, "
                 f"{x(COMPOSED, 'fwd+bwd')}")
    if (BUILT_IN, "forward") in speedups:
        text += (f"; PyTorch: the seed's classes {x(SEED_CLASSES, 'forward')}, the built-ins "
                 f"{x(BUILT_IN, 'forward')}, {x(BUILT_IN, 'fwd+bwd')}")
    return text


def setting(backend: str, torch_installed: bool, torch_device) -> str:
    """Where the table's libraries ran; ``torch_device`` is None where PyTorch did not run
    (not installed, or without CUDA beside ``--backend cupy``)."""
    if torch_device is not None:
        return f"{backend}, PyTorch on {torch_device}"
    return f"{backend}, PyTorch " + ("without CUDA" if torch_installed else "not installed")


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
        torch_installed = True
        torch_device = "cuda" if backend == "cupy" else "cpu"
        if torch_device == "cuda" and not torch.cuda.is_available():
            torch_device = None
    except ImportError:
        torch_installed, torch_device = False, None
    has_torch = torch_device is not None

    with C.setup(backend, seed):
        stats = output_stats(LayerNorm(512), RMSNorm(512))
        C.table(stats, ["norm", "output mean", "output std"],
                title="The seed's LayerNorm(512) and RMSNorm(512) on x = randn(2, 10, 512)")
        # on a GPU, at the seed's shape, each array is 3.4 GB: the chains' graphs beside
        # PyTorch's cached blocks have not been measured there, so they run on the CPU only
        contenders = tinynorm_contenders(shape, composed=backend == "numpy")
        if has_torch:
            contenders.update(torch_contenders(shape, torch_device))
        sync = synchronizer(backend, torch_device == "cuda")
        times = timed_repetitions(contenders, repeat, seed=seed, sync=sync)
    seconds = {name: float(np.median(ts)) for name, ts in times.items()}

    libraries = list(dict.fromkeys(lib for lib, _, _ in seconds))
    rows, speedups, intervals = [], {}, {}
    rng = np.random.default_rng(seed)
    for lib in libraries:
        for mode in ("forward", "fwd+bwd"):
            ln, rms = (lib, "LayerNorm", mode), (lib, "RMSNorm", mode)
            speedups[(lib, mode)] = seconds[ln] / seconds[rms]
            intervals[(lib, mode)] = low, high = speedup_interval(times[ln], times[rms], rng)
            rows.append({"library": lib, "pass": mode, "LayerNorm ms": seconds[ln] * 1e3,
                         "RMSNorm ms": seconds[rms] * 1e3,
                         "speedup (LN / RMS)": speedups[(lib, mode)],
                         "95% interval": f"{low:.3f}–{high:.3f}",
                         "RMSNorm is": WORDS[classify((low, high))]})
    where = setting(backend, torch_installed, torch_device)
    C.table(rows, ["library", "pass", "LayerNorm ms", "RMSNorm ms", "speedup (LN / RMS)",
                   "95% interval", "RMSNorm is"],
            title=f"float32 x of shape {shape}: medians of {repeat} interleaved calls, "
                  f"speedups' 95% bootstrap intervals ({where})")

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

    line = C.verdict("RMSNorm is faster than LayerNorm (no mean computation)",
                     judge(intervals), measured(speedups, intervals))
    return {"shape": shape, "output_stats": stats,
            "ms": {" / ".join(key): s * 1e3 for key, s in seconds.items()},
            "speedup": {" / ".join(key): v for key, v in speedups.items()},
            "speedup_interval": {" / ".join(key): v for key, v in intervals.items()},
            "figures": figures, "verdict": line}


if __name__ == "__main__":
    main()
