#!/usr/bin/env bash
# Curriculum stage 1: the parent plays a pool of opponents, is fine-tuned on its own play, and the
# child is promoted only if a tournament rates it above the parent. Arguments go to curriculum.stage1_play:
#   scripts/curriculum_stage1.sh [--config curriculum/configs/stage1.yaml] [key=value ...]
#   scripts/curriculum_stage1.sh parent=runs/quickstart/pretrain/final battles=2000 run_dir=runs/stage1
# Running the same command again resumes where it stopped. Then:
#   .venv/bin/python -m curriculum.lineage runs/stage1
exec "$(dirname "$0")/run_recipe.sh" curriculum.stage1_play curriculum/configs/stage1.yaml "$@"
