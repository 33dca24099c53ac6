"""The local Pokémon Showdown server: start, health, restart, stop.

    with ShowdownServer() as server:          # a free port on 127.0.0.1
        player = RandomPlayer(server_configuration=server.server_configuration)

`python -m battles.server [--port P]` keeps one running (restarting it if it dies)
until Ctrl-C. Every finished battle is written by the server itself, as JSON, to
`server.battle_dir` (see battles/showdown_config.js).
"""

from __future__ import annotations

import argparse
import collections
import filecmp
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from websockets.sync.client import connect

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHOWDOWN_DIR = REPO_ROOT / ".showdown" / "node_modules" / "pokemon-showdown"
CONFIG_TEMPLATE = Path(__file__).resolve().parent / "showdown_config.js"
HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """The Showdown server could not be started or kept running."""


def showdown_dir() -> Path:
    """The installed pokemon-showdown package folder (QABRA_SHOWDOWN_DIR overrides)."""
    path = Path(os.environ.get("QABRA_SHOWDOWN_DIR", DEFAULT_SHOWDOWN_DIR))
    if not (path / "pokemon-showdown").exists():
        raise ServerError(
            f"Pokémon Showdown is not installed at {path}. Run ./setup_env.sh "
            "(or set QABRA_SHOWDOWN_DIR to a pokemon-showdown package folder)."
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def _install_config(ps_dir: Path) -> None:
    target = ps_dir / "config" / "config.js"
    if not target.exists() or not filecmp.cmp(CONFIG_TEMPLATE, target, shallow=False):
        shutil.copyfile(CONFIG_TEMPLATE, target)
    (ps_dir / "logs" / "repl").mkdir(parents=True, exist_ok=True)


class ShowdownServer:
    """One real Showdown server process bound to 127.0.0.1, no login, no throttling."""

    def __init__(
        self,
        port: int | None = None,
        *,
        battle_dir: str | Path | None = None,
        startup_timeout: float = 60.0,
        tail_lines: int = 60,
    ):
        self.requested_port = port
        self.port: int | None = None
        self.startup_timeout = startup_timeout
        self._workdir = Path(tempfile.mkdtemp(prefix="qabra-showdown-"))
        self.battle_dir = Path(battle_dir) if battle_dir else self._workdir / "battles"
        self.battle_dir.mkdir(parents=True, exist_ok=True)
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- addresses --------------------------------------------------------------
    @property
    def websocket_url(self) -> str:
        assert self.port is not None, "server not started"
        return f"ws://{HOST}:{self.port}/showdown/websocket"

    @property
    def server_configuration(self):
        """A poke-env ServerConfiguration pointing at this server."""
        from poke_env.ps_client.server_configuration import ServerConfiguration

        assert self.port is not None, "server not started"
        return ServerConfiguration(
            f"ws://{HOST}:{self.port}/showdown/websocket",
            "https://play.pokemonshowdown.com/action.php?",
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) used so far by the server and all its child processes."""
        import psutil

        if self._proc is None:
            return 0.0
        total = 0.0
        try:
            root = psutil.Process(self._proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        for proc in procs:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def output_tail(self) -> str:
        """The server's last lines of output, for error messages."""
        return "\n".join(self._tail)

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> ShowdownServer:
        """Start the server and wait until it accepts a websocket."""
        with self._lock:
            if self.is_alive():
                return self
            self._start_locked()
        return self

    def _start_locked(self) -> None:
        ps_dir = showdown_dir()
        _install_config(ps_dir)
        if self.requested_port is not None:
            if port_in_use(self.requested_port):
                raise ServerError(
                    f"port {self.requested_port} on {HOST} is in use. Stop whatever holds it, "
                    "pick another port, or leave the port out to get a free one."
                )
            port = self.requested_port
        else:
            port = self.port if self.port and not port_in_use(self.port) else free_port()
        logs = self._workdir / f"logs-{port}"
        logs.mkdir(parents=True, exist_ok=True)
        self.battle_dir.mkdir(parents=True, exist_ok=True)  # started again after stop()
        env = dict(os.environ, QABRA_BATTLE_DIR=str(self.battle_dir), QABRA_PS_LOGS=str(logs) + "/")
        self._tail.clear()
        self._proc = subprocess.Popen(
            ["node", "pokemon-showdown", "start", "--skip-build", "--no-security", str(port)],
            cwd=ps_dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its own process group: stop() takes the children too
        )
        self._reader = threading.Thread(target=self._read_output, args=(self._proc,), daemon=True)
        self._reader.start()
        self.port = port
        self._wait_until_ready()
        log.info("Showdown server up on %s (pid %d)", self.websocket_url, self._proc.pid)

    def _read_output(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._tail.append(line.rstrip("\n"))

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                time.sleep(0.2)  # let the reader collect the last words
                raise ServerError(
                    f"Showdown server on port {self.port} exited with code {self._proc.returncode} "
                    f"while starting. Its last output:\n{self.output_tail()}"
                )
            try:
                with connect(self.websocket_url, open_timeout=2, close_timeout=1) as ws:
                    ws.recv(timeout=5)  # the server greets every client (|challstr|)
                return
            except Exception as err:  # not listening yet
                last_error = err
                time.sleep(0.25)
        self._kill()
        raise ServerError(
            f"Showdown server on port {self.port} did not accept a websocket within "
            f"{self.startup_timeout:.0f}s (last error: {last_error}). Its last output:\n"
            f"{self.output_tail()}"
        )

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ensure_running(self) -> bool:
        """Restart the server if it died; True when a restart happened."""
        with self._lock:
            if self.is_alive():
                return False
            if self._proc is not None:
                log.warning(
                    "Showdown server on port %s died (exit %s); restarting. Last output:\n%s",
                    self.port, self._proc.returncode, self.output_tail(),
                )
            self._kill()
            self._start_locked()
            self.restarts += 1
            return True

    def restart(self) -> None:
        """Stop and start again (on the same port when it is still free)."""
        with self._lock:
            self._kill()
            self._start_locked()
            self.restarts += 1

    def stop(self) -> None:
        """Stop the server and remove its temporary folder (its logs, and the battle records
        not yet harvested when no `battle_dir` of the caller's was given)."""
        with self._lock:
            self._kill()
            shutil.rmtree(self._workdir, ignore_errors=True)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()

    def __enter__(self) -> ShowdownServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):
        try:
            self._kill()
        except Exception:
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a local Pokémon Showdown server for Qabra.")
    parser.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--battle-dir", default=None, help="where finished battles are written")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops the server like Ctrl-C
    try:
        server = ShowdownServer(args.port, battle_dir=args.battle_dir).start()
    except ServerError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"Showdown server ready: {server.websocket_url}", flush=True)
    print(f"  browse http://{HOST}:{server.port}  battles recorded in {server.battle_dir}", flush=True)
    print("  Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(1.0)
            if server.ensure_running():
                print(f"server died and was restarted on port {server.port}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
