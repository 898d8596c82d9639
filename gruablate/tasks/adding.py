"""The adding problem (Hochreiter & Schmidhuber 1997; the form of Le et al. 2015).

Each step carries two inputs: a value drawn from U(0, 1) and a marker. Exactly two steps
are marked, one in each half of the sequence; the target, read out after the last step,
is the sum of the two marked values. Always predicting 1 (the mean of the sum) scores
the sum's variance, 2 · 1/12 = 1/6 ≈ 0.167 MSE: the trivial baseline.

With ``min_len`` the sequences are of varied length (the variable-length adding problem):
each row's length is drawn uniformly from ``[min_len, seq_len]``, its two marks fall one
in each half of its own length, and it is padded with zeros to ``seq_len``; the batches
carry the lengths, and the model reads the target after each row's own last step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .base import MAX_SEQ_LEN, Batch, Option, Predict, Task, check_int, check_split, chunks

# Fixed seeds of the evaluation splits: the same examples for every training seed.
_SPLIT_SEEDS = {"val": 1_000_001, "test": 1_000_002}
_SPLIT_SIZES = {"val": 1000, "test": 2000}


def generate(rng: np.random.Generator, seq_len: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` adding-problem sequences: inputs (T, n, 2) float64 and targets (n, 1)."""
    T, half = seq_len, seq_len // 2
    values = rng.uniform(0.0, 1.0, (T, n))
    first = rng.integers(0, half, n)
    second = rng.integers(half, T, n)
    marks = np.zeros((T, n))
    cols = np.arange(n)
    marks[first, cols] = 1.0
    marks[second, cols] = 1.0
    x = np.stack([values, marks], axis=-1)
    y = (values[first, cols] + values[second, cols])[:, None]
    return x, y


def generate_padded(rng: np.random.Generator, seq_len: int, min_len: int, n: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` sequences of lengths drawn from ``[min_len, seq_len]``, zero-padded to
    ``seq_len``: inputs (T, n, 2) float64, targets (n, 1) and the lengths (n,) int64."""
    lengths = rng.integers(min_len, seq_len + 1, n)
    half = lengths // 2
    values = rng.uniform(0.0, 1.0, (seq_len, n))
    first = (rng.random(n) * half).astype(np.int64)  # in [0, L // 2)
    second = half + (rng.random(n) * (lengths - half)).astype(np.int64)  # in [L // 2, L)
    cols = np.arange(n)
    real = np.arange(seq_len)[:, None] < lengths[None, :]
    values *= real
    marks = np.zeros((seq_len, n))
    marks[first, cols] = 1.0
    marks[second, cols] = 1.0
    x = np.stack([values, marks], axis=-1)
    y = (values[first, cols] + values[second, cols])[:, None]
    return x, y, lengths.astype(np.int64)


class Adding(Task):
    name = "adding"
    summary = "sum of the two marked values of a random sequence (MSE; baseline 1/6)"
    options = (
        Option("seq_len", int, 100, "sequence length T"),
        Option("min_len", int, None, "shortest sequence: lengths drawn from [min_len,"
               " seq_len], padded (default: every sequence has seq_len steps)",
               optional=True),
    )
    metric_name = "mse"
    lower_is_better = True
    loss = "mse"
    readout = "last"
    tokens = False

    def __init__(self, seq_len: int = 100, min_len: int | None = None) -> None:
        self.seq_len = check_int(self.name, "seq_len", seq_len, 2, MAX_SEQ_LEN)
        self.min_len = None if min_len is None else check_int(
            self.name, "min_len", min_len, 2, self.seq_len)
        self.variable_length = self.min_len is not None
        self.input_size, self.output_size = 2, 1
        self.time_scale = self.seq_len
        self.baseline = 1.0 / 6.0
        self._splits = {
            s: self._generate(np.random.default_rng(_SPLIT_SEEDS[s]), _SPLIT_SIZES[s])
            for s in _SPLIT_SEEDS
        }

    def _generate(self, rng: np.random.Generator, n: int) -> Batch:
        if self.min_len is None:
            return Batch(*generate(rng, self.seq_len, n))
        x, y, lengths = generate_padded(rng, self.seq_len, self.min_len, n)
        return Batch(x, y, lengths=lengths)

    def train_batches(self, rng: np.random.Generator, batch: int) -> Iterator[Batch]:
        while True:
            yield self._generate(rng, batch)

    def split(self, split: str) -> Batch:
        """The fixed inputs, targets (and, with ``min_len``, lengths) of a split."""
        check_split(split)
        return self._splits[split]

    def evaluate(self, predict: Predict, split: str) -> dict[str, float]:
        x, y, _, lengths = self.split(split)
        sq = 0.0
        for sl in chunks(y.shape[0], 500):
            if lengths is None:
                z, _ = predict(x[:, sl], None)
            else:
                z, _ = predict(x[:, sl], None, lengths[sl])
            sq += float(((np.asarray(z, dtype=np.float64) - y[sl]) ** 2).sum())
        return {"mse": sq / y.size}
