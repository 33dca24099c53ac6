"""The `server` backend's runner: battles of a plan on one real Showdown server, over websockets.

    runner = await ServerRunner(server, battle_timeout=120).start()
    stats = await play_jobs([runner], jobs, concurrency=16, on_done=...)   # eval/runner.py
    await runner.close()

The same Runner interface as the `sim` backend's SimRunner, driven by the same retry loop
(`play_jobs`). Each agent (spec, side, format) is one poke-env player logged in to the server;
a battle is a challenge and an accept with the planned teams, and its record is the JSON the
server's battle-end hook writes. A battle that gets no decision for `battle_timeout` seconds is
forfeited; a server that died or stalled is restarted and its battles in flight fail
(BattleFailed), so play_jobs plays them again. Runs on poke-env's loop (`run_on_poke_loop`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import logging
import threading
import time
from dataclasses import dataclass, field

from agents.registry import make_player
from battles.protocol import to_id
from battles.server import ShowdownServer
from battles.teams import packed_species
from eval.runner import BattleFailed, HostLost, Job, SetupError

log = logging.getLogger(__name__)

_RESTARTED = object()  # put in a challenge-notice queue when its server is gone


def run_on_poke_loop(coro, on_stop=None):
    """Run `coro` on poke-env's loop thread, where its players live; this thread only waits, so
    Ctrl-C reaches it: the coroutine is cancelled (its clean-up runs), then `on_stop()`."""
    from poke_env.concurrency import POKE_LOOP

    fut = asyncio.run_coroutine_threadsafe(coro, POKE_LOOP)
    try:
        while not fut.done():
            threading.Event().wait(0.25)
    except KeyboardInterrupt:
        POKE_LOOP.call_soon_threadsafe(fut.cancel)
        with contextlib.suppress(BaseException):
            fut.result(timeout=60)
        if on_stop is not None:
            on_stop()
        raise
    return fut.result()


@dataclass
class _Flight:
    tag: str
    done: asyncio.Event
    fault: str = ""
    last: float = field(default_factory=time.monotonic)  # the battle's last decision (or its start)


class ServerRunner:
    """Plays battles on one managed server; `index` names it in records and results."""

    def __init__(self, server: ShowdownServer, *, index: int = 0, battle_timeout: float = 120.0,
                 start_timeout: float = 30.0, max_restarts: int = 10):
        self.server, self.index = server, index
        self.battle_timeout, self.start_timeout, self.max_restarts = battle_timeout, start_timeout, max_restarts
        self.restarts = 0
        self.generation = 0  # bumped by every restart: older players and battles are gone
        self.last_progress = time.monotonic()
        self.players: dict = {}  # (spec, side, format) -> Player
        self.create_locks: dict = {}
        self.start_locks: dict = {}
        self.flights: dict[str, _Flight] = {}  # battle tag -> its flight
        self.early: dict[str, str] = {}  # tag -> fault ("" = finished) seen before its flight
        self.abandoned: set[str] = set()  # forfeited tags whose record must not be used
        self.finished: collections.deque = collections.deque()  # (time, player, tag)
        self.fatal: Exception | None = None
        self._monitor_task: asyncio.Task | None = None

    async def start(self) -> ServerRunner:
        self.ready = asyncio.Event()
        self._restart_lock = asyncio.Lock()
        await asyncio.to_thread(self.server.start)
        self.ready.set()
        self._monitor_task = asyncio.create_task(self._monitor())
        return self

    async def close(self) -> None:
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            await asyncio.gather(self._monitor_task, return_exceptions=True)
        await self._drop_abandoned()
        await _stop_players(list(self.players.values()))
        self.players.clear()

    # -- one battle ------------------------------------------------------------------------
    async def play_one(self, job: Job, attempt: int) -> dict:
        await self.ready.wait()
        if self.fatal is not None:
            raise self.fatal
        gen = self.generation
        try:
            return await self._play(job)
        except SetupError:
            raise
        except Exception as err:  # BattleFailed, or a websocket or client failure
            if self.fatal is not None:
                raise self.fatal from None
            what = str(err) if isinstance(err, BattleFailed) else f"{type(err).__name__}: {err}"
            # A closed connection is the first sign of a dead server: look a moment longer.
            if await self._lost(gen, wait=0.0 if isinstance(err, BattleFailed) else 2.0):
                raise HostLost(f"server {self.index}: {what}") from err
            if isinstance(err, BattleFailed):
                raise
            raise BattleFailed(what) from err

    async def _lost(self, gen: int, wait: float) -> bool:
        """Whether the server died or was restarted since generation `gen` began; a dead one is
        restarted now, so the next try never meets it (the monitor may not have looked yet)."""
        deadline = time.monotonic() + wait
        while self.generation == gen:
            if not self.server.is_alive():
                await self._restart(gen, "the server died")
                break
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        if self.fatal is not None:
            raise self.fatal
        return True

    async def _play(self, job: Job) -> dict:
        gen = self.generation
        p1 = await self._player(job.specs[0], "p1", job.battle_format)
        p2 = await self._player(job.specs[1], "p2", job.battle_format)
        teams = [t if t is not None else p.next_team for t, p in zip(job.teams, (p1, p2))]
        async with contextlib.AsyncExitStack() as stack:
            # One challenge at a time per player: a new battle is then the player's only new one.
            for p in (p1, p2):
                await stack.enter_async_context(self.start_locks.setdefault(p.username, asyncio.Lock()))
            tag = await self._start_battle(gen, job.battle_format, p1, p2, teams)
        self.last_progress = time.monotonic()
        flight = _Flight(tag, asyncio.Event())  # its clock starts now: the start has its own timeout
        self.flights[tag] = flight
        if tag in self.early:
            flight.fault = self.early.pop(tag)
            flight.done.set()
        try:  # timed out when no decision came for battle_timeout seconds (from its start on)
            while not flight.done.is_set():
                left = self.battle_timeout - (time.monotonic() - flight.last)
                if left <= 0:
                    flight.fault = f"timed out: no decision for {self.battle_timeout:g}s"
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(flight.done.wait(), left)
            data = None if flight.fault else await self._battle_json(tag, gen)
            if data is None and not flight.fault:
                flight.fault = "the battle ended but the server wrote no record of it"
            if flight.fault:
                await self._abandon(gen, tag, (p1, p2))
                raise BattleFailed(flight.fault)
        finally:
            if self.flights.get(tag) is flight:  # a restarted server reuses room names
                del self.flights[tag]
        self.last_progress = time.monotonic()
        if [to_id(n or "") for n in data["players"]] != [to_id(p1.username), to_id(p2.username)]:
            raise BattleFailed(f"sides came out as {data['players']}, planned {p1.username}, {p2.username}")
        for side, planned in zip(("p1", "p2"), job.teams):
            used = tuple(to_id(m.get("species") or "") for m in data.get(f"{side}team") or [])
            if planned is not None and used != packed_species(planned):
                raise BattleFailed(f"{side} played {used}, not its planned team {packed_species(planned)}")
        # A restarted server numbers its rooms from 1 again: the prefix keeps record ids unique.
        return {**data, "id_prefix": f"s{self.index}g{gen}"}

    async def _player(self, spec: str, side: str, fmt: str):
        key = (spec, side, fmt)
        async with self.create_locks.setdefault(key, asyncio.Lock()):
            if key in self.players:
                return self.players[key]
            gen = self.generation
            try:
                player = await asyncio.to_thread(
                    make_player, spec, battle_format=fmt, server_configuration=self.server.server_configuration,
                    max_concurrent_battles=1_000_000)  # battles in flight are bounded by play_jobs
            except Exception as err:
                raise SetupError(f"agent {spec!r} could not be built for {fmt}: {err}") from err
            self._guard(spec, player)
            deadline = time.monotonic() + self.start_timeout
            while not player.ps_client.logged_in.is_set() and self.generation == gen and self.server.is_alive():
                if time.monotonic() > deadline:
                    await _stop_players([player])
                    raise BattleFailed(f"agent {spec} could not log in to server {self.index}")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(player.ps_client.logged_in.wait(), 0.25)
            if self.generation != gen or not self.server.is_alive():
                await _stop_players([player])
                raise BattleFailed("the server died or restarted while an agent logged in")
            self.players[key] = player
            return player

    def _guard(self, agent: str, player) -> None:
        """Report an agent's exception or a battle's end to the battle's waiter at once."""

        def settle(tag: str, fault: str) -> None:
            flight = self.flights.get(tag)
            if flight is None:
                self.early.setdefault(tag, fault)
            elif not flight.done.is_set():
                flight.fault = fault
                flight.done.set()

        def decided(tag: str) -> None:
            # A decision is progress: a slow agent (search) is not a stalled server.
            self.last_progress = time.monotonic()
            flight = self.flights.get(tag)
            if flight is not None:
                flight.last = self.last_progress

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
            self.finished.append((time.monotonic(), player, battle.battle_tag))
            settle(battle.battle_tag, "")
        player._battle_finished_callback = finished

    async def _start_battle(self, gen: int, fmt: str, p1, p2, teams) -> str:
        deadline = time.monotonic() + self.start_timeout
        notices = p2._challenge_queue  # poke-env queues the name of each challenger here
        while not notices.empty():
            notices.get_nowait()  # stale notices of earlier challenges
        before = set(p1.battles) | set(p2.battles)
        try:
            await p1.ps_client.challenge(to_id(p2.username), fmt, teams[0])
            while True:
                name = await asyncio.wait_for(notices.get(), deadline - time.monotonic())
                if name is _RESTARTED:
                    raise BattleFailed("the server died before the battle started")
                if to_id(name) == to_id(p1.username):
                    break
            await p2.ps_client.accept_challenge(to_id(p1.username), teams[1])
            while True:
                # Both players must hold it: the next start of either then counts it as old.
                new = [tag for tag in p1.battles if tag not in before and tag in p2.battles]
                if new:
                    return new[0]
                if self.generation != gen:
                    raise BattleFailed("the server died before the battle started")
                if time.monotonic() > deadline:
                    raise asyncio.TimeoutError
                await asyncio.sleep(0.005)
        except asyncio.TimeoutError:
            with contextlib.suppress(Exception):
                await p1.ps_client.send_message(f"/cancelchallenge {to_id(p2.username)}")
            raise BattleFailed(f"no battle started within {self.start_timeout:g}s of the challenge") from None

    async def _battle_json(self, tag: str, gen: int) -> dict | None:
        path = self.server.battle_dir / f"{tag}.json"
        for _ in range(200):  # written (renamed into place) as the battle ends
            if self.generation != gen:
                return None  # a file of that name now belongs to the restarted server's battle
            if path.exists():
                data = json.loads(path.read_text(encoding="utf-8"))
                path.unlink(missing_ok=True)  # its owner writes it to a shard
                return data
            await asyncio.sleep(0.05)
        return None

    async def _abandon(self, gen: int, tag: str, players) -> None:
        """Forfeit a battle we gave up on so the server frees it; its record is discarded."""
        self.abandoned.add(tag)
        if self.generation != gen or not self.server.is_alive():
            return
        for player in players:
            try:
                await asyncio.wait_for(player.ps_client.send_message("/forfeit", room=tag), 5)
                return
            except Exception:
                continue

    # -- the server's health -------------------------------------------------------------------
    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if not self.server.is_alive():
                await self._restart(self.generation, "the server died")
            elif self.flights and time.monotonic() - self.last_progress > 2 * self.battle_timeout:
                # Twice a battle's own timeout: a stalled battle is failed (and counted) by its
                # waiter first; only a server where nothing moves at all is restarted.
                await self._restart(self.generation, "the server stalled")
            now = time.monotonic()
            while self.finished and now - self.finished[0][0] > 5:
                # Late messages (|deinit) still look a battle up for a moment after its end.
                _, player, tag = self.finished.popleft()
                player.battles.pop(tag, None)
                self.early.pop(tag, None)  # the second player's end notice, after the flight
            for path in self.server.battle_dir.glob("*.json"):
                # Forfeited battles, and strays (a challenge accepted after we gave up on it).
                with contextlib.suppress(FileNotFoundError):
                    stray = path.stem not in self.flights and time.time() - path.stat().st_mtime > 60
                    if path.stem in self.abandoned or stray:
                        path.unlink()
                        self.abandoned.discard(path.stem)

    async def _restart(self, gen: int, reason: str) -> None:
        """Restart the server of generation `gen` once, whoever notices first (monitor or a battle)."""
        async with self._restart_lock:
            if self.generation == gen and self.fatal is None:
                await self._recover(reason)

    async def _recover(self, reason: str) -> None:
        self.ready.clear()
        self.generation += 1
        for flight in list(self.flights.values()):
            if not flight.done.is_set():
                flight.fault = f"{reason} mid-battle"
                flight.done.set()
        players = list(self.players.values())
        for player in players:  # wakes a start waiting for a challenge that will never come
            player._challenge_queue.put_nowait(_RESTARTED)
        self.players.clear()
        self.finished.clear()
        await _stop_players(players)
        try:
            if self.restarts >= self.max_restarts:
                raise RuntimeError(f"server {self.index}: {reason} after {self.restarts} restarts; giving up. "
                                   f"Its last output:\n{self.server.output_tail()}")
            self.restarts += 1
            log.warning("server %d: %s; restarting (restart %d)", self.index, reason, self.restarts)
            await asyncio.to_thread(self.server.restart)
        except Exception as err:
            self.fatal = err
            self.ready.set()  # every waiting battle now raises it
            raise
        for path in self.server.battle_dir.glob("*.json"):
            path.unlink(missing_ok=True)  # every battle of the old process was failed above
        self.abandoned.clear()
        self.early.clear()
        self.last_progress = time.monotonic()
        self.ready.set()

    async def _drop_abandoned(self, wait: float = 5.0) -> None:
        """Delete the records of forfeited battles, which land a moment after the forfeit."""
        deadline = time.monotonic() + wait
        while self.abandoned and time.monotonic() < deadline:
            for tag in list(self.abandoned):
                path = self.server.battle_dir / f"{tag}.json"
                if path.exists() or not self.server.is_alive():
                    path.unlink(missing_ok=True)
                    self.abandoned.discard(tag)
            await asyncio.sleep(0.05)


async def _stop_players(players) -> None:
    async def stop(player):
        with contextlib.suppress(Exception):  # never a CancelledError: that must stop us
            await asyncio.wait_for(player.ps_client.stop_listening(), 5)
        player.battles.clear()
    await asyncio.gather(*(stop(p) for p in players))
