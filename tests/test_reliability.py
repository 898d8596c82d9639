"""Nothing mixed, nothing lost, nothing written where it should not be.

The run directory's promises under hostile conditions: two cells under one name are
never averaged, a damaged record never blocks a directory, the "settings may not
change" rule holds under concurrency and after a study grew, a disk that stops taking
records keeps what was written, a killed sweep or report leaves nothing half done.
"""

from __future__ import annotations

import errno
import fcntl
import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import gruablate
from gruablate import execute
from gruablate.cells.identity import spec_digest
from gruablate.cells.spec import SpecError
from gruablate.cli import main
from gruablate.execute import cell_states, local_jobs, run_study
from gruablate.report import html as report_html
from gruablate.report import load as load_report
from gruablate.report import write_report
from gruablate.report.data import accuracy_table
from gruablate.report.tables import variants_shown
from gruablate.store import (
    OPEN_LOCK,
    DamagedRecordWarning,
    RunDir,
    attach,
    load_results,
    open_run,
)
from gruablate.study import StudyError, load_study, merge_study, parse_ints

CLI = [sys.executable, "-c", "from gruablate.cli import main; main()"]
TINY = {"variants": "gru", "tasks": "adding", "hidden": "8", "steps": 6, "batch": 4,
        "seeds": "0-1"}
TINY_ARGS = ["--variants", "gru", "--tasks", "adding", "-o", "adding.seq_len=6",
             "--hidden", "8", "--steps", "6", "--batch", "4", "--seeds", "0-1"]
_TIMING = {"train_seconds", "steps_per_second", "cell_seconds", "host"}
ENV = {"cpu": "test"}


def _tiny(**changes):
    return load_study(overrides={**TINY, **changes}, task_options={"adding": {"seq_len": 6}})


def _records(run_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "cells").glob("*.json"))
            if not p.name.startswith(".")}


def _stable(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in _TIMING}


def _spec(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}-{abs(hash(body)) % 10_000}.toml"
    path.write_text(f'name = "{name}"\n{body}\n')
    return path


# ------------------------------------------------------------ identity is content
def test_a_user_spec_may_not_take_a_builtins_name(tmp_path):
    lstm_as_gru = _spec(tmp_path, "gru", 'family = "lstm"')
    with pytest.raises(SpecError, match="name of a built-in"):
        gruablate.get_variant(str(lstm_as_gru))
    res = CliRunner().invoke(main, ["run", "sweep", "--variants", f"gru,{lstm_as_gru}",
                                    "--out", str(tmp_path / "run"), "--dry-run"])
    assert res.exit_code == 2 and "name of a built-in" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "run").exists()
    # A faithful copy of a built-in is that built-in: nothing to refuse.
    copy = tmp_path / "gru_copy.toml"
    copy.write_text(gruablate.get_variant("gru").to_toml())
    assert gruablate.get_variant(str(copy)) == gruablate.get_variant("gru")


def test_an_edited_spec_is_refused_in_the_directory_of_its_old_self(tmp_path):
    spec = tmp_path / "mine.toml"
    spec.write_text('name = "mine"\nfamily = "gru"\nreset = "none"\n')
    out = tmp_path / "run"
    first = run_study(_tiny(variants=str(spec), seeds="0"), out=out, jobs=1)
    assert first.ok == 1
    spec.write_text('name = "mine"\nfamily = "gru"\nreset = "after"\n')
    with pytest.raises(StudyError, match="variant 'mine' was run there with another spec"):
        run_study(_tiny(variants=str(spec), seeds="0"), out=out, jobs=1)
    # Only the description changed: the same cell, accepted and already done.
    spec.write_text('name = "mine"\nfamily = "gru"\nreset = "none"\ndescription = "x"\n')
    again = run_study(_tiny(variants=str(spec), seeds="0"), out=out, jobs=1)
    assert again.skipped == 1 and again.ok == 0


def _fake_train(run: RunDir, cell: str, variant: dict, metric: float, seed: int = 0) -> None:
    run.write_record(cell, {
        "kind": "train", "variant": variant["name"], "variant_spec": variant,
        "task": "adding", "hidden": 8, "layers": 1, "seed": seed, "backend": "cpu",
        "status": "ok", "metric_name": "mse", "metric": metric, "baseline": 1 / 6,
        "params": 10, "train_seconds": 1.0, "steps_per_second": 10.0,
        "lower_is_better": True,
    })


def test_two_specs_under_one_name_are_two_rows_of_the_report(tmp_path):
    no_reset = {"name": "mine", "family": "gru", "reset": "none"}
    lstm = {"name": "mine", "family": "lstm"}
    runs = []
    for label, spec, metric in (("a", no_reset, 0.01), ("b", lstm, 0.1)):
        run = open_run(tmp_path / label, {"kind": "sweep"}, env=ENV)
        for seed in (0, 1):
            _fake_train(run, f"c{seed}", spec, metric + seed * 1e-3, seed)
        runs.append(run.path)
    df = load_results(runs)
    assert set(df["spec_hash"]) == {spec_digest(no_reset), spec_digest(lstm)}

    data = load_report(runs)
    table = accuracy_table(data.train)
    assert len(table) == 2 and sorted(table["seeds"]) == [2, 2]
    assert sorted(table["mean"].round(4)) == [0.0105, 0.1005]
    labels = sorted(table["variant"])
    assert all(label.startswith("mine [") for label in labels) and labels[0] != labels[1]
    shown = {label: v.family for label, v in variants_shown(data)}
    assert sorted(shown.values()) == ["gru", "lstm"]


# ------------------------------------------------------------- damaged records
def _damage(run_dir: Path) -> str:
    victim = sorted((run_dir / "cells").glob("*.json"))[0]
    victim.write_bytes(victim.read_bytes()[:40])  # what a disk that lost its end leaves
    return victim.stem


def test_a_damaged_record_is_named_skipped_quarantined_and_rerun(tmp_path):
    out = tmp_path / "run"
    study = _tiny()
    assert run_study(study, out=out, jobs=1).ok == 2
    before = _records(out)
    victim = _damage(out)

    with pytest.warns(DamagedRecordWarning, match=f"{victim}.json"):
        df = load_results(out)
    assert len(df) == 1
    states = dict((c.id, s) for c, s in cell_states(study, out))
    assert states[victim] == "damaged" and list(states.values()).count("ok") == 1

    runner = CliRunner()
    for mode in ("--dry-run", "--force", "--rerun-failed"):
        # Each mode works with the damage in place (the first leaves it there).
        if mode != "--dry-run":
            _damage(out)
        res = runner.invoke(main, ["run", "sweep", *TINY_ARGS, "--out", str(out), mode,
                                   "--no-report", "--jobs", "1"])
        assert res.exit_code == 0, res.output
        assert "Traceback" not in res.output
    assert "moved to" in res.output and "damaged" in res.output
    assert len(list((out / "damaged").iterdir())) == 2
    after = _records(out)
    assert {k: _stable(v) for k, v in before.items()} == {k: _stable(after[k]) for k in before}

    _damage(out)
    res = runner.invoke(main, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert "warning: damaged record" in res.output and "Traceback" not in res.output


# --------------------------------------------- settings: under the lock, and a union
def test_the_settings_check_runs_under_the_open_lock(tmp_path):
    """A sweep that opens a directory while another is creating it must see that
    other sweep's study, not the empty folder it found before waiting."""
    out = tmp_path / "run"
    out.mkdir()
    result: list[object] = []

    def second_sweep() -> None:
        try:
            result.append(run_study(_tiny(steps=7, seeds="0"), out=out, jobs=1))
        except StudyError as exc:
            result.append(exc)

    t = threading.Thread(target=second_sweep)
    with open(out / OPEN_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another sweep is creating the run right now
        t.start()
        time.sleep(0.5)
        assert t.is_alive(), "the second sweep must wait for the lock"
        (out / "cells").mkdir()
        (out / "study.json").write_text(json.dumps(_tiny().to_dict()))
    t.join(timeout=120)
    assert isinstance(result[0], StudyError) and "steps = 6" in str(result[0])
    assert not _records(out)


def test_a_grown_study_keeps_the_settings_of_everything_it_holds(tmp_path):
    out = tmp_path / "run"
    assert run_study(_tiny(seeds="0"), out=out, jobs=1).ok == 1
    grown = load_study(overrides={**TINY, "tasks": "copy", "seeds": "0"},
                       task_options={"copy": {"delay": 2, "symbols": 2}})
    assert run_study(grown, out=out, jobs=1).ok == 1
    held = attach(out).study()
    assert set(held["cell_settings"]) == {"adding", "copy"}
    assert held["variant_specs"]["gru"] == gruablate.get_variant("gru").to_dict()
    # The adding cells' settings are still guarded after the copy-only sweep.
    with pytest.raises(StudyError, match="task 'adding' was run there with steps = 6"):
        run_study(_tiny(steps=9, seeds="0"), out=out, jobs=1)


def test_merge_study_is_the_union_and_refuses_a_bench_directory():
    a, b = _tiny(seeds="0"), _tiny(seeds="3", hidden="8,16")
    merged = merge_study(a.to_dict(), b)
    assert merged["seeds"] == [0, 3] and merged["hidden"] == [8, 16]
    with pytest.raises(StudyError, match="'bench' run"):
        merge_study({"kind": "bench"}, a)


# ------------------------------------------------------- a disk that stops writing
def test_a_full_disk_stops_the_sweep_and_keeps_what_was_written(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = RunDir.write_record
    calls = []

    def write_then_fill(self, cell_id, record):
        calls.append(cell_id)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, cell_id, record)

    monkeypatch.setattr(RunDir, "write_record", write_then_fill)
    res = CliRunner().invoke(main, ["run", "sweep", *TINY_ARGS, "--seeds", "0-2", "--out",
                                    str(out), "--jobs", "1"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "No space left on device" in res.output and "stopped" in res.output
    assert len(calls) == 2 and len(_records(out)) == 1
    assert not (out / "report").exists()
    monkeypatch.setattr(RunDir, "write_record", real)
    again = run_study(load_study(overrides={**TINY, "seeds": "0-2"},
                                 task_options={"adding": {"seq_len": 6}}), out=out, jobs=1)
    assert again.skipped == 1 and again.ok == 2


def test_an_unwritable_run_directory_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker / "run", Path("/proc/gruablate-cannot-be-here")):
        res = CliRunner().invoke(main, ["run", "sweep", *TINY_ARGS, "--out", str(out)])
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output and str(out) in res.output


# ------------------------------------------------------------- limits up front
def test_huge_ranges_are_refused_before_they_are_expanded():
    with pytest.raises(StudyError, match="more than 10000"):
        parse_ints("0-100000000", "seeds")
    with pytest.raises(StudyError, match="more than 10000"):
        parse_ints(",".join(str(i) for i in range(10_001)), "seeds")
    assert parse_ints("0-9999", "seeds")[-1] == 9999
    with pytest.raises(StudyError, match="cells, more than"):
        load_study(overrides={**TINY, "seeds": "0-9999", "hidden": "1-11"})


def test_jobs_are_capped_by_cores_and_memory(monkeypatch):
    monkeypatch.setattr(execute, "usable_cores", lambda: 2)
    monkeypatch.setattr(execute, "available_memory", lambda: 64 * 2**30)
    assert local_jobs(None, 10) == (2, "")
    assert local_jobs(1, 10) == (1, "")
    n, why = local_jobs(8, 10)
    assert n == 2 and "--jobs 8 is more than the 2 usable cores" in why
    assert local_jobs(8, 1) == (1, "")  # one cell needs one worker, whatever was asked
    monkeypatch.setattr(execute, "available_memory", lambda: execute.WORKER_BYTES + 1)
    n, why = local_jobs(2, 10)
    assert n == 1 and "GiB is available" in why


# ------------------------------------------------------------------- the report
def test_report_md_makes_hostile_text_inert(tmp_path):
    run = open_run(tmp_path / "run", {"kind": "sweep", "description": "<b>bold</b>"},
                   env=ENV)
    hostile = {"name": "evil", "family": "gru",
               "description": "<script>alert(1)</script> [x](javascript:alert(1))"}
    _fake_train(run, "c0", hostile, 0.01)
    run.write_record("c1", {"kind": "train", "variant": "evil", "variant_spec": hostile,
                            "task": "adding", "hidden": 8, "layers": 1, "seed": 1,
                            "backend": "cpu", "status": "failed",
                            "error": "<img src=x onerror=alert(1)>\nsecond line"})
    path = write_report([run.path])
    md = path.with_name("report.md").read_text()
    for raw in ("<script>", "<img", "<b>", "[x](javascript"):
        assert raw not in md
    assert "&lt;script&gt;" in md and "&lt;img src=x onerror=alert(1)&gt; second line" in md


def test_a_failed_report_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    run = open_run(tmp_path / "run", {"kind": "sweep"}, env=ENV)
    _fake_train(run, "c0", {"name": "gru", "family": "gru"}, 0.01)
    first = write_report([run.path])
    files = {p.name: p.read_bytes() for p in first.parent.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("killed half-way")

    _fake_train(run, "c1", {"name": "gru", "family": "gru"}, 0.02, seed=1)
    monkeypatch.setattr(report_html, "render", broken)
    with pytest.raises(RuntimeError):
        write_report([run.path])
    assert {p.name: p.read_bytes() for p in first.parent.iterdir()} == files
    assert sorted(p.name for p in run.path.iterdir() if p.name.startswith(".report")) == []

    # A folder holding files a report did not write is not swapped away.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="notes.txt"):
        write_report([run.path], out=mine)
    assert (mine / "notes.txt").read_text() == "keep me"


# ------------------------------------------------------------ SIGKILL, many times
@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_and_resumes_to_the_same_bits(tmp_path):
    """Five kills at seeded random moments (start-up, compile, mid-cell, mid-write),
    each followed by a check that every record on disk is whole; the resumed sweep
    ends with exactly the records of an uninterrupted one."""
    args = ["--variants", "gru,mingru", "--tasks", "adding", "-o", "adding.seq_len=20",
            "--hidden", "16", "--steps", "120", "--batch", "16", "--seeds", "0-2",
            "--no-report", "--jobs", "2"]
    gruablate.train(variant="gru", task="adding", hidden=8, steps=2, batch=4, seq_len=4)
    gruablate.train(variant="mingru", task="adding", hidden=8, steps=2, batch=4, seq_len=4)
    reference = tmp_path / "reference"
    res = subprocess.run([*CLI, "run", "sweep", *args, "--out", str(reference)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    want = {k: _stable(v) for k, v in _records(reference).items()}
    assert len(want) == 6

    out = tmp_path / "killed"
    rng = random.Random(14)
    for _ in range(5):
        proc = subprocess.Popen([*CLI, "run", "sweep", *args, "--out", str(out)],
                                cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if out.exists():
            got = _records(out)  # every file on disk parses: none half written
            assert all(_stable(v) == want[k] for k, v in got.items())
    res = subprocess.run([*CLI, "run", "sweep", *args, "--out", str(out)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert {k: _stable(v) for k, v in _records(out).items()} == want
    assert not (out / "damaged").exists()


# ------------------------------------------------------- a cold compile is announced
def test_is_compiled_reads_the_kernel_cache(tmp_path, monkeypatch):
    from gruablate.backends import source

    monkeypatch.setenv("GRUABLATE_CACHE_DIR", str(tmp_path))
    text = "VALUE = 1  # a module nobody has loaded\n"
    assert not source.is_compiled("probe", text)
    module = source.load_module("probe", text)
    assert source.is_compiled("probe", text)  # loaded in this process
    del sys.modules[module.__name__]
    assert not source.is_compiled("probe", text)  # written, but no machine code cached
    pycache = source.cache_dir() / "__pycache__"
    pycache.mkdir()
    (pycache / f"{module.__name__}.f-1.py311.nbi").write_bytes(b"")
    assert source.is_compiled("probe", text)


def test_a_sweep_says_when_it_compiles_kernels(tmp_path, monkeypatch):
    import gruablate.backends.cpu.kernels as cpu

    args = ["run", "sweep", *TINY_ARGS, "--seeds", "0", "--out", str(tmp_path / "r"),
            "--jobs", "1", "--no-report"]
    monkeypatch.setattr(cpu, "kernels_compiled", lambda variant, dtype: False)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0 and "compiling kernels for gru (float32)" in res.output
    monkeypatch.setattr(cpu, "kernels_compiled", lambda variant, dtype: True)
    res = CliRunner().invoke(main, [*args, "--force"])
    assert res.exit_code == 0 and "compiling" not in res.output
