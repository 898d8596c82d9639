"""Old import paths of modules that moved into ``cells/`` and ``backends/``.

The house was reshaped (one folder per backend, the cell description in ``cells/``);
code and notebooks that import the old paths keep working through this table, with a
``DeprecationWarning`` naming the new one. Nothing in gruablate imports an old path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

#: old module path -> new module path (None: an old package with nothing of its own)
MOVED: dict[str, str | None] = {
    "gruablate.spec": "gruablate.cells.spec",
    "gruablate.catalogue": "gruablate.cells.catalogue",
    "gruablate.identity": "gruablate.cells.identity",
    "gruablate.cuda_model": "gruablate.backends.cuda.model",
    "gruablate.cuda_optim": "gruablate.backends.cuda.optim",
    "gruablate.kernels": None,
    "gruablate.kernels.plan": "gruablate.cells.plan",
    "gruablate.kernels.reference": "gruablate.cells.reference",
    "gruablate.kernels.source": "gruablate.backends.source",
    "gruablate.kernels.cpu": "gruablate.backends.cpu.kernels",
    "gruablate.kernels.cpu_runtime": "gruablate.backends.cpu.runtime",
    "gruablate.kernels.cuda": "gruablate.backends.cuda.kernels",
    "gruablate.kernels.cuda_source": "gruablate.backends.cuda.source",
    "gruablate.kernels.cuda_train": "gruablate.backends.cuda.train_kernels",
    "gruablate.kernels.cuda_train_source": "gruablate.backends.cuda.train_source",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers an old path with the module at its new one (the same module object)."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self,
                                               is_package=MOVED[fullname] is None)

    def create_module(self, spec):
        new = MOVED[spec.name]
        if new is None:
            module = types.ModuleType(spec.name, "Moved: see gruablate.cells and"
                                      " gruablate.backends.")
            module.__path__ = []
            return module
        warnings.warn(f"{spec.name} moved to {new}; import it from there",
                      DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module) -> None:
        pass


def install() -> None:
    """Put the finder in front of the import system, once."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
