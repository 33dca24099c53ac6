"""Parquet shards that are either complete or absent.

Every shard is written to `<name>.tmp` in its final folder and renamed when complete,
so a crash mid-write leaves at most a `.tmp` file that readers never list.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SHARD_SUFFIX = ".parquet"


def write_table_atomic(table: pa.Table, path: str | Path, *, row_group_size: int | None = None) -> Path:
    """Write `table` to `path` via a temporary file and a rename (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def list_shards(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """All complete `.parquet` shards under the given files or folders, sorted."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(p.rglob("*" + SHARD_SUFFIX)))
        elif p.suffix == SHARD_SUFFIX and p.exists():
            found.append(p)
        elif not p.exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
    return sorted(set(found))


def next_shard_path(folder: str | Path, prefix: str) -> Path:
    """The first unused `<prefix>-NNNNN.parquet` in `folder`."""
    folder = Path(folder)
    pattern = re.compile(re.escape(prefix) + r"-(\d+)" + re.escape(SHARD_SUFFIX) + r"$")
    used = [int(m.group(1)) for f in folder.glob(f"{prefix}-*{SHARD_SUFFIX}") if (m := pattern.match(f.name))]
    return folder / f"{prefix}-{(max(used) + 1) if used else 0:05d}{SHARD_SUFFIX}"
