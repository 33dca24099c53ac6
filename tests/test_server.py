"""The real local Showdown server: start, stop, errors, restart."""

from __future__ import annotations

import os
import signal
import socket

import pytest
from websockets.sync.client import connect

from battles.server import ServerError, ShowdownServer, port_in_use

pytestmark = pytest.mark.server


def greets(server: ShowdownServer) -> str:
    """The server's first messages to a new client (they include the login challenge)."""
    with connect(server.websocket_url, open_timeout=5) as ws:
        return "\n".join(ws.recv(timeout=5) for _ in range(2))


def test_start_stop_on_free_port():
    with ShowdownServer() as server:
        assert server.websocket_url.startswith("ws://127.0.0.1:")
        assert "challstr" in greets(server)
        port = server.port
        assert port_in_use(port)
        assert server.cpu_seconds() > 0  # Node's start-up alone costs CPU time
        workdir = server.battle_dir.parent
        assert workdir.name.startswith("qabra-showdown-") and workdir.is_dir()
    assert not server.is_alive()
    assert not port_in_use(port)
    assert not workdir.exists()  # its temporary folder (logs, unharvested records) went with it
    with server:  # and it starts again after a stop
        assert "challstr" in greets(server) and server.battle_dir.is_dir()


def test_binds_loopback_only():
    import psutil

    with ShowdownServer() as server:
        bound = {c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port}
    assert bound == {"127.0.0.1"}, bound  # listening, and on the loopback address alone


def test_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServerError, match=f"port {port} .* is in use"):
            ShowdownServer(port).start()


def test_never_comes_up_reports_output(tmp_path, monkeypatch):
    # A package folder whose server exits at once: the error carries its last output.
    fake = tmp_path / "pokemon-showdown"
    (fake / "config").mkdir(parents=True)
    (fake / "pokemon-showdown").write_text("console.log('cannot start: broken install'); process.exit(3);\n")
    monkeypatch.setenv("QABRA_SHOWDOWN_DIR", str(fake))
    with pytest.raises(ServerError, match="(?s)exited with code 3.*broken install"):
        ShowdownServer(startup_timeout=20).start()


def test_restarts_when_killed_and_several_run_at_once():
    with ShowdownServer() as a, ShowdownServer() as b:
        assert a.port != b.port
        os.killpg(a.pid, signal.SIGKILL)
        a._proc.wait(timeout=10)
        assert not a.is_alive()
        assert a.ensure_running() is True
        assert a.restarts == 1
        assert "challstr" in greets(a)
        assert "challstr" in greets(b)
        assert b.ensure_running() is False


def test_sigterm_to_the_server_command_stops_its_node_server():
    """`kill PID` of `python -m battles.server` takes the Node server and its port with it."""
    import subprocess
    import sys
    import time

    from battles.server import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "battles.server", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        while "Showdown server ready" not in (line := proc.stdout.readline()):
            assert line, "the server command exited before it was ready"
        assert port_in_use(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while port_in_use(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not port_in_use(port)
    finally:
        if proc.poll() is None:
            proc.kill()
