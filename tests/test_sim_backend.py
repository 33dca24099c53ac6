"""The `sim` backend: real battles on Showdown's simulator hosted by Node over pipes.

Records build into trajectories, live and log views agree (as on the server), and every
fault ends well: a killed host, an agent that raises, an unknown format, a match killed
midway and rerun.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from poke_env.player import Player

from agents import registry
from battles.build import build
from battles.logs import BattleRecord, count_battles, read_battle_logs
from battles.teams import load_team_set
from battles.trajectories import read_trajectories
from eval.match import Match
from eval.runner import SimRunner
from tests.test_match import check_record
from tests.test_parity import HeuristicRecorder, MaxPowerRecorder, _rate, compare, report

pytestmark = pytest.mark.server  # starts real Node processes, like the server tests


def _register(monkeypatch, kind: str, cls) -> None:
    monkeypatch.setitem(registry.AGENTS, kind, registry.AgentKind(lambda spec, **kw: cls(**kw), (), kind))


def test_sim_match_records_build_into_trajectories(tmp_path):
    result = Match("maxbp", "random", battle_format="gen1ou", team_set="competitive", n=6, out_dir=tmp_path / "b",
                   concurrency=4, progress=False).run()
    assert result.battles == 6 and result.errors == 0 and result.restarts == 0
    assert result.p1_wins + result.p2_wins + result.ties == 6
    records = list(read_battle_logs(tmp_path / "b"))
    assert len(records) == 6 == len({r.id for r in records})
    for rec in records:
        check_record(rec)
        assert rec.specs == {"p1": "maxbp", "p2": "random"} and rec.team_set == "competitive"
        assert rec.input_log[0].startswith('>start {"formatid":"gen1ou"')
    assert sum(r.winner == "p1" for r in records) == result.p1_wins
    summary = build([tmp_path / "b"], tmp_path / "traj", progress=False)
    assert summary["trajectories"] == 12 and not summary["skipped"]
    assert {t.agent for t in read_trajectories(tmp_path / "traj")} == {"maxbp", "random"}


@pytest.mark.parametrize("fmt", ["gen1ou", "gen9ou"])
def test_live_and_log_views_agree_on_sim(fmt, monkeypatch, capsys):
    """tests/test_parity.py's comparison, on battles played by the sim backend."""
    _register(monkeypatch, "parh", HeuristicRecorder)
    _register(monkeypatch, "parm", MaxPowerRecorder)
    teams = load_team_set("competitive", fmt)
    records: list[dict] = []

    async def play():
        runner = SimRunner("parh", "parm", battle_format=fmt, on_record=records.append,
                           teams=(teams.sampler(seed=1), teams.sampler(seed=2)), concurrency=10, seed=3)
        try:
            await runner.play(20)
        finally:
            await runner.close()
        return runner.players

    p1, p2 = asyncio.run(play())
    live = {(tag, side): [r for _, r in sorted(player.records[tag].items())]
            for side, player in (("p1", p1), ("p2", p2)) for tag in player.records}
    assert len(records) == 20
    c = compare(records, live)
    with capsys.disabled():
        print("\n[sim backend] " + report(fmt, c))
    assert c["live_decisions"] > 20 * 10
    assert c["aligned"] >= 0.99 * c["live_decisions"]
    assert _rate(c, "action_equal", "nonforced") >= 0.99
    assert _rate(c, "public_equal", "aligned") >= 0.99
    assert _rate(c, "bench_hp_close", "aligned") >= 0.99
    assert _rate(c, "legal_equal", "aligned") >= 0.99
    # Own bench HP after a silent Regenerator heal is estimated from the log (within 1%, checked
    # above), and the encoding carries it: the encodings must agree wherever the bench HP does.
    assert _rate(c, "encoding_equal_same_bench", "bench_hp_equal") >= 0.99
    assert _rate(c, "b_public_equal", "b_aligned") >= 0.99


def test_unknown_format_fails_at_once_with_its_name(tmp_path):
    with pytest.raises(ValueError, match="gen42randombattle"):
        Match("random", "random", battle_format="gen42randombattle", n=2, out_dir=tmp_path, progress=False).run()
    out = subprocess.run([sys.executable, "-m", "eval.match", "--p1", "random", "--p2", "random", "--format",
                          "gen42randombattle", "-n", "2", "--out", str(tmp_path), "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "unknown format 'gen42randombattle'" in out.stderr


def test_killed_host_is_restarted_and_its_battles_replayed():
    records: list[dict] = []
    n = 12

    async def play():
        runner = SimRunner("maxbp", "random", battle_format="gen1randombattle", concurrency=4, seed=0,
                           on_record=lambda r: (records.append(r), len(records) == 3 and runner.host.kill()))
        try:
            return await runner.play(n)
        finally:
            await runner.close()

    stats = asyncio.run(play())
    assert stats.restarts == 1 and stats.errors >= 1  # the battles in flight, played again
    assert stats.battles == n == len(records) == len({r["roomid"] for r in records})
    for data in records:
        rec = BattleRecord.from_server_json(data)
        assert rec.winner in ("p1", "p2", "") and rec.turns >= 1 and rec.choices["p1"]


class _RaiseOnce(Player):
    raised = False

    def choose_move(self, battle):
        if not _RaiseOnce.raised:
            _RaiseOnce.raised = True
            raise RuntimeError("boom once")
        return self.choose_random_move(battle)


class _AlwaysRaise(Player):
    def choose_move(self, battle):
        async def think():
            raise KeyError("no such move")
        return think()


def test_an_agent_that_raises_is_named_and_its_battle_replayed(tmp_path, monkeypatch, caplog):
    _register(monkeypatch, "raiseonce", _RaiseOnce)
    _register(monkeypatch, "alwaysraise", _AlwaysRaise)
    result = Match("raiseonce", "maxbp", battle_format="gen1ou", team_set="competitive", n=3,
                   out_dir=tmp_path / "once", concurrency=2, progress=False).run()
    assert result.battles == 3 == count_battles(tmp_path / "once") and result.errors == 1
    assert "agent 'raiseonce' (p1) in battle battle-gen1ou-" in caplog.text and "boom once" in caplog.text
    with pytest.raises(RuntimeError, match=r"agent 'alwaysraise' \(p2\) in battle battle-gen1ou-[0-9a-f]+-\d+, turn \d+: "
                                           r"raised KeyError\('no such move'\)"):
        Match("maxbp", "alwaysraise", battle_format="gen1ou", team_set="competitive", n=2,
              out_dir=tmp_path / "always", concurrency=2, progress=False).run()


def test_match_killed_midway_keeps_its_battles_and_a_rerun_ends_at_exactly_n(tmp_path):
    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "eval.match", "--p1", "maxbp", "--p2", "random", "--format", "gen1ou",
           "--team-set", "competitive", "-n", "60", "--concurrency", "2", "--out", str(out), "--quiet",
           "--flush-seconds", "0"]  # every battle reaches disk as it ends
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    hosts = []
    try:
        for _ in range(1200):  # until the first battle is on disk
            hosts = hosts or sim_hosts_of(proc.pid)
            if list(out.glob("*.parquet")) or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the match ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert hosts, "no simulator host was seen"
    psutil.wait_procs(hosts, timeout=30)
    assert not any(h.is_running() and h.status() != psutil.STATUS_ZOMBIE for h in hosts), "host outlived its owner"
    kept = count_battles(out)
    assert 1 <= kept < 60
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["battles"] == 60 == count_battles(out)
    assert len({r.id for r in read_battle_logs(out)}) == 60
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # nothing left to play
    assert again.returncode == 0 and count_battles(out) == 60


def sim_hosts_of(pid: int) -> list[psutil.Process]:
    """The simulator hosts among `pid`'s children (a child may end while it is looked at)."""
    hosts = []
    try:
        children = psutil.Process(pid).children()
    except psutil.Error:
        return hosts
    for child in children:
        try:
            if "sim_host.js" in " ".join(child.cmdline()):
                hosts.append(child)
        except psutil.Error:
            continue
    return hosts


def test_killed_worker_is_replaced_and_the_run_ends_at_exactly_n(tmp_path):
    import threading

    out, n, results = tmp_path / "w", 16, []
    match = Match("maxbp", "random", battle_format="gen1ou", team_set="competitive", n=n, out_dir=out,
                  concurrency=2, workers=2, progress=False)
    thread = threading.Thread(target=lambda: results.append(match.run()), daemon=True)
    thread.start()
    victim = host = None
    for _ in range(3000):  # until a worker plays: it has a simulator host of its own
        for worker in psutil.Process().children():
            hosts = sim_hosts_of(worker.pid)
            if hosts:
                victim, host = worker, hosts[0]
                break
        if victim or not thread.is_alive():
            break
        time.sleep(0.1)
    assert victim is not None, "no worker with a simulator host was seen"
    victim.kill()
    psutil.wait_procs([host], timeout=30)
    assert not (host.is_running() and host.status() != psutil.STATUS_ZOMBIE), "host outlived its worker"
    thread.join(timeout=600)
    (result,) = results
    assert result.battles == n == count_battles(out) == len({r.id for r in read_battle_logs(out)})
    assert result.restarts >= 1
