"""The variant spec: catalogue, validation, TOML round trip, equations, counts."""

from __future__ import annotations

import pytest

import gruablate
from gruablate import SpecError, Variant, get_variant, list_variants

REQUIRED = {
    "gru",
    "gru_reset_after",
    "no_reset",
    "uncoupled",
    "gru1",
    "gru2",
    "gru3",
    "mgu",
    "ligru",
    "mingru",
    "rnn",
    "lstm",
    "lstm_cifg",
}


def test_catalogue_has_every_required_variant():
    assert set(list_variants()) >= REQUIRED
    for name in list_variants():
        v = get_variant(name)
        assert v.name == name
        assert v.description and v.citation, name


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_toml_round_trip(name, tmp_path):
    v = get_variant(name)
    path = tmp_path / f"{name}.toml"
    path.write_text(v.to_toml())
    assert get_variant(str(path)) == v


def test_user_spec_file_is_accepted_wherever_a_name_is(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\nfamily = "lstm"\ngate_inputs = "hb"\nforget_bias = 0.0\n')
    layer = gruablate.RecurrentLayer(str(path), 3, 4)
    assert layer.variant.name == "mine"
    assert set(layer.params) == set(layer.variant.param_shapes(3, 4))
    assert "W_i" not in layer.params and "U_i" in layer.params
    assert (layer.params["b_f"] == 0).all()


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "x", "family": "gru", "colour": "red"}, "unknown key 'colour'"),
        (
            {"name": "x", "family": "gru", "reset": "sideways"},
            "bad value 'sideways' for key 'reset'",
        ),
        ({"name": "x", "family": "transformer"}, "bad value 'transformer' for key 'family'"),
        ({"family": "gru"}, "missing key 'name'"),
        ({"name": "x"}, "missing key 'family'"),
        (
            {"name": "x", "family": "rnn", "reset": "before"},
            "'reset' does not apply to family 'rnn'",
        ),
        ({"name": "x", "family": "gru", "forget_bias": 1.0}, "'forget_bias' does not apply"),
        ({"name": "x", "family": "lstm", "forget_bias": "one"}, "'forget_bias'.*must be a number"),
        ({"name": "x", "family": "lstm", "coupled_input_forget": 1}, "must be true or false"),
        (
            {"name": "x", "family": "gru", "reset": "before", "candidate_inputs": "x"},
            "reset 'before' needs a candidate that sees the state",
        ),
        (
            {"name": "x", "family": "gru", "reset": "tied", "update": "uncoupled"},
            "reset 'tied'.*update 'uncoupled'",
        ),
        ({"name": "x", "family": "rnn", "candidate_inputs": "x"}, "no recurrence"),
    ],
)
def test_invalid_specs_are_refused_naming_the_problem(spec, message):
    with pytest.raises(SpecError, match=message):
        Variant.from_dict(spec)


def test_malformed_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nfamily = \n')
    with pytest.raises(SpecError, match="malformed TOML"):
        get_variant(str(bad))
    with pytest.raises(SpecError, match="not found"):
        get_variant(str(tmp_path / "absent.toml"))
    with pytest.raises(SpecError, match="unknown variant 'nope'"):
        get_variant("nope")


def test_spec_errors_are_value_errors():
    assert issubclass(SpecError, ValueError)


def test_equations_are_generated_from_the_switches():
    assert get_variant("gru").equations() == [
        "r = σ(W_r x + U_r h + b_r)",
        "u = σ(W_u x + U_u h + b_u)",
        "ĥ = tanh(W_c x + U_c (r ⊙ h) + b_c)",
        "h' = u ⊙ h + (1 − u) ⊙ ĥ",
    ]
    assert "r ⊙ (U_c h + b_hc)" in get_variant("gru_reset_after").equations()[2]
    assert get_variant("gru3").equations()[0] == "r = σ(b_r)"
    assert get_variant("mingru").equations()[1] == "ĥ = W_c x + b_c"
    assert get_variant("ligru").equations()[1].startswith("ĥ = ReLU(")
    assert get_variant("rnn").equations() == ["h' = tanh(W_c x + U_c h + b_c)"]
    assert "i = 1 − f" in get_variant("lstm_cifg").equations()
    latex = get_variant("mgu").equations("latex")
    assert r"\sigma\left(W_{f} x + U_{f} h + b_{f}\right)" in latex[0]
    # A user variant renders its own equations with no code: an LSTM whose gates see no input.
    v = Variant.from_dict({"name": "u", "family": "lstm", "gate_inputs": "hb"})
    assert v.equations()[0] == "i = σ(U_i h + b_i)"


def test_parameter_counts_follow_the_shapes():
    I, H = 5, 7
    assert get_variant("gru").param_count(I, H) == 3 * (H * I + H * H + H)
    assert get_variant("gru_reset_after").param_count(I, H) == 3 * (H * I + H * H + H) + H
    assert get_variant("lstm").param_count(I, H) == 4 * (H * I + H * H + H)
    assert get_variant("lstm_cifg").param_count(I, H) == 3 * (H * I + H * H + H)
    assert get_variant("mingru").param_count(I, H) == 2 * (H * I + H)
    assert get_variant("gru2").param_count(I, H) == 3 * H * H + H * I + H
    assert get_variant("rnn").param_count(I, H) == H * I + H * H + H
    assert get_variant("mingru").is_linear_recurrence
    assert not get_variant("gru").is_linear_recurrence


def test_flops_count_products_only():
    v = get_variant("gru")
    assert v.flops(4, 8, 2, 10) == 2 * 2 * 8 * (4 * 3 + 8 * 3) * 10
    assert v.flops(4, 8, 2, 10, mode="train") == 3 * v.flops(4, 8, 2, 10)
    with pytest.raises(ValueError, match="mode"):
        v.flops(4, 8, 2, 10, mode="fast")
