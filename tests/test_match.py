"""Real battles through the match runner: recorded, parseable, and robust to a server crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from battles.logs import count_battles, read_battle_logs
from battles.server import ShowdownServer
from eval.match import Match

pytestmark = pytest.mark.server


def check_record(rec, n_turn_lines_min=1):
    lines = rec.log.split("\n")
    assert rec.format == "gen1ou"
    assert any(line.startswith("|win|") for line in lines) or "|tie" in lines
    turns = [line for line in lines if line.startswith("|turn|")]
    assert len(turns) == rec.turns >= n_turn_lines_min
    assert rec.choices["p1"] and rec.choices["p2"]
    assert all(c.split()[0] in {"move", "switch", "team", "default", "pass"} for c in rec.choices["p1"])
    assert len(rec.teams["p1"]) == 6 and len(rec.teams["p2"]) == 6
    assert rec.winner in {"p1", "p2", ""}
    assert set(rec.specs.values()) <= {"maxbp", "random"}


def test_twenty_gen1ou_battles_recorded(showdown, tmp_path):
    result = Match("maxbp", "random", battle_format="gen1ou", team_set="competitive", n=20,
                   out_dir=tmp_path, concurrency=8, server=showdown, progress=False).run()
    assert result.battles == 20 and result.errors == 0
    assert result.p1_wins + result.p2_wins + result.ties == 20
    records = list(read_battle_logs(tmp_path))
    assert len(records) == 20 == count_battles(tmp_path)
    assert len({r.id for r in records}) == 20
    for rec in records:
        check_record(rec)
    # The summary counts wins by agent, whichever side the agent played.
    maxbp_wins = sum(1 for r in records if r.winner and r.specs[r.winner] == "maxbp")
    assert maxbp_wins == result.p1_wins
    # Each battle's server file is removed once its record is safely in a shard.
    rooms = {"battle-" + r.id.split("-", 1)[1] for r in records}
    assert rooms and not any((showdown.battle_dir / f"{room}.json").exists() for room in rooms)


def test_server_killed_mid_match_still_finishes(tmp_path):
    n = 24
    with ShowdownServer() as server:
        def kill_after_some():
            deadline = time.monotonic() + 600  # a bound: the match ends first if nothing is written
            while time.monotonic() < deadline:
                # Every finished battle reaches a shard at once (flush_seconds=0).
                if list(tmp_path.glob("*.parquet")) and count_battles(tmp_path) >= 4:
                    os.killpg(server.pid, signal.SIGKILL)
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_after_some, daemon=True)
        killer.start()
        match = Match("maxbp", "random", battle_format="gen1ou", team_set="competitive", n=n,
                      out_dir=tmp_path, concurrency=8, server=server, progress=False, stall_timeout=60,
                      flush_seconds=0)
        result = match.run()
        killer.join(timeout=1)
    assert result.restarts >= 1
    assert result.errors >= 1  # the battles lost with the server, played again
    assert result.battles == n
    records = list(read_battle_logs(tmp_path))
    assert len(records) == n
    assert len({r.id for r in records}) == n
    for rec in records:
        check_record(rec)


def test_cli_prints_json_summary(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "eval.match", "--p1", "maxbp", "--p2", "random", "--format", "gen1ou",
         "--team-set", "competitive", "-n", "4", "--concurrency", "4", "--out", str(tmp_path), "--quiet"],
        capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("battles", "p1_wins", "p2_wins", "ties", "errors", "p1_winrate", "ci95", "mean_turns", "battles_per_s"):
        assert key in summary
    assert summary["battles"] == 4
    lo, hi = summary["ci95"]
    assert 0 <= lo <= summary["p1_winrate"] <= hi <= 1


def test_a_slow_agent_is_not_a_stalled_server(tmp_path, showdown, monkeypatch):
    """Battles that each take longer than the stall timeout still finish, without a restart."""
    import asyncio

    from poke_env.player import Player

    from agents import registry

    class Slow(Player):
        def choose_move(self, battle):
            async def think():
                await asyncio.sleep(0.2)
                return self.choose_random_move(battle)
            return think()

    monkeypatch.setitem(registry.AGENTS, "slow", registry.AgentKind(lambda spec, **kw: Slow(**kw), (), "slow"))
    start = time.monotonic()
    result = Match("slow", "maxbp", battle_format="gen1ou", team_set="competitive", n=2, out_dir=tmp_path,
                   concurrency=1, server=showdown, progress=False, stall_timeout=2).run()
    assert result.battles == 2 and result.restarts == 0 and result.errors == 0
    assert time.monotonic() - start > 4  # each battle outlasted the 2 s timeout
