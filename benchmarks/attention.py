"""Attention: tinynorm vs PyTorch CPU, float32 forward+backward, same process, interleaved.

    python benchmarks/attention.py              # about a minute on 2 cores
    python benchmarks/attention.py --repeat 5   # quicker, noisier
    python benchmarks/attention.py --threads 1  # one BLAS/OpenMP thread each: steadier
                                                # numbers when other processes share the cores

Rows (medians of interleaved repetitions; ratio = tinynorm / PyTorch):
1. ``F.scaled_dot_product_attention`` on q, k, v of shape (2, 12, 512, 64), without and with
   ``is_causal``, keeping P for backward (``recompute=False``, passed explicitly: the default
   None would rebuild P at this length). Target <= 1.5x. The "recompute" rows pass
   ``recompute=True`` (a log-sum-exp per row kept, P rebuilt in backward; not a target).
2. ``nn.MultiheadAttention(768, 12, batch_first=True)`` self-attention on (2, 256, 768),
   with ``need_weights=False`` (PyTorch's fused SDPA path; tinynorm's SDPA default keeps P at
   this length) and with the default ``need_weights=True`` (head-averaged weights returned).
   Target <= 1.2x.

"saved" is the memory kept for backward per call: every array the graph holds on to, counted
once per underlying buffer, leaving out the inputs and parameters (which exist anyway).
PyTorch's is measured with ``torch.autograd.graph.saved_tensors_hooks``.
"""
from __future__ import annotations

import argparse
import os
import sys

if "--threads" in sys.argv:  # thread pools read these when numpy and torch are imported
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = sys.argv[sys.argv.index("--threads") + 1]

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import tinynorm as tn  # noqa: E402
from benchmarks.harness import interleaved, ms, table, torch_saved_bytes  # noqa: E402

SDPA_SHAPE = (2, 12, 512, 64)
MHA_BATCH, MHA_LENGTH, MHA_EMBED, MHA_HEADS = 2, 256, 768, 12
MIB = 2.0 ** 20


# ---- memory kept for backward ----------------------------------------------------------
def _root(a):
    while getattr(a, "base", None) is not None:
        a = a.base
    return a


def tinynorm_saved_bytes(output, exclude) -> int:
    """Bytes of the buffers that ``output``'s graph saved, each buffer counted once."""
    excluded = {id(_root(t.data)) for t in exclude}
    buffers, stack, seen = {}, [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for a in node.saved_tensors:
            if a is not None and id(_root(a)) not in excluded:
                buffers[id(_root(a))] = _root(a).nbytes
        stack.extend(getattr(e, "node", None) for e in node.edges)
    return sum(buffers.values())


# ---- contenders --------------------------------------------------------------------------
def fwd_bwd(leaves, forward, grad):
    """A zero-argument callable: clear grads, run forward, backward with ``grad``."""
    def step():
        for t in leaves:
            t.grad = None
        forward().backward(grad)
    return step


def sdpa_rows(repeat: int) -> list:
    rng = np.random.default_rng(0)
    q, k, v, g = (rng.standard_normal(SDPA_SHAPE).astype(np.float32) for _ in range(4))
    t_leaves = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    n_leaves = [tn.tensor(a, requires_grad=True) for a in (q, k, v)]
    t_grad, n_grad = torch.from_numpy(g), tn.tensor(g)
    rows = []
    for causal in (False, True):
        def theirs():
            return torch.nn.functional.scaled_dot_product_attention(*t_leaves, is_causal=causal)

        def ours(recompute):  # always explicit: the default (None) decides by the length
            return tn.nn.functional.scaled_dot_product_attention(*n_leaves, is_causal=causal,
                                                                 recompute=recompute)

        times = interleaved({"torch": fwd_bwd(t_leaves, theirs, t_grad),
                             "tinynorm": fwd_bwd(n_leaves, lambda: ours(False), n_grad),
                             "recompute": fwd_bwd(n_leaves, lambda: ours(True), n_grad)},
                            repeat=repeat)
        name = f"SDPA {SDPA_SHAPE}" + (" causal" if causal else "")
        torch_saved = torch_saved_bytes(theirs, t_leaves) / MIB
        rows.append(_row(name, times, "tinynorm", 1.5,
                         tinynorm_saved_bytes(ours(False), n_leaves) / MIB, torch_saved))
        rows.append(_row(name + " recompute", times, "recompute", None,
                         tinynorm_saved_bytes(ours(True), n_leaves) / MIB, torch_saved))
    return rows


def mha_rows(repeat: int) -> list:
    rng = np.random.default_rng(1)
    theirs_module = torch.nn.MultiheadAttention(MHA_EMBED, MHA_HEADS, batch_first=True)
    ours_module = tn.nn.MultiheadAttention(MHA_EMBED, MHA_HEADS, batch_first=True)
    ours_module.load_state_dict(theirs_module.state_dict())
    shape = (MHA_BATCH, MHA_LENGTH, MHA_EMBED)
    x, g = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    t_x, n_x = torch.tensor(x, requires_grad=True), tn.tensor(x, requires_grad=True)
    t_leaves, n_leaves = [t_x, *theirs_module.parameters()], [n_x, *ours_module.parameters()]
    t_grad, n_grad = torch.from_numpy(g), tn.tensor(g)
    rows = []
    for need_weights in (False, True):
        def theirs():
            return theirs_module(t_x, t_x, t_x, need_weights=need_weights)[0]

        def ours():
            return ours_module(n_x, n_x, n_x, need_weights=need_weights)[0]

        times = interleaved({"torch": fwd_bwd(t_leaves, theirs, t_grad),
                             "tinynorm": fwd_bwd(n_leaves, ours, n_grad)}, repeat=repeat)
        rows.append(_row(f"MHA {shape} {MHA_HEADS} heads need_weights={need_weights}", times,
                         "tinynorm", 1.2, tinynorm_saved_bytes(ours(), n_leaves) / MIB,
                         torch_saved_bytes(theirs, t_leaves) / MIB))
    return rows


def _row(name, times, ours, target, saved, torch_saved) -> dict:
    ratio = times[ours] / times["torch"]
    return {"case": name, "torch ms": ms(times["torch"]), "tinynorm ms": ms(times[ours]),
            "ratio": round(ratio, 2), "target": f"<= {target}x" if target else "-",
            "saved MiB": round(saved, 1), "torch saved MiB": round(torch_saved, 1),
            "ok": "" if target is None else ("yes" if ratio <= target else "NO")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=11, help="interleaved repetitions")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for PyTorch and NumPy's BLAS (default: their own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tn.manual_seed(0)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"float32 forward+backward; torch {torch.__version__} with {torch.get_num_threads()} "
          f"threads; medians of {args.repeat} interleaved repetitions; load average {load}")
    rows = sdpa_rows(args.repeat) + mha_rows(args.repeat)
    print(table(rows, ["case", "torch ms", "tinynorm ms", "ratio", "target", "ok", "saved MiB",
                       "torch saved MiB"]))


if __name__ == "__main__":
    main()
