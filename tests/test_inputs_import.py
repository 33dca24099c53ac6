"""scripts/get_replays.py import: replays as people save them, bad ones counted, never a stop."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

from battles.build import build
from tests.test_inputs_replays import GEN1, poke_env_html, showdown_html, variant, without_win

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("get_replays", REPO / "scripts" / "get_replays.py")
gr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gr)


def run(capsys, *argv) -> dict:
    assert gr.main([*argv, "--quiet"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_names_too_long_for_a_file_system_are_skipped_and_the_import_goes_on(tmp_path, capsys):
    dump = tmp_path / "dump"
    dump.mkdir()
    (dump / "long_id.json").write_text(json.dumps(variant("a" * 300)))
    no_tier = "\n".join(x for x in GEN1["log"].split("\n") if not x.startswith("|tier|"))
    (dump / "long_format.json").write_text(json.dumps(variant("b", formatid="gen1ou" + "x" * 300, format=None,
                                                              log=no_tier)))
    (dump / "bad_format.json").write_text(json.dumps(variant("c", format=1, formatid=None)))
    (dump / "mismatch.json").write_text(json.dumps(variant("d", format="gen9ou", formatid="gen9ou")))
    (dump / "not_utf8.json").write_bytes(json.dumps(variant("e")).encode().replace(b"RaiZen", b"\xff", 1))
    (dump / "good.json").write_text(json.dumps(GEN1))
    summary = run(capsys, "import", str(dump), "--out", str(tmp_path / "out"))
    assert summary["imported"] == 1
    assert summary["skipped"] == {"too_long:id": 1, "too_long:format": 1, "bad_field:format": 1,
                                  "format_mismatch": 1, "not_utf8": 1}, summary
    assert "long_id.json" in summary["examples"]["too_long:id"]


def test_html_pages_import_alone_in_folders_and_zips_and_then_build(tmp_path, capsys):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "showdown.html").write_text(showdown_html("gen1ou-777", GEN1["log"]))
    (pages / "p1 - battle-gen1ou-888.html").write_text(poke_env_html("battle-gen1ou-888", without_win(GEN1["log"])))
    with zipfile.ZipFile(tmp_path / "dump.zip", "w") as z:
        z.writestr("saved/replay.html", showdown_html("gen1ou-999", GEN1["log"]))
    out = tmp_path / "replays"
    summary = run(capsys, "import", str(pages), str(tmp_path / "dump.zip"), "--out", str(out))
    assert summary["imported"] == 3 and not summary["skipped"], summary
    assert sorted(p.name for p in (out / "gen1ou").glob("*.json")) == [
        "gen1ou-777.json", "gen1ou-888.json", "gen1ou-999.json"]
    imported = json.loads((out / "gen1ou" / "gen1ou-888.json").read_text())
    assert imported["players"] == ["anon-p1", "anon-p2"] and "RaiZen" not in imported["log"]
    built = build([out], tmp_path / "traj", progress=False)
    assert built["trajectories"] == 6 and not built["skipped"], built
    assert built["recovered"] == {"winner_inferred:fainted": 1}
