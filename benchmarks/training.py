"""Training pieces: cross-entropy forward+backward and one optimizer step, tinynorm vs PyTorch
CPU, same inputs, same process, interleaved repetitions, medians (ratio = tinynorm / PyTorch).

    python benchmarks/training.py           # about half a minute on 2 cores
    python benchmarks/training.py --quick   # fewer repetitions

Rows (float32):
1. ``F.cross_entropy`` forward+backward on language-model logits (B·T = 2048 rows, V = 256
   and V = 4096), and the same loss written as ``log_softmax`` then picking the target
   entries (``nll(log_softmax(x))``), to show what the fused backward saves.
2. ``AdamW.step()`` and ``SGD(momentum).step()`` on a 12-layer stack of 256 × 256 weights
   (0.8 M parameters).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import interleaved, ms, table  # noqa: E402


def cross_entropy_rows(repeat: int) -> list:
    import torch

    import tinynorm as tn

    rows = []
    rng = np.random.default_rng(0)
    for vocab in (256, 4096):
        logits = rng.standard_normal((2048, vocab)).astype(np.float32)
        targets = rng.integers(0, vocab, 2048)
        upstream = np.float32(0.7)
        x_tn, t_tn = tn.tensor(logits, requires_grad=True), tn.tensor(targets)
        x_pt, t_pt = torch.tensor(logits, requires_grad=True), torch.tensor(targets)
        picks = (tn.arange(2048).data, targets)

        def fused():
            x_tn.grad = None
            tn.nn.functional.cross_entropy(x_tn, t_tn).backward(tn.tensor(upstream))

        def composed():
            x_tn.grad = None
            logp = tn.nn.functional.log_softmax(x_tn, dim=1)
            (-logp[picks]).mean().backward(tn.tensor(upstream))

        def pytorch():
            x_pt.grad = None
            torch.nn.functional.cross_entropy(x_pt, t_pt).backward(torch.tensor(upstream))

        times = interleaved({"fused": fused, "composed": composed, "torch": pytorch},
                            repeat=repeat)
        rows.append({"case": f"cross_entropy fwd+bwd (2048, {vocab})",
                     "tinynorm ms": ms(times["fused"]),
                     "tinynorm composed ms": ms(times["composed"]),
                     "PyTorch ms": ms(times["torch"]),
                     "ratio": round(times["fused"] / times["torch"], 2)})
    return rows


def optimizer_rows(repeat: int) -> list:
    import torch

    import tinynorm as tn

    rng = np.random.default_rng(1)
    values = [rng.standard_normal((256, 256)).astype(np.float32) for _ in range(12)]
    grads = [rng.standard_normal((256, 256)).astype(np.float32) for _ in range(12)]
    rows = []
    for name, kwargs in (("AdamW", {"lr": 1e-3}), ("SGD", {"lr": 1e-3, "momentum": 0.9})):
        ours = [tn.nn.Parameter(tn.tensor(v)) for v in values]
        theirs = [torch.tensor(v, requires_grad=True) for v in values]
        for p, t, g in zip(ours, theirs, grads):
            p.grad, t.grad = tn.tensor(g).data, torch.tensor(g)
        opt = getattr(tn.optim, name)(ours, **kwargs)
        # foreach=False: PyTorch's per-tensor loop on CPU, the same algorithm as tinynorm's
        ref = getattr(torch.optim, name)(theirs, foreach=False, **kwargs)
        ref_foreach = getattr(torch.optim, name)(
            [t.detach().clone().requires_grad_() for t in theirs], foreach=True, **kwargs)
        for t, g in zip(ref_foreach.param_groups[0]["params"], grads):
            t.grad = torch.tensor(g)
        times = interleaved({"ours": opt.step, "torch": ref.step,
                             "torch foreach": ref_foreach.step}, repeat=repeat)
        best = min(times["torch"], times["torch foreach"])
        rows.append({"case": f"{name}.step() 12 x (256, 256)", "tinynorm ms": ms(times["ours"]),
                     "PyTorch ms": ms(times["torch"]),
                     "PyTorch foreach ms": ms(times["torch foreach"]),
                     "ratio": round(times["ours"] / best, 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    repeat = 5 if args.quick else 15
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    ce = cross_entropy_rows(repeat)
    print(table(ce, ["case", "tinynorm ms", "tinynorm composed ms", "PyTorch ms", "ratio"]))
    print()
    opt = optimizer_rows(repeat)
    print(table(opt, ["case", "tinynorm ms", "PyTorch ms", "PyTorch foreach ms", "ratio"]))
    print("\nratio = tinynorm / the faster PyTorch column; medians of interleaved repetitions.")


if __name__ == "__main__":
    main()
