"""What the report says: what was run (settings, command, times, machine), intervals
that stay inside the metric's range, and a per-task summary whose ranking and paired
comparisons are checked on run directories built by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from gruablate.cli import main
from gruablate.report import load as load_report
from gruablate.report.data import accuracy_table, seed_interval, t_interval
from gruablate.report.tables import baseline_variant, header_rows, summary
from gruablate.store import open_run
from gruablate.tasks import metric_bounds

ENV = {"cpu": "Test CPU", "vector_extensions": ["avx2", "fma"], "cores": 2,
       "sweep": {"command": "gruablate run sweep --steps 6", "started": "2026-01-01T00:00:00Z",
                 "finished": "2026-01-01T00:01:40Z", "wall_seconds": 100.0, "cells_run": 9,
                 "load_start": 0.5, "load_end": 1.5}}
STUDY = {"kind": "sweep", "name": "hand", "variants": ["gru", "lstm", "rnn"],
         "cell_settings": {"adding": {"steps": 6, "batch": 4, "lr": 0.01,
                                      "task_options": {"seq_len": 6}}}}


def _write(run, variant: str, seed: int, metric: float, task: str = "adding",
           metric_name: str = "mse", lower: bool = True) -> None:
    run.write_record(f"{variant}-{task}-{seed}", {
        "kind": "train", "variant": variant, "task": task, "hidden": 8, "layers": 1,
        "seed": seed, "backend": "cpu", "status": "ok", "metric_name": metric_name,
        "metric": metric, "baseline": 1 / 6, "params": 10, "train_seconds": 1.0,
        "steps_per_second": 10.0, "lower_is_better": lower,
        "variant_spec": {"name": variant, "family": "lstm" if variant == "lstm" else "gru"
                         if variant == "gru" else "rnn"},
    })


@pytest.fixture
def hand_run(tmp_path):
    run = open_run(tmp_path / "hand", STUDY, env=ENV)
    # gru beats rnn on every seed; lstm beats gru on two seeds of three.
    for seed, (g, l, r) in enumerate([(0.010, 0.008, 0.15), (0.012, 0.011, 0.16),
                                      (0.009, 0.020, 0.17)]):
        _write(run, "gru", seed, g)
        _write(run, "lstm", seed, l)
        _write(run, "rnn", seed, r)
    return run.path


def test_intervals_stay_inside_the_metrics_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 6))
        positive = rng.lognormal(-7, 1.5, n)  # MSEs of a few seeds: a t-interval crosses 0
        est, lo, hi = seed_interval(positive, metric_bounds("mse"))
        assert 0 < lo <= est <= hi
        acc = np.clip(rng.normal(0.97, 0.05, n), 0, 1)
        est, lo, hi = seed_interval(acc, metric_bounds("accuracy"))
        assert 0 <= lo <= est <= hi <= 1
    seeds = [0.0003249 * 0.1, 0.0003249, 0.0003249 * 1.9]
    assert t_interval(seeds)[0] < 0  # the defect: the plain t-interval of the mean
    est, lo, hi = seed_interval(seeds, (0.0, math.inf))
    assert lo > 0 and est == pytest.approx(math.exp(np.mean(np.log(seeds))))
    assert seed_interval([0.5], (0, math.inf)) == (0.5, 0.5, 0.5)


def test_the_accuracy_table_uses_the_bounded_interval(hand_run):
    t = accuracy_table(load_report([hand_run]).train)
    assert (t["ci_low"] > 0).all() and (t["scale"] == "log").all()
    gru = t[t["variant"] == "gru"].iloc[0]
    assert gru["estimate"] == pytest.approx((0.010 * 0.012 * 0.009) ** (1 / 3))


def test_summary_ranks_and_pairs_seed_by_seed(hand_run):
    data = load_report([hand_run])
    assert baseline_variant(data) == "gru"  # the study's first variant
    [(heading, lines)] = summary(data)
    assert heading.startswith("adding, H = 8, cpu (mse, lower is better)")
    assert [line.split()[1] for line in lines] == ["gru", "lstm", "rnn"]
    assert "(baseline variant)" in lines[0]
    assert "better than gru on 2 of 3 seeds, worse on 1: mixed" in lines[1]
    assert "worse than gru on 3 of 3 seeds (holds seed by seed)" in lines[2]


def test_the_report_says_what_was_run(hand_run):
    rows = dict(header_rows(load_report([hand_run])))
    assert rows["adding"].startswith("steps 6, batch 4, lr 0.01; task options seq_len=6")
    assert rows["command"] == "gruablate run sweep --steps 6"
    assert "100 s wall, 9 cells run" in rows["when (UTC)"]
    assert rows["machine"] == "Test CPU (avx2, fma), 2 usable cores, load average 0.50 → 1.50"
    res = CliRunner().invoke(main, ["report", str(hand_run)])
    assert res.exit_code == 0, res.output
    for name in ("report.html", "report.md"):
        page = (hand_run / "report" / name).read_text()
        assert "What was run" in page and "gruablate run sweep --steps 6" in page
        assert "Test CPU (avx2, fma)" in page and "Summary" in page
        assert "geometric mean over seeds" in page


def test_a_real_sweep_records_its_command_times_and_machine(tmp_path):
    out = tmp_path / "run"
    args = ["run", "sweep", "--variants", "gru", "--tasks", "adding", "-o",
            "adding.seq_len=6", "--hidden", "8", "--steps", "6", "--batch", "4", "--seeds",
            "0", "--out", str(out), "--jobs", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    md = (out / "report" / "report.md").read_text()
    assert "| command | gruablate run sweep " in md and "--steps=6" in md
    assert "| when (UTC) | 20" in md and "cells run)" in md and "usable cores" in md


def test_dry_run_reports_the_conflict_a_sweep_would_meet(tmp_path):
    out = tmp_path / "run"
    base = ["run", "sweep", "--variants", "gru", "--tasks", "adding", "-o",
            "adding.seq_len=6", "--hidden", "8", "--batch", "4", "--seeds", "0", "--out",
            str(out), "--jobs", "1", "--no-report"]
    assert CliRunner().invoke(main, [*base, "--steps", "6"]).exit_code == 0
    res = CliRunner().invoke(main, [*base, "--steps", "7", "--dry-run"])
    assert res.exit_code == 2 and "holds another study's cells" in res.output
    assert "steps = 6" in res.output and "Traceback" not in res.output
