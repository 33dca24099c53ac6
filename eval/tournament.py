"""Evaluate-against-all: a round-robin tournament of every agent against every other.

    python -m eval.tournament eval/configs/default.yaml [key=value ...] [--servers K]
    scripts/evaluate_against_all.sh eval/configs/default.yaml agents.stage1=policy:runs/stage1/final

Every pair of agents plays every (format, team set). The team pairings are drawn once per
(format, team set) from the seed and shared by every pair; each pairing (X, Y) is played
four times, so each agent plays each team from each side: A(X) as p1, A(X) as p2, A(Y) as
p1, A(Y) as p2. `battles_per_pair` is therefore a multiple of 4.

Overrides: `key=value` sets a config key (`battles_per_pair=80`, `formats=[gen1ou]`,
`servers=2`); `agents.NAME=SPEC` adds or replaces an agent, `agents.NAME=` drops one.

Every planned battle has a deterministic key (format, team set, agents, pairing, variant,
teams). Finished battles go to `OUT/results/*.parquet` (one row each, atomic shards) and
their full logs to `OUT/logs/*.parquet` (battles/logs.py). Running the same command again
plays only the battles whose key has no finished row: an interrupted run resumes, a new
agent plays only its new pairs, and battles that ended in an error are tried again. A
battle that times out, an agent that raises or a server that dies is retried up to
`max_attempts` times, then recorded as an error with its reason, never as a result.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import fcntl
import inspect
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import yaml
from tqdm import tqdm

from agents.registry import make_player
from battles.logs import BattleLogWriter, BattleRecord, to_id
from battles.server import ServerError, ShowdownServer
from battles.shards import next_shard_path, write_table_atomic
from battles.teams import Team, load_team_set
from eval.match import needs_teams
from eval.plan import (
    RESULTS_SCHEMA,
    PlannedBattle,
    TournamentConfig,
    check_specs,
    latest_outcomes,
    load_config,
    pending_battles,
    plan_battles,
    read_results,
)

log = logging.getLogger(__name__)



# -- playing ---------------------------------------------------------------------------


_RESTARTED = object()  # put in a challenge-notice queue when its server is gone


class BattleFault(Exception):
    """A battle that could not be finished; the message is its recorded reason."""


@dataclass
class _Flight:
    tag: str
    done: asyncio.Event
    fault: str = ""
    last: float = field(default_factory=time.monotonic)  # the battle's last decision (or its start)


@dataclass
class _Slot:
    """One managed server, the players logged in to it and the battles in flight on it."""

    index: int
    server: ShowdownServer
    ready: asyncio.Event
    generation: int = 0  # bumped by every restart: older players and battles are gone
    restarts: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    players: dict = field(default_factory=dict)  # (format, agent) -> Player
    agent_of: dict = field(default_factory=dict)  # to_id(username) -> agent name
    create_locks: dict = field(default_factory=dict)
    start_locks: dict = field(default_factory=dict)
    flights: dict = field(default_factory=dict)  # battle tag -> _Flight
    early: dict = field(default_factory=dict)  # tag -> fault ("" = finished) seen before its flight
    abandoned: set = field(default_factory=set)  # forfeited tags whose record must not be used
    finished: collections.deque = field(default_factory=collections.deque)  # (time, player, tag)

    def lock(self, table: dict, key) -> asyncio.Lock:
        return table.setdefault(key, asyncio.Lock())


@dataclass
class TournamentSummary:
    """What one run did and where the tournament stands."""

    planned: int
    done_before: int
    todo: int
    played: int = 0  # battles finished this run
    errors: int = 0  # battles recorded as errors this run (after every retry)
    faults: int = 0  # failed attempts this run, retried ones included
    restarts: int = 0
    seconds: float = 0.0
    finished: int = 0  # planned battles with a finished row, after this run
    error_rows: int = 0  # planned battles whose outcome is an error, after this run

    @property
    def battles_per_s(self) -> float:
        return (self.played + self.errors) / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "battles_per_s": round(self.battles_per_s, 3)}


class Tournament:
    """Plays the pending battles of a config on managed servers and appends their results."""

    def __init__(self, cfg: TournamentConfig, *, servers: Sequence[ShowdownServer] | None = None,
                 progress: bool = True):
        self.cfg = cfg.validate()
        self.out = Path(cfg.out)
        self.progress = progress
        self._given = list(servers) if servers else None
        self._token = secrets.token_hex(3)
        self._closed = threading.Event()
        self._teams: dict[tuple[str, str, str], Team] = {}
        self._own_servers: list[ShowdownServer] = []

    # -- planning ----------------------------------------------------------------------
    def prepare(self) -> tuple[list[PlannedBattle], list[dict], list[PlannedBattle]]:
        """(plan, existing result rows, battles still to play); validates the team sets."""
        team_sets = {}
        for fmt in self.cfg.formats:
            for set_name in self.cfg.team_sets if needs_teams(fmt) else []:
                team_set = load_team_set(set_name, fmt)
                team_sets[(fmt, set_name)] = team_set.teams
                self._teams.update({(fmt, set_name, t.name): t for t in team_set.teams})
        plan = plan_battles(self.cfg, team_sets)
        rows = read_results(self.out)
        check_specs(self.cfg, rows)
        return plan, rows, pending_battles(plan, rows, self.cfg.retry_errors)

    def run(self) -> TournamentSummary:
        """Play every pending battle (Ctrl-C stops cleanly; the next run resumes)."""
        from poke_env.concurrency import POKE_LOOP

        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(f"another tournament is writing to {self.out}; wait for it or pick "
                                 "another out=") from None
            plan, rows, todo = self.prepare()
            (self.out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(self.cfg), sort_keys=False))
            summary = TournamentSummary(len(plan), len(plan) - len(todo), len(todo))
            if self.cfg.max_battles:
                todo = todo[: self.cfg.max_battles]
            self._summary = summary
            if todo:
                # poke-env runs every player on its own loop thread; so does everything that
                # touches them here. This thread only waits, so Ctrl-C reaches it.
                fut = asyncio.run_coroutine_threadsafe(self._main(todo), POKE_LOOP)
                try:
                    while not fut.done():
                        threading.Event().wait(0.25)
                except KeyboardInterrupt:
                    POKE_LOOP.call_soon_threadsafe(fut.cancel)
                    if not self._closed.wait(timeout=60):
                        log.error("clean-up did not finish in 60s; stopping the servers anyway")
                    for server in self._own_servers:
                        server.stop()
                    raise
                fut.result()
            outcomes = latest_outcomes(read_results(self.out))
            planned = [outcomes[p.key] for p in plan if p.key in outcomes]
            summary.finished = sum(1 for r in planned if not r["error"])
            summary.error_rows = sum(1 for r in planned if r["error"])
        return summary

    # -- the event loop side ------------------------------------------------------------
    async def _main(self, todo: list[PlannedBattle]) -> None:
        self._queue: asyncio.Queue = asyncio.Queue()
        for pb in todo:
            self._queue.put_nowait((pb, 0))
        self._fatal: asyncio.Future = asyncio.get_running_loop().create_future()
        self._stopping = False
        self._rows: list[dict] = []
        self._records: list[BattleRecord] = []
        self._flush_lock = asyncio.Lock()
        self._writing: asyncio.Future | None = None  # the shard write under way, if any
        self._last_flush = time.monotonic()
        self._bar = tqdm(total=len(todo), desc="tournament", disable=not self.progress)
        slots: list[_Slot] = []
        tasks: list[asyncio.Task] = []
        start = time.monotonic()
        try:
            slots = await self._start_servers()
            for slot in slots:
                tasks += [asyncio.create_task(self._worker(slot)) for _ in range(self.cfg.concurrency)]
                tasks.append(asyncio.create_task(self._monitor(slot)))
            tasks.append(asyncio.create_task(self._flusher()))
            joined = asyncio.ensure_future(self._queue.join())
            tasks.append(joined)
            await asyncio.wait([joined, self._fatal], return_when=asyncio.FIRST_COMPLETED)
            if self._fatal.done():
                raise self._fatal.result()
        finally:
            self._stopping = True  # a cancel that asyncio.wait_for swallows (3.11) still stops a worker
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=15)
            self._summary.seconds = time.monotonic() - start
            self._summary.restarts = sum(s.restarts for s in slots)
            try:
                await self._flush()
            finally:
                await self._drop_abandoned(slots)
                await self._stop_players([p for s in slots for p in s.players.values()])
                for server in self._own_servers:  # also those started before a start failed
                    await asyncio.to_thread(server.stop)
                self._bar.close()
                self._closed.set()

    def _set_fatal(self, err: Exception) -> None:
        if not self._fatal.done():
            self._fatal.set_result(err)

    async def _start_servers(self) -> list[_Slot]:
        servers = self._given or [ShowdownServer() for _ in range(self.cfg.servers)]
        self._own_servers = [] if self._given else list(servers)
        slots = [_Slot(i, s, ready=asyncio.Event()) for i, s in enumerate(servers)]
        await asyncio.gather(*(asyncio.to_thread(s.server.start) for s in slots))
        for slot in slots:
            slot.ready.set()
        return slots

    async def _worker(self, slot: _Slot) -> None:
        while not self._stopping:
            pb, attempt = await self._queue.get()
            try:
                await slot.ready.wait()
                try:
                    row, record = await self._play(slot, pb, attempt + 1)
                except BattleFault as fault:
                    reason = str(fault)
                except Exception as err:  # a websocket or client failure: one more fault
                    reason = f"{type(err).__name__}: {err}"
                else:
                    self._add(row, record)
                    continue
                self._summary.faults += 1
                log.warning("battle %s attempt %d failed: %s", pb.key, attempt + 1, reason)
                if attempt + 1 < self.cfg.max_attempts:
                    self._queue.put_nowait((pb, attempt + 1))
                else:
                    self._add(self._row(pb, slot, attempts=attempt + 1, error=reason), None)
            finally:
                self._queue.task_done()

    def _add(self, row: dict, record: BattleRecord | None) -> None:
        self._rows.append(row)
        if record is not None:
            self._records.append(record)
            self._summary.played += 1
        else:
            self._summary.errors += 1
        self._bar.update(1)
        if self._summary.errors:
            self._bar.set_postfix(errors=self._summary.errors, refresh=False)

    def _row(self, pb: PlannedBattle, slot: _Slot, **values) -> dict:
        row = {name: None for name in RESULTS_SCHEMA.names}
        row.update(key=pb.key, format=pb.format, team_set=pb.team_set, agent_a=pb.agent_a,
                   agent_b=pb.agent_b, spec_a=self.cfg.agents[pb.agent_a], spec_b=self.cfg.agents[pb.agent_b],
                   pairing=pb.pairing, variant=pb.variant, team_a=pb.team_a, team_b=pb.team_b,
                   p1_agent=pb.p1_agent, p2_agent=pb.p2_agent, seed=self.cfg.seed, error="",
                   server=slot.index, finished_at=time.time())
        row.update(values)
        return row

    async def _player(self, slot: _Slot, fmt: str, agent: str):
        key = (fmt, agent)
        async with slot.lock(slot.create_locks, key):
            if key in slot.players:
                return slot.players[key]
            gen, spec = slot.generation, self.cfg.agents[agent]
            try:
                player = await asyncio.to_thread(
                    make_player, spec, battle_format=fmt, name=re.sub(r"[^A-Za-z0-9]", "", agent) or None,
                    server_configuration=slot.server.server_configuration,
                    max_concurrent_battles=1_000_000)  # we bound battles in flight ourselves
            except Exception as err:
                self._set_fatal(ValueError(f"agent {agent!r} ({spec}) could not be built for {fmt}: {err}"))
                raise BattleFault(f"agent {agent} could not be built") from err
            self._guard(slot, agent, player)
            try:
                await asyncio.wait_for(player.ps_client.logged_in.wait(), self.cfg.start_timeout)
            except asyncio.TimeoutError:
                await self._stop_players([player])
                raise BattleFault(f"agent {agent} could not log in to server {slot.index}") from None
            if slot.generation != gen:
                await self._stop_players([player])
                raise BattleFault("the server restarted while an agent logged in")
            slot.players[key] = player
            slot.agent_of[to_id(player.username)] = agent
            return player

    def _guard(self, slot: _Slot, agent: str, player) -> None:
        """Report an agent's exception or a battle's end to the battle's waiter at once."""

        def settle(tag: str, fault: str) -> None:
            flight = slot.flights.get(tag)
            if flight is None:
                slot.early.setdefault(tag, fault)
            elif not flight.done.is_set():
                flight.fault = fault
                flight.done.set()

        def decided(tag: str) -> None:
            # A decision is progress: a slow agent (search) is not a stalled server.
            slot.last_progress = time.monotonic()
            flight = slot.flights.get(tag)
            if flight is not None:
                flight.last = slot.last_progress

        def guarded(inner):
            def call(battle):
                try:
                    out = inner(battle)
                except Exception as err:
                    settle(battle.battle_tag, f"agent {agent} raised {type(err).__name__}: {err}")
                    raise
                if not inspect.isawaitable(out):
                    decided(battle.battle_tag)
                    return out

                async def wait():
                    try:
                        order = await out
                    except Exception as err:
                        settle(battle.battle_tag, f"agent {agent} raised {type(err).__name__}: {err}")
                        raise
                    decided(battle.battle_tag)
                    return order
                return wait()
            return call

        player.choose_move = guarded(player.choose_move)
        player.teampreview = guarded(player.teampreview)
        inner_finished = player._battle_finished_callback

        def finished(battle):
            inner_finished(battle)
            slot.finished.append((time.monotonic(), player, battle.battle_tag))
            settle(battle.battle_tag, "")
        player._battle_finished_callback = finished

    async def _play(self, slot: _Slot, pb: PlannedBattle, attempt: int) -> tuple[dict, BattleRecord]:
        gen, t0 = slot.generation, time.monotonic()
        p1 = await self._player(slot, pb.format, pb.p1_agent)
        p2 = await self._player(slot, pb.format, pb.p2_agent)
        async with contextlib.AsyncExitStack() as stack:
            # One challenge at a time per player: a new battle is then the player's only new one.
            for key in sorted({(pb.format, pb.p1_agent), (pb.format, pb.p2_agent)}):
                await stack.enter_async_context(slot.lock(slot.start_locks, key))
            tag = await self._start_battle(slot, gen, pb, p1, p2)
        slot.last_progress = time.monotonic()
        flight = _Flight(tag, asyncio.Event())
        slot.flights[tag] = flight
        if tag in slot.early:
            flight.fault = slot.early.pop(tag)
            flight.done.set()
        try:
            # Timed out when no decision came for battle_timeout seconds (from the challenge on).
            flight.last = t0
            while not flight.done.is_set():
                left = self.cfg.battle_timeout - (time.monotonic() - flight.last)
                if left <= 0:
                    flight.fault = f"timed out: no decision for {self.cfg.battle_timeout:g}s"
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(flight.done.wait(), left)
            data = None if flight.fault else await self._battle_json(slot, tag)
            if data is None and not flight.fault:
                flight.fault = "the battle ended but the server wrote no record of it"
            if flight.fault:
                await self._abandon(slot, gen, tag, (p1, p2))
                raise BattleFault(flight.fault)
        finally:
            slot.flights.pop(tag, None)
        slot.last_progress = time.monotonic()
        return self._result(slot, gen, pb, data, time.monotonic() - t0, attempt)

    def _team(self, pb: PlannedBattle, agent: str) -> Team | None:
        return self._teams[(pb.format, pb.team_set, pb.team_of(agent))] if needs_teams(pb.format) else None

    async def _start_battle(self, slot: _Slot, gen: int, pb: PlannedBattle, p1, p2) -> str:
        deadline = time.monotonic() + self.cfg.start_timeout
        notices = p2._challenge_queue  # poke-env queues the name of each challenger here
        while not notices.empty():
            notices.get_nowait()  # stale notices of earlier challenges
        before = set(p1.battles) | set(p2.battles)
        try:
            team1, team2 = self._team(pb, pb.p1_agent), self._team(pb, pb.p2_agent)
            await p1.ps_client.challenge(to_id(p2.username), pb.format, team1 and team1.packed)
            while True:
                name = await asyncio.wait_for(notices.get(), deadline - time.monotonic())
                if name is _RESTARTED:
                    raise BattleFault("the server died before the battle started")
                if to_id(name) == to_id(p1.username):
                    break
            await p2.ps_client.accept_challenge(to_id(p1.username), team2 and team2.packed)
            while True:
                # Both players must hold it: the next start of either then counts it as old.
                new = [tag for tag in p1.battles if tag not in before and tag in p2.battles]
                if new:
                    return new[0]
                if slot.generation != gen:
                    raise BattleFault("the server died before the battle started")
                if time.monotonic() > deadline:
                    raise asyncio.TimeoutError
                await asyncio.sleep(0.005)
        except asyncio.TimeoutError:
            with contextlib.suppress(Exception):
                await p1.ps_client.send_message(f"/cancelchallenge {to_id(p2.username)}")
            raise BattleFault(f"no battle started within {self.cfg.start_timeout:g}s of the challenge") from None

    async def _battle_json(self, slot: _Slot, tag: str) -> dict | None:
        path = slot.server.battle_dir / f"{tag}.json"
        for _ in range(200):  # written (renamed into place) as the battle ends
            if path.exists():
                data = json.loads(path.read_text(encoding="utf-8"))
                path.unlink(missing_ok=True)  # held in memory until its shard is written
                return data
            await asyncio.sleep(0.05)
        return None

    async def _abandon(self, slot: _Slot, gen: int, tag: str, players) -> None:
        """Forfeit a battle we gave up on so the server frees it; its record is discarded."""
        slot.abandoned.add(tag)
        if slot.generation != gen or not slot.server.is_alive():
            return
        for player in players:
            try:
                await asyncio.wait_for(player.ps_client.send_message("/forfeit", room=tag), 5)
                return
            except Exception:
                continue

    def _result(self, slot: _Slot, gen: int, pb: PlannedBattle, data: dict, seconds: float,
                attempt: int) -> tuple[dict, BattleRecord]:
        agents = [slot.agent_of.get(to_id(name or "")) for name in data["players"]]
        if agents != [pb.p1_agent, pb.p2_agent]:
            raise BattleFault(f"sides came out as {agents}, planned p1={pb.p1_agent} p2={pb.p2_agent}")
        for side, agent in (("p1", pb.p1_agent), ("p2", pb.p2_agent)):
            team = self._team(pb, agent)
            used = tuple(to_id(m.get("species") or "") for m in data.get(f"{side}team") or [])
            if team is not None and used != team.species:
                raise BattleFault(f"{agent} played {used}, not its planned team {team.name}")
        specs = {"p1": self.cfg.agents[pb.p1_agent], "p2": self.cfg.agents[pb.p2_agent]}
        record = BattleRecord.from_server_json(
            data, specs=specs, team_set=pb.team_set if needs_teams(pb.format) else None,
            id_prefix=f"t{self._token}s{slot.index}g{gen}-")
        winner = {"p1": pb.p1_agent, "p2": pb.p2_agent, "": ""}[record.winner]
        score_a = 0.5 if winner == "" else float(winner == pb.agent_a)
        row = self._row(pb, slot, battle_seed=record.seed, winner=winner, score_a=score_a,
                        turns=record.turns, seconds=round(seconds, 3), attempts=attempt, battle_id=record.id)
        return row, record

    async def _monitor(self, slot: _Slot) -> None:
        while True:
            await asyncio.sleep(0.5)
            if not slot.server.is_alive():
                await self._recover(slot, "the server died")
            elif slot.flights and time.monotonic() - slot.last_progress > self.cfg.battle_timeout:
                await self._recover(slot, "the server stalled")
            now = time.monotonic()
            while slot.finished and now - slot.finished[0][0] > 5:
                # Late messages (|deinit) still look a battle up for a moment after its end.
                _, player, tag = slot.finished.popleft()
                player.battles.pop(tag, None)
                slot.early.pop(tag, None)  # the second player's end notice, after the flight
            for path in slot.server.battle_dir.glob("*.json"):
                # Forfeited battles, and strays (a challenge accepted after we gave up on it).
                with contextlib.suppress(FileNotFoundError):
                    stray = path.stem not in slot.flights and time.time() - path.stat().st_mtime > 60
                    if path.stem in slot.abandoned or stray:
                        path.unlink()
                        slot.abandoned.discard(path.stem)

    async def _recover(self, slot: _Slot, reason: str) -> None:
        slot.ready.clear()
        slot.generation += 1
        for flight in list(slot.flights.values()):
            if not flight.done.is_set():
                flight.fault = f"{reason} mid-battle"
                flight.done.set()
        players = list(slot.players.values())
        for player in players:  # wakes a start waiting for a challenge that will never come
            player._challenge_queue.put_nowait(_RESTARTED)
        slot.players.clear()
        slot.agent_of.clear()
        slot.finished.clear()
        await self._stop_players(players)
        if slot.restarts >= self.cfg.max_restarts:
            self._set_fatal(RuntimeError(
                f"server {slot.index}: {reason} after {slot.restarts} restarts; giving up. Its last "
                f"output:\n{slot.server.output_tail()}"))
            return
        slot.restarts += 1
        log.warning("server %d: %s; restarting (restart %d)", slot.index, reason, slot.restarts)
        try:
            await asyncio.to_thread(slot.server.restart)
        except Exception as err:
            self._set_fatal(err)
            return
        for path in slot.server.battle_dir.glob("*.json"):
            path.unlink(missing_ok=True)  # every battle of the old process was failed above
        slot.abandoned.clear()
        slot.early.clear()
        slot.last_progress = time.monotonic()
        slot.ready.set()

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            if len(self._rows) >= self.cfg.flush_every or (
                    self._rows and time.monotonic() - self._last_flush > 10):
                await self._flush()

    async def _flush(self) -> None:
        async with self._flush_lock:
            # A write whose flush was cancelled (the flusher, at the end of a run) goes on in its
            # thread: let it finish first, or two writes would pick the same next shard name.
            if self._writing is not None:
                writing, self._writing = self._writing, None
                await writing
            rows, records = self._rows, self._records
            self._rows, self._records = [], []
            if rows:
                self._writing = asyncio.ensure_future(asyncio.to_thread(self._write, rows, records))
                await asyncio.shield(self._writing)
                self._writing = None
            self._last_flush = time.monotonic()

    def _write(self, rows: list[dict], records: list[BattleRecord]) -> None:
        # Logs first: a crash between the two writes replays a battle, never loses its log.
        if records:
            writer = BattleLogWriter(self.out / "logs", prefix="battles", battles_per_shard=len(records) + 1)
            for record in records:
                writer.add(record)
            writer.flush()
        table = pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA)
        write_table_atomic(table, next_shard_path(self.out / "results", "results"))

    @staticmethod
    async def _drop_abandoned(slots: list[_Slot], wait: float = 5.0) -> None:
        """Delete the records of forfeited battles, which land a moment after the forfeit."""
        deadline = time.monotonic() + wait
        while any(s.abandoned for s in slots) and time.monotonic() < deadline:
            for slot in slots:
                for tag in list(slot.abandoned):
                    path = slot.server.battle_dir / f"{tag}.json"
                    if path.exists() or not slot.server.is_alive():
                        path.unlink(missing_ok=True)
                        slot.abandoned.discard(tag)
            await asyncio.sleep(0.05)

    @staticmethod
    async def _stop_players(players) -> None:
        async def stop(player):
            with contextlib.suppress(Exception):  # never a CancelledError: that must stop us
                await asyncio.wait_for(player.ps_client.stop_listening(), 5)
            player.battles.clear()
        await asyncio.gather(*(stop(p) for p in players))


# -- command line -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run a tournament from a config, then write and print its report."""
    import signal

    from eval.report import write_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML tournament config (see eval/configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. battles_per_pair=80 agents.x=policy:runs/x/final")
    parser.add_argument("--servers", type=int, default=None, help="Showdown servers to run battles on")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("poke_env").setLevel(logging.CRITICAL)
    # `kill` stops as cleanly as Ctrl-C: finished battles are saved, servers stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    overrides = list(args.overrides) + ([f"servers={args.servers}"] if args.servers is not None else [])
    try:
        cfg = load_config(args.config, overrides)
        tournament = Tournament(cfg, progress=not args.quiet)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    try:
        summary = tournament.run()
    except (ValueError, ServerError) as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        raise SystemExit(f"interrupted; finished battles are saved in {cfg.out}. "
                         "Run the same command to resume.") from None
    s = summary
    print(f"{s.played} battles played and {s.errors} recorded as errors in {s.seconds:.1f}s "
          f"({s.battles_per_s:.2f} battles/s); {s.faults} failed attempts, {s.restarts} server restarts.")
    print(f"Plan: {s.planned} battles; {s.finished} finished, {s.error_rows} errors, "
          f"{s.planned - s.finished - s.error_rows} not played yet.")
    plan, rows, _ = tournament.prepare()
    outcomes = latest_outcomes(rows)
    planned_rows = [outcomes[p.key] for p in plan if p.key in outcomes]
    report = write_report(planned_rows, list(cfg.agents), Path(cfg.out) / "report", n_boot=cfg.bootstrap,
                          seed=cfg.seed, anchor=cfg.anchor or None, title=f"Tournament {cfg.out}")
    print()
    print(report.ranking_markdown)
    print()
    for name, path in report.files.items():
        print(f"{name:>16}: {path}")


if __name__ == "__main__":
    main()
