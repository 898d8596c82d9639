"""gruablate: a Numba-JIT benchmarking and ablation toolkit for gated recurrent cells.

>>> import gruablate
>>> layer = gruablate.RecurrentLayer("gru", input_size=8, hidden_size=16, seed=0)
"""

from .catalogue import get_variant, list_variants
from .layer import RecurrentLayer
from .spec import SpecError, Variant

__all__ = [
    "RecurrentLayer",
    "SpecError",
    "Variant",
    "get_variant",
    "list_variants",
]
__version__ = "0.1.0"
