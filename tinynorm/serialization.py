"""Checkpoints: model, optimizer, scheduler, random state and step in one ``.npz`` file.

    tn.save_checkpoint("run.npz", model=model, optimizer=opt, scheduler=sched, step=step)
    info = tn.load_checkpoint("run.npz", model, optimizer=opt, scheduler=sched)
    step = info["step"]

Safe to load from anywhere: the file holds only plain arrays and one JSON text, read with
NumPy's ``allow_pickle=False``, so loading never runs code (unlike pickle, and so unlike
``torch.load`` without ``weights_only``).

Layout of the archive:

    __meta__                    JSON (a NumPy str array): format, version, step, extra,
                                model keys with shapes and dtypes, the optimizer's
                                param_groups and scalar state, the scheduler's state, and
                                the numpy generator's PCG64 state
    model/<state_dict key>      one array per parameter or buffer
    optimizer/<index>/<name>    one array per optimizer state array (exp_avg, ...)
    rng/cupy                    the cuRAND states, when a GPU generator was in use

Resuming is bit-identical: arrays keep their dtypes and bits, floats in JSON keep theirs
(Python writes the shortest repr that reads back exactly), and the generator restarts
where it stopped. Loading checks everything (the zip's CRC-32 of every member, the format,
every key, shape and dtype, the optimizer's groups, the scheduler's kind) before changing
anything: a bad file raises ``CheckpointError`` naming the file and the problem, and the
model, optimizer, scheduler and generators stay as they were.
"""
from __future__ import annotations

import json
import os

from . import backend

FORMAT = "tinynorm-checkpoint"
VERSION = 1
META = "__meta__"
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded; the message names the file and why."""


# ---- saving ---------------------------------------------------------------------------------
def save_checkpoint(path, *, model=None, optimizer=None, scheduler=None, step=None,
                    rng: bool = True, extra=None) -> None:
    """Write everything needed to resume training to ``path`` (exactly that name).

    ``extra`` is any JSON-serialisable value (a config, a loss history). The file is
    written next to ``path`` first and then renamed over it, so a crash while saving
    leaves the previous checkpoint intact.
    """
    arrays = {}
    meta = {"format": FORMAT, "version": VERSION,
            "step": None if step is None else int(step), "extra": extra}
    if model is not None:
        meta["model"] = {}
        for key, value in model.state_dict().items():
            arrays["model/" + key] = value
            meta["model"][key] = {"shape": list(value.shape), "dtype": str(value.dtype)}
    if optimizer is not None:
        meta["optimizer"] = _encode_optimizer(optimizer, arrays)
    if scheduler is not None:
        meta["scheduler"] = {"type": type(scheduler).__name__, "state": scheduler.state_dict()}
    if rng:
        state = backend.get_rng_state()
        meta["rng"] = {"seed": state["seed"], "numpy": state["numpy"],
                       "cupy": state["cupy"] is not None}
        if state["cupy"] is not None:
            arrays["rng/cupy"] = state["cupy"]
    try:
        text = json.dumps(meta)
    except TypeError as err:
        raise TypeError(f"save_checkpoint: {err} (extra, optimizer options and scheduler "
                        f"state must be JSON-serialisable)") from None
    arrays[META] = backend.asarray(text, device="cpu")

    path = os.fspath(path)
    partial = path + ".partial"
    try:
        with open(partial, "wb") as f:
            backend.save_npz(f, arrays)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):  # only after a failure: os.replace moved it otherwise
            os.remove(partial)


def _encode_optimizer(optimizer, arrays: dict) -> dict:
    """The optimizer's state_dict as JSON, its arrays moved into ``arrays``."""
    state_dict = optimizer.state_dict()
    state = {}
    for index, entries in state_dict["state"].items():
        encoded = {}
        for name, value in entries.items():
            if backend.is_array(value):
                key = f"optimizer/{index}/{name}"
                arrays[key] = value
                encoded[name] = {"array": key}
            else:
                encoded[name] = {"value": value}
        state[str(index)] = encoded
    return {"type": type(optimizer).__name__, "param_groups": state_dict["param_groups"],
            "state": state}


# ---- loading --------------------------------------------------------------------------------
def load_checkpoint(path, model=None, optimizer=None, scheduler=None, rng: bool = True) -> dict:
    """Restore what ``save_checkpoint`` wrote into the given objects; returns
    ``{"step": ..., "extra": ...}``.

    Each object given must be in the checkpoint and match it (same keys, shapes and dtypes;
    same optimizer and scheduler kind and parameter groups). ``rng=True`` restores the
    random generators when the checkpoint holds their state. Nothing is changed unless all
    of it fits.
    """
    path = os.fspath(path)
    arrays = _read(path)
    meta = _parse_meta(path, arrays)

    def need(section):
        if meta.get(section) is None:
            raise CheckpointError(f"{path}: the checkpoint holds no {section} state "
                                  f"(saved without {section}=)")
        return meta[section]

    # 1. Check and assemble everything, changing nothing.
    try:
        model_state = None
        if model is not None:
            model_state = _model_state(path, need("model"), arrays, model)
        optimizer_state = None
        if optimizer is not None:
            optimizer_state = _optimizer_state(path, need("optimizer"), arrays, optimizer)
        if scheduler is not None:
            saved = need("scheduler")
            if saved.get("type") != type(scheduler).__name__:
                raise CheckpointError(f"{path}: the checkpoint holds a {saved.get('type')} "
                                      f"scheduler, not a {type(scheduler).__name__}")
            _checked(path, "scheduler", scheduler.check_state_dict, saved.get("state"))
        rng_state = None
        if rng and meta.get("rng") is not None:
            rng_state = _rng_state(path, meta["rng"], arrays)
    except (KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: malformed checkpoint metadata ({type(err).__name__}: "
                              f"{err})") from None

    # 2. Assign. The generators go first: set_rng_state checks its input before changing
    # anything, and what follows was checked above.
    if rng_state is not None:
        _checked(path, "random state", backend.set_rng_state, rng_state)
    if model is not None:
        model.load_state_dict(model_state)
    if optimizer is not None:
        optimizer._assign_checked(optimizer_state)  # checked and copied in step 1
    if scheduler is not None:
        scheduler.load_state_dict(meta["scheduler"]["state"])
    return {"step": meta.get("step"), "extra": meta.get("extra")}


def _read(path: str) -> dict:
    """Every array in the file, or a CheckpointError saying why the file is unreadable."""
    with open(path, "rb") as f:
        head = f.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC:
        raise CheckpointError(f"{path}: not a checkpoint: the file does not start like an "
                              f".npz (zip) archive (empty, truncated at the start, or another "
                              f"format)")
    try:
        return backend.load_npz(path)
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise CheckpointError(f"{path}: the checkpoint is damaged (truncated or "
                                  f"corrupted): ValueError: {err}") from err
        raise CheckpointError(f"{path}: the file holds a pickled object array, which could "
                              f"run code when loaded; checkpoints are read with "
                              f"allow_pickle=False and never load one ({err})") from None
    except Exception as err:  # any failure to parse means a damaged file; say what it was
        raise CheckpointError(f"{path}: the checkpoint is damaged (truncated or corrupted): "
                              f"{type(err).__name__}: {err}") from err


def _parse_meta(path: str, arrays: dict) -> dict:
    if META not in arrays:
        raise CheckpointError(f"{path}: not a tinynorm checkpoint: no {META!r} entry")
    text = arrays[META]
    if text.dtype.kind != "U" or text.ndim != 0:
        raise CheckpointError(f"{path}: {META!r} is not a JSON text (dtype {text.dtype}, "
                              f"shape {text.shape})")
    try:
        meta = json.loads(text.item())
    except ValueError as err:
        raise CheckpointError(f"{path}: {META!r} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a tinynorm checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')!r}; "
                              f"this tinynorm reads version {VERSION}")
    return meta


def _array(path: str, arrays: dict, key: str):
    if key not in arrays:
        raise CheckpointError(f"{path}: the checkpoint lists {key!r} but holds no such array "
                              f"(missing key)")
    return arrays[key]


def _model_state(path: str, saved: dict, arrays: dict, model) -> dict:
    """The model's state_dict from the file, checked against ``model``: keys, shapes and
    dtypes must all match (a dtype change would break a bit-identical resume)."""
    current = model.state_dict(keep_vars=True)  # the Tensors: only shapes and dtypes are read
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    if missing or unexpected:
        raise CheckpointError(f"{path}: the model's state_dict keys differ from the "
                              f"checkpoint's: missing {missing}, unexpected {unexpected}")
    state, mismatches = {}, []
    for key, mine in current.items():
        value = _array(path, arrays, "model/" + key)
        if [*value.shape] != saved[key]["shape"] or str(value.dtype) != saved[key]["dtype"]:
            raise CheckpointError(f"{path}: array 'model/{key}' has shape {value.shape} and "
                                  f"dtype {value.dtype}, but the checkpoint lists "
                                  f"{tuple(saved[key]['shape'])} and {saved[key]['dtype']}")
        if value.shape != mine.shape or value.dtype != mine.dtype:
            mismatches.append(f"{key!r}: {value.shape} {value.dtype} in the checkpoint, "
                              f"{mine.shape} {mine.dtype} in the model")
        state[key] = value
    if mismatches:
        raise CheckpointError(f"{path}: the model does not fit the checkpoint (shape or dtype "
                              f"differs): " + "; ".join(mismatches))
    return state


def _optimizer_state(path: str, saved: dict, arrays: dict, optimizer) -> tuple:
    """The optimizer's state_dict rebuilt from JSON and arrays and checked by it: what its
    ``check_state_dict`` returns, ready to assign."""
    if saved.get("type") != type(optimizer).__name__:
        raise CheckpointError(f"{path}: the checkpoint holds {saved.get('type')} state, not "
                              f"{type(optimizer).__name__}")
    try:
        state = {}
        for index, entries in saved["state"].items():
            state[int(index)] = {name: _array(path, arrays, e["array"]) if "array" in e
                                 else e["value"] for name, e in entries.items()}
        state_dict = {"state": state, "param_groups": saved["param_groups"]}
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path}: malformed optimizer state ({type(err).__name__}: "
                              f"{err})") from None
    return _checked(path, "optimizer", optimizer.check_state_dict, state_dict)


def _rng_state(path: str, saved: dict, arrays: dict) -> dict:
    """The generators' state; the GPU generator's only where a GPU is there to take it
    (a run saved on a GPU can resume on a CPU, with the CPU generator restored)."""
    state = {"seed": saved.get("seed"), "numpy": saved.get("numpy"), "cupy": None}
    if saved.get("cupy"):
        raw = _array(path, arrays, "rng/cupy")
        state["cupy"] = raw if backend.gpu_available() else None
    return state


def _checked(path: str, what: str, check, value):
    """Run ``check(value)``; its ValueError, KeyError or TypeError becomes a CheckpointError."""
    try:
        return check(value)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: the {what} state does not fit: {err}") from None
