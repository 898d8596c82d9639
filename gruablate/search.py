"""A study's hyperparameter search: the ``[search]`` table, drawn trial by trial.

::

    [search]
    trials = 40                      # trials per variant × task (× layers × backend)
    seed = 0                         # the draws' seed (default 0)
    lr = "loguniform(1e-4, 3e-2)"    # a range: uniform, loguniform, int, intlog
    hidden = "intlog(16, 128)"
    clip = [0.5, 1, 5]               # or a list of choices
    dropout = "uniform(0, 0.5)"      # rates (dropout, zoneout) within [0, 1)
    bidirectional = [true, false]    # a switch: a list of true and/or false

Random search. Trial ``k``'s value of a setting comes from a generator seeded by
``(seed, k, the setting's name)`` alone, so the same trial index gives the same settings
on every rerun and machine, whatever else the search holds and whichever cells have
finished; adding a setting to the search leaves the others' draws as they were. Every
variant sees the same trial ``k`` (common random numbers): two variants' distributions
differ by the cells, not by the luck of their draws.

No adaptive sampler (Optuna's TPE and the like) is offered: it makes trial ``k``'s
settings depend on which trials finished first, which a resumable, parallel sweep cannot
promise to repeat.
"""

from __future__ import annotations

import ast
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import StudyError
from .vocabulary import OPTIONAL_SETTINGS, is_switch

# The settings a search may draw: the training settings of a study (dtype aside: it is
# the arithmetic, not a hyperparameter) and the hidden size.
SEARCHABLE = ("hidden", "steps", "batch", "lr", "init", "clip", "warmup", "decay", "dropout",
              "zoneout", "bidirectional")
# The optional settings (vocabulary.OPTIONAL_SETTINGS): a rate's every draw must lie in
# [0, 1); a switch is drawn from a list of true and/or false.
RATES = tuple(k for k in OPTIONAL_SETTINGS if not is_switch(k))
SWITCHES = tuple(k for k in OPTIONAL_SETTINGS if is_switch(k))
# Ranges: the name a spec writes → (integer-valued, log scale).
RANGES = {"uniform": (False, False), "loguniform": (False, True),
          "int": (True, False), "intlog": (True, True)}
# What `--trials N` searches when the study has no [search] table of its own.
DEFAULT_SPACE = {"lr": "loguniform(1e-4, 3e-2)"}
MAX_TRIALS = 10_000
_ROUND_DIGITS = 4  # drawn floats keep 4 significant digits: readable records and ids


@dataclass(frozen=True)
class Distribution:
    """Where one setting's trials are drawn from: a range (``kind`` in :data:`RANGES`,
    ``low`` to ``high`` inclusive) or a list of ``choices`` (``kind == "choice"``)."""

    kind: str
    low: float = math.nan
    high: float = math.nan
    choices: tuple[Any, ...] = ()

    @property
    def integer(self) -> bool:
        return self.kind != "choice" and RANGES[self.kind][0]

    @property
    def log(self) -> bool:
        return self.kind != "choice" and RANGES[self.kind][1]

    def text(self) -> str:
        """The distribution as a study file writes it (``"loguniform(0.0001, 0.03)"``)."""
        if self.kind == "choice":
            return "[" + ", ".join(choice_text(c) for c in self.choices) + "]"
        return f"{self.kind}({_number_text(self.low)}, {_number_text(self.high)})"

    def as_data(self) -> Any:
        """JSON-ready: the text of a range, the list of choices."""
        return list(self.choices) if self.kind == "choice" else self.text()

    def draw(self, rng: np.random.Generator) -> Any:
        """One value."""
        if self.kind == "choice":
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.integer:
            if not self.log:
                return int(rng.integers(int(self.low), int(self.high) + 1))
            # Log-uniform over the integers: each integer n owns [n - 1/2, n + 1/2).
            value = math.exp(rng.uniform(math.log(self.low - 0.5), math.log(self.high + 0.5)))
            return int(min(max(round(value), self.low), self.high))
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return min(max(float(f"{value:.{_ROUND_DIGITS}g}"), self.low), self.high)


@dataclass(frozen=True)
class Search:
    """A resolved search: ``trials`` per grid point, drawn from ``space`` with ``seed``."""

    trials: int
    seed: int
    space: dict[str, Distribution]

    @classmethod
    def from_table(cls, table: Any, where: str = "") -> Search:
        """Validate a ``[search]`` table (raises :class:`StudyError` naming the key)."""
        at = f" in {where}" if where else ""
        if not isinstance(table, dict):
            raise StudyError(f"search{at} must be a table ([search]) of settings to draw")
        unknown = sorted(set(table) - {"trials", "seed", *SEARCHABLE})
        if unknown:
            raise StudyError(f"search{at}: {unknown[0]!r} cannot be searched; a search draws"
                             f" {', '.join(SEARCHABLE)} (and takes trials, seed)")
        trials = _count(table.get("trials"), "search.trials", at, 1, MAX_TRIALS)
        seed = _count(table.get("seed", 0), "search.seed", at, 0, 2**32 - 1)
        space = {k: parse_distribution(table[k], f"search.{k}{at}")
                 for k in SEARCHABLE if k in table}
        if not space:
            raise StudyError(f"search{at} draws nothing: give at least one of"
                             f" {', '.join(SEARCHABLE)}, e.g. lr = \"loguniform(1e-4, 3e-2)\"")
        if "hidden" in space:
            d = space["hidden"]
            if d.kind != "choice" and (not d.integer or d.low < 1):
                raise StudyError(f"search.hidden{at} must be integers of at least 1"
                                 " (int(...), intlog(...) or a list)")
        for key in RATES:
            if key in space and not _rates(space[key]):
                raise StudyError(f"search.{key}{at} must draw numbers in [0, 1) (e.g."
                                 f" \"uniform(0, 0.5)\" or [0, 0.1, 0.3]), got"
                                 f" {space[key].text()}")
        for key in SWITCHES:
            d = space.get(key)
            if d is not None and not (d.kind == "choice" and all(
                    isinstance(c, bool) for c in d.choices)):
                raise StudyError(f"search.{key}{at} must be a list of true and/or false"
                                 f" (e.g. [true, false]), got {d.text()}")
        return cls(trials=trials, seed=seed, space=space)

    def draw(self, trial: int) -> dict[str, Any]:
        """Trial ``trial``'s settings, by name (independent of every other trial)."""
        out = {}
        for name, dist in self.space.items():
            rng = np.random.default_rng([self.seed, trial, zlib.crc32(name.encode())])
            out[name] = dist.draw(rng)
        return out

    def identity(self) -> dict[str, Any]:
        """What makes two searches' trials the same draws: seed and space (not the count,
        which may grow in a run directory)."""
        return {"seed": self.seed, "space": {k: d.as_data() for k, d in self.space.items()}}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as a study file would write it."""
        return {"trials": self.trials, **self.identity()}


def parse_distribution(value: Any, what: str) -> Distribution:
    """``"loguniform(1e-4, 3e-2)"``, ``"intlog(16, 128)"``, ... or a list of choices.

    The text is read by Python's parser and only a call of a known range on two number
    literals is accepted; nothing is evaluated.
    """
    if isinstance(value, list):
        if not value:
            raise StudyError(f"{what}: empty list of choices")
        for c in value:
            if isinstance(c, dict | list):
                raise StudyError(f"{what}: a choice must be a number, a string or a"
                                 f" boolean, got {c!r}")
        if len({choice_text(c) for c in value}) != len(value):
            raise StudyError(f"{what}: a choice is listed twice in {value!r}")
        return Distribution("choice", choices=tuple(value))
    if not isinstance(value, str):
        raise StudyError(f"{what}: expected a range like \"loguniform(1e-4, 3e-2)\" or a"
                         f" list of choices, got {value!r} (a single value is a setting,"
                         " not a search)")
    usage = (f"{what}: malformed range {value!r}; write NAME(LOW, HIGH) with NAME one of"
             f" {', '.join(RANGES)}")
    try:
        node = ast.parse(value.strip(), mode="eval").body
    except SyntaxError:
        raise StudyError(usage) from None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in RANGES and len(node.args) == 2 and not node.keywords):
        raise StudyError(usage)
    low, high = (_literal(a, usage) for a in node.args)
    kind = node.func.id
    integer, log = RANGES[kind]
    if integer and not (float(low).is_integer() and float(high).is_integer()):
        raise StudyError(f"{what}: {kind} takes integer ends, got {value!r}")
    if not low < high:
        raise StudyError(f"{what}: the range {value!r} must have LOW < HIGH")
    if log and low <= 0:
        raise StudyError(f"{what}: {kind} needs LOW > 0, got {value!r}")
    return Distribution(kind, float(low), float(high))


def _rates(d: Distribution) -> bool:
    """Whether every value ``d`` draws is a number in [0, 1) (a range's high end may be
    drawn: it must be below 1)."""
    if d.kind == "choice":
        return all(not isinstance(c, bool) and isinstance(c, int | float) and 0 <= c < 1
                   for c in d.choices)
    return d.low >= 0 and d.high < 1


def _literal(node: ast.AST, usage: str) -> float:
    sign = 1.0
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        sign, node = -1.0, node.operand
    if (isinstance(node, ast.Constant) and isinstance(node.value, int | float)
            and not isinstance(node.value, bool) and math.isfinite(node.value)):
        return sign * float(node.value)
    raise StudyError(usage)


def _count(value: Any, what: str, at: str, lo: int, hi: int) -> int:
    if value is None:
        raise StudyError(f"{what}{at} is missing: how many trials to draw")
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise StudyError(f"{what}{at} must be an integer from {lo} to {hi}, got {value!r}")
    return value


def _number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def choice_text(c: Any) -> str:
    """A choice as TOML writes it (``false``, ``1``, ``0.5``, ``'cosine'``): the key two
    equal choices share (``1`` and ``1.0`` are one choice)."""
    if isinstance(c, bool | np.bool_):
        return "true" if c else "false"
    return repr(c) if isinstance(c, str) else _number_text(c) if isinstance(c, int | float) \
        else str(c)


__all__ = ["DEFAULT_SPACE", "SEARCHABLE", "Distribution", "Search", "choice_text",
           "parse_distribution"]
