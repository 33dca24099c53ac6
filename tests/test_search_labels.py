"""Search labels recorded in real battles, and the trajectories built from those battles plus them."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest

from agents.search_labels import LabelWriter
from battles.build import build
from battles.encode import ObservationEncoder
from battles.labels import LabelSet, read_manifest
from battles.logs import read_battle_logs
from battles.trajectories import read_trajectories
from eval.match import Match
from models.checkpoint import save_checkpoint
from models.policy import PolicyConfig, PolicyTransformer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    enc = ObservationEncoder()
    model = PolicyTransformer(PolicyConfig.preset("tiny", vocab_size=enc.vocab.size, n_tokens=enc.n_tokens,
                                                  n_numbers=enc.n_numbers))
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(path, model, encoder_version=enc.version, vocab_hash=enc.vocab.hash)
    return path


def entries(folder) -> list[dict]:
    return list(LabelSet(folder).entries.values())


def test_one_label_per_decision_a_request_sent_again_replaces_it(tmp_path):
    writer = LabelWriter(tmp_path, "search:ms=50,samples=1", min_visits=10)
    assert read_manifest(tmp_path)["kind"] == "search" and read_manifest(tmp_path)["min_visits"] == 10
    messages: list = []
    battle = SimpleNamespace(battle_tag="battle-gen1ou-7", player_role="p1", last_request={"rqid": 1},
                             _replay_data=messages)
    shares = np.eye(13, dtype=np.float32)[2]

    def decide(rqid: int, new_messages: int, *args, **kwargs) -> None:
        battle.last_request = {"rqid": rqid}
        messages.extend([["", "x"]] * new_messages)
        writer.record(battle, *args, **kwargs)

    decide(1, 3, shares, 2, visits=4.5)  # 41 simulations over 9 choices: no label
    decide(1, 0, shares, 2, visits=12.0)  # the same request again (an invalid choice): replaced
    decide(2, 4, shares, 2, visits=12.0)
    decide(3, 5, None, 1)  # the player was sure: not searched
    decide(4, 0, shares, 3)  # unavailable choice: a new request, no message since; replaced
    decide(5, 2, shares, 2)  # forced: nothing was searched, the label is exact
    (entry,) = json.loads(writer.finish(battle, "Student 1").read_text())["entries"]
    assert entry["room"] == "gen1ou-7" and entry["player"] == "Student 1" and entry["side"] == "p1"
    assert [sum(row) for row in entry["labels"]] == [1, 1, 1, 1] and entry["actions"] == [2, 2, 3, 2]
    assert entry["shallow"] == 0 and entry["confident"] == 0  # both were replaced
    for bad in (-1, "10", True):
        with pytest.raises(ValueError, match="label_min_visits"):
            LabelWriter(tmp_path, "x", min_visits=bad)


@pytest.mark.server
def test_labels_from_real_battles_join_both_sides(tmp_path, showdown, checkpoint):
    logging.getLogger("agents.search").setLevel(logging.ERROR)
    student, expert = tmp_path / "student-labels", tmp_path / "expert-labels"
    # 20 ms searches are too short for real labels: label_min_visits=0 keeps them all here.
    result = Match(f"policy:{checkpoint},labels={student},label_ms=20,label_samples=1,label_min_visits=0",
                   f"search:ms=20,samples=1,labels={expert},label_min_visits=0",
                   battle_format="gen1ou", team_set="competitive", n=2, out_dir=tmp_path / "battles", concurrency=2,
                   server=showdown, progress=False).run()
    assert result.battles == 2 and result.errors == 0
    assert len(entries(student)) == 2 and len(entries(expert)) == 2
    rooms = {r.room for r in read_battle_logs(tmp_path / "battles")}
    for entry in entries(student):
        assert entry["room"] in rooms  # recorded with the battle: its room, as the record keeps it
        labels, actions = entry["labels"], np.asarray(entry["actions"])
        mass = labels.sum(axis=1)
        # A distribution at every decision; none only where there was no choice to make.
        assert labels.shape[1] == 13 and np.allclose(mass[mass > 0], 1.0, atol=1e-3)
        assert (actions[mass == 0] == -1).all() and (mass > 0).mean() > 0.8
        assert entry["source"] == "search:ms=20,samples=1"

    summary = build([tmp_path / "battles"], tmp_path / "traj", labels=[student, expert], progress=False)
    # Every battle's student side and expert side found its labels, each label its decision.
    counts = summary["labels"]
    assert counts["trajectories_labelled"] == 4 and counts["unused_entries"] == 0, counts
    assert counts.get("unmatched:no_such_decision", 0) == 0
    assert counts.get("unmatched:decision_not_paired_with_choice", 0) == 0, counts
    trajs = list(read_trajectories(tmp_path / "traj"))
    assert len(trajs) == 4
    for t in trajs:
        assert t.teacher is not None and t.teacher.shape == (len(t.action), 13)
        mass = t.teacher.sum(axis=1)  # a distribution, or no label (forced, or a differing decision)
        assert np.allclose(mass[mass > 0], 1.0, atol=1e-4) and (mass[~t.legal.any(axis=1)] == 0).all()
        assert (mass > 0).sum() >= 0.8 * t.legal.any(axis=1).sum()
        assert (t.teacher[~t.legal] == 0).all()
        assert t.teacher_source.startswith("search:ms=20")
        if t.agent.startswith("search"):  # the expert's label puts mass on what it chose
            labelled = (t.action >= 0) & (mass > 0)
            assert (t.teacher[labelled, t.action[labelled]] > 0).all()


@pytest.mark.server
def test_labels_below_the_search_depth_floor_are_left_out(tmp_path, showdown, checkpoint):
    logging.getLogger("agents.search").setLevel(logging.ERROR)
    labels = tmp_path / "labels"
    Match(f"policy:{checkpoint},labels={labels},label_ms=5,label_samples=1,label_min_visits=1000", "maxbp",
          battle_format="gen1ou", team_set="competitive", n=1, out_dir=tmp_path / "battles", concurrency=1,
          server=showdown, progress=False).run()
    (entry,) = entries(labels)
    mass, actions = entry["labels"].sum(axis=1), np.asarray(entry["actions"])
    # Every searched decision fell short of 1000 simulations per choice: no label, counted.
    # Forced decisions (nothing to search) keep their one-hot; those with no choice to make
    # at all (action -1) have no label either way, as without the floor.
    assert entry["shallow"] > 0 and entry["shallow"] == ((mass == 0) & (actions >= 0)).sum()
    assert entry["shallow"] + (mass > 0).sum() + (actions == -1).sum() == len(mass)
    assert np.allclose(entry["labels"][mass > 0].max(axis=1), 1.0)
    summary = build([tmp_path / "battles"], tmp_path / "traj", labels=[labels], progress=False)
    assert summary["labels"]["trajectories_labelled"] == 1
    assert summary["labels"]["shallow_decisions"] == entry["shallow"]


@pytest.mark.server
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
    for entry in entries(labels):
        mass, actions = entry["labels"].sum(axis=1), np.asarray(entry["actions"])
        assert entry["confident"] == ((mass == 0) & (actions >= 0)).sum()  # unlabelled, yet played
        confident += entry["confident"]
        searched += int((mass > 0).sum())
    assert confident > 0 and searched > 0, (confident, searched)
    summary = build([tmp_path / "battles"], tmp_path / "traj", labels=[labels], progress=False)
    assert summary["labels"]["trajectories_labelled"] == 2
    for bad in (0, 1.5, "true"):
        with pytest.raises(ValueError, match="label_below"):
            make_player(f"policy:{bundled_path()},labels={labels},label_below={bad}", battle_format="gen1ou",
                        server_configuration=showdown.server_configuration, start_listening=False)


@pytest.mark.server
def test_a_room_name_played_again_by_a_new_server_keeps_both_battles_labels(tmp_path, checkpoint):
    """A stage resumed after a kill starts a new server, whose rooms are numbered from 1 again:
    the new battle's labels must not replace the recorded old battle's, nor join it."""
    from battles.server import ShowdownServer

    logging.getLogger("agents.search").setLevel(logging.ERROR)
    labels = tmp_path / "labels"
    for run in range(2):
        with ShowdownServer() as server:
            result = Match(f"policy:{checkpoint},labels={labels},label_ms=5,label_samples=1,label_min_visits=0",
                           "maxbp", battle_format="gen1ou", team_set="competitive", n=1,
                           out_dir=tmp_path / f"battles-{run}", server=server, progress=False, seed=run).run()
        assert result.battles == 1 and result.errors == 0
    found = entries(labels)
    assert len(found) == 2 and len({e["room"] for e in found}) == 1  # one room name, twice
    summary = build([tmp_path / "battles-0", tmp_path / "battles-1"], tmp_path / "traj", labels=[labels],
                    progress=False)
    assert summary["labels"]["trajectories_labelled"] == 2 and summary["labels"]["unused_entries"] == 0
    assert summary["labels"].get("unmatched:no_such_decision", 0) == 0, summary["labels"]
