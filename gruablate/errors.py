"""The exceptions more than one module raises or catches: one home for each.

Every error a user's input can cause is a ``ValueError`` (the CLI prints it as a
one-line usage error); a run that diverges is a ``FloatingPointError``. A leaf module:
it imports nothing of the project.
"""

from __future__ import annotations


class SpecError(ValueError):
    """A variant spec that is malformed or contradicts itself."""


class StudyError(ValueError):
    """A study that cannot be built: bad key, value, range, variant or task."""


class BenchError(ValueError):
    """A benchmark request that cannot be run (bad option, missing dependency)."""


class NotARunDir(ValueError):
    """A path that is not a gruablate run directory."""


class NonFiniteError(FloatingPointError):
    """An activation, loss or gradient became NaN or infinite: the run diverged."""


class BackendUnavailableError(ValueError, RuntimeError):
    """A backend was asked for that this machine cannot run (a missing package or
    device). A ``ValueError``: like any option the machine cannot honour, it is refused
    before work (``run train`` prints it as a usage error)."""


class CudaUnavailableError(BackendUnavailableError):
    """``backend="cuda"`` was asked for, but numba-cuda or a CUDA GPU is missing."""
