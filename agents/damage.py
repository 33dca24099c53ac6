"""The heuristics' damage estimate, on poke-env objects: what a move does, in its own generation.

    me, them = fighter(active, ours=True, gen=gen), fighter(foe, ours=False, gen=gen)
    frac = damage(me, them, move_facts(move), gen, battle)   # average share of the foe's max HP

Built from the battle's own generation: its type chart (gen 1: Ghost does nothing to Psychic,
Bug and Poison hit each other), stats (ours from the request, the foe's from its base stats
and level, with battles.matchup's stat formula), STAB, accuracy, multi-hit, fixed damage,
recharge and charge turns, self-KO moves (gen 1 Explosion halves the target's Defense), gen-1
critical hits (speed-based), screens and immunity abilities. The players that use it are in
agents/heuristics.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from poke_env.battle import (
    AbstractBattle,
    Effect,
    Move,
    MoveCategory,
    Pokemon,
    PokemonType,
    SideCondition,
    Status,
)
from poke_env.data import GenData

from battles.matchup import (
    AVG_ROLL,
    GUESS_POWER,
    BattleStats,
    acting_stats,
    estimate_stat,
)

HIGH_CRIT = frozenset({"crabhammer", "karatechop", "razorleaf", "razorwind", "skyattack", "slash"})
RECOVERY = frozenset({"recover", "softboiled", "milkdrink", "roost", "slackoff", "moonlight",
                      "morningsun", "synthesis", "shoreup", "healorder", "lunarblessing"})
REACTIVE = frozenset({"counter", "mirrorcoat", "metalburst", "bide", "comeuppance", "endeavor",
                      "finalgambit", "recharge"})  # damage depends on what happens this turn
SEMI_INVULNERABLE = frozenset({"dig", "fly", "bounce", "dive", "phantomforce", "shadowforce"})
FIXED = {"superfang": "half", "ruination": "half", "naturesmadness": "half", "psywave": "psywave"}
# Abilities (gen 3+) that make a Pokémon immune to a move type, or to a status.
ABSORB = {ability: PokemonType[t] for t, names in {
    "GROUND": "levitate eartheater", "FIRE": "flashfire wellbakedbody",
    "WATER": "waterabsorb stormdrain dryskin", "ELECTRIC": "voltabsorb lightningrod motordrive",
    "GRASS": "sapsipper"}.items() for ability in names.split()}


# -- moves ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MoveFacts:
    """What the heuristics need from one move, read once per (generation, move id)."""

    id: str
    power: float
    type: PokemonType
    physical: bool
    damaging: bool  # False for status moves and for REACTIVE ones
    accuracy: float
    hits: float
    fixed: str | int | None  # "level", "half" (Super Fang), "psywave", an HP amount, or None
    ignore_immunity: bool
    priority: int = 0
    recharge: bool = False
    charge: float = 1.0  # share of the value kept when the move spends a turn charging
    self_ko: bool = False
    recoil: float = 0.0
    drain: float = 0.0
    status: str | None = None  # the status a status move inflicts
    secondary: tuple[tuple[str, float], ...] = ()  # (status, chance) riders of attacks
    self_boosts: tuple[tuple[str, int], ...] = ()
    volatile: str | None = None
    heal: float = 0.0
    powder: bool = False


_FACTS: dict[tuple[int, str], MoveFacts] = {}
_GUESSES: dict[tuple[int, PokemonType, bool], MoveFacts] = {}


def move_facts(move: Move) -> MoveFacts:
    """The cached MoveFacts of a poke-env Move (from its own generation's data)."""
    key = (move.gen, move.id)
    facts = _FACTS.get(key)
    if facts is None:
        facts = _FACTS[key] = _read_facts(move)
    return facts


def _read_facts(move: Move) -> MoveFacts:
    mid = move.id
    try:
        entry = move.entry
        accuracy, hits, priority, heal = move.accuracy, move.expected_hits, move.priority, move.heal
        category = move.category
    except (ValueError, AssertionError, KeyError):  # unknown to the bundled dex: harmless
        return MoveFacts(mid, 0.0, PokemonType.THREE_QUESTION_MARKS, False, False, 1.0, 1.0,
                         None, True)
    damaging = category != MoveCategory.STATUS and mid not in REACTIVE
    fixed = FIXED.get(mid, entry.get("damage") or None)
    power = float(entry.get("basePower") or 0)
    if damaging and fixed is None and power <= 1:
        power = 60.0  # weight- or speed-based power (Low Kick, Gyro Ball...): a middling guess
    flags = entry.get("flags") or {}
    riders = entry.get("secondaries") or ([entry["secondary"]] if entry.get("secondary") else [])
    boosts = entry.get("boosts") if entry.get("target") == "self" else None
    ignore = entry.get("ignoreImmunity")
    # two-turn moves; the semi-invulnerable ones are out of reach during the first
    charge = 0.6 if mid in SEMI_INVULNERABLE else 0.5 if "charge" in flags else 1.0
    return MoveFacts(
        id=mid,
        power=power if damaging else 0.0,
        type=PokemonType.from_name(entry.get("type", "???")),
        physical=category == MoveCategory.PHYSICAL,
        damaging=damaging,
        accuracy=float(accuracy),
        hits=float(hits),
        fixed=fixed,
        # Showdown skips type immunity for status moves unless the move says otherwise
        ignore_immunity=(category == MoveCategory.STATUS) if ignore is None else bool(ignore),
        priority=int(priority),
        recharge="recharge" in flags,
        charge=charge,
        self_ko=bool(entry.get("selfdestruct")) or mid in ("memento", "healingwish"),
        recoil=(entry["recoil"][0] / entry["recoil"][1]) if entry.get("recoil") else 0.0,
        drain=(entry["drain"][0] / entry["drain"][1]) if entry.get("drain") else 0.0,
        status=entry.get("status") if category == MoveCategory.STATUS else None,
        secondary=tuple((r["status"], r.get("chance", 100) / 100)
                        for r in riders if r and r.get("status")),
        self_boosts=tuple((boosts or {}).items()),
        volatile=entry.get("volatileStatus"),
        heal=float(heal) if (mid in RECOVERY or heal) and mid != "rest" else 0.0,
        powder=bool(flags.get("powder")),
    )


def stab_guess(gen: int, type_: PokemonType, physical: bool) -> MoveFacts:
    """A stand-in for a foe's unrevealed attack of its own type."""
    if gen <= 3:  # the category follows the type before the physical/special split
        physical = Move._MOVE_CATEGORY_PER_TYPE_PRE_SPLIT.get(type_) != MoveCategory.SPECIAL
    key = (gen, type_, physical)
    if key not in _GUESSES:
        _GUESSES[key] = MoveFacts("stabguess", GUESS_POWER, type_, physical, True, 1.0, 1.0,
                                  None, False)
    return _GUESSES[key]


# -- Pokémon and damage --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Fighter(BattleStats):
    """One Pokémon as the heuristics see it this turn: its stats as they act, HP, types."""

    mon: Pokemon
    ours: bool
    level: int
    types: tuple[PokemonType, ...]
    hp: float  # fraction of max HP
    status: Status | None


def fighter(mon: Pokemon, *, ours: bool, gen: int) -> Fighter:
    """Build a Fighter; our stats come from the request, a foe's are estimated."""
    level = mon.level or 100
    base, names = mon.base_stats, ("atk", "def", "spa", "spd", "spe")
    raw = [(mon.stats.get(n) if ours else None) for n in names]
    raw = [estimate_stat(base[n], level, gen) if r is None else r for n, r in zip(names, raw, strict=True)]
    status = mon.status.name.lower() if mon.status is not None else ""
    stats = acting_stats(raw, [mon.boosts.get(n, 0) for n in names], status, gen)
    if ours and mon.max_hp:
        max_hp = float(mon.max_hp)
    else:  # a foe's HP is a percentage: estimate the real maximum
        max_hp = float(estimate_stat(base["hp"], level, gen, hp=True))
    return Fighter(*stats, max_hp, mon=mon, ours=ours, level=level,
                   types=tuple(t for t in mon.types if t is not None), hp=mon.current_hp_fraction,
                   status=mon.status)


def effectiveness(move_type: PokemonType, target: Fighter, gen: int) -> float:
    """The type multiplier of `move_type` on the target, from that generation's chart."""
    odd = (PokemonType.THREE_QUESTION_MARKS, PokemonType.STELLAR)
    if move_type in odd:
        return 1.0
    chart = GenData.from_gen(gen).type_chart
    mult = 1.0
    for t in target.types:
        if t not in odd:
            mult *= chart[t.name][move_type.name]
    if gen >= 3 and mult:
        mon = target.mon
        ability = mon.ability
        if ability is None and len(mon.possible_abilities or ()) == 1:
            ability = mon.possible_abilities[0]
        if ABSORB.get(ability) == move_type:
            return 0.0
        if move_type == PokemonType.GROUND and mon.item == "airballoon":
            return 0.0
    return mult


def screened(battle: AbstractBattle, target: Fighter, physical: bool, gen: int) -> bool:
    """Whether Reflect (physical) or Light Screen protects the target."""
    effects = target.mon.effects
    if gen == 1:  # gen 1 screens belong to the Pokémon, not the side
        # poke-env knows no Light Screen effect: in gen 1 it is the only start it files as UNKNOWN
        return Effect.REFLECT in effects if physical else Effect.UNKNOWN in effects
    side = battle.side_conditions if target.ours else battle.opponent_side_conditions
    cond = SideCondition.REFLECT if physical else SideCondition.LIGHT_SCREEN
    return cond in side or SideCondition.AURORA_VEIL in side


def damage(att: Fighter, dfd: Fighter, mf: MoveFacts, gen: int, battle: AbstractBattle) -> float:
    """Average damage of one use (accuracy aside) as a fraction of the defender's max HP."""
    if not mf.damaging:
        return 0.0
    eff = effectiveness(mf.type, dfd, gen)
    if eff == 0.0 and not mf.ignore_immunity:
        return 0.0
    if mf.fixed is not None:
        if mf.fixed == "half":
            return dfd.hp / 2
        hp = {"level": att.level, "psywave": 0.75 * att.level}.get(mf.fixed, mf.fixed)
        return float(hp) / dfd.max_hp
    if mf.id == "dreameater" and dfd.status != Status.SLP:
        return 0.0
    a, d = (att.atk, dfd.dfn) if mf.physical else (att.spa, dfd.spd)
    if mf.self_ko and gen == 1:
        d *= 0.5  # gen 1 Explosion and Self-Destruct halve the target's Defense
    base = (2 * att.level / 5 + 2) * mf.power * a / max(d, 1.0) / 50 + 2
    stab = 1.5 if mf.type in att.types else 1.0
    dmg = base * stab * eff * mf.hits * AVG_ROLL
    if gen == 1:  # crits: base Speed / 512 (x8 for high-crit moves), about double damage
        chance = min(att.mon.base_stats["spe"] / 512 * (8 if mf.id in HIGH_CRIT else 1), 255 / 256)
        dmg *= 1 + 0.9 * chance
    if screened(battle, dfd, mf.physical, gen):
        dmg *= 0.5
    return dmg / dfd.max_hp


def accuracy(att: Fighter, dfd: Fighter, mf: MoveFacts) -> float:
    """Chance to hit, with accuracy and evasion stages."""
    stage = att.mon.boosts.get("accuracy", 0) - dfd.mon.boosts.get("evasion", 0)
    return min(1.0, mf.accuracy * ((3 + stage) / 3 if stage >= 0 else 3 / (3 - stage)))


def can_act(f: Fighter, gen: int) -> float:
    """The share of turns a Pokémon gets to act: asleep, frozen or paralysed ones lose some."""
    if f.status == Status.FRZ:
        return 0.0 if gen == 1 else 0.2  # gen 1 freeze never thaws by itself
    return {Status.SLP: 0.25, Status.PAR: 0.75}.get(f.status, 1.0)
