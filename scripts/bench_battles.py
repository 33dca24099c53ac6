"""Battles/s, turns/s and CPU per turn: the simulator alone, the `sim` path and the `server` path.

    python scripts/bench_battles.py [--n 200] [--formats gen1ou gen9ou] \
        [--pairs random:random heuristic:maxbp policy:maxbp] [--paths ceiling sim server workers] \
        [--workers 1 2] [--worker-pairs heuristic:maxbp policy:maxbp]

All rows in one run, at the same concurrency, each after a warm-up of its format; the sim and
server rows of one pair take turns in --rounds rounds (a shared machine's changing load then
weighs on both alike):
- `ceiling`: Node alone, the simulator with the package's own random players (no Python);
- `sim`: poke-env players on the simulator host over pipes (eval/runner.py), recording each
  battle as a match does;
- `server`: the same players on the real local server over websockets (eval/match.py);
- `workers`: a `sim` match (eval/match.py) at each --workers count (1 plays in this process,
  more in worker processes, each with its own host), for --worker-pairs; then the arithmetic
  for bigger machines from the measured CPU per battle.
Every agent is built once before the first row, so no row pays Python's one-time imports
(torch) or a cold checkpoint read; each row still builds its own players.
CPU is what this process and the Node processes it runs used (not the whole machine, which
others may share), in ms per turn played. `policy` means the bundled checkpoint, sampled.
Targets (DESIGN, issue 20): sim >= 3x server battles/s for heuristic and policy vs maxbp in
gen1ou; random vs random within 2x of the ceiling's CPU per turn; policy >= 0.7x heuristic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path

import psutil
from poke_env.ps_client.server_configuration import LocalhostServerConfiguration

from agents.registry import BUNDLED_DIR, DEFAULT_BUNDLED, make_player
from battles.logs import BattleLogWriter, BattleRecord
from battles.server import ShowdownServer
from battles.sim import SimHost
from battles.teams import load_team_set
from eval.match import Match
from eval.runner import SimRunner

POLICY = f"policy:{BUNDLED_DIR / DEFAULT_BUNDLED}"


def own_cpu() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def row(path: str, fmt: str, pair: str, battles: int, turns: int, wall: float, cpu: float, errors: int = 0) -> dict:
    return {"path": path, "format": fmt, "pair": pair, "battles": battles, "turns": turns,
            "battles_per_s": round(battles / wall, 2), "turns_per_s": round(turns / wall, 1),
            "cpu_ms_per_turn": round(1000 * cpu / max(turns, 1), 2), "mean_turns": round(turns / max(battles, 1), 1),
            "errors": errors}


async def _ceiling(args, fmt: str, packed: list[str]) -> dict:
    host = await SimHost().start()
    try:
        await host.bench(fmt, args.warmup, args.concurrency, packed)  # warm-up: the format's data
        c0, t0 = host.cpu_seconds(), time.monotonic()
        res = await host.bench(fmt, args.n, args.concurrency, packed)
        return row("ceiling", fmt, "random vs random (node)", res["battles"], res["turns"],
                   time.monotonic() - t0, host.cpu_seconds() - c0)
    finally:
        await host.close()


async def _sim(args, out: Path, fmt: str, p1: str, p2: str, specs: dict[str, str], n: int, seed: int) -> tuple:
    """One round of a `sim` row: a warmed-up host, then the players as a match plays them
    (records included); (battles, turns, wall s, CPU s, errors)."""
    teams = load_team_set("competitive", fmt)
    host = await SimHost().start()
    try:
        await host.bench(fmt, max(1, args.warmup // args.rounds), args.concurrency,
                         [t.packed for t in teams.sampler(0).draw(64)])
        writer = BattleLogWriter(out / "sim", prefix=f"{fmt}-{p1}-{p2}-{seed}", battles_per_shard=10**9)
        turns = 0

        def on_record(data: dict) -> None:
            nonlocal turns
            record = BattleRecord.from_server_json(data, specs={"p1": specs[p1], "p2": specs[p2]})
            writer.add(record)
            turns += record.turns

        # Timed from the players' construction, as the server row's Match is.
        c0, p0, t0 = host.cpu_seconds(), own_cpu(), time.monotonic()
        runner = SimRunner(specs[p1], specs[p2], battle_format=fmt, on_record=on_record, host=host, seed=seed,
                           teams=(teams.sampler(1 + 2 * seed), teams.sampler(2 + 2 * seed)),
                           concurrency=args.concurrency)
        stats = await runner.play(n)
        writer.flush()
        wall = time.monotonic() - t0
        cpu = host.cpu_seconds() - c0 + own_cpu() - p0
        return stats.battles, turns, wall, cpu, stats.errors
    finally:
        await host.close()


def _server(args, out: Path, server: ShowdownServer, fmt: str, p1: str, p2: str, specs: dict[str, str], n: int,
            seed: int) -> tuple:
    """One round of a `server` row: (battles, turns, wall s, CPU s, errors)."""
    c0, p0, t0 = server.cpu_seconds(), own_cpu(), time.monotonic()
    result = Match(specs[p1], specs[p2], battle_format=fmt, team_set="competitive", n=n, seed=seed,
                   out_dir=out / f"server-{fmt}-{p1}-{p2}-{seed}", concurrency=args.concurrency, server=server,
                   progress=False).run()
    wall = time.monotonic() - t0
    cpu = server.cpu_seconds() - c0 + own_cpu() - p0
    return result.battles, sum(result.turns), wall, cpu, result.errors


def _workers(args, out: Path, fmt: str, p1: str, p2: str, specs: dict[str, str], workers: int) -> dict:
    """A `sim` match over `workers` processes (their start-up included); CPU of this process and
    of the reaped hosts and workers."""
    def children() -> float:
        t = psutil.Process().cpu_times()
        return t.children_user + t.children_system

    c0, p0, t0 = children(), own_cpu(), time.monotonic()
    result = Match(specs[p1], specs[p2], battle_format=fmt, team_set="competitive", n=args.n,
                   out_dir=out / f"workers{workers}-{fmt}-{p1}-{p2}", concurrency=args.concurrency,
                   workers=workers, progress=False).run()
    wall = time.monotonic() - t0
    cpu = children() - c0 + own_cpu() - p0
    return row(f"sim x{workers}", fmt, f"{p1} vs {p2}", result.battles, sum(result.turns), wall, cpu,
               result.errors)


def _warm(fmt: str, specs: list[str]) -> None:
    """Build each agent once: later rows then pay no one-time import or cold checkpoint read."""
    for spec in specs:
        make_player(spec, battle_format=fmt, server_configuration=LocalhostServerConfiguration,
                    start_listening=False)


def bench(args, out: Path, specs: dict[str, str]) -> list[dict]:
    """Every row; the paths of one pair run back to back, so the machine's other load hits both alike."""
    rows = []

    def add(r: dict) -> None:
        rows.append(r)
        print(fmt_row(r), flush=True)

    with ShowdownServer() as server:
        for fmt in args.formats:
            _warm(fmt, sorted({specs[p] for pair in args.pairs + args.worker_pairs for p in pair.split(":")}))
            packed = [t.packed for t in load_team_set("competitive", fmt).sampler(0).draw(64)]
            if "ceiling" in args.paths:
                add(asyncio.run(_ceiling(args, fmt, packed)))
            if "server" in args.paths:
                Match("random", "random", battle_format=fmt, team_set="competitive", n=args.warmup,
                      out_dir=out / "warm", concurrency=args.concurrency, server=server, progress=False).run()
            for pair in args.pairs:
                p1, p2 = pair.split(":")
                # The paths take turns, a round each, so the machine's changing load weighs on both alike.
                totals = {path: [0, 0, 0.0, 0.0, 0] for path in ("sim", "server") if path in args.paths}
                for r in range(args.rounds):
                    n = args.n // args.rounds + (r < args.n % args.rounds)
                    for path, total in totals.items():
                        got = asyncio.run(_sim(args, out, fmt, p1, p2, specs, n, r)) if path == "sim" else \
                            _server(args, out, server, fmt, p1, p2, specs, n, r)
                        total[:] = [a + b for a, b in zip(total, got)]
                for path, (battles, turns, wall, cpu, errors) in totals.items():
                    add(row(path, fmt, f"{p1} vs {p2}", battles, turns, wall, cpu, errors))
                if "workers" in args.paths and pair in args.worker_pairs:
                    for workers in args.workers:
                        add(_workers(args, out, fmt, p1, p2, specs, workers))
    return rows


def fmt_row(r: dict) -> str:
    return (f"{r['path']:8} {r['format']:7} {r['pair']:24} {r['battles']:>6} {r['battles_per_s']:>8} "
            f"{r['turns_per_s']:>9} {r['cpu_ms_per_turn']:>9} {r['mean_turns']:>6} {r['errors']:>4}")


def ratios(rows: list[dict]) -> list[str]:
    """The issue's targets as measured ratios."""
    get = {(r["path"], r["format"], r["pair"]): r for r in rows}
    lines = []
    for fmt in sorted({r["format"] for r in rows}):
        for pair in ("heuristic vs maxbp", "policy vs maxbp", "random vs random"):
            s, v = get.get(("sim", fmt, pair)), get.get(("server", fmt, pair))
            if s and v:
                lines.append(f"{fmt} {pair}: sim/server battles/s {s['battles_per_s'] / v['battles_per_s']:.2f}x, "
                             f"turns/s {s['turns_per_s'] / v['turns_per_s']:.2f}x, "
                             f"CPU per turn {v['cpu_ms_per_turn'] / s['cpu_ms_per_turn']:.2f}x less")
        c, s = get.get(("ceiling", fmt, "random vs random (node)")), get.get(("sim", fmt, "random vs random"))
        if c and s:
            lines.append(f"{fmt} random vs random: sim CPU per turn {s['cpu_ms_per_turn'] / c['cpu_ms_per_turn']:.2f}x "
                         f"the ceiling's (target <= 2)")
        h, p = get.get(("sim", fmt, "heuristic vs maxbp")), get.get(("sim", fmt, "policy vs maxbp"))
        if h and p:
            lines.append(f"{fmt} sim: policy/heuristic battles/s {p['battles_per_s'] / h['battles_per_s']:.2f} "
                         f"(target >= 0.7), turns/s {p['turns_per_s'] / h['turns_per_s']:.2f}")
    return lines


def scale_out(rows: list[dict], cores: tuple[int, ...] = (16, 64)) -> list[str]:
    """Workers: measured battles/s at each count, and what N cores would give from the measured
    CPU (Python + Node) per battle: one worker per core, each busy all the time, nothing shared.
    The `sim` row gives the steady state; a `sim xK` row includes its processes' start-up."""
    lines = []
    for r in rows:
        if r["path"] != "sim" and not r["path"].startswith("sim x"):
            continue
        if r["path"] == "sim" and not any(w["path"].startswith("sim x") and w["format"] == r["format"]
                                          and w["pair"] == r["pair"] for w in rows):
            continue
        cpu_battle = r["cpu_ms_per_turn"] * r["mean_turns"]  # ms
        guess = ", ".join(f"{n} cores ~{n * 1000 / cpu_battle:.0f}" for n in cores)
        lines.append(f"{r['format']} {r['pair']} {r['path']:6}: {r['battles_per_s']} battles/s measured, "
                     f"{cpu_battle:.0f} CPU ms per battle -> battles/s at {guess}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="battles per row")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--formats", nargs="+", default=["gen1ou", "gen9ou"])
    parser.add_argument("--pairs", nargs="+", default=["random:random", "heuristic:maxbp", "policy:maxbp"])
    parser.add_argument("--paths", nargs="+", default=["ceiling", "sim", "server", "workers"],
                        choices=["ceiling", "sim", "server", "workers"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="process counts for `workers`")
    parser.add_argument("--worker-pairs", nargs="+", default=["heuristic:maxbp", "policy:maxbp"],
                        help="the pairs (of --pairs) that the `workers` path plays")
    parser.add_argument("--warmup", type=int, default=60, help="battles of Node's own players before a row")
    parser.add_argument("--rounds", type=int, default=4, help="sim and server rows alternate in this many rounds")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("poke_env").setLevel(logging.CRITICAL)
    specs = {"random": "random", "heuristic": "heuristic", "maxbp": "maxbp", "policy": POLICY}

    out = Path(tempfile.mkdtemp(prefix="qabra-bench-"))
    print(f"{'path':8} {'format':7} {'pair':24} {'battles':>6} {'b/s':>8} {'turns/s':>9} {'cpu ms/t':>9} "
          f"{'turns':>6} {'err':>4}", flush=True)
    rows = bench(args, out, specs)
    for line in ratios(rows) + scale_out(rows):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
