"""Online play (eval/online.py) against the project's own local servers, never a public one.

Every run is the real command in a subprocess, as a user types it. Logins are checked on a
second local Showdown server with its guest security on (a name needs a signed assertion),
whose login server is a small HTTP stand-in here that signs assertions with a key made for
the test: the Showdown server itself verifies them as it verifies the public login server's.
"""

from __future__ import annotations

import csv
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from battles.logs import read_battle_logs
from battles.protocol import to_id
from battles.trajectories import read_trajectories
from eval.credentials import CredentialError, load, read_file

REPO = Path(__file__).resolve().parents[1]
SECRET = "pa55-Qabra-tEst-7781"
QUIET_LINES = ("|j|", "|J|", "|l|", "|L|", "|c|", "|raw|", "|inactive", "|t:|")


def online(*args: str, env: dict | None = None, out: Path | None = None, **popen) -> subprocess.Popen:
    """Start `python -m eval.online ARGS` (text output, piped)."""
    cmd = [sys.executable, "-m", "eval.online", *args, "--format", "gen1ou", "--team-set", "competitive"]
    if out is not None:
        cmd += ["--out", str(out)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QABRA_SHOWDOWN_")}
    full_env.update({"OMP_NUM_THREADS": "1", "QABRA_SHOWDOWN_CREDENTIALS": "", **(env or {})})
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, text=True, **popen)
    _STARTED.append(proc)
    return proc


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_run_outlives_its_test():
    """A failed test must not leave a run laddering on the shared server into the next test."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def results(run: Path) -> list[dict]:
    with (run / "results.csv").open() as f:
        return list(csv.DictReader(f))


def build(run: Path, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "battles.build", "--logs", str(run / "battles"), "--out", str(out),
                           "--workers", "1"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- credentials (no server) -------------------------------------------------------------------
def test_credentials_file_must_be_private(tmp_path):
    path = tmp_path / "showdown.txt"
    path.write_text(f"# my account\nusername: qabra_bot\npassword: {SECRET}\n")
    path.chmod(0o644)
    with pytest.raises(CredentialError) as err:
        read_file(path)
    assert "chmod 600" in str(err.value) and SECRET not in str(err.value)
    path.chmod(0o600)
    creds = read_file(path)
    assert (creds.username, creds.password) == ("qabra_bot", SECRET)
    assert SECRET not in repr(creds) and SECRET not in str(creds)
    env = {"QABRA_SHOWDOWN_USER": "envbot", "QABRA_SHOWDOWN_PASSWORD": SECRET}
    assert load(env=env).password == SECRET and load(path, env=env).username == "qabra_bot"
    with pytest.raises(CredentialError, match="QABRA_SHOWDOWN_USER"):
        load(env={"QABRA_SHOWDOWN_PASSWORD": SECRET})
    path.write_text(f"{SECRET}\n")  # a bare password line: refused without quoting it
    with pytest.raises(CredentialError) as err:
        read_file(path)
    assert SECRET not in str(err.value)


def test_group_readable_file_refused_by_the_command(tmp_path):
    path = tmp_path / "creds.txt"
    path.write_text(f"username: qabra_bot\npassword: {SECRET}\n")
    path.chmod(0o640)
    code, out, err = finish(online("ladder", "--agent", "random", "--server", "ws://127.0.0.1:9/showdown/websocket",
                                   "--credentials", str(path), out=tmp_path / "run"), timeout=120)
    assert code != 0
    assert err.strip().splitlines()[-1].startswith("error: credentials file") and "chmod 600" in err
    assert SECRET not in out + err


def test_recorder_writes_the_log_as_spectators_see_it():
    from eval.online_record import OnlineBattle, shared_hp

    request = {"side": {"id": "p1", "pokemon": [
        {"ident": "p1: Tauros", "details": "Tauros", "condition": "353/353", "moves": ["bodyslam"], "item": "",
         "baseAbility": "noability"},
        {"ident": "p1: Snorlax", "details": "Snorlax, L90", "condition": "523/523", "moves": ["rest"]}]},
        "active": [{"moves": [{"move": "Body Slam", "id": "bodyslam"}]}]}
    battle = OnlineBattle("battle-gen1ou-7", "Me Myself")
    battle.feed(["|init|battle", "|title|Me Myself vs. You", "|player|p1|Me Myself|1|1000", "|player|p2|You|2|1010",
                 "|gen|1", "|rated|", "|rule|HP Percentage Mod: HP is shown in percentages", "|start",
                 "|switch|p1a: Tauros|Tauros|353/353", f"|request|{json.dumps(request)}", "|turn|1"])
    battle.sent("/choose switch Snorlax")
    battle.sent("/choose move 1")  # one move to choose from: the simulator logs it by id
    battle.feed(["|-damage|p1a: Tauros|176/353 par", "|-damage|p2a: Chansey|50/100", "|c|You|gg",
                 "|player|p1|Me Myself|1|", "|win|Me Myself", "|-message|You forfeited.",
                 "|raw|Me Myself's rating: 1000 &rarr; <strong>1040</strong><br />(+40 for winning)"])
    rec = battle.record("maxbp", team_set="competitive", id_prefix="t-", battle_format="gen1ou")
    lines = rec.log.split("\n")
    assert "|switch|p1a: Tauros|Tauros|100/100" in lines and "|-damage|p1a: Tauros|50/100 par" in lines
    assert "|-damage|p2a: Chansey|50/100" in lines and lines[0] == "|player|p1|Me Myself|1|1000"
    assert not any(line.startswith(("|c|", "|request|", "|init|", "|title|", "|-message|")) for line in lines)
    assert sum(line.startswith("|player|") for line in lines) == 2
    assert (rec.winner, battle.result, battle.rating_after, rec.rating, rec.turns) == ("p1", "win", 1040, 1000.0, 1)
    assert rec.choices == {"p1": ["switch 2", "move bodyslam"], "p2": []} and rec.teams["p2"] is None
    assert [(m["species"], m["level"]) for m in rec.teams["p1"]] == [("Tauros", 100), ("Snorlax", 90)]
    assert rec.specs == {"p1": "maxbp", "p2": "online:You"}
    assert [shared_hp(176, 353, "pixels", 2), shared_hp(70, 353, "pixels", 5), shared_hp(1, 353, "percent", 1),
            shared_hp(352, 353, "percent", 1), shared_hp(0, 353, "percent", 9)] == ["23/48", "9/48r", "1/100",
                                                                                  "99/100", "0"]


def test_recorder_writes_the_move_a_lock_forced_as_the_simulator_logs_it():
    """Gen 1's partial trapping: the request offers every move, the simulator uses Wrap again
    and logs `move wrap` in its input log; the record says the same, not the move we sent."""
    from eval.online_record import OnlineBattle

    moves = ["wrap", "thunderwave", "agility", "blizzard"]
    request = {"side": {"id": "p1", "pokemon": [{"ident": "p1: Dragonite", "details": "Dragonite",
                                                 "condition": "300/385", "moves": moves}]},
               "active": [{"moves": [{"move": m, "id": m} for m in moves]}]}
    battle = OnlineBattle("battle-gen1ou-8", "Me")
    battle.feed(["|init|battle", "|player|p1|Me|1|", "|player|p2|You|2|", "|gen|1", "|start",
                 "|switch|p1a: Dragonite|Dragonite|300/385", f"|request|{json.dumps(request)}", "|turn|1"])
    battle.sent("/choose move 1")
    battle.feed(["|move|p1a: Dragonite|Wrap|p2a: Snorlax", "|-damage|p2a: Snorlax|90/100", "|turn|2"])
    battle.sent("/choose move thunderwave")
    battle.feed(["|move|p1a: Dragonite|Wrap|p2a: Snorlax|[from] Wrap", "|-damage|p2a: Snorlax|80/100",
                 "|move|p2a: Snorlax|Metronome|p1a: Dragonite", "|move|p2a: Snorlax|Tackle|p1a: Dragonite|[from]move: Metronome",
                 "|turn|3"])
    battle.sent("/choose move 3")
    battle.feed(["|move|p1a: Dragonite|Agility|p1a: Dragonite", "|turn|4"])
    assert battle.choices == ["move wrap", "move wrap", "move agility"]


# -- the local server: ladder, challenge, signals --------------------------------------------
@pytest.mark.server
@pytest.mark.slow
def test_two_runs_ladder_against_each_other_and_build(showdown, tmp_path):
    url = showdown.websocket_url
    runs = {name: tmp_path / name for name in ("alpha", "beta")}
    procs = [online("ladder", "--agent", agent, "--server", url, "-n", "2", "--user", f"q23 {name}", out=runs[name])
             for name, agent in (("alpha", "maxbp"), ("beta", "random"))]
    for proc in procs:
        code, out, err = finish(proc)
        assert code == 0, err[-3000:]
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["battles"] == summary["session_battles"] == 2 and summary["error"] is None
        assert "W " in err and "rating" in err  # the progress line
    a, b = results(runs["alpha"]), results(runs["beta"])
    assert [r["room"] for r in a] == [r["room"] for r in b]  # they met each other, twice
    assert all({x["result"], y["result"]} == {"win", "loss"} for x, y in zip(a, b))
    assert all(r["rating_after"] for r in a + b)  # the local ladder is rated
    assert (runs["alpha"] / "rating.png").stat().st_size > 0
    for name, run in runs.items():
        records = list(read_battle_logs(run / "battles"))
        assert len(records) == 2
        for rec in records:
            ours = next(s for s, spec in rec.specs.items() if not spec.startswith("online:"))
            # The server's own record of the same battle: the same spectator log, the same choices.
            room = rec.id.split("-", 1)[1]
            server = json.loads((showdown.battle_dir / f"battle-{room}.json").read_text())
            strip = [line for line in server["log"].split("\n") if not line.startswith(QUIET_LINES)]
            assert [line for line in rec.log.split("\n") if not line.startswith(QUIET_LINES)] == strip
            theirs = [line[4:] for line in server["inputLog"] if line.startswith(f">{ours} ")]
            assert len(rec.choices[ours]) == len(theirs)
            # Gen 1's partial trapping: the simulator logs the lone 'Fight' of a trapped turn where
            # the player's order named its move (as in battles.build and agents/search_labels.py).
            assert [(a, b) for a, b in zip(rec.choices[ours], theirs, strict=True) if a != b and b != "move fight"] == []
            assert [m["species"] for m in rec.teams[ours]] == [m["species"] for m in server[f"{ours}team"]]
        summary = build(run, tmp_path / f"traj-{name}")
        assert summary["trajectories"] == 4 and summary["decisions"] > 0, summary
        sides = [(t.agent, t.source) for t in read_trajectories(tmp_path / f"traj-{name}")]
        ours = sum(1 for agent, source in sides if not agent.startswith("online:") and source == "selfplay")
        theirs = sum(1 for agent, source in sides if agent.startswith("online:") and source == "human")
        assert ours == 2 and theirs == 2, sides  # the other player is not ours: `human`, not `selfplay`


def _export(tmp_path: Path, n: int = 2) -> tuple[Path, list[list[str]]]:
    """A teambuilder backup of n bundled gen1ou teams, and each team's species."""
    from battles.teams import load_team_set

    teams = list(load_team_set("competitive", "gen1ou"))[:n]
    path = tmp_path / "my_teams.txt"
    path.write_text("".join(f"=== [gen1ou] {t.name} ===\n\n{t.text.strip()}\n\n" for t in teams))
    return path, [[s.lower() for s in t.species] for t in teams]


def test_defaults_and_team_files(tmp_path):
    from battles.teams import TeamError
    from eval.online import PUBLIC_SERVER, OnlineConfig, load_teams

    public = OnlineConfig("ladder").resolve()
    assert public.server == PUBLIC_SERVER and public.concurrency == 1 and public.n == 10
    assert OnlineConfig("accept", server="ws://127.0.0.1:8000/showdown/websocket").resolve().concurrency > 1
    with pytest.raises(ValueError, match="--opponent"):
        OnlineConfig("challenge").resolve()
    path, species = _export(tmp_path)
    sampler = load_teams(OnlineConfig("ladder", team_file=str(path), team_set=None).resolve())
    assert sorted(t.species for t in sampler.teams) == sorted(tuple(s) for s in species)
    path.write_text("Mewtwo\n- Psychic\n")  # banned in gen1ou
    with pytest.raises(TeamError, match="my_teams.txt"):
        load_teams(OnlineConfig("ladder", team_file=str(path), team_set=None).resolve())


@pytest.mark.server
@pytest.mark.slow
def test_accept_a_challenge(showdown, tmp_path):
    url = showdown.websocket_url
    teams, species = _export(tmp_path)
    acceptor = online("accept", "--agent", "maxbp", "--server", url, "-n", "1", "--user", "q23 host",
                      out=tmp_path / "host")
    challenger = online("challenge", "--agent", "random", "--server", url, "-n", "1", "--opponent", "q23 host",
                        "--user", "q23 guest", "--team", str(teams), out=tmp_path / "guest")
    for proc in (acceptor, challenger):
        code, out, err = finish(proc)
        assert code == 0, err[-3000:]
    host, guest = results(tmp_path / "host"), results(tmp_path / "guest")
    assert len(host) == len(guest) == 1 and host[0]["room"] == guest[0]["room"]
    assert host[0]["opponent"] == "q23 guest" and guest[0]["opponent"] == "q23 host"
    assert {host[0]["result"], guest[0]["result"]} == {"win", "loss"}
    (rec,) = read_battle_logs(tmp_path / "guest" / "battles")  # the guest played one of its own teams
    ours = next(s for s, spec in rec.specs.items() if spec == "random")
    assert [to_id(m["species"]) for m in rec.teams[ours]] in species and rec.team_set == "file:my_teams.txt"


def _wait_for(stream, text: str, lines: list[str]) -> str:
    """Read a child's stream line by line (tqdm's carriage returns too) until `text` shows."""
    buf = ""
    while True:
        ch = stream.read(1)
        assert ch, "the run ended before: " + text + "\n" + "".join(lines)[-2000:]
        buf += ch
        if ch in "\r\n":
            lines.append(buf)
            if text in buf:
                return buf
            buf = ""


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.parametrize("on_stop", ["finish", "forfeit"])
def test_sigterm_mid_battle_keeps_finished_battles(showdown, tmp_path, on_stop):
    url = showdown.websocket_url
    a = online("ladder", "--agent", "maxbp", "--server", url, "-n", "50", "--user", f"q23 {on_stop} a",
               "--on-stop", on_stop, out=tmp_path / "a")
    b_err = (tmp_path / "b.err").open("w")
    b = online("ladder", "--agent", "random", "--server", url, "-n", "50", "--user", f"q23 {on_stop} b",
               out=tmp_path / "b", stderr=b_err)
    seen: list[str] = []
    # After the first battle, the next one starts at once: SIGTERM while it is being played.
    if "playing 1" not in _wait_for(a.stderr, "[1] ", seen):
        _wait_for(a.stderr, "playing 1", seen)
    a.send_signal(signal.SIGTERM)
    out, err = a.communicate(timeout=240)
    assert a.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stopped"] == "SIGTERM"
    rows = results(tmp_path / "a")
    assert len(rows) == summary["battles"] >= 2, "".join(seen) + err  # the battle in progress was kept
    records = list(read_battle_logs(tmp_path / "a" / "battles"))
    assert sorted(r.id for r in records) == sorted(r["battle_id"] for r in rows)
    assert all(r.winner in ("p1", "p2", "") and ("|win|" in r.log or "|tie" in r.log) for r in records)
    for row, rec in zip(rows, sorted(records, key=lambda r: [x["battle_id"] for x in rows].index(r.id))):
        if rec.end_type == "forfeit":  # only what SIGTERM stopped, and only when asked to
            assert on_stop == "forfeit" and row["result"] == "loss" and row is rows[-1]
    b.send_signal(signal.SIGTERM)  # b is searching for a new opponent: it stops at once
    code, out, _ = finish(b)
    assert code == 0, (tmp_path / "b.err").read_text()[-3000:]
    assert len(results(tmp_path / "b")) == len(rows)


# -- logins: a local server that needs one --------------------------------------------------
def _sign(key: Path, data: str) -> str:
    done = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=data.encode(),
                          capture_output=True, check=True)
    return done.stdout.hex()


class _LoginServer(http.server.ThreadingHTTPServer):
    """The login server's one action we use (act=login), answering as the real one does:
    `]` then JSON with a signed assertion, or `;;reason` for a refused login. A refusal here
    quotes the password back, so that the test sees the command mask it."""

    def __init__(self, key: Path, passwords: dict[str, str]):
        self.key, self.passwords = key, passwords
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                name, password = form["name"][0], form["pass"][0]
                challenge = form["challstr"][0].replace("%7C", "|").split("|")[-1]
                userid = "".join(c for c in name.lower() if c.isalnum())
                if server.passwords.get(userid) == password:
                    data = f"{challenge},{userid},2,{int(time.time())},localhost"
                    assertion = f"{data};{_sign(server.key, data)}"
                else:
                    assertion = f";;Wrong password '{password}' for {name}."
                body = ("]" + json.dumps({"actionsuccess": not assertion.startswith(";"),
                                          "assertion": assertion})).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """(websocket URL, login URL, battle folder) of a local Showdown server with guest
    security on, trusting a login server of ours; both on 127.0.0.1."""
    from battles.server import free_port, showdown_dir

    root = tmp_path_factory.mktemp("auth")
    key = root / "login.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    public = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout"], check=True, capture_output=True,
                            text=True).stdout
    # The installed package, linked file by file, with a config of its own (the package's
    # config/ belongs to the no-login server every other test uses).
    package = showdown_dir().resolve()
    farm = root / "pokemon-showdown"
    (farm / "config" / "chat-plugins").mkdir(parents=True)
    (farm / "logs" / "repl").mkdir(parents=True)
    for entry in package.iterdir():
        if entry.name not in ("config", "logs"):
            (farm / entry.name).symlink_to(entry)
    for entry in (package / "config").iterdir():
        if entry.is_file() and entry.name != "config.js":
            (farm / "config" / entry.name).symlink_to(entry)
    (root / "node_modules").mkdir()
    for dep in package.parent.iterdir():
        if dep.name != package.name:
            (root / "node_modules" / dep.name).symlink_to(dep)
    config = (REPO / "battles" / "showdown_config.js").read_text()
    config = config.replace("exports.noguestsecurity = true;", "exports.noguestsecurity = false;")
    assert "noguestsecurity = false" in config
    config += f"\nexports.loginserverkeyalgo = 'RSA-SHA256';\nexports.loginserverpublickey = `{public}`;\n"
    (farm / "config" / "config.js").write_text(config)
    logins = _LoginServer(key, {"q23alice": SECRET, "q23bob": SECRET})
    threading.Thread(target=logins.serve_forever, daemon=True).start()
    port = free_port()
    env = {**os.environ, "QABRA_BATTLE_DIR": str(root / "battles"), "QABRA_PS_LOGS": str(root / "logs") + "/"}
    proc = subprocess.Popen(["node", "--preserve-symlinks", "--preserve-symlinks-main", "pokemon-showdown", "start",
                             "--skip-build", str(port)], cwd=farm, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"ws://127.0.0.1:{port}/showdown/websocket"
    try:
        from websockets.sync.client import connect

        for _ in range(240):
            try:
                with connect(url, open_timeout=2) as ws:
                    ws.recv(timeout=5)
                break
            except Exception:
                assert proc.poll() is None, "the login-requiring Showdown server did not start"
                time.sleep(0.25)
        yield url, f"http://127.0.0.1:{logins.server_port}/action.php", root / "battles"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        logins.shutdown()


@pytest.mark.server
@pytest.mark.slow
def test_login_needed_but_no_credentials(auth_server, tmp_path):
    url, login, _ = auth_server
    code, out, err = finish(online("ladder", "--agent", "random", "--server", url, "--login-server", login,
                                   "--user", "q23 carol", out=tmp_path / "run"), timeout=120)
    assert code != 0 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "needs a login" in last and "QABRA_SHOWDOWN_PASSWORD" in last


@pytest.mark.server
@pytest.mark.slow
def test_rejected_login_does_not_echo_the_password(auth_server, tmp_path):
    url, login, _ = auth_server
    wrong = "wr0ng-" + SECRET
    code, out, err = finish(online("ladder", "--agent", "random", "--server", url, "--login-server", login,
                                   env={"QABRA_SHOWDOWN_USER": "q23 alice", "QABRA_SHOWDOWN_PASSWORD": wrong},
                                   out=tmp_path / "run"), timeout=120)
    assert code != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: login as q23 alice rejected by 127.0.0.1:") and "Wrong password" in last
    assert wrong not in out + err and wrong not in _everything_written(tmp_path / "run")


def _everything_written(folder: Path) -> str:
    """Every file under a run folder as text; Parquet shards decoded (they are compressed)."""
    import pyarrow.parquet as pq

    text = []
    for path in folder.rglob("*"):
        if path.suffix == ".parquet":
            text.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
        elif path.is_file():
            text.append(path.read_bytes().decode("latin-1"))
    return "\n".join(text)


@pytest.mark.server
@pytest.mark.slow
def test_log_in_play_and_keep_the_password_out_of_everything(auth_server, tmp_path):
    url, login, battles = auth_server
    creds = tmp_path / "bob.txt"
    creds.write_text(f"username: q23 bob\npassword: {SECRET}\n")
    creds.chmod(0o600)
    alice = online("ladder", "--agent", "maxbp", "--server", url, "--login-server", login, "-n", "1",
                   env={"QABRA_SHOWDOWN_USER": "q23 alice", "QABRA_SHOWDOWN_PASSWORD": SECRET}, out=tmp_path / "a")
    bob = online("ladder", "--agent", "random", "--server", url, "--login-server", login, "-n", "1",
                 "--credentials", str(creds), out=tmp_path / "b")
    for proc, run in ((alice, "a"), (bob, "b")):
        code, out, err = finish(proc)
        assert code == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1])["battles"] == 1
        assert SECRET not in out + err
        assert SECRET not in _everything_written(tmp_path / run)
    assert {r["opponent"] for r in results(tmp_path / "a") + results(tmp_path / "b")} == {"q23 alice", "q23 bob"}


# -- a dropped connection -------------------------------------------------------------------
class _Relay:
    """A TCP relay on 127.0.0.1 in front of the server, whose connections the test cuts."""

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        for s in self.open:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self.open = []

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.mark.server
@pytest.mark.slow
def test_reconnects_after_a_dropped_connection(showdown, tmp_path):
    relay = _Relay(showdown.port)
    try:
        via = f"ws://127.0.0.1:{relay.port}/showdown/websocket"
        a = online("ladder", "--agent", "maxbp", "--server", via, "-n", "3", "--user", "q23 net a", out=tmp_path / "a")
        b_err = (tmp_path / "b.err").open("w")
        b = online("ladder", "--agent", "random", "--server", showdown.websocket_url, "-n", "3",
                   "--user", "q23 net b", out=tmp_path / "b", stderr=b_err)
        seen: list[str] = []
        if "playing 1" not in _wait_for(a.stderr, "[1] ", seen):
            _wait_for(a.stderr, "playing 1", seen)
        relay.cut()  # in the middle of the second battle
        out, err = a.communicate(timeout=240)
        assert a.returncode == 0, "".join(seen) + err[-3000:]
        assert "reconnected" in err
        code, _, _ = finish(b)
        assert code == 0, (tmp_path / "b.err").read_text()[-3000:]
    finally:
        relay.close()
    records = list(read_battle_logs(tmp_path / "a" / "battles"))
    assert len(records) == 3

    def battle_lines(log: str) -> list[str]:
        # A player leaving and coming back shows as |player| lines after |start|: not battle events.
        lines = [line for line in log.split("\n") if line and not line.startswith(QUIET_LINES)]
        start = lines.index("|start")
        return lines[:start] + [line for line in lines[start:] if not line.startswith("|player|")]

    for rec in records:  # the battle played across the drop is whole: its log is the server's
        server = json.loads((showdown.battle_dir / f"battle-{rec.id.split('-', 1)[1]}.json").read_text())
        assert battle_lines(rec.log) == battle_lines(server["log"])
