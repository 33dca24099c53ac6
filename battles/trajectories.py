"""The trajectory store: first-person battle trajectories in zstd Parquet shards.

One row per (battle, player). Per-decision arrays are stored as flat list columns
(``tokens`` holds T*K ints, ``legal`` T*13 bools, ...) because one flat buffer per
row group reads far faster than nested lists. Shards are written to a ``*.tmp``
name and renamed when complete, so readers never see a half-written shard.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from battles.shards import list_shards, next_shard_path, reading

__all__ = [
    "N_ACTIONS", "SCHEMA", "ShardWriter", "Trajectory", "list_shards", "read_row_group",
    "read_trajectories", "row_groups", "shard_stats",
]

N_ACTIONS = 13
STORE_VERSION = "1"

SCHEMA = pa.schema(
    [
        pa.field("battle_id", pa.string(), nullable=False),
        pa.field("player", pa.string(), nullable=False),
        pa.field("format", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("rating", pa.float32(), nullable=True),
        pa.field("outcome", pa.int8(), nullable=False),
        pa.field("encoder_version", pa.int32(), nullable=False),
        pa.field("vocab_hash", pa.string(), nullable=False),
        pa.field("n_decisions", pa.int32(), nullable=False),
        pa.field("n_tokens", pa.int16(), nullable=False),
        pa.field("n_numbers", pa.int16(), nullable=False),
        pa.field("tokens", pa.list_(pa.int32()), nullable=False),
        pa.field("numbers", pa.list_(pa.float32()), nullable=False),
        pa.field("action", pa.list_(pa.int16()), nullable=False),
        pa.field("legal", pa.list_(pa.bool_()), nullable=False),
        pa.field("teacher", pa.list_(pa.float32()), nullable=True),
        pa.field("teacher_source", pa.string(), nullable=True),
        pa.field("team_set", pa.string(), nullable=True),
        pa.field("agent", pa.string(), nullable=True),
    ],
    metadata={b"qabra_store_version": STORE_VERSION.encode()},
)

SCALAR_COLUMNS = tuple(f.name for f in SCHEMA if not pa.types.is_list(f.type))
LIST_COLUMNS = ("tokens", "numbers", "action", "legal", "teacher")


@dataclass
class Trajectory:
    """One player's decisions in one battle; arrays are None when not read."""

    battle_id: str
    player: str
    format: str
    source: str
    outcome: int
    encoder_version: int
    vocab_hash: str
    tokens: np.ndarray | None  # (T, K) int32
    numbers: np.ndarray | None  # (T, F) float32
    action: np.ndarray | None  # (T,) int16, -1 = not visible
    legal: np.ndarray | None  # (T, 13) bool
    teacher: np.ndarray | None = None  # (T, 13) float32
    teacher_source: str | None = None
    rating: float | None = None
    team_set: str | None = None
    agent: str | None = None
    n_decisions: int = -1
    n_tokens: int = -1
    n_numbers: int = -1

    def __post_init__(self) -> None:
        # Sizes come from the arrays when given, so callers never set them by hand.
        if self.tokens is not None:
            self.n_decisions, self.n_tokens = self.tokens.shape
        if self.numbers is not None:
            self.n_numbers = self.numbers.shape[1]
        if self.n_decisions < 0 and self.action is not None:
            self.n_decisions = len(self.action)

    def validate(self) -> None:
        """Raise ValueError if fields or array shapes are inconsistent."""
        name = f"trajectory {self.battle_id!r}/{self.player!r}"
        for field in ("tokens", "numbers", "action", "legal"):
            if getattr(self, field) is None:
                raise ValueError(f"{name}: {field} is missing; every stored trajectory needs it")
        t = self.n_decisions
        want = {
            "tokens": (t, self.n_tokens),
            "numbers": (t, self.n_numbers),
            "action": (t,),
            "legal": (t, N_ACTIONS),
        }
        if self.teacher is not None:
            want["teacher"] = (t, N_ACTIONS)
        for field, shape in want.items():
            got = getattr(self, field).shape
            if got != shape:
                raise ValueError(f"{name}: {field} has shape {got}, expected {shape}")
        if self.player not in ("p1", "p2"):
            raise ValueError(f"{name}: player must be 'p1' or 'p2'")
        if self.outcome not in (-1, 0, 1):
            raise ValueError(f"{name}: outcome must be +1, 0 or -1, got {self.outcome}")
        if not np.all((self.action >= -1) & (self.action < N_ACTIONS)):
            raise ValueError(f"{name}: actions must lie in [-1, {N_ACTIONS - 1}]")
        if max(self.n_tokens, self.n_numbers) > np.iinfo(np.int16).max:
            raise ValueError(f"{name}: K or F too large for the int16 size columns")


def _list_array(parts: Sequence[np.ndarray | None], dtype: pa.DataType) -> pa.ListArray:
    """Build a list array from per-row flat numpy arrays (None = null row)."""
    lengths = np.array([0 if p is None else p.size for p in parts], dtype=np.int64)
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    assert lengths.sum() < np.iinfo(np.int32).max, "row group too large for int32 offsets"
    np.cumsum(lengths, out=offsets[1:])
    present = [p.reshape(-1) for p in parts if p is not None]
    np_dtype = dtype.to_pandas_dtype()
    values = np.concatenate(present).astype(np_dtype, copy=False) if present else np.zeros(0, np_dtype)
    mask = None
    if any(p is None for p in parts):
        mask = pa.array([p is None for p in parts], pa.bool_())
    return pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.array(values, dtype), mask=mask
    )


def to_table(trajs: Sequence[Trajectory]) -> pa.Table:
    """Convert trajectories to a table with the store SCHEMA (validating each)."""
    for t in trajs:
        t.validate()
    cols = {name: [getattr(t, name) for t in trajs] for name in SCALAR_COLUMNS}
    arrays = [pa.array(cols[f.name], f.type) if f.name in cols else None for f in SCHEMA]
    for i, f in enumerate(SCHEMA):
        if f.name in LIST_COLUMNS:
            arrays[i] = _list_array([getattr(t, f.name) for t in trajs], f.type.value_type)
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _flat(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, offsets from 0, valid) of a list column, without per-row Python work."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    offsets = col.offsets.to_numpy()
    values = col.flatten().to_numpy(zero_copy_only=False)
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    return values, offsets - offsets[0], valid


def from_table(table: pa.Table | pa.RecordBatch) -> list[Trajectory]:
    """Convert a store table (any subset of list columns) back into Trajectories."""
    names = table.schema.names
    missing = [c for c in SCALAR_COLUMNS if c not in names]
    assert not missing, f"store tables always carry the scalar columns; missing {missing}"
    scalars = {c: table.column(c).to_pylist() for c in SCALAR_COLUMNS}
    flats = {c: _flat(table.column(c)) for c in LIST_COLUMNS if c in names}
    out = []
    for i in range(table.num_rows):
        row = {c: scalars[c][i] for c in SCALAR_COLUMNS}
        t, k, f = row["n_decisions"], row["n_tokens"], row["n_numbers"]
        shapes = {"tokens": (t, k), "numbers": (t, f), "action": (t,), "legal": (t, N_ACTIONS),
                  "teacher": (t, N_ACTIONS)}
        arrays = {}
        for c in LIST_COLUMNS:
            if c not in flats:
                arrays[c] = None
                continue
            values, offsets, valid = flats[c]
            arrays[c] = values[offsets[i]:offsets[i + 1]].reshape(shapes[c]) if valid[i] else None
        out.append(Trajectory(**row, **arrays))
    return out


def _check_schema(path, schema: pa.Schema) -> None:
    missing = [n for n in SCHEMA.names if n not in schema.names]
    if missing:
        raise ValueError(f"{path} is not a trajectory shard (no columns {missing}); "
                         "point the reader at trajectory folders only, not battle-log shards")


def _as_expression(filters) -> pc.Expression | None:
    if filters is None or isinstance(filters, pc.Expression):
        return filters
    return pq.filters_to_expression(filters)


def _read_columns(columns: Iterable[str] | None) -> list[str]:
    if columns is None:
        return list(SCHEMA.names)
    columns = list(columns)
    unknown = [c for c in columns if c not in SCHEMA.names]
    if unknown:
        raise ValueError(f"unknown trajectory columns {unknown}; choose from {SCHEMA.names}")
    return list(SCALAR_COLUMNS) + [c for c in LIST_COLUMNS if c in columns]


def read_row_group(
    path: str | os.PathLike, index: int, columns: Iterable[str] | None = None,
    rows: np.ndarray | None = None,
) -> list[Trajectory]:
    """Trajectories of one row group of one shard (optionally only the given row numbers)."""
    with reading(path), pq.ParquetFile(path) as pf:
        table = pf.read_row_group(index, columns=_read_columns(columns))
    if rows is not None:
        table = table.take(pa.array(rows, pa.int64()))
    return from_table(table)


def read_trajectories(
    paths_or_dirs, columns: Iterable[str] | None = None, filters=None, batch_size: int = 256,
) -> Iterator[Trajectory]:
    """Stream trajectories from shards, one record batch at a time (never the whole store).

    ``columns`` picks which list columns to load (scalars always come); ``filters`` is a
    pyarrow expression or DNF tuples as in ``pyarrow.parquet.read_table``.
    """
    expr = _as_expression(filters)
    cols = _read_columns(columns)
    for path in list_shards(paths_or_dirs):
        # pre_buffer would read ahead across row groups; off, memory stays at one row group.
        with reading(path), pq.ParquetFile(path, pre_buffer=False) as pf:
            _check_schema(path, pf.schema_arrow)
            for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
                if expr is not None:
                    batch = batch.filter(expr)
                yield from from_table(batch)


def row_groups(paths) -> list[tuple[Path, int, int]]:
    """(shard, row group index, rows) for every row group under paths, from metadata only."""
    out = []
    for path in list_shards(paths):
        with reading(path):
            meta = pq.read_metadata(path)
        _check_schema(path, meta.schema.to_arrow_schema())
        out.extend((path, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups))
    return out


def shard_stats(paths) -> dict:
    """Counts of shards, trajectories and decisions, in all and per source (scalar columns only)."""
    shards = list_shards(paths)
    stats = {"shards": len(shards), "trajectories": 0, "decisions": 0, "per_source": {}}
    for path in shards:
        with reading(path):
            _check_schema(path, pq.read_schema(path))
            table = pq.read_table(path, columns=["source", "n_decisions"])
        for src, n in zip(table["source"].to_pylist(), table["n_decisions"].to_pylist(), strict=True):
            per = stats["per_source"].setdefault(src, {"trajectories": 0, "decisions": 0})
            per["trajectories"] += 1
            per["decisions"] += n
            stats["trajectories"] += 1
            stats["decisions"] += n
    return stats


def _tmp_name(final: Path) -> Path:
    return final.with_name(f"{final.name}.{os.getpid()}.tmp")


class ShardWriter:
    """Append trajectories; write ``<prefix>-<NNNNN>.parquet`` shards atomically (tmp + rename).

    Rows go to disk one row group at a time, so memory stays bounded by one row group.
    On an exception inside ``with``, the unfinished shard is discarded; finished shards stay.
    """

    def __init__(
        self, out_dir: str | os.PathLike, prefix: str, rows_per_shard: int = 4096,
        row_group_size: int = 256, compression_level: int | None = None,
    ) -> None:
        if rows_per_shard < 1 or row_group_size < 1:
            raise ValueError("rows_per_shard and row_group_size must be at least 1")
        if not prefix or "/" in prefix or os.sep in prefix:
            raise ValueError(f"shard prefix {prefix!r} must be a non-empty file name part")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.rows_per_shard = rows_per_shard
        self.row_group_size = min(row_group_size, rows_per_shard)
        self.compression_level = compression_level
        self.written: list[Path] = []
        self._buffer: list[Trajectory] = []
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._rows_in_shard = 0

    def write(self, traj: Trajectory) -> None:
        """Append one trajectory (validated now, so a bad one fails here, not at flush)."""
        traj.validate()
        self._buffer.append(traj)
        room = self.rows_per_shard - self._rows_in_shard
        if len(self._buffer) >= min(self.row_group_size, room):
            self._flush_row_group()

    def write_many(self, trajs: Iterable[Trajectory]) -> None:
        """Append several trajectories."""
        for t in trajs:
            self.write(t)

    def _flush_row_group(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            # Numbering continues after the shards already there, so a rerun never overwrites.
            self._final = next_shard_path(self.out_dir, self.prefix)
            self._tmp = _tmp_name(self._final)
            self._writer = pq.ParquetWriter(
                self._tmp, SCHEMA, compression="zstd", compression_level=self.compression_level
            )
        self._writer.write_table(to_table(self._buffer), row_group_size=len(self._buffer))
        self._rows_in_shard += len(self._buffer)
        self._buffer = []
        if self._rows_in_shard >= self.rows_per_shard:
            self._finish_shard()

    def _finish_shard(self) -> None:
        assert self._writer is not None and self._tmp is not None and self._final is not None
        self._writer.close()
        os.replace(self._tmp, self._final)
        self.written.append(self._final)
        self._writer, self._tmp, self._final, self._rows_in_shard = None, None, None, 0

    def close(self) -> list[Path]:
        """Flush buffered rows, finish the open shard, and return all shards written."""
        self._flush_row_group()
        if self._writer is not None:
            self._finish_shard()
        return self.written

    def abort(self) -> None:
        """Drop buffered rows and delete the unfinished shard's temporary file."""
        self._buffer = []
        if self._writer is not None:
            self._writer.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._writer, self._tmp, self._final, self._rows_in_shard = None, None, None, 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
