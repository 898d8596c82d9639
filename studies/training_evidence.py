"""The training evidence of docs/TRAINING.md: gated cells against the tanh RNN.

gru, lstm, no_reset and rnn on the adding problem (T = 100) and copy memory (delay 50),
three seeds each, plus the LSTM with chrono initialisation: 30 runs of
``gruablate.train``, one after another, each record written
to ``runs/training_evidence/`` and the Markdown table printed at the end (also written
beside the records as ``table.md``).

    python studies/training_evidence.py            # the whole grid (30 runs)
    python studies/training_evidence.py --table    # only re-print the table of the records

Settings were chosen to fit about 15-20 CPU-minutes on two cores: hidden 64, batch 32, Adam
with global-norm clipping at 1, PyTorch's default initialisation; lr 3e-3 for 1500 steps
on adding, lr 1e-2 for 3000 steps on copy. Two extra rows repeat the LSTM with chrono
initialisation.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

import gruablate
from gruablate.envinfo import cpu_model, usable_cores
from gruablate.train import write_record

VARIANTS = ("gru", "lstm", "no_reset", "rnn")
SEEDS = (0, 1, 2)
# Two extra rows, to test the explanation of the LSTM's plateau (see the docs): the same
# LSTM with chrono initialisation (Tallec & Ollivier 2018).
EXTRA = (("adding", "lstm", {"init": "chrono"}), ("copy", "lstm", {"init": "chrono"}))
COMMON = dict(hidden=64, batch=32, layers=1, clip=1.0, init="torch")
TASKS = {
    "adding": dict(steps=1500, lr=3e-3, seq_len=100),
    "copy": dict(steps=3000, lr=1e-2, delay=50),
}
OUT = Path("runs/training_evidence")


def _cells() -> list[tuple[str, str, dict]]:
    cells = [(task, variant, {}) for task in TASKS for variant in VARIANTS]
    extra = [(task, variant, o) for task, variant, o in EXTRA]
    return sorted(cells + extra, key=lambda c: list(TASKS).index(c[0]))  # stable: by task


def _label(variant: str, overrides: dict) -> str:
    return variant + "".join(f", {k} {v}" for k, v in overrides.items())


def run_grid() -> None:
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for task, variant, overrides in _cells():
        for seed in SEEDS:
            label = _label(variant, overrides).replace(", ", "-").replace(" ", "_")
            path = OUT / f"{task}-{label}-s{seed}.json"
            kwargs = {**COMMON, **TASKS[task], **overrides}
            record = gruablate.train(variant, task, seed=seed, **kwargs)
            write_record(record, path)
            print(f"{task:7s} {_label(variant, overrides):18s} seed {seed}: {record['status']}"
                  f" {record['metric_name']} {record['metric']:.4f}"
                  f" (baseline {record['baseline']:.4f}), {record['train_seconds']:.0f} s",
                  flush=True)
    wall = time.perf_counter() - start_wall
    cpu = time.process_time() - start_cpu
    write_record({"wall_seconds": wall, "cpu_seconds": cpu, "cpu": cpu_model(),
                  "cores": usable_cores()}, OUT / "timing.json")


def _fmt(values: list[float]) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < len(values):
        return "diverged"
    mean = statistics.fmean(finite)
    spread = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return f"{mean:.4f} ± {spread:.4f}"


def table() -> str:
    records = [json.loads(p.read_text()) for p in sorted(OUT.glob("*-s*.json"))]
    timing = json.loads((OUT / "timing.json").read_text())
    lines = [
        "| task | variant | params | test metric, mean ± sd (3 seeds) | per seed (0 / 1 / 2) |"
        " trivial baseline | metric / baseline | recall accuracy | steps/s |",
        "| --- | --- | ---: | --- | --- | ---: | ---: | --- | ---: |",
    ]
    for task, variant, overrides in _cells():
        rs = [r for r in records if r["task"] == task and r["variant"] == variant
              and all(r[k] == v for k, v in overrides.items())
              and (overrides or r["init"] == COMMON["init"])]
        rs.sort(key=lambda r: r["seed"])
        metrics = [r["metric"] for r in rs]
        base = rs[0]["baseline"]
        finite = [m for m in metrics if m is not None and math.isfinite(m)]
        ratio = f"{statistics.fmean(finite) / base:.2f}" if finite else "-"
        recall = (
            " / ".join(f"{r['test_metrics'].get('recall_accuracy', math.nan):.2f}" for r in rs)
            if task == "copy" else "-"
        )
        speed = statistics.fmean(r["steps_per_second"] for r in rs)
        per_seed = " / ".join("nan" if m is None else f"{m:.4f}" for m in metrics)
        lines.append(
            f"| {task} | {_label(variant, overrides)} | {rs[0]['params']} |"
            f" {rs[0]['metric_name']} {_fmt(metrics)} | {per_seed} | {base:.4f} | {ratio} |"
            f" {recall} | {speed:.0f} |"
        )
    lines.append("")
    lines.append(
        f"{len(records)} runs in {timing['wall_seconds'] / 60:.1f} min wall,"
        f" {timing['cpu_seconds'] / 60:.1f} min CPU, on {timing['cpu']}"
        f" ({timing['cores']} usable cores)."
    )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if "--table" not in argv:
        run_grid()
    text = table()
    (OUT / "table.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
