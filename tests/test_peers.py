"""Peers with the same cell: Keras 3 and Flax, weights mapped, outputs and gradients.

Each peer runs its own implementation of a cell that one of ours claims to be, in
float64, on the same weights, inputs, initial state and output gradients; we compare
the outputs, the last state and every gradient (input, initial state, each weight).

- Keras 3 ``GRU(reset_after=False)`` is our ``gru`` (the reset before the product),
  ``GRU(reset_after=True)`` our ``gru_reset_after`` (its second bias is our ``b_hc``);
  Keras's gates are ``[z, r, h]``, ``z`` the gate that keeps the old state (our ``u``).
  Run on Keras's torch backend, its gradients by torch's autograd. Keras 3.15's
  ``ops.matmul`` computes float64 operands at float32 precision (measured: 3.5e-7 on a
  3×6 by 6×6 product, on its torch and jax backends alike; its reset-after GRU goes to
  torch's own kernel and agrees to 1e-12), so Keras is held to 1e-6: a wrong gate, index
  or missing term gives errors of the order of the values.
- Flax ``GRUCell`` is ``gru_reset_after`` (``b_hn`` is our ``b_hc``); Flax ``MGUCell``
  is the catalogue's ``mgu_flax`` (the gate scales ``U_c h + b_hc`` after
  the product and keeps the old state: not Zhou et al.'s ``mgu``); both scanned over
  time by ``jax.lax.scan``, differentiated by ``jax.vjp``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from gruablate import RecurrentLayer, Variant

T, B, I, H = 5, 3, 4, 6
TOL = dict(rtol=1e-9, atol=1e-11)  # float64 on both sides: summation order only

#: flax.linen.MGUCell (reset_gate=True) as a spec; Flax starts the forget bias at one.
MGU_FLAX = "mgu_flax"  # the catalogue's spec (variants/mgu_flax.toml)


def _ours(name: str | Variant, seed: int = 0):
    """Our layer with random weights (the bias too), and inputs and output gradients."""
    layer = RecurrentLayer(name, I, H, seed=seed, dtype="float64")
    rng = np.random.default_rng(seed + 10)
    for p in layer.params.values():
        p[...] = 0.5 * rng.standard_normal(p.shape)
    layer.params_changed()
    x = rng.standard_normal((T, B, I))
    h0 = 0.5 * rng.standard_normal((B, H))
    dy = rng.standard_normal((T, B, H))
    dhT = rng.standard_normal((B, H))
    y, hT = layer.forward(x, h0)
    dx, dh0, grads = layer.backward(dy, dhT)
    return layer, (x, h0, dy, dhT), (y, hT, dx, dh0, {k: g.copy() for k, g in grads.items()})


KERAS_TOL = dict(rtol=1e-6, atol=1e-6)


def _same(what: str, got, want, tol: dict = TOL) -> None:
    np.testing.assert_allclose(np.asarray(got), want, err_msg=what, **tol)


# ------------------------------------------------------------------------ Keras
@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="keras is not installed")
    if keras.backend.backend() != "torch":
        pytest.skip(f"Keras runs on {keras.backend.backend()} here; these tests use torch")
    return keras


@pytest.mark.parametrize("name, reset_after", [("gru", False), ("gru_reset_after", True)])
def test_keras_gru_matches(keras, name, reset_after):
    import torch

    layer, (x, h0, dy, dhT), (y, hT, dx, dh0, grads) = _ours(name)
    P = layer.params
    peer = keras.layers.GRU(H, return_sequences=True, return_state=True,
                            reset_after=reset_after, dtype="float64")
    peer.build((B, T, I))
    kernel = np.concatenate([P["W_u"].T, P["W_r"].T, P["W_c"].T], axis=1)
    recurrent = np.concatenate([P["U_u"].T, P["U_r"].T, P["U_c"].T], axis=1)
    bias = np.concatenate([P["b_u"], P["b_r"], P["b_c"]])
    if reset_after:  # an input bias and a recurrent one; the gates' two add in one sum
        bias = np.stack([bias, np.concatenate([np.zeros(2 * H), P["b_hc"]])])
    peer.set_weights([kernel, recurrent, bias])
    xt = torch.tensor(x.transpose(1, 0, 2), requires_grad=True)  # Keras is batch-major
    h0t = torch.tensor(h0, requires_grad=True)
    yt, hTt = peer(xt, initial_state=[h0t])
    loss = (yt * torch.tensor(dy.transpose(1, 0, 2))).sum() + (hTt * torch.tensor(dhT)).sum()
    loss.backward()
    _same("y", yt.detach().numpy().transpose(1, 0, 2), y, KERAS_TOL)
    _same("last state", hTt.detach().numpy(), hT, KERAS_TOL)
    _same("dx", xt.grad.numpy().transpose(1, 0, 2), dx, KERAS_TOL)
    _same("d h0", h0t.grad.numpy(), dh0, KERAS_TOL)
    gk, gr, gb = (w.value.grad.numpy() for w in peer.weights)
    for k, g in enumerate("urc"):
        cols = slice(k * H, (k + 1) * H)
        _same(f"W_{g}", gk[:, cols].T, grads[f"W_{g}"], KERAS_TOL)
        _same(f"U_{g}", gr[:, cols].T, grads[f"U_{g}"], KERAS_TOL)
        _same(f"b_{g}", (gb[0] if reset_after else gb)[cols], grads[f"b_{g}"], KERAS_TOL)
    if reset_after:
        _same("b_hc", gb[1, 2 * H :], grads["b_hc"], KERAS_TOL)
        _same("recurrent bias of the gates", gb[1, : 2 * H], gb[0, : 2 * H], KERAS_TOL)


# ------------------------------------------------------------------------- Flax
@pytest.fixture(scope="module")
def jax():
    jax = pytest.importorskip("jax", reason="jax is not installed")
    pytest.importorskip("flax", reason="flax is not installed")
    jax.config.update("jax_enable_x64", True)
    return jax


def _flax_run(jax, cell, params, x, h0, dy, dhT):
    """Outputs, last state, and the gradients of sum(y*dy) + sum(hT*dhT) (vjp)."""
    import jax.numpy as jnp

    def run(params, x, h0):
        def step(h, xt):
            h, y = cell.apply({"params": params}, h, xt)
            return h, y

        hT, ys = jax.lax.scan(step, h0, x)
        return ys, hT

    (ys, hT), vjp = jax.vjp(run, params, jnp.asarray(x), jnp.asarray(h0))
    gp, gx, gh0 = vjp((jnp.asarray(dy), jnp.asarray(dhT)))
    return ys, hT, gx, gh0, gp


def _check_flax(jax, cell, ours: str | Variant, seed: int, modules: dict) -> None:
    """Flax ``cell`` against our cell on the same weights: ``modules`` maps each Flax
    Dense module to the ``(W, b)`` names it holds (``b`` None for a Dense without bias)."""
    layer, data, (y, hT, dx, dh0, grads) = _ours(ours, seed=seed)
    P = layer.params
    params = {}
    for mod, (w, b) in modules.items():
        params[mod] = {"kernel": P[w].T, **({"bias": P[b]} if b else {})}
    ys, hTf, gx, gh0, gp = _flax_run(jax, cell, params, *data)
    _same("y", ys, y)
    _same("last state", hTf, hT)
    _same("dx", gx, dx)
    _same("d h0", gh0, dh0)
    for mod, (w, b) in modules.items():
        _same(w, np.asarray(gp[mod]["kernel"]).T, grads[w])
        if b:
            _same(b, gp[mod]["bias"], grads[b])


def test_flax_gru_cell_matches_gru_reset_after(jax):
    import flax.linen as nn

    cell = nn.GRUCell(features=H, param_dtype=np.float64, dtype=np.float64)
    _check_flax(jax, cell, "gru_reset_after", 1, {
        "ir": ("W_r", "b_r"), "hr": ("U_r", None), "iz": ("W_u", "b_u"), "hz": ("U_u", None),
        "in": ("W_c", "b_c"), "hn": ("U_c", "b_hc")})


def test_flax_mgu_cell_matches_its_equations(jax):
    import flax.linen as nn

    cell = nn.MGUCell(features=H, param_dtype=np.float64, dtype=np.float64)
    _check_flax(jax, cell, MGU_FLAX, 2, {
        "if": ("W_f", "b_f"), "hf": ("U_f", None), "in": ("W_c", "b_c"),
        "hn": ("U_c", "b_hc")})


def test_mgu_flax_starts_with_flax_forget_bias():
    """Flax initialises the forget bias to one; the spec's [init] says the same."""
    layer = RecurrentLayer(MGU_FLAX, I, H, seed=0, dtype="float64")
    np.testing.assert_array_equal(layer.params["b_f"], 1.0)
