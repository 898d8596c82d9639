"""The report's seaborn figures, saved as PNG and SVG with byte-stable output.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas,
never through ``pyplot``: that keeps the report headless without switching the
caller's matplotlib backend. SVG ids are salted with a constant and no date is written,
so the same data always gives the same files.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import matplotlib as mpl
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .data import ReportData, peer_table, standard_bench, t_interval

_RC = {"svg.hashsalt": "gruablate-report", "svg.fonttype": "path", "figure.dpi": 100,
       "axes.grid": True, "grid.alpha": 0.3}
_BASELINE = {"color": "0.35", "linestyle": ":", "linewidth": 1.5}
_FAIL_COLOR = "#c0392b"


@dataclass(frozen=True)
class FigureFile:
    """One saved figure: its stem, title, caption and the two files' bytes."""

    name: str
    title: str
    caption: str
    png: bytes
    svg: bytes


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
        axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _log_axis(ax, axis: str = "y", ticks: list | None = None) -> None:
    """Log scale with plain numbers (0.01, 100) instead of 10^-2 labels."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    which = ax.yaxis if axis == "y" else ax.xaxis
    if ticks is not None:
        which.set_ticks(ticks, [f"{t:g}" for t in ticks])
        which.set_minor_formatter(NullFormatter())
    else:
        plain = FuncFormatter(lambda v, _: f"{v:.3g}")
        which.set_major_formatter(plain)
        lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
        # Within a decade there may be no major tick at all: label the minor ones.
        which.set_minor_formatter(plain if lo > 0 and hi / lo < 10 else NullFormatter())


def _log_if_wide(ax, values: pd.Series, axis: str = "y") -> None:
    v = pd.to_numeric(values, errors="coerce").dropna()
    v = v[v > 0]
    if len(v) and v.max() / v.min() > 30:
        _log_axis(ax, axis)


def _metric_label(name: str, lower: bool) -> str:
    return f"{name} ({'lower' if lower else 'higher'} is better)"


def _size_label(h) -> str:
    return f"H = {int(h)}"


def _size_palette(hiddens: list) -> dict[str, tuple]:
    """Distinct colours for hidden sizes (a sequential map makes the small one vanish)."""
    colours = sns.color_palette("colorblind", len(hiddens))
    return {_size_label(h): c for h, c in zip(sorted(hiddens), colours, strict=True)}


def palette(variants: list[str]) -> dict[str, tuple]:
    """One colour per variant, the same in every figure."""
    colours = sns.color_palette("tab20" if len(variants) > 10 else "tab10", len(variants))
    return dict(zip(variants, colours, strict=True))


# ------------------------------------------------------------------ accuracy
def accuracy(data: ReportData, pal: dict) -> FigureFile | None:
    """Test metric per variant and task: seeds' mean with a 95% t-interval, the
    trivial baseline dotted, cells that failed or diverged written under the axis."""
    train = data.train
    if not len(train):
        return None
    tasks = sorted(train["task"].dropna().unique())
    fig, axes = _panels(len(tasks))
    hiddens = sorted(train["hidden"].dropna().unique())
    multi = len(hiddens) > 1
    hpal = _size_palette(hiddens)
    for ax, task in zip(axes, tasks, strict=True):
        sub = train[train["task"] == task].assign(H=lambda d: d["hidden"].map(_size_label))
        ok = sub[sub["status"] == "ok"]
        order = [v for v in data.variants if v in set(sub["variant"])]
        if len(ok):
            hue = dict(hue="H", hue_order=list(hpal), palette=hpal) if multi else dict(
                hue="variant", hue_order=order, palette=pal)
            # Dodge the means exactly as far as stripplot dodges the seeds below.
            sns.pointplot(data=ok, x="variant", y="metric", order=order, **hue,
                          errorbar=t_interval, linestyle="none",
                          dodge=0.8 - 0.8 / len(hiddens) if multi else False,
                          capsize=0.15, markers="o", ax=ax, legend=multi)
            # The seeds themselves, small: with two or three seeds the interval alone
            # hides how few numbers stand behind it.
            sns.stripplot(data=ok, x="variant", y="metric", order=order, **hue,
                          dodge=multi, size=3, jitter=False, alpha=0.6, edgecolor="0.2",
                          linewidth=0.5, ax=ax, legend=False, zorder=1)
        if not len(ok):
            ax.text(0.5, 0.5, "no cell of this task finished", transform=ax.transAxes,
                    ha="center", va="center", color=_FAIL_COLOR)
        for base in sorted(sub["baseline"].dropna().unique()):
            ax.axhline(base, **_BASELINE, label="trivial baseline")
        labels = []
        for v in order:
            bad = sub[(sub["variant"] == v) & (sub["status"] != "ok")]
            labels.append(f"{v}\n✗ {len(bad)} {'/'.join(sorted(set(bad['status'])))}"
                          if len(bad) else v)
        ax.set_xticks(range(len(order)), labels, rotation=30, ha="right")
        ax.set_xlim(-0.5, len(order) - 0.5)
        for tick, v in zip(ax.get_xticklabels(), order, strict=True):
            if (sub[(sub["variant"] == v)]["status"] != "ok").any():
                tick.set_color(_FAIL_COLOR)
        ax.set_ylabel(_metric_label(_first(sub, "metric_name", "metric"),
                                    bool(_first(sub, "lower_is_better", True))))
        ax.set_xlabel("")
        ax.set_title(f"{task}  ({_options(sub)})", fontsize=10)
        _log_if_wide(ax, pd.concat([ok["metric"], sub["baseline"]]))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, title="hidden size" if multi else None)
    png, svg = _render(fig)
    return FigureFile("accuracy", "Accuracy per variant and task",
                      "Test metric: mean over seeds with 95% t-intervals, grey dots the "
                      "seeds; dotted: the task's trivial baseline. Red labels: cells that "
                      "failed or diverged (left out).",
                      png, svg)


def _first(df: pd.DataFrame, col: str, default):
    """The column's first known value (cells that failed early may lack it)."""
    vals = df[col].dropna() if col in df else pd.Series(dtype=object)
    return vals.iloc[0] if len(vals) else default


def _options(sub: pd.DataFrame) -> str:
    opts = sorted(sub.get("task_options", pd.Series(dtype=object)).dropna().unique())
    if len(opts) != 1:
        return f"{len(opts)} option sets"
    import json

    d = json.loads(opts[0])
    return ", ".join(f"{k}={v}" for k, v in d.items() if v is not None) or "defaults"


# ------------------------------------------------------------------ curves
def curves(data: ReportData, pal: dict) -> FigureFile | None:
    """Validation metric against training step, mean over seeds with a 95% band."""
    c = data.curves
    if not len(c) or not c["val_metric"].notna().any():
        return None
    tasks = sorted(c["task"].dropna().unique())
    fig, axes = _panels(len(tasks))
    multi_h = c["hidden"].nunique() > 1
    for ax, task in zip(axes, tasks, strict=True):
        sub = c[(c["task"] == task) & c["val_metric"].notna()]
        sns.lineplot(data=sub, x="step", y="val_metric", hue="variant",
                     hue_order=[v for v in data.variants if v in set(sub["variant"])],
                     style="hidden" if multi_h else None, palette=pal, errorbar=("pi", 100),
                     ax=ax)
        base = data.train.loc[data.train["task"] == task, "baseline"].dropna().unique()
        for b in sorted(base):
            ax.axhline(b, **_BASELINE, label="trivial baseline")
        name = _first(data.train[data.train["task"] == task], "metric_name", "metric")
        ax.set_ylabel(f"validation {name}")
        ax.set_title(task, fontsize=10)
        _log_if_wide(ax, pd.concat([sub["val_metric"], pd.Series(base)]))
        if ax.get_yscale() == "linear":
            # The first evaluations of an untrained model can be far off; keep the
            # scale on where the curves spend their time and the baseline.
            means = sub.groupby(["variant", "step"])["val_metric"].mean()
            top = max([means.quantile(0.9), *base]) * 1.3
            low = float(means.min())
            ax.set_ylim(bottom=0.9 * low if low > 0 else 1.1 * low, top=top)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    png, svg = _render(fig)
    return FigureFile("curves", "Learning curves",
                      "Validation metric during training: mean over seeds, band from the "
                      "best to the worst seed; dotted: trivial baseline.", png, svg)


# ------------------------------------------------------------------ speed
def speed(data: ReportData, pal: dict) -> FigureFile | None:
    """Time against hidden size on log axes, one line per variant, PyTorch peers dashed
    (bench runs); or the training step time of the sweep's cells."""
    if len(data.bench):
        return _bench_speed(data, pal)
    train = data.train[data.train["status"] == "ok"]
    if not len(train) or not train["ms_per_step"].notna().any():
        return None
    tasks = sorted(train["task"].dropna().unique())
    fig, axes = _panels(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        sub = train[train["task"] == task]
        order = [v for v in data.variants if v in set(sub["variant"])]
        hiddens = sorted(int(h) for h in sub["hidden"].unique())
        if len(hiddens) > 1:
            sns.lineplot(data=sub, x="hidden", y="ms_per_step", hue="variant", palette=pal,
                         hue_order=order, marker="o", errorbar=("pi", 100), ax=ax)
            _log_axis(ax, "x", ticks=hiddens)
            ax.set_xlabel("hidden size H")
        else:  # one size: a line would be a single point, so compare variants side by side
            sns.pointplot(data=sub, x="variant", y="ms_per_step", order=order, hue="variant",
                          palette=pal, errorbar=("pi", 100), linestyle="none", capsize=0.15,
                          ax=ax, legend=False)
            ax.tick_params(axis="x", rotation=30)
            ax.set_xlabel(f"hidden size H = {hiddens[0]}")
        _log_axis(ax, "y")
        ax.set_ylabel("ms per training step")
        ax.set_title(f"{task} (batch {_one(sub, 'batch')})", fontsize=10)
        if ax.get_legend() is not None:
            ax.legend(fontsize=8)
    png, svg = _render(fig)
    return FigureFile("speed", "Training speed against hidden size",
                      "Wall time of one training step (forward, backward, Adam) measured "
                      "during the sweep: mean over seeds, bar from the fastest to the "
                      "slowest seed; log axes. Cells ran side by side, so this is "
                      "indicative, not a benchmark (see gruablate run bench).", png, svg)


def _one(df: pd.DataFrame, col: str) -> str:
    vals = sorted(df[col].dropna().unique()) if col in df else []
    return str(vals[0]) if len(vals) == 1 else "various"


def _bench_speed(data: ReportData, pal: dict) -> FigureFile | None:
    b = standard_bench(data.bench)
    if not len(b):
        return None
    modes = sorted(b["mode"].dropna().unique())
    fig, axes = _panels(len(modes))
    for ax, mode in zip(axes, modes, strict=True):
        sub = b[b["mode"] == mode].sort_values(["variant", "impl", "hidden"])
        sns.lineplot(data=sub, x="hidden", y="median_ms", hue="variant", style="impl",
                     hue_order=[v for v in data.variants if v in set(sub["variant"])],
                     style_order=[i for i in ("gruablate", "torch") if i in set(sub["impl"])],
                     dashes={"gruablate": "", "torch": (4, 2)}, markers=True, palette=pal,
                     errorbar=None, ax=ax)
        _log_axis(ax, "x", ticks=sorted(int(h) for h in sub["hidden"].unique()))
        _log_axis(ax, "y")
        ax.set_xlabel("hidden size H")
        ax.set_ylabel("median ms")
        ax.set_title(mode, fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    png, svg = _render(fig)
    return FigureFile(
        "speed", "Speed against hidden size",
        f"Median time per {_describe_setting(b)}; solid: gruablate, dashed: its PyTorch "
        "peer; log axes.", png, svg)


def _describe_setting(b: pd.DataFrame) -> str:
    parts = [f"sequence (T = {_one(b, 'seq_len')}, B = {_one(b, 'batch')}",
             f"{_one(b, 'dtype')}", f"{_one(b, 'threads')} threads",
             f"backend {_one(b, 'backend')})"]
    return ", ".join(parts)


def speed_ratio(data: ReportData, pal: dict) -> FigureFile | None:
    """PyTorch time / gruablate time for each variant with a peer (above 1: faster)."""
    peers = peer_table(standard_bench(data.bench))
    if not len(peers):
        return None
    modes = sorted(peers["mode"].unique())
    fig, axes = _panels(len(modes))
    for ax, mode in zip(axes, modes, strict=True):
        sub = peers[peers["mode"] == mode]
        sns.lineplot(data=sub, x="hidden", y="ratio", hue="variant", palette=pal,
                     marker="o", errorbar=None, ax=ax)
        ax.axhline(1.0, **_BASELINE, label="as fast as PyTorch")
        _log_axis(ax, "x", ticks=sorted(int(h) for h in sub["hidden"].unique()))
        ax.set_xlabel("hidden size H")
        ax.set_ylabel("PyTorch time / gruablate time")
        ax.set_title(mode, fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    png, svg = _render(fig)
    return FigureFile("speed_ratio", "Speed relative to the PyTorch peer",
                      "Ratio of median times, same shapes and threads; above the dotted "
                      "line gruablate is faster.", png, svg)


def _shared_legend(fig: Figure, axes: list) -> None:
    """One legend beside the panels instead of one per panel: the colours are the same
    in every panel, and per-panel legends hide points of crowded panels."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside right upper", fontsize=8)


# ------------------------------------------------------------- trade-off
def tradeoff(data: ReportData, pal: dict) -> FigureFile | None:
    """Speed–accuracy trade-off: each variant × hidden size as one point per task."""
    ok = data.train[data.train["status"] == "ok"] if len(data.train) else data.train
    if not len(ok) or not ok["ms_per_step"].notna().any():
        return None
    agg = (ok.groupby(["task", "variant", "hidden"], as_index=False)
           .agg(metric=("metric", "mean"), ms=("ms_per_step", "mean"),
                baseline=("baseline", "first"), metric_name=("metric_name", "first")))
    tasks = sorted(agg["task"].unique())
    fig, axes = _panels(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        sub = agg[agg["task"] == task]
        sns.scatterplot(data=sub, x="ms", y="metric", hue="variant", palette=pal,
                        hue_order=[v for v in data.variants if v in set(sub["variant"])],
                        size="hidden" if sub["hidden"].nunique() > 1 else None, s=70, ax=ax)
        for b in sorted(sub["baseline"].dropna().unique()):
            ax.axhline(b, **_BASELINE, label="trivial baseline")
        _log_axis(ax, "x")
        ax.set_xlabel("ms per training step")
        ax.set_ylabel(str(sub["metric_name"].iloc[0]))
        ax.set_title(task, fontsize=10)
        _log_if_wide(ax, pd.concat([sub["metric"], sub["baseline"]]))
    _shared_legend(fig, axes)
    png, svg = _render(fig)
    return FigureFile("tradeoff", "Speed–accuracy trade-off",
                      "Mean test metric against mean step time; best is toward the corner "
                      "of fast and accurate.", png, svg)


# ------------------------------------------------------------- parameters
def params(data: ReportData, pal: dict) -> FigureFile | None:
    """Trainable parameters per variant (the whole model of each task, from the
    records), or of one layer from the spec for a bench-only report."""
    if len(data.train) and data.train["params"].notna().any():
        df = (data.train.dropna(subset=["params"])
              .groupby(["task", "variant", "hidden"], as_index=False)["params"].first())
        what = "trainable parameters of the whole model (records)"
    elif len(data.bench):
        from ..catalogue import get_variant

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
    fig, axes = _panels(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        sub = df[df["task"] == task]
        order = [v for v in data.variants if v in set(sub["variant"])]
        multi = sub["hidden"].nunique() > 1
        hpal = _size_palette(sorted(sub["hidden"].unique()))
        sns.barplot(data=sub.assign(H=sub["hidden"].map(_size_label)), x="variant",
                    y="params", order=order, hue="H" if multi else "variant",
                    hue_order=list(hpal) if multi else order,
                    palette=hpal if multi else pal, legend=multi, ax=ax)
        if multi:
            _log_axis(ax, "y")
        ax.tick_params(axis="x", rotation=30)
        ax.set_xlabel("")
        ax.set_title(task, fontsize=10)
    png, svg = _render(fig)
    return FigureFile("params", "Parameter counts", f"Number of {what}.", png, svg)


FIGURES: tuple[Callable[[ReportData, dict], FigureFile | None], ...] = (
    accuracy, curves, speed, speed_ratio, tradeoff, params,
)


def make_figures(data: ReportData) -> list[FigureFile]:
    """Every figure the data supports, in report order."""
    pal = palette(data.variants)
    out = []
    with mpl.rc_context(_RC):
        for fn in FIGURES:
            fig = fn(data, pal)
            if fig is not None:
                out.append(fig)
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

