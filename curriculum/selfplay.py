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
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
import yaml

from agents.registry import parse_spec
from battles.build import build
from battles.dataset import DataMix, MixLoader, TrajectoryDataset, collate, is_validation
from battles.encode import ObservationEncoder
from battles.logs import count_battles
from battles.shards import list_shards
from curriculum.config import load_config, save_config, to_dict
from curriculum.lineage import resolve_parent, update_lineage
from curriculum.promotion import (
    CHILD,
    PARENT,
    RULES,
    Decision,
    agent_names,
    decide,
    describe,
    play_tournament,
    rate_results,
    write_tournament_report,
)
from curriculum.trainer import Trainer, TrainerConfig
from models.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint

log = logging.getLogger(__name__)

PHASES = ("play", "build", "train", "evaluate")
# Keys that may change between invocations of one run: they change how, not what, is computed.
_MUTABLE = {"run_dir", "stop_after", "concurrency", "train_threads", "promotion.concurrency", "promotion.max_battles",
            "trainer.stop_after_steps", "trainer.max_steps", "trainer.wandb_mode", "trainer.log_every"}


@dataclass
class StageTrainerConfig(TrainerConfig):
    """The shared trainer's settings with fine-tuning defaults (a subclass, so that YAML or
    key=value overrides of a few trainer keys keep these defaults for the others)."""

    lr: float = 1e-4
    warmup_steps: int = 20
    checkpoint_every: int = 100
    eval_every: int = 100


@dataclass
class PromotionConfig:
    """The promotion tournament and rule."""

    battles_per_pair: int = 100  # per pair of agents; a multiple of 4
    rule: str = "lower_above_parent"  # | disjoint (stricter)
    level: float = 0.95  # bootstrap interval
    bootstrap: int = 1000
    temperature: float = 1.0  # how child and parent play in the tournament (0: arg-max)
    concurrency: int = 16
    seed: int = 0
    max_battles: int = 0  # >0: play at most this many tournament battles per invocation


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
        if self.battles < 1:
            raise ValueError(f"battles={self.battles}: must be at least 1")
        if not self.opponents or any(not w >= 0 for w in self.opponents.values()) or sum(self.opponents.values()) <= 0:
            raise ValueError(f"opponents={self.opponents}: give agent specs with weights >= 0 and a positive "
                             "sum, e.g. opponents={tactician: 0.5, maxbp: 0.5}")
        for spec in self.opponents:
            parse_spec(spec)  # ValueError naming the spec and the known kinds
        if self.temperature < 0 or self.promotion.temperature < 0:
            raise ValueError("temperature and promotion.temperature must be >= 0")
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
        p = self.promotion
        if p.battles_per_pair < 4 or p.battles_per_pair % 4:
            raise ValueError(f"promotion.battles_per_pair={p.battles_per_pair}: must be a positive multiple of 4")
        if p.rule not in RULES:
            raise ValueError(f"promotion.rule={p.rule!r}: choose one of {', '.join(RULES)}")
        if not 0 < p.level < 1:
            raise ValueError(f"promotion.level={p.level}: must be in (0, 1), e.g. 0.95")


# -- small helpers ----------------------------------------------------------------------
def apportion(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total` battles by weight (largest remainder; every count is a whole number)."""
    s = sum(weights.values())
    exact = {k: total * w / s for k, w in weights.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (counts[k] - exact[k], k))[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def learner_spec(parent: Path, temperature: float, seed: int) -> str:
    """The agent spec the learner plays under while collecting data."""
    if "," in str(parent):
        raise ValueError(f"parent path {parent} contains a comma, which agent specs cannot hold; move it")
    return f"policy:{parent},temperature={temperature:g},seed={seed}"


def learner_matcher(parent: Path, temperature: float):
    """A predicate: is this recorded agent spec the learner (the parent at this temperature)?"""
    cache: dict[str, bool] = {}
    target = parent.resolve()

    def is_learner(spec: str | None) -> bool:
        if not spec:
            return False
        if spec not in cache:
            parsed = parse_spec(spec)
            cache[spec] = (parsed.kind == "policy" and Path(parsed.params["path"]).resolve() == target
                           and not parsed.params.get("greedy")
                           and float(parsed.params.get("temperature", 1.0)) == float(temperature))
        return cache[spec]

    return is_learner


def _phase_done(run: Path, phase: str) -> dict | None:
    path = run / "phases" / f"{phase}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _mark(run: Path, phase: str, summary: dict) -> None:
    path = run / "phases" / f"{phase}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    os.replace(tmp, path)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "opponents":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def check_same_run(cfg: SelfPlayConfig, run: Path) -> None:
    """A resumed run must keep the settings its finished work was made with."""
    saved_path = run / "config.yaml"
    if not saved_path.is_file():
        return
    saved = _flatten(yaml.safe_load(saved_path.read_text()) or {})
    now = _flatten(to_dict(cfg))
    changed = [k for k in sorted(set(saved) | set(now)) if k not in _MUTABLE and saved.get(k) != now.get(k)]
    if changed:
        diffs = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ValueError(f"run_dir {run} was started with other settings ({diffs}). Resume with the same "
                         "settings, or give a new run_dir for a new stage")


def _shard_sizes(paths: list[Path], count) -> list[dict]:
    return [{"path": str(p), "rows": count(p), "bytes": p.stat().st_size} for p in paths]


# -- phase 1: play ------------------------------------------------------------------------
def battle_stats(folder: Path, is_learner) -> dict:
    """Battles in a folder of log shards, and how many the learner won (from three small columns)."""
    stats = {"battles": 0, "learner_wins": 0, "ties": 0}
    shards = list_shards(folder) if folder.exists() else []
    for shard in shards:
        t = pq.read_table(shard, columns=["winner", "p1_spec", "p2_spec"]).to_pylist()
        for row in t:
            stats["battles"] += 1
            stats["ties"] += row["winner"] == ""
            stats["learner_wins"] += bool(row["winner"]) and is_learner(row[f"{row['winner']}_spec"])
    stats["shards"] = _shard_sizes(shards, lambda p: pq.read_metadata(p).num_rows)
    return stats


def play(cfg: SelfPlayConfig, run: Path, parent: Path, get_server) -> dict:
    """Play the remaining battles against each opponent; returns per-opponent counts and wins."""
    from eval.match import Match

    quotas = apportion(cfg.battles, cfg.opponents)
    names = agent_names(list(cfg.opponents))
    is_learner = learner_matcher(parent, cfg.temperature)
    summary = {}
    for i, (spec, n) in enumerate(quotas.items()):
        folder = run / "battles" / names[spec]
        have = count_battles(folder) if folder.exists() else 0
        if have < n:
            seed = cfg.seed * 1_000_003 + 10_007 * i + have  # a restart draws new teams, never repeats
            print(f"play: {n - have} battles against {spec} ({have} already recorded)", flush=True)
            Match(learner_spec(parent, cfg.temperature, seed), spec, battle_format=cfg.format, n=n - have,
                  out_dir=folder, team_set=cfg.team_set, concurrency=cfg.concurrency, seed=seed,
                  server=get_server(), shard_size=cfg.shard_battles).run()
        summary[names[spec]] = {"spec": spec, "weight": cfg.opponents[spec], **battle_stats(folder, is_learner)}
    return summary


# -- phase 2: build -------------------------------------------------------------------------
def select_learner(traj_dir: Path, out: Path, is_learner) -> dict:
    """Copy the learner's own trajectories into `out`, one row group at a time."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, shard in enumerate(list_shards(traj_dir)):
        with pq.ParquetFile(shard) as pf:
            writer = None
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g)
                keep = np.array([is_learner(a) for a in table["agent"].to_pylist()], dtype=bool)
                if keep.any():
                    writer = writer or pq.ParquetWriter(tmp / f"learner-{i:05d}.parquet", pf.schema_arrow,
                                                        compression="zstd")
                    writer.write_table(table.filter(pa.array(keep)))
            if writer is not None:
                writer.close()
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # the selection is complete or absent
    return learner_stats(out)


def learner_stats(folder: Path, val_fraction: float | None = None) -> dict:
    """Trajectories, decisions, wins and shard sizes of a trajectory folder (optionally the train split)."""
    stats = {"trajectories": 0, "decisions": 0, "wins": 0, "shards": []}
    for shard in list_shards(folder):
        t = pq.read_table(shard, columns=["battle_id", "n_decisions", "outcome"])
        rows = list(zip(*(t[c].to_pylist() for c in ("battle_id", "n_decisions", "outcome"))))
        if val_fraction is not None:
            rows = [r for r in rows if not is_validation(r[0], val_fraction)]
        stats["trajectories"] += len(rows)
        stats["decisions"] += sum(r[1] for r in rows)
        stats["wins"] += sum(r[2] == 1 for r in rows)
        stats["shards"].append({"path": str(shard), "trajectories": len(t), "bytes": shard.stat().st_size})
    return stats


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
    mix = DataMix(weights, sources, window=cfg.window, seed=tcfg.seed, split="train", **filters)
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
            "last_metrics": result.last_metrics, "val_metrics": result.val_metrics,
            "checkpoint": str(result.final_checkpoint) if result.final_checkpoint else None}


# -- phase 4: evaluate ------------------------------------------------------------------------
def evaluate(cfg: SelfPlayConfig, run: Path, parent: Path, child: Path, get_server) -> dict:
    """The promotion tournament (resumes); with every battle played, the ratings and the verdict."""
    p = cfg.promotion
    names = agent_names(list(cfg.opponents))
    play_as = f"temperature={p.temperature:g}"
    agents = {CHILD: f"policy:{child},{play_as}", PARENT: f"policy:{parent},{play_as}",
              **{names[s]: s for s in cfg.opponents}}
    n_pairs = len(agents) * (len(agents) - 1) // 2
    print(f"evaluate: tournament of {', '.join(agents)}; {p.battles_per_pair} battles per pair, "
          f"{n_pairs * p.battles_per_pair} in all", flush=True)
    result = play_tournament(agents, battle_format=cfg.format, team_set=cfg.team_set,
                             battles_per_pair=p.battles_per_pair, out=run / "tournament", seed=p.seed,
                             concurrency=p.concurrency, bootstrap=p.bootstrap, max_battles=p.max_battles,
                             server=get_server(), progress=True)
    status = {"out": result.out, "agents": agents, "planned": result.planned, "finished": result.finished,
              "errors": result.errors}
    if not result.complete:
        print(f"evaluate: {result.finished + result.errors} of {result.planned} tournament battles done; "
              "run the same command again to continue", flush=True)
        return status
    ratings = rate_results(result.rows, list(agents), n_boot=p.bootstrap, seed=p.seed, level=p.level)
    report = write_tournament_report(result, list(agents), n_boot=p.bootstrap, seed=p.seed)
    return {**status, "report": str(report),
            "ratings": {n: {"rating": round(float(ratings.rating[i]), 1), "lo": round(float(ratings.lo[i]), 1),
                            "hi": round(float(ratings.hi[i]), 1), "battles": int(ratings.games[i])}
                        for i, n in enumerate(ratings.names)},
            "decision": decide(ratings, rule=p.rule, level=p.level).to_dict()}


# -- the recipe --------------------------------------------------------------------------------
def run(cfg: SelfPlayConfig, server=None) -> dict:
    """Run (or resume) the stage described by `cfg` (on `server`, or its own); returns the lineage record."""
    rundir = Path(cfg.run_dir)
    check_same_run(cfg, rundir)
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
    servers: list = []

    def get_server():  # one local Showdown server, started only when a phase needs it
        if server is not None:
            return server
        if not servers:
            from battles.server import ShowdownServer

            servers.append(ShowdownServer().start())
        return servers[0]

    def stop_here(phase: str) -> bool:
        if cfg.stop_after == phase:
            print(f"stopped after {phase} (stop_after={phase}); run the command again without it to go on")
        return cfg.stop_after == phase

    try:
        # 1. play
        played = _phase_done(rundir, "play")
        if played is None:
            played = play(cfg, rundir, parent, get_server)
            _mark(rundir, "play", played)
        record = update_lineage(rundir, status="played", data={"battles": played})
        if stop_here("play"):
            return record

        # 2. build
        built = _phase_done(rundir, "build")
        if built is None:
            summary = build([rundir / "battles"], rundir / "trajectories")
            print("build:", json.dumps(summary), flush=True)
            learner = select_learner(rundir / "trajectories", rundir / "learner",
                                     learner_matcher(parent, cfg.temperature))
            built = {"build": summary, "learner": learner,
                     "trajectories": _shard_sizes(list_shards(rundir / "trajectories"),
                                                  lambda p: pq.read_metadata(p).num_rows)}
            _mark(rundir, "build", built)
        record = update_lineage(rundir, status="built", data={
            "battles": played, "build": built["build"], "trajectories": built["trajectories"],
            "learner": built["learner"]})
        if stop_here("build"):
            return record

        # 3. train
        trained = _phase_done(rundir, "train")
        if trained is None:
            trained = train(cfg, rundir, parent, pretrain_data)
            if not trained["finished"]:
                print(f"train: stopped at step {trained['steps']} of {trained['max_steps']}; "
                      "run the same command again to continue", flush=True)
                return update_lineage(rundir, status="training", training=trained)
            _mark(rundir, "train", trained)
        record = update_lineage(rundir, status="trained", training=trained)
        if stop_here("train"):
            return record

        # 4. evaluate
        evaluated = _phase_done(rundir, "evaluate")
        if evaluated is None:
            evaluated = evaluate(cfg, rundir, parent, Path(trained["checkpoint"]), get_server)
            if evaluated.get("decision") is None:
                return update_lineage(rundir, status="evaluating", tournament=evaluated)
            _mark(rundir, "evaluate", evaluated)
        if stop_here("evaluate"):
            return update_lineage(rundir, status="evaluated", tournament=evaluated)
    finally:
        for s in servers:
            s.stop()

    # 5. decide
    decision = evaluated["decision"]
    output = trained["checkpoint"] if decision["promoted"] else str(parent)
    record = update_lineage(rundir, status="done", tournament={k: v for k, v in evaluated.items() if k != "decision"},
                            decision=decision, promoted=decision["promoted"], reason=decision["reason"],
                            output=output)
    if not decision["promoted"]:
        (rundir / "NOT_PROMOTED.txt").write_text(decision["reason"] + f"\nThe parent {parent} is kept.\n")
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
    parser = argparse.ArgumentParser(description="Curriculum stage 1: play an opponent pool, learn, promote.")
    parser.add_argument("--config", default=None, help="YAML file (e.g. curriculum/configs/stage1.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. parent=runs/x/final battles=500")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("poke_env").setLevel(logging.CRITICAL)
    try:
        cfg = load_config(SelfPlayConfig, args.config, args.overrides)
        run(cfg)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
