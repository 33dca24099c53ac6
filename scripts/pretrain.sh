#!/usr/bin/env bash
# Stage 0: imitation pretraining. Arguments go to curriculum.stage0_pretrain:
#   scripts/pretrain.sh [--config FILE.yaml] [key=value ...]
#   scripts/pretrain.sh run_dir=runs/pretrain data=[runs/quickstart/trajectories] preset=small trainer.max_steps=5000
# Running the same command again resumes the run. For several GPUs:
#   .venv/bin/accelerate launch --multi_gpu --num_processes N -m curriculum.stage0_pretrain key=value ...
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./setup_env.sh
exec .venv/bin/python -m curriculum.stage0_pretrain "$@"
