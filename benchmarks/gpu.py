"""Fused CUDA kernels vs tinynorm's unfused CuPy path vs PyTorch CUDA: fwd+bwd, float32.

    python benchmarks/gpu.py                  # about a minute on an H100
    python benchmarks/gpu.py --quick          # the two smaller shapes, fewer repeats
    python benchmarks/gpu.py --out table.txt  # also write the report to a file

Needs a CUDA GPU, CuPy, and a CUDA build of PyTorch (its rows are left out without one).

For LayerNorm (weight and bias), RMSNorm (weight) and softmax over the last dim of x of shape
(4096, 4096), (16384, 4096) and the seed's (100, 2048, 4096), each contender runs forward
then backward with a fixed random upstream gradient (never all ones), computing every
input's gradient:

* ``fused kernels``: tinynorm.kernels' forward and backward called directly;
* ``tinynorm fused``: the tinynorm op through autograd (Tensor in, .backward()), kernels on;
* ``tinynorm unfused``: the same op with ``tinynorm.kernels.fused(False)``, the reference
  array-module path on CuPy;
* ``torch``: torch.nn.functional.layer_norm / rms_norm / torch.softmax, torch.autograd.grad.

Timing: every call ends with a device synchronize, contenders interleaved per repetition
(benchmarks.harness.interleaved), medians reported. Warm-up runs (which include compiling
the kernels) are not timed; the first call's time, compile included, is reported apart,
measured with CuPy's kernel cache cleared in memory (and cold on disk when CUPY_CACHE_DIR
points to an empty folder, as benchmarks/gpu_check.sh does).

Effective bandwidth counts the fewest bytes fwd+bwd must move: x read and y written
(forward), dy and x (softmax: y) read and dx written (backward): 5 arrays of x's size. It is
compared with the device's copy bandwidth, measured here with a 1 GiB CuPy copy (bytes read +
bytes written over time).

Targets (issue "GPU through CuPy", on an H100): fused LayerNorm fwd+bwd <= 1.0x PyTorch;
fused RMSNorm <= 0.8x PyTorch's RMSNorm; both >= 60% of copy bandwidth at (16384, 4096).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tinynorm as tn  # noqa: E402
from benchmarks.harness import interleaved, ms, table  # noqa: E402
from tinynorm import kernels  # noqa: E402

SHAPES = ((4096, 4096), (16384, 4096), (100, 2048, 4096))
TARGET_SHAPE = (16384, 4096)
EPS = 1e-5
GB = 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two smaller shapes, 5 repeats")
    parser.add_argument("--repeat", type=int, default=None, help="timed repetitions (default 15)")
    parser.add_argument("--out", default=None, help="also write the report here")
    args = parser.parse_args()
    repeat = args.repeat or (5 if args.quick else 15)
    shapes = SHAPES[:2] if args.quick else SHAPES

    try:
        cp = tn.backend.module("cupy")
    except RuntimeError as err:  # no CuPy or no GPU: say why, and how to fix it
        sys.exit(f"benchmarks/gpu.py needs a CUDA GPU: {err}")
    torch = _torch_cuda()
    lines = [_device_line(cp, torch)]
    copy_gbs = copy_bandwidth(cp)
    lines.append(f"copy bandwidth (1 GiB device-to-device, read + write): {copy_gbs:.0f} GB/s")
    lines += ["", "first call (compile + load) vs warm call, fused fwd+bwd on (64, 1024) float32:",
              table(first_call_times(cp), ["kernels", "first call ms", "warm call ms"])]

    rows, verdicts = [], []
    for shape in shapes:
        for op in ("layer_norm", "rms_norm", "softmax"):
            result = measure(cp, torch, op, shape, repeat)
            rows += result
            if shape == TARGET_SHAPE and op != "softmax":
                verdicts += verdict(op, result, copy_gbs)
            _free(cp, torch)
    for row in rows:
        row["% copy bw"] = round(100 * row["GB/s"] / copy_gbs, 1) if "GB/s" in row else ""
    lines += ["", f"fwd+bwd, float32, median of {repeat} (ms; GB/s = 5 arrays of x / time):",
              table(rows, ["op", "shape", "contender", "ms", "GB/s", "% copy bw", "vs torch"]),
              "", "verdict (targets at (16384, 4096)):"] + verdicts
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


# ---- setup ------------------------------------------------------------------------------
def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _device_line(cp, torch) -> str:
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    free, total = cp.cuda.runtime.memGetInfo()
    torch_part = f"torch {torch.__version__}" if torch else "no CUDA PyTorch (its rows left out)"
    return (f"device: {name}, {props['multiProcessorCount']} SMs, {total / 2**30:.0f} GiB "
            f"({free / 2**30:.0f} free); CuPy {cp.__version__}, CUDA runtime "
            f"{cp.cuda.runtime.runtimeGetVersion()}; {torch_part}")


def _sync(cp):
    cp.cuda.runtime.deviceSynchronize()


def _free(cp, torch):
    _sync(cp)
    cp.get_default_memory_pool().free_all_blocks()
    if torch:
        torch.cuda.empty_cache()


def copy_bandwidth(cp, nbytes: int = 1 << 30) -> float:
    """GB/s of a device-to-device copy, counting bytes read plus bytes written (median of 20)."""
    a = cp.random.random(nbytes // 4, dtype=cp.float32)
    b = cp.empty_like(a)
    times = []
    for i in range(23):
        _sync(cp)
        t0 = time.perf_counter()
        cp.copyto(b, a)
        _sync(cp)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    del a, b
    cp.get_default_memory_pool().free_all_blocks()
    return 2 * nbytes / statistics.median(times) / GB


def first_call_times(cp) -> list:
    """Time of the first fwd+bwd (NVRTC compile or disk-cache load, module load, launch) and
    of the next one, per kernel source."""
    x, w, b, dy = _inputs(cp, (64, 1024))
    calls = {
        "norms (layer_norm fwd+bwd)": lambda: _fused_call("layer_norm", x, w, b, dy),
        "softmax (fwd+bwd)": lambda: _fused_call("softmax", x, w, b, dy),
    }
    kernels.clear_cache()
    out = []
    for name, call in calls.items():
        times = []
        for _ in range(2):
            _sync(cp)
            t0 = time.perf_counter()
            call()
            _sync(cp)
            times.append(time.perf_counter() - t0)
        out.append({"kernels": name, "first call ms": ms(times[0]), "warm call ms": ms(times[1])})
    return out


def _inputs(cp, shape):
    gen = cp.random.default_rng(0)
    x = gen.standard_normal(shape, dtype=cp.float32) * 2 + 0.5
    n = shape[-1]
    w = gen.standard_normal(n, dtype=cp.float32) * 0.5 + 1
    b = gen.standard_normal(n, dtype=cp.float32) * 0.5
    dy = gen.standard_normal(shape, dtype=cp.float32)
    return x, w, b, dy


# ---- contenders -------------------------------------------------------------------------
def _fused_call(op, x, w, b, dy):
    n = x.shape[-1]
    x2, dy2 = x.reshape(-1, n), dy.reshape(-1, n)
    if op == "layer_norm":
        y, mean, rstd = kernels.layer_norm_forward(x2, w, b, EPS)
        return y, kernels.layer_norm_backward(dy2, x2, w, mean, rstd)
    if op == "rms_norm":
        y, rstd = kernels.rms_norm_forward(x2, w, EPS)
        return y, kernels.rms_norm_backward(dy2, x2, w, rstd)
    y = kernels.softmax_forward(x2)
    return y, kernels.softmax_backward(dy2, y)


def _tinynorm_call(op, x, w, b, dy):
    F = tn.nn.functional
    n = x.shape[-1]
    tx, tw, tb = (tn.Tensor(a, requires_grad=True) for a in (x, w, b))
    if op == "layer_norm":
        y = F.layer_norm(tx, (n,), tw, tb, EPS)
    elif op == "rms_norm":
        y = F.rms_norm(tx, (n,), tw, EPS)
    else:
        y = tn.softmax(tx, -1)
    y.backward(dy)
    return y, tx.grad


def _torch_call(torch, op, tx, tw, tb, tdy):
    F = torch.nn.functional
    n = tx.shape[-1]
    if op == "layer_norm":
        y = F.layer_norm(tx, (n,), tw, tb, EPS)
        return y, torch.autograd.grad(y, (tx, tw, tb), tdy)
    if op == "rms_norm":
        y = F.rms_norm(tx, (n,), tw, EPS)
        return y, torch.autograd.grad(y, (tx, tw), tdy)
    y = torch.softmax(tx, -1)
    return y, torch.autograd.grad(y, (tx,), tdy)


def measure(cp, torch, op, shape, repeat) -> list:
    """One row per contender: median ms of fwd+bwd, effective GB/s, ratio to torch."""
    x, w, b, dy = _inputs(cp, shape)
    def unfused():
        with kernels.fused(False):
            return _tinynorm_call(op, x, w, b, dy)

    contenders = {"fused kernels": lambda: _fused_call(op, x, w, b, dy),
                  "tinynorm fused": lambda: _tinynorm_call(op, x, w, b, dy),
                  "tinynorm unfused": unfused}
    if torch is not None:
        # the same device memory, shared through DLPack: no copies, same inputs
        tx, tw, tb, tdy = (torch.from_dlpack(a) for a in (x, w, b, dy))
        tx, tw, tb = (t.detach().requires_grad_() for t in (tx, tw, tb))
        contenders["torch"] = lambda: _torch_call(torch, op, tx, tw, tb, tdy)
    # The unfused path's temporaries plus two memory pools (CuPy's, PyTorch's) hold about a
    # dozen arrays of x's size; where 24 would not fit, run contenders apart, pools emptied.
    big = x.nbytes * 24 > cp.cuda.runtime.memGetInfo()[0]

    def synced(fn):
        def run():
            fn()  # results are dropped here, so each call's outputs are freed before the next
            _sync(cp)
        return run

    times = {}
    if big:  # one contender at a time, pools emptied in between, so that they all fit
        for name, fn in contenders.items():
            times[name] = _guarded(
                lambda: interleaved({name: synced(fn)}, repeat=repeat)[name], name)
            _free(cp, torch)
    else:
        times = _guarded(lambda: interleaved({k: synced(f) for k, f in contenders.items()},
                                              repeat=repeat), "all")
    nbytes = 5 * x.nbytes
    base = times.get("torch") if isinstance(times.get("torch"), float) else None
    rows = []
    for name in contenders:
        t = times.get(name)
        row = {"op": op, "shape": "x".join(map(str, shape)), "contender": name}
        if isinstance(t, float):
            row.update({"ms": ms(t), "GB/s": round(nbytes / t / GB), "_t": t,
                        "vs torch": f"{t / base:.2f}x" if base else ""})
        else:
            row["ms"] = t or "failed"
        rows.append(row)
    return rows


def _guarded(fn, what):
    """The result of fn(), or a short reason when it fails (out of memory, say), so that one
    contender's failure does not lose the rest of the table."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001
        reason = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:60]}"
        print(f"  {what}: {reason}", file=sys.stderr)
        return reason if what != "all" else {}


def verdict(op, rows, copy_gbs) -> list:
    by = {r["contender"]: r for r in rows}
    fused, torch_row = by.get("fused kernels", {}), by.get("torch", {})
    if "_t" not in fused:
        return [f"  {op}: fused kernels failed, no verdict"]
    limit = 1.0 if op == "layer_norm" else 0.8
    out = []
    if "_t" in torch_row:
        ratio = fused["_t"] / torch_row["_t"]
        ok = ratio <= limit
        out.append(f"  {op}: fused {ratio:.2f}x torch (target <= {limit}x): "
                   f"{'MET' if ok else f'MISSED by {100 * (ratio / limit - 1):.0f}%'}")
    else:
        out.append(f"  {op}: no CUDA PyTorch here, ratio target not measured")
    share = fused["GB/s"] / copy_gbs
    out.append(f"  {op}: fused at {100 * share:.0f}% of copy bandwidth (target >= 60%): "
               f"{'MET' if share >= 0.6 else f'MISSED by {100 * (0.6 - share):.0f} points'}")
    return out


if __name__ == "__main__":
    main()
