"""``report.html``: one self-contained page — figures, tables, equations, environment.

Every image is embedded as a ``data:`` URI (SVG, so each keeps its own ids and stays
sharp); there are no scripts, stylesheets or fonts to fetch, so the file can be mailed
or archived alone.
"""

from __future__ import annotations

import base64
from html import escape

from .data import ReportData, status_counts
from .figures import FigureFile, equation_svg
from .tables import (
    Statistics,
    accuracy_rows,
    bench_rows,
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

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f4f4f4}tr.bad td{color:#c0392b}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto}
figcaption{font-size:.9em;color:#555}
.eq img{vertical-align:middle;margin:.15em 0}.eqtext{font-family:monospace;color:#555}
.note{color:#555;font-size:.9em}code{background:#f4f4f4;padding:0 .2em}
"""


def _uri(blob: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(blob).decode('ascii')}"


def _table(head: list[str], rows: list[list[str]], bad_col: int | None = None,
           ok_value: str = "") -> str:
    out = ["<table><thead><tr>", *(f"<th>{escape(h)}</th>" for h in head),
           "</tr></thead><tbody>"]
    for row in rows:
        bad = bad_col is not None and row[bad_col] != ok_value
        out.append('<tr class="bad">' if bad else "<tr>")
        out.extend(f"<td>{escape(str(c))}</td>" for c in row)
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _figure(f: FigureFile) -> str:
    return (f'<figure id="fig-{f.name}"><h3>{escape(f.title)}</h3>'
            f'<img alt="{escape(f.title)}" src="{_uri(f.svg, "image/svg+xml")}">'
            f"<figcaption>{escape(f.caption)} Files: <code>{f.name}.png</code>, "
            f"<code>{f.name}.svg</code>.</figcaption></figure>")


def render(data: ReportData, figs: list[FigureFile], stats: Statistics | None = None) -> str:
    """The whole page as text (``stats`` computed here when not given)."""
    stats = statistics(data) if stats is None else stats
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<title>gruablate report</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>gruablate report</h1>"]
    parts.append("<h2>What was run</h2>")
    parts.append(_table(["", ""], [list(r) for r in header_rows(data)]))
    parts.append(_table(["run", "study", "records"], [list(r) for r in study_rows(data)]))
    counts = status_counts(data.cells)
    if counts:
        text = ", ".join(f"{v} {k}" for k, v in counts.items())
        parts.append(f'<p class="note">Training cells: {escape(text)}.</p>')

    head, rows = problem_rows(data)
    if rows:
        parts.append("<h2>Cells that failed or diverged</h2>")
        parts.append('<p class="note">They are left out of means and intervals and marked '
                     "in red in the accuracy figure.</p>")
        parts.append(_table(head, rows, bad_col=1, ok_value="ok"))

    found = summary(data)
    if found:
        parts.append("<h2>Summary</h2>")
        parts.append('<p class="note">Variants ranked by their estimate per task and size; '
                     "each compared with the baseline variant on the seeds both ran (the "
                     "seeds share the data, so the comparison is paired). A difference "
                     "that holds on every seed is not yet a significance test: the tests "
                     "follow, against the baseline variant.</p>")
        for heading, lines in found:
            parts.append(f"<h3>{escape(heading)}</h3><ol>")
            parts.extend(f"<li>{escape(line.split('. ', 1)[1])}</li>" for line in lines)
            parts.append("</ol>")
    head, rows = comparison_rows(stats.comparison)
    if rows:
        parts.append("<h2>Against the baseline variant</h2>")
        parts.append(f'<p class="note">{escape(comparison_note())}</p>')
        parts.append(_table(head, rows))
    head, rows = importance_rows(stats.importance)
    if rows:
        parts.append("<h2>Which settings mattered</h2>")
        parts.append(f'<p class="note">{escape(importance_note())}</p>')
        parts.append(_table(head, rows))
    if len(data.train):
        parts.append("<h2>Accuracy</h2>")
        head, rows = accuracy_rows(data)
        parts.append(_table(head, rows))
        parts.extend(f'<p class="note">{escape(n)}</p>' for n in interval_notes(data))
    if len(data.bench):
        head, rows = peer_rows(data)
        if rows:
            parts.append("<h2>Beside PyTorch</h2>")
            parts.append(_table(head, rows))
        parts.append("<h2>Benchmark measurements</h2>")
        head, rows = bench_rows(data)
        parts.append(_table(head, rows))

    if figs:
        parts.append("<h2>Figures</h2>")
        parts.extend(_figure(f) for f in figs)

    shown = variants_shown(data)
    if shown:
        parts.append("<h2>Variants</h2>")
        parts.append('<p class="note">Equations generated from each spec (keep-gate '
                     "convention: <code>h' = u ⊙ h + (1 − u) ⊙ ĥ</code>).</p>")
        for label, v in shown:
            parts.append(f'<h3 id="variant-{escape(label)}">{escape(label)}</h3>')
            if v.description:
                parts.append(f"<p>{escape(v.description)}</p>")
            if v.citation:
                parts.append(f'<p class="note">{escape(v.citation)}</p>')
            for latex, text in zip(v.equations("latex"), v.equations("text"), strict=True):
                parts.append(_equation(latex, text))
    parts.append("<h2>Environment</h2>")
    for name, env in data.envs.items():
        parts.append(f"<h3>{escape(name)}</h3>")
        parts.append(_table(["", ""], [list(r) for r in environment_rows(env)]))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _equation(latex: str, text: str) -> str:
    try:
        svg = equation_svg(latex)
    except ValueError:  # mathtext cannot parse it: the Unicode form alone is still exact
        return f'<div class="eq"><span class="eqtext">{escape(text)}</span></div>'
    return (f'<div class="eq"><img alt="{escape(text)}" src="{_uri(svg, "image/svg+xml")}">'
            f' <span class="eqtext">{escape(text)}</span></div>')
