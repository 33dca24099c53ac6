"""Curriculum stage 2: a coach labels the student's own games; the student learns from the labels.

    python -m curriculum.stage2_coach [--config curriculum/configs/stage2.yaml] [--rounds R] [key=value ...]
    scripts/curriculum_stage2.sh student=runs/stage1 coach=runs/coach/final rounds=2 run_dir=runs/stage2

`rounds` rounds chain, each in its own stage run folder RUN/round-k/ (lineage.json, phases/,
config.yaml, battles, trajectories, training state, tournament). Round k starts from the
output of round k-1: its child when promoted, else the same student again. One round reads
top to bottom; each phase leaves a marker in round-k/phases/ and running the same command
again continues where it stopped (finished rounds and phases are not redone):

  1 play      stage 1's play: the student, sampling at `temperature`, plays `battles` battles
              against `opponents` (specs and weights; `self` is the student itself, `coach` the
              coach, both at `temperature`). Against `self` both sides are the student's: each
              battle records the sides the student played as `learner`.
  2 build     the student's trajectories (the `learner` sides) from the logs into learner/.
  3 label     the coach (agents.coach.Coach at `coach_temperature`) writes its distribution over
              the legal actions of every decision of learner/ as a new label set
              labels/coach-<version>/ (resumable; shards untouched), then learner-labelled/ is
              built from the logs plus that label set (teacher_source says which coach).
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

Play, the build, the promotion tournament and the phase runner are curriculum/phases.py's;
training on the labels is curriculum/distill.py's (the iteration ablation, which runs this
recipe as its chain, trains its controls with it too).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from battles.build import build, by_role
from battles.config import check_same_run, recipe_main, save_config, to_dict
from curriculum import phases
from curriculum.distill import COACH, SELF, CoachStageConfig, train_student
from curriculum.lineage import LINEAGE, read_lineage, resolve_parent, update_lineage
from curriculum.phases import PlayConfig, ServerOnDemand
from curriculum.promotion import Decision, describe
from curriculum.run_folder import owns_run_folder
from models.checkpoint import read_checkpoint_info

log = logging.getLogger(__name__)

_MUTABLE = {"run_dir", "rounds", "stop_after", "concurrency", "workers", "train_threads", "trainer.threads", "label_batch_size",
            "promotion.concurrency", "promotion.max_battles", "trainer.stop_after_steps",
            "trainer.wandb_mode", "trainer.log_every"}


# -- small helpers ----------------------------------------------------------------------
def round_dir(cfg: CoachStageConfig, k: int) -> Path:
    """RUN/round-k: round k's own stage run folder."""
    return Path(cfg.run_dir) / f"round-{k}"


def _policy(path: Path, temperature: float) -> str:
    if "," in str(path):
        raise ValueError(f"checkpoint path {path} contains a comma, which agent specs cannot hold; move it")
    return f"policy:{path},temperature={temperature:g}"


def play_config(cfg: CoachStageConfig, k: int, student: Path, coach: Path) -> PlayConfig:
    """What round k plays with (`self` and `coach` resolved to the student and the coach)."""
    names = {SELF: _policy(student, cfg.temperature), COACH: _policy(coach, cfg.temperature)}
    opponents = {names.get(s, s): w for s, w in cfg.opponents.items()}
    return PlayConfig(format=cfg.format, team_set=cfg.team_set, battles=cfg.battles, opponents=opponents,
                      temperature=cfg.temperature, concurrency=cfg.concurrency, shard_battles=cfg.shard_battles,
                      seed=cfg.seed + 1009 * (k - 1), workers=cfg.workers)  # every round draws new teams


def tournament_config(cfg: CoachStageConfig, play_cfg: PlayConfig, coach: Path) -> PlayConfig:
    """The promotion pool: the opponents other than the student itself, and the coach."""
    t = cfg.promotion.temperature
    pool = {(_policy(coach, t) if s == COACH else s): 1.0 for s in cfg.opponents if s != SELF}
    if cfg.promote_with_coach:
        pool[_policy(coach, t)] = 1.0
    return dataclasses.replace(play_cfg, opponents=pool)


# -- phase 3: label -------------------------------------------------------------------------
def label(cfg: CoachStageConfig, rundir: Path, coach: Path) -> dict:
    """The coach's distribution over every decision of the student's trajectories, written as a new
    label set RUN/labels/coach-<version>/; then the student's trajectories built again from the logs
    plus those labels into RUN/learner-labelled/ (no shard is rewritten)."""
    from agents.coach import Coach

    teacher = Coach(coach, temperature=cfg.coach_temperature)
    manifest = teacher.write_labels(rundir / "learner", rundir / "labels", batch_size=cfg.label_batch_size,
                                    progress=False)
    stats = manifest["counts"]
    built = build([rundir / "battles"], rundir / "learner-labelled", select=by_role(phases.LEARNER),
                  labels=[manifest["path"]], progress=False)
    print(f"label: {stats['trajectories']} trajectories ({stats['decisions']} decisions) labelled by "
          f"{teacher.source} into {manifest['path']}; {stats['skipped_shards']} shard(s) labelled before; "
          f"built with the labels: {json.dumps(built.get('labels', {}))}", flush=True)
    return {"coach": teacher.source, "label_set": manifest["path"], **stats, "build": built}


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
    teacher = {"checkpoint": str(coach), "temperature": cfg.coach_temperature}
    update_lineage(rundir, stage=cfg.stage, round=k, recipe="curriculum.stage2_coach", run=str(rundir),
                   parent={"checkpoint": str(student), "run": str(student_run) if student_run else None,
                           "recipe": read_checkpoint_info(student).metadata.get("recipe")},
                   coach=teacher, config=to_dict(cfg))
    print(f"\n== round {k} of {cfg.rounds}: student {student} ({rundir})", flush=True)

    plan = [
        phases.play_phase(lambda: phases.play(play_cfg, rundir, student,
                                              roles={_policy(student, cfg.temperature): phases.LEARNER})),
        phases.build_phase(rundir, {"learner": phases.LEARNER}),
        phases.Phase("label", lambda done: label(cfg, rundir, coach), "labelled",
                     lambda done: {"labels": done["label"], "coach": {**teacher, "source": done["label"]["coach"]}}),
        phases.train_phase(lambda done: train_student(cfg, rundir, student, [rundir / "learner-labelled"],
                                                      coach_source=done["label"]["coach"])),
        phases.evaluate_phase(tournament_config(cfg, play_cfg, coach), cfg.promotion, rundir, student,
                              get_server),
    ]
    return phases.run_and_decide(rundir, plan, cfg.stop_after, student, kept="student")[0]  # 6. decide


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


@owns_run_folder(lambda cfg: cfg.run_dir)
def run(cfg: CoachStageConfig, server=None) -> dict:
    """Run (or resume) `cfg.rounds` rounds (on `server`, or its own); returns RUN's lineage record."""
    if not cfg.coach:  # checked here, not in the config: the config's defaults must construct
        raise ValueError("coach is not set: give coach=PATH, a policy checkpoint (or run folder) that "
                         "is larger or later than the student")
    root = Path(cfg.run_dir)
    check_same_run(cfg, root, _MUTABLE, keep=("opponents",))  # `rounds` may grow
    for what, path in (("student", cfg.student), ("coach", cfg.coach)):
        if not Path(path).exists():
            raise ValueError(f"{what} {path} does not exist; give {what}=PATH, a policy checkpoint or the run "
                             "folder of a pretraining run or stage (e.g. python -m curriculum.stage0_pretrain preset=small)")
    student, student_run = resolve_parent(cfg.student)
    coach, coach_run = resolve_parent(cfg.coach)
    phases.check_checkpoint(student, "student")
    phases.check_checkpoint(coach, "coach")
    if student.resolve() == coach.resolve():
        raise ValueError(f"the coach and the student are the same checkpoint {student}; the coach should be a "
                         "larger or later model")
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "config.yaml").is_file():
        save_config(cfg, root / "config.yaml")
    first = {"checkpoint": str(student), "run": str(student_run) if student_run else None}
    get_server = ServerOnDemand(server)  # started only when a phase needs it

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
        get_server.stop()
    done = len(records) == cfg.rounds and records[-1].get("status") == "done"
    summary = update_lineage(
        root, stage=cfg.stage, recipe="curriculum.stage2_coach", run=str(root), student=first,
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
    recipe_main(CoachStageConfig, run, argv, description="Curriculum stage 2: coach labels on the student's play, in rounds.",
                example="student=runs/stage1 coach=runs/c/final", flags={"rounds": int})


if __name__ == "__main__":
    main()
