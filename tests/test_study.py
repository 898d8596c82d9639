"""Study grids: parsing, TOML configs, overrides, deterministic cell ids, bad input."""

from __future__ import annotations

import pytest

import gruablate
from gruablate.study import (
    DEFAULT_STUDY,
    Study,
    StudyError,
    load_study,
    parse_ints,
    parse_names,
    parse_option_value,
    settings_conflict,
)


def test_parse_ints_lists_ranges_and_steps():
    assert parse_ints("0-2", "seeds") == [0, 1, 2]
    assert parse_ints("32,64, 128", "hidden") == [32, 64, 128]
    assert parse_ints("8-32:8,4", "hidden") == [8, 16, 24, 32, 4]
    assert parse_ints("1,1,0-1", "seeds") == [1, 0]  # duplicates dropped, order kept
    assert parse_ints([3, "5-6"], "seeds") == [3, 5, 6]
    assert parse_ints(7, "seeds") == [7]


@pytest.mark.parametrize("bad, words", [
    ("3-1", "ends before it starts"), ("1-", "malformed"), ("a", "malformed"),
    ("1-4:0", "step"), ("", "malformed"), ("-1", "malformed"), ("1.5", "malformed"),
])
def test_parse_ints_refuses_malformed(bad, words):
    with pytest.raises(StudyError, match=words) as err:
        parse_ints(bad, "seeds")
    assert "seeds" in str(err.value) and "\n" not in str(err.value)


def test_parse_names_and_option_values():
    assert parse_names("gru, lstm,gru", "variants") == ["gru", "lstm"]
    with pytest.raises(StudyError, match="non-empty"):
        parse_names("gru,,lstm", "variants")
    assert parse_option_value("5") == 5
    assert parse_option_value("0.5") == 0.5
    assert parse_option_value("true") is True
    assert parse_option_value("rows") == "rows"  # bare words stay strings


def test_default_study_is_the_quick_grid():
    s = load_study()
    assert s.name == "quick"
    cells = s.cells()
    expect = (len(DEFAULT_STUDY["variants"]) * len(DEFAULT_STUDY["tasks"])
              * len(DEFAULT_STUDY["seeds"]) * len(DEFAULT_STUDY["hidden"]))
    assert len(cells) == expect == 60
    assert {c.config["variant"] for c in cells} == set(DEFAULT_STUDY["variants"])
    assert len({c.id for c in cells}) == len(cells)
    # Task defaults are filled in from the task registry, the one source of options.
    copy = next(c for c in cells if c.config["task"] == "copy")
    assert copy.config["task_options"] == {"delay": 20, "symbols": 5, "alphabet": 8}


def test_cell_ids_are_deterministic_and_follow_the_configuration():
    a = {c.id for c in load_study(overrides={"name": "x"}).cells()}
    b = {c.id for c in load_study(overrides={"name": "y"}).cells()}
    assert a == b  # the name is not part of a cell: a cell is its configuration
    c = {c.id for c in load_study(overrides={"steps": 601}).cells()}
    assert not a & c
    # An option spelled out at its default is the same cell as one left out.
    d = load_study(overrides={"tasks": "copy"}, task_options={"copy": {"alphabet": 8}})
    assert {c.id for c in d.cells()} <= a
    # Settings added later (dropout, zoneout) at their default are no part of a cell,
    # so the ids stored runs were written under stay as they were.
    e = load_study(overrides={"name": "x", "dropout": 0.0, "zoneout": 0.0})
    assert {c.id for c in e.cells()} == a


def test_cell_ids_of_the_default_study_are_pinned():
    # The ids the quick study's cells had before dropout and zoneout became settings:
    # a run directory of that time must still find its records.
    ids = [c.id for c in load_study().cells()]
    assert ids[:2] == ["gru-adding-h32-l1-s0-cpu-2b12ba5215",
                       "gru-adding-h32-l1-s1-cpu-9fee6f07de"]


def test_cell_id_includes_the_spec_switches(tmp_path):
    spec = tmp_path / "mine.toml"
    spec.write_text('name = "mine"\nfamily = "gru"\nreset = "none"\n')
    one = load_study(overrides={"variants": str(spec)}).cells()[0].id
    spec.write_text('name = "mine"\nfamily = "gru"\nreset = "after"\n')
    two = load_study(overrides={"variants": str(spec)}).cells()[0].id
    assert one.startswith("mine-") and two.startswith("mine-") and one != two


def test_config_file_with_task_tables_and_overrides(tmp_path):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "mine.toml").write_text('name = "mine"\nfamily = "rnn"\n')
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        'name = "demo"\nvariants = ["gru", "specs/mine.toml"]\nseeds = "0-2"\n'
        'hidden = [8, 16]\nsteps = 50\n'
        '[tasks.adding]\nseq_len = 12\n[tasks.copy]\ndelay = 4\nsteps = 80\n'
    )
    s = load_study(cfg)
    assert s.name == "demo"
    assert [v.name for v in s.variants] == ["gru", "mine"]
    assert s.task_settings["adding"]["steps"] == 50
    assert s.task_settings["copy"]["steps"] == 80  # a task's own setting
    assert len(s.cells()) == 2 * 2 * 2 * 3
    # Options override the file; a setting given on the command line wins everywhere.
    t = load_study(cfg, overrides={"seeds": "5", "steps": 10, "tasks": "copy"},
                   task_options={"copy": {"delay": 6}})
    # ...and make another study, with a run directory of its own.
    assert t.name.startswith("demo-") and t.name != "demo" and t.seeds == (5,)
    assert t.name == load_study(cfg, overrides={"seeds": "5", "steps": 10, "tasks": "copy"},
                                task_options={"copy": {"delay": 6}}).name
    assert load_study(cfg, overrides={"seeds": "5", "name": "mine"}).name == "mine"
    assert list(t.tasks) == ["copy"] and t.tasks["copy"]["delay"] == 6
    assert t.task_settings["copy"]["steps"] == 10


def test_hidden_sizes_per_variant_for_equal_parameter_counts():
    s = Study.from_dict({"variants": ["gru", "mgu"], "hidden": [8],
                         "hidden_by_variant": {"mgu": [8, 10]}, "seeds": [0],
                         "tasks": ["adding"]})
    assert [(c.config["variant"], c.config["hidden"]) for c in s.cells()] == [
        ("gru", 8), ("mgu", 8), ("mgu", 10)]
    assert s.to_dict()["hidden_by_variant"] == {"mgu": [8, 10]}
    with pytest.raises(StudyError, match="names 'lstm', which is not one of"):
        Study.from_dict({"variants": ["gru"], "hidden_by_variant": {"lstm": [4]}})
    with pytest.raises(StudyError, match="at least 1"):
        Study.from_dict({"variants": ["gru"], "hidden_by_variant": {"gru": [0]}})


def test_overridden_default_gets_its_own_name():
    s = load_study(overrides={"seeds": "0"})
    assert s.name.startswith("sweep-") and s.name == load_study(overrides={"seeds": "0"}).name
    assert load_study(overrides={"seeds": "0", "name": "mine"}).name == "mine"


@pytest.mark.parametrize("overrides, words", [
    ({"variants": "nope"}, "unknown variant 'nope'"),
    ({"tasks": "nope"}, "unknown task 'nope'"),
    ({"backends": "tpu"}, "unknown backend 'tpu'"),
    ({"hidden": "0"}, "at least 1"),
    ({"steps": 0}, "steps"),
    ({"lr": -1.0}, "lr"),
    ({"init": "xavier"}, "init"),
    ({"name": "a/b"}, "study name"),
    ({"variants": "gru,gru.toml"}, "not found"),
])
def test_bad_study_values_are_one_line_errors(overrides, words):
    with pytest.raises(ValueError, match=words) as err:
        load_study(overrides=overrides)
    assert "\n" not in str(err.value)


def test_bad_task_options_fail_before_any_cell_runs():
    with pytest.raises(StudyError, match="delay must be at least 1"):
        load_study(task_options={"copy": {"delay": 0}})
    with pytest.raises(StudyError, match="has no option 'dela'"):
        load_study(task_options={"copy": {"dela": 3}})
    with pytest.raises(StudyError, match="not among the study's tasks"):
        load_study(task_options={"digits": {"mode": "rows"}})


def test_bad_config_files(tmp_path):
    with pytest.raises(StudyError, match="not found"):
        load_study(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("variants = [\n")
    with pytest.raises(StudyError, match="malformed TOML"):
        load_study(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('variant = ["gru"]\n')
    with pytest.raises(StudyError, match="unknown study key 'variant'"):
        load_study(unknown)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(StudyError, match="cannot read"):
        load_study(binary)


def test_settings_conflict_allows_growth_but_not_other_settings():
    base = load_study(overrides={"name": "g"})
    grown = load_study(overrides={"name": "g", "seeds": "0-4", "variants": "gru,mgu"})
    assert settings_conflict(base.to_dict(), grown) is None
    other = load_study(overrides={"name": "g", "steps": 7})
    assert "steps" in settings_conflict(base.to_dict(), other)


SQUARE = [n for n in gruablate.list_variants()
          if gruablate.get_variant(n).input_must_equal_hidden]


def test_every_catalogue_variant_with_all():
    s = load_study(overrides={"variants": "all"})
    assert SQUARE == ["mut1", "mut2", "sru"]
    # the cells that read x element-wise cannot take adding's 2 inputs at H = 32: left
    # out, each with a note saying why; every other built-in is there
    assert [v.name for v in s.variants] == [n for n in gruablate.list_variants()
                                            if n not in SQUARE]
    assert [n.split(" left out")[0] for n in s.notes] == [f"variants 'all': {n}"
                                                          for n in SQUARE]
    assert all("input size 2 with hidden size 32" in n for n in s.notes)
    assert isinstance(s, Study)
    # where the task's input size is the hidden size they run
    square = load_study(overrides={"variants": "all", "tasks": "adding", "hidden": "2"})
    assert [v.name for v in square.variants] == gruablate.list_variants()
    assert not square.notes
    # named, such a cell on such a task is refused, in one line, before any work
    with pytest.raises(StudyError, match="mut1 on adding: variant 'mut1' reads x"):
        load_study(overrides={"variants": "mut1", "tasks": "adding"})


def test_example_studies_load():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "studies"
    files = sorted(root.glob("*.toml"))
    assert files, "studies/ holds the example studies"
    for f in files:
        s = load_study(f)
        assert s.cells() and s.name == f.stem  # the run directory is named after the file
    gates = load_study(root / "gate_ablation.toml")
    assert {v.name for v in gates.variants} == set(gruablate.list_variants()) - set(SQUARE)
