#!/usr/bin/env bash
# Set up Qabra on this machine: a Python venv with the pinned dependencies, and a
# project-local Pokémon Showdown server. Idempotent: a second run only checks.
#
#   ./setup_env.sh            # everything
#   PYTHON=python3.12 ./setup_env.sh
#
# CUDA: install a CUDA build of torch 2.13.0 into .venv first (see README), then run this.
set -euo pipefail
cd "$(dirname "$0")"

SHOWDOWN_VERSION=0.11.11          # npm package pokemon-showdown, pinned
SHOWDOWN_PREFIX=.showdown
PS_DIR="$SHOWDOWN_PREFIX/node_modules/pokemon-showdown"
PYTHON=${PYTHON:-python3}

die() { echo "setup_env.sh: $*" >&2; exit 1; }

# --- prerequisites -----------------------------------------------------------
command -v "$PYTHON" >/dev/null || die "no '$PYTHON' found. Install Python 3.10 or newer (or set PYTHON=/path/to/python3)."
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || die "$("$PYTHON" --version 2>&1) is too old. Install Python 3.10 or newer and set PYTHON=/path/to/it."
command -v node >/dev/null || die "Node.js is missing. Install Node.js 18 or newer (https://nodejs.org or your package manager), then run again."
command -v npm >/dev/null || die "npm is missing. Install npm (it ships with Node.js), then run again."
node -e 'process.exit(parseInt(process.versions.node) >= 18 ? 0 : 1)' \
  || die "Node.js $(node --version) is too old. Install Node.js 18 or newer."

# --- Python ------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.qabra-deps"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing Python dependencies (pinned in pyproject.toml)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
else
  echo "[setup] Python dependencies up to date"
fi

# --- Pokémon Showdown ----------------------------------------------------------
have="$(node -p "try{require('./$PS_DIR/package.json').version}catch(e){''}" 2>/dev/null || true)"
if [ "$have" != "$SHOWDOWN_VERSION" ]; then
  echo "[setup] installing pokemon-showdown@$SHOWDOWN_VERSION into $SHOWDOWN_PREFIX/"
  mkdir -p "$SHOWDOWN_PREFIX"
  npm install --prefix "$SHOWDOWN_PREFIX" --omit=optional --no-audit --no-fund --loglevel=error \
    "pokemon-showdown@$SHOWDOWN_VERSION"
else
  echo "[setup] pokemon-showdown@$SHOWDOWN_VERSION present"
fi
# What the first start needs: the repl folder, and our config (loopback only, records battles).
mkdir -p "$PS_DIR/logs/repl"
cp battles/showdown_config.js "$PS_DIR/config/config.js"
if [ ! -f "$PS_DIR/dist/server/index.js" ]; then
  echo "[setup] building pokemon-showdown"
  (cd "$PS_DIR" && node build >/dev/null)
fi
echo "[setup] done. Activate with: source .venv/bin/activate"
