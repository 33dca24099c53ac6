"""Trajectory build speed and memory: inputs/s per worker, peak memory for 10,000 logs.

    python scripts/bench_build.py [--seed-battles 100] [--logs 10000] [--workers 1 2]

Plays a few real battles per format (gen1ou, gen9ou) on a local server, writes them out as
replay JSON files (spectator logs, the form of public human replays) cycled to `--logs`
files with distinct ids, then times `python -m battles.build` on them in a fresh process
per row and reads that process tree's peak resident memory. Targets: at least 200 gen1ou
logs/s per worker; peak memory under 1 GB whatever the input size.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from battles.logs import read_battle_logs
from battles.server import ShowdownServer
from eval.match import Match


def seed_replays(fmt: str, n_battles: int, n_logs: int, folder: Path, server: ShowdownServer) -> int:
    """Play `n_battles` real battles and write `n_logs` replay files cycling through them."""
    battles = folder / f"{fmt}-battles"
    Match("heuristic", "tactician", battle_format=fmt, team_set="competitive", n=n_battles, out_dir=battles,
          concurrency=16, server=server, progress=False).run()
    replays = [r.replay for r in read_battle_logs(battles)]
    out = folder / fmt
    out.mkdir(parents=True)
    for i in range(n_logs):
        replay = dict(replays[i % len(replays)], id=f"{fmt}-bench-{i}")
        (out / f"{replay['id']}.json").write_text(json.dumps(replay))
    return len(replays)


def run_build(inputs: Path, workers: int) -> dict:
    """Time one build in a fresh process; peak RSS summed over the process and its workers."""
    out = Path(tempfile.mkdtemp(prefix="qabra-bench-build-out-"))
    cmd = [sys.executable, "-m", "battles.build", "--logs", str(inputs), "--out", str(out),
           "--workers", str(workers), "--quiet"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)])
            peak = max(peak, rss)
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.05)
    wall = time.monotonic() - start
    summary = json.loads(proc.stdout.read().strip().splitlines()[-1])
    return {"workers": workers, "inputs": summary["inputs"], "decisions": summary["decisions"],
            "wall_s": round(wall, 1), "inputs_per_s": summary["inputs_per_s"],
            "inputs_per_s_per_worker": round(summary["inputs_per_s"] / workers, 1),
            "peak_rss_mb": round(peak / 2**20), "skipped": summary["skipped"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed-battles", type=int, default=100)
    parser.add_argument("--logs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--formats", nargs="+", default=["gen1ou", "gen9ou"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("poke_env").setLevel(logging.CRITICAL)
    folder = Path(tempfile.mkdtemp(prefix="qabra-bench-build-"))
    with ShowdownServer() as server:
        for fmt in args.formats:
            distinct = seed_replays(fmt, args.seed_battles, args.logs, folder, server)
            print(f"{fmt}: {args.logs} replay files from {distinct} distinct real battles", flush=True)
    print(f"{'format':8} {'workers':>7} {'inputs':>7} {'wall s':>7} {'inputs/s':>9} {'per worker':>10} {'peak MB':>8}")
    rows = []
    for fmt in args.formats:
        for workers in args.workers:
            row = {"format": fmt, **run_build(folder / fmt, workers)}
            rows.append(row)
            print(f"{fmt:8} {workers:>7} {row['inputs']:>7} {row['wall_s']:>7} {row['inputs_per_s']:>9} "
                  f"{row['inputs_per_s_per_worker']:>10} {row['peak_rss_mb']:>8}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
