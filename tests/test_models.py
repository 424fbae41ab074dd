"""tinynorm.models against PyTorch references of the seed's classes.

The references are the seed tutorial's PyTorch classes as demos/_seed_torch.py writes them
(benchmarks/blocks.py times the same ones). Each test builds the reference in float64, moves
its state_dict into the tinynorm model unchanged, and compares, in float64: the output, the
gradient of the input, and the gradient of every parameter, under a random (never all-ones)
upstream gradient.
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

from demos import _seed_torch as seed  # noqa: E402 — needs torch

TOL = 1e-9
D_MODEL, NUM_HEADS, D_FF = 16, 4, 24
SEQ, BATCH = 5, 3


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
    (models.DeepNetworkWithoutResiduals, seed.DeepNetworkWithoutResiduals),
    (models.DeepNetworkWithResiduals, seed.DeepNetworkWithResiduals),
])
def test_deep_networks_match_seed(tn_cls, ref_cls):
    model, ref = _pair(tn_cls, ref_cls, D_MODEL, 6)
    _check(model, ref, (BATCH, D_MODEL))


@pytest.mark.parametrize("tn_cls, ref_cls", [
    (models.LayerNorm, seed.SeedLayerNorm),
    (models.RMSNorm, seed.SeedRMSNorm),
])
def test_seed_norms_match_seed(tn_cls, ref_cls):
    model, ref = _pair(tn_cls, ref_cls, D_MODEL)
    assert model.eps == 1e-5
    _check(model, ref, (BATCH, SEQ, D_MODEL))


@pytest.mark.parametrize("tn_cls, ref_cls", [
    (models.TransformerBlockWithResiduals, seed.TransformerBlockWithResiduals),
    (models.PostNormTransformerBlock, seed.PostNormTransformerBlock),
    (models.PreNormTransformerBlock, seed.PreNormTransformerBlock),
])
@pytest.mark.parametrize("dropout", [0.0, 0.1])  # 0.1 in eval mode
def test_seq_first_blocks_match_seed(tn_cls, ref_cls, dropout):
    model, ref = _pair(tn_cls, ref_cls, D_MODEL, NUM_HEADS, D_FF, dropout)
    _check(model, ref, (SEQ, BATCH, D_MODEL))  # (L, N, E): the seed's MHA is seq-first


@pytest.mark.parametrize("mask", ["absent", "bool", "float_-inf"])
@pytest.mark.parametrize("use_rms_norm", [False, True])
def test_modern_block_matches_seed(use_rms_norm, mask):
    model, ref = _pair(models.ModernTransformerBlock, seed.ModernTransformerBlock,
                       D_MODEL, NUM_HEADS, D_FF, 0.1, use_rms_norm)
    if use_rms_norm:  # the seed's RMSNorm eps, not nn.RMSNorm's finfo(dtype).eps default
        assert model.norm1.eps == model.norm2.eps == 1e-5
    tn_mask, ref_mask = _masks(SEQ)[mask]
    _check(model, ref, (BATCH, SEQ, D_MODEL), *tn_mask, extra_ref=ref_mask)


@pytest.mark.parametrize("mask", ["absent", "bool", "float_-inf"])
def test_transformer_matches_seed(mask):
    model, ref = _pair(models.Transformer, seed.Transformer, 2, D_MODEL, NUM_HEADS, D_FF, 0.0)
    tn_mask, ref_mask = _masks(SEQ)[mask]
    _check(model, ref, (BATCH, SEQ, D_MODEL), *tn_mask, extra_ref=ref_mask)


def test_transformer_defaults_and_layout():
    model = models.Transformer(3, D_MODEL, NUM_HEADS, D_FF)
    ref = seed.Transformer(3, D_MODEL, NUM_HEADS, D_FF)
    assert len(model.layers) == 3 and isinstance(model.final_norm, tn.nn.LayerNorm)
    assert model.layers[0].feed_forward[2].p == 0.1 and model.layers[0].attention.dropout == 0.1
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())


def test_seed_classes_with_need_weights_false_compute_the_same_function():
    """The benchmark's PyTorch column with need_weights=False: same keys, same output and
    gradients as the seed's classes (only PyTorch's attention kernel differs)."""
    block_false, stack_false = seed.with_need_weights(False)
    assert seed.with_need_weights(True) == (seed.ModernTransformerBlock, seed.Transformer)
    assert seed.ModernTransformerBlock.need_weights is True
    torch.manual_seed(0)
    ref = _randomize(seed.Transformer(2, D_MODEL, NUM_HEADS, D_FF).double()).eval()
    model = stack_false(2, D_MODEL, NUM_HEADS, D_FF).double().eval()
    model.load_state_dict(ref.state_dict())  # strict: the same keys and shapes
    assert all(type(layer) is block_false and layer.need_weights is False for layer in model.layers)
    mask = torch.tensor(np.triu(np.ones((SEQ, SEQ), dtype=bool), k=1))
    x = torch.tensor(np.random.default_rng(5).standard_normal((BATCH, SEQ, D_MODEL)),
                     requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = model(x, mask), ref(x_ref, mask)
    assert_close(y.detach().numpy(), y_ref.detach().numpy(), rtol=TOL, atol=TOL)
    upstream = torch.tensor(np.random.default_rng(6).standard_normal(tuple(y.shape)))
    y.backward(upstream)
    y_ref.backward(upstream)
    assert_close(x.grad.numpy(), x_ref.grad.numpy(), rtol=TOL, atol=TOL)
    for p, p_ref in zip(model.parameters(), ref.parameters(), strict=True):
        assert_close(p.grad.numpy(), p_ref.grad.numpy(), rtol=TOL, atol=TOL)


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
