"""Imitation training on a mix of trajectory sources: its settings, the model, the loss, the
data filters and the checkpoint saver.

Stage 0 (curriculum/pretrain.py) wires these into the shared trainer; every member of the
data-mix ablation (curriculum/ablate.py) is such a run, fed batches of exactly N decisions.

Loss: masked behaviour cloning (cross-entropy on the action taken; actions a log cannot
show are -1 and masked) plus a value loss on the battle's outcome. With `awr_beta > 0`
imitation is advantage-weighted: each decision's weight is exp((outcome - V(s)) / beta),
clipped at `awr_max_weight`, with V the model's own (detached) value head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from battles.dataset import DataMix, Selection, TrajectoryDataset, collate
from battles.encode import ObservationEncoder
from curriculum.trainer import TrainerConfig
from models.checkpoint import load_checkpoint, save_checkpoint
from models.policy import PolicyConfig, PolicyTransformer


@dataclass
class PretrainConfig:
    """Stage 0's settings: the data and its mix, the model, the loss and the trainer."""

    run_dir: str = "runs/pretrain"
    data: list[str] = field(default_factory=lambda: ["runs/quickstart/trajectories"])
    mix: dict[str, float] = field(default_factory=lambda: {"selfplay": 0.7, "human": 0.3})
    # whom each source learns from, e.g. select.selfplay.agents=[tactician] select.selfplay.outcomes=[1]
    select: dict[str, Selection] = field(default_factory=dict)
    formats: list[str] = field(default_factory=list)  # empty: every format
    min_rating: float | None = None
    outcomes: list[int] = field(default_factory=list)  # e.g. [1]: imitate winners only
    preset: str = "tiny"
    dropout: float = 0.1
    activation_checkpointing: bool = False  # recompute blocks in backward: less memory, +1 forward
    init_from: str | None = None  # a checkpoint to start from (its architecture wins)
    window: int = 64
    val_fraction: float = 0.05
    subset: float = 1.0  # train on this nested share of the battles (validation stays whole)
    value_weight: float = 0.5
    awr_beta: float = 0.0  # > 0: advantage-weighted imitation
    awr_max_weight: float = 20.0
    num_workers: int = 0
    threads: int = 0  # torch threads while training (0: half the cores, at most 4)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_steps=2000))


def imitation_loss(cfg: PretrainConfig):
    """The recipe's loss: masked BC (optionally advantage-weighted) + value regression."""

    def loss_fn(model, batch):
        logits, value = model(batch["tokens"], batch["numbers"], batch["legal"])  # (B,T,13), (B,T)
        action = batch["action"]  # (B, T), -1 where the log hides the choice or padding
        outcome = batch["outcome"][:, None].expand_as(value)  # (B, T)
        scored = batch["loss_mask"] & batch["mask"]
        target_ok = action >= 0
        # A recorded action the mask calls illegal would be an encoder bug; never train on it.
        legal_target = batch["legal"].gather(-1, action.clamp(min=0)[..., None]).squeeze(-1)
        bc = scored & target_ok & legal_target
        ce = F.cross_entropy(logits[bc].float(), action[bc], reduction="none")
        if cfg.awr_beta > 0:
            adv = (outcome - value.detach())[bc].float()
            weight = torch.exp(adv / cfg.awr_beta).clamp(max=cfg.awr_max_weight)
            policy_loss = (weight * ce).sum() / weight.sum().clamp(min=1e-8)
        else:
            policy_loss = ce.mean() if ce.numel() else logits.sum() * 0.0
        value_loss = F.mse_loss(value[scored].float(), outcome[scored].float()) if scored.any() else value.sum() * 0.0
        loss = policy_loss + cfg.value_weight * value_loss
        with torch.no_grad():
            acc = (logits[bc].argmax(-1) == action[bc]).float().mean() if bc.any() else torch.tensor(0.0)
        return loss, {
            "loss": loss.detach(), "policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
            "acc": acc, "decisions": float(bc.sum()),
            "illegal_targets": float((scored & target_ok & ~legal_target).sum()),
        }

    return loss_fn


def build_model(cfg: PretrainConfig, encoder: ObservationEncoder) -> PolicyTransformer:
    """A fresh model of the preset sized to the encoder, or the `init_from` checkpoint."""
    if cfg.init_from:
        model, _ = load_checkpoint(cfg.init_from, expected_encoder_version=encoder.version,
                                   expected_vocab_hash=encoder.vocab.hash)
        model.cfg.activation_checkpointing = cfg.activation_checkpointing  # a runtime choice
        model.train()
        return model
    model_cfg = PolicyConfig.preset(
        cfg.preset, vocab_size=encoder.vocab.size, n_tokens=encoder.n_tokens, n_numbers=encoder.n_numbers,
        n_action_features=encoder.n_action_features,
        dropout=cfg.dropout, activation_checkpointing=cfg.activation_checkpointing,
    )
    if model_cfg.max_context < cfg.window:
        raise ValueError(f"window={cfg.window} exceeds the {cfg.preset} preset's max_context={model_cfg.max_context}")
    return PolicyTransformer(model_cfg)


def checkpoint_saver(encoder: ObservationEncoder, cfg: PretrainConfig):
    """Save a model checkpoint with the encoder version and vocabulary hash it was trained on."""

    def save(model, path: Path, metadata: dict) -> None:
        save_checkpoint(path, model, encoder_version=encoder.version, vocab_hash=encoder.vocab.hash,
                        metadata={"recipe": "pretrain", "mix": cfg.mix, "data": cfg.data,
                                  "select": selections(cfg), **metadata})

    return save


def data_filters(cfg: PretrainConfig, encoder: ObservationEncoder) -> dict:
    """The trajectory filters of `cfg` (formats, rating, outcomes, encoder, validation split)."""
    return {
        "formats": cfg.formats or None, "min_rating": cfg.min_rating, "outcomes": cfg.outcomes or None,
        "encoder_version": encoder.version, "val_fraction": cfg.val_fraction,
    }


def set_threads(threads: int) -> None:
    """Torch's intra-op threads: on a busy 2-core machine its default two made a step ~8x slower."""
    import os

    torch.set_num_threads(threads or min(4, max(1, (os.cpu_count() or 2) // 2)))


def selections(cfg: PretrainConfig) -> dict[str, dict]:
    """The per-source selection as plain data (for DataMix, checkpoints and lineage)."""
    return {k: asdict(v) if isinstance(v, Selection) else dict(v) for k, v in cfg.select.items()}


def training_mix(cfg: PretrainConfig, encoder: ObservationEncoder) -> DataMix:
    """The training split of cfg's data mix, each source drawn from whom it selects."""
    return DataMix(cfg.mix, cfg.data, window=cfg.window, seed=cfg.trainer.seed, split="train",
                   select=selections(cfg), subset=cfg.subset, **data_filters(cfg, encoder))


def validation_batches(cfg: PretrainConfig, encoder: ObservationEncoder) -> list[dict]:
    """Held-out batches of the same mix: each source with weight > 0 and its selection, in
    proportion to its weight (held-out agreement with the teacher, not with everyone)."""
    live = {k: w for k, w in cfg.mix.items() if w > 0}
    total = sum(live.values())
    batches = []
    for name, weight in sorted(live.items()):
        chosen = {k: v for k, v in selections(cfg).get(name, {}).items() if v}
        val_set = TrajectoryDataset(cfg.data, window=cfg.window, split="val", source=name,
                                    **{**data_filters(cfg, encoder), **chosen})
        n = max(1, round(cfg.trainer.eval_batches * weight / total))
        loader = DataLoader(val_set, batch_size=cfg.trainer.batch_size, collate_fn=collate)
        batches += [b for _, b in zip(range(n), loader)]
    return batches
