#!/usr/bin/env bash
# Data-mix ablation: equal-budget pretraining per mix, one tournament, a table by mix and team set.
#   scripts/ablate_data_mix.sh CONFIG [key=value ...]
#   scripts/ablate_data_mix.sh curriculum/configs/ablate_gen1ou.yaml
#   scripts/ablate_data_mix.sh curriculum/configs/ablate_gen1ou.yaml seeds=[0,1] budget.steps=2000
# Running the same command again resumes: made data, trained members and played battles are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./setup_env.sh
if [ $# -lt 1 ]; then
  echo "usage: $0 CONFIG [key=value ...]   (configs: curriculum/configs/ablate*.yaml)" >&2
  exit 2
fi
config="$1"
shift
exec .venv/bin/python -m curriculum.ablate --config "$config" "$@"
