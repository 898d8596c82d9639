"""The backends, and the one registry of them.

Each backend is one folder behind the :class:`~gruablate.backends.base.Backend`
protocol (``cpu/``: Numba CPU kernels; ``cuda/``: numba.cuda GPU kernels). Every other
module asks this registry for a backend by name and never compares backend names
itself; a new backend is one :func:`register` call (see ``docs/ARCHITECTURE.md``).

>>> from gruablate.backends import get_backend
>>> get_backend("cpu").available()
True
"""

from __future__ import annotations

import re

from .base import Backend, LayerImpl, ModelRunner
from .cpu import CpuBackend
from .cuda import CudaBackend

__all__ = ["BACKENDS", "Backend", "LayerImpl", "ModelRunner", "backend_names",
           "get_backend", "register", "unregister"]

_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add ``backend`` to the registry under ``backend.name`` (a ``ValueError`` if the
    name is malformed or taken) and return it."""
    if not isinstance(backend, Backend):
        raise ValueError(f"a backend must be a gruablate.backends.Backend, got {backend!r}")
    name = backend.name
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"a backend's name must match {_NAME.pattern}, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"a backend named {name!r} is registered already")
    _REGISTRY[name] = backend
    return backend


def unregister(name: str) -> None:
    """Remove a backend :func:`register` added (the built-ins stay)."""
    if name in BACKENDS:
        raise ValueError(f"the built-in backend {name!r} cannot be removed")
    _REGISTRY.pop(name, None)


def backend_names() -> tuple[str, ...]:
    """The names of every registered backend, built-ins first."""
    return tuple(_REGISTRY)


def get_backend(name: str | Backend) -> Backend:
    """The backend registered as ``name`` (a registered backend object is returned as
    it is), or a ``ValueError`` naming the choices."""
    if isinstance(name, Backend):
        if _REGISTRY.get(name.name) is not name:
            raise ValueError(f"backend {name.name!r} is not registered: pass it to"
                             " gruablate.backends.register first")
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"backend must be one of {', '.join(_REGISTRY)}, got {name!r}") from None


for _builtin in (CpuBackend(), CudaBackend()):
    register(_builtin)

#: The built-in backends' names, from the registry (what the CLI offers).
BACKENDS: tuple[str, ...] = backend_names()
