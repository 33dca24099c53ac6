"""Battles per second on the local server, by agent pair, format and concurrency.

    python scripts/bench_battles.py [--n 100] [--concurrency 1 4 16] [--formats gen1ou gen9ou]

One server, warmed up first (the first ~100 battles after a start are slower). For each
row: battles/s, and CPU seconds split between the Node server (all its processes) and
this Python process (the poke-env players). The target on a 2-core machine is at least
15 battles/s in gen1ou at concurrency 16.
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


def python_cpu() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="battles per row (concurrency 1 plays n/4)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--formats", nargs="+", default=["gen1ou", "gen9ou"])
    parser.add_argument("--pairs", nargs="+", default=["random:maxbp", "heuristic:maxbp"])
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("poke_env").setLevel(logging.CRITICAL)

    rows = []
    out = tempfile.mkdtemp(prefix="qabra-bench-")
    with ShowdownServer() as server:
        print(f"{'format':8} {'pair':18} {'conc':>4} {'battles':>7} {'b/s':>7} {'node cpu s':>10} {'python cpu s':>12} {'node share':>10}")
        for fmt in args.formats:
            # Warm-up per format: the simulator loads a format's data on first use.
            Match("random", "random", battle_format=fmt, team_set="competitive", n=args.warmup,
                  out_dir=out, concurrency=16, server=server, progress=False).run()
            for pair in args.pairs:
                p1, p2 = pair.split(":")
                for conc in args.concurrency:
                    n = max(10, args.n // 4) if conc == 1 else args.n
                    node0, py0, t0 = server.cpu_seconds(), python_cpu(), time.monotonic()
                    result = Match(p1, p2, battle_format=fmt, team_set="competitive", n=n, out_dir=out,
                                   concurrency=conc, server=server, progress=False).run()
                    wall = time.monotonic() - t0
                    node, py = server.cpu_seconds() - node0, python_cpu() - py0
                    row = {"format": fmt, "pair": f"{p1} vs {p2}", "concurrency": conc, "battles": result.battles,
                           "battles_per_s": round(result.battles / wall, 2), "node_cpu_s": round(node, 1),
                           "python_cpu_s": round(py, 1), "node_share": round(node / max(node + py, 1e-9), 2),
                           "errors": result.errors}
                    rows.append(row)
                    print(f"{fmt:8} {row['pair']:18} {conc:>4} {result.battles:>7} {row['battles_per_s']:>7} "
                          f"{row['node_cpu_s']:>10} {row['python_cpu_s']:>12} {row['node_share']:>10}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    target = [r for r in rows if r["format"] == "gen1ou" and r["concurrency"] == 16]
    if target:
        best = max(r["battles_per_s"] for r in target)
        print(f"gen1ou at concurrency 16: {best} battles/s (target >= 15)")


if __name__ == "__main__":
    main()
