"""scikit-learn's bundled 8×8 handwritten digits, read as sequences.

The small cousin of sequential / permuted MNIST (Le et al. 2015): ``mode="row"`` reads
an image as 8 steps of 8 pixels, ``mode="pixel"`` as 64 steps of one pixel. With
``permute=True`` the 64 pixels are first shuffled by one fixed permutation (the same for
every run), which destroys locality and stretches the dependencies. Pixels are scaled
to [0, 1]. The class is read out after the last step.

The 1797 images are split once, by a fixed shuffle, into 1257 train / 180 val / 360
test. The metric is test accuracy; the trivial baseline always predicts the most
frequent training class.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np

from ..losses import log_softmax
from .base import Batch, Option, Predict, Task, check_split

MODES = ("row", "pixel")
_SPLIT_SEED = 3_000_001
_PERMUTATION_SEED = 3_000_002
_N_VAL, _N_TEST = 180, 360


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # imported here: only this task needs it

    data = load_digits()
    return data.images.reshape(-1, 64) / 16.0, data.target.astype(np.int64)


class Digits(Task):
    name = "digits"
    summary = "8x8 digits as sequences, row- or pixel-wise, optionally permuted (accuracy)"
    options = (
        Option("mode", str, "row", "read rows (8 steps x 8) or pixels (64 steps x 1)", MODES),
        Option("permute", bool, False, "shuffle the pixels by one fixed permutation first"),
    )
    metric_name = "accuracy"
    lower_is_better = False
    metric_bounds = (0.0, 1.0)
    loss = "ce"
    readout = "last"
    tokens = False

    def __init__(self, mode: str = "row", permute: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"task 'digits': mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not isinstance(permute, bool | np.bool_):
            raise ValueError(f"task 'digits': permute must be true or false, got {permute!r}")
        self.mode, self.permute = mode, bool(permute)
        pixels, labels = _load()
        if self.permute:
            pixels = pixels[:, np.random.default_rng(_PERMUTATION_SEED).permutation(64)]
        steps, width = (8, 8) if mode == "row" else (64, 1)
        # (N, 64) -> (T, N, I): time-major, as the layers take it.
        seqs = pixels.reshape(-1, steps, width).transpose(1, 0, 2)
        order = np.random.default_rng(_SPLIT_SEED).permutation(labels.size)
        parts = {
            "test": order[:_N_TEST],
            "val": order[_N_TEST : _N_TEST + _N_VAL],
            "train": order[_N_TEST + _N_VAL :],
        }
        self._splits = {k: (np.ascontiguousarray(seqs[:, idx]), labels[idx])
                        for k, idx in parts.items()}
        self.input_size, self.output_size = width, 10
        self.time_scale = steps
        train_labels = self._splits["train"][1]
        self.majority = int(np.bincount(train_labels, minlength=10).argmax())
        self.baseline = float((self._splits["test"][1] == self.majority).mean())

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The (inputs (T, N, I), labels (N,)) of ``train``, ``val`` or ``test``."""
        if split != "train":
            check_split(split)
        return self._splits[split]

    def train_batches(self, rng: np.random.Generator, batch: int) -> Iterator[Batch]:
        x, y = self._splits["train"]
        if batch > y.size:  # checked here, not in the generator, so it fails at once
            raise ValueError(f"task 'digits': batch {batch} exceeds the {y.size} training images")
        return self._epochs(rng, batch, x, y)

    @staticmethod
    def _epochs(rng: np.random.Generator, batch: int, x: np.ndarray, y: np.ndarray
                ) -> Iterator[Batch]:
        while True:  # epochs of a fresh shuffle; the last short batch is dropped
            order = rng.permutation(y.size)
            for start in range(0, y.size - batch + 1, batch):
                idx = order[start : start + batch]
                yield Batch(x[:, idx], y[idx])

    def evaluate(self, predict: Predict, split: str) -> dict[str, float]:
        x, y = self.split(split)
        z, _ = predict(x, None)
        lp = log_softmax(z)
        return {
            "accuracy": float((lp.argmax(axis=-1) == y).mean()),
            "ce": float(-np.take_along_axis(lp, y[:, None], axis=-1).mean()),
        }
