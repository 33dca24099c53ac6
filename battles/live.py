"""The poke-env edge: views, legal masks and orders of a live poke-env Battle.

    view = view_from_battle(battle)             # inside choose_move: the BattleView of this request
    order = index_to_order(index, battle, player, view)   # an action slot -> a poke-env order
    index = order_to_index(order, battle, view)           # and back

Everything in battles/ that reads a poke-env Battle object or builds a poke-env order is
here; the action space (battles/actions.py) and the views (battles/view.py) never touch
poke-env. The tracker is fed the protocol lines poke-env kept (live_state), so a live view
and one rebuilt from the battle's log share their spectator-visible part.
"""

from __future__ import annotations

import weakref
from dataclasses import replace

from battles.actions import (
    MOVE_SLOTS,
    N_ACTIONS,
    PSEUDO_MOVES,
    SWITCH_OFFSET,
    TERA_OFFSET,
    bench_names,
    move_index,
    move_slots,
    switch_index,
)
from battles.protocol import (
    norm_move,
    parse_condition,
    parse_details,
    parse_ident,
    parse_line,
    to_id,
)
from battles.state import BattleState
from battles.view import (
    BattleView,
    PokemonView,
    SideView,
    boosts_of,
    gen_blank,
    mon_types,
    opp_side,
    pad_moves,
    side_conditions,
    side_order,
    volatiles_of,
)

# -- views -------------------------------------------------------------------------------------
_LIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def live_state(battle) -> BattleState:
    """The tracker fed with every protocol line this poke-env battle has received (incremental)."""
    entry = _LIVE.get(battle)
    messages = battle._replay_data  # poke-env 0.16 keeps every battle message it parsed, in order
    if entry is None or entry[1] > len(messages):
        entry = [BattleState(), 0]
        _LIVE[battle] = entry
    state = entry[0]
    for message in messages[entry[1] :]:
        event = parse_line("|".join(message))
        if event is not None:
            state.apply(event)
    entry[1] = len(messages)
    return state


def _own_mon(gen: int, entry: dict, own_side, percent: bool) -> PokemonView:
    """One of our Pokémon from its request entry and the tracker; reused while neither changed
    (most of a team is the same from one decision to the next)."""
    _, name = parse_ident(entry["ident"])
    tracked = own_side.mons.get(name)
    key = (gen, percent, entry["ident"], entry["details"], entry["condition"], entry.get("active"),
           tuple(entry.get("moves", ())), entry.get("item", ""), entry.get("baseAbility", ""),
           entry.get("teraType"), id(tracked), tracked.version if tracked is not None else -1)
    memo = own_side.own_views
    hit = memo.get(key)
    if hit is not None and hit[0] is tracked:  # (the same Mon, not a new one at a reused id)
        return hit[1]
    species_name, level, _ = parse_details(entry["details"])
    species = to_id(species_name)
    hp, status = parse_condition(entry["condition"], percent)
    tera = to_id(entry.get("teraType") or "")
    item, ability, tera = gen_blank(gen, to_id(entry.get("item", "")), to_id(entry.get("baseAbility", "")), tera)
    view = PokemonView(
        name=name, species=species, level=level, hp=hp, status=status,
        active=bool(entry.get("active")), revealed=tracked is not None and tracked.revealed,
        moves=pad_moves([norm_move(m) for m in entry.get("moves", [])], True),
        item=item, ability=ability, tera_type=tera,
        terastallized=tracked is not None and tracked.terastallized,
        boosts=boosts_of(tracked), volatiles=volatiles_of(tracked), types=mon_types(gen, tracked, species),
    )
    if len(memo) > 64:  # old entries (past HP, past moves) are never asked for again
        memo.clear()
    memo[key] = (tracked, view)
    return view


def view_from_battle(battle) -> BattleView:
    """The view of the player owning this live poke-env Battle, at its current request."""
    request = battle.last_request or {}
    if not request.get("side"):
        raise ValueError(
            f"battle {battle.battle_tag} has no request yet; call view_from_battle from choose_move"
        )
    if getattr(battle, "active_pokemon", None) is not None and isinstance(battle.active_pokemon, list):
        raise ValueError(f"battle {battle.battle_tag} is a doubles battle; views cover singles only")
    state = live_state(battle)
    gen, side = battle.gen, request["side"]["id"]
    own_side = state.sides[side]
    mons = [_own_mon(gen, entry, own_side, state.percent) for entry in request["side"]["pokemon"]]
    # The side itself, reused while none of it changed, as opp_side does (the cached SideView
    # keeps its Pokémon alive, so their ids in the key cannot be reused).
    key = (tuple(map(id, mons)), tuple(own_side.conditions.items()), own_side.tera_used)
    if own_side.view_cache is None or own_side.view_cache[0] != key:
        own_side.view_cache = (key, SideView(side_order(gen, mons), side_conditions(state, side), len(mons),
                                             own_side.tera_used))
    own = own_side.view_cache[1]
    view = BattleView(
        gen=gen, format=battle.format or "", side=side, turn=state.turn, own=own,
        opp=opp_side(state, side), weather=state.weather, fields=tuple(sorted(state.fields)),
        force_switch=bool(any(request.get("forceSwitch") or [])), can_tera=False,
        legal=(False,) * N_ACTIONS,
    )
    legal = tuple(bool(x) for x in legal_from_battle(battle, view))
    return replace(view, legal=legal, can_tera=any(legal[TERA_OFFSET :]))


# -- legality and orders --------------------------------------------------------------------
def legal_from_battle(battle, view: BattleView) -> list[bool]:
    """The legal mask of a live poke-env battle's current request, in the view's slots."""
    mask = [False] * N_ACTIONS
    slots = move_slots(view)
    moves = battle.available_moves
    if len(moves) == 1 and norm_move(moves[0].id) in PSEUDO_MOVES:
        mask[0] = True
    for move in moves:
        i = move_index(view, move.id)
        if i >= 0:
            mask[i] = True
    names = {id(mon): key.partition(": ")[2] for key, mon in battle.team.items()}
    for mon in battle.available_switches:
        i = switch_index(view, names.get(id(mon), ""))
        if i >= 0:
            mask[i] = True
    if battle.can_tera:
        for i in range(MOVE_SLOTS):
            mask[TERA_OFFSET + i] = mask[i] and bool(slots[i])
    return mask


def order_to_index(order, battle, view: BattleView | None = None) -> int:
    """The action index of a poke-env BattleOrder in this battle's current view (-1: none)."""
    target = getattr(order, "order", None)
    if target is None or isinstance(target, str):
        return -1
    view = view or view_from_battle(battle)
    if hasattr(target, "base_power"):  # a Move
        if norm_move(target.id) in PSEUDO_MOVES:
            return 0
        return move_index(view, target.id, tera=bool(getattr(order, "terastallize", False)))
    for key, mon in battle.team.items():
        if mon is target:
            return switch_index(view, key.partition(": ")[2])
    return -1


def index_to_order(index: int, battle, player, view: BattleView | None = None):
    """The poke-env order for an action index; never illegal (falls back to a legal one).

    `view` is this request's view_from_battle(battle), when the caller already has it.
    """
    view = view or view_from_battle(battle)
    mask = view.legal
    if not (0 <= index < N_ACTIONS and mask[index]):
        legal = [i for i, ok in enumerate(mask) if ok]
        if not legal:
            return player.choose_default_move()  # forced: Showdown picks the only option
        index = legal[0]
    if index >= SWITCH_OFFSET and index < TERA_OFFSET:
        name = bench_names(view)[index - SWITCH_OFFSET]
        for mon in battle.available_switches:
            if any(m is mon and k.partition(": ")[2] == name for k, m in battle.team.items()):
                return player.create_order(mon)
        return player.choose_default_move()
    moves = battle.available_moves
    if index == 0 and len(moves) == 1 and norm_move(moves[0].id) in PSEUDO_MOVES:
        return player.create_order(moves[0])
    tera = index >= TERA_OFFSET
    move_id = move_slots(view)[index - (TERA_OFFSET if tera else 0)]
    for move in battle.available_moves:
        if norm_move(move.id) == move_id:
            return player.create_order(move, terastallize=tera)
    return player.choose_default_move()
