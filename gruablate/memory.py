"""How much memory a run will need, estimated before anything is allocated.

A hidden size of 50 000 or a batch of 100 000 does not fail quickly: NumPy allocates
lazily, the machine swaps, and the user waits minutes for an out-of-memory kill that
says nothing. These estimates let training and benchmarks refuse such a run up front
with a one-line error. They count the large arrays only (parameters with their
gradients and Adam's moments; per step the saved activations, the hoisted input
products and their gradients; the readout), so they are a lower bound within a small
factor, which is all a refusal needs.
"""

from __future__ import annotations

import numpy as np

from .cells.plan import KernelPlan
from .envinfo import available_memory

#: Refuse a run whose estimate exceeds this share of the available memory: the rest of
#: the process (Python, Numba, the task's data) needs room too.
USABLE_SHARE = 0.8


def layer_bytes(plan: KernelPlan, *, seq_len: int, batch: int, input_size: int, hidden: int,
                dtype: str, train: bool = True) -> int:
    """Bytes one layer of ``plan`` needs for one call over a (T, B, I) sequence.

    Parameters count four times when training (value, gradient and Adam's two moments);
    per step and row it keeps ``y``, the gate activations and the hoisted products
    ``W x`` (and, backward, their gradients, ``dx`` and ``dy``).
    """
    T, B, I, H = seq_len, batch, input_size, hidden
    params = plan.param_count(I, H)
    per_step = B * (I + H + plan.nx * H)  # input, output, hoisted input products
    if train:
        per_step += B * H * (plan.na + plan.nx + 2)
    return np.dtype(dtype).itemsize * (params * (4 if train else 1) + T * per_step)


def check_fits(need: int, what: str, advice: str) -> None:
    """Raise ``ValueError`` when ``need`` bytes do not fit in the available memory."""
    free = available_memory()
    if free is not None and need > USABLE_SHARE * free:
        raise ValueError(f"{what} needs about {_gib(need)} of memory and {_gib(free)} is"
                         f" available; {advice}")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"
