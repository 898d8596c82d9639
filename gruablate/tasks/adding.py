"""The adding problem (Hochreiter & Schmidhuber 1997; the form of Le et al. 2015).

Each step carries two inputs: a value drawn from U(0, 1) and a marker. Exactly two steps
are marked, one in each half of the sequence; the target, read out after the last step,
is the sum of the two marked values. Always predicting 1 (the mean of the sum) scores
the sum's variance, 2 · 1/12 = 1/6 ≈ 0.167 MSE: the trivial baseline.
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


class Adding(Task):
    name = "adding"
    summary = "sum of the two marked values of a random sequence (MSE; baseline 1/6)"
    options = (Option("seq_len", int, 100, "sequence length T"),)
    metric_name = "mse"
    lower_is_better = True
    loss = "mse"
    readout = "last"
    tokens = False

    def __init__(self, seq_len: int = 100) -> None:
        self.seq_len = check_int(self.name, "seq_len", seq_len, 2, MAX_SEQ_LEN)
        self.input_size, self.output_size = 2, 1
        self.time_scale = self.seq_len
        self.baseline = 1.0 / 6.0
        self._splits = {
            s: generate(np.random.default_rng(_SPLIT_SEEDS[s]), self.seq_len, _SPLIT_SIZES[s])
            for s in _SPLIT_SEEDS
        }

    def train_batches(self, rng: np.random.Generator, batch: int) -> Iterator[Batch]:
        while True:
            x, y = generate(rng, self.seq_len, batch)
            yield Batch(x, y)

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The fixed (inputs, targets) of a split."""
        check_split(split)
        return self._splits[split]

    def evaluate(self, predict: Predict, split: str) -> dict[str, float]:
        x, y = self.split(split)
        sq = 0.0
        for sl in chunks(y.shape[0], 500):
            z, _ = predict(x[:, sl], None)
            sq += float(((np.asarray(z, dtype=np.float64) - y[sl]) ** 2).sum())
        return {"mse": sq / y.size}
