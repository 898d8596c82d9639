#!/usr/bin/env bash
# The CPU measurements of benchmarks/RESULTS.md: gruablate's kernels beside PyTorch in
# the same process, same shapes and the same thread count on both sides.
#
#   benchmarks/cpu.sh [RUN_ROOT]        (default runs/cpu-bench; THREADS=2 by default)
#
# 1. the standard grid (float32, T=100, B=32, I=H, H=32..512), every catalogue variant,
#    inference and training step, with the matrix-product peak;
# 2. PyTorch's fastrnns default size (T=100, B=64, I=H=512);
# 3. batch-1 streaming (B=1, H=128): one call per step, state carried.
# Each writes a run directory (gruablate.load_results reads it) and prints its table.
# On a shared machine, run it when the machine is otherwise idle: every record keeps
# the load average seen while it was measured.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-runs/cpu-bench}"
threads="${THREADS:-2}"
export NUMBA_NUM_THREADS="${NUMBA_NUM_THREADS:-$threads}"
common=(--peers torch --threads "$threads" --repeats "${REPEATS:-5}" --rounds "${ROUNDS:-3}")

grep -m1 "model name" /proc/cpuinfo || true
gruablate run bench --preset standard --variants all "${common[@]}" --out "$root/standard"
gruablate run bench --preset fastrnns --variants all "${common[@]}" --no-peak --out "$root/fastrnns"
gruablate run bench --preset stream --variants gru_reset_after,lstm "${common[@]}" --no-peak \
    --out "$root/stream"
