"""BattleView from logs: raw lines, every shared real replay, backfill and prediction (no server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from battles import actions
from battles.log_views import decisions_from_log, views_from_log
from battles.protocol import UNKNOWN, iter_events
from battles.state import BattleState
from battles.usage import bundled_stats
from battles.view import _public_mon, public_mon
from tests.conftest import log_header

REPLAYS = sorted(Path("/work/shared/data/replays").glob("*/*.json"))
if not REPLAYS:  # the copy bundled with the package
    REPLAYS = sorted((Path(__file__).resolve().parents[1] / "battles" / "data" / "replays").glob("*/*.json"))


def _load(path: Path) -> tuple[dict, dict | None, dict | None]:
    data = json.loads(path.read_text())
    if "inputLog" in data:  # a server log: exact choices and teams come with it
        choices = {s: [x[4:] for x in data["inputLog"] if x.startswith(f">{s} ")] for s in ("p1", "p2")}
        return data, choices, {s: data.get(f"{s}team") for s in ("p1", "p2")}
    return data, None, None


@pytest.mark.parametrize("path", REPLAYS, ids=[p.name for p in REPLAYS])
def test_every_shared_replay_builds(path):
    data, choices, teams = _load(path)
    if "|gametype|doubles" in str(data["log"]):
        with pytest.raises(ValueError, match="doubles"):
            decisions_from_log(data)
        return
    for use_choices in (False, True):
        notes: dict[str, int] = {}
        out = decisions_from_log(data, choices=choices if use_choices else None,
                                 teams=teams if use_choices else None, notes=notes)
        assert "choice_mismatch" not in notes
        for side, decisions in out.items():
            assert len(decisions) >= 3, side
            for d in decisions:
                assert d.action == -1 or d.view.legal[d.action], (side, d.view.turn, d.action)
                assert d.legal.shape == (actions.N_ACTIONS,)
                own = d.view.own.pokemon
                assert own and own[0].active or d.view.force_switch
                assert d.view.side == side
            if use_choices and choices:
                assert all(d.choice_index == k for k, d in enumerate(decisions) if d.choice_index >= 0)


def test_shared_replays_have_visible_actions():
    shown = total = 0
    for path in REPLAYS:
        data, _, _ = _load(path)
        if "|gametype|doubles" in str(data["log"]):
            continue
        for decisions in decisions_from_log(data).values():
            total += len(decisions)
            shown += sum(d.action >= 0 for d in decisions)
    assert total > 500 and shown / total > 0.8


GEN1 = log_header(1, tier="[Gen 1] OU", names=("A", "B")) + """
|
|start
|switch|p1a: Tauros|Tauros|100/100
|switch|p2a: Chansey|Chansey|100/100
|turn|1
|
|move|p1a: Tauros|Body Slam|p2a: Chansey
|-damage|p2a: Chansey|70/100
|move|p2a: Chansey|Ice Beam|p1a: Tauros
|-damage|p1a: Tauros|80/100
|
|turn|2
|
|switch|p1a: Starmie|Starmie|100/100
|move|p2a: Chansey|Thunder Wave|p1a: Starmie
|-status|p1a: Starmie|par
|
|turn|3
|
|switch|p1a: Tauros|Tauros|80/100
|move|p2a: Chansey|Ice Beam|p1a: Tauros
|-damage|p1a: Tauros|60/100
|
|turn|4
|
|move|p1a: Tauros|Hyper Beam|p2a: Chansey
|-damage|p2a: Chansey|0 fnt
|faint|p2a: Chansey
|
|t:|5
|switch|p2a: Snorlax|Snorlax|100/100
|turn|5"""


def test_own_team_is_backfilled_and_the_opponent_only_revealed_so_far():
    decisions = views_from_log({"id": "t", "format": "gen1ou", "log": GEN1}, "p1", stats=False)
    first = decisions[0].view
    tauros = first.own.pokemon[0]
    assert tauros.name == "Tauros" and tauros.active
    # p1 used Hyper Beam on turn 4: it knew its own move on turn 1 already.
    assert set(tauros.moves) == {"bodyslam", "hyperbeam", UNKNOWN}
    assert [p.name for p in first.own.pokemon] == ["Tauros", "Starmie"]
    chansey = first.opp.pokemon[0]
    assert chansey.moves == (UNKNOWN,) * 4  # Ice Beam is only shown later in turn 1
    assert decisions[2].view.opp.pokemon[0].moves[:2] == ("icebeam", "thunderwave")
    assert decisions[0].action == actions.move_index(first, "bodyslam")
    assert decisions[1].visible == "switch:Starmie" and actions.bench_names(decisions[1].view)[0] == "Starmie"
    assert first.own.pokemon[0].item == "" and first.own.pokemon[0].tera_type == ""  # gen 1


def test_unrevealed_own_fields_are_predicted_from_usage_stats():
    decisions = views_from_log({"id": "t", "format": "gen1ou", "log": GEN1}, "p1")
    tauros = decisions[0].view.own.pokemon[0]
    assert tauros.predicted == ("moves",)
    assert len(tauros.moves) == 4 and UNKNOWN not in tauros.moves
    assert {"bodyslam", "hyperbeam"} <= set(tauros.moves)
    assert decisions[0].view.opp.pokemon[0].predicted == ()  # the opponent is never guessed


def test_exact_team_and_choices_make_own_fields_and_actions_exact():
    team = [
        {"name": "Tauros", "species": "Tauros", "moves": ["bodyslam", "hyperbeam", "blizzard", "earthquake"]},
        {"name": "Starmie", "species": "Starmie", "moves": ["psychic", "blizzard", "thunderwave", "recover"]},
        {"name": "Snorlax", "species": "Snorlax", "moves": ["bodyslam", "rest", "reflect", "amnesia"]},
    ]
    choices = ["move bodyslam", "switch 2", "switch 2", "move hyperbeam", "move earthquake"]
    decisions = views_from_log({"id": "t", "format": "gen1ou", "log": GEN1}, "p1", choices, team)
    v = decisions[0].view
    assert [p.name for p in v.own.pokemon] == ["Tauros", "Snorlax", "Starmie"]
    assert all(p.predicted == () for p in v.own.pokemon)
    assert v.own.pokemon[0].moves == ("blizzard", "bodyslam", "earthquake", "hyperbeam")
    assert [d.action for d in decisions] == [1, 5, 5, 3, 2]
    assert decisions[-1].choice == "move earthquake"  # hidden in the log (the battle log ends)


DOUBLE_FAINT = """|player|p1|A|1|
|player|p2|B|2|
|gen|9
|start
|switch|p1a: Gholdengo|Gholdengo|100/100
|switch|p2a: Tusk|Great Tusk|100/100
|turn|1
|
|move|p1a: Gholdengo|Make It Rain|p2a: Tusk
|-damage|p2a: Tusk|0 fnt
|faint|p2a: Tusk
|-damage|p1a: Gholdengo|0 fnt|[from] item: Rocky Helmet|[of] p2a: Tusk
|faint|p1a: Gholdengo
|
|upkeep
|
|t:|2
|switch|p1a: Amoonguss|Amoonguss|100/100
|switch|p2a: Zapdos|Zapdos|100/100
|turn|2
|
|switch|p1a: Corviknight|Corviknight|100/100
|move|p2a: Zapdos|Hurricane|p1a: Corviknight
|-damage|p1a: Corviknight|80/100
|
|turn|3
|
|switch|p1a: Amoonguss|Amoonguss|100/100"""


def test_simultaneous_replacements_are_seen_from_the_chunk_start():
    out = decisions_from_log({"id": "t", "format": "gen9ou", "log": DOUBLE_FAINT}, stats=False)
    p2_switch = next(d for d in out["p2"] if d.view.force_switch)
    assert p2_switch.visible == "switch:Zapdos"
    assert p2_switch.view.opp.pokemon[0].name == "Gholdengo"  # not yet the Amoonguss p1 sent
    p1_switch = next(d for d in out["p1"] if d.view.force_switch)
    assert p1_switch.view.opp.pokemon[0].status == "fnt"
    # The item revealed by the [of] tag belongs to the opponent's Great Tusk.
    assert p1_switch.view.opp.pokemon[0].item == "rockyhelmet"


def test_a_benched_pokemon_shows_the_hp_it_comes_back_with():
    log = DOUBLE_FAINT.replace("|switch|p1a: Amoonguss|Amoonguss|100/100\n|turn|", "|switch|p1a: Amoonguss|Amoonguss|40/100\n|turn|")
    log = log.replace("|turn|3\n|\n|switch|p1a: Amoonguss|Amoonguss|100/100", "|turn|3\n|\n|switch|p1a: Amoonguss|Amoonguss|73/100")
    decisions = views_from_log({"id": "t", "format": "gen9ou", "log": log}, "p1", stats=False)
    turn3 = next(d for d in decisions if d.view.turn == 3)
    amoonguss = next(p for p in turn3.view.own.pokemon if p.name == "Amoonguss")
    assert amoonguss.hp == 0.73  # Regenerator healed it silently when it left


def test_cached_public_views_match_fresh_ones():
    for path in REPLAYS:
        data, _, _ = _load(path)
        if "|gametype|doubles" in str(data["log"]):
            continue
        state = BattleState()
        for event in iter_events(data["log"]):
            state.apply(event)
            for side in state.sides.values():
                for mon in side.mons.values():
                    assert public_mon(state.gen, mon) == _public_mon(state.gen, mon), (path.name, event)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="no 'log'"):
        views_from_log({"id": "x"}, "p1")
    with pytest.raises(ValueError, match="'p3'"):
        views_from_log({"id": "x", "log": ""}, "p3")


def test_usage_stats_are_bundled_for_gen1ou_and_gen9ou():
    gen1, gen9 = bundled_stats("gen1ou"), bundled_stats("gen9ou")
    assert gen1.ranked("tauros", "moves")[:2] == ("bodyslam", "hyperbeam")
    assert gen9.ranked("greattusk", "abilities") == ("protosynthesis",)
    assert gen9.ranked("greattusk", "tera")[0] == "ice"
    assert bundled_stats("gen3ou") is None
