"""Curriculum stage 1: play a pool of opponents, learn from that play, promote only what is better.

    python -m curriculum.stage1_play [--config curriculum/configs/stage1.yaml] [key=value ...]
    scripts/curriculum_stage1.sh parent=runs/quickstart/pretrain/final battles=2000 run_dir=runs/stage1

Reads top to bottom, one phase after another; each phase leaves a marker in RUN/phases/
when done, and running the same command again continues where it stopped:

  1 play      the parent, sampling at `temperature`, plays `battles` battles against the
              opponent pool (split by weight) on `team_set` / `format`. Match records them in
              RUN/battles/<opponent>/; finished battles are counted from the shards, so a
              restart plays only the rest.
  2 build     trajectories of both sides into RUN/trajectories/ (built battles are skipped),
              then the learner's own side into RUN/learner/.
  3 train     fine-tune the parent's weights (all, or LoRA adapters merged on save) on
              RUN/learner plus a share of the parent's pretraining data, for `epochs` epochs,
              with the shared Trainer (resumes from RUN/state), imitating its won battles
              (`wins_only`) or its decisions weighted by advantage (`awr_beta`). The child
              is RUN/final.
  4 evaluate  a round-robin tournament of child, parent and the pool (RUN/tournament/, resumable).
  5 decide    the promotion rule (curriculum/promotion.py). RUN/lineage.json records the
              parent, the data, the config, the tournament and the verdict; `output` names
              the checkpoint the next stage starts from.

Play, the build, the promotion tournament and the phase runner are curriculum/phases.py's,
the loss curriculum/losses.py's (`behaviour_cloning`); fine-tuning the parent is this file's own.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from battles.config import recipe_main, to_dict
from battles.dataset import DataMix, MixLoader, Selection, TrajectoryDataset, collate
from battles.encode import ObservationEncoder
from curriculum import phases
from curriculum.lineage import read_lineage, update_lineage
from curriculum.losses import behaviour_cloning
from curriculum.phases import PlayConfig, PromotionConfig, ServerOnDemand, StageTrainerConfig
from curriculum.promotion import Decision, describe
from curriculum.run_folder import owns_run_folder
from curriculum.trainer import Trainer
from models.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint

log = logging.getLogger(__name__)

PHASES = ("play", "build", "train", "evaluate")
# Keys that may change between invocations of one run: they change how, not what, is computed.
# (train_threads: a key of runs made before trainer.threads.)
_MUTABLE = {"run_dir", "stop_after", "concurrency", "workers", "train_threads", "trainer.threads", "promotion.concurrency",
            "promotion.max_battles", "trainer.stop_after_steps", "trainer.max_steps", "trainer.wandb_mode",
            "trainer.log_every"}


@dataclass
class SelfPlayConfig:
    """One stage: who plays whom and how much, how the child learns, how it is judged."""

    run_dir: str = "runs/stage1"
    stage: str = "stage1"
    parent: str = "runs/quickstart/pretrain/final"  # checkpoint, pretrain run or stage run folder
    format: str = "gen1ou"
    team_set: str = "competitive"
    battles: int = 1000
    opponents: dict[str, float] = field(
        default_factory=lambda: {"tactician": 0.5, "bestdamage": 0.3, "maxbp": 0.2})
    temperature: float = 1.0  # the learner's sampling temperature while playing
    concurrency: int = 16
    shard_battles: int = 50  # battles per log shard while playing: a kill loses at most these
    workers: int = 0  # play in this many processes, each with its own simulator host (0: what the cores allow)
    seed: int = 0
    # learning
    epochs: float = 4.0  # passes over the learner's decisions
    steps: int = 0  # > 0: train exactly this many steps instead of `epochs`
    window: int = 64
    val_fraction: float = 0.05
    wins_only: bool = False  # imitate only decisions of won battles
    awr_beta: float = 0.0  # > 0: weight decisions by exp((outcome - V) / beta)
    awr_max_weight: float = 20.0
    value_weight: float = 0.5
    parent_data_share: float = 0.0  # share of each batch drawn from the parent's pretraining data
    parent_data: list[str] = field(default_factory=list)  # empty: where the parent was pretrained
    # whom the parent data is drawn from; empty: whom the parent's pretraining selected
    parent_select: Selection = field(default_factory=Selection)
    finetune: str = "full"  # full | lora
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["qkv", "proj", "fc"])
    lora_modules_to_save: list[str] = field(default_factory=list)  # e.g. [policy_head, value_head]
    trainer: StageTrainerConfig = field(default_factory=StageTrainerConfig)  # max_steps: from epochs
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    stop_after: str = ""  # play | build | train | evaluate: stop once that phase is done

    def __post_init__(self) -> None:
        PlayConfig.of(self)  # battles, opponents, temperature: ValueError naming the key
        if not (self.epochs > 0 or self.steps > 0):
            raise ValueError(f"epochs={self.epochs}: must be > 0 (or set steps > 0)")
        if not 0 <= self.parent_data_share < 1:
            raise ValueError(f"parent_data_share={self.parent_data_share}: must be in [0, 1)")
        if self.finetune not in ("full", "lora"):
            raise ValueError(f"finetune={self.finetune!r}: use 'full' or 'lora'")
        if self.stop_after not in ("", *PHASES):
            raise ValueError(f"stop_after={self.stop_after!r}: use one of {', '.join(PHASES)} or leave it empty")
        if self.awr_beta < 0:
            raise ValueError(f"awr_beta={self.awr_beta}: must be >= 0 (0 turns weighting off)")


# -- phase 3: train ---------------------------------------------------------------------------
def build_model(cfg: SelfPlayConfig, parent: Path, encoder: ObservationEncoder):
    """The parent's weights, all trainable, or frozen under LoRA adapters (peft)."""
    model, _ = load_checkpoint(parent, expected_encoder_version=encoder.version, expected_vocab_hash=encoder.vocab.hash)
    model.train()
    if cfg.window > model.cfg.max_context:
        raise ValueError(f"window={cfg.window} exceeds the parent's max_context={model.cfg.max_context}")
    if cfg.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [t for t in cfg.lora_targets + cfg.lora_modules_to_save if t not in names]
        if missing:
            raise ValueError(f"lora_targets / lora_modules_to_save {missing} name no module of the policy; "
                             f"choose among {sorted(n for n in names if n)}")
        torch.manual_seed(cfg.trainer.seed)
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_targets), modules_to_save=list(cfg.lora_modules_to_save) or None))
    return model


def checkpoint_saver(cfg: SelfPlayConfig, encoder: ObservationEncoder, parent: Path, learner_dir: Path,
                     pretrain_data: list[str]):
    """Save a plain PolicyTransformer checkpoint (LoRA adapters merged into a copy of the weights)."""

    def save(model, path: Path, metadata: dict) -> None:
        plain = model
        if cfg.finetune == "lora":
            plain = copy.deepcopy(model).merge_and_unload()
        save_checkpoint(path, plain, encoder_version=encoder.version, vocab_hash=encoder.vocab.hash,
                        metadata={"recipe": "selfplay", "stage": cfg.stage, "parent": str(parent),
                                  "data": [str(learner_dir)], "pretrain_data": pretrain_data,
                                  "pretrain_select": parent_selection(cfg, parent),
                                  "finetune": cfg.finetune, **metadata})

    return save


def pretrain_data_of(parent: Path, parent_run: Path | None) -> list[str]:
    """Where the parent's pretraining data lives: its checkpoint metadata, else its run's config.yaml."""
    meta = read_checkpoint_info(parent).metadata
    if meta.get("pretrain_data"):
        return list(meta["pretrain_data"])
    if meta.get("recipe") == "pretrain" and meta.get("data"):
        return list(meta["data"])
    if parent_run is not None and (parent_run / "config.yaml").is_file():
        return list((yaml.safe_load((parent_run / "config.yaml").read_text()) or {}).get("data") or [])
    return []


def parent_selection(cfg: SelfPlayConfig, parent: Path) -> dict:
    """Whom the parent data is drawn from: `parent_select`, else what the parent's pretraining
    selected (the agents of its selected sources, when every source it drew from was selected)."""
    if cfg.parent_select.agents or cfg.parent_select.outcomes:
        return dataclasses.asdict(cfg.parent_select)
    meta = read_checkpoint_info(parent).metadata
    if meta.get("pretrain_select") is not None:
        return dict(meta["pretrain_select"])
    chosen = meta.get("select") or {}
    drawn = [k for k, w in (meta.get("mix") or {}).items() if w > 0]
    if drawn and all((chosen.get(k) or {}).get("agents") for k in drawn):
        return {"agents": sorted({a for k in drawn for a in chosen[k]["agents"]}), "outcomes": []}
    return {"agents": [], "outcomes": []}


def train(cfg: SelfPlayConfig, run: Path, parent: Path, pretrain_data: list[str]) -> dict:
    """Fine-tune the parent on the learner's trajectories (resumes); returns the training summary."""
    encoder = ObservationEncoder()
    learner_dir = run / "learner"
    filters = {"formats": [cfg.format], "encoder_version": encoder.version, "val_fraction": cfg.val_fraction}
    windows = TrajectoryDataset(learner_dir, window=cfg.window, split="train", **filters).num_samples()
    stats = phases.learner_stats(learner_dir, cfg.val_fraction)
    if windows == 0 or (cfg.wins_only and stats["wins"] == 0):
        raise ValueError(f"nothing to imitate in {learner_dir}: {stats['trajectories']} training trajectories, "
                         f"{stats['wins']} won (wins_only={cfg.wins_only}); play more battles, choose weaker "
                         "opponents, or turn wins_only off")
    sources = {"stage": [str(learner_dir)]}
    weights = {"stage": 1.0 - cfg.parent_data_share}
    if cfg.parent_data_share > 0:
        paths = cfg.parent_data or pretrain_data
        missing = [p for p in paths if not Path(p).exists()]
        if not paths or missing:
            raise ValueError(f"parent_data_share={cfg.parent_data_share} but the parent's pretraining data "
                             f"{missing or paths or '(not recorded)'} is not here; pass parent_data=[PATH,...] "
                             "or set parent_data_share=0")
        sources["parent"], weights["parent"] = list(paths), cfg.parent_data_share
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = cfg.trainer.batch_size * cfg.trainer.grad_accum * world
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * windows / (per_step * weights["stage"])))
    # The schedule follows the data: max_steps from the epochs, warm-up at most a tenth of it.
    tcfg = dataclasses.replace(cfg.trainer, max_steps=steps, warmup_steps=min(cfg.trainer.warmup_steps, max(1, steps // 10)))
    select = {"parent": parent_selection(cfg, parent)} if "parent" in sources else {}
    mix = DataMix(weights, sources, window=cfg.window, seed=tcfg.seed, split="train", select=select, **filters)
    val_batches = []
    val_set = TrajectoryDataset(learner_dir, window=cfg.window, split="val", **filters)
    for i, batch in enumerate(torch.utils.data.DataLoader(val_set, batch_size=tcfg.batch_size, collate_fn=collate)):
        if i >= tcfg.eval_batches:
            break
        val_batches.append(batch)
    model = build_model(cfg, parent, encoder)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"train: {steps} steps ({cfg.epochs:g} epochs over {windows} windows of the learner's play"
          f"{f', {cfg.parent_data_share:.0%} parent data' if cfg.parent_data_share else ''}); "
          f"{cfg.finetune} fine-tuning, {trainable:,} trainable parameters", flush=True)
    # A DataLoader of its own generator: the default one draws from torch's global RNG when each
    # iterator starts, which would shift the dropout stream of a resumed run by one draw.
    loader = MixLoader(mix, batch_size=tcfg.batch_size, generator=torch.Generator().manual_seed(tcfg.seed))
    # Imitating every own decision at the temperature it was sampled at leaves the policy where
    # it is in expectation; the signal comes from `wins_only` or `awr_beta`.
    loss = behaviour_cloning(cfg.value_weight, cfg.awr_beta, cfg.awr_max_weight, wins_only=cfg.wins_only)
    trainer = Trainer(tcfg, run, model, loss, loader,
                      val_data=val_batches or None,
                      save_model=checkpoint_saver(cfg, encoder, parent, learner_dir, pretrain_data),
                      run_config={"recipe": "selfplay", **to_dict(cfg)})
    result = trainer.fit()
    epochs = steps * per_step * weights["stage"] / windows  # what `steps` amounts to, when given
    return {"finished": result.finished, "steps": result.step, "max_steps": steps, "epochs": round(epochs, 3),
            "warmup_steps": tcfg.warmup_steps, "windows_per_epoch": windows,
            "decisions_per_epoch": stats["decisions"], "won_trajectories": stats["wins"],
            "finetune": cfg.finetune, "trainable_parameters": trainable,
            "parent_data_share": cfg.parent_data_share, "parent_data": sources.get("parent", []),
            "parent_select": select.get("parent"),
            "last_metrics": result.last_metrics, "val_metrics": result.val_metrics,
            "checkpoint": str(result.final_checkpoint) if result.final_checkpoint else None}


# -- the recipe --------------------------------------------------------------------------------
@owns_run_folder(lambda cfg: cfg.run_dir)
def run(cfg: SelfPlayConfig, server=None) -> dict:
    """Run (or resume) the stage described by `cfg` (on `server`, or its own); returns the lineage record."""
    rundir = Path(cfg.run_dir)
    parent, parent_run, _ = phases.start_run(cfg, rundir, cfg.parent, _MUTABLE, keep=("opponents",),
                                             stage=cfg.stage, recipe="curriculum.stage1_play")
    pretrain_data = pretrain_data_of(parent, parent_run)
    update_lineage(rundir, parent={**read_lineage(rundir)["parent"], "pretrain_data": pretrain_data})
    get_server = ServerOnDemand(server)  # started only when a phase needs it
    play_cfg = PlayConfig.of(cfg)
    plan = [
        phases.play_phase(lambda: phases.play(play_cfg, rundir, parent)),
        phases.build_phase(rundir, {"learner": phases.LEARNER}),
        phases.train_phase(lambda done: train(cfg, rundir, parent, pretrain_data)),
        phases.evaluate_phase(play_cfg, cfg.promotion, rundir, parent, get_server),
    ]
    record, decided = phases.run_and_decide(rundir, plan, cfg.stop_after, parent, server=get_server)  # 5. decide
    if decided:
        print_summary(record)
    return record


def print_summary(record: dict) -> None:
    """The stage in a few lines: play, data, training, tournament, verdict."""
    battles = record["data"]["battles"]
    print(f"\n{record['stage']} ({record['run']}), parent {record['parent']['checkpoint']}")
    for name, b in battles.items():
        print(f"  played {b['battles']:5d} vs {name:16} learner won {b['learner_wins'] / max(b['battles'], 1):.3f}")
    lr = record["data"]["learner"]
    t = record["training"]
    print(f"  learned from {lr['trajectories']} trajectories ({lr['decisions']} decisions); "
          f"{t['steps']} steps, {t['finetune']}, final loss {t['last_metrics'].get('loss', float('nan')):.4f}")
    print("  " + describe(Decision(**record["decision"])).replace("\n", "\n  "))
    print(f"  next stage starts from: {record['output']}\n  lineage: {Path(record['run']) / 'lineage.json'}")


def main(argv: list[str] | None = None) -> None:
    recipe_main(SelfPlayConfig, run, argv, description="Curriculum stage 1: play an opponent pool, learn, promote.",
                example="parent=runs/x/final battles=500")


if __name__ == "__main__":
    main()
