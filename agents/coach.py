"""The coach: any policy checkpoint that labels stored trajectories with its own action distribution.

    python -m agents.coach --coach runs/stage1/final --data runs/stage2/round-1/trajectories

Labelling runs offline in batches over the trajectory store: no battle is replayed. For
every decision the coach's distribution over the legal actions (softmax of its masked
logits at a temperature) is written as the trajectory's teacher probabilities, and
`teacher_source` records which coach made them. Shards are rewritten atomically; shards
this coach already labelled are skipped, so a killed labelling run resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from battles.encode import ObservationEncoder
from battles.trajectories import Trajectory, list_shards, read_trajectories, update_teacher
from models.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


class Coach:
    """A policy checkpoint used as a teacher: `label(trajectory) -> probs (T, 13)`."""

    def __init__(self, checkpoint: str | Path, *, temperature: float = 1.0, device: str = "cpu"):
        if temperature <= 0:
            raise ValueError(f"coach temperature must be > 0, got {temperature}")
        enc = ObservationEncoder()
        self.model, self.info = load_checkpoint(checkpoint, expected_encoder_version=enc.version,
                                                expected_vocab_hash=enc.vocab.hash, device=device)
        self.model.eval()
        self.device = torch.device(device)
        self.temperature = temperature
        step = self.info.metadata.get("step", "?")
        self.source = f"coach:{Path(checkpoint).resolve()}@step{step},T={temperature:g}"

    @torch.inference_mode()
    def label_batch(self, trajs: list[Trajectory]) -> list[np.ndarray]:
        """Teacher probabilities for several trajectories at once (padded at the end; causal)."""
        T = max(len(t.action) for t in trajs)
        K, F = trajs[0].tokens.shape[1], trajs[0].numbers.shape[1]
        tokens = np.zeros((len(trajs), T, K), np.int64)
        numbers = np.zeros((len(trajs), T, F), np.float32)
        legal = np.zeros((len(trajs), T, 13), bool)
        for i, t in enumerate(trajs):
            n = len(t.action)
            tokens[i, :n], numbers[i, :n], legal[i, :n] = t.tokens, t.numbers, t.legal
        logits, _ = self.model(torch.from_numpy(tokens).to(self.device), torch.from_numpy(numbers).to(self.device),
                               torch.from_numpy(legal).to(self.device))
        probs = self.probs(logits.float(), torch.from_numpy(legal).to(self.device)).cpu().numpy()
        return [probs[i, : len(t.action)] for i, t in enumerate(trajs)]

    def probs(self, logits: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
        """Softmax over legal actions at the coach's temperature; all-zero where nothing is legal."""
        z = (logits / self.temperature).masked_fill(~legal, float("-inf"))
        p = torch.softmax(z, dim=-1)
        return torch.nan_to_num(p, nan=0.0)

    def label_shards(self, data: str | Path | list, batch_size: int = 16, progress: bool = True) -> dict:
        """Label every trajectory in the shards under `data`; returns counts."""
        shards = list_shards(data)
        stats = {"shards": len(shards), "skipped_shards": 0, "trajectories": 0, "decisions": 0}
        for shard in tqdm(shards, desc="coach labels", disable=not progress):
            trajs = list(read_trajectories(shard))
            if trajs and all(t.teacher_source == self.source for t in trajs):
                stats["skipped_shards"] += 1  # this coach already labelled it (a resumed run)
                continue
            labels = {}
            # Similar lengths together keep padding small.
            order = sorted(range(len(trajs)), key=lambda i: len(trajs[i].action))
            for start in range(0, len(order), batch_size):
                chunk = [trajs[i] for i in order[start:start + batch_size]]
                for t, p in zip(chunk, self.label_batch(chunk)):
                    labels[(t.battle_id, t.player)] = (p, self.source)
                    stats["decisions"] += len(p)
            stats["trajectories"] += update_teacher(shard, labels)
        return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Label stored trajectories with a coach policy.")
    parser.add_argument("--coach", required=True, help="policy checkpoint folder")
    parser.add_argument("--data", nargs="+", required=True, help="trajectory shards or folders (rewritten in place)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        coach = Coach(args.coach, temperature=args.temperature, device=args.device)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps({"coach": coach.source, **coach.label_shards(args.data, args.batch_size)}))


if __name__ == "__main__":
    main()
