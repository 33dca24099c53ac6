"""Recorded battles: every battle Qabra plays, kept as a replay-shaped log plus exact choices.

The local server writes one JSON per finished battle (battles/showdown_config.js).
`BattleRecord.from_server_json` turns it into a record; `BattleLogWriter` stores records
in Parquet shards (atomic: temporary name, then rename); `read_battle_logs` streams them
back. `record.replay` has the same shape as a public Showdown replay (`id`, `format`,
`players`, `log`, `uploadtime`, `rating`), so our battles and human replays enter the
data pipeline the same way.

A record also keeps the room it was played in (labels recorded live name their battle by it,
battles/labels.py) and each side's role in the run that played it (`roles`, e.g.
{"p1": "learner"}): whoever needs the learner's decisions selects them by role, not by
re-reading agent specs. Records written before these columns read back with room "" and no roles.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from battles.protocol import to_id
from battles.shards import list_shards, next_shard_path, write_table_atomic

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("format", pa.string()),
        ("p1", pa.string()),
        ("p2", pa.string()),
        ("log", pa.string()),
        ("uploadtime", pa.int64()),
        ("rating", pa.float32()),
        ("winner", pa.string()),  # 'p1', 'p2' or '' for a tie
        ("turns", pa.int32()),
        ("end_type", pa.string()),
        ("p1_spec", pa.string()),
        ("p2_spec", pa.string()),
        ("team_set", pa.string()),
        ("p1_team", pa.string()),  # JSON: the exact team in team order, as the player knew it
        ("p2_team", pa.string()),
        ("p1_choices", pa.list_(pa.string())),
        ("p2_choices", pa.list_(pa.string())),
        ("seed", pa.string()),
        ("input_log", pa.list_(pa.string())),
        ("room", pa.string()),  # the room id the battle was played in ('gen1ou-123')
        ("roles", pa.string()),  # JSON: side -> role in the run that played it ({"p1": "learner"})
    ]
)


@dataclass
class BattleRecord:
    """One finished battle: its spectator log, both players' exact choices and teams."""

    id: str
    format: str
    players: list[str]
    log: str
    uploadtime: int
    winner: str  # 'p1' | 'p2' | '' (tie)
    turns: int
    choices: dict[str, list[str]] = field(default_factory=lambda: {"p1": [], "p2": []})
    teams: dict[str, list[dict] | None] = field(default_factory=lambda: {"p1": None, "p2": None})
    specs: dict[str, str] = field(default_factory=lambda: {"p1": "", "p2": ""})
    team_set: str | None = None
    rating: float | None = None
    end_type: str = "normal"
    seed: str | None = None
    input_log: list[str] = field(default_factory=list)
    room: str = ""
    roles: dict[str, str] = field(default_factory=dict)

    @property
    def replay(self) -> dict:
        """The record in the shape of a public Showdown replay."""
        return {
            "id": self.id,
            "format": self.format,
            "formatid": self.format,
            "players": list(self.players),
            "log": self.log,
            "uploadtime": self.uploadtime,
            "rating": self.rating,
        }

    @classmethod
    def from_server_json(
        cls,
        data: dict,
        *,
        specs: dict[str, str] | None = None,
        team_set: str | None = None,
        id_prefix: str = "",
        roles: dict[str, str] | None = None,
    ) -> BattleRecord:
        """Build a record from the JSON our server config writes for a finished battle; `roles`
        names each side's part in the run ({"p1": "learner"})."""
        for key in ("roomid", "format", "players", "log", "inputLog"):
            if key not in data:
                raise ValueError(f"server battle record lacks '{key}': {str(data)[:200]}")
        players = [p or "" for p in data["players"]]
        winner_id = to_id(data.get("winner") or "")
        winner = next((s for s, name in zip(("p1", "p2"), players) if winner_id and to_id(name) == winner_id), "")
        choices: dict[str, list[str]] = {"p1": [], "p2": []}
        for line in data["inputLog"]:
            side = line[1:3]
            if line.startswith(">p") and side in choices and line[3:4] == " ":
                choices[side].append(line[4:])
        roomid = data["roomid"].removeprefix("battle-")
        seed = data.get("seed")
        return cls(
            id=f"{id_prefix}{roomid}",
            format=data["format"],
            players=players,
            log=data["log"],
            uploadtime=int(data.get("uploadtime") or 0),
            winner=winner,
            turns=int(data.get("turns") or 0),
            choices=choices,
            teams={"p1": data.get("p1team"), "p2": data.get("p2team")},
            specs=dict(specs or {"p1": "", "p2": ""}),
            team_set=team_set,
            end_type=data.get("endType") or "normal",
            seed=seed if isinstance(seed, str) or seed is None else json.dumps(seed),
            input_log=list(data["inputLog"]),
            room=roomid,
            roles=check_roles(roles or {}),
        )

    def to_row(self) -> dict:
        return {
            "id": self.id,
            "format": self.format,
            "p1": self.players[0],
            "p2": self.players[1],
            "log": self.log,
            "uploadtime": self.uploadtime,
            "rating": self.rating,
            "winner": self.winner,
            "turns": self.turns,
            "end_type": self.end_type,
            "p1_spec": self.specs.get("p1", ""),
            "p2_spec": self.specs.get("p2", ""),
            "team_set": self.team_set,
            "p1_team": json.dumps(self.teams.get("p1")),
            "p2_team": json.dumps(self.teams.get("p2")),
            "p1_choices": self.choices.get("p1", []),
            "p2_choices": self.choices.get("p2", []),
            "seed": self.seed,
            "input_log": self.input_log,
            "room": self.room,
            "roles": json.dumps(check_roles(self.roles)),
        }

    @classmethod
    def from_row(cls, row: dict) -> BattleRecord:
        return cls(
            id=row["id"],
            format=row["format"],
            players=[row["p1"], row["p2"]],
            log=row["log"],
            uploadtime=row["uploadtime"],
            rating=row["rating"],
            winner=row["winner"],
            turns=row["turns"],
            end_type=row["end_type"],
            specs={"p1": row["p1_spec"], "p2": row["p2_spec"]},
            team_set=row["team_set"],
            teams={"p1": json.loads(row["p1_team"]), "p2": json.loads(row["p2_team"])},
            choices={"p1": list(row["p1_choices"]), "p2": list(row["p2_choices"])},
            seed=row["seed"],
            input_log=list(row["input_log"]),
            room=row.get("room") or "",  # absent in records written before rooms were kept
            roles=json.loads(row.get("roles") or "{}"),
        )


def check_roles(roles: dict) -> dict[str, str]:
    """`roles` if it maps sides ('p1', 'p2') to non-empty names; else a ValueError naming it."""
    if not isinstance(roles, dict) or not all(s in ("p1", "p2") and isinstance(r, str) and r
                                              for s, r in roles.items()):
        raise ValueError(f"roles={roles!r}: give a mapping of sides 'p1'/'p2' to role names, "
                         "e.g. {'p1': 'learner'}")
    return dict(roles)


class BattleLogWriter:
    """Appends battle records to Parquet shards `<prefix>-NNNNN.parquet` in `out_dir`.

    A shard is written when `battles_per_shard` records are pending and on `close()`;
    each write is atomic, so a crash loses at most the pending records, never a shard.
    """

    def __init__(self, out_dir: str | Path, prefix: str = "battles", battles_per_shard: int = 500):
        if battles_per_shard < 1:
            raise ValueError(f"battles_per_shard must be >= 1, got {battles_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.battles_per_shard = battles_per_shard
        self.pending: list[BattleRecord] = []
        self.written = 0
        self.shards: list[Path] = []

    def add(self, record: BattleRecord) -> None:
        self.pending.append(record)
        if len(self.pending) >= self.battles_per_shard:
            self.flush()

    def flush(self) -> Path | None:
        """Write pending records as one complete shard."""
        if not self.pending:
            return None
        table = pa.Table.from_pylist([r.to_row() for r in self.pending], schema=SCHEMA)
        path = write_table_atomic(table, next_shard_path(self.out_dir, self.prefix))
        self.written += len(self.pending)
        self.pending = []
        self.shards.append(path)
        return path

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> BattleLogWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Records already finished are worth keeping even when the caller failed.
        self.close()


def read_battle_logs(paths: str | Path | Iterable[str | Path], batch_size: int = 64) -> Iterator[BattleRecord]:
    """Stream battle records from shards (files or folders), one row batch at a time."""
    for shard in list_shards(paths):
        pf = pq.ParquetFile(shard)
        if not {"id", "log", "p1_choices"} <= set(pf.schema_arrow.names):
            continue  # another kind of shard in the same tree (trajectories, results)
        for batch in pf.iter_batches(batch_size=batch_size):
            for row in batch.to_pylist():
                yield BattleRecord.from_row(row)


def count_battles(paths: str | Path | Iterable[str | Path]) -> int:
    """Number of recorded battles in the shards, from Parquet metadata only."""
    total = 0
    for shard in list_shards(paths):
        meta = pq.ParquetFile(shard)
        if "p1_choices" in meta.schema_arrow.names:
            total += meta.metadata.num_rows
    return total
