"""The one battle runner: the retry loop every backend shares, and the `sim` backend's runner.

    stats = await play_jobs([SimRunner(seed=0)], jobs, concurrency=16, on_done=outcomes.append)
    stats = await SimRunner("maxbp", "random", battle_format="gen1ou", on_record=records.append).play(100)

A plan is a list of `Job`s (agents, format, teams, a number that seeds the battle). `play_jobs`
plays them on runners (this SimRunner, or eval/server_runner.py's ServerRunner for the real
server), retries what failed and reports each `Outcome`; eval/play.py opens the runners and
writes the shards, for the match and the tournament alike.

Agents stay poke-env `Player`s (built by `agents.registry.make_player`, never connected to a
server). For every battle the runner keeps one poke-env battle object per side, feeds it the
protocol lines and requests the simulator sends that side (poke-env's public battle API:
`parse_message`, `parse_request`, `won_by`), calls the agent's `choose_move` (awaiting it when
it returns an awaitable, as poke-env does) and sends the order back. A finished battle's record
is the dict the server's battle-end hook writes, so records are the same on both backends. A
battle lost to a crashed host, a stall or an agent that raised fails (BattleFailed) and is played
again; a host that died is restarted; a bad format or team fails at once (SetupError).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson
from poke_env.battle import Battle, DoubleBattle
from poke_env.battle.pokemon import Pokemon
from poke_env.data import GenData
from poke_env.player import Player
from poke_env.ps_client.server_configuration import LocalhostServerConfiguration
from poke_env.teambuilder import ConstantTeambuilder

from agents.registry import make_player
from battles.sim import SimHost, SimHostError

log = logging.getLogger(__name__)

MAX_INVALID = 10  # invalid orders in a row on one request before the battle is given up


class BattleFailed(Exception):
    """One battle could not finish; it is counted as an error and played again."""


class HostLost(BattleFailed):
    """The battle's host or server died under it: played again without using up one of its tries
    (restarts are bounded by the runner's max_restarts)."""


class AgentError(BattleFailed):
    """An agent raised (or kept sending orders the simulator refused)."""


class SetupError(ValueError):
    """The plan cannot be played at all (unknown format, illegal team): fail at once."""


def battle_seed(seed: int, index: int, attempt: int) -> str:
    """The simulator seed of one planned battle and attempt (reproducible from the plan)."""
    return "sodium," + hashlib.sha256(f"qabra:{seed}:{index}:{attempt}".encode()).hexdigest()[:32]


def to_choice(message: str) -> str:
    """A poke-env order message (`/choose move 1`, `/team 123`) as a simulator choice."""
    if message.startswith("/choose "):
        return message[len("/choose "):]
    if message.startswith("/team "):
        return "team " + message[len("/team "):]
    return message


@dataclass
class RunStats:
    battles: int = 0  # finished
    errors: int = 0  # failed tries, replayed ones included
    lost: int = 0  # of those, tries lost with their host or server
    restarts: int = 0  # hosts or servers restarted
    failed: int = 0  # battles given up after their last try


class _Side:
    """One side of one battle: the agent's poke-env battle object, fed what the simulator sends."""

    def __init__(self, game: _Game, side: str, player: Player, spec: str, team: str | None = None):
        self.game, self.side, self.player, self.spec = game, side, player, spec
        gen = GenData.from_format(player.format).gen
        cls = DoubleBattle if player.format_is_doubles else Battle
        self.battle = cls(battle_tag=game.tag, username=player.username, logger=player.logger, gen=gen)
        # As poke-env's Player does on |init|: the team it plays, here the planned one if any.
        builder = ConstantTeambuilder(team) if team is not None else player._team
        if isinstance(builder, ConstantTeambuilder):
            self.battle.teampreview_team = [Pokemon(gen=gen, teambuilder=m) for m in builder.team]
        player._battles[game.tag] = self.battle  # so `player.battles` shows it, as on a server
        self.invalid = 0
        self.last_message = ""

    def feed(self, text: str) -> None:
        for line in text.split("\n"):
            parts = line.split("|")
            if len(parts) < 2:
                continue  # not a protocol line
            _HANDLERS.get(parts[1], _Side._parse)(self, parts)
            if self.game.future.done():
                return

    # -- handlers, one per message kind that is not plain battle state ----------------------
    def _parse(self, parts: list[str]) -> None:
        self.battle.parse_message(parts)

    def _ignore(self, parts: list[str]) -> None:
        pass

    def _request(self, parts: list[str]) -> None:
        text = "|".join(parts[2:])
        if text:
            self.battle.parse_request(orjson.loads(text), self.player._strict_battle_tracking)
            self.invalid = 0
            self.decide()

    def _win(self, parts: list[str]) -> None:
        if parts[1] == "win":
            self.battle.won_by(parts[2])
        else:
            self.battle.tied()
        self.player._battle_finished_callback(self.battle)

    def _error(self, parts: list[str]) -> None:
        text = "|".join(parts[2:])
        if text.startswith("[Invalid choice]"):
            self.invalid += 1
            if self.invalid > MAX_INVALID:
                self.fail(f"sent {self.invalid} orders in a row that the simulator refused, the last "
                          f"{self.last_message!r}: {text}")
                return
            self.decide(retry=True)  # as poke-env does: choose again (rarely, the default)
        elif not text.startswith("[Unavailable choice]"):  # that one comes with a new request
            log.warning("battle %s, %s (%s): simulator error %s", self.game.tag, self.side, self.spec, text)

    # -- deciding ---------------------------------------------------------------------------
    def decide(self, retry: bool = False) -> None:
        battle, player = self.battle, self.player
        if battle._wait:
            return
        try:
            if retry and random.random() < player.DEFAULT_CHOICE_CHANCE:
                answer = player.choose_default_move()
            elif battle.teampreview:
                answer = player.teampreview(battle)
            else:
                answer = player.choose_move(battle)
        except Exception as err:
            self.fail(f"raised {err!r}", err)
            return
        if isinstance(answer, Awaitable):
            task = asyncio.ensure_future(answer)
            self.game.tasks.add(task)
            task.add_done_callback(self._answered)
        else:
            self.send(answer)

    def _answered(self, task: asyncio.Future) -> None:
        self.game.tasks.discard(task)
        if task.cancelled() or self.game.future.done():
            return
        if task.exception() is not None:
            self.fail(f"raised {task.exception()!r}", task.exception())
        else:
            self.send(task.result())

    def send(self, answer) -> None:
        message = answer if isinstance(answer, str) else answer.message
        if message and not self.game.future.done():
            self.last_message = message
            self.game.host.choose(self.game.battle_id, self.side, to_choice(message))

    def fail(self, what: str, cause: BaseException | None = None) -> None:
        turn = self.battle.turn
        self.game.fail(AgentError(f"agent {self.spec!r} ({self.side}) in battle {self.game.tag}, turn {turn}: {what}"),
                       cause)


_HANDLERS: dict[str, Callable[[_Side, list[str]], None]] = {
    "": _Side._parse,
    "request": _Side._request,
    "win": _Side._win,
    "tie": _Side._win,
    "error": _Side._error,
    "bigerror": _Side._ignore,
    "showteam": _Side._ignore,  # open team sheets only (VGC): not played here
    **{kind: _Side._ignore for kind in Player.MESSAGES_TO_IGNORE},
}


class _Game:
    """One battle on the host: two sides, and a future that ends with its record."""

    def __init__(self, host: SimHost, battle_id: str, players: list[tuple[Player, str]],
                 teams: tuple[str | None, str | None] = (None, None)):
        self.host, self.battle_id, self.tag = host, battle_id, f"battle-{battle_id}"
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.tasks: set[asyncio.Future] = set()
        self.messages = 0
        self.sides = {s: _Side(self, s, player, spec, team)
                      for s, (player, spec), team in zip(("p1", "p2"), players, teams)}

    def on_side(self, side: str, text: str) -> None:
        self.messages += 1
        if not self.future.done():
            self.sides[side].feed(text)

    def on_end(self, record: dict) -> None:
        if not self.future.done():
            self.future.set_result(record)

    def on_error(self, message: str) -> None:
        exc = SetupError(message) if self.messages == 0 and self.host.is_alive() else BattleFailed(message)
        if not self.future.done():
            self.future.set_exception(exc)

    def fail(self, exc: BattleFailed, cause: BaseException | None = None) -> None:
        if not self.future.done():
            exc.__cause__ = cause
            self.future.set_exception(exc)
        self.host.drop(self.battle_id)

    def close(self) -> None:
        """Forget the battle here and on the host, however it ended."""
        if not self.future.done():
            self.future.cancel()
            self.host.drop(self.battle_id)
        elif not self.future.cancelled():
            self.future.exception()  # retrieved: its error was already counted or raised
        for task in self.tasks:
            task.cancel()
        for side in self.sides.values():
            side.player._battles.pop(self.tag, None)


@dataclass(frozen=True)
class Job:
    """One battle to play: `index` numbers it in its plan (and seeds it), `specs` are the agents on
    p1 and p2, `teams` their packed teams (None: the agent's own team builder), `key` the plan's name, `roles`
    each side's part in the run (recorded with the battle, e.g. ("learner", ""))."""

    index: int
    specs: tuple[str, str]
    battle_format: str
    teams: tuple[str | None, str | None] = (None, None)
    key: str = ""
    roles: tuple[str, str] = ("", "")  # each side's part in the run ("learner"), recorded with the battle


class Runner(Protocol):
    """A backend: plays one battle of a plan and returns its record (the server's battle-end JSON),
    or raises BattleFailed (played again) or SetupError (the plan cannot be played)."""

    restarts: int

    async def play_one(self, job: Job, attempt: int) -> dict: ...


@dataclass
class Outcome:
    """How one planned battle ended: its record, or the reason it was given up after its last try."""

    job: Job
    attempts: int
    seconds: float  # of the last try
    runner: int  # which runner played the last try
    record: dict | None = None  # the server's battle-end JSON (both backends)
    error: str = ""


async def play_jobs(runners: Sequence[Runner], jobs: Sequence[Job], *, concurrency: int,
                    on_done: Callable[[Outcome], None], max_attempts: int = 0, max_errors: int = 20,
                    bar=None) -> RunStats:
    """Play `jobs` on `runners`, `concurrency` battles in flight on each: the one retry loop of every
    backend. A failed battle is played again, up to `max_attempts` tries (then its Outcome carries
    the error); with `max_attempts=0` until it finishes, but more than `max_errors` failed tries in
    all end the run. A try lost with its host or server (HostLost) is replayed without counting toward
    either limit: the runner restarts the host, up to its own max_restarts. `on_done` gets each
    Outcome as it comes; a SetupError ends the run at once."""
    queue = collections.deque(jobs)
    stats = RunStats()

    async def lane(index: int, runner: Runner) -> None:
        while queue:
            job, attempt, failed = queue.popleft(), 0, 0  # tries, and tries the battle itself failed
            while True:
                t0 = time.monotonic()
                try:
                    record = await runner.play_one(job, attempt)
                except BattleFailed as err:
                    stats.errors += 1
                    attempt += 1
                    if isinstance(err, HostLost):
                        stats.lost += 1
                        log.warning("%s; played again once the host is back", err)
                        continue
                    failed += 1
                    if max_attempts and failed >= max_attempts:
                        log.warning("%s; given up after %d tries", err, attempt)
                        stats.failed += 1
                        on_done(Outcome(job, attempt, time.monotonic() - t0, index, error=str(err)))
                        break
                    log.warning("%s; counted as an error and played again", err)
                    if not max_attempts and stats.errors - stats.lost > max_errors:
                        raise RuntimeError(f"gave up after {stats.errors} failed battles; last: {err}") from err
                    continue
                stats.battles += 1
                on_done(Outcome(job, attempt + 1, time.monotonic() - t0, index, record))
                break
            if bar is not None:
                bar.update(1)

    lanes = [asyncio.create_task(lane(i, r)) for i, r in enumerate(runners) for _ in range(min(concurrency, len(queue)))]
    try:
        await asyncio.gather(*lanes)
    finally:
        for task in lanes:
            task.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        stats.restarts = sum(r.restarts for r in runners)
    return stats


class SimRunner:
    """Plays battles on a simulator host: `play(n)` plays `n` of `p1_spec` (side p1) against
    `p2_spec`; `play_one(job, attempt)` plays one battle of any plan (the Runner interface)."""

    def __init__(self, p1_spec: str | None = None, p2_spec: str | None = None, *, battle_format: str = "",
                 on_record: Callable[[dict], None] | None = None, teams: tuple = (None, None),
                 concurrency: int = 16, seed: int = 0, max_restarts: int = 10, max_errors: int = 20,
                 stall_timeout: float = 120.0, host: SimHost | None = None):
        self.battle_format = battle_format
        self.on_record = on_record
        self.concurrency = concurrency
        self.seed = seed
        # Rooms are unique across runs: label files (agents/search_labels.py) are named by room.
        self.token = secrets.token_hex(4)
        self.max_restarts, self.max_errors = max_restarts, max_errors
        self.stall_timeout = stall_timeout
        self.host, self._given_host = host, host  # a given host is its owner's to close
        self.restarts = 0
        self._players: dict[tuple[str, str, str], Player] = {}  # (spec, side, format) -> its player
        self.specs = (p1_spec, p2_spec)
        self.players = [self._player(spec, side, battle_format, team)
                        for spec, side, team in zip(self.specs, ("p1", "p2"), teams) if spec is not None]
        self._count = 0
        self._host_lock = asyncio.Lock()
        self.last_error: str = ""

    def _player(self, spec: str, side: str, battle_format: str, team=None) -> Player:
        key = (spec, side, battle_format)
        if key not in self._players:
            try:
                self._players[key] = make_player(
                    spec, battle_format=battle_format, server_configuration=LocalhostServerConfiguration,
                    team=team, max_concurrent_battles=self.concurrency, start_listening=False)
            except Exception as err:
                raise SetupError(f"agent {spec!r} could not be built for {battle_format}: {err}") from err
        return self._players[key]

    async def _ensure_host(self, dead: SimHost | None = None) -> SimHost:
        async with self._host_lock:
            if self.host is None:
                self.host = await SimHost().start()
            elif self.host is dead or not self.host.is_alive():
                if self.restarts >= self.max_restarts:
                    raise RuntimeError(f"gave up after {self.restarts} simulator host restarts; "
                                       f"last error: {self.last_error}")
                log.warning("simulator host died; restarting it and replaying its battles")
                await self.host.close()
                self.host = await SimHost(self.host.ps_dir).start()
                self.restarts += 1
            return self.host

    async def play_one(self, job: Job, attempt: int) -> dict:
        host = await self._ensure_host()
        try:
            return await self._play_on(host, job, attempt)
        except SetupError as err:
            raise SetupError(f"{job.battle_format}: {err}") from None
        except BattleFailed as err:
            self.last_error = str(err)
            if not host.is_alive():
                await self._ensure_host(dead=host)
                raise HostLost(str(err)) from err
            raise

    async def _play_on(self, host: SimHost, job: Job, attempt: int) -> dict:
        players = [self._player(spec, side, job.battle_format) for spec, side in zip(job.specs, ("p1", "p2"))]
        self._count += 1
        battle_id = f"{job.battle_format}-{self.token}-{self._count}"
        game = _Game(host, battle_id, list(zip(players, job.specs)), job.teams)
        teams = [team if team is not None else p.next_team for team, p in zip(job.teams, players)]
        try:
            try:
                host.start_battle(battle_id, job.battle_format, [(p.username, t) for p, t in zip(players, teams)],
                                  battle_seed(self.seed, job.index, attempt), game)
            except SimHostError as err:
                raise BattleFailed(f"battle {game.tag} could not start: {err}") from err
            seen = -1
            while True:  # a battle the simulator sent nothing for in stall_timeout is stuck
                try:
                    return await asyncio.wait_for(asyncio.shield(game.future), self.stall_timeout)
                except asyncio.TimeoutError:
                    if game.messages == seen:  # not even an agent's pending answer moved it
                        game.fail(BattleFailed(f"battle {game.tag} made no progress for {self.stall_timeout:.0f}s"))
                    seen = game.messages
        finally:
            game.close()

    async def play(self, n: int, bar=None) -> RunStats:
        """Play `n` battles of the runner's pair to the end (replaying the failed ones); the host stays up."""
        jobs = [Job(i, self.specs, self.battle_format) for i in range(n)]
        return await play_jobs([self], jobs, concurrency=self.concurrency, max_errors=self.max_errors, bar=bar,
                               on_done=lambda outcome: self.on_record(outcome.record))

    async def close(self) -> None:
        """Close the host this runner started (a host it was given stays up)."""
        if self.host is not None and self.host is not self._given_host:
            await self.host.close()
