"""The seed's transformer blocks: tinynorm vs PyTorch CPU, same weights, same process.

    python benchmarks/blocks.py            # everything (several minutes on 2 cores)
    python benchmarks/blocks.py --quick    # fewer repetitions of the large stack

On a machine shared with other jobs, two BLAS threads per framework swing by 10x from run to
run; pin both frameworks to one thread for a stable comparison:

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 TINYNORM_NUM_THREADS=1 python benchmarks/blocks.py

Rows (float32, interleaved repetitions, medians; ratio = tinynorm / PyTorch):
1. ``ModernTransformerBlock(768, 12, 3072)`` forward+backward on (2, 256, 768) with a causal
   mask, dropout off (eval mode) and on (train mode, p = 0.1). Target <= 1.0x.
2. ``Transformer(12, 768, 12, 3072)`` forward on (2, 1024, 768): recording the graph (the
   seed's call, eval mode so both skip dropout) and under no_grad. Target <= 1.2x.
3. Peak resident memory of a 12-layer forward+backward on (1, 256, 768), each framework in a
   child process of its own (``--memory-child NAME``). Target <= 1.2x.

PyTorch runs the seed's code (demos/_seed_torch.py), whose blocks call the attention with
the default ``need_weights=True``; that makes PyTorch build the head-averaged weights and skip
its fused attention kernel. tinynorm's blocks pass ``need_weights=False`` (same output), so a
second PyTorch column runs the seed's blocks with ``need_weights=False`` too, and the
ratio is taken against the faster of the two.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import interleaved, ms, table  # noqa: E402

D_MODEL, NUM_HEADS, D_FF = 768, 12, 3072


# ---- the seed's classes in PyTorch (demos/_seed_torch.py), need_weights selectable -----------
def torch_classes(need_weights: bool):
    import torch

    from demos._seed_torch import with_need_weights

    return (torch, *with_need_weights(need_weights))


def pair(kind: str, *args):
    """tinynorm's model and two PyTorch ones (need_weights True/False), one set of weights."""
    import tinynorm.models as tm

    torch, block_true, stack_true = torch_classes(need_weights=True)
    _, block_false, stack_false = torch_classes(need_weights=False)
    torch.manual_seed(0)
    cls_true, cls_false, cls_tn = ((block_true, block_false, tm.ModernTransformerBlock)
                                   if kind == "block" else
                                   (stack_true, stack_false, tm.Transformer))
    ref = cls_true(*args)
    ref_false = cls_false(*args)
    ref_false.load_state_dict(ref.state_dict())
    ours = cls_tn(*args)
    ours.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    return torch, ours, ref, ref_false


def causal_masks(torch, length):
    import tinynorm as tn

    blocked = np.triu(np.ones((length, length), dtype=bool), k=1)
    return tn.tensor(blocked), torch.tensor(blocked)


def bench_block(rows, repeat):
    import tinynorm as tn

    shape = (2, 256, D_MODEL)
    torch, ours, ref, ref_false = pair("block", D_MODEL, NUM_HEADS, D_FF)
    mask_tn, mask_torch = causal_masks(torch, shape[1])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    g = np.random.default_rng(1).standard_normal(shape).astype(np.float32)

    def tinynorm_step():
        xt = tn.tensor(x, requires_grad=True)
        ours(xt, mask_tn).backward(tn.tensor(g))
        ours.zero_grad()

    def torch_step(model):
        def step():
            xt = torch.tensor(x, requires_grad=True)
            model(xt, mask_torch).backward(torch.tensor(g))
            model.zero_grad()
        return step

    for mode in ("eval", "train"):
        for m in (ours, ref, ref_false):
            m.train(mode == "train")
        tn.manual_seed(0)
        t = interleaved({"tinynorm": tinynorm_step, "torch": torch_step(ref),
                         "torch_nw": torch_step(ref_false)}, repeat=repeat)
        rows.append(_row(f"ModernTransformerBlock fwd+bwd, causal, {mode}", shape, t, 1.0))


def bench_stack(rows, repeat):
    import tinynorm as tn

    shape = (2, 1024, D_MODEL)
    torch, ours, ref, ref_false = pair("stack", 12, D_MODEL, NUM_HEADS, D_FF)
    for m in (ours, ref, ref_false):
        m.eval()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x_tn, x_torch = tn.tensor(x), torch.tensor(x)

    def run(model, xt, grad_mode):
        def call():
            with grad_mode():
                model(xt)
        return call

    for label, tn_mode, torch_mode in (("graph recorded", contextlib.nullcontext,
                                        contextlib.nullcontext),
                                       ("no_grad", tn.no_grad, torch.no_grad)):
        t = interleaved({"tinynorm": run(ours, x_tn, tn_mode),
                         "torch": run(ref, x_torch, torch_mode),
                         "torch_nw": run(ref_false, x_torch, torch_mode)},
                        repeat=repeat, warmup=1)
        rows.append(_row(f"Transformer(12) forward, {label}", shape, t, 1.2))


def _row(name, shape, t, target):
    best_torch = min(t["torch"], t["torch_nw"])
    ratio = t["tinynorm"] / best_torch
    return {"case": name, "shape": "x".join(map(str, shape)), "tinynorm ms": ms(t["tinynorm"]),
            "torch ms (seed)": ms(t["torch"]), "torch ms (need_weights=False)": ms(t["torch_nw"]),
            "ratio": round(ratio, 2), "target": f"<= {target}",
            "ok": "yes" if ratio <= target else "NO"}


# ---- memory: one child process per framework ------------------------------------------------
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(framework: str) -> None:
    """Build Transformer(12, 768, 12, 3072), run one fwd+bwd on (1, 256, 768); print JSON."""
    shape = (1, 256, D_MODEL)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    g = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    mask = np.triu(np.ones((shape[1], shape[1]), dtype=bool), k=1)
    if framework == "torch":
        torch, _, Transformer = torch_classes(need_weights=False)
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        model = Transformer(12, D_MODEL, NUM_HEADS, D_FF).eval()
        xt, gt, mt = torch.tensor(x, requires_grad=True), torch.tensor(g), torch.tensor(mask)
    else:
        import tinynorm as tn
        from tinynorm.models import Transformer

        model = Transformer(12, D_MODEL, NUM_HEADS, D_FF).eval()
        xt, gt, mt = tn.tensor(x, requires_grad=True), tn.tensor(g), tn.tensor(mask)
    before = _rss_kib("VmRSS")
    model(xt, mt).backward(gt)
    after = _rss_kib("VmRSS")
    print(json.dumps({"framework": framework, "rss_before_kib": before,
                      "rss_after_kib": after, "peak_kib": _rss_kib("VmHWM")}))


def bench_memory(rows):
    results = {}
    for framework in ("tinynorm", "torch"):
        child = [sys.executable, os.path.abspath(__file__), "--memory-child", framework]
        out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        results[framework] = json.loads(out.strip().splitlines()[-1])
    mib = lambda kib: round(kib / 1024, 1)  # noqa: E731
    for label, key in (("peak RSS of the process", None),
                       ("peak RSS - RSS before fwd+bwd", "rss_before_kib")):
        value = {f: r["peak_kib"] - (r[key] if key else 0) for f, r in results.items()}
        ratio = value["tinynorm"] / value["torch"]
        rows.append({"case": f"Transformer(12) fwd+bwd (1x256x768), {label}",
                     "tinynorm MiB": mib(value["tinynorm"]), "torch MiB": mib(value["torch"]),
                     "ratio": round(ratio, 2), "target": "<= 1.2",
                     "ok": "yes" if ratio <= 1.2 else "NO"})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--memory-child", choices=("tinynorm", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--only", choices=("block", "stack", "memory"), help="run one part")
    args = p.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return
    import torch

    threads = {k: os.environ.get(k, "unset") for k in
               ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TINYNORM_NUM_THREADS")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; numpy {np.__version__}; "
          + ", ".join(f"{k}={v}" for k, v in threads.items()))
    time_rows, memory_rows = [], []
    if args.only in (None, "block"):
        bench_block(time_rows, repeat=5 if args.quick else 15)
    if args.only in (None, "stack"):
        bench_stack(time_rows, repeat=2 if args.quick else 5)
    if time_rows:
        print(table(time_rows, list(time_rows[0])))
        print()
    if args.only in (None, "memory"):
        bench_memory(memory_rows)
        print(table(memory_rows, list(memory_rows[0])))


if __name__ == "__main__":
    main()
