#!/usr/bin/env bash
# Every study behind docs/FINDINGS.md, one after another, each followed by its report;
# the wall time of each goes to runs/findings-times.txt. Resumable: rerunning skips
# the cells already finished.
#   bash studies/run_findings.sh [JOBS]     (default: every core)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=()
if [ -n "${1:-}" ]; then jobs=(--jobs "$1"); fi
studies=(memory reset_gate coupling gate_inputs_row gate_inputs_pixel fewer_gates_adding fewer_gates_digits forget_bias chrono)
grep -m1 "model name" /proc/cpuinfo | tee -a runs/findings-times.txt || true
for s in "${studies[@]}"; do
    start=$(date +%s)
    gruablate run sweep --config "studies/$s.toml" "${jobs[@]}"
    echo "$s: $(( $(date +%s) - start )) s wall, finished $(date -u +%FT%TZ)" | tee -a runs/findings-times.txt
done
