"""The run directory: atomic per-cell records, and ``load_results`` over them.

A run directory is what a sweep (``gruablate run sweep``) or a benchmark
(``gruablate run bench``) leaves behind, and what ``gruablate report`` reads::

    runs/<name>/
      study.json          what was asked for (written by whoever opened the run)
      env.json            where it ran: versions, CPU, GPU, git commit (gruablate.envinfo)
      cells/<id>.json     one record per finished cell, each written atomically
      .claims/<id>        lock files of cells being run right now (fcntl locks)
      damaged/            records that could not be read, moved aside by a sweep

Public API (used by the sweep and by the benchmark)::

    run = open_run("runs/mybench", study={"kind": "bench", ...})   # creates or reopens
    with run.claim(cell_id) as got:          # optional: only when runs may share a dir
        if got and not run.has(cell_id):
            run.write_record(cell_id, {"kind": "bench", "variant": "gru", ...})
    run.done_ids()                           # ids that have a record
    df = load_results("runs/mybench")        # one tidy row per record, a ``kind`` column

A record is a flat-ish JSON mapping. ``kind`` says what it is: ``"train"`` (the default,
one trained model of a sweep) or ``"bench"`` (one timing of ``gruablate run bench``).
Scalars become columns; dict and list values become JSON text columns, except the
learning ``curve`` (see :func:`load_curves`), ``versions`` (see ``env.json``) and a
failed cell's ``traceback`` (in its file). ``spec_hash`` is the digest of the cell's
spec (:func:`gruablate.cells.identity.spec_digest`): two cells under one variant name are one
variant only when their ``spec_hash`` agrees.

A record that cannot be read (a disk that lost its end, a hand edit) never blocks the
directory: readers skip it with a :class:`DamagedRecordWarning` naming the file, and a
sweep moves it into ``damaged/`` (:meth:`RunDir.quarantine_damaged`) so that its cell
runs again.

Why the files look like this: one file per cell, written to a temporary name, flushed to
disk and renamed over the final name, means a sweep killed at any moment (even SIGKILL)
leaves either the whole record or none of it, and two processes never write the same
file. The store knows nothing about training or kernels.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cells.identity import spec_digest
from .errors import NotARunDir

if TYPE_CHECKING:  # pandas loads on first use: workers and `import gruablate` skip it
    import pandas as pd

STUDY_FILE = "study.json"
ENV_FILE = "env.json"
CELLS_DIR = "cells"
CLAIMS_DIR = ".claims"
DAMAGED_DIR = "damaged"
OPEN_LOCK = ".open.lock"  # serialises open_run between sweeps sharing a folder

# Columns every train record has in load_results, in this order, even when missing.
TRAIN_COLUMNS = (
    "variant", "spec_hash", "task", "hidden", "layers", "seed", "backend", "status",
    "metric_name", "metric", "baseline", "params", "train_seconds",
)
# Same for bench records (the benchmark issue's contract).
BENCH_COLUMNS = (
    "variant", "impl", "backend", "mode", "hidden", "batch", "seq_len", "input_size",
    "dtype", "threads", "median_ms", "gflops",
)
_LEADING = ("run", "id", "kind")
_DROPPED = ("curve", "versions", "traceback")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,199}$")
_TMP_PREFIX = ".tmp-"


class DamagedRecordWarning(UserWarning):
    """A record file that is not a readable JSON mapping; it was skipped or moved."""


class DamagedRecord(ValueError):
    """Raised by :func:`read_record_file` for a record that cannot be read."""


def _check_id(cell_id: str) -> str:
    # Ids become file names: refuse anything that could escape cells/ or hide a file.
    if not isinstance(cell_id, str) or not _ID_RE.match(cell_id):
        raise ValueError(
            f"bad cell id {cell_id!r}: use letters, digits and . _ + = - (at most 200)"
        )
    return cell_id


def _clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        # NaN/Infinity are not JSON; a diverged metric is "no number".
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "tolist"):
        return _clean(value.tolist())
    return str(value)


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` so that readers see all of it or nothing.

    Temporary file in the same folder, fsync, ``os.replace``, then fsync of the folder
    so the rename itself survives a power cut.
    """
    path = Path(path)
    tmp = path.with_name(f"{_TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{path.name}")
    text = json.dumps(_clean(data), indent=1, sort_keys=True, allow_nan=False) + "\n"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_record_file(path: Path) -> dict[str, Any]:
    """One record file as a mapping; :class:`DamagedRecord` (naming the file) when it
    is truncated, not UTF-8, not JSON or not a mapping. A missing file raises
    ``FileNotFoundError`` as usual."""
    try:
        rec = _read_json(path)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedRecord(f"damaged record {path}: {exc}") from None
    if not isinstance(rec, dict):
        raise DamagedRecord(f"damaged record {path}: not a JSON object")
    return rec


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` holds a ``study.json`` and a ``cells/`` folder."""
    p = Path(path)
    return (p / STUDY_FILE).is_file() and (p / CELLS_DIR).is_dir()


@dataclass
class RunDir:
    """An opened run directory. Get one from :func:`open_run` or :func:`attach`."""

    path: Path

    @property
    def cells_dir(self) -> Path:
        return self.path / CELLS_DIR

    # ------------------------------------------------------------------ reading
    def study(self) -> dict[str, Any]:
        """The study as written by whoever opened the run."""
        return _read_json(self.path / STUDY_FILE)

    def environment(self) -> dict[str, Any]:
        """The captured environment (empty when none was written)."""
        p = self.path / ENV_FILE
        return _read_json(p) if p.is_file() else {}

    def _record_path(self, cell_id: str) -> Path:
        return self.cells_dir / f"{_check_id(cell_id)}.json"

    def has(self, cell_id: str) -> bool:
        """True when the cell has a record."""
        return self._record_path(cell_id).is_file()

    def read_record(self, cell_id: str) -> dict[str, Any] | None:
        """The cell's record, or None when it has none or it is damaged (then with a
        :class:`DamagedRecordWarning`)."""
        try:
            return read_record_file(self._record_path(cell_id))
        except FileNotFoundError:
            return None
        except DamagedRecord as exc:
            warnings.warn(str(exc), DamagedRecordWarning, stacklevel=2)
            return None

    def done_ids(self, statuses: Iterable[str] | None = None) -> set[str]:
        """Ids with a readable record; only those whose ``status`` is in ``statuses``
        if given."""
        wanted = None if statuses is None else set(statuses)
        return {r["id"] for r in self.records()
                if wanted is None or r.get("status", "ok") in wanted}

    def _record_files(self) -> list[Path]:
        # Temporary files start with a dot and are never records.
        return sorted(p for p in self.cells_dir.glob("*.json") if not p.name.startswith("."))

    def records(self, warn: bool = True) -> Iterator[dict[str, Any]]:
        """Every readable record, sorted by cell id; each has ``id`` and ``kind``. A
        damaged one is skipped, with a :class:`DamagedRecordWarning` naming it unless
        ``warn`` is false (a second pass over records already warned about)."""
        for p in self._record_files():
            try:
                rec = read_record_file(p)
            except FileNotFoundError:  # moved aside meanwhile by a sweep
                continue
            except DamagedRecord as exc:
                if warn:
                    warnings.warn(f"{exc} (skipped)", DamagedRecordWarning, stacklevel=2)
                continue
            rec.setdefault("id", p.stem)
            rec.setdefault("kind", "train")
            yield rec

    def quarantine_damaged(self) -> list[Path]:
        """Move every record that cannot be read into ``damaged/`` (so that its cell
        has no record and runs again), warning for each; returns the new paths."""
        moved = []
        for p in self._record_files():
            try:
                read_record_file(p)
            except FileNotFoundError:
                continue
            except DamagedRecord as exc:
                target = self._free_name(self.path / DAMAGED_DIR, p.name)
                target.parent.mkdir(exist_ok=True)
                os.replace(p, target)
                warnings.warn(f"{exc}: moved to {target}; its cell will run again",
                              DamagedRecordWarning, stacklevel=2)
                moved.append(target)
        return moved

    @staticmethod
    def _free_name(folder: Path, name: str) -> Path:
        if not (folder / name).exists():
            return folder / name
        stamp = time.strftime("%Y%m%d-%H%M%S")
        n = 0
        while (folder / f"{name}.{stamp}-{n}").exists():
            n += 1
        return folder / f"{name}.{stamp}-{n}"

    # ------------------------------------------------------------------ writing
    def write_record(self, cell_id: str, record: dict[str, Any]) -> Path:
        """Write (or replace) the cell's record atomically; returns its path.

        ``record`` gets ``id`` set to ``cell_id`` and ``kind`` defaulted to ``"train"``.
        """
        path = self._record_path(cell_id)
        rec = {**record, "id": cell_id}
        rec.setdefault("kind", "train")
        atomic_write_json(path, rec)
        return path

    def write_study(self, study: dict[str, Any]) -> None:
        """Replace ``study.json``."""
        atomic_write_json(self.path / STUDY_FILE, study)

    def write_environment(self, env: dict[str, Any]) -> None:
        """Replace ``env.json``."""
        atomic_write_json(self.path / ENV_FILE, env)

    @contextlib.contextmanager
    def claim(self, cell_id: str) -> Iterator[bool]:
        """Try to claim a cell for this process: yields True if claimed, False if busy.

        The claim is an ``fcntl`` lock on ``.claims/<id>``; the kernel drops it when the
        process dies, so a killed sweep never leaves a cell claimed forever. Claim files
        are never deleted, which keeps the lock tied to one inode for everybody.
        """
        fd = self._claim_fd(cell_id)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def acquire(self, cell_id: str, wait: bool = False) -> int | None:
        """Lock a cell's claim without a ``with`` block: the fd to :meth:`release`, or
        None when another process holds it (``wait=True`` blocks until it is free)."""
        fd = self._claim_fd(cell_id)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @staticmethod
    def release(fd: int) -> None:
        """Release a lock taken by :meth:`acquire`."""
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _claim_fd(self, cell_id: str) -> int:
        claims = self.path / CLAIMS_DIR
        claims.mkdir(exist_ok=True)
        return os.open(claims / _check_id(cell_id), os.O_RDWR | os.O_CREAT, 0o644)

    def clean_stale_temporaries(self) -> int:
        """Remove temporary files this host's dead processes left; returns how many."""
        host = socket.gethostname()
        removed = 0
        for folder in (self.path, self.cells_dir):
            for p in folder.glob(f"{_TMP_PREFIX}{host}-*"):
                rest = p.name[len(_TMP_PREFIX) + len(host) + 1:]
                pid = rest.split("-", 1)[0]
                if pid.isdigit() and not process_alive(int(pid)):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                        removed += 1
        return removed


def process_alive(pid: int) -> bool:
    """True when a process of this host has that id (also when it is not ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_run(
    run_dir: str | Path,
    study: dict[str, Any],
    env: dict[str, Any] | None = None,
    reconcile: Callable[[dict[str, Any] | None], dict[str, Any]] | None = None,
) -> RunDir:
    """Create (or reopen) a run directory, writing ``study.json`` and ``env.json``.

    ``env`` defaults to :func:`gruablate.envinfo.capture_environment`. Existing records
    are kept; damaged ones are moved into ``damaged/``. Refuses a path that exists and
    is neither empty nor a run directory, or that cannot be written
    (:class:`NotARunDir`, one line). ``reconcile``, when given, is called with the
    study the directory already holds (None for a new one) and returns the study to
    write, or raises to refuse the directory. It runs under the open lock, so no other
    sweep can open the directory between its check and its write.
    """
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise NotARunDir(f"{path} exists and is not a directory")
    _refuse_foreign(path, locked=False)
    try:
        return _open_locked(path, study, env, reconcile)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise NotARunDir(f"cannot write to run directory {path}: {why}") from None


def _open_locked(path: Path, study: dict[str, Any], env: dict[str, Any] | None,
                 reconcile: Callable[[dict[str, Any] | None], dict[str, Any]] | None
                 ) -> RunDir:
    path.mkdir(parents=True, exist_ok=True)
    # Two sweeps may open the same folder at once: one must not see the other's
    # half-made run (cells/ there, study.json not yet) and call it foreign.
    lock_fd = os.open(path / OPEN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        _refuse_foreign(path, locked=True)
        run = RunDir(path)
        if reconcile is not None:
            old = run.study() if (path / STUDY_FILE).is_file() else None
            study = reconcile(old)
        (path / CELLS_DIR).mkdir(exist_ok=True)
        run.clean_stale_temporaries()
        run.quarantine_damaged()
        run.write_study(study)
        if env is None:
            from .envinfo import capture_environment

            env = capture_environment()
        run.write_environment(env)
    finally:
        os.close(lock_fd)  # closing drops the flock
    return run


def _refuse_foreign(path: Path, *, locked: bool) -> None:
    """Raise :class:`NotARunDir` when ``path`` holds things and is not a run directory.

    Before taking the open-lock (``locked=False``), a folder holding that lock is a run
    another process is making: accept it and wait on the lock. Holding the lock, that
    process has finished, so anything but the lock itself must be a finished run.
    """
    if not path.is_dir() or is_run_dir(path):
        return
    entries = [p.name for p in path.iterdir()]
    if OPEN_LOCK in entries:
        if not locked:
            return
        entries.remove(OPEN_LOCK)
    if entries:
        raise NotARunDir(
            f"{path} is not empty and is not a gruablate run directory (no {STUDY_FILE});"
            " choose another output folder"
        )


def attach(run_dir: str | Path) -> RunDir:
    """An existing run directory, or :class:`NotARunDir` saying what is wrong."""
    path = Path(run_dir)
    if not path.exists():
        raise NotARunDir(f"run directory {path} does not exist")
    if not is_run_dir(path):
        raise NotARunDir(
            f"{path} is not a gruablate run directory (it has no {STUDY_FILE} and {CELLS_DIR}/)"
        )
    return RunDir(path)


def _flatten(rec: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in rec.items():
        if key in _DROPPED:
            continue
        if isinstance(value, dict | list):
            # Kept as canonical JSON text so rows stay groupable and export to CSV.
            row[key] = json.dumps(value, sort_keys=True, separators=(",", ":"))
        else:
            row[key] = value
    return row


def _as_dirs(run_dirs: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(run_dirs, str | Path):
        return [Path(run_dirs)]
    return [Path(p) for p in run_dirs]


def _spec_hash(rec: dict[str, Any]) -> str | None:
    # Records written before spec_hash existed carry the spec they ran.
    if rec.get("spec_hash"):
        return str(rec["spec_hash"])
    spec = rec.get("variant_spec")
    return spec_digest(spec) if isinstance(spec, dict) else None


def load_results(run_dirs: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """One tidy DataFrame of every record in one or more run directories.

    One row per record, sorted by run and cell id, with a ``run`` column (the run
    directory's name), ``id``, ``kind`` (``"train"`` or ``"bench"``), then the
    record's fields. Train records always give the columns ``variant, spec_hash, task,
    hidden, layers, seed, backend, status, metric_name, metric, baseline, params,
    train_seconds``; bench records ``variant, impl, backend, mode, hidden, batch,
    seq_len, input_size, dtype, threads, median_ms, gflops``. A missing number is NaN.
    A damaged record is skipped with a :class:`DamagedRecordWarning` naming its file.
    """
    import pandas as pd

    rows = []
    for d in _as_dirs(run_dirs):
        run = attach(d)
        for rec in run.records():
            rows.append({"run": run.path.name, **_flatten(rec), "spec_hash": _spec_hash(rec)})
    kinds = {r.get("kind") for r in rows} or {"train"}
    wanted = list(_LEADING)
    for kind, cols in (("train", TRAIN_COLUMNS), ("bench", BENCH_COLUMNS)):
        if kind in kinds:
            wanted += [c for c in cols if c not in wanted]
    df = pd.DataFrame.from_records(rows)
    for col in wanted:
        if col not in df.columns:
            df[col] = pd.Series(dtype=object if col in ("status", "task", "spec_hash")
                                else float)
    rest = [c for c in df.columns if c not in wanted]
    df = df[wanted + rest]
    for col in ("metric", "baseline", "val_metric", "train_seconds", "median_ms", "gflops"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df.reset_index(drop=True)


def load_curves(run_dirs: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Learning curves in long form: one row per (cell, logged step).

    Columns ``run, id, variant, task, hidden, layers, seed, backend, status`` and the
    curve's own fields (``step, train_loss, val_metric``).
    """
    import pandas as pd

    keys = ("variant", "task", "hidden", "layers", "seed", "backend", "status")
    rows = []
    for d in _as_dirs(run_dirs):
        run = attach(d)
        for rec in run.records(warn=False):  # load_results warns
            for point in rec.get("curve") or []:
                rows.append(
                    {"run": run.path.name, "id": rec["id"], **{k: rec.get(k) for k in keys},
                     **point}
                )
    cols = ["run", "id", *keys, "step", "train_loss", "val_metric"]
    df = pd.DataFrame.from_records(rows)
    for col in cols:
        if col not in df.columns:
            df[col] = pd.Series(dtype=float)
    return df[cols + [c for c in df.columns if c not in cols]]


EXPORT_FORMATS = ("csv", "parquet")


def export_results(run_dir: str | Path, fmt: str, path: str | Path | None = None) -> Path:
    """Write :func:`load_results` of a run directory as ``results.csv`` or
    ``results.parquet`` inside it (or at ``path``); returns where."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    df = load_results(run_dir)
    target = Path(path) if path is not None else Path(run_dir) / f"results.{fmt}"
    tmp = target.with_name(f"{_TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{target.name}")
    try:
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target
