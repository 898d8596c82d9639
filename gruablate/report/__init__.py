"""``gruablate report``: figures, ``report.html`` and ``report.md`` from run directories.

>>> from gruablate.report import write_report
>>> write_report(["runs/quick"])          # doctest: +SKIP
PosixPath('runs/quick/report/report.html')

The modules each do one thing: :mod:`.data` reads and summarises the records,
:mod:`.figures` draws, :mod:`.tables` formats, :mod:`.html` and :mod:`.markdown` lay out.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from . import html, markdown
from ._io import write_text
from .data import ReportData, load
from .figures import FIGURES, make_figures, write_figures

__all__ = ["ReportData", "load", "write_report"]

# Names this package may have written before; a new report removes the ones it does
# not write again, so a stale figure never sits beside fresh data.
_OWNED = {f"{fn.__name__}.{ext}" for fn in FIGURES for ext in ("png", "svg")}


def write_report(run_dirs: str | Path | Iterable[str | Path], out: str | Path | None = None
                 ) -> Path:
    """Write the report of one or more run directories; returns ``report.html``'s path.

    ``out`` defaults to ``report/`` inside the first run directory. Raises
    :class:`~gruablate.store.NotARunDir` (a ``ValueError``) for a path that is not a
    run directory.
    """
    dirs = [Path(run_dirs)] if isinstance(run_dirs, str | Path) else [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("no run directory given")
    data = load(dirs)
    target = Path(out) if out is not None else dirs[0] / "report"
    target.mkdir(parents=True, exist_ok=True)
    figs = make_figures(data)
    written = {p.name for p in write_figures(figs, target)}
    for name in sorted(_OWNED - written):
        (target / name).unlink(missing_ok=True)
    write_text(target / "report.md", markdown.render(data, figs))
    return write_text(target / "report.html", html.render(data, figs))
