"""The CPU kernels give the same bits on one thread and on two.

Studies promise the same numbers for the same seed whatever ``--jobs`` is (which sets
each worker's thread count) and on machines with other core counts. The kernels split
the batch rows over threads; this checks that no sum depends on that split, on sizes
large enough for the kernels to use several threads at all.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

import gruablate


def _run(name: str, threads: int) -> list[np.ndarray]:
    numba.set_num_threads(threads)
    try:
        I = 64 if gruablate.get_variant(name).input_must_equal_hidden else 24
        layer = gruablate.RecurrentLayer(name, I, 64, seed=3)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((30, 9, I)).astype(np.float32)
        y, last = layer.forward(x)
        dx, ds0, grads = layer.backward(rng.standard_normal(y.shape).astype(np.float32))
        inf, _ = layer.forward(x, keep=False)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    states = list(last) if isinstance(last, tuple) else [last]
    d0 = list(ds0) if isinstance(ds0, tuple) else [ds0]
    return [y, inf, dx, *states, *d0, *(grads[k] for k in sorted(grads))]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("name", gruablate.list_variants())
def test_one_and_two_threads_give_the_same_bits(name):
    one, two = _run(name, 1), _run(name, 2)
    for a, b in zip(one, two, strict=True):
        assert np.array_equal(a, b)
