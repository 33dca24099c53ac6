#!/usr/bin/env bash
# Does iterating stage 2 help? The chain of coach rounds against two controls with matched budgets
# (all rounds' data pooled and trained once; round 1's data only for the chain's total steps), one
# tournament of all of them with the first student, the coach and references, a table and a plot.
#   scripts/ablate_iteration.sh [--config curriculum/configs/stage2_ablate.yaml] [key=value ...]
#   scripts/ablate_iteration.sh chain.student=runs/stage1 chain.coach=runs/coach/final chain.rounds=3 out=runs/ablate_iter
# Running the same command again resumes (finished rounds, controls and battles are kept).
# Results: OUT/report/iteration.md (table, budgets, findings), ratings.png; OUT/tournament/report/.
exec "$(dirname "$0")/run_recipe.sh" curriculum.ablate_iteration curriculum/configs/stage2_ablate.yaml "$@"
