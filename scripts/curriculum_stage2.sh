#!/usr/bin/env bash
# Curriculum stage 2: the student plays, the coach labels its decisions offline, the student learns
# from the labels (and its own wins), and stage 1's tournament promotes; --rounds R chains rounds,
# each in RUN/round-k. Arguments go to curriculum.stage2_coach:
#   scripts/curriculum_stage2.sh [--config curriculum/configs/stage2.yaml] [--rounds R] [key=value ...]
#   scripts/curriculum_stage2.sh student=runs/stage1 coach=runs/coach/final --rounds 2 run_dir=runs/stage2
# Running the same command again resumes where it stopped. Then:
#   .venv/bin/python -m curriculum.lineage runs/stage2
exec "$(dirname "$0")/run_recipe.sh" curriculum.stage2_coach curriculum/configs/stage2.yaml "$@"
