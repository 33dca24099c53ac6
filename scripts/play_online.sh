#!/usr/bin/env bash
# Put an agent on a Showdown server (the public one unless --server says otherwise):
#   scripts/play_online.sh ladder --agent bundled --format gen1ou -n 20
#   scripts/play_online.sh challenge --agent tactician --opponent SOMEONE -n 3
#   scripts/play_online.sh accept --agent search:ms=1000 --minutes 60
# The account: QABRA_SHOWDOWN_USER and QABRA_SHOWDOWN_PASSWORD, or --credentials FILE
# (username:/password: lines, chmod 600). Every battle is recorded in the run folder
# (runs/online/... unless --out): build it with `python -m battles.build --logs RUN/battles`.
# Ctrl-C stops cleanly (battles in progress finish, or are forfeited with --on-stop forfeit).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./setup_env.sh
if [ $# -lt 1 ]; then
  echo "usage: $0 ladder|challenge|accept [--agent SPEC] [--server URL] [-n N] [--opponent NAME] ..." >&2
  echo "       ($0 ladder --help for every option)" >&2
  exit 2
fi
exec .venv/bin/python -m eval.online "$@"
