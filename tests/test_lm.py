"""tinynorm.models.CausalLM and tinynorm.data: shapes, causality, every norm placement
against a PyTorch reference, DeepNorm's constants and init, training on the copy task, and
the corpus' determinism.

Parity tolerance (float64): |tinynorm − torch| <= 1e-9 · (1 + |torch|). Both sides evaluate
the same float64 expressions in a different order (BLAS blocking, fused norms, a fused
cross-entropy), a few ulps per op (~1e-15 relative); 1e-9 leaves room for the few hundred
ops of the model and still catches any wrong term, whose error would be O(1e-3) or more.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import tinynorm as tn
from tinynorm.data import (IGNORE_INDEX, STDLIB_MODULES, CharCorpus, CharVocab, CopyTask,
                           data_generator, stdlib_text)
from tinynorm.models import CausalLM, deepnorm_alpha, deepnorm_beta
from tinynorm.testing import assert_close

from torch_pairs import attention_saved

torch = pytest.importorskip("torch")
tnn = torch.nn
TF = torch.nn.functional

TOL = 1e-9
UPSTREAM = -0.37  # the loss's upstream gradient in the parity tests: not the implicit 1
VOCAB, D_MODEL, HEADS, LAYERS, D_FF, MAX_LEN = 11, 16, 4, 3, 24, 12
PLACEMENTS = [("pre", "layer", True), ("post", "layer", True), ("deepnorm", "layer", True),
              ("none", "layer", True), ("none", "layer", False), ("post", "layer", False),
              ("pre", "rms", True), ("deepnorm", "rms", True)]


# ---- a PyTorch reference of the same architecture, parameter for parameter ----------------
class RefAttention(tnn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = tnn.Linear(d, d), tnn.Linear(d, d)
        self.v_proj, self.out_proj = tnn.Linear(d, d), tnn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        split = lambda z: z.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        out = TF.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)),
                                              split(self.v_proj(x)), is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class RefMLP(tnn.Module):
    def __init__(self, d, d_ff):
        super().__init__()
        self.fc1, self.fc2 = tnn.Linear(d, d_ff), tnn.Linear(d_ff, d)

    def forward(self, x):
        return self.fc2(TF.gelu(self.fc1(x), approximate="tanh"))


def ref_norm(norm, norm_type, d):
    if norm == "none":
        return tnn.Identity()
    return tnn.LayerNorm(d) if norm_type == "layer" else tnn.RMSNorm(d, eps=1e-5)


class RefBlock(tnn.Module):
    def __init__(self, norm, norm_type, residual, alpha):
        super().__init__()
        self.norm, self.residual, self.alpha = norm, residual, alpha
        self.norm1 = ref_norm(norm, norm_type, D_MODEL)
        self.norm2 = ref_norm(norm, norm_type, D_MODEL)
        self.attention, self.mlp = RefAttention(D_MODEL, HEADS), RefMLP(D_MODEL, D_FF)

    def sub(self, x, g, n):
        if self.norm == "pre":
            return x + g(n(x)) if self.residual else g(n(x))
        if self.norm == "none":
            return x + g(x) if self.residual else g(x)
        if not self.residual:
            return n(g(x))
        return n(self.alpha * x + g(x))

    def forward(self, x):
        return self.sub(self.sub(x, self.attention, self.norm1), self.mlp, self.norm2)


class RefCausalLM(tnn.Module):
    def __init__(self, norm, norm_type, residual):
        super().__init__()
        alpha = (2 * LAYERS) ** 0.25 if norm == "deepnorm" else 1.0
        self.token_embedding = tnn.Embedding(VOCAB, D_MODEL)
        self.position_embedding = tnn.Embedding(MAX_LEN, D_MODEL)
        self.blocks = tnn.ModuleList([RefBlock(norm, norm_type, residual, alpha)
                                      for _ in range(LAYERS)])
        self.final_norm = ref_norm(norm, norm_type, D_MODEL) if norm == "pre" else tnn.Identity()
        self.lm_head = tnn.Linear(D_MODEL, VOCAB, bias=False)

    def forward(self, idx):
        x = self.token_embedding(idx) + self.position_embedding(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.final_norm(x))


def tiny_lm(norm="pre", norm_type="layer", residual=True, dtype=tn.float64):
    model = CausalLM(VOCAB, D_MODEL, HEADS, LAYERS, d_ff=D_FF, max_len=MAX_LEN, norm=norm,
                     norm_type=norm_type, residual=residual)
    return model.to(dtype)


def ids(shape, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=shape)


# ---- shapes and arguments -----------------------------------------------------------------
def test_logits_shape_and_parameter_names():
    model = tiny_lm()
    logits = model(tn.tensor(ids((2, 7))))
    assert logits.shape == (2, 7, VOCAB)
    names = {name for name, _ in model.named_parameters()}
    assert {"token_embedding.weight", "position_embedding.weight", "lm_head.weight",
            "blocks.2.attention.v_proj.weight", "blocks.0.mlp.fc2.bias", "blocks.1.norm2.weight",
            "final_norm.weight"} <= names
    assert "lm_head.bias" not in names  # the head has no bias
    assert not any(name.startswith("final_norm") for name, _ in tiny_lm("post").named_parameters())
    assert not any("norm" in name for name, _ in tiny_lm("none").named_parameters())


def test_bad_arguments_raise_with_names():
    with pytest.raises(ValueError, match="norm='middle'"):
        CausalLM(VOCAB, norm="middle")
    with pytest.raises(ValueError, match="norm_type='batch'"):
        CausalLM(VOCAB, norm_type="batch")
    with pytest.raises(ValueError, match="max_len=12"):
        tiny_lm()(tn.tensor(ids((1, MAX_LEN + 1))))
    with pytest.raises(ValueError, match=r"\(batch, length\)"):
        tiny_lm()(tn.tensor(ids((5,))))


# ---- causality -----------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["pre", "post", "deepnorm", "none"])
def test_output_at_t_does_not_depend_on_later_tokens(norm):
    model = tiny_lm(norm)
    a = ids((2, 9), seed=1)
    for t in (0, 4, 7):
        b = a.copy()
        b[:, t + 1:] = (b[:, t + 1:] + 1 + np.arange(8 - t)) % VOCAB  # every later token changes
        out_a, out_b = (model(tn.tensor(v)).detach().numpy() for v in (a, b))
        np.testing.assert_allclose(out_b[:, :t + 1], out_a[:, :t + 1], rtol=0, atol=1e-12)
        assert np.abs(out_b[:, t + 1:] - out_a[:, t + 1:]).max() > 1e-6  # later ones do change


def test_gradient_of_an_early_loss_ignores_later_embeddings():
    model = tiny_lm()
    idx = tn.tensor(np.arange(8).reshape(1, 8) % VOCAB)
    logits = model(idx)
    upstream = np.zeros(logits.shape)
    upstream[0, :3] = np.random.default_rng(2).standard_normal((3, VOCAB))  # positions 0, 1, 2
    logits.backward(tn.tensor(upstream))
    grad_pos = tn.backend.to_numpy(model.position_embedding.weight.grad)
    assert np.abs(grad_pos[:3]).max() > 1e-6
    assert np.abs(grad_pos[3:]).max() == 0.0


# ---- parity with the PyTorch reference, every placement ----------------------------------
@pytest.mark.parametrize("norm,norm_type,residual", PLACEMENTS)
def test_matches_pytorch_reference(norm, norm_type, residual):
    torch.manual_seed(0)
    ref = RefCausalLM(norm, norm_type, residual).double()
    for p in ref.parameters():  # norms away from their init, so γ and β are exercised too
        p.data.add_(0.1 * torch.randn_like(p))
    model = tiny_lm(norm, norm_type, residual)
    model.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    idx = ids((3, 10), seed=3)
    target = ids((3, 10), seed=4)
    target[0, :4] = IGNORE_INDEX

    ref_logits = ref(torch.tensor(idx))
    ref_loss = TF.cross_entropy(ref_logits.reshape(-1, VOCAB), torch.tensor(target).reshape(-1))
    ref_loss.backward(torch.tensor(UPSTREAM, dtype=torch.float64))  # not the implicit 1
    logits = model(tn.tensor(idx))
    loss = model.loss(tn.tensor(idx), tn.tensor(target))
    loss.backward(tn.tensor(UPSTREAM, dtype=tn.float64))

    assert_close(logits.detach(), ref_logits.detach().numpy(), rtol=TOL, atol=TOL)
    assert_close(loss.detach(), ref_loss.detach().numpy(), rtol=TOL, atol=TOL)
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert_close(p.grad, ref_params[name].grad.numpy(), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("length, rebuilt", [(10, False), (30, True)])
def test_long_sequences_rebuild_attention_weights_and_match_pytorch(length, rebuilt):
    """Attention keeps P (T × T per head) for backward on short sequences and only a
    log-sum-exp per token on long ones (T > 6·d_head = 24: the SDPA op's default), in every
    layer; the loss and every gradient still match the reference."""
    max_len = 32
    torch.manual_seed(1)
    ref = RefCausalLM("pre", "layer", True).double()
    ref.position_embedding = tnn.Embedding(max_len, D_MODEL).double()
    model = CausalLM(VOCAB, D_MODEL, HEADS, LAYERS, d_ff=D_FF, max_len=max_len).to(tn.float64)
    model.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    idx, target = ids((2, length), seed=5), ids((2, length), seed=6)

    loss = model.loss(tn.tensor(idx), tn.tensor(target))
    saved = attention_saved(loss)
    assert len(saved) == LAYERS
    for shapes in saved:
        assert ((2, HEADS, length, 1) in shapes) == rebuilt, shapes
        assert ((2, HEADS, length, length) in shapes) == (not rebuilt), shapes
    loss.backward(tn.tensor(UPSTREAM, dtype=tn.float64))
    ref_loss = TF.cross_entropy(ref(torch.tensor(idx)).reshape(-1, VOCAB),
                                torch.tensor(target).reshape(-1))
    ref_loss.backward(torch.tensor(UPSTREAM, dtype=torch.float64))
    assert_close(loss.detach(), ref_loss.detach().numpy(), rtol=TOL, atol=TOL)
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert_close(p.grad, ref_params[name].grad.numpy(), rtol=TOL, atol=TOL)


# ---- DeepNorm -------------------------------------------------------------------------------
def test_deepnorm_constants():
    # Wang et al. 2022, Table 1, decoder-only: α = (2N)^(1/4), β = (8N)^(−1/4)
    assert deepnorm_alpha(6) == pytest.approx(12 ** 0.25) == pytest.approx(1.8612097)
    assert deepnorm_beta(6) == pytest.approx(48 ** -0.25) == pytest.approx(0.3799178)
    assert deepnorm_alpha(100) == pytest.approx(200 ** 0.25)
    model = CausalLM(VOCAB, D_MODEL, HEADS, 18, norm="deepnorm")
    assert model.alpha == pytest.approx(36 ** 0.25) and model.beta == pytest.approx(144 ** -0.25)
    assert all(block.alpha == model.alpha for block in model.blocks)
    assert CausalLM(VOCAB, norm="post").alpha == 1.0 and CausalLM(VOCAB, norm="pre").beta == 1.0


def test_deepnorm_scales_the_init_of_ffn_value_and_output_only():
    tn.manual_seed(0)
    d, layers = 64, 8
    model = CausalLM(VOCAB, d, 4, layers, norm="deepnorm")
    beta = deepnorm_beta(layers)

    def std(w):
        return float(np.std(tn.backend.to_numpy(w.data)))

    xavier = lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out))  # noqa: E731
    for block in model.blocks:
        a, m = block.attention, block.mlp
        # 4096+ samples each: the sample std is within ~3% of the true one (4σ: 4·1/√8192)
        assert std(a.q_proj.weight) == pytest.approx(xavier(d, d), rel=0.07)
        assert std(a.k_proj.weight) == pytest.approx(xavier(d, d), rel=0.07)
        assert std(a.v_proj.weight) == pytest.approx(beta * xavier(d, d), rel=0.07)
        assert std(a.out_proj.weight) == pytest.approx(beta * xavier(d, d), rel=0.07)
        assert std(m.fc1.weight) == pytest.approx(beta * xavier(d, 4 * d), rel=0.07)
        assert std(m.fc2.weight) == pytest.approx(beta * xavier(4 * d, d), rel=0.07)
        assert not a.v_proj.bias.data.any() and not m.fc1.bias.data.any()
    post = CausalLM(VOCAB, d, 4, layers, norm="post")
    assert std(post.blocks[0].mlp.fc1.weight) == pytest.approx(xavier(d, 4 * d), rel=0.07)


def test_deepnorm_block_computes_norm_of_alpha_x_plus_g():
    model = tiny_lm("deepnorm")
    block, alpha = model.blocks[0], model.alpha
    x = tn.tensor(np.random.default_rng(5).standard_normal((2, 6, D_MODEL)))
    record = []
    out = block(x, record)
    h = tn.nn.functional.layer_norm(x * alpha + block.attention(x), (D_MODEL,),
                                    block.norm1.weight, block.norm1.bias)
    expected = tn.nn.functional.layer_norm(h * alpha + block.mlp(h), (D_MODEL,),
                                           block.norm2.weight, block.norm2.bias)
    assert_close(out.detach(), expected.detach(), rtol=1e-12, atol=1e-12)
    assert len(record) == 2  # the two norms' inputs: α·x + A(x), then α·h + M(h)
    assert_close(record[0].detach(), (x * alpha + block.attention(x)).detach())


def test_record_collects_every_norm_input():
    idx = tn.tensor(ids((1, 5)))
    for norm, expected in (("pre", 2 * LAYERS + 1), ("post", 2 * LAYERS),
                           ("deepnorm", 2 * LAYERS), ("none", 0)):
        record = []
        tiny_lm(norm)(idx, record=record)
        assert len(record) == expected, norm
        assert all(r.shape == (1, 5, D_MODEL) for r in record)


# ---- every placement trains on the copy task ---------------------------------------------
@pytest.mark.parametrize("norm,norm_type,residual", PLACEMENTS)
def test_each_placement_learns_the_copy_task(norm, norm_type, residual):
    tn.manual_seed(0)
    task = CopyTask(vocab_size=6, length=4)
    model = CausalLM(task.vocab_size, 32, 4, 2, max_len=task.seq_len, norm=norm,
                     norm_type=norm_type, residual=residual)
    optimizer = tn.optim.Adam(model.parameters(), lr=3e-3)
    generator = data_generator(0)
    losses = []
    for _ in range(40):
        loss = model.loss(*task.get_batch(16, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, (norm, residual, losses)


# ---- data ----------------------------------------------------------------------------------
def test_stdlib_corpus_is_deterministic_and_round_trips():
    a, b = CharCorpus.stdlib(max_chars=50_000), CharCorpus.stdlib(max_chars=50_000)
    assert a.text == b.text and len(a.text) == 50_000
    assert a.text.startswith(stdlib_text(STDLIB_MODULES[:1], 200))  # abc.py comes first
    assert a.vocab.chars == b.vocab.chars
    assert set(a.text) <= {chr(c) for c in range(32, 127)} | {"\n"}
    assert a.vocab.decode(a.vocab.encode(a.text)) == a.text
    assert a.vocab.decode(a.train) + a.vocab.decode(a.val) == a.text
    assert len(a.val) == 5_000  # the last 10%
    x1, y1 = a.get_batch("train", 4, 16, data_generator(7))
    x2, y2 = b.get_batch("train", 4, 16, data_generator(7))
    np.testing.assert_array_equal(x1.numpy(), x2.numpy())
    np.testing.assert_array_equal(y1.numpy()[:, :-1], x1.numpy()[:, 1:])  # y is x shifted
    x3, _ = a.get_batch("train", 4, 16, data_generator(8))
    assert not np.array_equal(x1.numpy(), x3.numpy())
    tn.manual_seed(3)
    x4, _ = a.get_batch("val", 2, 8)
    tn.manual_seed(3)
    x5, _ = a.get_batch("val", 2, 8)
    np.testing.assert_array_equal(x4.numpy(), x5.numpy())


def test_unigram_entropy_is_the_frequency_only_loss():
    corpus = CharCorpus("aab" * 10 + "c" * 10, val_fraction=0.25)  # train: "aab"*10 exactly
    assert corpus.vocab.chars == ["a", "b", "c"]
    p = np.array([2 / 3, 1 / 3])
    assert corpus.unigram_entropy == pytest.approx(float(-(p * np.log(p)).sum()))
    big = CharCorpus.stdlib(max_chars=50_000)
    assert 2.0 < big.unigram_entropy < math.log(big.vocab_size)


def test_vocab_and_split_errors():
    vocab = CharVocab("abc")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode("abz")
    with pytest.raises(ValueError, match="split must be"):
        CharCorpus("abcdefgh" * 4).get_batch("test", 1, 4)
    with pytest.raises(ValueError, match="too few"):
        CharCorpus("abcdefgh" * 4).get_batch("val", 1, 10)


@pytest.mark.parametrize("reverse", [False, True])
def test_copy_task_layout_and_losses(reverse):
    task = CopyTask(vocab_size=7, length=5, reverse=reverse)
    x, y = task.get_batch(3, data_generator(0))
    x, y = x.numpy(), y.numpy()
    assert x.shape == y.shape == (3, 10)
    prompt = x[:, :5]
    assert prompt.max() < 6 and np.all(x[:, 5] == task.separator)
    assert np.all(y[:, :5] == IGNORE_INDEX)
    np.testing.assert_array_equal(y[:, 5:], prompt[:, ::-1] if reverse else prompt)
    np.testing.assert_array_equal(x[:, 6:], y[:, 5:-1])  # teacher forcing
    assert task.optimal_loss == 0.0 and task.prompt_blind_loss == pytest.approx(math.log(6))
