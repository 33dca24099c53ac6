"""The 13-slot action space: canonical slots, legal masks, actions read from logs and choices.

    0-3   the active Pokémon's moves, sorted by Showdown id
    4-8   switches to the bench, sorted by base species id (then nickname)
    9-12  the same moves as 0-3, with terastallisation

A spectator log and a live battle give the same index for the same choice because both
order moves and bench the same way (the view lists the own side active-first, then the
bench in canonical order). An action the log cannot show, or a forced one, is -1.

Pure: no poke-env here. Masks and orders of a live poke-env battle are in battles/live.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from battles.protocol import (
    UNKNOWN,
    Event,
    is_status_move,
    max_pp,
    move_flags,
    norm_move,
    parse_ident,
    to_id,
)
from battles.view import BattleView

N_ACTIONS = 13
MOVE_SLOTS = 4
SWITCH_SLOTS = 5
SWITCH_OFFSET = 4
TERA_OFFSET = 9
CHOICE_ITEMS = frozenset({"choiceband", "choicescarf", "choicespecs"})
NO_REPEAT_MOVES = frozenset({"gigatonhammer", "bloodmoon"})
# Pseudo-moves a request may offer instead of the moveset while switching stays allowed
# (gen 1's 'Fight' while asleep, frozen or partially trapped; Struggle). Staying in and
# using it is a real choice against switching, so it takes move slot 0.
PSEUDO_MOVES = frozenset({"fight", "struggle"})
BLOCKING_VOLATILES = {"healblock": "heal", "throatchop": "sound"}  # volatile -> move flag it forbids


def move_slots(view: BattleView) -> tuple[str, ...]:
    """The move ids behind slots 0-3 ('' where the active Pokémon has fewer moves)."""
    moves = view.own.pokemon[0].moves if view.own.pokemon else ()
    return tuple(moves[:MOVE_SLOTS]) + ("",) * (MOVE_SLOTS - len(moves[:MOVE_SLOTS]))


def bench_names(view: BattleView) -> tuple[str, ...]:
    """Nicknames behind switch slots 4-8 ('' where the bench is shorter)."""
    names = tuple(p.name for p in view.own.pokemon[1 : 1 + SWITCH_SLOTS])
    return names + ("",) * (SWITCH_SLOTS - len(names))


def legal_mask(view: BattleView) -> np.ndarray:
    """The view's legal actions as np.bool_[N_ACTIONS]."""
    return np.array(view.legal, dtype=np.bool_)


def describe(view: BattleView, index: int) -> str:
    """A readable name of an action in this view ('move:thunderbolt', 'switch:Starmie', 'none')."""
    if index < 0:
        return "none"
    if index < SWITCH_OFFSET:
        return f"move:{move_slots(view)[index]}"
    if index < TERA_OFFSET:
        return f"switch:{bench_names(view)[index - SWITCH_OFFSET]}"
    return f"tera+move:{move_slots(view)[index - TERA_OFFSET]}"


def move_index(view: BattleView, move_id: str, tera: bool = False) -> int:
    """The slot of a move of the active Pokémon, or -1 when it is not one of its slots."""
    slots = move_slots(view)
    move_id = norm_move(move_id)
    if not move_id or move_id not in slots:
        return -1
    return slots.index(move_id) + (TERA_OFFSET if tera else 0)


def switch_index(view: BattleView, name: str) -> int:
    """The slot of a switch to the bench Pokémon with this nickname, or -1."""
    names = bench_names(view)
    return SWITCH_OFFSET + names.index(name) if name and name in names else -1


def action_from_choice(view: BattleView, choice: str, order: tuple[str, ...] = ()) -> int:
    """The index of an exact input-log choice ('move x', 'move x terastallize', 'switch N').

    `order` is the side's current team order (nicknames), needed to read 'switch N'.
    -1 when the choice has no slot (recharge, struggle, default) or cannot be read.
    """
    verb, _, rest = choice.partition(" ")
    words = rest.split()
    if verb == "move" and words and to_id(words[0]) in PSEUDO_MOVES:
        return 0
    if verb == "move" and words:
        return move_index(view, to_id(words[0]), tera="terastallize" in words[1:])
    if verb == "switch" and words and words[0].isdigit() and order:
        position = int(words[0]) - 1
        return switch_index(view, order[position]) if 0 <= position < len(order) else -1
    return -1


def action_from_log(view: BattleView, move: str, tera: bool, switch: str) -> int:
    """The index of what a spectator saw the side do: a move (maybe with tera) or a switch."""
    if switch:
        return switch_index(view, switch)
    if move == "struggle":
        return 0
    return move_index(view, move, tera) if move else -1


def is_forced(view: BattleView) -> bool:
    """True when the player had no real choice (at most one legal action).

    A log view may not know every own team member (gen 1 has no team preview); a switch to
    one of those could have been legal, so such a decision is not counted as forced.
    """
    if sum(view.legal) > 1:
        return False
    unseen = view.own.team_size - len(view.own.pokemon)
    return not (unseen > 0 and (view.force_switch or any(view.legal[SWITCH_OFFSET:TERA_OFFSET])))


def finish_action(view: BattleView, index: int) -> int:
    """-1 for forced decisions (see is_forced), else the index."""
    return -1 if is_forced(view) else index


# -- legality in a log -------------------------------------------------------------------------
@dataclass(slots=True)
class LogHints:
    """What the log tells about the own active Pokémon's options at a decision."""

    locked: str = ""  # a move the Pokémon was locked into (lockedmove, charging turn)
    recharge: bool = False  # it had to recharge (Hyper Beam): no choice at all
    struggle: bool = False  # it struggled: no move was usable
    volatiles: frozenset = frozenset()
    last_move: str = ""
    item: str = UNKNOWN
    tera_allowed: bool = False
    pp_used: dict | None = None  # move id -> PP spent since the battle began
    pp_cap: int = 0  # every move's PP when not the dex's (5 while transformed)


def pseudo_only(view: BattleView, hints: LogHints) -> bool:
    """True when the request offered only a pseudo-move (see PSEUDO_MOVES) besides switching."""
    if hints.struggle:
        return True
    own = view.own.pokemon
    vol = hints.volatiles
    return bool(own) and view.gen == 1 and (own[0].status in ("frz", "slp") or "partiallytrapped" in vol)


def infer_legal(view: BattleView, hints: LogHints) -> list[bool]:
    """The legal mask of a decision rebuilt from a log: what the request would have allowed.

    Known limits: PP, Imprison, Heal Block and trapping abilities are not inferred; the
    caller marks the observed action legal whatever this says.
    """
    mask = [False] * N_ACTIONS
    own = view.own.pokemon
    if not own:
        return mask
    active = own[0]
    for k, mon in enumerate(own[1 : 1 + SWITCH_SLOTS]):
        mask[SWITCH_OFFSET + k] = mon.status != "fnt" and mon.species != UNKNOWN
    if view.force_switch:
        for i in range(MOVE_SLOTS):
            mask[i] = False
        return mask
    vol = hints.volatiles
    if hints.recharge or "mustrecharge" in vol:
        return [False] * N_ACTIONS
    twoturn = next((v.partition(":")[2] for v in vol if v.startswith("twoturnmove:")), "")
    locked = hints.locked or twoturn
    slots = move_slots(view)
    if locked:
        i = move_index(view, locked)
        mask = [False] * N_ACTIONS
        if i >= 0:
            mask[i] = True
        return mask
    if pseudo_only(view, hints):
        mask[0] = True  # stay in with the lone pseudo-move ('Fight', Struggle); switching still allowed
        return mask
    if "trapped" in vol or "partiallytrapped" in vol and view.gen > 1:
        for k in range(SWITCH_SLOTS):
            mask[SWITCH_OFFSET + k] = False
    only = ""
    if "encore" in vol or hints.item in CHOICE_ITEMS:
        only = hints.last_move if hints.last_move in slots else ""
    for i, move in enumerate(slots):
        ok = bool(move) and move != UNKNOWN
        ok = ok and (not only or move == only)
        ok = ok and "disabled:" + move not in vol
        ok = ok and not (("taunt" in vol or hints.item == "assaultvest") and is_status_move(view.gen, move))
        ok = ok and not (move == hints.last_move and (move in NO_REPEAT_MOVES or "torment" in vol))
        if ok and (vol & BLOCKING_VOLATILES.keys() or "gravity" in view.fields):
            flags = move_flags(view.gen, move)
            ok = not any(v in vol and f in flags for v, f in BLOCKING_VOLATILES.items())
            ok = ok and not ("gravity" in view.fields and "gravity" in flags)
        if ok and hints.pp_used and move in hints.pp_used:
            ok = hints.pp_used[move] < (hints.pp_cap or max_pp(view.gen, move) or 64)
        mask[i] = ok
    if hints.tera_allowed and not view.own.tera_used and active.tera_type not in ("", UNKNOWN):
        for i in range(MOVE_SLOTS):
            mask[TERA_OFFSET + i] = mask[i]
    return mask


# -- decisions in a log -----------------------------------------------------------------------
@dataclass(slots=True)
class Point:
    """A decision found in a log: where its view is taken, and what the log showed the side do."""

    side: str
    index: int  # the view is the state before events[index]
    turn: int
    force_switch: bool
    move: str = ""
    tera: bool = False
    locked: bool = False
    cant: str = ""
    switch: str = ""
    order: tuple[str, ...] = ()  # the side's team order then (known only with a team)


def find_decisions(events: list[Event], orders: dict[str, list[str]] | None = None) -> list[Point]:
    """Every decision point of both sides in a singles log, with the action the log shows.

    Both sides choose at every |turn|. A switch is that turn's choice when it comes before
    any move of the turn; any later switch (after a faint, U-turn, Eject Button, Shed Tail)
    is a decision of its own, seen from the start of its chunk (a blank line opens every
    chunk of the log that follows committed choices). `orders` (team order per side, when
    known) is updated as Showdown does: the incoming Pokémon swaps into the first slot.
    """
    points: list[Point] = []
    open_turn: dict[str, Point] = {}
    acted = {"p1": False, "p2": False}
    turn, chunk_start, moved = 0, 0, False
    orders = orders or {}
    for i, ev in enumerate(events):
        kind = ev.kind
        if kind == "":
            chunk_start = i
        elif kind == "turn":
            turn = int(ev.arg(0)) if ev.arg(0).isdigit() else turn + 1
            open_turn, moved = {}, False
            for s in ("p1", "p2"):
                point = Point(s, i + 1, turn, False, order=tuple(orders.get(s, ())))
                points.append(point)
                open_turn[s] = point
                acted[s] = False
        elif kind == "move":
            s, source = ev.arg(0)[:2], ev.tags.get("from", "")
            moved = moved or not source
            point = open_turn.get(s)
            if point is not None and (not source or source == "lockedmove"):
                point.move, point.locked = to_id(ev.arg(1)), source == "lockedmove"
                acted[s] = True
                del open_turn[s]
        elif kind == "cant":
            s = ev.arg(0)[:2]
            if s in open_turn:
                open_turn.pop(s).cant = ev.arg(1)
                acted[s] = True
        elif kind == "-terastallize" and ev.arg(0)[:2] in open_turn:
            open_turn[ev.arg(0)[:2]].tera = True
        elif kind == "faint":
            open_turn.pop(ev.arg(0)[:2], None)
        elif kind in ("switch", "drag"):
            s, name = parse_ident(ev.arg(0))
            order = orders.get(s)
            if kind == "switch" and turn > 0:
                point = open_turn.get(s)
                if point is not None and not acted[s] and not moved and "from" not in ev.tags:
                    point.switch = name
                    del open_turn[s]
                else:
                    open_turn.pop(s, None)
                    points.append(Point(s, chunk_start, turn, True, switch=name, order=tuple(order or ())))
                acted[s] = True
            if order and name in order:  # Showdown swaps the incoming Pokémon into slot 1
                j = order.index(name)
                order[0], order[j] = order[j], order[0]
    return points


def align_choices(points: list[Point], choices: list[str]) -> tuple[list[int], str]:
    """Pair one side's decision points with its recorded choices, in order.

    Returns the choice index per point (-1 unpaired) and '' or the reason pairing is
    incomplete: a choice contradicting what the log shows, or counts that differ by more
    than the one final decision a battle can end on (a forfeit before choices commit).
    """
    paired = [-1] * len(points)
    for k in range(min(len(points), len(choices))):
        point = points[k]
        verb, _, rest = choices[k].partition(" ")
        if (point.force_switch or point.switch) and verb != "switch":
            return paired, "choice_mismatch"
        if point.move and not point.locked and verb == "move":
            if norm_move(to_id(rest.split(" ")[0])) != norm_move(point.move):
                return paired, "choice_mismatch"
        paired[k] = k
    if len(choices) > len(points):
        return paired, "choices_left_over"
    return paired, "log_has_more_decisions" if len(points) - len(choices) > 1 else ""

