"""Training data with no downloads: a character-level corpus and a synthetic copy task.

``CharCorpus.stdlib()`` is text that ships with every Python: the sources of a fixed, sorted
list of standard-library modules (``STDLIB_MODULES``), read from the interpreter's own
library folder (``sysconfig.get_paths()["stdlib"]``), joined in that order and cut to
``max_chars``. The same Python version gives the same corpus, character for character;
another version's library gives a slightly different one (its ``description`` names the
version). Characters outside printable ASCII (a few accented letters in docstrings) are
dropped so that the vocabulary is printable ASCII plus newline.

``unigram_entropy`` is the stall level: a model that has learned only how often each
character occurs, and nothing about context, has exactly this cross-entropy,

    H = −Σ_c p(c) · log p(c)      (nats, p the character frequencies of the training split),

so a run whose loss sits near H has learned nothing beyond frequencies ("stalled").

``CopyTask`` is a sequence task with a known optimal loss: n random symbols, a separator,
then the same n symbols again (or reversed). Only the second half is scored (the prompt is
random, hence unpredictable), so the optimal loss is 0, and a model that ignores the
prompt can do no better than log(num_symbols).

Batches are drawn by any generator with ``integers(low, high, size)``: the backend's
(``backend.generator``, seeded by ``tn.manual_seed``) by default, or a separate one from
``data_generator(seed)`` so that two models trained side by side see the same batches no
matter how many random numbers their own initialisation drew.
"""
from __future__ import annotations

import math
import os
import platform
import sysconfig

from . import backend
from .ops.cross_entropy import IGNORE_INDEX  # F.cross_entropy leaves these targets out
from .tensor import Tensor

# Pure-Python modules of the standard library, in sorted order: plain code and prose.
STDLIB_MODULES = (
    "abc", "argparse", "bisect", "calendar", "colorsys", "contextlib", "copy", "dataclasses",
    "difflib", "enum", "fractions", "functools", "heapq", "inspect", "keyword", "numbers",
    "operator", "pprint", "queue", "random", "shlex", "statistics", "string", "textwrap",
    "tokenize", "types", "typing", "weakref",
)
DEFAULT_MAX_CHARS = 400_000


def data_generator(seed: int):
    """A random generator for batches alone, on the current backend, seeded by ``seed``.

    Separate from ``backend.generator`` (which initialisation and dropout draw from), so the
    sequence of batches depends on ``seed`` only.
    """
    return backend.xp().random.default_rng(int(seed))


def _generator(generator):
    return backend.generator(backend.xp()) if generator is None else generator


def stdlib_text(modules=STDLIB_MODULES, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The sources of ``modules`` (names in the standard-library folder, without ``.py``)
    joined in the given order, printable ASCII and newlines only, cut to ``max_chars``."""
    folder = sysconfig.get_paths()["stdlib"]
    keep = {chr(c) for c in range(32, 127)} | {"\n"}
    parts, total = [], 0
    for name in modules:
        path = os.path.join(folder, name + ".py")
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
        except OSError as err:
            raise FileNotFoundError(f"stdlib_text: module {name!r} not found at {path} "
                                    f"({err}); this corpus needs the Python standard "
                                    f"library's .py sources") from None
        source = "".join(ch for ch in source.replace("\t", "    ") if ch in keep)
        parts.append(source)
        total += len(source)
        if total >= max_chars:
            break
    return "".join(parts)[:max_chars]


class CharVocab:
    """Characters ↔ integer ids, ids in sorted character order."""

    def __init__(self, chars):
        self.chars = sorted(set(chars))
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list:
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(f"CharVocab.encode: characters not in the vocabulary of "
                             f"{len(self)}: {unknown[:10]!r}")
        return [self.index[ch] for ch in text]

    def decode(self, ids) -> str:
        values = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return "".join(self.chars[int(i)] for i in values)


class CharCorpus:
    """A text as integer ids on the current backend, split into train (the first
    1 − ``val_fraction``) and validation (the rest)."""

    def __init__(self, text: str, val_fraction: float = 0.1, description: str = "text"):
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"CharCorpus: val_fraction must be in (0, 1), got {val_fraction}")
        self.text = text
        self.description = description
        self.vocab = CharVocab(text)
        xp = backend.xp()
        ids = xp.asarray(self.vocab.encode(text), dtype=backend.int64)
        split = int(len(ids) * (1.0 - val_fraction))
        self.train, self.val = ids[:split], ids[split:]

    @classmethod
    def stdlib(cls, max_chars: int = DEFAULT_MAX_CHARS, val_fraction: float = 0.1,
               modules=STDLIB_MODULES) -> "CharCorpus":
        """The standard-library corpus described in the module docstring."""
        text = stdlib_text(modules, max_chars)
        return cls(text, val_fraction, description=(
            f"{len(text):,} characters of Python {platform.python_version()}'s standard "
            f"library ({', '.join(modules[:3])}, ... in sorted order)"))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def unigram_entropy(self) -> float:
        """H = −Σ p(c) log p(c) in nats over the training split: the stall level."""
        xp = backend.array_module(self.train)
        counts = xp.bincount(self.train, minlength=self.vocab_size).astype(backend.float64)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * xp.log(p)).sum())

    def get_batch(self, split: str, batch_size: int, seq_len: int, generator=None):
        """(x, y), both int64 (batch_size, seq_len): random windows of ``split`` ("train" or
        "val") and the same windows shifted by one character (the next-character targets)."""
        ids = {"train": self.train, "val": self.val}.get(split)
        if ids is None:
            raise ValueError(f"CharCorpus.get_batch: split must be 'train' or 'val', got "
                             f"{split!r}")
        if len(ids) <= seq_len:
            raise ValueError(f"CharCorpus.get_batch: the {split} split has {len(ids)} "
                             f"characters, too few for seq_len={seq_len}")
        xp = backend.array_module(ids)
        starts = _generator(generator).integers(0, len(ids) - seq_len, size=batch_size)
        window = xp.asarray(starts).reshape(-1, 1) + xp.arange(seq_len)
        return Tensor(ids[window]), Tensor(ids[window + 1])


class CopyTask:
    """Sequences ``a_1 … a_n SEP b_1 … b_n`` with b = a (copy) or b = reversed a.

    Symbols are ids 0 … vocab_size − 2; SEP is ``vocab_size − 1``. A batch is the sequence
    without its last token (input, length 2n) and without its first (target); targets in
    the prompt (a_2 … a_n and SEP) are ``IGNORE_INDEX``, so the loss scores b alone.
    """

    def __init__(self, vocab_size: int = 10, length: int = 8, reverse: bool = False):
        if vocab_size < 3 or length < 1:
            raise ValueError(f"CopyTask: needs vocab_size >= 3 and length >= 1, got "
                             f"vocab_size={vocab_size}, length={length}")
        self.vocab_size, self.length, self.reverse = vocab_size, length, reverse
        self.separator = vocab_size - 1

    @property
    def seq_len(self) -> int:
        return 2 * self.length

    @property
    def optimal_loss(self) -> float:
        """0: every scored token is determined by the prompt."""
        return 0.0

    @property
    def prompt_blind_loss(self) -> float:
        """log(num_symbols): the best loss without reading the prompt (uniform guesses)."""
        return math.log(self.vocab_size - 1)

    def get_batch(self, batch_size: int, generator=None):
        """(x, y), both int64 (batch_size, 2n); see the class docstring."""
        xp = backend.xp()
        n = self.length
        prompt = xp.asarray(_generator(generator).integers(0, self.vocab_size - 1,
                                                           size=(batch_size, n)))
        answer = prompt[:, ::-1] if self.reverse else prompt
        sep = xp.full((batch_size, 1), self.separator, dtype=backend.int64)
        seq = xp.concatenate([prompt.astype(backend.int64), sep,
                              answer.astype(backend.int64)], axis=1)
        x, y = seq[:, :-1].copy(), seq[:, 1:].copy()
        y[:, :n] = IGNORE_INDEX
        return Tensor(x), Tensor(y)
