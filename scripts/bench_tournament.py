"""Tournament throughput: battles/s on one server versus two, same roster and battles.

    python scripts/bench_tournament.py [--battles-per-pair 24] [--format gen1ou] [--concurrency 16]

Starts two servers and warms both up (the first battles after a start are slow), then
plays the same tournament twice into fresh folders: on server 0 alone, then on servers 0
and 1 together (`concurrency` battles in flight per server, as `--servers K` does). Prints
both rates, the CPU seconds of the Node servers and of this Python process, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time

import psutil

from battles.server import ShowdownServer
from eval.match import Match
from eval.tournament import Tournament, load_tournament_config

ROSTER = ["random", "maxbp", "heuristic", "bestdamage", "tactician"]


def node_cpu(servers) -> float:
    """CPU seconds used so far by the servers and their children."""
    return sum(server.cpu_seconds() for server in servers)


def python_cpu() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--battles-per-pair", type=int, default=24, help="a multiple of 4")
    parser.add_argument("--format", default="gen1ou")
    parser.add_argument("--concurrency", type=int, default=16, help="battles in flight per server")
    parser.add_argument("--agents", nargs="+", default=ROSTER)
    parser.add_argument("--warmup", type=int, default=60, help="battles per server before timing")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("poke_env").setLevel(logging.CRITICAL)

    tmp = tempfile.mkdtemp(prefix="qabra-bench-tournament-")
    servers = [ShowdownServer(), ShowdownServer()]
    rows = []
    try:
        for server in servers:
            server.start()
            Match("random", "random", battle_format=args.format, team_set="competitive", n=args.warmup,
                  out_dir=f"{tmp}/warmup", concurrency=16, server=server, progress=False).run()
        for k in (1, 2):
            cfg = load_tournament_config(None, [f"agents.{a}={a}" for a in args.agents] + [
                f"out={tmp}/servers{k}", f"formats=[{args.format}]", f"battles_per_pair={args.battles_per_pair}",
                f"concurrency={args.concurrency}", f"servers={k}", "bootstrap=0", "backend=server"])
            node0, py0 = node_cpu(servers), python_cpu()
            start = time.monotonic()
            summary = Tournament(cfg, servers=servers[:k], progress=False).run()
            wall = time.monotonic() - start
            row = {"servers": k, "battles": summary.played, "errors": summary.errors, "faults": summary.faults,
                   "seconds": round(wall, 2), "battles_per_s": round(summary.played / wall, 2),
                   "node_cpu_s": round(node_cpu(servers) - node0, 1), "python_cpu_s": round(python_cpu() - py0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        for server in servers:
            server.stop()
    ratio = rows[1]["battles_per_s"] / rows[0]["battles_per_s"]
    print(f"{args.format}, {len(args.agents)} agents, {rows[0]['battles']} battles: "
          f"1 server {rows[0]['battles_per_s']} battles/s, 2 servers {rows[1]['battles_per_s']} battles/s, "
          f"ratio {ratio:.2f} (on {psutil.cpu_count()} CPU cores)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "ratio": round(ratio, 3)}, f, indent=1)


if __name__ == "__main__":
    main()
