#!/usr/bin/env bash
# The main job on a fresh CPU machine: set up, play heuristic battles in gen1ou on the local
# server, build trajectories from them and the bundled human replays, pretrain the tiny
# policy, then play it against random, maxbp and our best heuristic.
# Writes runs/quickstart/summary.json. Running it again resumes where it stopped.
#   scripts/quickstart.sh [--battles 400] [--steps 1500] [--eval-n 100] [--preset tiny]   (or battles=400 ...)
set -euo pipefail
cd "$(dirname "$0")/.."
./setup_env.sh >/dev/null
exec .venv/bin/python scripts/quickstart.py "$@"
