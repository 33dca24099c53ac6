"""What each action would do: damage, knock-outs, status and one-on-one match-ups, per slot.

    glob, per_action = action_features(view)   # len(GLOBAL) floats, N_ACTIONS x len(ACTION) floats

A policy that must learn from species and move embeddings alone what a move does to the
foe in front of it needs far more data than exists here; the heuristics it learns from
compute exactly that. These features give every action slot the same estimate, read from
the BattleView only (so a live battle and its replay agree), with the dex data that ships
with poke-env: base stats (levels and boosts applied; gen 1-2 stats assume max DVs and
stat experience, gen 3+ 31 IVs and 84 EVs, what the bundled team sets carry), the
generation's type chart, STAB, accuracy, multi-hit, fixed damage, charge and recharge
turns, gen 1 critical hits. An opponent's unrevealed attacks are guessed as 80-power
moves of its own types. Damage is in fractions of the target's maximum HP.

Move slots (0-3, and 9-12 with tera): expected damage dealt (accuracy in, capped at the
foe's HP), whether it likely knocks out, raw damage, type effectiveness, accuracy, the
worth of the status it would inflict (0 where it cannot land), the HP a healing move
would restore, priority. Switch slots (4-8): that bench Pokémon's best expected damage on
the foe and whether it knocks out, the foe's threat to it, who is faster, its HP, the
one-on-one played out with average damage after taking the foe's hit on entry, whether it
can act (asleep, frozen), and a switch marker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

from battles.actions import MOVE_SLOTS, N_ACTIONS, SWITCH_OFFSET, SWITCH_SLOTS, TERA_OFFSET
from battles.protocol import UNKNOWN, _dex
from battles.view import BattleView, PokemonView

ACTION = ("dealt", "ko", "raw", "effectiveness", "accuracy", "status_worth", "heal", "priority")
GLOBAL = ("threat_on_active", "active_faster", "active_duel", "active_best", "foe_hp",
          "foe_known_moves/4")
N_ACTION = len(ACTION)
N_GLOBAL = len(GLOBAL)

MIN_ROLL = 0.92  # lowest damage roll / average roll (gen 1: 217/236; later gens 85/92.5)
AVG_ROLL = 0.925
GUESS_POWER = 80.0  # an unrevealed attack of the foe's own type, for its threat
PHYSICAL_TYPES = frozenset({"normal", "fighting", "flying", "poison", "ground", "rock", "bug",
                            "ghost", "steel"})  # gens 1-3: the category follows the type
STATUS_WORTH = {"slp": 1.0, "frz": 1.0, "par": 0.6, "tox": 0.4, "psn": 0.25, "brn": 0.4}
_STAT_INDEX = {"atk": 0, "def": 1, "spa": 2, "spd": 3, "spe": 4, "accuracy": 5, "evasion": 6}


@dataclass(frozen=True, slots=True)
class MoveInfo:
    """What the estimate needs of one move in one generation."""

    type: str
    power: float
    physical: bool
    damaging: bool
    accuracy: float
    hits: float
    fixed: str | int | None  # 'level', 'half', 'ohko', an HP amount, or None
    priority: int
    charge: float
    recharge: bool
    self_ko: bool
    status: str | None  # inflicted by a status move
    ignore_immunity: bool
    heal: bool
    high_crit: bool


@lru_cache(maxsize=8192)
def move_info(gen: int, move: str) -> MoveInfo | None:
    """The MoveInfo of a move id, None when the dex does not know it."""
    entry = _dex(gen)[1].get(move)
    if entry is None or move == UNKNOWN:
        return None
    category = entry.get("category", "Status")
    mtype = entry.get("type", "???").lower()
    damaging = category != "Status" and "damageCallback" not in entry or move in (
        "seismictoss", "nightshade", "superfang", "dragonrage", "sonicboom", "psywave")
    fixed = entry.get("damage")
    if move == "superfang":
        fixed = "half"
    elif move == "psywave":
        fixed = "psywave"
    elif entry.get("ohko"):
        fixed = "ohko"
    power = float(entry.get("basePower") or 0)
    if damaging and fixed is None and power <= 1:
        power = 60.0  # weight- or speed-based power: a middling guess
    hits = entry.get("multihit")
    if isinstance(hits, list):
        hits = 3.0 if gen <= 4 else 3.1
    flags = entry.get("flags") or {}
    ignore = entry.get("ignoreImmunity")
    accuracy = entry.get("accuracy", 100)
    return MoveInfo(
        type=mtype, power=power if damaging else 0.0,
        physical=(mtype in PHYSICAL_TYPES) if gen <= 3 else category == "Physical",
        damaging=damaging, accuracy=1.0 if accuracy is True else float(accuracy) / 100,
        hits=float(hits or 1), fixed=fixed, priority=int(entry.get("priority", 0)),
        charge=0.5 if "charge" in flags else 1.0, recharge="recharge" in flags,
        self_ko=bool(entry.get("selfdestruct")),
        status=entry.get("status") if category == "Status" else None,
        ignore_immunity=(category == "Status") if ignore is None else bool(ignore),
        heal=bool(entry.get("heal")) or move in ("rest", "softboiled", "recover"),
        high_crit=int(entry.get("critRatio", 1)) > 1,
    )


@cache
def _guess(mtype: str, physical: bool) -> MoveInfo:
    return MoveInfo(mtype, GUESS_POWER, physical, True, 1.0, 1.0, None, 0, 1.0, False, False,
                    None, False, False, False)


@lru_cache(maxsize=4096)
def _base(gen: int, species: str) -> tuple[int, ...] | None:
    entry = _dex(gen)[0].get(species) or _dex(9)[0].get(species)
    if entry is None:
        return None
    b = entry["baseStats"]
    return (b["hp"], b["atk"], b["def"], b["spa"], b["spd"], b["spe"])


def estimate_stat(base: int, level: int, gen: int, *, hp: bool = False) -> int:
    """A stat from its base and level: gen 1-2 max DVs and stat exp, gen 3+ 31 IVs and 84 EVs."""
    core = ((base + 15) * 2 + 63) * level // 100 if gen <= 2 else (2 * base + 52) * level // 100
    return core + level + 10 if hp else core + 5


def stage_multiplier(stage: int) -> float:
    """The multiplier of a stat boost stage (-6..6) on Attack, Defense, Sp. Atk, Sp. Def, Speed."""
    return (2 + stage) / 2 if stage >= 0 else 2 / (2 - stage)


def acting_stats(stats: Sequence[float], stages: Sequence[int], status: str, gen: int) -> list[float]:
    """Attack, Defense, Sp. Atk, Sp. Def and Speed as they act this turn: boost stages applied,
    paralysis slowing (x0.25 through gen 6, x0.5 after), a burn halving Attack."""
    out = [s * stage_multiplier(b) for s, b in zip(stats[:5], stages[:5], strict=True)]
    if status == "par":
        out[4] *= 0.25 if gen <= 6 else 0.5
    if status == "brn":
        out[0] *= 0.5
    return out


@dataclass(frozen=True, slots=True)
class BattleStats:
    """A Pokémon's stats as they act this turn (see acting_stats) and its maximum HP."""

    atk: float
    dfn: float
    spa: float
    spd: float
    spe: float
    max_hp: float


@dataclass(frozen=True, slots=True)
class _Fighter(BattleStats):
    mon: PokemonView
    types: tuple[str, ...]
    base_spe: int


@lru_cache(maxsize=16384)
def _fighter(gen: int, mon: PokemonView) -> _Fighter | None:
    base = _base(gen, mon.species)
    if base is None:
        return None
    level = mon.level or 100
    stats = acting_stats([estimate_stat(b, level, gen) for b in base[1:]], mon.boosts, mon.status, gen)
    types = (mon.tera_type,) if mon.terastallized and mon.tera_type else mon.types
    return _Fighter(*stats, float(estimate_stat(base[0], level, gen, hp=True)), mon=mon, types=tuple(types),
                    base_spe=base[5])


def _effectiveness(gen: int, mtype: str, target: _Fighter) -> float:
    chart = _chart(gen)
    mult = 1.0
    for t in target.types:
        mult *= chart.get((t, mtype), 1.0)
    return mult


@cache
def _chart(gen: int) -> dict[tuple[str, str], float]:
    from poke_env.data import GenData

    table = GenData.from_gen(max(1, min(gen, 9))).type_chart
    return {(d.lower(), a.lower()): float(m) for d, row in table.items() for a, m in row.items()}


def damage(gen: int, att: _Fighter, dfd: _Fighter, mv: MoveInfo) -> float:
    """Average damage of one use, accuracy aside, as a fraction of the defender's max HP."""
    if not mv.damaging:
        return 0.0
    eff = _effectiveness(gen, mv.type, dfd)
    if eff == 0.0 and not mv.ignore_immunity:
        return 0.0
    if mv.fixed is not None:
        if mv.fixed == "half":
            return dfd.mon.hp / 2
        if mv.fixed == "ohko":
            return 0.0 if (gen == 1 and att.spe < dfd.spe) else dfd.mon.hp
        level = att.mon.level or 100
        hp = {"level": level, "psywave": 0.75 * level}.get(mv.fixed, mv.fixed)
        return float(hp) / dfd.max_hp
    a, d = (att.atk, dfd.dfn) if mv.physical else (att.spa, dfd.spd)
    if mv.self_ko and gen == 1:
        d *= 0.5
    level = att.mon.level or 100
    dmg = ((2 * level / 5 + 2) * mv.power * a / max(d, 1.0) / 50 + 2)
    dmg *= (1.5 if mv.type in att.types else 1.0) * eff * mv.hits * AVG_ROLL
    if gen == 1:
        chance = min(att.base_spe / 512 * (8 if mv.high_crit else 1), 255 / 256)
        dmg *= 1 + 0.9 * chance
    return dmg / dfd.max_hp



def _moves_of(gen: int, mon: PokemonView, fighter: _Fighter, guess: bool) -> list[MoveInfo]:
    infos = []
    for m in mon.moves:
        info = move_info(gen, m)
        if info is not None:
            infos.append(info)
    known = sum(1 for m in mon.moves if m != UNKNOWN)
    if guess and known < 4:
        physical = fighter.atk >= fighter.spa
        infos += [_guess(t, (t in PHYSICAL_TYPES) if gen <= 3 else physical) for t in fighter.types]
    return infos


def _accuracy(att: _Fighter, dfd: _Fighter, mv: MoveInfo) -> float:
    stage = att.mon.boosts[5] - dfd.mon.boosts[6]
    return min(1.0, mv.accuracy * ((3 + stage) / 3 if stage >= 0 else 3 / (3 - stage)))


def _can_act(mon: PokemonView, gen: int) -> float:
    if mon.status == "frz":
        return 0.0 if gen == 1 else 0.2
    return {"slp": 0.25, "par": 0.75}.get(mon.status, 1.0)


def _per_turn(gen: int, att: _Fighter, dfd: _Fighter, mv: MoveInfo) -> float:
    v = damage(gen, att, dfd, mv) * _accuracy(att, dfd, mv) * mv.charge
    if mv.recharge and gen > 1:
        v *= 0.5
    return 0.0 if mv.self_ko else v


def best_damage(gen: int, att: _Fighter, dfd: _Fighter, guess: bool) -> float:
    """The attacker's best expected damage per turn on the defender (action chance in)."""
    moves = _moves_of(gen, att.mon, att, guess)
    best = max((_per_turn(gen, att, dfd, mv) for mv in moves), default=0.0)
    return best * _can_act(att.mon, gen)


def duel(hp: float, foe_hp: float, mine: float, theirs: float, faster: bool,
         turns: int = 8) -> tuple[float, float]:
    """Play a one-on-one out with average damage; both HPs when one faints (or after `turns`)."""
    for _ in range(turns):
        if faster:
            foe_hp -= mine
            hp -= theirs if foe_hp > 0.0 else 0.0
        else:
            hp -= theirs
            foe_hp -= mine if hp > 0.0 else 0.0
        if hp <= 0.0 or foe_hp <= 0.0:
            break
    return hp, foe_hp


def _margin(hp: float, foe_hp: float, mine: float, theirs: float, faster: bool) -> float:
    """A one-on-one's result: our HP left minus the foe's, in [-1, 1]."""
    hp, foe_hp = duel(hp, foe_hp, mine, theirs, faster)
    return max(hp, 0.0) - max(foe_hp, 0.0)


def _can_inflict(gen: int, status: str, foe: _Fighter, view: BattleView, mv: MoveInfo) -> bool:
    mon = foe.mon
    if mon.status or "substitute" in mon.volatiles:
        return False
    if not mv.ignore_immunity and _effectiveness(gen, mv.type, foe) == 0.0:
        return False
    types = foe.types
    if status in ("psn", "tox") and ("poison" in types or (gen >= 2 and "steel" in types)):
        return False
    if (status == "brn" and "fire" in types) or (status == "par" and gen >= 6 and "electric" in types):
        return False
    if status == "slp":  # Sleep Clause
        return not any(p.status == "slp" for p in view.opp.pokemon)
    return True


def _move_features(gen: int, me: _Fighter, foe: _Fighter, mv: MoveInfo | None,
                   view: BattleView) -> list[float]:
    if mv is None:
        return [0.0] * N_ACTION
    acc = _accuracy(me, foe, mv)
    raw = damage(gen, me, foe, mv) * mv.charge
    if mv.recharge and gen > 1:
        raw *= 0.5
    foe_hp = foe.mon.hp
    eff = _effectiveness(gen, mv.type, foe) if mv.damaging else 1.0
    eff_f = -1.0 if eff == 0.0 else max(-1.0, min(1.0, math.log2(eff) / 2))
    worth = 0.0
    if mv.status and _can_inflict(gen, mv.status, foe, view, mv):
        worth = STATUS_WORTH.get(mv.status, 0.0) * acc
    ko = raw > 0 and raw * (1.0 if mv.fixed is not None else MIN_ROLL) >= foe_hp
    return [
        acc * min(raw, foe_hp), float(ko) * acc, min(raw, 2.0) / 2, eff_f, acc, worth,
        (1.0 - me.mon.hp) if mv.heal else 0.0, float(mv.priority > 0 and mv.damaging),
    ]


def action_features(view: BattleView) -> tuple[list[float], list[float]]:
    """(GLOBAL features, N_ACTIONS * ACTION features in slot order); zeros where unknown."""
    per_action = [0.0] * (N_ACTIONS * N_ACTION)
    glob = [0.0] * N_GLOBAL
    gen = view.gen
    own, opp = view.own.pokemon, view.opp.pokemon
    foe_view = opp[0] if opp and opp[0].active else None
    if foe_view is None or foe_view.status == "fnt":
        return glob, per_action
    foe = _fighter(gen, foe_view)
    if foe is None:
        return glob, per_action
    glob[4] = foe_view.hp
    glob[5] = sum(1 for m in foe_view.moves if m != UNKNOWN) / 4
    me = _fighter(gen, own[0]) if own and own[0].active and own[0].status != "fnt" else None
    if me is not None:
        threat = best_damage(gen, foe, me, guess=True)
        mine = best_damage(gen, me, foe, guess=False)
        faster = me.spe > foe.spe
        glob[0] = min(threat, 2.0) / 2
        glob[1] = 1.0 if faster else (0.0 if me.spe == foe.spe else -1.0)
        glob[2] = _margin(me.mon.hp, foe_view.hp, mine, threat, faster)
        glob[3] = min(mine, 2.0) / 2
        for slot, move in enumerate(own[0].moves[:MOVE_SLOTS]):
            feats = _move_features(gen, me, foe, move_info(gen, move), view)
            for base in (slot, TERA_OFFSET + slot):
                if view.legal[base]:
                    per_action[base * N_ACTION:(base + 1) * N_ACTION] = feats
    # the foe's expected move hits a Pokémon switching in
    for k, mon in enumerate(own[1:1 + SWITCH_SLOTS]):
        slot = SWITCH_OFFSET + k
        if not view.legal[slot]:
            continue
        ally = _fighter(gen, mon)
        if ally is None:
            continue
        mine = best_damage(gen, ally, foe, guess=False)
        theirs = best_damage(gen, foe, ally, guess=True)
        faster = ally.spe > foe.spe
        entry = 0.0 if view.force_switch else theirs
        hp = mon.hp - entry
        result = _margin(hp, foe_view.hp, mine, theirs, faster) if hp > 0 else -foe_view.hp
        ko = mine > 0 and mine * MIN_ROLL >= foe_view.hp
        per_action[slot * N_ACTION:(slot + 1) * N_ACTION] = [
            min(mine, foe_view.hp), float(ko), min(theirs, 2.0) / 2,
            1.0 if faster else (0.0 if ally.spe == foe.spe else -1.0), mon.hp, result,
            _can_act(mon, gen), 1.0,
        ]
    return glob, per_action
