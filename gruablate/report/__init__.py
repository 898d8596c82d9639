"""``gruablate report``: figures, ``report.html`` and ``report.md`` from run directories.

>>> from gruablate.report import write_report
>>> write_report(["runs/quick"])          # doctest: +SKIP
PosixPath('runs/quick/report/report.html')

The modules each do one thing: :mod:`.data` reads and summarises the records,
:mod:`.figures` draws, :mod:`.tables` formats, :mod:`.html` and :mod:`.markdown` lay out.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from ..store import process_alive
from . import html, markdown, search_figures
from ._io import write_bytes, write_text
from .data import ReportData, load
from .figures import FIGURES, make_figures, write_figures
from .tables import Statistics, statistics

__all__ = ["ReportData", "load", "write_report"]

# The figures in report order: the grid's, then the searches'.
ALL_FIGURES = (*FIGURES, *search_figures.FIGURES)
# The tables written for reuse beside the documents, each as CSV and Parquet.
TABLES = ("comparison", "importance")
# Every file a report folder holds: a folder holding anything else is not ours to swap.
_OWNED = {f"{fn.__name__}.{ext}" for fn in ALL_FIGURES for ext in ("png", "svg")} | {
    f"{name}.{ext}" for name in TABLES for ext in ("csv", "parquet")} | {
    "report.md", "report.html"}


def write_report(run_dirs: str | Path | Iterable[str | Path], out: str | Path | None = None
                 ) -> Path:
    """Write the report of one or more run directories; returns ``report.html``'s path.

    ``out`` defaults to ``report/`` inside the first run directory. Raises
    :class:`~gruablate.store.NotARunDir` (a ``ValueError``) for a path that is not a
    run directory, and ``ValueError`` for an ``out`` folder holding files a report
    does not write.

    The report is written into a fresh folder beside ``out`` and swapped in whole when
    complete, so a killed report leaves the previous one (or none), never new figures
    beside an old page.
    """
    dirs = [Path(run_dirs)] if isinstance(run_dirs, str | Path) else [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("no run directory given")
    data = load(dirs)
    target = (Path(out) if out is not None else dirs[0] / "report").resolve()
    _check_ours(target)
    _remove_stale(target)
    staging = target.with_name(f".{target.name}.new-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        figs = make_figures(data, ALL_FIGURES)
        write_figures(figs, staging)
        stats = statistics(data)
        _write_tables(stats, staging)
        write_text(staging / "report.md", markdown.render(data, figs, stats))
        write_text(staging / "report.html", html.render(data, figs, stats))
        _swap(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / "report.html"


def _write_tables(stats: Statistics, out: Path) -> None:
    """The comparison and importance tables as CSV and Parquet, when they have rows."""
    import io

    for name in TABLES:
        table = getattr(stats, name)
        if not len(table):
            continue
        write_text(out / f"{name}.csv", table.to_csv(index=False))
        buf = io.BytesIO()
        # Parquet columns have one type: `hidden` holds sizes and "searched".
        mixed = {c: str for c in table.columns if table[c].dtype == object}
        table.astype(mixed).to_parquet(buf, index=False)
        write_bytes(out / f"{name}.parquet", buf.getvalue())


def _check_ours(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise ValueError(f"report folder {target} exists and is not a folder")
    if target.is_dir():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in _OWNED)
        if foreign:
            raise ValueError(f"report folder {target} holds files a report does not write"
                             f" ({foreign[0]}{', ...' if len(foreign) > 1 else ''});"
                             " choose an empty or new folder")


def _swap(staging: Path, target: Path) -> None:
    """Put ``staging`` where ``target`` is: two renames, the old folder removed after."""
    if not target.exists():
        os.rename(staging, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale(target: Path) -> None:
    """Remove what killed reports left beside ``target`` (folders of dead processes)."""
    if not target.parent.is_dir():
        return
    for p in target.parent.glob(f".{target.name}.*-*"):
        kind, _, pid = p.name.rpartition("-")
        if kind.endswith((".new", ".old")) and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)

