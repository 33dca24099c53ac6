"""The heuristic players' decisions, on poke-env battles built from real request and protocol
messages; one marked test plays real gen-1 battles on the local server."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest
from poke_env.battle import Battle, PokemonType
from poke_env.data import GenData
from poke_env.player import SingleBattleOrder

from agents.damage import damage, effectiveness, fighter, move_facts
from agents.heuristics import DamagePlayer, TacticianPlayer
from agents.registry import make_player
from battles.matchup import estimate_stat


def mon(species: str, level: int, moves: list[str], *, gen: int = 1, hp: float = 1.0,
        active: bool = False, status: str = "") -> dict:
    """One Pokémon of our side as a Showdown request lists it."""
    dex = GenData.from_gen(gen).pokedex[species]
    base = dex["baseStats"]
    stats = {k: estimate_stat(base[k], level, gen) for k in ("atk", "def", "spa", "spd", "spe")}
    max_hp = estimate_stat(base["hp"], level, gen, hp=True)
    condition = f"{max(1, int(max_hp * hp))}/{max_hp}" + (f" {status}" if status else "")
    return {
        "ident": f"p1: {dex['name']}", "details": f"{dex['name']}, L{level}",
        "condition": condition, "active": active, "stats": stats, "moves": moves,
        "baseAbility": "noability", "item": "", "pokeball": "pokeball",
    }


def battle(team: list[dict], foe: str, level: int, *, gen: int = 1, foe_hp: str = "100/100",
           foe_moves: tuple[str, ...] = (), force_switch: bool = False,
           only_moves: list[str] | None = None, ability: str | None = None) -> Battle:
    """A battle fed one request for our side and the protocol lines of the foe's switch-in."""
    b = Battle("battle-test-1", "us", logging.getLogger("test"), gen=gen)
    b.player_role = "p1"
    request: dict = {"side": {"name": "us", "id": "p1", "pokemon": team}, "rqid": 1}
    if force_switch:
        request["forceSwitch"] = [True]
    else:
        active = next(m for m in team if m["active"])
        ids = only_moves or active["moves"]
        request["active"] = [{"moves": [
            {"move": m, "id": m, "pp": 10, "maxpp": 10, "target": "normal", "disabled": False}
            for m in ids]}]
    b.parse_request(request)
    name = GenData.from_gen(gen).pokedex[foe]["name"]
    b.parse_message(["", "switch", f"p2a: {name}", f"{name}, L{level}", foe_hp])
    ours = next((m["ident"].replace("p1:", "p1a:") for m in team if m["active"]), "p1a: x")
    for move in foe_moves:
        b.parse_message(["", "move", f"p2a: {name}", move, ours])
    if ability:
        b.opponent_active_pokemon.ability = ability
    return b


def player(cls=DamagePlayer, fmt: str = "gen1randombattle"):
    return cls(start_listening=False, battle_format=fmt)


def choice(p, b) -> str:
    order = p.choose_move(b)
    assert isinstance(order, SingleBattleOrder)
    return order.order.id if hasattr(order.order, "id") else order.order.species


JOLTEON = ["thunderbolt", "doublekick", "pinmissile", "thunderwave"]


# -- damage model -------------------------------------------------------------------------
def test_type_charts_follow_the_generation():
    b1 = battle([mon("gengar", 70, ["lick"], active=True)], "alakazam", 70)
    b9 = battle([mon("gengar", 70, ["lick"], gen=9, active=True)], "alakazam", 70, gen=9)
    psychic1 = fighter(b1.opponent_active_pokemon, ours=False, gen=1)
    psychic9 = fighter(b9.opponent_active_pokemon, ours=False, gen=9)
    assert effectiveness(PokemonType.GHOST, psychic1, 1) == 0.0  # the gen 1 bug
    assert effectiveness(PokemonType.GHOST, psychic9, 9) == 2.0
    assert effectiveness(PokemonType.BUG, psychic1, 1) == 2.0
    weezing = fighter(battle([mon("gengar", 70, ["lick"], active=True)], "weezing", 70)
                      .opponent_active_pokemon, ours=False, gen=1)
    assert effectiveness(PokemonType.BUG, weezing, 1) == 2.0  # Bug beat Poison in gen 1
    assert effectiveness(PokemonType.BUG, fighter(b9.opponent_active_pokemon, ours=False,
                                                  gen=9), 9) == 2.0


def test_estimated_stats_match_a_real_gen1_request():
    # Lapras L69 from a live gen1randombattle request: 322 HP, 179 Def, 200 Special
    assert estimate_stat(130, 69, 1, hp=True) == 322
    assert estimate_stat(80, 69, 1) == 179
    assert estimate_stat(95, 69, 1) == 200


def test_fixed_damage_and_gen1_explosion():
    b = battle([mon("chansey", 80, ["seismictoss", "softboiled"], active=True)], "snorlax", 70)
    me = fighter(b.active_pokemon, ours=True, gen=1)
    them = fighter(b.opponent_active_pokemon, ours=False, gen=1)
    toss = move_facts(b.available_moves[0])
    assert damage(me, them, toss, 1, b) == pytest.approx(80 / them.max_hp)  # the user's level
    for gen, halves in ((1, True), (9, False)):
        b = battle([mon("golem", 70, ["explosion"], gen=gen, active=True)], "snorlax", 70, gen=gen)
        me = fighter(b.active_pokemon, ours=True, gen=gen)
        them = fighter(b.opponent_active_pokemon, ours=False, gen=gen)
        boom = move_facts(b.available_moves[0])
        assert boom.self_ko
        plain = replace(boom, self_ko=False)  # the same power without the gen 1 Defense cut
        ratio = damage(me, them, boom, gen, b) / damage(me, them, plain, gen, b)
        assert ratio == (pytest.approx(2.0, rel=0.05) if halves else pytest.approx(1.0))


# -- DamagePlayer -------------------------------------------------------------------------
def test_damage_player_prefers_super_effective_stab_over_resisted():
    team = [mon("jolteon", 70, JOLTEON, active=True), mon("rhydon", 70, ["earthquake"])]
    p = player()
    assert choice(p, battle(team, "gyarados", 70)) == "thunderbolt"  # 4x and STAB
    # Ground is immune to Electric; Fighting hits Rock/Ground for 2x
    assert choice(p, battle(team, "golem", 70)) == "doublekick"


def test_gen1_ghost_moves_do_nothing_to_psychic():
    team = [mon("gengar", 70, ["nightshade", "lick", "thunderbolt", "hypnosis"], active=True)]
    b = battle(team, "alakazam", 70, only_moves=["lick", "thunderbolt", "hypnosis"])
    assert choice(player(), b) == "thunderbolt"


def test_self_ko_only_when_low_or_worth_it():
    moves = ["explosion", "rockslide", "earthquake", "bodyslam"]
    team = [mon("golem", 70, moves, active=True), mon("rhydon", 70, ["earthquake"])]
    p = player()
    assert choice(p, battle(team, "snorlax", 70)) != "explosion"
    low = [mon("golem", 70, moves, hp=0.1, active=True), mon("rhydon", 70, ["earthquake"])]
    assert choice(p, battle(low, "snorlax", 70)) == "explosion"
    alone = [mon("golem", 70, moves, hp=0.1, active=True)]
    assert choice(p, battle(alone, "snorlax", 70)) != "explosion"  # would lose the battle


def test_gen1_hyper_beam_when_it_knocks_out():
    moves = ["hyperbeam", "bodyslam", "earthquake", "blizzard"]
    team = [mon("tauros", 75, moves, active=True), mon("rhydon", 70, ["earthquake"])]
    p = player()
    assert choice(p, battle(team, "exeggutor", 70, foe_hp="100/100")) != "hyperbeam"
    # a foe Body Slam cannot finish but Hyper Beam can (and skips its recharge in gen 1)
    b = battle(team, "exeggutor", 70, foe_hp="55/100")
    me, them = fighter(b.active_pokemon, ours=True, gen=1), fighter(b.opponent_active_pokemon,
                                                                    ours=False, gen=1)
    beam, slam = (move_facts(m) for m in b.available_moves[:2])
    assert damage(me, them, slam, 1, b) * 0.92 < 0.55 <= damage(me, them, beam, 1, b) * 0.92
    assert choice(p, b) == "hyperbeam"


def test_forced_switch_picks_the_best_matchup():
    team = [
        mon("jolteon", 70, JOLTEON, hp=0.0),
        mon("gyarados", 70, ["hydropump", "bodyslam", "hyperbeam", "blizzard"]),
        mon("rhydon", 70, ["earthquake", "rockslide", "bodyslam", "substitute"]),
    ]
    team[0]["condition"] = "0 fnt"
    b = battle(team, "jolteon", 70, force_switch=True)
    assert b.force_switch and len(b.available_switches) == 2
    assert choice(player(), b) == "rhydon"
    assert choice(player(TacticianPlayer), b) == "rhydon"


def test_a_single_available_move_is_used():
    team = [mon("tauros", 75, ["hyperbeam", "bodyslam"], active=True)]
    b = battle(team, "exeggutor", 70, only_moves=["recharge"])
    assert choice(player(), b) == "recharge"
    assert choice(player(TacticianPlayer), b) == "recharge"


def test_gen9_ability_immunity_and_no_crash():
    team = [mon("garchomp", 100, ["earthquake", "dragonclaw", "swordsdance", "stoneedge"],
                gen=9, active=True)]
    b = battle(team, "rotomwash", 100, gen=9, ability="levitate")
    assert choice(player(fmt="gen9ou"), b) != "earthquake"
    assert choice(player(TacticianPlayer, fmt="gen9ou"), b) in {"dragonclaw", "stoneedge",
                                                                "swordsdance"}


# -- TacticianPlayer ----------------------------------------------------------------------
WIGGLY = ["thunderwave", "bodyslam", "blizzard", "hyperbeam"]


def test_tactician_paralyses_a_fast_unstatused_foe_but_not_a_statused_one():
    team = [mon("wigglytuff", 76, WIGGLY, active=True), mon("rhydon", 70, ["earthquake"])]
    p = player(TacticianPlayer)
    assert choice(p, battle(team, "aerodactyl", 70)) == "thunderwave"
    assert choice(p, battle(team, "aerodactyl", 70, foe_hp="100/100 par")) != "thunderwave"
    assert choice(p, battle(team, "aerodactyl", 70, foe_hp="100/100 slp")) != "thunderwave"
    assert choice(p, battle(team, "dugtrio", 70)) != "thunderwave"  # Ground: immune
    assert choice(player(), battle(team, "aerodactyl", 70)) != "thunderwave"  # no status moves


def test_tactician_sleeps_but_respects_the_sleep_clause():
    team = [mon("parasect", 80, ["spore", "bodyslam", "megadrain", "swordsdance"], active=True),
            mon("rhydon", 70, ["earthquake"])]
    p = player(TacticianPlayer)
    b = battle(team, "snorlax", 70)
    assert choice(p, b) == "spore"
    # another foe already asleep: a second sleep move would fail
    b.parse_message(["", "switch", "p2a: Chansey", "Chansey, L70", "100/100"])
    b.parse_message(["", "-status", "p2a: Chansey", "slp"])
    b.parse_message(["", "switch", "p2a: Snorlax", "Snorlax, L70", "100/100"])
    assert b.opponent_active_pokemon.species == "snorlax"
    assert choice(p, b) != "spore"


def test_tactician_switches_out_of_a_lost_matchup():
    team = [mon("gyarados", 70, ["hydropump", "bodyslam", "hyperbeam", "blizzard"], active=True,
                hp=0.6),
            mon("rhydon", 70, ["earthquake", "rockslide", "bodyslam", "substitute"])]
    b = battle(team, "jolteon", 70, foe_moves=("thunderbolt",))
    assert choice(player(TacticianPlayer), b) == "rhydon"
    assert choice(player(), b) != "rhydon"  # DamagePlayer only switches when forced


def test_tactician_heals_when_low_and_not_when_healthy():
    moves = ["softboiled", "seismictoss", "thunderwave", "icebeam"]
    p = player(TacticianPlayer)
    low = [mon("chansey", 80, moves, hp=0.35, active=True)]
    assert choice(p, battle(low, "tauros", 70, foe_hp="100/100 par")) == "softboiled"
    full = [mon("chansey", 80, moves, active=True)]
    assert choice(p, battle(full, "tauros", 70, foe_hp="100/100 par")) != "softboiled"


# -- real battles -------------------------------------------------------------------------
@pytest.mark.server
def test_heuristics_finish_real_gen1_battles(showdown):
    async def play(a: str, b: str, n: int):
        fmt, conf = "gen1randombattle", showdown.server_configuration
        pa = make_player(a, battle_format=fmt, server_configuration=conf)
        pb = make_player(b, battle_format=fmt, server_configuration=conf)
        try:
            await asyncio.wait_for(pa.battle_against(pb, n_battles=n), timeout=60)
        finally:
            for p in (pa, pb):
                await p.ps_client.stop_listening()
        return pa

    for a, b in (("tactician", "maxbp"), ("bestdamage", "tactician"), ("bestdamage", "maxbp")):
        pa = asyncio.run(play(a, b, 2))
        assert pa.n_finished_battles == 2
        assert all(battle.finished for battle in pa.battles.values())
