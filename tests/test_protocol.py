"""Protocol parsing and the public battle state, driven by raw Showdown lines (no server)."""

from __future__ import annotations

import pytest

from battles.protocol import (
    UNKNOWN,
    iter_events,
    parse_condition,
    parse_details,
    parse_ident,
    parse_line,
    public_hp,
    to_id,
)
from battles.state import HANDLERS, BattleState
from tests.conftest import log_header

HEADER = "|gametype|singles\n" + log_header(9, tier="[Gen 9] OU") + "\n|start"


def opening(p1: str, p2: str) -> str:
    """HEADER, then each side's first Pokémon ('Nick|Species') switching in at full HP, and turn 1."""
    return HEADER + f"\n|switch|p1a: {p1}|100/100\n|switch|p2a: {p2}|100/100\n|turn|1"


def run(text: str) -> BattleState:
    state = BattleState()
    for event in iter_events(text):
        state.apply(event)
    return state


def test_noise_lines_are_dropped():
    for line in ["|c|☆Alice|hf", "|t:|1679213039", "|inactive|Alice has 270 seconds left.",
                 "|raw|<div>html</div>", "|j|☆Bob", "|-message|Alice forfeited.", "plain text", "|request|{}"]:
        assert parse_line(line) is None, line
    blank = parse_line("|")
    assert blank is not None and blank.kind == ""


def test_tags_are_split_from_arguments():
    ev = parse_line("|-damage|p2a: Glimmora|50/100 psn|[from] item: Life Orb|[of] p1a: Great Tusk")
    assert ev.kind == "-damage"
    assert ev.args == ["p2a: Glimmora", "50/100 psn"]
    assert ev.tags == {"from": "item: Life Orb", "of": "p1a: Great Tusk"}
    ev = parse_line("|move|p1a: Oricorio|Roost||[still]")
    assert ev.args == ["p1a: Oricorio", "Roost"] and ev.tags == {"still": ""}
    assert ev.arg(5, "x") == "x"


def test_split_pairs_keep_the_public_line_and_lists_work():
    lines = ["|split|p1", "|-damage|p1a: Tusk|143/397", "|-damage|p1a: Tusk|37/100", "|turn|2\r"]
    events = list(iter_events(lines))
    assert [e.args for e in events] == [["p1a: Tusk", "37/100"], ["2"]]
    assert [e.args for e in iter_events("\n".join(lines))] == [e.args for e in events]


def test_argument_parsers():
    assert parse_ident("p1a: Floréclat") == ("p1", "Floréclat")
    assert parse_ident("p2: Bob") == ("p2", "Bob")
    assert parse_details("Glimmora, F, L50, shiny, tera:Fire") == ("Glimmora", 50, "F")
    assert parse_details("Urshifu-*") == ("Urshifu-*", 100, "")
    assert parse_condition("0 fnt") == (0.0, "fnt")
    assert parse_condition("37/100 par") == (0.37, "par")
    assert parse_condition("24/48y", percent=False) == (0.5, "")
    assert to_id("Farfetch’d") == "farfetchd" and to_id("Iron Moth") == "ironmoth"


@pytest.mark.parametrize(("hp", "maxhp", "shown"), [(397, 397, 1.0), (396, 397, 0.99), (1, 397, 0.01),
                                                   (143, 397, 0.37), (0, 397, 0.0), (57, 100, 0.57)])
def test_exact_hp_becomes_what_spectators_see(hp, maxhp, shown):
    # Showdown: ceil(100 * hp / maxhp), and 99 rather than 100 while not at full HP.
    assert public_hp(hp, maxhp) == shown


def test_every_handler_is_registered_for_a_protocol_kind():
    assert all(kind and callable(fn) for kind, fn in HANDLERS.items())
    assert {"switch", "move", "-damage", "-terastallize", "poke", "-sidestart"} <= set(HANDLERS)


def test_switch_damage_status_boosts_and_field():
    state = run(HEADER + """
|switch|p1a: Tusk|Great Tusk|397/397
|switch|p2a: Glim|Glimmora, F|100/100
|turn|1
|
|move|p1a: Tusk|Earthquake|p2a: Glim
|-damage|p2a: Glim|1/100
|-enditem|p2a: Glim|Focus Sash
|-sidestart|p1: Alice|move: Toxic Spikes
|-sidestart|p1: Alice|move: Toxic Spikes
|-weather|Sandstorm|[from] ability: Sand Stream|[of] p2a: Glim
|-fieldstart|move: Electric Terrain
|-fieldstart|move: Grassy Terrain
|-fieldstart|move: Trick Room
|-boost|p1a: Tusk|atk|2
|-unboost|p1a: Tusk|spe|1
|-status|p1a: Tusk|brn
|-damage|p1a: Tusk|143/397 brn""")
    tusk = state.sides["p1"].mons["Tusk"]
    glim = state.sides["p2"].mons["Glim"]
    assert tusk.hp == 0.37 and tusk.status == "brn" and tusk.moves == ["earthquake"]
    assert tusk.boosts["atk"] == 2 and tusk.boosts["spe"] == -1
    assert glim.hp == 0.01 and glim.item == "" and glim.first_item == "focussash"
    assert glim.ability == "sandstream"  # revealed by the [of] tag of another message
    assert state.sides["p1"].conditions == {"toxicspikes": 2}
    assert state.weather == "sandstorm"
    assert state.fields == {"grassyterrain", "trickroom"}  # a new terrain replaces the old one
    assert state.turn == 1 and state.sides["p2"].name == "Bob"


def test_rest_sleep_is_remembered_across_switches():
    state = run(opening("Lax|Snorlax", "Gar|Gengar") + """
|move|p1a: Lax|Rest|p1a: Lax
|-status|p1a: Lax|slp|[from] move: Rest
|turn|2
|switch|p1a: Egg|Exeggutor|100/100
|move|p2a: Gar|Hypnosis|p1a: Egg
|-status|p1a: Egg|slp|[from] move: Hypnosis
|turn|3
|switch|p1a: Lax|Snorlax|100/100 slp""")
    lax, egg = state.sides["p1"].mons["Lax"], state.sides["p1"].mons["Egg"]
    assert lax.status == "slp" and lax.rested and lax.last_move == ""  # switching forgot the move
    assert egg.status == "slp" and not egg.rested


def test_switching_out_clears_boosts_but_baton_pass_carries_them():
    state = run(opening("A|Zapdos", "B|Ting-Lu") + """
|
|move|p1a: A|Nasty Plot|p1a: A
|-boost|p1a: A|spa|2
|move|p1a: A|Baton Pass|p1a: A
|
|t:|1
|switch|p1a: C|Kingambit|100/100
|turn|2
|
|switch|p1a: A|Zapdos|100/100""")
    side = state.sides["p1"]
    assert side.mons["C"].boosts["spa"] == 0 and side.mons["A"].boosts["spa"] == 0
    state = run(opening("A|Zapdos", "B|Ting-Lu") + """
|
|move|p1a: A|Nasty Plot|p1a: A
|-boost|p1a: A|spa|2
|-start|p1a: A|Substitute
|move|p1a: A|Baton Pass|p1a: A
|
|switch|p1a: C|Kingambit|100/100""")
    c = state.sides["p1"].mons["C"]
    assert c.boosts["spa"] == 2 and "substitute" in c.volatiles


def test_team_preview_entries_become_the_pokemon_that_switch_in():
    state = run("""|gen|9
|clearpoke
|poke|p2|Urshifu-*, M|
|poke|p2|Glimmora, F|
|teampreview
|start
|switch|p2a: Fish|Urshifu-Rapid-Strike, M|100/100""")
    side = state.sides["p2"]
    assert list(side.mons) == ["Fish"] and side.mons["Fish"].species == "Urshifu-Rapid-Strike"
    assert [m.species for m in side.preview] == ["Glimmora"]


def test_items_abilities_and_tricks():
    state = run(HEADER + """
|switch|p1a: A|Gholdengo|100/100
|switch|p2a: B|Dondozo|100/100
|-item|p1a: A|Choice Scarf|[from] ability: Frisk|[of] p2a: B
|turn|1
|
|move|p1a: A|Trick|p2a: B
|-activate|p1a: A|move: Trick|[of] p2a: B
|-item|p2a: B|Choice Scarf|[from] move: Trick
|-item|p1a: A|Leftovers|[from] move: Trick
|-ability|p2a: B|Unaware
|-enditem|p2a: B|Choice Scarf|[from] move: Knock Off|[of] p1a: A""")
    a, b = state.sides["p1"].mons["A"], state.sides["p2"].mons["B"]
    assert a.first_item == "choicescarf" and a.item == "leftovers"
    assert b.ability == "frisk" or b.first_ability == "frisk"
    assert b.item == "" and b.first_item == "choicescarf"


def test_an_absorbing_ability_belongs_to_the_healed_pokemon_a_damaging_one_to_of():
    state = run(opening("V|Vaporeon", "M|Alomomola") + """
|
|move|p2a: M|Scald|p1a: V
|-heal|p1a: V|100/100|[from] ability: Water Absorb|[of] p2a: M
|move|p1a: V|Tackle|p2a: M
|-damage|p2a: M|90/100
|-damage|p1a: V|88/100|[from] ability: Rough Skin|[of] p2a: M""")
    v, m = state.sides["p1"].mons["V"], state.sides["p2"].mons["M"]
    assert v.first_ability == "waterabsorb"  # not the attacker's, which [of] names
    assert m.first_ability == "roughskin"


def test_moves_called_by_other_moves_are_not_revealed():
    state = run(opening("A|Clefable", "B|Oricorio") + """
|
|move|p1a: A|Metronome|p1a: A
|move|p1a: A|Flamethrower|p2a: B|[from] move: Metronome
|move|p2a: B|Quiver Dance|p2a: B
|-activate|p1a: A|ability: Dancer
|move|p1a: A|Quiver Dance|p1a: A|[from] ability: Dancer""")
    assert state.sides["p1"].mons["A"].moves == ["metronome"]
    assert state.sides["p2"].mons["B"].moves == ["quiverdance"]


def test_transform_uses_the_targets_moves_and_pressure_costs_two_pp():
    state = run(HEADER + """
|switch|p1a: Ditto|Ditto|100/100
|switch|p2a: Kyurem|Kyurem|100/100
|-ability|p2a: Kyurem|Pressure
|-transform|p1a: Ditto|p2a: Kyurem|[from] ability: Imposter
|turn|1
|
|move|p1a: Ditto|Ice Beam|p2a: Kyurem
|move|p2a: Kyurem|Ice Beam|p1a: Ditto""")
    ditto, kyurem = state.sides["p1"].mons["Ditto"], state.sides["p2"].mons["Kyurem"]
    assert ditto.moves == [] and ditto.transformed[1] == {"icebeam": 2}
    assert ditto.first_ability == "imposter" and ditto.ability == "pressure"
    assert kyurem.pp_used == {"icebeam": 2}  # Ditto copied Pressure


def test_terastallize_faint_and_illusion():
    state = run(opening("A|Roaring Moon", "B|Kingambit") + """
|
|-terastallize|p1a: A|Flying
|-replace|p1a: Zoro|Zoroark-Hisui, F
|replace|p1a: Zoro|Zoroark-Hisui, F
|-damage|p1a: Zoro|0 fnt
|faint|p1a: Zoro""")
    side = state.sides["p1"]
    assert side.tera_used and side.mons["A"].terastallized and side.mons["A"].tera == "flying"
    assert side.active is side.mons["Zoro"] and side.mons["Zoro"].fainted
    assert not side.mons["A"].active and side.mons["A"].hp == 1.0


def test_unknown_defaults_and_errors_are_kept():
    state = run(HEADER + "\n|switch|p1a: A|Gholdengo|100/100\n|error|[Invalid choice] nope")
    mon = state.sides["p1"].mons["A"]
    assert mon.item == UNKNOWN and mon.ability == UNKNOWN
    assert state.errors == ["[Invalid choice] nope"]


def test_an_interrupted_charge_is_not_a_forced_second_turn():
    state = run(opening("A|Dragapult", "B|Zapdos") + """
|
|move|p1a: A|Phantom Force||[still]
|-prepare|p1a: A|Phantom Force
|turn|2""")
    assert "twoturnmove:phantomforce" in state.sides["p1"].mons["A"].volatiles
    state.apply(parse_line("|cant|p1a: A|par"))
    assert not state.sides["p1"].mons["A"].volatiles
