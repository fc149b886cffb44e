#!/usr/bin/env bash
# GPU figures of the engine in under 5 minutes on one GPU: steps/s and peak memory of stacked
# LeNet-300-100 (1, 3, 10, 30 siblings) and of ResNet-20 (fp32/bf16, channels_last, torch.compile).
# Writes $OUT/gpu.json when OUT is set, else bench/results/gpu.json. Exits 2 without CUDA.
#   GPU_BENCH_BUDGET_S   seconds the measurements may take (default 240)
#   GPU_BENCH_TIMEOUT_S  hard limit on the whole run (default 290); results so far are kept
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
[[ -x $PY ]] || PY=python3
if ! "$PY" -c 'import torch, pydantic' 2>/dev/null; then
    echo "bench/gpu.sh: $PY cannot import torch and pydantic; run 'make install' first" >&2
    exit 2
fi
exec timeout --kill-after=10 "${GPU_BENCH_TIMEOUT_S:-290}" \
    "$PY" -m bench.gpu --budget "${GPU_BENCH_BUDGET_S:-240}" "$@"
