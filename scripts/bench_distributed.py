"""Data-parallel scaling on CPU: pretraining decisions/s with 1 and with 2 processes.

    python scripts/bench_distributed.py [--steps 40] [--global-batch 16] [--preset tiny]

Both runs use torchrun and the real pretraining recipe on the same synthetic trajectory
shards, with the same global batch (2 processes take half of it each). One process runs
with all the threads and with half of them; each of the 2 processes gets half. Throughput is the median of the
trainer's own decisions/s windows after the first (warm-up). Prints both and their ratio.
On a 2-core machine the ratio mostly shows the cost of gloo's all-reduce against running
the same cores as one process; on GPUs the same recipe scales with the number of cards.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from battles.encode import ObservationEncoder
from battles.trajectories import ShardWriter, Trajectory

REPO = Path(__file__).resolve().parents[1]


def write_shards(folder: Path, battles: int, seed: int = 0) -> Path:
    """Random trajectories with the real encoder's sizes (no server needed)."""
    enc = ObservationEncoder()
    rng = np.random.default_rng(seed)
    with ShardWriter(folder, "bench", rows_per_shard=64, row_group_size=8) as writer:
        for i in range(battles):
            t = int(rng.integers(20, 80))
            legal = rng.random((t, 13)) < 0.5
            legal[:, 0] = True
            writer.write(Trajectory(
                battle_id=f"bench-{i}", player="p1", format="gen1ou", source="selfplay",
                outcome=int(rng.choice([-1, 1])), encoder_version=enc.version,
                vocab_hash=enc.vocab.hash,
                tokens=rng.integers(1, enc.vocab.size, (t, enc.n_tokens), dtype=np.int32),
                numbers=rng.standard_normal((t, enc.n_numbers)).astype(np.float32),
                action=np.where(legal[:, 1], 1, 0).astype(np.int16), legal=legal,
            ))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int, data: Path, run_dir: Path, args, threads: int) -> float:
    """Decisions/s of one pretraining run with `processes` ranks (median after warm-up)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(free_port()), "-m", "curriculum.stage0_pretrain",
               f"data=[{data}]", f"run_dir={run_dir}", f"preset={args.preset}", "window=64",
               "mix=selfplay:1", "val_fraction=0.0",
               f"trainer.max_steps={args.steps}", f"trainer.batch_size={args.global_batch // processes}",
               "trainer.warmup_steps=2", f"trainer.checkpoint_every={args.steps}",
               f"trainer.eval_every={args.steps}", f"trainer.log_every={args.log_every}",
               "trainer.wandb_mode=disabled"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: the {processes}-process run failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["decisions_per_s"] for r in rows if "decisions_per_s" in r][1:]
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--global-batch", type=int, default=16, help="windows per step, all ranks")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads in all")
    args = parser.parse_args(argv)
    if args.global_batch % 2:
        raise SystemExit("error: --global-batch must be even (2 processes take half each)")
    half = max(1, args.threads // 2)
    # One process gets both thread counts: on a busy machine its threads can contend so badly
    # that fewer of them are faster; the ratio is taken against the better of the two.
    plan = [(1, args.threads), (1, half), (2, half)] if half != args.threads else [(1, half), (2, half)]
    with tempfile.TemporaryDirectory() as tmp:
        data = write_shards(Path(tmp) / "shards", battles=256)
        results = {}
        for processes, threads in plan:
            rate = run(processes, data, Path(tmp) / f"run{processes}x{threads}", args, threads)
            results[processes, threads] = rate
            print(f"{processes} process(es) x {threads} thread(s): {rate:,.0f} decisions/s", flush=True)
    one = max(v for (p, _), v in results.items() if p == 1)
    print(f"ratio 2 processes / best 1 process: {results[2, half] / one:.2f}  (preset {args.preset}, "
          f"global batch {args.global_batch} windows of 64, {args.steps} steps, {args.threads} threads)")

if __name__ == "__main__":
    main()
