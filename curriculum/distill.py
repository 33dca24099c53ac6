"""Distillation: training a student on a teacher's labels.

A teacher (a coach's forward pass, or a search bot's visit shares) has written its distribution
over the legal actions into the student's trajectories (`teacher`, `teacher_source`);
`train_student` fine-tunes the student on them with curriculum/losses.py's `teacher_loss`

    kl_weight    * KL(teacher || student) over the legal actions (decisions with a label)
  + win_weight   * cross-entropy on the student's own actions in battles it won
  + value_weight * (value - outcome)^2

in steps of exactly `decisions_per_step` decisions (curriculum/batches.py), with the shared
trainer (resumes from RUN/state). The coach rounds, the search stage and the iteration
ablation's controls all train this way.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from torch.utils.data import DataLoader

from agents.registry import parse_spec
from battles.config import to_dict
from battles.dataset import DataMix, TrajectoryDataset, collate
from battles.encode import ObservationEncoder
from battles.shards import list_shards
from curriculum.batches import DecisionBatches
from curriculum.losses import teacher_loss
from curriculum.phases import PromotionConfig, StageTrainerConfig, learner_stats
from curriculum.trainer import Trainer
from models.checkpoint import load_checkpoint, save_checkpoint


@dataclass
class DistillSettings:
    """How a student learns from labels: the loss weights and how long. A recipe's settings
    inherit these (flat keys: kl_weight=2, steps=100, trainer.lr=1e-4)."""

    kl_weight: float = 1.0
    win_weight: float = 0.5
    value_weight: float = 0.5
    epochs: float = 3.0  # passes over the labelled decisions
    steps: int = 0  # > 0: exactly this many steps instead of `epochs`
    decisions_per_step: int = 512  # every step learns from exactly this many decisions
    window: int = 64
    val_fraction: float = 0.05
    trainer: StageTrainerConfig = field(default_factory=StageTrainerConfig)  # max_steps: from epochs

    def __post_init__(self) -> None:
        if min(self.kl_weight, self.win_weight, self.value_weight) < 0 or self.kl_weight + self.win_weight <= 0:
            raise ValueError(f"kl_weight={self.kl_weight}, win_weight={self.win_weight}: must be >= 0 and not "
                             "both 0 (value_weight too must be >= 0)")
        if self.decisions_per_step < 1:
            raise ValueError(f"decisions_per_step={self.decisions_per_step}: must be at least 1")


def unlabelled(paths: list[Path]) -> list[str]:
    """Shards under `paths` with a row the teacher has not labelled."""
    bad = []
    for shard in list_shards(paths):
        sources = pq.read_table(shard, columns=["teacher_source"])["teacher_source"].to_pylist()
        if any(s is None for s in sources):
            bad.append(str(shard))
    return bad


def train_student(cfg: DistillSettings, run: Path, parent: Path, data: list[Path], *, steps: int = 0,
                  coach_source: str = "", recipe: str = "coach", mix: dict[str, tuple[float, list[Path]]] | None = None
                  ) -> dict:
    """Fine-tune `parent` on labelled trajectories `data` (resumes from RUN/state); the training summary.

    `steps` > 0 fixes the step count (the ablation's matched budgets); else `cfg.steps`, else
    `cfg.epochs` passes over the decisions of `data`'s training split. `mix` ({source: (weight,
    folders)}, covering `data`) samples the sources by weight instead of as one pool. `cfg` is
    a recipe's settings: DistillSettings plus its `format` and `stage`.
    """
    encoder = ObservationEncoder()
    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise ValueError("training on labels runs in one process; run it without torchrun/accelerate launch")
    bad = unlabelled(data)
    if bad:
        raise ValueError(f"{len(bad)} shard(s) hold trajectories the teacher has not labelled ({bad[0]}, ...); "
                         "rerun the stage's command so that its label phase finishes")
    filters = {"formats": [cfg.format], "encoder_version": encoder.version, "val_fraction": cfg.val_fraction}
    decisions = sum(learner_stats(p, cfg.val_fraction)["decisions"] for p in data)
    if decisions == 0:
        raise ValueError(f"no training decisions in {[str(p) for p in data]}: play more battles per round")
    steps = steps or cfg.steps or max(1, math.ceil(cfg.epochs * decisions / cfg.decisions_per_step))
    tcfg = dataclasses.replace(cfg.trainer, max_steps=steps, grad_accum=1,  # a step: one DecisionBatches batch
                               warmup_steps=min(cfg.trainer.warmup_steps, max(1, steps // 10)))
    mix = mix or {"student": (1.0, data)}
    sampler = DataMix({k: w for k, (w, _) in mix.items()}, {k: [str(p) for p in ps] for k, (_, ps) in mix.items()},
                      window=cfg.window, seed=tcfg.seed, split="train", **filters)
    batches = DecisionBatches(sampler, cfg.decisions_per_step)
    val_set = TrajectoryDataset([str(p) for p in data], window=cfg.window, split="val", **filters)
    val = [b for _, b in zip(range(tcfg.eval_batches),
                             DataLoader(val_set, batch_size=cfg.trainer.batch_size, collate_fn=collate))]
    model, _ = load_checkpoint(parent, expected_encoder_version=encoder.version, expected_vocab_hash=encoder.vocab.hash)
    if cfg.window > model.cfg.max_context:
        raise ValueError(f"window={cfg.window} exceeds the student's max_context={model.cfg.max_context}")
    model.train()

    def save(model, path: Path, metadata: dict) -> None:
        save_checkpoint(path, model, encoder_version=encoder.version, vocab_hash=encoder.vocab.hash,
                        metadata={"recipe": recipe, "stage": cfg.stage, "parent": str(parent),
                                  "data": [str(p) for p in data], "coach": coach_source,
                                  "decisions_per_step": cfg.decisions_per_step, **metadata})

    print(f"train: {steps} steps x {cfg.decisions_per_step} decisions ({steps * cfg.decisions_per_step / decisions:.2f} "
          f"passes over {decisions} decisions); loss {cfg.kl_weight:g} KL(coach||student) + {cfg.win_weight:g} "
          f"win imitation + {cfg.value_weight:g} value", flush=True)
    trainer = Trainer(tcfg, run, model, teacher_loss(cfg.kl_weight, cfg.win_weight, cfg.value_weight), batches,
                      val_data=val or None, save_model=save, run_config={"recipe": recipe, **to_dict(cfg)})
    result = trainer.fit()
    return {"finished": result.finished, "steps": result.step, "max_steps": steps,
            "decisions_per_step": cfg.decisions_per_step, "decisions_trained": result.step * cfg.decisions_per_step,
            "data_decisions": decisions, "epochs": round(steps * cfg.decisions_per_step / decisions, 3),
            "data": [str(p) for p in data], "warmup_steps": tcfg.warmup_steps, "finetune": "full",
            "parent_data_share": 0.0,
            "weights": {"kl": cfg.kl_weight, "win": cfg.win_weight, "value": cfg.value_weight},
            "mix": {k: {"weight": w, "data": [str(p) for p in ps]} for k, (w, ps) in mix.items()},
            "last_metrics": result.last_metrics, "val_metrics": result.val_metrics,
            "checkpoint": str(result.final_checkpoint) if result.final_checkpoint else None}


# -- the settings of learning from a coach over rounds (stage 2 runs them; the iteration
# ablation runs stage 2 as its chain and trains its controls on the same settings) --------
PHASES = ("play", "build", "label", "train", "evaluate")
SELF, COACH = "self", "coach"  # opponent names that stand for the student and the coach


@dataclass
class CoachStageConfig(DistillSettings):
    """Stage 2's settings: the student, the coach, the rounds, how each round plays and is judged;
    how it learns (kl_weight, win_weight, value_weight, epochs, steps, decisions_per_step, window,
    val_fraction, trainer) is DistillSettings'."""

    run_dir: str = "runs/stage2"
    stage: str = "stage2"
    student: str = "runs/stage1"  # checkpoint, pretrain run or stage run folder (its output)
    coach: str = ""  # the teacher: a checkpoint or run folder, e.g. a larger or later model
    coach_temperature: float = 1.0  # labels are softmax(coach logits / coach_temperature)
    rounds: int = 1
    format: str = "gen1ou"
    team_set: str = "competitive"
    battles: int = 500  # per round
    opponents: dict[str, float] = field(
        default_factory=lambda: {SELF: 0.4, "tactician": 0.3, "bestdamage": 0.3})
    temperature: float = 1.0  # the student's sampling temperature while playing
    concurrency: int = 16
    shard_battles: int = 50
    workers: int = 0  # play in this many processes, each with its own simulator host (0: what the cores allow)
    seed: int = 0
    label_batch_size: int = 16
    promote_with_coach: bool = True  # the coach plays in every promotion tournament
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    stop_after: str = ""  # play | build | label | train | evaluate: stop the current round there

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds}: must be at least 1")
        if self.coach_temperature <= 0:
            raise ValueError(f"coach_temperature={self.coach_temperature}: must be > 0")
        if self.stop_after not in ("", *PHASES):
            raise ValueError(f"stop_after={self.stop_after!r}: use one of {', '.join(PHASES)} or leave it empty")
        if not self.opponents or any(not w >= 0 for w in self.opponents.values()) or sum(self.opponents.values()) <= 0:
            raise ValueError(f"opponents={self.opponents}: give agent specs (or self, coach) with weights >= 0 "
                             "and a positive sum, e.g. opponents={self: 0.5, tactician: 0.5}")
        for spec in self.opponents:
            if spec not in (SELF, COACH):
                parse_spec(spec)  # ValueError naming the spec and the known kinds
        if not self.promote_with_coach and not set(self.opponents) - {SELF}:
            raise ValueError("the promotion tournament needs an opponent besides the student: add one to "
                             "opponents or set promote_with_coach=true")
