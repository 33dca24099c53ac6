"""Datasets and mixes over the trajectory store: windows, proportions, determinism, resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from battles.dataset import (
    DataMix,
    MixLoader,
    TrajectoryDataset,
    collate,
    is_validation,
    window_plan,
)
from battles.trajectories import ShardWriter, Trajectory

K, F = 4, 2


def traj(bid: str, t: int, source: str = "human", player: str = "p1", fmt: str = "gen1ou",
         rating: float | None = 1500.0, outcome: int = 1, teacher: bool = False,
         agent: str | None = None) -> Trajectory:
    """A trajectory whose tokens record (battle number, decision index) so windows can be traced."""
    tokens = np.zeros((t, K), np.int32)
    tokens[:, 0] = np.arange(t)
    tokens[:, 1] = int(bid.rsplit("-", 1)[1])
    legal = np.zeros((t, 13), bool)
    legal[:, : 1 + (t % 13)] = True
    return Trajectory(
        battle_id=bid, player=player, format=fmt, source=source, outcome=outcome,
        encoder_version=1, vocab_hash="v", tokens=tokens,
        numbers=np.full((t, F), 0.5, np.float32), action=(np.arange(t) % 13).astype(np.int16),
        legal=legal, teacher=np.full((t, 13), 1 / 13, np.float32) if teacher else None,
        rating=rating, agent=agent,
    )


def write(folder, trajs, rows_per_shard=8, row_group_size=4):
    with ShardWriter(folder, "t", rows_per_shard=rows_per_shard, row_group_size=row_group_size) as w:
        w.write_many(trajs)
    return folder


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """60 human and 60 selfplay battles in one folder, lengths 1..40."""
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    trajs = []
    for i in range(120):
        src = "human" if i % 2 == 0 else "selfplay"
        trajs.append(traj(f"b-{i}", int(rng.integers(1, 41)), source=src,
                          outcome=[-1, 0, 1][i % 3], rating=None if i % 5 == 0 else 1000.0 + i))
    return write(folder, trajs, rows_per_shard=16, row_group_size=4)


def test_window_plan_covers_every_decision_once():
    for t in range(0, 300):
        for w in (1, 7, 128):
            covered = np.zeros(t, int)
            for start, length, loss_from in window_plan(t, w):
                assert length == min(w, t) and 0 <= start and start + length <= t
                covered[start + loss_from: start + length] += 1
            assert (covered == 1).all(), (t, w)
    assert window_plan(5, None) == [(0, 5, 0)]


def test_windows_cover_every_decision_with_the_right_data(tmp_path):
    lengths = [1, 5, 128, 129, 300, 256]
    write(tmp_path, [traj(f"b-{i}", t) for i, t in enumerate(lengths)], row_group_size=2)
    ds = TrajectoryDataset(tmp_path, window=128)
    seen = {i: np.zeros(t, int) for i, t in enumerate(lengths)}
    samples = list(ds)
    assert ds.num_samples() == len(samples) == sum(-(-t // 128) for t in lengths)
    for s in samples:
        assert s["tokens"].shape == (128, K) and s["tokens"].dtype == torch.long
        assert s["legal"].dtype == torch.bool and s["numbers"].dtype == torch.float32
        b = int(s["battle_id"].split("-")[1])
        valid = s["mask"].numpy()
        pos = s["tokens"][:, 0].numpy()[valid]
        assert (s["tokens"][valid, 1].numpy() == b).all()
        np.testing.assert_array_equal(pos, np.arange(int(s["start"]), int(s["start"]) + len(pos)))
        assert (s["action"][~s["mask"]] == -1).all() and not s["legal"][~s["mask"]].any()
        assert not (s["loss_mask"] & ~s["mask"]).any()
        seen[b][s["tokens"][s["loss_mask"], 0].numpy()] += 1
    assert all((c == 1).all() for c in seen.values())


def test_whole_battles_and_collate_padding(tmp_path):
    write(tmp_path, [traj("b-0", 3, teacher=True), traj("b-1", 7)])
    batch = collate(list(TrajectoryDataset(tmp_path, window=None)))
    assert batch["tokens"].shape == (2, 7, K) and batch["legal"].shape == (2, 7, 13)
    assert batch["mask"].sum(1).tolist() == [3, 7]
    assert batch["action"][0, 3:].eq(-1).all()
    assert batch["has_teacher"].tolist() == [True, False]
    assert batch["teacher"][0, :3].sum().item() == pytest.approx(3.0)
    assert batch["outcome"].tolist() == [1.0, 1.0] and batch["battle_id"] == ["b-0", "b-1"]


def test_filters_and_validation_split(mixed):
    all_ids = {s["battle_id"] for s in TrajectoryDataset(mixed, window=None)}
    assert len(all_ids) == 120
    wins = {s["battle_id"] for s in TrajectoryDataset(mixed, window=None, outcomes=1)}
    assert wins == {f"b-{i}" for i in range(120) if i % 3 == 2}
    rated = {s["battle_id"] for s in TrajectoryDataset(mixed, window=None, min_rating=1100)}
    assert rated == {f"b-{i}" for i in range(100, 120) if i % 5}
    assert not list(TrajectoryDataset(mixed, window=None, formats="gen9ou"))
    train = {s["battle_id"] for s in TrajectoryDataset(mixed, window=None, split="train",
                                                        val_fraction=0.25)}
    val = {s["battle_id"] for s in TrajectoryDataset(mixed, window=None, split="val",
                                                      val_fraction=0.25)}
    assert train | val == all_ids and not train & val
    assert 10 <= len(val) <= 50
    assert val == {b for b in all_ids if is_validation(b, 0.25)}
    with pytest.raises(ValueError, match="split"):
        TrajectoryDataset(mixed, split="test")


def test_ranks_and_workers_split_the_data(mixed):
    parts = [[s["battle_id"] for s in TrajectoryDataset(mixed, window=None, rank=r, world_size=3)]
             for r in range(3)]
    assert sum(map(len, parts)) == 120 and len(set().union(*parts)) == 120
    loader = torch.utils.data.DataLoader(TrajectoryDataset(mixed, window=None), batch_size=8,
                                         num_workers=2, collate_fn=collate)
    ids = [b for batch in loader for b in batch["battle_id"]]
    assert sorted(ids) == sorted(f"b-{i}" for i in range(120))


def test_mix_proportions_and_determinism(mixed):
    mix = DataMix({"human": 0.3, "selfplay": 0.7}, [mixed], window=8, seed=1, shuffle_buffer=64)
    draws = [(s["source"], s["battle_id"], int(s["start"])) for _, s in zip(range(3000), mix)]
    frac = Counter(src for src, _, _ in draws)["human"] / len(draws)
    assert abs(frac - 0.3) < 0.03, frac
    assert all(int(b.split("-")[1]) % 2 == (src == "selfplay") for src, b, _ in draws)
    again = DataMix({"human": 0.3, "selfplay": 0.7}, [mixed], window=8, seed=1, shuffle_buffer=64)
    assert [(s["source"], s["battle_id"], int(s["start"])) for _, s in zip(range(3000), again)] == draws
    other = DataMix({"human": 0.3, "selfplay": 0.7}, [mixed], window=8, seed=2, shuffle_buffer=64)
    assert [(s["battle_id"], int(s["start"])) for _, s in zip(range(200), other)] != \
        [(b, st) for _, b, st in draws[:200]]


def test_mix_by_named_folders_repeats_epochs(tmp_path):
    a = write(tmp_path / "a", [traj(f"a-{i}", 3) for i in range(5)])
    b = write(tmp_path / "b", [traj(f"b-{i}", 3, source="selfplay") for i in range(5)])
    mix = DataMix({"small": 0.5, "other": 0.5}, {"small": a, "other": b}, window=None, seed=0)
    ids = Counter(s["battle_id"] for _, s in zip(range(400), mix))
    assert set(ids) == {f"a-{i}" for i in range(5)} | {f"b-{i}" for i in range(5)}
    assert min(ids.values()) >= 20  # each epoch visits every battle, so counts stay even


def test_mix_resume_continues_the_same_sequence(mixed):
    def make():
        return DataMix({"human": 0.5, "selfplay": 0.5}, [mixed], window=8, seed=3,
                       shuffle_buffer=32, outcomes=(1, -1))

    def key(s):
        return s["battle_id"], int(s["start"])

    full = [key(s) for _, s in zip(range(700), make())]
    first = make()
    it = iter(first)
    head = [key(next(it)) for _ in range(450)]
    state = first.state_dict()
    assert state["samples"] == 450
    resumed = make()
    resumed.load_state_dict(state)
    tail = [key(s) for _, s in zip(range(250), resumed)]
    assert head + tail == full
    with pytest.raises(ValueError, match="seed"):
        DataMix({"human": 1.0}, [mixed], seed=4).load_state_dict(state)


def test_mix_loader_with_workers_resumes_exactly(mixed):
    def loader():
        mix = DataMix({"human": 0.4, "selfplay": 0.6}, [mixed], window=16, seed=5,
                      shuffle_buffer=32)
        return MixLoader(mix, batch_size=6, num_workers=2)

    def keys(batches, n: int) -> list:
        """(battle, start) of every sample in the first `n` batches."""
        return [key for _, batch in zip(range(n), batches)
                for key in zip(batch["battle_id"], batch["start"].tolist(), strict=True)]

    full = keys(loader(), 11)
    first = loader()
    keys(first, 5)
    state = first.state_dict()
    assert state["samples"] == 30 and state["per_worker"] == [18, 12]
    assert state["next_worker"] == 1
    second = loader()
    second.load_state_dict(state)
    assert keys(second, 4) == full[30:54]
    third = loader()  # resume again, now from worker 1's turn
    third.load_state_dict(second.state_dict())
    assert third.state_dict()["next_worker"] == 1
    tail = keys(third, 2)
    assert tail == full[54:66]


def test_mix_selects_each_source_by_agent_and_outcome(tmp_path):
    """select: the selfplay source keeps only the tactician's won trajectories (patterns match
    specs), the human source is untouched; an unknown source or key is refused."""
    agents = ["tactician", "maxbp", "search:ms=300", "policy:runs/a/final"]
    trajs = [traj(f"b-{i}", 5, source="selfplay", agent=agents[i % 4], outcome=[1, -1][i // 4 % 2],
                  player="p1" if i % 2 == 0 else "p2") for i in range(64)]
    trajs += [traj(f"b-{100 + i}", 5, source="human") for i in range(16)]
    data = write(tmp_path / "d", trajs)
    seen = Counter()
    mix = DataMix({"selfplay": 0.5, "human": 0.5}, data, window=None, seed=1,
                  select={"selfplay": {"agents": ["tactician"], "outcomes": [1]}})
    for sample, _ in zip(mix, range(400)):
        bid = int(sample["battle_id"].split("-")[1])
        seen[sample["source"]] += 1
        if sample["source"] == "selfplay":
            assert agents[bid % 4] == "tactician" and [1, -1][bid // 4 % 2] == 1
    assert seen["human"] > 100 and seen["selfplay"] > 100
    both = TrajectoryDataset(data, window=None, agents=["search:*", "policy:*"])
    kinds = {agents[int(s["battle_id"].split("-")[1]) % 4] for s in both}
    assert kinds == {"search:ms=300", "policy:runs/a/final"}  # no human rows: they have no agent
    with pytest.raises(ValueError, match="lacks"):
        DataMix({"selfplay": 1.0}, data, select={"coach": {"agents": ["x"]}})
    with pytest.raises(ValueError, match="unknown key"):
        DataMix({"selfplay": 1.0}, data, select={"selfplay": {"agent": ["x"]}})
    nobody = DataMix({"selfplay": 1.0}, data, window=None, select={"selfplay": {"agents": ["heuristic"]}})
    with pytest.raises(ValueError, match="no trajectories"):
        next(iter(nobody))


def test_missing_or_filtered_out_source_is_a_clear_error(mixed, tmp_path):
    with pytest.raises(ValueError, match=r"'coach'.*found in"):
        DataMix({"human": 0.5, "coach": 0.5}, [mixed])
    DataMix({"human": 1.0, "coach": 0.0}, [mixed])  # weight 0 needs no data
    with pytest.raises(ValueError, match=r"'search'.*no such file.*empty"):
        DataMix({"search": 1.0}, {"search": tmp_path / "empty"})
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match=r"'search'.*found in"):
        DataMix({"search": 1.0}, {"search": tmp_path / "none"})
    mix = DataMix({"human": 1.0}, [mixed], formats="gen9ou")
    with pytest.raises(ValueError, match=r"'human'.*filters"):
        next(iter(mix))
    with pytest.raises(ValueError, match="weights"):
        DataMix({"human": -1.0}, [mixed])


def test_mixed_observation_sizes_are_refused(tmp_path):
    other = traj("b-1", 3)
    other.tokens = np.zeros((3, K + 1), np.int32)
    other.n_tokens = K + 1
    write(tmp_path, [traj("b-0", 3), other])
    with pytest.raises(ValueError, match="encoder_version"):
        list(TrajectoryDataset(tmp_path))
