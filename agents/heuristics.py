"""Heuristic players that know gen 1: DamagePlayer (`bestdamage`) and TacticianPlayer (`tactician`).

Both score every legal order with the damage estimate of agents/damage.py, built from the
battle's own generation (type chart, stats, STAB, accuracy, multi-hit, fixed damage, recharge
and charge turns, self-KO moves, gen-1 critical hits, screens). Values are in "fractions of
the foe's HP": a move worth 0.4 takes 40% on average; a likely KO earns a bonus on top.

DamagePlayer picks the best attack and switches only when it must. TacticianPlayer also
scores status moves (sleep, paralysis, poison, burn, healing, set-up, screens) on the same
scale, and switches when playing the one-on-ones out (`plan`) says a bench Pokémon does
clearly better than the active one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from poke_env.battle import AbstractBattle, Battle, Effect, Pokemon, PokemonType, Status
from poke_env.player import BattleOrder, Player

from agents.damage import (
    Fighter,
    MoveFacts,
    accuracy,
    can_act,
    damage,
    effectiveness,
    fighter,
    move_facts,
    screened,
    stab_guess,
)
from battles.matchup import MIN_ROLL, duel, stage_multiplier

KO_BONUS = 0.5  # a KO also denies the foe its next move and forces a switch
FAINT_COST = 0.5  # material lost with a fainted Pokémon, on top of its HP
STATUS_PROOF = {
    "slp": {"insomnia", "vitalspirit", "sweetveil", "comatose", "purifyingsalt"},
    "par": {"limber", "comatose", "purifyingsalt"},
    "psn": {"immunity", "pastelveil", "comatose", "purifyingsalt"},
    "tox": {"immunity", "pastelveil", "comatose", "purifyingsalt"},
    "brn": {"waterveil", "waterbubble", "thermalexchange", "comatose", "purifyingsalt"},
}


def _alive(team: dict[str, Pokemon]) -> int:
    return sum(1 for m in team.values() if not m.fainted)


# -- one-on-ones ---------------------------------------------------------------------------
@dataclass(slots=True)
class Duelist:
    """One of our Pokémon facing the foe's active one: HP, damage each way, speed, entry hit."""

    mon: Pokemon
    hp: float
    mine: float  # our average damage per turn, in fractions of the foe's HP
    theirs: float  # the foe's, in fractions of ours
    faster: bool
    entry: float = 0.0  # damage taken when switching in on the foe's expected move


def trade(d: Duelist, foe_hp: float) -> tuple[float, float, bool]:
    """A duel's material won (HP dealt minus HP lost, faints counted), the foe's HP left,
    and whether our Pokémon fainted."""
    hp = d.hp - d.entry
    if hp <= 0.0:
        return -(d.hp + FAINT_COST), foe_hp, True
    hp_after, foe_after = duel(hp, foe_hp, d.mine, d.theirs, d.faster)
    fainted = hp_after <= 0.0
    lost = d.hp - max(hp_after, 0.0) + (FAINT_COST if fainted else 0.0)
    dealt = foe_hp - max(foe_after, 0.0) + (FAINT_COST if foe_after <= 0.0 else 0.0)
    return dealt - lost, max(foe_after, 0.0), fainted


def plan(first: Duelist, rest: list[Duelist], foe_hp: float) -> float:
    """Material won if `first` fights the foe and, should it faint, the best of `rest` goes
    on (entering freely after the faint)."""
    value, left, fainted = trade(first, foe_hp)
    if fainted and left > 0.0 and rest:
        value += max(trade(replace(r, entry=0.0), left)[0] for r in rest)
    return value


@dataclass(slots=True)
class Situation:
    """One decision: both active Pokémon, the foe's expected move and its damage on us."""

    battle: Battle
    gen: int
    me: Fighter
    them: Fighter
    threat: float  # the foe's best damage per turn on us (fraction of our HP)
    incoming: MoveFacts | None  # the move giving that threat


# -- players -------------------------------------------------------------------------------
class DamagePlayer(Player):
    """Uses the move with the best expected damage; switches only when forced."""

    # Worth of inflicting a status, in fractions of the foe's HP (attack riders get half).
    STATUS_WORTH = {"slp": 1.3, "frz": 0.9, "par": 0.5, "tox": 0.3, "psn": 0.15, "brn": 0.3}

    def choose_move(self, battle: AbstractBattle) -> BattleOrder:
        """Pick a legal order for this turn."""
        order = self._choose(battle) if isinstance(battle, Battle) else None
        return order if order is not None else self.choose_random_move(battle)

    def _choose(self, battle: Battle) -> BattleOrder | None:
        moves, switches = battle.available_moves, battle.available_switches
        active, foe = battle.active_pokemon, battle.opponent_active_pokemon
        if battle.force_switch or not moves or active is None:
            return self._best_switch(battle, switches) if switches else None
        if len(moves) == 1:  # Struggle, a recharge turn or a locked move: nothing to choose
            return self.create_order(moves[0])
        if foe is None:
            return self.create_order(max(moves, key=lambda m: m.base_power))
        gen = battle.gen
        me, them = fighter(active, ours=True, gen=gen), fighter(foe, ours=False, gen=gen)
        sit = Situation(battle, gen, me, them, *self.threat_move(them, me, battle))
        facts = [move_facts(m) for m in moves]
        values = [self.move_value(f, sit) for f in facts]
        best = max(values)
        # how much a status move beats our best attack: switching must gain more than that
        edge = best - max((v for v, f in zip(values, facts) if f.damaging), default=0.0)
        order = self._maybe_switch(sit, max(edge, 0.0))
        if order is not None:
            return order
        return self.create_order(moves[values.index(best)], mega=battle.can_mega_evolve)

    def _maybe_switch(self, sit: Situation, edge: float) -> BattleOrder | None:
        return None  # DamagePlayer switches only when forced

    # -- scoring ---------------------------------------------------------------------------
    def move_value(self, mf: MoveFacts, sit: Situation) -> float:
        """The value of one of our moves; DamagePlayer values damage only."""
        if mf.id == "counter":
            return self.counter_value(sit)
        return self.attack_value(mf, sit) if mf.damaging else 0.0

    def attack_value(self, mf: MoveFacts, sit: Situation) -> float:
        """Expected share of the foe's HP a damaging move takes, with KO bonus and costs."""
        me, them, gen = sit.me, sit.them, sit.gen
        frac = damage(me, them, mf, gen, sit.battle)
        if frac <= 0.0:
            return 0.0
        acc = accuracy(me, them, mf)
        dealt = min(frac, them.hp)
        ko = frac * (1.0 if mf.fixed is not None else MIN_ROLL) >= them.hp
        value = acc * (dealt + (KO_BONUS if ko else 0.0)) * mf.charge
        if mf.recharge and not (gen == 1 and ko):  # gen 1: no recharge turn after a KO
            value *= 0.5
        if mf.id == "rage" and gen == 1:
            value *= 0.3  # locks the user into Rage for the rest of its stay
        if mf.recoil:
            value -= 0.5 * mf.recoil * dealt * them.max_hp / me.max_hp
        if mf.drain:
            value += 0.5 * mf.drain * min(dealt * them.max_hp / me.max_hp, 1.0 - me.hp)
        if them.status is None:
            for status, chance in mf.secondary:
                value += 0.5 * chance * acc * self.STATUS_WORTH.get(status, 0.0)
        elif them.status == Status.FRZ and mf.type == PokemonType.FIRE:
            value *= 0.3  # would thaw the frozen foe
        if mf.self_ko:
            low = me.hp <= 0.3
            worth_it = ko and them.hp >= me.hp and _alive(sit.battle.opponent_team) > 1
            if _alive(sit.battle.team) <= 1 or not (low or worth_it):
                return -1.0
            value -= 0.5 * me.hp
        if not self._lands(mf, sit):
            value *= 0.1
        return value

    def counter_value(self, sit: Situation) -> float:
        """Counter returns double the damage of the foe's expected hit, if we survive it."""
        inc, me, them = sit.incoming, sit.me, sit.them
        if inc is None or inc.fixed is not None or sit.threat >= me.hp:
            return 0.0
        if sit.gen == 1:
            hit = inc.type in (PokemonType.NORMAL, PokemonType.FIGHTING)
        else:
            hit = inc.physical
        if not hit or (sit.gen > 1 and effectiveness(PokemonType.FIGHTING, them, sit.gen) == 0.0):
            return 0.0  # gen 1 Counter ignores types; later ones fail on Ghosts
        frac = 2 * sit.threat * me.max_hp / them.max_hp
        return min(frac, them.hp) + (KO_BONUS if frac >= them.hp else 0.0)

    def _lands(self, mf: MoveFacts, sit: Situation) -> bool:
        """False when a slower Pokémon will be knocked out before its move comes."""
        if sit.threat < sit.me.hp or mf.priority > 0:
            return True
        return sit.me.spe > sit.them.spe and mf.priority == 0

    def _raw_best(self, att: Fighter, dfd: Fighter, battle: AbstractBattle,
                  moves) -> tuple[float, MoveFacts | None]:
        gen = battle.gen
        best, best_mf = 0.0, None
        for mf in moves:
            if not mf.damaging or mf.self_ko:
                continue
            v = damage(att, dfd, mf, gen, battle) * accuracy(att, dfd, mf) * mf.charge
            if mf.recharge and gen > 1:
                v *= 0.5
            if v > best:
                best, best_mf = v, mf
        return best, best_mf

    def best_attack(self, me: Fighter, them: Fighter, battle: AbstractBattle) -> float:
        """Our best per-turn damage fraction on the foe (accuracy and action chance in)."""
        moves = [move_facts(m) for m in me.mon.moves.values()]
        return self._raw_best(me, them, battle, moves)[0] * can_act(me, battle.gen)

    def threat_move(self, them: Fighter, me: Fighter,
                    battle: AbstractBattle) -> tuple[float, MoveFacts | None]:
        """The foe's best damage per turn on us and its move: revealed moves, else STAB guesses."""
        gen = battle.gen
        known = them.mon.moves
        candidates = [move_facts(m) for m in known.values()]
        if len(known) < 4:
            candidates += [stab_guess(gen, t, them.atk >= them.spa) for t in them.types]
        best, mf = self._raw_best(them, me, battle, candidates)
        return best * can_act(them, gen), mf

    def duelist(self, mon: Pokemon, them: Fighter, battle: AbstractBattle,
                incoming: MoveFacts | None = None) -> Duelist:
        """One of our Pokémon sized up against the foe's active one; with `incoming` (the
        foe's expected move) it switches in and takes that hit first."""
        gen = battle.gen
        me = fighter(mon, ours=True, gen=gen)
        entry = 0.0
        if incoming is not None:
            entry = damage(them, me, incoming, gen, battle) * accuracy(them, me, incoming)
            entry *= can_act(them, gen)
        return Duelist(mon, me.hp, self.best_attack(me, them, battle),
                       self.threat_move(them, me, battle)[0], me.spe > them.spe, entry)

    def _best_switch(self, battle: Battle, switches: list[Pokemon]) -> BattleOrder:
        foe = battle.opponent_active_pokemon
        if foe is None or len(switches) == 1:
            return self.create_order(switches[0])
        them = fighter(foe, ours=False, gen=battle.gen)
        duelists = [self.duelist(m, them, battle) for m in switches]
        scores = [plan(d, duelists[:i] + duelists[i + 1:], them.hp)
                  for i, d in enumerate(duelists)]
        return self.create_order(switches[scores.index(max(scores))])


class TacticianPlayer(DamagePlayer):
    """DamagePlayer plus status moves, healing, safe set-up and switching out of lost match-ups."""

    SWITCH_MARGIN = 0.5  # switching must win this much more material (HP fractions) than staying

    def move_value(self, mf: MoveFacts, sit: Situation) -> float:
        """Damage as in DamagePlayer, and status moves on the same scale."""
        if mf.damaging or mf.id == "counter":
            return super().move_value(mf, sit)
        return self.status_value(mf, sit)

    def status_value(self, mf: MoveFacts, sit: Situation) -> float:
        """The worth of a non-damaging move right now (0 when it would be wasted)."""
        me, them, threat, gen = sit.me, sit.them, sit.threat, sit.gen
        # a turn spent not attacking only pays if we live to use what it bought
        survives = threat < me.hp or (me.spe > them.spe and threat < 2 * me.hp)
        if mf.status:
            if not survives or not self.can_inflict(mf, them, sit.battle):
                return 0.0
            worth = self.STATUS_WORTH.get(mf.status, 0.0)
            if mf.status == "par" and them.spe > me.spe > them.spe * 0.25:
                worth += 0.3  # we move first from now on
            if mf.status in ("psn", "tox") and gen == 1:
                worth *= 0.6  # gen 1 poison is slow, and Toxic resets on a switch
            if mf.status == "brn" and them.atk > them.spa:
                worth += 0.2
            return worth * accuracy(me, them, mf) * (0.3 + 0.7 * them.hp)
        if mf.heal:
            if me.hp >= 0.6:
                return 0.0
            return min(mf.heal, 1.0 - me.hp) * (1.2 if threat < mf.heal else 0.4)
        if mf.id == "rest":
            if me.status == Status.SLP or threat >= 0.9:
                return 0.0
            low = me.hp < 0.4 or (me.status is not None and me.hp < 0.65)
            return (1.0 - me.hp) * 0.7 if low else 0.0
        if mf.self_boosts:
            return self.setup_value(mf, sit)
        if mf.id in ("reflect", "lightscreen"):
            physical = mf.id == "reflect"
            if screened(sit.battle, me, physical, gen) or threat < 0.2 or me.hp < 0.5:
                return 0.0
            their_physical = sit.incoming.physical if sit.incoming else them.atk >= them.spa
            return 0.35 if their_physical == physical else 0.05
        blocked = Effect.SUBSTITUTE in them.mon.effects or not survives
        if mf.volatile == "confusion":
            if blocked or Effect.CONFUSION in them.mon.effects:
                return 0.0
            return 0.15 * accuracy(me, them, mf)
        if mf.volatile == "leechseed":
            if blocked or PokemonType.GRASS in them.types or Effect.LEECH_SEED in them.mon.effects:
                return 0.0
            return 0.25 * accuracy(me, them, mf) * them.hp
        if mf.id == "haze":
            gain = sum(them.mon.boosts.values()) - sum(me.mon.boosts.values())
            return 0.15 * gain if gain >= 2 else 0.0
        return 0.0

    def setup_value(self, mf: MoveFacts, sit: Situation) -> float:
        """Worth of a stat-raising move: only when the foe can barely scratch us."""
        me, them = sit.me, sit.them
        if me.hp < 0.6 or sit.threat >= 0.3:
            return 0.0
        attacks = [f for f in map(move_facts, me.mon.moves.values())
                   if f.damaging and f.fixed is None]
        worth = 0.0
        for stat, amount in mf.self_boosts:
            if amount <= 0 or me.mon.boosts.get(stat, 0) >= 2:
                continue
            if stat in ("atk", "spa") and any(f.physical == (stat == "atk") for f in attacks):
                worth += 0.2 * min(amount, 2)
            elif stat == "spe" and me.spe <= them.spe < me.spe * stage_multiplier(amount):
                worth += 0.35
            elif stat in ("def", "spd"):
                worth += 0.05 * min(amount, 2)
        if self.best_attack(me, them, sit.battle) >= them.hp:
            worth *= 0.3  # knock it out now instead
        return worth

    @staticmethod
    def can_inflict(mf: MoveFacts, them: Fighter, battle: AbstractBattle) -> bool:
        """Whether a status move can land: no status yet, no immunity, no Substitute,
        and the Sleep Clause allows it."""
        gen, mon, status, types = battle.gen, them.mon, mf.status, them.types
        if mon.status is not None or Effect.SUBSTITUTE in mon.effects:
            return False
        if not mf.ignore_immunity and effectiveness(mf.type, them, gen) == 0.0:
            return False
        if status in ("psn", "tox") and (
            PokemonType.POISON in types or (gen >= 2 and PokemonType.STEEL in types)
        ):
            return False
        if (status == "brn" and PokemonType.FIRE in types) or (
            status == "par" and gen >= 6 and PokemonType.ELECTRIC in types
        ):
            return False
        if mf.powder and gen >= 6 and PokemonType.GRASS in types:
            return False
        if gen >= 3 and mon.ability in STATUS_PROOF.get(status, ()):
            return False
        # Sleep Clause: one foe asleep at a time (a foe's own Rest counted too, to be safe)
        return status != "slp" or not any(
            m.status == Status.SLP and not m.fainted for m in battle.opponent_team.values()
        )

    def _maybe_switch(self, sit: Situation, edge: float) -> BattleOrder | None:
        battle, me, them = sit.battle, sit.me, sit.them
        switches = battle.available_switches
        if not switches or battle.trapped:
            return None
        active = Duelist(me.mon, me.hp, self.best_attack(me, them, battle), sit.threat,
                         me.spe > them.spe)
        hp_left, foe_left = duel(active.hp, them.hp, active.mine, active.theirs, active.faster)
        if foe_left <= 0.0 < hp_left:
            return None  # we win this one-on-one: stay
        bench = [self.duelist(m, them, battle, sit.incoming) for m in switches]
        free = [replace(d, entry=0.0) for d in bench]
        stay = plan(active, free, them.hp)
        values = [plan(d, free[:i] + free[i + 1:] + [active], them.hp)
                  for i, d in enumerate(bench)]
        best = max(values)
        if best > stay + self.SWITCH_MARGIN + edge:
            return self.create_order(switches[values.index(best)])
        return None
