"""The report's figures, saved as PNG and SVG with byte-stable output.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas,
never through ``pyplot``: that keeps the report headless without switching the
caller's matplotlib backend. SVG ids are salted with a constant and no date is written,
so the same data always gives the same files.

Each figure function of :data:`FIGURES` returns a :class:`Drawing` (the figure with its
title and caption) or None when the data has nothing for it; :func:`make_figures` saves
them. The numbers a figure plots come from small public functions
(:func:`accuracy_points`, :func:`secondary_points`, :func:`speed_points`,
:func:`tradeoff_points`), so they can be checked without reading pixels.

Intervals over seeds come from :func:`~gruablate.report.data.seed_interval` and stay
inside the metric's bounds; step times show the range from the fastest to the slowest
seed. Lines and bands are drawn only over three x values or more: across two, a line
would invent the values between them, so such data gets points with error bars.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import cycle
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullFormatter

from ..tasks import TASKS, metric_bounds
from .data import (
    INTERVAL_NOTES,
    ReportData,
    interval_scale,
    peer_table,
    seed_interval,
    standard_bench,
)

_RC = {"svg.hashsalt": "gruablate-report", "svg.fonttype": "path", "figure.dpi": 100,
       "axes.grid": True, "grid.alpha": 0.3}
_BASELINE = {"color": "0.35", "linestyle": ":", "linewidth": 1.5}
_FAIL_COLOR = "#c0392b"
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_DASHES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
# A line or band needs this many distinct x values; with fewer it would only join
# two points and suggest values nobody measured in between.
MIN_LINE_POINTS = 3
# Columns of every table of estimates the figures draw.
_ESTIMATE_COLS = ("estimate", "ci_low", "ci_high", "scale", "seeds")


@dataclass(frozen=True)
class FigureFile:
    """One saved figure: its stem, title, caption and the two files' bytes."""

    name: str
    title: str
    caption: str
    png: bytes
    svg: bytes


@dataclass(frozen=True)
class Drawing:
    """A figure as drawn, before it is saved: the matplotlib figure (on an Agg canvas,
    so ``fig.canvas.draw()`` lays it out), its title and its caption."""

    fig: Figure
    title: str
    caption: str


def _render(fig: Figure) -> tuple[bytes, bytes]:
    FigureCanvasAgg(fig)
    with mpl.rc_context(_RC):
        png, svg = io.BytesIO(), io.BytesIO()
        fig.savefig(png, format="png", dpi=110, metadata={"Software": None})
        # The layout is settled by the first save; solving it again changes nothing.
        fig.set_layout_engine("none")
        fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    return png.getvalue(), svg.getvalue()


def _panels(n: int, width: float = 4.6, height: float = 3.6) -> tuple[Figure, list]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    with mpl.rc_context(_RC):
        fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


# ------------------------------------------------------------------ text
def number_text(value: Any) -> str:
    """A setting as a caption prints it: whole numbers without ``.0``.

    A column that holds a NaN anywhere (a record without the field) is float, so a
    sequence length of ``100`` arrives as ``100.0``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return str(value)
    f = float(value)
    if math.isfinite(f) and f == int(f):
        return str(int(f))
    return f"{f:g}"


def _one(df: pd.DataFrame, col: str) -> str:
    """The column's single value as text, or ``various``."""
    vals = sorted(df[col].dropna().unique()) if col in df else []
    return number_text(vals[0]) if len(vals) == 1 else "various"


def _plain(value: float, digits: int) -> str:
    text = f"{value:.{digits}g}"
    # 1e+03 reads worse than 1000 on an axis of parameter counts or milliseconds.
    return np.format_float_positional(float(text), trim="-") if "e" in text else text


def _tick_labels(ticks: list[float]) -> list[str]:
    """Plain labels with the fewest significant digits (up to 6) that say each tick's
    value: 16, not the 20 that one digit would round it to."""
    for digits in range(1, 7):
        labels = [_plain(t, digits) for t in ticks]
        if all(abs(float(s) - t) <= 1e-9 * abs(t) for s, t in zip(labels, ticks, strict=True)):
            return labels
    return labels


def _metric_label(name: str, lower: bool | None) -> str:
    if lower is None:
        return str(name)
    return f"{name} ({'lower' if lower else 'higher'} is better)"


def _size_label(h) -> str:
    return f"H = {int(h)}"


def _first(df: pd.DataFrame, col: str, default):
    """The column's first known value (cells that failed early may lack it)."""
    vals = df[col].dropna() if col in df else pd.Series(dtype=object)
    return vals.iloc[0] if len(vals) else default


def _options(sub: pd.DataFrame) -> str:
    opts = sorted(sub.get("task_options", pd.Series(dtype=object)).dropna().unique())
    if len(opts) != 1:
        return f"{len(opts)} option sets"
    d = json.loads(opts[0])
    return ", ".join(f"{k}={v}" for k, v in d.items() if v is not None) or "defaults"


def _interval_caption(table: pd.DataFrame) -> str:
    """What the estimates and intervals of ``table`` are, by metric where they differ:
    ``mse, ce: geometric mean over seeds, ...; accuracy: mean over seeds, ...``."""
    if not len(table):
        return ""
    kinds = {scale: sorted(set(g["metric_name"].astype(str)))
             for scale, g in table.groupby("scale", sort=True)}
    if len(kinds) == 1:
        return INTERVAL_NOTES[next(iter(kinds))]
    return "; ".join(f"{', '.join(names)}: {INTERVAL_NOTES[scale]}"
                     for scale, names in kinds.items())


# ------------------------------------------------------------------ colours
def _size_palette(hiddens: list) -> dict[str, tuple]:
    """Distinct colours for hidden sizes (a sequential map makes the small one vanish)."""
    colours = sns.color_palette("colorblind", len(hiddens))
    return {_size_label(h): c for h, c in zip(sorted(hiddens), colours, strict=True)}


def palette(variants: list[str]) -> dict[str, tuple]:
    """One colour per variant, the same in every figure."""
    colours = sns.color_palette("tab20" if len(variants) > 10 else "tab10", len(variants))
    return dict(zip(variants, colours, strict=True))


def _by_level(levels: Iterable, styles: Iterable) -> dict:
    """Each level (hidden size) its marker or dash, repeating when they run out."""
    return dict(zip(levels, cycle(styles), strict=False))


# ------------------------------------------------------------------ axes
def _decade_ticks(lo: float, hi: float, subs: tuple[float, ...]) -> list[float]:
    """``m × 10^k`` for each ``m`` in ``subs`` inside ``[lo, hi]`` (both > 0)."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    return [m * 10.0**k for k in range(first, last + 1) for m in subs
            if lo <= m * 10.0**k <= hi]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """At least two ticks inside ``[lo, hi]`` (both > 0) for a log axis: powers of ten
    over three decades or more, else 1-2-5 steps, else — a range narrower than one
    such step — a few linear steps."""
    decades = _decade_ticks(lo, hi, (1.0,))
    if len(decades) >= 3:
        return decades
    steps = _decade_ticks(lo, hi, (1.0, 2.0, 5.0))
    if len(steps) >= 2:
        return steps
    ticks = [float(t) for t in MaxNLocator(nbins=3).tick_values(lo, hi) if lo <= t <= hi]
    return ticks if len(ticks) >= 2 else [lo, hi]


def _log_axis(ax, axis: str = "y", ticks: list | None = None) -> None:
    """Log scale labelled with plain numbers (0.01, 100, not 10^-2), at least two labels.

    A range within one decade may hold one power of ten or none, which left an axis
    with a single label or none. ``ticks`` (hidden sizes) are used where two or more
    fall in the range. Call this last for the panel: it fixes the axis' limits to the
    data drawn so far, so that the chosen ticks stay inside them.
    """
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    which = ax.yaxis if axis == "y" else ax.xaxis
    get, put = (ax.get_ylim, ax.set_ylim) if axis == "y" else (ax.get_xlim, ax.set_xlim)
    lo, hi = get()
    inside = [float(t) for t in ticks or () if lo <= t <= hi]
    if len(inside) < 2:
        inside = _log_ticks(lo, hi)
    which.set_ticks(inside, _tick_labels(inside))
    which.set_minor_formatter(NullFormatter())
    put(lo, hi)


def _log_if_wide(ax, values: Iterable, axis: str = "y") -> None:
    """Log scale where positive values span more than 30×; a linear one keeps room."""
    v = pd.to_numeric(pd.Series(list(values), dtype=float), errors="coerce").dropna()
    if len(v) and (v > 0).all() and v.max() / v.min() > 30:
        _log_axis(ax, axis)


def _legend_outside(fig: Figure, entries: dict[str, Any]) -> None:
    """One legend to the right of the panels, never over them: the colours are the
    same in every panel, and a legend inside an axes hides curves, bars or points."""
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside right upper",
                   fontsize=8)


def _baseline_entry() -> Line2D:
    return Line2D([], [], **_BASELINE)


def _seeds_entry() -> Line2D:
    return Line2D([], [], marker="o", linestyle="none", markersize=3.5, color="0.55",
                  markeredgecolor="0.2", markeredgewidth=0.5)


def _dodge(n: int, width: float = 0.8) -> list[float]:
    """Offsets of ``n`` marks sharing one slot, spread over ``width`` (as seaborn)."""
    if n <= 1:
        return [0.0]
    step = width / n
    return [(j - (n - 1) / 2) * step for j in range(n)]


# ------------------------------------------------------------------ estimates
def interval_bounds(metric_name: str) -> tuple[float, float]:
    """The range an interval of ``metric_name`` must stay in: ``[0, 1]`` for any name
    holding ``accuracy`` (a secondary metric such as ``recall_accuracy`` is no task's
    main metric, so the registry does not know it), otherwise its task's bounds."""
    return (0.0, 1.0) if "accuracy" in str(metric_name) else metric_bounds(str(metric_name))


def _lower_is_better(metric_name: str) -> bool | None:
    """Direction of a metric named in a record; None where no task says."""
    if "accuracy" in metric_name:
        return False
    for cls in TASKS.values():
        if cls.metric_name == metric_name:
            return bool(cls.lower_is_better)
    return None


def _seed_values(g: pd.DataFrame, value: str) -> np.ndarray:
    ordered = g.sort_values("seed", kind="stable") if "seed" in g else g
    return pd.to_numeric(ordered[value], errors="coerce").dropna().to_numpy(dtype=float)


def _seed_table(df: pd.DataFrame, keys: list[str], value: str = "metric") -> pd.DataFrame:
    """Per group of ``keys`` (which hold ``metric_name``): the estimate and interval of
    :func:`seed_interval` inside the metric's bounds, its kind, and the seeds' values."""
    rows = []
    for key, g in df.groupby(keys, sort=True):
        row = dict(zip(keys, key, strict=True))
        vals = _seed_values(g, value)
        if not len(vals):
            continue
        bounds = interval_bounds(row["metric_name"])
        est, lo, hi = seed_interval(vals, bounds)
        rows.append({**row, "estimate": est, "ci_low": lo, "ci_high": hi,
                     "scale": interval_scale(bounds), "seeds": tuple(vals.tolist())})
    return pd.DataFrame(rows, columns=[*keys, *_ESTIMATE_COLS])


def _range_table(df: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Per group of ``keys``: the mean of ``value`` and the range from the smallest to
    the largest seed (step times: contention makes them skewed, the range is honest)."""
    rows = []
    for key, g in df.groupby(keys, sort=True):
        vals = _seed_values(g, value)
        if len(vals):
            rows.append({**dict(zip(keys, key, strict=True)), "estimate": float(vals.mean()),
                         "ci_low": float(vals.min()), "ci_high": float(vals.max()),
                         "scale": "range", "seeds": tuple(vals.tolist())})
    return pd.DataFrame(rows, columns=[*keys, *_ESTIMATE_COLS])


def _ok_cells(data: ReportData) -> pd.DataFrame:
    train = data.train
    return train[train["status"] == "ok"] if len(train) else train


def accuracy_points(data: ReportData) -> pd.DataFrame:
    """What the accuracy figure plots: per task × variant × hidden size, the test
    metric's estimate and 95% interval over the ok seeds (inside the metric's bounds),
    the interval's kind (``scale``, a key of ``INTERVAL_NOTES``) and the seeds."""
    ok = _ok_cells(data)
    if not len(ok):
        return pd.DataFrame(columns=["task", "metric_name", "variant", "hidden",
                                     *_ESTIMATE_COLS])
    return _seed_table(ok, ["task", "metric_name", "variant", "hidden"])


def secondary_points(data: ReportData) -> pd.DataFrame:
    """The metrics the ok cells report besides their task's main one (``test_metrics``,
    e.g. copy's ``recall_accuracy``), like :func:`accuracy_points`; ``metric_name``
    names the secondary metric."""
    cols = ["task", "metric_name", "variant", "hidden", *_ESTIMATE_COLS]
    ok = _ok_cells(data)
    if not len(ok) or "test_metrics" not in ok:
        return pd.DataFrame(columns=cols)
    rows = []
    for r in ok.itertuples(index=False):
        extra = json.loads(r.test_metrics) if isinstance(r.test_metrics, str) else {}
        for name, value in extra.items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if name != r.metric_name and number:
                rows.append({"task": r.task, "metric_name": name, "variant": r.variant,
                             "hidden": r.hidden, "seed": getattr(r, "seed", 0),
                             "metric": float(value)})
    if not rows:
        return pd.DataFrame(columns=cols)
    return _seed_table(pd.DataFrame(rows), ["task", "metric_name", "variant", "hidden"])


def speed_points(data: ReportData) -> pd.DataFrame:
    """What the sweep's speed figure plots: per task × variant × hidden size, the mean
    ms per training step, the fastest and slowest seed (``ci_low``, ``ci_high``) and
    every seed's time."""
    ok = _ok_cells(data)
    if not len(ok) or not ok["ms_per_step"].notna().any():
        return pd.DataFrame(columns=["task", "variant", "hidden", *_ESTIMATE_COLS])
    return _range_table(ok, ["task", "variant", "hidden"], "ms_per_step")


def tradeoff_points(data: ReportData) -> pd.DataFrame:
    """What the trade-off figure plots: :func:`accuracy_points` beside the step time
    (``ms`` the mean over seeds, ``ms_low`` and ``ms_high`` the fastest and slowest)."""
    keys = ["task", "variant", "hidden"]
    metric = accuracy_points(data)
    ms = speed_points(data).rename(columns={"estimate": "ms", "ci_low": "ms_low",
                                            "ci_high": "ms_high"})
    if not len(metric) or not len(ms):
        return pd.DataFrame(columns=[*metric.columns, "ms", "ms_low", "ms_high"])
    return metric.merge(ms[[*keys, "ms", "ms_low", "ms_high"]], on=keys, how="inner")


# ------------------------------------------------------------------ drawing
def _estimate(ax, x: float, row, colour, marker: str = "o",
              seeds_x: float | None = None):
    """One estimate with its interval as an error bar and its seeds as small dots at
    ``seeds_x`` (beside the bar, where the bar's line does not hide them)."""
    est, lo, hi = float(row.estimate), float(row.ci_low), float(row.ci_high)
    if not math.isfinite(est):
        return None
    yerr = [[max(est - lo, 0.0)], [max(hi - est, 0.0)]] if math.isfinite(lo + hi) else None
    handle = ax.errorbar([x], [est], yerr=yerr, fmt=marker, color=colour, markersize=6,
                         capsize=4, elinewidth=1.5, zorder=3)
    if len(row.seeds) > 1:
        ax.scatter(np.full(len(row.seeds), x if seeds_x is None else seeds_x), row.seeds,
                   s=10, color=colour, edgecolors="0.2", linewidths=0.5, alpha=0.7,
                   zorder=2)
    return handle


def _categorical(ax, table: pd.DataFrame, order: list[str], levels: list,
                 colour_of: Callable[[Any], Any]) -> dict:
    """Estimates per variant (x), dodged by hidden size where ``levels`` lists several
    (``[None]``: one mark per variant); returns a legend handle per level."""
    slot = {v: i for i, v in enumerate(order)}
    offsets = dict(zip(levels, _dodge(len(levels)), strict=True))
    width = 0.8 / len(levels)
    handles: dict = {}
    for row in table.itertuples(index=False):
        level = row.hidden if levels != [None] else None
        if row.variant not in slot or level not in offsets:
            continue
        x = slot[row.variant] + offsets[level]
        handle = _estimate(ax, x, row, colour_of(row), seeds_x=x + 0.3 * width)
        if handle is not None:
            handles.setdefault(level, handle)
    ax.set_xlim(-0.5, len(order) - 0.5)
    return handles


def _variant_ticks(ax, order: list[str], labels: list[str] | None = None) -> None:
    ax.set_xticks(range(len(order)), labels or order, rotation=30, ha="right")
    ax.set_xlabel("")


def _baselines(ax, values: Iterable) -> list[float]:
    found = sorted(set(float(b) for b in values if b is not None and math.isfinite(b)))
    for b in found:
        ax.axhline(b, **_BASELINE)
    return found


# ------------------------------------------------------------------ accuracy
def accuracy(data: ReportData, pal: dict) -> Drawing | None:
    """Test metric per variant and task: estimate and 95% interval over seeds inside
    the metric's bounds, the seeds as dots, the trivial baseline dotted, cells that
    failed or diverged written under the axis."""
    train = data.train
    if not len(train):
        return None
    points = accuracy_points(data)
    tasks = sorted(train["task"].dropna().unique())
    hiddens = sorted(train["hidden"].dropna().unique())
    multi = len(hiddens) > 1
    hpal = _size_palette(hiddens)
    fig, axes = _panels(len(tasks))
    legend: dict[str, Any] = {}
    for ax, task in zip(axes, tasks, strict=True):
        sub = train[train["task"] == task]
        pts = points[points["task"] == task]
        order = [v for v in data.variants if v in set(sub["variant"])]
        handles = _categorical(
            ax, pts, order, hiddens if multi else [None],
            (lambda r: hpal[_size_label(r.hidden)]) if multi else (lambda r: pal[r.variant]))
        if multi:
            for h in hiddens:
                if h in handles:
                    legend.setdefault(_size_label(h), handles[h])
        if not len(pts):
            ax.text(0.5, 0.5, "no cell of this task finished", transform=ax.transAxes,
                    ha="center", va="center", color=_FAIL_COLOR)
        base = _baselines(ax, sub["baseline"].dropna())
        _variant_ticks(ax, order, [_failure_label(sub, v) for v in order])
        for tick, v in zip(ax.get_xticklabels(), order, strict=True):
            if (sub[sub["variant"] == v]["status"] != "ok").any():
                tick.set_color(_FAIL_COLOR)
        ax.set_ylabel(_metric_label(_first(sub, "metric_name", "metric"),
                                    bool(_first(sub, "lower_is_better", True))))
        ax.set_title(f"{task}  ({_options(sub)})", fontsize=10)
        _log_if_wide(ax, [*pts["ci_low"], *pts["ci_high"], *pts["seeds"].explode(), *base])
        if base:
            legend["trivial baseline"] = _baseline_entry()
    if len(points):
        legend["seeds"] = _seeds_entry()
    _legend_outside(fig, legend)
    return Drawing(fig, "Accuracy per variant and task",
                   f"Test metric per variant: {_interval_caption(points)}; small dots "
                   "beside each bar: the seeds; dotted: the task's trivial baseline. Red "
                   "labels: cells that failed or diverged (left out).")


def _failure_label(sub: pd.DataFrame, variant: str) -> str:
    bad = sub[(sub["variant"] == variant) & (sub["status"] != "ok")]
    if not len(bad):
        return variant
    return f"{variant}\n✗ {len(bad)} {'/'.join(sorted(set(bad['status'].astype(str))))}"


# ------------------------------------------------------------------ secondary
def secondary(data: ReportData, pal: dict) -> Drawing | None:
    """The metrics tasks report besides their main one (copy's recall accuracy), per
    variant: estimate and 95% interval over seeds inside the metric's bounds, seeds
    as dots; one panel per task and metric."""
    points = secondary_points(data)
    if not len(points):
        return None
    panels = list(points[["task", "metric_name"]].drop_duplicates()
                  .sort_values(["task", "metric_name"]).itertuples(index=False))
    hiddens = sorted(points["hidden"].dropna().unique())
    multi = len(hiddens) > 1
    hpal = _size_palette(hiddens)
    fig, axes = _panels(len(panels))
    legend: dict[str, Any] = {}
    for ax, (task, name) in zip(axes, panels, strict=True):
        pts = points[(points["task"] == task) & (points["metric_name"] == name)]
        order = [v for v in data.variants if v in set(pts["variant"])]
        handles = _categorical(
            ax, pts, order, hiddens if multi else [None],
            (lambda r: hpal[_size_label(r.hidden)]) if multi else (lambda r: pal[r.variant]))
        if multi:
            for h in hiddens:
                if h in handles:
                    legend.setdefault(_size_label(h), handles[h])
        _variant_ticks(ax, order)
        ax.set_ylabel(_metric_label(name, _lower_is_better(name)))
        ax.set_title(f"{task}: {name}", fontsize=10)
        lo, hi = interval_bounds(name)
        if math.isfinite(lo) and math.isfinite(hi):
            # A bounded metric (an accuracy) on its whole range: a recall accuracy of
            # 0 then reads as nothing recalled, not as a point in a range of ±0.05.
            pad = 0.03 * (hi - lo)
            ax.set_ylim(lo - pad, hi + pad)
        else:
            _log_if_wide(ax, [*pts["ci_low"], *pts["ci_high"], *pts["seeds"].explode()])
    legend["seeds"] = _seeds_entry()
    _legend_outside(fig, legend)
    return Drawing(fig, "Secondary metrics per variant and task",
                   "Test metrics the tasks report besides their main one (e.g. copy's "
                   f"recall accuracy): {_interval_caption(points)}; small dots beside each "
                   "bar: the seeds.")


# ------------------------------------------------------------------ curves
def curves(data: ReportData, pal: dict) -> Drawing | None:
    """Validation metric against training step: mean over seeds with a band from the
    best to the worst seed (points with bars where fewer than three steps were logged)."""
    c = data.curves
    if not len(c) or not c["val_metric"].notna().any():
        return None
    c = c[c["val_metric"].notna()]
    tasks = sorted(c["task"].dropna().unique())
    hiddens = sorted(c["hidden"].dropna().unique())
    multi = len(hiddens) > 1
    dashes, markers = _by_level(hiddens, _DASHES), _by_level(hiddens, _MARKERS)
    fig, axes = _panels(len(tasks))
    legend: dict[str, Any] = {}
    few_anywhere = any_base = False
    for ax, task in zip(axes, tasks, strict=True):
        sub = c[c["task"] == task]
        stats = (sub.groupby(["variant", "hidden", "step"], sort=True)["val_metric"]
                 .agg(["mean", "min", "max"]).reset_index())
        steps = sorted(stats["step"].unique())
        few = len(steps) < MIN_LINE_POINTS
        few_anywhere |= few
        groups = list(stats.groupby(["variant", "hidden"], sort=True))
        gap = float(np.diff(steps).min()) if len(steps) > 1 else 1.0
        for ((variant, hidden), g), off in zip(groups, _dodge(len(groups), 0.5), strict=True):
            colour = pal[variant]
            if few:
                ax.errorbar(g["step"] + off * gap, g["mean"],
                            yerr=[g["mean"] - g["min"], g["max"] - g["mean"]],
                            fmt=markers[hidden] if multi else "o", color=colour, capsize=3)
            else:
                ax.plot(g["step"], g["mean"], color=colour,
                        linestyle=dashes[hidden] if multi else "-")
                ax.fill_between(g["step"], g["min"], g["max"], color=colour, alpha=0.18,
                                linewidth=0)
            legend.setdefault(variant, Line2D([], [], color=colour, linewidth=2))
        base = data.train.loc[data.train["task"] == task, "baseline"].dropna().unique()
        base = _baselines(ax, base)
        any_base |= bool(base)
        name = _first(data.train[data.train["task"] == task], "metric_name", "metric")
        ax.set_xlabel("step")
        ax.set_ylabel(f"validation {name}")
        ax.set_title(task, fontsize=10)
        _log_if_wide(ax, [*stats["min"], *stats["max"], *base])
        if ax.get_yscale() == "linear" and len(stats):
            # The first evaluations of an untrained model can be far off; keep the
            # scale on where the curves spend their time and the baseline.
            top = max([stats["mean"].quantile(0.9), *base]) * 1.3
            low = float(stats["min"].min())
            ax.set_ylim(bottom=0.9 * low if low > 0 else 1.1 * low, top=top)
    legend = {v: legend[v] for v in data.variants if v in legend}
    if multi:
        for h in hiddens:
            legend[_size_label(h)] = Line2D([], [], color="0.3", linestyle=dashes[h],
                                            marker=markers[h] if few_anywhere else None)
    if any_base:
        legend["trivial baseline"] = _baseline_entry()
    _legend_outside(fig, legend)
    return Drawing(fig, "Learning curves",
                   "Validation metric during training: mean over seeds, band (bar, where "
                   "fewer than three evaluations were logged) from the best to the worst "
                   "seed; dotted: trivial baseline.")


# ------------------------------------------------------------------ speed
def speed(data: ReportData, pal: dict) -> Drawing | None:
    """Time against hidden size on log axes, one line per variant, PyTorch peers dashed
    (bench runs); or the training step time of the sweep's cells."""
    if len(data.bench):
        return _bench_speed(data, pal)
    points = speed_points(data)
    if not len(points):
        return None
    ok = _ok_cells(data)
    tasks = sorted(points["task"].unique())
    fig, axes = _panels(len(tasks))
    legend: dict[str, Any] = {}
    for ax, task in zip(axes, tasks, strict=True):
        pts = points[points["task"] == task]
        order = [v for v in data.variants if v in set(pts["variant"])]
        hiddens = sorted(int(h) for h in pts["hidden"].unique())
        if len(hiddens) == 1:
            # One size: a line would be a single point, so compare variants side by side.
            handles = _categorical(ax, pts, order, [None], lambda r: pal[r.variant])
            _variant_ticks(ax, order)
            ax.set_xlabel(f"hidden size H = {hiddens[0]}")
        else:
            handles = _over_sizes(ax, pts, order, hiddens, pal)
            ax.set_xlabel("hidden size H")
            _log_axis(ax, "x", ticks=hiddens)
        for v in order:
            if v in handles:
                legend.setdefault(v, handles[v])
        ax.set_ylabel("ms per training step")
        ax.set_title(f"{task} (batch {_one(ok[ok['task'] == task], 'batch')})", fontsize=10)
        _log_axis(ax, "y")
    legend = {v: legend[v] for v in data.variants if v in legend}
    legend["seeds"] = _seeds_entry()
    _legend_outside(fig, legend)
    return Drawing(fig, "Training speed against hidden size",
                   "Wall time of one training step (forward, backward, Adam) measured "
                   "during the sweep: mean over seeds with a bar (a band, over three sizes "
                   "or more) from the fastest to the slowest seed; small dots: the seeds; "
                   "log axes. Cells ran side by side, so this is indicative, not a "
                   "benchmark (see gruablate run bench).")


def _over_sizes(ax, pts: pd.DataFrame, order: list[str], hiddens: list[int],
                pal: dict) -> dict:
    """Step times against hidden size on a log x axis: lines with a band over three
    sizes or more, otherwise points with bars, the variants dodged apart."""
    handles: dict = {}
    if len(hiddens) >= MIN_LINE_POINTS:
        for v in order:
            g = pts[pts["variant"] == v].sort_values("hidden")
            (line,) = ax.plot(g["hidden"], g["estimate"], color=pal[v], marker="o")
            ax.fill_between(g["hidden"], g["ci_low"], g["ci_high"], color=pal[v],
                            alpha=0.18, linewidth=0)
            handles[v] = line
        return handles
    # Dodge by a fraction of the closest two sizes' ratio, on the log scale.
    spread = 0.6 * math.log2(min(b / a for a, b in zip(hiddens, hiddens[1:], strict=False)))
    width = 0.8 / len(order)
    for v, off in zip(order, _dodge(len(order)), strict=True):
        for row in pts[pts["variant"] == v].itertuples(index=False):
            x = row.hidden * 2 ** (off * spread)
            h = _estimate(ax, x, row, pal[v], seeds_x=x * 2 ** (0.3 * width * spread))
            if h is not None:
                handles.setdefault(v, h)
    return handles


def _bench_speed(data: ReportData, pal: dict) -> Drawing | None:
    b = standard_bench(data.bench)
    if not len(b):
        return None
    modes = sorted(b["mode"].dropna().unique())
    impls = [i for i in ("gruablate", "torch") if i in set(b["impl"])]
    style = {"gruablate": ("-", "o"), "torch": ((0, (4, 2)), "s")}
    fig, axes = _panels(len(modes))
    legend: dict[str, Any] = {}
    for ax, mode in zip(axes, modes, strict=True):
        sub = b[b["mode"] == mode]
        hiddens = sorted(int(h) for h in sub["hidden"].unique())
        joined = len(hiddens) >= MIN_LINE_POINTS
        for (variant, impl), g in sub.groupby(["variant", "impl"], sort=True):
            med = g.groupby("hidden")["median_ms"].median().sort_index()
            dash, marker = style.get(impl, ("-", "o"))
            ax.plot(med.index, med.to_numpy(), color=pal[variant], marker=marker,
                    linestyle=dash if joined else "none")
            legend.setdefault(variant, Line2D([], [], color=pal[variant], linewidth=2))
        ax.set_xlabel("hidden size H")
        ax.set_ylabel("median ms")
        ax.set_title(mode, fontsize=10)
        _log_axis(ax, "x", ticks=hiddens)
        _log_axis(ax, "y")
    legend = {v: legend[v] for v in data.variants if v in legend}
    for impl in impls:
        dash, marker = style.get(impl, ("-", "o"))
        legend[impl] = Line2D([], [], color="0.3", linestyle=dash, marker=marker)
    _legend_outside(fig, legend)
    return Drawing(
        fig, "Speed against hidden size",
        f"Median time per {_describe_setting(b)}; solid and circles: gruablate, dashed "
        "and squares: its PyTorch peer (points alone where fewer than three sizes were "
        "measured); log axes.")


def _describe_setting(b: pd.DataFrame) -> str:
    parts = [f"sequence (T = {_one(b, 'seq_len')}, B = {_one(b, 'batch')}",
             f"{_one(b, 'dtype')}", f"{_one(b, 'threads')} threads",
             f"backend {_one(b, 'backend')})"]
    return ", ".join(parts)


def speed_ratio(data: ReportData, pal: dict) -> Drawing | None:
    """PyTorch time / gruablate time for each variant with a peer (above 1: faster)."""
    peers = peer_table(standard_bench(data.bench))
    if not len(peers):
        return None
    modes = sorted(peers["mode"].unique())
    fig, axes = _panels(len(modes))
    legend: dict[str, Any] = {}
    for ax, mode in zip(axes, modes, strict=True):
        sub = peers[peers["mode"] == mode]
        hiddens = sorted(int(h) for h in sub["hidden"].unique())
        joined = len(hiddens) >= MIN_LINE_POINTS
        for variant, g in sub.groupby("variant", sort=True):
            ratio = g.groupby("hidden")["ratio"].median().sort_index()
            ax.plot(ratio.index, ratio.to_numpy(), color=pal[variant], marker="o",
                    linestyle="-" if joined else "none")
            legend.setdefault(variant, Line2D([], [], color=pal[variant], marker="o"))
        ax.axhline(1.0, **_BASELINE)
        ax.set_xlabel("hidden size H")
        ax.set_ylabel("PyTorch time / gruablate time")
        ax.set_title(mode, fontsize=10)
        _log_axis(ax, "x", ticks=hiddens)
    legend = {v: legend[v] for v in data.variants if v in legend}
    legend["as fast as PyTorch"] = _baseline_entry()
    _legend_outside(fig, legend)
    return Drawing(fig, "Speed relative to the PyTorch peer",
                   "Ratio of median times, same shapes and threads; above the dotted "
                   "line gruablate is faster.")


# ------------------------------------------------------------- trade-off
def tradeoff(data: ReportData, pal: dict) -> Drawing | None:
    """Speed–accuracy trade-off: each variant × hidden size as one point per task, with
    the metric's interval and the step time's range over seeds."""
    points = tradeoff_points(data)
    if not len(points):
        return None
    ok = _ok_cells(data)
    tasks = sorted(points["task"].unique())
    hiddens = sorted(points["hidden"].unique())
    multi = len(hiddens) > 1
    markers = _by_level(hiddens, _MARKERS)
    fig, axes = _panels(len(tasks))
    legend: dict[str, Any] = {}
    any_base = False
    for ax, task in zip(axes, tasks, strict=True):
        pts = points[points["task"] == task]
        for row in pts.itertuples(index=False):
            est, ms = float(row.estimate), float(row.ms)
            ax.errorbar([ms], [est],
                        xerr=[[max(ms - row.ms_low, 0.0)], [max(row.ms_high - ms, 0.0)]],
                        yerr=[[max(est - row.ci_low, 0.0)], [max(row.ci_high - est, 0.0)]],
                        fmt=markers[row.hidden] if multi else "o", color=pal[row.variant],
                        markersize=6, capsize=3, elinewidth=1.2, zorder=3)
            legend.setdefault(row.variant, Line2D([], [], color=pal[row.variant],
                                                  marker="o", linestyle="none"))
        base = _baselines(ax, ok.loc[ok["task"] == task, "baseline"].dropna())
        any_base |= bool(base)
        ax.set_xlabel("ms per training step")
        name = str(pts["metric_name"].iloc[0])
        ax.set_ylabel(_metric_label(name, _lower_is_better(name)))
        ax.set_title(task, fontsize=10)
        _log_axis(ax, "x")
        _log_if_wide(ax, [*pts["ci_low"], *pts["ci_high"], *base])
    legend = {v: legend[v] for v in data.variants if v in legend}
    if multi:
        for h in hiddens:
            legend[_size_label(h)] = Line2D([], [], color="0.3", marker=markers[h],
                                            linestyle="none")
    if any_base:
        legend["trivial baseline"] = _baseline_entry()
    _legend_outside(fig, legend)
    return Drawing(fig, "Speed–accuracy trade-off",
                   f"Test metric against time per training step. Vertical bars: "
                   f"{_interval_caption(points)}; horizontal bars: mean step time, from the "
                   "fastest to the slowest seed. Best is toward the corner of fast and "
                   "accurate.")


# ------------------------------------------------------------- parameters
def params(data: ReportData, pal: dict) -> Drawing | None:
    """Trainable parameters per variant (the whole model of each task, from the
    records), or of one layer from the spec for a bench-only report."""
    if len(data.train) and data.train["params"].notna().any():
        df = (data.train.dropna(subset=["params"])
              .groupby(["task", "variant", "hidden"], as_index=False)["params"].first())
        what = "trainable parameters of the whole model (records)"
    elif len(data.bench):
        from ..cells.catalogue import get_variant

        rows = []
        keys = data.bench[["variant", "hidden", "input_size"]].dropna().drop_duplicates()
        for v, h, i in keys.itertuples(index=False):
            try:
                n = get_variant(v).param_count(int(i), int(h))
            except ValueError:
                continue  # a variant this catalogue does not know
            rows.append({"task": "one layer", "variant": v, "hidden": int(h), "params": n})
        df = pd.DataFrame(rows).drop_duplicates(["variant", "hidden"])
        what = "trainable parameters of one layer with I = input size (spec)"
        if not len(df):
            return None
    else:
        return None
    tasks = sorted(df["task"].unique())
    hiddens = sorted(df["hidden"].unique())
    multi = len(hiddens) > 1
    hpal = _size_palette(hiddens)
    fig, axes = _panels(len(tasks))
    legend: dict[str, Any] = {}
    for ax, task in zip(axes, tasks, strict=True):
        sub = df[df["task"] == task]
        order = [v for v in data.variants if v in set(sub["variant"])]
        slot = {v: i for i, v in enumerate(order)}
        levels = hiddens if multi else [None]
        offsets = dict(zip(levels, _dodge(len(levels)), strict=True))
        for row in sub.itertuples(index=False):
            level = row.hidden if multi else None
            colour = hpal[_size_label(row.hidden)] if multi else pal[row.variant]
            bar = ax.bar(slot[row.variant] + offsets[level], row.params,
                         width=0.8 / len(levels), color=colour)
            if multi:
                legend.setdefault(_size_label(row.hidden), bar)
        _variant_ticks(ax, order)
        ax.set_xlim(-0.5, len(order) - 0.5)
        ax.set_ylabel("trainable parameters")
        ax.set_title(task, fontsize=10)
        if multi:
            _log_axis(ax, "y")
    legend = {k: legend[k] for k in (_size_label(h) for h in hiddens) if k in legend}
    _legend_outside(fig, legend)
    return Drawing(fig, "Parameter counts",
                   f"Number of {what}{'; log axis' if multi else ''}.")


FIGURES: tuple[Callable[[ReportData, dict], Drawing | None], ...] = (
    accuracy, secondary, curves, speed, speed_ratio, tradeoff, params,
)


def make_figures(data: ReportData,
                 figures: Iterable[Callable[[ReportData, dict], Drawing | None]] = FIGURES
                 ) -> list[FigureFile]:
    """Every figure of ``figures`` the data supports, in their order, drawn and saved;
    each file is named after its function."""
    pal = palette(data.variants)
    out = []
    with mpl.rc_context(_RC):
        for fn in figures:
            drawing = fn(data, pal)
            if drawing is not None:
                png, svg = _render(drawing.fig)
                out.append(FigureFile(fn.__name__, drawing.title, drawing.caption, png, svg))
    return out


@lru_cache(maxsize=512)
def equation_svg(latex: str) -> bytes:
    """One equation rendered by matplotlib's mathtext as a small SVG.

    Sized from the parsed formula (as ``mathtext.math_to_image`` does), which saves the
    extra drawing pass a tight bounding box costs; raises ValueError if unparsable.
    """
    from matplotlib.font_manager import FontProperties
    from matplotlib.mathtext import MathTextParser

    text, prop = f"${latex}$", FontProperties(size=13)
    with mpl.rc_context({**_RC, "axes.grid": False}):
        width, height, depth, *_ = MathTextParser("path").parse(text, dpi=72, prop=prop)
        fig = Figure(figsize=(width / 72 + 0.1, height / 72 + 0.1))
        FigureCanvasAgg(fig)
        fig.text(0.05 / (width / 72 + 0.1), (depth + 3.6) / (height + 7.2), text,
                 fontproperties=prop)
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", transparent=True,
                    metadata={"Date": None, "Creator": None})
    return buf.getvalue()


def write_figures(figs: list[FigureFile], out: Path) -> list[Path]:
    """Write each figure's PNG and SVG into ``out``; returns the paths."""
    from ._io import write_bytes

    paths = []
    for f in figs:
        for ext, blob in (("png", f.png), ("svg", f.svg)):
            paths.append(write_bytes(out / f"{f.name}.{ext}", blob))
    return paths

