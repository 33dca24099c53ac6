#!/usr/bin/env bash
# The chain that makes the best model on one machine: the tactician's games, imitation of its
# decisions, stage 1 against a pool with the tactician and the model itself, stage 3 from the
# search bot (each promoted only on the tournament's verdict), and a final tournament over the
# competitive, replay and variety gen1ou team sets. Running it again resumes.
#   scripts/best_model.sh [run_dir=runs/best] [decisions=700000] [preset=tiny] [stages=[imitation,stage1,stage3,final]]
set -euo pipefail
cd "$(dirname "$0")/.."
./setup_env.sh >/dev/null
exec .venv/bin/python scripts/best_model.py "$@"
