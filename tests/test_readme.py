"""The README's catalogue table is the one generated from the specs, not a drifting copy."""

from pathlib import Path

from gruablate.cells.catalogue import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_catalogue_is_generated():
    text = README.read_text(encoding="utf-8")
    inner = text.split("<!-- catalogue:start -->\n", 1)[1].split("\n<!-- catalogue:end -->", 1)[0]
    assert inner == markdown_table()


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci in README.read_text(encoding="utf-8")
