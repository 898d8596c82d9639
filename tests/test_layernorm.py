"""Layer normalisation inside a cell: ``mean``, ``sqrt`` and ``ln`` in the notation, and
the catalogue's layer-normalised GRU and LSTM (haste's LayerNormGRU / LayerNormLSTM).

Oracles: a float64 NumPy reference written from haste's own equations
(``frameworks/pytorch/layer_norm_gru.py`` and ``layer_norm_lstm.py``: the gate products
of one side normalised together as one 3H or 4H vector with ``F.layer_norm``, gains per
gate, LSTM also on ``c'``), PyTorch's autograd through ``F.layer_norm`` on the same
equations for every gradient, and central finite differences of the kernels' own
forward pass (with sequence lengths). The CUDA kernels of both cells are compared
with these CPU kernels in the simulator by ``tests/test_cuda.py`` (every built-in).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from conftest import assert_gradients_match_finite_differences

from gruablate import RecurrentLayer, get_variant
from gruablate.cells.notation import equation_text, parse_equation
from gruablate.cells.reference import interpret
from gruablate.cells.spec import Variant
from gruablate.errors import SpecError

I, H = 3, 4
SHAPES = [(5, 2), (4, 5)]  # T·B below and above the packed-product threshold
EPS = 1e-5  # haste's (and F.layer_norm's default) ε

#: haste's gate layout of each cell, in our letters, and each side's gain names.
GRU_GATES = ("u", "r", "c")  # haste z, r, g
LSTM_GATES = ("i", "g", "f", "o")


def sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def layer_norm(v, gamma, beta=0.0):
    """F.layer_norm over the last axis (population variance), then gain and bias."""
    mu = v.mean(axis=-1, keepdims=True)
    var = ((v - mu) ** 2).mean(axis=-1, keepdims=True)
    return (v - mu) / np.sqrt(var + EPS) * gamma + beta


def haste_gru(P, x, h):
    """LayerNormGRUScript of haste, in NumPy: kernel (I, 3H) in z, r, g order."""
    kernel = np.concatenate([P[f"W_{g}"].T for g in GRU_GATES], axis=1)
    recurrent = np.concatenate([P[f"U_{g}"].T for g in GRU_GATES], axis=1)
    bias = np.concatenate([P["b_u"], P["b_r"], P["b_c"]])
    recurrent_bias = np.concatenate([P["b_hu"], P["b_hr"], P["b_hc"]])
    gamma = np.stack([np.concatenate([P[f"p_{side}{g}"] for g in GRU_GATES])
                      for side in "xh"])
    Wx = layer_norm(x @ kernel, gamma[0]) + bias
    ys = []
    for t in range(x.shape[0]):
        Rh = layer_norm(h @ recurrent, gamma[1]) + recurrent_bias
        vx, vh = np.split(Wx[t], 3, axis=1), np.split(Rh, 3, axis=1)
        z = sig(vx[0] + vh[0])
        r = sig(vx[1] + vh[1])
        g = np.tanh(vx[2] + r * vh[2])
        h = z * h + (1 - z) * g
        ys.append(h)
    return np.stack(ys), h


def haste_lstm(P, x, h, c):
    """LayerNormLSTMScript of haste, in NumPy: gate layout i, g, f, o."""
    kernel = np.concatenate([P[f"W_{g}"].T for g in LSTM_GATES], axis=1)
    recurrent = np.concatenate([P[f"U_{g}"].T for g in LSTM_GATES], axis=1)
    bias = np.concatenate([P[f"b_{g}"] for g in LSTM_GATES])
    gamma = np.stack([np.concatenate([P[f"p_{side}{g}"] for g in LSTM_GATES])
                      for side in "xh"])
    Wx = layer_norm(x @ kernel, gamma[0])
    ys = []
    for t in range(x.shape[0]):
        v = layer_norm(h @ recurrent, gamma[1]) + Wx[t] + bias
        i, g, f, o = np.split(v, 4, axis=1)
        i, g, f, o = sig(i), np.tanh(g), sig(f), sig(o)
        c = f * c + i * g
        h = o * np.tanh(layer_norm(c, P["p_lc"], P["b_lc"]))
        ys.append(h)
    return np.stack(ys), (h, c)


def _layer(name: str, seed: int = 3, dtype: str = "float64") -> RecurrentLayer:
    """A layer with gains and biases drawn away from 1 and 0 (their initial values),
    so a gain or bias read in the wrong place shows."""
    layer = RecurrentLayer(name, I, H, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    for k, p in layer.params.items():
        if k.startswith("p_"):
            p[:] = 1.0 + 0.3 * rng.standard_normal(p.shape)
        elif k.startswith("b_"):
            p[:] = 0.3 * rng.standard_normal(p.shape)
    layer.params_changed()
    return layer


def _inputs(n_states: int, shape, seed: int = 1):
    rng = np.random.default_rng(seed)
    T, B = shape
    x = rng.standard_normal((T, B, I))
    s0 = [0.5 * rng.standard_normal((B, H)) for _ in range(n_states)]
    dy = rng.standard_normal((T, B, H))
    dsT = [rng.standard_normal((B, H)) for _ in range(n_states)]
    if n_states == 1:
        return x, s0[0], dy, dsT[0]
    return x, tuple(s0), dy, tuple(dsT)


# ---------------------------------------------------------------- the built-ins
def test_initial_gains_are_one_and_biases_haste_s():
    for name, forget in (("gru_ln", None), ("lstm_ln", "b_f")):
        layer = RecurrentLayer(name, I, H, seed=0)
        for k, p in layer.params.items():
            if k.startswith("p_"):
                assert np.all(p == 1.0), k
            elif k.startswith("b_"):
                assert np.all(p == (1.0 if k == forget else 0.0)), k


@pytest.mark.parametrize("shape", SHAPES, ids=["in-place", "packed"])
def test_gru_ln_is_haste_layer_norm_gru(shape):
    layer = _layer("gru_ln")
    x, h0, _, _ = _inputs(1, shape)
    y, hT = layer.forward(x, h0, keep=False)
    ry, rh = haste_gru(layer.params, x, h0)
    np.testing.assert_allclose(y, ry, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(hT, rh, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("shape", SHAPES, ids=["in-place", "packed"])
def test_lstm_ln_is_haste_layer_norm_lstm(shape):
    layer = _layer("lstm_ln")
    x, (h0, c0), _, _ = _inputs(2, shape)
    y, (hT, cT) = layer.forward(x, (h0, c0), keep=False)
    ry, (rh, rc) = haste_lstm(layer.params, x, h0, c0)
    np.testing.assert_allclose(y, ry, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(hT, rh, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(cT, rc, rtol=1e-12, atol=1e-13)


def _torch_haste(name: str, P: dict, x, states):
    """haste's scripted forward in PyTorch (its F.layer_norm), for autograd."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    cat = torch.cat
    n = 3 if name == "gru_ln" else 4
    gates = GRU_GATES if name == "gru_ln" else LSTM_GATES
    kernel = cat([P[f"W_{g}"].T for g in gates], 1)
    recurrent = cat([P[f"U_{g}"].T for g in gates], 1)
    gx = cat([P[f"p_x{g}"] for g in gates])
    gh = cat([P[f"p_h{g}"] for g in gates])
    Wx = F.layer_norm(x @ kernel, (n * H,), weight=gx, eps=EPS)
    ys = []
    h = states[0]
    if name == "gru_ln":
        Wx = Wx + cat([P["b_u"], P["b_r"], P["b_c"]])
        rb = cat([P["b_hu"], P["b_hr"], P["b_hc"]])
        for t in range(x.shape[0]):
            vx = torch.chunk(Wx[t], 3, 1)
            vh = torch.chunk(F.layer_norm(h @ recurrent, (3 * H,), weight=gh, eps=EPS) + rb,
                             3, 1)
            z, r = torch.sigmoid(vx[0] + vh[0]), torch.sigmoid(vx[1] + vh[1])
            h = z * h + (1 - z) * torch.tanh(vx[2] + r * vh[2])
            ys.append(h)
        return torch.stack(ys), (h,)
    c = states[1]
    bias = cat([P[f"b_{g}"] for g in gates])
    for t in range(x.shape[0]):
        v = F.layer_norm(h @ recurrent, (4 * H,), weight=gh, eps=EPS) + Wx[t] + bias
        i, g, f, o = torch.chunk(v, 4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(
            F.layer_norm(c, (H,), weight=P["p_lc"], bias=P["b_lc"], eps=EPS))
        ys.append(h)
    return torch.stack(ys), (h, c)


@pytest.mark.parametrize("name", ["gru_ln", "lstm_ln"])
def test_ln_cells_gradients_match_pytorch_autograd(name):
    """Every gradient against PyTorch's autograd through its own F.layer_norm, on
    haste's equations."""
    torch = pytest.importorskip("torch")
    layer = _layer(name)
    S = len(layer.variant.state_names)
    x, s0, dy, dsT = _inputs(S, (4, 5), seed=2)
    layer.forward(x, s0)
    dx, ds0, grads = layer.backward(dy, dsT)
    P = {k: torch.tensor(p, requires_grad=True) for k, p in layer.params.items()}
    tx = torch.tensor(x, requires_grad=True)
    parts = (s0,) if S == 1 else s0
    ts = [torch.tensor(s, requires_grad=True) for s in parts]
    y, last = _torch_haste(name, P, tx, ts)
    targets = (dsT,) if S == 1 else dsT
    loss = (y * torch.tensor(dy)).sum() + sum(
        (a * torch.tensor(b)).sum() for a, b in zip(last, targets, strict=True))
    loss.backward()
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    for got, t in zip((ds0,) if S == 1 else ds0, ts, strict=True):
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-10, atol=1e-12)
    for k, g in grads.items():
        np.testing.assert_allclose(g, P[k].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("name", ["gru_ln", "lstm_ln"])
def test_ln_cells_gradients_match_finite_differences_with_lengths(name):
    layer = _layer(name, seed=5)
    S = len(layer.variant.state_names)
    x, s0, dy, dsT = _inputs(S, (4, 3), seed=3)
    assert_gradients_match_finite_differences(layer, x, s0, dy, dsT)
    assert_gradients_match_finite_differences(layer, x, s0, dy, dsT,
                                              lengths=np.array([4, 1, 0]))


@pytest.mark.parametrize("name", ["gru_ln", "lstm_ln"])
def test_ln_cells_float32_and_any_thread_count(name):
    ref = _layer(name)
    f32 = RecurrentLayer(name, I, H, dtype="float32")
    f32.flat_params[:] = ref.flat_params
    f32.params_changed()
    S = len(ref.variant.state_names)
    x, s0, dy, dsT = _inputs(S, (6, 40), seed=4)
    cast = (lambda s: s.astype("float32")) if S == 1 else (
        lambda s: tuple(a.astype("float32") for a in s))
    y_ref, _ = ref.forward(x, s0, keep=False)
    runs = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        try:
            y, _ = f32.forward(x.astype("float32"), cast(s0))
            dx, _, grads = f32.backward(dy.astype("float32"), cast(dsT))
            runs.append((y, dx, {k: g.copy() for k, g in grads.items()}))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_allclose(runs[0][0], y_ref, atol=2e-5)
    (y1, dx1, g1), (y2, dx2, g2) = runs
    assert np.array_equal(y1, y2) and np.array_equal(dx1, dx2)
    assert all(np.array_equal(g1[k], g2[k]) for k in g1)


# ---------------------------------------------------------------- the notation
#: A cell of a user's: one block normalised alone (Ba et al.'s per-gate form), a mean
#: of a state, a square root, and a normalised value multiplied by a recurrent matrix
#: (a row mean in the middle of a step: several passes and a second product round).
OWN_CELL = [
    "n = ln(U_a h)",
    "a = σ(W_a x + p_a ⊙ n + b_a)",
    "q = tanh(W_q x + U_q (a ⊙ ln(h, a)) + b_q)",
    "s = sqrt(mean(q ⊙ q, h ⊙ h) + 1)",
    "h' = a ⊙ h + (1 − a) ⊙ q / s",
]


def test_mean_sqrt_and_ln_parse_and_render():
    eq = parse_equation("y = ln(W_a x, U_b h) ⊙ sqrt(mean(h) + 1)")
    assert eq.expr[0] == "mul"
    assert eq.expr[1] == ("call", "ln", ("mat", "W_a", ("var", "x", False)),
                          ("mat", "U_b", ("var", "h", False)))
    text = equation_text(eq)
    assert text == "y = ln(W_a x, U_b h) ⊙ sqrt(mean(h) + 1)"
    assert parse_equation(text).expr == eq.expr
    assert r"\sqrt{" in equation_text(eq, latex=True)


@pytest.mark.parametrize("shape", SHAPES, ids=["in-place", "packed"])
def test_own_cell_with_row_means_matches_the_interpreted_equations(shape):
    v = Variant.from_dict({"name": "own_ln", "equations": OWN_CELL})
    layer = RecurrentLayer(v, I, H, seed=2, dtype="float64")
    x, h0, dy, dsT = _inputs(1, shape, seed=6)
    y, hT = layer.forward(x, h0, keep=False)
    ry, rs = interpret(OWN_CELL, layer.params, x, {"h": h0})
    np.testing.assert_allclose(y, ry, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(hT, rs["h"], rtol=1e-12, atol=1e-13)
    assert len(v.cell.reductions) >= 4 and len(v.cell.passes) >= 4
    assert_gradients_match_finite_differences(layer, x, h0, dy, dsT,
                                              lengths=np.array([shape[0], 1] + [0] * (
                                                  shape[1] - 2)), reverse=True)


def test_one_set_of_blocks_is_normalised_once_whatever_their_order():
    """``ln(a, b)`` and ``ln(b, a)`` share their statistics: two means of the blocks and
    two of their squared deviations, not four of each."""
    v = Variant.from_dict({"name": "shared", "equations": [
        "a = σ(ln(W_a x, W_b x) + U_a h)", "b = tanh(ln(W_b x, W_a x) + U_b h)",
        "h' = a ⊙ h + (1 − a) ⊙ b"]})
    assert len(v.cell.reductions) == 4


@pytest.mark.parametrize("equations, message", [
    (["h' = σ(W_a x, h)"], "sigmoid takes one argument, not 2"),
    (["h' = tanh(W_a x) + sqrt(h, h)"], "sqrt takes one argument"),
    (["h' = tanh(W_a x + mean())"], "unsupported syntax"),
    (["h' = tanh(W_a x + avg(h))"], "unknown function 'avg'"),
])
def test_bad_calls_are_refused_naming_the_equation(equations, message):
    with pytest.raises(SpecError, match=message) as e:
        Variant.from_dict({"name": "bad", "equations": equations})
    assert str(e.value).startswith("equation ")
    assert "\n" not in str(e.value)


def test_catalogue_ln_cells_read_as_their_haste_equations():
    gru, lstm = get_variant("gru_ln"), get_variant("lstm_ln")
    assert "ln(W_u x, W_r x, W_c x)" in gru.cell_equations[0]
    assert lstm.state_names == ("h", "c")
    assert lstm.cell_equations[-1] == "h' = o ⊙ tanh(p_lc ⊙ ln(c') + b_lc)"
