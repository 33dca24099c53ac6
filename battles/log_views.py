"""Every decision of a side rebuilt from a battle's spectator log, as that player knew it.

    decisions = views_from_log(replay, "p1")                 # a human replay, as p1 saw it
    decisions = views_from_log(rec.replay, "p1", choices=rec.choices["p1"], team=rec.teams["p1"])

The tracker (battles.state) runs over the log once, snapshotting each decision point; each
snapshot becomes a BattleView (battles/view.py) with a legal mask inferred from the log
(battles.actions.infer_legal) and the action taken. Own-team fields come from the exact
team when we recorded it, else from what the player revealed in the whole battle, else from
the format's usage statistics (battles/usage.py), else they stay unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from battles import actions
from battles.protocol import (
    STATS,
    UNKNOWN,
    forme_ability,
    iter_events,
    norm_move,
    other_side,
    parse_ident,
    species_entry,
    to_id,
)
from battles.state import BattleState
from battles.tracked import Mon
from battles.usage import UsageTable, bundled_stats
from battles.view import (
    TRACKED_VOLATILES,
    BattleView,
    PokemonView,
    SideView,
    boosts_of,
    gen_blank,
    opp_side,
    pad_moves,
    side_conditions,
    side_order,
    types_of,
)


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


# -- own Pokémon: what the player knew for the whole battle -----------------------------------
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


def _predict(gen: int, own: _Own, stats: UsageTable | None) -> _Own:
    """Fill own fields the log never showed from usage stats (marking them), else leave unknown."""
    predicted = set()
    own.item, own.ability, own.tera = gen_blank(gen, own.item, own.ability, own.tera)
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
        item, ability, tera = gen_blank(
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
    d = _Dyn(to_id(m.species), m.level, m.hp, m.status, m.active, m.revealed, boosts_of(m), frozenset(m.volatiles),
             m.types, m.item, m.terastallized, m.last_move, transform, pp)
    m.dyn_cache = (m.version, d)
    return d


def _snapshot(state: BattleState, side: str) -> _Snap:
    own = state.sides[side]
    return _Snap(
        state.turn, state.weather, tuple(sorted(state.fields)), side_conditions(state, side), own.tera_used,
        own.team_size, state.gen == 9 and not state.tera_clause, opp_side(state, side),
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
    moves = pad_moves(list(own.moves), own.complete)
    if d.transform is not None:  # it fights with its target's moves (the request shows them)
        target, seen, _ = d.transform
        if target in target_sets:
            moves = pad_moves(list(target_sets[target]), True)
        else:
            seen = list(seen) + list(target_sets.get(f"{own.name}>{target}", ()))
            moves = pad_moves(seen, len(set(seen)) >= 4)
    return PokemonView(
        name=own.name, species=d.species, level=d.level, hp=d.hp, status=d.status, active=d.active,
        revealed=d.revealed, moves=moves, item=own.item if d.item == UNKNOWN else gen_blank(gen, d.item, "", "")[0],
        ability=forme_ability(d.species) or own.ability, tera_type=own.tera, terastallized=d.terastallized, boosts=d.boosts,
        volatiles=tuple(sorted(v for v in d.volatiles if v in TRACKED_VOLATILES)),
        types=types_of(gen, d.types, d.species), predicted=tuple(sorted(predicted)),
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
    own = SideView(side_order(gen, mons), snap.conditions, snap.team_size, snap.tera_used)
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
    stats: UsageTable | None | bool = None,
) -> list[Decision]:
    """All decisions of `side` ('p1'/'p2') in a singles replay, as that player knew them.

    `choices` (our input log's choices for this side, without the '>p1 ' prefix) and `team`
    (the side's team in team order, as dicts) make actions and own-team fields exact;
    `stats` is a UsageTable, None for the format's bundled stats, or False to never predict.
    """
    return decisions_from_log(replay, (side,), {side: choices}, {side: team}, stats)[side]


def decisions_from_log(
    replay: dict,
    sides: tuple[str, ...] = ("p1", "p2"),
    choices: dict[str, list[str] | None] | None = None,
    teams: dict[str, list[dict] | None] | None = None,
    stats: UsageTable | None | bool = None,
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
        stats = bundled_stats(fmt)
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
        other_team = teams.get(other_side(s))
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
