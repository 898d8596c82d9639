"""Checking host arrays and packing a layer's state: shared by the layer and the
device runners, so both refuse the same inputs with the same words.

A layer's state is ``h`` (B, H), or the tuple ``(h, c)`` for the LSTM family; the
kernels take it packed as one (S, B, H) array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

State = Any  # np.ndarray (h) or tuple[np.ndarray, np.ndarray] (h, c)


def check_array(name: str, a: Any, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """``a`` as a C-contiguous array if it is a finite NumPy array of ``shape`` and
    ``dtype``, else a ``ValueError`` naming ``name`` and what is wrong."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if a.dtype != dtype:
        raise ValueError(
            f"{name} has dtype {a.dtype} but the layer is {dtype};"
            f" convert with .astype(np.{dtype})"
        )
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return np.ascontiguousarray(a)


def check_lengths(lengths: Any, seq_len: int, batch: int) -> np.ndarray:
    """Per-row sequence lengths as an int64 array of ``batch`` entries in
    ``[0, seq_len]``, else a ``ValueError`` saying what is wrong."""
    a = np.asarray(lengths)
    if a.shape != (batch,):
        raise ValueError(f"lengths must hold one length per batch row ({batch}), got shape"
                         f" {a.shape}")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"lengths must be integers, got dtype {a.dtype}")
    if batch and (a.min() < 0 or a.max() > seq_len):
        raise ValueError(f"lengths must be in [0, {seq_len}] (the sequence has {seq_len}"
                         f" steps), got {a.min()}..{a.max()}")
    return np.ascontiguousarray(a, dtype=np.int64)


def real_steps(y: Any, seq_len: int, lengths: np.ndarray) -> np.ndarray:
    """The (T, B) mask of each row's real steps, for an every-step readout's targets
    ``y`` of a padded batch, whose first two axes must be (T, B): the loss reads only
    these positions (the padding's targets are never read)."""
    real = np.arange(seq_len)[:, None] < lengths[None, :]
    if np.shape(y)[:2] != real.shape:
        raise ValueError(f"targets of shape {np.shape(y)} do not fit {real.shape[0]}"
                         f" steps × {real.shape[1]} rows")
    return real


def check_zoneout(plan: Any, zoneout: np.ndarray | None) -> None:
    """A ``ValueError`` unless a zoneout mask comes exactly with a zoneout cell's plan."""
    if plan.zoneout != (zoneout is not None):
        raise ValueError("a zoneout mask goes with the kernels of a zoneout cell only"
                         " (RecurrentLayer.forward(zoneout=...) picks them)")


def reverse_index(seq_len: int, lengths: np.ndarray) -> np.ndarray:
    """(T, B) step indices that read each row's first ``lengths[b]`` steps backwards
    and leave its padding in place: ``x[index, arange(B)]`` is the reversed input, and
    the same gather puts the outputs back (it is its own inverse)."""
    t = np.arange(seq_len)[:, None]
    return np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


def pack_state(name: str, state: State, state_names: tuple[str, ...], batch: int,
               hidden: int, dtype: str) -> np.ndarray:
    """A user state (``h``; ``(h, c)``; a tuple in ``state_names`` order for a cell with
    more states; None for zeros) as one (S, B, H) array."""
    S = len(state_names)
    if state is None:
        return np.zeros((S, batch, hidden), dtype=dtype)
    if S > 1 and not (isinstance(state, tuple | list) and len(state) == S):
        raise ValueError(f"{name} of this layer must be a tuple ({', '.join(state_names)})")
    parts = state if S > 1 else (state,)
    return np.stack([check_array(f"{name}[{k}]", s, (batch, hidden), dtype)
                     for k, s in zip(state_names, parts, strict=True)])


def unpack_state(s: np.ndarray) -> State:
    """The user's form of a packed (S, B, H) state: ``h``, or the tuple ``(h, c, ...)``."""
    return tuple(s) if s.shape[0] > 1 else s[0]
