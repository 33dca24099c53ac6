"""Parquet shards that are either complete or absent.

Every shard is written to `<name>.<pid>.tmp` in its final folder and renamed when complete,
so a crash mid-write leaves at most a `.tmp` file that readers never list and that
`remove_stale_temporaries` deletes once its writer is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from battles.files import atomic_path

SHARD_SUFFIX = ".parquet"


class CorruptShard(ValueError):
    """A Parquet shard that cannot be read; the message names the file and what to do."""


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Turn an error reading `path` inside the block into CorruptShard naming the file.

    pyarrow's own errors ("ZSTD decompression failed", "Parquet magic bytes not found")
    do not say which of many shards is damaged.
    """
    try:
        yield
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as err:
        why = " ".join(str(err).split())  # one line: pyarrow's messages span several
        raise CorruptShard(f"{path}: cannot read this shard ({why}); delete it or move it out of the "
                           "folder, then build or record it again") from err


def write_table_atomic(table: pa.Table, path: str | Path, *, row_group_size: int | None = None) -> Path:
    """Write `table` to `path` via a temporary file and a rename (atomic on POSIX)."""
    with atomic_path(path) as tmp:  # <name>.<pid>.tmp, which remove_stale_temporaries knows
        pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size)
    return Path(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete `<shard>.<pid>.tmp` files in `folder` whose writing process no longer runs.

    The pid is that of a process on this machine; a folder written from several machines
    at once should give each its own subfolder.
    """
    removed = []
    for tmp in Path(folder).glob(f"*{SHARD_SUFFIX}.*.tmp"):
        pid = tmp.name.removesuffix(".tmp").rsplit(".", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


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
