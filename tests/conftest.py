"""Shared helpers for the test suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gruablate
from gruablate.vocabulary import DTYPES

#: The built-in variants the per-variant tests run: all of them, or the comma-separated
#: subset named by GRUABLATE_TEST_VARIANTS (the other register tile's rerun in
#: test_cpu_tiles.py sets it: the tile changes the products, which a few cells cover).
BUILTINS = [v for v in gruablate.list_variants()
            if v in os.environ.get("GRUABLATE_TEST_VARIANTS", v).split(",")]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Before the workers of a whole-suite ``pytest -n N`` start: the built-in cells'
    CPU kernels, compiled once into the kernel cache by N processes side by side
    (``_warm_kernels.py``); the workers then load them. Skipped for a run of chosen
    files or tests, without xdist, and when the cache has them all already."""
    config = session.config
    workers = getattr(config.option, "numprocesses", None) or 0
    if (hasattr(config, "workerinput") or not isinstance(workers, int) or workers < 2
            or config.args_source != pytest.Config.ArgsSource.TESTPATHS):
        return
    from gruablate.backends.cpu.kernels import kernels_compiled

    if all(kernels_compiled(gruablate.get_variant(n), dt) for n in BUILTINS
           for dt in DTYPES):
        return
    here = Path(__file__).resolve().parent
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"compiling the {len(BUILTINS)} built-in cells' CPU kernels"
                            f" into the kernel cache, {workers} processes")
    procs = [subprocess.Popen([sys.executable, str(here / "_warm_kernels.py"), str(k),
                               str(workers)], cwd=here) for k in range(workers)]
    codes = [p.wait() for p in procs]
    if any(codes) and reporter is not None:  # the tests will show what fails to compile
        reporter.write_line(f"warming the kernel cache failed (exit codes {codes})")


def input_size(variant, I: int, H: int) -> int:
    """The input size a test uses for ``variant``: its own ``I``, or ``H`` for a cell
    that reads its input element-wise (MUT1, MUT2), which needs I = H."""
    v = gruablate.get_variant(variant)  # a name, a file or a Variant
    return H if v.input_must_equal_hidden else I


def random_state(layer: gruablate.RecurrentLayer, B: int, rng: np.random.Generator, scale=1.0):
    """A random initial state of the layer's form: h, or (h, c) for the LSTM family."""
    H = layer.hidden_size
    parts = tuple(
        (scale * rng.standard_normal((B, H))).astype(layer.dtype) for _ in layer.variant.state_names
    )
    return parts if len(parts) > 1 else parts[0]


def central_differences(f, arr: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """``d f() / d arr`` by central differences, ``arr`` changed in place and restored."""
    out = np.zeros_like(arr)
    flat, g = arr.reshape(-1), out.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        up = f()
        flat[k] = old - eps
        down = f()
        flat[k] = old
        g[k] = (up - down) / (2 * eps)
    return out


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def assert_model_gradients_match_finite_differences(model, loss, nonzero: bool = False
                                                    ) -> None:
    """Every buffer's gradient a float64 ``Model`` holds (after ``loss()`` then
    ``model.backward()``) against central differences of ``loss()``, which must draw
    the same masks on every call; ``nonzero``: every buffer gets some gradient."""
    for params, grads in model.buffers:
        analytic = grads.copy()
        if nonzero:
            assert np.abs(analytic).max() > 0
        np.testing.assert_allclose(analytic, central_differences(loss, params),
                                   rtol=1e-5, atol=1e-8)


def assert_gradients_match_finite_differences(layer, x, s0, dy, dsT, **forward):
    """A float64 layer's ``dx``, initial-state and parameter gradients of
    ``sum(y·dy) + sum(last·dsT)`` against central differences of its own forward pass
    (``forward``: the keywords of both forward calls, e.g. ``lengths``)."""

    def loss():
        y, last = layer.forward(x, s0, keep=False, **forward)
        return float((y * dy).sum() + sum((a * b).sum() for a, b in zip(
            as_tuple(last), as_tuple(dsT), strict=True)))

    layer.forward(x, s0, **forward)
    dx, ds0, grads = layer.backward(dy, dsT)
    grads = {k: g.copy() for k, g in grads.items()}
    np.testing.assert_allclose(dx, central_differences(loss, x), rtol=1e-6, atol=1e-8)
    for got, s in zip(as_tuple(ds0), as_tuple(s0), strict=True):
        np.testing.assert_allclose(got, central_differences(loss, s), rtol=1e-6, atol=1e-8)
    for k, g in grads.items():
        np.testing.assert_allclose(g, central_differences(loss, layer.params[k]),
                                   rtol=1e-6, atol=1e-8, err_msg=k)


@pytest.fixture(scope="module")
def real_cuda():
    """numba.cuda in its real (not simulated) mode, with its compiler libraries (PTX needs
    no GPU); skipped in a simulator process or without numba-cuda."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        pytest.skip("this process runs numba's CUDA simulator; PTX needs the real compiler")
    return pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")


@pytest.fixture(params=BUILTINS)
def variant_name(request) -> str:
    return request.param
