"""The phase runner every recipe uses, and the phases the recipes share.

A recipe is a list of named phases run in order (`run_phases`): each finished phase leaves
RUN/phases/PHASE.json with its summary (`mark`), so that running the same command again skips
it (`phase_done`); after each phase RUN/lineage.json gets the phase's status and fields;
`stop_after=PHASE` stops once that phase is done. A phase that returns an unfinished summary
(a training stopped at `trainer.stop_after_steps`, a tournament with battles left) is not
marked: the next run of the command continues it. `start_run` is the start every recipe with
a parent shares: the same settings as before (RUN/config.yaml), the parent resolved and
checked against this encoder, the lineage's header. Battles go to one local Showdown server,
started only when a phase needs one (`ServerOnDemand`).

The phases the recipes share (a learner plays, learns, is judged):

  play       the learner (a checkpoint sampling at a temperature) plays a pool of opponents,
             split by weight; finished battles are counted from the shards, so a restart plays
             only the rest (`play`, settings in `PlayConfig`).
  build      after the build, each side's own trajectories, e.g. the learner's (`build_sides`).
  evaluate   the promotion tournament of child, parent and the pool, and the promotion rule's
             verdict (`evaluate`, settings in `PromotionConfig`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from agents.registry import parse_spec
from battles.build import build, by_role
from battles.config import check_same_run, save_config, to_dict
from battles.dataset import is_validation
from battles.encode import ObservationEncoder
from battles.files import write_json
from battles.logs import count_battles
from battles.shards import list_shards
from curriculum.lineage import resolve_parent, update_lineage
from curriculum.promotion import (
    CHILD,
    PARENT,
    RULES,
    agent_names,
    decide,
    play_tournament,
    write_tournament_report,
)
from curriculum.trainer import TrainerConfig
from eval.report import rate_rows
from eval.workers import auto_workers
from models.checkpoint import read_checkpoint_info

LEARNER = "learner"  # the role the run's own model plays in its battles (recorded with each)


# -- run folders and the phase runner --------------------------------------------------------
def phase_done(run: Path, phase: str) -> dict | None:
    """The summary a finished phase left in RUN/phases/, or None."""
    path = run / "phases" / f"{phase}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def mark(run: Path, phase: str, summary: dict) -> None:
    """Record a finished phase and its summary (atomically)."""
    write_json(run / "phases" / f"{phase}.json", summary)


def stop_here(stop_after: str, phase: str) -> bool:
    """Whether the recipe stops once `phase` is done (`stop_after`); says so when it does."""
    if stop_after == phase:
        print(f"stopped after {phase} (stop_after={phase}); run the command again without it to go on")
    return stop_after == phase


@dataclass
class Phase:
    """One named phase: `run(done)` does it (`done`: the summaries of the phases before) and
    returns its summary; then RUN/lineage.json gets `status` and `record(done)` (`done` now
    holding this phase's summary too). `finished(summary)` false: the phase is not marked,
    the lineage gets `pending` and `record`, and the recipe stops there."""

    name: str
    run: Callable[[dict], dict]
    status: str
    record: Callable[[dict], dict] = lambda done: {}
    finished: Callable[[dict], bool] = lambda summary: True
    pending: str = ""


def run_phases(run: Path, phases: list[Phase], stop_after: str = "") -> tuple[dict, dict | None]:
    """Run `phases` in order, skipping the finished ones; ({phase: summary}, the lineage record
    where it stopped: stop_after or an unfinished phase), or (summaries, None) when all are done."""
    done: dict = {}
    for phase in phases:
        summary = phase_done(run, phase.name)
        if summary is None:
            summary = phase.run(done)
            if not phase.finished(summary):
                return done, update_lineage(run, status=phase.pending, **phase.record({**done, phase.name: summary}))
            mark(run, phase.name, summary)
        done[phase.name] = summary
        record = update_lineage(run, status=phase.status, **phase.record(done))
        if stop_here(stop_after, phase.name):
            return done, record
    return done, None


def run_and_decide(run: Path, phases: list[Phase], stop_after: str, parent: Path, *, kept: str = "parent",
                   server: ServerOnDemand | None = None) -> tuple[dict, bool]:
    """Run `phases` (ending in 'train' and 'evaluate'), then, with all done, the promotion verdict
    (`conclude`); `server`, when given, is stopped once the battles are over. Returns (the lineage
    record, whether the verdict is in)."""
    try:
        done, stopped = run_phases(run, phases, stop_after)
    finally:
        if server is not None:
            server.stop()
    if stopped is not None:
        return stopped, False
    return conclude(run, parent, done["train"], done["evaluate"], kept=kept), True


# -- the start every recipe with a parent shares ----------------------------------------------
def start_run(cfg, run: Path, parent: str | Path, mutable: set[str], *, keep: tuple[str, ...] = (),
              **header) -> tuple[Path, Path | None, dict]:
    """A recipe's start in `run`: the same settings as its finished work (RUN/config.yaml, but for
    `mutable` keys), the parent resolved (checkpoint, the run that made it) and checked against
    this encoder before any battle, RUN/config.yaml, and the lineage's header (`header`, the
    parent, the config). Returns (checkpoint, its run or None, the checkpoint's metadata)."""
    check_same_run(cfg, run, mutable, keep=keep, fix="give a new run_dir for a new stage")
    checkpoint, parent_run = resolve_parent(parent)
    meta = check_checkpoint(checkpoint, "parent")
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "config.yaml").is_file():
        save_config(cfg, run / "config.yaml")
    update_lineage(run, **header, run=str(run),
                   parent={"checkpoint": str(checkpoint), "run": str(parent_run) if parent_run else None,
                           "recipe": meta.get("recipe")}, config=to_dict(cfg))
    return checkpoint, parent_run, meta


def check_checkpoint(path: Path, what: str) -> dict:
    """A missing or broken checkpoint, or one of another encoder, fails here, before any battle;
    its metadata."""
    info = read_checkpoint_info(path)
    encoder = ObservationEncoder()
    if info.encoder_version != encoder.version or info.vocab_hash != encoder.vocab.hash:
        raise ValueError(f"{what} {path} was trained with another encoder or vocabulary; retrain it with this Qabra")
    return info.metadata


class ServerOnDemand:
    """The Showdown server of a recipe's phases: the one given, else its own, started at the first
    call. `stop()` stops only a server it started."""

    def __init__(self, server=None):
        self.given, self.own = server, None

    def __call__(self):
        if self.given is not None:
            return self.given
        if self.own is None:
            from battles.server import ShowdownServer

            self.own = ShowdownServer().start()
        return self.own

    def stop(self) -> None:
        """Stop the server this started, if any."""
        if self.own is not None:
            self.own.stop()
            self.own = None


# -- settings ------------------------------------------------------------------------------
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

    def __post_init__(self) -> None:
        if self.battles_per_pair < 4 or self.battles_per_pair % 4:
            raise ValueError(f"promotion.battles_per_pair={self.battles_per_pair}: must be a positive multiple of 4")
        if self.rule not in RULES:
            raise ValueError(f"promotion.rule={self.rule!r}: choose one of {', '.join(RULES)}")
        if not 0 < self.level < 1:
            raise ValueError(f"promotion.level={self.level}: must be in (0, 1), e.g. 0.95")
        if self.temperature < 0:
            raise ValueError(f"promotion.temperature={self.temperature}: must be >= 0")


@dataclass
class PlayConfig:
    """Who the learner plays, how much and on what; as the pool, who judges the child."""

    format: str
    team_set: str
    battles: int
    opponents: dict[str, float]  # agent spec -> share of the battles
    temperature: float  # the learner's sampling temperature while playing
    concurrency: int
    shard_battles: int  # battles per log shard while playing: a kill loses at most these
    seed: int
    workers: int = 1  # processes, each with its own simulator host (0: what the machine's cores allow)

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers={self.workers}: must be >= 0 (0: what the machine's cores allow)")
        if self.battles < 1:
            raise ValueError(f"battles={self.battles}: must be at least 1")
        if not self.opponents or any(not w >= 0 for w in self.opponents.values()) or sum(self.opponents.values()) <= 0:
            raise ValueError(f"opponents={self.opponents}: give agent specs with weights >= 0 and a positive "
                             "sum, e.g. opponents={tactician: 0.5, maxbp: 0.5}")
        for spec in self.opponents:
            parse_spec(spec)  # ValueError naming the spec and the known kinds
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0")

    @classmethod
    def of(cls, settings, **overrides) -> PlayConfig:
        """The play settings of a recipe's config (its fields of these names), then `overrides`."""
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)
                      if hasattr(settings, f.name)} | overrides)


# -- play ----------------------------------------------------------------------------------
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


def shard_sizes(paths: list[Path]) -> list[dict]:
    """Path, rows and bytes of each Parquet shard."""
    return [{"path": str(p), "rows": pq.read_metadata(p).num_rows, "bytes": p.stat().st_size} for p in paths]


def battle_stats(folder: Path) -> dict:
    """Battles in a folder of log shards, and how many the learner won (the roles recorded with each)."""
    stats = {"battles": 0, "learner_wins": 0, "ties": 0}
    shards = list_shards(folder) if folder.exists() else []
    for shard in shards:
        for row in pq.read_table(shard, columns=["winner", "roles"]).to_pylist():
            stats["battles"] += 1
            stats["ties"] += row["winner"] == ""
            stats["learner_wins"] += bool(row["winner"]) and json.loads(row["roles"] or "{}").get(row["winner"]) == LEARNER
    stats["shards"] = shard_sizes(shards)
    return stats


def play(cfg: PlayConfig, run: Path, parent: Path, learner_params: str = "",
         roles: dict[str, str] | None = None) -> dict:
    """Play the remaining battles against each opponent; returns per-opponent counts and wins.

    The learner plays p1 and each battle records it as `learner`; `roles` names the part of an
    opponent (spec -> role: `learner` for the learner's own copy, `expert` for a search bot).
    `learner_params` ('key=value,...') are added to the learner's spec (e.g. a searcher labelling its positions).
    """
    from eval.match import Match

    quotas = apportion(cfg.battles, cfg.opponents)
    names = agent_names(list(cfg.opponents))
    summary = {}
    for i, (spec, n) in enumerate(quotas.items()):
        folder = run / "battles" / names[spec]
        have = count_battles(folder) if folder.exists() else 0
        if have < n:
            seed = cfg.seed * 1_000_003 + 10_007 * i + have  # a restart draws new teams, never repeats
            print(f"play: {n - have} battles against {spec} ({have} already recorded)", flush=True)
            learner = learner_spec(parent, cfg.temperature, seed) + (f",{learner_params}" if learner_params else "")
            # Showdown's simulator in a host process of its own (eval/runner.py): no server needed.
            Match(learner, spec, battle_format=cfg.format, n=n - have,
                  out_dir=folder, team_set=cfg.team_set, concurrency=cfg.concurrency, seed=seed,
                  backend="sim", shard_size=cfg.shard_battles, workers=auto_workers(cfg.workers),
                  roles={"p1": LEARNER, **({"p2": roles[spec]} if spec in (roles or {}) else {})}).run()
        summary[names[spec]] = {"spec": spec, "weight": cfg.opponents[spec], **battle_stats(folder)}
    return summary


# -- build: the trajectories, and each side's own ----------------------------------------------
def build_sides(run: Path, sides: dict[str, str], labels: dict[str, Path] | None = None,
                label_temperature: float = 1.0) -> dict:
    """The trajectories of each role recorded with the battles of RUN/battles into RUN/<role>/, built
    from the logs plus that role's label set (`labels`: role -> label folder), if any; `sides` maps a
    folder name to the role it holds. Built battles are skipped, so a stopped build resumes."""
    summary = {}
    for name, role in sides.items():
        labelled = (labels or {}).get(name)
        labelled = labelled if labelled is not None and Path(labelled).exists() else None  # nothing recorded
        built = build([run / "battles"], run / name, select=by_role(role), progress=False,
                      labels=[labelled] if labelled else None, label_temperature=label_temperature)
        print(f"build: {name}: {json.dumps(built)}", flush=True)
        summary[name] = {"build": built, **learner_stats(run / name)}
    return {"build": {n: v["build"] for n, v in summary.items()}, **summary}


def select_rows(traj_dir: Path, out: Path, keep, prefix: str = "learner") -> dict:
    """Copy the trajectories whose rows `keep(table) -> bools` accepts into `out` (complete or absent)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, shard in enumerate(list_shards(traj_dir)):
        with pq.ParquetFile(shard) as pf:
            writer = None
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g)
                rows = np.array(keep(table), dtype=bool)
                if rows.any():
                    writer = writer or pq.ParquetWriter(tmp / f"{prefix}-{i:05d}.parquet", pf.schema_arrow,
                                                        compression="zstd")
                    writer.write_table(table.filter(pa.array(rows)))
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


# -- evaluate ------------------------------------------------------------------------------
def evaluate(pool: PlayConfig, p: PromotionConfig, run: Path, parent: Path, child: Path, get_server) -> dict:
    """The promotion tournament of child, parent and `pool.opponents` (resumes); with every battle
    played, the ratings and the verdict."""
    names = agent_names(list(pool.opponents))
    play_as = f"temperature={p.temperature:g}"
    agents = {CHILD: f"policy:{child},{play_as}", PARENT: f"policy:{parent},{play_as}",
              **{names[s]: s for s in pool.opponents}}
    n_pairs = len(agents) * (len(agents) - 1) // 2
    print(f"evaluate: tournament of {', '.join(agents)}; {p.battles_per_pair} battles per pair, "
          f"{n_pairs * p.battles_per_pair} in all", flush=True)
    result = play_tournament(agents, battle_format=pool.format, team_set=pool.team_set,
                             battles_per_pair=p.battles_per_pair, out=run / "tournament", seed=p.seed,
                             concurrency=p.concurrency, bootstrap=p.bootstrap, max_battles=p.max_battles,
                             server=get_server(), progress=True)
    status = {"out": result.out, "agents": agents, "planned": result.planned, "finished": result.finished,
              "errors": result.errors}
    if not result.complete:
        print(f"evaluate: {result.finished + result.errors} of {result.planned} tournament battles done; "
              "run the same command again to continue", flush=True)
        return status
    ratings = rate_rows(result.rows, list(agents), n_boot=p.bootstrap, seed=p.seed, level=p.level)
    report = write_tournament_report(result, list(agents), n_boot=p.bootstrap, seed=p.seed)
    return {**status, "report": str(report),
            "ratings": {n: {"rating": round(float(ratings.rating[i]), 1), "lo": round(float(ratings.lo[i]), 1),
                            "hi": round(float(ratings.hi[i]), 1), "battles": int(ratings.games[i])}
                        for i, n in enumerate(ratings.names)},
            "decision": decide(ratings, rule=p.rule, level=p.level).to_dict()}


# -- decide --------------------------------------------------------------------------------
def conclude(run: Path, parent: Path, trained: dict, evaluated: dict, kept: str = "parent") -> dict:
    """The verdict of a finished promotion tournament into RUN/lineage.json (status 'done',
    `output`: the child when promoted, else `parent`); NOT_PROMOTED.txt says why when not."""
    decision = evaluated["decision"]
    output = trained["checkpoint"] if decision["promoted"] else str(parent)
    if not decision["promoted"]:
        (run / "NOT_PROMOTED.txt").write_text(decision["reason"] + f"\nThe {kept} {parent} is kept.\n")
    return update_lineage(run, status="done", tournament={k: v for k, v in evaluated.items() if k != "decision"},
                          decision=decision, promoted=decision["promoted"], reason=decision["reason"], output=output)


# -- the phases of a learner that plays, learns and is judged ---------------------------------
def play_phase(play_it: Callable[[], dict]) -> Phase:
    """'play': `play_it()` plays the battles (RUN/battles/); the lineage's data.battles."""
    return Phase("play", lambda done: play_it(), "played", lambda done: {"data": {"battles": done["play"]}})


def build_phase(run: Path, sides: dict[str, str], labels: dict[str, Path] | None = None,
                label_temperature: float = 1.0) -> Phase:
    """'build': each role's trajectories from the logs plus its labels (`build_sides`), into the lineage's data."""
    return Phase("build", lambda done: build_sides(run, sides, labels, label_temperature), "built",
                 lambda done: {"data": {"battles": done["play"], **done["build"]}})


def train_phase(train_it: Callable[[dict], dict]) -> Phase:
    """'train': `train_it(done)` trains the child (resumable: unfinished until every step ran)."""
    return Phase("train", train_it, "trained", lambda done: {"training": done["train"]}, finished=trained,
                 pending="training")


def evaluate_phase(pool: PlayConfig, promotion: PromotionConfig, run: Path, parent: Path, get_server) -> Phase:
    """'evaluate': the promotion tournament of the child, `parent` and `pool` (resumable)."""
    return Phase("evaluate", lambda done: evaluate(pool, promotion, run, parent, Path(done["train"]["checkpoint"]),
                                                   get_server),
                 "evaluated", lambda done: {"tournament": done["evaluate"]}, finished=judged, pending="evaluating")


def judged(summary: dict) -> bool:
    """Whether a promotion tournament has every battle played (and so a verdict)."""
    return summary.get("decision") is not None


def trained(summary: dict) -> bool:
    """Whether a training phase ran all its steps (else it says how to go on)."""
    if not summary["finished"]:
        print(f"train: stopped at step {summary['steps']} of {summary['max_steps']}; "
              "run the same command again to continue", flush=True)
    return summary["finished"]
