"""Post-Norm and Pre-Norm blocks at initialization (Xiong et al. 2020, "On Layer
Normalization in the Transformer Architecture", Figure 3 and Lemma 2).

Stacks of 6, 12 and 24 of the seed's ``PostNormTransformerBlock`` and
``PreNormTransformerBlock`` (the Pre-Norm stack ends with a LayerNorm, as GPT-2 and
Xiong's Pre-LN do, so both stacks hand a normalized output to the loss). One random batch,
loss = Σ out · t / tokens with a fixed Gaussian target t, in eval mode (no dropout).
Measured per layer: the gradient norm of the feed-forward weights (W1 =
``feed_forward.0.weight``, W2 = ``feed_forward.2.weight``, and both together, "FFN"), and
the size of the residual stream, mean ||x_l||² over tokens at each block's input. Twice:
with the seed's blocks as PyTorch initializes them, and with Xavier-uniform weights and
zero biases, the paper's setting.

What the paper predicts at initialization: Post-LN gradients grow with the layer index (the
last layers get the largest), Pre-LN gradients are about the same in every layer (Figure
3); the last layer's gradient does not depend on the depth L for Post-LN and shrinks as
1/√L for Pre-LN (Theorem 1); the Pre-LN stream's squared norm grows linearly in l (Lemma 2:
between (1 + l/2)d and (1 + 3l/2)d), while the Post-LN stream stays at ||x||² ≈ d because
every block ends in a LayerNorm. The verdict checks these in the paper's setting and
reports what is measured, whether or not it matches.

The tutorial's own claim, "Pre-Norm: gradients flow more smoothly through the network", is
read as Figure 3 reads it: the per-layer gradient norm changes less from the first layer to
the last. It is checked at every depth and in both inits, on the fitted trend:
|log trend| smaller for Pre-Norm than for Post-Norm.
"""
from __future__ import annotations

import numpy as np

import tinynorm as tn
from tinynorm import nn
from tinynorm.models import PostNormTransformerBlock, PreNormTransformerBlock

from . import _common as C

DESCRIPTION = ("Post-Norm vs Pre-Norm at init: feed-forward gradient norm per layer for 6/12/24 "
               "layers, and the residual stream's growth (Xiong et al. 2020)")

DEPTHS = (6, 12, 24)
FULL = dict(d_model=512, num_heads=8, d_ff=2048, seq=32, batch=4)
QUICK = dict(d_model=64, num_heads=4, d_ff=256, seq=16, batch=2)
INITS = {
    "default": "PyTorch's default init (the seed's blocks as written)",
    "xavier": "Xavier-uniform weights, zero biases (Xiong et al.'s setting)",
}
KINDS = {"post": "Post-Norm", "pre": "Pre-Norm"}


def xavier_(module: nn.Module) -> None:
    """Xavier-uniform every matrix (in_proj_weight included), zero every bias; the norms
    keep their 1 and 0."""
    for name, p in module.named_parameters():
        if "norm" in name:
            continue
        if p.ndim == 2:
            nn.init.xavier_uniform_(p)
        else:
            nn.init.zeros_(p)


def measure(block_class, num_layers, init, d_model, num_heads, d_ff, seq, batch):
    """Per-layer gradient norms of W1, W2 and both, and mean ||x_l||², for one fresh stack."""
    blocks = nn.ModuleList([block_class(d_model, num_heads, d_ff) for _ in range(num_layers)])
    if init == "xavier":
        xavier_(blocks)
    final_norm = nn.LayerNorm(d_model) if block_class is PreNormTransformerBlock else None
    blocks.eval()
    x = tn.randn(seq, batch, d_model)  # (L, N, E): the seed's blocks are seq-first
    target = tn.randn(seq, batch, d_model)
    stream = []
    for block in blocks:
        stream.append(float(np.mean(np.sum(tn.backend.to_numpy(x.data) ** 2, axis=-1))))
        x = block(x)
    if final_norm is not None:
        x = final_norm(x)
    ((x * target).sum() / (seq * batch)).backward()
    w1 = np.array([np.linalg.norm(C.grad_numpy(b.feed_forward[0].weight)) for b in blocks])
    w2 = np.array([np.linalg.norm(C.grad_numpy(b.feed_forward[2].weight)) for b in blocks])
    return {"w1": w1.tolist(), "w2": w2.tolist(), "ffn": np.hypot(w1, w2).tolist(),
            "stream": stream}


def trend(values) -> float:
    """last/first of a least-squares fit of log(values) against the layer index: how much
    the quantity grows (> 1) or falls (< 1) from first to last layer, robust to one noisy layer."""
    layer = np.arange(len(values))
    slope, _ = np.polyfit(layer, np.log(values), 1)
    return float(np.exp(slope * (len(values) - 1)))


def describe(ratio: float) -> str:
    return "grows" if ratio > 1.25 else ("falls" if ratio < 0.8 else "flat")


def smoother_flow(pre_trends, post_trends) -> bool:
    """The tutorial's "gradients flow more smoothly through the network" with Pre-Norm: at
    every depth, Pre-Norm's per-layer gradient norm changes less from first to last layer
    than Post-Norm's, |log trend_pre| < |log trend_post| (a trend of 1 is perfectly even;
    x2 and x0.5 are equally far from it)."""
    pairs = zip(pre_trends, post_trends, strict=True)
    return all(abs(np.log(pre)) < abs(np.log(post)) for pre, post in pairs)


def stream_linear(slope_per_d: float, r2: float) -> bool:
    """Lemma 2 of Xiong et al.: the Pre-LN stream's E||x_l||² lies between (1 + l/2)·d and
    (1 + 3l/2)·d, so it grows linearly (R² > 0.95) by d/2 to 3d/2 per layer."""
    return r2 > 0.95 and 0.5 <= slope_per_d <= 1.5


def in_lemma2_band(stream_per_d) -> list:
    """Whether ||x||²/d after l = 1, 2, ... blocks lies in Lemma 2's band, 1 + l/2 to
    1 + 3l/2 (stream_per_d[l] is the stream after l blocks; [0], the input, is left out)."""
    return [1 + l / 2 <= v <= 1 + 3 * l / 2 for l, v in enumerate(stream_per_d) if l > 0]


def linear_fit(values):
    """Slope, intercept and R² of values against l = 1, 2, ..."""
    layer = np.arange(1, len(values) + 1, dtype=float)
    slope, intercept = np.polyfit(layer, values, 1)
    residual = np.asarray(values) - (slope * layer + intercept)
    r2 = 1 - residual.var() / np.var(values) if np.var(values) > 0 else 1.0
    return float(slope), float(intercept), float(r2)


def main(quick: bool = False, out: str = "tinynorm-out", seed: int = 0,
         backend: str = "numpy") -> dict:
    sizes = QUICK if quick else FULL
    d_model, deepest = sizes["d_model"], DEPTHS[-1]
    results = {init: {kind: {} for kind in KINDS} for init in INITS}
    jobs = [(init, kind, depth) for init in INITS for depth in DEPTHS for kind in KINDS]
    with C.setup(backend, seed):
        for init, kind, depth in C.progress(jobs, desc="pre_vs_post"):
            cls = PostNormTransformerBlock if kind == "post" else PreNormTransformerBlock
            results[init][kind][depth] = measure(cls, depth, init, **sizes)

    print(f"d_model={d_model}, d_ff={sizes['d_ff']}, {sizes['num_heads']} heads, input (L, N) = "
          f"({sizes['seq']}, {sizes['batch']}); FFN = both feed-forward weights together; "
          "trend = last/first of a log-linear fit over layers\n")
    trends, fits = {}, {}
    for init, label in INITS.items():
        rows = []
        for depth in DEPTHS:
            for kind in KINDS:
                r = results[init][kind][depth]
                t = trends[init, kind, depth] = trend(r["ffn"])
                rows.append({"stack": f"{KINDS[kind]} x{depth}", "||dFFN|| first": r["ffn"][0],
                             "||dFFN|| middle": r["ffn"][depth // 2], "||dFFN|| last": r["ffn"][-1],
                             "trend FFN": t, "trend W1": trend(r["w1"]), "trend W2": trend(r["w2"]),
                             "FFN": describe(t)})
        C.table(rows, list(rows[0]),
                title=f"Feed-forward gradient norms per layer at init: {label}")
        fits[init] = linear_fit(results[init]["pre"][deepest]["stream"])
    stream_rows = [{"layer l": l,
                    **{f"{KINDS[k]} ({i})": results[i][k][deepest]["stream"][l - 1] / d_model
                       for i in INITS for k in KINDS}}
                   for l in (1, 2, 4, 8, 12, 16, 20, 24)]
    C.table(stream_rows, list(stream_rows[0]),
            title=f"Residual stream at each block's input, mean ||x_l||^2 / d ({deepest} layers); "
                  "Pre-Norm linear fit R^2: " + ", ".join(f"{i} {fits[i][2]:.4f}" for i in INITS))

    fig, axes = C.figure(2, 3, width=13, height=6.6)
    for row, (init, label) in enumerate(INITS.items()):
        for col, kind in enumerate(KINDS):
            ax = axes[row, col]
            for depth in DEPTHS:
                ax.plot(range(1, depth + 1), results[init][kind][depth]["ffn"], marker=".",
                        label=f"{depth} layers")
            ax.set(yscale="log", xlabel="layer index", ylabel="||dL/dW_FFN||",
                   title=f"{KINDS[kind]}, {init} init: FFN gradient norm")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        ax = axes[row, 2]
        layers = np.arange(1, deepest + 1)
        slope, intercept, r2 = fits[init]
        for kind in KINDS:
            ax.plot(layers, np.array(results[init][kind][deepest]["stream"]) / d_model, marker=".",
                    label=KINDS[kind])
        ax.plot(layers, (intercept + slope * layers) / d_model, "k--", lw=0.8,
                label=f"Pre-Norm linear fit, R²={r2:.3f}")
        ax.set(xlabel="layer l", ylabel="mean ||x_l||² / d", title=f"Residual stream, {init} init")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    figures = [C.save(fig, out, "pre_vs_post.png")]

    # the tutorial's "smoother gradient flow", in both inits, and Xiong et al.'s predictions,
    # checked in their setting (Xavier init)
    post = [trends["xavier", "post", d] for d in DEPTHS]
    pre = [trends["xavier", "pre", d] for d in DEPTHS]
    smoother = {init: smoother_flow([trends[init, "pre", d] for d in DEPTHS],
                                    [trends[init, "post", d] for d in DEPTHS]) for init in INITS}
    slope, _, r2 = fits["xavier"]
    slope_per_d = slope / d_model
    band = in_lemma2_band(np.array(results["xavier"]["pre"][deepest]["stream"]) / d_model)
    last = {k: [results["xavier"][k][d]["ffn"][-1] for d in DEPTHS] for k in KINDS}
    post_last_ratio = last["post"][-1] / last["post"][0]  # Theorem 1: independent of L
    pre_last_ratio = last["pre"][-1] / last["pre"][0]  # Theorem 1: ∝ 1/√L
    pre_expected = (DEPTHS[0] / DEPTHS[-1]) ** 0.5
    checks = {
        "Pre-LN smoother than Post-LN at every depth (tutorial; both inits)":
            all(smoother.values()),
        "Post-LN grows with layer (Fig. 3)": all(describe(t) == "grows" for t in post),
        "Pre-LN flat over layers (Fig. 3)": all(describe(t) == "flat" for t in pre),
        "Post-LN last layer independent of L (Thm 1)": abs(np.log(post_last_ratio)) < np.log(1.25),
        "Pre-LN last layer ~ 1/sqrt(L) (Thm 1)":
            abs(np.log(pre_last_ratio / pre_expected)) < np.log(1.4),
        "Pre-LN stream linear, d/2 to 3d/2 per layer (Lemma 2)": stream_linear(slope_per_d, r2),
    }
    passed = sum(checks.values())
    outcome = (True if passed == len(checks) else False if passed == 0 else
               f"claim holds in part ({passed} of {len(checks)} predictions)")
    default_trends = {k: ", ".join(f"{trends['default', k, d]:.2g}" for d in DEPTHS) for k in KINDS}
    line = C.verdict(
        "Pre-Norm gives smoother gradient flow than Post-Norm; Xiong et al. 2020 (Xavier init): "
        "Post-LN FFN gradients grow with the layer index, Pre-LN ones stay flat (Fig. 3); the "
        "last layer's gradient is independent of depth L for Post-LN and shrinks as 1/sqrt(L) "
        "for Pre-LN (Thm 1); the Pre-LN stream grows linearly, by d/2 to 3d/2 per layer "
        "(Lemma 2)",
        outcome,
        "Xavier init, FFN gradient trend (last/first) for "
        f"{'/'.join(map(str, DEPTHS))} layers: Post-LN {', '.join(f'{t:.2g}' for t in post)}, "
        f"Pre-LN {', '.join(f'{t:.2g}' for t in pre)} (default init: Post-LN "
        f"{default_trends['post']}, Pre-LN {default_trends['pre']}); last layer "
        f"L={DEPTHS[-1]} vs L={DEPTHS[0]}: "
        f"Post-LN x{post_last_ratio:.2f}, Pre-LN x{pre_last_ratio:.2f} (1/sqrt(L): "
        f"x{pre_expected:.2f}); Pre-LN ||x_l||^2 linear fit R^2 {r2:.3f}, slope "
        f"{slope_per_d:.2f} d per layer, inside Lemma 2's band (1 + l/2 to 1 + 3l/2 after l "
        f"blocks) for {sum(band)} of l = 1..{len(band)}; "
        + "; ".join(f"{k}: {'yes' if v else 'no'}" for k, v in checks.items()),
    )
    return {"results": results, "trends": {f"{i}/{k}/{d}": t for (i, k, d), t in trends.items()},
            "last_layer_ratio": {"post": post_last_ratio, "pre": pre_last_ratio},
            "stream_fits": fits, "stream_slope_per_d": slope_per_d,
            "stream_in_lemma2_band": band,
            "smoother_flow": smoother, "checks": checks, "sizes": sizes, "figures": figures,
            "verdict": line}
