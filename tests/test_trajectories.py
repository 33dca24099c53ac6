"""The trajectory store: round trip, atomic shards, streaming reads, teacher shapes checked at write."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from battles.trajectories import (
    SCHEMA,
    ShardWriter,
    Trajectory,
    list_shards,
    read_trajectories,
    row_groups,
    shard_stats,
)

REPO = Path(__file__).resolve().parents[1]


def make_traj(i: int, t: int = 5, k: int = 7, f: int = 3, source: str = "human",
              teacher: bool = False, rating: float | None = 1500.0, rng=None) -> Trajectory:
    rng = rng or np.random.default_rng(i)
    legal = rng.random((t, 13)) < 0.5
    return Trajectory(
        battle_id=f"gen1ou-{i}", player="p1" if i % 2 == 0 else "p2", format="gen1ou",
        source=source, outcome=[-1, 0, 1][i % 3], encoder_version=3, vocab_hash="abc123",
        tokens=rng.integers(0, 1000, (t, k), dtype=np.int32),
        numbers=rng.random((t, f), dtype=np.float32),
        action=rng.integers(-1, 13, t).astype(np.int16),
        legal=legal,
        teacher=rng.dirichlet(np.ones(13), t).astype(np.float32) if teacher else None,
        teacher_source="coach-v1" if teacher else None,
        rating=rating, team_set="gen1ou/pkmn" if i % 2 else None, agent=None,
    )


def assert_same(a: Trajectory, b: Trajectory) -> None:
    for name in ("battle_id", "player", "format", "source", "outcome", "encoder_version",
                 "vocab_hash", "n_decisions", "n_tokens", "n_numbers", "teacher_source",
                 "team_set", "agent"):
        assert getattr(a, name) == getattr(b, name), name
    assert (a.rating is None) == (b.rating is None)
    if a.rating is not None:
        assert a.rating == pytest.approx(b.rating)
    for name in ("tokens", "numbers", "action", "legal"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert getattr(a, name).dtype == getattr(b, name).dtype, name
    if a.teacher is None:
        assert b.teacher is None
    else:
        np.testing.assert_array_equal(a.teacher, b.teacher)


def test_round_trip_with_rotation_and_nulls(tmp_path):
    trajs = [make_traj(i, t=1 + i % 6, teacher=i % 3 == 0, rating=None if i % 4 == 0 else 1400.5)
             for i in range(11)]
    with ShardWriter(tmp_path, "h", rows_per_shard=4, row_group_size=2) as w:
        w.write_many(trajs)
    shards = list_shards(tmp_path)
    assert [p.name for p in shards] == ["h-00000.parquet", "h-00001.parquet", "h-00002.parquet"]
    assert pq.read_schema(shards[0]).equals(SCHEMA, check_metadata=False)
    assert pq.read_metadata(shards[0]).row_group(0).column(0).compression == "ZSTD"
    assert [n for _, _, n in row_groups(tmp_path)] == [2, 2, 2, 2, 2, 1]
    back = list(read_trajectories(tmp_path))
    assert len(back) == len(trajs)
    for a, b in zip(trajs, back, strict=True):
        assert_same(a, b)
    stats = shard_stats(tmp_path)
    assert stats["trajectories"] == 11
    assert stats["decisions"] == sum(t.n_decisions for t in trajs)
    assert stats["per_source"]["human"]["trajectories"] == 11


def test_second_writer_continues_numbering_and_columns_filters(tmp_path):
    with ShardWriter(tmp_path, "s", rows_per_shard=10) as w:
        w.write_many(make_traj(i, source="selfplay") for i in range(3))
    with ShardWriter(tmp_path, "s", rows_per_shard=10) as w:
        w.write_many(make_traj(i, source="human") for i in range(3, 6))
    assert [p.name for p in list_shards(tmp_path)] == ["s-00000.parquet", "s-00001.parquet"]
    only_scalars = list(read_trajectories(tmp_path, columns=["action"]))
    assert all(t.tokens is None and t.action is not None for t in only_scalars)
    human = list(read_trajectories(tmp_path, filters=[("source", "=", "human")]))
    assert [t.battle_id for t in human] == ["gen1ou-3", "gen1ou-4", "gen1ou-5"]
    stats = shard_stats(tmp_path)
    assert {k: v["trajectories"] for k, v in stats["per_source"].items()} == {
        "selfplay": 3, "human": 3}


def test_bad_trajectory_is_rejected_with_its_name(tmp_path):
    bad = make_traj(0)
    bad.legal = bad.legal[:, :12]
    with pytest.raises(ValueError, match="gen1ou-0.*legal"):
        ShardWriter(tmp_path, "x").write(bad)
    bad = make_traj(1)
    bad.action[0] = 13
    with pytest.raises(ValueError, match="actions"):
        ShardWriter(tmp_path, "x").write(bad)


def test_exception_inside_writer_leaves_no_partial_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "c", rows_per_shard=3, row_group_size=1) as w:
            w.write_many(make_traj(i) for i in range(5))  # shard 0 done, shard 1 has 2 rows
            raise RuntimeError("crash")
    assert [p.name for p in list_shards(tmp_path)] == ["c-00000.parquet"]
    assert not list(tmp_path.glob("*.tmp"))
    assert len(list(read_trajectories(tmp_path))) == 3


def test_killed_writer_leaves_only_complete_shards(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_trajectories import make_traj
        from battles.trajectories import ShardWriter
        w = ShardWriter({str(tmp_path)!r}, "k", rows_per_shard=4, row_group_size=2)
        w.write_many(make_traj(i) for i in range(7))  # one shard complete, 3 rows in the next
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        tmp = list(tmp_path.glob("*.tmp"))
        assert len(tmp) == 1 and tmp[0].stat().st_size > 0  # a half shard is on disk
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [p.name for p in list_shards(tmp_path)] == ["k-00000.parquet"]
    assert [t.battle_id for t in read_trajectories(tmp_path)] == [f"gen1ou-{i}" for i in range(4)]
    with ShardWriter(tmp_path, "k") as w:  # a new writer does not collide with the leftover
        w.write(make_traj(9))
    assert len(list_shards(tmp_path)) == 2


def test_reads_stream_one_row_group_at_a_time(tmp_path):
    # 40 row groups of ~0.8 MB each: a reader that loaded the whole shard would hold ~32 MB.
    with ShardWriter(tmp_path, "big", rows_per_shard=10_000, row_group_size=4) as w:
        for i in range(160):
            w.write(make_traj(i, t=50, k=1000, f=8))
    assert len(row_groups(tmp_path)) == 40
    base = pa.total_allocated_bytes()
    peak, n = 0, 0
    for traj in read_trajectories(tmp_path, batch_size=4):
        n += traj.n_decisions
        peak = max(peak, pa.total_allocated_bytes() - base)
    assert n == 160 * 50
    table_bytes = 160 * 50 * (1000 * 4 + 8 * 4 + 2 + 13)
    assert peak < table_bytes / 8, (peak, table_bytes)


def test_a_teacher_of_the_wrong_shape_fails_at_write_and_leaves_no_shard(tmp_path):
    """Teachers arrive only when a shard is built (battles/build.py joins labels): the writer is the
    one place that checks them, and a bad one never reaches the disk."""
    bad = make_traj(2, t=4, teacher=True)
    bad.teacher = bad.teacher[:3]
    with pytest.raises(ValueError, match=r"gen1ou-2.*teacher has shape \(3, 13\), expected \(4, 13\)"):
        with ShardWriter(tmp_path, "t") as w:
            w.write_many([make_traj(0, t=4, teacher=True), bad])
    assert not list(tmp_path.iterdir())


def test_readers_refuse_non_trajectory_shards(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "log": ["|start"]}), tmp_path / "logs-00000.parquet")
    with pytest.raises(ValueError, match="not a trajectory shard"):
        list(read_trajectories(tmp_path))
