"""`gruablate run sweep` end to end: real training, real processes, real files.

Cells are tiny (hidden 8, a few dozen steps) so the whole file runs in well under a
minute on 2 cores; what is tested is the sweep's behaviour, not learning.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import gruablate
from gruablate.cli import main
from gruablate.study import load_study

CLI = [sys.executable, "-c", "from gruablate.cli import main; main()"]
TINY = ["--variants", "gru,mingru", "--tasks", "adding", "-o", "adding.seq_len=8",
        "--hidden", "8", "--steps", "15", "--batch", "8", "--seeds", "0-1", "--no-report"]
# Slower cells (about a second each) for the tests that interrupt or race a sweep.
SLOW = ["--variants", "gru,mingru", "--tasks", "adding", "-o", "adding.seq_len=20",
        "--hidden", "16", "--steps", "150", "--batch", "16", "--seeds", "0-2",
        "--no-report"]
_TIMING = {"train_seconds", "steps_per_second", "cell_seconds", "host"}
TIMEOUT = 300  # generous: a cold Numba cache on a busy 2-core machine is slow


@pytest.fixture(scope="module", autouse=True)
def warm_kernel_cache():
    """Compile the kernels these tests use once, here, into Numba's on-disk cache, so
    that every sweep process and worker below loads them instead of compiling its own."""
    for variant in ("gru", "mingru"):
        gruablate.train(variant=variant, task="adding", hidden=8, steps=2, batch=4,
                        seq_len=4)


def _sweep(*args: str, cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "run", "sweep", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def _records(run_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "cells").glob("*.json"))
            if not p.name.startswith(".")}


def _stable(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in _TIMING}


def test_small_sweep_end_to_end_then_resume(tmp_path):
    out = tmp_path / "run"
    first = _sweep(*TINY, "--out", str(out), "--jobs", "2", "--export", "csv", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "4 ok, 0 diverged, 0 failed" in first.stdout
    recs = _records(out)
    assert len(recs) == 4
    for rec in recs.values():
        assert rec["status"] == "ok" and rec["kind"] == "train"
        assert rec["metric_name"] == "mse" and rec["baseline"] == pytest.approx(1 / 6)
        assert rec["curve"] and rec["train_seconds"] > 0 and rec["params"] > 0
    study = json.loads((out / "study.json").read_text())
    env = json.loads((out / "env.json").read_text())
    assert study["cells"] == 4 and env["executor"]["jobs"] == 2
    assert env["executor"]["threads_per_worker"] >= 1 and env["packages"]["numba"]
    df = gruablate.load_results(out)
    assert len(df) == 4 and set(df["variant"]) == {"gru", "mingru"}
    assert (out / "results.csv").is_file()

    # The same command again: nothing to do, nothing rewritten.
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    again = _sweep(*TINY, "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "4 already done" in again.stdout and "0 ok" in again.stdout
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}

    # A grown grid runs only the new cells; --force reruns all, with equal results.
    grown = _sweep(*[a if a != "0-1" else "0-2" for a in TINY], "--out", str(out),
                   "--jobs", "1", cwd=tmp_path)
    assert "2 ok" in grown.stdout and "4 already done" in grown.stdout
    forced = _sweep(*TINY, "--out", str(out), "--force", "--jobs", "1", cwd=tmp_path)
    assert "4 ok" in forced.stdout
    after = _records(out)
    assert {k: _stable(v) for k, v in recs.items()} == {k: _stable(after[k]) for k in recs}


def test_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path):
    from gruablate.backends.cuda.device import cuda_available

    if cuda_available():
        pytest.skip("needs a machine without a GPU: its cuda cells are the failing ones")
    out = tmp_path / "run"
    args = [*TINY, "--variants", "gru", "--backends", "cpu,cuda", "--out", str(out)]
    res = _sweep(*args, "--jobs", "1", cwd=tmp_path)
    assert res.returncode == 1
    assert "2 ok, 0 diverged, 2 failed" in res.stdout
    assert res.stdout.count("failed: gru-adding-h8-l1-") == 2
    recs = _records(out)
    failed = [r for r in recs.values() if r["status"] == "failed"]
    assert len(failed) == 2 and all(r["backend"] == "cuda" for r in failed)
    assert all("GPU" in r["error"] for r in failed)
    assert all(r["variant"] == "gru" and r["task"] == "adding" for r in failed)
    df = gruablate.load_results(out)
    assert sorted(df["status"]) == ["failed", "failed", "ok", "ok"]
    # A plain rerun leaves the failures alone; --rerun-failed tries them again.
    assert "4 already done" in _sweep(*args, cwd=tmp_path).stdout
    again = _sweep(*args, "--rerun-failed", "--jobs", "1", cwd=tmp_path)
    assert again.returncode == 1 and "0 ok, 0 diverged, 2 failed, 2 already done" in again.stdout


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_mid_sweep_loses_nothing_and_does_nothing_twice(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([*CLI, "run", "sweep", *SLOW, "--out", str(out), "--jobs", "2"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and len(_records(out) if out.exists() else {}) < 2:
            time.sleep(0.05)
        workers = _children(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    before = {k: (out / "cells" / f"{k}.json").read_bytes() for k in _records(out)}
    assert 2 <= len(before) < 6, "the sweep was killed mid-way"
    assert gruablate.load_results(out)["status"].eq("ok").all()

    # Its spawned workers notice that the sweep is gone and exit on their own.
    assert workers, "the sweep had worker processes"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers)

    res = _sweep(*SLOW, "--out", str(out), "--jobs", "1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    ran = int(re.search(r"— (\d+) ok", res.stdout).group(1))
    assert ran == 6 - len(before) and f"{len(before)} already done" in res.stdout
    after = _records(out)
    assert len(after) == 6
    for k, blob in before.items():  # finished cells untouched (timings would differ)
        assert (out / "cells" / f"{k}.json").read_bytes() == blob
    assert not [p for p in (out / "cells").iterdir() if p.name.startswith(".tmp-")]


def test_two_sweeps_on_one_directory_share_the_work(tmp_path):
    out = tmp_path / "run"
    procs = [subprocess.Popen([*CLI, "run", "sweep", *SLOW, "--out", str(out), "--jobs", "1"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    recs = _records(out)
    assert len(recs) == 6 and all(r["status"] == "ok" for r in recs.values())
    # Each cell was trained by exactly one of the two: their "ok" counts add up to 6.
    ran = [int(re.search(r"— (\d+) ok", o).group(1)) for o, _ in outs]
    assert sum(ran) == 6
    assert json.loads((out / "study.json").read_text())["cells"] == 6


def test_dry_run_lists_cells_and_default_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/quick is relative to where the sweep starts
    runner = CliRunner()
    res = runner.invoke(main, ["run", "sweep", "--dry-run"])
    assert res.exit_code == 0
    cells = len(load_study().cells())
    assert res.output.count("todo") == cells == 60 and "runs/quick" in res.output


def test_all_variants_say_which_cells_they_leave_out():
    res = CliRunner().invoke(main, ["run", "sweep", "--variants", "all", "--tasks", "adding",
                                    "--dry-run"])
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if line.startswith("note:")]
    assert [n.split(" left out")[0] for n in notes] == [
        f"note: variants 'all': {n}" for n in ("mut1", "mut2", "sru")]
    assert "mut1-adding" not in res.output


@pytest.mark.parametrize("args, words", [
    (["--variants", "gru,nope"], "unknown variant 'nope'"),
    (["--tasks", "nope"], "unknown task 'nope'"),
    (["--seeds", "2-0"], "malformed range '2-0'"),
    (["--hidden", "8,x"], "malformed value 'x'"),
    (["--config", "missing.toml"], "study config not found"),
    (["-o", "copy.delay=0"], "delay must be at least 1"),
    (["-o", "delay"], "expected TASK.OPTION=VALUE"),
    (["--executor", "dask"], "needs --scheduler"),
    (["--scheduler", "tcp://127.0.0.1:1"], "need --executor dask"),
])
def test_bad_input_is_a_one_line_error(args, words):
    res = CliRunner().invoke(main, ["run", "sweep", "--no-report", *args])
    assert res.exit_code == 2, res.output
    error_lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and words in error_lines[0], res.output
    assert "Traceback" not in res.output


def test_unreadable_config_and_conflicting_settings(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text("variants = [")
    res = CliRunner().invoke(main, ["run", "sweep", "--config", str(cfg)])
    assert res.exit_code == 2 and "malformed TOML" in res.output
    out = tmp_path / "run"
    assert _sweep(*TINY, "--out", str(out), "--jobs", "1", cwd=tmp_path).returncode == 0
    res = CliRunner().invoke(main, ["run", "sweep", *TINY, "--steps", "16", "--out", str(out)])
    assert res.exit_code == 2 and "steps = 15" in res.output and "--out" in res.output
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.txt").write_text("x")
    res = CliRunner().invoke(main, ["run", "sweep", *TINY, "--out", str(plain)])
    assert res.exit_code == 2 and "not a gruablate run directory" in res.output
    assert os.listdir(plain) == ["x.txt"]
