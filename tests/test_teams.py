"""Team sets: loading, Showdown's own validator, the cache, seeded sampling.

Validation runs the installed pokemon-showdown package under Node (no server); only
the last test, marked `server`, plays a real battle with sampled teams.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from battles.teams import (
    TEAMS_ROOT,
    Team,
    TeamError,
    TeamSampler,
    available_team_sets,
    load_team_set,
    to_id,
    validate_teams,
)

COMPETITIVE = TEAMS_ROOT / "competitive"
GEN9_TEAM = (COMPETITIVE / "gen9ou" / "pokechamp_gen9ou1.txt").read_text(encoding="utf-8")
GEN1_TEAM = (COMPETITIVE / "gen1ou" / "qabra_gengar-lead.txt").read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Keep tests off the user's cache; one cache for the session keeps node runs few."""
    path = tmp_path_factory.getbasetemp() / "team-cache" / "cache.json"
    monkeypatch.setenv("QABRA_TEAM_CACHE", str(path))
    return path


def fake_teams(n: int) -> list[Team]:
    """Teams for sampler tests, which never look inside the packed string."""
    return [Team(f"t{i}", "gen1ou", Path(f"t{i}.txt"), f"text {i}", f"packed{i}") for i in range(n)]


# -- parsing ---------------------------------------------------------------------------


def test_to_id_matches_showdown():
    assert to_id("Iron Moth") == "ironmoth"
    assert to_id("Ogerpon-Wellspring") == "ogerponwellspring"
    assert to_id("Farfetch’d") == "farfetchd"


def test_packed_species_resolve_nicknames():
    assert GEN1_TEAM.startswith("Gengar\n")
    text = "Spooky (Gengar)" + GEN1_TEAM[len("Gengar"):]
    (result,) = validate_teams([("gen1ou", text)])
    assert result.ok, result.errors
    team = Team("x", "gen1ou", Path("x.txt"), text, result.packed)
    assert team.species == ("gengar", "starmie", "chansey", "snorlax", "tauros", "exeggutor")
    assert result.packed.startswith("Spooky|Gengar|")


# -- validation and the cache ----------------------------------------------------------------


def test_validator_reports_problems_per_team():
    gen1_no_evs = "Tauros\n- Body Slam\n- Hyper Beam"
    results = validate_teams([
        ("gen9ou", GEN9_TEAM),
        ("gen9ou", GEN9_TEAM.replace("- Knock Off", "- Tera Blast")),
        ("gen1ou", gen1_no_evs),
        ("gen0nonsense", GEN1_TEAM),
    ])
    assert [r.ok for r in results] == [True, False, False, False]
    assert results[0].packed.count("]") == 5  # six Pokémon
    assert any("Tera Blast is banned" in e for e in results[1].errors)
    assert any("exactly 0 EVs" in e for e in results[2].errors)
    assert results[3].errors == ("unknown format 'gen0nonsense'",)
    assert all(r.packed == "" for r in results[1:])


def test_cache_hit_skips_node(tmp_path):
    cache = tmp_path / "c.json"
    (first,) = validate_teams([("gen1ou", GEN1_TEAM)], cache_path=cache)
    data = json.loads(cache.read_text())
    assert list(data["entries"].values())[0]["packed"] == first.packed
    # Mark the cached answer: only a read from the cache (not a node run) can return it.
    key = next(iter(data["entries"]))
    data["entries"][key]["packed"] = "FROM-CACHE"
    cache.write_text(json.dumps(data))
    (second,) = validate_teams([("gen1ou", GEN1_TEAM)], cache_path=cache)
    assert second.packed == "FROM-CACHE"
    # Other text, or no cache at all, goes to the validator.
    (other,) = validate_teams([("gen1ou", GEN1_TEAM + "\n")], cache_path=cache)
    assert other.packed == first.packed
    assert validate_teams([("gen1ou", GEN1_TEAM)], cache_path=cache, use_cache=False)[0] == first
    assert len(json.loads(cache.read_text())["entries"]) == 2
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary behind


def test_unreadable_cache_is_ignored(tmp_path):
    cache = tmp_path / "c.json"
    cache.write_text("{not json")
    (result,) = validate_teams([("gen1ou", GEN1_TEAM)], cache_path=cache)
    assert result.ok
    assert len(json.loads(cache.read_text())["entries"]) == 1


# -- team sets -------------------------------------------------------------------------


def test_invalid_team_names_file_and_quotes_validator(tmp_path):
    folder = tmp_path / "mine" / "gen9ou"
    folder.mkdir(parents=True)
    (folder / "good.txt").write_text(GEN9_TEAM)
    (folder / "bad.txt").write_text(GEN9_TEAM.replace("- Knock Off", "- Tera Blast"))
    with pytest.raises(TeamError) as err:
        load_team_set("mine", "gen9ou", root=tmp_path)
    message = str(err.value)
    assert str(folder / "bad.txt") in message
    assert "Lokix's move Tera Blast is banned." in message
    assert "good.txt" not in message
    assert isinstance(err.value, ValueError)


def test_missing_set_and_format_list_what_exists(tmp_path):
    (tmp_path / "alpha" / "gen1ou").mkdir(parents=True)
    (tmp_path / "alpha" / "gen1ou" / "a.txt").write_text(GEN1_TEAM)
    (tmp_path / "beta" / "gen9ou").mkdir(parents=True)
    (tmp_path / "beta" / "gen9ou" / "b.txt").write_text(GEN9_TEAM)
    assert available_team_sets(tmp_path) == {"alpha": ["gen1ou"], "beta": ["gen9ou"]}
    with pytest.raises(TeamError, match="no team set 'gamma'.*sets there: alpha, beta"):
        load_team_set("gamma", "gen1ou", root=tmp_path)
    with pytest.raises(TeamError, match="'alpha' has no teams for format 'gen9ou'. Its formats: gen1ou"):
        load_team_set("alpha", "gen9ou", root=tmp_path)


def test_set_by_path(tmp_path):
    dest = tmp_path / "myset" / "gen1ou"
    shutil.copytree(COMPETITIVE / "gen1ou", dest)
    by_set_folder = load_team_set(str(tmp_path / "myset"), "gen1ou")
    by_format_folder = load_team_set(str(dest), "gen1ou")
    assert by_set_folder.name == by_format_folder.name == "myset"
    assert [t.packed for t in by_set_folder] == [t.packed for t in by_format_folder]
    with pytest.raises(TeamError, match="no teams for format 'gen9ou'.*formats there: gen1ou"):
        load_team_set(str(tmp_path / "myset"), "gen9ou")


def test_every_shipped_competitive_team_validates():
    sets = available_team_sets()
    assert {"gen1ou", "gen9ou"} <= set(sets["competitive"])
    items, files = [], []
    for fmt in ("gen1ou", "gen9ou"):
        for path in sorted((COMPETITIVE / fmt).glob("*.txt")):
            items.append((fmt, path.read_text(encoding="utf-8")))
            files.append(path)
    results = validate_teams(items, use_cache=False)  # the real validator, one batch
    bad = {str(f): r.errors for f, r in zip(files, results, strict=True) if not r.ok}
    assert not bad
    counts = Counter(fmt for fmt, _ in items)
    assert counts["gen1ou"] >= 8 and counts["gen9ou"] >= 8
    gen1 = load_team_set("competitive", "gen1ou")
    assert len(gen1) == counts["gen1ou"]
    assert all(len(t.species) == 6 for t in gen1)


# -- sampling --------------------------------------------------------------------------


def test_sampler_is_seeded_and_records_history():
    teams = fake_teams(10)
    a, b, c = TeamSampler(teams, 7), TeamSampler(teams, 7), TeamSampler(teams, 8)
    seq_a = [a.yield_team() for _ in range(30)]
    assert seq_a == [b.yield_team() for _ in range(30)]
    assert seq_a != [c.yield_team() for _ in range(30)]
    assert a.last_team.packed == seq_a[-1]
    assert [t.packed for t in a.history] == seq_a
    # Shuffled passes: after 3 passes every team has been used exactly 3 times.
    assert Counter(seq_a) == {t.packed: 3 for t in teams}


def test_draw_is_its_own_deterministic_stream():
    teams = fake_teams(5)
    a, b = TeamSampler(teams, 1), TeamSampler(teams, 1)
    for _ in range(4):
        a.yield_team()  # poke-env's calls must not move the planned pairings
    planned = a.draw(3) + a.draw(9)
    assert planned == b.draw(12)
    assert Counter(t.name for t in planned[:10]) == {t.name: 2 for t in teams}
    assert len(b.history) == 0
    with pytest.raises(ValueError, match="n >= 0"):
        a.draw(-1)


def test_team_set_sampler_uses_validated_packed_teams():
    team_set = load_team_set("competitive", "gen9ou")
    sampler = team_set.sampler(seed=0)
    packed = sampler.yield_team()
    assert packed in {t.packed for t in team_set}
    assert sampler.last_team is not None and sampler.last_team.packed == packed
    assert team_set.get(sampler.last_team.name) is sampler.last_team
    with pytest.raises(KeyError, match="no team 'nope'"):
        team_set.get("nope")


# -- a real battle ---------------------------------------------------------------------


@pytest.mark.server
def test_sampled_team_plays_on_the_server(showdown):
    from poke_env import AccountConfiguration
    from poke_env.player import RandomPlayer

    team_set = load_team_set("competitive", "gen1ou")
    samplers = [team_set.sampler(seed=0), team_set.sampler(seed=1)]
    players = [
        RandomPlayer(
            account_configuration=AccountConfiguration.generate(name, rand=True),
            server_configuration=showdown.server_configuration,
            battle_format="gen1ou",
            team=sampler,
            max_concurrent_battles=1,
        )
        for name, sampler in zip(("teams-a", "teams-b"), samplers, strict=True)
    ]

    async def play():
        await players[0].battle_against(players[1], n_battles=1)
        for p in players:
            await p.ps_client.stop_listening()

    asyncio.run(play())
    for player, sampler in zip(players, samplers, strict=True):
        (battle,) = player.battles.values()
        assert battle.finished
        assert len(sampler.history) == 1
        # The server built the battle from the packed team the sampler handed out.
        assert {mon.species for mon in battle.team.values()} == set(sampler.last_team.species)
