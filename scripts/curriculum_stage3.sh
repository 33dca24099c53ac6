#!/usr/bin/env bash
# Curriculum stage 3: learn from a search bot. The student plays the search bot and a pool while
# a searcher labels every position it faces; the bot records its own visit shares as expert
# games; the student learns from both (and its own wins), and stage 1's tournament promotes.
# Arguments go to curriculum.stage3_search:
#   scripts/curriculum_stage3.sh [--config curriculum/configs/stage3.yaml] [key=value ...]
#   scripts/curriculum_stage3.sh parent=runs/stage2 run_dir=runs/stage3 search=search:ms=1000
# Running the same command again resumes where it stopped. Then:
#   .venv/bin/python -m curriculum.lineage runs/stage3
exec "$(dirname "$0")/run_recipe.sh" curriculum.stage3_search curriculum/configs/stage3.yaml "$@"
