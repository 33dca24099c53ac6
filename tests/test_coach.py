"""The coach labels stored trajectories with exactly its own forward pass, as a new label set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agents.coach import Coach
from battles.build import build
from battles.encode import ObservationEncoder
from battles.labels import read_manifest
from battles.trajectories import list_shards, read_trajectories, shard_stats
from models.checkpoint import load_checkpoint, save_checkpoint
from models.policy import PolicyConfig, PolicyTransformer
from tests.test_build import REPLAYS


@pytest.fixture()
def setup(tmp_path):
    enc = ObservationEncoder()
    torch.manual_seed(3)
    model = PolicyTransformer(PolicyConfig.preset("tiny", vocab_size=enc.vocab.size, n_tokens=enc.n_tokens,
                                                  n_numbers=enc.n_numbers, max_context=16))
    save_checkpoint(tmp_path / "coach", model, encoder_version=enc.version, vocab_hash=enc.vocab.hash,
                    metadata={"step": 7})
    build([REPLAYS / "gen1ou", REPLAYS / "gen9ou"], tmp_path / "traj", progress=False, rows_per_shard=4)
    return tmp_path


def snapshot(folder) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in list_shards(folder)}


def test_labels_equal_the_coachs_own_forward_pass_and_no_shard_is_touched(setup):
    before = snapshot(setup / "traj")
    coach = Coach(setup / "coach", temperature=0.5)
    manifest = coach.write_labels(setup / "traj", setup / "labels", batch_size=3, progress=False)
    assert snapshot(setup / "traj") == before  # labels are a set of their own: no shard rewritten
    assert manifest["counts"]["trajectories"] == 10 and manifest["counts"]["skipped_shards"] == 0
    summary = build([REPLAYS / "gen1ou", REPLAYS / "gen9ou"], setup / "labelled", labels=[manifest["path"]],
                    progress=False)
    assert summary["labels"]["trajectories_labelled"] == 10 and summary["labels"]["unused_entries"] == 0
    assert not [k for k in summary["labels"] if k.startswith("unmatched")], summary["labels"]
    model, _ = load_checkpoint(setup / "coach")
    for t in read_trajectories(setup / "labelled"):
        assert t.teacher_source == coach.source and "@step7" in t.teacher_source
        # One battle alone, no padding: longer than max_context (16), so the window slides too.
        with torch.no_grad():
            logits, _ = model(torch.tensor(t.tokens).long()[None], torch.tensor(t.numbers)[None],
                              torch.tensor(t.legal)[None])
        z = (logits[0] / 0.5).masked_fill(~torch.from_numpy(t.legal), float("-inf"))
        want = torch.nan_to_num(torch.softmax(z, -1)).numpy()
        np.testing.assert_allclose(t.teacher, want, atol=1e-5)
        has_legal = t.legal.any(axis=1)
        np.testing.assert_allclose(t.teacher[has_legal].sum(axis=1), 1.0, atol=1e-5)
        assert (t.teacher[~t.legal] == 0).all()  # never mass on an illegal action


def test_a_label_set_is_versioned_by_its_coach_and_resumes(setup):
    coach = Coach(setup / "coach")
    first = coach.write_labels(setup / "traj", setup / "labels", progress=False)
    manifest = read_manifest(first["path"])
    assert first["path"] == str(setup / "labels" / f"coach-{coach.version}")
    assert manifest["kind"] == "coach" and manifest["source"] == coach.source and manifest["created"]
    assert manifest["coach"] == {"checkpoint": str((setup / "coach").resolve()), "step": 7, "temperature": 1.0}
    enc = ObservationEncoder()
    assert manifest["encoder_version"] == enc.version and manifest["vocab_hash"] == enc.vocab.hash
    decisions = shard_stats(setup / "traj")["decisions"]
    assert manifest["counts"] == {"shards": 3, "skipped_shards": 0, "trajectories": 10, "decisions": decisions}
    again = coach.write_labels(setup / "traj", setup / "labels", progress=False)
    assert again["path"] == first["path"] and again["counts"]["skipped_shards"] == 3
    assert again["counts"]["trajectories"] == 0
    # Another temperature is another coach: a new set beside the first, which stays as it was.
    other = Coach(setup / "coach", temperature=2.0).write_labels(setup / "traj", setup / "labels", progress=False)
    assert other["path"] != first["path"] and other["counts"]["trajectories"] == 10
    assert json.loads((setup / "labels" / f"coach-{coach.version}" / "manifest.json").read_text())["counts"] == \
        again["counts"]
