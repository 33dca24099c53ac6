"""Benchmark the search bot's simulator worker: transitions per second, iterations per decision.

    python scripts/bench_search.py [--format gen1ou] [--positions 3] [--seconds 2]

No server is needed: positions are built from pairs of teams of the competitive set, played
forward a few turns with random choices. For each position, one worker measures
  - cloning (restoring the root battle from its serialised state) and stepping (one turn of
    both sides' choices) separately, and the fresh State.deserializeBattle for comparison;
  - a real search at 100 ms and 1 s budgets: iterations, and how its time splits between
    building the sampled battle, cloning, stepping and evaluating leaves.
Ends with one JSON line of the averages.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.search_workers import SimWorker  # noqa: E402
from battles.teams import load_team_set  # noqa: E402


def position(teams, k: int, advance: int) -> tuple[dict, int]:
    """A start position between two teams of the set, and how many random turns to play first."""
    a, b = teams.teams[k % len(teams)], teams.teams[(k * 3 + 1) % len(teams)]
    full = [{"hp_frac": 1.0}] * 6
    spec = {"format": teams.format, "seed": 11 + k,
            "sides": [{"team": a.packed, "mons": full}, {"team": b.packed, "mons": full}]}
    return spec, advance


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", default="gen1ou")
    parser.add_argument("--team-set", default="competitive")
    parser.add_argument("--positions", type=int, default=3, help="positions to measure")
    parser.add_argument("--seconds", type=float, default=2.0, help="clone/step timing per position")
    parser.add_argument("--advance", type=int, default=4, help="random turns played before measuring")
    args = parser.parse_args(argv)
    teams = load_team_set(args.team_set, args.format)
    worker = SimWorker().start()
    rows = []
    try:
        worker.call({"cmd": "warm", "format": args.format}, timeout=60)
        for k in range(args.positions):
            spec, advance = position(teams, k, args.advance)
            ms = int(args.seconds * 1000)
            reuse = worker.call({"cmd": "bench", "spec": spec, "ms": ms, "advance": advance}, timeout=60 + ms / 500)
            fresh = worker.call({"cmd": "bench", "spec": spec, "ms": ms // 2, "advance": advance, "fresh": True},
                                timeout=60 + ms / 500)
            row = {
                "position": k, "turn": reuse["turn"], "restore_exact": reuse["restore_exact"],
                "clone_ms": reuse["clone_ms"] / reuse["clones"],
                "fresh_clone_ms": fresh["clone_ms"] / fresh["clones"],
                "step_ms": reuse["step_ms"] / reuse["steps"],
                "transitions_per_s": reuse["steps"] / ((reuse["clone_ms"] + reuse["step_ms"]) / 1000),
                "steps_only_per_s": reuse["steps"] / (reuse["step_ms"] / 1000),
            }
            for budget in (100, 1000):
                a = worker.call({"cmd": "search", "spec": spec, "ms": budget, "us": "p1", "root": []},
                                timeout=60 + budget / 100)
                t = a["timing"]
                row[f"iterations_{budget}ms"] = a["iterations"]
                row[f"split_{budget}ms"] = {key: round(t[key] / t["total_ms"], 3)
                                            for key in ("build_ms", "clone_ms", "step_ms", "eval_ms")}
            rows.append(row)
            print(f"position {k} (turn {row['turn']}): clone {row['clone_ms']:.3f} ms "
                  f"(fresh deserialize {row['fresh_clone_ms']:.3f} ms), step {row['step_ms']:.3f} ms, "
                  f"{row['transitions_per_s']:.0f} transitions/s with cloning "
                  f"({row['steps_only_per_s']:.0f} stepping only); iterations: "
                  f"{row['iterations_100ms']} at 100 ms, {row['iterations_1000ms']} at 1 s; "
                  f"1 s split {row['split_1000ms']}; restore exact: {row['restore_exact']}", flush=True)
    finally:
        worker.close()
    mean = {key: round(statistics.mean(r[key] for r in rows), 3)
            for key in ("clone_ms", "fresh_clone_ms", "step_ms", "transitions_per_s", "steps_only_per_s",
                        "iterations_100ms", "iterations_1000ms")}
    mean["split_1000ms"] = {key: round(statistics.mean(r["split_1000ms"][key] for r in rows), 3)
                            for key in rows[0]["split_1000ms"]}
    mean.update(format=args.format, positions=len(rows), all_restores_exact=all(r["restore_exact"] for r in rows))
    print(json.dumps(mean), flush=True)


if __name__ == "__main__":
    main()
