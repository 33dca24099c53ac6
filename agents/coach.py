"""The coach: any policy checkpoint that labels stored trajectories with its own action distribution.

    python -m agents.coach --coach runs/stage1/final --data runs/stage2/round-1/learner --labels runs/stage2/round-1/labels

Labelling runs offline in batches over the trajectory store: no battle is replayed, and no
trajectory shard is touched. For every decision the coach's distribution over the legal
actions (softmax of its masked logits at a temperature) is written as a new, versioned label
set (battles/labels.py), LABELS/coach-<version>/: one labels file per trajectory shard, and a
manifest (coach checkpoint and step, temperature, encoder, created, counts) written last. The
version is a hash of the coach, its temperature and the encoder, so the same coach resumes its
own set (labelled shards are skipped) and another coach writes a set of its own. Trajectories
carry the labels once built with the set (`battles.build.build(..., labels=[SET])`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from battles.encode import ObservationEncoder
from battles.labels import SUFFIX, labelled_sides, write_entries, write_manifest
from battles.trajectories import Trajectory, list_shards, read_trajectories
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
        self.checkpoint, self.step = Path(checkpoint).resolve(), self.info.metadata.get("step", "?")
        self.source = f"coach:{self.checkpoint}@step{self.step},T={temperature:g}"
        self.encoder_version, self.vocab_hash = enc.version, enc.vocab.hash
        digest = hashlib.blake2b(f"{self.source}|{enc.version}|{enc.vocab.hash}".encode(), digest_size=4)
        self.version = digest.hexdigest()

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

    def write_labels(self, data: str | Path | list, labels: str | Path, batch_size: int = 16,
                     progress: bool = True) -> dict:
        """Label every trajectory under `data` into the label set LABELS/coach-<version>/; its manifest."""
        out = Path(labels) / f"coach-{self.version}"
        out.mkdir(parents=True, exist_ok=True)
        shards = list_shards(data)
        counts = {"shards": len(shards), "skipped_shards": 0, "trajectories": 0, "decisions": 0}
        done = labelled_sides(out)  # a set is resumed: no battle side is labelled twice
        for shard in tqdm(shards, desc="coach labels", disable=not progress):
            path = out / f"{shard.stem}{SUFFIX}"
            if path.is_file():
                counts["skipped_shards"] += 1  # labelled before this run was stopped
                continue
            trajs = [t for t in read_trajectories(shard) if (t.battle_id, t.player) not in done]
            entries = []
            # Similar lengths together keep padding small.
            order = sorted(range(len(trajs)), key=lambda i: len(trajs[i].action))
            for start in range(0, len(order), batch_size):
                chunk = [trajs[i] for i in order[start:start + batch_size]]
                for t, p in zip(chunk, self.label_batch(chunk)):
                    entries.append({"battle_id": t.battle_id, "side": t.player, "source": self.source,
                                    "labels": p.tolist()})
                    counts["decisions"] += len(p)
            write_entries(path, entries)
            done.update((e["battle_id"], e["side"]) for e in entries)  # as a resumed run would see them
            counts["trajectories"] += len(entries)
        manifest = write_manifest(out, "coach", self.source, version=self.version,
                                  coach={"checkpoint": str(self.checkpoint), "step": self.step,
                                         "temperature": self.temperature},
                                  encoder_version=self.encoder_version, vocab_hash=self.vocab_hash,
                                  data=[str(p) for p in ([data] if isinstance(data, str | Path) else data)],
                                  counts=counts)
        return {"path": str(out), **manifest}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Label stored trajectories with a coach policy (a new label set).")
    parser.add_argument("--coach", required=True, help="policy checkpoint folder")
    parser.add_argument("--data", nargs="+", required=True, help="trajectory shards or folders (read only)")
    parser.add_argument("--labels", required=True, help="folder of label sets; the set goes to LABELS/coach-<version>")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        coach = Coach(args.coach, temperature=args.temperature, device=args.device)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(coach.write_labels(args.data, args.labels, args.batch_size)))


if __name__ == "__main__":
    main()
