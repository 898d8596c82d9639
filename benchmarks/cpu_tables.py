"""Markdown tables and target checks for ``benchmarks/RESULTS.md`` from ``cpu.sh`` runs.

    python benchmarks/cpu_tables.py runs/cpu-bench > /tmp/tables.md

Reads the three run directories that ``benchmarks/cpu.sh`` writes (``standard``,
``fastrnns``, ``stream``) with :func:`gruablate.load_results` and prints, for each, the
measured numbers and every target of the speed issue marked met or not met, computed
from the numbers (nothing here is typed in by hand).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from gruablate import get_variant, load_results
from gruablate.store import attach


def _fmt(v: float, digits: int = 3) -> str:
    return "—" if pd.isna(v) else f"{v:.{digits}g}"


def _pct(fraction: float | None) -> str:
    return "—" if fraction is None or pd.isna(fraction) else f"{100 * fraction:.0f}"


def _mark(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _pivot(bench: pd.DataFrame, mode: str) -> pd.DataFrame:
    sub = bench[bench["mode"] == mode]
    return sub.pivot_table(index=["variant", "impl"], columns="hidden", values="median_ms")


def ratio_table(bench: pd.DataFrame, title: str) -> list[str]:
    """gruablate and PyTorch times and their ratio for the two peered variants."""
    lines = [f"#### {title}", "",
             "| variant | mode | H | gruablate ms | PyTorch ms | PyTorch / gruablate "
             "| gruablate GFLOP/s | % of peak |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    ours = bench[(bench["impl"] == "gruablate") & bench["torch_ratio"].notna()]
    for _, r in ours.sort_values(["variant", "mode", "hidden"]).iterrows():
        peer = r["median_ms"] * r["torch_ratio"]
        lines.append(
            f"| `{r['variant']}` | {r['mode']} | {int(r['hidden'])} | {_fmt(r['median_ms'])} "
            f"| {_fmt(peer)} | {_fmt(r['torch_ratio'])} | {_fmt(r['gflops'])} "
            f"| {_pct(r.get('peak_fraction'))} |"
        )
    return lines + [""]


def _against_gru(bench: pd.DataFrame):
    """Each gruablate measurement but ``gru``'s, with its time and its FLOP count as
    fractions of ``gru``'s at the same mode and size: ``(row, t_ratio, flop_ratio)``."""
    ours = bench[bench["impl"] == "gruablate"]
    gru = ours[ours["variant"] == "gru"].set_index(["mode", "hidden"])["median_ms"]
    g = get_variant("gru")
    for _, r in ours.sort_values(["mode", "hidden", "variant"]).iterrows():
        key = (r["mode"], r["hidden"])
        if r["variant"] == "gru" or key not in gru.index:
            continue
        fm = "train" if r["mode"] == "train" else "inference"
        shape = (int(r["input_size"]), int(r["hidden"]), int(r["batch"]), int(r["seq_len"]), fm)
        v = get_variant(r["variant"])
        yield r, r["median_ms"] / gru[key], v.flops(*shape) / g.flops(*shape)


def variant_table(bench: pd.DataFrame) -> list[str]:
    """Every variant's time against ``gru``'s, beside what the FLOP counts predict."""
    lines = ["| variant | mode | H | ms | time / gru | FLOPs / gru's | target |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r, t_ratio, flop_ratio in _against_gru(bench):
        target = t_ratio <= flop_ratio
        if r["variant"] == "mingru":
            target = target and t_ratio < 1.0
        lines.append(
            f"| `{r['variant']}` | {r['mode']} | {int(r['hidden'])} | {_fmt(r['median_ms'])} "
            f"| {_fmt(t_ratio)} | {_fmt(flop_ratio)} | {_mark(target)} |"
        )
    return lines + [""]


def targets(bench: pd.DataFrame) -> list[str]:
    """The peer targets of the issue, each cell marked."""
    out = []
    ours = bench[(bench["impl"] == "gruablate") & bench["torch_ratio"].notna()]
    for _, r in ours.sort_values(["variant", "mode", "batch", "hidden"]).iterrows():
        H, ratio = int(r["hidden"]), r["torch_ratio"]
        if r["variant"] == "gru_reset_after":
            need = 3.0 if (r["mode"] == "train" and H <= 64) else 1.0
        elif r["mode"] == "train":
            need = 1.0
        else:
            need = 1.0 if H <= 128 else 0.8
        out.append(f"| `{r['variant']}` | {r['mode']} | B={int(r['batch'])} H={H} "
                   f"| {_fmt(ratio)} | ≥ {need} | {_mark(ratio >= need)} |")
    return ["| variant | mode | shape | PyTorch / gruablate | target | |",
            "| --- | --- | --- | ---: | ---: | --- |", *out, ""]


def summary(bench: pd.DataFrame) -> list[str]:
    """One line per remaining target: FLOP-proportional variants, minGRU, % of peak."""
    ours = bench[bench["impl"] == "gruablate"]
    met = near = total = 0
    worst = (0.0, "")
    mingru_ok = True
    for r, t_ratio, flop_ratio in _against_gru(bench):
        excess = t_ratio / flop_ratio
        total += 1
        met += excess <= 1.0
        near += excess <= 1.1
        if excess > worst[0]:
            worst = (excess, f"`{r['variant']}` {r['mode']} H={int(r['hidden'])}")
        if r["variant"] == "mingru":
            mingru_ok &= t_ratio < 1.0
    lines = []
    if total:
        lines.append(f"- Every variant no slower than its FLOP count against `gru`: "
                     f"{_mark(met == total)} (holds in {met} of {total} cells, within 10 % in "
                     f"{near} of {total}; worst {worst[1]} at {worst[0]:.2f}× its FLOP share).")
        lines.append(f"- `mingru` faster than `gru` at every size: {_mark(mingru_ok)}.")
    big = ours[(ours["hidden"] == 512) & ours["peak_fraction"].notna()]
    if len(big):
        lo = big.loc[big["peak_fraction"].idxmin()]
        lines.append(f"- GFLOP/s ≥ 60 % of the matrix-product peak at H = 512: "
                     f"{_mark(big['peak_fraction'].min() >= 0.6)} (lowest: `{lo['variant']}` "
                     f"{lo['mode']}, {100 * lo['peak_fraction']:.0f} %; peered: "
                     + ", ".join(f"`{r['variant']}` {r['mode']} {100 * r['peak_fraction']:.0f} %"
                                 for _, r in big[big["torch_ratio"].notna()].iterrows())
                     + ").")
    return [*lines, ""] if lines else []


def peak_lines(df: pd.DataFrame) -> list[str]:
    peaks = df[df["kind"] == "peak"]
    if not len(peaks):
        return []
    parts = [f"{r['impl']} {r['gflops']:.1f}" for _, r in peaks.iterrows()]
    return [f"Matrix-product peak ({int(peaks['size'].iloc[0])}³ float32, "
            f"{int(peaks['threads'].iloc[0])} threads), GFLOP/s: " + ", ".join(parts), ""]


def main(root: str) -> None:
    base = Path(root)
    for name in ("standard", "fastrnns", "stream"):
        path = base / name
        if not path.is_dir():
            continue
        df = load_results(path)
        env = attach(path).environment()
        bench = df[df["kind"] == "bench"]
        print(f"### {name} ({env.get('cpu', '?')}, {env.get('cores', '?')} cores)\n")
        loads = bench["loadavg"].dropna()
        if len(loads):
            print(f"Load average while measuring: {loads.min():.2f}–{loads.max():.2f}.\n")
        print("\n".join(peak_lines(df)))
        print("\n".join(ratio_table(bench, "gruablate beside PyTorch")))
        print("\n".join(targets(bench)))
        print("\n".join(summary(bench)))
        if name != "stream" and (bench["variant"] == "gru").any():
            print("\n".join(variant_table(bench)))
        if name == "stream":
            s = bench[bench["mode"] == "stream"][["variant", "impl", "step_us", "median_ms"]]
            print("| variant | impl | per-step latency (µs) | sequence of 100 steps (ms) |")
            print("| --- | --- | ---: | ---: |")
            for _, r in s.iterrows():
                print(f"| `{r['variant']}` | {r['impl']} | {_fmt(r['step_us'])} "
                      f"| {_fmt(r['median_ms'])} |")
            print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/cpu-bench")
