"""Support for the CUDA tests: which device is here, and the simulator's subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def gpu_present() -> bool:
    """Whether this process can run kernels on a real CUDA GPU (never under the simulator)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return False
    try:
        from numba import cuda
    except ImportError:
        return False
    return bool(cuda.is_available())


def lock_simulator_shared_arrays() -> None:
    """Make the simulator's ``cuda.shared.array`` thread-safe.

    numba-cuda's simulator (0.30) finds a block's shared array by looking it up in a
    dict and creating it when absent, without a lock; two of the block's Python threads
    can both miss and end up with different arrays. With the short GIL switch interval
    used here that happened about once in a hundred launches of a reduction kernel
    (measured), which then dropped partial sums. Real GPUs have no such issue.
    """
    import threading

    from numba.cuda.simulator import kernelapi
    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    lock = threading.Lock()
    original = FakeCUDAShared.array

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:  # errors, dynamic shared memory: as before
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        # Keyed, like the original, by the kernel's file and line that asked for it.
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    FakeCUDAShared.array = array


def simulate(script: str, *args: str, timeout: int = 900) -> dict:
    """A test file's own entry point run under the simulator (``NUMBA_ENABLE_CUDASIM=1``)
    in a subprocess with the project on its path: the JSON report of its last line."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, script, *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
