"""Sequence lengths and the reverse direction of a layer, for every cell.

Oracles: the same layer on each row's own steps alone (no lengths: the kernels' full
path), the float64 reference of ``cells/reference.py`` on those steps, and central
finite differences of the padded run's own forward pass. Past a row's length its
outputs must be zero, its state must not move, and nothing may reach the gradients.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from conftest import (
    BUILTINS,
    as_tuple,
    assert_gradients_match_finite_differences,
    input_size,
    random_state,
)

from gruablate import RecurrentLayer
from gruablate.cells import reference

T, B, H = 6, 4, 5
LENGTHS = np.array([6, 3, 0, 1])  # a whole row, a short one, an empty one, one step

#: An equations cell with a third state and a product on a computed value.
EXTRA = {"name": "three_states", "equations": [
    "i' = σ(W_i x + U_i h + p_i ⊙ i + b_i)", "g = tanh(W_g x + U_g (i' ⊙ h) + b_g)",
    "c' = (1 − i') ⊙ c + i' ⊙ g", "h' = tanh(c') + p_h ⊙ h"]}


def _cell(name):
    from gruablate.cells.spec import Variant

    return Variant.from_dict(EXTRA) if name == EXTRA["name"] else name


def _setup(name, dtype="float64", seed=0):
    v = _cell(name)
    I = input_size(v, 3, H)
    layer = RecurrentLayer(v, I, H, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    layer.flat_params[:] = rng.normal(0.0, 0.5, layer.flat_params.size)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    s0 = random_state(layer, B, rng, 0.5)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dsT = random_state(layer, B, rng)
    return layer, x, s0, dy, dsT


def _rows(state, b):
    return tuple(s[b : b + 1] for s in as_tuple(state))


def _one(state):
    return state if len(state) > 1 else state[0]


def _stack(parts):
    out = tuple(np.concatenate(p) for p in zip(*parts, strict=True))
    return out if len(out) > 1 else out[0]


def _alone(layer, x, s0, dy, dsT, reverse=False):
    """Each row run alone on its first LENGTHS[b] steps (reversed if asked): outputs
    padded with zeros, last states, dx, ds0 and the parameter gradients summed."""
    y = np.zeros((T, B, H), dtype=layer.dtype)
    dx = np.zeros_like(x)
    last, ds0, grads = [], [], {k: np.zeros_like(g) for k, g in layer.grads.items()}
    for b, n in enumerate(LENGTHS):
        if n == 0:
            last.append(_rows(s0, b))
            ds0.append(_rows(dsT, b))
            continue
        steps = np.arange(n)[::-1] if reverse else np.arange(n)
        yb, sb = layer.forward(x[steps, b : b + 1], _one(_rows(s0, b)))
        y[steps, b : b + 1] = yb
        last.append(as_tuple(sb))
        dxb, dsb, g = layer.backward(dy[steps, b : b + 1], _one(_rows(dsT, b)))
        dx[steps, b : b + 1] = dxb
        ds0.append(as_tuple(dsb))
        for k in grads:
            grads[k] += g[k]
    return y, _stack(last), dx, _stack(ds0), grads


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name", BUILTINS + [EXTRA["name"]])
def test_lengths_equal_each_row_run_alone(name, reverse):
    layer, x, s0, dy, dsT = _setup(name)
    want = _alone(layer, x, s0, dy, dsT, reverse)
    y, last = layer.forward(x, s0, lengths=LENGTHS, reverse=reverse)
    dx, ds0, grads = layer.backward(dy, dsT)
    tol = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, want[0], **tol)
    for a, b in zip(as_tuple(last), as_tuple(want[1]), strict=True):
        np.testing.assert_allclose(a, b, **tol)
    np.testing.assert_allclose(dx, want[2], **tol)
    for a, b in zip(as_tuple(ds0), as_tuple(want[3]), strict=True):
        np.testing.assert_allclose(a, b, **tol)
    for k, g in want[4].items():
        np.testing.assert_allclose(grads[k], g, err_msg=k, **tol)
    for b, n in enumerate(LENGTHS):  # padding: zeros out, no gradient in
        assert not y[n:, b].any() and not dx[n:, b].any()


@pytest.mark.parametrize("name", ["gru", "lstm", "mgu", "gru_reset_after"])
def test_lengths_match_the_reference_on_each_rows_steps(name):
    layer, x, s0, _, _ = _setup(name)
    y, last = layer.forward(x, s0, lengths=LENGTHS, keep=False)
    for b, n in enumerate(LENGTHS):
        yr, sr = reference.forward(layer.variant, layer.params, x[:n, b : b + 1],
                                   _one(_rows(s0, b)))
        np.testing.assert_allclose(y[:n, b : b + 1], yr, rtol=1e-12, atol=1e-12)
        for a, r in zip(as_tuple(last), as_tuple(sr), strict=True):
            np.testing.assert_allclose(a[b : b + 1], r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name", ["lstm", "gru", EXTRA["name"]])
def test_padded_gradients_match_finite_differences(name, reverse):
    layer, x, s0, dy, dsT = _setup(name)
    assert_gradients_match_finite_differences(layer, x, s0, dy, dsT, lengths=LENGTHS,
                                              reverse=reverse)


@pytest.mark.parametrize("name", ["lstm", "gru_reset_after"])
def test_lengths_give_the_same_bits_on_any_thread_count(name, monkeypatch):
    layer, x, s0, dy, dsT = _setup(name, "float32")
    x = np.repeat(x, 8, axis=1)  # enough rows to split over threads
    s0 = tuple(np.repeat(s, 8, axis=0) for s in as_tuple(s0))
    dy, lens = np.repeat(dy, 8, axis=1), np.repeat(LENGTHS, 8)
    runs = []
    for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
        numba.set_num_threads(n)
        y, last = layer.forward(x, _one(s0), lengths=lens)
        dx, _, grads = layer.backward(dy)
        runs.append([y, *as_tuple(last), dx, *(grads[k].copy() for k in sorted(grads))])
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for a, b in zip(runs[0], runs[-1], strict=True):
        np.testing.assert_array_equal(a, b)


def test_full_lengths_are_the_plain_run():
    layer, x, s0, dy, dsT = _setup("mgu", "float32")
    plain = layer.forward(x, s0)[0]
    np.testing.assert_array_equal(layer.forward(x, s0, lengths=np.full(B, T))[0], plain)


@pytest.mark.parametrize("lengths, message", [
    ([1, 2, 3], "one length per batch row"),
    ([1.5, 2, 3, 4], "must be integers"),
    ([1, 2, 3, T + 1], r"lengths must be in \[0, 6\]"),
    ([-1, 2, 3, 4], r"lengths must be in \[0, 6\]"),
])
def test_bad_lengths_are_refused(lengths, message):
    layer, x, *_ = _setup("gru", "float32")
    with pytest.raises(ValueError, match=message):
        layer.forward(x, lengths=lengths)
