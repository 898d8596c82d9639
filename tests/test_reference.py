"""The float64 NumPy oracle against PyTorch and against identities read off VARIANTS.md."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import gruablate
from gruablate import SpecError, Variant
from gruablate.cells import reference as ref

BUILTINS = gruablate.list_variants()
# (T, B, I, H), including the degenerate T = 1, B = 1, H = 1.
SHAPES = [(5, 3, 4, 6), (1, 1, 1, 1), (1, 2, 3, 4), (4, 1, 2, 1), (3, 2, 1, 3)]


class RecordingParams(dict):
    """A parameter dict that remembers which keys were read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def random_params(variant, I, H, rng, scale=0.6):
    shapes = variant.param_shapes(I, H)
    return {k: scale * rng.standard_normal(s) for k, s in shapes.items()}


def random_state(variant, B, H, rng):
    parts = tuple(rng.standard_normal((B, H)) for _ in variant.state_names)
    return parts if len(parts) > 1 else parts[0]


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def all_valid_variants():
    """Every valid point of the switch space (the catalogue is a subset of it)."""
    grid = {
        "gru": dict(
            reset=["before", "after", "none", "tied"],
            update=["coupled", "uncoupled"],
            gate_inputs=["xhb", "hb", "h", "b", "xb"],
            candidate_inputs=["xh", "x"],
            candidate_activation=["tanh", "relu", "identity"],
        ),
        "lstm": dict(
            gate_inputs=["xhb", "hb", "h", "b", "xb"],
            candidate_inputs=["xh", "x"],
            candidate_activation=["tanh", "relu", "identity"],
            coupled_input_forget=[False, True],
        ),
        "rnn": dict(
            candidate_inputs=["xh", "x"], candidate_activation=["tanh", "relu", "identity"]
        ),
    }
    out = []
    for family, axes in grid.items():
        for values in itertools.product(*axes.values()):
            spec = {"name": "user", "family": family, **dict(zip(axes, values, strict=True))}
            try:
                out.append(Variant.from_dict(spec))
            except SpecError:
                continue
    return out


# --------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", BUILTINS)
def test_consumed_keys_match_param_shapes_builtin(name):
    variant = gruablate.get_variant(name)
    rng = np.random.default_rng(0)
    I, H, B, T = 3, 4, 2, 3
    I = H if variant.input_must_equal_hidden else I
    params = RecordingParams(random_params(variant, I, H, rng))
    y, last = ref.forward(variant, params, rng.standard_normal((T, B, I)))
    assert params.read == set(variant.param_shapes(I, H))
    assert y.shape == (T, B, H)
    if len(variant.state_names) > 1:
        assert isinstance(last, tuple) and len(last) == len(variant.state_names)
        assert all(s.shape == (B, H) for s in last)
    else:
        assert isinstance(last, np.ndarray) and last.shape == (B, H)


def test_consumed_keys_match_param_shapes_whole_space():
    variants = all_valid_variants()
    assert len(variants) > 100
    rng = np.random.default_rng(1)
    I, H = 2, 3
    for variant in variants:
        params = RecordingParams(random_params(variant, I, H, rng))
        y, _ = ref.forward(variant, params, rng.standard_normal((2, 2, I)))
        assert params.read == set(variant.param_shapes(I, H)), variant.to_dict()
        assert np.all(np.isfinite(y))


@pytest.mark.parametrize("name", BUILTINS)
def test_last_state_and_chaining(name):
    """y[-1] is the last h, and running two halves with the state passed on is one run."""
    variant = gruablate.get_variant(name)
    rng = np.random.default_rng(2)
    T, B, I, H = 6, 2, 3, 4
    I = H if variant.input_must_equal_hidden else I
    params = random_params(variant, I, H, rng)
    x = rng.standard_normal((T, B, I))
    s0 = random_state(variant, B, H, rng)
    y, last = ref.forward(variant, params, x, s0)
    h_last = as_tuple(last)[0]
    np.testing.assert_array_equal(y[-1], h_last)
    y1, mid = ref.forward(variant, params, x[:2], s0)
    y2, last2 = ref.forward(variant, params, x[2:], mid)
    np.testing.assert_allclose(np.concatenate([y1, y2]), y, rtol=0, atol=1e-14)
    for a, b in zip(as_tuple(last), as_tuple(last2), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", BUILTINS)
def test_state_none_means_zeros(name):
    variant = gruablate.get_variant(name)
    rng = np.random.default_rng(3)
    T, B, I, H = 3, 2, 3, 4
    I = H if variant.input_must_equal_hidden else I
    params = random_params(variant, I, H, rng)
    x = rng.standard_normal((T, B, I))
    zeros = np.zeros((B, H))
    n = len(variant.state_names)
    s0 = (zeros,) * n if n > 1 else zeros
    y_none, _ = ref.forward(variant, params, x)
    y_zero, _ = ref.forward(variant, params, x, s0)
    np.testing.assert_array_equal(y_none, y_zero)


def test_forward_does_not_modify_inputs():
    variant = gruablate.get_variant("lstm")
    rng = np.random.default_rng(4)
    params = random_params(variant, 2, 3, rng)
    x = rng.standard_normal((3, 2, 2))
    s0 = random_state(variant, 2, 3, rng)
    copies = ({k: v.copy() for k, v in params.items()}, x.copy(), tuple(s.copy() for s in s0))
    ref.forward(variant, params, x, s0)
    for k in params:
        np.testing.assert_array_equal(params[k], copies[0][k])
    np.testing.assert_array_equal(x, copies[1])
    for s, c in zip(s0, copies[2], strict=True):
        np.testing.assert_array_equal(s, c)


def test_missing_parameter_is_an_error():
    variant = gruablate.get_variant("gru")
    rng = np.random.default_rng(5)
    params = random_params(variant, 2, 3, rng)
    del params["U_r"]
    with pytest.raises(KeyError):
        ref.forward(variant, params, rng.standard_normal((2, 1, 2)))


def test_bad_input_rank_is_an_error():
    variant = gruablate.get_variant("gru")
    params = random_params(variant, 2, 3, np.random.default_rng(6))
    with pytest.raises(ValueError, match="T, B, I"):
        ref.forward(variant, params, np.zeros((2, 2)))


# --------------------------------------------------------------------- PyTorch
def _fill(module, rng):
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(0.7 * rng.standard_normal(tuple(p.shape))))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_gru_reset_after_matches_torch_gru(shape):
    torch = pytest.importorskip("torch")
    T, B, I, H = shape
    rng = np.random.default_rng(10 + sum(shape))
    gru = torch.nn.GRU(I, H).double()
    _fill(gru, rng)
    w_ih = gru.weight_ih_l0.detach().numpy()
    w_hh = gru.weight_hh_l0.detach().numpy()
    b_ih = gru.bias_ih_l0.detach().numpy()
    b_hh = gru.bias_hh_l0.detach().numpy()
    rows = {"r": slice(0, H), "z": slice(H, 2 * H), "n": slice(2 * H, 3 * H)}
    params = {
        "W_r": w_ih[rows["r"]], "U_r": w_hh[rows["r"]],
        "W_u": w_ih[rows["z"]], "U_u": w_hh[rows["z"]],
        "W_c": w_ih[rows["n"]], "U_c": w_hh[rows["n"]],
        "b_r": b_ih[rows["r"]] + b_hh[rows["r"]],
        "b_u": b_ih[rows["z"]] + b_hh[rows["z"]],
        "b_c": b_ih[rows["n"]],
        "b_hc": b_hh[rows["n"]],
    }  # fmt: skip
    variant = gruablate.get_variant("gru_reset_after")
    assert set(params) == set(variant.param_shapes(I, H))
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H))

    y, h_last = ref.forward(variant, params, x, h0)
    with torch.no_grad():
        y_t, h_t = gru(torch.from_numpy(x), torch.from_numpy(h0)[None])
    np.testing.assert_allclose(y, y_t.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h_last, h_t[0].numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_lstm_matches_torch_lstm(shape):
    torch = pytest.importorskip("torch")
    T, B, I, H = shape
    rng = np.random.default_rng(20 + sum(shape))
    lstm = torch.nn.LSTM(I, H).double()
    _fill(lstm, rng)
    w_ih = lstm.weight_ih_l0.detach().numpy()
    w_hh = lstm.weight_hh_l0.detach().numpy()
    b = lstm.bias_ih_l0.detach().numpy() + lstm.bias_hh_l0.detach().numpy()
    params = {}
    for k, g in enumerate("ifgo"):  # torch's gate order
        rows = slice(k * H, (k + 1) * H)
        params[f"W_{g}"], params[f"U_{g}"], params[f"b_{g}"] = w_ih[rows], w_hh[rows], b[rows]
    variant = gruablate.get_variant("lstm")
    assert set(params) == set(variant.param_shapes(I, H))
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))

    y, (h_last, c_last) = ref.forward(variant, params, x, (h0, c0))
    with torch.no_grad():
        y_t, (h_t, c_t) = lstm(
            torch.from_numpy(x), (torch.from_numpy(h0)[None], torch.from_numpy(c0)[None])
        )
    np.testing.assert_allclose(y, y_t.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h_last, h_t[0].numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c_last, c_t[0].numpy(), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------- identities
def sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def test_gru3_gates_are_constant_over_time():
    """gru3: r = σ(b_r), u = σ(b_u) at every step, so the cell is a fixed-gate recurrence."""
    variant = gruablate.get_variant("gru3")
    rng = np.random.default_rng(30)
    T, B, I, H = 7, 2, 3, 4
    p = random_params(variant, I, H, rng, scale=1.0)
    x = rng.standard_normal((T, B, I))
    h = rng.standard_normal((B, H))
    y, _ = ref.forward(variant, p, x, h)
    r, u = sig(p["b_r"]), sig(p["b_u"])  # computed once, used at every step
    for t in range(T):
        h_hat = np.tanh(x[t] @ p["W_c"].T + (r * h) @ p["U_c"].T + p["b_c"])
        h = u * h + (1 - u) * h_hat
        np.testing.assert_allclose(y[t], h, rtol=1e-13, atol=1e-14)


def test_no_reset_equals_gru_with_open_reset_gate():
    rng = np.random.default_rng(31)
    T, B, I, H = 5, 3, 2, 4
    nr = gruablate.get_variant("no_reset")
    p = random_params(nr, I, H, rng)
    p_gru = dict(p, W_r=np.zeros((H, I)), U_r=np.zeros((H, H)), b_r=np.full(H, 40.0))  # r ≈ 1
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H))
    y_nr, _ = ref.forward(nr, p, x, h0)
    y_gru, _ = ref.forward(gruablate.get_variant("gru"), p_gru, x, h0)
    np.testing.assert_allclose(y_nr, y_gru, rtol=1e-12, atol=1e-12)


def test_mingru_matches_closed_form_linear_recurrence():
    """h_t = (∏_{s≤t} u_s) h_0 + Σ_{s≤t} (∏_{s<k≤t} u_k) (1 − u_s) ĥ_s, ĥ_s = W_c x_s + b_c."""
    variant = gruablate.get_variant("mingru")
    rng = np.random.default_rng(32)
    T, B, I, H = 6, 2, 3, 4
    p = random_params(variant, I, H, rng, scale=1.0)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H))
    y, _ = ref.forward(variant, p, x, h0)
    u = sig(x @ p["W_u"].T + p["b_u"])  # (T, B, H): all gates at once, no state needed
    h_hat = x @ p["W_c"].T + p["b_c"]  # identity candidate
    for t in range(T):
        closed = np.prod(u[: t + 1], axis=0) * h0
        for s in range(t + 1):
            closed = closed + np.prod(u[s + 1 : t + 1], axis=0) * (1 - u[s]) * h_hat[s]
        np.testing.assert_allclose(y[t], closed, rtol=1e-12, atol=1e-13)


def test_mingru_is_affine_in_initial_state():
    variant = gruablate.get_variant("mingru")
    rng = np.random.default_rng(33)
    T, B, I, H = 4, 2, 3, 4
    p = random_params(variant, I, H, rng)
    x = rng.standard_normal((T, B, I))
    a, b = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    y0, _ = ref.forward(variant, p, x)
    ya, _ = ref.forward(variant, p, x, a)
    yb, _ = ref.forward(variant, p, x, b)
    yab, _ = ref.forward(variant, p, x, 2.0 * a - 3.0 * b)
    np.testing.assert_allclose(yab - y0, 2.0 * (ya - y0) - 3.0 * (yb - y0), atol=1e-12)


def test_rnn_one_step():
    variant = gruablate.get_variant("rnn")
    rng = np.random.default_rng(34)
    B, I, H = 3, 2, 5
    p = random_params(variant, I, H, rng)
    x = rng.standard_normal((1, B, I))
    h0 = rng.standard_normal((B, H))
    y, h1 = ref.forward(variant, p, x, h0)
    expected = np.tanh(p["W_c"] @ x[0].T + p["U_c"] @ h0.T + p["b_c"][:, None]).T  # columns
    np.testing.assert_allclose(y[0], expected, rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(h1, y[0])


def test_lstm_cifg_equals_lstm_with_negated_forget_params():
    """σ(−a) = 1 − σ(a): an input gate with the negated forget parameters is i = 1 − f."""
    rng = np.random.default_rng(35)
    T, B, I, H = 5, 2, 3, 4
    cifg = gruablate.get_variant("lstm_cifg")
    p = random_params(cifg, I, H, rng)
    p_lstm = dict(p, W_i=-p["W_f"], U_i=-p["U_f"], b_i=-p["b_f"])
    x = rng.standard_normal((T, B, I))
    s0 = random_state(cifg, B, H, rng)
    y_c, (h_c, c_c) = ref.forward(cifg, p, x, s0)
    y_l, (h_l, c_l) = ref.forward(gruablate.get_variant("lstm"), p_lstm, x, s0)
    np.testing.assert_allclose(y_c, y_l, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(c_c, c_l, rtol=1e-13, atol=1e-14)


def test_uncoupled_equals_gru_when_write_gate_is_one_minus_keep():
    rng = np.random.default_rng(36)
    T, B, I, H = 5, 2, 3, 4
    gru = gruablate.get_variant("gru")
    p = random_params(gru, I, H, rng)
    p_unc = dict(p, W_w=-p["W_u"], U_w=-p["U_u"], b_w=-p["b_u"])  # w = σ(−a_u) = 1 − u
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H))
    y_g, _ = ref.forward(gru, p, x, h0)
    y_u, _ = ref.forward(gruablate.get_variant("uncoupled"), p_unc, x, h0)
    np.testing.assert_allclose(y_u, y_g, rtol=1e-13, atol=1e-14)


def test_mgu_one_step_by_hand():
    variant = gruablate.get_variant("mgu")
    rng = np.random.default_rng(37)
    B, I, H = 2, 3, 4
    p = random_params(variant, I, H, rng, scale=1.0)
    x = rng.standard_normal((1, B, I))
    h = rng.standard_normal((B, H))
    y, _ = ref.forward(variant, p, x, h)
    for n in range(B):  # one column at a time, exactly as written in VARIANTS.md
        xn, hn = x[0, n], h[n]
        f = sig(p["W_f"] @ xn + p["U_f"] @ hn + p["b_f"])
        h_hat = np.tanh(p["W_c"] @ xn + p["U_c"] @ (f * hn) + p["b_c"])
        np.testing.assert_allclose(y[0, n], (1 - f) * hn + f * h_hat, rtol=1e-13, atol=1e-14)


def test_ligru_relu_candidate_clips_negatives():
    variant = gruablate.get_variant("ligru")
    rng = np.random.default_rng(38)
    B, I, H = 4, 3, 6
    p = random_params(variant, I, H, rng, scale=1.0)
    x = rng.standard_normal((1, B, I))
    y, _ = ref.forward(variant, p, x)  # h0 = 0, so h1 = (1 − u) ⊙ ReLU(W_c x + b_c)
    pre = x[0] @ p["W_c"].T + p["b_c"]
    u = sig(x[0] @ p["W_u"].T + p["b_u"])
    assert (pre < 0).any() and (pre > 0).any()
    np.testing.assert_array_equal(y[0][pre < 0], 0.0)
    np.testing.assert_allclose(y[0], (1 - u) * np.maximum(pre, 0.0), rtol=1e-14, atol=0)
    # From h0 = 0 every h_t is a convex mix of non-negative terms.
    y_long, _ = ref.forward(variant, p, rng.standard_normal((8, B, I)))
    assert (y_long >= 0).all()


# --------------------------------------------------------------------- user specs
def test_user_lstm_with_state_and_bias_gates():
    variant = Variant.from_dict({"name": "lstm_hb", "family": "lstm", "gate_inputs": "hb"})
    rng = np.random.default_rng(40)
    T, B, I, H = 4, 2, 3, 5
    shapes = variant.param_shapes(I, H)
    assert "W_i" not in shapes and "U_i" in shapes and "W_g" in shapes
    params = RecordingParams(random_params(variant, I, H, rng))
    x = rng.standard_normal((T, B, I))
    s0 = random_state(variant, B, H, rng)
    y, (h, c) = ref.forward(variant, params, x, s0)
    assert params.read == set(shapes)
    assert y.shape == (T, B, H) and h.shape == c.shape == (B, H)
    # Gates do not see x: with x = 0 the output equals an LSTM whose W_i, W_f, W_o are zero.
    full = gruablate.get_variant("lstm")
    p_full = dict(params)
    for g in "ifo":
        p_full[f"W_{g}"] = np.zeros((H, I))
    y_full, _ = ref.forward(full, p_full, x, s0)
    np.testing.assert_allclose(y, y_full, rtol=1e-13, atol=1e-14)


def test_user_gru_scan_spec_with_uncoupled_relu():
    variant = Variant.from_dict(
        {
            "name": "scan_relu",
            "family": "gru",
            "reset": "none",
            "update": "uncoupled",
            "gate_inputs": "xb",
            "candidate_inputs": "x",
            "candidate_activation": "relu",
        }
    )
    rng = np.random.default_rng(41)
    T, B, I, H = 3, 2, 3, 4
    params = RecordingParams(random_params(variant, I, H, rng))
    x = rng.standard_normal((T, B, I))
    h = rng.standard_normal((B, H))
    y, _ = ref.forward(variant, params, x, h)
    assert params.read == set(variant.param_shapes(I, H))
    for t in range(T):
        u = sig(x[t] @ params["W_u"].T + params["b_u"])
        w = sig(x[t] @ params["W_w"].T + params["b_w"])
        h = u * h + w * np.maximum(x[t] @ params["W_c"].T + params["b_c"], 0.0)
        np.testing.assert_allclose(y[t], h, rtol=1e-13, atol=1e-14)
