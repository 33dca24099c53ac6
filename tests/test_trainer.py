"""The shared trainer: schedule, checkpoints, and a resume that equals an uninterrupted run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from battles.config import load_config
from curriculum.trainer import Trainer, TrainerConfig
from models.policy import PolicyConfig, PolicyTransformer

K, NUM, VOCAB = 12, 10, 300


class SyntheticBattles:
    """Seeded batches whose position is the number of batches drawn (resumable)."""

    def __init__(self, seed: int = 0, batch: int = 4, length: int = 9):
        self.seed, self.batch, self.length, self.drawn = seed, batch, length, 0

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.drawn)
            self.drawn += 1
            tokens = torch.randint(1, VOCAB, (self.batch, self.length, K), generator=g)
            legal = torch.rand(self.batch, self.length, 13, generator=g) < 0.6
            legal[..., 0] = True
            action = torch.where(legal[..., 1], 1, 0)  # learnable: a rule on the mask
            yield {"tokens": tokens, "numbers": torch.randn(self.batch, self.length, NUM, generator=g),
                   "legal": legal, "action": action}

    def state_dict(self):
        return {"drawn": self.drawn}

    def load_state_dict(self, state):
        self.drawn = state["drawn"]


def bc_loss(model, batch):
    logits, _ = model(batch["tokens"], batch["numbers"], batch["legal"])
    loss = F.cross_entropy(logits.flatten(0, 1), batch["action"].flatten())
    acc = (logits.argmax(-1) == batch["action"]).float().mean()
    return loss, {"loss": loss.detach(), "acc": acc, "decisions": float(batch["action"].numel())}


def make_model():
    torch.manual_seed(0)
    return PolicyTransformer(PolicyConfig.preset("tiny", vocab_size=VOCAB, n_tokens=K, n_numbers=NUM, dropout=0.1))


def train(run_dir, **overrides):
    cfg = TrainerConfig(max_steps=12, batch_size=4, lr=3e-3, warmup_steps=3, checkpoint_every=4, eval_every=6,
                        eval_batches=2, log_every=1, wandb_mode="disabled", **overrides)
    saved = []
    trainer = Trainer(cfg, run_dir, make_model(), bc_loss, SyntheticBattles(),
                      val_data=[b for _, b in zip(range(2), SyntheticBattles(seed=9))],
                      save_model=lambda m, p, meta: saved.append((p, meta)) or p.mkdir(parents=True, exist_ok=True))
    return trainer, trainer.fit(), saved


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lr_schedule():
    cfg = TrainerConfig(max_steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert cfg.lr_at(0) == pytest.approx(0.1)
    assert cfg.lr_at(9) == pytest.approx(1.0)
    assert cfg.lr_at(99) == pytest.approx(0.1, abs=0.01)
    assert cfg.lr_at(55) < cfg.lr_at(20)
    assert TrainerConfig(schedule="constant", warmup_steps=1, lr=0.5).lr_at(500) == 0.5
    with pytest.raises(ValueError, match="schedule"):
        TrainerConfig(schedule="linear")


def test_resume_equals_uninterrupted(tmp_path):
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    full, full_result, _ = train(full_dir)
    assert full_result.finished and full_result.step == 12

    first, r1, _ = train(split_dir, stop_after_steps=5)  # stops as if killed after step 5's save
    assert r1.step == 5 and not r1.finished
    second, r2, saved = train(split_dir)
    assert r2.step == 12 and r2.finished

    a = dict(full.accelerator.unwrap_model(full.model).state_dict())
    b = dict(second.accelerator.unwrap_model(second.model).state_dict())
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)  # tolerance: 1e-6 absolute
    train_rows = lambda rows: [(r["step"], round(r["loss"], 6)) for r in rows if "loss" in r]  # noqa: E731
    assert train_rows(metrics(full_dir)) == train_rows(metrics(split_dir))
    steps = [r["step"] for r in metrics(split_dir) if "loss" in r]
    assert steps == list(range(1, 13))  # every step exactly once
    assert r2.val_metrics["val_acc"] > 0.5
    assert saved[-1][0].name == "final"


def test_corrupt_last_state_falls_back(tmp_path, caplog):
    train(tmp_path, stop_after_steps=9)  # states at 4, 8, 9 -> keeps 8 and 9
    states = sorted((tmp_path / "state").iterdir())
    assert [s.name for s in states] == ["step-0000008", "step-0000009"]
    (states[-1] / "trainer.json").write_text("{not json")
    trainer, result, _ = train(tmp_path)
    assert "falling back" in caplog.text
    assert result.step == 12
    steps = [r["step"] for r in metrics(tmp_path) if "loss" in r]
    assert steps == list(range(1, 13))


def test_config_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.01\nmax_steps: 7\n")
    cfg = load_config(TrainerConfig, path, ["warmup_steps=2", "schedule=constant"])
    assert (cfg.lr, cfg.max_steps, cfg.warmup_steps, cfg.schedule) == (0.01, 7, 2, "constant")
    with pytest.raises(ValueError, match="unknown config key.*nope"):
        load_config(TrainerConfig, None, ["nope=1"])
    with pytest.raises(ValueError, match="'max_steps' must be int"):
        load_config(TrainerConfig, None, ["max_steps=abc"])


def test_wandb_id_is_fixed_before_the_first_state(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_RUN_ID", "chosen-id")
    first, _, _ = train(tmp_path, stop_after_steps=2)
    assert first.wandb_id == "chosen-id" == (tmp_path / "wandb_id").read_text().strip()
    shutil.rmtree(tmp_path / "state")  # as if it crashed before saving any state
    monkeypatch.delenv("WANDB_RUN_ID")
    second, result, _ = train(tmp_path, stop_after_steps=1)
    assert result.step == 1 and second.wandb_id == "chosen-id"  # the restart logs to the same run


def test_data_split_for_another_world_size_is_refused(tmp_path):
    data = SyntheticBattles()
    data.world_size = 2  # as a DataMix built before the process group of a 2-process run
    with pytest.raises(ValueError, match="split for world_size=2.*make_accelerator"):
        Trainer(TrainerConfig(wandb_mode="disabled"), tmp_path, make_model(), bc_loss, data)
