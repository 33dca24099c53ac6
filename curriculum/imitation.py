"""Imitation training on a mix of trajectory sources: its settings, the model, the loss, the
data filters, the checkpoint saver, and `train_imitation`, which runs (or resumes) one such
training in a run folder with the shared trainer.

Stage 0 (curriculum/stage0_pretrain.py) is `train_imitation` on the command line; the imitation
study, the quickstart and scripts/best_model.py call it too; every member of the data-mix
ablation (curriculum/ablate_data_mix.py) is such a run, fed batches of exactly N decisions.

Loss: masked behaviour cloning (cross-entropy on the action taken; actions a log cannot
show are -1 and masked) plus a value loss on the battle's outcome, optionally
advantage-weighted (`awr_beta` > 0); curriculum/losses.py.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list
from torch.utils.data import DataLoader

from battles.config import save_config, to_dict
from battles.dataset import DataMix, MixLoader, Selection, TrajectoryDataset, collate
from battles.encode import ObservationEncoder
from curriculum.losses import behaviour_cloning
from curriculum.run_folder import run_dir_lock
from curriculum.trainer import (
    Trainer,
    TrainerConfig,
    TrainResult,
    finished_result,
    make_accelerator,
)
from models.checkpoint import load_checkpoint, save_checkpoint
from models.policy import PolicyConfig, PolicyTransformer

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """An imitation training's settings: the data and its mix, the model, the loss and the trainer."""

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
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_steps=2000))


def imitation_loss(cfg: PretrainConfig):
    """The loss of `cfg`: masked BC (optionally advantage-weighted) + value regression."""
    return behaviour_cloning(cfg.value_weight, cfg.awr_beta, cfg.awr_max_weight)


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


# -- one imitation training, run or resumed -------------------------------------------------
def report(result: TrainResult, cfg: PretrainConfig) -> None:
    print(f"pretrain: step {result.step}/{cfg.trainer.max_steps}, "
          f"loss {result.last_metrics.get('loss', float('nan')):.4f}, "
          f"val {result.val_metrics}, checkpoint {result.final_checkpoint}", flush=True)


def train_imitation(cfg: PretrainConfig) -> TrainResult:
    """Train (or resume) the imitation run described by `cfg` in `cfg.run_dir`; the TrainResult.

    A finished run builds nothing and rewrites nothing; a run folder another command is running
    in stops at once naming that command (RunFolderBusy)."""
    run_dir = Path(cfg.run_dir)
    # First: the process group (and torch's threads), so that the data below is split by rank.
    accelerator = make_accelerator(cfg.trainer)
    with run_dir_lock(run_dir, accelerator):
        done = [finished_result(run_dir, cfg.trainer)]
        if accelerator.num_processes > 1:  # rank 0's view of the folder decides for every rank
            done = broadcast_object_list(done)
        if done[0] is not None:  # finished before: build nothing, rewrite nothing
            if accelerator.is_main_process:
                log.info("%s is a finished run; raise trainer.max_steps to train it further", run_dir)
                report(done[0], cfg)
            return done[0]
        encoder = ObservationEncoder()
        train_data = MixLoader(training_mix(cfg, encoder), batch_size=cfg.trainer.batch_size,
                               num_workers=cfg.num_workers)
        val_batches = validation_batches(cfg, encoder)
        if not val_batches:
            log.warning("no validation trajectories (val_fraction=%s); validation is skipped", cfg.val_fraction)
        torch.manual_seed(cfg.trainer.seed)  # the same initial weights on every rank and every run
        model = build_model(cfg, encoder)
        if accelerator.is_main_process:
            save_config(cfg, run_dir / "config.yaml")
        log.info("model: %s preset, %.2fM parameters; data: %s", cfg.preset, model.num_parameters() / 1e6, cfg.mix)
        trainer = Trainer(cfg.trainer, run_dir, model, imitation_loss(cfg), train_data,
                          val_data=val_batches or None, save_model=checkpoint_saver(encoder, cfg),
                          run_config={"recipe": "pretrain", **to_dict(cfg)}, accelerator=accelerator)
        result = trainer.fit()
        if trainer.is_main:
            report(result, cfg)
        return result
