"""gruablate: a Numba-JIT benchmarking and ablation toolkit for gated recurrent cells.

>>> import gruablate
>>> layer = gruablate.RecurrentLayer("gru", input_size=8, hidden_size=16, seed=0)
"""

from . import _moved
from .cells.catalogue import get_variant, list_variants
from .cells.spec import SpecError, Variant
from .execute import run_study
from .layer import RecurrentLayer
from .store import load_curves, load_results
from .study import load_study
from .tasks import list_tasks
from .train import train

__all__ = [
    "RecurrentLayer",
    "SpecError",
    "Variant",
    "get_variant",
    "list_variants",
    "list_tasks",
    "train",
    "load_results",
    "load_curves",
    "load_study",
    "run_study",
    "write_report",
]


def __getattr__(name: str):
    # The report pulls in matplotlib and seaborn: load it on first use only.
    if name == "write_report":
        from .report import write_report

        return write_report
    raise AttributeError(f"module 'gruablate' has no attribute {name!r}")


_moved.install()  # old module paths (gruablate.spec, gruablate.kernels.cpu, ...) still import


__version__ = "0.1.0"
