"""Search labels recorded in real battles and attached to the trajectories built from them."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from agents.search_labels import LabelWriter, attach_labels, read_labels
from battles.build import build
from battles.encode import ObservationEncoder
from battles.trajectories import list_shards, read_trajectories
from eval.match import Match
from models.checkpoint import save_checkpoint
from models.policy import PolicyConfig, PolicyTransformer

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    enc = ObservationEncoder()
    model = PolicyTransformer(PolicyConfig.preset("tiny", vocab_size=enc.vocab.size, n_tokens=enc.n_tokens,
                                                  n_numbers=enc.n_numbers))
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(path, model, encoder_version=enc.version, vocab_hash=enc.vocab.hash)
    return path


def test_labels_from_real_battles_attach_to_both_sides(tmp_path, showdown, checkpoint):
    logging.getLogger("agents.search").setLevel(logging.ERROR)
    student, expert = tmp_path / "student-labels", tmp_path / "expert-labels"
    # 20 ms searches are too short for real labels: label_min_visits=0 keeps them all here.
    result = Match(f"policy:{checkpoint},labels={student},label_ms=20,label_samples=1,label_min_visits=0",
                   f"search:ms=20,samples=1,labels={expert},label_min_visits=0",
                   battle_format="gen1ou", team_set="competitive", n=2, out_dir=tmp_path / "battles", concurrency=2,
                   server=showdown, progress=False).run()
    assert result.battles == 2 and result.errors == 0
    assert len(read_labels(student)) == 2 and len(read_labels(expert)) == 2
    for entry in read_labels(student).values():
        labels, actions = np.asarray(entry["labels"]), np.asarray(entry["actions"])
        mass = labels.sum(axis=1)
        # A distribution at every decision; none only where there was no choice to make.
        assert labels.shape[1] == 13 and np.allclose(mass[mass > 0], 1.0, atol=1e-3)
        assert (actions[mass == 0] == -1).all() and (mass > 0).mean() > 0.8
        assert entry["source"] == "search:ms=20,samples=1"

    build([tmp_path / "battles"], tmp_path / "traj")
    counts_student = attach_labels(tmp_path / "traj", student)
    counts_expert = attach_labels(tmp_path / "traj", expert)
    # Every battle's student side and expert side found its labels; nothing was guessed.
    assert counts_student["labelled"] == 2 and counts_expert["labelled"] == 2, (counts_student, counts_expert)
    assert counts_student["label_files_unused"] == 0 == counts_expert["label_files_unused"]
    trajs = [t for shard in list_shards(tmp_path / "traj") for t in read_trajectories(shard)]
    assert len(trajs) == 4
    for t in trajs:
        assert t.teacher is not None and t.teacher.shape == (len(t.action), 13)
        mass = t.teacher.sum(axis=1)  # a distribution, or no label (forced, or a differing decision)
        assert np.allclose(mass[mass > 0], 1.0, atol=1e-4) and (mass[~t.legal.any(axis=1)] == 0).all()
        assert (mass > 0).sum() >= 0.8 * t.legal.any(axis=1).sum()
        assert (t.teacher[~t.legal] == 0).all()
        assert t.teacher_source.startswith("search:ms=20")
        if t.agent.startswith("search"):  # the expert's label puts mass on what it chose
            labelled = (t.action >= 0) & (mass > 0)  # a differing decision has no label at all
            assert (t.teacher[labelled, t.action[labelled]] > 0).all()


def test_mismatched_labels_are_counted_not_attached(tmp_path, showdown, checkpoint):
    logging.getLogger("agents.search").setLevel(logging.ERROR)
    labels = tmp_path / "labels"
    Match("maxbp", f"search:ms=10,samples=1,labels={labels}", battle_format="gen1ou", team_set="competitive", n=1,
          out_dir=tmp_path / "battles", concurrency=1, server=showdown, progress=False).run()
    build([tmp_path / "battles"], tmp_path / "traj")
    (path,) = labels.glob("*.labels.json")
    data = json.loads(path.read_text())
    data["labels"] = data["labels"][:-1]  # one decision short
    data["actions"] = data["actions"][:-1]
    path.write_text(json.dumps(data))
    counts = attach_labels(tmp_path / "traj", labels)
    assert counts.get("labelled", 0) == 0 and counts["decision_count_mismatch"] == 1
    assert all(t.teacher is None for s in list_shards(tmp_path / "traj") for t in read_trajectories(s))


def test_labels_are_sharpened_and_renormalised_over_the_logs_legal_actions():
    import types

    from agents.search_labels import match_labels

    legal = np.zeros((2, 13), bool)
    legal[:, [0, 1, 4]] = True
    traj = types.SimpleNamespace(action=np.array([0, -1]), legal=legal)
    shares = [0.5, 0.25, 0.0, 0.0, 0.25] + [0.0] * 8
    entry = {"labels": [shares, [0.0] * 3 + [1.0] + [0.0] * 9], "actions": [0, 3]}
    probs, why = match_labels(traj, entry)
    assert why == "" and np.allclose(probs[0, [0, 1, 4]], [0.5, 0.25, 0.25])
    # The second label's only mass is on an action the log calls illegal: no label there.
    assert probs[1].sum() == 0
    sharp, _ = match_labels(traj, entry, temperature=0.5)  # shares ** 2: 0.25, 0.0625, 0.0625
    assert np.allclose(sharp[0, [0, 1, 4]], [0.25 / 0.375, 0.0625 / 0.375, 0.0625 / 0.375])
    assert match_labels(traj, {**entry, "actions": [1, 3]}) == (None, "action_mismatch")
    # One differing decision among many is not labelled, the rest are.
    many = types.SimpleNamespace(action=np.zeros(20, int), legal=np.repeat(legal[:1], 20, axis=0))
    probs, why = match_labels(many, {"labels": [shares] * 20, "actions": [0] * 19 + [1]})
    assert why == "" and probs[19].sum() == 0 and np.allclose(probs[:19].sum(axis=1), 1.0)


def test_a_shallow_search_writes_no_label(tmp_path):
    from types import SimpleNamespace

    writer = LabelWriter(tmp_path, "search:ms=50,samples=1", min_visits=10)
    battle = SimpleNamespace(battle_tag="battle-gen1ou-7", player_role="p1")
    shares = np.eye(13, dtype=np.float32)[2]
    writer.record(battle, shares, 2, visits=4.5)  # 41 simulations over 9 choices: no label
    writer.record(battle, shares, 2, visits=12.0)
    writer.record(battle, shares, 2)  # forced: nothing was searched, the label is exact
    entry = json.loads(writer.finish(battle, "student").read_text())
    assert entry["shallow"] == 1
    assert [sum(row) for row in entry["labels"]] == [0, 1, 1] and entry["actions"] == [2, 2, 2]
    for bad in (-1, "10", True):
        with pytest.raises(ValueError, match="label_min_visits"):
            LabelWriter(tmp_path, "x", min_visits=bad)


def test_labels_below_the_search_depth_floor_are_left_out(tmp_path, showdown, checkpoint):
    logging.getLogger("agents.search").setLevel(logging.ERROR)
    labels = tmp_path / "labels"
    Match(f"policy:{checkpoint},labels={labels},label_ms=5,label_samples=1,label_min_visits=1000", "maxbp",
          battle_format="gen1ou", team_set="competitive", n=1, out_dir=tmp_path / "battles", concurrency=1,
          server=showdown, progress=False).run()
    (entry,) = read_labels(labels).values()
    mass, actions = np.asarray(entry["labels"]).sum(axis=1), np.asarray(entry["actions"])
    # Every searched decision fell short of 1000 simulations per choice: no label, counted.
    # Forced decisions (nothing to search) keep their one-hot; those with no choice to make
    # at all (action -1) have no label either way, as without the floor.
    assert entry["shallow"] > 0 and entry["shallow"] == ((mass == 0) & (actions >= 0)).sum()
    assert entry["shallow"] + (mass > 0).sum() + (actions == -1).sum() == len(mass)
    assert np.allclose(np.asarray(entry["labels"])[mass > 0].max(axis=1), 1.0)
    build([tmp_path / "battles"], tmp_path / "traj")
    counts = attach_labels(tmp_path / "traj", labels)
    assert counts["labelled"] == 1 and counts["shallow_decisions"] == entry["shallow"]


def test_label_below_searches_only_the_positions_the_student_is_unsure_of(tmp_path, showdown):
    """The bundled model is sure of most positions: those are recorded unlabelled and counted,
    the others searched; every decision is one or the other (or had no choice at all)."""
    from agents.registry import bundled_path, make_player

    logging.getLogger("agents.search").setLevel(logging.ERROR)
    labels = tmp_path / "labels"
    result = Match(f"policy:{bundled_path()},greedy=true,labels={labels},label_ms=5,label_samples=1,"
                   "label_min_visits=0,label_below=0.8", "maxbp", battle_format="gen1ou", team_set="competitive",
                   n=2, out_dir=tmp_path / "battles", concurrency=2, server=showdown, progress=False).run()
    assert result.battles == 2 and result.errors == 0
    confident = searched = 0
    for entry in read_labels(labels).values():
        mass, actions = np.asarray(entry["labels"]).sum(axis=1), np.asarray(entry["actions"])
        assert entry["confident"] == ((mass == 0) & (actions >= 0)).sum()  # unlabelled, yet played
        confident += entry["confident"]
        searched += int((mass > 0).sum())
    assert confident > 0 and searched > 0, (confident, searched)
    build([tmp_path / "battles"], tmp_path / "traj")
    assert attach_labels(tmp_path / "traj", labels)["labelled"] == 2
    for bad in (0, 1.5, "true"):
        with pytest.raises(ValueError, match="label_below"):
            make_player(f"policy:{bundled_path()},labels={labels},label_below={bad}", battle_format="gen1ou",
                        server_configuration=showdown.server_configuration, start_listening=False)


def test_a_room_name_played_again_by_a_new_server_keeps_both_battles_labels(tmp_path, checkpoint):
    """A stage resumed after a kill starts a new server, whose rooms are numbered from 1 again:
    the new battle's labels must not replace the recorded old battle's."""
    from battles.server import ShowdownServer

    logging.getLogger("agents.search").setLevel(logging.ERROR)
    labels = tmp_path / "labels"
    for run in range(2):
        with ShowdownServer() as server:
            result = Match(f"policy:{checkpoint},labels={labels},label_ms=5,label_samples=1,label_min_visits=0",
                           "maxbp", battle_format="gen1ou", team_set="competitive", n=1,
                           out_dir=tmp_path / f"battles-{run}", server=server, progress=False, seed=run).run()
        assert result.battles == 1 and result.errors == 0
    entries = read_labels(labels)
    assert len(entries) == 2 and len({(room, side) for room, side, _ in entries}) == 1  # one room name, twice
    build([tmp_path / "battles-0", tmp_path / "battles-1"], tmp_path / "traj")
    counts = attach_labels(tmp_path / "traj", labels)
    assert counts["labelled"] == 2 and counts["label_files_unused"] == 0, counts
