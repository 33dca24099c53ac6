"""scripts/get_replays.py against a local HTTP server that serves recorded replay pages."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
import threading
import urllib.parse
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/replays")
_spec = importlib.util.spec_from_file_location("get_replays", REPO / "scripts" / "get_replays.py")
gr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gr)

PAGE = 3  # the real API pages by 51; small pages make paging visible here


def recorded_replays() -> dict[str, dict]:
    """Eight gen1ou replays built from a real one: new ids, names and upload times."""
    base = json.loads((DATA / "gen1ou" / "smogtours-gen1ou-734539.json").read_text())
    p1, p2 = base["players"]
    out = {}
    for i in range(8):
        rid = f"gen1ou-{1000 + i}"
        names = (f"Ash Ketchum{i}", f"gary{i}")
        log = base["log"].replace(p1, names[0]).replace(p2, names[1])
        # 1002 and 1003 share an upload second across the first page boundary.
        t = 1_700_000_000 - 100 * i + (100 if i == 3 else 0)
        out[rid] = {**base, "id": rid, "players": list(names), "log": log, "uploadtime": t,
                    "password": "secret"}
    return out


class Server:
    """Serves /search.json (paged by `before`) and /<id>.json, recording every request."""

    def __init__(self, replays: dict[str, dict], broken: dict[str, bytes] | None = None,
                 missing: tuple[str, ...] = (), bad_search: bool = False):
        self.replays, self.broken, self.missing = replays, broken or {}, missing
        self.bad_search = bad_search
        self.requests: list[str] = []
        self.index = sorted(
            [{"id": r["id"], "uploadtime": r["uploadtime"], "format": "gen1ou",
              "players": r["players"], "rating": None, "private": 0} for r in replays.values()]
            + [{"id": rid, "uploadtime": 1_600_000_000 + n, "format": "gen1ou", "players": [],
                "rating": None, "private": 0} for n, rid in enumerate([*self.broken, *missing])],
            key=lambda e: -e["uploadtime"])
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                server.requests.append(self.path)
                url = urllib.parse.urlparse(self.path)
                if url.path == "/search.json":
                    body = server.search(urllib.parse.parse_qs(url.query))
                else:
                    rid = url.path.strip("/").removesuffix(".json")
                    body = server.broken.get(rid)
                    if body is None and rid in server.replays:
                        body = json.dumps(server.replays[rid]).encode()
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def search(self, query: dict) -> bytes:
        if self.bad_search:
            return b"<html>502 Bad Gateway</html>"
        before = int(query["before"][0]) if "before" in query else None
        rows = [e for e in self.index if before is None or e["uploadtime"] < before][:PAGE]
        if rows and before is None:
            rows.append(dict(rows[0]))  # a page can list a replay twice
        return json.dumps(rows).encode()

    def replay_requests(self) -> list[str]:
        return [p.strip("/").removesuffix(".json") for p in self.requests
                if not p.startswith("/search")]


@pytest.fixture
def server():
    s = Server(recorded_replays(), broken={"gen1ou-990": b"<html>oops</html>"},
               missing=("gen1ou-991",))
    yield s
    s.httpd.shutdown()


def run(capsys, *argv) -> dict:
    assert gr.main([*argv, "--quiet"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def download(capsys, server, out, n):
    return run(capsys, "download", "--format", "gen1ou", "--out", str(out), "-n", str(n),
               "--base-url", server.url, "--rate", "1000", "--retry-wait", "0")


def test_download_pages_dedups_skips_and_anonymises(server, tmp_path, capsys):
    summary = download(capsys, server, tmp_path, 100)
    assert summary["downloaded"] == 8 and summary["on_disk"] == 8
    assert summary["skipped"] == {"not_json": 1, "http_404": 1}
    assert summary["duplicates"] >= 1 and summary["pages"] >= 4
    assert summary["stopped"] == "no_more_replays"
    files = sorted((tmp_path / "gen1ou").glob("*.json"))
    assert [f.stem for f in files] == [f"gen1ou-{1000 + i}" for i in range(8)]
    assert not list((tmp_path / "gen1ou").glob("*.tmp"))
    assert sorted(server.replay_requests()) == sorted([*server.replays, "gen1ou-990",
                                                       "gen1ou-991"])  # each fetched once
    for i, f in enumerate(files):
        text = f.read_text()
        replay = json.loads(text)
        assert f"Ash Ketchum{i}".lower() not in text.lower() and f"gary{i}" not in text.lower()
        assert "ashketchum" not in text.lower() and "secret" not in text
        assert replay["players"] == ["anon-p1", "anon-p2"]
        lines = replay["log"].split("\n")
        assert "|player|p1|anon-p1||" in lines and "|win|anon-p1" in lines  # p1 won the original
        original = server.replays[f.stem]["log"].split("\n")
        assert len(lines) == len(original)
        for a, b in zip(original, lines, strict=True):
            if a.startswith(("|move|", "|switch|", "|-damage|", "|turn|", "|faint|")):
                assert a == b


def test_download_stops_at_limit_and_resumes(server, tmp_path, capsys):
    first = download(capsys, server, tmp_path, 3)
    assert first["downloaded"] == 3 and first["stopped"] == "limit"
    got = {f.stem for f in (tmp_path / "gen1ou").glob("*.json")}
    assert len(got) == 3
    server.requests.clear()
    second = download(capsys, server, tmp_path, 6)
    assert second["downloaded"] == 3 and second["already_there"] == 3 and second["on_disk"] == 6
    assert not got & set(server.replay_requests())  # nothing on disk is fetched again
    server.requests.clear()
    third = download(capsys, server, tmp_path, 6)
    assert third["downloaded"] == 0 and server.requests == []


def test_malformed_search_page_is_counted(tmp_path, capsys):
    s = Server(recorded_replays(), bad_search=True)
    try:
        summary = download(capsys, s, tmp_path, 5)
    finally:
        s.httpd.shutdown()
    assert summary["skipped"] == {"search_page_not_json": 1} and summary["downloaded"] == 0


def test_anonymise_touches_names_only():
    log = "\n".join([
        "|j|☆Pikachu", "|player|p1|Pikachu|#pikachu|1500", "|player|p2|Red Fan|2|",
        "|c|☆Pikachu|gl hf red fan", "|c| spectator1|go pikachu",
        "|switch|p1a: Pikachu|Pikachu, L50|100/100", "|-sidestart|p2: Red Fan|Spikes",
        "|inactive|Red Fan has 270 seconds left.", "|raw|Pikachu's rating: 1500 &rarr; 1516",
        "|win|Pikachu",
    ])
    out = gr.anonymise({"players": ["Pikachu", "Red Fan"], "log": log})
    assert out["players"] == ["anon-p1", "anon-p2"]
    assert out["log"].split("\n") == [
        "|j|☆anon-p1", "|player|p1|anon-p1||1500", "|player|p2|anon-p2||",
        "|c|☆anon-p1|gl hf anon-p2", "|c| anon-s1|go anon-p1",
        "|switch|p1a: Pikachu|Pikachu, L50|100/100", "|-sidestart|p2: anon-p2|Spikes",
        "|inactive|anon-p2 has 270 seconds left.", "|raw|anon-p1's rating: 1500 &rarr; 1516",
        "|win|anon-p1",
    ]


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def test_import_zip_and_tar(tmp_path, capsys):
    g1 = (DATA / "gen1ou" / "smogtours-gen1ou-733374.json").read_bytes()
    g9 = [(DATA / "gen9ou" / n).read_bytes() for n in
          ("smogtours-gen9ou-681522.json", "smogtours-gen9ou-733546.json")]
    server_log = (DATA / "gen9ubers" / "log.1.json").read_bytes()
    zipped = _zip(tmp_path / "dump.zip", {
        "a/one.json": g1, "a/two.json": g9[0], "notes.txt": b"hello",
        "bad.json": b"{not json",
        "nolog.json": json.dumps({"id": "gen1ou-5", "format": "gen1ou"}).encode(),
        "list.json": json.dumps([json.loads(g9[1]), json.loads(server_log)]).encode(),
    })
    tarred = _tar(tmp_path / "dump.tar.gz", {"x/one-again.json": g1, "x/evil.json": json.dumps(
        {"id": "../../etc/passwd", "format": "gen1ou", "log": "|start"}).encode()})
    out = tmp_path / "replays"
    summary = run(capsys, "import", str(zipped), str(tarred), "--out", str(out))
    assert summary["imported"] == 4 and summary["duplicates"] == 1
    assert summary["skipped"] == {"not_json": 1, "missing_field:log": 1, "bad_id": 1}
    assert "bad.json" in summary["examples"]["not_json"]
    assert summary["per_format"] == {"gen1ou": 1, "gen9ou": 2, "gen9ubers": 1}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json")) == [
        "gen1ou/smogtours-gen1ou-733374.json", "gen9ou/smogtours-gen9ou-681522.json",
        "gen9ou/smogtours-gen9ou-733546.json", "gen9ubers/gen9ubers-11478.json"]
    ubers = json.loads((out / "gen9ubers" / "gen9ubers-11478.json").read_text())
    assert ubers["players"] == ["anon-p1", "anon-p2"] and ubers["log"].startswith("|")
    assert "test-player" not in json.dumps(ubers)
    again = run(capsys, "import", str(zipped), "--out", str(out))
    assert again["imported"] == 0 and again["already_there"] == 4


def test_import_reports_bad_archives_and_missing_paths(tmp_path, capsys):
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    summary = run(capsys, "import", str(broken), "--out", str(tmp_path / "o"))
    assert summary["skipped"] == {"bad_archive": 1}
    assert gr.main(["import", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
