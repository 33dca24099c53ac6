"""Curriculum stage 1: play a pool of opponents, learn from that play, promote only what is better.

    python -m curriculum.selfplay [--config curriculum/configs/stage1.yaml] [key=value ...]
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

Play, the learner's selection and the promotion tournament are curriculum/phases.py's,
shared with stage 2 (curriculum/coach.py); training is this file's own.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from battles.build import build
from battles.dataset import DataMix, MixLoader, Selection, TrajectoryDataset, collate
from battles.encode import ObservationEncoder
from battles.shards import list_shards
from battles.config import check_same_run, recipe_main, save_config, to_dict
from curriculum.lineage import resolve_parent, update_lineage
from curriculum.phases import (
    PlayConfig,
    PromotionConfig,
    ServerOnDemand,
    StageTrainerConfig,
    conclude,
    evaluate,
    learner_matcher,
    learner_stats,
    mark,
    phase_done,
    play,
    select_learner,
    shard_sizes,
    stop_here,
)
from curriculum.promotion import Decision, describe
from curriculum.run_folder import owns_run_folder
from curriculum.trainer import Trainer
from models.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint

log = logging.getLogger(__name__)

PHASES = ("play", "build", "train", "evaluate")
# Keys that may change between invocations of one run: they change how, not what, is computed.
_MUTABLE = {"run_dir", "stop_after", "concurrency", "train_threads", "promotion.concurrency", "promotion.max_battles",
            "trainer.stop_after_steps", "trainer.max_steps", "trainer.wandb_mode", "trainer.log_every"}


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
    train_threads: int = 0  # torch threads while training (0: half the cores, at most 4)
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
def stage_loss(cfg: SelfPlayConfig):
    """Masked imitation of the learner's play (its wins only, or advantage-weighted) + value regression.

    Imitating every own decision at the temperature it was sampled at leaves the policy where
    it is in expectation; the signal comes from `wins_only` or `awr_beta`. The value head
    always learns from every decision, so that wins-only imitation does not teach it that
    every position is won.
    """

    def loss_fn(model, batch):
        logits, value = model(batch["tokens"], batch["numbers"], batch["legal"])  # (B,T,13), (B,T)
        action = batch["action"]  # (B, T); -1 where hidden or padding
        outcome = batch["outcome"][:, None].expand_as(value)  # (B, T)
        scored = batch["loss_mask"] & batch["mask"]
        legal_target = batch["legal"].gather(-1, action.clamp(min=0)[..., None]).squeeze(-1)
        bc = scored & (action >= 0) & legal_target
        if cfg.wins_only:
            bc = bc & (batch["outcome"] > 0)[:, None]
        ce = F.cross_entropy(logits[bc].float(), action[bc], reduction="none")
        if cfg.awr_beta > 0 and ce.numel():
            # The critic is the model's own value head, detached: decisions that went better
            # than expected are imitated more, worse ones less (advantage-weighted regression).
            weight = torch.exp((outcome - value.detach())[bc].float() / cfg.awr_beta).clamp(max=cfg.awr_max_weight)
            policy_loss = (weight * ce).sum() / weight.sum().clamp(min=1e-8)
        else:
            weight = torch.ones_like(ce)
            policy_loss = ce.mean() if ce.numel() else logits.sum() * 0.0
        value_loss = F.mse_loss(value[scored].float(), outcome[scored].float()) if scored.any() else value.sum() * 0.0
        loss = policy_loss + cfg.value_weight * value_loss
        with torch.no_grad():
            acc = (logits[bc].argmax(-1) == action[bc]).float().mean() if bc.any() else torch.tensor(0.0)
            ess = (weight.sum() ** 2 / (weight ** 2).sum().clamp(min=1e-8) / max(ce.numel(), 1)) if ce.numel() else 0.0
        return loss, {"loss": loss.detach(), "policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
                      "acc": acc, "awr_ess": float(ess), "decisions": float(bc.sum())}

    return loss_fn


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
    # Spinning intra-op threads on a busy machine cost far more than they give: a tiny model
    # trained 6x slower with 2 threads than with 1 on a shared 2-core box.
    torch.set_num_threads(cfg.train_threads or min(4, max(1, (os.cpu_count() or 2) // 2)))
    encoder = ObservationEncoder()
    learner_dir = run / "learner"
    filters = {"formats": [cfg.format], "encoder_version": encoder.version, "val_fraction": cfg.val_fraction}
    windows = TrajectoryDataset(learner_dir, window=cfg.window, split="train", **filters).num_samples()
    stats = learner_stats(learner_dir, cfg.val_fraction)
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
    trainer = Trainer(tcfg, run, model, stage_loss(cfg), loader,
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
    check_same_run(cfg, rundir, _MUTABLE, keep=("opponents",), fix="give a new run_dir for a new stage")
    parent, parent_run = resolve_parent(cfg.parent)
    info = read_checkpoint_info(parent)  # a missing or broken parent fails here, before any battle
    encoder = ObservationEncoder()
    if info.encoder_version != encoder.version or info.vocab_hash != encoder.vocab.hash:
        raise ValueError(f"parent {parent} was trained with another encoder or vocabulary; retrain it with this Qabra")
    rundir.mkdir(parents=True, exist_ok=True)
    if not (rundir / "config.yaml").is_file():
        save_config(cfg, rundir / "config.yaml")
    pretrain_data = pretrain_data_of(parent, parent_run)
    update_lineage(rundir, stage=cfg.stage, recipe="curriculum.selfplay", run=str(rundir),
                   parent={"checkpoint": str(parent), "run": str(parent_run) if parent_run else None,
                           "recipe": info.metadata.get("recipe"), "pretrain_data": pretrain_data},
                   config=to_dict(cfg))
    get_server = ServerOnDemand(server)  # started only when a phase needs it
    play_cfg = PlayConfig.of(cfg)
    try:
        # 1. play
        played = phase_done(rundir, "play")
        if played is None:
            played = play(play_cfg, rundir, parent, get_server)
            mark(rundir, "play", played)
        record = update_lineage(rundir, status="played", data={"battles": played})
        if stop_here(cfg.stop_after, "play"):
            return record

        # 2. build
        built = phase_done(rundir, "build")
        if built is None:
            summary = build([rundir / "battles"], rundir / "trajectories")
            print("build:", json.dumps(summary), flush=True)
            learner = select_learner(rundir / "trajectories", rundir / "learner",
                                     learner_matcher(parent, cfg.temperature))
            built = {"build": summary, "learner": learner,
                     "trajectories": shard_sizes(list_shards(rundir / "trajectories"))}
            mark(rundir, "build", built)
        record = update_lineage(rundir, status="built", data={
            "battles": played, "build": built["build"], "trajectories": built["trajectories"],
            "learner": built["learner"]})
        if stop_here(cfg.stop_after, "build"):
            return record

        # 3. train
        trained = phase_done(rundir, "train")
        if trained is None:
            trained = train(cfg, rundir, parent, pretrain_data)
            if not trained["finished"]:
                print(f"train: stopped at step {trained['steps']} of {trained['max_steps']}; "
                      "run the same command again to continue", flush=True)
                return update_lineage(rundir, status="training", training=trained)
            mark(rundir, "train", trained)
        record = update_lineage(rundir, status="trained", training=trained)
        if stop_here(cfg.stop_after, "train"):
            return record

        # 4. evaluate
        evaluated = phase_done(rundir, "evaluate")
        if evaluated is None:
            evaluated = evaluate(play_cfg, cfg.promotion, rundir, parent, Path(trained["checkpoint"]), get_server)
            if evaluated.get("decision") is None:
                return update_lineage(rundir, status="evaluating", tournament=evaluated)
            mark(rundir, "evaluate", evaluated)
        if stop_here(cfg.stop_after, "evaluate"):
            return update_lineage(rundir, status="evaluated", tournament=evaluated)
    finally:
        get_server.stop()

    # 5. decide
    record = conclude(rundir, parent, trained, evaluated)
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
