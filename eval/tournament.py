"""Evaluate-against-all: a round-robin tournament of every agent against every other.

    python -m eval.tournament eval/configs/default.yaml [key=value ...] [--servers K] [--workers K]
    scripts/evaluate_against_all.sh eval/configs/default.yaml agents.stage1=policy:runs/stage1/final

Every pair of agents plays every (format, team set). The team pairings are drawn once per
(format, team set) from the seed and shared by every pair; each pairing (X, Y) is played
four times, so each agent plays each team from each side: A(X) as p1, A(X) as p2, A(Y) as
p1, A(Y) as p2. `battles_per_pair` is therefore a multiple of 4.

Overrides: `key=value` sets a config key (`battles_per_pair=80`, `formats=[gen1ou]`,
`backend=server servers=2`); `agents.NAME=SPEC` adds or replaces an agent, `agents.NAME=` drops one.

Battles are played by the one runner (eval/play.py) on the `sim` backend (Showdown's simulator
over pipes; `workers=K` processes, or Ray workers with `ray=auto`) or on `backend=server` (real
local Showdown servers, `servers=K`). Every planned battle has a deterministic key (format, team
set, agents, pairing, variant, teams). Finished battles go to `OUT/results/*.parquet` (one row
each, atomic shards) and their full logs to `OUT/logs/*.parquet` (battles/logs.py). Running the
same command again plays only the battles whose key has no finished row: an interrupted run
resumes, a new agent plays only its new pairs, and battles that ended in an error are tried
again. A battle that times out or whose agent raises is retried up to `max_attempts` times,
then recorded as an error with its reason, never as a result; a server or simulator host that
dies is restarted (up to `max_restarts` times) and its battles replayed without using up a try.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import logging
import secrets
import time
from pathlib import Path

from tqdm import tqdm

from battles.config import from_dict, save_config, to_dict
from battles.server import ServerError, ShowdownServer
from battles.shards import list_shards
from battles.teams import Team, load_team_set
from eval.match import needs_teams
from eval.plan import (
    RESULTS_SCHEMA,
    PlannedBattle,
    TournamentConfig,
    check_specs,
    latest_outcomes,
    load_tournament_config,
    pending_battles,
    plan_battles,
    read_results,
)
from eval.play import Recorder, play, to_record
from eval.runner import Job, Outcome
from eval.workers import auto_workers

log = logging.getLogger(__name__)

@dataclasses.dataclass
class TournamentSummary:
    """What one run did and where the tournament stands."""

    planned: int
    done_before: int
    todo: int
    played: int = 0  # battles finished this run
    errors: int = 0  # battles recorded as errors this run (after every retry)
    faults: int = 0  # failed attempts this run, retried ones included
    restarts: int = 0
    seconds: float = 0.0
    finished: int = 0  # planned battles with a finished row, after this run
    error_rows: int = 0  # planned battles whose outcome is an error, after this run

    @property
    def battles_per_s(self) -> float:
        return (self.played + self.errors) / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "battles_per_s": round(self.battles_per_s, 3)}


class Tournament:
    """Plays the pending battles of a config and appends their results. `servers`: servers to
    use on the server backend (else `cfg.servers` are started and stopped); `keys`: play only
    these planned battles (a worker's share)."""

    def __init__(self, cfg: TournamentConfig, *, servers: list[ShowdownServer] | None = None,
                 progress: bool = True, keys: list[str] | None = None):
        if len(cfg.agents) < 2:
            raise ValueError(f"a tournament needs at least 2 agents, got {list(cfg.agents)}; "
                             "add some with agents.NAME=SPEC")
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.progress = progress
        self._given = list(servers) if servers else None
        self.backend = "server" if servers else cfg.backend  # given servers are played on
        self._keys = set(keys) if keys is not None else None
        self._token = secrets.token_hex(3)
        self._teams: dict[tuple[str, str, str], Team] = {}

    # -- planning ----------------------------------------------------------------------
    def prepare(self) -> tuple[list[PlannedBattle], list[dict], list[PlannedBattle]]:
        """(plan, existing result rows, battles still to play); validates the team sets."""
        team_sets = {}
        for fmt in self.cfg.formats:
            for set_name in self.cfg.team_sets if needs_teams(fmt) else []:
                team_set = load_team_set(set_name, fmt)
                team_sets[(fmt, set_name)] = team_set.teams
                self._teams.update({(fmt, set_name, t.name): t for t in team_set.teams})
        plan = plan_battles(self.cfg, team_sets)
        rows = read_results(self.out)
        check_specs(self.cfg, rows)
        return plan, rows, pending_battles(plan, rows, self.cfg.retry_errors)

    def run(self) -> TournamentSummary:
        """Play every pending battle (Ctrl-C stops cleanly; the next run resumes)."""
        self.out.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            if self._keys is None:  # a worker's share runs under its parent's lock
                lock = stack.enter_context(open(self.out / ".lock", "w"))
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise ValueError(f"another tournament is writing to {self.out}; wait for it or pick "
                                     "another out=") from None
            plan, rows, todo = self.prepare()
            if self._keys is None:
                save_config(self.cfg, self.out / "config.yaml")
            summary = TournamentSummary(len(plan), len(plan) - len(todo), len(todo))
            if self._keys is not None:
                todo = [pb for pb in todo if pb.key in self._keys]
            if self.cfg.max_battles:
                todo = todo[: self.cfg.max_battles]
            start = time.monotonic()
            workers = auto_workers(self.cfg.workers, self.cfg.ray) if self.backend == "sim" else 1
            if todo and (workers > 1 or self.cfg.ray) and self._keys is None:
                from eval.workers import play_shares

                play_shares(_Shares(self, todo, summary), workers, play_share, ray=self.cfg.ray)
            elif todo:
                self._play(plan, todo, summary)
            summary.seconds = time.monotonic() - start
            outcomes = latest_outcomes(read_results(self.out))
            planned = [outcomes[p.key] for p in plan if p.key in outcomes]
            summary.finished = sum(1 for r in planned if not r["error"])
            summary.error_rows = sum(1 for r in planned if r["error"])
        return summary

    # -- playing -------------------------------------------------------------------------
    def _team(self, pb: PlannedBattle, agent: str) -> str | None:
        return self._teams[(pb.format, pb.team_set, pb.team_of(agent))].packed if needs_teams(pb.format) else None

    def _play(self, plan: list[PlannedBattle], todo: list[PlannedBattle], summary: TournamentSummary) -> None:
        cfg = self.cfg
        index = {pb.key: i for i, pb in enumerate(plan)}  # a battle's seed is its place in the plan
        planned = {pb.key: pb for pb in todo}
        jobs = [Job(index[pb.key], (cfg.agents[pb.p1_agent], cfg.agents[pb.p2_agent]), pb.format,
                    (self._team(pb, pb.p1_agent), self._team(pb, pb.p2_agent)), pb.key) for pb in todo]
        recorder = Recorder(self.out / "logs", f"battles-{self._token}", results=self.out / "results",
                            schema=RESULTS_SCHEMA, every=cfg.flush_every, seconds=10.0)

        def on_done(o: Outcome) -> None:
            pb = planned[o.job.key]
            row = self._row(pb, server=o.runner, attempts=o.attempts, seconds=round(o.seconds, 3))
            if o.record is None:
                row.update(error=o.error)
                summary.errors += 1
                recorder.add(None, row)
                return
            record = to_record(o, team_set=pb.team_set if needs_teams(pb.format) else None, token=self._token)
            winner = {"p1": pb.p1_agent, "p2": pb.p2_agent, "": ""}[record.winner]
            row.update(battle_seed=record.seed, winner=winner, score_a=0.5 if winner == "" else float(winner == pb.agent_a),
                       turns=record.turns, battle_id=record.id)
            summary.played += 1
            recorder.add(record, row)

        with tqdm(total=len(todo), desc="tournament", disable=not self.progress) as bar:
            try:
                stats = play(jobs, on_done=on_done, backend=self.backend, servers=self._given or cfg.servers,
                             concurrency=cfg.concurrency, seed=cfg.seed, battle_timeout=cfg.battle_timeout,
                             start_timeout=cfg.start_timeout, max_restarts=cfg.max_restarts,
                             max_attempts=cfg.max_attempts, bar=bar, tick=recorder.tick)
            finally:
                recorder.flush()
        summary.faults += stats.errors
        summary.restarts += stats.restarts

    def _row(self, pb: PlannedBattle, **values) -> dict:
        row = {name: None for name in RESULTS_SCHEMA.names}
        row.update(key=pb.key, format=pb.format, team_set=pb.team_set, agent_a=pb.agent_a,
                   agent_b=pb.agent_b, spec_a=self.cfg.agents[pb.agent_a], spec_b=self.cfg.agents[pb.agent_b],
                   pairing=pb.pairing, variant=pb.variant, team_a=pb.team_a, team_b=pb.team_b,
                   p1_agent=pb.p1_agent, p2_agent=pb.p2_agent, seed=self.cfg.seed, error="",
                   finished_at=time.time())
        row.update(values)
        return row


class _Shares:
    """The tournament's pending battles as worker shares (eval/workers.py): a share is a list of keys."""

    def __init__(self, tournament: Tournament, todo: list[PlannedBattle], summary: TournamentSummary):
        self.t, self.todo, self.summary = tournament, [pb.key for pb in todo], summary
        self.results = tournament.out / "results"
        self.counted = set(list_shards(self.results)) if self.results.is_dir() else set()
        self.written: set[str] = set()
        self.total, self.desc, self.progress = len(todo), "tournament", tournament.progress

    def left(self) -> list[str]:
        """Keys of this run with no row yet (a worker writes each battle's row as it ends; each
        finished shard is read once)."""
        new = set(list_shards(self.results)) - self.counted if self.results.is_dir() else set()
        self.written |= {row["key"] for row in _rows_of(new)}
        self.counted |= new
        return [k for k in self.todo if k not in self.written]

    def remaining(self) -> int:
        return len(self.left())

    def shares(self, k: int, round_: int) -> list[dict]:
        left = self.left()
        cfg = to_dict(dataclasses.replace(self.t.cfg, workers=1, ray=""))
        return [{"config": cfg, "keys": left[i::k]} for i in range(k)]

    def add(self, summary: dict) -> None:
        if "lost" in summary:  # a worker that died: its battles are cut into the next round
            self.summary.restarts += 1
            return
        for key in ("errors", "faults", "restarts"):
            setattr(self.summary, key, getattr(self.summary, key) + summary[key])
        self.summary.played += summary["played"]


def _rows_of(shards) -> list[dict]:
    import pyarrow.parquet as pq

    return [row for shard in sorted(shards) for row in pq.read_table(shard, columns=["key"]).to_pylist()]


def play_share(kwargs: dict) -> dict:
    """One worker's share of a tournament (eval/workers.py runs it in a fresh process): its counts."""
    cfg = from_dict(TournamentConfig, kwargs["config"])
    return Tournament(cfg, progress=False, keys=kwargs["keys"]).run().to_dict()


# -- command line -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run a tournament from a config, then write and print its report."""
    import signal

    from eval.report import write_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML tournament config (see eval/configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. battles_per_pair=80 agents.x=policy:runs/x/final")
    parser.add_argument("--servers", type=int, default=None, help="Showdown servers to run battles on (server backend)")
    parser.add_argument("--workers", type=int, default=None, help="processes, each with a simulator host (sim backend)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("poke_env").setLevel(logging.CRITICAL)
    # `kill` stops as cleanly as Ctrl-C: finished battles are saved, servers stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in (("servers", args.servers), ("workers", args.workers))
                                        if v is not None]
    try:
        cfg = load_tournament_config(args.config, overrides)
        tournament = Tournament(cfg, progress=not args.quiet)
        summary = tournament.run()
    except (ValueError, ServerError) as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        raise SystemExit(f"interrupted; finished battles are saved in {cfg.out}. "
                         "Run the same command to resume.") from None
    s = summary
    print(f"{s.played} battles played and {s.errors} recorded as errors in {s.seconds:.1f}s "
          f"({s.battles_per_s:.2f} battles/s); {s.faults} failed attempts, {s.restarts} restarts.")
    print(f"Plan: {s.planned} battles; {s.finished} finished, {s.error_rows} errors, "
          f"{s.planned - s.finished - s.error_rows} not played yet.")
    plan, rows, _ = tournament.prepare()
    outcomes = latest_outcomes(rows)
    planned_rows = [outcomes[p.key] for p in plan if p.key in outcomes]
    report = write_report(planned_rows, list(cfg.agents), Path(cfg.out) / "report", n_boot=cfg.bootstrap,
                          seed=cfg.seed, anchor=cfg.anchor or None, title=f"Tournament {cfg.out}")
    print()
    print(report.ranking_markdown)
    print()
    for name, path in report.files.items():
        print(f"{name:>16}: {path}")


if __name__ == "__main__":
    main()
