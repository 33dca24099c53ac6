#!/usr/bin/env bash
# Run a training command and restart it after a crash (it resumes from its last saved state).
#   scripts/supervise.sh [--run-dir RUN] [--max-restarts 5] [--backoff 10] -- <launch command>
#   scripts/supervise.sh -- torchrun --nproc_per_node 8 -m curriculum.stage0_pretrain run_dir=runs/big ...
#   scripts/supervise.sh -- accelerate launch --config_file curriculum/configs/fsdp_large.yaml \
#       -m curriculum.stage0_pretrain --config curriculum/configs/pretrain_large.yaml data=[...]
#   scripts/supervise.sh merge-wandb runs/big     # offline attempts -> one wandb run to sync
# Restarts and their causes are logged to RUN/supervisor.log.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"  # torchrun and accelerate from the project's environment
exec .venv/bin/python -m curriculum.supervise "$@"
