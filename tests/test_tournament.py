"""The tournament: config, plan, resume logic (unit) and real tournaments (server)."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from poke_env.player import Player

from agents import registry
from battles.logs import read_battle_logs
from battles.protocol import to_id
from battles.server import ShowdownServer
from battles.shards import list_shards
from battles.teams import Team
from eval.plan import (
    PlannedBattle,
    check_specs,
    latest_outcomes,
    load_tournament_config,
    pending_battles,
    plan_battles,
    read_results,
)
from eval.tournament import Tournament

REPO = Path(__file__).resolve().parents[1]


def fake_teams(n: int, fmt: str = "gen1ou") -> list[Team]:
    return [Team(f"t{i}", fmt, Path(f"t{i}.txt"), "", f"packed{i}") for i in range(n)]


def config(tmp_path, agents=("random", "maxbp", "bestdamage"), **kw):
    overrides = [f"agents.{a}={a}" for a in agents] + [f"out={tmp_path}"] + [f"{k}={v}" for k, v in kw.items()]
    return load_tournament_config(None, overrides)


def fake_row(pb: PlannedBattle, error: str = "", spec=None) -> dict:
    return {"key": pb.key, "agent_a": pb.agent_a, "agent_b": pb.agent_b, "error": error,
            "spec_a": spec or pb.agent_a, "spec_b": pb.agent_b, "score_a": None if error else 1.0}


# -- config ---------------------------------------------------------------------------


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("out: x\nformats: [gen1ou, gen9ou]\nbattles_per_pair: 8\nagents:\n  random: random\n  maxbp: maxbp\n")
    cfg = load_tournament_config(path, ["battles_per_pair=12", "agents.pol=bestdamage", "agents.random=",
                             "servers=2", "team_sets=competitive,other", "retry_errors=false"])
    assert cfg.agents == {"maxbp": "maxbp", "pol": "bestdamage"}
    assert cfg.battles_per_pair == 12 and cfg.servers == 2 and cfg.retry_errors is False
    assert cfg.formats == ["gen1ou", "gen9ou"] and cfg.team_sets == ["competitive", "other"]


@pytest.mark.parametrize("override, message", [
    ("battles_per_pair=10", "multiple of 4"),
    ("agents.x=nosuchkind", "unknown agent kind"),
    ("agents.bad/name=random", "agent name"),
    ("colour=blue", "unknown config key"),
    ("backend=cloud", "backend"),
    ("workers=2 backend=server", "need backend=sim"),
    ("servers=0", "servers"),
    ("concurrency=many", "concurrency"),
    ("anchor=nobody", "anchor"),
    ("novalue", "key=value"),
])
def test_config_errors_name_the_input(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        load_tournament_config(None, ["agents.a=random", "agents.b=maxbp", *override.split(" ")])


def test_config_needs_two_agents_and_an_existing_file(tmp_path):
    with pytest.raises(ValueError, match="at least 2 agents"):
        load_tournament_config(None, ["agents.a=random"])
    with pytest.raises(ValueError, match="does not exist"):
        load_tournament_config(tmp_path / "missing.yaml")


def test_default_config_has_every_registered_heuristic_and_the_search_bot():
    cfg = load_tournament_config(REPO / "eval" / "configs" / "default.yaml")
    kinds = {registry.parse_spec(spec).kind for spec in cfg.agents.values()}
    # the heuristics: every kind that needs no parameters (policy needs a checkpoint)
    assert kinds == {k for k in registry.known_agents() if not registry.AGENTS[k].params} | {"search"}
    assert cfg.formats == ["gen1ou", "gen9ou"] and cfg.team_sets == ["competitive"]
    cfg = load_tournament_config(REPO / "eval" / "configs" / "default.yaml", ["agents.s1=tactician", "formats=[gen1ou]"])
    assert cfg.agents["s1"] == "tactician" and cfg.formats == ["gen1ou"]


@pytest.mark.parametrize("path", sorted((REPO / "eval" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_names_known_agents(path):
    cfg = load_tournament_config(path)
    assert len(cfg.agents) >= 2 and all(registry.parse_spec(spec) for spec in cfg.agents.values())
    assert cfg.battles_per_pair % 4 == 0


def test_the_match_command_loads_through_the_same_config_path(tmp_path):
    from battles.config import load_config
    from eval.match import MatchConfig

    path = tmp_path / "m.yaml"
    path.write_text("p1: maxbp\np2: random\nn: 40\n")
    cfg = load_config(MatchConfig, path, ["n=12", "ray=auto", "quiet=true"])
    assert (cfg.p1, cfg.n, cfg.ray, cfg.quiet, cfg.backend) == ("maxbp", 12, "auto", True, "sim")
    for override, message in (("n=0", "n=0"), ("backend=cloud", "backend"), ("p1=nosuchkind", "unknown agent kind"),
                              ("colour=red", "unknown config key")):
        with pytest.raises(ValueError, match=message):
            load_config(MatchConfig, None, [override])


# -- the plan -------------------------------------------------------------------------


def test_plan_pairs_teams_and_sides(tmp_path):
    cfg = config(tmp_path, battles_per_pair=12)
    plan = plan_battles(cfg, {("gen1ou", "competitive"): fake_teams(5)})
    assert len(plan) == 3 * 12 and len({p.key for p in plan}) == len(plan)
    by_pair = collections.defaultdict(list)
    for p in plan:
        by_pair[(p.agent_a, p.agent_b)].append(p)
    pairings_seen = None
    for battles in by_pair.values():
        assert len(battles) == 12
        sides = collections.Counter(p.p1_agent for p in battles)
        assert set(sides.values()) == {6}  # each agent is p1 in half the battles
        pairings = collections.defaultdict(set)
        for p in battles:
            pairings[p.pairing].add((p.team_a, p.team_b, p.a_side))
        for variants in pairings.values():
            assert len(variants) == 4
            assert len({frozenset((ta, tb)) for ta, tb, _ in variants}) == 1  # one pairing (X, Y)
            # both agents play both teams of the pairing, each from both sides
            a_teams = {ta for ta, _, _ in variants}
            assert {(ta, side) for ta, _, side in variants} == {(t, s) for t in a_teams for s in ("p1", "p2")}
        shared = {i: {(v[0], v[1]) for v in vs} for i, vs in pairings.items()}
        assert pairings_seen in (None, shared)  # every pair plays the same team pairings
        pairings_seen = shared
    team_use = collections.Counter(t for p in plan for t in (p.team_a, p.team_b))
    assert max(team_use.values()) - min(team_use.values()) <= 12  # seeded passes keep use even


def test_plan_is_seeded_and_prefix_stable(tmp_path):
    teams = {("gen1ou", "competitive"): fake_teams(7)}
    small = plan_battles(config(tmp_path, battles_per_pair=8), teams)
    again = plan_battles(config(tmp_path, battles_per_pair=8), teams)
    bigger = plan_battles(config(tmp_path, battles_per_pair=16), teams)
    other_seed = plan_battles(config(tmp_path, battles_per_pair=8, seed=1), teams)
    assert [p.key for p in small] == [p.key for p in again]
    assert {p.key for p in small} < {p.key for p in bigger}
    assert {p.key for p in small} != {p.key for p in other_seed}


def test_adding_an_agent_plans_only_its_new_pairs(tmp_path):
    teams = {("gen1ou", "competitive"): fake_teams(4)}
    old = plan_battles(config(tmp_path, battles_per_pair=8), teams)
    new = plan_battles(config(tmp_path, agents=("random", "maxbp", "bestdamage", "tactician"), battles_per_pair=8), teams)
    rows = [fake_row(p) for p in old]
    todo = pending_battles(new, rows)
    assert len(todo) == 3 * 8
    assert all("tactician" in (p.agent_a, p.agent_b) for p in todo)
    assert {p.key for p in new} - {p.key for p in todo} == {p.key for p in old}


def test_random_battle_formats_need_no_team_set(tmp_path):
    plan = plan_battles(config(tmp_path, formats="[gen9randombattle]", battles_per_pair=4), {})
    assert len(plan) == 12 and {p.team_set for p in plan} == {"random"} and {p.team_a for p in plan} == {""}


# -- resume logic ---------------------------------------------------------------------


def test_resume_skips_finished_and_retries_errors(tmp_path):
    plan = plan_battles(config(tmp_path, battles_per_pair=4), {("gen1ou", "competitive"): fake_teams(3)})
    rows = [fake_row(plan[0]), fake_row(plan[1], error="timed out"), fake_row(plan[2], error="x"),
            fake_row(plan[2]), fake_row(plan[3]), fake_row(plan[3], error="late")]
    outcomes = latest_outcomes(rows)
    assert outcomes[plan[1].key]["error"] == "timed out"
    assert outcomes[plan[2].key]["error"] == "" and outcomes[plan[3].key]["error"] == ""
    todo = pending_battles(plan, rows)
    assert [p.key for p in todo] == [plan[1].key] + [p.key for p in plan[4:]]
    assert plan[1] not in pending_battles(plan, rows, retry_errors=False)


def test_a_name_cannot_change_its_spec(tmp_path):
    cfg = config(tmp_path, battles_per_pair=4)
    plan = plan_battles(cfg, {("gen1ou", "competitive"): fake_teams(3)})
    check_specs(cfg, [fake_row(p) for p in plan])
    renamed = [fake_row(p, spec="tactician") for p in plan]
    with pytest.raises(ValueError, match="another name"):
        check_specs(cfg, renamed)


def test_pairings_never_mirror_and_use_teams_evenly():
    from eval.plan import team_pairings

    pairs = team_pairings(fake_teams(5), 50, seed=3)
    assert all(x != y for x, y in pairs)
    use = collections.Counter(t for pair in pairs for t in pair)
    assert max(use.values()) - min(use.values()) <= 3
    assert team_pairings(fake_teams(5), 20, seed=3) == pairs[:20]


# -- real tournaments on the local server -----------------------------------------------


def finished_keys(out) -> list[str]:
    return [r["key"] for r in read_results(out) if not r["error"]]


def run_cli(*args, timeout=240, **kw):
    return subprocess.run([str(REPO / "scripts" / "evaluate_against_all.sh"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, **kw)


@pytest.mark.server
def test_small_tournament_writes_report_and_resumes_to_a_no_op(tmp_path):
    out = tmp_path / "t"
    args = [REPO / "eval" / "configs" / "smoke.yaml", f"out={out}", "battles_per_pair=8", "--quiet"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "24 battles played and 0 recorded as errors" in first.stdout and " 0 failed attempts" in first.stdout
    assert "| rank | agent |" in first.stdout
    report = out / "report"
    for name in ("report.md", "winrate_matrix.png", "ratings.png", "ratings.csv", "winrates.csv", "errors.csv"):
        assert (report / name).stat().st_size > 0, name
        assert str(report / name) in first.stdout
    assert (report / "ratings.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (report / "report.md").read_text()
    assert "## Ranking" in md and all(f"| {a} |" in md for a in ("random", "maxbp", "bestdamage"))
    rows = read_results(out)
    assert len(rows) == 24 and len({r["key"] for r in rows}) == 24
    for r in rows:  # every result is a real battle with its log kept
        assert r["winner"] in (r["agent_a"], r["agent_b"], "") and r["turns"] > 0
    logs = {rec.id: rec for rec in read_battle_logs(out / "logs")}
    assert {r["battle_id"] for r in rows} == set(logs)
    rec = logs[rows[0]["battle_id"]]
    assert rec.team_set == "competitive" and rec.specs["p1"] == rows[0]["spec_a" if rows[0]["p1_agent"] == rows[0]["agent_a"] else "spec_b"]

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 battles played" in again.stdout
    assert len(read_results(out)) == 24


@pytest.mark.server
def test_killed_tournament_resumes_to_exactly_the_plan(tmp_path, showdown):
    out = tmp_path / "t"
    overrides = [f"out={out}", "agents.random=random", "agents.maxbp=maxbp", "agents.bestdamage=bestdamage",
                 "battles_per_pair=16", "flush_every=4", "concurrency=4"]
    proc = subprocess.Popen([sys.executable, "-m", "eval.tournament", str(REPO / "eval" / "configs" / "smoke.yaml"),
                             *overrides, "--quiet"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # a bound, not a timing: the loop ends at 8 battles or the process' end
        while time.monotonic() < deadline and proc.poll() is None and \
                len(finished_keys(out) if (out / "results").exists() else []) < 8:
            time.sleep(0.1)
        assert proc.poll() is None, "the tournament ended before it could be interrupted"
    finally:
        # No clean-up chance: the process and its Showdown server die at once.
        victims = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        for pid in victims:
            with_suppress_kill(pid)
        proc.wait(timeout=10)
    done_before = len(finished_keys(out))
    assert 8 <= done_before < 48

    cfg = load_tournament_config(REPO / "eval" / "configs" / "smoke.yaml", overrides)
    summary = Tournament(cfg, servers=[showdown], progress=False).run()
    assert summary.done_before == done_before and summary.played == 48 - done_before
    keys = finished_keys(out)
    assert len(keys) == 48 == len(set(keys)) == summary.finished
    plan = {p.key for p in plan_battles(cfg, {("gen1ou", "competitive"): _real_teams()})}
    assert set(keys) == plan


def with_suppress_kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _real_teams():
    from battles.teams import load_team_set

    return load_team_set("competitive", "gen1ou").teams


@pytest.mark.server
def test_stopped_run_resumes_and_a_new_agent_plays_only_its_pairs(tmp_path, showdown):
    base = [f"out={tmp_path}", "agents.random=random", "agents.maxbp=maxbp", "battles_per_pair=8"]
    first = Tournament(load_tournament_config(None, [*base, "max_battles=5"]), servers=[showdown], progress=False).run()
    assert (first.todo, first.played, first.finished) == (8, 5, 5)
    second = Tournament(load_tournament_config(None, base), servers=[showdown], progress=False).run()
    assert (second.done_before, second.played, second.finished) == (5, 3, 8)
    before = {r["key"] for r in read_results(tmp_path)}
    grown = Tournament(load_tournament_config(None, [*base, "agents.bestdamage=bestdamage"]), servers=[showdown],
                       progress=False).run()
    assert (grown.planned, grown.done_before, grown.played) == (24, 8, 16)
    rows = read_results(tmp_path)
    new = [r for r in rows if r["key"] not in before]
    assert len(rows) == 24 and all("bestdamage" in (r["agent_a"], r["agent_b"]) for r in new)


class _Raiser(Player):
    def choose_move(self, battle):
        if battle.turn >= 2:
            raise RuntimeError("deliberate failure")
        return self.choose_random_move(battle)


class _Staller(Player):
    def choose_move(self, battle):
        if battle.turn >= 2:
            async def never():  # longer than the battle timeout; the battle is forfeited first
                await asyncio.sleep(30)
                return self.choose_random_move(battle)
            return never()
        return self.choose_random_move(battle)


@pytest.mark.server
def test_faulty_agents_become_errors_never_wins(tmp_path, showdown, monkeypatch):
    for kind, cls in (("raiser", _Raiser), ("staller", _Staller)):
        monkeypatch.setitem(registry.AGENTS, kind, registry.AgentKind(lambda spec, _c=cls, **kw: _c(**kw), (), kind))
    cfg = load_tournament_config(None, [f"out={tmp_path}", "agents.maxbp=maxbp", "agents.raiser=raiser",
                             "agents.staller=staller", "battles_per_pair=4", "max_attempts=2",
                             "battle_timeout=4", "bootstrap=50"])
    # The session server is shared: other tests' raw battles may already sit in its folder.
    before = set(showdown.battle_dir.glob("*.json"))
    summary = Tournament(cfg, servers=[showdown], progress=False).run()
    rows = read_results(tmp_path)
    assert len(rows) == 12 == summary.errors == summary.error_rows and summary.played == 0
    assert summary.faults == 24  # every battle tried twice
    for r in rows:
        assert r["winner"] is None and r["score_a"] is None and r["attempts"] == 2
        assert r["error"].startswith(("agent raiser raised RuntimeError: deliberate failure", "timed out"))
    assert {r["error"][:9] for r in rows if "raiser" not in (r["agent_a"], r["agent_b"])} == {"timed out"}
    from eval.report import write_report
    report = write_report(rows, list(cfg.agents), tmp_path / "report", n_boot=20)
    assert "12 battles could not be finished" in report.files["report"].read_text()
    # The forfeited battles left the server clean: a normal tournament still runs on it.
    ok = Tournament(load_tournament_config(None, [f"out={tmp_path / 'ok'}", "agents.a=maxbp", "agents.b=random",
                                       "battles_per_pair=4"]), servers=[showdown], progress=False).run()
    assert ok.finished == 4 and ok.faults == 0
    assert set(showdown.battle_dir.glob("*.json")) <= before  # every battle of ours was consumed


@pytest.mark.server
def test_server_killed_mid_tournament_is_restarted_and_battles_replayed(tmp_path):
    cfg = load_tournament_config(None, [f"out={tmp_path}", "agents.random=random", "agents.maxbp=maxbp",
                             "agents.bestdamage=bestdamage", "battles_per_pair=8", "flush_every=2",
                             "concurrency=6", "max_attempts=1"])  # the server's death is no battle's fault
    with ShowdownServer() as server:
        def kill_after_some():
            deadline = time.monotonic() + 600  # a bound: the tournament ends first if nothing is written
            while time.monotonic() < deadline:
                if (tmp_path / "results").exists() and list_shards(tmp_path / "results"):
                    os.killpg(server.pid, signal.SIGKILL)
                    return
                time.sleep(0.05)
        killer = threading.Thread(target=kill_after_some, daemon=True)
        killer.start()
        summary = Tournament(cfg, servers=[server], progress=False).run()
        killer.join(timeout=1)
    assert summary.restarts >= 1 and summary.faults >= 1
    keys = finished_keys(tmp_path)
    assert len(keys) == 24 == len(set(keys)) == summary.finished and summary.errors == 0


class _Slow(Player):
    """Thinks 0.25 s per decision: its battles outlast the battle timeout, its decisions do not."""

    def choose_move(self, battle):
        async def think():
            await asyncio.sleep(0.25)
            return self.choose_random_move(battle)
        return think()


@pytest.mark.server
def test_a_slow_agent_is_not_a_stalled_battle(tmp_path, showdown, monkeypatch):
    monkeypatch.setitem(registry.AGENTS, "slow", registry.AgentKind(lambda spec, **kw: _Slow(**kw), (), "slow"))
    cfg = load_tournament_config(None, [f"out={tmp_path}", "agents.maxbp=maxbp", "agents.slow=slow", "battles_per_pair=4",
                             "max_attempts=1", "battle_timeout=2", "bootstrap=50"])
    summary = Tournament(cfg, servers=[showdown], progress=False).run()
    rows = read_results(tmp_path)
    assert summary.errors == 0 and summary.played == 4, [r["error"] for r in rows]
    assert max(r["seconds"] for r in rows) > 2  # longer than the timeout, yet never abandoned


def test_the_recorder_writes_rows_once_enough_wait_and_no_empty_shard(tmp_path):
    from eval.plan import RESULTS_SCHEMA
    from eval.play import Recorder

    rec = Recorder(tmp_path / "logs", "battles-x", results=tmp_path / "results", schema=RESULTS_SCHEMA,
                   every=2, seconds=1e9)
    row = {name: None for name in RESULTS_SCHEMA.names} | {"key": "k", "error": "timed out"}
    rec.add(None, row)
    assert not (tmp_path / "results").exists()  # one row pending, below `every`
    rec.add(None, {**row, "key": "k2"})
    assert [r["key"] for r in read_results(tmp_path)] == ["k", "k2"]
    rec.flush()  # nothing pending: no empty shard
    assert len(list_shards(tmp_path / "results")) == 1 and not list(tmp_path.rglob("*.tmp"))


@pytest.mark.server
def test_tournament_on_the_sim_backend_plays_the_plan_and_resumes(tmp_path):
    """The default backend: real battles on the simulator host, planned teams and sides kept."""
    cfg = load_tournament_config(None, [f"out={tmp_path}", "agents.maxbp=maxbp", "agents.random=random",
                                        "battles_per_pair=4", "max_battles=2", "concurrency=4", "flush_every=1"])
    first = Tournament(cfg, progress=False).run()
    assert (first.played, first.errors, first.finished) == (2, 0, 2)
    cfg = load_tournament_config(None, [f"out={tmp_path}", "agents.maxbp=maxbp", "agents.random=random",
                                        "battles_per_pair=4", "concurrency=4"])
    second = Tournament(cfg, progress=False).run()
    assert (second.done_before, second.played, second.finished) == (2, 2, 4)
    rows = read_results(tmp_path)
    assert len(rows) == 4 == len({r["key"] for r in rows})
    logs = {rec.id: rec for rec in read_battle_logs(tmp_path / "logs")}
    teams = {t.name: t for t in _real_teams()}
    for r in rows:
        rec = logs[r["battle_id"]]
        assert rec.specs == {"p1": r["p1_agent"], "p2": r["p2_agent"]} and r["turns"] == rec.turns > 0
        p1_team = r["team_a"] if r["p1_agent"] == r["agent_a"] else r["team_b"]
        assert tuple(to_id(m["species"]) for m in rec.teams["p1"]) == teams[p1_team].species
        assert r["winner"] == {"p1": r["p1_agent"], "p2": r["p2_agent"], "": ""}[rec.winner]


@pytest.mark.server
def test_an_agent_that_raises_on_the_sim_backend_becomes_error_rows(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.AGENTS, "raiser", registry.AgentKind(lambda spec, **kw: _Raiser(**kw), (), "raiser"))
    cfg = load_tournament_config(None, [f"out={tmp_path}", "agents.maxbp=maxbp", "agents.raiser=raiser",
                                        "battles_per_pair=4", "max_attempts=2", "bootstrap=20"])
    summary = Tournament(cfg, progress=False).run()
    rows = read_results(tmp_path)
    assert len(rows) == 4 == summary.errors == summary.error_rows and summary.played == 0 and summary.faults == 8
    for r in rows:
        assert r["winner"] is None and r["score_a"] is None and r["attempts"] == 2
        assert "agent 'raiser'" in r["error"] and "raised RuntimeError('deliberate failure')" in r["error"]
    again = Tournament(cfg, progress=False).run()  # error rows are tried again, and fail again
    assert again.todo == 4 and again.errors == 4 and len(read_results(tmp_path)) == 8
