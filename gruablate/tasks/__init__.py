"""The task registry: the one list of tasks gruablate trains on.

>>> from gruablate.tasks import list_tasks, make_task
>>> list_tasks()
['adding', 'copy', 'digits', 'charlm', 'chorales']
>>> task = make_task("copy", delay=20)
>>> task.metric_name, round(task.baseline, 4)
('ce', 0.5199)

Each task fixes its validation and test examples from its options alone; the training
seed only drives the stream of training batches (see :mod:`gruablate.tasks.base`).
"""

from __future__ import annotations

import math
from typing import Any

from .adding import Adding
from .base import Batch, Option, Task
from .charlm import CharLM
from .chorales import Chorales
from .copy import Copy
from .digits import Digits

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (Adding, Copy, Digits, CharLM, Chorales)
}


def list_tasks() -> list[str]:
    """Names of the registered tasks."""
    return list(TASKS)


def get_task_class(name: str) -> type[Task]:
    """The class registered as ``name``; a clear error names the known tasks."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def metric_bounds(metric_name: str) -> tuple[float, float]:
    """The range of a task metric, by its name (e.g. ``(0, inf)`` for ``mse``); a
    metric no registered task reports is taken as unbounded."""
    for cls in TASKS.values():
        if cls.metric_name == metric_name:
            return cls.metric_bounds
    return (-math.inf, math.inf)


def make_task(name: str, **options: Any) -> Task:
    """Build task ``name`` with its ``options``; an option it lacks is refused by name.

    Options given as None take their default, so a caller (the CLI) can pass every
    option it knows without caring which ones a task has.
    """
    cls = get_task_class(name)
    known = {opt.name for opt in cls.options}
    unknown = sorted(k for k, v in options.items() if k not in known and v is not None)
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise ValueError(f"task {name!r} has no option {unknown[0]!r}; its options: {listed}")
    return cls(**{k: v for k, v in options.items() if k in known and v is not None})


def all_options() -> dict[str, Option]:
    """Every option of every task by name (one type per name, checked): the CLI's options."""
    out: dict[str, Option] = {}
    for cls in TASKS.values():
        for opt in cls.options:
            if opt.name in out and out[opt.name].type is not opt.type:
                raise TypeError(f"task option {opt.name!r} has two types across tasks")
            out.setdefault(opt.name, opt)
    return out


__all__ = ["TASKS", "Batch", "Option", "Task", "all_options", "get_task_class",
           "list_tasks", "make_task", "metric_bounds"]
