"""Play N real battles between two agents and record them.

    python -m eval.match --p1 maxbp --p2 random --format gen1ou --team-set competitive \
        -n 100 --concurrency 16 --out runs/match [--backend sim|server] [--workers K] [ray=auto]

Ends with one JSON line: battles, p1_wins, p2_wins, ties, errors, p1_winrate, ci95,
mean_turns, battles_per_s. "p1" means the agent given as --p1. The flags are the MatchConfig's
keys; `--config FILE.yaml` and `key=value` overrides work as for every command (battles/config.py).

Battles are played by the one runner (eval/play.py, DESIGN "Where battles are played"): on
`sim` (the default: Showdown's simulator hosted by a Node process over pipes) or on `server`
(the real local Showdown server over websockets); both record the same `BattleRecord`s. A host
or server that dies mid-run (or stalls) is restarted and the battles it held are counted in
`errors` and played again, so the run ends with N finished battles. Finished battles reach a
shard within `flush_seconds`; the command line resumes (a rerun into the same --out plays only
what is missing of N); `--workers K` splits the match over K processes, each with its own
simulator host, and `ray=ADDRESS` runs those workers on a Ray cluster (eval/workers.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import secrets
import signal
import time
from pathlib import Path

from tqdm import tqdm

from battles.config import load_config
from battles.server import ShowdownServer
from battles.shards import list_shards
from eval.play import BACKENDS, Recorder, play, to_record
from eval.ratings import wilson_interval
from eval.recorded import MatchResult, add_recorded, count, tally
from eval.runner import Job, Outcome
from eval.workers import auto_workers

log = logging.getLogger(__name__)

SEED_STRIDE = 1_000_003  # share k of round r plays seed + (r * 10_000 + k + 1) * SEED_STRIDE


def needs_teams(battle_format: str) -> bool:
    """Random-battle formats bring their own teams; every other format needs a team set."""
    return "random" not in battle_format


@dataclasses.dataclass
class MatchConfig:
    """The match command's settings (checked on construction)."""

    p1: str = ""  # agent spec, e.g. maxbp or policy:runs/x/final
    p2: str = ""
    format: str = "gen1ou"
    team_set: str = "competitive"  # ignored for random battles
    n: int = 100  # battles to finish in total in `out`, counting earlier runs
    concurrency: int = 16
    seed: int = 0
    out: str = "runs/match"
    backend: str = "sim"  # sim: Showdown's simulator over pipes; server: the real local server
    workers: int = 0  # sim: processes, each with its own simulator host (0: what the cores allow)
    ray: str = ""  # sim: run the workers on Ray (auto, ray://HOST:PORT, or local)
    flush_seconds: float = 5.0  # finished battles reach a shard at most this long after they end
    port: int = 0  # server: the port (0: a free one)
    quiet: bool = False  # no progress bar

    def __post_init__(self):
        from agents.registry import parse_spec

        for key in ("p1", "p2"):
            if getattr(self, key):
                parse_spec(getattr(self, key))  # ValueError naming the spec and the known kinds
        if self.n < 1:
            raise ValueError(f"n={self.n} must be at least 1")
        if self.concurrency < 1:
            raise ValueError(f"concurrency={self.concurrency} must be at least 1")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: pick one of {', '.join(BACKENDS)}")
        if self.workers < 0:
            raise ValueError(f"workers={self.workers} must be >= 0 (0: what the machine's cores allow)")
        if self.flush_seconds < 0:
            raise ValueError(f"flush_seconds={self.flush_seconds} must be >= 0")


class Match:
    """Plays `n` battles of `p1_spec` (challenger, side p1) against `p2_spec` and records each one.

    `backend`: "sim" or "server"; left out, it is "server" when a `server` is given, else "sim".
    `resume`: `n` counts the battles of this pairing already in `out_dir`.
    """

    def __init__(
        self,
        p1_spec: str,
        p2_spec: str,
        *,
        battle_format: str,
        n: int,
        out_dir: str | Path,
        team_set: str | None = None,
        concurrency: int = 16,
        seed: int = 0,
        server: ShowdownServer | None = None,
        stall_timeout: float = 120.0,  # seconds without a message (sim) or a decision (server)
        max_restarts: int = 10,
        progress: bool = True,
        shard_size: int = 500,
        backend: str | None = None,
        resume: bool = False,
        flush_seconds: float = 5.0,
        workers: int = 1,
        ray: str = "",
        roles: dict[str, str] | None = None,
    ):
        backend = backend or ("server" if server is not None else "sim")
        if not p1_spec or not p2_spec:
            raise ValueError("a match needs two agents: give --p1 and --p2")
        MatchConfig(p1=p1_spec, p2=p2_spec, n=n, concurrency=concurrency, backend=backend, workers=workers)
        if (workers > 1 or ray) and backend != "sim":
            raise ValueError(f"workers={workers} ray={ray!r} need the sim backend (got backend={backend!r})")
        if needs_teams(battle_format) and not team_set:
            raise ValueError(f"format {battle_format} needs a team set: pass --team-set (e.g. competitive)")
        self.p1_spec, self.p2_spec = p1_spec, p2_spec
        self.battle_format = battle_format
        self.n = n
        self.out_dir = Path(out_dir)
        self.team_set_name = team_set if needs_teams(battle_format) else None
        self.concurrency = concurrency
        self.seed = seed
        self.server = server
        self.stall_timeout = stall_timeout
        self.max_restarts = max_restarts
        self.progress = progress
        self.shard_size = shard_size
        self.backend = backend
        self.resume = resume
        self.flush_seconds = flush_seconds
        self.workers, self.ray = workers, ray
        self.roles = dict(roles or {})  # side -> its part in the run ({"p1": "learner"}), recorded with each battle
        if set(self.roles) - {"p1", "p2"}:
            raise ValueError(f"roles={roles}: keys are sides, p1 or p2")
        self._token = secrets.token_hex(4)

    def _jobs(self, n: int) -> list[Job]:
        """n battles of the pair, each with its teams drawn from the team set (seeded)."""
        samplers = (None, None)
        if self.team_set_name:
            from battles.teams import load_team_set

            team_set = load_team_set(self.team_set_name, self.battle_format)
            samplers = (team_set.sampler(2 * self.seed), team_set.sampler(2 * self.seed + 1))
        specs = (self.p1_spec, self.p2_spec)
        roles = (self.roles.get("p1", ""), self.roles.get("p2", ""))
        return [Job(i, specs, self.battle_format, tuple(s and s.yield_team() for s in samplers), roles=roles)
                for i in range(n)]

    def run(self) -> MatchResult:
        """Play all battles (starting a server or a simulator host as needed) and return the result."""
        if self.workers > 1 or self.ray:
            from eval.workers import play_shares

            shares = _MatchShares(self)
            lost = play_shares(shares, self.workers, play_share, ray=self.ray)
            return shares.result(lost)
        result = MatchResult(self.p1_spec, self.p2_spec, self.battle_format)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.resume:
            add_recorded(result, self.out_dir, self.p1_spec, self.p2_spec, self.battle_format)
            self.seed += result.battles  # fresh seeds and team draws for the battles still to play
        recorder = Recorder(self.out_dir, f"battles-{self._token}", every=self.shard_size, seconds=self.flush_seconds)

        def on_done(o: Outcome) -> None:
            record = to_record(o, team_set=self.team_set_name, token=self._token)
            recorder.add(record)
            count(result, record)

        start = time.monotonic()
        with tqdm(total=self.n, initial=result.battles, desc=f"{self.p1_spec} vs {self.p2_spec}",
                  disable=not self.progress) as bar:
            try:
                stats = play(self._jobs(max(0, self.n - result.battles)), on_done=on_done, backend=self.backend,
                             servers=[self.server] if self.server else 1, concurrency=self.concurrency,
                             seed=self.seed, battle_timeout=self.stall_timeout, max_restarts=self.max_restarts,
                             bar=bar, tick=recorder.tick)
            finally:
                recorder.flush()
        result.errors, result.restarts, result.played = stats.errors, stats.restarts, stats.battles
        result.seconds = time.monotonic() - start
        result.shards = recorder.shards
        return result


class _MatchShares:
    """A match's battles as worker shares (eval/workers.py): each share a one-process Match."""

    def __init__(self, match: Match):
        self.m = match
        match.out_dir.mkdir(parents=True, exist_ok=True)
        self.before = set(list_shards(match.out_dir))
        self.counted = set(self.before)
        self.new = MatchResult(match.p1_spec, match.p2_spec, match.battle_format)
        self.total = match.n - (self._count(self.before).battles if match.resume else 0)
        self.desc, self.progress = f"{match.p1_spec} vs {match.p2_spec}", match.progress
        self.errors = self.restarts = 0
        self.start = time.monotonic()

    def _count(self, shards) -> MatchResult:
        m = self.m
        result = MatchResult(m.p1_spec, m.p2_spec, m.battle_format)
        add_recorded(result, m.out_dir, m.p1_spec, m.p2_spec, m.battle_format, shards=shards)
        return result

    def remaining(self) -> int:
        m = self.m  # each shard is read once: a finished shard never changes
        new = set(list_shards(m.out_dir)) - self.counted
        add_recorded(self.new, m.out_dir, m.p1_spec, m.p2_spec, m.battle_format, shards=new)
        self.counted |= new
        return self.total - self.new.battles

    def shares(self, k: int, round_: int) -> list[dict]:
        m, remaining = self.m, self.remaining()
        return [dict(p1_spec=m.p1_spec, p2_spec=m.p2_spec, battle_format=m.battle_format,
                     n=remaining // k + (i < remaining % k), out_dir=str(m.out_dir), team_set=m.team_set_name,
                     concurrency=m.concurrency, seed=m.seed + (round_ * 10_000 + i + 1) * SEED_STRIDE,
                     stall_timeout=m.stall_timeout, max_restarts=m.max_restarts, progress=False,
                     shard_size=m.shard_size, backend="sim", flush_seconds=m.flush_seconds, roles=m.roles)
                for i in range(k)]

    def add(self, summary: dict) -> None:
        self.errors += summary.get("errors", 0) + summary.get("lost", 0)
        self.restarts += summary.get("restarts", 0) + summary.get("lost", 0)

    def result(self, lost: int) -> MatchResult:
        after = set(list_shards(self.m.out_dir))
        result = self._count(after if self.m.resume else after - self.before)
        result.played = self.new.battles
        result.errors, result.restarts = self.errors, self.restarts
        result.seconds = time.monotonic() - self.start
        result.shards = [str(p) for p in sorted(after - self.before)]
        return result


def folder_name(spec: str) -> str:
    """An agent spec as a folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)


def play_over_team_sets(agent: str, opponent: str, n: int, team_sets: list[str], out: str | Path, *,
                        battle_format: str, seed: int, concurrency: int, server) -> dict:
    """`n` battles of `agent` against `opponent` split evenly over the team sets, one folder each
    under `out`; a rerun plays only what is missing. Counts, win rate, 95% interval, per set."""
    per_set = -(-n // len(team_sets))
    total = wins = ties = 0
    by_set = {}
    for j, team_set in enumerate(team_sets):
        folder = Path(out) / f"{folder_name(opponent)}-{team_set}"
        have = tally(folder, agent)[0]
        if have < per_set:
            Match(agent, opponent, battle_format=battle_format, team_set=team_set, n=per_set - have,
                  out_dir=folder, concurrency=concurrency, seed=seed + j + have, server=server,
                  progress=False).run()
        b, w, t = tally(folder, agent)
        by_set[team_set] = (w + 0.5 * t) / b
        total, wins, ties = total + b, wins + w, ties + t
    lo, hi = wilson_interval(wins + 0.5 * ties, total)
    return {"battles": total, "wins": wins, "ties": ties, "winrate": (wins + 0.5 * ties) / total,
            "ci95": [lo, hi], "by_team_set": by_set}


def play_share(kwargs: dict) -> dict:
    """One worker's share of a match (eval/workers.py runs it in a fresh process): its counts."""
    result = Match(**kwargs).run()
    return {"errors": result.errors, "restarts": result.restarts}


def run_config(cfg: MatchConfig) -> MatchResult:
    """The match a MatchConfig names; a rerun into the same `out` resumes."""
    server = ShowdownServer(cfg.port or None) if cfg.backend == "server" else None
    try:
        return Match(cfg.p1, cfg.p2, battle_format=cfg.format, n=cfg.n, out_dir=cfg.out, team_set=cfg.team_set,
                     concurrency=cfg.concurrency, seed=cfg.seed, server=server, progress=not cfg.quiet,
                     backend=cfg.backend, resume=True, workers=auto_workers(cfg.workers, cfg.ray) if cfg.backend == "sim" else 1, ray=cfg.ray,
                     flush_seconds=cfg.flush_seconds).run()
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> None:
    """The command line: familiar flags and `key=value` overrides, loaded as one MatchConfig."""
    from agents.registry import known_agents

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="YAML file of MatchConfig keys")
    parser.add_argument("--p1", help=f"agent spec ({', '.join(known_agents())}, ...)")
    parser.add_argument("--p2", help="agent spec")
    parser.add_argument("--format", help="Showdown format id (gen1ou)")
    parser.add_argument("--team-set", dest="team_set", help="team set name or folder (competitive)")
    parser.add_argument("-n", help="battles to finish in total in --out, counting earlier runs (100)")
    parser.add_argument("--concurrency", help="battles in flight per host or server (16)")
    parser.add_argument("--seed")
    parser.add_argument("--out", help="folder for the battle log shards (runs/match)")
    parser.add_argument("--backend", choices=BACKENDS, help="sim (default) or server")
    parser.add_argument("--workers", help="sim: processes, each with its own simulator host (0: what the cores allow)")
    parser.add_argument("--flush-seconds", dest="flush_seconds", help="seconds before a finished battle is on disk")
    parser.add_argument("--port", help="server backend: the port (default: a free one)")
    parser.add_argument("--quiet", action="store_const", const="true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. ray=auto")
    args = parser.parse_args(argv)
    flags = [f"{k}={v}" for k, v in vars(args).items() if k not in ("config", "overrides") and v is not None]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("poke_env").setLevel(logging.CRITICAL)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops as cleanly as Ctrl-C
    try:
        result = run_config(load_config(MatchConfig, args.config, flags + list(args.overrides)))
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        raise SystemExit("interrupted; finished battles are kept. Run the same command to resume.") from None
    print(json.dumps(result.summary()), flush=True)


if __name__ == "__main__":
    main()
