#!/usr/bin/env bash
# The GPU check (under 8 minutes on one GPU): bf16 training speed and MFU for small, medium and
# large; large's peak memory under a 40 GB cap beside the estimator's prediction; the batched
# decision latency of 256 concurrent battles. Exits with a clear message without a GPU.
#   scripts/gpu_check.sh [--peak-tflops T] [--seconds S]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./setup_env.sh
exec .venv/bin/python scripts/gpu_check.py "$@"
