"""The search bot: sampled opponent sets, the simulator worker, and real battles in which the
simulated state must match the live one at every decision and no choice is ever refused."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import numpy as np
import pytest
from poke_env import AccountConfiguration
from poke_env.battle import Battle

from agents.registry import make_player, parse_spec
from agents.search import SearchPlayer, root_orders
from agents.search_spec import battle_spec, opponent_side
from agents.search_value import side_features
from agents.search_workers import SimWorker, WorkerError, WorkerPool
from battles.live import live_state
from battles.protocol import public_hp
from battles.teams import load_team_set
from battles.usage import bundled_stats


def request_mon(name: str, moves: list[str], *, active=False, hp="300/300", stats=None) -> dict:
    return {"ident": f"p1: {name}", "details": name, "condition": hp, "active": active,
            "stats": stats or {"atk": 200, "def": 200, "spa": 200, "spd": 200, "spe": 200},
            "moves": moves, "baseAbility": "noability", "item": "", "pokeball": "pokeball"}


def fed_battle(fmt: str, gen: int, lines: list[str]) -> Battle:
    """A poke-env battle given our request and the opponent's protocol lines."""
    b = Battle(f"battle-{fmt}-1", "us", logging.getLogger("test"), gen=gen)
    b._format = fmt
    b.player_role = "p1"
    team = [request_mon("Snorlax", ["bodyslam", "earthquake", "hyperbeam", "selfdestruct"], active=True)]
    team += [request_mon("Chansey", ["seismictoss", "thunderwave", "softboiled", "icebeam"])]
    b.parse_request({"side": {"name": "us", "id": "p1", "pokemon": team}, "rqid": 1, "active": [{"moves": [
        {"move": m, "id": m, "pp": 10, "maxpp": 10, "target": "normal", "disabled": False}
        for m in team[0]["moves"]]}]})
    for line in lines:
        b.parse_message(line.split("|"))
    return b


GEN1_LINES = [
    "|switch|p1a: Snorlax|Snorlax|100/100",
    "|switch|p2a: Tauros|Tauros|100/100",
    "|move|p2a: Tauros|Body Slam|p1a: Snorlax",
    "|move|p2a: Tauros|Blizzard|p1a: Snorlax",
    "|switch|p2a: Exeggutor|Exeggutor|100/100",
    "|move|p2a: Exeggutor|Sleep Powder|p1a: Snorlax",
    "|-damage|p2a: Exeggutor|57/100 par",
    "|-boost|p2a: Exeggutor|spe|1",
]


def test_sampled_gen1_sets_keep_everything_revealed():
    battle = fed_battle("gen1ou", 1, GEN1_LINES)
    for seed in range(25):
        side = opponent_side(battle, np.random.default_rng(seed))
        species = [s["species"] for s in side["team"]]
        assert len(species) == 6 and len(set(species)) == 6  # species clause, full team
        assert species[0] == "Exeggutor" and "Tauros" in species  # the active one leads
        sets = {s["species"]: s for s in side["team"]}
        assert {"bodyslam", "blizzard"} <= set(sets["Tauros"]["moves"])
        assert "sleeppowder" in sets["Exeggutor"]["moves"]
        for s in side["team"]:
            assert 1 <= len(s["moves"]) == len(set(s["moves"])) <= 4
            assert s["item"] == "" and s["ability"] == ""  # gen 1 has neither
        egg = side["mons"][0]
        assert egg["hp_frac"] == pytest.approx(0.57) and egg["status"] == "par"
        assert egg["boosts"] == {"spe": 1}


GEN9_LINES = (
    ["|poke|p2|Great Tusk, L100|", "|poke|p2|Kingambit, L100, M|", "|poke|p2|Gholdengo, L100|",
     "|poke|p2|Dragonite, L100, F|", "|poke|p2|Iron Valiant, L100|", "|poke|p2|Slowking-Galar, L100, M|",
     "|switch|p1a: Snorlax|Snorlax|100/100",
     "|switch|p2a: Great Tusk|Great Tusk|100/100",
     "|-enditem|p2a: Great Tusk|Booster Energy",
     "|-activate|p2a: Great Tusk|ability: Protosynthesis|[fromitem]",
     "|move|p2a: Great Tusk|Headlong Rush|p1a: Snorlax",
     "|-terastallize|p2a: Great Tusk|Steel"]
)


def test_sampled_gen9_sets_keep_items_abilities_tera_and_preview():
    battle = fed_battle("gen9ou", 9, GEN9_LINES)
    previewed = {"Great Tusk", "Kingambit", "Gholdengo", "Dragonite", "Iron Valiant", "Slowking-Galar"}
    for seed in range(10):
        side = opponent_side(battle, np.random.default_rng(seed))
        assert {s["species"] for s in side["team"]} == previewed  # no member invented
        tusk, state = side["team"][0], side["mons"][0]
        assert tusk["species"] == "Great Tusk" and "headlongrush" in tusk["moves"]
        assert tusk["item"] == "boosterenergy" and state["item"] == ""  # started with it, used it
        assert tusk["ability"] == "protosynthesis" and tusk["teraType"] == "steel"
        assert state["terastallized"]
        for s in side["team"][1:]:
            assert s["item"] and s["ability"] and s["teraType"] and len(s["moves"]) == 4


def test_stats_have_weights_for_both_formats():
    gen1, gen9 = bundled_stats("gen1ou"), bundled_stats("gen9ou")
    tauros = gen1.species["tauros"]
    assert tauros.name == "Tauros" and tauros.moves["bodyslam"] > 0.9 and tauros.teammates["snorlax"] > 0
    assert gen9.species["greattusk"].items["heavydutyboots"] == pytest.approx(0.33643)
    assert any(":" in s for s in gen9.species["greattusk"].spreads)
    assert "checksandcounters" not in gen9.species  # a report section, not a species
    assert bundled_stats("gen3ou") is None


def test_spec_params_are_checked():
    assert parse_spec("search:ms=100,samples=2,workers=1").params == {"ms": 100, "samples": 2, "workers": 1}
    with pytest.raises(ValueError, match="ms"):
        SearchPlayer(ms=0, start_listening=False, battle_format="gen1ou")
    with pytest.raises(ValueError, match="takes no param"):
        parse_spec("search:budget=3")


# -- the worker ----------------------------------------------------------------------------------
def start_spec(team_a, team_b, fmt="gen1ou", **mons) -> dict:
    full = [{"hp_frac": 1.0}] * 6
    return {"format": fmt, "seed": 5, "sides": [
        {"team": team_a.packed, "mons": mons.get("a", full)}, {"team": team_b.packed, "mons": mons.get("b", full)}]}


@pytest.fixture(scope="module")
def gen1_teams():
    return load_team_set("competitive", "gen1ou")


@pytest.mark.server
def test_worker_clones_exactly_and_searches(gen1_teams):
    worker = SimWorker().start()
    try:
        spec = start_spec(gen1_teams.teams[0], gen1_teams.teams[5])
        bench = worker.call({"cmd": "bench", "spec": spec, "ms": 200, "advance": 3}, timeout=30)
        assert bench["restore_exact"] and bench["clones"] > 0 and bench["steps"] > 0
        # One opponent Pokémon left at 1%: every attack wins, switching does not.
        fainted = [{"fainted": True}] * 5
        spec = start_spec(gen1_teams.teams[0], gen1_teams.teams[5], b=[{"hp_frac": 0.01}] + fainted)
        built = worker.call({"cmd": "build", "spec": spec}, timeout=30)["state"]
        ours = built["sides"][0]["choices"]
        assert any(c.startswith("switch") for c in ours) and built["sides"][1]["pokemon"][1]["status"] == "fnt"
        answer = worker.call({"cmd": "search", "spec": spec, "iterations": 300, "ms": 5000, "us": "p1",
                              "root": ours}, timeout=30)
        visits = answer["visits"]
        assert set(visits) <= set(ours) and sum(visits.values()) == answer["iterations"] == 300
        attacks = sum(v for c, v in visits.items() if c.startswith("move"))
        assert attacks > 0.6 * 300, visits
    finally:
        worker.close()


def one_set(species: str, moves: list[str]) -> dict:
    return {"name": species, "species": species, "level": 100, "moves": moves, "item": "", "ability": "",
            "nature": "", "evs": dict.fromkeys(("hp", "atk", "def", "spa", "spd", "spe"), 252), "ivs": {}}


@pytest.mark.server
def test_search_skips_wasted_choices_and_follows_its_prior():
    team = [one_set("Chansey", ["icebeam", "thunderbolt", "thunderwave", "softboiled"]),
            one_set("Snorlax", ["bodyslam", "earthquake", "hyperbeam", "rest"])]
    # We are at full HP (Soft-Boiled would fail) and the foe is paralysed (Thunder Wave would).
    spec = {"format": "gen1ou", "seed": 3, "sides": [
        {"team": team, "mons": [{"hp_frac": 1.0}, {"hp_frac": 1.0}]},
        {"team": team, "mons": [{"hp_frac": 1.0, "status": "par"}, {"hp_frac": 1.0}]}]}
    worker = SimWorker().start()
    try:
        root = ["move icebeam", "move thunderbolt", "move thunderwave", "move softboiled", "switch 2"]
        plain = worker.call({"cmd": "search", "spec": spec, "iterations": 200, "ms": 5000, "us": "p1",
                             "root": root}, timeout=60)
        assert set(plain["visits"]) == {"move icebeam", "move thunderbolt", "switch 2"}, plain["visits"]
        assert plain["opp_visits"].get("move softboiled", 0) == 0  # pruned for the foe as well (full HP)
        # A strong prior draws the search's visits to its choice, whichever choice that is.
        for favourite in ("switch 2", "move icebeam"):
            led = worker.call({"cmd": "search", "spec": spec, "iterations": 200, "ms": 5000, "us": "p1", "root": root,
                               "prior": {favourite: 1.0}, "bias": 20}, timeout=60)
            assert led["visits"][favourite] > 0.6 * 200, (favourite, led["visits"])
    finally:
        worker.close()


@pytest.mark.server
def test_sleep_clause_prunes_a_blocked_sleep_move():
    ours = [one_set("Exeggutor", ["sleeppowder", "psychic", "stunspore", "explosion"]),
            one_set("Snorlax", ["bodyslam", "earthquake", "hyperbeam", "rest"])]
    theirs = [one_set("Tauros", ["bodyslam", "earthquake", "blizzard", "hyperbeam"]),
              one_set("Chansey", ["icebeam", "thunderbolt", "thunderwave", "softboiled"])]

    def spec(their_bench: dict) -> dict:
        return {"format": "gen1ou", "seed": 5, "sides": [
            {"team": ours, "mons": [{"hp_frac": 1.0}, {"hp_frac": 1.0}]},
            {"team": theirs, "mons": [{"hp_frac": 1.0}, their_bench]}]}

    asleep = {"hp_frac": 1.0, "status": "slp", "sleep_turns": 0}
    root = ["move sleeppowder", "move psychic", "move stunspore", "move explosion", "switch 2"]
    worker = SimWorker().start()
    try:
        def search(s):
            return worker.call({"cmd": "search", "spec": s, "iterations": 150, "ms": 5000, "us": "p1",
                                "root": root}, timeout=60)
        # Their Chansey sleeps from our move: the clause blocks Sleep Powder, so it is not tried.
        blocked = search(spec(asleep))
        assert "move sleeppowder" not in blocked["visits"] and blocked["visits"], blocked["visits"]
        # Their Chansey sleeps from its own Rest: the clause does not count it.
        rested = search(spec({**asleep, "rested": True}))
        assert rested["visits"].get("move sleeppowder", 0) > 0, rested["visits"]
    finally:
        worker.close()


@pytest.mark.server
def test_killed_worker_is_restarted():
    pool = WorkerPool(1)
    try:
        first = pool.run([{"cmd": "ping"}], timeout=20)[0]
        os.kill(first["pid"], signal.SIGKILL)
        after = pool.run([{"cmd": "ping"}], timeout=20)[0]
        if isinstance(after, WorkerError):
            # The kill landed while the call was under way: that call failed, the next one is answered.
            after = pool.run([{"cmd": "ping"}], timeout=20)[0]
        # Either way (a worker seen dead before the call is started again at once) a new process answers.
        assert after["pid"] != first["pid"] and pool.restarts == 1
    finally:
        pool.close()


# -- real battles ---------------------------------------------------------------------------------
class Checked(SearchPlayer):
    """Compares the simulator's state with the live battle at every decision, kills its worker
    once, and records every error line the server sends."""

    def setup_checks(self, kill_at: int):
        self.errors, self.mismatches, self.kill_at, self.checked, self.killed_ok = [], [], kill_at, 0, None
        self.searched_mass = []  # the policy's total mass after each searched (not forced) decision

    async def _handle_battle_message(self, split_messages):
        for msg in split_messages:
            if len(msg) > 1 and msg[1] == "error":
                self.errors.append("|".join(msg))
        await super()._handle_battle_message(split_messages)

    async def choose_move(self, battle):
        try:
            self.compare(battle)
        except Exception as err:  # an exception here would stall the battle: record it instead
            self.mismatches.append(f"{battle.battle_tag} turn {battle.turn}: {err!r}")
        if self.killed_ok is None and self.checked >= self.kill_at and len(root_orders(battle, self)) > 1:
            # Killed mid-search: once its command is written, before the answer is read (killed
            # earlier, the pool could find it dead and start a fresh one before the command).
            worker = self.pool.workers[0]
            lines, read = worker._lines, worker._lines.get

            def killed_then_read(*args, **kwargs):
                lines.get = read
                os.kill(worker.pid, signal.SIGKILL)
                return read(*args, **kwargs)
            lines.get = killed_then_read
            before = self.fallbacks
            order = await super().choose_move(battle)
            self.killed_ok = self.fallbacks == before + 1  # the tactician decided this one
            return order
        searched, before = len(root_orders(battle, self)) > 1, self.fallbacks
        order = await super().choose_move(battle)
        if searched and self.fallbacks == before:
            self.searched_mass.append(float(self.last_policy.sum()))
        return order

    def compare(self, battle):
        self.checked += 1
        ours = battle.last_request["side"]["id"]
        (built,) = self.pool.run([{"cmd": "build", "spec": battle_spec(battle, self._rng)}], timeout=30.0)
        if not isinstance(built, dict):
            raise built
        state = built["state"]
        sim_us, sim_them = state["sides"][0 if ours == "p1" else 1], state["sides"][1 if ours == "p1" else 0]
        where = f"{battle.battle_tag} turn {battle.turn}"
        mismatch = self.mismatches.append
        for entry, sim in zip(battle.last_request["side"]["pokemon"], sim_us["pokemon"], strict=True):
            hp, _, status = entry["condition"].partition(" ")
            sim_hp = "0" if sim["status"] == "fnt" else f"{sim['hp']}/{sim['maxhp']}"
            if hp != sim_hp or (status or "") != ("fnt" if sim["status"] == "fnt" else sim["status"]):
                mismatch(f"{where}: own {entry['ident']} {entry['condition']} vs {sim_hp} {sim['status']}")
        tracker = live_state(battle)
        if sorted(root_orders(battle, self)) != sorted(sim_us["choices"]):
            active = tracker.sides[ours].active
            seen = f"{active.name} {active.status} {sorted(active.volatiles)}" if active else "-"
            mismatch(f"{where}: choices {sorted(root_orders(battle, self))} vs {sorted(sim_us['choices'])} ({seen})")
        for side_id, sim_side in ((ours, sim_us), ("p2" if ours == "p1" else "p1", sim_them)):
            by_name = {p["name"]: p for p in sim_side["pokemon"]}
            for name, mon in tracker.sides[side_id].mons.items():
                sim = by_name.get(name)
                if sim is None:
                    mismatch(f"{where}: {side_id} {name} missing")
                    continue
                sim_hp = 0.0 if sim["status"] == "fnt" else public_hp(sim["hp"], sim["maxhp"])
                # Our own HP was checked against the request (exact; Regenerator is not public).
                if side_id != ours and (abs(sim_hp - mon.hp) > 1e-9 or sim["status"] != mon.status):
                    mismatch(f"{where}: {side_id} {name} {mon.hp} {mon.status} vs {sim_hp} {sim['status']}")
                boosts = {k: v for k, v in mon.boosts.items() if v}
                if mon.active and not mon.fainted and boosts != {k: v for k, v in sim["boosts"].items() if v}:
                    mismatch(f"{where}: {side_id} {name} boosts {boosts} vs {sim['boosts']}")
            conditions = dict(tracker.sides[side_id].conditions)
            if conditions != sim_side["conditions"]:
                mismatch(f"{where}: {side_id} conditions {conditions} vs {sim_side['conditions']}")
        if tracker.weather != state["weather"]:
            mismatch(f"{where}: weather {tracker.weather!r} vs {state['weather']!r}")
        # The evaluation's features (agents/search_value.py) read from the simulated battle are the
        # ones the fit reads from the protocol. Our HP was checked against the request above (the
        # protocol does not show Regenerator's healing).
        for k, side_id in enumerate(("p1", "p2")):
            public, sim = side_features(tracker, side_id), dict(built["features"][k])
            hp_gap = abs(public.pop("hp") - sim.pop("hp"))
            if public != sim or (side_id != ours and hp_gap > 0.05):
                mismatch(f"{where}: {side_id} features {public} vs {sim} (HP apart by {hp_gap:.3f})")


@pytest.mark.server
@pytest.mark.parametrize("fmt,n", [("gen1ou", 2), ("gen9ou", 1)])
def test_real_battles_state_matches_and_never_illegal(showdown, fmt, n):
    logging.getLogger("agents.search").setLevel(logging.ERROR)  # the kill's fallback warning
    teams = load_team_set("competitive", fmt)
    bot = Checked(ms=25, samples=1, workers=1, seed=0, account_configuration=AccountConfiguration.generate("chk", rand=True),
                  battle_format=fmt, team=teams.sampler(3), server_configuration=showdown.server_configuration,
                  max_concurrent_battles=1, log_level=40)
    bot.setup_checks(kill_at=3)
    rival = make_player("tactician", battle_format=fmt, server_configuration=showdown.server_configuration,
                        team=teams.sampler(4))

    async def play():
        await bot.battle_against(rival, n_battles=n)
        for p in (bot, rival):
            await p.ps_client.stop_listening()

    try:
        asyncio.run(play())
    finally:
        bot.close()
    assert bot.n_finished_battles == n
    assert bot.errors == []
    assert bot.mismatches == [], "\n".join(bot.mismatches[:20])
    assert bot.killed_ok and bot.pool.restarts >= 1
    assert bot.checked > 10 * n
    assert bot.decisions > bot.fallbacks >= 1
    assert bot.last_policy.shape == (13,) and len(bot.searched_mass) > 5 * n
    assert bot.searched_mass == pytest.approx([1.0] * len(bot.searched_mass), abs=1e-5)
