"""`search:ms=1000`: a poke-env player that searches with Pokémon Showdown's own simulator.

For each decision the player guesses the battle `samples` times: its own side exactly as its
request shows it (team, moves, HP, PP, stats) plus the public tracker's boosts, volatiles and
field, and the opponent's unseen sets (and, in gen 1, unseen team members) sampled from usage
statistics (battles/usage.py), always keeping every move, item, ability, tera type and
species the opponent has revealed (agents/search_spec.py). Each guess is built once into a real
Showdown `Battle` in a long-lived Node.js worker (agents/search_workers.py, running
agents/search_worker.js and agents/search_sim.js) and searched with
decoupled UCT over both sides' simultaneous choices, restoring the battle from its serialised
state for every simulation. Leaves are scored after `rollout` greedy turns by a logistic model of
who wins, fitted on recorded battles (agents/search_value.py: Pokémon left, HP, statuses,
boosts, Substitute) plus the duel the two active Pokémon would fight. The player picks the
choice with the largest visit share summed over the guesses.

The evaluation's differences between choices are small next to its noise (damage rolls,
critical hits, full paralysis), and a decision gets a few hundred simulations, so three
things keep them where they matter: UCB works in units of the rewards' spread at each node;
a choice that cannot do anything (a status move on a foe that already has a status, healing
at full HP) is pruned for both sides; and a prior adds a progressive bias that fades with
visits: at the root, half on the tactician heuristic's choice; elsewhere, a softmax of each
choice's expected damage.

    player = make_player("search:ms=1000,samples=2", battle_format="gen1ou", ...)
    player.last_policy          # the last decision's visit shares over the 13 action slots
    player.search_policy(battle)  # search a decision now (blocking): (shares, simulations per choice)

Params: ms (time per decision), samples (guesses), workers (Node processes; default one per
core, at most `samples`), iterations (cap per guess, 0 = none), c (exploration, in units of
the rewards' spread), bias (weight of the prior; 0 = none), depth (tree depth cap), rollout
(greedy turns past the tree), seed; with labels=DIR, label_min_visits (see
agents/search_labels.py). A worker that dies is restarted and
that decision falls back to the tactician heuristic (agents.heuristics), logged. The order
sent is always one the request allows: root choices come from the real request and are
mapped to poke-env orders before the search starts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading

import numpy as np
from poke_env.battle import Battle

from agents.heuristics import TacticianPlayer
from agents.search_labels import MIN_VISITS, LabelWriter
from agents.search_spec import battle_spec
from agents.search_workers import WorkerPool
from battles.actions import N_ACTIONS, PSEUDO_MOVES
from battles.live import order_to_index, view_from_battle
from battles.protocol import norm_move

log = logging.getLogger(__name__)


# -- root choices <-> poke-env orders -------------------------------------------------------------
def root_orders(battle: Battle, player) -> dict[str, object]:
    """{Showdown choice: poke-env order} for every choice the real request allows."""
    request = battle.last_request
    out: dict[str, object] = {}
    moves = battle.available_moves
    by_id = {norm_move(m.id): m for m in moves}
    if request.get("active") and not any(request.get("forceSwitch") or []):
        active = request["active"][0]
        for m in active["moves"]:
            move = by_id.get(norm_move(m["id"]))
            if move is None and len(moves) == 1 and len(active["moves"]) == 1:
                move = moves[0]  # a pseudo-move (Fight, Struggle, Recharge) poke-env names its own way
            if move is None or m.get("disabled"):
                continue
            out[f"move {m['id']}"] = player.create_order(move)
            if battle.can_tera:
                out[f"move {m['id']} terastallize"] = player.create_order(move, terastallize=True)
    switchable = {id(m) for m in battle.available_switches}
    for i, entry in enumerate(request["side"]["pokemon"]):
        mon = battle.team.get(entry["ident"])
        if mon is not None and id(mon) in switchable and not entry.get("active"):
            out[f"switch {i + 1}"] = player.create_order(mon)
    return out


# -- the player --------------------------------------------------------------------------------------
class SearchPlayer(TacticianPlayer):
    """Searches every decision with Showdown's simulator (see the module docstring)."""

    def __init__(self, *, ms: int = 1000, samples: int = 2, iterations: int = 0, workers: int = 0,
                 c: float = 1.5, bias: float = 2.0, depth: int = 8, rollout: int = 2, seed: int | None = None,
                 labels: str | None = None, label_min_visits: float = MIN_VISITS, **player_kwargs):
        for key, value, low in (("ms", ms, 1), ("samples", samples, 1), ("workers", workers, 0),
                                ("iterations", iterations, 0), ("depth", depth, 1), ("rollout", rollout, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"search param {key}={value!r} must be an integer >= {low}")
        for key, value in (("c", c), ("bias", bias), ("label_min_visits", label_min_visits)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"search param {key}={value!r} must be a number >= 0")
        self.ms, self.samples, self.iterations = ms, samples, iterations
        self.c, self.bias, self.depth, self.rollout = float(c), float(bias), depth, rollout
        # One worker per core by default, and no more than there are samples to search at once.
        workers = workers or max(1, min(samples, os.cpu_count() or 1, 4))
        fmt = player_kwargs.get("battle_format") or "gen9randombattle"
        self.pool = WorkerPool(workers, warm={"cmd": "warm", "format": fmt})
        threading.Thread(target=self.pool.warm_all, daemon=True).start()
        self._rng = np.random.default_rng(seed)
        self.last_policy = np.zeros(N_ACTIONS, dtype=np.float32)
        self.policies: dict[str, np.ndarray] = {}  # battle tag -> its latest decision's policy
        self.last_info: dict = {}
        self.fallbacks = 0
        self.decisions = 0
        self.label_writer = None
        if labels:  # expert demonstrations: its own visit shares at every decision
            self.label_writer = LabelWriter(labels, f"search:ms={ms},samples={samples}", label_min_visits)
        super().__init__(**player_kwargs)

    async def choose_move(self, battle):
        """Search in worker threads, so other battles and the opponent keep playing."""
        if not isinstance(battle, Battle) or not battle.last_request.get("side"):
            return self.choose_random_move(battle)
        orders = root_orders(battle, self)
        visits = math.inf
        if len(orders) <= 1:  # forced: nothing to search
            order = next(iter(orders.values()), None) or self.choose_default_move()
            self._set_policy(battle, {next(iter(orders), ""): 1.0} if orders else {}, orders)
        else:
            shares, info = await asyncio.to_thread(self._search, *self._search_args(battle, orders))
            order, visits = self._decide(battle, orders, shares, info)
        if self.label_writer is not None:
            self.label_writer.record(battle, self.last_policy, order_to_index(order, battle, view_from_battle(battle)),
                                     visits)
        return order

    def search_policy(self, battle: Battle) -> tuple[np.ndarray, float]:
        """Search this battle's current decision (blocking): its visit shares over the 13 slots,
        and the simulations per root choice behind them (inf when forced: nothing to search).
        Safe to call for several battles at once from threads."""
        orders = root_orders(battle, self)
        if len(orders) <= 1:  # forced: nothing to search
            return self._set_policy(battle, {next(iter(orders), ""): 1.0} if orders else {}, orders).copy(), math.inf
        shares, info = self._search(*self._search_args(battle, orders))
        _, visits = self._decide(battle, orders, shares, info)
        return self.policies[battle.battle_tag].copy(), visits

    def _search_args(self, battle: Battle, orders: dict) -> tuple:
        """What `_search` needs for this decision: the sampled guesses, root choices, our side, prior."""
        specs = [battle_spec(battle, self._rng) for _ in range(self.samples)]
        return specs, list(orders), battle.last_request["side"]["id"], self._prior(battle, orders)

    def _prior(self, battle: Battle, orders: dict) -> dict[str, float]:
        """The root prior: half on the tactician heuristic's choice, half spread evenly."""
        try:
            pick = str(TacticianPlayer.choose_move(self, battle))
        except Exception as err:  # a heuristic's failure must not cost the search
            log.warning("tactician prior failed for %s: %r", battle.battle_tag, err)
            return {}
        even = 0.5 / len(orders)
        return {ch: even + (0.5 if str(order) == pick else 0.0) for ch, order in orders.items()}

    def _search(self, specs: list[dict], root: list[str], us: str,
                prior: dict[str, float] | None = None) -> tuple[dict[str, float], dict]:
        """Summed visit shares per root choice over all samples (empty when every worker failed)."""
        rounds = math.ceil(len(specs) / len(self.pool.workers))
        ms = max(5, self.ms // rounds)  # samples beyond the workers share the decision's budget
        cmds = [{"cmd": "search", "spec": s, "ms": ms, "iterations": self.iterations, "c": self.c,
                 "depth": self.depth, "seed": s["seed"], "root": root, "us": us,
                 "rollout": self.rollout, "bias": self.bias, "prior": prior or {}}
                for s in specs]
        timeout = 10.0 + 5 * ms / 1000 + (self.iterations or 0) / 50
        answers = self.pool.run(cmds, timeout)
        shares: dict[str, float] = {}
        ok = [a for a in answers if isinstance(a, dict)]
        for answer in ok:
            total = sum(answer["visits"].get(ch, 0) for ch in root)
            for ch in root:
                if total:
                    shares[ch] = shares.get(ch, 0.0) + answer["visits"].get(ch, 0) / total
        values: dict[str, float] = {}
        for ch in root:
            pairs = [(a["visits"].get(ch, 0), a["values"].get(ch, 0.0)) for a in ok]
            n = sum(v for v, _ in pairs)
            if n:
                values[ch] = round(sum(v * x for v, x in pairs) / n, 4)
        opp: dict[str, int] = {}
        for answer in ok:
            for ch, n in answer["opp_visits"].items():
                opp[ch] = opp.get(ch, 0) + n
        info = {"samples": len(ok), "failed": len(answers) - len(ok), "values": values, "opp_visits": opp,
                "iterations": sum(a["iterations"] for a in ok), "steps": sum(a["steps"] for a in ok),
                "errors": [str(a) for a in answers if not isinstance(a, dict)]}
        return shares, info

    def _decide(self, battle: Battle, orders: dict, shares: dict[str, float], info: dict) -> tuple[object, float]:
        """The order to play and the simulations per root choice behind it (0 for a fallback)."""
        self.decisions += 1
        self.last_info = info
        if not shares or not any(shares.values()):
            self.fallbacks += 1
            log.warning("search failed for %s turn %s (%s); falling back to the tactician heuristic",
                        battle.battle_tag, battle.turn, "; ".join(info.get("errors", [])) or "no visits")
            order = TacticianPlayer.choose_move(self, battle)
            key = next((k for k, o in orders.items() if str(o) == str(order)), "")
            self._set_policy(battle, {key: 1.0} if key else {}, orders)
            return order, 0.0
        best = max(shares, key=lambda ch: (shares[ch], ch.startswith("move")))
        self._set_policy(battle, shares, orders)
        return orders[best], info.get("iterations", 0) / len(orders)

    def _set_policy(self, battle: Battle, shares: dict[str, float], orders: dict) -> np.ndarray:
        """The visit distribution over the 13 action slots (battles.actions)."""
        policy = np.zeros(N_ACTIONS, dtype=np.float32)
        try:
            view = view_from_battle(battle)
        except ValueError:
            view = None
        for choice, share in shares.items():
            order = orders.get(choice)
            if order is None or view is None:
                continue
            index = order_to_index(order, battle, view)
            if index < 0 and choice.startswith("move") and len(battle.available_moves) == 1 and \
                    norm_move(battle.available_moves[0].id) in PSEUDO_MOVES:
                index = 0
            if index >= 0:
                policy[index] += share
        total = policy.sum()
        self.last_policy = policy / total if total > 0 else policy
        self.policies[battle.battle_tag] = self.last_policy
        return self.last_policy

    def _battle_finished_callback(self, battle) -> None:
        self.policies.pop(battle.battle_tag, None)
        if self.label_writer is not None:
            self.label_writer.finish(battle, self.username)

    def close(self) -> None:
        """Stop the workers."""
        self.pool.close()
