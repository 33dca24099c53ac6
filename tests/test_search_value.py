"""The search bot's fitted leaf evaluation: features from logs, the fit, the script, and the
worker scoring a battle exactly as the Python model does."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from agents.search_value import COLUMNS, FEATURES, fit_weights, load_weights, positions, value
from agents.search_workers import SimWorker
from battles.teams import load_team_set
from eval.match import Match

_spec = importlib.util.spec_from_file_location(
    "fit_search_value", Path(__file__).resolve().parents[1] / "scripts" / "fit_search_value.py")
fit_search_value = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fit_search_value)

LOG = "\n".join([
    "|player|p1|a|", "|player|p2|b|", "|teamsize|p1|6", "|teamsize|p2|6", "|gen|1", "|start",
    "|switch|p1a: Chansey|Chansey|100/100", "|switch|p2a: Gengar|Gengar|100/100", "|turn|1",
    "|move|p2a: Gengar|Hypnosis|p1a: Chansey", "|-status|p1a: Chansey|slp|[from] move: Hypnosis",
    "|move|p1a: Chansey|Thunder Wave|p2a: Gengar", "|-status|p2a: Gengar|par", "|turn|2",
    "|switch|p1a: Snorlax|Snorlax|100/100", "|move|p2a: Gengar|Night Shade|p1a: Snorlax",
    "|-damage|p1a: Snorlax|80/100", "|turn|3",
    "|move|p1a: Snorlax|Rest|p1a: Snorlax", "|-status|p1a: Snorlax|slp|[from] move: Rest",
    "|-heal|p1a: Snorlax|100/100 slp|[silent]", "|move|p2a: Gengar|Explosion|p1a: Snorlax",
    "|-damage|p1a: Snorlax|40/100 slp", "|faint|p2a: Gengar", "|turn|4",
    "|switch|p2a: Tauros|Tauros|100/100", "|-boost|p2a: Tauros|atk|1", "|turn|5", "|win|a",
])


def test_features_follow_the_log():
    (t1, a1, b1), (_, a2, b2), (_, a3, _), (_, a4, b4), (_, _, b5) = list(positions(LOG))
    assert t1 == 1 and a1 == dict.fromkeys(FEATURES, 0.0) | {"alive": 6.0, "hp": 6.0}
    assert a2["slp"] == 1 and b2["par"] == 1 and a2["rest"] == 0
    assert a3["hp"] == pytest.approx(5.8, abs=0.02) and a3["slp"] == 1
    # Snorlax asleep from its own Rest; Gengar fainted (one fewer left, its paralysis gone).
    assert (a4["slp"], a4["rest"], a4["hp"]) == (1, 1, pytest.approx(5.4, abs=0.02))
    assert (b4["alive"], b4["hp"], b4["par"]) == (5, 5.0, 0)
    assert b5["boosts"] == 1


def test_fit_recovers_a_known_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, len(COLUMNS)))
    w = rng.normal(size=len(COLUMNS))
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-x @ w))).astype(float)
    assert np.abs(fit_weights(x, y, l2=0.0) - w).max() < 0.1


@pytest.mark.server
def test_script_fits_recorded_battles(showdown, tmp_path):
    # Both seatings, so that p1 and p2 both win some (the tactician nearly always beats maxbp).
    for p1, p2 in (("tactician", "maxbp"), ("maxbp", "tactician")):
        Match(p1, p2, battle_format="gen1ou", team_set="competitive", n=8, out_dir=tmp_path / "battles",
              concurrency=8, server=showdown, progress=False).run()
    Match("random", "maxbp", battle_format="gen1ou", team_set="competitive", n=4, out_dir=tmp_path / "battles",
          concurrency=4, server=showdown, progress=False).run()
    out = tmp_path / "value.json"
    entry = fit_search_value.main([str(tmp_path / "battles"), "--out", str(out)])
    fit = entry["fit"]
    assert fit["battles"] == 16 and fit["excluded"] == 4 and fit["positions"] > 16 * 5
    assert fit["matchups"] == {"maxbp vs tactician": 16}
    held = fit["held_out_log_loss"]
    assert 0 < held["all_features"] < 2 and held["coin"] == pytest.approx(np.log(2), abs=1e-4)
    weights = load_weights("gen9ou", out)  # no gen9ou fit: the default format's weights
    assert set(weights) == set(COLUMNS) and weights == json.loads(out.read_text())["formats"]["gen1ou"]["weights"]
    with pytest.raises(SystemExit, match="no gen2ou battles"):
        fit_search_value.main([str(tmp_path / "battles"), "--format", "gen2ou", "--out", str(out)])


@pytest.mark.server
def test_worker_scores_as_the_python_model():
    teams = load_team_set("competitive", "gen1ou")
    a, b = teams.teams[0], teams.teams[5]
    mons_a = [{"hp_frac": 0.5, "status": "par"}, {"hp_frac": 1.0, "status": "slp", "sleep_turns": 1},
              {"hp_frac": 0.7, "status": "slp", "rested": True}] + [{"hp_frac": 1.0}] * 3
    mons_b = [{"hp_frac": 0.9, "boosts": {"atk": 2, "spe": -1}}, {"fainted": True},
              {"hp_frac": 0.3, "status": "frz"}] + [{"hp_frac": 1.0, "status": "tox"}] + [{"hp_frac": 1.0}] * 2
    spec = {"format": "gen1ou", "seed": 3, "sides": [{"team": a.packed, "mons": mons_a}, {"team": b.packed, "mons": mons_b}]}
    worker = SimWorker().start()
    try:
        built = worker.call({"cmd": "build", "spec": spec}, timeout=30)
    finally:
        worker.close()
    f1, f2 = built["features"]
    assert (f1["alive"], f1["par"], f1["slp"], f1["rest"]) == (6, 1, 1, 1)
    assert (f2["alive"], f2["frz"], f2["psn"], f2["boosts"]) == (5, 1, 1, 1)
    assert f1["hp"] == pytest.approx(5.2, abs=0.02) and f2["hp"] == pytest.approx(4.2, abs=0.02)
    expected = value(load_weights("gen1ou"), f1, f2, built["duel"])
    assert built["value"] == pytest.approx(expected, abs=1e-9)
    assert 0.01 < built["value"] < 0.99 and built["duel"] != 0
