"""The one way a plan's battles are played and written, for the match and the tournament.

    recorder = Recorder(out / "logs", prefix="battles-1a2b", results=out / "results", schema=SCHEMA)
    stats = play(jobs, backend="sim", on_done=..., concurrency=16, seed=0)

`play` opens the backend's runners (one simulator host, or one ServerRunner per Showdown
server), drives them with `play_jobs` (eval/runner.py: retries, errors), and closes them:
the `sim` backend on a fresh event loop, the `server` backend on poke-env's loop. The
Recorder writes what finished to shards as it goes (logs first, then result rows), so a
killed run keeps its finished battles and a rerun resumes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa

from battles.logs import BattleLogWriter, BattleRecord
from battles.server import ShowdownServer
from battles.shards import next_shard_path, write_table_atomic
from eval.runner import Job, Outcome, RunStats, SimRunner, play_jobs

BACKENDS = ("sim", "server")


class Recorder:
    """Finished battles to shards under its own `prefix` (so workers share a folder): log records
    to `logs`, result rows (if any) to `results`; written once `every` wait or `seconds` after the
    last write, and by `flush()`. Logs first: a crash between the writes replays a battle, never
    loses its log. Each shard is written atomically."""

    def __init__(self, logs: str | Path, prefix: str, *, results: str | Path | None = None,
                 schema: pa.Schema | None = None, every: int = 500, seconds: float = 5.0):
        self.logs = BattleLogWriter(logs, prefix=prefix, battles_per_shard=10**9)
        self.results, self.schema, self.prefix = (Path(results) if results else None), schema, prefix
        self.every, self.seconds = every, seconds
        self.rows: list[dict] = []
        self.shards: list[str] = []
        self._last = time.monotonic()

    def add(self, record: BattleRecord | None, row: dict | None = None) -> None:
        if record is not None:
            self.logs.add(record)
        if row is not None:
            self.rows.append(row)
        if max(len(self.logs.pending), len(self.rows)) >= self.every or time.monotonic() - self._last >= self.seconds:
            self.flush()

    def tick(self) -> None:
        """Write what waits once `seconds` have passed, even while no battle ends."""
        if (self.logs.pending or self.rows) and time.monotonic() - self._last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        shard = self.logs.flush()
        if shard:
            self.shards.append(str(shard))
        if self.rows and self.results is not None:
            table = pa.Table.from_pylist(self.rows, schema=self.schema)
            write_table_atomic(table, next_shard_path(self.results, self.prefix.replace("battles", "results")))
            self.rows = []
        self._last = time.monotonic()


def to_record(outcome: Outcome, *, team_set: str | None, token: str) -> BattleRecord:
    """A finished battle's BattleRecord, its sides labelled with the job's agent specs and roles."""
    data, job = outcome.record, outcome.job
    return BattleRecord.from_server_json(data, specs=dict(zip(("p1", "p2"), job.specs)), team_set=team_set,
                                         id_prefix=f"q{token}{data.get('id_prefix', '')}-",
                                         roles={s: r for s, r in zip(("p1", "p2"), job.roles) if r})


async def _play(jobs, backend, servers, *, on_done, concurrency, seed, battle_timeout, start_timeout, max_restarts,
                max_attempts, bar, tick) -> RunStats:
    from eval.server_runner import ServerRunner

    async def ticking():
        while True:
            await asyncio.sleep(1.0)
            tick()

    runners: list = []
    ticker = asyncio.create_task(ticking()) if tick else None
    try:
        if backend == "sim":
            runners.append(SimRunner(concurrency=concurrency, seed=seed, max_restarts=max_restarts,
                                     stall_timeout=battle_timeout))
        else:
            for i, server in enumerate(servers):
                runners.append(ServerRunner(server, index=i, battle_timeout=battle_timeout,
                                            start_timeout=start_timeout, max_restarts=max_restarts))
            await asyncio.gather(*(r.start() for r in runners))
        return await play_jobs(runners, jobs, concurrency=concurrency, on_done=on_done, max_attempts=max_attempts,
                               bar=bar)
    finally:
        if ticker is not None:
            ticker.cancel()
        await asyncio.gather(*(r.close() for r in runners), return_exceptions=True)


def play(jobs: Sequence[Job], *, on_done: Callable[[Outcome], None], backend: str = "sim",
         servers: Sequence[ShowdownServer] | int = 1, concurrency: int = 16, seed: int = 0,
         battle_timeout: float = 120.0, start_timeout: float = 30.0, max_restarts: int = 10,
         max_attempts: int = 0, bar=None, tick: Callable[[], None] | None = None) -> RunStats:
    """Play `jobs` on the backend (`servers`: the servers to use, or how many to start and stop);
    `tick()` is called every second on the playing loop (a Recorder's time-based write)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: pick one of {', '.join(BACKENDS)}")
    settings = dict(on_done=on_done, concurrency=concurrency, seed=seed, battle_timeout=battle_timeout,
                    start_timeout=start_timeout, max_restarts=max_restarts, max_attempts=max_attempts, bar=bar,
                    tick=tick)
    if backend == "sim":
        return asyncio.run(_play(jobs, backend, [], **settings))
    from eval.server_runner import run_on_poke_loop

    own = [ShowdownServer() for _ in range(servers)] if isinstance(servers, int) else []
    try:
        return run_on_poke_loop(_play(jobs, backend, own or list(servers), **settings),
                                on_stop=lambda: [s.stop() for s in own])
    finally:
        for server in own:
            server.stop()
