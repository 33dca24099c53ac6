"""The action space: canonical slots, legality, actions read from logs and choices, live orders."""

from __future__ import annotations

import logging

from poke_env.battle import Battle
from poke_env.player import Player
from poke_env.player.battle_order import DefaultBattleOrder

from battles import actions
from battles.actions import LogHints, find_decisions, infer_legal
from battles.live import index_to_order, order_to_index, view_from_battle
from battles.protocol import UNKNOWN, iter_events
from battles.view import BattleView, PokemonView, SideView
from tests.conftest import log_header


def mon(name, species, *, active=False, moves=("a", "b", "c", "d"), status="", tera="fire", item="leftovers"):
    return PokemonView(
        name=name, species=species, level=100, hp=1.0, status=status, active=active, revealed=True,
        moves=tuple(moves), item=item, ability="x", tera_type=tera, terastallized=False, boosts=(0,) * 7,
        volatiles=(), types=("normal",),
    )


def view(own, *, gen=9, force_switch=False, tera_used=False, team_size=None, legal=(False,) * 13):
    side = SideView(tuple(own), (), team_size or len(own), tera_used)
    return BattleView(gen=gen, format="gen9ou", side="p1", turn=3, own=side, opp=SideView((), (), 6, False),
                      weather="", fields=(), force_switch=force_switch, can_tera=False, legal=tuple(legal))


TEAM = [mon("Tusk", "greattusk", active=True, moves=("rapidspin", "earthquake", "icespinner", "knockoff")),
        mon("Zapdos", "zapdos"), mon("Amoonguss", "amoonguss", status="fnt"), mon("Kingambit", "kingambit")]


def test_slots_follow_the_view_order():
    v = view(TEAM)
    assert actions.move_slots(v) == ("rapidspin", "earthquake", "icespinner", "knockoff")
    assert actions.bench_names(v) == ("Zapdos", "Amoonguss", "Kingambit", "", "")
    assert actions.move_index(v, "icespinner") == 2
    assert actions.move_index(v, "icespinner", tera=True) == 11
    assert actions.move_index(v, "protect") == -1
    assert actions.switch_index(v, "Kingambit") == 6
    assert actions.describe(v, 11) == "tera+move:icespinner" and actions.describe(v, -1) == "none"


def test_choices_read_with_the_team_order():
    v = view(TEAM)
    order = ("Tusk", "Kingambit", "Zapdos", "Amoonguss")
    assert actions.action_from_choice(v, "move earthquake terastallize") == 10
    assert actions.action_from_choice(v, "switch 2", order) == 6
    assert actions.action_from_choice(v, "switch 2") == -1  # no order known: cannot read
    assert actions.action_from_choice(v, "move recharge") == -1
    assert actions.action_from_choice(v, "default") == -1


def test_inferred_legality_rules():
    v = view(TEAM)
    base = infer_legal(v, LogHints(tera_allowed=True))
    assert base == [True] * 4 + [True, False, True, False, False] + [True] * 4  # fainted and empty slots
    assert infer_legal(view(TEAM, tera_used=True), LogHints(tera_allowed=True))[9:] == [False] * 4
    assert infer_legal(view(TEAM, force_switch=True), LogHints())[:4] == [False] * 4
    locked = infer_legal(v, LogHints(item="choicescarf", last_move="knockoff"))
    assert locked[:4] == [False, False, False, True] and locked[4]
    assert infer_legal(v, LogHints(recharge=True)) == [False] * 13
    outrage = infer_legal(v, LogHints(locked="icespinner"))
    assert outrage == [i == 2 for i in range(13)] and actions.is_forced(view(TEAM, legal=outrage))
    disabled = infer_legal(v, LogHints(volatiles=frozenset({"disable", "disabled:earthquake"})))
    assert disabled[:4] == [True, False, True, True]
    trapped = infer_legal(v, LogHints(volatiles=frozenset({"trapped"})))
    assert not any(trapped[4:9]) and all(trapped[:4])
    out_of_pp = infer_legal(v, LogHints(pp_used={"rapidspin": 64}))  # Rapid Spin has 64 PP max
    assert out_of_pp[:4] == [False, True, True, True]
    dozo = view([mon("D", "dondozo", active=True, moves=("avalanche", "bodypress", "rest", "sleeptalk"))])
    assert infer_legal(dozo, LogHints(volatiles=frozenset({"healblock"})))[:4] == [True, True, False, True]
    taunted = infer_legal(dozo, LogHints(volatiles=frozenset({"taunt"})))
    assert taunted[:4] == [True, True, False, False]
    frozen = infer_legal(view([mon("S", "starmie", active=True, status="frz"), TEAM[1]], gen=1), LogHints())
    # gen 1 'Fight' lock: stay in with the lone pseudo-move (slot 0) or switch
    assert frozen[:4] == [True, False, False, False] and frozen[4]
    assert actions.action_from_choice(view([mon("S", "starmie", active=True, status="frz"), TEAM[1]], gen=1),
                                      "move fight") == 0


def test_forced_needs_one_option_and_no_unseen_team_member():
    one = [False] * 13
    one[4] = True
    assert actions.is_forced(view(TEAM, legal=one))
    assert not actions.is_forced(view(TEAM, legal=one, team_size=6))  # gen 1: unseen members could be picked
    assert actions.finish_action(view(TEAM, legal=one), 4) == -1
    two = list(one)
    two[0] = True
    assert actions.finish_action(view(TEAM, legal=two), 4) == 4


LOG = """|player|p1|A|1|
|player|p2|B|2|
|gen|9
|start
|switch|p1a: Tusk|Great Tusk|100/100
|switch|p2a: Glim|Glimmora, F|100/100
|turn|1
|
|switch|p2a: Gholdengo|Gholdengo|100/100
|-terastallize|p1a: Tusk|Ice
|move|p1a: Tusk|Ice Spinner|p2a: Gholdengo
|-damage|p2a: Gholdengo|60/100
|move|p2a: Gholdengo|Shadow Ball|p1a: Tusk
|-damage|p1a: Tusk|0 fnt
|faint|p1a: Tusk
|
|upkeep
|
|t:|1
|switch|p1a: Zapdos|Zapdos|100/100
|turn|2
|
|move|p1a: Zapdos|U-turn|p2a: Gholdengo
|-damage|p2a: Gholdengo|40/100
|
|t:|2
|switch|p1a: Amoonguss|Amoonguss|100/100
|move|p2a: Gholdengo|Make It Rain|p1a: Amoonguss
|-damage|p1a: Amoonguss|0 fnt
|faint|p1a: Amoonguss
|move|p2a: Gholdengo|Recover|p2a: Gholdengo|[from] lockedmove
|
|upkeep
|turn|3
|
|cant|p1a: Zapdos|par
|move|p2a: Gholdengo|Shadow Ball|p1a: Zapdos|[from] lockedmove"""


def test_decisions_found_in_a_log():
    events = list(iter_events(LOG))
    orders = {"p1": ["Tusk", "Zapdos", "Amoonguss"]}
    points = find_decisions(events, orders)
    p1 = [(p.turn, p.force_switch, p.move, p.tera, p.switch, p.cant) for p in points if p.side == "p1"]
    assert p1 == [
        (1, False, "icespinner", True, "", ""),
        (1, True, "", False, "Zapdos", ""),  # after the faint
        (2, False, "uturn", False, "", ""),
        (2, True, "", False, "Amoonguss", ""),  # U-turn's switch is a decision of its own
        (3, False, "", False, "", "par"),
    ]
    p2 = [(p.turn, p.move, p.switch, p.locked) for p in points if p.side == "p2"]
    assert p2 == [(1, "", "Gholdengo", False), (2, "makeitrain", "", False), (3, "shadowball", "", True)]
    faint_switch = next(p for p in points if p.side == "p1" and p.switch == "Zapdos")
    assert events[faint_switch.index].kind == ""  # seen from the start of its chunk
    assert orders["p1"][0] == "Amoonguss"  # the team order follows Showdown's slot swaps


def test_choices_align_and_report_a_clash():
    points = [p for p in find_decisions(list(iter_events(LOG))) if p.side == "p2"]
    paired, reason = actions.align_choices(points, ["switch 2", "move makeitrain", "move shadowball"])
    assert paired == [0, 1, 2] and reason == ""
    paired, reason = actions.align_choices(points, ["switch 2", "move recover", "move shadowball"])
    assert paired == [0, -1, -1] and reason == "choice_mismatch"
    paired, reason = actions.align_choices(points, ["switch 2"])
    assert paired == [0, -1, -1] and reason == "log_has_more_decisions"


# -- a live poke-env battle, fed raw lines and a request as poke-env's own tests do ----------------
REQUEST = {
    "active": [{"moves": [
        {"move": "Rapid Spin", "id": "rapidspin", "pp": 64, "maxpp": 64, "target": "normal", "disabled": False},
        {"move": "Headlong Rush", "id": "headlongrush", "pp": 8, "maxpp": 8, "target": "normal", "disabled": True},
        {"move": "Ice Spinner", "id": "icespinner", "pp": 24, "maxpp": 24, "target": "normal", "disabled": False},
        {"move": "Knock Off", "id": "knockoff", "pp": 32, "maxpp": 32, "target": "normal", "disabled": False},
    ], "canTerastallize": "Ice"}],
    "side": {"name": "A", "id": "p1", "pokemon": [
        {"ident": "p1: Tusk", "details": "Great Tusk", "condition": "300/397", "active": True,
         "moves": ["rapidspin", "headlongrush", "icespinner", "knockoff"], "baseAbility": "protosynthesis",
         "item": "boosterenergy", "teraType": "Ice", "terastallized": ""},
        {"ident": "p1: Zapdos", "details": "Zapdos", "condition": "0 fnt", "active": False,
         "moves": ["hurricane", "roost", "voltswitch", "discharge"], "baseAbility": "static",
         "item": "heavydutyboots", "teraType": "Water", "terastallized": ""},
        {"ident": "p1: Amoonguss", "details": "Amoonguss, F", "condition": "353/353", "active": False,
         "moves": ["spore", "gigadrain", "clearsmog", "protect"], "baseAbility": "regenerator",
         "item": "rockyhelmet", "teraType": "Water", "terastallized": ""},
    ]},
    "rqid": 7,
}
LIVE = "|init|battle\n" + log_header(9, team_size=3, names=("A", "B")) + """
|start
|switch|p1a: Tusk|Great Tusk|300/397
|switch|p2a: Glim|Glimmora, F|100/100
|turn|1"""


def live_battle() -> Battle:
    battle = Battle("battle-gen9ou-1", "A", logging.getLogger("test"), gen=9)
    for line in LIVE.split("\n"):
        battle.parse_message(line.split("|"))
    battle.parse_request(REQUEST)
    return battle


def test_live_view_mask_and_orders_round_trip():
    battle = live_battle()
    v = view_from_battle(battle)
    assert actions.move_slots(v) == ("headlongrush", "icespinner", "knockoff", "rapidspin")
    assert actions.bench_names(v)[:2] == ("Amoonguss", "Zapdos")
    assert v.legal == (False, True, True, True, True, False, False, False, False, False, True, True, True)
    assert v.own.pokemon[0].hp == 0.76 and v.own.pokemon[2].status == "fnt"
    for index in range(actions.N_ACTIONS):
        order = index_to_order(index, battle, Player)
        if v.legal[index]:
            assert order_to_index(order, battle) == index
        else:  # never illegal: an illegal index falls back to the first legal action
            assert order_to_index(order, battle) == 1
    assert order_to_index(DefaultBattleOrder(), battle) == -1


def test_live_view_of_a_forced_recharge():
    battle = live_battle()
    request = dict(REQUEST, active=[{"moves": [{"move": "Recharge", "id": "recharge"}], "trapped": True}])
    battle.parse_request(request)
    v = view_from_battle(battle)
    assert v.legal == (False,) * 13
    assert isinstance(index_to_order(3, battle, Player), DefaultBattleOrder)
    assert UNKNOWN not in v.own.pokemon[0].moves
