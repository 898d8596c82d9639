"""Numba's thread pool, started so that its idle threads stop spinning soon.

With Numba's OpenMP threading layer, a thread that finishes its share of a parallel
region spins (GNU OpenMP's default: 300 000 polls) before it sleeps. On a quiet
machine that saves a wake-up; beside another busy process it steals the core the
other thread needs to finish, and a two-thread call took up to 26x the time of the
same call on one thread (mingru, H = 64, one busy neighbour per core; the measured
table is in ``benchmarks/RESULTS.md``, the script ``benchmarks/contention.py``). With
10 000 polls the worst case measured was 1.95x, and quiet calls ran as fast as
before; ``OMP_WAIT_POLICY=PASSIVE`` (no spinning) cost quiet two-thread calls up to a
third more.

GNU OpenMP reads ``GOMP_SPINCOUNT`` once, when the library loads, so the pool is
started here with the variable set, and the variable is removed again: a PyTorch
loaded later (its own OpenMP copy) sees the environment as the user left it. A user's
own ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` is left alone, and so is a pool some
other code started first.

The pool starts when the CPU runtime is first imported (the first CPU layer), not at
``import gruablate``: PyTorch's wheel ships a ``libgomp.so.1`` of the same name, so a
PyTorch imported after Numba's pool started shares Numba's copy, and measured so, an
``nn.GRU`` forward (H = 128, B = 32, T = 100, 2 threads) took 328 ms instead of 6 (37
with this spin count). Import PyTorch first; ``run bench`` does.
"""

from __future__ import annotations

import os

#: GNU OpenMP polls before an idle thread of Numba's pool sleeps (see above).
SPIN_COUNT = 10_000
_started = False


def start_threads() -> None:
    """Start Numba's thread pool once, with :data:`SPIN_COUNT` for OpenMP's idle wait."""
    global _started
    if _started:
        return
    from numba.np.ufunc.parallel import _launch_threads

    ours = not {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & set(os.environ)
    if ours:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    try:
        _launch_threads()
    finally:
        if ours:
            os.environ.pop("GOMP_SPINCOUNT", None)
    _started = True
