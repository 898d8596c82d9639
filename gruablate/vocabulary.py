"""The names every module shares, and their validators: one home for each.

The dtypes a layer can have, the losses and readouts a task can ask for, and the
checks of a positive integer, a probability, a boolean switch and a dtype. (The
backends are a registry of their own: :mod:`gruablate.backends`.) A leaf module: it
imports nothing of the project, so the kernels, the tasks and the CLI can all depend
on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DTYPES = ("float32", "float64")
LOSSES = ("ce", "mse", "bernoulli")
READOUTS = ("every", "last")


def positive_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` if it is a positive integer (not a bool), else a
    ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


#: The model settings a record, a cell's configuration and its id hold only when they
#: are not at this value, their default (off), so that what was written before they
#: existed reads the same: the rates of dropout and zoneout (floats) and the switch of
#: bidirectional layers (a bool).
OPTIONAL_SETTINGS: dict[str, float | bool] = {"dropout": 0.0, "zoneout": 0.0,
                                              "bidirectional": False}


def is_switch(name: str) -> bool:
    """Whether optional setting ``name`` is a switch (true or false), not a rate."""
    return isinstance(OPTIONAL_SETTINGS[name], bool)


def optional_setting(name: str, value: Any) -> float | bool:
    """``value`` checked as optional setting ``name``: :func:`flag` for a switch,
    :func:`probability` for a rate."""
    return flag(name, value) if is_switch(name) else probability(name, value)


def probability(name: str, value: Any) -> float:
    """``value`` as a ``float`` if it is a number in ``[0, 1)`` (not a bool): a dropout
    or zoneout rate; else a ``ValueError`` naming ``name``."""
    if (isinstance(value, bool) or not isinstance(value, int | float | np.integer
                                                  | np.floating) or not 0.0 <= value < 1.0):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def flag(name: str, value: Any) -> bool:
    """``value`` if it is a boolean (``True``/``False``, or NumPy's): a switch such as
    ``bidirectional``; else a ``ValueError`` naming ``name`` (``1`` and ``"yes"`` are
    refused, not read as true)."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def normalise_dtype(dtype: Any) -> str:
    """``"float32"`` or ``"float64"`` from that name or a NumPy type (``np.float64``,
    ``np.dtype("float32")``); anything else is a ``ValueError``."""
    try:
        name = None if isinstance(dtype, bool) else np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return name
