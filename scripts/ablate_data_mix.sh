#!/usr/bin/env bash
# Data-mix ablation: equal-budget pretraining per mix, one tournament, a table by mix and team set.
#   scripts/ablate_data_mix.sh [CONFIG.yaml] [key=value ...]   (default: curriculum/configs/ablate_gen1ou.yaml)
#   scripts/ablate_data_mix.sh curriculum/configs/ablate_smoke.yaml out=runs/ablate_smoke
#   scripts/ablate_data_mix.sh curriculum/configs/ablate_gen1ou.yaml seeds=[0,1] budget.steps=2000
# Running the same command again resumes: made data, trained members and played battles are kept.
# Results: OUT/report/ablation.md (ratings by mix and team set, budgets), ratings_by_mix.png.
if [[ "${1:-}" == *.yaml ]]; then set -- --config "$@"; fi
exec "$(dirname "$0")/run_recipe.sh" curriculum.ablate_data_mix curriculum/configs/ablate_gen1ou.yaml "$@"
