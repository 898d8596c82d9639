"""The report's figures (issue 21): intervals inside the metric's bounds, legends beside
the panels, no lines or bands across fewer than three x values, two labels on every log
axis, whole numbers in captions, uncertainty on the trade-off, secondary metrics shown.

Every run directory here is written through the store API with made-up numbers, so
each test draws exactly the case it is about and trains nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.container import ErrorbarContainer

import gruablate
from gruablate.report import figures
from gruablate.report.data import INTERVAL_NOTES, load, t_interval
from gruablate.store import open_run

ENV = {"cpu": "test cpu", "cores": 2}
BASELINES = {"adding": 1 / 6, "copy": 0.35}
METRICS = {"adding": "mse", "copy": "ce"}


def _train(run, task: str, variant: str, hidden: int, seed: int, metric: float, *,
           ms: float = 2.0, extra: dict | None = None, steps: tuple = (10, 20, 30)) -> None:
    """One ok training record as the sweep writes it (fields the report reads)."""
    name = METRICS[task]
    run.write_record(f"{variant}-{task}-h{hidden}-s{seed}", {
        "kind": "train", "variant": variant, "variant_spec": {"name": variant, "family": "gru"},
        "task": task, "hidden": hidden, "layers": 1, "seed": seed, "backend": "cpu",
        "status": "ok", "metric_name": name, "metric": metric, "baseline": BASELINES[task],
        "params": 3 * hidden * (hidden + 2), "train_seconds": 1.0, "batch": 32,
        "steps_per_second": 1000.0 / ms, "lower_is_better": True,
        "test_metrics": {name: metric, **(extra or {})},
        "curve": [{"step": s, "train_loss": 1.0 / s, "val_metric": metric + 1.0 / s}
                  for s in steps],
    })


def _run(tmp_path: Path, name: str = "run"):
    return open_run(tmp_path / name, {"kind": "sweep"}, env=ENV)


@pytest.fixture()
def study(tmp_path) -> Path:
    """Two variants × two tasks × two sizes × three seeds, copy with recall accuracy."""
    run = _run(tmp_path)
    for v, variant in enumerate(("gru", "mingru")):
        for hidden in (8, 16):
            for seed in range(3):
                jitter = 1 + 0.1 * seed
                _train(run, "adding", variant, hidden, seed, 0.05 * jitter + 0.01 * v,
                       ms=(1.0 + v) * hidden / 8 * jitter)
                _train(run, "copy", variant, hidden, seed, 0.5 * jitter,
                       ms=(1.5 + v) * hidden / 8 * jitter,
                       extra={"recall_accuracy": min(1.0, 0.8 + 0.1 * seed)})
    return run.path


def _draw(name: str, run_dirs) -> figures.Drawing:
    data = load(run_dirs if isinstance(run_dirs, list) else [run_dirs])
    drawing = getattr(figures, name)(data, figures.palette(data.variants))
    assert drawing is not None, f"{name} drew nothing"
    drawing.fig.canvas.draw()  # lay it out as saving does
    return drawing


def _visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def _error_segments(ax) -> list[np.ndarray]:
    """The vertical bars of every errorbar in ``ax``, as (2, 2) arrays of end points."""
    segs = []
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer) and c.has_yerr:
            bars = [b for b in c.lines[2] if isinstance(b, LineCollection)]
            segs += [np.asarray(s) for s in bars[-1].get_segments()]
    return segs


# ------------------------------------------------------------- 1. intervals
def test_an_mse_interval_never_crosses_zero(tmp_path):
    run = _run(tmp_path)
    values = (1e-5, 3e-4, 6.7e-4)
    for seed, mse in enumerate(values):
        _train(run, "adding", "gru", 8, seed, mse)
    assert t_interval(values)[0] < 0  # the interval the report used to draw

    points = figures.accuracy_points(load([run.path]))
    (row,) = points.itertuples(index=False)
    assert 0 < row.ci_low < row.estimate < row.ci_high
    assert row.scale == "log" and row.seeds == values

    drawing = _draw("accuracy", run.path)
    (ax,) = _visible_axes(drawing.fig)
    (seg,) = _error_segments(ax)
    low, high = sorted(seg[:, 1])
    assert low == pytest.approx(row.ci_low) and high == pytest.approx(row.ci_high)
    assert low > 0 and ax.get_ylim()[0] <= low  # inside the plot, not off its bottom
    assert INTERVAL_NOTES["log"] in drawing.caption
    seeds = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections
                            if c.get_offsets().shape[0] == 3])
    assert sorted(seeds) == pytest.approx(values)  # the seeds are drawn as dots


def test_captions_name_each_kind_of_interval(tmp_path):
    run = _run(tmp_path)
    for seed in range(3):
        _train(run, "adding", "gru", 8, seed, 0.1 + 0.01 * seed)
        _train(run, "copy", "gru", 8, seed, 0.4, extra={"recall_accuracy": 0.5 + 0.2 * seed})
    accuracy = _draw("accuracy", run.path).caption
    assert INTERVAL_NOTES["log"] in accuracy and INTERVAL_NOTES["bootstrap"] not in accuracy
    secondary = _draw("secondary", run.path).caption
    assert INTERVAL_NOTES["bootstrap"] in secondary


# ------------------------------------------------------------- 2. legends
@pytest.mark.parametrize("name", ["accuracy", "secondary", "curves", "speed", "tradeoff",
                                  "params"])
def test_legends_sit_outside_every_panel(study, name):
    drawing = _draw(name, study)
    fig = drawing.fig
    axes = _visible_axes(fig)
    assert all(ax.get_legend() is None for ax in axes)  # no legend inside a panel
    assert fig.legends, "the figure should have its shared legend"
    renderer = fig.canvas.get_renderer()
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        for ax in axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), (name, ax.get_title())


# ------------------------------------------------------------- 3. lines, bands
def _joined_lines(ax) -> list:
    """Lines that join data points (not markers alone, not the baseline's axhline)."""
    return [line for line in ax.get_lines()
            if line.get_linestyle() not in ("None", "none", "")
            and line.get_transform() is not ax.get_yaxis_transform(which="grid")
            and len(line.get_xdata()) > 1]


def _bands(ax) -> list:
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_two_sizes_get_points_with_bars_not_a_band(study):
    drawing = _draw("speed", study)
    for ax in _visible_axes(drawing.fig):
        assert not _bands(ax) and not _joined_lines(ax)
        assert len(_error_segments(ax)) == 4  # two variants × two sizes
        assert ax.get_xscale() == "log"


def test_three_sizes_get_lines_with_bands(tmp_path):
    run = _run(tmp_path)
    for variant in ("gru", "mingru"):
        for hidden in (8, 16, 32):
            for seed in range(2):
                _train(run, "adding", variant, hidden, seed, 0.1, ms=hidden / 8 + seed)
    (ax,) = _visible_axes(_draw("speed", run.path).fig)
    assert len(_bands(ax)) == 2 and len(_joined_lines(ax)) == 2


def test_curves_of_two_evaluations_get_points_with_bars(tmp_path):
    run = _run(tmp_path)
    for seed in range(3):
        _train(run, "adding", "gru", 8, seed, 0.1 + 0.01 * seed, steps=(10, 20))
    (ax,) = _visible_axes(_draw("curves", run.path).fig)
    assert not _bands(ax) and not _joined_lines(ax)
    assert len(_error_segments(ax)) == 2
    other = _run(tmp_path, "long")
    for seed in range(3):
        _train(other, "adding", "gru", 8, seed, 0.1, steps=(10, 20, 30))
    (ax,) = _visible_axes(_draw("curves", other.path).fig)
    assert len(_bands(ax)) == 1 and len(_joined_lines(ax)) == 1


# ------------------------------------------------------------- 4. log axes
def _labelled_ticks(axis) -> list[str]:
    """The labels an axis shows inside its view limits."""
    lo, hi = sorted(axis.get_view_interval())
    labels = []
    for locs, formatter in ((axis.get_majorticklocs(), axis.get_major_formatter()),
                            (axis.get_minorticklocs(), axis.get_minor_formatter())):
        texts = formatter.format_ticks(list(locs))
        labels += [t for loc, t in zip(locs, texts, strict=True) if lo <= loc <= hi and t]
    return labels


@pytest.mark.parametrize("ms", [(2.0, 3.0, 7.5),      # within one decade, no power of 10
                                (1.02, 1.03, 1.05),   # narrower than any 1-2-5 step
                                (1.3, 5.0, 18.0)])    # over a decade, one power of 10
@pytest.mark.parametrize("name", ["speed", "tradeoff", "params"])
def test_every_log_axis_shows_two_labels(tmp_path, ms, name):
    run = _run(tmp_path)
    for hidden, scale in ((20, 1.0), (24, 1.001)):  # params 1320 and 1872: one decade
        for seed, t in enumerate(ms):
            _train(run, "adding", "gru", hidden, seed, 0.1 + 0.01 * seed, ms=t * scale)
    logs = 0
    for ax in _visible_axes(_draw(name, run.path).fig):
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":
                logs += 1
                labels = _labelled_ticks(axis)
                assert len(labels) >= 2, (name, labels)
                assert len(set(labels)) == len(labels)
    assert logs >= 1  # each of these figures has a log axis here


def test_tick_labels_say_the_value():
    assert figures._tick_labels([8.0, 16.0]) == ["8", "16"]  # not "20" from one digit
    assert figures._tick_labels([1000.0, 2000.0]) == ["1000", "2000"]  # not 1e+03
    assert figures._tick_labels([0.166, 0.168]) == ["0.166", "0.168"]


# ------------------------------------------------------------- 5. captions
def test_captions_print_whole_numbers_as_integers(tmp_path):
    run = _run(tmp_path)
    for h in (32, 64, 128):
        for impl, ms in (("gruablate", 1.0), ("torch", 2.0)):
            run.write_record(f"gru-train-{h}-{impl}", {
                "kind": "bench", "variant": "gru", "impl": impl, "backend": "cpu",
                "mode": "train", "hidden": h, "batch": 1, "seq_len": 100,
                "input_size": h, "dtype": "float32", "threads": 2, "median_ms": ms * h,
                "gflops": 1.0})
    _train(run, "adding", "gru", 8, 0, 0.1)  # a train record: the bench columns go float
    data = load([run.path])
    assert data.bench["seq_len"].dtype == float
    caption = figures.speed(data, figures.palette(data.variants)).caption
    assert "T = 100, B = 1," in caption and "100.0" not in caption
    assert figures.number_text(100.0) == "100" and figures.number_text(0.5) == "0.5"
    assert figures.number_text("float32") == "float32"


# ------------------------------------------------------------- 6. trade-off
def test_tradeoff_has_uncertainty_both_ways(study):
    points = figures.tradeoff_points(load([study]))
    assert len(points) == 8
    assert (points["ms_low"] < points["ms"]).all() and (points["ms"] < points["ms_high"]).all()
    assert (points["ci_low"] > 0).all()
    assert (points["ci_low"] < points["estimate"]).all()
    assert (points["estimate"] < points["ci_high"]).all()
    drawing = _draw("tradeoff", study)
    bars = [c for ax in _visible_axes(drawing.fig) for c in ax.containers
            if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 8 and all(c.has_xerr and c.has_yerr for c in bars)
    assert "fastest to the slowest seed" in drawing.caption
    assert INTERVAL_NOTES["log"] in drawing.caption


# ------------------------------------------------------------- 7. secondary
def test_secondary_metrics_are_drawn_inside_their_bounds(study):
    points = figures.secondary_points(load([study]))
    assert set(points["task"]) == {"copy"} and set(points["metric_name"]) == {"recall_accuracy"}
    assert len(points) == 4 and set(points["scale"]) == {"bootstrap"}
    assert (points["ci_high"] <= 1.0).all() and (points["ci_low"] >= 0.8).all()
    assert all(len(s) == 3 for s in points["seeds"])
    (ax,) = _visible_axes(_draw("secondary", study).fig)
    highs = [seg[:, 1].max() for seg in _error_segments(ax)]
    assert len(highs) == 4 and max(highs) <= 1.0


def test_tasks_without_secondary_metrics_draw_no_secondary_figure(tmp_path):
    run = _run(tmp_path)
    for seed in range(2):
        _train(run, "adding", "gru", 8, seed, 0.1)
    data = load([run.path])
    assert figures.secondary(data, figures.palette(data.variants)) is None


def test_the_new_figure_is_in_the_report_pages(study):
    html = gruablate.write_report(study)
    folder = html.parent
    assert (folder / "secondary.png").is_file() and (folder / "secondary.svg").is_file()
    assert 'id="fig-secondary"' in html.read_text()
    assert "(secondary.png)" in (folder / "report.md").read_text()


# ------------------------------------------------------------- 8. stable
def test_figures_are_byte_stable(study):
    data = load([study])
    first = figures.make_figures(data)
    second = figures.make_figures(load([study]))
    assert [f.name for f in first] == ["accuracy", "secondary", "curves", "speed",
                                       "tradeoff", "params"]
    for a, b in zip(first, second, strict=True):
        assert (a.png, a.svg, a.caption) == (b.png, b.svg, b.caption), a.name
