"""Run a study's cells: in this process, in local processes, or on a dask cluster.

:func:`run_study` is the whole sweep: resolve the cells, skip those already recorded,
claim each cell before running it (so two sweeps on one run directory share the work
instead of doing it twice), run it on the chosen executor, and write its record the
moment it finishes. Only this process — the client — writes the run directory; workers
only compute and return records. A cell that raises is recorded as ``failed`` and the
sweep goes on.

Executors:

- ``jobs=1``: cells run one after another in this process.
- ``jobs=N``: N worker processes started with *spawn* (never fork: forking after
  Numba's threading layer has started can deadlock), each given ``cores // N`` Numba
  and BLAS threads so the workers together do not oversubscribe the cores.
- ``executor="dask"``: the cells are submitted to an existing ``dask.distributed``
  scheduler (``scheduler`` address or ``scheduler_file``); size the workers' threads
  there (``dask worker --nthreads 1`` plus ``NUMBA_NUM_THREADS``).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import socket
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cells.identity import spec_digest
from .envinfo import available_memory, capture_environment, load_average, usable_cores
from .store import (
    DamagedRecord,
    DamagedRecordWarning,
    RunDir,
    attach,
    is_run_dir,
    open_run,
    read_record_file,
)
from .study import Cell, Study, StudyError, load_study, merge_study

EXECUTORS = ("local", "dask")
# What one local worker holds once it has trained a cell (measured: ~190 MB resident
# for a small GRU on adding, most of it NumPy, Numba and SciPy themselves).
WORKER_BYTES = 250 * 2**20
_THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS")


# ---------------------------------------------------------------- one cell
def run_cell(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Train one cell (``gruablate.train(**kwargs)``) and return its record.

    Never raises for a bad cell: an exception becomes a ``failed`` record carrying the
    error text, so one cell cannot stop a sweep. Runs on workers; writes nothing.
    """
    from .train import train

    start = time.perf_counter()
    try:
        record = train(**kwargs, progress=False)
    except Exception as exc:  # a cell that raises is a result, not a crash
        record = {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=8),
        }
    record["cell_seconds"] = time.perf_counter() - start
    record["host"] = socket.gethostname()
    return record


def _failed(error: str) -> dict[str, Any]:
    return {"status": "failed", "error": error}


def _assemble(cell: Cell, result: dict[str, Any]) -> dict[str, Any]:
    """The stored record: the cell's configuration under everything train reported,
    so even a cell that failed before training has its variant, task, seed..."""
    base = {k: v for k, v in cell.config.items()}
    base.update({"metric_name": None, "metric": None, "baseline": None, "params": None,
                 "train_seconds": None, "variant_spec": cell.variant.to_dict()})
    return {**base, **result, "kind": "train", "id": cell.id,
            "spec_hash": spec_digest(cell.variant.to_dict())}


# --------------------------------------------------------------- executors
class _Serial:
    """Runs each cell at submit time, in this process."""

    name = "serial"

    def capacity(self) -> int:
        return 1

    def submit(self, kwargs: dict[str, Any]) -> cf.Future:
        fut: cf.Future = cf.Future()
        fut.set_result(run_cell(kwargs))
        return fut

    def wait_any(self, futures: list[Any]) -> set[Any]:
        return set(futures)

    def result(self, fut: Any) -> dict[str, Any]:
        return fut.result()

    def close(self, cancel: bool = False) -> None:
        pass


def _watch_parent(parent: int) -> None:
    """Worker initializer: exit when the sweep that started us is gone (even after a
    SIGKILL, which gives the parent no chance to stop its workers)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="gruablate-parent-watch").start()


@contextlib.contextmanager
def _worker_threads(n: int) -> Iterator[None]:
    # Numba reads NUMBA_NUM_THREADS once, at import: the spawned workers inherit it from
    # our environment at start-up. Our own Numba was configured long ago, so setting
    # it here changes nothing for this process; it is restored afterwards anyway.
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: str(n) for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _Processes:
    """N spawned worker processes with ``threads`` Numba/BLAS threads each."""

    name = "processes"

    def __init__(self, jobs: int, threads: int) -> None:
        self.jobs, self.threads = jobs, threads
        self._env = _worker_threads(threads)
        self._env.__enter__()
        self._pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            max_workers=self.jobs, mp_context=multiprocessing.get_context("spawn"),
            initializer=_watch_parent, initargs=(os.getpid(),),
        )

    def capacity(self) -> int:
        return self.jobs

    def submit(self, kwargs: dict[str, Any]) -> cf.Future:
        try:
            return self._pool.submit(run_cell, kwargs)
        except cf.process.BrokenProcessPool:
            # A worker died (killed, out of memory, crashed in native code): the pool
            # is unusable, so start a fresh one and carry on.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(run_cell, kwargs)

    def wait_any(self, futures: list[Any]) -> set[Any]:
        done, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
        return done

    def result(self, fut: Any) -> dict[str, Any]:
        try:
            return fut.result()
        except cf.process.BrokenProcessPool as exc:
            return _failed(f"worker process died while running this cell or one beside"
                           f" it ({exc}); rerun with --rerun-failed")
        except Exception as exc:
            return _failed(f"{type(exc).__name__}: {exc}")

    def close(self, cancel: bool = False) -> None:
        try:
            self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
        finally:
            self._env.__exit__(None, None, None)


class _Dask:
    """An existing dask.distributed cluster; the cells are its tasks."""

    name = "dask"

    def __init__(self, scheduler: str | None, scheduler_file: str | None) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise StudyError("--executor dask needs the 'distributed' package "
                             "(pip install gruablate[dask])") from None
        where = scheduler or f"scheduler file {scheduler_file}"
        if scheduler_file is not None and not Path(scheduler_file).is_file():
            raise StudyError(f"dask scheduler file not found: {scheduler_file}")
        try:
            self.client = Client(address=scheduler, scheduler_file=scheduler_file,
                                 timeout="20s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise StudyError(f"cannot reach the dask scheduler at {where}: {exc}") from None
        from distributed import as_completed

        self._completed = as_completed(loop=self.client.loop)

    def capacity(self) -> int:
        # Enough tasks queued to keep every worker thread busy, not the whole grid:
        # each submitted cell holds a claim in the run directory.
        return max(1, 2 * sum(self.client.nthreads().values()))

    def submit(self, kwargs: dict[str, Any]) -> Any:
        fut = self.client.submit(run_cell, kwargs, pure=False)
        self._completed.add(fut)
        return fut

    def wait_any(self, futures: list[Any]) -> set[Any]:
        # as_completed rather than distributed.wait: wait() looks for a default client,
        # and this one is deliberately not made the process's default.
        done = {next(self._completed)}
        done.update(self._completed.next_batch(block=False))
        return done

    def result(self, fut: Any) -> dict[str, Any]:
        try:
            return fut.result()
        except Exception as exc:  # KilledWorker, CancelledError, lost connection...
            return _failed(f"dask: {type(exc).__name__}: {exc}")

    def worker_environments(self) -> dict[str, Any]:
        return self.client.run(capture_environment)

    def close(self, cancel: bool = False) -> None:
        self.client.close()


# ------------------------------------------------------------------ the sweep
@dataclass
class SweepEvent:
    """What happened, for a progress display: ``kind`` is ``plan``, ``start``,
    ``finish``, ``skip`` (done meanwhile by another sweep), ``wait`` (cells another
    sweep is running), ``note`` and ``warn`` (``message`` says what) or ``end``."""

    kind: str
    summary: SweepSummary
    cell: Cell | None = None
    record: dict[str, Any] | None = None
    message: str = ""  # the text of a ``warn`` event


@dataclass
class SweepSummary:
    """Counts of a sweep, kept up to date while it runs."""

    run_dir: Path
    study: str
    total: int = 0  # cells in the study
    skipped: int = 0  # already recorded before this sweep
    to_run: int = 0  # cells this sweep set out to run
    ok: int = 0
    diverged: int = 0
    failed: int = 0
    by_others: int = 0  # recorded meanwhile by another sweep on the same directory
    running: int = 0
    waiting: int = 0  # claimed by another sweep right now
    failed_ids: list[str] = field(default_factory=list)
    diverged_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    executor: str = ""
    write_error: str = ""  # why records could no longer be written (the sweep stopped)

    @property
    def finished(self) -> int:
        return self.ok + self.diverged + self.failed + self.by_others

    @property
    def exit_code(self) -> int:
        """0 when every cell has a usable record, 1 when some failed or records could
        not be written, 130 if interrupted."""
        if self.interrupted:
            return 130
        return 1 if self.failed or self.write_error else 0

    def line(self) -> str:
        """The closing one-line summary."""
        parts = [f"{self.ok} ok", f"{self.diverged} diverged", f"{self.failed} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} already done")
        if self.by_others:
            parts.append(f"{self.by_others} done by another sweep")
        state = ("interrupted" if self.interrupted
                 else "stopped" if self.write_error else "finished")
        return (f"sweep {self.study!r} {state}: {self.total} cells — {', '.join(parts)}"
                f" in {self.seconds:.1f}s; results in {self.run_dir}")


def _needs_run(run: RunDir, cell: Cell, force: bool, rerun_failed: bool,
               started_ids: set[str]) -> bool:
    if cell.id in started_ids:
        return False
    rec = run.read_record(cell.id)
    if rec is None:
        return True
    if force:
        return True
    return rerun_failed and rec.get("status") == "failed"


def joined_study(run_dir: Path, old: dict[str, Any] | None, study: Study) -> dict[str, Any]:
    """``study.json`` once ``study`` joins ``run_dir`` (which holds ``old``), or a
    :class:`StudyError` saying why it may not (see :func:`~gruablate.study.merge_study`)."""
    try:
        return merge_study(old, study)
    except StudyError as exc:
        raise StudyError(
            f"{run_dir} holds another study's cells: {exc}; give this study its own"
            " --out (or --name), or delete that directory"
        ) from None


def cell_states(study: Study, out: str | Path | None = None) -> list[tuple[Cell, str]]:
    """Each cell of ``study`` with its recorded status in its run directory:
    ``"todo"`` when it has no record yet, ``"damaged"`` when its record cannot be read
    (a sweep moves it aside and runs the cell again). Changes nothing on disk."""
    run_dir = Path(out) if out is not None else Path("runs") / study.name
    run = attach(run_dir) if is_run_dir(run_dir) else None
    if run is not None:
        joined_study(run_dir, run.study(), study)  # the conflict a sweep would meet
    out_states = []
    for cell in study.cells():
        state = "todo"
        if run is not None:
            with contextlib.suppress(FileNotFoundError):
                try:
                    state = read_record_file(run.cells_dir / f"{cell.id}.json").get(
                        "status", "ok")
                except DamagedRecord:
                    state = "damaged"
        out_states.append((cell, state))
    return out_states


def run_study(
    study: Study | str | Path | None = None,
    *,
    out: str | Path | None = None,
    jobs: int | None = None,
    executor: str = "local",
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    rerun_failed: bool = False,
    force: bool = False,
    on_event: Callable[[SweepEvent], None] | None = None,
    command: str | None = None,
) -> SweepSummary:
    """Run every cell of ``study`` that has no record yet in its run directory.

    ``study`` is a :class:`Study`, a path to a study TOML file, or None for the default
    quick study. ``out`` defaults to ``runs/<study name>``. ``rerun_failed`` also reruns
    cells recorded as failed, ``force`` reruns every cell. ``on_event`` receives a
    :class:`SweepEvent` at every step (the CLI's progress display). ``command`` is
    the command line that started the sweep, for the report. When cells run,
    ``env.json`` records under ``sweep`` the command, start and end (UTC), wall time,
    the cells run and the load average at both ends. Returns the
    :class:`SweepSummary`; its ``exit_code`` is non-zero when a cell failed.
    """
    if not isinstance(study, Study):
        study = load_study(study)
    if executor not in EXECUTORS:
        raise StudyError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if executor == "local" and (scheduler or scheduler_file):
        raise StudyError("--scheduler/--scheduler-file need --executor dask")
    if executor == "dask" and not (scheduler or scheduler_file):
        raise StudyError("--executor dask needs --scheduler ADDRESS or --scheduler-file FILE")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise StudyError(f"jobs must be a positive integer, got {jobs!r}")
    run_dir = Path(out) if out is not None else Path("runs") / study.name

    def reconcile(old: dict[str, Any] | None) -> dict[str, Any]:
        return joined_study(run_dir, old, study)

    if is_run_dir(run_dir):  # fail fast; checked again under the open lock below
        reconcile(attach(run_dir).study())

    cells = study.cells()
    summary = SweepSummary(run_dir=run_dir, study=study.name, total=len(cells))
    emit = on_event or (lambda event: None)
    start = time.perf_counter()

    pool: Any
    env = capture_environment()
    env["sweep"] = {"command": command or "gruablate.run_study(...) from Python",
                    "started": _utc_now(), "load_start": load_average()}
    if executor == "dask":
        pool = _Dask(scheduler, scheduler_file)
        env["executor"] = {"kind": "dask", "scheduler": pool.client.scheduler.address}
        with contextlib.suppress(Exception):  # a report nicety, not worth failing over
            env["workers"] = pool.worker_environments()
    else:
        pool = None  # started below, once we know how many cells are left
    try:
        previous = attach(run_dir).environment() if is_run_dir(run_dir) else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DamagedRecordWarning)
            run = open_run(run_dir, study.to_dict(), env=previous or env,
                           reconcile=reconcile)
        for w in caught:
            emit(SweepEvent("warn", summary, message=str(w.message)))
        todo = [c for c in cells if _needs_run(run, c, force, rerun_failed, set())]
        summary.skipped = len(cells) - len(todo)
        summary.to_run = len(todo)
        if pool is None:
            n, why = local_jobs(jobs, len(todo))
            if why:
                emit(SweepEvent("warn", summary, message=why))
            threads = max(1, usable_cores() // n)
            pool = _Serial() if n == 1 else _Processes(n, threads)
            env["executor"] = {"kind": "local", "jobs": n,
                               "threads_per_worker": threads if n > 1 else None}
        if todo:
            # env.json describes the sweep that last ran cells, not a no-op rerun.
            run.write_environment(env)
        summary.executor = pool.name
        emit(SweepEvent("plan", summary))
        cold = cold_kernels(todo)
        if cold:
            emit(SweepEvent("note", summary, message=(
                f"compiling kernels for {', '.join(cold)} on first use (10–30 s each,"
                " once: Numba's cache keeps them)")))
        _drive(run, pool, todo, force, rerun_failed, summary, emit)
        if todo:
            _record_end(run, env, summary, start)
    except KeyboardInterrupt:
        summary.interrupted = True
        if pool is not None:
            pool.close(cancel=True)
            pool = None
    finally:
        if pool is not None:
            pool.close(cancel=bool(summary.write_error))
        summary.seconds = time.perf_counter() - start
        summary.running = 0
    emit(SweepEvent("end", summary))
    return summary


def cold_kernels(cells: list[Cell]) -> list[str]:
    """``variant (dtype)`` for every kernel these cells need that is not compiled yet
    (as its backend knows): the sweep says so, or its first cells look stuck for tens of
    seconds."""
    from .backends import get_backend

    out = []
    for cell in cells:
        c = cell.config
        label = f"{cell.variant.name} ({c['dtype']})"
        if label not in out and not get_backend(c["backend"]).is_compiled(
                cell.variant, c["dtype"]):
            out.append(label)
    return out


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _record_end(run: RunDir, env: dict[str, Any], summary: SweepSummary, start: float
                ) -> None:
    """Complete ``env.json``'s account of the sweep that just ran cells (an interrupted
    or stopped one keeps its start only)."""
    if summary.write_error:
        return
    env["sweep"].update(finished=_utc_now(), wall_seconds=time.perf_counter() - start,
                        cells_run=summary.ok + summary.diverged + summary.failed,
                        load_end=load_average())
    with contextlib.suppress(OSError):  # the records are what matters; they are written
        run.write_environment(env)


def local_jobs(jobs: int | None, cells: int) -> tuple[int, str]:
    """How many local workers to start for ``cells`` cells when ``jobs`` were asked
    for (None: one per usable core), and why fewer, if so. More workers than cores
    only slows every cell down, and each worker needs :data:`WORKER_BYTES`."""
    cores = usable_cores()
    n = min(jobs or cores, max(1, cells))
    why = ""
    if n > cores:
        why = f"--jobs {jobs} is more than the {cores} usable cores: running {cores} workers"
        n = cores
    memory = available_memory()
    if memory is not None and n > 1 and n * WORKER_BYTES > memory:
        fit = max(1, memory // WORKER_BYTES)
        why = (f"{n} workers need about {n * WORKER_BYTES / 2**30:.1f} GiB and"
               f" {memory / 2**30:.1f} GiB is available: running {fit}")
        n = fit
    return n, why


def _drive(run: RunDir, pool: Any, todo: list[Cell], force: bool, rerun_failed: bool,
           summary: SweepSummary, emit: Callable[[SweepEvent], None]) -> None:
    """The client loop: claim, submit, collect, write — until every cell is settled."""
    pending: deque[Cell] = deque(todo)
    started: set[str] = set()
    in_flight: dict[Any, tuple[Cell, int]] = {}
    elsewhere: list[Cell] = []
    waited: set[str] = set()  # cells another sweep held: its record now counts as done
    try:
        while pending or in_flight or elsewhere:
            while pending and len(in_flight) < pool.capacity():
                cell = pending.popleft()
                fd = run.acquire(cell.id)
                if fd is None:  # another sweep is running it right now
                    elsewhere.append(cell)
                    summary.waiting = len(elsewhere)
                    continue
                # Checked again under the claim: it may have been finished meanwhile.
                if not _needs_run(run, cell, force and cell.id not in waited,
                                  rerun_failed and cell.id not in waited, started):
                    run.release(fd)
                    summary.by_others += 1
                    emit(SweepEvent("skip", summary, cell))
                    continue
                started.add(cell.id)
                summary.running += 1
                emit(SweepEvent("start", summary, cell))
                in_flight[pool.submit(cell.train_kwargs())] = (cell, fd)
            if in_flight:
                for fut in pool.wait_any(list(in_flight)):
                    cell, fd = in_flight.pop(fut)
                    record = _assemble(cell, pool.result(fut))
                    try:
                        run.write_record(cell.id, record)
                    except OSError as exc:
                        # A full disk or a folder gone read-only: every later record
                        # would fail too. Stop here; what is recorded stays recorded.
                        summary.running -= 1
                        summary.write_error = (
                            f"cannot write the record of {cell.id} in {run.cells_dir}:"
                            f" {exc.strerror or exc}; the sweep stopped, the"
                            f" {summary.finished} finished cells are kept and a rerun"
                            " resumes")
                        return
                    finally:
                        run.release(fd)
                    summary.running -= 1
                    status = record.get("status")
                    if status == "ok":
                        summary.ok += 1
                    elif status == "diverged":
                        summary.diverged += 1
                        summary.diverged_ids.append(cell.id)
                    else:
                        summary.failed += 1
                        summary.failed_ids.append(cell.id)
                    emit(SweepEvent("finish", summary, cell, record))
            elif elsewhere:
                # Nothing of ours is running: wait for the other sweep's cells, then
                # look again (it may have died, leaving them to us).
                emit(SweepEvent("wait", summary))
                for cell in elsewhere:
                    run.release(run.acquire(cell.id, wait=True))
                    waited.add(cell.id)
                    pending.append(cell)
                elsewhere.clear()
                summary.waiting = 0
    finally:
        for fut, (_, fd) in in_flight.items():
            with contextlib.suppress(Exception):
                fut.cancel()
            run.release(fd)
