"""Central finite differences in float64: every parameter, the input and the initial state."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from conftest import BUILTINS, as_tuple, input_size, random_state

from gruablate import RecurrentLayer

# (T, B, I, H): tiny, odd and degenerate sizes.
SIZES = [(3, 2, 3, 4), (1, 1, 1, 1), (4, 1, 2, 3)]


def _loss(layer, x, s0, wy, ws):
    y, last = layer.forward(x, s0)
    return float(
        (wy * y).sum() + sum((w * s).sum() for w, s in zip(ws, as_tuple(last), strict=True))
    )


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_gradients_match_finite_differences(name, size):
    T, B, I, H = size
    I = input_size(name, I, H)
    rng = np.random.default_rng(zlib.crc32(f"{name}{size}".encode()))
    layer = RecurrentLayer(name, I, H, seed=1, dtype="float64")
    layer.flat_params[:] = rng.normal(0.0, 0.7, layer.flat_params.size)
    x = rng.standard_normal((T, B, I))
    s0 = random_state(layer, B, rng)
    wy = rng.standard_normal((T, B, H))
    ws = [rng.standard_normal((B, H)) for _ in as_tuple(s0)]

    _loss(layer, x, s0, wy, ws)
    dlast = tuple(ws) if len(ws) > 1 else ws[0]
    dx, ds0, grads = layer.backward(wy, dlast)
    grads = {k: g.copy() for k, g in grads.items()}
    dx, ds0 = dx.copy(), tuple(s.copy() for s in as_tuple(ds0))
    assert set(grads) == set(layer.params)

    eps = 1e-6

    def fd(array, idx):
        old = array[idx]
        array[idx] = old + eps
        up = _loss(layer, x, s0, wy, ws)
        array[idx] = old - eps
        down = _loss(layer, x, s0, wy, ws)
        array[idx] = old
        return (up - down) / (2 * eps)

    for pname, p in layer.params.items():
        num = np.array([fd(p, idx) for idx in np.ndindex(p.shape)]).reshape(p.shape)
        np.testing.assert_allclose(grads[pname], num, rtol=1e-5, atol=1e-7, err_msg=pname)
    num_x = np.array([fd(x, idx) for idx in np.ndindex(x.shape)]).reshape(x.shape)
    np.testing.assert_allclose(dx, num_x, rtol=1e-5, atol=1e-7, err_msg="dx")
    for k, (s, ds) in enumerate(zip(as_tuple(s0), ds0, strict=True)):
        num_s = np.array([fd(s, idx) for idx in np.ndindex(s.shape)]).reshape(s.shape)
        np.testing.assert_allclose(ds, num_s, rtol=1e-5, atol=1e-7, err_msg=f"dstate0[{k}]")


def test_gradient_check_can_fail():
    """The check above is not vacuous: a wrong gradient (one block off) is caught."""
    rng = np.random.default_rng(0)
    layer = RecurrentLayer("gru", 2, 3, dtype="float64")
    x = rng.standard_normal((2, 1, 2))
    y, _ = layer.forward(x)
    _, _, grads = layer.backward(np.ones_like(y))
    bad = grads["U_c"] * 1.01
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(bad, grads["U_c"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", BUILTINS)
def test_float32_agrees_with_float64(name):
    rng = np.random.default_rng(7)
    T, B, I, H = 20, 5, 7, 9
    I = input_size(name, I, H)
    l64 = RecurrentLayer(name, I, H, seed=3, dtype="float64")
    l32 = RecurrentLayer(name, I, H, seed=3, dtype="float32")
    l32.flat_params[:] = l64.flat_params
    x = rng.standard_normal((T, B, I))
    y64, _ = l64.forward(x)
    y32, _ = l32.forward(x.astype(np.float32))
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    dy = rng.standard_normal((T, B, H))
    dx64, _, _ = l64.backward(dy)
    dx32, _, _ = l32.backward(dy.astype(np.float32))
    np.testing.assert_allclose(dx32, dx64, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(l32.flat_grads, l64.flat_grads, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", BUILTINS)
def test_inference_forward_equals_training_forward(name):
    rng = np.random.default_rng(2)
    I = input_size(name, 4, 6)
    layer = RecurrentLayer(name, I, 6, seed=0)
    x = rng.standard_normal((7, 3, I)).astype(np.float32)
    s0 = random_state(layer, 3, rng)
    y1, last1 = layer.forward(x, s0, keep=True)
    y2, last2 = layer.forward(x, s0, keep=False)
    np.testing.assert_array_equal(y1, y2)
    for a, b in zip(as_tuple(last1), as_tuple(last2), strict=True):
        np.testing.assert_array_equal(a, b)
