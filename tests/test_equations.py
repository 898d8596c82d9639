"""Cells written as equations: parsed, differentiated and compiled to CPU kernels.

Oracles: float64 NumPy references written here from the papers' own equations (never
from the graph or the generated code), and central finite differences of the kernels'
own forward pass for every parameter, the input and every initial state. Every
built-in, switch specs included, compiles through the same graph; their oracles are
``cells/reference.py``'s family code (tests/test_kernels_vs_reference.py), finite
differences (tests/test_gradients.py) and the peers (tests/test_peers.py,
tests/test_reference.py). Here a switch built-in's rendered equations, written as a
spec, must be the same cell: the same kernels, the same numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import central_differences as _fd

from gruablate import RecurrentLayer, get_variant, list_variants
from gruablate.cells.spec import Variant

I, H, T, B = 3, 4, 5, 2
#: (T, B): 10 rows read U in place, 20 rows pack it (PACK_MIN_ROWS = 16): both paths.
SHAPES = [(5, 2), (4, 5)]


def sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def spec(name: str, equations: list[str], **extra) -> Variant:
    return Variant.from_dict({"name": name, "equations": equations, **extra})


def run(layer: RecurrentLayer, x, s0, dy, dsT):
    """Outputs, last state, and every gradient of ``sum(y*dy) + sum(sT*dsT)``."""
    y, sT = layer.forward(x, s0)
    dx, ds0, _ = layer.backward(dy, dsT)
    return y, sT, dx, ds0, {k: g.copy() for k, g in layer.grads.items()}


def inputs(n_states: int, seed: int = 0, shape: tuple[int, int] = (T, B), I: int = I):
    rng = np.random.default_rng(seed)
    T_, B_ = shape
    x = rng.standard_normal((T_, B_, I))
    s0 = tuple(0.5 * rng.standard_normal((B_, H)) for _ in range(n_states))
    dy = rng.standard_normal((T_, B_, H))
    dsT = tuple(rng.standard_normal((B_, H)) for _ in range(n_states))
    one = n_states == 1
    return x, (s0[0] if one else s0), dy, (dsT[0] if one else dsT)


# ------------------------------------------------------------------ built-ins
#: The built-ins written as switches (the others are equations already).
SWITCH_BUILTINS = [n for n in list_variants() if not get_variant(n).is_equations]


@pytest.mark.parametrize("name", SWITCH_BUILTINS)
def test_builtin_equations_as_a_spec_are_the_builtin(name):
    from gruablate.backends.cpu.kernels import kernel_source
    from gruablate.backends.cuda.cell_source import cell_source

    v = get_variant(name)
    twin = spec(f"{name}-eq", v.equations(), init=v.initial_values)
    assert twin.param_shapes(I, H).keys() == v.param_shapes(I, H).keys()
    assert twin.initial_values == v.initial_values
    for dtype in ("float32", "float64"):
        assert kernel_source(twin, dtype) == kernel_source(v, dtype), dtype
        assert cell_source(twin, dtype) == cell_source(v, dtype), dtype
    a = RecurrentLayer(v, I, H, seed=3, dtype="float64")
    e = RecurrentLayer(twin, I, H, seed=3, dtype="float64")
    assert a.flat_params.size == e.flat_params.size
    e.flat_params[:] = a.flat_params
    for k in a.params:  # every named block at the same place of the flat buffer
        np.testing.assert_array_equal(e.params[k], a.params[k], err_msg=k)
    args = inputs(len(v.state_names))
    for got, want in zip(run(e, *args)[:4], run(a, *args)[:4], strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_equations_spec_identity_is_its_content():
    a = spec("one", ["h' = tanh(W_c x + U_c h + b_c)"])
    b = spec("two", ["h'=tanh( W_c x+U_c h+b_c )"])
    from gruablate.cells.identity import spec_digest

    assert spec_digest(a.to_dict()) == spec_digest(b.to_dict())
    c = spec("three", ["h' = tanh(W_c x + U_c h)"])
    assert spec_digest(c.to_dict()) != spec_digest(a.to_dict())


def test_equations_spec_round_trips_through_toml(tmp_path):
    v = spec("peep", PEEPHOLE, init={"b_f": 1.0}, description="with peepholes")
    path = tmp_path / "peep.toml"
    path.write_text(v.to_toml(), encoding="utf-8")
    back = Variant.from_toml(path)
    assert back == v
    layer = RecurrentLayer(back, I, H)
    assert np.all(layer.params["b_f"] == 1.0)


# ------------------------------------------------------------ new cells
# Greff et al. 2017, "LSTM: A Search Space Odyssey", section 2 (vanilla LSTM, eqs. for
# z, i, f, c, o, y): peepholes p_i, p_f on c_{t-1}, p_o on the new c_t.
PEEPHOLE = [
    "i = σ(W_i x + U_i h + p_i ⊙ c + b_i)",
    "f = σ(W_f x + U_f h + p_f ⊙ c + b_f)",
    "g = tanh(W_g x + U_g h + b_g)",
    "c' = f ⊙ c + i ⊙ g",
    "o = σ(W_o x + U_o h + p_o ⊙ c' + b_o)",
    "h' = o ⊙ tanh(c')",
]


def ref_peephole(P, x, h, c, variant="vanilla"):
    """Greff et al. 2017, section 2, with their ablations (section 3.2)."""
    ys = []
    for t in range(x.shape[0]):
        xt = x[t]
        pre = {k: xt @ P[f"W_{k}"].T + h @ P[f"U_{k}"].T + P[f"b_{k}"]
               for k in "ifgo" if f"W_{k}" in P}
        z = pre["g"]
        z = z if variant == "niaf" else np.tanh(z)
        i = 1.0 if variant == "nig" else sig(pre["i"] + P["p_i"] * c)
        if variant == "nfg":
            f = 1.0
        elif variant == "cifg":  # the forget gate coupled to the input gate
            f = 1.0 - i
        else:
            f = sig(pre["f"] + P["p_f"] * c)
        c = f * c + i * z
        if variant == "nog":
            h = np.tanh(c)
        else:
            o = sig(pre["o"] + P["p_o"] * c)
            h = o * (c if variant == "noaf" else np.tanh(c))
        ys.append(h)
    return np.stack(ys), (h, c)


NO_INPUT_GATE = [PEEPHOLE[1], PEEPHOLE[2], "c' = f ⊙ c + g", *PEEPHOLE[4:]]
NO_FORGET_GATE = [PEEPHOLE[0], PEEPHOLE[2], "c' = c + i ⊙ g", *PEEPHOLE[4:]]
COUPLED_GATES = [PEEPHOLE[0], PEEPHOLE[2], "c' = (1 − i) ⊙ c + i ⊙ g", *PEEPHOLE[4:]]
NO_OUTPUT_GATE = PEEPHOLE[:4] + ["h' = tanh(c')"]
NO_INPUT_ACT = [PEEPHOLE[0], PEEPHOLE[1], "g = W_g x + U_g h + b_g", *PEEPHOLE[3:]]
NO_OUTPUT_ACT = PEEPHOLE[:5] + ["h' = o ⊙ c'"]

# Greff et al. 2017, FGR variant (section 3.2, "full gate recurrence"): each gate also
# sees the three gates of the previous step through nine more recurrent matrices.
FULL_GATE_RECURRENCE = [
    "i' = σ(W_i x + U_i h + U_ii i + U_if f + U_io o + p_i ⊙ c + b_i)",
    "f' = σ(W_f x + U_f h + U_fi i + U_ff f + U_fo o + p_f ⊙ c + b_f)",
    "g = tanh(W_g x + U_g h + b_g)",
    "c' = f' ⊙ c + i' ⊙ g",
    "o' = σ(W_o x + U_o h + U_oi i + U_of f + U_oo o + p_o ⊙ c' + b_o)",
    "h' = o' ⊙ tanh(c')",
]


def ref_fgr(P, x, h, c, i, f, o):
    ys = []
    for t in range(x.shape[0]):
        xt = x[t]
        pre = {k: xt @ P[f"W_{k}"].T + h @ P[f"U_{k}"].T + i @ P[f"U_{k}i"].T
               + f @ P[f"U_{k}f"].T + o @ P[f"U_{k}o"].T + P[f"b_{k}"] for k in "ifo"}
        i_n = sig(pre["i"] + P["p_i"] * c)
        f_n = sig(pre["f"] + P["p_f"] * c)
        z = np.tanh(xt @ P["W_g"].T + h @ P["U_g"].T + P["b_g"])
        c = f_n * c + i_n * z
        o_n = sig(pre["o"] + P["p_o"] * c)
        h = o_n * np.tanh(c)
        i, f, o = i_n, f_n, o_n
        ys.append(h)
    return np.stack(ys), (h, c, i, f, o)


# Jozefowicz et al. 2015, MUT3 (section 3.3): z = σ(W_xz x + W_hz tanh(h) + b_z),
# r = σ(W_xr x + W_hr h + b_r), h' = tanh(W_hh (r ⊙ h) + W_xh x + b_h) ⊙ z + h ⊙ (1 − z).
MUT3 = [
    "z = σ(W_z x + U_z tanh(h) + b_z)",
    "r = σ(W_r x + U_r h + b_r)",
    "h' = tanh(U_h (r ⊙ h) + W_h x + b_h) ⊙ z + h ⊙ (1 − z)",
]


def ref_mut3(P, x, h):
    ys = []
    for t in range(x.shape[0]):
        xt = x[t]
        z = sig(xt @ P["W_z"].T + np.tanh(h) @ P["U_z"].T + P["b_z"])
        r = sig(xt @ P["W_r"].T + h @ P["U_r"].T + P["b_r"])
        h = np.tanh((r * h) @ P["U_h"].T + xt @ P["W_h"].T + P["b_h"]) * z + h * (1 - z)
        ys.append(h)
    return np.stack(ys), h


# Feng et al. 2024, minLSTM (section 3.2.3, with the normalised gates f' and i'):
# f = σ(Linear(x)), i = σ(Linear(x)), h̃ = Linear(x), f' = f / (f + i), i' = i / (f + i),
# h_t = f' ⊙ h_{t-1} + i' ⊙ h̃. (Their primes are not states: our fn, in.)
MINLSTM = [
    "f = σ(W_f x + b_f)",
    "i = σ(W_i x + b_i)",
    "ĥ = W_h x + b_h",
    "fn = f / (f + i)",
    "in = i / (f + i)",
    "h' = fn ⊙ h + in ⊙ ĥ",
]


def ref_minlstm(P, x, h):
    ys = []
    for t in range(x.shape[0]):
        xt = x[t]
        f = sig(xt @ P["W_f"].T + P["b_f"])
        i = sig(xt @ P["W_i"].T + P["b_i"])
        ht = xt @ P["W_h"].T + P["b_h"]
        h = f / (f + i) * h + i / (f + i) * ht
        ys.append(h)
    return np.stack(ys), h


# Li et al. 2018, IndRNN (eq. 2): h_t = σ(W x_t + u ⊙ h_{t-1} + b), σ = ReLU.
INDRNN = ["h' = relu(W_h x + p_h ⊙ h + b_h)"]


def ref_indrnn(P, x, h):
    ys = []
    for t in range(x.shape[0]):
        h = np.maximum(x[t] @ P["W_h"].T + P["p_h"] * h + P["b_h"], 0.0)
        ys.append(h)
    return np.stack(ys), h


# Jozefowicz et al. 2015, MUT1 and MUT2 (section 3.3): the raw input inside an H-sized
# expression, so I = H.
#   MUT1: z = σ(W_xz x + b_z), r = σ(W_xr x + W_hr h + b_r),
#         h' = tanh(W_hh (r ⊙ h) + tanh(x) + b_h) ⊙ z + h ⊙ (1 − z)
#   MUT2: z = σ(W_xz x + W_hz h + b_z), r = σ(x + W_hr h + b_r),
#         h' = tanh(W_hh (r ⊙ h) + W_xh x + b_h) ⊙ z + h ⊙ (1 − z)
MUT1 = [
    "z = σ(W_z x + b_z)",
    "r = σ(W_r x + U_r h + b_r)",
    "h' = tanh(U_h (r ⊙ h) + tanh(x) + b_h) ⊙ z + h ⊙ (1 − z)",
]
MUT2 = [
    "z = σ(W_z x + U_z h + b_z)",
    "r = σ(x + U_r h + b_r)",
    "h' = tanh(U_h (r ⊙ h) + W_h x + b_h) ⊙ z + h ⊙ (1 − z)",
]


def ref_mut1(P, x, h):
    ys = []
    for t in range(x.shape[0]):
        xt = x[t]
        z = sig(xt @ P["W_z"].T + P["b_z"])
        r = sig(xt @ P["W_r"].T + h @ P["U_r"].T + P["b_r"])
        h = np.tanh((r * h) @ P["U_h"].T + np.tanh(xt) + P["b_h"]) * z + h * (1 - z)
        ys.append(h)
    return np.stack(ys), h


def ref_mut2(P, x, h):
    ys = []
    for t in range(x.shape[0]):
        xt = x[t]
        z = sig(xt @ P["W_z"].T + h @ P["U_z"].T + P["b_z"])
        r = sig(xt + h @ P["U_r"].T + P["b_r"])
        h = np.tanh((r * h) @ P["U_h"].T + xt @ P["W_h"].T + P["b_h"]) * z + h * (1 - z)
        ys.append(h)
    return np.stack(ys), h


# van der Westhuizen & Lasenby 2018, JANET (section 3): s_t = U_f h_{t-1} + W_f x_t + b_f,
# c̃_t = tanh(U_c h_{t-1} + W_c x_t + b_c), c_t = σ(s_t) ⊙ c_{t-1} + (1 − σ(s_t − β)) ⊙ c̃_t,
# h_t = c_t, with β = 1.
JANET = [
    "s = W_f x + U_f h + b_f",
    "g = tanh(W_c x + U_c h + b_c)",
    "h' = σ(s) ⊙ h + (1 − σ(s − 1)) ⊙ g",
]


def ref_janet(P, x, h, beta=1.0):
    ys = []
    for t in range(x.shape[0]):
        s = h @ P["U_f"].T + x[t] @ P["W_f"].T + P["b_f"]
        cand = np.tanh(h @ P["U_c"].T + x[t] @ P["W_c"].T + P["b_c"])
        h = sig(s) * h + (1 - sig(s - beta)) * cand
        ys.append(h)
    return np.stack(ys), h


# Flax's MGUCell (flax/linen/recurrent.py, __call__): f = sigmoid(dense_i(x) + dense_h(h)),
# n = tanh(dense_i(x) + f * dense_h(h)) (the candidate's input kernel with bias b_c, its
# recurrent kernel with bias b_hc), new_h = (1 − f) * n + f * h.
MGU_FLAX = [
    "f = σ(W_f x + U_f h + b_f)",
    "ĥ = tanh(W_c x + b_c + f ⊙ (U_c h + b_hc))",
    "h' = f ⊙ h + (1 − f) ⊙ ĥ",
]


def ref_mgu_flax(P, x, h):
    ys = []
    for t in range(x.shape[0]):
        f = sig(x[t] @ P["W_f"].T + h @ P["U_f"].T + P["b_f"])
        n = np.tanh(x[t] @ P["W_c"].T + P["b_c"] + f * (h @ P["U_c"].T + P["b_hc"]))
        h = (1 - f) * n + f * h
        ys.append(h)
    return np.stack(ys), h


# Collins et al. 2017, UGRNN (their eqs. for c_t, g_t, h_t):
# c_t = tanh(W_ch h_{t-1} + W_cx x_t + b_c), g_t = σ(W_gh h_{t-1} + W_gx x_t + b_g),
# h_t = g_t ⊙ h_{t-1} + (1 − g_t) ⊙ c_t — the GRU without its reset gate, `no_reset`.
def ref_ugrnn(P, x, h):
    ys = []
    for t in range(x.shape[0]):
        c = np.tanh(h @ P["U_c"].T + x[t] @ P["W_c"].T + P["b_c"])
        g = sig(h @ P["U_u"].T + x[t] @ P["W_u"].T + P["b_u"])
        h = g * h + (1 - g) * c
        ys.append(h)
    return np.stack(ys), h


# Lei et al. 2017, SRU ("Training RNNs as Fast as CNNs", eqs. 3–7): x̃_t = W x_t,
# f_t = σ(W_f x_t + b_f), r_t = σ(W_r x_t + b_r), c_t = f_t ⊙ c_{t-1} + (1 − f_t) ⊙ x̃_t,
# h_t = r_t ⊙ g(c_t) + (1 − r_t) ⊙ x_t, g = tanh. The recurrence is in c alone; h is
# only the output (never read at the next step), and the highway term needs I = H.
SRU = [
    "f = σ(W_f x + b_f)",
    "r = σ(W_r x + b_r)",
    "g = W_c x",
    "c' = f ⊙ c + (1 − f) ⊙ g",
    "h' = r ⊙ tanh(c') + (1 − r) ⊙ x",
]


def ref_sru(P, x, h, c):
    ys = []
    for t in range(x.shape[0]):
        xt = x[t]
        xtil = xt @ P["W_c"].T
        f = sig(xt @ P["W_f"].T + P["b_f"])
        r = sig(xt @ P["W_r"].T + P["b_r"])
        c = f * c + (1 - f) * xtil
        h = r * np.tanh(c) + (1 - r) * xt
        ys.append(h)
    return np.stack(ys), (h, c)


#: Cells whose input is read element-wise: the input size is the hidden size.
SQUARE = {"mut1", "mut2", "sru"}

CELLS = {
    "lstm_peephole": (PEEPHOLE, lambda P, x, s: ref_peephole(P, x, *s)),
    "lstm_nig": (NO_INPUT_GATE, lambda P, x, s: ref_peephole(P, x, *s, variant="nig")),
    "lstm_nfg": (NO_FORGET_GATE, lambda P, x, s: ref_peephole(P, x, *s, variant="nfg")),
    "lstm_cifg_peephole": (COUPLED_GATES,
                           lambda P, x, s: ref_peephole(P, x, *s, variant="cifg")),
    "lstm_nog": (NO_OUTPUT_GATE, lambda P, x, s: ref_peephole(P, x, *s, variant="nog")),
    "lstm_niaf": (NO_INPUT_ACT, lambda P, x, s: ref_peephole(P, x, *s, variant="niaf")),
    "lstm_noaf": (NO_OUTPUT_ACT, lambda P, x, s: ref_peephole(P, x, *s, variant="noaf")),
    "lstm_fgr": (FULL_GATE_RECURRENCE, lambda P, x, s: ref_fgr(P, x, *s)),
    "mut3": (MUT3, lambda P, x, s: ref_mut3(P, x, s)),
    "minlstm": (MINLSTM, lambda P, x, s: ref_minlstm(P, x, s)),
    "indrnn": (INDRNN, lambda P, x, s: ref_indrnn(P, x, s)),
    "mut1": (MUT1, lambda P, x, s: ref_mut1(P, x, s)),
    "mut2": (MUT2, lambda P, x, s: ref_mut2(P, x, s)),
    "janet": (JANET, lambda P, x, s: ref_janet(P, x, s)),
    "mgu_flax": (MGU_FLAX, lambda P, x, s: ref_mgu_flax(P, x, s)),
    "sru": (SRU, lambda P, x, s: ref_sru(P, x, *s)),
}


#: The catalogue's Greff cells (variants/greff_*.toml) and the cells above they must be:
#: the paper references and finite differences here are the catalogue's checks.
GREFF = {"greff_vanilla": "lstm_peephole", "greff_nig": "lstm_nig", "greff_nfg": "lstm_nfg",
         "greff_nog": "lstm_nog", "greff_niaf": "lstm_niaf", "greff_noaf": "lstm_noaf",
         "greff_cifg": "lstm_cifg_peephole", "greff_fgr": "lstm_fgr"}


@pytest.mark.parametrize("name", sorted(GREFF))
def test_catalogue_greff_cells_are_the_tested_equations(name):
    v = get_variant(name)
    assert v.is_equations and v.citation.startswith("Greff et al. 2017")
    assert v.cell_equations == spec(name, CELLS[GREFF[name]][0]).cell_equations
    # The forget bias starts at 1 where there is a forget gate, as in `lstm` (NP).
    assert v.initial_values == ({"b_f": 1.0} if "b_f" in v.param_shapes(I, H) else {})


@pytest.mark.parametrize("name, source, init", [
    ("mut3", "Jozefowicz et al. 2015", {}), ("minlstm", "Feng et al. 2024", {}),
    ("indrnn", "Li et al. 2018", {}), ("janet", "van der Westhuizen & Lasenby 2018", {}),
    ("mgu_flax", "Flax linen MGUCell", {"b_f": 1.0}), ("mut1", "Jozefowicz et al. 2015", {}),
    ("mut2", "Jozefowicz et al. 2015", {}), ("sru", "Lei et al. 2017", {})])
def test_catalogue_light_cells_are_the_tested_equations(name, source, init):
    v = get_variant(name)
    assert v.is_equations and v.citation.startswith(source) and v.initial_values == init
    assert v.cell_equations == spec(name, CELLS[name][0]).cell_equations


def test_ugrnn_of_its_paper_is_the_catalogue_no_reset():
    """Collins et al.'s UGRNN is the GRU without a reset gate: the catalogue's `no_reset`
    (so it is listed there, not added twice under a second name)."""
    layer = RecurrentLayer("no_reset", I, H, seed=4, dtype="float64")
    x, s0, _, _ = inputs(1, seed=3)
    y, sT = layer.forward(x, s0, keep=False)
    ry, rs = ref_ugrnn({k: p.copy() for k, p in layer.params.items()}, x, s0)
    np.testing.assert_allclose(y, ry, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(sT, rs, rtol=1e-12, atol=1e-13)


def test_fgr_states_are_h_then_the_order_of_assignment():
    v = spec("fgr", FULL_GATE_RECURRENCE)
    assert v.state_names == ("h", "i", "f", "c", "o")


@pytest.mark.parametrize("shape", SHAPES, ids=["in-place", "packed"])
@pytest.mark.parametrize("name", list(CELLS))
def test_new_cell_matches_its_paper(name, shape):
    equations, reference = CELLS[name]
    v = spec(f"{name}_paper", equations)  # not the built-in: no [init] here
    I_ = H if name in SQUARE else I
    layer = RecurrentLayer(v, I_, H, seed=5, dtype="float64")
    S = len(v.state_names)
    x, s0, dy, dsT = inputs(S, seed=1, shape=shape, I=I_)
    y, sT = layer.forward(x, s0, keep=False)
    P = {k: p.copy() for k, p in layer.params.items()}
    state = dict(zip(v.state_names, (s0,) if S == 1 else s0, strict=True))
    if name == "lstm_fgr":
        ry, rs = reference(P, x, (state["h"], state["c"], state["i"], state["f"],
                                  state["o"]))
        rs = dict(zip(("h", "c", "i", "f", "o"), rs, strict=True))
        rs = tuple(rs[s] for s in v.state_names)
    elif S == 2:
        ry, rs = reference(P, x, (state["h"], state["c"]))
    else:
        ry, rs = reference(P, x, state["h"])
        rs = (rs,)
    np.testing.assert_allclose(y, ry, rtol=1e-12, atol=1e-13)
    got = (sT,) if S == 1 else sT
    for g, r in zip(got, rs, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-13)


def _loss(layer, x, s0, dy, dsT):
    y, sT = layer.forward(x, s0, keep=False)
    sT = sT if isinstance(sT, tuple) else (sT,)
    dsT = dsT if isinstance(dsT, tuple) else (dsT,)
    return float(np.sum(y * dy) + sum(np.sum(a * b) for a, b in zip(sT, dsT, strict=True)))


@pytest.mark.parametrize("shape", SHAPES, ids=["in-place", "packed"])
@pytest.mark.parametrize("name", list(CELLS))
def test_new_cell_gradients_match_finite_differences(name, shape):
    equations, _ = CELLS[name]
    v = spec(f"{name}_paper", equations)  # not the built-in: no [init] here
    I_ = H if name in SQUARE else I
    layer = RecurrentLayer(v, I_, H, seed=7, dtype="float64")
    if name == "indrnn":  # keep the ReLU away from its kink at this step size
        layer.params["b_h"][:] = 0.5
    S = len(v.state_names)
    x, s0, dy, dsT = inputs(S, seed=2, shape=shape, I=I_)
    _, _, dx, ds0, grads = run(layer, x, s0, dy, dsT)

    def f():
        return _loss(layer, x, s0, dy, dsT)

    for k, p in layer.params.items():
        np.testing.assert_allclose(grads[k], _fd(f, p), rtol=1e-6, atol=1e-8, err_msg=k)
    np.testing.assert_allclose(dx, _fd(f, x), rtol=1e-6, atol=1e-8, err_msg="x")
    states = (s0,) if S == 1 else s0
    dstates = (ds0,) if S == 1 else ds0
    for s, arr, d in zip(v.state_names, states, dstates, strict=True):
        np.testing.assert_allclose(d, _fd(f, arr), rtol=1e-6, atol=1e-8, err_msg=s)


@pytest.mark.parametrize("name", ["lstm_peephole", "mut3", "minlstm"])
def test_new_cell_float32_and_any_thread_count(name, monkeypatch):
    """float32 follows float64 closely, and the bits do not depend on the threads."""
    import numba

    equations, _ = CELLS[name]
    v = spec(f"{name}_paper", equations)  # not the built-in: no [init] here
    T_, B_, H_ = 20, 64, 48  # enough rows for more than one row block
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T_, B_, I)).astype(np.float32)
    dy = rng.standard_normal((T_, B_, H_)).astype(np.float32)
    l32 = RecurrentLayer(v, I, H_, seed=1)
    l64 = RecurrentLayer(v, I, H_, seed=1, dtype="float64")
    outs = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        y, _ = l32.forward(x)
        l32.backward(dy)
        outs.append((y.copy(), l32.flat_grads.copy()))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert np.array_equal(outs[0][0], outs[1][0])
    assert np.array_equal(outs[0][1], outs[1][1])
    y64, _ = l64.forward(x.astype(np.float64))
    np.testing.assert_allclose(outs[0][0], y64, atol=2e-5)


def test_equations_spec_trains_from_a_file(tmp_path):
    """From spec file to training run: Adam on the adding task beats the baseline."""
    from gruablate.train import train

    path = tmp_path / "mut3.toml"
    path.write_text(spec("mut3", MUT3).to_toml(), encoding="utf-8")
    record = train(str(path), "adding", hidden=16, steps=150, batch=32, seed=0, lr=1e-2,
                   seq_len=10)
    assert record["status"] == "ok", record.get("error")
    assert record["metric"] < record["baseline"]


def test_a_cell_reading_x_element_wise_needs_input_size_equal_to_hidden():
    v = spec("mut1", MUT1)
    with pytest.raises(ValueError, match="input size must equal its hidden size"):
        RecurrentLayer(v, I, H)
    from gruablate.train import check_config

    with pytest.raises(ValueError, match="input size must equal"):
        check_config(v, "adding", hidden=16)  # the adding task's input is 2 wide


def test_cuda_prints_kernels_for_an_equations_spec():
    """The CUDA kernels come from the same graph (their runs are in tests/test_cuda.py);
    the text needs no GPU, and holds the printed passes, not the spec."""
    from gruablate.backends import get_backend

    v = spec("mut3", MUT3)
    assert get_backend("cuda").unsupported(v) is None
    text = get_backend("cuda").kernel_source(v, "float32")
    assert "def forward(" in text and "def backward(" in text and "grid.sync()" in text
    assert "U_r" not in text and "mut3" not in text


# ---------------------------------------------------------------- bad specs
BAD = [
    (["c' = tanh(W_c x + U_c c)"], "h' is missing"),
    (["h' = tanh(W_c x + U_c h + q)"], "unknown symbol 'q'"),
    (["h' = u ⊙ h + W_c x", "u = σ(W_u x)"], "u is used before it is assigned"),
    (["h' = tanh(W_c h + U_c h)"], "W_c multiplies x only"),
    (["h' = tanh(W_c x + U_c x)"], "input-sized"),
    (["h' = tanh(W_c x + U_c h + U_c (h ⊙ h))"], "two different operands"),
    (["h' = tanh(W_c x + U_c ⊙ h)"], "U_c is a matrix"),
    (["c' = c", "h' = tanh(W_c x + U_c h + c)"], "never updated"),
    (["c' = tanh(W_c x)", "h' = tanh(W_h x + U_h h)"], "c is never read"),
    (["h' = tanh(W_c x + U_c h) ** 2"], "unsupported syntax"),
    (["h' = exp(W_c x + U_c h)"], "unknown function 'exp'"),
    (["h' = tanh(W_c x + U_c h)", "h' = tanh(W_c x)"], "assigned twice"),
    (["b_c = σ(W_c x)", "h' = b_c ⊙ h"], "parameter name"),
    (["x = σ(W_c x)", "h' = x ⊙ h"], "x is the input"),
    (["q = σ(W_q x)", "h' = tanh(W_c x + U_c h)"], "q is assigned but never used"),
    (["h' = tanh(W_c x + b_c)"], "no recurrence"),
    (["i = σ(W_i x + p_i ⊙ c')", "c' = i ⊙ c", "h' = tanh(c') + U_h h"],
     "c' is used before it is assigned"),
    (["c = σ(W_c x)", "c' = c ⊙ h", "h' = tanh(U_h c)"], "cannot also be an intermediate"),
    (["h' = tanh(W_c x + U_c h + 1e400)"], "out of range"),
    (["h' = U_c h ⊙ h"], "never reads its input"),
    (["h' = tanh(W_c x + U_c h + d')"], "d' is not a state"),
    (["h' = tanh(W_c x + U_c h)", 7], "must be a string"),
    ([], "non-empty list"),
]


@pytest.mark.parametrize("equations, message", BAD, ids=[m for _, m in BAD])
def test_bad_equations_are_refused_with_a_message_naming_them(equations, message):
    from gruablate.errors import SpecError

    with pytest.raises(SpecError) as err:
        spec("bad", equations)
    text = str(err.value)
    assert message in text
    assert "\n" not in text
    if equations and isinstance(equations[0], str) and message != "h' is missing":
        assert "equation" in text


@pytest.mark.parametrize("attack", [
    "h' = __import__('os').system('true')",
    "h' = tanh(W_c x + U_c h)\nimport os",
    'h\' = tanh(W_c x + U_c h) # "',
    "h' = tanh(W_c x + U_c h); import os",
    "h' = tanh(W_c x + U_c h + b_c.__class__)",
])
def test_code_in_an_equation_is_refused_by_the_parser(attack):
    from gruablate.errors import SpecError

    with pytest.raises(SpecError, match="unsupported syntax"):
        spec("evil", [attack])


def test_switches_and_equations_do_not_mix():
    from gruablate.errors import SpecError

    with pytest.raises(SpecError, match="switches and equations do not mix"):
        Variant.from_dict({"name": "m", "reset": "after", "equations": INDRNN})
    with pytest.raises(SpecError, match="has switches, not equations"):
        Variant.from_dict({"name": "m", "family": "gru", "equations": INDRNN})
    with pytest.raises(SpecError, match="not a parameter"):
        Variant.from_dict({"name": "m", "equations": INDRNN, "init": {"b_q": 1.0}})
    with pytest.raises(SpecError, match="only vectors"):
        Variant.from_dict({"name": "m", "equations": INDRNN, "init": {"W_h": 1.0}})


def test_generated_code_holds_no_spec_text():
    """Names of the spec never reach the kernel source: it is printed from slots."""
    from gruablate.backends.cpu.kernels import kernel_source

    v = spec("weird", ["zebra = σ(W_zebra x + U_zebra h + b_zebra)",
                       "h' = zebra ⊙ h + (1 − zebra) ⊙ tanh(W_c x)"])
    text = kernel_source(v, "float64")
    assert "zebra" not in text and "weird" not in text


def test_variants_show_prints_equations_parameters_flops_and_backward(tmp_path):
    from click.testing import CliRunner

    from gruablate.cli import main

    path = tmp_path / "peep.toml"
    path.write_text(spec("lstm_peephole", PEEPHOLE).to_toml(), encoding="utf-8")
    out = CliRunner().invoke(main, ["variants", "show", str(path), "--backward"])
    assert out.exit_code == 0, out.output
    for text in ("c' = f ⊙ c + i ⊙ g", "p_o", "diagonal", "FLOPs", "backward pass 1",
                 "∂(W_o x)", "states: h, c"):
        assert text in out.output


def test_variants_show_kernel_for_an_equations_spec(tmp_path):
    from click.testing import CliRunner

    from gruablate.cli import main

    path = tmp_path / "mut3.toml"
    path.write_text(spec("mut3", MUT3).to_toml(), encoding="utf-8")
    cpu = CliRunner().invoke(main, ["variants", "show", str(path), "--kernel", "cpu"])
    assert cpu.exit_code == 0 and "def _fwd1" in cpu.output and "def _bwd2" in cpu.output
    cuda = CliRunner().invoke(main, ["variants", "show", str(path), "--kernel", "cuda"])
    assert cuda.exit_code == 0 and "def forward(" in cuda.output, cuda.output


def test_chrono_refuses_an_equations_spec_and_blocks_are_switch_only():
    from gruablate.init import initialise

    v = spec("mut3", MUT3)
    with pytest.raises(ValueError, match="which gate keeps memory"):
        initialise(RecurrentLayer(v, I, H), "chrono", seed=0, tmax=10)
    with pytest.raises(ValueError, match="no switch blocks"):
        _ = v.blocks
