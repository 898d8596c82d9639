"""``report.md``: the summary in Markdown, figures linked beside it (PNG files)."""

from __future__ import annotations

from html import escape as html_escape

from .data import ReportData, status_counts
from .figures import FigureFile
from .tables import (
    Statistics,
    accuracy_rows,
    comparison_note,
    comparison_rows,
    environment_rows,
    header_rows,
    importance_note,
    importance_rows,
    interval_notes,
    peer_rows,
    problem_rows,
    statistics,
    study_rows,
    summary,
    variants_shown,
)


def text(value: object) -> str:
    """Text from the records (names, errors, descriptions) made inert in Markdown:
    renderers pass raw HTML through, so ``<``, ``>`` and ``&`` become entities, and the
    ``](`` that makes a link is broken; a newline would end a table row or a heading."""
    out = html_escape(str(value), quote=False).replace("](", "\\](")
    return out.replace("\n", " ").replace("\r", " ")


def _cell(value: object) -> str:
    return text(value).replace("|", "\\|")


def table(head: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(_cell(h) for h in head) + " |",
             "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render(data: ReportData, figs: list[FigureFile], stats: Statistics | None = None) -> str:
    """The whole Markdown document (``stats`` computed here when not given)."""
    stats = statistics(data) if stats is None else stats
    out = ["# gruablate report", "", "## What was run", ""]
    out += [table(["", ""], [list(r) for r in header_rows(data)]), ""]
    out += [table(["run", "study", "records"], [list(r) for r in study_rows(data)]), ""]
    counts = status_counts(data.cells)
    if counts:
        out += ["Training cells: " + text(", ".join(f"{v} {k}" for k, v in counts.items()))
                + ".",
                ""]
    head, rows = problem_rows(data)
    if rows:
        out += ["## Cells that failed or diverged", "",
                "Left out of means and intervals; marked in red in the accuracy figure.", "",
                table(head, rows), ""]
    found = summary(data)
    if found:
        out += ["## Summary", "", "Variants ranked by their estimate per task and size, each"
                " compared with the baseline variant on the seeds both ran (paired: the seeds"
                " share the data).", ""]
        for heading, lines in found:
            out += [f"### {text(heading)}", "", *(text(line) for line in lines), ""]
    head, rows = comparison_rows(stats.comparison)
    if rows:
        out += ["## Against the baseline variant", "", text(comparison_note()), "",
                table(head, rows), ""]
    head, rows = importance_rows(stats.importance)
    if rows:
        out += ["## Which settings mattered", "", text(importance_note()), "",
                table(head, rows), ""]
    if len(data.train):
        head, rows = accuracy_rows(data)
        out += ["## Accuracy", "", table(head, rows), ""]
        out += [*(text(n) for n in interval_notes(data)), ""]
    if len(data.bench):
        head, rows = peer_rows(data)
        if rows:
            out += ["## Beside PyTorch", "", "Ratio above 1: gruablate is faster.", "",
                    table(head, rows), ""]
    if figs:
        out += ["## Figures", ""]
        for f in figs:
            out += [f"### {text(f.title)}", "", f"![{text(f.title)}]({f.name}.png)", "",
                    text(f.caption), ""]
    shown = variants_shown(data)
    if shown:
        out += ["## Variants", ""]
        for label, v in shown:
            out += [f"### {text(label)}", ""]
            if v.description:
                out += [text(v.description), ""]
            out += ["$$", "\\begin{aligned}",
                    " \\\\\n".join(e.replace(" = ", " &= ", 1) for e in v.equations("latex")),
                    "\\end{aligned}", "$$", ""]
    out += ["## Environment", ""]
    for name, env in data.envs.items():
        out += [f"### {text(name)}", "",
                table(["", ""], [list(r) for r in environment_rows(env)]),
                ""]
    return "\n".join(out)
