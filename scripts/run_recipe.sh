#!/usr/bin/env bash
# What every recipe script does: set up once, then run the recipe's module with its default
# config unless the arguments start with --config. The stage scripts call it:
#   scripts/run_recipe.sh MODULE DEFAULT_CONFIG [--config FILE.yaml] [key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./setup_env.sh
module="$1" config="$2"
shift 2
args=("$@")
[ "${1:-}" = "--config" ] || args=(--config "$config" "$@")
exec .venv/bin/python -m "$module" "${args[@]}"
