"""The report's tables as rows of display strings, shared by the HTML and Markdown.

Also the variants' specs (equations) and the environments, which both documents show.
"""

from __future__ import annotations

import math
from typing import Any

from ..catalogue import get_variant
from ..spec import SpecError, Variant
from .data import ReportData, accuracy_table, bench_table, peer_table, problem_cells


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
            "mean [95% CI]", "baseline", "mean / baseline", "params", "ms / step"]
    rows = []
    for r in t.itertuples(index=False):
        ci = "" if r.ok < 2 else f" [{_num(r.ci_low)}, {_num(r.ci_high)}]"
        rows.append([
            r.task, r.variant, _num(r.hidden, 0), _num(r.layers, 0), str(r.backend),
            f"{r.ok} / {r.seeds}", r.metric_name, f"{_num(r.mean)}{ci}", _num(r.baseline),
            _num(r.vs_baseline, 3), _num(r.params, 0), _num(r.ms_per_step, 3),
        ])
    return head, rows


def problem_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """Cells that failed or diverged, with their error."""
    t = problem_cells(data.train)
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

