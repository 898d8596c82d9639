"""``gruablate run train``: train one model on one task and write its run record."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import click

from ..backends import BACKENDS
from ..init import SCHEMES
from ..optim import DECAYS
from ..tasks import TASKS, all_options
from ..vocabulary import DTYPES

#: Longest file name most file systems take, in bytes.
NAME_MAX = 255


def _task_option(name: str) -> Any:
    """A Click option for a task option, built from the registry (one source of truth)."""
    opt = all_options()[name]
    owners = [cls for cls in TASKS.values() if any(o.name == name for o in cls.options)]
    parts = []
    for cls in owners:
        own = next(o for o in cls.options if o.name == name)
        default = "" if own.default is None else f" (default {own.default!r})"
        parts.append(f"{cls.name}: {own.help}{default}")
    helps = "; ".join(parts)
    flag = "--" + name.replace("_", "-")
    if opt.type is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=helps)
    kind = click.Choice(opt.choices) if opt.choices else opt.type
    return click.option(flag, name, type=kind, default=None, help=helps)


def _with_task_options(func: Any) -> Any:
    for name in sorted(all_options(), reverse=True):
        func = _task_option(name)(func)
    return func


@click.command("train")
@click.option("--variant", default="gru", show_default=True,
              help="built-in variant name or path to a .toml spec")
@click.option("--task", default="adding", show_default=True,
              type=click.Choice(list(TASKS)), help="task from the registry")
@click.option("--hidden", default=64, show_default=True, type=click.IntRange(min=1),
              help="hidden size per layer")
@click.option("--layers", default=1, show_default=True, type=click.IntRange(min=1),
              help="stacked layers")
@click.option("--steps", default=1000, show_default=True, type=click.IntRange(min=1),
              help="optimiser steps")
@click.option("--batch", default=32, show_default=True, type=click.IntRange(min=1),
              help="sequences per step")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Adam learning rate")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="seed of parameters and data")
@click.option("--backend", default="cpu", show_default=True, type=click.Choice(BACKENDS))
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(DTYPES))
@click.option("--init", "init", default="torch", show_default=True, type=click.Choice(SCHEMES),
              help="initialisation scheme")
@click.option("--clip", default=1.0, show_default=True, type=float,
              help="max global gradient norm (0: no clipping)")
@click.option("--warmup", default=0, show_default=True, type=click.IntRange(min=0),
              help="linear warm-up steps")
@click.option("--decay", default="none", show_default=True, type=click.Choice(DECAYS),
              help="learning-rate decay to zero at the last step")
@click.option("--dropout", default=0.0, show_default=True, type=float,
              help="dropout between stacked layers, in [0, 1) (needs --layers >= 2)")
@click.option("--zoneout", default=0.0, show_default=True, type=float,
              help="zoneout on h, in [0, 1): each unit keeps its h with this probability")
@click.option("--bidirectional", is_flag=True, default=False,
              help="each layer also runs backwards in time (tasks read out at the last"
                   " step only)")
@click.option("--eval-every", type=click.IntRange(min=1), default=None,
              help="validate every N steps  [default: steps/10]")
@click.option("--blas-threads", type=click.IntRange(min=0), default=1, show_default=True,
              help="BLAS threads during training (0: library default)")
@click.option("--out", default=None, metavar="PATH",
              help="record file (*.json) or folder  [default: runs/train/<id>.json]")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="show a progress bar on stderr")
@_with_task_options
def train(variant: str, task: str, out: str | None, blas_threads: int, progress: bool,
          **kwargs: Any) -> None:
    """Train one model on one task; write its run record as JSON.

    Task options (--seq-len, --delay, --mode, --permute, --path, ...) apply to the tasks
    that have them; giving one the chosen task lacks is an error. Every option and the
    output path are checked before training; Ctrl-C stops the run and still writes
    its record (status "interrupted", exit status 130).
    """
    from ..backends import get_backend
    from ..train import check_config, run_id, write_record
    from ..train import train as train_api

    task_options = {k: kwargs.pop(k) for k in all_options()}
    try:
        config = check_config(variant, task, blas_threads=blas_threads or None,
                              **kwargs, **task_options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    folder, file = _output(out)
    if not get_backend(config.backend).is_compiled(config.spec, config.dtype):
        click.echo(f"compiling kernels for {config.spec.name} ({config.dtype}) on first use"
                   " (10–30 s, once: Numba's cache keeps them)", err=True)
    interrupted = False
    try:
        record = train_api(config.spec, config.task, blas_threads=blas_threads or None,
                           progress=progress, **kwargs)
    except KeyboardInterrupt as exc:
        record = getattr(exc, "record", None)
        if record is None:  # stopped before the first step: nothing to keep
            click.echo("interrupted before training started; nothing written", err=True)
            raise SystemExit(130) from None
        interrupted = True
    path = file if file is not None else folder / f"{run_id(record)}.json"
    try:
        write_record(record, path)
    except OSError as exc:
        click.echo(json.dumps(record, default=str))
        click.echo(f"error: cannot write the record to {path}: {exc.strerror or exc};"
                   " it is printed above", err=True)
        raise SystemExit(1) from None
    if record["status"] == "ok":
        direction = "lower" if record["lower_is_better"] else "higher"
        click.echo(
            f"ok: test {record['metric_name']} {record['metric']:.4g} (baseline"
            f" {record['baseline']:.4g}, {direction} is better), val {record['val_metric']:.4g};"
            f" {record['train_seconds']:.1f} s, {_rate(record)} steps/s -> {path}"
        )
        if not _beats_baseline(record):
            click.echo(f"note: the model is no better than the trivial baseline after"
                       f" {record['steps']} steps; it has not learned the task yet (more"
                       " steps, another learning rate, or see docs/TRAINING.md)", err=True)
    elif interrupted:
        click.echo(f"{record['error']}; the record -> {path}", err=True)
    else:
        click.echo(f"{record['status']} after {record['steps_done']} steps: {record['error']}"
                   f" -> {path}", err=True)
    if interrupted:
        raise SystemExit(130)
    if record["status"] == "failed":
        raise SystemExit(1)


def _beats_baseline(record: dict[str, Any]) -> bool:
    metric, baseline = record["metric"], record["baseline"]
    return metric < baseline if record["lower_is_better"] else metric > baseline


def _output(given: str | None) -> tuple[Path, Path | None]:
    """The record's folder and, when ``--out`` names a ``.json`` file, that file; checked
    (and the folder made) now, so a bad path fails before training, not after it."""
    if given is not None and "\x00" in given:  # only from Python: argv cannot hold one
        raise click.BadParameter("the path contains a NUL character", param_hint="'--out'")
    out = None if given is None else Path(given)
    if out is None:
        folder, file = Path("runs") / "train", None
    elif out.is_dir() or out.suffix != ".json":
        folder, file = out, None
    else:
        folder, file = out.parent, out
    for part in (out or folder).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise click.BadParameter(f"the name {part[:40]!r}... is longer than {NAME_MAX}"
                                     " bytes", param_hint="'--out'")
    if file is not None and file.exists() and not file.is_file():
        raise click.BadParameter(f"{file} exists and is not a file", param_hint="'--out'")
    if folder.exists() and not folder.is_dir():
        raise click.BadParameter(f"{folder} exists and is not a folder (name a .json file"
                                 " or a folder)", param_hint="'--out'")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass  # the record can be written here
    except OSError as exc:
        raise click.BadParameter(f"cannot write in {folder}: {exc.strerror or exc}",
                                 param_hint="'--out'") from None
    return folder, file


def _rate(record: dict[str, Any]) -> str:
    rate = record["steps_per_second"]
    return "-" if math.isnan(rate) else f"{rate:.1f}"
