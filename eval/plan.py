"""The tournament plan: its config, the planned battles (deterministic keys, seeded team
pairings), and the results table it resumes from. See eval/tournament.py."""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from agents.registry import parse_spec
from battles.config import load_config
from battles.shards import list_shards
from battles.teams import Team
from eval.match import needs_teams
from eval.play import BACKENDS

log = logging.getLogger(__name__)

RANDOM_TEAMS = "random"  # the team-set name recorded for random-battle formats
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
VARIANTS = ("x1", "x2", "y1", "y2")  # which pairing team agent A gets, and A's side


# -- config ---------------------------------------------------------------------------


@dataclass
class TournamentConfig:
    """One tournament: who plays, where, how much, and how faults are handled. Loaded like every
    config (battles/config.py: defaults, YAML, key=value; `agents.NAME=SPEC` adds an agent,
    `agents.NAME=` drops one) and checked on construction."""

    agents: dict[str, str] = field(default_factory=dict)  # display name -> agent spec
    formats: list[str] = field(default_factory=lambda: ["gen1ou"])
    team_sets: list[str] = field(default_factory=lambda: ["competitive"])
    battles_per_pair: int = 40  # per (format, team set); a multiple of 4
    seed: int = 0
    out: str = "runs/tournament"
    backend: str = "sim"  # sim: Showdown's simulator over pipes; server: the real local server
    servers: int = 1  # server backend: Showdown servers to run battles on
    workers: int = 0  # sim backend: processes, each with its own simulator host (0: what the cores allow)
    ray: str = ""  # sim backend: a Ray address (auto, ray://host:port, local) to run the workers on
    concurrency: int = 16  # battles in flight per server or simulator host
    battle_timeout: float = 120.0  # seconds a battle may go without a decision before it is abandoned
    start_timeout: float = 30.0  # seconds for a challenge to become a battle (server)
    max_attempts: int = 3  # tries per battle before it is recorded as an error (a dying server uses none)
    max_restarts: int = 10  # server or host restarts before the run gives up
    retry_errors: bool = True  # a resumed run tries error rows again
    max_battles: int = 0  # play at most this many battles this run (0: all); resume later
    flush_every: int = 50  # results rows per shard (also flushed every 10 s)
    bootstrap: int = 1000  # bootstrap resamples for the rating intervals
    anchor: str = ""  # agent pinned at 1500 (default: the mean is 1500)

    def __post_init__(self):
        """Check every key; ValueError naming the key and what to do. No agents at all is the
        unfilled default (the loader starts from it); the Tournament refuses it."""
        self.agents = {name: spec.strip() for name, spec in self.agents.items() if spec and spec.strip()}
        if len(self.agents) == 1:
            raise ValueError(f"a tournament needs at least 2 agents, got {list(self.agents)}; "
                             "add some with agents.NAME=SPEC")
        for name, spec in self.agents.items():
            if not _NAME.fullmatch(name):
                raise ValueError(f"agent name {name!r}: use letters, digits and _.+- only")
            parse_spec(spec)  # ValueError naming the spec and the known kinds
        if self.anchor and self.anchor not in self.agents:
            raise ValueError(f"anchor={self.anchor!r} is not an agent; agents: {', '.join(self.agents)}")
        if not self.formats or not self.team_sets:
            raise ValueError("formats and team_sets must each name at least one entry")
        if self.battles_per_pair < 4 or self.battles_per_pair % 4:
            lo = max(4, self.battles_per_pair // 4 * 4)
            raise ValueError(f"battles_per_pair={self.battles_per_pair}: must be a positive multiple of 4 "
                             f"(each team pairing is played with both teams from both sides); try {lo} or {lo + 4}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: pick one of {', '.join(BACKENDS)}")
        for key in ("servers", "concurrency", "max_attempts", "flush_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be at least 1")
        if self.workers < 0:
            raise ValueError(f"workers={self.workers} must be >= 0 (0: what the machine's cores allow)")
        for key in ("battle_timeout", "start_timeout"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}={getattr(self, key)} must be > 0 seconds")
        if self.max_battles < 0 or self.max_restarts < 0 or self.bootstrap < 0:
            raise ValueError("max_battles, max_restarts and bootstrap must be >= 0")
        if (self.workers > 1 or self.ray) and self.backend != "sim":
            raise ValueError(f"workers={self.workers} ray={self.ray!r} need backend=sim (got {self.backend!r})")


def load_tournament_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TournamentConfig:
    """The tournament's config through the one config path (battles/config.py)."""
    return load_config(TournamentConfig, path, list(overrides))


# -- the plan -------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedBattle:
    """One battle of the plan. Agents a < b by name; variant says A's team and side."""

    key: str
    format: str
    team_set: str
    agent_a: str
    agent_b: str
    pairing: int
    variant: str
    team_a: str  # team names ("" for random battles)
    team_b: str

    @property
    def a_side(self) -> str:
        return "p" + self.variant[1]

    @property
    def p1_agent(self) -> str:
        return self.agent_a if self.a_side == "p1" else self.agent_b

    @property
    def p2_agent(self) -> str:
        return self.agent_b if self.a_side == "p1" else self.agent_a

    def team_of(self, agent: str) -> str:
        return self.team_a if agent == self.agent_a else self.team_b


def pairing_seed(seed: int, battle_format: str, team_set: str) -> int:
    """The team-pairing seed of one (format, team set): stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}/{battle_format}/{team_set}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def team_pairings(teams: Sequence[Team], n: int, seed: int) -> list[tuple[str, str]]:
    """n pairings of two different teams, drawn in seeded passes (a longer draw extends a shorter one)."""
    from battles.teams import TeamSampler

    sampler, pairings = TeamSampler(teams, seed), []
    for _ in range(n):
        x = y = sampler.draw(1)[0]
        while y == x and len(teams) > 1:  # a mirror would make the team swap a repeat
            y = sampler.draw(1)[0]
        pairings.append((x.name, y.name))
    return pairings


def plan_battles(cfg: TournamentConfig, team_sets: dict[tuple[str, str], Sequence[Team]]) -> list[PlannedBattle]:
    """Every battle of the tournament, in a fixed order (condition, pair, pairing, variant)."""
    names = sorted(cfg.agents)
    n_pairings = cfg.battles_per_pair // 4
    plan = []
    for fmt in cfg.formats:
        for set_name in (cfg.team_sets if needs_teams(fmt) else [RANDOM_TEAMS]):
            if needs_teams(fmt):
                pairings = team_pairings(team_sets[(fmt, set_name)], n_pairings, pairing_seed(cfg.seed, fmt, set_name))
            else:
                pairings = [("", "")] * n_pairings
            for a, b in itertools.combinations(names, 2):
                for i, (x, y) in enumerate(pairings):
                    for v in VARIANTS:
                        team_a, team_b = (x, y) if v[0] == "x" else (y, x)
                        key = f"{fmt}/{set_name}/{a}/{b}/{i:04d}/{v}/{team_a}/{team_b}"
                        plan.append(PlannedBattle(key, fmt, set_name, a, b, i, v, team_a, team_b))
    assert len({p.key for p in plan}) == len(plan), "planned battle keys must be unique"
    return plan


# -- the results table ----------------------------------------------------------------

RESULTS_SCHEMA = pa.schema([
    ("key", pa.string()), ("format", pa.string()), ("team_set", pa.string()),
    ("agent_a", pa.string()), ("agent_b", pa.string()), ("spec_a", pa.string()), ("spec_b", pa.string()),
    ("pairing", pa.int32()), ("variant", pa.string()), ("team_a", pa.string()), ("team_b", pa.string()),
    ("p1_agent", pa.string()), ("p2_agent", pa.string()),
    ("seed", pa.int64()), ("battle_seed", pa.string()),
    ("winner", pa.string()),  # agent name, "" for a tie, null for an error
    ("score_a", pa.float64()),  # 1 / 0.5 / 0 for agent_a; null for an error
    ("turns", pa.int32()), ("seconds", pa.float64()), ("attempts", pa.int32()),
    ("error", pa.string()),  # "" when the battle finished
    ("battle_id", pa.string()),  # the record's id in OUT/logs
    ("server", pa.int32()), ("finished_at", pa.float64()),
])


def read_results(out: str | Path) -> list[dict]:
    """Every row of OUT/results, oldest shard first (no de-duplication)."""
    folder = Path(out) / "results"
    if not folder.is_dir():
        return []
    rows = []
    for shard in list_shards(folder):
        rows.extend(pq.read_table(shard).to_pylist())
    return rows


def latest_outcomes(rows: Sequence[dict]) -> dict[str, dict]:
    """key -> its outcome: the first finished row, else the last error row."""
    out: dict[str, dict] = {}
    for row in rows:
        prev = out.get(row["key"])
        if prev is None or prev["error"]:
            out[row["key"]] = row
    return out


def check_specs(cfg: TournamentConfig, rows: Sequence[dict]) -> None:
    """ValueError when a name already played under another spec in this results folder."""
    for row in rows:
        for name, spec in ((row["agent_a"], row["spec_a"]), (row["agent_b"], row["spec_b"])):
            if name in cfg.agents and cfg.agents[name] != spec:
                raise ValueError(
                    f"agent {name!r} is {cfg.agents[name]!r} in the config but played as {spec!r} in "
                    f"{cfg.out}; give the new spec another name (agents.NEWNAME=...) or use another out=")


def pending_battles(plan: Sequence[PlannedBattle], rows: Sequence[dict], retry_errors: bool = True) -> list[PlannedBattle]:
    """The planned battles that still need playing, in plan order."""
    outcomes = latest_outcomes(rows)
    todo = []
    for pb in plan:
        row = outcomes.get(pb.key)
        if row is None or (row["error"] and retry_errors):
            todo.append(pb)
    return todo
