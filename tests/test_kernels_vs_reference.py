"""Every built-in variant's compiled CPU kernels against the float64 NumPy reference."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from conftest import BUILTINS, as_tuple, input_size, random_state

from gruablate import RecurrentLayer, Variant
from gruablate.cells import reference

SIZES = [(1, 1, 1, 1), (5, 3, 4, 6), (7, 2, 9, 13), (2, 5, 3, 1), (11, 1, 1, 17)]


#: A float32 run may be this many times further from the float64 reference than the
#: reference moves when every parameter is perturbed by float32 rounding (measured:
#: at most 5x over 30 draws of the most sensitive case, ligru at T = 11).
FLOAT32_MARGIN = 20.0


def _float32_sensitivity(variant, params64, x64, state64, y_ref) -> float:
    """How far float32-sized rounding can move this draw's outputs: the reference on
    parameters perturbed by one float32 ulp, relative, at random (the largest of four).

    Most draws move by ~1e-7; a chaotic one (ligru's ReLU recurrence with N(0, 0.8)
    weights) amplifies rounding to ~1e-5, past any fixed tolerance that still catches a
    wrong equation, whose error is of the order of the outputs themselves.
    """
    rng = np.random.default_rng(0)
    spread = 0.0
    for _ in range(4):
        moved = {k: v * (1 + rng.uniform(-(2.0**-24), 2.0**-24, v.shape))
                 for k, v in params64.items()}
        y_moved, _ = reference.forward(variant, moved, x64, state64)
        spread = max(spread, float(np.abs(y_moved - y_ref).max()))
    return spread


def _check(variant, size, dtype):
    T, B, I, H = size
    I = input_size(variant, I, H)
    rng = np.random.default_rng(zlib.crc32(f"{variant}{size}{dtype}".encode()))
    layer = RecurrentLayer(variant, I, H, seed=2, dtype=dtype)
    layer.flat_params[:] = rng.normal(0.0, 0.8, layer.flat_params.size)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    s0 = random_state(layer, B, rng)
    y, last = layer.forward(x, s0)
    params64 = {k: v.astype(np.float64) for k, v in layer.params.items()}
    s0_64 = tuple(s.astype(np.float64) for s in as_tuple(s0))
    state64 = s0_64 if len(s0_64) > 1 else s0_64[0]
    y_ref, last_ref = reference.forward(layer.variant, params64, x.astype(np.float64), state64)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=2e-5, atol=2e-5)
    if dtype == "float32":
        tol["atol"] = max(tol["atol"], FLOAT32_MARGIN * _float32_sensitivity(
            layer.variant, params64, x.astype(np.float64), state64, y_ref))
    np.testing.assert_allclose(y, y_ref, **tol)
    for ours, ref in zip(as_tuple(last), as_tuple(last_ref), strict=True):
        np.testing.assert_allclose(ours, ref, **tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_matches_reference(name, size, dtype):
    _check(name, size, dtype)


USER_SPECS = [
    {"name": "lstm_hb", "family": "lstm", "gate_inputs": "hb"},
    {
        "name": "lstm_relu_cifg",
        "family": "lstm",
        "coupled_input_forget": True,
        "candidate_activation": "relu",
        "gate_inputs": "h",
    },
    {
        "name": "scan_uncoupled",
        "family": "gru",
        "reset": "none",
        "update": "uncoupled",
        "gate_inputs": "xb",
        "candidate_inputs": "x",
        "candidate_activation": "tanh",
    },
    {"name": "after_hb", "family": "gru", "reset": "after", "gate_inputs": "hb"},
    {
        "name": "tied_relu",
        "family": "gru",
        "reset": "tied",
        "candidate_activation": "relu",
        "gate_inputs": "h",
    },
    {"name": "rnn_relu", "family": "rnn", "candidate_activation": "relu"},
    {"name": "lstm_x_cand", "family": "lstm", "candidate_inputs": "x", "gate_inputs": "xb"},
]


@pytest.mark.parametrize("spec", USER_SPECS, ids=lambda s: s["name"])
def test_user_specs_compile_and_match_reference(spec):
    variant = Variant.from_dict(spec)
    _check(variant, (6, 3, 4, 5), "float64")
