"""Chrono initialisation of equations specs: the biases a spec's ``[chrono]`` names.

The switch specs' chrono (and the other schemes) are tested in ``test_training.py``;
the ``[chrono]`` table's parsing and refusals in ``test_spec.py``.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from gruablate import RecurrentLayer, get_variant
from gruablate.cells.spec import Variant
from gruablate.cli import main
from gruablate.init import initialise
from gruablate.model import Model

TMAX = 50
JANET = [
    "s = W_f x + U_f h + b_f",
    "g = tanh(W_c x + U_c h + b_c)",
    "h' = σ(s) ⊙ h + (1 − σ(s − 1)) ⊙ g",
]


def _layer(variant, hidden: int = 256) -> RecurrentLayer:
    return RecurrentLayer(variant, 3, hidden, dtype="float64")


def _timescales_ok(b: np.ndarray, tmax: int = TMAX) -> None:
    """``b = log U(1, tmax − 1)``: in ``[0, log(tmax − 1)]``, e^b uniform (mean tmax/2)."""
    assert b.min() >= 0.0 and b.max() <= math.log(tmax - 1)
    assert abs(np.exp(b).mean() - tmax / 2) < 3


def test_janet_declares_b_f_and_chrono_sets_it_alone():
    assert get_variant("janet").chrono == (("b_f",), ())
    layer, torch = _layer("janet"), _layer("janet")
    initialise(layer, "chrono", seed=0, tmax=TMAX)
    initialise(torch, "torch", seed=0)
    _timescales_ok(layer.params["b_f"])
    for name in layer.params:  # every other parameter: the torch draw, untouched
        if name != "b_f":
            np.testing.assert_array_equal(layer.params[name], torch.params[name], err_msg=name)
    assert not np.array_equal(layer.params["b_f"], torch.params["b_f"])


def test_write_biases_get_minus_the_same_draw():
    v = Variant.from_dict({"name": "jw", "equations": JANET,
                           "chrono": {"keep": ["b_f"], "write": ["b_c"]}})
    layer = _layer(v)
    initialise(layer, "chrono", seed=1, tmax=TMAX)
    _timescales_ok(layer.params["b_f"])
    np.testing.assert_array_equal(layer.params["b_c"], -layer.params["b_f"])
    # The keep list alone draws the same time scales: the write list adds no draw.
    alone = _layer("janet")
    initialise(alone, "chrono", seed=1, tmax=TMAX)
    np.testing.assert_array_equal(alone.params["b_f"], layer.params["b_f"])


def test_several_keep_biases_share_one_draw():
    v = Variant.from_dict({"name": "jk", "equations": JANET,
                           "chrono": {"keep": ["b_f", "b_c"]}})
    layer = _layer(v)
    initialise(layer, "chrono", seed=2, tmax=TMAX)
    np.testing.assert_array_equal(layer.params["b_c"], layer.params["b_f"])


def test_chrono_is_deterministic_for_a_seed():
    a, b, c = _layer("janet", 8), _layer("janet", 8), _layer("janet", 8)
    initialise(a, "chrono", seed=7, tmax=TMAX)
    initialise(b, "chrono", seed=7, tmax=TMAX)
    initialise(c, "chrono", seed=8, tmax=TMAX)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
    assert not np.array_equal(a.params["b_f"], c.params["b_f"])


def test_chrono_replaces_an_init_constant_on_the_same_bias():
    v = Variant.from_dict({"name": "ji", "equations": JANET, "init": {"b_f": 1.0, "b_c": 0.5},
                           "chrono": {"keep": ["b_f"]}})
    layer = _layer(v)
    initialise(layer, "torch", seed=0)
    assert (layer.params["b_f"] == 1.0).all()
    initialise(layer, "chrono", seed=0, tmax=TMAX)
    _timescales_ok(layer.params["b_f"])
    assert (layer.params["b_c"] == 0.5).all()  # [init] on a bias chrono does not name: kept


def test_each_layer_of_a_model_draws_its_own_time_scales():
    model = Model("janet", input_size=3, hidden=64, output_size=2, layers=2, init="chrono",
                  tmax=TMAX)
    b0, b1 = (layer.params["b_f"] for layer in model.layers)
    for b in (b0, b1):  # 64 units: the range only (their mean is too noisy to check)
        assert b.min() >= 0.0 and b.max() <= math.log(TMAX - 1)
    assert not np.array_equal(b0, b1)


def test_an_equations_spec_without_chrono_is_refused_saying_how_to_declare_it():
    v = Variant.from_dict({"name": "nj", "equations": JANET})
    with pytest.raises(ValueError, match=r'which gate keeps memory.*\[chrono\] keep = \["b_f"\]'):
        initialise(_layer(v, 4), "chrono", seed=0, tmax=10)
    with pytest.raises(ValueError, match="needs tmax"):
        initialise(_layer("janet", 4), "chrono", seed=0)


@pytest.mark.parametrize("variant", ["lstm", "lstm_cifg", "gru", "uncoupled", "mgu", "ligru"])
def test_switch_specs_draw_exactly_as_before(variant):
    """The switch specs' chrono, written out as it was before equations specs took it:
    the same numbers for the same seed."""
    seed, tmax, H = 3, 20, 6
    got, want = _layer(variant, H), _layer(variant, H)
    initialise(got, "chrono", seed=seed, tmax=tmax)
    want.reset_parameters(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    ts = np.log(rng.uniform(1.0, tmax - 1.0, H))
    v = want.variant
    memory = "b_f" if v.family == "lstm" or v.reset == "tied" else "b_u"
    want.params[memory][:] = -ts if v.reset == "tied" else ts
    for writer in ("b_i", "b_w"):
        if writer in want.params:
            want.params[writer][:] = -ts
    for name in want.params:
        np.testing.assert_array_equal(got.params[name], want.params[name], err_msg=name)


def test_cli_trains_janet_with_chrono(tmp_path):
    out = tmp_path / "rec.json"
    result = CliRunner().invoke(main, [
        "run", "train", "--variant", "janet", "--init", "chrono", "--task", "copy",
        "--delay", "3", "--hidden", "4", "--steps", "2", "--batch", "4",
        "--out", str(out), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["status"] == "ok" and record["init"] == "chrono"
    assert record["variant_spec"]["chrono"] == {"keep": ["b_f"]}


@pytest.mark.parametrize("variant, message", [
    ("mut3", r'\[chrono\] keep = \["b_f"\]'),
    ("rnn", "needs a keep, forget or tied write gate with a bias"),
])
def test_cli_refuses_chrono_without_a_gate_to_set_before_training(tmp_path, variant, message):
    result = CliRunner().invoke(main, [
        "run", "train", "--variant", variant, "--init", "chrono", "--task", "adding",
        "--seq-len", "5", "--hidden", "4", "--steps", "2", "--out", str(tmp_path),
        "--no-progress",
    ])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert re.search(message, result.output) and not any(tmp_path.iterdir())
