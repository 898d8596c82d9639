"""Character-level language modelling, in bits per character.

Any UTF-8 text file (``path``), or by default the corpus shipped inside the package:
Jane Austen's *Lady Susan* (public domain), the Project Gutenberg etext that music21
bundles as ``music21/languageExcerpts/trainingData/en.txt``, with the two Project
Gutenberg header/footer lines removed (``gruablate/tasks/data/lady_susan.txt``,
127 293 ASCII characters, 67 distinct).

The text is split contiguously into 90 % train, 5 % validation, 5 % test; the alphabet is
every character of the whole file, so no split has unknown symbols. Training is
truncated backpropagation through time with carried state: the training text is cut
into ``batch`` parallel streams read ``seq_len`` characters at a time, the recurrent
state flowing from one window to the next; each pass over the text starts at a fresh
random offset with a zero state. Evaluation reads a split as at most 8 parallel streams
from a zero state, carrying the state through the whole stream. The trivial baseline
is a unigram model of the training characters (add-one smoothed).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np

from ..losses import log_softmax
from .base import MAX_SEQ_LEN, Batch, Option, Predict, Task, check_int, check_split

DEFAULT_CORPUS = "lady_susan.txt"
_EVAL_STREAMS = 8
_EVAL_WINDOW = 1000  # steps per forward call during evaluation (bounded memory)


def default_corpus() -> Path:
    """Path of the corpus that ships inside the package."""
    return Path(str(resources.files("gruablate.tasks") / "data" / DEFAULT_CORPUS))


def _streams(ids: np.ndarray, n_streams: int) -> np.ndarray:
    """Cut a symbol sequence into ``n_streams`` equal contiguous rows: (L, n_streams)."""
    length = ids.size // n_streams
    return np.ascontiguousarray(ids[: length * n_streams].reshape(n_streams, length).T)


class CharLM(Task):
    name = "charlm"
    summary = "next-character prediction on a text file (bits per character)"
    options = (
        Option("path", str, None, "UTF-8 text file (default: the bundled Lady Susan)"),
        Option("seq_len", int, 64, "characters per truncated-BPTT window"),
    )
    metric_name = "bpc"
    lower_is_better = True
    loss = "ce"
    readout = "every"
    tokens = True

    def __init__(self, path: str | None = None, seq_len: int = 64) -> None:
        self.path = None if path is None else str(path)
        self.seq_len = check_int(self.name, "seq_len", seq_len, 1, MAX_SEQ_LEN)
        file = default_corpus() if path is None else Path(path)
        if not file.is_file():
            raise ValueError(f"task 'charlm': text file not found: {file}")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"task 'charlm': {file} is not UTF-8 text ({exc.reason})") from None
        need = 40 * (self.seq_len + 1)
        if len(text) < need:
            raise ValueError(
                f"task 'charlm': {file} has {len(text)} characters; seq_len {self.seq_len}"
                f" needs at least {need}"
            )
        self.alphabet = sorted(set(text))
        lookup = {ch: i for i, ch in enumerate(self.alphabet)}
        ids = np.fromiter((lookup[ch] for ch in text), dtype=np.int64, count=len(text))
        n = ids.size
        a, b = int(0.9 * n), int(0.95 * n)
        self._data = {"train": ids[:a], "val": ids[a:b], "test": ids[b:]}
        V = len(self.alphabet)
        self.input_size = self.output_size = V
        self.time_scale = self.seq_len
        counts = np.bincount(self._data["train"], minlength=V) + 1.0
        self.unigram = np.log(counts / counts.sum())
        _, targets = self._eval_arrays("test")
        self.baseline = float(-self.unigram[targets].mean() / math.log(2))

    def train_batches(self, rng: np.random.Generator, batch: int) -> Iterator[Batch]:
        ids = self._data["train"]
        if (ids.size - self.seq_len) // batch < self.seq_len + 1:  # worst offset
            raise ValueError(
                f"task 'charlm': {ids.size} training characters are too few for {batch}"
                f" streams of seq_len {self.seq_len}"
            )
        return self._windows(rng, batch, ids)

    def _windows(self, rng: np.random.Generator, batch: int, ids: np.ndarray
                 ) -> Iterator[Batch]:
        L = self.seq_len
        while True:
            # A fresh offset each pass, so windows do not always start on the same characters.
            offset = int(rng.integers(0, L))
            streams = _streams(ids[offset:], batch)
            carry = False
            for start in range(0, streams.shape[0] - L, L):  # y needs one more row
                yield Batch(streams[start : start + L], streams[start + 1 : start + L + 1], carry)
                carry = True

    def _eval_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        ids = self._data[split]
        n_streams = min(_EVAL_STREAMS, max(1, (ids.size - 1) // self.seq_len))
        streams = _streams(ids, n_streams)
        return streams[:-1], streams[1:]

    def evaluate(self, predict: Predict, split: str) -> dict[str, float]:
        check_split(split)
        x, y = self._eval_arrays(split)
        state = None
        nll = 0.0
        for start in range(0, x.shape[0], _EVAL_WINDOW):
            z, state = predict(x[start : start + _EVAL_WINDOW], state)
            lp = log_softmax(z)
            nll -= float(np.take_along_axis(lp, y[start : start + _EVAL_WINDOW, :, None],
                                            axis=-1).sum())
        return {"bpc": nll / y.size / math.log(2)}
