"""A plan split over worker processes, each with its own simulator host, here or on Ray.

    play_shares(shares, workers=4, play_share=play_share)             # processes on this machine
    play_shares(shares, workers=16, play_share=play_share, ray="auto") # Ray tasks on a cluster

`shares` (a match's or a tournament's) says how many planned battles have no record yet
(`remaining()`, read from the shards in the shared out folder) and cuts them into `k` shares
(`shares(k, round)`: keyword arguments for `play_share`, a module-level function that plays one
share in its process and returns its counts, given to `shares.add`). Each worker writes its own
shards as battles finish. A worker that died (killed, crashed, its Ray node lost) had its
unrecorded battles cut into the next round's shares, so the run ends with exactly the planned
battles. Local workers are spawned (nothing of the parent's loops or threads is copied) and die
with the parent, SIGKILL included, and their hosts with them. On Ray, scheduling and transport are
Ray's (`ray.remote` tasks, `ray.wait`); the out folder must be storage every node shares.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from battles.sim import _die_with_parent

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


class Shares(Protocol):
    total: int  # battles this run plays
    desc: str
    progress: bool

    def remaining(self) -> int: ...
    def shares(self, k: int, round_: int) -> list[dict]: ...
    def add(self, summary: dict) -> None: ...


def _run_share(play_share, kwargs: dict) -> dict:
    """One worker: play a share; a failure comes back as a summary the parent raises."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("poke_env").setLevel(logging.CRITICAL)
    try:
        return play_share(kwargs)
    except ValueError as err:
        return {"fatal": f"{err}", "kind": "ValueError"}
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it
        return {"fatal": f"{type(err).__name__}: {err}", "kind": "RuntimeError"}


def _process(play_share, kwargs: dict, report: str) -> None:
    _die_with_parent()
    Path(report).write_text(json.dumps(_run_share(play_share, kwargs)))


def _in_processes(play_share, shares: list[dict], tick) -> list[dict | None]:
    """Play shares in spawned processes; each one's summary, None for a worker that died."""
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="qabra-workers-") as tmp:
        procs = []
        for i, kwargs in enumerate(shares):
            report = Path(tmp) / f"{i}.json"
            proc = ctx.Process(target=_process, args=(play_share, kwargs, str(report)), daemon=True)
            proc.start()
            procs.append((proc, report))
        while any(p.is_alive() for p, _ in procs):
            time.sleep(1.0)
            tick()
        out = []
        for proc, report in procs:
            proc.join()
            if not report.exists():
                log.warning("worker pid %d died (exit %s); its unrecorded battles are played again",
                            proc.pid, proc.exitcode)
            out.append(json.loads(report.read_text()) if report.exists() else None)
        return out


def _ray_cpus(address: str) -> int:
    """Join (or, for `local`, start) the Ray instance; its CPUs."""
    import ray

    if not ray.is_initialized():
        if address == "local":  # a Ray instance of this machine's own, stopped with this process
            ray.init(include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
        else:  # the cluster's nodes need this project installed (pip install -e ".[ray]")
            ray.init(address=address)
    return int(ray.cluster_resources().get("CPU", 1))


def _on_ray(play_share, shares: list[dict], tick) -> list[dict | None]:
    """Play shares as Ray tasks; each one's summary, None for a task whose worker was lost."""
    import ray

    task = ray.remote(max_retries=0)(_run_share)  # a lost share is re-cut from what was recorded
    pending = {task.remote(play_share, kwargs): i for i, kwargs in enumerate(shares)}
    out: list[dict | None] = [None] * len(shares)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        tick()
        for ref in done:
            i = pending.pop(ref)
            try:
                out[i] = ray.get(ref)
            except ray.exceptions.RayError as err:  # its worker or node died (a share's own errors come back)
                log.warning("Ray task of share %d was lost (%s); its unrecorded battles are played again",
                            i, type(err).__name__)
    return out


def auto_workers(workers: int, ray: str = "") -> int:
    """`workers`, or for 0 what this machine's cores allow: one worker per two cores (each worker
    is a Python process and its simulator host, both busy), at least one. On Ray a 0 stays 0:
    play_shares makes it one worker per CPU of the cluster."""
    return workers if workers > 0 or ray else max(1, (os.cpu_count() or 2) // 2)


def play_shares(shares: Shares, workers: int, play_share, *, ray: str = "", max_rounds: int = 10) -> int:
    """Play every remaining battle of `shares` over `workers` workers (local processes, or Ray tasks
    when `ray` is an address: auto, ray://HOST:PORT, or local; `workers` 0 or 1 there means one per
    CPU of the cluster); the number of workers lost."""
    if ray and workers <= 1:
        workers = _ray_cpus(ray)
    elif ray:
        _ray_cpus(ray)
    lost = 0
    with tqdm(total=shares.total, desc=shares.desc, disable=not shares.progress) as bar:
        def tick(remaining: int | None = None) -> None:
            bar.n = shares.total - (shares.remaining() if remaining is None else remaining)
            bar.refresh()

        for round_ in range(max_rounds + 1):
            remaining = shares.remaining()
            tick(remaining)
            if remaining <= 0:
                return lost
            cut = shares.shares(min(workers, remaining), round_)
            summaries = _on_ray(play_share, cut, tick) if ray else _in_processes(play_share, cut, tick)
            for summary in summaries:
                if summary is None:
                    lost += 1
                    shares.add({"lost": 1})
                elif "fatal" in summary:
                    raise (ValueError if summary["kind"] == "ValueError" else RuntimeError)(summary["fatal"])
                else:
                    shares.add(summary)
    raise RuntimeError(f"gave up after {max_rounds} rounds with {lost} lost workers; "
                       f"{shares.remaining()} battles still unrecorded")
