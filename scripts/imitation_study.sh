#!/usr/bin/env bash
# The imitation scaling study: the teacher's games (shared by every point), then for each
# (teacher, preset, decisions) an imitation run on the teacher's decisions only, judged by
# held-out agreement, value calibration and win rates. Writes RUN/study.md and RUN/study.png.
# Running it again resumes: finished points are kept, a stopped one continues.
#   scripts/imitation_study.sh [--config F.yaml] [key=value ...]
#   scripts/imitation_study.sh decisions=[10000,100000,1000000] presets=[tiny,small] teachers=[tactician]
set -euo pipefail
cd "$(dirname "$0")/.."
./setup_env.sh >/dev/null
exec .venv/bin/python -m curriculum.study_imitation "$@"
