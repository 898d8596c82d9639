"""Markdown tables for ``docs/FINDINGS.md`` from the findings studies' run directories.

    python studies/findings_tables.py [RUNS_DIR]        (default: runs)
    python studies/findings_tables.py --compare THEN_DIR NOW_DIR   (one study, two runs)

For each study of ``studies/run_findings.sh`` that has a run directory, one table.

A study with a ``[search]`` (each variant its own learning-rate trials): per task,
variant and hidden size the trials that ended ok, the median test metric, the mean of
the best two (the best 10 % of a search, at least two: the report's sample for Welch's
test), the learning rate of the best trial, and against the question's baseline
variant the report's tests (:func:`gruablate.report.compare.comparison_table`): the
difference of medians with its bootstrap interval, Welch's t on the best trials and
Mann–Whitney U on all, each Holm-corrected over the variants set against one baseline,
and the verdict; then the median time per training step measured by the sweep.

A study without a search: per task, variant and hidden size the test metric's mean
with its 95 % Student-t interval over seeds (the report's
:func:`~gruablate.report.data.t_interval`), every seed, the trivial baseline, mean /
baseline, copy's recall accuracy, the model's parameters and the time per training
step. Nothing is typed in by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from gruablate import load_results
from gruablate.report.compare import comparison_table, top
from gruablate.report.data import t_interval

STUDIES = ("memory", "reset_gate", "coupling", "gate_inputs_row", "gate_inputs_pixel",
           "fewer_gates_adding", "fewer_gates_digits", "forget_bias", "chrono")
#: Where a question sets a variant against another than the study's first
#: (coupling: CIFG is an ablation of the LSTM, not of the GRU).
BASELINE_OF = {"coupling": {"lstm_cifg": "lstm"}}


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


def _p(v: float) -> str:
    return "—" if pd.isna(v) else "<0.0001" if v < 1e-4 else f"{v:.2g}"


def search_table(df: pd.DataFrame, study: dict, name: str) -> list[str]:
    """One row per (task, variant, hidden) of a searched study; see the module docstring."""
    df = df[df["kind"] == "train"].copy()
    variants = list(study["variants"])
    by_width = bool(study.get("hidden_by_variant"))
    # Each (variant, width) is one sample; at several widths a variant is compared at
    # each (the widths of equal parameter count), all in one group per task.
    df["label"] = df["variant"] + (" @" + df["hidden"].astype(str) if by_width else "")
    if by_width:
        df["hidden"] = "per variant"
    first = variants[0] + (f" @{study['hidden'][0]}" if by_width else "")
    pairs = BASELINE_OF.get(name, {})
    tables = []
    # each variant against its own baseline only (a baseline of a pair is not also
    # set against the study's first), Holm over each baseline's variants
    owner = {v: pairs.get(v, first) for v in variants if v not in pairs.values()}
    for base in {first, *pairs.values()}:
        mine = df[df["variant"].map(lambda v, b=base: owner.get(v) == b)
                  | (df["label"] == base)]
        tables.append(comparison_table(mine.assign(variant=mine["label"]), base))
    tests = pd.concat(tables).set_index(["task", "variant"])
    task_rank = {t: i for i, t in enumerate(study.get("tasks", {}))}
    df["rank"] = df["variant"].map(variants.index) * 100_000 + pd.to_numeric(
        df["label"].str.extract(r"@(\d+)$")[0], errors="coerce").fillna(0)
    df = df.sort_values(["task", "rank", "lr"], key=lambda c: c.map(task_rank)
                        if c.name == "task" else c)
    lines = ["| task | variant | H | ok | median | best 2 | lr of the best | against "
             "| median difference [95% CI] | Welch p (Holm) | MWU p (Holm) | verdict "
             "| ms / step |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: "
             "| --- | ---: |"]
    for (task, label), g in df.groupby(["task", "label"], sort=False):
        ok = g[(g["status"] == "ok") & g["metric"].notna()]
        lower = bool(g["lower_is_better"].iloc[0])
        metric = g["metric_name"].iloc[0]
        variant = label.split(" @")[0]
        hidden = label.split(" @")[1] if by_width else str(int(g["hidden"].iloc[0]))
        if len(ok):
            best = ok.sort_values("metric", ascending=lower).iloc[0]
            best2 = top(ok["metric"], lower).mean()
            head = (f"| {task} | `{variant}` | {hidden} | {len(ok)}/{len(g)} "
                    f"| {metric} {_g(ok['metric'].median())} | {_g(best2)} "
                    f"| {best['lr']:.2g} ")
        else:
            head = f"| {task} | `{variant}` | {hidden} | 0/{len(g)} | — | — | — "
        if (task, label) in tests.index:
            r = tests.loc[(task, label)]
            against = r["baseline_variant"].split(" @")
            against = f"`{against[0]}`" + (f" @{against[1]}" if len(against) > 1 else "")
            tail = (f"| {against} | {_g(r['median_difference'])} [{_g(r['difference_low'])},"
                    f" {_g(r['difference_high'])}] | {_p(r['welch_p'])} "
                    f"({_p(r['welch_p_holm'])}) | {_p(r['mannwhitney_p'])} "
                    f"({_p(r['mannwhitney_p_holm'])}) | {r['verdict']} ")
        else:
            tail = "| (baseline) | — | — | — | — "
        ms = 1000.0 / ok["steps_per_second"].median() if len(ok) else float("nan")
        lines.append(f"{head}{tail}| {_g(ms)} |")
    return [*lines, ""]


def main(root: str) -> None:
    for name in STUDIES:
        path = Path(root) / name
        if not (path / "study.json").is_file():
            continue
        study = json.loads((path / "study.json").read_text())
        print(f"### {name}: {study.get('description', '')}\n")
        df = load_results(path)
        searched = "trial" in df and df["trial"].notna().any()
        print("\n".join(search_table(df, study, name) if searched else table(df, study)))


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
