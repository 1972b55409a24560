#!/usr/bin/env bash
# GPU checks CI cannot run (benchmarks/gpu_check.py): bf16 + channels_last against float32 per
# architecture at 64 and 256 px (loss agreement, images/s, peak GPU memory), the diffusion step,
# and a 1-worker NCCL sweep of two `ci` trials with --use-gpu. One JSON file; under 8 minutes on
# one GPU (the whole run is cut at 7.5 minutes, the sweep at 4).
#   benchmarks/gpu_check.sh [OUT.json]      (default benchmarks/results/gpu_check.json)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu_check.json}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 450 "${PYTHON:-python}" benchmarks/gpu_check.py --device cuda --sweep --sweep-timeout 240 --out "$out"
