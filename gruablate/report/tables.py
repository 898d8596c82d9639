"""The report's tables as rows of display strings, shared by the HTML and Markdown.

Also the variants' specs (equations) and the environments, which both documents show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..cells.catalogue import get_variant
from ..cells.spec import SpecError, Variant
from ..search import parse_distribution
from ..study import SETTINGS
from .compare import (
    ALPHA,
    COMPARISON_COLUMNS,
    TOP_FRACTION,
    comparison_table,
    importance_table,
)
from .data import (
    INTERVAL_NOTES,
    ReportData,
    accuracy_table,
    bench_table,
    peer_table,
    problem_cells,
)


def _num(x: Any, digits: int = 4) -> str:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return "" if x is None else str(x)
    if math.isnan(f):
        return "–"
    if f == int(f) and abs(f) < 1e9 and digits == 0:
        return str(int(f))
    return f"{f:.{digits}g}"


def accuracy_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the accuracy table (one row per task × variant × size)."""
    t = accuracy_table(data.train)
    head = ["task", "variant", "H", "layers", "backend", "ok / cells", "metric",
            "estimate [95% CI]", "seeds", "baseline", "estimate / baseline", "params",
            "ms / step"]
    seeds = _seed_values(data.train)
    rows = []
    for r in t.itertuples(index=False):
        ci = "" if r.ok < 2 else f" [{_num(r.ci_low)}, {_num(r.ci_high)}]"
        key = (r.task, r.variant, r.hidden, r.layers, r.backend)
        rows.append([
            r.task, r.variant, _num(r.hidden, 0), _num(r.layers, 0), str(r.backend),
            f"{r.ok} / {r.seeds}", r.metric_name, f"{_num(r.estimate)}{ci}",
            seeds.get(key, ""), _num(r.baseline), _num(r.vs_baseline, 3), _num(r.params, 0),
            _num(r.ms_per_step, 3),
        ])
    return head, rows


def _seed_values(train: pd.DataFrame) -> dict[tuple, str]:
    """Each row's ok metrics, seed by seed: ``s0 0.0012, s1 0.0009``."""
    if not len(train):
        return {}
    ok = train[train["status"] == "ok"].sort_values("seed")
    out = {}
    for key, g in ok.groupby(["task", "variant", "hidden", "layers", "backend"], sort=False):
        out[key] = ", ".join(f"s{int(s)} {_num(m, 3)}" for s, m in zip(g["seed"], g["metric"],
                                                                       strict=True))
    return out


def baseline_variant(data: ReportData) -> str | None:
    """The variant the others are compared with: the first variant of the first
    reported study that has training cells here (by name order when no study lists)."""
    cells = data.cells
    present = list(dict.fromkeys(cells["variant"].dropna())) if len(cells) else []
    if not present:
        return None
    for study in data.studies.values():
        for name in study.get("variants") or []:
            if name in present:
                return name
    return sorted(present)[0]


def summary(data: ReportData) -> list[tuple[str, list[str]]]:
    """Per task and size: the variants ranked by their estimate, the baseline variant
    marked, and for each other variant how it did against it seed by seed (the seeds
    share the data splits, so the comparison is paired)."""
    base = baseline_variant(data)
    t = accuracy_table(data.train)
    if base is None or not len(t):
        return []
    ok = data.train[data.train["status"] == "ok"]
    out = []
    for key, g in t.groupby(["task", "hidden", "layers", "backend"], sort=True):
        task, hidden, layers, backend = key
        g = g[g["ok"] > 0]
        if not len(g):
            continue
        lower = bool(g["lower_is_better"].iloc[0])
        g = g.sort_values("estimate", ascending=lower)
        here = ok[(ok["task"] == task) & (ok["hidden"] == hidden) & (ok["layers"] == layers)
                  & (ok["backend"] == backend)]
        by_seed = {v: dict(zip(s["seed"], s["metric"], strict=True))
                   for v, s in here.groupby("variant")}
        lines = []
        for rank, r in enumerate(g.itertuples(index=False), start=1):
            line = f"{rank}. {r.variant} {_num(r.estimate)}"
            if r.variant == base:
                line += " (baseline variant)"
            elif base in by_seed:
                line += " — " + _paired(by_seed[r.variant], by_seed[base], base, lower)
            lines.append(line)
        size = f"H = {_num(hidden, 0)}" + (f", {_num(layers, 0)} layers" if layers != 1
                                          else "")
        out.append((f"{task}, {size}, {backend} ({g['metric_name'].iloc[0]}, "
                    f"{'lower' if lower else 'higher'} is better)", lines))
    return out


def _paired(mine: dict, theirs: dict, base: str, lower: bool) -> str:
    shared = sorted(set(mine) & set(theirs))
    if not shared:
        return f"no seed shared with {base}"
    better = sum((mine[s] < theirs[s]) if lower else (mine[s] > theirs[s]) for s in shared)
    worse = sum((mine[s] > theirs[s]) if lower else (mine[s] < theirs[s]) for s in shared)
    n = len(shared)
    if better == n or worse == n:
        word = "better" if better == n else "worse"
        holds = "holds seed by seed" if n > 1 else "one seed only"
        return f"{word} than {base} on {n} of {n} seeds ({holds})"
    return f"better than {base} on {better} of {n} seeds, worse on {worse}: mixed"


def interval_notes(data: ReportData) -> list[str]:
    """What the accuracy table's estimates and intervals are, per metric."""
    t = accuracy_table(data.train)
    by_scale: dict[str, list[str]] = {}
    for metric, scale in zip(t["metric_name"], t["scale"], strict=True):
        names = by_scale.setdefault(str(scale), [])
        if metric not in names:
            names.append(str(metric))
    return [f"{', '.join(names)}: {INTERVAL_NOTES[scale]}." for scale, names in
            sorted(by_scale.items())]


def header_rows(data: ReportData) -> list[tuple[str, str]]:
    """What was run, for the top of the report: per run directory, its study, the
    training settings of each task, the command, when and how long, and the machine."""
    rows: list[tuple[str, str]] = []
    for name, study in data.studies.items():
        env = data.envs.get(name) or {}
        sweep = env.get("sweep") or {}
        pre = f"{name}: " if len(data.studies) > 1 else ""
        rows.append((f"{pre}study", str(study.get("name") or study.get("kind", "?"))
                     + (f" — {study['description']}" if study.get("description") else "")))
        for task, settings in (study.get("cell_settings") or {}).items():
            rows.append((f"{pre}{task}", _settings_text(settings)))
        if study.get("kind") == "bench":
            rows.append((f"{pre}benchmark", ", ".join(
                f"{k} {v}" for k, v in study.items() if k != "kind")))
        if sweep:
            rows.append((f"{pre}command", str(sweep.get("command", "not recorded"))))
            when = f"{sweep.get('started', '?')} to {sweep.get('finished', 'not finished')}"
            wall = sweep.get("wall_seconds")
            if wall is not None:
                when += f" ({wall:.0f} s wall, {sweep.get('cells_run', '?')} cells run)"
            rows.append((f"{pre}when (UTC)", when))
        rows.append((f"{pre}machine", machine_text(env, sweep)))
    return rows


def _settings_text(settings: dict[str, Any]) -> str:
    opts = settings.get("task_options") or {}
    search = settings.get("search")
    order = [k for k in SETTINGS if k in settings] + sorted(
        k for k in settings if k not in SETTINGS and k not in ("task_options", "search"))
    shown = {k: _num(v, 6) if isinstance(v, float) else v for k, v in settings.items()}
    main = ", ".join(f"{k} {shown[k]}" for k in order)
    if isinstance(search, dict):
        drawn = ", ".join(f"{k} ~ {parse_distribution(d, k).text()}"
                          for k, d in (search.get("space") or {}).items())
        main += f"; searched (seed {search.get('seed')}): {drawn}"
    extra = ", ".join(f"{k}={v}" for k, v in opts.items())
    return main + (f"; task options {extra}" if extra else "")


def machine_text(env: dict[str, Any], sweep: dict[str, Any] | None = None) -> str:
    """CPU model, vector extensions, cores, GPUs and load, in one line."""
    if not env:
        return "not recorded"
    ext = env.get("vector_extensions")
    cpu = f"{env.get('cpu', '?')}" + (f" ({', '.join(ext)})" if ext else "")
    parts = [cpu, f"{env.get('cores', '?')} usable cores"]
    gpus = env.get("gpus") or []
    if gpus:
        parts.append(", ".join(str(g.get("name")) for g in gpus))
    sweep = sweep or {}
    loads = [sweep.get(k) for k in ("load_start", "load_end") if sweep.get(k) is not None]
    if loads:
        parts.append("load average " + " → ".join(f"{v:.2f}" for v in loads))
    return ", ".join(parts)


def problem_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """Cells that failed or diverged, with their error."""
    t = problem_cells(data.cells)
    return ["cell", "status", "error"], [[r.id, r.status, r.error] for r in
                                         t.itertuples(index=False)]


def peer_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """gruablate beside its PyTorch peer: times and ratio."""
    t = peer_table(data.bench)
    head = ["variant", "mode", "H", "B", "T", "I", "dtype", "threads", "gruablate ms",
            "PyTorch ms", "PyTorch / gruablate"]
    rows = [[r.variant, r.mode, _num(r.hidden, 0), _num(r.batch, 0), _num(r.seq_len, 0),
             _num(r.input_size, 0), str(r.dtype), _num(r.threads, 0), _num(r.gruablate_ms),
             _num(r.torch_ms), _num(r.ratio, 3)] for r in t.itertuples(index=False)]
    return head, rows


def bench_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """Every bench measurement."""
    t = bench_table(data.bench)
    head = ["variant", "impl", "mode", "backend", "H", "B", "T", "I", "dtype", "threads",
            "median ms", "GFLOP/s"]
    rows = [[r.variant, str(r.impl), r.mode, str(r.backend), _num(r.hidden, 0),
             _num(r.batch, 0), _num(r.seq_len, 0), _num(r.input_size, 0), str(r.dtype),
             _num(r.threads, 0), _num(r.median_ms), _num(r.gflops, 3)]
            for r in t.itertuples(index=False)]
    return head, rows


def variants_shown(data: ReportData) -> list[tuple[str, Variant]]:
    """(label, variant) for every variant of the data, as it was run: the spec its
    records carry first, then the study's (a user's spec file may have changed or moved
    since), else the catalogue."""
    specs: dict[str, dict[str, Any]] = {}
    for study in data.studies.values():
        specs.update(study.get("variant_specs") or {})
    specs.update(data.specs)
    out = []
    for label in data.variants:
        try:
            out.append((label, Variant.from_dict(specs[label]) if label in specs
                        else get_variant(label)))
        except SpecError:
            continue  # unknown here (e.g. a torch-only row): nothing to render
    return out


def environment_rows(env: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, value) lines describing one run's machine and software."""
    if not env:
        return [("environment", "not recorded")]
    git = env.get("git") or {}
    gpus = env.get("gpus") or []
    ex = env.get("executor") or {}
    rows = [
        ("CPU", f"{env.get('cpu', '?')} ({env.get('cores', '?')} usable cores)"),
        ("GPU", ", ".join(f"{g.get('name')} ({g.get('memory')})" for g in gpus) or "none"),
        ("Python", f"{env.get('python', '?')} on {env.get('platform', '?')}"),
        ("git", f"{git.get('commit', '?')}{' (uncommitted changes)' if git.get('dirty') else ''}"
         if git else "not a git checkout"),
        ("executor", ", ".join(f"{k}={v}" for k, v in ex.items()) or "not recorded"),
        ("packages", ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items())),
    ]
    threads = env.get("threads") or {}
    if threads:
        rows.append(("thread settings", ", ".join(f"{k}={v}" for k, v in threads.items())))
    if env.get("workers"):
        rows.append(("dask workers", ", ".join(sorted(env["workers"]))))
    return rows


def study_rows(data: ReportData) -> list[tuple[str, str, str]]:
    """(run, description, counts) for each run directory."""
    out = []
    for name, study in data.studies.items():
        sub = data.results[data.results["run"] == name]
        kinds = sub["kind"].value_counts().to_dict() if len(sub) else {}
        counts = ", ".join(f"{v} {k} records" for k, v in sorted(kinds.items())) or "no records"
        if "status" in sub:
            st = sub["status"].dropna().value_counts().sort_index().to_dict()
            if st:
                counts += " (" + ", ".join(f"{v} {k}" for k, v in st.items()) + ")"
        out.append((name, str(study.get("description") or study.get("kind", "")), counts))
    return out



# ----------------------------------------------------------- significance
@dataclass(frozen=True)
class Statistics:
    """The report's tests and importances, computed once for every document."""

    comparison: pd.DataFrame
    importance: pd.DataFrame


def statistics(data: ReportData) -> Statistics:
    """Every variant against the baseline variant (:func:`.compare.comparison_table`) and
    the searches' hyperparameter importance (:func:`.compare.importance_table`)."""
    base = baseline_variant(data)
    table = (comparison_table(data.cells, base) if base is not None
             else pd.DataFrame(columns=COMPARISON_COLUMNS))
    return Statistics(table, importance_table(data.trials))


def comparison_note() -> str:
    """How the comparison table reads."""
    return (f"Each variant against the baseline variant, per task and size: the difference"
            f" of medians over all ok cells (trials × seeds, or seeds) with a 95% bootstrap"
            f" interval; Welch's t-test on each side's best {TOP_FRACTION:.0%} of a search's"
            f" trials (at least two cells; Greff et al. 2017) or on all seeds of a grid"
            f" point, and the Mann–Whitney U test on all cells, both"
            f" two-sided, each with Holm's correction over the variants. The verdict is"
            f" Welch's after correction at α = {ALPHA}.")


def comparison_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and display rows of the comparison table."""
    head = ["task", "H", "layers", "backend", "variant", "cells", "median (baseline)",
            "Δ median [95% CI]", "mean of Welch's sample (baseline)", "Welch p (Holm)",
            "Mann–Whitney p (Holm)", "verdict"]
    rows = []
    for r in table.itertuples(index=False):
        ci = ("" if math.isnan(r.difference_low)
              else f" [{_num(r.difference_low, 3)}, {_num(r.difference_high, 3)}]")
        rows.append([
            str(r.task), str(r.hidden) if r.hidden == "searched" else _num(r.hidden, 0),
            _num(r.layers, 0), str(r.backend), str(r.variant), f"{r.n} / {r.baseline_n}",
            f"{_num(r.median)} ({_num(r.baseline_median)})",
            f"{_num(r.median_difference, 3)}{ci}",
            f"{_num(r.top_mean)} ({_num(r.baseline_top_mean)})",
            f"{_p(r.welch_p)} ({_p(r.welch_p_holm)})",
            f"{_p(r.mannwhitney_p)} ({_p(r.mannwhitney_p_holm)})", str(r.verdict),
        ])
    return head, rows


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return "–"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def importance_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """One row per task × variant, one column per drawn setting."""
    if not len(table):
        return [], []
    settings = sorted(table["setting"].unique())
    head = ["task", "variant", "trials", *settings]
    rows = []
    for (task, variant), g in table.groupby(["task", "variant"], sort=True):
        share = dict(zip(g["setting"], g["importance"], strict=True))
        rows.append([str(task), str(variant), str(int(g["trials"].iloc[0])),
                     *(f"{share[k]:.2f}" if k in share else "–" for k in settings)])
    return head, rows


def importance_note() -> str:
    """How the importance table reads."""
    return ("Share of the metric's variance over a variant's trials that each drawn"
            " setting explains on its own (functional ANOVA on a random forest, Optuna's"
            " fANOVA evaluator; the shares sum to 1). A setting that matters a lot is one"
            " a comparison at a single value of it would get wrong.")
