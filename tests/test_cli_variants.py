"""`gruablate variants list|show` through Click's runner."""

from __future__ import annotations

import json

from click.testing import CliRunner

from gruablate import list_variants
from gruablate.cli import main


def test_list_json_has_every_variant():
    result = CliRunner().invoke(main, ["variants", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == list_variants()
    gru = next(r for r in rows if r["name"] == "gru")
    assert gru["params"] == 3 * (64 * 32 + 64 * 64 + 64)
    assert gru["equations"][-1] == "h' = u ⊙ h + (1 − u) ⊙ ĥ"


def test_list_table():
    result = CliRunner().invoke(main, ["variants", "list"])
    assert result.exit_code == 0
    assert "lstm_cifg" in result.output


def test_show_name_and_file(tmp_path):
    result = CliRunner().invoke(
        main, ["variants", "show", "mgu", "--hidden", "8", "--input-size", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "ĥ = tanh(W_c x + U_c (f ⊙ h) + b_c)" in result.output
    assert "total  " + str(2 * (8 * 2 + 8 * 8 + 8)) in result.output
    spec = tmp_path / "v.toml"
    spec.write_text(
        'name = "v"\nfamily = "gru"\nreset = "none"\ncandidate_inputs = "x"\ngate_inputs = "xb"\n'
    )
    result = CliRunner().invoke(main, ["variants", "show", str(spec)])
    assert result.exit_code == 0, result.output
    assert "scan" in result.output


def test_show_errors_are_one_line_usage_errors(tmp_path):
    result = CliRunner().invoke(main, ["variants", "show", "nope"])
    assert result.exit_code == 2
    assert "Error: unknown variant 'nope'" in result.output
    assert "Traceback" not in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    result = CliRunner().invoke(main, ["variants", "show", str(bad)])
    assert result.exit_code == 2 and "malformed TOML" in result.output
