"""One full guess of a live battle, as the search bot's simulator worker builds it.

    spec = battle_spec(battle, rng)     # {"format", "sides", "field", "turn", "seed"}

Our side is exact: the team, moves, HP, PP and stats our request shows, plus the public
tracker's boosts, volatiles and field (own_side). The opponent's side is sampled
(opponent_side): every move, item, ability, tera type and species it has revealed is kept,
its unseen sets (and, in gen 1, unseen team members) are drawn from the format's usage
statistics (battles/usage.py).
"""

from __future__ import annotations

import re

import numpy as np
from poke_env.battle import Battle

from battles.live import live_state
from battles.protocol import norm_move, other_side, parse_details, parse_ident, to_id
from battles.usage import SpeciesUsage, UsageTable, bundled_stats

# Volatiles the worker rebuilds (battles.protocol names); others are public but irrelevant.
SIM_VOLATILES = frozenset({
    "substitute", "confusion", "leechseed", "reflect", "lightscreen", "mustrecharge",
    "focusenergy", "partiallytrapped", "transform", "trapped", "taunt", "encore", "yawn",
    "curse", "perish1", "perish2", "perish3", "torment", "healblock", "saltcure", "mist",
})
LOCK_EXEMPT = frozenset({"recharge", "struggle", "fight"})


def _weighted_pick(rng: np.random.Generator, weights: dict[str, float], k: int, exclude=()) -> list[str]:
    """Up to k distinct keys drawn without replacement in proportion to their weights."""
    keys = [n for n, w in weights.items() if w > 0 and n and n not in exclude]  # never '' (no item)
    w = np.array([weights[n] for n in keys], dtype=float)
    picked = []
    while keys and len(picked) < k:
        i = int(rng.choice(len(keys), p=w / w.sum()))
        picked.append(keys.pop(i))
        w = np.delete(w, i)
    return picked


def _spread(text: str) -> tuple[str, dict]:
    nature, _, evs = text.partition(":")
    values = [int(x) for x in evs.split("/")]
    return nature, dict(zip(("hp", "atk", "def", "spa", "spd", "spe"), values))


def _request_mon(gen: int, entry: dict, tracked, request: dict, battle: Battle) -> tuple[dict, dict]:
    """(set, state) of one of our own Pokémon from its request entry (+ the public tracker)."""
    _, name = parse_ident(entry["ident"])
    species, level, gender = parse_details(entry["details"])
    hp_text, _, status = entry["condition"].partition(" ")
    hp, _, maxhp = hp_text.partition("/")
    moves = [norm_move(m) for m in entry.get("moves", [])]
    team_set = {"name": name, "species": species, "level": level, "gender": gender, "moves": moves,
                "item": entry.get("item", ""), "ability": entry.get("baseAbility", ""),
                "teraType": entry.get("teraType") or None, "evs": {}, "ivs": {}}
    fainted = status == "fnt" or hp == "0"
    state = {"fainted": fainted, "hp": int(hp) if hp.isdigit() else None,
             "maxhp": int(re.sub(r"\D", "", maxhp)) if maxhp else None,
             "stats": entry.get("stats"), "status": "" if fainted else status, "item": entry.get("item", "")}
    mon = battle.team.get(f"{parse_ident(entry['ident'])[0]}: {name}")
    _dynamic(state, tracked, mon)
    if entry.get("active") and request.get("active"):
        active = request["active"][0]
        state["pp"] = {norm_move(m["id"]): m["pp"] for m in active["moves"] if "pp" in m}
        if state.get("transform_into"):
            state["moves_now"] = [[m["id"], m.get("pp", 5)] for m in active["moves"]]
        offered = [m["id"] for m in active["moves"]]
        # Our request says whether a Choice item locks us (a Choice item just received by Trick
        # does not lock until the next move): the simulator must not infer one from the last move.
        enabled = [norm_move(m["id"]) for m in active["moves"] if not m.get("disabled")]
        state["choice_locked"] = enabled == [state.get("last_move")]
        twoturn = any(v.startswith("twoturnmove:") for v in (tracked.volatiles if tracked else ()))
        if len(offered) == 1 and offered[0] not in LOCK_EXEMPT and len(moves) > 1 and not twoturn:
            state["lock"] = norm_move(offered[0])
        if gen == 1 and offered == ["fight"]:
            # Gen 1's 'Fight' alone: asleep, frozen or wrapped; the log shows no Wrap starting,
            # and sleep cancels a pending recharge.
            vols = set(state.get("volatiles", ())) - {"mustrecharge"}
            if state["status"] not in ("slp", "frz"):
                vols.add("partiallytrapped")
                state["trap_move"] = _foe_trap_move(live_state(battle), parse_ident(entry["ident"])[0])
            state["volatiles"] = sorted(vols)
    return team_set, state


def _dynamic(state: dict, tracked, mon) -> None:
    """Boosts, volatiles, PP spent, status counters: what the protocol told about a Pokémon."""
    if tracked is not None:
        state["boosts"] = {k: v for k, v in tracked.boosts.items() if v}
        state["volatiles"] = sorted(v for v in tracked.volatiles if v in SIM_VOLATILES or v.startswith(
            ("twoturnmove:", "disabled:")))
        state["pp_used"] = dict(tracked.pp_used)
        state["last_move"] = tracked.last_move
        state["rested"] = tracked.rested
        if tracked.transformed is not None:
            state["transform_into"] = tracked.transformed[0].name
        if tracked.terastallized:
            state["terastallized"], state["tera"] = True, tracked.tera
    counter = mon.status_counter if mon is not None else 0
    state["sleep_turns"] = counter if state.get("status") == "slp" else 0
    state["toxic_turns"] = counter if state.get("status") == "tox" else 0


def own_side(battle: Battle) -> dict:
    """Our side, exactly as the request shows it, in the request's order (active first)."""
    request = battle.last_request
    side_id = request["side"]["id"]
    tracked = live_state(battle).sides[side_id]
    team, mons = [], []
    for entry in request["side"]["pokemon"]:
        _, name = parse_ident(entry["ident"])
        team_set, state = _request_mon(battle.gen, entry, tracked.mons.get(name), request, battle)
        team.append(team_set)
        mons.append(state)
    return {"team": team, "mons": mons, "conditions": dict(tracked.conditions),
            "tera_used": tracked.tera_used, "must_switch": bool(any(request.get("forceSwitch") or []))}


def opponent_side(battle: Battle, rng: np.random.Generator) -> dict:
    """One guess of the opponent's side: seen Pokémon with sampled unseen moves (and items,
    abilities, tera types, spreads), unseen team members sampled from usage statistics."""
    state = live_state(battle)
    opp_id = other_side(battle.last_request["side"]["id"])
    side = state.sides[opp_id]
    stats = bundled_stats(battle.format or "")
    gen = battle.gen
    seen = sorted(side.mons.values(), key=lambda m: not m.active)
    known = [(m.species, m.level, m) for m in seen] + [(m.species, m.level, None) for m in side.preview]
    species_ids = [to_id(s) for s, _, _ in known]
    for extra in _sample_teammates(stats, species_ids, max(0, side.team_size - len(known)), rng):
        known.append((stats.species[extra].name, 100, None))
    team, mons = [], []
    for species, level, mon in known:
        usage = stats.species.get(to_id(species)) if stats is not None else None
        team_set, fixed = _sample_set(gen, usage, species, level, mon, rng)
        team.append(team_set)
        st = {"fainted": False, "hp_frac": 1.0, "status": "", "item": fixed.get("item")}
        if mon is not None:
            st.update(fainted=mon.fainted, hp_frac=mon.hp, status="" if mon.fainted else mon.status)
            _dynamic(st, mon, battle.opponent_team.get(f"{opp_id}: {mon.name}"))
            if gen == 1 and st["status"] in ("slp", "frz"):  # gen 1: sleep cancels a recharge
                st["volatiles"] = [v for v in st["volatiles"] if v != "mustrecharge"]
            st["trap_move"] = _foe_trap_move(state, opp_id)
        if fixed.get("item") is None:
            st.pop("item")
        mons.append(st)
    foe_active = side.active
    return {"team": team, "mons": mons, "conditions": dict(side.conditions), "tera_used": side.tera_used,
            "must_switch": foe_active is not None and foe_active.fainted}


def _foe_trap_move(state, side_id: str) -> str:
    other = state.sides[other_side(side_id)].active
    return other.last_move if other is not None else ""


def _sample_teammates(stats: UsageTable | None, present: list[str], n: int, rng) -> list[str]:
    """n species for unseen team members: usage weighted by how often they team with the seen."""
    if n <= 0 or stats is None:
        return []
    weights = {}
    for sid, entry in stats.species.items():
        if sid in present:
            continue
        w = entry.usage or 1e-6
        for p in present:
            mates = stats.species[p].teammates if p in stats.species else {}
            w *= 0.2 + mates.get(sid, 0.0)
        weights[sid] = w
    return _weighted_pick(rng, weights, n)


def _sample_set(gen: int, usage: SpeciesUsage | None, species: str, level: int, mon, rng) -> tuple[dict, dict]:
    """A set for one opponent Pokémon: revealed fields kept, the rest sampled from its stats."""
    revealed = [norm_move(m) for m in (mon.moves if mon is not None else [])][:4]
    moves = revealed + _weighted_pick(rng, usage.moves if usage else {}, 4 - len(revealed), exclude=revealed)
    fixed: dict = {}

    def pick(kind: str, known: str) -> str:
        if known and known != "<unknown>":
            return known
        options = _weighted_pick(rng, getattr(usage, kind) if usage else {}, 1)
        return options[0] if options else ""

    item = ability = tera = ""
    if gen >= 2:
        first = mon.first_item if mon is not None else ""
        item = pick("items", first)
        if mon is not None and mon.item not in ("<unknown>", first):
            fixed["item"] = mon.item  # knocked off, used or swapped since
    if gen >= 3:
        ability = pick("abilities", mon.first_ability if mon is not None else "")
    if gen == 9:
        tera = pick("tera", mon.tera if mon is not None and mon.terastallized else "")
    spreads = usage.spreads if usage else {}
    nature, evs = ("", {s: 252 for s in ("hp", "atk", "def", "spa", "spd", "spe")}) if gen <= 2 else ("Hardy", {})
    if spreads:
        nature, evs = _spread(_weighted_pick(rng, spreads, 1)[0])
    if gen <= 2:
        nature = ""
    team_set = {"name": mon.name if mon is not None else species, "species": species, "level": level,
                "gender": mon.gender if mon is not None else "", "moves": moves or ["struggle"],
                "item": item, "ability": ability, "nature": nature, "evs": evs, "ivs": {},
                "teraType": tera or None}
    return team_set, fixed


def battle_spec(battle: Battle, rng: np.random.Generator) -> dict:
    """One full guess of the battle, as the worker builds it (our side is exact)."""
    state = live_state(battle)
    ours = own_side(battle)
    theirs = opponent_side(battle, rng)
    us = battle.last_request["side"]["id"]
    sides = [ours, theirs] if us == "p1" else [theirs, ours]
    field = {"weather": state.weather, "terrain": next((f for f in state.fields if f.endswith("terrain")), ""),
             "pseudo": sorted(f for f in state.fields if not f.endswith("terrain"))}
    return {"format": battle.format, "sides": sides, "field": field, "turn": state.turn,
            "seed": int(rng.integers(1, 2**31))}
