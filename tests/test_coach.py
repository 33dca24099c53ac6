"""The coach labels stored trajectories with exactly its own forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.coach import Coach
from battles.build import build
from battles.encode import ObservationEncoder
from battles.trajectories import read_trajectories
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
    build([REPLAYS / "gen1ou", REPLAYS / "gen9ou"], tmp_path / "traj", progress=False)
    return tmp_path


def test_labels_equal_the_coachs_own_forward_pass(setup):
    coach = Coach(setup / "coach", temperature=0.5)
    stats = coach.label_shards(setup / "traj", batch_size=3, progress=False)
    assert stats["trajectories"] == 10 and stats["skipped_shards"] == 0
    model, _ = load_checkpoint(setup / "coach")
    for t in read_trajectories(setup / "traj"):
        assert t.teacher_source == coach.source and "@step7" in t.teacher_source
        # One battle alone, no padding: longer than max_context (16), so the window slides too.
        with torch.no_grad():
            logits, _ = model(torch.from_numpy(t.tokens).long()[None], torch.from_numpy(t.numbers)[None],
                              torch.from_numpy(t.legal)[None])
        z = (logits[0] / 0.5).masked_fill(~torch.from_numpy(t.legal), float("-inf"))
        want = torch.nan_to_num(torch.softmax(z, -1)).numpy()
        np.testing.assert_allclose(t.teacher, want, atol=1e-5)
        has_legal = t.legal.any(axis=1)
        np.testing.assert_allclose(t.teacher[has_legal].sum(axis=1), 1.0, atol=1e-5)
        assert (t.teacher[~t.legal] == 0).all()  # never mass on an illegal action


def test_relabel_is_skipped(setup):
    coach = Coach(setup / "coach")
    coach.label_shards(setup / "traj", progress=False)
    again = coach.label_shards(setup / "traj", progress=False)
    assert again["skipped_shards"] == again["shards"] and again["trajectories"] == 0
