"""``gruablate run sweep``: run a study's grid, resumably, then report it.

Parses options into a study (:func:`gruablate.study.load_study`), runs it
(:func:`gruablate.execute.run_study`) and shows its progress; the logic lives there.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from ..cells.spec import SpecError
from ..execute import EXECUTORS, SweepEvent, cell_states, run_study
from ..store import EXPORT_FORMATS, NotARunDir, export_results
from ..study import StudyError, load_study, parse_option_value


def _task_options(pairs: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        task, dot, option = key.partition(".")
        if not sep or not dot or not task.strip() or not option.strip():
            raise click.UsageError(
                f"--task-option {pair!r}: expected TASK.OPTION=VALUE, e.g. copy.delay=50"
            )
        out.setdefault(task.strip(), {})[option.strip()] = parse_option_value(value.strip())
    return out


def _command_line(ctx: click.Context) -> str:
    """The command as typed: ``gruablate`` and the arguments Click was given."""
    args = sys.argv[1:] if ctx.find_root().info_name == Path(sys.argv[0]).name else None
    if args is None:  # called in-process (tests, another program): rebuild from options
        args = ctx.command_path.split()[1:] + [
            f"--{k.replace('_', '-')}={v}" for k, v in sorted(ctx.params.items())
            if v not in (None, False, ())]
    return shlex.join(["gruablate", *args])


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _cell_line(record: dict[str, Any]) -> str:
    status = record.get("status", "?")
    name = record.get("id", "?")
    if status == "ok":
        what = (f"{record.get('metric_name')} {_fmt(record.get('metric'))}"
                f" (baseline {_fmt(record.get('baseline'))})")
    else:
        what = str(record.get("error") or "")
        what = what if len(what) <= 120 else what[:117] + "..."
    secs = record.get("cell_seconds")
    return f"{status:<8} {name}  {what}  {_fmt(secs)}s"


class _Display:
    """Progress over cells: a rich bar on a terminal, plain lines otherwise."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.progress: Any = None
        self.task: Any = None

    def __call__(self, event: SweepEvent) -> None:
        s = event.summary
        if event.kind == "plan":
            self._plan(event)
        elif event.kind == "finish" and event.record is not None:
            line = _cell_line(event.record)
            style = {"ok": "green", "diverged": "yellow"}.get(event.record.get("status"), "red")
            if self.progress is not None:
                self.console.print(f"[{style}]{line}[/]", highlight=False)
            else:
                done = s.finished - s.by_others
                click.echo(f"[{done}/{s.to_run}] {line}", err=True)
        elif event.kind == "skip" and event.cell is not None:
            self._say(f"done meanwhile by another sweep: {event.cell.id}")
        elif event.kind == "wait":
            self._say(f"waiting for {s.waiting} cell(s) another sweep is running")
        elif event.kind == "warn":
            self._say(f"warning: {event.message}")
        elif event.kind == "note":
            self._say(event.message)
        elif event.kind == "end":
            if self.progress is not None:
                self._update(s)
                self.progress.stop()
            return
        if self.progress is not None:
            self._update(s)

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.console.print(text, highlight=False)
        else:
            click.echo(text, err=True)

    def _plan(self, event: SweepEvent) -> None:
        s = event.summary
        self._say(f"sweep {s.study!r}: {s.total} cells, {s.skipped} already done,"
                  f" {s.to_run} to run ({s.executor}) → {s.run_dir}")
        if not self.console.is_terminal or not s.to_run:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed[/] "
                       "[cyan]{task.fields[running]} running[/]"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task(s.study, total=s.to_run, failed=0, running=0)

    def _update(self, s: Any) -> None:
        self.progress.update(self.task, completed=s.finished,
                             failed=s.failed + s.diverged, running=s.running)


@click.command("sweep")
@click.option("--config", "config", type=click.Path(dir_okay=False),
              help="Study TOML file (see studies/); the options below override it.")
@click.option("--name", help="Study name (names the run directory runs/NAME).")
@click.option("--variants", help="Comma list of variant names or spec files ('all': catalogue).")
@click.option("--tasks", help="Comma list of tasks.")
@click.option("--hidden", help="Hidden sizes: comma list and ranges (32,64 or 16-64:16).")
@click.option("--layers", help="Layer counts, e.g. 1,2.")
@click.option("--seeds", help="Seeds, e.g. 0-2.")
@click.option("--backends", help="Comma list of backends (cpu, cuda).")
@click.option("--steps", type=int, help="Training steps per cell.")
@click.option("--batch", type=int, help="Batch size.")
@click.option("--lr", type=float, help="Learning rate.")
@click.option("--dtype", help="float32 or float64.")
@click.option("--init", help="Initialisation scheme (torch, orthogonal, chrono).")
@click.option("--clip", type=float, help="Gradient-norm clip (0: off).")
@click.option("--warmup", type=int, help="Learning-rate warm-up steps.")
@click.option("--decay", help="Learning-rate decay: none, cosine, linear.")
@click.option("--dropout", type=float,
              help="Dropout between stacked layers, in [0, 1) (0: off; needs layers >= 2).")
@click.option("--zoneout", type=float, help="Zoneout on h, in [0, 1) (0: off).")
@click.option("--bidirectional/--no-bidirectional", default=None,
              help="Layers run both ways in time (tasks read out at the last step only).")
@click.option("--trials", type=int,
              help="Search trials per variant and task: the study's [search], or"
                   " lr ~ loguniform(1e-4, 3e-2) when it has none.")
@click.option("-o", "--task-option", "task_option", multiple=True, metavar="TASK.OPT=VALUE",
              help="A task option, e.g. -o copy.delay=50 (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory [runs/NAME].")
@click.option("--jobs", "-j", type=click.IntRange(min=1),
              help="Local worker processes [all cores].")
@click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True)
@click.option("--scheduler", help="dask scheduler address (with --executor dask).")
@click.option("--scheduler-file", type=click.Path(dir_okay=False),
              help="dask scheduler file (with --executor dask).")
@click.option("--rerun-failed", is_flag=True, help="Also rerun cells recorded as failed.")
@click.option("--force", is_flag=True, help="Rerun every cell, recorded or not.")
@click.option("--export", "export", type=click.Choice(EXPORT_FORMATS), multiple=True,
              help="Also write results.csv / results.parquet into the run directory.")
@click.option("--no-report", is_flag=True, help="Do not write the report afterwards.")
@click.option("--dry-run", is_flag=True, help="List the cells and exit.")
@click.pass_context
def sweep(
    ctx: click.Context, config: str | None, name: str | None, variants: str | None,
    tasks: str | None, hidden: str | None, layers: str | None, seeds: str | None,
    backends: str | None, steps: int | None, batch: int | None, lr: float | None,
    dtype: str | None, init: str | None, clip: float | None, warmup: int | None,
    decay: str | None, dropout: float | None, zoneout: float | None,
    bidirectional: bool | None, trials: int | None,
    task_option: tuple[str, ...], out: str | None,
    jobs: int | None,
    executor: str, scheduler: str | None, scheduler_file: str | None, rerun_failed: bool,
    force: bool, export: tuple[str, ...], no_report: bool, dry_run: bool,
) -> None:
    """Run a study: variants x tasks x hidden x layers x seeds x backends (x search
    trials, when the study has a [search] or --trials is given).

    With no options, runs the quick default study (a few minutes on 2 cores) and writes
    its report. Rerunning the same command resumes: finished cells are skipped.
    """
    overrides = dict(name=name, variants=variants, tasks=tasks, hidden=hidden, layers=layers,
                     seeds=seeds, backends=backends, steps=steps, batch=batch, lr=lr,
                     dtype=dtype, init=init, clip=clip, warmup=warmup, decay=decay,
                     dropout=dropout, zoneout=zoneout, bidirectional=bidirectional,
                     trials=trials)
    try:
        study = load_study(config, overrides=overrides, task_options=_task_options(task_option))
        for note in study.notes:
            click.echo(f"note: {note}", err=True)
        if dry_run:
            states = cell_states(study, out)
            for cell, state in states:
                click.echo(f"{state:<8} {cell.id}")
            click.echo(f"{len(states)} cells → {out or f'runs/{study.name}'}")
            return
        summary = run_study(
            study, out=out, jobs=jobs, executor=executor, scheduler=scheduler,
            scheduler_file=scheduler_file, rerun_failed=rerun_failed, force=force,
            on_event=_Display(), command=_command_line(ctx),
        )
    except (StudyError, SpecError, NotARunDir) as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(summary.line())
    if summary.write_error:
        click.echo(f"error: {summary.write_error}", err=True)
    for cell_id in summary.failed_ids:
        click.echo(f"  failed: {cell_id}")
    if summary.failed:
        click.echo("  (their records hold the error; rerun with --rerun-failed)")
    for fmt in export:
        click.echo(f"exported {export_results(summary.run_dir, fmt)}")
    if (not no_report and not summary.interrupted and not summary.write_error
            and summary.finished + summary.skipped):
        from ..report import write_report

        path = write_report([summary.run_dir])
        click.echo(f"report: {path}")
    ctx.exit(summary.exit_code)
