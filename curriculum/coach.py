"""Curriculum stage 2: a coach labels the student's own games; the student learns from the labels.

    python -m curriculum.coach [--config curriculum/configs/stage2.yaml] [--rounds R] [key=value ...]
    scripts/curriculum_stage2.sh student=runs/stage1 coach=runs/coach/final rounds=2 run_dir=runs/stage2

`rounds` rounds chain, each in its own stage run folder RUN/round-k/ (lineage.json, phases/,
config.yaml, battles, trajectories, training state, tournament). Round k starts from the
output of round k-1: its child when promoted, else the same student again. One round reads
top to bottom; each phase leaves a marker in round-k/phases/ and running the same command
again continues where it stopped (finished rounds and phases are not redone):

  1 play      stage 1's play: the student, sampling at `temperature`, plays `battles` battles
              against `opponents` (specs and weights; `self` is the student itself, `coach` the
              coach, both at `temperature`). Against `self` both sides are the student's.
  2 build     stage 1's build: trajectories of both sides, then the student's own into learner/.
  3 label     the coach (agents.coach.Coach at `coach_temperature`) writes its distribution over
              the legal actions into every decision of learner/, offline; teacher_source says
              which coach (shards it already labelled are skipped).
  4 train     the student's weights, `steps` (or `epochs` passes) of exactly `decisions_per_step`
              decisions each, on
                  kl_weight    * KL(coach || student) over the legal actions (decisions with a label)
                + win_weight   * cross-entropy on the student's own actions in battles it won
                + value_weight * (value - outcome)^2
              with the shared Trainer (resumes from round-k/state). The child is round-k/final.
  5 evaluate  stage 1's promotion tournament: child, parent (this round's student), the opponents
              other than `self`, and the coach (`promote_with_coach`).
  6 decide    stage 1's rule; round-k/lineage.json gets the verdict and `output`.

RUN/lineage.json sums the chain up (every round, its verdict and ratings); once all `rounds` are
done its `output` is the last promoted student, so a later stage may take parent=RUN.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

from agents.registry import parse_spec
from battles.build import build
from battles.dataset import DataMix, TrajectoryDataset, collate
from battles.encode import ObservationEncoder
from battles.shards import list_shards
from curriculum.ablate import DecisionBatches
from curriculum.config import load_config, save_config, to_dict
from curriculum.lineage import LINEAGE, read_lineage, resolve_parent, update_lineage
from curriculum.promotion import RULES, Decision, describe
from curriculum.selfplay import (
    PromotionConfig,
    SelfPlayConfig,
    StageTrainerConfig,
    evaluate,
    learner_matcher,
    learner_stats,
    play,
    select_learner,
)
from curriculum.trainer import Trainer
from models.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint

log = logging.getLogger(__name__)
# Stage 1's phase functions and settings (curriculum.selfplay) are reused as they are;
# DecisionBatches (exactly N decisions per step, the unit of the ablation's budgets) lives in the
# data-mix ablation recipe for now. Both are generic enough to move to component modules.

PHASES = ("play", "build", "label", "train", "evaluate")
SELF, COACH = "self", "coach"  # opponent names that stand for the student and the coach
# Keys that may change between invocations: they change how, or how far, not what is computed.
_MUTABLE = {"run_dir", "rounds", "stop_after", "concurrency", "train_threads", "label_batch_size",
            "promotion.concurrency", "promotion.max_battles", "trainer.stop_after_steps",
            "trainer.wandb_mode", "trainer.log_every"}


@dataclass
class CoachStageConfig:
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
    seed: int = 0
    # learning
    kl_weight: float = 1.0
    win_weight: float = 0.5
    value_weight: float = 0.5
    epochs: float = 3.0  # passes over the round's decisions
    steps: int = 0  # > 0: exactly this many steps per round instead of `epochs`
    decisions_per_step: int = 512  # every step learns from exactly this many decisions
    window: int = 64
    val_fraction: float = 0.05
    label_batch_size: int = 16
    train_threads: int = 0  # torch threads while training (0: half the cores, at most 4)
    promote_with_coach: bool = True  # the coach plays in every promotion tournament
    trainer: StageTrainerConfig = field(default_factory=StageTrainerConfig)  # max_steps: from epochs
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    stop_after: str = ""  # play | build | label | train | evaluate: stop the current round there

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds}: must be at least 1")
        if self.coach_temperature <= 0:
            raise ValueError(f"coach_temperature={self.coach_temperature}: must be > 0")
        if min(self.kl_weight, self.win_weight, self.value_weight) < 0 or self.kl_weight + self.win_weight <= 0:
            raise ValueError(f"kl_weight={self.kl_weight}, win_weight={self.win_weight}: must be >= 0 and not "
                             "both 0 (value_weight too must be >= 0)")
        if self.decisions_per_step < 1:
            raise ValueError(f"decisions_per_step={self.decisions_per_step}: must be at least 1")
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
        if self.promotion.rule not in RULES:
            raise ValueError(f"promotion.rule={self.promotion.rule!r}: choose one of {', '.join(RULES)}")


# -- small helpers ----------------------------------------------------------------------
def round_dir(cfg: CoachStageConfig, k: int) -> Path:
    """RUN/round-k: round k's own stage run folder."""
    return Path(cfg.run_dir) / f"round-{k}"


def _policy(path: Path, temperature: float) -> str:
    if "," in str(path):
        raise ValueError(f"checkpoint path {path} contains a comma, which agent specs cannot hold; move it")
    return f"policy:{path},temperature={temperature:g}"


def play_config(cfg: CoachStageConfig, k: int, student: Path, coach: Path) -> SelfPlayConfig:
    """The stage 1 settings that round k plays and judges with (`self` and `coach` resolved)."""
    names = {SELF: _policy(student, cfg.temperature), COACH: _policy(coach, cfg.temperature)}
    opponents = {names.get(s, s): w for s, w in cfg.opponents.items()}
    return SelfPlayConfig(
        run_dir=str(round_dir(cfg, k)), stage=cfg.stage, parent=str(student), format=cfg.format,
        team_set=cfg.team_set, battles=cfg.battles, opponents=opponents, temperature=cfg.temperature,
        concurrency=cfg.concurrency, shard_battles=cfg.shard_battles,
        seed=cfg.seed + 1009 * (k - 1),  # every round draws new teams
        window=cfg.window, val_fraction=cfg.val_fraction, value_weight=cfg.value_weight,
        trainer=cfg.trainer, promotion=cfg.promotion)


def tournament_config(cfg: CoachStageConfig, play_cfg: SelfPlayConfig, coach: Path) -> SelfPlayConfig:
    """The promotion pool: the opponents other than the student itself, and the coach."""
    t = cfg.promotion.temperature
    pool = {(_policy(coach, t) if s == COACH else s): 1.0 for s in cfg.opponents if s != SELF}
    if cfg.promote_with_coach:
        pool[_policy(coach, t)] = 1.0
    return dataclasses.replace(play_cfg, opponents=pool)


def phase_done(run: Path, phase: str) -> dict | None:
    """The summary a finished phase left in RUN/phases/, or None."""
    path = run / "phases" / f"{phase}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def mark(run: Path, phase: str, summary: dict) -> None:
    """Record a finished phase (atomically)."""
    path = run / "phases" / f"{phase}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    os.replace(tmp, path)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "opponents" else {prefix + k: v})
    return out


def check_same_run(cfg: CoachStageConfig, run: Path) -> None:
    """A resumed run keeps the settings its finished work was made with (`rounds` may grow)."""
    saved_path = run / "config.yaml"
    if not saved_path.is_file():
        return
    saved, now = _flatten(yaml.safe_load(saved_path.read_text()) or {}), _flatten(to_dict(cfg))
    changed = [k for k in sorted(set(saved) | set(now)) if k not in _MUTABLE and saved.get(k) != now.get(k)]
    if changed:
        diffs = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ValueError(f"run_dir {run} was started with other settings ({diffs}). Resume with the same "
                         "settings, or give a new run_dir")


def check_checkpoint(path: Path, what: str, encoder: ObservationEncoder) -> None:
    """A missing checkpoint or one of another encoder fails before any battle."""
    info = read_checkpoint_info(path)
    if info.encoder_version != encoder.version or info.vocab_hash != encoder.vocab.hash:
        raise ValueError(f"{what} {path} was trained with another encoder or vocabulary; retrain it with this Qabra")


# -- phase 3: label -------------------------------------------------------------------------
def label(cfg: CoachStageConfig, learner_dir: Path, coach: Path) -> dict:
    """The coach's distribution written into every decision of the student's trajectories."""
    from agents.coach import Coach

    teacher = Coach(coach, temperature=cfg.coach_temperature)
    stats = teacher.label_shards(learner_dir, batch_size=cfg.label_batch_size)
    print(f"label: {stats['trajectories']} trajectories ({stats['decisions']} decisions) labelled by "
          f"{teacher.source}; {stats['skipped_shards']} shard(s) labelled before", flush=True)
    return {"coach": teacher.source, **stats}


def unlabelled(paths: list[Path]) -> list[str]:
    """Shards under `paths` with a row the coach has not labelled."""
    bad = []
    for shard in list_shards(paths):
        sources = pq.read_table(shard, columns=["teacher_source"])["teacher_source"].to_pylist()
        if any(s is None for s in sources):
            bad.append(str(shard))
    return bad


# -- phase 4: train -------------------------------------------------------------------------
def coach_loss(kl_weight: float, win_weight: float, value_weight: float):
    """KL(coach || student) over legal actions + imitation of won battles' own actions + value."""

    def loss_fn(model, batch):
        logits, value = model(batch["tokens"], batch["numbers"], batch["legal"])  # (B,T,13), (B,T)
        action = batch["action"]  # (B, T); -1 where hidden or padding
        outcome = batch["outcome"][:, None].expand_as(value)  # (B, T)
        scored = batch["loss_mask"] & batch["mask"]
        legal_target = batch["legal"].gather(-1, action.clamp(min=0)[..., None]).squeeze(-1)
        # The same decisions as DecisionBatches counts (curriculum.ablate.learnable), so that a
        # budget of decisions is a budget of what the loss learns from.
        learn = scored & (action >= 0) & legal_target
        teacher = batch["teacher"].float()  # (B, T, 13), zero on illegal actions
        labelled = learn & batch["has_teacher"][:, None] & (teacher.sum(-1) > 0)
        won = learn & (batch["outcome"] > 0)[:, None]
        logp = torch.log_softmax(logits.float(), dim=-1)  # illegal logits sit at the dtype's minimum
        if labelled.any():
            p = teacher[labelled]  # (N, 13)
            # KL(p || q) = sum_a p (log p - log q), over actions the coach gives mass only.
            terms = torch.where(p > 0, p * (torch.log(p.clamp(min=1e-12)) - logp[labelled]), torch.zeros_like(p))
            kl = terms.sum(-1).mean()
        else:
            kl = logits.sum() * 0.0
        win_ce = F.nll_loss(logp[won], action[won]) if won.any() else logits.sum() * 0.0
        value_loss = F.mse_loss(value[scored].float(), outcome[scored].float()) if scored.any() else value.sum() * 0.0
        loss = kl_weight * kl + win_weight * win_ce + value_weight * value_loss
        with torch.no_grad():
            agree = ((logits[labelled].argmax(-1) == teacher[labelled].argmax(-1)).float().mean()
                     if labelled.any() else torch.tensor(0.0))
        return loss, {"loss": loss.detach(), "kl": kl.detach(), "win_ce": win_ce.detach(),
                      "value_loss": value_loss.detach(), "coach_agree": agree,
                      "labelled": float(labelled.sum()), "won": float(won.sum()), "decisions": float(learn.sum())}

    return loss_fn


def train_student(cfg: CoachStageConfig, run: Path, parent: Path, data: list[Path], *, steps: int = 0,
                  coach_source: str = "", recipe: str = "coach") -> dict:
    """Fine-tune `parent` on labelled trajectories `data` (resumes from RUN/state); the training summary.

    `steps` > 0 fixes the step count (the ablation's matched budgets); else `cfg.steps`, else
    `cfg.epochs` passes over the decisions of `data`'s training split.
    """
    torch.set_num_threads(cfg.train_threads or min(4, max(1, (os.cpu_count() or 2) // 2)))
    encoder = ObservationEncoder()
    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise ValueError("stage 2 trains in one process; run it without torchrun/accelerate launch")
    bad = unlabelled(data)
    if bad:
        raise ValueError(f"{len(bad)} shard(s) hold trajectories the coach has not labelled ({bad[0]}, ...); "
                         "rerun the stage's command so that its label phase finishes")
    filters = {"formats": [cfg.format], "encoder_version": encoder.version, "val_fraction": cfg.val_fraction}
    decisions = sum(learner_stats(p, cfg.val_fraction)["decisions"] for p in data)
    if decisions == 0:
        raise ValueError(f"no training decisions in {[str(p) for p in data]}: play more battles per round")
    steps = steps or cfg.steps or max(1, math.ceil(cfg.epochs * decisions / cfg.decisions_per_step))
    tcfg = dataclasses.replace(cfg.trainer, max_steps=steps, grad_accum=1,  # a step: one DecisionBatches batch
                               warmup_steps=min(cfg.trainer.warmup_steps, max(1, steps // 10)))
    mix = DataMix({"student": 1.0}, {"student": [str(p) for p in data]}, window=cfg.window, seed=tcfg.seed,
                  split="train", **filters)
    batches = DecisionBatches(mix, cfg.decisions_per_step)
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
    trainer = Trainer(tcfg, run, model, coach_loss(cfg.kl_weight, cfg.win_weight, cfg.value_weight), batches,
                      val_data=val or None, save_model=save, run_config={"recipe": recipe, **to_dict(cfg)})
    result = trainer.fit()
    return {"finished": result.finished, "steps": result.step, "max_steps": steps,
            "decisions_per_step": cfg.decisions_per_step, "decisions_trained": result.step * cfg.decisions_per_step,
            "data_decisions": decisions, "epochs": round(steps * cfg.decisions_per_step / decisions, 3),
            "data": [str(p) for p in data], "warmup_steps": tcfg.warmup_steps, "finetune": "full",
            "parent_data_share": 0.0,
            "weights": {"kl": cfg.kl_weight, "win": cfg.win_weight, "value": cfg.value_weight},
            "last_metrics": result.last_metrics, "val_metrics": result.val_metrics,
            "checkpoint": str(result.final_checkpoint) if result.final_checkpoint else None}


# -- one round ------------------------------------------------------------------------------
def run_round(cfg: CoachStageConfig, k: int, student: Path, student_run: Path | None, coach: Path,
              get_server) -> dict:
    """Run (or resume) round k from `student`; its lineage record (status 'done' once decided)."""
    rundir = round_dir(cfg, k)
    started = read_lineage(rundir) if (rundir / LINEAGE).is_file() else None
    if started and Path(started["parent"]["checkpoint"]) != student:
        raise ValueError(f"{rundir} was started from {started['parent']['checkpoint']}, but round {k} now starts "
                         f"from {student}; an earlier round changed. Delete {rundir} to redo it")
    play_cfg = play_config(cfg, k, student, coach)
    rundir.mkdir(parents=True, exist_ok=True)
    if not (rundir / "config.yaml").is_file():
        save_config({**to_dict(cfg), "run_dir": str(rundir), "student": str(student), "round": k,
                     "resolved_opponents": play_cfg.opponents}, rundir / "config.yaml")
    update_lineage(rundir, stage=cfg.stage, round=k, recipe="curriculum.coach", run=str(rundir),
                   parent={"checkpoint": str(student), "run": str(student_run) if student_run else None,
                           "recipe": read_checkpoint_info(student).metadata.get("recipe")},
                   coach={"checkpoint": str(coach), "temperature": cfg.coach_temperature}, config=to_dict(cfg))
    print(f"\n== round {k} of {cfg.rounds}: student {student} ({rundir})", flush=True)

    def stop_here(phase: str) -> bool:
        if cfg.stop_after == phase:
            print(f"stopped after {phase} (stop_after={phase}); run the command again without it to go on")
        return cfg.stop_after == phase

    # 1. play
    played = phase_done(rundir, "play")
    if played is None:
        played = play(play_cfg, rundir, student, get_server)
        mark(rundir, "play", played)
    record = update_lineage(rundir, status="played", data={"battles": played})
    if stop_here("play"):
        return record

    # 2. build
    built = phase_done(rundir, "build")
    if built is None:
        summary = build([rundir / "battles"], rundir / "trajectories")
        learner = select_learner(rundir / "trajectories", rundir / "learner", learner_matcher(student, cfg.temperature))
        built = {"build": summary, "learner": learner}
        mark(rundir, "build", built)
    record = update_lineage(rundir, status="built", data={"battles": played, **built})
    if stop_here("build"):
        return record

    # 3. label
    labelled = phase_done(rundir, "label")
    if labelled is None:
        labelled = label(cfg, rundir / "learner", coach)
        mark(rundir, "label", labelled)
    record = update_lineage(rundir, status="labelled", labels=labelled,
                            coach={"checkpoint": str(coach), "temperature": cfg.coach_temperature,
                                   "source": labelled["coach"]})
    if stop_here("label"):
        return record

    # 4. train
    trained = phase_done(rundir, "train")
    if trained is None:
        trained = train_student(cfg, rundir, student, [rundir / "learner"], coach_source=labelled["coach"])
        if not trained["finished"]:
            print(f"train: stopped at step {trained['steps']} of {trained['max_steps']}; "
                  "run the same command again to continue", flush=True)
            return update_lineage(rundir, status="training", training=trained)
        mark(rundir, "train", trained)
    record = update_lineage(rundir, status="trained", training=trained)
    if stop_here("train"):
        return record

    # 5. evaluate
    evaluated = phase_done(rundir, "evaluate")
    if evaluated is None:
        evaluated = evaluate(tournament_config(cfg, play_cfg, coach), rundir, student,
                             Path(trained["checkpoint"]), get_server)
        if evaluated.get("decision") is None:
            return update_lineage(rundir, status="evaluating", tournament=evaluated)
        mark(rundir, "evaluate", evaluated)
    if stop_here("evaluate"):
        return update_lineage(rundir, status="evaluated", tournament=evaluated)

    # 6. decide
    decision = evaluated["decision"]
    output = trained["checkpoint"] if decision["promoted"] else str(student)
    if not decision["promoted"]:
        (rundir / "NOT_PROMOTED.txt").write_text(decision["reason"] + f"\nThe student {student} is kept.\n")
    return update_lineage(rundir, status="done", tournament={k: v for k, v in evaluated.items() if k != "decision"},
                          decision=decision, promoted=decision["promoted"], reason=decision["reason"], output=output)


# -- the recipe ------------------------------------------------------------------------------
def round_summary(record: dict) -> dict:
    """One line of RUN/lineage.json's `rounds`: verdict, ratings, data and steps of a round."""
    out = {"round": record["round"], "run": record["run"], "status": record.get("status"),
           "student": record["parent"]["checkpoint"], "promoted": record.get("promoted"),
           "output": record.get("output")}
    if record.get("training"):
        t = record["training"]
        out.update(steps=t["steps"], decisions_trained=t["decisions_trained"], data_decisions=t["data_decisions"],
                   child=t["checkpoint"])
    if record.get("decision"):
        out.update(gain=record["decision"]["gain"], reason=record["reason"],
                   ratings=(record.get("tournament") or {}).get("ratings"))
    return out


def run(cfg: CoachStageConfig, server=None) -> dict:
    """Run (or resume) `cfg.rounds` rounds (on `server`, or its own); returns RUN's lineage record."""
    if not cfg.coach:  # checked here, not in the config: the config's defaults must construct
        raise ValueError("coach is not set: give coach=PATH, a policy checkpoint (or run folder) that "
                         "is larger or later than the student")
    root = Path(cfg.run_dir)
    check_same_run(cfg, root)
    encoder = ObservationEncoder()
    for what, path in (("student", cfg.student), ("coach", cfg.coach)):
        if not Path(path).exists():
            raise ValueError(f"{what} {path} does not exist; give {what}=PATH, a policy checkpoint or the run "
                             "folder of a pretraining run or stage (e.g. python -m curriculum.pretrain preset=small)")
    student, student_run = resolve_parent(cfg.student)
    coach, coach_run = resolve_parent(cfg.coach)
    check_checkpoint(student, "student", encoder)
    check_checkpoint(coach, "coach", encoder)
    if student.resolve() == coach.resolve():
        raise ValueError(f"the coach and the student are the same checkpoint {student}; the coach should be a "
                         "larger or later model")
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "config.yaml").is_file():
        save_config(cfg, root / "config.yaml")
    first = {"checkpoint": str(student), "run": str(student_run) if student_run else None}
    servers: list = []

    def get_server():  # one local Showdown server, started only when a phase needs it
        if server is not None:
            return server
        if not servers:
            from battles.server import ShowdownServer

            servers.append(ShowdownServer().start())
        return servers[0]

    records = []
    try:
        for k in range(1, cfg.rounds + 1):
            rd = round_dir(cfg, k)
            record = read_lineage(rd) if (rd / LINEAGE).is_file() else None
            if record and record.get("status") == "done":
                print(f"round {k}: done before ({'promoted' if record['promoted'] else 'not promoted'}), skipped")
            else:
                record = run_round(cfg, k, student, student_run, coach, get_server)
            records.append(record)
            if record.get("status") != "done":
                break
            student, student_run = Path(record["output"]), rd
    finally:
        for s in servers:
            s.stop()
    done = len(records) == cfg.rounds and records[-1].get("status") == "done"
    summary = update_lineage(
        root, stage=cfg.stage, recipe="curriculum.coach", run=str(root), student=first,
        coach={"checkpoint": str(coach), "run": str(coach_run) if coach_run else None,
               "temperature": cfg.coach_temperature},
        # The chain's parent is its last round (a stage run folder): lineage walks through every round.
        parent={"checkpoint": records[-1].get("output") or str(student), "run": records[-1]["run"]},
        rounds=[round_summary(r) for r in records],
        status="done" if done else f"round {len(records)}: {records[-1].get('status')}",
        promoted=(str(student) != first["checkpoint"]) if done else None,
        output=str(student) if done else None, config=to_dict(cfg))
    print_summary(summary, records)
    return summary


def print_summary(summary: dict, records: list[dict]) -> None:
    """The chain in a few lines per round: data, training, tournament, verdict."""
    print(f"\n{summary['stage']} ({summary['run']}): student {summary['student']['checkpoint']}, "
          f"coach {summary['coach']['checkpoint']}")
    for r in records:
        print(f"round {r['round']}  {r['run']}  [{r.get('status')}]")
        learner = (r.get("data") or {}).get("learner")
        if learner:
            print(f"  data: {learner['trajectories']} trajectories, {learner['decisions']} decisions of the student")
        t = r.get("training")
        if t:
            print(f"  trained: {t['steps']} steps x {t['decisions_per_step']} decisions ({t['epochs']:g} passes); "
                  f"last {', '.join(f'{k} {v:.4f}' for k, v in t['last_metrics'].items() if k in ('kl', 'win_ce', 'coach_agree'))}")
        if r.get("decision"):
            print("  " + describe(Decision(**r["decision"])).replace("\n", "\n  "))
    if summary.get("output"):
        print(f"the next stage starts from: {summary['output']}")
    print(f"lineage: python -m curriculum.lineage {summary['run']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Curriculum stage 2: coach labels on the student's play, in rounds.")
    parser.add_argument("--config", default=None, help="YAML file (e.g. curriculum/configs/stage2.yaml)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds to chain (the config's `rounds`)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. student=runs/stage1 coach=runs/c/final")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("poke_env").setLevel(logging.CRITICAL)
    overrides = list(args.overrides) + ([f"rounds={args.rounds}"] if args.rounds is not None else [])
    try:
        cfg = load_config(CoachStageConfig, args.config, overrides)
        run(cfg)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
