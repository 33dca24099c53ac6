"""The simulator host from Python: one long-lived `node battles/sim_host.js` process that
runs many Showdown battles at once, spoken to over its stdin/stdout in JSON lines.

    host = SimHost()
    await host.start()
    host.start_battle("gen1ou-1", "gen1ou", [("alice", team1), ("bob", team2)], seed, handler)
    host.choose("gen1ou-1", "p1", "move 1")

`handler` receives `on_side(side, text)` (protocol lines for one side, exactly as a server
sends them, requests included), then `on_end(record)` (the dict the server's battle-end hook
writes, see battles/showdown_config.js) or `on_error(message)`. The host dies with its owner:
it exits when its stdin closes, and the kernel kills it when the Python process dies (Linux).
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import itertools
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Protocol

import orjson

from battles.server import showdown_dir

log = logging.getLogger(__name__)

HOST_JS = Path(__file__).resolve().parent / "sim_host.js"
_PR_SET_PDEATHSIG = 1


class SimHostError(RuntimeError):
    """The simulator host could not be started or died."""


class BattleHandler(Protocol):
    def on_side(self, side: str, text: str) -> None: ...
    def on_end(self, record: dict) -> None: ...
    def on_error(self, message: str) -> None: ...


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the process that started it dies (SIGKILL included)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class SimHost:
    """One Node process hosting many battles of the pinned pokemon-showdown simulator."""

    def __init__(self, ps_dir: str | Path | None = None, *, tail_lines: int = 40):
        self.ps_dir = Path(ps_dir) if ps_dir else showdown_dir()
        self.version: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._handlers: dict[str, BattleHandler] = {}
        self._reader: asyncio.Task | None = None
        self._stderr: asyncio.Task | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._bench: dict[str, asyncio.Future] = {}
        self._bench_ids = itertools.count()
        self._dead = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and self._reader is not None \
            and not self._dead

    def output_tail(self) -> str:
        """The host's last lines on stderr, for error messages."""
        return "\n".join(self._tail)

    async def start(self) -> SimHost:
        """Start the Node process and wait for its greeting."""
        try:
            self._proc = await asyncio.create_subprocess_exec(
                "node", str(HOST_JS), str(self.ps_dir),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                limit=1 << 28,  # one line holds a whole battle's record
                preexec_fn=_die_with_parent,
            )
        except FileNotFoundError:
            raise SimHostError("Node.js ('node') is not on PATH; the sim backend needs it (see setup_env.sh)") from None
        self._stderr = asyncio.create_task(self._read_stderr())
        line = await self._proc.stdout.readline()
        try:
            greeting = json.loads(line)
        except json.JSONDecodeError:
            await self._proc.wait()
            await asyncio.sleep(0.05)
            raise SimHostError(f"simulator host {HOST_JS} did not start (exit {self._proc.returncode}); "
                               f"its output:\n{line.decode(errors='replace')}{self.output_tail()}") from None
        self.version = greeting.get("version")
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read_stderr(self) -> None:
        async for line in self._proc.stderr:
            self._tail.append(line.decode(errors="replace").rstrip("\n"))

    async def _read(self) -> None:
        reader = self._proc.stdout
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                msg = orjson.loads(line)
                bid = msg.get("id")
                future = self._bench.pop(bid, None)
                if future is not None:
                    if "error" in msg:
                        future.set_exception(SimHostError(msg["error"]))
                    else:
                        future.set_result(msg["bench"])
                    continue
                handler = self._handlers.get(bid)
                if handler is None:
                    continue  # dropped
                if "side" in msg:
                    try:
                        handler.on_side(msg["side"], msg["data"])
                    except Exception as err:  # a handler's bug fails its battle, not the host
                        self.drop(bid)
                        handler.on_error(f"handling {msg['side']}'s messages raised {err!r}")
                elif "end" in msg:
                    del self._handlers[bid]
                    handler.on_end(msg["end"])
                elif "error" in msg:
                    del self._handlers[bid]
                    handler.on_error(msg["error"])
        finally:
            # The host is gone: every battle it held is lost.
            self._dead = True
            try:
                await asyncio.wait_for(self._proc.wait(), timeout=2)
            except asyncio.TimeoutError:
                pass
            code = self._proc.returncode
            lost, self._handlers = self._handlers, {}
            for handler in lost.values():
                handler.on_error(f"simulator host (pid {self._proc.pid}) died (exit {code}); "
                                 f"its last output:\n{self.output_tail()}")
            for future in self._bench.values():
                if not future.done():
                    future.set_exception(SimHostError("simulator host died during a bench"))

    def _send(self, obj: dict) -> None:
        if not self.is_alive():
            raise SimHostError(f"simulator host is not running; its last output:\n{self.output_tail()}")
        # Written at once, not batched: the host starts simulating this battle while Python
        # still answers the others, so the two processes work side by side.
        self._proc.stdin.write(orjson.dumps(obj) + b"\n")

    def start_battle(self, battle_id: str, battle_format: str, players: list[tuple[str, str | None]],
                     seed: str | None, handler: BattleHandler) -> None:
        """Start one battle; `players` are (name, packed team or None) for p1 and p2."""
        self._handlers[battle_id] = handler
        self._send({"t": "start", "id": battle_id, "format": battle_format, "seed": seed,
                    "players": [{"name": name, "team": team} for name, team in players]})

    def choose(self, battle_id: str, side: str, choice: str) -> None:
        """Send one side's choice (`move 1`, `switch 3`, `team 123456`, `default`)."""
        if not self.is_alive():
            return  # the reader fails every battle of a dead host
        self._send({"t": "choose", "id": battle_id, "side": side, "choice": choice})

    def drop(self, battle_id: str) -> None:
        """Forget a battle its owner gave up on."""
        self._handlers.pop(battle_id, None)
        if self.is_alive():
            self._send({"t": "drop", "id": battle_id})

    async def bench(self, battle_format: str, n: int, concurrency: int, teams: list[str] | None = None) -> dict:
        """The simulator alone: n battles of the package's random players; {battles, turns, seconds}."""
        bid = f"bench-{next(self._bench_ids)}"
        future = asyncio.get_running_loop().create_future()
        self._bench[bid] = future
        self._send({"t": "bench", "id": bid, "format": battle_format, "n": n, "concurrency": concurrency,
                    "teams": teams or []})
        return await future

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) used so far by the host process."""
        import psutil

        try:
            t = psutil.Process(self._proc.pid).cpu_times()
        except (psutil.NoSuchProcess, AttributeError):
            return 0.0
        return t.user + t.system

    def kill(self) -> None:
        """SIGKILL the host (as a crash would); its battles fail with on_error."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()

    async def close(self) -> None:
        """Close stdin (the host exits by itself), then make sure it is gone."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            try:
                proc.stdin.close()
                await asyncio.wait_for(proc.wait(), timeout=5)
            except (asyncio.TimeoutError, BrokenPipeError, ConnectionResetError):
                proc.kill()
                await proc.wait()
        for task in (self._reader, self._stderr):
            if task is not None:
                try:
                    await asyncio.wait_for(task, timeout=5)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    task.cancel()
