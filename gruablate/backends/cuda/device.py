"""Is CUDA usable here? numba-cuda, a GPU (or the simulator), the launch geometry.

``numba-cuda`` is optional: nothing here imports it until asked, and a missing package
or GPU gives one clear :class:`~gruablate.errors.CudaUnavailableError`.
"""

from __future__ import annotations

import os
from typing import Any

from ...errors import CudaUnavailableError
from .source import DEFAULT_GEOMETRY, SIM_GEOMETRY, Geometry

__all__ = ["CudaUnavailableError", "cuda_available", "geometry", "numba_cuda", "require_cuda",
           "simulator_enabled", "unavailable_reason"]


def numba_cuda() -> Any:
    """``numba.cuda``, or a one-line error saying what to install."""
    try:
        from numba import cuda
    except ImportError as exc:  # numba-cuda is an optional dependency
        raise CudaUnavailableError(
            "backend='cuda' needs the numba-cuda package, which is not installed"
            f" ({exc}); install it with: pip install 'gruablate[cuda]'"
        ) from None
    return cuda


def simulator_enabled() -> bool:
    """True when numba runs CUDA kernels in its Python simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    numba_cuda()
    try:  # what numba.cuda itself read when it was imported
        from numba.cuda.core import config
    except ImportError:  # pragma: no cover - other numba-cuda layouts
        return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    return bool(config.ENABLE_CUDASIM)


def cuda_available() -> bool:
    """Whether a CUDA layer can run here (numba-cuda and a GPU, or the simulator)."""
    try:
        return bool(numba_cuda().is_available())
    except CudaUnavailableError:
        return False


def require_cuda() -> Any:
    """``numba.cuda`` if a GPU (or the simulator) is usable, else :class:`CudaUnavailableError`."""
    cuda = numba_cuda()
    try:
        ok = cuda.is_available()
    except Exception as exc:  # a broken driver install raises instead of answering False
        raise CudaUnavailableError(
            f"backend='cuda' needs a working CUDA driver and GPU: {exc}"
        ) from None
    if not ok:
        raise CudaUnavailableError(
            "backend='cuda' needs an NVIDIA GPU with a working driver, and numba.cuda"
            " found none on this machine; use backend='cpu' (or set NUMBA_ENABLE_CUDASIM=1"
            " to run the kernels in numba's slow simulator)"
        )
    return cuda


def geometry() -> Geometry:
    """The launch geometry used here: small tiles under the simulator, else the GPU default."""
    return SIM_GEOMETRY if simulator_enabled() else DEFAULT_GEOMETRY


def unavailable_reason() -> str | None:
    """None when a CUDA layer can run here, else the one-line reason it cannot."""
    try:
        require_cuda()
    except CudaUnavailableError as exc:
        return str(exc)
    return None
