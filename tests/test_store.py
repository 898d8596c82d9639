"""The run directory: atomic records, claims across processes, load_results, export.

These tests are about the store's mechanics, so the records are written by hand; the
end-to-end sweep tests (test_sweep.py) write real training records.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import gruablate
from gruablate.store import (
    BENCH_COLUMNS,
    TRAIN_COLUMNS,
    NotARunDir,
    attach,
    export_results,
    load_curves,
    load_results,
    open_run,
)

ENV = {"cpu": "test"}


def _train_record(**over):
    rec = {"variant": "gru", "task": "adding", "hidden": 8, "layers": 1, "seed": 0,
           "backend": "cpu", "status": "ok", "metric_name": "mse", "metric": 0.01,
           "baseline": 1 / 6, "params": 273, "train_seconds": 1.5,
           "task_options": {"seq_len": 10},
           "curve": [{"step": 5, "train_loss": 0.2, "val_metric": 0.1},
                     {"step": 10, "train_loss": 0.1, "val_metric": 0.05}]}
    rec.update(over)
    return rec


def test_records_round_trip_and_load_results_columns(tmp_path):
    run = open_run(tmp_path / "r", {"kind": "sweep", "name": "r"}, env=ENV)
    run.write_record("a-1", _train_record())
    run.write_record("a-2", _train_record(seed=np.int64(1), metric=np.float32(0.5)))
    run.write_record("a-3", _train_record(seed=2, status="diverged", metric=math.nan,
                                          error="loss is nan"))
    assert run.done_ids() == {"a-1", "a-2", "a-3"}
    assert run.done_ids(["diverged"]) == {"a-3"}
    assert run.read_record("a-2")["metric"] == pytest.approx(0.5)
    assert run.read_record("nope") is None
    df = gruablate.load_results(tmp_path / "r")
    assert list(df.columns[:3]) == ["run", "id", "kind"]
    assert set(TRAIN_COLUMNS) <= set(df.columns)
    assert list(df["id"]) == ["a-1", "a-2", "a-3"]
    assert (df["kind"] == "train").all() and (df["run"] == "r").all()
    assert math.isnan(df.loc[2, "metric"])  # NaN stored as JSON null, read back as NaN
    assert df["task_options"][0] == '{"seq_len":10}'
    assert "curve" not in df.columns
    curves = load_curves(tmp_path / "r")
    assert len(curves) == 6 and list(curves["step"][:2]) == [5, 10]
    # The files are strict JSON: no NaN tokens another tool would choke on.
    text = (tmp_path / "r" / "cells" / "a-3.json").read_text()
    assert "NaN" not in text and json.loads(text)["metric"] is None


def test_bench_records_get_their_columns(tmp_path):
    run = open_run(tmp_path / "b", {"kind": "bench"}, env=ENV)
    for impl, ms in (("gruablate", 2.0), ("torch", 3.0)):
        run.write_record(f"gru-{impl}", {
            "kind": "bench", "variant": "gru_reset_after", "impl": impl, "backend": "cpu",
            "mode": "train", "hidden": 64, "batch": 32, "seq_len": 100, "input_size": 64,
            "dtype": "float32", "threads": 2, "median_ms": ms, "gflops": 10.0,
            "times_ms": [ms, ms + 0.1]})
    df = load_results(tmp_path / "b")
    assert set(BENCH_COLUMNS) <= set(df.columns)
    assert (df["kind"] == "bench").all()
    assert df["times_ms"][0] == "[2.0,2.1]"  # lists stay as JSON text, one cell


def test_load_results_of_several_runs_and_an_empty_one(tmp_path):
    open_run(tmp_path / "empty", {"kind": "sweep"}, env=ENV)
    df = load_results(tmp_path / "empty")
    assert len(df) == 0 and set(TRAIN_COLUMNS) <= set(df.columns)
    run = open_run(tmp_path / "one", {"kind": "sweep"}, env=ENV)
    run.write_record("x", _train_record())
    both = load_results([tmp_path / "empty", tmp_path / "one"])
    assert list(both["run"]) == ["one"]


def test_half_written_files_are_never_records(tmp_path):
    run = open_run(tmp_path / "r", {"kind": "sweep"}, env=ENV)
    run.write_record("done", _train_record())
    # What a writer killed mid-write leaves: a temporary file of a dead process.
    stale = run.cells_dir / ".tmp-otherhost-999999-half.json"
    stale.write_text('{"variant": "gr')
    assert run.done_ids() == {"done"}
    assert list(load_results(tmp_path / "r")["id"]) == ["done"]
    # Another host's temporary may belong to a live writer: reopening leaves it alone.
    open_run(tmp_path / "r", {"kind": "sweep"}, env=ENV)
    assert stale.exists() and run.done_ids() == {"done"}


def test_stale_temporaries_of_dead_local_processes_are_cleaned(tmp_path):
    import socket

    run = open_run(tmp_path / "r", {"kind": "sweep"}, env=ENV)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = run.cells_dir / f".tmp-{socket.gethostname()}-{dead}-x.json"
    stale.write_text("{")
    open_run(tmp_path / "r", {"kind": "sweep"}, env=ENV)
    assert not stale.exists()


def test_bad_ids_and_bad_directories(tmp_path):
    run = open_run(tmp_path / "r", {"kind": "sweep"}, env=ENV)
    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(ValueError, match="bad cell id"):
            run.write_record(bad, {})
    with pytest.raises(NotARunDir, match="does not exist"):
        load_results(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(NotARunDir, match="not a gruablate run directory"):
        attach(tmp_path / "plain")
    with pytest.raises(NotARunDir, match="not empty"):
        open_run(tmp_path / "plain", {}, env=ENV)
    assert (tmp_path / "plain" / "notes.txt").read_text() == "mine"


def test_a_run_another_process_is_still_opening_is_waited_for_not_refused(tmp_path):
    """CI once saw this race: sweep B found sweep A's cells/ before A's study.json and
    refused the folder as foreign. Here the test plays A, holding the open-lock over a
    half-made run while B opens the same folder."""
    import fcntl
    import threading

    from gruablate.store import CELLS_DIR, OPEN_LOCK

    path = tmp_path / "r"
    (path / CELLS_DIR).mkdir(parents=True)
    fd = os.open(path / OPEN_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    result: list = []
    opener = threading.Thread(target=lambda: result.append(
        _catch(lambda: open_run(path, {"kind": "sweep", "by": "B"}, env=ENV))))
    opener.start()
    opener.join(0.5)
    assert opener.is_alive() and not result, "B must wait while A holds the lock"
    open_run_file = path / "study.json"
    open_run_file.write_text(json.dumps({"kind": "sweep", "by": "A"}))
    os.close(fd)  # A is done: drops the lock
    opener.join(10)
    assert result and not isinstance(result[0], Exception), result
    assert json.loads(open_run_file.read_text())["by"] == "B"


def _catch(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - handed back to the test thread
        return exc


def test_claims_exclude_another_process_and_die_with_it(tmp_path):
    run = open_run(tmp_path / "r", {"kind": "sweep"}, env=ENV)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from gruablate.store import attach
            fd = attach({str(tmp_path / 'r')!r}).acquire("cell-1")
            print("held" if fd is not None else "busy", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with run.claim("cell-1") as got:
            assert got is False  # the other process holds it
        with run.claim("cell-2") as got:
            assert got is True
    finally:
        holder.kill()  # SIGKILL: no chance to unlock; the kernel drops the lock
        holder.wait(timeout=10)
    with run.claim("cell-1") as got:
        assert got is True


def test_export_csv_and_parquet(tmp_path):
    run = open_run(tmp_path / "r", {"kind": "sweep"}, env=ENV)
    run.write_record("x", _train_record())
    csv = export_results(tmp_path / "r", "csv")
    pq = export_results(tmp_path / "r", "parquet")
    assert csv.name == "results.csv" and pq.name == "results.parquet"
    a, b = pd.read_csv(csv), pd.read_parquet(pq)
    assert list(a["id"]) == list(b["id"]) == ["x"]
    assert b["metric"][0] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="export format"):
        export_results(tmp_path / "r", "xlsx")


def test_environment_is_captured(tmp_path):
    run = open_run(tmp_path / "r", {"kind": "sweep"})
    env = run.environment()
    assert env["cores"] >= 1 and env["cpu"]
    assert env["packages"]["numba"] and env["packages"]["gruablate"]
    assert "gpus" in env and "git" in env
