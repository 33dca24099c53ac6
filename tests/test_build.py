"""battles.build: replays and recorded battles to trajectory shards, bad input counted and skipped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from battles.build import build, built_ids
from battles.trajectories import read_trajectories, shard_stats

REPLAYS = Path(__file__).resolve().parents[1] / "battles" / "data" / "replays"
GEN1 = REPLAYS / "gen1ou" / "smogtours-gen1ou-734539.json"


def test_every_bundled_replay_builds(tmp_path):
    summary = build([REPLAYS], tmp_path, progress=False)
    # Doubles (metronome) are skipped with a reason; everything else builds.
    assert summary["skipped"].get("doubles_not_supported", 0) == 6
    assert not any(k.startswith("parse_error") for k in summary["skipped"]), summary
    assert summary["trajectories"] >= 2 * 10
    for traj in read_trajectories(tmp_path):
        assert traj.source == "human"
        assert traj.tokens.shape[0] == traj.action.shape[0] == traj.legal.shape[0]
        for a, legal in zip(traj.action, traj.legal):
            assert a == -1 or legal[a], (traj.battle_id, a)  # a legal action or -1
        assert (traj.action >= 0).mean() > 0.5  # most choices are visible in a replay


def write(folder: Path, name: str, content: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(content)


def test_bad_inputs_are_counted_and_skipped(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    shutil.copy(GEN1, logs / "good.json")
    good = json.loads(GEN1.read_text())
    write(logs, "broken.json", "{ not json")
    write(logs, "nolog.json", json.dumps({k: v for k, v in good.items() if k != "log"}))
    write(logs, "dup.json", json.dumps(good))  # same id as good.json
    truncated = dict(good, id="trunc", log=good["log"][: len(good["log"]) // 2])
    write(logs, "truncated.json", json.dumps(truncated))
    short = dict(good, id="short", log=good["log"].split("|turn|1")[0] + "|win|" + good["players"][0])
    write(logs, "short.json", json.dumps(short))
    err = dict(good, id="err", log=good["log"].replace("|turn|2", "|error|[Invalid choice] x\n|turn|2", 1))
    write(logs, "err.json", json.dumps(err))
    summary = build([logs], tmp_path / "out", progress=False)
    assert summary["inputs"] == 7
    assert summary["trajectories"] == 2
    assert summary["skipped"] == {
        "duplicate_id": 1, "ended_before_turn_1": 1, "error_line": 1, "missing_field:log": 1,
        "not_json": 1, "truncated_or_no_winner": 1,
    }


def test_rerun_skips_built_and_resumes_without_duplicates(tmp_path):
    out = tmp_path / "out"
    first = build([REPLAYS / "gen1ou", REPLAYS / "gen9ou"], out, progress=False)
    again = build([REPLAYS / "gen1ou", REPLAYS / "gen9ou"], out, progress=False)
    assert again["trajectories"] == 0
    assert again["skipped"]["already_built"] == first["inputs"]
    ids = [t.battle_id + t.player for t in read_trajectories(out, columns=[])]
    assert len(ids) == len(set(ids)) == first["trajectories"]
    assert built_ids(out) == {i[:-2] for i in ids}


def test_workers_give_the_same_trajectories(tmp_path):
    one = build([REPLAYS / "gen1ou"], tmp_path / "one", progress=False)
    two = build([REPLAYS / "gen1ou"], tmp_path / "two", workers=2, progress=False)
    assert one["trajectories"] == two["trajectories"] and one["decisions"] == two["decisions"]
    a = {t.battle_id + t.player: t for t in read_trajectories(tmp_path / "one")}
    b = {t.battle_id + t.player: t for t in read_trajectories(tmp_path / "two")}
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key].tokens, b[key].tokens)
        np.testing.assert_array_equal(a[key].action, b[key].action)
    assert shard_stats(tmp_path / "two")["decisions"] == two["decisions"]


@pytest.mark.server
def test_recorded_battles_build_with_exact_actions(showdown, tmp_path):
    from eval.match import Match

    Match("maxbp", "random", battle_format="gen1ou", team_set="competitive", n=4, out_dir=tmp_path / "battles",
          concurrency=4, server=showdown, progress=False).run()
    summary = build([tmp_path / "battles"], tmp_path / "traj", progress=False)
    assert summary["trajectories"] == 8 and not summary["skipped"]
    choices = hidden = 0
    for traj in read_trajectories(tmp_path / "traj"):
        assert traj.source == "selfplay" and traj.agent in ("maxbp", "random")
        free = traj.legal.sum(axis=1) > 1  # forced turns (recharge, a lone switch) may be -1
        choices += int(free.sum())
        hidden += int((traj.action[free] < 0).sum())
    # Our own battles carry exact choices: at least 99% of real choices have their action.
    assert hidden <= 0.01 * choices, (hidden, choices)
