"""A study: a grid of training cells, from a TOML file and/or command-line options.

The grid is variants × tasks × hidden sizes × layers × seeds × backends; every cell
shares the training settings (steps, batch, learning rate, dtype, initialisation), which
a task's table may override for that task, and each task has its options::

    name = "evidence"
    variants = ["gru", "lstm", "no_reset", "rnn"]   # names or paths to spec files
    hidden = [64]
    layers = [1]
    seeds = "0-2"                                   # a list, or ranges as text
    backends = ["cpu"]
    steps = 2000
    batch = 32
    lr = 0.003

    [tasks.adding]                                  # or: tasks = ["adding", "copy"]
    seq_len = 100
    [tasks.copy]
    delay = 50
    steps = 4000                                    # this task's own training length

A ``[search]`` table (:mod:`gruablate.search`) turns a study into a per-variant
hyperparameter search: every point of the grid gets ``trials`` cells, trial ``k`` training
with settings drawn for ``k`` (``hidden`` too, when drawn) in place of the study's own.

Every cell gets a deterministic id from its resolved configuration (task defaults
filled in, the variant's switches included), so the same study always names the same
cells and a rerun finds what is already done.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .backends import backend_names
from .cells.catalogue import get_variant, list_variants
from .cells.identity import spec_content, spec_digest
from .cells.spec import SpecError, Variant
from .errors import StudyError
from .search import DEFAULT_SPACE, Search
from .vocabulary import DTYPES, OPTIONAL_SETTINGS, is_switch, optional_setting

# Settings every cell of a task shares; a task's table may override them.
SETTINGS = ("steps", "batch", "lr", "dtype", "init", "clip", "warmup", "decay", "dropout",
            "zoneout", "bidirectional")
# A cell's configuration (and so its id) holds the OPTIONAL_SETTINGS only when they are
# not at their default: a study that leaves them off names its cells as before they
# existed.
AXES = ("variants", "tasks", "hidden", "layers", "seeds", "backends")
_TOP_KEYS = ("name", "description", *AXES, "hidden_by_variant", *SETTINGS, "search")
_INT_AXES = ("hidden", "layers", "seeds")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Bounds that turn a typo (``--seeds 0-100000000``) into an error instead of a hang.
MAX_AXIS_VALUES = 10_000
MAX_CELLS = 100_000

# The quick study `gruablate run sweep` runs with no arguments: 60 cells that take about
# two and a half minutes on 2 cores once the kernels are compiled (measured), yet long
# enough (1500 steps at lr 0.01) that the gated cells leave the trivial baseline far
# behind on adding (T = 50) and the tanh rnn does not; three seeds for intervals, two
# hidden sizes so that the speed figure has a line to draw.
DEFAULT_STUDY: dict[str, Any] = {
    "name": "quick",
    "description": "Quick look: five variants on two small memory tasks, three seeds each.",
    "variants": ["gru", "no_reset", "lstm", "rnn", "mingru"],
    "tasks": {"adding": {"seq_len": 50}, "copy": {"delay": 20, "symbols": 5}},
    "hidden": [32, 64],
    "layers": [1],
    "seeds": [0, 1, 2],
    "backends": ["cpu"],
    "steps": 1500,
    "batch": 32,
    "lr": 0.01,
    "dtype": "float32",
    "init": "torch",
    "clip": 1.0,
    "warmup": 0,
    "decay": "none",
}


# --------------------------------------------------------------------- parsing
def parse_ints(text: str | int | list[Any], what: str) -> list[int]:
    """``"0-2,5"`` → ``[0, 1, 2, 5]``; also ``"8-64:8"`` (step), an int, or a list.

    Duplicates are dropped, first occurrence kept.
    """
    if isinstance(text, bool):
        raise StudyError(f"{what}: expected integers, got {text!r}")
    if isinstance(text, int):
        items: list[Any] = [text]
    elif isinstance(text, list):
        items = text
    elif isinstance(text, str):
        items = [p.strip() for p in text.split(",")]
    else:
        raise StudyError(f"{what}: expected integers or ranges like 0-2, got {text!r}")
    out: dict[int, None] = {}  # ordered, and membership in constant time
    for item in items:
        if isinstance(item, bool):
            raise StudyError(f"{what}: expected an integer, got {item!r}")
        if isinstance(item, int):
            values: Iterable[int] = [item]
        elif isinstance(item, str):
            values = _parse_range(item, what)
        else:
            raise StudyError(f"{what}: expected an integer or a range like 0-2, got {item!r}")
        out.update(dict.fromkeys(values))
        if len(out) > MAX_AXIS_VALUES:
            raise StudyError(f"{what}: more than {MAX_AXIS_VALUES} values; a grid that"
                             " large would never finish")
    if not out:
        raise StudyError(f"{what}: empty list")
    return list(out)


def _parse_range(item: str, what: str) -> range:
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*(?::\s*(\d+)\s*)?)?", item)
    if not m:
        raise StudyError(
            f"{what}: malformed value {item!r}; use integers and ranges like 0-2 or 8-64:8"
        )
    start = int(m.group(1))
    if m.group(2) is None:
        return range(start, start + 1)
    stop, step = int(m.group(2)), int(m.group(3) or 1)
    if stop < start:
        raise StudyError(f"{what}: malformed range {item!r} (it ends before it starts)")
    if step < 1:
        raise StudyError(f"{what}: malformed range {item!r} (step must be at least 1)")
    values = range(start, stop + 1, step)
    if len(values) > MAX_AXIS_VALUES:  # refused before it is expanded
        raise StudyError(f"{what}: range {item!r} has {len(values)} values, more than"
                         f" {MAX_AXIS_VALUES}")
    return values


def parse_names(text: str | list[Any], what: str) -> list[str]:
    """``"gru, lstm"`` or a list → unique names in order."""
    if isinstance(text, str):
        items = [p.strip() for p in text.split(",")]
    elif isinstance(text, list):
        items = text
    else:
        raise StudyError(f"{what}: expected a comma list or a list of names, got {text!r}")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise StudyError(f"{what}: expected non-empty names, got {item!r} in {text!r}")
        if item not in out:
            out.append(item)
    if not out:
        raise StudyError(f"{what}: empty list")
    return out


def parse_option_value(text: str) -> Any:
    """A task option from the command line, read as a TOML value (``5``, ``0.1``,
    ``true``, ``"x"``); anything else is taken as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# ----------------------------------------------------------------------- study
@dataclass(frozen=True)
class Cell:
    """One trained model of a study: its id, its configuration, and its variant."""

    id: str
    config: dict[str, Any]
    variant: Variant = field(compare=False)

    @property
    def trial(self) -> int | None:
        """The cell's trial index in its study's search (None outside a search)."""
        return self.config.get("trial")

    def train_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`gruablate.train` for this cell."""
        c = self.config
        kwargs = {k: c[k] for k in ("task", "hidden", "layers", "seed", "backend", *SETTINGS)
                  if k in c}  # the optional settings only when on
        return {"variant": self.variant, **kwargs, **c["task_options"]}


@dataclass(frozen=True)
class Study:
    """A resolved, validated study. Build it with :func:`load_study` or
    :meth:`Study.from_dict`; :meth:`cells` lists its grid."""

    name: str
    variants: tuple[Variant, ...]
    tasks: dict[str, dict[str, Any]]  # task → resolved options, in order
    task_settings: dict[str, dict[str, Any]]  # task → resolved SETTINGS
    hidden: tuple[int, ...]
    layers: tuple[int, ...]
    seeds: tuple[int, ...]
    backends: tuple[str, ...]
    description: str = ""
    # variant name → its own hidden sizes, replacing ``hidden`` for that variant (to
    # compare variants at equal parameter count rather than equal width)
    hidden_by_variant: dict[str, tuple[int, ...]] = field(default_factory=dict)
    search: Search | None = None
    # what resolving the study left out, for the user to read (``variants = "all"``)
    notes: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "", base_dir: Path | None = None
                  ) -> Study:
        """Validate a study mapping (as read from TOML, or built from options).

        Relative spec-file paths in ``variants`` are resolved against ``base_dir``.
        """
        at = f" in {where}" if where else ""
        unknown = sorted(set(data) - set(_TOP_KEYS))
        if unknown:
            raise StudyError(
                f"unknown study key {unknown[0]!r}{at}; known keys: {', '.join(_TOP_KEYS)}"
            )
        full = {**DEFAULT_STUDY, **data}
        name = full["name"]
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise StudyError(
                f"study name {name!r}{at} must be letters, digits, '.', '_' or '-'"
                " (it names the run directory)"
            )
        variants, everything = _resolve_variants(full["variants"], at, base_dir)
        tasks_raw = _task_table(full["tasks"], at)
        ints = {a: tuple(parse_ints(full[a], f"{a}{at}")) for a in _INT_AXES}
        for axis, lo in (("hidden", 1), ("layers", 1), ("seeds", 0)):
            bad = [v for v in ints[axis] if v < lo]
            if bad:
                raise StudyError(f"{axis}{at}: values must be at least {lo}, got {bad[0]}")
        backends = tuple(parse_names(full["backends"], f"backends{at}"))
        for b in backends:
            if b not in backend_names():
                raise StudyError(
                    f"unknown backend {b!r}{at}; choose from {', '.join(backend_names())}"
                )
        base = {k: full.get(k, OPTIONAL_SETTINGS.get(k)) for k in SETTINGS}
        tasks: dict[str, dict[str, Any]] = {}
        settings: dict[str, dict[str, Any]] = {}
        built: dict[str, Any] = {}
        for task, table in tasks_raw.items():
            own = {k: table[k] for k in SETTINGS if k in table}
            opts = {k: v for k, v in table.items() if k not in SETTINGS}
            settings[task] = _check_settings({**base, **own}, f"task {task!r}{at}")
            built[task] = _build_task(task, opts, at)
            tasks[task] = dict(built[task].config())
        description = full.get("description", "")
        if not isinstance(description, str):
            raise StudyError(f"description{at} must be a string")
        by_variant = _hidden_by_variant(full.get("hidden_by_variant", {}), variants, at)
        search = Search.from_table(full["search"], where) if "search" in full else None
        hidden_drawn = search is not None and "hidden" in search.space
        if hidden_drawn and by_variant:
            raise StudyError(f"hidden_by_variant{at} and a search that draws hidden cannot"
                             " both set the hidden sizes; keep one")
        sizes = {v.name: (None,) if hidden_drawn else by_variant.get(v.name, ints["hidden"])
                 for v in variants}
        notes: list[str] = []
        if everything:  # "all" means every built-in that can run on these tasks
            variants, notes = _runnable(variants, built, sizes)
            sizes = {v.name: sizes[v.name] for v in variants}
        n_cells = (len(tasks) * len(ints["layers"]) * len(ints["seeds"]) * len(backends)
                   * sum(len(s) for s in sizes.values()) * (search.trials if search else 1))
        if n_cells > MAX_CELLS:
            raise StudyError(f"the study{at} has {n_cells} cells, more than {MAX_CELLS};"
                             " split it into smaller studies")
        study = cls(
            name=name, variants=variants, tasks=tasks, task_settings=settings,
            hidden=ints["hidden"], layers=ints["layers"], seeds=ints["seeds"],
            backends=backends, description=description, hidden_by_variant=by_variant,
            search=search, notes=tuple(notes),
        )
        _check_cells(study, built, at)
        return study

    # ------------------------------------------------------------------ cells
    def cells(self) -> list[Cell]:
        """Every cell of the grid, in a fixed order (task, variant, hidden, layers,
        backend, trial, seed)."""
        out = []
        for task, options in self.tasks.items():
            for v in self.variants:
                for hidden in self._sizes(v):
                    for layers in self.layers:
                        for backend in self.backends:
                            for trial, drawn in self._trials():
                                for seed in self.seeds:
                                    config = {
                                        "variant": v.name, "task": task, "hidden": hidden,
                                        "layers": layers, "seed": seed, "backend": backend,
                                        **self.task_settings[task], "task_options": options,
                                        **drawn,
                                    }
                                    if trial is not None:
                                        config["trial"] = trial
                                        config["search"] = self.search.identity()
                                    out.append(Cell(cell_id(config, v), config, v))
        return out

    def _sizes_drawn(self) -> bool:
        return self.search is not None and "hidden" in self.search.space

    def _sizes(self, v: Variant) -> tuple[int | None, ...]:
        """A variant's hidden sizes (one placeholder when the search draws them)."""
        if self._sizes_drawn():
            return (None,)
        return self.hidden_by_variant.get(v.name, self.hidden)

    def _trials(self) -> list[tuple[int | None, dict[str, Any]]]:
        """(trial index, drawn settings) per trial; one trial of nothing without a search."""
        if self.search is None:
            return [(None, {})]
        return [(k, _drawn_settings(self.search.draw(k))) for k in range(self.search.trials)]

    def cell_settings(self) -> dict[str, dict[str, Any]]:
        """What every cell of a task shares (settings and options), by task; in a search,
        the drawn settings give way to the search's seed and space."""
        out = {}
        for t in self.tasks:
            shared = {**self.task_settings[t], "task_options": self.tasks[t]}
            if self.search is not None:
                shared = {k: v for k, v in shared.items() if k not in self.search.space}
                shared["search"] = self.search.identity()
            out[t] = shared
        return out

    def to_dict(self) -> dict[str, Any]:
        """The resolved study as JSON-ready data (the run directory's ``study.json``)."""
        return {
            "kind": "sweep",
            "name": self.name,
            "description": self.description,
            "variants": [v.name for v in self.variants],
            "variant_specs": {v.name: v.to_dict() for v in self.variants},
            "tasks": {t: dict(o) for t, o in self.tasks.items()},
            # none when the search draws them (the search's space says how)
            "hidden": [] if self._sizes_drawn() else list(self.hidden),
            "hidden_by_variant": {v: list(h) for v, h in self.hidden_by_variant.items()},
            "layers": list(self.layers),
            "seeds": list(self.seeds),
            "backends": list(self.backends),
            "cell_settings": self.cell_settings(),
            **({} if self.search is None else {"search": self.search.to_dict()}),
            "cells": len(self.cells()),
        }


def cell_id(config: dict[str, Any], variant: Variant) -> str:
    """Readable prefix plus a hash of everything that determines the result.

    The variant's switches are hashed, not only its name, so an edited spec file
    never reuses the results of its old equations.
    """
    blob = json.dumps({"config": config, "spec": spec_content(variant.to_dict())},
                      sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    c = config
    trial = f"-t{c['trial']}" if "trial" in c else ""
    return (f"{c['variant']}-{c['task']}{trial}-h{c['hidden']}-l{c['layers']}-s{c['seed']}"
            f"-{c['backend']}-{digest}")


def _drawn_settings(drawn: dict[str, Any]) -> dict[str, Any]:
    """A trial's draws as cell settings, spelled as :func:`_check_settings` spells them
    (``clip = false`` is None, a learning rate a float)."""
    out = dict(drawn)
    for key in OPTIONAL_SETTINGS:  # kept when drawn at 0: the search's importance reads it
        if key in out and not isinstance(out[key], bool) and isinstance(out[key], int | float):
            out[key] = float(out[key])
    if "clip" in out:
        out["clip"] = None if out["clip"] is False or out["clip"] == 0 else float(out["clip"])
    if "lr" in out:
        out["lr"] = float(out["lr"])
    return out




def _hidden_by_variant(value: Any, variants: tuple[Variant, ...], at: str
                       ) -> dict[str, tuple[int, ...]]:
    if not isinstance(value, dict):
        raise StudyError(f"hidden_by_variant{at} must be a table of variant = [sizes]")
    names = [v.name for v in variants]
    out = {}
    for name, sizes in value.items():
        if name not in names:
            raise StudyError(f"hidden_by_variant{at} names {name!r}, which is not one of"
                             f" the study's variants ({', '.join(names)})")
        hidden = tuple(parse_ints(sizes, f"hidden_by_variant.{name}{at}"))
        if not hidden or min(hidden) < 1:
            raise StudyError(f"hidden_by_variant.{name}{at}: sizes must be at least 1")
        out[name] = hidden
    return out


def _resolve_variants(value: Any, at: str, base_dir: Path | None
                      ) -> tuple[tuple[Variant, ...], bool]:
    """The variants, and whether they are the whole catalogue (``"all"``)."""
    names = parse_names(value, f"variants{at}")
    everything = names == ["all"]
    if everything:
        names = list_variants()
    out: list[Variant] = []
    for name in names:
        ref = name
        if base_dir is not None and (name.endswith(".toml") or "/" in name):
            p = Path(name)
            ref = str(p if p.is_absolute() else base_dir / p)
        try:
            v = get_variant(ref)
        except SpecError as exc:
            raise StudyError(f"{exc}{at}" if at and at not in str(exc) else str(exc)) from None
        if any(o.name == v.name for o in out):
            raise StudyError(f"two variants named {v.name!r}{at}; names must be unique")
        out.append(v)
    return tuple(out), everything


def _runnable(variants: tuple[Variant, ...], built: dict[str, Any],
              sizes: dict[str, tuple[int | None, ...]]) -> tuple[tuple[Variant, ...], list[str]]:
    """The catalogue's variants that can run on every task at every size, and a note for
    each left out: a cell reading its input element-wise needs input size = hidden size,
    which a task's data fixes."""
    keep, notes = [], []
    for v in variants:
        if not v.input_must_equal_hidden:
            keep.append(v)
            continue
        clash = next(((t, task.input_size, h) for t, task in built.items()
                      for h in sizes[v.name] if h != task.input_size), None)
        if clash is None:
            keep.append(v)
        else:
            t, size, h = clash
            drawn = "a drawn hidden size" if h is None else f"hidden size {h}"
            notes.append(f"variants 'all': {v.name} left out — it reads its input"
                         f" element-wise, so its input size must equal its hidden size, and"
                         f" {t} gives input size {size} with {drawn}")
    return tuple(keep), notes


def _task_table(value: Any, at: str) -> dict[str, dict[str, Any]]:
    if isinstance(value, dict):
        out = {}
        for task, table in value.items():
            if not isinstance(table, dict):
                raise StudyError(f"[tasks.{task}]{at} must be a table of options")
            out[task] = dict(table)
        if not out:
            raise StudyError(f"tasks{at}: empty list")
        return out
    return {t: {} for t in parse_names(value, f"tasks{at}")}


def _check_settings(s: dict[str, Any], where: str) -> dict[str, Any]:
    from .init import SCHEMES
    from .optim import DECAYS

    for key, lo in (("steps", 1), ("batch", 1), ("warmup", 0)):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise StudyError(f"{key} for {where} must be an integer of at least {lo}, got {v!r}")
    if s["warmup"] > s["steps"]:
        raise StudyError(f"warmup for {where} ({s['warmup']} steps) is longer than the run"
                         f" ({s['steps']} steps)")
    lr = s["lr"]
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
        raise StudyError(f"lr for {where} must be a positive finite number, got {lr!r}")
    # TOML has no null: `clip = false` (or 0) turns clipping off.
    clip = s["clip"]
    if clip is None or clip is False or clip == 0:  # None: already resolved to "off"
        clip = None
    elif clip is True or not isinstance(clip, int | float) or not 0 < clip < math.inf:
        raise StudyError(f"clip for {where} must be a positive finite number or false,"
                         f" got {clip!r}")
    for key, choices in (("dtype", DTYPES), ("init", SCHEMES), ("decay", DECAYS)):
        if s[key] not in choices:
            raise StudyError(
                f"{key} for {where} must be one of {', '.join(choices)}, got {s[key]!r}"
            )
    rates = {}
    for key, default in OPTIONAL_SETTINGS.items():
        try:
            rate = optional_setting(key, s.get(key, default))
        except ValueError:
            what = "true or false" if is_switch(key) else "a number in [0, 1)"
            raise StudyError(f"{key} for {where} must be {what}, got"
                             f" {s.get(key)!r}") from None
        if rate != default:  # absent at its default: the cell ids stay as they were
            rates[key] = rate
    return {"steps": s["steps"], "batch": s["batch"], "lr": float(lr), "dtype": s["dtype"],
            "init": s["init"], "clip": None if clip is None else float(clip),
            "warmup": s["warmup"], "decay": s["decay"], **rates}


def _check_cells(study: Study, built: dict[str, Any], at: str) -> None:
    """Every distinct cell configuration through :func:`gruablate.train.check_config`
    (the seed aside): a cell that could never run (a depth past the cap, arrays that
    cannot fit, a drawn warm-up longer than a drawn run) stops the study here, not after
    hours of others. A CUDA cell on a machine without a GPU is not refused: it is
    recorded as failed, like any cell that cannot run where the sweep runs."""
    from .train import check_config

    seen: set[str] = set()
    for cell in study.cells():
        c = cell.config
        key = json.dumps({**c, "seed": 0, "trial": None}, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        trial = f" (search trial {cell.trial})" if cell.trial is not None else ""
        where = f"{c['variant']} on {c['task']}{trial}{at}"
        if cell.trial is not None:  # drawn settings get the checks a study's own get
            _check_settings(c, f"task {c['task']!r}{trial}{at}")
        settings = {k: c[k] for k in SETTINGS if k in c}
        try:
            check_config(cell.variant, built[c["task"]], hidden=c["hidden"],
                         layers=c["layers"], backend=c["backend"], require_device=False,
                         **settings)
        except ValueError as exc:
            raise StudyError(f"{where}: {exc}") from None


def _build_task(task: str, options: dict[str, Any], at: str) -> Any:
    """Build the task once: an unknown task or a bad option fails here, in one line,
    before any cell runs; the defaults it fills in become part of the cell ids."""
    from . import tasks as registry

    known = registry.list_tasks()
    if task not in known:
        raise StudyError(f"unknown task {task!r}{at}; tasks: {', '.join(known)}")
    try:
        return registry.make_task(task, **options)
    except (TypeError, ValueError) as exc:
        raise StudyError(f"{exc}{at}") from None


# ------------------------------------------------------------------- loading
def read_config(path: str | Path) -> tuple[dict[str, Any], Path]:
    """A study TOML file as a mapping, and the folder relative paths start from."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StudyError(f"study config not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(f"cannot read study config {p}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"malformed TOML in study config {p}: {exc}") from None
    data.setdefault("name", p.stem)
    return data, p.resolve().parent


def load_study(
    config: str | Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    task_options: dict[str, dict[str, Any]] | None = None,
) -> Study:
    """Resolve a study: the TOML ``config`` (or the default quick study), then
    ``overrides`` (study keys, values as lists or comma/range text), then
    ``task_options`` (``{task: {option: value}}``). ``overrides["trials"]`` sets the
    search's trial count (searching :data:`~gruablate.search.DEFAULT_SPACE` when the
    study has no ``[search]``); a setting given in ``overrides`` is no longer drawn.

    An overridden study gets a name of its own unless ``overrides`` names it —
    ``sweep-<hash>`` for the default study, ``<config name>-<hash>`` for a config
    file — so that it never shares the run directory of the study as written.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    task_options = task_options or {}
    if config is not None:
        data, base_dir = read_config(config)
        where = str(config)
    else:
        data, base_dir, where = dict(DEFAULT_STUDY), None, ""
    data = dict(data)
    tasks = _task_table(data.get("tasks", DEFAULT_STUDY["tasks"]), f" in {where}" if where
                        else "")
    if "tasks" in overrides:
        chosen = parse_names(overrides.pop("tasks"), "--tasks")
        tasks = {t: tasks.get(t, {}) for t in chosen}
    for task, opts in task_options.items():
        if task not in tasks:
            raise StudyError(
                f"task option for {task!r}, which is not among the study's tasks"
                f" ({', '.join(tasks)})"
            )
        tasks[task] = {**tasks[task], **opts}
    # A setting given on the command line wins over every task's own value.
    for key in SETTINGS:
        if key in overrides:
            for opts in tasks.values():
                opts.pop(key, None)
    data["tasks"] = tasks
    changed = bool(overrides or task_options)
    _override_search(data, overrides, where)
    data.update(overrides)
    study = Study.from_dict(data, where=where, base_dir=base_dir)
    if changed and "name" not in overrides:
        # An overridden study is another study: it gets a run directory of its own, so
        # that a quick trial (--seeds 0 --steps 300) never blocks the real one.
        digest = hashlib.sha256(
            json.dumps(study.to_dict(), sort_keys=True).encode()
        ).hexdigest()[:8]
        name = f"sweep-{digest}" if config is None else f"{study.name}-{digest}"
        what = (study.description or "study").rstrip(".")
        study = Study(**{**study.__dict__, "name": name,
                         "description": f"{what}, with command-line overrides"})
    return study


def _override_search(data: dict[str, Any], overrides: dict[str, Any], where: str) -> None:
    """Apply ``trials`` (popped from ``overrides``) and the command line's settings to
    the study's ``[search]`` table in ``data``."""
    trials = overrides.pop("trials", None)
    table = data.get("search")
    if table is not None and not isinstance(table, dict):
        return  # Study.from_dict names the problem
    if trials is not None:
        table = {**(DEFAULT_SPACE if table is None else table), "trials": trials}
    if table is None:
        return
    given = {k for k in ("hidden", *SETTINGS) if k in overrides}
    if given & set(table):
        at = f" in {where}" if where else ""
        remaining = {k: v for k, v in table.items() if k not in given}
        if not set(remaining) - {"trials", "seed"}:
            raise StudyError(f"the search{at} has nothing left to draw once"
                             f" {', '.join(sorted(given & set(table)))} is set on the"
                             " command line")
        table = remaining
    data["search"] = table


def spec_conflict(old: dict[str, Any], new: Study) -> str | None:
    """Why ``new`` cannot share a run directory holding ``old`` because one variant
    name stands for two different cells (an edited spec file, or a user's spec that
    reuses a name), or None."""
    old_specs = old.get("variant_specs") or {}
    for v in new.variants:
        have = old_specs.get(v.name)
        if have is not None and spec_digest(have) != spec_digest(v.to_dict()):
            return (f"variant {v.name!r} was run there with another spec"
                    f" ({json.dumps(have, sort_keys=True)}); this study's {v.name!r} differs"
                    " — give the changed spec a name of its own")
    return None


def merge_study(old: dict[str, Any] | None, new: Study) -> dict[str, Any]:
    """The ``study.json`` of a run directory holding ``old`` once ``new`` joins it:
    the union of both (axes, variants and their specs, tasks, per-task settings), so
    that the next sweep is checked against everything the directory holds; ``name``,
    ``description`` and ``cells`` are the newest sweep's. Raises
    :class:`StudyError` naming the clash when the two may not share it."""
    data = new.to_dict()
    if old is None:
        return data
    if old.get("kind", "sweep") != "sweep":
        raise StudyError(f"it holds a {old.get('kind')!r} run, not a sweep")
    why = settings_conflict(old, new) or spec_conflict(old, new)
    if why:
        raise StudyError(why)
    merged = dict(data)
    for key in ("variants", "hidden", "layers", "seeds", "backends"):
        merged[key] = list(dict.fromkeys([*(old.get(key) or []), *data[key]]))
    for key in ("variant_specs", "tasks", "cell_settings"):
        merged[key] = {**(old.get(key) or {}), **data[key]}
    by_variant = {k: list(v) for k, v in (old.get("hidden_by_variant") or {}).items()}
    for name, sizes in data["hidden_by_variant"].items():
        by_variant[name] = list(dict.fromkeys([*by_variant.get(name, []), *sizes]))
    merged["hidden_by_variant"] = by_variant
    return merged


def settings_conflict(old: dict[str, Any], new: Study) -> str | None:
    """Why a run directory's existing study cannot share it with ``new`` (or None).

    A study may grow (more variants, seeds, tasks...) in its run directory, but the
    cells of one task there must share their training settings and task options, or
    the report would average results that are not comparable.
    """
    old_settings = old.get("cell_settings") or {}
    for task, want in new.cell_settings().items():
        have = old_settings.get(task)
        if have is None:
            continue
        for key in sorted(set(have) | set(want)):
            if have.get(key) != want.get(key):
                return (f"task {task!r} was run there with {key} = {have.get(key)!r},"
                        f" this study has {want.get(key)!r}")
    return None


__all__ = [
    "DEFAULT_STUDY",
    "Cell",
    "Study",
    "StudyError",
    "cell_id",
    "load_study",
    "merge_study",
    "parse_ints",
    "parse_names",
    "parse_option_value",
    "read_config",
    "settings_conflict",
    "spec_conflict",
]
