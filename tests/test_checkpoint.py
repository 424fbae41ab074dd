"""Checkpoints: bit-exact round trip, identical resumed training, and damaged files rejected
with a clear error while the model, optimizer, scheduler and random state stay untouched."""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest

import tinynorm as tn
from tinynorm import optim
from tinynorm.optim import lr_scheduler
from tinynorm.serialization import CheckpointError
from tinynorm.testing.compare import to_host as host

F = tn.nn.functional
VOCAB, WIDTH = 11, 8


class TinyModel(tn.nn.Module):
    """Embedding → Linear → dropout → Linear: every piece a checkpoint must carry."""

    def __init__(self, width=WIDTH, dtype=None):
        super().__init__()
        self.embed = tn.nn.Embedding(VOCAB, width, dtype=dtype)
        self.hidden = tn.nn.Linear(width, width, dtype=dtype)
        self.drop = tn.nn.Dropout(0.3)
        self.out = tn.nn.Linear(width, VOCAB, dtype=dtype)

    def forward(self, tokens):
        return self.out(self.drop(self.hidden(self.embed(tokens)).relu()))


def build(seed=0, width=WIDTH, optimizer="AdamW"):
    tn.manual_seed(seed)
    model = TinyModel(width)
    opt = optim.AdamW(model.parameters(), lr=3e-2) if optimizer == "AdamW" else \
        optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = lr_scheduler.WarmupLR(opt, 3, "cosine", total_steps=20)
    return model, opt, sched


def train(model, opt, sched, steps):
    """Steps whose data and dropout masks come from the backend generator."""
    losses = []
    for _ in range(steps):
        tokens = tn.tensor((host(tn.rand(6)) * VOCAB).astype(np.int64))
        loss = F.cross_entropy(model(tokens), tn.tensor(np.roll(host(tokens), 1)))
        opt.zero_grad()
        loss.backward()
        tn.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(host(loss).tobytes())
    return losses


def snapshot(model, opt, sched):
    """Everything a load may change, as bytes and plain values, for exact comparison."""
    params = {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in model.state_dict().items()}
    state = opt.state_dict()
    opt_state = {i: {k: (host(v).tobytes() if tn.backend.is_array(v) else v)
                     for k, v in entries.items()} for i, entries in state["state"].items()}
    rng = tn.backend.get_rng_state()
    return (params, opt_state, copy.deepcopy(state["param_groups"]), sched.state_dict(),
            json.dumps(rng["numpy"]), rng["seed"])


@pytest.fixture
def saved(tmp_path):
    """A checkpoint after 4 steps, and the snapshot of what it holds."""
    model, opt, sched = build()
    train(model, opt, sched, 4)
    path = tmp_path / "run.npz"
    tn.save_checkpoint(path, model=model, optimizer=opt, scheduler=sched, step=4,
                       extra={"config": {"width": WIDTH}})
    return path, snapshot(model, opt, sched)


def test_round_trip_is_bit_exact(saved):
    path, expected = saved
    model, opt, sched = build(seed=123)  # other weights, no optimizer state, other random state
    info = tn.load_checkpoint(path, model, optimizer=opt, scheduler=sched)
    assert info == {"step": 4, "extra": {"config": {"width": WIDTH}}}
    assert snapshot(model, opt, sched) == expected
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)  # a tuple again after JSON
    assert not os.path.exists(str(path) + ".partial")


def test_resume_gives_an_identical_trajectory(tmp_path):
    model, opt, sched = build()
    train(model, opt, sched, 4)
    path = tmp_path / "mid.npz"
    tn.save_checkpoint(path, model=model, optimizer=opt, scheduler=sched, step=4)
    straight = train(model, opt, sched, 6)
    final = snapshot(model, opt, sched)

    model2, opt2, sched2 = build(seed=77)
    tn.randn(5)  # move the generator on: the checkpoint must put it back
    assert tn.load_checkpoint(path, model2, opt2, sched2)["step"] == 4
    assert train(model2, opt2, sched2, 6) == straight
    assert snapshot(model2, opt2, sched2) == final

    # The random state matters: resuming without it draws other data and masks.
    model3, opt3, sched3 = build(seed=77)
    tn.load_checkpoint(path, model3, opt3, sched3, rng=False)
    assert train(model3, opt3, sched3, 6) != straight


def test_partial_checkpoints_and_lazy_generator(tmp_path):
    tn.manual_seed(5)
    model = TinyModel()
    tn.manual_seed(9)  # the generator is now made lazily, on the next draw
    assert tn.backend.get_rng_state()["numpy"] is None
    path = tmp_path / "model_only.npz"
    tn.save_checkpoint(path, model=model)
    expected = host(tn.randn(4))

    other = TinyModel()
    tn.load_checkpoint(path, other)
    assert np.array_equal(host(tn.randn(4)), expected)
    assert all(np.array_equal(a, b) for a, b in zip(model.state_dict().values(),
                                                     other.state_dict().values()))
    _, opt, _ = build()
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        tn.load_checkpoint(path, other, optimizer=opt)


def test_rng_state_round_trip_and_bad_state_changes_nothing():
    tn.manual_seed(3)
    tn.randn(2)
    state = tn.backend.get_rng_state()
    first = host(tn.rand(3))
    tn.backend.set_rng_state(state)
    assert np.array_equal(host(tn.rand(3)), first)
    before = tn.backend.get_rng_state()
    for bad in ({"seed": 3, "numpy": {"bit_generator": "MT19937"}},
                {"seed": 3, "numpy": {"bit_generator": "PCG64", "state": {"state": "x"}}},
                {"seed": "3", "numpy": None}):
        with pytest.raises(ValueError, match="set_rng_state"):
            tn.backend.set_rng_state(bad)
        after = tn.backend.get_rng_state()
        assert after["seed"] == before["seed"] and after["numpy"] == before["numpy"]
        assert (after["cupy"] is None) == (before["cupy"] is None)
        assert after["cupy"] is None or np.array_equal(after["cupy"], before["cupy"])


# ---- damaged and mismatched files -----------------------------------------------------------
def attempt_load(path, **build_kwargs):
    """Load into fresh objects; return (error or None, snapshot before, snapshot after)."""
    model, opt, sched = build(seed=42, **build_kwargs)
    train(model, opt, sched, 1)
    before = snapshot(model, opt, sched)
    try:
        tn.load_checkpoint(path, model, optimizer=opt, scheduler=sched)
    except CheckpointError as err:
        return err, before, snapshot(model, opt, sched)
    return None, before, snapshot(model, opt, sched)


def expect_rejected(path, *words, **build_kwargs):
    err, before, after = attempt_load(path, **build_kwargs)
    assert err is not None, "the damaged checkpoint was accepted"
    assert str(path) in str(err)
    for w in words:
        assert w in str(err)
    assert after == before  # nothing changed
    return err


def write_npz(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def edited(src, dst, edit):
    """Copy the checkpoint at ``src`` to ``dst`` with ``edit(arrays, meta)`` applied."""
    with np.load(src, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(arrays["__meta__"].item())
    edit(arrays, meta)
    arrays["__meta__"] = np.asarray(json.dumps(meta))
    write_npz(dst, arrays)
    return dst


@pytest.mark.parametrize("keep", [0, 3, 100, 0.5, -22, -1])
def test_truncated_file_is_rejected(saved, tmp_path, keep):
    path, _ = saved
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[:cut])
    err = expect_rejected(bad)
    assert any(w in str(err) for w in ("truncated", "damaged"))


def test_flipped_bytes_are_rejected_or_harmless(saved, tmp_path):
    """Every flip either raises CheckpointError with nothing changed, or hit a byte that
    means nothing (a zip timestamp, a local header's copy of a field) and loads the exact
    original state. Most flips land in array data, where the zip's CRC-32 catches them."""
    path, expected = saved
    data = bytearray(path.read_bytes())
    positions = sorted(set(np.linspace(0, len(data) - 1, 160).astype(int))
                       | {0, 30, len(data) - 10})
    rejected = 0
    for pos in positions:
        damaged = bytearray(data)
        damaged[pos] ^= 0xFF
        bad = tmp_path / "flipped.npz"
        bad.write_bytes(bytes(damaged))
        err, before, after = attempt_load(bad)
        if err is not None:
            rejected += 1
            assert str(bad) in str(err) and after == before, (pos, err)
        else:
            assert after == expected, f"flip at byte {pos} changed the loaded state silently"
    assert rejected >= 0.9 * len(positions)


def test_missing_array_is_rejected(saved, tmp_path):
    path, _ = saved
    bad = edited(path, tmp_path / "missing.npz",
                 lambda arrays, meta: arrays.pop("model/out.weight"))
    expect_rejected(bad, "'model/out.weight'", "missing key")
    bad = edited(path, tmp_path / "missing_opt.npz",
                 lambda arrays, meta: arrays.pop("optimizer/2/exp_avg_sq"))
    expect_rejected(bad, "'optimizer/2/exp_avg_sq'", "missing key")


def test_missing_and_unexpected_model_keys_are_rejected(saved, tmp_path):
    path, _ = saved

    def rename(arrays, meta):
        arrays["model/out.w"] = arrays.pop("model/out.weight")
        meta["model"]["out.w"] = meta["model"].pop("out.weight")

    bad = edited(path, tmp_path / "renamed.npz", rename)
    expect_rejected(bad, "missing ['out.weight']", "unexpected ['out.w']")


def test_wrong_shape_or_dtype_is_rejected(saved, tmp_path):
    path, _ = saved
    expect_rejected(path, "'hidden.weight'", "(8, 8)", "(6, 6)", width=6)

    def reshape(arrays, meta):
        arrays["model/hidden.bias"] = arrays["model/hidden.bias"][:5]
    bad = edited(path, tmp_path / "short.npz", reshape)
    expect_rejected(bad, "'model/hidden.bias' has shape (5,)", "lists (8,)")

    def retype(arrays, meta):
        arrays["model/hidden.bias"] = arrays["model/hidden.bias"].astype(np.float64)
        meta["model"]["hidden.bias"]["dtype"] = "float64"
    bad = edited(path, tmp_path / "float64.npz", retype)
    expect_rejected(bad, "'hidden.bias'", "float64", "float32")


def test_other_optimizer_or_schedule_is_rejected(saved, tmp_path):
    path, _ = saved
    expect_rejected(path, "holds AdamW state, not SGD", optimizer="SGD")

    def other_schedule(arrays, meta):
        meta["scheduler"]["state"]["total_steps"] = 50
    bad = edited(path, tmp_path / "schedule.npz", other_schedule)
    expect_rejected(bad, "scheduler state does not fit", "differs from this one's")

    def fewer_groups(arrays, meta):
        meta["optimizer"]["param_groups"].append(dict(meta["optimizer"]["param_groups"][0]))
    bad = edited(path, tmp_path / "groups.npz", fewer_groups)
    expect_rejected(bad, "different number of parameter groups")


@pytest.mark.parametrize("edit, words", [
    (lambda arrays, meta: arrays.pop("__meta__"), "no '__meta__' entry"),
    (lambda arrays, meta: arrays.update(__meta__=np.asarray("{not json")), "not valid JSON"),
    (lambda arrays, meta: arrays.update(__meta__=np.arange(3)), "is not a JSON text"),
    (lambda arrays, meta: arrays.update(__meta__=np.asarray('{"format": "other"}')),
     "not a tinynorm checkpoint"),
    (lambda arrays, meta: arrays.update(
        __meta__=np.asarray('{"format": "tinynorm-checkpoint", "version": 99}')),
     "version 99"),
    (lambda arrays, meta: arrays.update(__meta__=np.asarray(json.dumps(
        {**meta, "model": {**meta["model"], "hidden.bias": 3}}))), "malformed checkpoint metadata"),
])
def test_bad_metadata_is_rejected(saved, tmp_path, edit, words):
    path, _ = saved
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(arrays["__meta__"].item())
    edit(arrays, meta)
    bad = tmp_path / "meta.npz"
    write_npz(bad, arrays)
    expect_rejected(bad, words)


RAN = []


def _payload():
    RAN.append("code ran")


class Payload:
    def __reduce__(self):
        return _payload, ()


def test_pickled_objects_are_never_executed(saved, tmp_path):
    path, _ = saved
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["model/out.weight"] = np.array([Payload()], dtype=object)  # np.save pickles it
    bad = tmp_path / "pickle.npz"
    write_npz(bad, arrays)
    expect_rejected(bad, "pickled object array", "allow_pickle=False")
    assert RAN == []


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    expect_rejected(text, "does not start like an .npz")
    with pytest.raises(FileNotFoundError):
        tn.load_checkpoint(tmp_path / "absent.npz", TinyModel())


def test_save_replaces_atomically_and_rejects_unserialisable_extra(tmp_path):
    model, opt, sched = build()
    path = tmp_path / "ckpt.npz"
    tn.save_checkpoint(path, model=model, step=1)
    with pytest.raises(TypeError, match="JSON-serialisable"):
        tn.save_checkpoint(path, model=model, step=2, extra={"fn": print})
    assert tn.load_checkpoint(path, model)["step"] == 1  # the old file is intact
    tn.save_checkpoint(path, model=model, optimizer=opt, step=2)
    assert tn.load_checkpoint(path, model, optimizer=opt)["step"] == 2
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]
