"""BattleView: what one player knew at one decision, built from a log or from a live battle.

    decisions = views_from_log(replay, "p1")                 # a human replay, as p1 saw it
    decisions = views_from_log(rec.replay, "p1", choices=rec.choices["p1"], team=rec.teams["p1"])
    view = view_from_battle(battle)                          # inside a poke-env choose_move

Both ways run the same public tracker (battles.state.BattleState) over the protocol
lines the player saw, so the spectator-visible part of a view is computed by one piece of
code. What only the player knew comes from its request in live play; from a log it comes
from the exact team when we recorded it, else from everything that player revealed in the
whole battle, else from usage statistics (battles/data/stats), else it stays unknown. Each
Pokémon's `predicted` names the fields that were guessed.
"""

from __future__ import annotations

import math
import operator
import weakref
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np

from battles import actions
from battles.protocol import (
    STATS,
    UNKNOWN,
    forme_ability,
    iter_events,
    norm_move,
    parse_condition,
    parse_details,
    parse_ident,
    parse_line,
    species_entry,
    to_id,
)
from battles.state import BattleState, Mon

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

    @property
    def move_slots(self) -> tuple[str, ...]:
        """Move ids behind action slots 0-3 (the own active Pokémon's moves)."""
        return actions.move_slots(self)

    @property
    def bench(self) -> tuple[PokemonView, ...]:
        """The Pokémon behind switch slots 4-8."""
        return self.own.pokemon[1 : 1 + actions.SWITCH_SLOTS]


@dataclass(slots=True)
class Decision:
    """One decision rebuilt from a log: the view, the action index (-1 unknown/forced), the choice."""

    view: BattleView
    action: int
    choice: str | None = None  # the exact choice ('move x', 'switch 3') when it was recorded
    visible: str = ""  # what the log showed: 'move:x', 'tera+move:x', 'switch:Name', 'cant:par', ''
    choice_index: int = -1  # position in the side's list of non-team choices, -1 if not aligned

    @property
    def legal(self) -> np.ndarray:
        return actions.legal_mask(self.view)

    @property
    def forced(self) -> bool:
        return actions.is_forced(self.view)


def sort_key(gen: int, mon_species: str, name: str) -> tuple[str, str]:
    """The canonical order of a bench: base species id, then nickname."""
    return species_entry(gen, to_id(mon_species))[0], name


# -- pieces shared by both ways --------------------------------------------------------------
def _types_of(gen: int, types: tuple[str, ...] | None, species: str) -> tuple[str, ...]:
    """Current types: changed ones (tera, typechange) or the species' (Stellar keeps them)."""
    if types is None or types == ("stellar",):
        return species_entry(gen, species)[1]
    return types


def _types(gen: int, mon: Mon | None, species: str) -> tuple[str, ...]:
    return _types_of(gen, mon.types if mon is not None else None, species)


def _volatiles(mon: Mon | None) -> tuple[str, ...]:
    if mon is None:
        return ()
    return tuple(sorted(v for v in mon.volatiles if v in TRACKED_VOLATILES))


_BOOSTS_OF = operator.itemgetter(*STATS)
_NO_BOOSTS = (0,) * len(STATS)


def _boosts(mon: Mon | None) -> tuple[int, ...]:
    return _BOOSTS_OF(mon.boosts) if mon is not None else _NO_BOOSTS


def _gen_blank(gen: int, item: str, ability: str, tera: str) -> tuple[str, str, str]:
    # Gens without items / abilities / tera have a definite "none", never an unknown.
    return ("" if gen == 1 else item, "" if gen <= 2 else ability, "" if gen != 9 else tera)


def _pad_moves(moves: list[str], complete: bool) -> tuple[str, ...]:
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
    item, ability, tera = _gen_blank(gen, mon.item, mon.ability, mon.tera if mon.terastallized else UNKNOWN)
    if ability == UNKNOWN:
        abilities = species_entry(gen, species)[2]
        ability = abilities[0] if len(abilities) == 1 else UNKNOWN
    return PokemonView(
        name=mon.name, species=species, level=mon.level, hp=mon.hp, status=mon.status,
        active=mon.active, revealed=mon.revealed, moves=_pad_moves([norm_move(m) for m in mon.moves[:4]], False),
        item=item, ability=ability, tera_type=tera, terastallized=mon.terastallized,
        boosts=_boosts(mon), volatiles=_volatiles(mon), types=_types(gen, mon, species),
    )


def _side_order(gen: int, views: list[PokemonView]) -> tuple[PokemonView, ...]:
    active = next((v for v in views if v.active), None)
    rest = sorted((v for v in views if v is not active), key=lambda v: sort_key(gen, v.species, v.name))
    return (active, *rest) if active is not None else tuple(rest)


def _conditions(state: BattleState, side: str) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(state.sides[side].conditions.items()))


def _opp_side(state: BattleState, side: str) -> SideView:
    """The opposing side as a spectator knows it; reused while none of it changed."""
    opp = state.sides[actions.other(side)]
    key = (state.gen, opp.team_size, opp.tera_used, tuple(opp.conditions.items()),
           tuple([(m.name, id(m), m.version) for m in opp.mons.values()]),
           tuple([(id(m), m.version) for m in opp.preview]))
    if opp.view_cache is not None and opp.view_cache[0] == key:
        return opp.view_cache[1]
    mons = [public_mon(state.gen, m) for m in opp.mons.values()]
    mons += [public_mon(state.gen, m) for m in opp.preview]
    view = SideView(_side_order(state.gen, mons), _conditions(state, opp.id), opp.team_size, opp.tera_used)
    opp.view_cache = (key, view)
    return view


# -- live: a poke-env battle ---------------------------------------------------------------
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
    item, ability, tera = _gen_blank(gen, to_id(entry.get("item", "")), to_id(entry.get("baseAbility", "")), tera)
    view = PokemonView(
        name=name, species=species, level=level, hp=hp, status=status,
        active=bool(entry.get("active")), revealed=tracked is not None and tracked.revealed,
        moves=_pad_moves([norm_move(m) for m in entry.get("moves", [])], True),
        item=item, ability=ability, tera_type=tera,
        terastallized=tracked is not None and tracked.terastallized,
        boosts=_boosts(tracked), volatiles=_volatiles(tracked), types=_types(gen, tracked, species),
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
    # The side itself, reused while none of it changed, as _opp_side does (the cached SideView
    # keeps its Pokémon alive, so their ids in the key cannot be reused).
    key = (tuple(map(id, mons)), tuple(own_side.conditions.items()), own_side.tera_used)
    if own_side.view_cache is None or own_side.view_cache[0] != key:
        own_side.view_cache = (key, SideView(_side_order(gen, mons), _conditions(state, side), len(mons),
                                             own_side.tera_used))
    own = own_side.view_cache[1]
    view = BattleView(
        gen=gen, format=battle.format or "", side=side, turn=state.turn, own=own,
        opp=_opp_side(state, side), weather=state.weather, fields=tuple(sorted(state.fields)),
        force_switch=bool(any(request.get("forceSwitch") or [])), can_tera=False,
        legal=(False,) * actions.N_ACTIONS,
    )
    legal = tuple(bool(x) for x in actions.legal_from_battle(battle, view))
    return replace(view, legal=legal, can_tera=any(legal[actions.TERA_OFFSET :]))


# -- usage statistics: what an unrevealed own field most likely was ---------------------------
STATS_DIR = Path(__file__).resolve().parent / "data" / "stats"
STATS_FILES = {"gen1ou": "gen1ou.json", "gen9ou": "gen9ou-1825.moveset.txt"}
_NONE_NAMES = {"nothing": "", "noability": ""}


@dataclass(frozen=True)
class UsageStats:
    """Per species, moves/items/abilities/tera types ranked by usage (ids)."""

    format: str
    by_species: dict[str, dict[str, tuple[str, ...]]] = field(repr=False)

    def ranked(self, species: str, kind: str) -> tuple[str, ...]:
        """Ids of one kind ('moves', 'items', 'abilities', 'tera') for a species, most used first."""
        entry = self.by_species.get(species) or self.by_species.get(species_entry(9, species)[0])
        return entry.get(kind, ()) if entry else ()


def _ranked(weights: dict[str, float]) -> tuple[str, ...]:
    pairs = sorted(((-w, to_id(n)) for n, w in weights.items() if to_id(n) != "other"))
    return tuple(_NONE_NAMES.get(n, n) for _, n in pairs)


def _parse_smogon_json(data: dict) -> dict[str, dict[str, tuple[str, ...]]]:
    # pkmn/smogon data/stats JSON: {"pokemon": {"Tauros": {"moves": {"Body Slam": 0.99, ...}}}}
    out = {}
    for name, entry in data.get("pokemon", {}).items():
        out[to_id(name)] = {
            "moves": _ranked(entry.get("moves", {})),
            "items": _ranked(entry.get("items", {})),
            "abilities": _ranked(entry.get("abilities", {})),
            "tera": _ranked(entry.get("teraTypes", {})),
        }
    return out


_SECTIONS = {"Abilities": "abilities", "Items": "items", "Moves": "moves", "Tera Types": "tera"}


def _parse_moveset_text(text: str) -> dict[str, dict[str, tuple[str, ...]]]:
    # Smogon's boxed moveset report: a +---+ line separates the boxes of one species.
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    species, section, weights = "", "", {}
    rows = [line.strip().strip("|").strip() for line in text.splitlines()]
    for k, row in enumerate(rows):
        if row.startswith("+"):
            if section and species:
                out.setdefault(species, {})[section] = _ranked(weights)
            section, weights = "", {}
            nxt = rows[k + 1] if k + 1 < len(rows) else ""
            after = rows[k + 2] if k + 2 < len(rows) else ""
            if after.startswith("+") and not nxt.startswith("Raw count") and nxt not in _SECTIONS:
                species = to_id(nxt)
        elif row in _SECTIONS:
            section = _SECTIONS[row]
        elif section and row.endswith("%"):
            name, _, pct = row.rpartition(" ")
            try:
                weights[name.strip()] = float(pct.rstrip("%"))
            except ValueError:
                continue
    return out


@cache
def load_usage_stats(fmt: str) -> UsageStats | None:
    """The bundled usage stats of a format (battles/data/stats), or None when there are none."""
    import json

    name = STATS_FILES.get(to_id(fmt))
    if name is None:
        return None
    text = (STATS_DIR / name).read_text(encoding="utf-8")
    table = _parse_smogon_json(json.loads(text)) if name.endswith(".json") else _parse_moveset_text(text)
    return UsageStats(to_id(fmt), table)


# -- from a log ------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Own:
    """What the player knew about one of its own Pokémon for the whole battle."""

    name: str
    species: str
    level: int
    moves: tuple[str, ...]
    item: str
    ability: str
    tera: str
    complete: bool = True  # False: the set may have moves the log never showed
    predicted: frozenset = frozenset()


def _predict(gen: int, own: _Own, stats: UsageStats | None) -> _Own:
    """Fill own fields the log never showed from usage stats (marking them), else leave unknown."""
    predicted = set()
    own.item, own.ability, own.tera = _gen_blank(gen, own.item, own.ability, own.tera)
    abilities = species_entry(gen, own.species)[2]
    if own.ability == UNKNOWN and len(abilities) == 1:
        own.ability = abilities[0]  # the species has only one: not a guess
    if stats is not None:
        if len(own.moves) < 4:
            extra = [m for m in stats.ranked(own.species, "moves") if m and m not in own.moves]
            if extra:
                own.moves = own.moves + tuple(extra[: 4 - len(own.moves)])
                predicted.add("moves")
        for kind, attr, key in (("items", "item", "item"), ("abilities", "ability", "ability"), ("tera", "tera", "tera_type")):
            ranked = stats.ranked(own.species, kind)
            if getattr(own, attr) == UNKNOWN and ranked:
                setattr(own, attr, ranked[0])
                predicted.add(key)
    own.complete = len(own.moves) >= 4
    own.predicted = frozenset(predicted)
    return own


def _own_from_team(gen: int, team: list[dict]) -> dict[str, _Own]:
    out = {}
    for entry in team:
        name = _team_entry_name(entry)
        if not name:
            raise ValueError(f"team entry without a name or species: {entry!r}")
        item, ability, tera = _gen_blank(
            gen, to_id(entry.get("item") or ""), to_id(entry.get("ability") or ""), to_id(entry.get("teraType") or "")
        )
        moves = tuple(dict.fromkeys(norm_move(to_id(m)) for m in entry.get("moves", []) if m))
        out[name] = _Own(name, to_id(entry.get("species") or name), int(entry.get("level") or 100), moves, item, ability, tera)
    return out


def _own_from_log(gen: int, state: BattleState, side: str, chosen: dict[str, list[str]], stats) -> dict[str, _Own]:
    own_side = state.sides[side]
    out = {}
    for mon in list(own_side.mons.values()) + own_side.preview:
        name = mon.name or "#" + to_id(mon.species)
        moves = tuple(dict.fromkeys([norm_move(m) for m in mon.moves] + chosen.get(mon.name, [])))[:4]
        tera = mon.tera if mon.terastallized else UNKNOWN
        own = _Own(name, to_id(mon.species), mon.level, moves, mon.first_item, mon.first_ability, tera)
        out[name] = _predict(gen, own, stats if stats else None)
    return out


def _team_entry_name(entry: dict) -> str:
    return entry.get("name") or entry.get("species") or ""


def _apply_team_choice(order: list[str], choice: str) -> list[str]:
    picks = [int(x) - 1 for x in choice.split(" ", 1)[1].replace(",", " ").split() if x.isdigit()]
    picked = [order[p] for p in picks if 0 <= p < len(order)]
    return picked + [n for n in order if n not in picked]


@dataclass(slots=True)
class _Dyn:
    """An own Pokémon's public, changing state at one moment of the log."""

    species: str
    level: int
    hp: float
    status: str
    active: bool
    revealed: bool
    boosts: tuple[int, ...]
    volatiles: frozenset
    types: tuple[str, ...] | None
    item: str
    terastallized: bool
    last_move: str
    transform: tuple[str, tuple[str, ...], str] | None  # (target nickname, its moves known now, species)
    pp_used: dict | None = None  # the active Pokémon's PP spent, by move id


@dataclass(slots=True)
class _Snap:
    turn: int
    weather: str
    fields: tuple[str, ...]
    conditions: tuple[tuple[str, int], ...]
    tera_used: bool
    team_size: int
    tera_allowed: bool
    opp: SideView
    dyn: dict[str, _Dyn]  # by own nickname


def _dyn(m: Mon) -> _Dyn:
    """The Pokémon's _Dyn now; shared between snapshots while it is unchanged (treat as frozen)."""
    cached = m.dyn_cache
    if cached is not None and cached[0] == m.version and m.transformed is None:
        return cached[1]
    transform = None
    if m.transformed is not None:
        target, used = m.transformed
        moves = tuple(dict.fromkeys([norm_move(x) for x in target.moves] + list(used)))
        transform = (target.name, moves, to_id(target.species))
    pp = dict(m.transformed[1] if m.transformed is not None else m.pp_used) if m.active else None
    d = _Dyn(to_id(m.species), m.level, m.hp, m.status, m.active, m.revealed, _boosts(m), frozenset(m.volatiles),
             m.types, m.item, m.terastallized, m.last_move, transform, pp)
    m.dyn_cache = (m.version, d)
    return d


def _snapshot(state: BattleState, side: str) -> _Snap:
    own = state.sides[side]
    return _Snap(
        state.turn, state.weather, tuple(sorted(state.fields)), _conditions(state, side), own.tera_used,
        own.team_size, state.gen == 9 and not state.tera_clause, _opp_side(state, side),
        {name: _dyn(m) for name, m in own.mons.items()},
    )


def _backfill_bench(snap: _Snap, point: actions.Point, entries: dict, abilities: dict[str, str]) -> None:
    """A benched own Pokémon's HP and status as its next entry shows them.

    The player sees its bench in its request; a spectator only when it comes back. Nothing
    shown changes a benched Pokémon, but Regenerator and Natural Cure act silently on
    leaving: when it never comes back, their effect is estimated (HP to within 1%).
    """
    for name, d in snap.dyn.items():
        if d.active or not d.revealed or d.status == "fnt":
            continue
        later = next((e for e in entries.get((point.side, name), ()) if e[0] >= point.index), None)
        hp, status = d.hp, d.status
        if later is not None:
            hp, status = later[1], later[2]
        else:
            if abilities.get(name) == "regenerator":
                hp = min(100, math.ceil(round(hp * 100) + 100 / 3 - 0.5)) / 100
            if abilities.get(name) == "naturalcure":
                status = ""
        if (hp, status) != (d.hp, d.status):  # _Dyn objects are shared between snapshots: copy
            snap.dyn[name] = replace(d, hp=hp, status=status)


def _own_view(gen: int, own: _Own, d: _Dyn | None, target_sets: dict[str, tuple[str, ...]]) -> PokemonView:
    if d is None:  # never on the field: full HP, no status, as the team was built
        d = _Dyn(own.species, own.level, 1.0, "", False, False, (0,) * len(STATS), frozenset(), None, UNKNOWN,
                 False, "", None)
    predicted = own.predicted
    if d.item != UNKNOWN:
        predicted = predicted - {"item"}
    moves = _pad_moves(list(own.moves), own.complete)
    if d.transform is not None:  # it fights with its target's moves (the request shows them)
        target, seen, _ = d.transform
        if target in target_sets:
            moves = _pad_moves(list(target_sets[target]), True)
        else:
            seen = list(seen) + list(target_sets.get(f"{own.name}>{target}", ()))
            moves = _pad_moves(seen, len(set(seen)) >= 4)
    return PokemonView(
        name=own.name, species=d.species, level=d.level, hp=d.hp, status=d.status, active=d.active,
        revealed=d.revealed, moves=moves, item=own.item if d.item == UNKNOWN else _gen_blank(gen, d.item, "", "")[0],
        ability=forme_ability(d.species) or own.ability, tera_type=own.tera, terastallized=d.terastallized, boosts=d.boosts,
        volatiles=tuple(sorted(v for v in d.volatiles if v in TRACKED_VOLATILES)),
        types=_types_of(gen, d.types, d.species), predicted=tuple(sorted(predicted)),
    )


def _compose(gen: int, fmt: str, point: actions.Point, snap: _Snap, known: dict[str, _Own],
             target_sets: dict[str, tuple[str, ...]], memo: dict) -> tuple[BattleView, actions.LogHints]:
    mons = []
    for own in known.values():  # a _Dyn is shared while its Pokémon is unchanged: so is its view
        d = snap.dyn.get(own.name)
        hit = memo.get((own.name, id(d)))
        if hit is None or hit[0] is not d:
            hit = (d, _own_view(gen, own, d, target_sets))
            memo[(own.name, id(d))] = hit
        mons.append(hit[1])
    own = SideView(_side_order(gen, mons), snap.conditions, snap.team_size, snap.tera_used)
    view = BattleView(
        gen=gen, format=fmt, side=point.side, turn=snap.turn, own=own, opp=snap.opp, weather=snap.weather,
        fields=snap.fields, force_switch=point.force_switch, can_tera=False, legal=(False,) * actions.N_ACTIONS,
    )
    active = own.pokemon[0] if own.pokemon else None
    d = snap.dyn.get(active.name) if active is not None else None
    tera_allowed = snap.tera_allowed
    if d is not None and d.transform is not None and species_entry(gen, d.transform[2])[0] in ("ogerpon", "terapagos"):
        tera_allowed = False  # Showdown: a Pokémon transformed into these cannot terastallize
    hints = actions.LogHints(
        locked=point.move if point.locked else "",
        recharge=point.cant == "recharge",
        struggle=point.move == "struggle",
        volatiles=d.volatiles if d else frozenset(),
        last_move=d.last_move if d else "",
        # A guessed item must not decide legality (a predicted Choice Scarf would lock the mask).
        item=active.item if active is not None and "item" not in active.predicted else UNKNOWN,
        tera_allowed=tera_allowed,
        pp_used=d.pp_used if d else None,
        pp_cap=5 if d and d.transform is not None else 0,
    )
    return view, hints


def views_from_log(
    replay: dict,
    side: str,
    choices: list[str] | None = None,
    team: list[dict] | None = None,
    stats: UsageStats | None | bool = None,
) -> list[Decision]:
    """All decisions of `side` ('p1'/'p2') in a singles replay, as that player knew them.

    `choices` (our input log's choices for this side, without the '>p1 ' prefix) and `team`
    (the side's team in team order, as dicts) make actions and own-team fields exact;
    `stats` is a UsageStats, None for the format's bundled stats, or False to never predict.
    """
    return decisions_from_log(replay, (side,), {side: choices}, {side: team}, stats)[side]


def decisions_from_log(
    replay: dict,
    sides: tuple[str, ...] = ("p1", "p2"),
    choices: dict[str, list[str] | None] | None = None,
    teams: dict[str, list[dict] | None] | None = None,
    stats: UsageStats | None | bool = None,
    notes: dict[str, int] | None = None,
) -> dict[str, list[Decision]]:
    """Decisions of several sides from one pass over a log (see views_from_log).

    `notes`, when given, counts what was approximated or could not be paired:
    'mask_fixup', 'choice_mismatch', 'log_has_more_decisions', 'choices_left_over'.
    """
    for s in sides:
        if s not in ("p1", "p2"):
            raise ValueError(f"side must be 'p1' or 'p2', got {s!r}")
    if not isinstance(replay, dict) or "log" not in replay:
        raise ValueError(f"replay {str(replay)[:80]!r} has no 'log'; expected a replay JSON dict")
    notes = notes if notes is not None else {}
    choices, teams = choices or {}, teams or {}
    fmt = to_id(replay.get("formatid") or replay.get("format") or "")
    events = list(iter_events(replay["log"]))
    for ev in events:
        if ev.kind == "gametype" and ev.arg(0) != "singles":
            raise ValueError(f"replay {replay.get('id', '?')!r} is a {ev.arg(0)} battle; only singles are supported")
    if stats is None:
        stats = load_usage_stats(fmt)
    orders, picks = {}, {}
    for s in sides:
        orders[s], picks[s] = _split_choices(choices.get(s) or [], teams.get(s))
    points = [p for p in actions.find_decisions(events, {s: o for s, o in orders.items() if o}) if p.side in sides]
    state, snaps, entries = _replay_log(events, points, sides)
    out = {}
    for s in sides:
        mine = [p for p in points if p.side == s]
        paired, reason = actions.align_choices(mine, picks[s]) if choices.get(s) is not None else ([-1] * len(mine), "")
        if reason:
            notes[reason] = notes.get(reason, 0) + 1
        chosen = _chosen_moves(mine, paired, picks[s], snaps)
        gen = state.gen
        known = _own_from_team(gen, teams[s]) if teams.get(s) else _own_from_log(gen, state, s, chosen, stats)
        abilities = {name: own.ability for name, own in known.items()}
        # What a transformed own Pokémon fights with: the opposing team's exact sets when we
        # have them, else the moves it was seen or recorded choosing as its target.
        other_team = teams.get(actions.other(s))
        target_sets = {n: o.moves for n, o in _own_from_team(gen, other_team).items()} if other_team else {}
        target_sets.update({k: tuple(v) for k, v in chosen.items() if ">" in k and k not in target_sets})
        decisions, memo = [], {}
        for point, k in zip(mine, paired, strict=True):
            snap = snaps[id(point)]
            _backfill_bench(snap, point, entries, abilities)
            choice = picks[s][k] if k >= 0 else None
            decisions.append(_decision(gen, fmt, point, snap, known, target_sets, choice, k, notes, memo))
        out[s] = decisions
    return out


def _split_choices(choices: list[str], team: list[dict] | None) -> tuple[list[str], list[str]]:
    """(team order after any team-preview choice, the remaining choices in order)."""
    order = [_team_entry_name(e) for e in team] if team else []
    picks = []
    for choice in choices:
        if choice.startswith("team "):
            order = _apply_team_choice(order, choice) if order else order
        else:
            picks.append(choice)
    return order, picks


def _replay_log(events, points, sides):
    """Run the tracker over the log, snapshotting each decision point's side on the way.

    Also notes every own entry (switch) with its HP and status, for _backfill_bench.
    """
    state = BattleState()
    todo = sorted(points, key=lambda p: p.index)
    snaps: dict[int, _Snap] = {}
    entries: dict[tuple[str, str], list[tuple[int, float, str]]] = {}
    j = 0
    for i, ev in enumerate(events):
        while j < len(todo) and todo[j].index == i:
            snaps[id(todo[j])] = _snapshot(state, todo[j].side)
            j += 1
        state.apply(ev)
        if ev.kind in ("switch", "drag") and ev.arg(0)[:2] in sides:
            side_id, name = parse_ident(ev.arg(0))
            mon = state.sides[side_id].mons.get(name)
            if mon is not None:
                entries.setdefault((side_id, name), []).append((i, mon.hp, mon.status))
    for point in todo[j:]:
        snaps[id(point)] = _snapshot(state, point.side)
    return state, snaps, entries


def _chosen_moves(points, paired, picks, snaps) -> dict[str, list[str]]:
    """Moves each own Pokémon was recorded choosing (keyed 'Name>Target' while transformed)."""
    chosen: dict[str, list[str]] = {}
    for point, k in zip(points, paired, strict=True):
        verb, _, rest = picks[k].partition(" ") if k >= 0 else ("", "", "")
        active = next(((n, d) for n, d in snaps[id(point)].dyn.items() if d.active), None)
        move = norm_move(to_id(rest.split(" ")[0])) if verb == "move" else ""
        # Pseudo-moves a request may offer (recharge, struggle, gen 1 'fight') are not in a set.
        if active is None or move in ("", "recharge", "struggle", "fight"):
            continue
        name, d = active
        chosen.setdefault(name if d.transform is None else f"{name}>{d.transform[0]}", []).append(move)
    return chosen


def _decision(gen, fmt, point, snap, known, target_sets, choice, k, notes, memo) -> Decision:
    view, hints = _compose(gen, fmt, point, snap, known, target_sets, memo)
    legal = actions.infer_legal(view, hints)
    index = actions.action_from_choice(view, choice, point.order) if choice else -1
    if index < 0:
        index = actions.action_from_log(view, point.move, point.tera, point.switch)
    if index < 0 and not point.switch and legal[0] and actions.pseudo_only(view, hints):
        index = 0  # it stayed in with the lone pseudo-move: whatever the log shows, that was the choice
    if index >= 0 and not legal[index]:
        legal[index] = True  # the player did it, so it was allowed
        notes["mask_fixup"] = notes.get("mask_fixup", 0) + 1
    view = replace(view, legal=tuple(legal), can_tera=any(legal[actions.TERA_OFFSET :]))
    if point.move:
        visible = ("tera+move:" if point.tera else "move:") + point.move
    elif point.switch:
        visible = "switch:" + point.switch
    else:
        visible = "cant:" + point.cant if point.cant else ""
    return Decision(view, actions.finish_action(view, index), choice, visible, k)
