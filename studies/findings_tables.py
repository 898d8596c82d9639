"""Markdown tables for ``docs/FINDINGS.md`` from the findings studies' run directories.

    python studies/findings_tables.py [RUNS_DIR]        (default: runs)
    python studies/findings_tables.py --compare THEN_DIR NOW_DIR   (one study, two runs)

For each study of ``studies/run_findings.sh`` that has a run directory, one table: per
task, variant and hidden size the test metric's mean with its 95 % Student-t interval
over seeds (the report's :func:`~gruablate.report.data.t_interval`), every seed, the
trivial baseline, mean / baseline, copy's recall accuracy, the model's parameters and
the time per training step measured by the sweep. Nothing is typed in by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from gruablate import load_results
from gruablate.report.data import t_interval

STUDIES = ("memory", "reset_gate", "coupling", "gate_inputs_row", "gate_inputs_pixel",
           "fewer_gates", "forget_bias", "chrono")


def _g(v: float) -> str:
    return "—" if pd.isna(v) else f"{v:.3g}"


def _recall(text: object) -> float:
    if not isinstance(text, str):
        return float("nan")
    return json.loads(text).get("recall_accuracy", float("nan"))


def table(df: pd.DataFrame, study: dict) -> list[str]:
    """One row per (task, variant, hidden), in the study's order of tasks and variants."""
    df = df[df["kind"] == "train"].copy()
    task_rank = {t: i for i, t in enumerate(study.get("tasks", {}))}
    variant_rank = {v: i for i, v in enumerate(study.get("variants", []))}
    df = df.sort_values(["task", "variant", "hidden", "seed"],
                        key=lambda c: c.map(task_rank) if c.name == "task"
                        else c.map(variant_rank) if c.name == "variant" else c)
    df["recall"] = df["test_metrics"].map(_recall)
    df["ms_per_step"] = 1000.0 / df["steps_per_second"]
    lines = ["| task | variant | H | params | ok | metric: mean [95% CI] | seeds | baseline "
             "| mean / baseline | recall | ms / step |",
             "| --- | --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for (task, variant, hidden), g in df.groupby(["task", "variant", "hidden"], sort=False):
        ok = g[g["status"] == "ok"].sort_values("seed")
        lo, hi = t_interval(ok["metric"])
        mean = ok["metric"].mean()
        base = g["baseline"].iloc[0]
        seeds = " / ".join(_g(m) for m in ok["metric"])
        recall = ok["recall"].mean()
        lines.append(
            f"| {task} | `{variant}` | {int(hidden)} | {int(g['params'].iloc[0])} "
            f"| {len(ok)}/{len(g)} | {g['metric_name'].iloc[0]} {_g(mean)} [{_g(lo)}, {_g(hi)}] "
            f"| {seeds} | {_g(base)} | {_g(mean / base)} "
            f"| {_g(recall)} | {_g(ok['ms_per_step'].mean())} |")
    return [*lines, ""]


def main(root: str) -> None:
    for name in STUDIES:
        path = Path(root) / name
        if not (path / "study.json").is_file():
            continue
        study = json.loads((path / "study.json").read_text())
        print(f"### {name}: {study.get('description', '')}\n")
        print("\n".join(table(load_results(path), study)))


def compare(then_dir: str, now_dir: str) -> list[str]:
    """Per task and variant, every seed's test metric in two runs of one study."""
    cols = ["task", "variant", "seed", "metric", "metric_name"]
    both = load_results(then_dir)[cols].merge(
        load_results(now_dir)[cols], on=["task", "variant", "seed", "metric_name"],
        suffixes=("_then", "_now"))
    lines = [f"| task | variant | seeds 0 / 1 / 2, `{then_dir}` | seeds 0 / 1 / 2, `{now_dir}` |",
             "| --- | --- | --- | --- |"]
    for (task, variant), g in both.sort_values("seed").groupby(["task", "variant"]):
        then = " / ".join(_g(v) for v in g["metric_then"])
        now = " / ".join(_g(v) for v in g["metric_now"])
        lines.append(f"| {task} | `{variant}` | {g['metric_name'].iloc[0]} {then} | {now} |")
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--compare":
        print("\n".join(compare(sys.argv[2], sys.argv[3])))
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else "runs")
