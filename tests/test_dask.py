"""A study on a real dask.distributed cluster equals the same study run locally.

The study is a search (two trials of the learning rate per grid point): trial cells are
cells like any other, sent to the workers and resumed the same way.

Starts ``dask scheduler`` and ``dask worker`` as separate processes on 127.0.0.1, runs
a small sweep through the command line against them, and compares every record with a
local run's (timings and host aside). Bounded in time; the processes are always stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

CLI = [sys.executable, "-c", "from gruablate.cli import main; main()"]
STUDY = ["--variants", "gru,lstm", "--tasks", "adding,copy", "-o", "adding.seq_len=8",
         "-o", "copy.delay=3", "-o", "copy.symbols=2", "--hidden", "8", "--steps", "20",
         "--batch", "8", "--seeds", "0", "--trials", "2", "--no-report"]
_NOT_COMPARED = {"train_seconds", "steps_per_second", "cell_seconds", "host"}
ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300  # generous: a cold Numba cache on a busy 2-core machine is slow


@pytest.fixture(scope="module", autouse=True)
def warm_kernel_cache():
    """Compile this study's kernels once into Numba's on-disk cache, so the dask worker
    and the local workers load them rather than each compiling its own."""
    import gruablate

    for variant in ("gru", "lstm"):
        gruablate.train(variant=variant, task="adding", hidden=8, steps=2, batch=4, seq_len=4)
        gruablate.train(variant=variant, task="copy", hidden=8, steps=2, batch=4, delay=2,
                        symbols=1)


def _dask_cmd(*args: str) -> list[str]:
    exe = shutil.which("dask")
    return [exe, *args] if exe else [sys.executable, "-m", "distributed.cli.dask_" + args[0],
                                     *args[1:]]


@pytest.fixture
def cluster(tmp_path):
    """A scheduler and one single-threaded worker process; yields the scheduler file."""
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    logs = [open(tmp_path / f"{n}.log", "w") for n in ("scheduler", "worker")]  # noqa: SIM115
    procs = []
    try:
        procs.append(subprocess.Popen(
            _dask_cmd("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                      "--scheduler-file", str(sched_file)),
            cwd=tmp_path, env=env, stdout=logs[0], stderr=subprocess.STDOUT,
            start_new_session=True))
        deadline = time.monotonic() + 60
        while not sched_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sched_file.is_file(), (tmp_path / "scheduler.log").read_text()
        procs.append(subprocess.Popen(
            _dask_cmd("worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                      "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1",
                      "--memory-limit", "0"),
            cwd=tmp_path, env=env, stdout=logs[1], stderr=subprocess.STDOUT,
            start_new_session=True))
        from distributed import Client

        with Client(scheduler_file=str(sched_file), timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        yield sched_file
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        for log in logs:
            log.close()


def _records(run_dir: Path) -> dict[str, dict]:
    return {p.stem: {k: v for k, v in json.loads(p.read_text()).items()
                     if k not in _NOT_COMPARED}
            for p in sorted((run_dir / "cells").glob("*.json"))}


def test_dask_cluster_run_equals_local_run(cluster, tmp_path):
    address = json.loads(cluster.read_text())["address"]
    dask_out, local_out = tmp_path / "dask", tmp_path / "local"
    res = subprocess.run(
        [*CLI, "run", "sweep", *STUDY, "--out", str(dask_out), "--executor", "dask",
         "--scheduler", address], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr + res.stdout
    assert "8 ok, 0 diverged, 0 failed" in res.stdout
    env = json.loads((dask_out / "env.json").read_text())
    assert env["executor"] == {"kind": "dask", "scheduler": address}
    assert len(env["workers"]) == 1  # the workers' own environments are recorded
    # The client alone writes: the worker's records came back and were stored here.
    assert all(r["status"] == "ok" for r in _records(dask_out).values())

    # Same cells locally, with the same single thread per worker process.
    res = subprocess.run([*CLI, "run", "sweep", *STUDY, "--out", str(local_out),
                          "--jobs", "2"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr
    a, b = _records(dask_out), _records(local_out)
    assert a.keys() == b.keys() and len(a) == 8
    assert sorted(r["trial"] for r in a.values()) == [0] * 4 + [1] * 4
    assert a == b  # metrics, curves, params: bitwise equal on the CPU

    # Resuming through the scheduler file finds everything done.
    res = subprocess.run(
        [*CLI, "run", "sweep", *STUDY, "--out", str(dask_out), "--executor", "dask",
         "--scheduler-file", str(cluster)], cwd=tmp_path, capture_output=True, text=True,
        timeout=120)
    assert res.returncode == 0 and "8 already done" in res.stdout


def test_unreachable_scheduler_is_a_clear_error(tmp_path):
    res = subprocess.run([*CLI, "run", "sweep", *STUDY, "--out", str(tmp_path / "x"),
                          "--executor", "dask", "--scheduler-file",
                          str(tmp_path / "nope.json")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "dask scheduler file not found" in res.stderr and "Traceback" not in res.stderr
