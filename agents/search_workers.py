"""The search bot's Node.js simulator workers: long-lived `node search_worker.js` processes
(agents/search_worker.js, agents/search_sim.js) spoken to in JSON lines, and a pool that runs
commands on them in parallel and restarts a worker that died or hung.

    pool = WorkerPool(2, warm={"cmd": "warm", "format": "gen1ou"})
    answers = pool.run([{"cmd": "search", ...}, ...], timeout=10.0)   # a WorkerError per failure
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from pathlib import Path

from battles.server import showdown_dir

# A child of the search bot's logger, so quieting "agents.search" quiets its workers too.
log = logging.getLogger("agents.search.workers")

WORKER_JS = Path(__file__).resolve().with_name("search_worker.js")


class WorkerError(RuntimeError):
    """A simulator worker died, hung or answered with an error."""


class SimWorker:
    """One long-lived `node search_worker.js` process, spoken to in JSON lines."""

    def __init__(self, ps_dir: Path | None = None):
        self.ps_dir = Path(ps_dir) if ps_dir else showdown_dir()
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._ids = count(1)
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self.restarts = -1  # the first start is not a restart

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> SimWorker:
        """Start (or restart) the process."""
        self.close()
        try:
            self._proc = subprocess.Popen(
                ["node", "--max-semi-space-size=32", str(WORKER_JS), str(self.ps_dir)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, encoding="utf-8", bufsize=1,
            )
        except FileNotFoundError:
            raise WorkerError("Node.js ('node') is not on PATH; the search bot needs it. "
                              "Install Node.js 18+ and run ./setup_env.sh.") from None
        self._lines = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        for stream, sink in ((self._proc.stdout, self._lines.put), (self._proc.stderr, self._stderr.append)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()
        self.restarts += 1
        return self

    @staticmethod
    def _read(stream, sink) -> None:
        for line in stream:
            sink(line)
        sink(None)  # end of output: the process is gone

    def call(self, cmd: dict, timeout: float) -> dict:
        """Send one command and wait for its answer; WorkerError on death, timeout or error."""
        if not self.alive():
            self.start()
        cmd = dict(cmd, id=next(self._ids))
        try:
            self._proc.stdin.write(json.dumps(cmd) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as err:
            raise WorkerError(f"search worker {self.pid} is gone ({err})") from None
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                self.close()
                raise WorkerError(f"search worker gave no answer within {timeout:.1f}s; killed") from None
            if line is None:
                pid, code = self.pid, self._proc.wait() if self._proc else None
                err = "".join(x for x in self._stderr if x)[-2000:]
                self.close()
                raise WorkerError(f"search worker {pid} died (exit {code}). {err}".strip())
            answer = json.loads(line)
            if answer.get("id") != cmd["id"]:
                continue  # the late answer of a command that timed out
            if not answer.get("ok"):
                raise WorkerError(f"search worker failed on {cmd['cmd']}: {answer.get('error')}")
            return answer

    def close(self) -> None:
        """Kill the process; the reader threads end at its end of output."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.kill()
            proc.wait(timeout=5)
            proc.stdin.close()
        except (OSError, subprocess.TimeoutExpired):
            pass

    def __del__(self):
        if self._proc is not None:
            try:
                self._proc.kill()
            except OSError:
                pass


class WorkerPool:
    """`n` workers; commands run in parallel, one per free worker. A worker that died or hung
    is started again (and sent `warm`, when given, so its next answer is not slowed)."""

    def __init__(self, n: int = 1, ps_dir: Path | None = None, warm: dict | None = None):
        if n < 1:
            raise ValueError(f"search workers must be at least 1, got {n}")
        self.workers = [SimWorker(ps_dir) for _ in range(n)]
        self.warm = warm
        self._free: queue.Queue = queue.Queue()
        for w in self.workers:
            self._free.put(w)
        self._executor = ThreadPoolExecutor(max_workers=n, thread_name_prefix="search")

    @property
    def restarts(self) -> int:
        return sum(max(w.restarts, 0) for w in self.workers)

    def _one(self, cmd: dict, timeout: float) -> dict | WorkerError:
        worker = self._free.get()
        try:
            return worker.call(cmd, timeout)
        except WorkerError as err:
            if worker.alive():  # it answered with an error: nothing to restart
                log.warning("%s", err)
                return err
            log.warning("%s; restarting it", err)
            try:
                worker.start()
                if self.warm:
                    worker.call(self.warm, 60.0)
            except WorkerError as again:
                log.warning("search worker restart failed: %s", again)
            return err
        finally:
            self._free.put(worker)

    def run(self, cmds: list[dict], timeout: float) -> list[dict | WorkerError]:
        """Answers in order; a failed command gives its WorkerError instead of raising."""
        futures = [self._executor.submit(self._one, c, timeout) for c in cmds]
        return [f.result() for f in futures]

    def warm_all(self) -> None:
        """Start every worker and load the format's data (in the background at start-up)."""
        if self.warm:
            self.run([self.warm] * len(self.workers), 60.0)

    def close(self) -> None:
        for w in self.workers:
            w.close()
        self._executor.shutdown(wait=False)
