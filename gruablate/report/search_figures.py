"""The figures of a search: each variant's distribution over its trials, and the
metric against the learning rate, where tuning effects show.

They draw :attr:`ReportData.trials` (the cells of a ``[search]``) with the helpers of
:mod:`.figures`, and join its :data:`~.figures.FIGURES` in the report.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from .compare import TOP_FRACTION, top
from .data import ReportData, search_space
from .figures import (
    _BASELINE,
    Drawing,
    _first,
    _legend_outside,
    _log_axis,
    _log_if_wide,
    _metric_label,
    _panels,
    _variant_ticks,
)
from .tables import baseline_variant

_TOP_COLOR = "0.1"


def _ok_trials(data: ReportData) -> pd.DataFrame:
    t = data.trials
    return t[(t["status"] == "ok") & t["metric"].notna()] if len(t) else t


def distribution_points(data: ReportData) -> pd.DataFrame:
    """Per task × variant: the ok trials' metrics, and which of them are the variant's
    best :data:`~.compare.TOP_FRACTION` (column ``top``)."""
    ok = _ok_trials(data)
    cols = ["task", "metric_name", "variant", "metric", "top"]
    if not len(ok):
        return pd.DataFrame(columns=cols)
    rows = []
    for (task, metric_name, variant), g in ok.groupby(["task", "metric_name", "variant"],
                                                       sort=True):
        lower = bool(_first(g, "lower_is_better", True))
        values = g["metric"].to_numpy(dtype=float)
        cut = top(values, lower)
        edge = cut.max() if lower else cut.min()
        for v in np.sort(values):
            rows.append({"task": task, "metric_name": metric_name, "variant": variant,
                         "metric": float(v), "top": bool(v <= edge if lower else v >= edge)})
    return pd.DataFrame(rows, columns=cols)


def search_distribution(data: ReportData, pal: dict) -> Drawing | None:
    """Per task, each variant's trials as a box (all of them) with its best 10% drawn
    dark over the lighter rest; the baseline variant's median as a dotted line."""
    points = distribution_points(data)
    if not len(points):
        return None
    base = baseline_variant(data)
    tasks = sorted(points["task"].unique())
    fig, axes = _panels(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        pts = points[points["task"] == task]
        order = [v for v in data.variants if v in set(pts["variant"])]
        series = [pts[pts["variant"] == v]["metric"].to_numpy() for v in order]
        box = ax.boxplot(series, positions=range(len(order)), widths=0.6,
                         patch_artist=True, showfliers=False,
                         medianprops={"color": _TOP_COLOR})
        for patch, v in zip(box["boxes"], order, strict=True):
            patch.set(facecolor=(*pal[v][:3], 0.35), edgecolor=pal[v])
        rng = np.random.default_rng(0)  # fixed jitter: byte-stable figures
        for i, v in enumerate(order):
            sub = pts[pts["variant"] == v]
            x = i + rng.uniform(-0.18, 0.18, len(sub))
            ax.scatter(x[~sub["top"].to_numpy()], sub["metric"][~sub["top"]], s=9,
                       color=pal[v], alpha=0.6, linewidths=0)
            ax.scatter(x[sub["top"].to_numpy()], sub["metric"][sub["top"]], s=14,
                       color=_TOP_COLOR, linewidths=0)
        if base in order:
            ax.axhline(float(np.median(pts[pts["variant"] == base]["metric"])), **_BASELINE)
        labels = [f"{v}\n(baseline)" if v == base else v for v in order]
        _variant_ticks(ax, order, labels)
        sub = data.trials[data.trials["task"] == task]
        ax.set_ylabel(_metric_label(_first(sub, "metric_name", "metric"),
                                    bool(_first(sub, "lower_is_better", True))))
        ax.set_title(f"{task}  ({_trial_count(sub)})", fontsize=10)
        _log_if_wide(ax, pts["metric"])
    _legend_outside(fig, {
        f"best {TOP_FRACTION:.0%} of trials": Line2D([], [], marker="o", linestyle="",
                                                   color=_TOP_COLOR),
        "other trials": Line2D([], [], marker="o", linestyle="", color="0.6"),
        "baseline variant's median": Line2D([], [], **_BASELINE),
    })
    return Drawing(fig, "Search: every variant's trials",
                   f"Per task, each variant's ok trials (a box over all of them, whiskers to"
                   f" 1.5 IQR); dark dots: its best {TOP_FRACTION:.0%} (at least two), the"
                   " sample Welch's test compares; dotted: the baseline variant's median.")


def _trial_count(sub: pd.DataFrame) -> str:
    per = sub.groupby("variant")["trial"].nunique()
    n = sorted(set(per.tolist()))
    return f"{n[0]} trials per variant" if len(n) == 1 else f"{n[0]}–{n[-1]} trials per variant"


def lr_points(data: ReportData) -> pd.DataFrame:
    """The ok trials of searches that drew the learning rate: task, variant, lr, metric."""
    ok = _ok_trials(data)
    cols = ["task", "metric_name", "variant", "lr", "metric"]
    if not len(ok) or "search" not in ok:
        return pd.DataFrame(columns=cols)
    drew = ok["search"].map(lambda s: "lr" in search_space(s))
    return ok[drew].reindex(columns=cols).sort_values(cols).reset_index(drop=True)


def learning_rate(data: ReportData, pal: dict) -> Drawing | None:
    """Per task, the metric against the drawn learning rate, one colour per variant, a
    running median over the trials sorted by lr."""
    points = lr_points(data)
    if not len(points):
        return None
    tasks = sorted(points["task"].unique())
    fig, axes = _panels(len(tasks))
    legend: dict[str, Any] = {}
    for ax, task in zip(axes, tasks, strict=True):
        pts = points[points["task"] == task]
        for v in [v for v in data.variants if v in set(pts["variant"])]:
            g = pts[pts["variant"] == v].sort_values("lr")
            ax.scatter(g["lr"], g["metric"], s=10, color=pal[v], alpha=0.55, linewidths=0)
            if len(g) >= 5:
                window = max(3, len(g) // 5)
                med = g["metric"].rolling(window, center=True, min_periods=2).median()
                ax.plot(g["lr"], med, color=pal[v], linewidth=1.4)
            legend[v] = Line2D([], [], color=pal[v], marker="o", markersize=4)
        ax.set_xlabel("learning rate")
        ax.set_ylabel(_metric_label(_first(pts, "metric_name", "metric"), bool(_first(
            data.trials[data.trials["task"] == task], "lower_is_better", True))))
        ax.set_title(task, fontsize=10)
        _log_if_wide(ax, pts["metric"])
        # Powers of ten only: the drawn rates span decades, and 1-2-5 labels would collide.
        lo, hi = np.log10(pts["lr"].min()), np.log10(pts["lr"].max())
        _log_axis(ax, "x", [10.0 ** k for k in range(int(np.floor(lo)), int(np.ceil(hi)) + 1)])
    _legend_outside(fig, legend)
    return Drawing(fig, "Search: metric against learning rate",
                   "Every ok trial's metric at its drawn learning rate, one colour per"
                   " variant; lines: running medians over a fifth of the variant's trials."
                   " A variant that is worse only at some learning rates differs by tuning,"
                   " not by its cell.")


FIGURES = (search_distribution, learning_rate)
