"""Fit the search bot's leaf evaluation (agents/search_value.py) on recorded battles.

    python scripts/fit_search_value.py runs/tournament runs/stage1 ... [--format gen1ou]
        [--exclude random] [--out agents/search_value.json]

Reads every battle log shard under the given folders (tournaments, matches, stage runs: the
battles Qabra records), keeps finished battles of the format, and fits a logistic regression
of the winner on the features at the start of every turn. Every fifth battle is held out to
report the model's log loss against two baselines (a coin flip, and Pokémon left plus HP
alone); the weights written are then refitted on all battles. The output file keeps the
entries of other formats; it is replaced atomically. A format without its own entry is scored
with the weights of the file's `default` (the first format fitted).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.search_value import COLUMNS, WEIGHTS_FILE, fit_weights, log_loss, rows  # noqa: E402
from battles.files import write_atomic  # noqa: E402
from battles.logs import read_battle_logs  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", help="folders or shards of recorded battles")
    parser.add_argument("--format", default="gen1ou")
    parser.add_argument("--exclude", nargs="*", default=["random"],
                        help="leave out battles where a player's spec starts with one of these")
    parser.add_argument("--l2", type=float, default=1e-4)
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    args = parser.parse_args(argv)

    kept, skipped, seen, matchups = [], 0, set(), Counter()
    for rec in read_battle_logs(args.logs):
        if rec.format != args.format or rec.id in seen:
            continue
        seen.add(rec.id)
        if any(str(rec.specs.get(s, "")).startswith(tuple(args.exclude)) for s in ("p1", "p2")):
            skipped += 1
            continue
        kept.append((rec.log, rec.winner))
        kinds = sorted(re.split(r"[:,]", str(rec.specs.get(s) or "?"))[0] for s in ("p1", "p2"))
        matchups[" vs ".join(kinds)] += 1
    if not kept:
        raise SystemExit(f"no {args.format} battles in {args.logs}: point it at folders of battle log "
                         "shards (a tournament's or a match's --out folder)")
    x, y, g = rows(kept)
    if len(np.unique(y)) < 2:
        raise SystemExit(f"the {len(kept)} {args.format} battles found have one winner side only; "
                         "a fit needs both outcomes")
    held = g % 5 == 0
    w = fit_weights(x[~held], y[~held], args.l2)
    material = [COLUMNS.index(k) for k in ("alive", "hp", "alive_tot", "hp_tot")]
    w_mat = fit_weights(x[~held][:, material], y[~held], args.l2)
    report = {
        "battles": len(kept), "positions": int(len(y)), "excluded": skipped, "sources": [str(p) for p in args.logs],
        "matchups": dict(matchups.most_common(12)),
        "held_out_log_loss": {"coin": round(float(np.log(2)), 4),
                              "alive_and_hp": round(log_loss(x[held][:, material], y[held], w_mat), 4),
                              "all_features": round(log_loss(x[held], y[held], w), 4)},
    }
    weights = fit_weights(x, y, args.l2)
    table = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {"formats": {}}
    table["formats"][args.format] = {"weights": {k: round(float(v), 4) for k, v in zip(COLUMNS, weights, strict=True)},
                                     "fit": report}
    table.setdefault("default", args.format)  # what formats without a fit of their own use
    write_atomic(args.out, json.dumps(table, indent=1) + "\n")
    print(json.dumps({"format": args.format, **table["formats"][args.format]}))
    return table["formats"][args.format]


if __name__ == "__main__":
    main()
