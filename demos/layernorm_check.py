"""The seed's from-scratch LayerNorm check, on the seed's shapes.

The tutorial builds ``LayerNorm(d_model)`` (parameters ``gamma`` = 1, ``beta`` = 0), feeds it
x = randn(2, 10, 512) * 10 + 5 ("arbitrary mean and std") and prints the input's mean and
std, the output's, and the per-example mean and std of the first batch element's ten rows,
which "should be close to 0" and "close to 1". Here the class is ``tinynorm.models.LayerNorm``
(the seed's class, whose forward is ``F.layer_norm``), and the statistics are the seed's own
calls, ``x.mean()``, ``x.std()``, ``output[0].mean(dim=-1)``, ``output[0].std(dim=-1)``, on
tinynorm Tensors. ``std`` is PyTorch's: unbiased (divided by n − 1), so a perfectly
normalised row of 512 shows √(512/511) ≈ 1.001, not 1. When PyTorch is installed, the
seed's own PyTorch class runs on the same input beside it, and the largest difference is
printed.
"""
from __future__ import annotations

import numpy as np

import tinynorm as tn
from tinynorm.models import LayerNorm

from . import _common as C

DESCRIPTION = "the seed's from-scratch LayerNorm on (2, 10, 512): input, output, per-row mean/std"

BATCH, SEQ_LEN, D_MODEL = 2, 10, 512


def seed_torch_layer_norm(x: np.ndarray):
    """The tutorial's PyTorch class on the same input, or None without PyTorch."""
    try:
        import torch

        from ._seed_torch import SeedLayerNorm
    except ImportError:
        return None

    with torch.no_grad():
        return SeedLayerNorm(x.shape[-1])(torch.from_numpy(x)).numpy()


def main(quick: bool = False, out: str = "tinynorm-out", seed: int = 0,
         backend: str = "numpy") -> dict:
    # The seed's shapes are small: --quick runs them too.
    with C.setup(backend, seed):
        ln = LayerNorm(D_MODEL)
        x = tn.randn(BATCH, SEQ_LEN, D_MODEL) * 10 + 5  # arbitrary mean and std
        output = ln(x).detach()
        stats = {name: (float(t.mean()), float(t.std())) for name, t in
                 (("input x", x), ("output", output))}
        per_mean = tn.backend.to_numpy(output[0].mean(dim=-1).data)
        per_std = tn.backend.to_numpy(output[0].std(dim=-1).data)
        x_np = tn.backend.to_numpy(x.data)
        y_np = tn.backend.to_numpy(output.data)

    C.table([{"tensor": name, "mean": mean, "std": std} for name, (mean, std) in stats.items()],
            ["tensor", "mean", "std"],
            title=f"LayerNorm({D_MODEL}) on x of shape {x_np.shape}, x = randn * 10 + 5")
    C.table([{"row": i, "mean": float(m), "std": float(s)}
             for i, (m, s) in enumerate(zip(per_mean, per_std))],
            ["row", "mean", "std"], title="Per-example output of batch element 0 (over d_model)")

    torch_y = seed_torch_layer_norm(x_np)
    torch_diff = None if torch_y is None else float(np.abs(torch_y - y_np).max())
    if torch_diff is not None:
        print(f"the seed's PyTorch LayerNorm on the same input: "
              f"max |difference| = {torch_diff:.2e}\n")

    fig, axes = C.figure(1, 2, width=10, height=3.6)
    axes[0, 0].hist(x_np.ravel(), bins=60, color="C0")
    axes[0, 0].set(title="input x = randn * 10 + 5", xlabel="value", ylabel="count")
    axes[0, 1].hist(y_np.ravel(), bins=60, color="C1")
    axes[0, 1].set(title="LayerNorm(x): each row mean 0, std 1", xlabel="value", ylabel="count")
    figures = [C.save(fig, out, "layernorm_check.png")]

    worst_mean = float(np.abs(per_mean).max())
    worst_std = float(np.abs(per_std - 1).max())
    line = C.verdict(
        "the per-example output mean is close to 0 and the std close to 1",
        worst_mean < 1e-5 and worst_std < 1e-2,
        f"per-row |mean| <= {worst_mean:.1e}, |std − 1| <= {worst_std:.1e} "
        f"(unbiased std; √(512/511) − 1 = {np.sqrt(512 / 511) - 1:.1e})",
    )
    return {"input_mean": stats["input x"][0], "input_std": stats["input x"][1],
            "output_mean": stats["output"][0], "output_std": stats["output"][1],
            "per_example_mean": per_mean.tolist(), "per_example_std": per_std.tolist(),
            "max_abs_row_mean": worst_mean, "max_abs_row_std_error": worst_std,
            "torch_max_abs_diff": torch_diff, "figures": figures, "verdict": line}


if __name__ == "__main__":
    main()
