"""What the report shows, as tables: read run directories and summarise them.

Everything here is pandas: the figures, the HTML and the Markdown only lay these tables
out. Intervals are Student-t 95% intervals over seeds (a bootstrap over two or three
seeds would be far too narrow), taken on a scale where the metric's range is the whole
line, so that they never leave it (:func:`seed_interval`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..store import attach, load_curves, load_results
from ..tasks import metric_bounds
from ..vocabulary import OPTIONAL_SETTINGS

# The columns that make two bench measurements comparable (everything but the impl).
BENCH_KEYS = ("variant", "backend", "mode", "hidden", "batch", "seq_len", "input_size",
              "dtype", "threads")
# ``spec_hash`` beside ``variant``: a variant is its content, so two specs under one name
# are never averaged together (their labels differ too, see _distinguish_specs).
TRAIN_KEYS = ("task", "metric_name", "variant", "spec_hash", "hidden", "layers", "backend")
_TRAIN_EXTRA = ("steps_per_second", "lower_is_better", "task_options", "error", "batch")


def t_interval(values: Any) -> tuple[float, float]:
    """95% Student-t interval of the mean; (mean, mean) for fewer than two values."""
    x = np.asarray(pd.Series(values).dropna(), dtype=float)
    if len(x) == 0:
        return (math.nan, math.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return (mean, mean)
    from scipy.stats import t

    half = float(t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return (mean - half, mean + half)


def interval_scale(bounds: tuple[float, float]) -> str:
    """How :func:`seed_interval` treats a metric with these bounds: ``"log"`` (bounded
    on one side), ``"bootstrap"`` (bounded on both) or ``"linear"`` (unbounded)."""
    lo, hi = bounds
    if math.isfinite(lo) and math.isfinite(hi):
        return "bootstrap"
    return "log" if math.isfinite(lo) or math.isfinite(hi) else "linear"


# How each kind of estimate and interval reads in a caption.
INTERVAL_NOTES = {
    "log": "geometric mean over seeds, 95% Student-t interval on the log scale",
    "bootstrap": "mean over seeds, 95% percentile bootstrap interval (narrow for few seeds)",
    "linear": "mean over seeds, 95% Student-t interval",
}
_BOOTSTRAP_RESAMPLES = 2000


def seed_interval(values: Any, bounds: tuple[float, float] = (-math.inf, math.inf)
                  ) -> tuple[float, float, float]:
    """(estimate, low, high) over seeds that never leave the metric's ``bounds``.

    A t-interval of a positive metric over three seeds easily crosses zero (an MSE of
    ``0.0003 [-0.0002, 0.0008]``). A metric bounded on one side (losses) is therefore
    summarised on the log of its distance to the bound — the estimate is the geometric
    mean, the interval asymmetric — and one bounded on both sides (accuracy, often
    exactly 1) by a percentile bootstrap of the mean, which stays within the seeds'
    range. The bootstrap's generator is fixed, so reports stay byte-stable.
    """
    x = np.asarray(pd.Series(values).dropna(), dtype=float)
    if len(x) < 2:
        return (math.nan,) * 3 if len(x) == 0 else (float(x[0]),) * 3
    scale = interval_scale(bounds)
    if scale == "linear":
        lo, hi = t_interval(x)
        return (float(x.mean()), lo, hi)
    if scale == "bootstrap":
        rng = np.random.default_rng(0)
        means = x[rng.integers(0, len(x), size=(_BOOTSTRAP_RESAMPLES, len(x)))].mean(axis=1)
        lo, hi = np.quantile(means, [0.025, 0.975])
        return (float(x.mean()), float(lo), float(hi))
    sign, edge = (1.0, bounds[0]) if math.isfinite(bounds[0]) else (-1.0, bounds[1])
    # A value on the bound itself (an exact zero) is taken as just inside it.
    z = np.log(np.maximum(sign * (x - edge), np.finfo(float).tiny))
    zlo, zhi = t_interval(z)
    ends = sorted(edge + sign * math.exp(v) for v in (zlo, zhi))
    return (edge + sign * math.exp(float(z.mean())), ends[0], ends[1])


@dataclass
class ReportData:
    """The run directories' records, split by kind, with their studies and environments."""

    run_dirs: list[Path]
    results: pd.DataFrame
    train: pd.DataFrame  # training cells of grids (no search trial)
    bench: pd.DataFrame
    curves: pd.DataFrame
    # training cells of searches: ``trial`` is their index, ``search`` (JSON) the seed and
    # space they were drawn from
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)
    envs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # variant label (as in the ``variant`` column) → the spec its cells ran
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def cells(self) -> pd.DataFrame:
        """Every training cell, grid and search alike."""
        if not len(self.trials):
            return self.train
        return pd.concat([self.train, self.trials], ignore_index=True)

    @property
    def variants(self) -> list[str]:
        """Every variant in the data, in one fixed order (by name)."""
        names = set(self.cells.get("variant", pd.Series(dtype=object)).dropna())
        names |= set(self.bench.get("variant", pd.Series(dtype=object)).dropna())
        return sorted(str(n) for n in names)


def load(run_dirs: list[str | Path]) -> ReportData:
    """Read one or more run directories (a :class:`~gruablate.store.NotARunDir` error
    names the first bad one)."""
    dirs = [Path(d) for d in run_dirs]
    runs = [attach(d) for d in dirs]
    names = [r.path.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError("two run directories share the name "
                         f"{next(n for n in names if names.count(n) > 1)!r}; rename one")
    results = load_results(dirs)
    kind = results["kind"].fillna("train")
    train = results[kind == "train"].reset_index(drop=True)
    bench = results[kind == "bench"].reset_index(drop=True)
    # Cells that failed before training lack what train reports; give every column the
    # figures read a value (NaN / None) so that such a run still reports.
    for col in _TRAIN_EXTRA:
        if col not in train:
            train[col] = pd.Series([None] * len(train), dtype=object)
    sps = pd.to_numeric(train["steps_per_second"], errors="coerce")
    train = train.assign(ms_per_step=1000.0 / sps.where(sps > 0))
    train, curves = _distinguish_tasks(train, load_curves(dirs))
    train, curves, specs = _distinguish_specs(train, curves)
    in_search = (pd.to_numeric(train["trial"], errors="coerce").notna() if "trial" in train
                 else pd.Series(False, index=train.index))
    trials = train[in_search].reset_index(drop=True)
    train = train[~in_search].reset_index(drop=True)
    if len(curves) and "id" in curves:  # the learning curves of grid cells only
        curves = curves[curves["id"].isin(set(train["id"]))].reset_index(drop=True)
    return ReportData(
        run_dirs=dirs, results=results, train=train, bench=bench,
        curves=curves, specs=specs, trials=trials,
        studies={r.path.name: r.study() for r in runs},
        envs={r.path.name: r.environment() for r in runs},
    )


# What makes two cells of one task incomparable when several run directories are
# reported together: the task's options and the training settings.
_SETTING_COLUMNS = ("steps", "batch", "lr", "init", "clip", "warmup", "decay", "dtype",
                    "dropout", "zoneout", "bidirectional")
# Settings a record holds only when they are on: absent is this value.
_SETTING_DEFAULTS = OPTIONAL_SETTINGS


def search_space(record_search: Any) -> dict[str, Any]:
    """The settings a search cell's record says were drawn (its ``search`` column, JSON
    text), each with its distribution; empty for a grid cell."""
    if isinstance(record_search, str):
        return json.loads(record_search).get("space", {})
    return {}


def _with_default(column: pd.Series, name: str) -> pd.Series:
    """A setting's column with a record that lacks it read as the setting's default
    (:data:`_SETTING_DEFAULTS`): a rate as 0.0, a switch as False."""
    if name not in _SETTING_DEFAULTS:
        return column
    default = _SETTING_DEFAULTS[name]
    if isinstance(default, bool):
        return column.eq(True)  # True stays True; absent (NaN) and False are False
    return pd.to_numeric(column, errors="coerce").fillna(default)


def _distinguish_tasks(train: pd.DataFrame, curves: pd.DataFrame
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Relabel a task run under different options or settings, e.g. ``copy (delay=100)``
    beside ``copy (delay=50)``, so that figures and tables never average across them."""
    if not len(train) or "task_options" not in train:
        return train, curves
    opts = train["task_options"].map(lambda t: json.loads(t) if isinstance(t, str) else {})
    setting = pd.DataFrame({c: _with_default(train[c], c) for c in _SETTING_COLUMNS
                            if c in train})
    if "search" in train:  # a search's drawn settings vary by design: not another task
        setting = setting.astype(object)
        for i, text in train["search"].items():
            for key in search_space(text):
                if key in setting:
                    setting.at[i, key] = "searched"
    labels = train["task"].astype(object).copy()
    for task in train["task"].dropna().unique():
        rows = train.index[train["task"] == task]
        table = pd.concat([pd.DataFrame(list(opts[rows]), index=rows), setting.loc[rows]],
                          axis=1)
        varying = [c for c in table.columns if table[c].astype(str).nunique() > 1]
        if not varying:
            continue
        for i in rows:
            parts = ", ".join(f"{c}={table.at[i, c]}" for c in varying)
            labels[i] = f"{task} ({parts})"
    train = train.assign(task=labels)
    if len(curves) and "id" in curves:
        by_id = dict(zip(train["id"], labels, strict=False))
        curves = curves.assign(task=curves["id"].map(by_id).fillna(curves["task"]))
    return train, curves


def _distinguish_specs(train: pd.DataFrame, curves: pd.DataFrame
                       ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict[str, Any]]]:
    """Label a variant name that stands for several specs in the data ``name [digest]``
    (an edited spec file, or specs from several run directories), so that no figure or
    table mixes them; also the spec behind each label. A cell without a recorded spec
    (written by an older gruablate) takes its name's only spec when there is one."""
    if not len(train):
        return train, curves, {}
    hashes = train["spec_hash"].astype(object).copy()
    labels = train["variant"].astype(object).copy()
    specs_by_row = train.get("variant_spec")
    specs: dict[str, dict[str, Any]] = {}
    for name, rows in train.groupby("variant", sort=False).groups.items():
        known = list(dict.fromkeys(hashes[rows].dropna()))
        if len(known) == 1:
            hashes[rows] = known[0]
        elif len(known) > 1:
            for i in rows:
                h = hashes[i]
                labels[i] = f"{name} [{h[:6] if isinstance(h, str) else '?'}]"
        if specs_by_row is not None:
            for i in rows:
                text = specs_by_row[i]
                if isinstance(text, str):
                    specs.setdefault(labels[i], json.loads(text))
    train = train.assign(variant=labels, spec_hash=hashes)
    if len(curves) and "id" in curves:
        by_id = dict(zip(train["id"], labels, strict=False))
        curves = curves.assign(variant=curves["id"].map(by_id).fillna(curves["variant"]))
    return train, curves, specs


def status_counts(train: pd.DataFrame) -> dict[str, int]:
    """Cells by status."""
    if not len(train):
        return {}
    return {str(k): int(v) for k, v in train["status"].value_counts().sort_index().items()}


def accuracy_table(train: pd.DataFrame) -> pd.DataFrame:
    """One row per task × metric × variant × hidden × layers × backend.

    Columns: ``seeds`` (cells), ``ok``, ``not_ok`` (failed or diverged), ``mean``
    (arithmetic), ``estimate``, ``ci_low``, ``ci_high`` (over the ok cells, from
    :func:`seed_interval`: inside the metric's bounds), ``scale`` (its key in
    :data:`INTERVAL_NOTES`), ``baseline``, ``vs_baseline`` (estimate / baseline),
    ``params``, ``ms_per_step``, ``lower_is_better``.
    """
    cols = [*TRAIN_KEYS, "seeds", "ok", "not_ok", "mean", "estimate", "ci_low", "ci_high",
            "scale", "baseline", "vs_baseline", "params", "ms_per_step", "lower_is_better"]
    if not len(train):
        return pd.DataFrame(columns=cols)
    rows = []
    # A cell that failed before training has no metric name: take its task's.
    known = train.groupby("task")["metric_name"].transform(
        lambda s: s.dropna().iloc[0] if s.notna().any() else "?")
    df = train.assign(metric_name=train["metric_name"].fillna(known))
    for key, g in df.groupby(list(TRAIN_KEYS), sort=True, dropna=False):
        ok = g[g["status"] == "ok"]
        bounds = metric_bounds(str(key[1]))
        estimate, lo, hi = seed_interval(ok["metric"], bounds)
        mean = float(ok["metric"].mean()) if len(ok) else math.nan
        base = float(g["baseline"].dropna().iloc[0]) if g["baseline"].notna().any() else math.nan
        lib = g.get("lower_is_better")
        rows.append({
            **dict(zip(TRAIN_KEYS, key, strict=True)),
            "seeds": len(g), "ok": len(ok), "not_ok": len(g) - len(ok), "mean": mean,
            "estimate": estimate, "ci_low": lo, "ci_high": hi,
            "scale": interval_scale(bounds), "baseline": base,
            "vs_baseline": estimate / base if base else math.nan,
            "params": g["params"].dropna().iloc[0] if g["params"].notna().any() else math.nan,
            "ms_per_step": float(ok["ms_per_step"].mean()) if len(ok) else math.nan,
            "lower_is_better": bool(lib.dropna().iloc[0]) if lib is not None
            and lib.notna().any() else True,
        })
    return pd.DataFrame(rows, columns=cols)


def problem_cells(train: pd.DataFrame) -> pd.DataFrame:
    """Cells that did not finish ``ok``, with their error text."""
    cols = ["id", "status", "error"]
    if not len(train):
        return pd.DataFrame(columns=cols)
    bad = train[train["status"] != "ok"]
    out = bad.reindex(columns=cols).sort_values("id").reset_index(drop=True)
    out["error"] = out["error"].fillna("").astype(str)
    return out


def standard_bench(bench: pd.DataFrame) -> pd.DataFrame:
    """The bench rows of the most common setting (batch, seq_len, dtype, threads,
    backend), with input size I = H where measured: the rows the speed figures plot."""
    if not len(bench):
        return bench
    setting = ["batch", "seq_len", "dtype", "threads", "backend"]
    b = bench.dropna(subset=["median_ms", "hidden"])
    if not len(b):
        return b
    common = b.groupby(setting, dropna=False).size().sort_values(ascending=False).index[0]
    mask = np.ones(len(b), dtype=bool)
    for col, val in zip(setting, common, strict=True):
        mask &= (b[col] == val).to_numpy() if not pd.isna(val) else b[col].isna().to_numpy()
    b = b[mask]
    square = b[b["input_size"] == b["hidden"]]
    return (square if len(square) else b).reset_index(drop=True)


def peer_table(bench: pd.DataFrame) -> pd.DataFrame:
    """Each gruablate measurement beside its PyTorch peer: ``torch_ms / gruablate_ms``
    (above 1: gruablate is faster)."""
    cols = [*BENCH_KEYS, "gruablate_ms", "torch_ms", "ratio"]
    if not len(bench) or "impl" not in bench:
        return pd.DataFrame(columns=cols)
    keys = list(BENCH_KEYS)
    ours = bench[bench["impl"] == "gruablate"].groupby(keys, dropna=False)["median_ms"].median()
    theirs = bench[bench["impl"] == "torch"].groupby(keys, dropna=False)["median_ms"].median()
    both = pd.concat({"gruablate_ms": ours, "torch_ms": theirs}, axis=1, join="inner")
    if not len(both):
        return pd.DataFrame(columns=cols)
    both["ratio"] = both["torch_ms"] / both["gruablate_ms"]
    return both.reset_index()[cols].sort_values(keys).reset_index(drop=True)


def bench_table(bench: pd.DataFrame) -> pd.DataFrame:
    """Every bench measurement: setting, impl, median ms, GFLOP/s."""
    cols = [*BENCH_KEYS, "impl", "median_ms", "gflops"]
    if not len(bench):
        return pd.DataFrame(columns=cols)
    return bench.reindex(columns=cols).sort_values([*BENCH_KEYS, "impl"]).reset_index(drop=True)
