"""tinynorm.models against PyTorch references of the seed's classes.

The references below are written here, line for line the architecture of the seed tutorial's
PyTorch classes. Each test builds the reference in float64, moves its state_dict into the
tinynorm model unchanged, and compares, in float64: the output, the gradient of the input,
and the gradient of every parameter, under a random (never all-ones) upstream gradient.
Dropout is 0 or the models are in eval mode, so both sides compute the same function.

Tolerance: |tinynorm − torch| <= 1e-9 · (1 + |torch|) elementwise. Both sides compute the
same float64 expressions in a different order (BLAS blocking, fused norms), which differ by
a few ulps per op, ~1e-15 relative; 1e-9 leaves room for a few hundred ops of depth and
still catches any wrong term, whose error would be O(1).
"""
from __future__ import annotations

import numpy as np
import pytest

import tinynorm as tn
from tinynorm import models
from tinynorm.testing import assert_close

torch = pytest.importorskip("torch")
tnn = torch.nn

from demos._seed_torch import SeedLayerNorm, SeedRMSNorm  # noqa: E402 — needs torch

TOL = 1e-9
D_MODEL, NUM_HEADS, D_FF = 16, 4, 24
SEQ, BATCH = 5, 3


# ---- PyTorch references: the seed's classes ---------------------------------------------
class RefDeepNetworkWithoutResiduals(tnn.Module):
    def __init__(self, d_model, num_layers):
        super().__init__()
        self.layers = tnn.ModuleList([tnn.Linear(d_model, d_model) for _ in range(num_layers)])

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


class RefDeepNetworkWithResiduals(RefDeepNetworkWithoutResiduals):
    def forward(self, x):
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
        return x


def _ref_feed_forward(d_model, d_ff):
    return tnn.Sequential(tnn.Linear(d_model, d_ff), tnn.ReLU(), tnn.Linear(d_ff, d_model))


class RefTransformerBlockWithResiduals(tnn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.1):
        super().__init__()
        self.attention = tnn.MultiheadAttention(d_model, num_heads, dropout=dropout)
        self.feed_forward = _ref_feed_forward(d_model, d_ff)
        self.dropout = tnn.Dropout(dropout)

    def forward(self, x):
        attn_output, _ = self.attention(x, x, x)
        x = x + self.dropout(attn_output)
        ff_output = self.feed_forward(x)
        return x + self.dropout(ff_output)


class RefPostNormTransformerBlock(tnn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.1):
        super().__init__()
        self.attention = tnn.MultiheadAttention(d_model, num_heads)
        self.norm1 = tnn.LayerNorm(d_model)
        self.feed_forward = _ref_feed_forward(d_model, d_ff)
        self.norm2 = tnn.LayerNorm(d_model)
        self.dropout = tnn.Dropout(dropout)

    def forward(self, x):
        attn_output, _ = self.attention(x, x, x)
        x = self.norm1(x + self.dropout(attn_output))
        ff_output = self.feed_forward(x)
        return self.norm2(x + self.dropout(ff_output))


class RefPreNormTransformerBlock(RefPostNormTransformerBlock):
    def forward(self, x):
        normed_x = self.norm1(x)
        attn_output, _ = self.attention(normed_x, normed_x, normed_x)
        x = x + self.dropout(attn_output)
        normed_x = self.norm2(x)
        return x + self.dropout(self.feed_forward(normed_x))


class RefModernTransformerBlock(tnn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, use_rms_norm=False):
        super().__init__()
        norm_class = SeedRMSNorm if use_rms_norm else tnn.LayerNorm
        self.norm1 = norm_class(d_model)
        self.norm2 = norm_class(d_model)
        self.attention = tnn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.feed_forward = tnn.Sequential(
            tnn.Linear(d_model, d_ff), tnn.GELU(), tnn.Dropout(dropout),
            tnn.Linear(d_ff, d_model), tnn.Dropout(dropout),
        )

    def forward(self, x, mask=None):
        normed = self.norm1(x)
        attn_output, _ = self.attention(normed, normed, normed, attn_mask=mask)
        x = x + attn_output
        normed = self.norm2(x)
        return x + self.feed_forward(normed)


class RefTransformer(tnn.Module):
    def __init__(self, num_layers, d_model, num_heads, d_ff, dropout=0.1):
        super().__init__()
        self.layers = tnn.ModuleList([
            RefModernTransformerBlock(d_model, num_heads, d_ff, dropout) for _ in range(num_layers)
        ])
        self.final_norm = tnn.LayerNorm(d_model)

    def forward(self, x, mask=None):
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)


# ---- helpers ------------------------------------------------------------------------------
def _randomize(ref):
    """Move every parameter off its init (LayerNorm's ones and zeros would hide a swapped
    weight and bias, zero MHA biases a missing bias gradient)."""
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return ref


def _pair(tn_cls, ref_cls, *args, **kwargs):
    """A float64 reference and the tinynorm model holding its state_dict, both in eval mode."""
    torch.manual_seed(0)
    ref = _randomize(ref_cls(*args, **kwargs).double()).eval()
    model = tn_cls(*args, **kwargs).double().eval()
    assert list(model.state_dict()) == list(ref.state_dict())
    result = model.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    assert not result.missing_keys and not result.unexpected_keys
    return model, ref


def _check(model, ref, x_shape, *extra_tn, extra_ref=(), seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    x_ref = torch.tensor(x, requires_grad=True)
    x_tn = tn.tensor(x, requires_grad=True)
    y_ref = ref(x_ref, *extra_ref)
    y_tn = model(x_tn, *extra_tn)
    assert y_tn.dtype == tn.float64 and tuple(y_tn.shape) == tuple(y_ref.shape)
    assert_close(y_tn, y_ref.detach().numpy(), rtol=TOL, atol=TOL)
    upstream = rng.standard_normal(y_ref.shape)
    y_ref.backward(torch.tensor(upstream))
    y_tn.backward(tn.tensor(upstream))
    assert_close(x_tn.grad, x_ref.grad.numpy(), rtol=TOL, atol=TOL)
    ours = dict(model.named_parameters())
    for name, p in ref.named_parameters():
        assert ours[name].grad is not None, f"no gradient reached {name}"
        try:
            assert_close(ours[name].grad, p.grad.numpy(), rtol=TOL, atol=TOL)
        except AssertionError as err:
            raise AssertionError(f"gradient of {name}: {err}") from None


def _masks(length):
    """No mask, PyTorch MHA's bool causal mask (True = blocked), and the same as float −inf."""
    blocked = np.triu(np.ones((length, length), dtype=bool), k=1)
    additive = np.where(blocked, -np.inf, 0.0)
    return {
        "absent": ((), ()),
        "bool": ((tn.tensor(blocked),), (torch.tensor(blocked),)),
        "float_-inf": ((tn.tensor(additive),), (torch.tensor(additive),)),
    }


# ---- parity ---------------------------------------------------------------------------------
@pytest.mark.parametrize("tn_cls, ref_cls", [
    (models.DeepNetworkWithoutResiduals, RefDeepNetworkWithoutResiduals),
    (models.DeepNetworkWithResiduals, RefDeepNetworkWithResiduals),
])
def test_deep_networks_match_seed(tn_cls, ref_cls):
    model, ref = _pair(tn_cls, ref_cls, D_MODEL, 6)
    _check(model, ref, (BATCH, D_MODEL))


@pytest.mark.parametrize("tn_cls, ref_cls", [
    (models.LayerNorm, SeedLayerNorm),
    (models.RMSNorm, SeedRMSNorm),
])
def test_seed_norms_match_seed(tn_cls, ref_cls):
    model, ref = _pair(tn_cls, ref_cls, D_MODEL)
    assert model.eps == 1e-5
    _check(model, ref, (BATCH, SEQ, D_MODEL))


@pytest.mark.parametrize("tn_cls, ref_cls", [
    (models.TransformerBlockWithResiduals, RefTransformerBlockWithResiduals),
    (models.PostNormTransformerBlock, RefPostNormTransformerBlock),
    (models.PreNormTransformerBlock, RefPreNormTransformerBlock),
])
@pytest.mark.parametrize("dropout", [0.0, 0.1])  # 0.1 in eval mode
def test_seq_first_blocks_match_seed(tn_cls, ref_cls, dropout):
    model, ref = _pair(tn_cls, ref_cls, D_MODEL, NUM_HEADS, D_FF, dropout)
    _check(model, ref, (SEQ, BATCH, D_MODEL))  # (L, N, E): the seed's MHA is seq-first


@pytest.mark.parametrize("mask", ["absent", "bool", "float_-inf"])
@pytest.mark.parametrize("use_rms_norm", [False, True])
def test_modern_block_matches_seed(use_rms_norm, mask):
    model, ref = _pair(models.ModernTransformerBlock, RefModernTransformerBlock,
                       D_MODEL, NUM_HEADS, D_FF, 0.1, use_rms_norm)
    if use_rms_norm:  # the seed's RMSNorm eps, not nn.RMSNorm's finfo(dtype).eps default
        assert model.norm1.eps == model.norm2.eps == 1e-5
    tn_mask, ref_mask = _masks(SEQ)[mask]
    _check(model, ref, (BATCH, SEQ, D_MODEL), *tn_mask, extra_ref=ref_mask)


@pytest.mark.parametrize("mask", ["absent", "bool", "float_-inf"])
def test_transformer_matches_seed(mask):
    model, ref = _pair(models.Transformer, RefTransformer, 2, D_MODEL, NUM_HEADS, D_FF, 0.0)
    tn_mask, ref_mask = _masks(SEQ)[mask]
    _check(model, ref, (BATCH, SEQ, D_MODEL), *tn_mask, extra_ref=ref_mask)


def test_transformer_defaults_and_layout():
    model = models.Transformer(3, D_MODEL, NUM_HEADS, D_FF)
    ref = RefTransformer(3, D_MODEL, NUM_HEADS, D_FF)
    assert len(model.layers) == 3 and isinstance(model.final_norm, tn.nn.LayerNorm)
    assert model.layers[0].feed_forward[2].p == 0.1 and model.layers[0].attention.dropout == 0.1
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())


# ---- dropout in training mode -----------------------------------------------------------------
def test_block_dropout_zeroes_a_fraction_p_and_keeps_the_mean():
    """TransformerBlockWithResiduals: x + dropout(ff(x)) once the attention output is 0.

    With out_proj zeroed the attention sub-layer adds exactly 0 in either mode, so
    y − x = dropout(ff(x)): each element is ff(x)/(1 − p) with probability 1 − p, else 0.
    Over n elements the zeroed fraction has standard deviation sqrt(p(1 − p)/n) and the mean
    of (y − x)/ff(x) has sqrt(p/(1 − p)/n); both are checked to within 5 of those.
    """
    p, n_tokens = 0.3, 512
    tn.manual_seed(0)
    block = models.TransformerBlockWithResiduals(D_MODEL, NUM_HEADS, D_FF, dropout=p).double()
    block.attention.out_proj.weight.data[...] = 0
    block.attention.out_proj.bias.data[...] = 0
    x = tn.tensor(np.random.default_rng(0).standard_normal((n_tokens, 1, D_MODEL)))
    ff = tn.backend.to_numpy(block.feed_forward(x).data)
    block.eval()
    assert_close(block(x) - x, ff, rtol=1e-12, atol=1e-12)
    block.train()
    dropped = tn.backend.to_numpy((block(x) - x).data)
    n = ff.size
    zero_fraction = float(np.mean(dropped == 0))
    assert abs(zero_fraction - p) < 5 * np.sqrt(p * (1 - p) / n), zero_fraction
    kept = dropped != 0
    assert_close(dropped[kept], ff[kept] / (1 - p), rtol=1e-12, atol=1e-12)
    mean_ratio = float(np.mean(dropped / ff))
    assert abs(mean_ratio - 1) < 5 * np.sqrt(p / (1 - p) / n), mean_ratio
    again = tn.backend.to_numpy((block(x) - x).data)
    assert not np.array_equal(again == 0, dropped == 0)  # a fresh mask each call


def test_transformer_train_mode_is_random_and_eval_mode_is_dropout_free():
    tn.manual_seed(0)
    model = models.Transformer(2, D_MODEL, NUM_HEADS, D_FF, dropout=0.2).double()
    x = tn.tensor(np.random.default_rng(2).standard_normal((BATCH, SEQ, D_MODEL)))
    first, second = model(x), model(x)
    assert not np.allclose(tn.backend.to_numpy(first.data), tn.backend.to_numpy(second.data))
    model.eval()
    no_dropout = models.Transformer(2, D_MODEL, NUM_HEADS, D_FF, dropout=0.0).double()
    no_dropout.load_state_dict(model.state_dict())
    assert_close(model(x), no_dropout(x), rtol=0, atol=0)


# ---- finite differences: the composed models, input and a float mask -------------------------
@pytest.mark.parametrize("use_rms_norm", [False, True])
def test_modern_block_gradcheck(use_rms_norm):
    """Input and float-mask gradients of a tiny block against central differences."""
    from tinynorm.testing import gradcheck

    tn.manual_seed(0)
    block = models.ModernTransformerBlock(8, 2, 12, dropout=0.0, use_rms_norm=use_rms_norm).double()
    rng = np.random.default_rng(3)
    x = tn.tensor(rng.standard_normal((2, 4, 8)), requires_grad=True)
    mask = tn.tensor(0.5 * rng.standard_normal((4, 4)), requires_grad=True)
    assert gradcheck(lambda x, mask: block(x, mask), (x, mask))


def test_seed_deep_network_gradcheck():
    from tinynorm.testing import gradcheck

    tn.manual_seed(0)
    model = models.DeepNetworkWithResiduals(6, 4).double()
    x = tn.tensor(np.random.default_rng(4).standard_normal((3, 6)), requires_grad=True)
    assert gradcheck(model, (x,))
