"""Live/log parity: a battle's live observations equal those rebuilt from its own log.

Heuristic agents play gen1ou and gen9ou on a real local server; every live decision
records view_from_battle -> encode, the legal mask and the chosen index. Each battle is then
rebuilt from the server's JSON three ways and compared decision by decision:

- A: spectator log + exact choices + exact teams (how Qabra builds its own battles):
  everything must match, actions included;
- B: spectator log + exact choices, no team: spectator-visible fields must match; own
  fields the log backfills must agree, predictions are scored;
- C: spectator log alone (how human replays are built): actions read from the log must
  equal the recorded choice where the log shows them.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from poke_env import AccountConfiguration
from poke_env.player import MaxBasePowerPlayer, SimpleHeuristicsPlayer

from battles import actions
from battles.encode import encode
from battles.live import order_to_index, view_from_battle
from battles.log_views import decisions_from_log
from battles.server import ShowdownServer

pytestmark = pytest.mark.server

N_BATTLES = 20
PUBLIC_MON_FIELDS = ("species", "hp", "status", "active", "revealed", "boosts", "volatiles", "terastallized", "types")
PRIVATE_MON_FIELDS = ("level", "moves", "item", "ability", "tera_type")


class _Recorder:
    """Mixin: after the wrapped player picks an order, record the live view, encoding and index."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records: dict[str, dict[int, dict]] = {}

    def choose_move(self, battle):
        order = super().choose_move(battle)
        view = view_from_battle(battle)
        tokens, numbers = encode(view)
        index = order_to_index(order, battle, view)
        rqid = battle.last_request.get("rqid", len(self.records.get(battle.battle_tag, {})))
        self.records.setdefault(battle.battle_tag, {})[rqid] = {
            "view": view, "tokens": tokens, "numbers": numbers, "index": index, "message": order.message,
        }
        return order


class HeuristicRecorder(_Recorder, SimpleHeuristicsPlayer):
    pass


class TeraMaxPower(MaxBasePowerPlayer):
    """MaxBasePowerPlayer that terastallises at its first chance (so tera shows up in logs)."""

    def choose_move(self, battle):
        order = super().choose_move(battle)
        if battle.can_tera and hasattr(getattr(order, "order", None), "base_power"):
            order = self.create_order(order.order, terastallize=True)
        return order


class MaxPowerRecorder(_Recorder, TeraMaxPower):
    pass


async def _play(fmt: str, n: int, server: ShowdownServer) -> tuple[list[dict], dict]:
    from battles.teams import load_team_set

    teams = load_team_set("competitive", fmt)
    common = dict(battle_format=fmt, server_configuration=server.server_configuration, max_concurrent_battles=n)
    p1 = HeuristicRecorder(account_configuration=AccountConfiguration.generate("parh", rand=True),
                           team=teams.sampler(seed=1), **common)
    p2 = MaxPowerRecorder(account_configuration=AccountConfiguration.generate("parm", rand=True),
                          team=teams.sampler(seed=2), **common)
    await p1.battle_against(p2, n_battles=n)
    live = {}
    for player in (p1, p2):
        for tag, battle in player.battles.items():
            live[(tag, battle.player_role)] = [r for _, r in sorted(player.records.get(tag, {}).items())]
        await player.ps_client.stop_listening()
    for _ in range(300):  # the server writes each battle's JSON as the battle ends (slow under load)
        if len(list(server.battle_dir.glob("*.json"))) >= n:
            break
        await asyncio.sleep(0.1)
    records = [json.loads(p.read_text()) for p in sorted(server.battle_dir.glob("*.json"))]
    return records, live


def _replay(rec: dict) -> dict:
    return {"id": rec["roomid"], "format": rec["format"], "players": rec["players"], "log": rec["log"],
            "uploadtime": rec.get("uploadtime"), "rating": None}


def _choices(rec: dict, side: str) -> list[str]:
    prefix = f">{side} "
    return [line[len(prefix):] for line in rec["inputLog"] if line.startswith(prefix)]


def _public(view) -> tuple:
    """What a spectator log shows. A benched own Pokémon's HP is left out: Regenerator heals
    it silently, and a log rebuild can only estimate that (see _bench_hp)."""
    own = tuple((p.name,) + tuple(getattr(p, f) if f != "hp" or p.active else None for f in PUBLIC_MON_FIELDS)
                for p in view.own.pokemon if p.revealed)
    return (view.turn, view.weather, view.fields, view.force_switch, view.opp, own, view.own.conditions,
            view.own.tera_used)


def _bench_hp(view) -> dict[str, float]:
    return {p.name: p.hp for p in view.own.pokemon if p.revealed and not p.active}


def _bench_hp_close(a, b) -> bool:
    ha, hb = _bench_hp(a), _bench_hp(b)
    return ha.keys() == hb.keys() and all(abs(ha[k] - hb[k]) <= 0.0101 for k in ha)


def _bits(mask) -> str:
    return "".join("1" if x else "." for x in mask)


def _diff(a, b) -> str:
    """The first differing leaf of two nested tuples/dataclasses, for a readable failure."""
    if hasattr(a, "__dataclass_fields__") and type(a) is type(b):
        for f in a.__dataclass_fields__:
            if getattr(a, f) != getattr(b, f):
                return f"{f}: " + _diff(getattr(a, f), getattr(b, f))
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return f"[{i}] " + _diff(x, y)
    return f"log {a!r} live {b!r}"[:300]


def _example(c: Counter, kind: str, room: str, side: str, view, text: str) -> None:
    examples = c.setdefault("examples", [])
    if sum(e.startswith(kind) for e in examples) < 3:
        examples.append(f"{kind} {room} {side} turn {view.turn}: {text}")


def compare(records: list[dict], live: dict) -> dict:
    """Decision-by-decision comparison of live and rebuilt views; returns counts and rates."""
    c: Counter = Counter()
    for rec in records:
        replay = _replay(rec)
        sides = ("p1", "p2")
        choices = {s: _choices(rec, s) for s in sides}
        teams = {s: rec.get(f"{s}team") for s in sides}
        notes: dict[str, int] = {}
        exact = decisions_from_log(replay, sides, choices, teams, notes=notes)
        backfilled = decisions_from_log(replay, sides, choices, None)
        unpredicted = decisions_from_log(replay, sides, choices, None, stats=False)
        spectator = decisions_from_log(replay, sides, None, None)
        for key, n in notes.items():
            c["note_" + key] += n
        for s in sides:
            lives = live.get((rec["roomid"], s), [])
            nonteam = [x for x in choices[s] if not x.startswith("team ")]
            c["live_decisions"] += len(lives)
            c["live_choice_count_mismatch"] += len(lives) != len(nonteam)
            by_choice = {d.choice_index: d for d in exact[s] if d.choice_index >= 0}
            by_choice_b = {d.choice_index: d for d in backfilled[s] if d.choice_index >= 0}
            by_choice_u = {d.choice_index: d for d in unpredicted[s] if d.choice_index >= 0}
            spect = {(d.view.turn, d.view.force_switch, d.visible.partition(":")[2]): d for d in spectator[s]}
            for k, rec_live in enumerate(lives):
                lv = rec_live["view"]
                forced = sum(lv.legal) <= 1
                d = by_choice.get(k)
                if d is None:
                    c["unaligned"] += 1
                    continue
                c["aligned"] += 1
                v = d.view
                c["public_equal"] += _public(v) == _public(lv)
                if _public(v) != _public(lv):
                    _example(c, "public", rec["roomid"], s, v, _diff(_public(v), _public(lv)))
                c["private_equal"] += all(
                    [getattr(a, f) for f in PRIVATE_MON_FIELDS] == [getattr(b, f) for f in PRIVATE_MON_FIELDS]
                    for a, b in zip(v.own.pokemon, lv.own.pokemon, strict=False)) and len(v.own.pokemon) == len(lv.own.pokemon)
                c["bench_hp_equal"] += _bench_hp(v) == _bench_hp(lv)
                c["bench_hp_close"] += _bench_hp_close(v, lv)
                c["legal_equal"] += v.legal == lv.legal
                if v.legal != lv.legal:
                    _example(c, "legal", rec["roomid"], s, v, f"log {_bits(v.legal)} live {_bits(lv.legal)}")
                tokens, numbers = encode(v)
                same_encoding = bool((tokens == rec_live["tokens"]).all() and (numbers == rec_live["numbers"]).all())
                c["encoding_equal"] += same_encoding
                if _bench_hp(v) == _bench_hp(lv):  # a log can only estimate a silent Regenerator heal
                    c["encoding_equal_same_bench"] += same_encoding
                if not forced:
                    c["nonforced"] += 1
                    c["action_equal"] += d.action == rec_live["index"]
                    if d.action != rec_live["index"]:
                        _example(c, "action", rec["roomid"], s, v, f"log {d.action} live {rec_live['index']} ({d.choice})")
                b = by_choice_b.get(k)
                if b is not None:
                    c["b_aligned"] += 1
                    c["b_public_equal"] += _public(b.view) == _public(lv)
                    truth = {p.name: p for p in lv.own.pokemon}
                    shown = {p.name: set(p.moves) for p in by_choice_u[k].view.own.pokemon}
                    for p in b.view.own.pokemon:
                        t = truth.get(p.name)
                        if t is None:
                            continue
                        for f in ("item", "ability", "tera_type"):
                            if f in p.predicted:
                                c[f"b_predicted_{f}"] += 1
                                c[f"b_predicted_{f}_right"] += getattr(p, f) == getattr(t, f)
                            else:
                                c[f"b_backfilled_{f}"] += 1
                                c[f"b_backfilled_{f}_right"] += getattr(p, f) == getattr(t, f)
                        seen = [m for m in p.moves if m in shown.get(p.name, ()) and m != "<unknown>"]
                        guessed = [m for m in p.moves if m not in shown.get(p.name, ()) and m != "<unknown>"]
                        c["b_moves_seen"] += len(seen)
                        c["b_moves_seen_right"] += sum(m in t.moves for m in seen)
                        c["b_moves_predicted"] += len(guessed)
                        c["b_moves_predicted_right"] += sum(m in t.moves for m in guessed)
                    if not forced:
                        # Slot 0 as the only legal move (a lone pseudo-move such as gen 1's
                        # 'Fight') means "use it" whatever move name a predicted set sorts first.
                        lone = b.action == rec_live["index"] == 0 and not any(lv.legal[1:4]) and not any(b.view.legal[1:4])
                        c["b_action_semantic_equal"] += lone or actions.describe(b.view, b.action) == actions.describe(lv, rec_live["index"])
                if not forced:
                    key = (lv.turn, lv.force_switch, actions.describe(lv, rec_live["index"]).partition(":")[2])
                    sd = spect.get(key)
                    if sd is not None and sd.action >= 0:
                        c["c_visible"] += 1
                        c["c_action_semantic_equal"] += actions.describe(sd.view, sd.action) == actions.describe(lv, rec_live["index"])
    return dict(c)


def _rate(c: dict, num: str, den: str) -> float:
    return c.get(num, 0) / max(1, c.get(den, 0))


def report(fmt: str, c: dict) -> str:
    """One readable block of match rates."""
    lines = [f"[{fmt}] live decisions {c.get('live_decisions', 0)}, aligned {c.get('aligned', 0)}, "
             f"unaligned {c.get('unaligned', 0)}, non-forced {c.get('nonforced', 0)}"]
    lines.append(f"  A exact: public {_rate(c, 'public_equal', 'aligned'):.4f}  bench HP {_rate(c, 'bench_hp_equal', 'aligned'):.4f} "
                 f"(within 1%: {_rate(c, 'bench_hp_close', 'aligned'):.4f})  private {_rate(c, 'private_equal', 'aligned'):.4f}  "
                 f"legal {_rate(c, 'legal_equal', 'aligned'):.4f}  encoding {_rate(c, 'encoding_equal', 'aligned'):.4f} "
                 f"(same bench HP: {_rate(c, 'encoding_equal_same_bench', 'bench_hp_equal'):.4f})  "
                 f"action {_rate(c, 'action_equal', 'nonforced'):.4f}")
    lines.append(f"  B log+choices: public {_rate(c, 'b_public_equal', 'b_aligned'):.4f}  action {_rate(c, 'b_action_semantic_equal', 'nonforced'):.4f}"
                 "  (own fields below: counts over Pokémon x decisions)")
    lines.append(f"    moves: from the log {c.get('b_moves_seen', 0)} right {_rate(c, 'b_moves_seen_right', 'b_moves_seen'):.4f}; "
                 f"predicted {c.get('b_moves_predicted', 0)} right {_rate(c, 'b_moves_predicted_right', 'b_moves_predicted'):.4f}")
    for f in ("item", "ability", "tera_type"):
        lines.append(f"    {f}: known {c.get(f'b_backfilled_{f}', 0)} right {_rate(c, f'b_backfilled_{f}_right', f'b_backfilled_{f}'):.4f}; "
                     f"predicted {c.get(f'b_predicted_{f}', 0)} right {_rate(c, f'b_predicted_{f}_right', f'b_predicted_{f}'):.4f}")
    lines.append(f"  C spectator only: visible {_rate(c, 'c_visible', 'nonforced'):.4f} of non-forced, "
                 f"equal {_rate(c, 'c_action_semantic_equal', 'c_visible'):.4f} of visible")
    notes = {k: v for k, v in c.items() if k.startswith("note_")}
    if notes:
        lines.append(f"  notes {notes}")
    lines += [f"  e.g. {e}" for e in c.get("examples", [])]
    return "\n".join(lines)


@pytest.mark.parametrize("fmt", ["gen1ou", "gen9ou"])
def test_live_and_log_views_agree(fmt, capsys):
    with ShowdownServer() as server:
        records, live = asyncio.run(_play(fmt, N_BATTLES, server))
    assert len(records) >= N_BATTLES, f"server recorded {len(records)} of {N_BATTLES} battles"
    c = compare(records, live)
    with capsys.disabled():  # the match rates are the point of this test: always show them
        print("\n" + report(fmt, c))
    assert c["aligned"] >= 0.99 * c["live_decisions"]
    assert _rate(c, "action_equal", "nonforced") >= 0.99
    assert _rate(c, "b_action_semantic_equal", "nonforced") >= 0.99
    assert _rate(c, "public_equal", "aligned") >= 0.99
    assert _rate(c, "bench_hp_close", "aligned") >= 0.99
    assert _rate(c, "b_moves_seen_right", "b_moves_seen") == 1.0  # what the log shows is never wrong
    for f in ("item", "ability", "tera_type"):
        assert _rate(c, f"b_backfilled_{f}_right", f"b_backfilled_{f}") >= 0.99
    assert _rate(c, "b_public_equal", "b_aligned") >= 0.99
    assert _rate(c, "c_action_semantic_equal", "c_visible") >= 0.99
