"""Battles recorded in a match folder, counted: the result of a match, and an agent's tally.

The match runner (eval/match.py) counts each battle as it finishes; a rerun, the worker
processes (eval/workers.py) and the study's judge count what the shards already hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from battles.logs import BattleRecord
from eval.ratings import wilson_interval


@dataclass
class MatchResult:
    """What a match produced: counts by agent (not by side), turns, timing, shards."""

    p1_spec: str
    p2_spec: str
    battle_format: str
    battles: int = 0
    p1_wins: int = 0
    p2_wins: int = 0
    ties: int = 0
    errors: int = 0
    restarts: int = 0
    turns: list[int] = field(default_factory=list)
    seconds: float = 0.0
    shards: list[str] = field(default_factory=list)
    played: int | None = None  # battles played by this run, when `battles` counts earlier runs too

    def summary(self) -> dict:
        """The one-line JSON summary of DESIGN's match runner."""
        score = self.p1_wins + 0.5 * self.ties
        lo, hi = wilson_interval(score, self.battles)
        return {
            "p1": self.p1_spec,
            "p2": self.p2_spec,
            "format": self.battle_format,
            "battles": self.battles,
            "p1_wins": self.p1_wins,
            "p2_wins": self.p2_wins,
            "ties": self.ties,
            "errors": self.errors,
            "restarts": self.restarts,
            "p1_winrate": round(score / self.battles, 4) if self.battles else None,
            "ci95": [round(lo, 4), round(hi, 4)],
            "mean_turns": round(sum(self.turns) / len(self.turns), 2) if self.turns else None,
            "battles_per_s": round((self.battles if self.played is None else self.played) / self.seconds, 3)
            if self.seconds else None,
        }


def count(result: MatchResult, record: BattleRecord) -> None:
    """Add one finished battle to the result (the agent p1 plays side p1 on the sim backend)."""
    result.battles += 1
    result.turns.append(record.turns)
    if record.winner == "":
        result.ties += 1
    elif record.specs.get(record.winner) == result.p1_spec and (
            result.p1_spec != result.p2_spec or record.winner == "p1"):
        result.p1_wins += 1
    else:
        result.p2_wins += 1


def add_recorded(result: MatchResult, folder: Path, p1_spec: str, p2_spec: str, battle_format: str,
                 shards=None) -> None:
    """Count into `result` the battles of this pairing and format recorded in `folder` (or in `shards`)."""
    import pyarrow.parquet as pq

    from battles.shards import list_shards

    columns = ["format", "p1_spec", "p2_spec", "winner", "turns"]
    for shard in sorted(shards) if shards is not None else list_shards(folder):
        for row in pq.read_table(shard, columns=columns).to_pylist():
            if row["format"] == battle_format and {row["p1_spec"], row["p2_spec"]} == {p1_spec, p2_spec}:
                count(result, BattleRecord(id="", format=row["format"], players=["", ""], log="", uploadtime=0,
                                           winner=row["winner"], turns=row["turns"],
                                           specs={"p1": row["p1_spec"], "p2": row["p2_spec"]}))


def tally(folder: str | Path, spec: str) -> tuple[int, int, int]:
    """(battles, wins of the agent `spec`, ties) recorded in a match folder (either seat)."""
    from battles.logs import read_battle_logs

    n = wins = ties = 0
    folder = Path(folder)
    for rec in read_battle_logs(folder) if folder.exists() else []:
        n += 1
        ties += not rec.winner
        wins += bool(rec.winner) and rec.specs.get(rec.winner) == spec
    return n, wins, ties
