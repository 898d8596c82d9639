"""Did a change move the kernels' speed? Compare two ``run bench`` directories.

    python benchmarks/compare_runs.py BEFORE_DIR AFTER_DIR

For every case both runs measured (variant, implementation, mode, shape) it prints the
ratio of medians, after / before, and for each implementation the median ratio and its
range. PyTorch's cases did not change between the runs, so their spread is the
machine's noise: read gruablate's ratios against it.
"""

from __future__ import annotations

import sys

import pandas as pd

from gruablate import load_results

KEYS = ["variant", "impl", "mode", "dtype", "hidden", "batch", "seq_len", "input_size"]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    before, after = (load_results(p) for p in argv)
    before, after = (d[d["mode"].notna()] for d in (before, after))  # peaks have none
    both = before[KEYS + ["median_ms"]].merge(after[KEYS + ["median_ms"]], on=KEYS,
                                               suffixes=("_before", "_after"))
    both["ratio"] = both["median_ms_after"] / both["median_ms_before"]
    print("| impl | mode | cases | median after/before | min | max |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for (impl, mode), g in both.groupby(["impl", "mode"]):
        print(f"| {impl} | {mode} | {len(g)} | {g['ratio'].median():.3f} |"
              f" {g['ratio'].min():.3f} | {g['ratio'].max():.3f} |")
    pd.set_option("display.width", 200)
    print()
    print(both.sort_values("ratio")[KEYS[:5] + ["median_ms_before", "median_ms_after",
                                                "ratio"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
