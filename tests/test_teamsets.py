"""Team sets built from replays and from usage statistics (battles.teamsets).

No server: every team is checked by the installed pokemon-showdown package's validator
under Node. What a replay revealed is read back here with our own protocol tracker and
compared with Showdown's packed form of the built team, so a build can not hide a
contradiction behind its own bookkeeping.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from battles.protocol import UNKNOWN, iter_events, norm_move, to_id
from battles.state import BattleState
from battles.teams import TEAMS_ROOT, load_team_set, validate_teams
from battles.teamsets import (
    REPLAYS_DIR,
    PokemonSet,
    build,
    completions,
    contradictions,
    display_names,
    export_team,
    first_valid,
    load_stats,
    main,
    team_species,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {"replay": {"gen1ou": 6, "gen9ou": 2}, "variety": {"gen1ou": 16, "gen9ou": 16}}


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Keep tests off the user's validation cache; one cache per session keeps Node runs few."""
    monkeypatch.setenv("QABRA_TEAM_CACHE", str(tmp_path_factory.getbasetemp() / "team-cache" / "cache.json"))


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """Replay sets for both formats and 12-team variety sets (seed 0), built once into a temp folder."""
    out = tmp_path_factory.mktemp("teamsets")
    cache = tmp_path_factory.getbasetemp() / "team-cache" / "cache.json"
    mp = pytest.MonkeyPatch()
    mp.setenv("QABRA_TEAM_CACHE", str(cache))
    try:
        for fmt in ("gen1ou", "gen9ou"):
            build("replay", fmt, out=out)
            build("variety", fmt, n=12, seed=0, out=out)
    finally:
        mp.undo()
    return out


def _packed_sets(packed: str) -> dict[str, dict]:
    """Showdown's packed team -> {species id: {moves, item, ability, tera, level}}."""
    out = {}
    for mon in packed.split("]"):
        f = mon.split("|")
        misc = f[11].split(",") if len(f) > 11 else []
        out[to_id(f[1] or f[0])] = {
            "moves": {to_id(m) for m in f[4].split(",") if m}, "item": to_id(f[2]), "ability": to_id(f[3]),
            "level": int(f[10] or 100), "tera": to_id(misc[5]) if len(misc) > 5 else ""}
    return out


def _revealed(replay_file: Path, side: str) -> list[dict]:
    """What the log showed of one side, read independently of battles.teamsets."""
    data = json.loads(replay_file.read_text(encoding="utf-8"))
    log = data["log"] if isinstance(data["log"], str) else "\n".join(data["log"])
    state = BattleState()
    for event in iter_events(log):
        state.apply(event)
    gen = state.gen
    return [{"species": team_species(gen, to_id(m.species)), "moves": {norm_move(x) for x in m.moves},
             "item": m.first_item if gen > 1 else UNKNOWN, "ability": m.first_ability if gen > 2 else UNKNOWN,
             "tera": m.tera if m.terastallized else UNKNOWN, "level": m.level}
            for m in state.sides[side].mons.values()]


# -- replay sets --------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["gen1ou", "gen9ou"])
def test_replay_sets_validate_and_never_contradict_the_replay(built, fmt):
    team_set = load_team_set(built / "replay", fmt)  # raises unless every team passes the validator
    manifest = json.loads((built / "replay" / fmt / "MANIFEST.json").read_text(encoding="utf-8"))
    assert len(team_set) == manifest["counts"]["teams"] == SHIPPED["replay"][fmt]
    for team in team_set:
        source = manifest["teams"][team.path.name]
        packed = _packed_sets(team.packed)
        assert len(packed) == 6 and len(set(team.species)) == 6
        shown = _revealed(REPO / source["file"], source["side"])
        assert shown, f"{team.name}: the log showed no Pokémon"
        for mon in shown:
            got = packed[mon["species"]]  # KeyError: a revealed species is missing
            assert mon["moves"] <= got["moves"], (team.name, mon["species"], mon["moves"] - got["moves"])
            for f in ("item", "ability", "tera"):
                if mon[f] != UNKNOWN:
                    assert got[f] == mon[f], (team.name, mon["species"], f)
            assert got["level"] == mon["level"]
        assert len(source["added_teammates"]) == 6 - len(shown)


def test_replay_build_records_skipped_sides_and_added_teammates(built):
    gen9 = json.loads((built / "replay" / "gen9ou" / "MANIFEST.json").read_text(encoding="utf-8"))
    reasons = {(s["replay"], s["side"]): s["reason"] for s in gen9["skipped"]}
    # Volcarona and Orthworm are missing from the bundled gen9ou stats: nothing to complete them from.
    assert "volcarona" in reasons[("smogtours-gen9ou-681522", "p1")]
    assert "orthworm" in reasons[("smogtours-gen9ou-681522", "p2")]
    gen1 = json.loads((built / "replay" / "gen1ou" / "MANIFEST.json").read_text(encoding="utf-8"))
    assert gen1["counts"]["exact"] == 2  # the pkmn/stats server log carries both real teams
    short = gen1["teams"]["smogtours-gen1ou-733374_p1.txt"]  # this side showed five Pokémon
    assert short["added_teammates"] == ["tauros"] and "tauros" in short["filled"]
    assert [r["id"] for r in gen1["inputs"]["replays"]] == sorted(r["id"] for r in gen1["inputs"]["replays"])


def test_shipped_sets_equal_a_fresh_build(built):
    for kind, formats in SHIPPED.items():
        for fmt, count in formats.items():
            shipped = sorted((TEAMS_ROOT / kind / fmt).glob("*.txt"))
            assert len(shipped) == count
            fresh = sorted((built / kind / fmt).glob("*.txt"))
            if kind == "variety":  # a bigger --n extends a smaller one under the same seed
                shipped = shipped[: len(fresh)]
            assert [p.name for p in shipped] == [p.name for p in fresh]
            for a, b in zip(shipped, fresh, strict=True):
                assert a.read_text(encoding="utf-8") == b.read_text(encoding="utf-8"), a
            load_team_set(kind, fmt)  # the shipped files validate as they are


# -- completing a set ---------------------------------------------------------------------
def test_completions_keep_what_was_revealed_and_come_most_likely_first():
    stats = load_stats("gen9ou")
    revealed = PokemonSet("greattusk", ("knockoff",), item="leftovers", ability=None, tera=None)
    cands = [c for _, c in zip(range(30), completions(9, revealed, stats), strict=False)]
    assert len(cands) == 30 and len(set(cands)) == 30
    u = stats.species["greattusk"]
    for c in cands:
        assert c.item == "leftovers" and "knockoff" in c.moves and len(c.moves) == len(set(c.moves)) == 4
        assert {"moves", "ability", "tera", "spread"} <= set(c.filled) and "item" not in c.filled
    first = cands[0]
    top_moves = sorted((m for m in u.moves if m != "knockoff"), key=lambda m: -u.moves[m])[:3]
    assert set(first.moves[1:]) == set(top_moves)
    assert first.tera == max(u.tera, key=u.tera.get)

    def likelihood(c: PokemonSet) -> float:
        spread = next(k for k in u.spreads if k.lower().startswith(c.nature + ":")
                      and tuple(int(x) for x in k.split(":")[1].split("/")) == c.evs)
        p = u.abilities[c.ability] * u.tera[c.tera] * u.spreads[spread]
        for m in c.moves[1:]:
            p *= u.moves[m]
        return p

    scores = [likelihood(c) for c in cands]
    assert all(a >= b * (1 - 1e-9) for a, b in zip(scores, scores[1:], strict=False))


def test_an_invalid_completion_moves_on_to_the_next_most_likely(tmp_path):
    # Fissure is the most used move here, but gen1ou's OHKO Clause bans it.
    stats_file = tmp_path / "gen1ou.json"
    stats_file.write_text(json.dumps({"pokemon": {"Tauros": {
        "usage": {"weighted": 1.0}, "spreads": {"Serious:252/252/252/252/252/252": 1},
        "moves": {"Fissure": 0.99, "Body Slam": 0.9, "Hyper Beam": 0.8, "Blizzard": 0.7, "Earthquake": 0.6},
        "teammates": {}}}}))
    stats = load_stats("gen1ou", stats_file)
    names = display_names({"species": {"tauros"}, "moves": {"fissure", "bodyslam", "hyperbeam", "blizzard",
                                                            "earthquake"}})
    revealed = PokemonSet("tauros", ("bodyslam",)).gen_blank(1)
    [(found, tried, errors)] = first_valid("gen1ou", [completions(1, revealed, stats)], names)
    assert found is not None and "fissure" not in found.moves and "bodyslam" in found.moves
    assert tried >= 2 and any("OHKO" in e for e in errors)
    assert validate_teams([("gen1ou", export_team([found], 1, names))])[0].ok


def test_contradictions_name_what_a_team_lacks():
    shown = [PokemonSet("tauros", ("bodyslam",)), PokemonSet("snorlax", (), item="leftovers")]
    team = [PokemonSet("tauros", ("hyperbeam",)), PokemonSet("snorlax", (), item="")]
    found = contradictions(shown, team)
    assert any("lacks move bodyslam" in c for c in found) and any("item" in c for c in found)
    assert contradictions(shown[:1], [PokemonSet("tauros", ("bodyslam", "hyperbeam"))]) == []
    assert contradictions(shown[:1], []) == ["tauros is missing"]


# -- variety sets -------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["gen1ou", "gen9ou"])
def test_variety_sets_validate_with_six_distinct_species(built, fmt):
    team_set = load_team_set(built / "variety", fmt)
    assert len(team_set) == 12
    assert all(len(set(t.species)) == 6 for t in team_set)
    assert len({frozenset(t.species) for t in team_set}) > 6  # teammates vary, not one team twelve times
    if fmt == "gen1ou":
        assert all("EVs: 252 HP / 252 Atk / 252 Def / 252 SpA / 252 Spe" in t.text for t in team_set)


def test_variety_is_deterministic_under_a_seed(built, tmp_path):
    build("variety", "gen1ou", n=4, seed=0, out=tmp_path / "a")
    build("variety", "gen1ou", n=4, seed=1, out=tmp_path / "b")

    def texts(folder: Path) -> list[str]:
        return [p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))]

    same_seed = texts(built / "variety" / "gen1ou")[:4]
    assert texts(tmp_path / "a" / "variety" / "gen1ou") == same_seed
    assert texts(tmp_path / "b" / "variety" / "gen1ou") != same_seed


# -- command line -------------------------------------------------------------------------
def test_cli_records_its_manifest(tmp_path, capsys):
    main(["build", "variety", "--format", "gen1ou", "--n", "3", "--seed", "7", "--out", str(tmp_path)])
    folder = tmp_path / "variety" / "gen1ou"
    manifest = json.loads((folder / "MANIFEST.json").read_text(encoding="utf-8"))
    assert manifest["kind"] == "variety" and manifest["format"] == "gen1ou" and manifest["seed"] == 7
    assert manifest["inputs"]["stats"]["file"] == "battles/data/stats/gen1ou.json"
    assert manifest["validator"].startswith("pokemon-showdown@") and manifest["date"].endswith("Z")
    assert "--seed 7" in manifest["command"] and manifest["counts"]["teams"] == 3
    assert sorted(manifest["teams"]) == sorted(p.name for p in folder.glob("*.txt")) and len(manifest["teams"]) == 3
    assert "variety/gen1ou" in capsys.readouterr().out

    main(["build", "replay", "--format", "gen1ou", "--replays", str(REPLAYS_DIR / "gen1ou" / "log.1.json"),
          "--out", str(tmp_path)])
    manifest = json.loads((tmp_path / "replay" / "gen1ou" / "MANIFEST.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in manifest["inputs"]["replays"]] == ["battle-gen1ou-2"] and manifest["seed"] is None
    assert manifest["counts"]["teams"] == 2


def test_cli_errors_name_the_bad_input(tmp_path):
    with pytest.raises(SystemExit, match="no such file or folder"):
        main(["build", "replay", "--format", "gen1ou", "--replays", str(tmp_path / "nope"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--stats"):
        main(["build", "variety", "--format", "gen3ou", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no replay team could be built"):
        main(["build", "replay", "--format", "gen1ou", "--replays", str(REPLAYS_DIR / "gen9ou"), "--out", str(tmp_path)])


def test_duplicate_teams_are_removed(tmp_path):
    # The same battle saved twice under another id rebuilds to the same two teams.
    data = json.loads((REPLAYS_DIR / "gen1ou" / "smogtours-gen1ou-734539.json").read_text(encoding="utf-8"))
    (tmp_path / "a.json").write_text(json.dumps(data), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps({**data, "id": "copy-of-734539"}), encoding="utf-8")
    path = build("replay", "gen1ou", replays=[tmp_path], out=tmp_path / "out")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    assert manifest["counts"]["teams"] == 2 and manifest["counts"]["duplicates_removed"] == 2
    assert {d["same_as"] for d in manifest["duplicates"]} == {"smogtours-gen1ou-734539_p1",
                                                               "smogtours-gen1ou-734539_p2"}
