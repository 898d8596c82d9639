"""Copy memory (Hochreiter & Schmidhuber 1997; the form of Arjovsky et al. 2016).

Symbols: 0 is blank, ``1..A`` the alphabet, ``A+1`` the delimiter. The input is ``K``
random symbols, ``delay − 1`` blanks, the delimiter, then ``K`` blanks (length
``delay + 2K``); the target is blank everywhere except the last ``K`` steps, which must
repeat the ``K`` symbols. A memoryless model can get every blank right but can only guess
the recalled symbols, scoring ``K · ln A / (delay + 2K)`` nats per step — ``10 ln 8 /
(T + 20)`` with the defaults. The metric is the cross-entropy per step over the whole
sequence; the accuracy on the recalled symbols is reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from ..losses import log_softmax
from .base import MAX_SEQ_LEN, Batch, Option, Predict, Task, check_int, check_split, chunks

_SPLIT_SEEDS = {"val": 2_000_001, "test": 2_000_002}
_SPLIT_SIZES = {"val": 500, "test": 1000}


def generate(rng: np.random.Generator, delay: int, symbols: int, alphabet: int, n: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` copy sequences: inputs and targets, both integer (delay + 2K, n)."""
    K, T = symbols, delay + 2 * symbols
    data = rng.integers(1, alphabet + 1, (K, n))
    x = np.zeros((T, n), dtype=np.int64)
    y = np.zeros((T, n), dtype=np.int64)
    x[:K] = data
    x[K + delay - 1] = alphabet + 1
    y[T - K :] = data
    return x, y


class Copy(Task):
    name = "copy"
    summary = "recall K symbols after a delay (CE per step; baseline K ln A / (delay + 2K))"
    options = (
        Option("delay", int, 50, "steps between the last symbol and the recall"),
        Option("symbols", int, 10, "number K of symbols to copy"),
        Option("alphabet", int, 8, "alphabet size A"),
    )
    metric_name = "ce"
    lower_is_better = True
    loss = "ce"
    readout = "every"
    tokens = True

    def __init__(self, delay: int = 50, symbols: int = 10, alphabet: int = 8) -> None:
        self.delay = check_int(self.name, "delay", delay, 1)
        self.symbols = check_int(self.name, "symbols", symbols, 1)
        self.alphabet = check_int(self.name, "alphabet", alphabet, 2)
        self.seq_len = self.delay + 2 * self.symbols
        if self.seq_len > MAX_SEQ_LEN:
            raise ValueError(f"task 'copy': delay + 2 * symbols (the sequence length) must be"
                             f" at most {MAX_SEQ_LEN}, got {self.seq_len}")
        self.input_size = self.alphabet + 2  # blank, alphabet, delimiter
        self.output_size = self.alphabet + 1  # blank, alphabet
        self.time_scale = self.seq_len
        self.baseline = self.symbols * math.log(self.alphabet) / self.seq_len
        self._splits = {
            s: generate(np.random.default_rng(_SPLIT_SEEDS[s]), self.delay, self.symbols,
                        self.alphabet, _SPLIT_SIZES[s])
            for s in _SPLIT_SEEDS
        }

    def train_batches(self, rng: np.random.Generator, batch: int) -> Iterator[Batch]:
        while True:
            x, y = generate(rng, self.delay, self.symbols, self.alphabet, batch)
            yield Batch(x, y)

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The fixed (inputs, targets) of a split."""
        check_split(split)
        return self._splits[split]

    def evaluate(self, predict: Predict, split: str) -> dict[str, float]:
        x, y = self.split(split)
        nll = 0.0
        correct = 0
        K = self.symbols
        for sl in chunks(y.shape[1], 250):
            z, _ = predict(x[:, sl], None)
            lp = log_softmax(z)
            nll -= float(np.take_along_axis(lp, y[:, sl, None], axis=-1).sum())
            correct += int((lp[-K:].argmax(axis=-1) == y[-K:, sl]).sum())
        return {"ce": nll / y.size, "recall_accuracy": correct / (K * y.shape[1])}
