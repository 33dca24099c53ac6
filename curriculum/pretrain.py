"""Stage 0: imitation pretraining on battle trajectories.

    python -m curriculum.pretrain [--config FILE.yaml] [key=value ...]
    python -m curriculum.pretrain data=[runs/quickstart/trajectories] mix=selfplay:0.7,human:0.3 \
        preset=tiny trainer.max_steps=2000 run_dir=runs/pretrain

Reads top to bottom: resolve the config, build the data mix and a held-out split, build
(or load) the model, define the loss, hand everything to the shared trainer. Running the
same command again resumes the run in `run_dir`. Several processes:

    torchrun --nproc_per_node N -m curriculum.pretrain key=value ...
    accelerate launch --config_file curriculum/configs/fsdp_large.yaml -m curriculum.pretrain \
        --config curriculum/configs/pretrain_large.yaml

and `python -m curriculum.supervise -- <that command>` restarts it after a crash.

Loss: masked behaviour cloning (cross-entropy on the action taken; actions a log cannot
show are -1 and masked) plus a value loss on the battle's outcome. With `awr_beta > 0`
imitation is advantage-weighted: each decision's weight is exp((outcome - V(s)) / beta),
clipped at `awr_max_weight`, with V the model's own (detached) value head.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from battles.dataset import DataMix, MixLoader, TrajectoryDataset, collate
from battles.encode import ObservationEncoder
from curriculum.config import load_config, save_config, to_dict
from curriculum.distributed import DistributedStartError
from curriculum.trainer import Trainer, TrainerConfig, make_accelerator
from models.checkpoint import load_checkpoint, save_checkpoint
from models.policy import PolicyConfig, PolicyTransformer

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    run_dir: str = "runs/pretrain"
    data: list[str] = field(default_factory=lambda: ["runs/quickstart/trajectories"])
    mix: dict[str, float] = field(default_factory=lambda: {"selfplay": 0.7, "human": 0.3})
    formats: list[str] = field(default_factory=list)  # empty: every format
    min_rating: float | None = None
    outcomes: list[int] = field(default_factory=list)  # e.g. [1]: imitate winners only
    preset: str = "tiny"
    dropout: float = 0.1
    activation_checkpointing: bool = False  # recompute blocks in backward: less memory, +1 forward
    init_from: str | None = None  # a checkpoint to start from (its architecture wins)
    window: int = 64
    val_fraction: float = 0.05
    value_weight: float = 0.5
    awr_beta: float = 0.0  # > 0: advantage-weighted imitation
    awr_max_weight: float = 20.0
    num_workers: int = 0
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
        dropout=cfg.dropout, activation_checkpointing=cfg.activation_checkpointing,
    )
    if model_cfg.max_context < cfg.window:
        raise ValueError(f"window={cfg.window} exceeds the {cfg.preset} preset's max_context={model_cfg.max_context}")
    return PolicyTransformer(model_cfg)


def checkpoint_saver(encoder: ObservationEncoder, cfg: PretrainConfig):
    """Save a model checkpoint with the encoder version and vocabulary hash it was trained on."""

    def save(model, path: Path, metadata: dict) -> None:
        save_checkpoint(path, model, encoder_version=encoder.version, vocab_hash=encoder.vocab.hash,
                        metadata={"recipe": "pretrain", "mix": cfg.mix, "data": cfg.data, **metadata})

    return save


def data_filters(cfg: PretrainConfig, encoder: ObservationEncoder) -> dict:
    return {
        "formats": cfg.formats or None, "min_rating": cfg.min_rating, "outcomes": cfg.outcomes or None,
        "encoder_version": encoder.version, "val_fraction": cfg.val_fraction,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Imitation pretraining (stage 0).")
    parser.add_argument("--config", default=None, help="YAML file; key=value overrides follow")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. trainer.max_steps=500 preset=small")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(PretrainConfig, args.config, args.overrides)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    try:
        run(cfg)
    except DistributedStartError as err:
        raise SystemExit(f"error: {err}") from None


def run(cfg: PretrainConfig):
    """Train (or resume) the pretraining run described by `cfg`; returns the TrainResult."""
    run_dir = Path(cfg.run_dir)
    # First: the process group, so that the data below is split by rank.
    accelerator = make_accelerator(cfg.trainer)
    encoder = ObservationEncoder()
    filters = data_filters(cfg, encoder)
    mix = DataMix(cfg.mix, cfg.data, window=cfg.window, seed=cfg.trainer.seed, split="train", **filters)
    train_data = MixLoader(mix, batch_size=cfg.trainer.batch_size, num_workers=cfg.num_workers)
    val_set = TrajectoryDataset(cfg.data, window=cfg.window, split="val", **filters)
    val_batches = list(
        b for _, b in zip(range(cfg.trainer.eval_batches),
                          DataLoader(val_set, batch_size=cfg.trainer.batch_size, collate_fn=collate))
    )
    if not val_batches:
        log.warning("no validation trajectories (val_fraction=%s); validation is skipped", cfg.val_fraction)
    torch.manual_seed(cfg.trainer.seed)  # the same initial weights on every rank and every run
    model = build_model(cfg, encoder)
    if accelerator.is_main_process:
        save_config(cfg, run_dir / "config.yaml")
    log.info("model: %s preset, %.2fM parameters; data: %s", cfg.preset, model.num_parameters() / 1e6, cfg.mix)
    trainer = Trainer(
        cfg.trainer, run_dir, model, imitation_loss(cfg), train_data,
        val_data=val_batches or None, save_model=checkpoint_saver(encoder, cfg),
        run_config={"recipe": "pretrain", **to_dict(cfg)}, accelerator=accelerator,
    )
    result = trainer.fit()
    if trainer.is_main:
        print(f"pretrain: step {result.step}/{cfg.trainer.max_steps}, "
              f"loss {result.last_metrics.get('loss', float('nan')):.4f}, "
              f"val {result.val_metrics}, checkpoint {result.final_checkpoint}", flush=True)
    return result


if __name__ == "__main__":
    main()
