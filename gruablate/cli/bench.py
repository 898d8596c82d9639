"""``gruablate run bench``: time the kernels over a grid, beside PyTorch if asked.

Parses options into a :class:`gruablate.bench.BenchConfig`, runs
:func:`gruablate.bench.run_bench`, writes each shape's records into the run directory
as soon as they are measured, and prints the plain table at the end.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import click

from ..bench import (
    PRESETS,
    BenchConfig,
    BenchError,
    all_variants,
    format_table,
    run_bench,
    study_of,
    write_records,
)
from ..store import NotARunDir


def _names(opt: str, text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise click.UsageError(f"--{opt}: empty list")
    return items


def _ints(opt: str, text: str | None, allow_same: bool = False) -> tuple[Any, ...] | None:
    items = _names(opt, text)
    if items is None:
        return None
    out: list[int | None] = []
    for item in items:
        if allow_same and item == "same":
            out.append(None)
            continue
        try:
            out.append(int(item))
        except ValueError:
            hint = " or 'same'" if allow_same else ""
            raise click.UsageError(
                f"--{opt}: {item!r} is not an integer{hint} (give a comma list, e.g. 32,64)"
            ) from None
    return tuple(out)


@click.command("bench")
@click.option("--preset", type=click.Choice(sorted(PRESETS)),
              help="A ready grid: standard (T=100, B=32, I=H, H=32..512), fastrnns"
                   " (T=100, B=64, I=H=512), stream (B=1, H=128). Options below override it.")
@click.option("--variants", help="Comma list of variants or spec files ('all': the catalogue)"
                                 " [gru_reset_after,lstm].")
@click.option("--hidden", help="Hidden sizes, comma list [32,64,128,256,512].")
@click.option("--batch", help="Batch sizes [32].")
@click.option("--seq-len", "seq_len", help="Sequence lengths [100].")
@click.option("--input-size", "input_size", help="Input sizes, or 'same' for I = H [same].")
@click.option("--backends", help="Comma list of cpu, cuda [cpu].")
@click.option("--dtypes", help="Comma list of float32, float64 [float32].")
@click.option("--modes", help="Comma list of inference, train, stream [inference,train].")
@click.option("--peers", help="'torch': also time torch.nn.GRU and torch.nn.LSTM.")
@click.option("--threads", type=click.IntRange(min=1),
              help="Threads for gruablate, PyTorch and BLAS [every usable core].")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed calls per round.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Rounds; each times every case of a shape in turn.")
@click.option("--warmup", type=click.IntRange(min=1), default=2, show_default=True,
              help="Untimed calls first (compilation).")
@click.option("--no-peak", is_flag=True, help="Skip the matrix-product peak measurement.")
@click.option("--peak-size", type=click.IntRange(min=64), default=2048, show_default=True,
              help="Size of the square peak matrix product.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Run directory [runs/bench-DATE-TIME].")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def bench(
    preset: str | None, variants: str | None, hidden: str | None, batch: str | None,
    seq_len: str | None, input_size: str | None, backends: str | None, dtypes: str | None,
    modes: str | None, peers: str | None, threads: int | None, repeats: int, rounds: int,
    warmup: int, no_peak: bool, peak_size: int, out: str | None, quiet: bool,
) -> None:
    """Time forward (inference) and training steps of variants over a grid.

    Medians of interleaved repeats with their spread, ms, sequences/s and GFLOP/s (also
    as a fraction of the machine's measured matrix-product peak); with --peers torch,
    PyTorch's GRU and LSTM in the same process at the same thread count. One record per
    measurement lands in the run directory (gruablate.load_results reads it).
    """
    fields: dict[str, Any] = dict(PRESETS[preset]) if preset else {}
    names = _names("variants", variants)
    if names == ("all",):
        names = all_variants()
    given = dict(
        variants=names, hidden=_ints("hidden", hidden), batch=_ints("batch", batch),
        seq_len=_ints("seq-len", seq_len), input_size=_ints("input-size", input_size, True),
        backends=_names("backends", backends), dtypes=_names("dtypes", dtypes),
        modes=_names("modes", modes),
        peers=() if peers in (None, "none") else _names("peers", peers),
    )
    fields.update({k: v for k, v in given.items() if v is not None})
    config = BenchConfig(**fields, threads=threads, repeats=repeats, rounds=rounds,
                         warmup=warmup, peak=not no_peak, peak_size=peak_size)
    try:
        config = config.validate()
    except BenchError as exc:
        raise click.UsageError(str(exc)) from None
    run_dir = out or f"runs/bench-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    try:
        write_records(run_dir, [], study=study_of(config))
    except (NotARunDir, OSError) as exc:
        raise click.UsageError(f"--out: {exc}") from None

    def say(msg: str) -> None:
        if not quiet:
            click.echo(msg, err=True)

    try:
        records = run_bench(config, progress=say,
                            on_records=lambda recs: write_records(run_dir, recs,
                                                                  study=study_of(config)))
    except BenchError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(format_table(records))
    click.echo(f"{len(records)} records → {run_dir}")
