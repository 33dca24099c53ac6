"""Writing a file so that readers see the old file or the new one, never half of it.

    write_atomic(path, "text")            # str is written as UTF-8
    write_atomic(path, b"bytes")
    write_json(path, {"a": 1})            # indented JSON
    with atomic_path(path) as tmp: ...    # anything that writes a file by name (pyarrow, torch)

Each writes a temporary file beside the target (unique per call), fsyncs it and renames
it over the target; a crash mid-write leaves the old file and no temporary.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write; on a clean exit it replaces `path`, on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.{os.getpid()}.tmp")  # unique per call; pid last (shards.remove_stale_temporaries)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, data, *, indent: int | None = 1) -> Path:
    """`data` as JSON, atomically (values JSON cannot hold are written as their str)."""
    return write_atomic(path, json.dumps(data, indent=indent, default=str))
