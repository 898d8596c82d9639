#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU:
#   1. runs the CUDA test suites for real (tests/test_cuda.py, tests/test_cuda_training.py:
#      PTX for sm_90 and the on-GPU comparisons with the CPU backend that are skipped
#      everywhere else; the simulator comparisons are CI's and are left out here);
#   2. if it passes, times gruablate's CUDA kernels against cuDNN (torch.nn.GRU/LSTM)
#      and writes the Markdown tables to benchmarks/gpu_results.md (or to $1); then
#      again with cuDNN held to float32 arithmetic (PyTorch lets it use TF32 on the
#      tensor cores by default), into gpu_results-fp32.md (beside $1).
#
# Needs the project installed with numba-cuda (pip install -e '.[cuda,test,torch]',
# torch built with CUDA for the peer columns). GPU_BENCH_ARGS passes extra options to
# gpu_bench.py, e.g. GPU_BENCH_ARGS=--quick for a smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/gpu_results.md}"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu.sh: no NVIDIA GPU visible (nvidia-smi failed); nothing measured" >&2
    exit 1
fi
# The real device, never the simulator, for the tests run in this process.
unset NUMBA_ENABLE_CUDASIM
nvidia-smi -L
python -c "from numba import cuda; import sys; sys.exit(0 if cuda.is_available() else 'numba.cuda sees no GPU')"

echo "== CUDA test suites (real GPU) =="
# Every worker compiles its own CPU reference kernels: spread them over the cores.
workers=$(python -c "import os; print(max(1, min(16, (os.cpu_count() or 2) - 1)))")
python -m pytest tests/test_cuda.py tests/test_cuda_training.py -q -rs -p no:cacheprovider \
    -n "$workers" -k "not simulat"

strict="${out%.md}-fp32.md"
echo "== benchmarks -> $out (cuDNN as PyTorch runs it: TF32 allowed) =="
# shellcheck disable=SC2086  # GPU_BENCH_ARGS is a list of options on purpose
python benchmarks/gpu_bench.py --out "$out" ${GPU_BENCH_ARGS:-}
echo "== benchmarks -> $strict (cuDNN held to float32, as gruablate) =="
# shellcheck disable=SC2086
python benchmarks/gpu_bench.py --out "$strict" --no-tf32 ${GPU_BENCH_ARGS:-}
