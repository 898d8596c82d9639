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


# ---------------------------------------------------------------- [chrono]
JANET = [
    "s = W_f x + U_f h + b_f",
    "g = tanh(W_c x + U_c h + b_c)",
    "h' = σ(s) ⊙ h + (1 − σ(s − 1)) ⊙ g",
]
PEEP = ["h' = tanh(W_c x + U_c h + p_c ⊙ h + b_c)"]
#: The identity (spec_hash) of the 29 built-ins there were when equations specs took a
#: [chrono] table, which changed janet's only (it was 0bad1d871e88). Any other change
#: here renames that built-in's rows in every run directory: update it only on purpose.
BUILTIN_DIGESTS = {
    "greff_cifg": "a4beff7bb8df", "greff_fgr": "700b18c1bfe0", "greff_nfg": "e0ad8ad43314",
    "greff_niaf": "e37abe85c4cd", "greff_nig": "98632b3ae95b", "greff_noaf": "d1c78b3de447",
    "greff_nog": "03d3ec867cd1", "greff_vanilla": "3a55652c85c2", "gru": "b8393937e701",
    "gru1": "1fee52a89e3c", "gru2": "4797761f19f0", "gru3": "7e668d536a8c",
    "gru_reset_after": "b8c84f2f7ffb", "indrnn": "821b2599e028", "janet": "905f8c2bc563",
    "ligru": "250bb37ee3c1", "lstm": "c022ecb114bb", "lstm_cifg": "a068aa830efe",
    "mgu": "9bf2919b14f6", "mgu_flax": "34aa5eeea750", "mingru": "d23fd2aa893a",
    "minlstm": "da04ca8c4914", "mut1": "30ba5bdbf394", "mut2": "720914788329",
    "mut3": "5a48768c2018", "no_reset": "20b8f2765147", "rnn": "756ee6dff7f5",
    "sru": "f6dfce3906c8", "uncoupled": "93a116844bc8",
}


def _chrono_spec(chrono, equations=JANET, **extra):
    return {"name": "j", "equations": equations, "chrono": chrono, **extra}


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "x", "family": "lstm", "chrono": {"keep": ["b_f"]}},
         "key 'chrono'.* is for equations specs"),
        (_chrono_spec({"keep": ["b_q"]}), "chrono keep 'b_q'.* is not a parameter of the"),
        (_chrono_spec({"keep": ["b_f"], "write": ["b_i"]}),
         "chrono write 'b_i'.* is not a parameter"),
        (_chrono_spec({"keep": ["p_c"]}, PEEP), "chrono keep 'p_c'.*only biases"),
        (_chrono_spec({"keep": ["W_f"]}), "chrono keep 'W_f'.*only biases"),
        (_chrono_spec({"keep": ["b_f"], "write": ["U_c"]}), "chrono write 'U_c'.*only biases"),
        (_chrono_spec({"keep": ["b_f", "b_f"]}), "chrono keep 'b_f'.*named twice"),
        (_chrono_spec({"keep": ["b_f"], "write": ["b_f"]}), "chrono write 'b_f'.*named twice"),
        (_chrono_spec({"keep": []}), "chrono 'keep'.*at least one bias"),
        (_chrono_spec({"write": ["b_c"]}), "chrono 'keep'.*at least one bias"),
        (_chrono_spec({}), "chrono 'keep'.*at least one bias"),
        (_chrono_spec({"keep": ["b_f"], "forget": ["b_c"]}),
         r"unknown key 'forget' in \[chrono\].*known keys: keep, write"),
        (_chrono_spec(["b_f"]), "key 'chrono'.*must be a table"),
        (_chrono_spec("b_f"), "key 'chrono'.*must be a table"),
        (_chrono_spec({"keep": "b_f"}), "chrono 'keep'.*must be a list of bias names"),
        (_chrono_spec({"keep": [1]}), "chrono 'keep'.*must be a list of bias names"),
        (_chrono_spec({"keep": ["b_f"], "write": "b_c"}), "chrono 'write'.*must be a list"),
        (_chrono_spec({"keep": [["b_f"]]}), "chrono 'keep'.*must be a list of bias names"),
    ],
)
def test_chrono_tables_are_refused_naming_the_problem(spec, message):
    with pytest.raises(SpecError, match=message) as err:
        Variant.from_dict(spec, source="j.toml")
    assert "\n" not in str(err.value) and "j.toml" in str(err.value)


def test_chrono_table_is_canonical_hashable_and_round_trips(tmp_path):
    from gruablate.cells.identity import spec_digest

    a = Variant.from_dict(_chrono_spec({"keep": ["b_f", "b_c"]}))
    b = Variant.from_dict(_chrono_spec({"keep": ["b_c", "b_f"], "write": []}))
    assert a.chrono == b.chrono == (("b_c", "b_f"), ()) and a == b and hash(a) == hash(b)
    assert a.to_dict()["chrono"] == {"keep": ["b_c", "b_f"]}
    w = Variant.from_dict(_chrono_spec({"keep": ["b_f"], "write": ["b_c"]}))
    assert w.to_dict()["chrono"] == {"keep": ["b_f"], "write": ["b_c"]}
    for v in (a, w):
        path = tmp_path / "j.toml"
        path.write_text(v.to_toml(), encoding="utf-8")
        assert Variant.from_toml(path) == v
    plain = Variant.from_dict({"name": "j", "equations": JANET})
    assert plain.chrono == () and "chrono" not in plain.to_dict()
    assert "[chrono]" not in plain.to_toml()
    assert len({spec_digest(v.to_dict()) for v in (plain, a, w)}) == 3


def test_janet_declares_chrono_and_round_trips(tmp_path):
    v = get_variant("janet")
    assert v.chrono == (("b_f",), ())
    path = tmp_path / "janet_copy.toml"
    path.write_text(v.to_toml().replace('"janet"', '"janet_copy"', 1), encoding="utf-8")
    back = get_variant(str(path))
    assert back.chrono == v.chrono and back.cell_equations == v.cell_equations


def test_builtin_identities_are_unchanged():
    from gruablate.cells.identity import spec_digest

    got = {n: spec_digest(get_variant(n).to_dict()) for n in BUILTIN_DIGESTS}
    assert got == BUILTIN_DIGESTS  # built-ins added since are not pinned here
    janet = {k: v for k, v in get_variant("janet").to_dict().items() if k != "chrono"}
    assert spec_digest(janet) == "0bad1d871e88"  # only the [chrono] table was added
