"""BattleView: what one player knew at one decision, and the pieces both of its builders share.

    decisions = views_from_log(replay, "p1")     # battles/log_views.py: rebuilt from a log
    view = view_from_battle(battle)              # battles/live.py: inside a poke-env choose_move

Both builders run the same public tracker (battles.state.BattleState) over the protocol
lines the player saw, and turn its Pokémon into views with the functions here
(public_mon, opp_side, side_order, ...), so the spectator-visible part of a view is computed
by one piece of code. What only the player knew comes from its request in live play; from a
log it comes from the exact team when we recorded it, else from everything that player
revealed in the whole battle, else from usage statistics, else it stays unknown. Each
Pokémon's `predicted` names the fields that were guessed.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from battles.protocol import STATS, UNKNOWN, norm_move, other_side, species_entry, to_id
from battles.state import BattleState
from battles.tracked import Mon

TRACKED_VOLATILES = (
    "substitute", "confusion", "leechseed", "taunt", "encore", "yawn", "perish1", "perish2",
    "perish3", "partiallytrapped", "mustrecharge", "focusenergy", "curse", "disable",
    "transform", "trapped",
)


@dataclass(frozen=True, slots=True)
class PokemonView:
    """One Pokémon as the viewer knew it. Ids are Showdown ids; UNKNOWN where not known."""

    name: str  # nickname (the protocol identity), not encoded
    species: str
    level: int
    hp: float  # the public fraction (Showdown's percentage)
    status: str  # '', brn, par, slp, frz, psn, tox, fnt
    active: bool
    revealed: bool  # has been on the field
    moves: tuple[str, ...]  # sorted ids; UNKNOWN entries pad a set not fully known
    item: str  # '' = no item
    ability: str
    tera_type: str  # '' outside gen 9
    terastallized: bool
    boosts: tuple[int, ...]  # atk, def, spa, spd, spe, accuracy, evasion
    volatiles: tuple[str, ...]  # sorted, from TRACKED_VOLATILES
    types: tuple[str, ...]
    predicted: tuple[str, ...] = ()  # fields filled from usage stats: moves, item, ability, tera_type


@dataclass(frozen=True, slots=True)
class SideView:
    """A side: active Pokémon first, then the others by base species id."""

    pokemon: tuple[PokemonView, ...]
    conditions: tuple[tuple[str, int], ...]  # (side condition id, layers), sorted
    team_size: int
    tera_used: bool


@dataclass(frozen=True, slots=True)
class BattleView:
    """Everything one player knew when it chose: sides, field, turn, and which actions were legal."""

    gen: int
    format: str
    side: str  # 'p1' | 'p2'
    turn: int
    own: SideView
    opp: SideView
    weather: str
    fields: tuple[str, ...]
    force_switch: bool
    can_tera: bool
    legal: tuple[bool, ...]  # N_ACTIONS slots (battles.actions)


def sort_key(gen: int, mon_species: str, name: str) -> tuple[str, str]:
    """The canonical order of a bench: base species id, then nickname."""
    return species_entry(gen, to_id(mon_species))[0], name


# -- pieces shared by both ways --------------------------------------------------------------
def types_of(gen: int, types: tuple[str, ...] | None, species: str) -> tuple[str, ...]:
    """Current types: changed ones (tera, typechange) or the species' (Stellar keeps them)."""
    if types is None or types == ("stellar",):
        return species_entry(gen, species)[1]
    return types


def mon_types(gen: int, mon: Mon | None, species: str) -> tuple[str, ...]:
    """A tracked Pokémon's current types (the species' when it is not tracked)."""
    return types_of(gen, mon.types if mon is not None else None, species)


def volatiles_of(mon: Mon | None) -> tuple[str, ...]:
    """Its TRACKED_VOLATILES, sorted."""
    if mon is None:
        return ()
    return tuple(sorted(v for v in mon.volatiles if v in TRACKED_VOLATILES))


_BOOSTS_OF = operator.itemgetter(*STATS)
_NO_BOOSTS = (0,) * len(STATS)


def boosts_of(mon: Mon | None) -> tuple[int, ...]:
    """Its boost stages in STATS order (none when it is not tracked)."""
    return _BOOSTS_OF(mon.boosts) if mon is not None else _NO_BOOSTS


def gen_blank(gen: int, item: str, ability: str, tera: str) -> tuple[str, str, str]:
    """Item, ability and tera type; '' (a definite none, never an unknown) where the gen has none."""
    return ("" if gen == 1 else item, "" if gen <= 2 else ability, "" if gen != 9 else tera)


def pad_moves(moves: list[str], complete: bool) -> tuple[str, ...]:
    """Up to 4 sorted move ids, padded with UNKNOWN when the set may hold moves not seen."""
    known = sorted(set(moves))[:4]
    if not complete:
        known += [UNKNOWN] * (4 - len(known))
    return tuple(known)


def public_mon(gen: int, mon: Mon) -> PokemonView:
    """A Pokémon as a spectator knows it now (the opponent's side of a view)."""
    cached = mon.cache
    if cached is not None and cached[0] == mon.version and cached[1] == gen:
        return cached[2]
    view = _public_mon(gen, mon)
    mon.cache = (mon.version, gen, view)
    return view


def _public_mon(gen: int, mon: Mon) -> PokemonView:
    species = to_id(mon.species)
    item, ability, tera = gen_blank(gen, mon.item, mon.ability, mon.tera if mon.terastallized else UNKNOWN)
    if ability == UNKNOWN:
        abilities = species_entry(gen, species)[2]
        ability = abilities[0] if len(abilities) == 1 else UNKNOWN
    return PokemonView(
        name=mon.name, species=species, level=mon.level, hp=mon.hp, status=mon.status,
        active=mon.active, revealed=mon.revealed, moves=pad_moves([norm_move(m) for m in mon.moves[:4]], False),
        item=item, ability=ability, tera_type=tera, terastallized=mon.terastallized,
        boosts=boosts_of(mon), volatiles=volatiles_of(mon), types=mon_types(gen, mon, species),
    )


def side_order(gen: int, views: list[PokemonView]) -> tuple[PokemonView, ...]:
    """A side's Pokémon in view order: the active one first, then by sort_key."""
    active = next((v for v in views if v.active), None)
    rest = sorted((v for v in views if v is not active), key=lambda v: sort_key(gen, v.species, v.name))
    return (active, *rest) if active is not None else tuple(rest)


def side_conditions(state: BattleState, side: str) -> tuple[tuple[str, int], ...]:
    """A side's (condition id, layers), sorted."""
    return tuple(sorted(state.sides[side].conditions.items()))


def opp_side(state: BattleState, side: str) -> SideView:
    """The opposing side as a spectator knows it; reused while none of it changed."""
    opp = state.sides[other_side(side)]
    key = (state.gen, opp.team_size, opp.tera_used, tuple(opp.conditions.items()),
           tuple([(m.name, id(m), m.version) for m in opp.mons.values()]),
           tuple([(id(m), m.version) for m in opp.preview]))
    if opp.view_cache is not None and opp.view_cache[0] == key:
        return opp.view_cache[1]
    mons = [public_mon(state.gen, m) for m in opp.mons.values()]
    mons += [public_mon(state.gen, m) for m in opp.preview]
    view = SideView(side_order(state.gen, mons), side_conditions(state, opp.id), opp.team_size, opp.tera_used)
    opp.view_cache = (key, view)
    return view
