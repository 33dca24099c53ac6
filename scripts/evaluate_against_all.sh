#!/usr/bin/env bash
# Evaluate-against-all: a round-robin tournament of every agent in CONFIG, with a report.
#   scripts/evaluate_against_all.sh CONFIG [key=value ...] [--workers K]   (sim backend, the default)
#   scripts/evaluate_against_all.sh CONFIG backend=server [--servers K]     (the real local server)
#   scripts/evaluate_against_all.sh eval/configs/default.yaml agents.stage1=policy:runs/stage1/final
#   scripts/evaluate_against_all.sh eval/configs/default.yaml formats=[gen1ou] battles_per_pair=80
# Running the same command again resumes: finished battles are not played twice, and an
# added agent plays only its new pairs. Prints the ranking and where the report files are.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./setup_env.sh
if [ $# -lt 1 ]; then
  echo "usage: $0 CONFIG [key=value ...] [--workers K | backend=server --servers K]   (configs: eval/configs/*.yaml)" >&2
  exit 2
fi
exec .venv/bin/python -m eval.tournament "$@"
