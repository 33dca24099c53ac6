"""Replays as people save them: each bad input class is a named skip, each recoverable one builds.

Every file here is a small variant of a real bundled replay, written as a user's tool
would save it (replay-API JSON, raw .log, Showdown's downloaded HTML page, poke-env's
saved HTML page, zip and tar archives).
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from poke_env.data import REPLAY_TEMPLATE

from battles.build import build
from battles.replays import Limits
from battles.trajectories import read_trajectories

REPO = Path(__file__).resolve().parents[1]
REPLAYS = REPO / "battles" / "data" / "replays"
GEN1 = json.loads((REPLAYS / "gen1ou" / "smogtours-gen1ou-734539.json").read_text())  # p1 wins, p2 all fainted
FORFEIT = json.loads((REPLAYS / "gen9ou" / "smogtours-gen9ou-733546.json").read_text())  # p2 forfeits
DOUBLES = json.loads((REPLAYS / "gen9metronomebattle" / "gen9metronomebattle-2073194180.json").read_text())


def without_win(log: str) -> str:
    """The log as a tool that stops recording at the end of the last turn saves it."""
    return log[: log.index("\n|win|")]


def showdown_html(replay_id: str, log: str) -> str:
    """A replay page as the Showdown client's "download replay" writes it ('/' escaped)."""
    return ("<!DOCTYPE html>\n<meta charset=\"utf-8\" />\n<!-- version 1 -->\n<title>replay</title>\n"
            "<div class=\"wrapper replay-wrapper\">\n"
            f"<input type=\"hidden\" name=\"replayid\" value=\"{replay_id}\" />\n"
            "<div class=\"battle\"></div><div class=\"battle-log\"></div>\n"
            "<script type=\"text/plain\" class=\"battle-log-data\">" + log.replace("/", "\\/") + "</script>\n"
            "</div>\n<script>let daily = Math.floor(Date.now() / 1000);</script>\n")


def poke_env_html(battle_tag: str, log: str) -> str:
    """A replay page as poke-env saves it (its own template, a `>battle-tag` header line)."""
    return (REPLAY_TEMPLATE.replace("{BATTLE_TAG}", battle_tag).replace("{PLAYER_USERNAME}", "a")
            .replace("{OPPONENT_USERNAME}", "b").replace("{REPLAY_LOG}", f">{battle_tag}\n{log}"))


def variant(name: str, **fields) -> dict:
    return {**GEN1, "id": f"gen1ou-{name}", **fields}


def bad_inputs(folder: Path) -> dict[str, int]:
    """One small file per bad-input class; returns the reasons the build must count."""
    folder.mkdir(parents=True, exist_ok=True)

    def put(name: str, content: str | bytes) -> None:
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    put("format_not_string.json", json.dumps(variant("a", format=9, formatid=None)))
    put("formatid_not_string.json", json.dumps(variant("b", formatid=["gen1ou"])))
    put("inputlog_non_string.json", json.dumps(variant("c", inputLog=[">p1 move 1", 7])))
    put("log_list_non_string.json", json.dumps(variant("d", log=GEN1["log"].split("\n")[:5] + [None])))
    put("players_string.json", json.dumps(variant("e", players="RaiZen1704 vs wooooo rby")))
    put("not_utf8.json", json.dumps(variant("f")).encode().replace(b"RaiZen1704", b"Rai\xffZen", 1))
    put("lone_surrogate.json", json.dumps(variant("g", log=GEN1["log"] + "\n|c|x|\ud800")))
    put("not_json.json", "{ not json")
    put("gen1_labelled_gen9.json", json.dumps(variant("h", format="gen9ou", formatid="gen9ou")))
    put("other_tier.json", json.dumps(variant("i", formatid="gen1ubers")))
    doubles = dict(DOUBLES, id="doubles-nogametype",
                   log="\n".join(x for x in DOUBLES["log"].split("\n") if not x.startswith("|gametype|")))
    put("doubles_without_gametype.json", json.dumps(doubles))
    put("truncated.json", json.dumps(variant("j", log=GEN1["log"][: len(GEN1["log"]) // 2])))
    stranger = GEN1["log"].replace("|win|RaiZen1704", "|win|Someone Else")
    put("winner_not_a_player.json", json.dumps(variant("k", log=stranger)))
    twins = GEN1["log"].replace("wooooo rby", "RaiZen1704")
    put("same_names.json", json.dumps(variant("l", log=twins, players=["RaiZen1704", "RaiZen1704"])))
    put("html_without_log.html", "<html><body>a page, but no battle log in it</body></html>")
    put("big.json", json.dumps(variant("m", log=GEN1["log"] + "\n|c|x|" + "y" * 200_000)))
    turns = "".join(f"|turn|{i}\n|\n" for i in range(52, 1200))
    put("long.log", GEN1["log"].replace("|win|", turns + "|win|"))
    return {"bad_field:format": 1, "bad_field:formatid": 1, "bad_field:inputLog": 1, "bad_field:log": 1,
            "bad_field:players": 1, "not_utf8": 2, "not_json": 1, "format_mismatch": 2,
            "doubles_not_supported": 1, "truncated_or_no_winner": 1, "winner_not_a_player": 1,
            "ambiguous_player_names": 1, "no_battle_log": 1, "too_long:bytes": 1, "too_long:turns": 1}


def test_every_bad_input_class_is_counted_and_the_good_files_still_build(tmp_path):
    logs = tmp_path / "logs"
    expected = bad_inputs(logs)
    (logs / "good.json").write_text(json.dumps(GEN1))
    summary = build([logs], tmp_path / "out", progress=False, limits=Limits(max_bytes=150_000, max_turns=1000))
    assert summary["skipped"] == expected, summary
    assert summary["inputs"] == sum(expected.values()) + 1
    assert summary["trajectories"] == 2
    assert {t.battle_id for t in read_trajectories(tmp_path / "out", columns=[])} == {GEN1["id"]}
    assert not list((tmp_path / "out").glob("*.tmp"))


def _outcomes(out: Path) -> dict[str, int]:
    return {t.player: t.outcome for t in read_trajectories(out, columns=[])}


def test_raw_log_keeps_names_when_a_player_leaves_and_finds_win_after_long_chat(tmp_path):
    log = GEN1["log"] + "\n|player|p1|\n|player|p2|\n" + "\n".join(f"|c|☆RaiZen1704|gg {i}" for i in range(200))
    (tmp_path / "left.log").write_text(log)
    summary = build([tmp_path / "left.log"], tmp_path / "out", progress=False)
    assert summary["trajectories"] == 2 and not summary["skipped"], summary
    assert _outcomes(tmp_path / "out") == {"p1": 1, "p2": -1}


def test_players_with_the_same_id_keep_their_outcome(tmp_path):
    # Both names reduce to the empty id; the exact spelling still tells the sides apart.
    log = GEN1["log"].replace("RaiZen1704", "日本").replace("wooooo rby", "中国")
    for winner, outcomes in (("日本", {"p1": 1, "p2": -1}), ("中国", {"p1": -1, "p2": 1})):
        out = tmp_path / winner
        replay = variant("names", players=["日本", "中国"], log=log.replace("|win|日本", f"|win|{winner}"))
        (tmp_path / f"{winner}.json").write_text(json.dumps(replay, ensure_ascii=False))
        summary = build([tmp_path / f"{winner}.json"], out, progress=False)
        assert summary["trajectories"] == 2, summary
        assert _outcomes(out) == outcomes


def test_winner_inferred_from_a_fainted_side_or_a_forfeit(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "fainted.json").write_text(json.dumps(variant("fainted", log=without_win(GEN1["log"]))))
    (logs / "forfeit.json").write_text(json.dumps({**FORFEIT, "log": without_win(FORFEIT["log"])}))
    timer = without_win(FORFEIT["log"]).replace("amaterus forfeited.", "amaterus lost due to inactivity.")
    (logs / "timer.json").write_text(json.dumps({**FORFEIT, "id": "gen9ou-timer", "log": timer}))
    summary = build([logs], tmp_path / "out", progress=False)
    assert summary["trajectories"] == 6 and not summary["skipped"], summary
    assert summary["recovered"] == {"winner_inferred:fainted": 1, "winner_inferred:forfeit": 1,
                                    "winner_inferred:inactivity": 1}
    outcome = {(t.battle_id, t.player): t.outcome for t in read_trajectories(tmp_path / "out", columns=[])}
    assert outcome[("gen1ou-fainted", "p1")] == 1 and outcome[("gen1ou-fainted", "p2")] == -1
    # amaterus (p2) forfeited: p1 wins
    assert outcome[(FORFEIT["id"], "p1")] == 1 and outcome[(FORFEIT["id"], "p2")] == -1
    assert outcome[("gen9ou-timer", "p1")] == 1 and outcome[("gen9ou-timer", "p2")] == -1


def test_poke_env_saved_replay_builds_with_the_inferred_winner(tmp_path):
    page = tmp_path / "replays" / "RaiZen1704 - battle-gen1ou-4242.html"
    page.parent.mkdir()
    page.write_text(poke_env_html("battle-gen1ou-4242", without_win(GEN1["log"])))
    summary = build([page.parent], tmp_path / "out", progress=False)
    assert summary["trajectories"] == 2 and not summary["skipped"], summary
    assert summary["recovered"] == {"winner_inferred:fainted": 1}
    trajs = {t.player: t for t in read_trajectories(tmp_path / "out")}
    assert {t.battle_id for t in trajs.values()} == {"gen1ou-4242"}
    assert trajs["p1"].format == "gen1ou" and trajs["p1"].outcome == 1 and trajs["p2"].outcome == -1


def _same_trajectories(a: Path, b: Path) -> None:
    ta = {(t.battle_id, t.player): t for t in read_trajectories(a)}
    tb = {(t.battle_id, t.player): t for t in read_trajectories(b)}
    assert ta.keys() == tb.keys() and len(ta) == 2
    for key in ta:
        assert (ta[key].format, ta[key].outcome) == (tb[key].format, tb[key].outcome)
        np.testing.assert_array_equal(ta[key].tokens, tb[key].tokens)
        np.testing.assert_array_equal(ta[key].numbers, tb[key].numbers)
        np.testing.assert_array_equal(ta[key].action, tb[key].action)
        np.testing.assert_array_equal(ta[key].legal, tb[key].legal)


def test_html_replay_builds_like_its_json_twin_alone_in_folders_and_archives(tmp_path):
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "twin.json").write_text(json.dumps(GEN1))
    html = showdown_html(GEN1["id"], GEN1["log"])
    assert "22\\/100" in html and "22/100" not in html  # the escaped slashes are there to undo
    (tmp_path / "html").mkdir()
    (tmp_path / "html" / "twin.html").write_text(html)
    with zipfile.ZipFile(tmp_path / "dump.zip", "w") as z:
        z.writestr("pages/twin.html", html)
        z.writestr("notes.txt", "not a replay")
    with tarfile.open(tmp_path / "dump.tar.gz", "w:gz") as t:
        info = tarfile.TarInfo("pages/twin.htm")
        info.size = len(html.encode())
        t.addfile(info, io.BytesIO(html.encode()))
    build([tmp_path / "json"], tmp_path / "from_json", progress=False)
    for name, source in (("alone", tmp_path / "html" / "twin.html"), ("folder", tmp_path / "html"),
                         ("zip", tmp_path / "dump.zip"), ("tar", tmp_path / "dump.tar.gz")):
        summary = build([source], tmp_path / name, progress=False)
        assert summary["inputs"] == 1 and summary["trajectories"] == 2 and not summary["skipped"], (name, summary)
        _same_trajectories(tmp_path / "from_json", tmp_path / name)


def test_a_replay_past_the_turn_limit_is_skipped_with_bounded_memory(tmp_path):
    # 200,000 turns in about 5 MB: before limits this took a build to 4.7 GB and crashed it.
    logs = tmp_path / "logs"
    logs.mkdir()
    turns = "".join(f"|turn|{i}\n" for i in range(52, 200_052))
    (logs / "endless.json").write_text(json.dumps(variant("endless", log=GEN1["log"].replace("|win|", turns + "|win|"))))
    (logs / "good.json").write_text(json.dumps(GEN1))
    assert (logs / "endless.json").stat().st_size > 2_000_000
    code = ("import json, resource, sys; from battles.build import build; "
            "s = build([sys.argv[1]], sys.argv[2], progress=False); "
            "print(json.dumps({**s, 'peak_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))")
    done = subprocess.run([sys.executable, "-c", code, str(logs), str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, check=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == {"too_long:turns": 1} and summary["trajectories"] == 2, summary
    assert summary["peak_kib"] < 1_000_000, summary  # the bound: 1 GB, where the unbounded build took 4.7 GB
    assert not list((tmp_path / "out").glob("*.tmp"))


def _damage(shard: Path) -> None:
    """Flip bytes inside the first data page (the Parquet footer stays intact)."""
    import pyarrow.parquet as pq

    start = pq.ParquetFile(shard).metadata.row_group(0).column(0).data_page_offset + 20
    data = bytearray(shard.read_bytes())
    data[start:start + 30] = bytes(b ^ 0x5A for b in data[start:start + 30])
    shard.write_bytes(bytes(data))


def test_a_corrupt_shard_is_named_in_one_line(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "good.json").write_text(json.dumps(GEN1))
    build([tmp_path / "logs"], tmp_path / "out", progress=False)
    (shard,) = (tmp_path / "out").glob("*.parquet")
    _damage(shard)
    done = subprocess.run([sys.executable, "-m", "battles.build", "--logs", str(tmp_path / "logs"),
                           "--out", str(tmp_path / "out"), "--quiet"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line
    assert done.stderr.startswith(f"error: {shard}: cannot read this shard")


def test_a_build_killed_mid_shard_leaves_no_tmp_after_the_rerun(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(8):
        (logs / f"{i}.json").write_text(json.dumps(variant(f"copy{i}")))
    out = tmp_path / "out"
    # Four rows a shard; the build kills itself once the second shard's rows are in its temporary
    # file, before that file is closed and renamed (the first shard finished).
    code = textwrap.dedent("""
        import os, signal, sys
        from battles.build import build
        from battles.trajectories import ShardWriter
        inner = ShardWriter._finish_shard
        def dying(self):
            if self.written:
                os.kill(os.getpid(), signal.SIGKILL)
            inner(self)
        ShardWriter._finish_shard = dying
        build([sys.argv[1]], sys.argv[2], rows_per_shard=4, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(logs), str(out)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert list(out.glob("*.tmp")) and list(out.glob("*.parquet"))  # one shard done, one cut short
    summary = build([logs], out, progress=False, rows_per_shard=4)
    assert not list(out.glob("*.tmp"))
    ids = [t.battle_id + t.player for t in read_trajectories(out, columns=[])]
    assert len(ids) == len(set(ids)) == 16  # every battle once, the killed shard's rows rebuilt
    assert summary["trajectories"] + 2 * summary["skipped"].get("already_built", 0) == 16


@pytest.mark.server
def test_replays_saved_by_poke_env_in_a_real_battle_build(showdown, tmp_path):
    import asyncio

    from poke_env import AccountConfiguration
    from poke_env.player import RandomPlayer

    saved = tmp_path / "saved"
    players = [RandomPlayer(battle_format="gen1randombattle", server_configuration=showdown.server_configuration,
                            save_replays=str(saved), account_configuration=AccountConfiguration(name, None))
               for name in ("qabra saver a", "qabra saver b")]
    asyncio.run(players[0].battle_against(players[1], n_battles=1))
    pages = sorted(saved.glob("*.html"))
    assert len(pages) == 2  # one page per player, the same battle seen from each side
    full = build([saved], tmp_path / "full", progress=False)
    assert full["trajectories"] == 2 and full["skipped"] == {"duplicate_id": 1}, full
    # Older poke-env saved the page before the |win| line: the winner is inferred, the same.
    cut = tmp_path / "cut"
    cut.mkdir()
    text = pages[0].read_text()
    (cut / pages[0].name).write_text("\n".join(x for x in text.split("\n") if not x.startswith("|win|")))
    summary = build([cut], tmp_path / "inferred", progress=False)
    assert summary["trajectories"] == 2 and summary["recovered"] == {"winner_inferred:fainted": 1}, summary
    _same_trajectories(tmp_path / "full", tmp_path / "inferred")
