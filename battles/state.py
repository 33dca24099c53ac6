"""The battle state a spectator can know, driven by protocol events.

    state = BattleState()
    for event in iter_events(replay["log"]):
        state.apply(event)                         # one small handler per event kind (HANDLERS)

`BattleState` tracks both sides' revealed Pokémon, HP as the public percentage, status,
boosts, revealed moves/items/abilities, field and side conditions (the data it holds is
defined in battles/tracked.py; this module is how each event changes it). The same state is
fed by a replay's spectator log and by the lines a live poke-env player received, so both
give the same picture (see battles/view.py, battles/log_views.py, battles/live.py).
"""

from __future__ import annotations

from battles.protocol import (
    STATS,
    STATUSES,
    UNKNOWN,
    Event,
    parse_condition,
    parse_details,
    parse_ident,
    strip_prefix,
    to_id,
)
from battles.tracked import Mon, TrackedBattle


class BattleState(TrackedBattle):
    """The public state of one battle, updated event by event through HANDLERS."""

    def apply(self, event: Event) -> None:
        """Update the state with one event (kinds without a handler change nothing)."""
        handler = HANDLERS.get(event.kind)
        if handler is not None:
            handler(self, event)


# -- handlers: one small function per message kind ------------------------------------------
def _on_player(state: BattleState, ev: Event) -> None:
    side = state.sides.get(ev.arg(0))
    if side is not None and ev.arg(1):
        side.name = ev.arg(1)


def _on_teamsize(state: BattleState, ev: Event) -> None:
    side = state.sides.get(ev.arg(0))
    if side is not None and ev.arg(1).isdigit():
        side.team_size = int(ev.arg(1))


def _on_gen(state: BattleState, ev: Event) -> None:
    if ev.arg(0).isdigit():
        state.gen = int(ev.arg(0))
        # Gens 1-6 show HP in 48ths unless a later |rule| turns on the HP Percentage Mod.
        state.percent = state.gen >= 7


def _on_gametype(state: BattleState, ev: Event) -> None:
    state.doubles = ev.arg(0) != "singles"


def _on_rule(state: BattleState, ev: Event) -> None:
    if ev.arg(0).startswith("HP Percentage Mod"):
        state.percent = True
    elif ev.arg(0).startswith("Terastal Clause"):
        state.tera_clause = True


def _on_clearpoke(state: BattleState, ev: Event) -> None:
    for side in state.sides.values():
        side.preview.clear()


def _on_poke(state: BattleState, ev: Event) -> None:
    side = state.sides.get(ev.arg(0))
    if side is None:
        return
    species, level, gender = parse_details(ev.arg(1))
    mon = Mon(side.id, "", species, level, gender)
    mon.previewed = True
    side.preview.append(mon)


def _on_start(state: BattleState, ev: Event) -> None:
    state.started = True


def _on_switch(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0), ev.arg(1))
    if mon is None:
        return
    side = state.sides[mon.side]
    old = side.active
    boosts, carried = dict.fromkeys(STATS, 0), set()
    if old is not None and old is not mon:
        # Baton Pass hands over boosts and most volatiles, Shed Tail its substitute;
        # the log does not repeat them, so the client (and we) carry them over.
        if ev.kind == "switch" and old.last_move == "batonpass" and not old.fainted:
            boosts, carried = dict(old.boosts), old.volatiles & _PASSED
        elif ev.tags.get("from") == "Shed Tail":
            carried = old.volatiles & {"substitute"}
        old.active = False
        old.volatiles = set()
        old.boosts = dict.fromkeys(STATS, 0)
        old.types = None
        old.last_move = ""
        old.transformed = None
        old.version += 1
    mon.species, mon.level, mon.gender = parse_details(ev.arg(1))
    if old is not mon:
        mon.boosts, mon.volatiles, mon.types, mon.last_move = boosts, set(carried), None, ""
    mon.active = mon.revealed = True
    if ev.arg(2):
        mon.hp, mon.status = parse_condition(ev.arg(2), state.percent)
    side.active = mon


_PASSED = frozenset({"substitute", "confusion", "leechseed", "curse", "focusenergy", "perish1", "perish2", "perish3"})


def _on_replace(state: BattleState, ev: Event) -> None:
    # Illusion broke: the active Pokémon is really this one.
    side_id, name = parse_ident(ev.arg(0))
    side = state.sides.get(side_id)
    if side is None:
        return
    fake = side.active
    mon = state.mon(ev.arg(0), ev.arg(1))
    if mon is None:
        return
    if fake is not None and fake is not mon:
        fake.version += 1
        fake.active = False
        mon.hp, mon.status, mon.boosts = fake.hp, fake.status, fake.boosts
        mon.volatiles = fake.volatiles
        fake.hp, fake.status = 1.0, ""
        fake.boosts, fake.volatiles = dict.fromkeys(STATS, 0), set()
    mon.active = mon.revealed = True
    side.active = mon


def _on_detailschange(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is not None:
        mon.species, mon.level, mon.gender = parse_details(ev.arg(1))
        mon.types = None


def _on_formechange(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is not None:
        mon.species = parse_details(ev.arg(1))[0]
        mon.types = None
    state.reveal_from_tag(ev, mon)


_OWN_MOVE_SOURCES = ("lockedmove", "move: Sleep Talk", "Pursuit")


def _on_move(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is None:
        return
    move_id = to_id(ev.arg(1))
    source = ev.tags.get("from", "")
    # Moves called by another move or ability (Metronome, Dancer, Magic Bounce) are not the
    # user's own; Sleep Talk calls one of the user's own moves.
    target = state.mon(ev.arg(2)) if ev.arg(2) and not source else None
    # Pressure (gen 3+) makes a move aimed at its holder cost 2 PP.
    cost = 2 if target is not None and target.side != mon.side and target.ability == "pressure" else 1
    if mon.transformed is not None:
        # A transformed Pokémon uses its target's moves (5 PP each), not its own.
        if not source and move_id not in ("struggle", "recharge"):
            mon.transformed[1][move_id] = mon.transformed[1].get(move_id, 0) + cost
    elif not source or source in _OWN_MOVE_SOURCES or source.startswith("Pursuit"):
        mon.reveal_move(move_id)
    if not source:
        mon.last_move = move_id
    if not source and mon.transformed is None:
        mon.pp_used[move_id] = mon.pp_used.get(move_id, 0) + cost
    mon.volatiles.discard("mustrecharge")
    mon.volatiles.discard("twoturnmove:" + move_id)
    if source.startswith("ability:"):
        mon.reveal_ability(source.partition(": ")[2])


def _on_cant(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is None:
        return
    if ev.arg(1) == "recharge":
        mon.volatiles.discard("mustrecharge")
    # A charging move interrupted (paralysis, flinch, sleep) is lost: no forced second turn.
    mon.volatiles = {v for v in mon.volatiles if not v.startswith("twoturnmove:")}
    kind, name = strip_prefix(ev.arg(1))
    if kind == "ability":
        mon.reveal_ability(name)
    if ev.arg(2):
        mon.reveal_move(to_id(ev.arg(2)))


def _on_hp(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is None:
        return
    if ev.arg(1):
        hp, status = parse_condition(ev.arg(1), state.percent)
        mon.hp = hp
        if status == "fnt" or status:
            mon.status = status
        elif mon.status == "fnt":
            mon.status = ""  # revived
    kind, name = strip_prefix(ev.tags.get("from", ""))
    if ev.kind == "-heal" and kind == "ability":
        # Water Absorb, Volt Absorb, Dry Skin...: the healed Pokémon's own ability; [of] is the attacker.
        mon.reveal_ability(name)
    else:
        state.reveal_from_tag(ev, mon)


def _on_faint(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is not None:
        mon.hp, mon.status = 0.0, "fnt"
        mon.transformed = None


def _on_status(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is not None and ev.arg(1) in STATUSES:
        mon.status = ev.arg(1)
        mon.rested = ev.arg(1) == "slp" and ev.tags.get("from", "").endswith("Rest")
    state.reveal_from_tag(ev, mon)


def _on_curestatus(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is not None and mon.status != "fnt":
        mon.status = ""
    state.reveal_from_tag(ev, mon)


def _on_cureteam(state: BattleState, ev: Event) -> None:
    side = state.sides.get(parse_ident(ev.arg(0))[0])
    if side is not None:
        for mon in side.mons.values():
            mon.version += 1
            if mon.status != "fnt":
                mon.status = ""


def _stat(name: str) -> str | None:
    return name if name in STATS else None


def _on_boost(state: BattleState, ev: Event) -> None:
    mon, stat = state.mon(ev.arg(0)), _stat(ev.arg(1))
    if mon is not None and stat and ev.arg(2).lstrip("-").isdigit():
        sign = -1 if ev.kind == "-unboost" else 1
        mon.boosts[stat] = max(-6, min(6, mon.boosts[stat] + sign * int(ev.arg(2))))
    state.reveal_from_tag(ev, mon)


def _on_setboost(state: BattleState, ev: Event) -> None:
    mon, stat = state.mon(ev.arg(0)), _stat(ev.arg(1))
    if mon is not None and stat and ev.arg(2).lstrip("-").isdigit():
        mon.boosts[stat] = int(ev.arg(2))


def _on_clearboost(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is not None:
        keep = {"-clearnegativeboost": lambda v: max(v, 0), "-clearpositiveboost": lambda v: min(v, 0)}
        fn = keep.get(ev.kind, lambda v: 0)
        mon.boosts = {k: fn(v) for k, v in mon.boosts.items()}


def _on_clearallboost(state: BattleState, ev: Event) -> None:
    for side in state.sides.values():
        for mon in side.mons.values():
            mon.version += 1
            mon.boosts = dict.fromkeys(STATS, 0)


def _on_invertboost(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is not None:
        mon.boosts = {k: -v for k, v in mon.boosts.items()}


def _on_copyboost(state: BattleState, ev: Event) -> None:
    source, target = state.mon(ev.arg(0)), state.mon(ev.arg(1))
    if source is not None and target is not None:
        target.boosts = dict(source.boosts)


def _on_swapboost(state: BattleState, ev: Event) -> None:
    a, b = state.mon(ev.arg(0)), state.mon(ev.arg(1))
    if a is None or b is None:
        return
    stats = [s for s in ev.arg(2).split(", ") if s in STATS] or list(STATS)
    for s in stats:
        a.boosts[s], b.boosts[s] = b.boosts[s], a.boosts[s]


def _on_weather(state: BattleState, ev: Event) -> None:
    weather = ev.arg(0)
    state.weather = "" if weather in ("none", "") else to_id(weather)
    if "upkeep" not in ev.tags:
        state.reveal_from_tag(ev, state.of_mon(ev))


def _on_fieldstart(state: BattleState, ev: Event) -> None:
    name = to_id(strip_prefix(ev.arg(0))[1])
    if name.endswith("terrain"):
        state.fields = {f for f in state.fields if not f.endswith("terrain")}
    state.fields.add(name)
    state.reveal_from_tag(ev, state.of_mon(ev))


def _on_fieldend(state: BattleState, ev: Event) -> None:
    state.fields.discard(to_id(strip_prefix(ev.arg(0))[1]))


def _on_sidestart(state: BattleState, ev: Event) -> None:
    side = state.sides.get(parse_ident(ev.arg(0))[0])
    if side is not None:
        name = to_id(strip_prefix(ev.arg(1))[1])
        side.conditions[name] = side.conditions.get(name, 0) + 1


def _on_sideend(state: BattleState, ev: Event) -> None:
    side = state.sides.get(parse_ident(ev.arg(0))[0])
    if side is not None:
        side.conditions.pop(to_id(strip_prefix(ev.arg(1))[1]), None)


def _on_swapsideconditions(state: BattleState, ev: Event) -> None:
    a, b = state.sides["p1"], state.sides["p2"]
    a.conditions, b.conditions = b.conditions, a.conditions


def _on_volatile_start(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is None:
        return
    kind, name = strip_prefix(ev.arg(1))
    effect = to_id(name)
    if effect == "disable" and ev.arg(2):
        mon.volatiles.add("disabled:" + to_id(ev.arg(2)))
    if effect == "typechange":
        mon.types = tuple(to_id(t) for t in ev.arg(2).split("/") if t and t != "[from]")
    elif effect.startswith("perish"):
        mon.volatiles.discard("perish3")
        mon.volatiles.discard("perish2")
        mon.volatiles.add(effect)
    elif kind == "ability":
        mon.reveal_ability(name)
    else:
        mon.volatiles.add(effect)
    state.reveal_from_tag(ev, mon)


def _on_volatile_end(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is not None:
        effect = to_id(strip_prefix(ev.arg(1))[1])
        mon.volatiles.discard(effect)
        if effect == "disable":
            mon.volatiles = {v for v in mon.volatiles if not v.startswith("disabled:")}
        if "partiallytrapped" in ev.tags:
            mon.volatiles.discard("partiallytrapped")
    state.reveal_from_tag(ev, mon)


def _on_item(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is None:
        return
    source = ev.tags.get("from", "")
    if source.startswith(("move: Trick", "move: Switcheroo", "move: Thief", "move: Covet")) or (
        source.startswith("ability:") and "Frisk" not in source
    ):
        mon.item = to_id(ev.arg(1))  # a new item arrived; not the one it started with
    else:
        mon.reveal_item(ev.arg(1))
    if source.startswith("ability:"):
        owner = state.of_mon(ev) if "Frisk" in source else mon
        if owner is not None:
            owner.reveal_ability(source.partition(": ")[2])
    victim = state.of_mon(ev)
    if victim is not None and "Frisk" not in source and source.startswith(("ability:", "move: Thief", "move: Covet")):
        if victim.first_item == UNKNOWN:
            victim.first_item = to_id(ev.arg(1))  # the item was taken from it
        victim.item = ""


def _on_enditem(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is None:
        return
    if mon.first_item == UNKNOWN:
        mon.first_item = to_id(ev.arg(1))
    mon.item = ""
    source = ev.tags.get("from", "")
    if source.startswith("ability:") and state.of_mon(ev) is not None:
        state.of_mon(ev).reveal_ability(source.partition(": ")[2])


def _on_ability(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is None:
        return
    source = ev.tags.get("from", "")
    if source.startswith("ability:"):
        # Trace / Receiver / Power of Alchemy: the original ability is the one named in [from].
        mon.reveal_ability(source.partition(": ")[2])
        mon.reveal_ability(ev.arg(1), original=False)
    elif source.startswith("move:"):
        mon.reveal_ability(ev.arg(1), original=False)  # Skill Swap, Entrainment
    else:
        mon.reveal_ability(ev.arg(1))


def _on_endability(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is not None:
        mon.volatiles.add("gastroacid")


def _on_transform(state: BattleState, ev: Event) -> None:
    mon, target = state.mon(ev.arg(0)), state.mon(ev.arg(1))
    state.reveal_from_tag(ev, mon)  # Imposter is the user's own ability: reveal it before copying
    if mon is not None:
        mon.volatiles.add("transform")
        if target is not None:
            mon.boosts = dict(target.boosts)
            mon.transformed = (target, {})
            mon.ability = target.ability  # Transform copies the ability (Pressure matters for PP)


def _on_terastallize(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is not None:
        mon.tera, mon.terastallized = to_id(ev.arg(1)), True
        mon.types = (mon.tera,)
        state.sides[mon.side].tera_used = True


def _on_mustrecharge(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is not None:
        mon.volatiles.add("mustrecharge")


def _on_activate(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    kind, name = strip_prefix(ev.arg(1))
    if mon is not None and kind == "item":
        mon.reveal_item(name)
    elif mon is not None and kind == "ability":
        mon.reveal_ability(name)
    elif mon is not None and to_id(name) == "trapped":
        mon.volatiles.add("trapped")
    elif mon is not None and to_id(name) in PARTIAL_TRAPS:
        mon.volatiles.add("partiallytrapped")
    state.reveal_from_tag(ev, mon)


PARTIAL_TRAPS = frozenset(
    "wrap bind firespin clamp whirlpool sandtomb magmastorm infestation snaptrap thundercage".split()
)


def _on_prepare(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is not None:  # the second turn of a charging move is not a choice
        mon.volatiles.add("twoturnmove:" + to_id(ev.arg(1)))


def _on_anim(state: BattleState, ev: Event) -> None:
    mon = state.mon(ev.arg(0))
    if mon is not None:  # a charging move that fired at once (Solar Blade in sun): no second turn
        mon.volatiles.discard("twoturnmove:" + to_id(ev.arg(1)))


def _on_turn(state: BattleState, ev: Event) -> None:
    if ev.arg(0).isdigit():
        state.turn = int(ev.arg(0))


def _on_win(state: BattleState, ev: Event) -> None:
    state.ended = True
    state.winner = ev.arg(0)


def _on_tie(state: BattleState, ev: Event) -> None:
    state.ended = True


def _on_error(state: BattleState, ev: Event) -> None:
    state.errors.append("|".join(ev.args))


HANDLERS = {
    "player": _on_player,
    "teamsize": _on_teamsize,
    "gen": _on_gen,
    "gametype": _on_gametype,
    "rule": _on_rule,
    "clearpoke": _on_clearpoke,
    "poke": _on_poke,
    "start": _on_start,
    "switch": _on_switch,
    "drag": _on_switch,
    "replace": _on_replace,
    "detailschange": _on_detailschange,
    "-formechange": _on_formechange,
    "move": _on_move,
    "cant": _on_cant,
    "-damage": _on_hp,
    "-heal": _on_hp,
    "-sethp": _on_hp,
    "faint": _on_faint,
    "-status": _on_status,
    "-curestatus": _on_curestatus,
    "-cureteam": _on_cureteam,
    "-boost": _on_boost,
    "-unboost": _on_boost,
    "-setboost": _on_setboost,
    "-clearboost": _on_clearboost,
    "-clearnegativeboost": _on_clearboost,
    "-clearpositiveboost": _on_clearboost,
    "-clearallboost": _on_clearallboost,
    "-invertboost": _on_invertboost,
    "-copyboost": _on_copyboost,
    "-swapboost": _on_swapboost,
    "-weather": _on_weather,
    "-fieldstart": _on_fieldstart,
    "-fieldend": _on_fieldend,
    "-sidestart": _on_sidestart,
    "-sideend": _on_sideend,
    "-swapsideconditions": _on_swapsideconditions,
    "-start": _on_volatile_start,
    "-end": _on_volatile_end,
    "-item": _on_item,
    "-enditem": _on_enditem,
    "-ability": _on_ability,
    "-endability": _on_endability,
    "-transform": _on_transform,
    "-terastallize": _on_terastallize,
    "-mustrecharge": _on_mustrecharge,
    "-activate": _on_activate,
    "-prepare": _on_prepare,
    "-anim": _on_anim,
    "turn": _on_turn,
    "win": _on_win,
    "tie": _on_tie,
    "error": _on_error,
}
