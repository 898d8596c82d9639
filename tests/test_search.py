"""Studies with a `[search]`: the draws, the cells they make, a killed search resuming,
and the report's tests of significance and hyperparameter importance.

The statistics are checked against scipy and against constructed cases whose answer is
known (two samples of one distribution, shifted ones, a metric one setting explains);
the search end to end on tiny real cells.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats

import gruablate
from gruablate.cli import main
from gruablate.errors import StudyError
from gruablate.execute import run_study
from gruablate.report import compare, write_report
from gruablate.search import DEFAULT_SPACE, Search, parse_distribution
from gruablate.study import Study, load_study

CLI = [sys.executable, "-c", "from gruablate.cli import main; main()"]
TIMEOUT = 300
SPACE = {"lr": "loguniform(1e-4, 3e-2)", "hidden": "intlog(16, 128)", "clip": [0.5, 1, 5],
         "steps": "int(100, 200)", "warmup": "uniform(0, 1)"}


def _study(tmp_path: Path, search: str, extra: str = "") -> Path:
    cfg = tmp_path / "s.toml"
    cfg.write_text('name = "s"\nvariants = ["gru", "lstm"]\ntasks = ["adding"]\n'
                   f"seeds = [0]\nsteps = 50\n{extra}\n[search]\n{search}\n")
    return cfg


# ----------------------------------------------------------------- the draws
def test_draws_are_reproducible_in_range_and_independent():
    table = {"trials": 400, "seed": 7, "lr": SPACE["lr"], "hidden": SPACE["hidden"],
             "clip": SPACE["clip"], "steps": SPACE["steps"]}
    s = Search.from_table(table)
    draws = [s.draw(k) for k in range(400)]
    assert draws == [Search.from_table(dict(table)).draw(k) for k in range(400)]
    lr = np.array([d["lr"] for d in draws])
    hidden = np.array([d["hidden"] for d in draws])
    steps = np.array([d["steps"] for d in draws])
    assert lr.min() >= 1e-4 and lr.max() <= 3e-2
    # log-uniform: about half below the geometric midpoint (binomial 400, ±4 sd)
    assert abs((lr < math.sqrt(1e-4 * 3e-2)).mean() - 0.5) < 0.1
    assert hidden.dtype.kind == "i" and hidden.min() == 16 and hidden.max() == 128
    assert abs((hidden < math.sqrt(16 * 128)).mean() - 0.5) < 0.1
    assert steps.min() == 100 and steps.max() == 200
    assert {d["clip"] for d in draws} == {0.5, 1, 5}
    # a trial's draws depend on its index and the setting only
    fewer = Search.from_table({"trials": 3, "seed": 7, "lr": SPACE["lr"]})
    assert [fewer.draw(k)["lr"] for k in range(3)] == [d["lr"] for d in draws[:3]]
    other_seed = Search.from_table({**table, "seed": 8})
    assert other_seed.draw(0) != draws[0]
    assert len({d["lr"] for d in draws}) > 390  # not one value repeated


@pytest.mark.parametrize("value, words", [
    ("normal(0, 1)", "malformed range"),
    ("loguniform(1e-4)", "malformed range"),
    ("loguniform(1e-4, exp(1))", "malformed range"),
    ("__import__('os').system('true')", "malformed range"),
    ("loguniform(1e-4, 3e-2", "malformed range"),
    ("loguniform(low=1e-4, high=3e-2)", "malformed range"),
    ("uniform(2, 1)", "LOW < HIGH"),
    ("loguniform(0, 1)", "needs LOW > 0"),
    ("int(1.5, 4)", "integer ends"),
    ([], "empty list"),
    ([1, 1.0], "listed twice"),
    ([[1]], "a choice must be"),
    (0.01, "a single value is a setting"),
])
def test_a_bad_distribution_is_a_one_line_error(value, words):
    with pytest.raises(StudyError, match=re.escape(words)):
        parse_distribution(value, "search.lr")


@pytest.mark.parametrize("table, words", [
    ({"lr": "loguniform(1e-4, 1e-2)"}, "search.trials is missing"),
    ({"trials": 0, "lr": "loguniform(1e-4, 1e-2)"}, "from 1 to"),
    ({"trials": True, "lr": "loguniform(1e-4, 1e-2)"}, "must be an integer"),
    ({"trials": 5}, "draws nothing"),
    ({"trials": 5, "dtype": ["float32"]}, "'dtype' cannot be searched"),
    ({"trials": 5, "hidden": "loguniform(8, 64)"}, "search.hidden"),
])
def test_a_bad_search_table_is_a_one_line_error(table, words):
    with pytest.raises(StudyError, match=re.escape(words)):
        Search.from_table(table)


# ----------------------------------------------------------------- the cells
def test_a_search_makes_trials_times_grid_cells_with_drawn_settings(tmp_path):
    cfg = _study(tmp_path, 'trials = 5\nlr = "loguniform(1e-3, 1e-1)"\nhidden = [8, 16]\n'
                 "clip = [1, false]")
    study = load_study(cfg)
    cells = study.cells()
    assert len(cells) == 2 * 5  # variants × trials (one task, one seed)
    for c in cells:
        drawn = study.search.draw(c.trial)
        assert c.config["lr"] == drawn["lr"] and c.config["hidden"] == drawn["hidden"]
        assert c.config["clip"] == (None if drawn["clip"] is False else 1.0)
        assert f"-t{c.trial}-h{c.config['hidden']}-" in c.id
        assert c.train_kwargs()["lr"] == drawn["lr"] and "trial" not in c.train_kwargs()
    # every variant sees the same trial k
    by_variant = {v: [c.config["lr"] for c in cells if c.config["variant"] == v]
                  for v in ("gru", "lstm")}
    assert by_variant["gru"] == by_variant["lstm"]
    assert study.to_dict()["search"]["trials"] == 5
    assert study.to_dict()["hidden"] == []  # drawn, not the default axis


def test_more_trials_keep_the_first_cells_and_a_new_space_makes_new_ones(tmp_path):
    five = load_study(_study(tmp_path, 'trials = 5\nlr = "loguniform(1e-3, 1e-1)"')).cells()
    eight = load_study(_study(tmp_path, 'trials = 8\nlr = "loguniform(1e-3, 1e-1)"')).cells()
    assert {c.id for c in five} < {c.id for c in eight}
    wider = load_study(_study(tmp_path, 'trials = 5\nlr = "loguniform(1e-4, 1e-1)"')).cells()
    assert not {c.id for c in five} & {c.id for c in wider}


def test_command_line_trials_and_settings(tmp_path):
    cfg = _study(tmp_path, 'trials = 4\nlr = "loguniform(1e-3, 1e-1)"\nclip = [1, 5]')
    more = load_study(cfg, overrides={"trials": 6})
    assert more.search.trials == 6 and more.name != "s"
    fixed = load_study(cfg, overrides={"lr": 0.01})  # the command line wins over a draw
    assert set(fixed.search.space) == {"clip"}
    assert {c.config["lr"] for c in fixed.cells()} == {0.01}
    with pytest.raises(StudyError, match="nothing left to draw"):
        load_study(_study(tmp_path, 'trials = 4\nlr = "loguniform(1e-3, 1e-1)"'),
                   overrides={"lr": 0.01})
    # --trials on a study without a [search] searches the default space
    plain = load_study(overrides={"trials": 3})
    assert plain.search.space == {k: parse_distribution(v, k) for k, v in DEFAULT_SPACE.items()}
    assert len(plain.cells()) == 3 * len(load_study().cells())
    res = CliRunner().invoke(main, ["run", "sweep", "--config", str(cfg), "--trials", "0",
                                    "--dry-run"])
    assert res.exit_code == 2 and "search.trials" in res.output
    assert "Traceback" not in res.output
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nsearch = 5\n')
    res = CliRunner().invoke(main, ["run", "sweep", "--config", str(bad), "--trials", "3",
                                    "--dry-run"])
    assert res.exit_code == 2 and "must be a table ([search])" in res.output, res.output


def test_a_study_without_search_is_unchanged(tmp_path):
    study = load_study(overrides={"seeds": "0"})
    assert "search" not in study.to_dict()
    assert all("trial" not in c.config and "-t" not in c.id.split("-h")[0]
               for c in study.cells())
    assert all("search" not in s for s in study.cell_settings().values())


@pytest.mark.parametrize("search, extra, words", [
    ('trials = 3\nwarmup = "int(10, 100)"', "", "warmup for task 'adding' (search trial"),
    ('trials = 3\nhidden = "int(8, 16)"', "[hidden_by_variant]\ngru = [8]",
     "hidden_by_variant"),
    ('trials = 3\nfoo = [1]', "", "'foo' cannot be searched"),
    ('trials = 3\nlr = "loguniform(1e-3, 1e-1)"\ninit = ["torch", "nope"]', "",
     "init for task 'adding' (search trial"),
])
def test_a_bad_draw_stops_the_study_before_any_cell(tmp_path, search, extra, words):
    with pytest.raises(StudyError, match=re.escape(words)):
        load_study(_study(tmp_path, search, extra))


def test_runs_of_two_search_spaces_cannot_share_a_run_directory(tmp_path):
    def study(low: str) -> Study:
        cfg = tmp_path / "s.toml"
        cfg.write_text('name = "s"\nvariants = ["gru"]\nseeds = [0]\nhidden = [4]\n'
                       "steps = 2\nbatch = 4\n[tasks.adding]\nseq_len = 4\n"
                       f'[search]\ntrials = 1\nlr = "loguniform({low}, 1e-1)"\n')
        return load_study(cfg)

    run_study(study("1e-3"), out=tmp_path / "run", jobs=1)
    with pytest.raises(StudyError, match="search"):
        run_study(study("1e-2"), out=tmp_path / "run", jobs=1)


def _records(run_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "cells").glob("*.json"))
            if not p.name.startswith(".")}


def test_a_killed_search_resumes_without_redoing_or_duplicating_a_trial(tmp_path):
    for v in ("gru", "mingru"):  # warm Numba's cache so the sweeps below load, not compile
        gruablate.train(variant=v, task="adding", hidden=8, steps=2, batch=4, seq_len=4)
    cfg = tmp_path / "search.toml"
    cfg.write_text('name = "killed"\nvariants = ["gru", "mingru"]\nseeds = [0]\n'
                   "steps = 150\nbatch = 16\n[tasks.adding]\nseq_len = 20\n"
                   '[search]\ntrials = 4\nlr = "loguniform(1e-3, 3e-2)"\n'
                   'hidden = "int(12, 16)"\n')
    out = tmp_path / "run"
    args = ["run", "sweep", "--config", str(cfg), "--out", str(out), "--no-report"]
    proc = subprocess.Popen([*CLI, *args, "--jobs", "2"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and len(_records(out) if out.exists() else {}) < 2:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    before = {k: (out / "cells" / f"{k}.json").read_bytes() for k in _records(out)}
    assert 2 <= len(before) < 8, "the search was killed mid-way"
    res = subprocess.run([*CLI, *args, "--jobs", "1"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr
    assert f"{len(before)} already done" in res.stdout
    after = _records(out)
    assert len(after) == 8
    for k, blob in before.items():
        assert (out / "cells" / f"{k}.json").read_bytes() == blob
    trials = sorted((r["variant"], r["trial"]) for r in after.values())
    assert trials == sorted((v, k) for v in ("gru", "mingru") for k in range(4))
    study = load_study(cfg)
    for r in after.values():  # each record trained the settings of its trial index
        drawn = study.search.draw(r["trial"])
        assert r["lr"] == drawn["lr"] and r["hidden"] == drawn["hidden"]


# ------------------------------------------------------------- statistics
def test_holm_matches_the_step_down_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → monotone
    assert np.allclose(compare.holm(p), [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(compare.holm([math.nan, 0.2])[0]) and compare.holm([math.nan, 0.2])[1] == 0.2
    assert compare.holm([0.9, 0.8]).tolist() == [1.0, 1.0]


def _cells(samples: dict[str, np.ndarray], lower: bool = True) -> pd.DataFrame:
    rows = []
    for v, xs in samples.items():
        for i, x in enumerate(xs):
            rows.append({"variant": v, "task": "t", "metric_name": "m", "hidden": 8,
                         "layers": 1, "backend": "cpu", "status": "ok", "metric": float(x),
                         "lower_is_better": lower, "trial": i})
    return pd.DataFrame(rows)


def test_comparison_finds_shifts_and_not_noise():
    rng = np.random.default_rng(1)
    samples = {"base": rng.normal(0, 1, 200), "same": rng.normal(0, 1, 200),
               "worse": rng.normal(1.5, 1, 200), "better": rng.normal(-1.5, 1, 200)}
    t = compare.comparison_table(_cells(samples), "base").set_index("variant")
    assert t.loc["same", "verdict"] == "no significant difference"
    assert t.loc["worse", "verdict"] == "worse" and t.loc["better", "verdict"] == "better"
    # the same numbers as scipy, on the top 10% (20 of 200) and on everything
    for v in ("same", "worse", "better"):
        mine, base = np.sort(samples[v])[:20], np.sort(samples["base"])[:20]
        assert t.loc[v, "n_top"] == 20
        assert t.loc[v, "welch_p"] == pytest.approx(
            stats.ttest_ind(mine, base, equal_var=False).pvalue)
        assert t.loc[v, "mannwhitney_p"] == pytest.approx(
            stats.mannwhitneyu(samples[v], samples["base"]).pvalue)
    ps = t.loc[["same", "worse", "better"], "welch_p"].to_numpy()
    assert np.allclose(t.loc[["same", "worse", "better"], "welch_p_holm"], compare.holm(ps))
    lo, hi = t.loc["worse", "difference_low"], t.loc["worse", "difference_high"]
    assert lo < 1.5 < hi and lo > 0  # the interval holds the true shift, not zero
    # higher is better: the same shifts read the other way
    t = compare.comparison_table(_cells(samples, lower=False), "base").set_index("variant")
    assert t.loc["worse", "verdict"] == "better" and t.loc["better", "verdict"] == "worse"


def test_seeds_of_a_grid_point_are_compared_whole():
    """Greff's best 10% is for a search's trials; a grid point's seeds are all alike."""
    rng = np.random.default_rng(2)
    cells = _cells({"base": rng.normal(0, 1, 5), "v": rng.normal(0, 1, 5)}).drop(
        columns="trial")
    t = compare.comparison_table(cells, "base")
    assert t["n_top"].tolist() == [5]
    assert t["welch_p"].iloc[0] == pytest.approx(stats.ttest_ind(
        cells[cells.variant == "v"]["metric"], cells[cells.variant == "base"]["metric"],
        equal_var=False).pvalue)


def test_comparison_of_two_cells_a_side_and_of_too_few():
    t = compare.comparison_table(_cells({"base": [1.0, 1.0], "v": [1.0, 1.0]}), "base")
    assert t["verdict"].tolist() == ["no significant difference"]
    t = compare.comparison_table(_cells({"base": [1.0], "v": [2.0]}), "base")
    assert t["verdict"].tolist() == ["too few cells"]


def test_fanova_names_the_setting_that_explains_the_metric():
    space = {"lr": "loguniform(1e-4, 1e-1)", "clip": [0.5, 1, 5],
             "hidden": "intlog(8, 64)"}
    search = Search.from_table({"trials": 60, **space})
    rng = np.random.default_rng(0)
    rows = []
    for k in range(60):
        d = search.draw(k)
        for explained, metric in (("lr", (math.log10(d["lr"]) + 2.5) ** 2),
                                  ("clip", {0.5: 0.0, 1: 1.0, 5: 3.0}[d["clip"]])):
            rows.append({**d, "variant": explained, "task": "t", "metric_name": "m",
                         "status": "ok", "metric": metric + 0.01 * rng.normal(),
                         "lower_is_better": True, "trial": k,
                         "search": json.dumps({"seed": 0, "space": space})})
    table = compare.importance_table(pd.DataFrame(rows))
    share = table.set_index(["variant", "setting"])["importance"]
    assert share["lr", "lr"] > 0.8 and share["clip", "clip"] > 0.8
    assert abs(table.groupby("variant")["importance"].sum() - 1).max() < 1e-9


# ------------------------------------------------------------- the report
def test_report_of_a_search_shows_distributions_tests_and_importance(tmp_path):
    cfg = tmp_path / "search.toml"
    cfg.write_text('name = "tiny-search"\nvariants = ["gru", "mingru"]\nseeds = [0]\n'
                   "steps = 20\nbatch = 8\n[tasks.adding]\nseq_len = 6\n"
                   '[search]\ntrials = 8\nlr = "loguniform(1e-3, 1e-1)"\n'
                   'hidden = "int(4, 8)"\n')
    summary = run_study(load_study(cfg), out=tmp_path / "run", jobs=1)
    assert summary.ok == 16
    folder = write_report([tmp_path / "run"]).parent
    for name in ("search_distribution.png", "learning_rate.svg", "comparison.csv",
                 "comparison.parquet", "importance.csv", "importance.parquet"):
        assert (folder / name).is_file(), name
    md = (folder / "report.md").read_text()
    assert "## Against the baseline variant" in md and "## Which settings mattered" in md
    row = next(line for line in md.splitlines() if line.startswith("| adding | searched"))
    assert "| mingru | 8 / 8 |" in row
    table = pd.read_parquet(folder / "comparison.parquet")
    assert table["variant"].tolist() == ["mingru"]
    assert table["baseline_variant"].tolist() == ["gru"]
    assert pd.read_csv(folder / "importance.csv")["setting"].tolist() == ["hidden", "lr"] * 2
    # the drawn settings never split the task into one label per learning rate
    html = (folder / "report.html").read_text()
    assert "lr=" not in html and "Search: every variant" in html


def test_study_from_dict_accepts_a_search_table():
    s = Study.from_dict({"variants": ["gru"], "tasks": ["adding"], "seeds": [0], "hidden": [8],
                         "search": {"trials": 2, "lr": "uniform(0.001, 0.01)"}})
    assert [c.trial for c in s.cells()] == [0, 1]
