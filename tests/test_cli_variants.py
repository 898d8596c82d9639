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
    result = CliRunner().invoke(main, ["variants", "list"], env={"COLUMNS": "220"})
    assert result.exit_code == 0
    assert "lstm_cifg" in result.output and "greff_fgr" in result.output
    assert "family" in result.output and "source" in result.output
    assert "equations" in result.output and "Greff et al. 2017" in result.output


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


def test_show_kernel_prints_the_generated_source(tmp_path):
    from gruablate import get_variant
    from gruablate.backends.cpu.kernels import kernel_source
    from gruablate.backends.cuda.cell_source import cell_source

    spec = tmp_path / "mine.toml"
    spec.write_text('name = "mine"\nfamily = "gru"\nreset = "none"\n')
    runner = CliRunner()
    cpu = runner.invoke(main, ["variants", "show", "mgu", "--kernel", "cpu"])
    assert cpu.exit_code == 0 and cpu.output == kernel_source(get_variant("mgu"), "float32")
    assert "def backward(" in cpu.output
    cuda = runner.invoke(main, ["variants", "show", str(spec), "--kernel", "cuda",
                                "--dtype", "float64"])
    assert cuda.exit_code == 0
    assert cuda.output == cell_source(get_variant(str(spec)), "float64")
    assert "@cuda.jit" in cuda.output and "def backward(" in cuda.output
    bad = runner.invoke(main, ["variants", "show", "gru", "--kernel", "tpu"])
    assert bad.exit_code == 2 and "'--kernel'" in bad.output


def test_a_cell_reading_x_element_wise_is_shown_at_input_size_hidden():
    runner = CliRunner()
    shown = runner.invoke(main, ["variants", "show", "mut1", "--hidden", "16"])
    assert shown.exit_code == 0 and "parameters at I=16, H=16:" in shown.output
    bad = runner.invoke(main, ["variants", "show", "mut1", "--input-size", "3"])
    assert bad.exit_code == 2 and "must equal --hidden (64)" in bad.output
    assert "Traceback" not in bad.output
    rows = json.loads(runner.invoke(main, ["variants", "list", "--json"]).output)
    mut1 = next(r for r in rows if r["name"] == "mut1")
    assert mut1["params"] == 4 * 64 * 64 + 3 * 64  # W_z, W_r, U_r, U_h at I = H, 3 biases
