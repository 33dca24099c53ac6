"""`search:ms=1000`: a poke-env player that searches with Pokémon Showdown's own simulator.

For each decision the player guesses the battle `samples` times: its own side exactly as its
request shows it (team, moves, HP, PP, stats) plus the public tracker's boosts, volatiles and
field, and the opponent's unseen sets (and, in gen 1, unseen team members) sampled from usage
statistics (battles/data/stats), always keeping every move, item, ability, tera type and
species the opponent has revealed. Each guess is built once into a real Showdown `Battle` in a
long-lived Node.js worker (agents/search_worker.js, agents/search_sim.js) and searched with
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
import collections
import json
import logging
import math
import os
import queue
import re
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import count
from pathlib import Path

import numpy as np
from poke_env.battle import Battle

from agents.heuristics import TacticianPlayer
from agents.search_labels import MIN_VISITS, LabelWriter
from battles.actions import N_ACTIONS, PSEUDO_MOVES, order_to_index
from battles.protocol import norm_move, parse_details, parse_ident, to_id
from battles.server import showdown_dir
from battles.view import STATS_DIR, STATS_FILES, live_state, view_from_battle

log = logging.getLogger(__name__)

WORKER_JS = Path(__file__).resolve().with_name("search_worker.js")
# Volatiles the worker rebuilds (battles.protocol names); others are public but irrelevant.
SIM_VOLATILES = frozenset({
    "substitute", "confusion", "leechseed", "reflect", "lightscreen", "mustrecharge",
    "focusenergy", "partiallytrapped", "transform", "trapped", "taunt", "encore", "yawn",
    "curse", "perish1", "perish2", "perish3", "torment", "healblock", "saltcure", "mist",
})
LOCK_EXEMPT = frozenset({"recharge", "struggle", "fight"})


class WorkerError(RuntimeError):
    """A simulator worker died, hung or answered with an error."""


# -- the Node.js worker -----------------------------------------------------------------------
class SimWorker:
    """One long-lived `node search_worker.js` process, spoken to in JSON lines."""

    def __init__(self, ps_dir: Path | None = None):
        self.ps_dir = Path(ps_dir) if ps_dir else showdown_dir()
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._ids = count(1)
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self.restarts = -1  # the first start is not a restart

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> SimWorker:
        """Start (or restart) the process."""
        self.close()
        try:
            self._proc = subprocess.Popen(
                ["node", "--max-semi-space-size=32", str(WORKER_JS), str(self.ps_dir)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, encoding="utf-8", bufsize=1,
            )
        except FileNotFoundError:
            raise WorkerError("Node.js ('node') is not on PATH; the search bot needs it. "
                              "Install Node.js 18+ and run ./setup_env.sh.") from None
        self._lines = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        for stream, sink in ((self._proc.stdout, self._lines.put), (self._proc.stderr, self._stderr.append)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()
        self.restarts += 1
        return self

    @staticmethod
    def _read(stream, sink) -> None:
        for line in stream:
            sink(line)
        sink(None)  # end of output: the process is gone

    def call(self, cmd: dict, timeout: float) -> dict:
        """Send one command and wait for its answer; WorkerError on death, timeout or error."""
        if not self.alive():
            self.start()
        cmd = dict(cmd, id=next(self._ids))
        try:
            self._proc.stdin.write(json.dumps(cmd) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as err:
            raise WorkerError(f"search worker {self.pid} is gone ({err})") from None
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                self.close()
                raise WorkerError(f"search worker gave no answer within {timeout:.1f}s; killed") from None
            if line is None:
                pid, code = self.pid, self._proc.wait() if self._proc else None
                err = "".join(x for x in self._stderr if x)[-2000:]
                self.close()
                raise WorkerError(f"search worker {pid} died (exit {code}). {err}".strip())
            answer = json.loads(line)
            if answer.get("id") != cmd["id"]:
                continue  # the late answer of a command that timed out
            if not answer.get("ok"):
                raise WorkerError(f"search worker failed on {cmd['cmd']}: {answer.get('error')}")
            return answer

    def close(self) -> None:
        """Kill the process; the reader threads end at its end of output."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.kill()
            proc.wait(timeout=5)
            proc.stdin.close()
        except (OSError, subprocess.TimeoutExpired):
            pass

    def __del__(self):
        if self._proc is not None:
            try:
                self._proc.kill()
            except OSError:
                pass


class WorkerPool:
    """`n` workers; commands run in parallel, one per free worker. A worker that died or hung
    is started again (and sent `warm`, when given, so its next answer is not slowed)."""

    def __init__(self, n: int = 1, ps_dir: Path | None = None, warm: dict | None = None):
        if n < 1:
            raise ValueError(f"search workers must be at least 1, got {n}")
        self.workers = [SimWorker(ps_dir) for _ in range(n)]
        self.warm = warm
        self._free: queue.Queue = queue.Queue()
        for w in self.workers:
            self._free.put(w)
        self._executor = ThreadPoolExecutor(max_workers=n, thread_name_prefix="search")

    @property
    def restarts(self) -> int:
        return sum(max(w.restarts, 0) for w in self.workers)

    def _one(self, cmd: dict, timeout: float) -> dict | WorkerError:
        worker = self._free.get()
        try:
            return worker.call(cmd, timeout)
        except WorkerError as err:
            if worker.alive():  # it answered with an error: nothing to restart
                log.warning("%s", err)
                return err
            log.warning("%s; restarting it", err)
            try:
                worker.start()
                if self.warm:
                    worker.call(self.warm, 60.0)
            except WorkerError as again:
                log.warning("search worker restart failed: %s", again)
            return err
        finally:
            self._free.put(worker)

    def run(self, cmds: list[dict], timeout: float) -> list[dict | WorkerError]:
        """Answers in order; a failed command gives its WorkerError instead of raising."""
        futures = [self._executor.submit(self._one, c, timeout) for c in cmds]
        return [f.result() for f in futures]

    def warm_all(self) -> None:
        """Start every worker and load the format's data (in the background at start-up)."""
        if self.warm:
            self.run([self.warm] * len(self.workers), 60.0)

    def close(self) -> None:
        for w in self.workers:
            w.close()
        self._executor.shutdown(wait=False)


# -- usage statistics with their weights ----------------------------------------------------------
_SECTIONS = {"Abilities": "abilities", "Items": "items", "Moves": "moves", "Tera Types": "teraTypes",
             "Spreads": "spreads", "Teammates": "teammates"}


def _parse_moveset_text(text: str) -> dict[str, dict]:
    """Smogon's boxed moveset report -> {species: {section: {name: weight}}, usage: count}."""
    out: dict[str, dict] = {}
    rows = [line.strip().strip("|").strip() for line in text.splitlines()]
    species, section = "", ""
    for k, row in enumerate(rows):
        if row.startswith("+"):
            section = ""
            nxt, after = (rows[k + 1] if k + 1 < len(rows) else ""), (rows[k + 2] if k + 2 < len(rows) else "")
            if after.startswith("+") and nxt and not nxt.startswith("Raw count") and nxt not in _SECTIONS:
                species = nxt
                out[species] = {"usage": 1.0}
        elif row.startswith("Raw count:") and species:
            out[species]["usage"] = float(row.split(":")[1])
        elif row in _SECTIONS:
            section = _SECTIONS[row]
        elif section and species and row.endswith("%"):
            name, _, pct = row.rpartition(" ")
            try:
                out[species].setdefault(section, {})[name.strip()] = float(pct.rstrip("%")) / 100
            except ValueError:
                pass
    return out


@cache
def set_stats(fmt: str) -> dict[str, dict]:
    """{species id: {'name', 'usage', 'moves', 'items', 'abilities', 'teraTypes', 'spreads',
    'teammates'}} with weights, ids as keys; {} when the format has no bundled stats."""
    name = STATS_FILES.get(to_id(fmt))
    if name is None:
        return {}
    text = (STATS_DIR / name).read_text(encoding="utf-8")
    if name.endswith(".json"):
        raw = {k: dict(v, usage=v.get("usage", {}).get("weighted", 0.0)) for k, v in json.loads(text)["pokemon"].items()}
    else:
        raw = _parse_moveset_text(text)
    out = {}
    for species, entry in raw.items():
        table = {"name": species, "usage": float(entry.get("usage") or 0.0)}
        for key in ("moves", "items", "abilities", "teraTypes", "teammates"):
            table[key] = {to_id(n): float(w) for n, w in (entry.get(key) or {}).items()
                          if to_id(n) not in ("other", "nothing", "")}
        table["spreads"] = {n: float(w) for n, w in (entry.get("spreads") or {}).items() if ":" in n}
        out[to_id(species)] = table
    return out


def _weighted_pick(rng: np.random.Generator, weights: dict[str, float], k: int, exclude=()) -> list[str]:
    """Up to k distinct keys drawn without replacement in proportion to their weights."""
    keys = [n for n, w in weights.items() if w > 0 and n not in exclude]
    w = np.array([weights[n] for n in keys], dtype=float)
    picked = []
    while keys and len(picked) < k:
        i = int(rng.choice(len(keys), p=w / w.sum()))
        picked.append(keys.pop(i))
        w = np.delete(w, i)
    return picked


def _spread(text: str) -> tuple[str, dict]:
    nature, _, evs = text.partition(":")
    values = [int(x) for x in evs.split("/")]
    return nature, dict(zip(("hp", "atk", "def", "spa", "spd", "spe"), values))


# -- the spec: one full guess of the battle, for the worker ----------------------------------------
def _request_mon(gen: int, entry: dict, tracked, request: dict, battle: Battle) -> tuple[dict, dict]:
    """(set, state) of one of our own Pokémon from its request entry (+ the public tracker)."""
    _, name = parse_ident(entry["ident"])
    species, level, gender = parse_details(entry["details"])
    hp_text, _, status = entry["condition"].partition(" ")
    hp, _, maxhp = hp_text.partition("/")
    moves = [norm_move(m) for m in entry.get("moves", [])]
    team_set = {"name": name, "species": species, "level": level, "gender": gender, "moves": moves,
                "item": entry.get("item", ""), "ability": entry.get("baseAbility", ""),
                "teraType": entry.get("teraType") or None, "evs": {}, "ivs": {}}
    fainted = status == "fnt" or hp == "0"
    state = {"fainted": fainted, "hp": int(hp) if hp.isdigit() else None,
             "maxhp": int(re.sub(r"\D", "", maxhp)) if maxhp else None,
             "stats": entry.get("stats"), "status": "" if fainted else status, "item": entry.get("item", "")}
    mon = battle.team.get(f"{parse_ident(entry['ident'])[0]}: {name}")
    _dynamic(state, tracked, mon)
    if entry.get("active") and request.get("active"):
        active = request["active"][0]
        state["pp"] = {norm_move(m["id"]): m["pp"] for m in active["moves"] if "pp" in m}
        if state.get("transform_into"):
            state["moves_now"] = [[m["id"], m.get("pp", 5)] for m in active["moves"]]
        offered = [m["id"] for m in active["moves"]]
        # Our request says whether a Choice item locks us (a Choice item just received by Trick
        # does not lock until the next move): the simulator must not infer one from the last move.
        enabled = [norm_move(m["id"]) for m in active["moves"] if not m.get("disabled")]
        state["choice_locked"] = enabled == [state.get("last_move")]
        twoturn = any(v.startswith("twoturnmove:") for v in (tracked.volatiles if tracked else ()))
        if len(offered) == 1 and offered[0] not in LOCK_EXEMPT and len(moves) > 1 and not twoturn:
            state["lock"] = norm_move(offered[0])
        if gen == 1 and offered == ["fight"]:
            # Gen 1's 'Fight' alone: asleep, frozen or wrapped; the log shows no Wrap starting,
            # and sleep cancels a pending recharge.
            vols = set(state.get("volatiles", ())) - {"mustrecharge"}
            if state["status"] not in ("slp", "frz"):
                vols.add("partiallytrapped")
                state["trap_move"] = _foe_trap_move(live_state(battle), parse_ident(entry["ident"])[0])
            state["volatiles"] = sorted(vols)
    return team_set, state


def _dynamic(state: dict, tracked, mon) -> None:
    """Boosts, volatiles, PP spent, status counters: what the protocol told about a Pokémon."""
    if tracked is not None:
        state["boosts"] = {k: v for k, v in tracked.boosts.items() if v}
        state["volatiles"] = sorted(v for v in tracked.volatiles if v in SIM_VOLATILES or v.startswith(
            ("twoturnmove:", "disabled:")))
        state["pp_used"] = dict(tracked.pp_used)
        state["last_move"] = tracked.last_move
        state["rested"] = tracked.rested
        if tracked.transformed is not None:
            state["transform_into"] = tracked.transformed[0].name
        if tracked.terastallized:
            state["terastallized"], state["tera"] = True, tracked.tera
    counter = mon.status_counter if mon is not None else 0
    state["sleep_turns"] = counter if state.get("status") == "slp" else 0
    state["toxic_turns"] = counter if state.get("status") == "tox" else 0


def own_side(battle: Battle) -> dict:
    """Our side, exactly as the request shows it, in the request's order (active first)."""
    request = battle.last_request
    side_id = request["side"]["id"]
    tracked = live_state(battle).sides[side_id]
    team, mons = [], []
    for entry in request["side"]["pokemon"]:
        _, name = parse_ident(entry["ident"])
        team_set, state = _request_mon(battle.gen, entry, tracked.mons.get(name), request, battle)
        team.append(team_set)
        mons.append(state)
    return {"team": team, "mons": mons, "conditions": dict(tracked.conditions),
            "tera_used": tracked.tera_used, "must_switch": bool(any(request.get("forceSwitch") or []))}


def opponent_side(battle: Battle, rng: np.random.Generator) -> dict:
    """One guess of the opponent's side: seen Pokémon with sampled unseen moves (and items,
    abilities, tera types, spreads), unseen team members sampled from usage statistics."""
    state = live_state(battle)
    opp_id = "p2" if battle.last_request["side"]["id"] == "p1" else "p1"
    side = state.sides[opp_id]
    stats = set_stats(battle.format or "")
    gen = battle.gen
    seen = sorted(side.mons.values(), key=lambda m: not m.active)
    known = [(m.species, m.level, m) for m in seen] + [(m.species, m.level, None) for m in side.preview]
    species_ids = [to_id(s) for s, _, _ in known]
    for extra in _sample_teammates(stats, species_ids, max(0, side.team_size - len(known)), rng):
        known.append((stats[extra]["name"], 100, None))
    team, mons = [], []
    for species, level, mon in known:
        team_set, fixed = _sample_set(gen, stats.get(to_id(species), {}), species, level, mon, rng)
        team.append(team_set)
        st = {"fainted": False, "hp_frac": 1.0, "status": "", "item": fixed.get("item")}
        if mon is not None:
            st.update(fainted=mon.fainted, hp_frac=mon.hp, status="" if mon.fainted else mon.status)
            _dynamic(st, mon, battle.opponent_team.get(f"{opp_id}: {mon.name}"))
            if gen == 1 and st["status"] in ("slp", "frz"):  # gen 1: sleep cancels a recharge
                st["volatiles"] = [v for v in st["volatiles"] if v != "mustrecharge"]
            st["trap_move"] = _foe_trap_move(state, opp_id)
        if fixed.get("item") is None:
            st.pop("item")
        mons.append(st)
    foe_active = side.active
    return {"team": team, "mons": mons, "conditions": dict(side.conditions), "tera_used": side.tera_used,
            "must_switch": foe_active is not None and foe_active.fainted}


def _foe_trap_move(state, side_id: str) -> str:
    other = state.sides["p1" if side_id == "p2" else "p2"].active
    return other.last_move if other is not None else ""


def _sample_teammates(stats: dict, present: list[str], n: int, rng) -> list[str]:
    """n species for unseen team members: usage weighted by how often they team with the seen."""
    if n <= 0 or not stats:
        return []
    weights = {}
    for sid, entry in stats.items():
        if sid in present:
            continue
        w = entry["usage"] or 1e-6
        for p in present:
            mates = stats.get(p, {}).get("teammates", {})
            w *= 0.2 + mates.get(sid, 0.0)
        weights[sid] = w
    return _weighted_pick(rng, weights, n)


def _sample_set(gen: int, entry: dict, species: str, level: int, mon, rng) -> tuple[dict, dict]:
    """A set for one opponent Pokémon: revealed fields kept, the rest sampled from its stats."""
    revealed = [norm_move(m) for m in (mon.moves if mon is not None else [])][:4]
    moves = revealed + _weighted_pick(rng, entry.get("moves", {}), 4 - len(revealed), exclude=revealed)
    fixed: dict = {}

    def pick(kind: str, known: str) -> str:
        if known and known != "<unknown>":
            return known
        options = _weighted_pick(rng, entry.get(kind, {}), 1)
        return options[0] if options else ""

    item = ability = tera = ""
    if gen >= 2:
        first = mon.first_item if mon is not None else ""
        item = pick("items", first)
        if mon is not None and mon.item not in ("<unknown>", first):
            fixed["item"] = mon.item  # knocked off, used or swapped since
    if gen >= 3:
        ability = pick("abilities", mon.first_ability if mon is not None else "")
    if gen == 9:
        tera = pick("teraTypes", mon.tera if mon is not None and mon.terastallized else "")
    spreads = entry.get("spreads", {})
    nature, evs = ("", {s: 252 for s in ("hp", "atk", "def", "spa", "spd", "spe")}) if gen <= 2 else ("Hardy", {})
    if spreads:
        nature, evs = _spread(_weighted_pick(rng, spreads, 1)[0])
    if gen <= 2:
        nature = ""
    team_set = {"name": mon.name if mon is not None else species, "species": species, "level": level,
                "gender": mon.gender if mon is not None else "", "moves": moves or ["struggle"],
                "item": item, "ability": ability, "nature": nature, "evs": evs, "ivs": {},
                "teraType": tera or None}
    return team_set, fixed


def battle_spec(battle: Battle, rng: np.random.Generator) -> dict:
    """One full guess of the battle, as the worker builds it (our side is exact)."""
    state = live_state(battle)
    ours = own_side(battle)
    theirs = opponent_side(battle, rng)
    us = battle.last_request["side"]["id"]
    sides = [ours, theirs] if us == "p1" else [theirs, ours]
    field = {"weather": state.weather, "terrain": next((f for f in state.fields if f.endswith("terrain")), ""),
             "pseudo": sorted(f for f in state.fields if not f.endswith("terrain"))}
    return {"format": battle.format, "sides": sides, "field": field, "turn": state.turn,
            "seed": int(rng.integers(1, 2**31))}


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


