"""One agent against several opponents over several team sets, resumable, with 95% intervals.

    python scripts/evaluate_model.py policy:runs/x/final,greedy=true --opponents tactician:400 \
        maxbp:200 bestdamage:200 heuristic:200 --out runs/eval_x

Each opponent's battles (`name:N`) are split evenly over the team sets (gen1ou: competitive,
replay, variety); a rerun plays only what is missing. Writes OUT/results.json (what the model
card and the quickstart print) and prints a table.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from battles.files import write_json
from battles.server import ShowdownServer
from eval.match import play_over_team_sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("agent", help="agent spec, e.g. bundled or policy:runs/x/final,greedy=true")
    parser.add_argument("--opponents", nargs="+", default=["tactician:400", "maxbp:200", "bestdamage:200",
                                                            "heuristic:200"], help="name:battles")
    parser.add_argument("--team-sets", nargs="+", default=["competitive", "replay", "variety"])
    parser.add_argument("--format", default="gen1ou")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", required=True, help="folder for the battles and results.json")
    args = parser.parse_args()
    logging.getLogger("poke_env").setLevel(logging.CRITICAL)
    out = Path(args.out)
    rows = []
    t0 = time.monotonic()
    with ShowdownServer() as server:
        for i, item in enumerate(args.opponents):
            name, _, count = item.partition(":")
            n = int(count or 200)
            r = play_over_team_sets(args.agent, name, n, args.team_sets, out, battle_format=args.format,
                                    seed=args.seed + 100 * i, concurrency=args.concurrency, server=server)
            lo, hi = r["ci95"]
            rows.append({"opponent": name, "battles": r["battles"], "wins": r["wins"], "ties": r["ties"],
                         "winrate": round(r["winrate"], 4), "ci95": [round(lo, 4), round(hi, 4)],
                         "by_team_set": {k: round(v, 4) for k, v in r["by_team_set"].items()}})
            by_set = rows[-1]["by_team_set"]
            print(f"{name:12} {r['battles']:>5} {rows[-1]['winrate']:>7.3f}  [{lo:.3f}, {hi:.3f}]  {by_set}", flush=True)
    result = {"spec": args.agent, "format": args.format, "team_sets": args.team_sets, "results": rows,
              "seconds": round(time.monotonic() - t0)}
    write_json(out / "results.json", result)
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
