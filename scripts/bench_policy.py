"""Policy speed on CPU: training throughput, per-decision latency, and battles/s in real play.

    python scripts/bench_policy.py [--checkpoint runs/quickstart/pretrain/final] [--battles 200]

1. Training decisions/s for the tiny and small presets (window 64, batch 16, AdamW).
2. Milliseconds per decision (p50, p99) for `small` with the key/value cache versus
   re-computing the whole battle at every decision, over 100-decision battles.
3. Battles/s of `policy` vs `maxbp` as a ratio to `heuristic` vs `maxbp`, measured side by
   side on the same server in gen1ou.
Targets: p99 under 15 ms per decision for small; the policy's battles/s at least 0.7 of
the heuristic's. Also printed: the same ratio per turn played, since a policy whose
battles run longer plays more decisions per battle; and in each row Python's CPU per battle
(the players share one event loop) and the whole machine's CPU per battle and per turn
(Python, the server and its simulator processes), with the share of the cores kept busy.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from battles.encode import ObservationEncoder
from battles.server import ShowdownServer
from curriculum.imitation import PretrainConfig, imitation_loss
from eval.match import Match
from models.checkpoint import save_checkpoint
from models.policy import PolicyConfig, PolicyTransformer

ENC = ObservationEncoder()


def model_of(preset: str) -> PolicyTransformer:
    torch.manual_seed(0)
    return PolicyTransformer(PolicyConfig.preset(preset, vocab_size=ENC.vocab.size, n_tokens=ENC.n_tokens,
                                                 n_numbers=ENC.n_numbers,
                                                 n_action_features=ENC.n_action_features))


def fake_batch(b: int, t: int, g: torch.Generator) -> dict:
    legal = torch.rand(b, t, 13, generator=g) < 0.5
    legal[..., 0] = True
    return {"tokens": torch.randint(1, ENC.vocab.size, (b, t, ENC.n_tokens), generator=g),
            "numbers": torch.rand(b, t, ENC.n_numbers, generator=g), "legal": legal,
            "action": torch.zeros(b, t, dtype=torch.long), "mask": torch.ones(b, t, dtype=torch.bool),
            "loss_mask": torch.ones(b, t, dtype=torch.bool), "outcome": torch.ones(b)}


def train_throughput(preset: str, steps: int = 8) -> float:
    model = model_of(preset).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = imitation_loss(PretrainConfig())
    g = torch.Generator().manual_seed(0)
    batches = [fake_batch(16, 64, g) for _ in range(steps + 2)]
    for b in batches[:2]:  # warm-up
        loss_fn(model, b)[0].backward()
        opt.step()
        opt.zero_grad()
    t0 = time.perf_counter()
    for b in batches[2:]:
        loss_fn(model, b)[0].backward()
        opt.step()
        opt.zero_grad()
    return steps * 16 * 64 / (time.perf_counter() - t0)


@torch.inference_mode()
def latency(preset: str, battles: int = 3, length: int = 100) -> dict:
    model = model_of(preset).eval()
    g = torch.Generator().manual_seed(1)
    cached, full = [], []
    for _ in range(battles):
        seq = fake_batch(1, length, g)
        cache = model.init_cache()
        for t in range(length):
            t0 = time.perf_counter()
            model.step_batch(seq["tokens"][:, t], seq["numbers"][:, t], seq["legal"][:, t], [cache])
            cached.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            model(seq["tokens"][:, : t + 1], seq["numbers"][:, : t + 1], seq["legal"][:, : t + 1])
            full.append(time.perf_counter() - t0)
    ms = lambda xs, q: round(1000 * float(np.percentile(xs, q)), 2)  # noqa: E731
    return {"cached_p50_ms": ms(cached, 50), "cached_p99_ms": ms(cached, 99),
            "recompute_p50_ms": ms(full, 50), "recompute_p99_ms": ms(full, 99)}


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine so far, over all cores."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0), idle


def battles_ratio(checkpoint: str, n: int) -> dict:
    out = tempfile.mkdtemp(prefix="qabra-bench-policy-")
    rows = {}
    with ShowdownServer() as server:
        Match("random", "random", battle_format="gen1ou", team_set="competitive", n=60, out_dir=out,
              concurrency=16, server=server, progress=False).run()  # warm the server up
        for name, spec in (("heuristic", "heuristic"), ("policy", f"policy:{checkpoint}"),
                           ("heuristic_again", "heuristic")):
            t0, cpu0, machine0 = time.monotonic(), time.process_time(), machine_cpu()
            result = Match(spec, "maxbp", battle_format="gen1ou", team_set="competitive", n=n, out_dir=out,
                           concurrency=16, server=server, progress=False).run()
            wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
            busy, idle = (after - before for after, before in zip(machine_cpu(), machine0))
            turns = result.summary()["mean_turns"]
            # Python's CPU (both players, every thread) per battle: where a slower agent costs.
            # The machine's (every process: Python, the server, its simulator processes) per
            # battle and per turn, and how busy the machine was: the cores are the limit.
            rows[name] = {"battles_per_s": round(result.battles / wall, 2), "mean_turns": turns,
                          "python_cpu_ms_per_battle": round(1000 * cpu / result.battles, 1),
                          "machine_cpu_ms_per_battle": round(1000 * busy / result.battles, 1),
                          "machine_cpu_ms_per_turn": round(1000 * busy / result.battles / turns, 2),
                          "machine_busy_share": round(busy / (busy + idle), 2),
                          "winrate_vs_maxbp": result.summary()["p1_winrate"]}
    heuristic = (rows["heuristic"]["battles_per_s"] + rows["heuristic_again"]["battles_per_s"]) / 2
    rows["ratio_policy_to_heuristic"] = round(rows["policy"]["battles_per_s"] / heuristic, 3)
    # Battles of different lengths cost different work: the same ratio per turn played.
    turns = {k: rows[k]["battles_per_s"] * rows[k]["mean_turns"] for k in ("heuristic", "policy", "heuristic_again")}
    rows["turns_ratio_policy_to_heuristic"] = round(
        turns["policy"] / ((turns["heuristic"] + turns["heuristic_again"]) / 2), 3)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="runs/quickstart/pretrain/final",
                        help="policy for the battles/s row (a random-init small model if missing)")
    parser.add_argument("--battles", type=int, default=200, help="battles per battles/s row")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the training rows")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("poke_env").setLevel(logging.CRITICAL)
    report: dict = {}
    torch.set_num_threads(args.threads)
    for preset in ("tiny", "small"):
        report[f"train_decisions_per_s_{preset}"] = round(train_throughput(preset))
        print(f"training {preset:5}: {report[f'train_decisions_per_s_{preset}']} decisions/s", flush=True)
    torch.set_num_threads(1)  # the player's setting
    report["latency_small"] = latency("small")
    print("latency small (1 thread):", report["latency_small"], flush=True)
    checkpoint = args.checkpoint
    if not Path(checkpoint, "model.safetensors").exists():
        checkpoint = str(Path(tempfile.mkdtemp()) / "small-random")
        save_checkpoint(checkpoint, model_of("small"), encoder_version=ENC.version, vocab_hash=ENC.vocab.hash)
        print(f"no trained checkpoint at {args.checkpoint}; using a random-init small model")
    report["checkpoint"] = checkpoint
    report["battles"] = battles_ratio(checkpoint, args.battles)
    print("battles/s:", json.dumps(report["battles"]), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
