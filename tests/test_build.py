"""battles.build: replays and recorded battles to trajectory shards, bad input counted and skipped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from battles.build import build, built_ids, by_role
from battles.labels import LabelSet, write_entries, write_manifest
from battles.logs import BattleLogWriter, BattleRecord
from battles.trajectories import read_trajectories, shard_stats

REPLAYS = Path(__file__).resolve().parents[1] / "battles" / "data" / "replays"
GEN1 = REPLAYS / "gen1ou" / "smogtours-gen1ou-734539.json"
# Server logs (exact choices and teams): a whole gen 1 battle, and a gen 9 one forfeited while
# each side's third request was open (its last decision has no recorded choice).
SERVER_LOGS = [REPLAYS / "gen1ou" / "log.1.json", REPLAYS / "gen9ubers" / "log.1.json"]


def record_battles(folder: Path, roles: dict | None = None) -> list[BattleRecord]:
    """The server logs as battles we recorded: rooms gen1ou-0 and gen9ubers-1, ids q7-ROOM."""
    records = []
    with BattleLogWriter(folder) as writer:
        for i, path in enumerate(SERVER_LOGS):
            d = json.loads(path.read_text())
            d["log"] = "\n".join(d["log"]) if isinstance(d["log"], list) else d["log"]
            data = {"roomid": f"battle-{d['format']}-{i}", "players": [d["p1"], d["p2"]], "inputLog": d["inputLog"],
                    **{k: d[k] for k in ("format", "log", "p1team", "p2team", "winner", "turns")}}
            records.append(BattleRecord.from_server_json(data, specs={"p1": "a", "p2": "b"}, id_prefix="q7-",
                                                         roles=roles))
            writer.add(records[-1])
    return records


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Two recorded battles (p2 the learner) and their trajectories built without labels."""
    root = tmp_path_factory.mktemp("recorded")
    records = record_battles(root / "battles", roles={"p2": "learner"})
    build([root / "battles"], root / "plain", progress=False)
    return root, records, {(t.battle_id, t.player): t for t in read_trajectories(root / "plain")}


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


def shares(traj, seed: int) -> np.ndarray:
    """A distribution over each row's legal actions (none where nothing is legal)."""
    p = np.random.default_rng(seed).random((len(traj.action), 13)) * traj.legal
    return p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)


def test_labels_join_exactly_the_rows_they_name(recorded, tmp_path):
    root, records, plain = recorded
    gen1, ubers = plain[("q7-gen1ou-0", "p1")], plain[("q7-gen9ubers-1", "p2")]
    assert len(gen1.action) == 23 and len(ubers.action) == 3
    empty = int((~gen1.legal.any(axis=1)).sum() + (~ubers.legal[:2].any(axis=1)).sum())  # no choice at all
    # Recorded live: by room and player. Decision 5's live action differs from the log's; a 24th
    # label has no decision.
    live, searched = gen1.action.tolist() + [0], shares(gen1, 0)
    shown = np.flatnonzero(gen1.action >= 0)
    live[shown[5]] = int(np.flatnonzero(gen1.legal[shown[5]] & (np.arange(13) != gen1.action[shown[5]]))[0])
    search = tmp_path / "search"
    write_manifest(search, "search", "search:ms=1")
    write_entries(search / "a.labels.json", [
        {"room": "gen1ou-0", "player": records[0].players[0], "side": "p1", "source": "search:ms=1",
         "labels": searched.tolist() + [np.eye(13)[0].tolist()], "actions": live},
        {"room": "gen1ou-99", "player": "nobody", "side": "p1", "source": "search:ms=1", "labels": [[1.0] + [0.0] * 12]},
    ])
    # Made over built trajectories: by battle id. Row 2 was never paired with a choice (forfeit).
    coach = tmp_path / "coach"
    write_manifest(coach, "coach", "coach:x")
    write_entries(coach / "b.labels.json", [{"battle_id": ubers.battle_id, "side": "p2", "source": "coach:x",
                                             "labels": shares(ubers, 1).tolist()}])
    summary = build([root / "battles"], tmp_path / "labelled", labels=[search, coach], progress=False)
    assert summary["labels"] == {
        "entries": 3, "trajectories_labelled": 2, "decisions_labelled": 23 - 1 + 2 - empty, "shallow_decisions": 0,
        "unmatched:live_action_differs": 1, "unmatched:no_such_decision": 1,
        "unmatched:decision_not_paired_with_choice": 1, "unused_entries": 1, "ambiguous_entries": 0,
        **({"decisions_without_label": empty} if empty else {})}
    built = {(t.battle_id, t.player): t for t in read_trajectories(tmp_path / "labelled")}
    assert built.keys() == plain.keys()
    want = searched.astype(np.float32)
    want[shown[5]] = 0
    np.testing.assert_allclose(built[("q7-gen1ou-0", "p1")].teacher, want, atol=1e-6)
    assert built[("q7-gen1ou-0", "p1")].teacher_source == "search:ms=1"
    np.testing.assert_allclose(built[("q7-gen9ubers-1", "p2")].teacher[:2], shares(ubers, 1)[:2], atol=1e-6)
    assert not built[("q7-gen9ubers-1", "p2")].teacher[2].any()
    for key, t in built.items():
        np.testing.assert_array_equal(t.tokens, plain[key].tokens)  # the same build, plus labels
        if key not in (("q7-gen1ou-0", "p1"), ("q7-gen9ubers-1", "p2")):
            assert t.teacher is None and t.teacher_source is None


def test_a_battle_side_labelled_twice_is_ambiguous_not_guessed(tmp_path):
    entry = {"battle_id": "b", "side": "p1", "source": "s", "labels": [[1.0] + [0.0] * 12]}
    for name in ("one", "two"):
        write_manifest(tmp_path / name, "coach", "s")
        write_entries(tmp_path / name / "x.labels.json", [entry])
    labels = LabelSet([tmp_path / "one", tmp_path / "two"])
    assert labels.find("b", "p1") is None and len(labels) == 0 and len(labels.ambiguous) == 1
    with pytest.raises(FileNotFoundError, match="not a label set"):
        LabelSet(tmp_path)


def test_sides_are_selected_by_the_role_recorded_with_the_battle(recorded, tmp_path):
    root, records, plain = recorded
    assert [r.roles for r in records] == [{"p2": "learner"}] * 2
    summary = build([root / "battles"], tmp_path / "learner", select=by_role("learner"), progress=False)
    learner = {(t.battle_id, t.player): t for t in read_trajectories(tmp_path / "learner")}
    assert learner.keys() == {k for k in plain if k[1] == "p2"} and summary["trajectories"] == 2
    for key, t in learner.items():
        np.testing.assert_array_equal(t.tokens, plain[key].tokens)
    none = build([root / "battles"], tmp_path / "none", select=by_role("expert"), progress=False)
    assert none["trajectories"] == 0 and none["skipped"] == {"no_side_selected": 2}
