"""A run folder's ownership and repair: one live owner, no stuck lock, nothing half-written kept.

`run_dir_lock` makes a process the folder's one owner (flock on run.lock: the kernel drops
it when its holder dies, however it dies, so a crashed run never leaves the folder locked);
a second command on the folder stops at once with a message naming the holder.
`remove_temporaries` deletes what a killed save left behind; `logged_metrics` reads a
step's metrics back from metrics.jsonl (to report a finished run, or to label a checkpoint
written again on resume).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from models.checkpoint import clean_interrupted_saves

LOCK_NAME = "run.lock"
IN_USE = "is in use by"  # in RunFolderBusy's message: the supervisor does not restart into a busy folder
_HELD: dict[Path, list] = {}  # run folders this process holds: path -> [lock fd, depth, folder created by us]


class RunFolderBusy(ValueError):
    """Another live process runs in this run folder (a ValueError: every command prints it as one line)."""


def _lock(path: Path) -> None:
    if path in _HELD:  # re-entrant: a recipe holds it, then its trainer's fit
        _HELD[path][1] += 1
        return
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip()
        os.close(fd)
        raise RunFolderBusy(
            f"run folder {path} {IN_USE} {holder or 'another process'}; wait for it to end or stop "
            "that process, or choose another run_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')} "
                 f"({' '.join(sys.argv)[:300]})\n".encode())
    _HELD[path] = [fd, 1, created]


def _unlock(path: Path) -> None:
    held = _HELD[path]
    held[1] -= 1
    if held[1] == 0:
        del _HELD[path]
        os.ftruncate(held[0], 0)  # no holder now
        if held[2] and [p.name for p in path.iterdir()] == [LOCK_NAME]:
            # The folder is ours and the command wrote nothing (it stopped at once): leave no trace.
            (path / LOCK_NAME).unlink()
            with contextlib.suppress(OSError):
                path.rmdir()
        os.close(held[0])  # closing the descriptor drops the lock; the file stays, empty of meaning


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path, accelerator: Accelerator | None = None) -> Iterator[None]:
    """Hold `run_dir` for this run; RunFolderBusy at once when another live process holds it.

    The main process takes the lock (flock on run.lock, released by the kernel when the
    process dies); with several processes every rank learns whether it got it.
    """
    path = Path(run_dir).resolve()
    main = accelerator is None or accelerator.is_main_process
    error = None
    if main:
        try:
            _lock(path)
        except RunFolderBusy as err:
            error = err
    if accelerator is not None and accelerator.num_processes > 1:
        refused = broadcast_object_list([None if error is None else str(error)])[0]
        if refused is not None:
            error = error or RunFolderBusy(refused)
    if error is not None:
        raise error
    try:
        yield
    finally:
        if main:
            _unlock(path)


def owns_run_folder(folder_of: Callable[[Any], str | Path]):
    """Decorate a recipe's `run(cfg, ...)`: it holds its run folder (`folder_of(cfg)`) from its
    first phase to its last, so a second command on the folder stops before playing a battle."""

    def decorate(run):
        @functools.wraps(run)
        def held(cfg, *args, **kwargs):
            with run_dir_lock(folder_of(cfg)):
                return run(cfg, *args, **kwargs)

        return held

    return decorate


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill mid-write
            rows.append(json.loads(line))
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), int)]


def logged_metrics(run_dir: str | Path, step: int) -> tuple[dict, dict]:
    """The last training record and the last validation metrics logged up to `step`."""
    last: dict = {}
    val: dict = {}
    for row in _records(Path(run_dir)):
        if row["step"] <= step:
            if "lr" in row:
                last = row
            elif any(k.startswith("val_") for k in row):
                val = {k: v for k, v in row.items() if k != "step"}
    return last, val


def remove_temporaries(run_dir: str | Path) -> None:
    """Remove what a killed save left: temporary state and checkpoint folders, temporary files.

    Call it only while holding the run folder (run_dir_lock): then no save is in progress.
    """
    run_dir = Path(run_dir)
    for tmp in (run_dir / "state").glob(".tmp-step-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for folder in (run_dir, run_dir / "checkpoints"):
        clean_interrupted_saves(folder)
    for name in ("metrics.jsonl", "wandb_id"):  # NAME.PID.tmp (battles/files.py), or NAME.tmp of older runs
        for tmp in run_dir.glob(f"{name}*.tmp"):
            tmp.unlink(missing_ok=True)
