"""Showdown protocol lines to typed events, and the dex facts their handlers need.

    for event in iter_events(replay["log"]):      # chat, timers, |raw|, |split| secrets dropped
        ...

The state those events drive (what a spectator can know) lives in battles/state.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache, lru_cache

UNKNOWN = "<unknown>"  # a value the viewer cannot know yet (an unrevealed item, ability, ...)
STATS = ("atk", "def", "spa", "spd", "spe", "accuracy", "evasion")
STATUSES = ("brn", "par", "slp", "frz", "psn", "tox")

# Message kinds that never change the battle: chat, timers, HTML, joins, hints.
IGNORED = frozenset(
    """c c: chat j J join l L leave n N name raw html uhtml uhtmlchange inactive inactiveoff
    t: badge -message message -hint debug seed title init deinit rated expire noinit
    tempnotify tempnotifyoff askreg request sentchoice bigerror -hitcount -crit
    -supereffective -resisted -miss -notarget -nothing -ohko -center -combine -waiting
    -fieldactivate -zbroken -block -primal -burst hidelines timer unlink tier""".split()
)


@lru_cache(maxsize=65536)
def to_id(name: str) -> str:
    """Showdown's toID: lowercase letters and digits only ("Iron Moth" -> "ironmoth")."""
    return "".join(c for c in name.lower() if c.isalnum() and c.isascii())


@dataclass(slots=True)
class Event:
    """One protocol message: `kind` ('switch', '-damage', ...), positional args, [tags]."""

    kind: str
    args: list[str]
    tags: dict[str, str] = field(default_factory=dict)

    def arg(self, i: int, default: str = "") -> str:
        """The i-th positional argument, or `default` when the line is shorter."""
        return self.args[i] if i < len(self.args) else default


def parse_line(line: str) -> Event | None:
    """One protocol line to an Event; None for text, chat, timers and other noise."""
    if not line.startswith("|"):
        return None
    parts = line.split("|")
    kind = parts[1] if len(parts) > 1 else ""
    if kind in IGNORED:
        return None
    args = parts[2:]
    tags: dict[str, str] = {}
    # Keyword tags ("[from] item: Leftovers", "[of] p1a: X", "[silent]") trail the arguments;
    # a bracket with a space inside ("[Invalid choice] ...") is text, not a tag.
    while args and args[-1].startswith("["):
        end = args[-1].find("]")
        if end < 0 or " " in args[-1][1:end]:
            break
        tag = args.pop()
        tags[tag[1:end]] = tag[end + 1 :].strip()
    while args and args[-1] == "" and kind != "":
        args.pop()
    return Event(kind, args, tags)


def iter_events(log: str | Iterable[str]) -> Iterator[Event]:
    """Events of a spectator log (one string or a list of lines); |split| keeps the public line."""
    lines = log.split("\n") if isinstance(log, str) else log
    drop_secret = False
    for line in lines:
        if drop_secret:  # the line after |split|pN is that player's secret copy
            drop_secret = False
            continue
        if line.startswith("|split|"):
            drop_secret = True
            continue
        event = parse_line(line.rstrip("\r"))
        if event is not None:
            yield event


# -- dex look-ups (the data that ships with poke-env) ---------------------------------------
@cache
def _dex(gen: int) -> tuple[dict, dict]:
    from poke_env.data import GenData

    data = GenData.from_gen(max(1, min(gen, 9)))
    return data.pokedex, data.moves


@lru_cache(maxsize=16384)
def species_entry(gen: int, species: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(base species id, type ids, ability ids) of a species id; unknown species: (id, (), ())."""
    entry = _dex(gen)[0].get(species) or _dex(9)[0].get(species)
    if entry is None:
        return species, (), ()
    base = to_id(entry.get("baseSpecies", species))
    types = tuple(to_id(t) for t in entry.get("types", ()))
    abilities = tuple(sorted({to_id(a) for a in entry.get("abilities", {}).values()}))
    return base, types, abilities


@lru_cache(maxsize=4096)
def forme_ability(species: str) -> str:
    """The ability a battle-only forme always has (Ogerpon-Wellspring-Tera), else ''."""
    entry = _dex(9)[0].get(species)
    if not entry or not entry.get("battleOnly") or len(entry.get("abilities", {})) != 1:
        return ""
    return to_id(next(iter(entry["abilities"].values())))


@lru_cache(maxsize=8192)
def is_status_move(gen: int, move: str) -> bool:
    """True for a status move (what Taunt and Assault Vest forbid)."""
    entry = _dex(gen)[1].get(move)
    return bool(entry) and entry.get("category") == "Status"


@lru_cache(maxsize=8192)
def move_flags(gen: int, move: str) -> frozenset[str]:
    """A move's dex flags ('heal', 'sound', 'gravity', ...)."""
    entry = _dex(gen)[1].get(move)
    return frozenset(entry.get("flags", {})) if entry else frozenset()


@lru_cache(maxsize=8192)
def max_pp(gen: int, move: str) -> int:
    """A move's PP with all PP Ups (what Showdown gives every set); 0 when unknown."""
    entry = _dex(gen)[1].get(move)
    if not entry:
        return 0
    pp = int(entry.get("pp", 0))
    return pp if entry.get("noPPBoosts") else pp * 8 // 5


def norm_move(move_id: str) -> str:
    """A move id as the log names it (requests say 'hiddenpowerice60', 'return102')."""
    if move_id.startswith("hiddenpower"):
        return "hiddenpower"
    return move_id.rstrip("0123456789") if move_id[-1:].isdigit() else move_id


# -- small parsers for argument forms -------------------------------------------------
def parse_ident(ident: str) -> tuple[str, str]:
    """'p1a: Nickname' -> ('p1', 'Nickname'); 'p2: Name' -> ('p2', 'Name')."""
    head, _, name = ident.partition(": ")
    return head[:2], name.strip()


def parse_details(details: str) -> tuple[str, int, str]:
    """'Glimmora, F, L50, shiny, tera:Fire' -> ('Glimmora', 50, 'F')."""
    parts = details.split(", ")
    level, gender = 100, ""
    for part in parts[1:]:
        if part[:1] == "L" and part[1:].isdigit():
            level = int(part[1:])
        elif part in ("M", "F"):
            gender = part
    return parts[0], level, gender


def public_hp(hp: int, maxhp: int, percent: bool = True) -> float:
    """The fraction of HP a spectator sees, computed as Showdown does (pokemon.ts getHealth)."""
    if hp <= 0 or maxhp <= 0:
        return 0.0
    if maxhp == 100 and percent or maxhp == 48 and not percent:
        return hp / maxhp  # already the public form
    if percent:
        pct = math.ceil(100 * hp / maxhp)
        if pct == 100 and hp < maxhp:
            pct = 99
        return pct / 100
    return (math.floor(48 * hp / maxhp) or 1) / 48


def parse_condition(condition: str, percent: bool = True) -> tuple[float, str]:
    """'143/397 par' -> (public HP fraction, 'par'); '0 fnt' -> (0.0, 'fnt')."""
    hp_text, _, status = condition.partition(" ")
    if status == "fnt" or hp_text == "0":
        return 0.0, "fnt"
    num, _, den = hp_text.partition("/")
    if not den.isdigit():
        den = "".join(c for c in den if c.isdigit())  # '24/48y' colour suffixes
    try:
        frac = public_hp(int(num), int(den), percent) if den else float(num) / 100
    except ValueError:
        frac = 1.0
    return frac, status if status in STATUSES else ""


def strip_prefix(effect: str) -> tuple[str, str]:
    """'move: Stealth Rock' -> ('move', 'Stealth Rock'); 'Spikes' -> ('', 'Spikes')."""
    head, sep, rest = effect.partition(": ")
    if sep and head in ("move", "ability", "item", "pokemon"):
        return head, rest
    return "", effect


def other_side(side: str) -> str:
    """The opposing side id ('p1' <-> 'p2')."""
    return "p2" if side == "p1" else "p1"
