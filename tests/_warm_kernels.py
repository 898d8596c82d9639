"""Compile the CPU kernels of some built-in cells into the kernel cache:

    python tests/_warm_kernels.py K N      (the built-ins K, K + N, K + 2N, ... of
                                            conftest.BUILTINS, both dtypes)

``conftest.py`` runs N of these side by side before the test workers start, so the
workers load every built-in's machine code from the cache instead of compiling it: two
workers that meet the same cell at once (parametrised tests spread one cell's cases
over both) would each compile it, and did (the suite on 2 cores took 21 minutes cold,
9.5 warm).
"""

from __future__ import annotations

import sys

import numpy as np
from conftest import BUILTINS, input_size  # tests/ is sys.path[0] when run

import gruablate
from gruablate.vocabulary import DTYPES


def warm(names: list[str]) -> None:
    """One tiny training step and inference of each cell in each dtype."""
    for name in names:
        for dtype in DTYPES:
            H = 3
            layer = gruablate.RecurrentLayer(name, input_size(name, 2, H), H, seed=0,
                                             dtype=dtype)
            x = np.ones((2, 2, layer.input_size), dtype=dtype)
            y, _ = layer.forward(x)
            layer.backward(np.ones_like(y))
            layer.forward(x, keep=False)


if __name__ == "__main__":
    k, n = int(sys.argv[1]), int(sys.argv[2])
    warm(BUILTINS[k::n])
