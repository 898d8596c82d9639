"""``gruablate report RUN_DIR [RUN_DIR ...]``: figures, report.html and report.md."""

from __future__ import annotations

import click

from ..store import NotARunDir


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for the report [RUN_DIR/report of the first run].")
def report(run_dirs: tuple[str, ...], out: str | None) -> None:
    """Write figures (PNG + SVG), a self-contained report.html and report.md.

    RUN_DIR is a sweep's or a benchmark's run directory (runs/NAME); several are
    reported together, e.g. a sweep beside a benchmark.
    """
    from ..report import write_report

    try:
        path = write_report(list(run_dirs), out=out)
    except (NotARunDir, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"report: {path}")
    click.echo(f"        {path.with_name('report.md')} and the figures beside them")
