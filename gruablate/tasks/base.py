"""What every task provides: data splits, its metric, and its trivial baseline.

A task is configured by its options (``seq_len``, ``delay``, ...), never by the training
seed: the validation and test splits are fixed for a given set of options, so runs with
different seeds (or variants) are scored on the same examples. The seed only drives the
stream of training batches, which :meth:`Task.train_batches` draws from a generator the
trainer passes in.

The model is handed to a task only as a ``predict`` callable,
``predict(x, state) -> (outputs, last_state)`` (a task of padded sequences calls
``predict(x, state, lengths)``), so tasks know nothing of layers or kernels; they turn
raw outputs (logits or values) into metrics.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

Predict = Callable[..., tuple[np.ndarray, Any]]  # (x, state[, lengths]) -> (z, last)

SPLITS = ("val", "test")
#: The longest sequence a task builds. The fixed evaluation splits are made when the
#: task is, so a length of 10^9 would otherwise fill memory before any check ran;
#: 10 000 steps is beyond the longest task of the literature (adding at T = 5000).
MAX_SEQ_LEN = 10_000


class Batch(NamedTuple):
    """One training batch.

    ``x`` is (T, B) integer symbols for token tasks or (T, B, I) floats otherwise; ``y``
    holds the targets in the shape the model's loss expects (see :mod:`gruablate.model`).
    ``carry`` says the batch continues the sequences of the previous one, so the
    recurrent state is carried over (truncated backpropagation through time).
    ``lengths`` (B,) int64, for a task of padded sequences, is each row's number of real
    steps (see :class:`~gruablate.model.Model`); None: every row has all ``T``.
    """

    x: np.ndarray
    y: np.ndarray
    carry: bool = False
    lengths: np.ndarray | None = None


@dataclass(frozen=True)
class Option:
    """A task option: its name, type, default and a one-line help (also the CLI's).

    ``optional``: left out of :meth:`Task.config` (and so of records) at its default,
    so an option added later leaves the records of runs without it as they were."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    optional: bool = False


class Task(ABC):
    """Base class of the registered tasks.

    Subclasses set the class attributes and, in ``__init__``, the instance attributes
    ``input_size``, ``output_size``, ``time_scale`` (the characteristic length, used by
    chrono initialisation) and ``baseline`` (the trivial baseline of the metric).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()
    metric_name: ClassVar[str]
    lower_is_better: ClassVar[bool]
    # The values the metric can take: the report's intervals stay inside them.
    metric_bounds: ClassVar[tuple[float, float]] = (0.0, math.inf)
    loss: ClassVar[str]  # one of vocabulary.LOSSES
    readout: ClassVar[str]  # one of vocabulary.READOUTS
    tokens: ClassVar[bool]  # inputs are symbol indices (one-hot encoded by the model)

    input_size: int
    output_size: int
    time_scale: int
    baseline: float
    #: its batches carry per-row sequence lengths (padded sequences): the model runner
    #: must have them (``"lengths"`` in ``Backend.runner_features``)
    variable_length: bool = False

    def config(self) -> dict[str, Any]:
        """The task's options, resolved (defaults filled in; an ``optional`` one only
        when it is not at its default): the record's task_options."""
        return {opt.name: getattr(self, opt.name) for opt in self.options
                if not (opt.optional and getattr(self, opt.name) == opt.default)}

    @abstractmethod
    def train_batches(self, rng: np.random.Generator, batch: int) -> Iterator[Batch]:
        """An endless stream of training batches drawn from ``rng``."""

    @abstractmethod
    def evaluate(self, predict: Predict, split: str) -> dict[str, float]:
        """Metrics of a model on the ``val`` or ``test`` split; ``metric_name`` among them."""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({opts})"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def check_int(task: str, name: str, value: Any, minimum: int,
              maximum: int | None = None) -> int:
    """A task's integer option, refused with a message naming the task and the bound."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"task {task!r}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"task {task!r}: {name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"task {task!r}: {name} must be at most {maximum}, got {value}")
    return int(value)


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``size`` items (evaluation in bounded memory)."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
