"""LayerNorm and RMSNorm: tinynorm vs PyTorch CPU, float32, same process, interleaved.

    python benchmarks/norms.py              # about a minute on 2 cores
    python benchmarks/norms.py --repeat 5   # quicker, noisier
    python benchmarks/norms.py --threads 1  # both libraries on one thread
    python benchmarks/norms.py --floor      # the bytes' floor against the kernels alone
    python benchmarks/norms.py --composed   # the seed's composed LayerNorm against the op

For x of shape (8192, 768) and (16384, 1024), normalised over the last dim with weight and
bias (RMSNorm: weight), every contender of one shape runs once per repetition (in a random
order); the table shows medians (ms) and ratios. Rows and targets:

* ``forward`` under no_grad (``torch.no_grad`` / ``tn.no_grad``): <= 2x PyTorch;
* ``fwd+bwd``: forward, then backward with a fixed random upstream gradient:
  LayerNorm <= 1.5x PyTorch (stretch 1.0x); RMSNorm <= 0.7x PyTorch, and <= 0.7x
  tinynorm's own LayerNorm (the row "RMSNorm vs LayerNorm", both tinynorm);
* ``saved``: bytes kept for backward beyond the inputs and parameters (which exist anyway),
  tinynorm's counted from the graph node, PyTorch's with saved_tensors_hooks. The target is
  at most one array of x's size plus O(rows); tinynorm keeps 8 bytes a row (LayerNorm: μ, r)
  or 4 (RMSNorm: r).

PyTorch's F.rms_norm has no fused CPU kernel in this version (it is composed of pow, mean,
rsqrt and mul), which is why its RMSNorm is slower than its LayerNorm here.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import tinynorm as tn  # noqa: E402
from benchmarks.harness import interleaved, ms, table, torch_saved_bytes  # noqa: E402
from demos._seed_torch import SeedLayerNorm  # noqa: E402  (the seed's PyTorch class)
from tinynorm.kernels import cpu_norms  # noqa: E402
from tinynorm.kernels._numba import available  # noqa: E402
from tinynorm.models import ComposedLayerNorm, LayerNorm  # noqa: E402
from tinynorm.ops import set_num_threads  # noqa: E402
from tinynorm.ops._rows import for_each_block, kernel_blocks  # noqa: E402

SHAPES = ((8192, 768), (16384, 1024))
EPS = 1e-5
KIB = 1024.0


def tinynorm_saved_bytes(output, exclude) -> int:
    """Bytes of the arrays saved by the graph that made ``output`` (every node, each array
    counted once), leaving out views of ``exclude``."""
    def root(a):
        while getattr(a, "base", None) is not None:
            a = a.base
        return a

    nodes, stack = {}, [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and id(node) not in nodes:
            nodes[id(node)] = node
            stack.extend(getattr(edge, "node", None) for edge in node.edges)
    excluded = {id(root(t.data)) for t in exclude}
    saved = {id(root(a)): root(a).nbytes for node in nodes.values()
             for a in node.saved_tensors if a is not None and id(root(a)) not in excluded}
    return sum(saved.values())


def inputs(shape):
    """x and the upstream gradient dy of ``shape``, weight and bias: float32, seeded."""
    rng = np.random.default_rng(0)
    x, dy = (rng.standard_normal(shape, dtype=np.float32) for _ in range(2))
    w, b = (rng.standard_normal(shape[-1], dtype=np.float32) for _ in range(2))
    return x, dy, w, b


def contenders(shape):
    """The eight timed callables of one shape, and the bytes each library saves."""
    rows, d = shape
    x, dy, w, b = inputs(shape)

    tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
    tw, tb = (torch.tensor(a, requires_grad=True) for a in (w, b))
    tx_grad = tx.clone().requires_grad_()
    nx, ndy = tn.tensor(x), tn.tensor(dy)
    nw, nb = (tn.tensor(a, requires_grad=True) for a in (w, b))
    nx_grad = tn.tensor(x, requires_grad=True)
    leaves = (tx_grad, tw, tb, nx_grad, nw, nb)

    def fwd_bwd(forward, grad):
        def step():
            for t in leaves:
                t.grad = None
            forward().backward(grad)
        return step

    def no_grad(context, forward):
        def step():
            with context():
                forward()
        return step

    torch_ln = lambda a: torch.nn.functional.layer_norm(a, (d,), tw, tb, EPS)  # noqa: E731
    torch_rms = lambda a: torch.nn.functional.rms_norm(a, (d,), tw, EPS)  # noqa: E731
    ours_ln = lambda a: tn.nn.functional.layer_norm(a, (d,), nw, nb, EPS)  # noqa: E731
    ours_rms = lambda a: tn.nn.functional.rms_norm(a, (d,), nw, EPS)  # noqa: E731
    calls = {
        "torch LN fwd": no_grad(torch.no_grad, lambda: torch_ln(tx)),
        "ours LN fwd": no_grad(tn.no_grad, lambda: ours_ln(nx)),
        "torch LN fwd+bwd": fwd_bwd(lambda: torch_ln(tx_grad), tdy),
        "ours LN fwd+bwd": fwd_bwd(lambda: ours_ln(nx_grad), ndy),
        "torch RMS fwd": no_grad(torch.no_grad, lambda: torch_rms(tx)),
        "ours RMS fwd": no_grad(tn.no_grad, lambda: ours_rms(nx)),
        "torch RMS fwd+bwd": fwd_bwd(lambda: torch_rms(tx_grad), tdy),
        "ours RMS fwd+bwd": fwd_bwd(lambda: ours_rms(nx_grad), ndy),
    }
    saved = {
        "torch LN": torch_saved_bytes(lambda: torch_ln(tx_grad), (tx_grad, tw, tb)),
        "ours LN": tinynorm_saved_bytes(ours_ln(nx_grad), (nx_grad, nw, nb)),
        "torch RMS": torch_saved_bytes(lambda: torch_rms(tx_grad), (tx_grad, tw)),
        "ours RMS": tinynorm_saved_bytes(ours_rms(nx_grad), (nx_grad, nw)),
    }
    return calls, saved


def shape_rows(shape, repeat: int) -> list:
    calls, saved = contenders(shape)
    t = interleaved(calls, repeat=repeat)
    x_bytes = shape[0] * shape[1] * 4
    found = []

    def row(case, ours, baseline, base_name, target, saved_key=None):
        ratio = t[ours] / t[baseline]
        entry = {"shape": f"{shape[0]}x{shape[1]}", "case": case, "baseline": base_name,
                 "baseline ms": ms(t[baseline]), "tinynorm ms": ms(t[ours]),
                 "ratio": round(ratio, 2), "target": f"<= {target}x",
                 "ok": "yes" if ratio <= target else "NO"}
        if saved_key:
            ours_saved, theirs_saved = saved["ours " + saved_key], saved["torch " + saved_key]
            entry["saved KiB"] = round(ours_saved / KIB, 1)
            entry["torch saved KiB"] = round(theirs_saved / KIB, 1)
            entry["saved <= x+O(rows)"] = "yes" if ours_saved <= x_bytes + 64 * shape[0] else "NO"
        found.append(entry)

    row("LayerNorm forward", "ours LN fwd", "torch LN fwd", "torch", 2.0)
    row("LayerNorm fwd+bwd", "ours LN fwd+bwd", "torch LN fwd+bwd", "torch", 1.5, "LN")
    row("RMSNorm forward", "ours RMS fwd", "torch RMS fwd", "torch", 2.0)
    row("RMSNorm fwd+bwd", "ours RMS fwd+bwd", "torch RMS fwd+bwd", "torch", 0.7, "RMS")
    row("RMSNorm vs LayerNorm fwd+bwd", "ours RMS fwd+bwd", "ours LN fwd+bwd", "tinynorm LN", 0.7)
    return found


def composed_rows(shape, repeat: int) -> list:
    """``--composed``: why LayerNorm is one Function. The seed's LayerNorm forward, line for
    line as a chain of ops (``tinynorm.models.ComposedLayerNorm``; in PyTorch the seed's own
    class), against the fused op in each library: forward+backward time, and what the graph
    keeps for backward beyond x, γ and β (in x-sized arrays)."""
    x, dy, w, b = inputs(shape)
    d = shape[1]
    tn_fused, tn_chain = LayerNorm(d), ComposedLayerNorm(d)  # parameters gamma, beta
    torch_fused, torch_chain = torch.nn.LayerNorm(d, eps=EPS), SeedLayerNorm(d, eps=EPS)
    for norm in (tn_fused, tn_chain):
        norm.load_state_dict({"gamma": w, "beta": b})
    torch_fused.load_state_dict({"weight": torch.from_numpy(w), "bias": torch.from_numpy(b)})
    torch_chain.load_state_dict({"gamma": torch.from_numpy(w), "beta": torch.from_numpy(b)})
    tn_side = (tn.tensor(x, requires_grad=True), tn.tensor(dy))
    torch_side = (torch.tensor(x, requires_grad=True), torch.from_numpy(dy))
    # name: (norm, its library's (x, dy), the fused row it is compared with)
    cases = {"tinynorm F.layer_norm": (tn_fused, tn_side, "tinynorm F.layer_norm"),
             "tinynorm, composed as the seed": (tn_chain, tn_side, "tinynorm F.layer_norm"),
             "torch F.layer_norm": (torch_fused, torch_side, "torch F.layer_norm"),
             "torch, composed as the seed": (torch_chain, torch_side, "torch F.layer_norm")}

    def step(norm, side):
        def run():
            side[0].grad = None
            norm.zero_grad()
            norm(side[0]).backward(side[1])
        return run

    t = interleaved({name: step(norm, side) for name, (norm, side, _) in cases.items()},
                    repeat=repeat)
    found = []
    for name, (norm, side, fused) in cases.items():
        kept = (side[0], *norm.parameters())
        if isinstance(norm, torch.nn.Module):
            saved = torch_saved_bytes(lambda: norm(side[0]), kept)
        else:
            saved = tinynorm_saved_bytes(norm(side[0]), kept)
        found.append({"shape": f"{shape[0]}x{shape[1]}", "LayerNorm": name,
                      "fwd+bwd ms": ms(t[name]), "/ fused": round(t[name] / t[fused], 2),
                      "saved MiB": round(saved / KIB / KIB, 1),
                      "saved / x": round(saved / x.nbytes, 2)})
    return found


def floor_rows(shape, repeat: int) -> list:
    """``--floor``: the memory traffic a norm cannot avoid, against the norms' kernels alone.

    Forward reads x and writes y; backward reads x and dy and writes dx. A copy (read one
    x-sized array, write one) plus an add (read two, write one) moves those bytes, so their
    sum is the floor of either norm's forward+backward. All outputs are allocated once, so no
    fresh pages are counted; tinynorm's rows run on its threads, as the ops hand them out.
    """
    rows, d = shape
    x, dy, w, b = inputs(shape)
    y, dx = np.empty_like(x), np.empty_like(x)
    mean, rstd = np.empty(rows, np.float32), np.empty(rows, np.float32)
    blocks = kernel_blocks(rows, d)
    dgamma, dbeta = np.zeros((len(blocks), d)), np.zeros((len(blocks), d))
    scratch = [np.empty((2, d), np.float32) for _ in blocks]
    tx, tdy, ty = torch.from_numpy(x), torch.from_numpy(dy), torch.from_numpy(y)

    def on_threads(work):
        return lambda: for_each_block(blocks, work, rows * d)

    calls = {
        "copy": on_threads(lambda k, part: np.copyto(y[part], x[part])),
        "add": on_threads(lambda k, part: np.add(x[part], dy[part], out=y[part])),
        "torch copy": lambda: ty.copy_(tx),
        "torch add": lambda: torch.add(tx, tdy, out=ty),
    }
    if available():
        ln_forward = on_threads(lambda k, p: cpu_norms.layer_norm_forward(
            x, w, b, EPS, p.start, p.stop, y, mean, rstd))
        ln_backward = on_threads(lambda k, p: cpu_norms.layer_norm_backward(
            dy, x, w, mean, rstd, p.start, p.stop, dx, dgamma[k], dbeta[k], scratch[k],
            True, True))
        rms_forward = on_threads(lambda k, p: cpu_norms.rms_norm_forward(
            x, w, EPS, p.start, p.stop, y, rstd))
        rms_backward = on_threads(lambda k, p: cpu_norms.rms_norm_backward(
            dy, x, w, rstd, p.start, p.stop, dx, dgamma[k], scratch[k][:1], True, True))
        calls["LN fwd+bwd"] = lambda: (ln_forward(), ln_backward())
        calls["RMS fwd+bwd"] = lambda: (rms_forward(), rms_backward())
    t = interleaved(calls, repeat=repeat)
    floor, torch_floor = t["copy"] + t["add"], t["torch copy"] + t["torch add"]
    name = f"{rows}x{d}"
    found = [
        {"shape": name, "case": "copy x (read 1, write 1)", "ms": ms(t["copy"]),
         "torch ms": ms(t["torch copy"])},
        {"shape": name, "case": "add (read 2, write 1)", "ms": ms(t["add"]),
         "torch ms": ms(t["torch add"])},
        {"shape": name, "case": "floor of a norm's fwd+bwd: copy + add", "ms": ms(floor),
         "torch ms": ms(torch_floor)},
    ]
    if available():
        for case, key in (("LayerNorm kernels fwd+bwd", "LN fwd+bwd"),
                          ("RMSNorm kernels fwd+bwd", "RMS fwd+bwd")):
            found.append({"shape": name, "case": case, "ms": ms(t[key]),
                          "/ floor": round(t[key] / floor, 2)})
        found.append({"shape": name, "case": "RMSNorm / LayerNorm kernels",
                      "ms": round(t["RMS fwd+bwd"] / t["LN fwd+bwd"], 2)})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="interleaved repetitions")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both libraries (default: each library's default)")
    parser.add_argument("--floor", action="store_true",
                        help="instead of the table: the bytes' floor (a copy and an add of "
                             "x-sized arrays) against the norms' compiled kernels alone")
    parser.add_argument("--composed", action="store_true",
                        help="instead of the table: the seed's composed LayerNorm (mean, var, "
                             "sqrt, ...) against the fused op, time and memory saved")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        set_num_threads(args.threads)
    if args.floor:
        print(f"float32, outputs allocated once; threads: tinynorm {tn.ops.get_num_threads()}, "
              f"torch {torch.get_num_threads()}; medians of {args.repeat} interleaved "
              f"repetitions; / floor = kernels' time / (copy + add)")
        rows = [r for shape in SHAPES for r in floor_rows(shape, args.repeat)]
        print(table(rows, ["shape", "case", "ms", "torch ms", "/ floor"]))
        return
    if args.composed:
        print(f"float32, forward+backward; threads: tinynorm {tn.ops.get_num_threads()}, torch "
              f"{torch.get_num_threads()}; medians of {args.repeat} interleaved repetitions; "
              f"saved = kept for backward beyond x, weight and bias")
        rows = [r for shape in SHAPES for r in composed_rows(shape, args.repeat)]
        print(table(rows, ["shape", "LayerNorm", "fwd+bwd ms", "/ fused", "saved MiB",
                           "saved / x"]))
        return
    print(f"float32; torch {torch.__version__} with {torch.get_num_threads()} threads, tinynorm "
          f"with {tn.ops.get_num_threads()}; medians of {args.repeat} interleaved repetitions; "
          f"ratio = tinynorm / baseline")
    rows = [r for shape in SHAPES for r in shape_rows(shape, args.repeat)]
    print(table(rows, ["shape", "case", "baseline", "baseline ms", "tinynorm ms", "ratio",
                       "target", "ok", "saved KiB", "torch saved KiB", "saved <= x+O(rows)"]))


if __name__ == "__main__":
    main()
