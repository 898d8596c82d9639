"""Turning generated kernel source into importable, disk-cached modules.

Each (variant switches, dtype, backend) gets its own small Python module written into
the kernel cache folder under a name that is the hash of its source. Numba's
``cache=True`` keys its on-disk cache on the module file, so a module is written once
(atomically) and never rewritten: a second process imports it and loads the compiled
machine code instead of compiling again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType


def cache_dir() -> Path:
    """Folder of generated kernel modules (``$GRUABLATE_CACHE_DIR`` overrides)."""
    env = os.environ.get("GRUABLATE_CACHE_DIR")
    if env:
        base = Path(env)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gruablate"
    return base / "kernels"


def _module_name(prefix: str, source: str) -> str:
    return f"_gruablate_{prefix}_{hashlib.sha256(source.encode()).hexdigest()[:20]}"


def is_compiled(prefix: str, source: str) -> bool:
    """Whether the module of ``source`` has machine code in Numba's cache already (or
    is loaded here), so that using it costs no compilation. Reads two folder entries."""
    name = _module_name(prefix, source)
    if name in sys.modules:
        return True
    folder = cache_dir()
    return (folder / f"{name}.py").is_file() and any(
        (folder / "__pycache__").glob(f"{name}.*.nbi"))


def load_module(prefix: str, source: str) -> ModuleType:
    """Import ``source`` as a module stored in the cache folder (written if absent)."""
    name = _module_name(prefix, source)
    if name in sys.modules:
        return sys.modules[name]
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    if not path.exists() or path.read_text() != source:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
