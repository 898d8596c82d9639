"""Polyphonic music: next-frame prediction on piano rolls of Bach chorales (optional).

A *stand-in* for the JSB Chorales benchmark of Boulanger-Lewandowski et al. 2012, used by
Chung et al. 2014 and Greff et al. 2017 — not their exact data or split. The chorales
are the 371 of music21's bundled corpus (Riemenschneider numbering; needs the ``music``
extra, ``pip install 'gruablate[music]'``), as written (repeats not expanded), sampled
on every quarter-note beat into 88-key piano rolls (MIDI 21–108): a key is on in frame
``k`` if a note covering beat ``k`` sounds it. A fixed shuffle splits the chorales
80 / 10 / 10 % into train / val / test (``limit`` keeps the first ``limit`` chorales
before splitting, for quick runs).

The model reads frame ``t`` and predicts frame ``t + 1`` as 88 independent Bernoulli
variables; the metric is the negative log-likelihood per predicted frame, in nats, as
those papers report it. Training uses random windows of ``seq_len`` frames; evaluation
reads every chorale whole from a zero state. The trivial baseline predicts each key
with its frequency in the training frames (add-one smoothed), ignoring the past.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import cache

import numpy as np

from ..losses import bernoulli_nll
from .base import MAX_SEQ_LEN, Batch, Option, Predict, Task, check_int, check_split

LOWEST, KEYS = 21, 88  # the piano's range, MIDI 21 (A0) to 108 (C8)
_SPLIT_SEED = 4_000_001


def _music21():
    try:
        from music21 import corpus
    except ImportError:
        raise ValueError(
            "task 'chorales' needs music21: pip install 'gruablate[music]'"
        ) from None
    return corpus


@cache
def piano_roll(name: str) -> np.ndarray:
    """One chorale of music21's corpus as a (frames, 88) {0, 1} piano roll, one frame a beat."""
    score = _music21().parse(name)
    frames = int(math.ceil(float(score.highestTime)))
    roll = np.zeros((frames, KEYS))
    for el in score.flatten().notes:  # notes and chords, offsets in quarter notes
        start = float(el.offset)
        end = start + float(el.duration.quarterLength)
        beats = range(int(math.ceil(start)), min(frames, int(math.ceil(end))))
        for p in el.pitches:
            key = p.midi - LOWEST
            if 0 <= key < KEYS:
                roll[beats.start : beats.stop, key] = 1.0
    return roll


def chorale_names() -> list[str]:
    """The corpus names of the 371 chorales, in Riemenschneider order."""
    corpus = _music21()
    return list(corpus.chorales.Iterator(numberingSystem="riemenschneider",
                                         returnType="filename"))


class Chorales(Task):
    name = "chorales"
    summary = "Bach chorale piano rolls from music21, next-frame NLL (stand-in for JSB)"
    options = (
        Option("seq_len", int, 32, "frames (beats) per training window"),
        Option("limit", int, None, "use only the first N chorales (default: all 371)"),
    )
    metric_name = "nll"
    lower_is_better = True
    loss = "bernoulli"
    readout = "every"
    tokens = False

    def __init__(self, seq_len: int = 32, limit: int | None = None) -> None:
        self.seq_len = check_int(self.name, "seq_len", seq_len, 1, MAX_SEQ_LEN)
        self.limit = None if limit is None else check_int(self.name, "limit", limit, 3)
        names = chorale_names()[: self.limit]
        rolls = [piano_roll(n) for n in names]
        order = np.random.default_rng(_SPLIT_SEED).permutation(len(rolls))
        n_eval = max(1, round(0.1 * len(rolls)))
        idx = {"test": order[:n_eval], "val": order[n_eval : 2 * n_eval],
               "train": order[2 * n_eval :]}
        self._rolls = {k: [rolls[i] for i in v] for k, v in idx.items()}
        self._windows = [
            (c, s) for c, r in enumerate(self._rolls["train"])
            for s in range(r.shape[0] - self.seq_len)
        ]
        if not self._windows:
            raise ValueError(f"task 'chorales': no training chorale is longer than seq_len"
                             f" {self.seq_len}")
        self.input_size = self.output_size = KEYS
        self.time_scale = self.seq_len
        train_frames = np.concatenate(self._rolls["train"])
        self.key_prob = (train_frames.sum(axis=0) + 1.0) / (train_frames.shape[0] + 2.0)
        logit = np.log(self.key_prob) - np.log1p(-self.key_prob)
        self.baseline = self._nll("test", lambda x, s: (np.broadcast_to(
            logit, (*x.shape[:2], KEYS)), s))

    def train_batches(self, rng: np.random.Generator, batch: int) -> Iterator[Batch]:
        L, train = self.seq_len, self._rolls["train"]
        while True:
            picks = rng.integers(0, len(self._windows), batch)
            x = np.empty((L, batch, KEYS))
            y = np.empty((L, batch, KEYS))
            for b, w in enumerate(picks):
                c, s = self._windows[w]
                x[:, b] = train[c][s : s + L]
                y[:, b] = train[c][s + 1 : s + L + 1]
            yield Batch(x, y)

    def _nll(self, split: str, predict: Predict) -> float:
        total, frames = 0.0, 0
        for roll in self._rolls[split]:
            z, _ = predict(roll[:-1, None, :], None)
            total += float(bernoulli_nll(z, roll[1:, None, :]).sum())
            frames += roll.shape[0] - 1
        return total / frames

    def evaluate(self, predict: Predict, split: str) -> dict[str, float]:
        check_split(split)
        return {"nll": self._nll(split, predict)}
