"""The battle log store: server JSON to records, Parquet round trip, atomic shards."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from battles.logs import BattleLogWriter, BattleRecord, count_battles, read_battle_logs
from battles.shards import list_shards

SERVER_JSON = {
    "roomid": "battle-gen1ou-7",
    "format": "gen1ou",
    "players": ["Alpha Bot", "beta"],
    "winner": "alphabot",
    "turns": 3,
    "endType": "normal",
    "seed": "sodium,abc",
    "p1team": [{"species": "Tauros", "moves": ["bodyslam"]}],
    "p2team": [{"species": "Chansey", "moves": ["softboiled"]}],
    "inputLog": [
        '>start {"formatid":"gen1ou"}',
        '>player p1 {"name":"Alpha Bot"}',
        '>player p2 {"name":"beta"}',
        ">p1 move bodyslam",
        ">p2 move softboiled",
        ">p1 switch 3",
        ">p2 move 2",
    ],
    "log": "|player|p1|Alpha Bot|1|\n|turn|1\n|win|Alpha Bot",
    "uploadtime": 1700000000,
}


def make_record(i: int = 0) -> BattleRecord:
    rec = BattleRecord.from_server_json(SERVER_JSON, specs={"p1": "maxbp", "p2": "random"}, team_set="competitive")
    rec.id = f"test-{i}"
    return rec


def test_server_json_to_record():
    rec = make_record()
    assert rec.winner == "p1"  # winner is a user id; matched to the side by toID(name)
    assert rec.choices == {"p1": ["move bodyslam", "switch 3"], "p2": ["move softboiled", "move 2"]}
    assert rec.teams["p2"][0]["species"] == "Chansey"
    assert rec.replay == {
        "id": "test-0", "format": "gen1ou", "formatid": "gen1ou", "players": ["Alpha Bot", "beta"],
        "log": SERVER_JSON["log"], "uploadtime": 1700000000, "rating": None,
    }


def test_tie_and_missing_field():
    tie = dict(SERVER_JSON, winner="")
    assert BattleRecord.from_server_json(tie).winner == ""
    broken = {k: v for k, v in SERVER_JSON.items() if k != "log"}
    with pytest.raises(ValueError, match="'log'"):
        BattleRecord.from_server_json(broken)


def test_round_trip(tmp_path):
    with BattleLogWriter(tmp_path, battles_per_shard=3) as writer:
        for i in range(7):
            writer.add(make_record(i))
    assert len(list_shards(tmp_path)) == 3  # 3 + 3 + 1
    back = list(read_battle_logs(tmp_path))
    assert [r.id for r in back] == [f"test-{i}" for i in range(7)]
    first = make_record(0)
    assert back[0].to_row() == first.to_row()
    assert count_battles(tmp_path) == 7


def test_failed_write_leaves_no_shard(tmp_path, monkeypatch):
    writer = BattleLogWriter(tmp_path)
    writer.add(make_record())

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        writer.flush()
    assert list(tmp_path.iterdir()) == []  # neither a shard nor a temporary file


def test_killed_mid_write_leaves_no_shard(tmp_path):
    # A real crash: the process dies (SIGKILL-like os._exit) inside the Parquet write.
    code = textwrap.dedent(f"""
        import os, pyarrow.parquet as pq
        from battles.logs import BattleLogWriter, BattleRecord
        import tests.test_logs as t
        real = pq.write_table
        def dying(table, where, **kw):
            real(table, where, **kw)   # the temporary file is complete on disk...
            os._exit(9)                # ...and the process dies before the rename
        pq.write_table = dying
        w = BattleLogWriter({str(tmp_path)!r})
        w.add(t.make_record())
        w.flush()
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd())
    assert proc.returncode == 9
    assert list_shards(tmp_path) == []  # readers see nothing
    assert count_battles(tmp_path) == 0


def test_room_and_roles_round_trip(tmp_path):
    rec = BattleRecord.from_server_json(SERVER_JSON, specs={"p1": "maxbp", "p2": "random"},
                                        roles={"p1": "learner"}, id_prefix="q1-")
    assert rec.room == "gen1ou-7" and rec.id == "q1-gen1ou-7" and rec.roles == {"p1": "learner"}
    with BattleLogWriter(tmp_path) as writer:
        writer.add(rec)
    (back,) = read_battle_logs(tmp_path)
    assert back.room == "gen1ou-7" and back.roles == {"p1": "learner"}
    for bad in ({"p3": "learner"}, {"p1": ""}, ["p1"]):
        with pytest.raises(ValueError, match="roles="):
            BattleRecord.from_server_json(SERVER_JSON, roles=bad)


def test_records_written_before_rooms_and_roles_still_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from battles.logs import SCHEMA

    old = pa.schema([f for f in SCHEMA if f.name not in ("room", "roles")])
    row = {k: v for k, v in make_record().to_row().items() if k in old.names}
    pq.write_table(pa.Table.from_pylist([row], schema=old), tmp_path / "battles-00000.parquet")
    (back,) = read_battle_logs(tmp_path)
    assert back.id == "test-0" and back.room == "" and back.roles == {}
    assert back.choices == make_record().choices
