"""``gruablate run train``: train one model on one task and write its run record."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from ..init import SCHEMES
from ..layer import BACKENDS, DTYPES
from ..optim import DECAYS
from ..tasks import TASKS, all_options


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
@click.option("--hidden", default=64, show_default=True, type=int, help="hidden size per layer")
@click.option("--layers", default=1, show_default=True, type=int, help="stacked layers")
@click.option("--steps", default=1000, show_default=True, type=int, help="optimiser steps")
@click.option("--batch", default=32, show_default=True, type=int, help="sequences per step")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Adam learning rate")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of parameters and data")
@click.option("--backend", default="cpu", show_default=True, type=click.Choice(BACKENDS))
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(DTYPES))
@click.option("--init", "init", default="torch", show_default=True, type=click.Choice(SCHEMES),
              help="initialisation scheme")
@click.option("--clip", default=1.0, show_default=True, type=float,
              help="max global gradient norm (0: no clipping)")
@click.option("--warmup", default=0, show_default=True, type=int, help="linear warm-up steps")
@click.option("--decay", default="none", show_default=True, type=click.Choice(DECAYS),
              help="learning-rate decay to zero at the last step")
@click.option("--eval-every", type=int, default=None,
              help="validate every N steps  [default: steps/10]")
@click.option("--blas-threads", type=int, default=1, show_default=True,
              help="BLAS threads during training (0: library default)")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="record file (*.json) or folder  [default: runs/train/<id>.json]")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="show a progress bar on stderr")
@_with_task_options
def train(variant: str, task: str, out: Path | None, blas_threads: int, progress: bool,
          **kwargs: Any) -> None:
    """Train one model on one task; write its run record as JSON.

    Task options (--seq-len, --delay, --mode, --permute, --path, ...) apply to the tasks
    that have them; giving one the chosen task lacks is an error.
    """
    from ..train import run_id, write_record
    from ..train import train as train_api

    try:
        record = train_api(variant, task, blas_threads=blas_threads or None,
                           progress=progress, **kwargs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if out is None:
        path = Path("runs") / "train" / f"{run_id(record)}.json"
    elif out.suffix == ".json":
        path = out
    else:
        path = out / f"{run_id(record)}.json"
    write_record(record, path)
    direction = "lower" if record["lower_is_better"] else "higher"
    if record["status"] == "ok":
        click.echo(
            f"ok: test {record['metric_name']} {record['metric']:.4g} (baseline"
            f" {record['baseline']:.4g}, {direction} is better), val {record['val_metric']:.4g};"
            f" {record['train_seconds']:.1f} s, {_rate(record)} steps/s -> {path}"
        )
    else:
        click.echo(f"{record['status']} after {record['steps_done']} steps: {record['error']}"
                   f" -> {path}", err=True)
    if record["status"] == "failed":
        raise SystemExit(1)


def _rate(record: dict[str, Any]) -> str:
    rate = record["steps_per_second"]
    return "-" if math.isnan(rate) else f"{rate:.1f}"
