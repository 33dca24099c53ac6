"""The search bot's leaf evaluation: a logistic model of who wins, fitted on recorded battles.

A position is scored for p1 as

    sigmoid( sum_k w_k * (f_k(p1) - f_k(p2))  +  (w_alive_tot * d_alive + w_hp_tot * d_hp) / alive_both
             + (w_hp + w_hp_tot / alive_both) * duel )

where f counts, over a side's Pokémon still standing: `alive`, `hp` (the sum of HP fractions),
`slp` (asleep from a foe's move), `rest` (asleep from its own Rest), `par`, `frz`, `psn` (poison,
toxic or burn); and of its active Pokémon: `boosts` (the sum of its stat stages, each within
±3) and `sub` (a Substitute up). Dividing by the Pokémon left on both sides lets a Pokémon
matter more as fewer are left. `duel` is the worker's own look at the fight the two active
Pokémon would have (agents/search_worker.js), in HP fractions, so it weighs what HP weighs.

`fit_weights` learns the weights by logistic regression on the start of every turn of finished
battles, labelled with their winner (scripts/fit_search_value.py). The features are computed
here from the public protocol (battles.state) exactly as the worker computes them from its
simulated battle, which the tests check on real battles.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from battles.protocol import iter_events
from battles.state import BattleState

FEATURES = ("alive", "hp", "slp", "rest", "par", "frz", "psn", "boosts", "sub")
SCALED = ("alive", "hp")  # also divided by the Pokémon left on both sides
COLUMNS = FEATURES + tuple(f"{k}_tot" for k in SCALED)
BOOSTED = ("atk", "def", "spa", "spd", "spe")
WEIGHTS_FILE = Path(__file__).resolve().with_name("search_value.json")


def side_features(state: BattleState, side_id: str) -> dict[str, float]:
    """One side's features; a Pokémon never seen counts as standing at full HP with no status."""
    side = state.sides[side_id]
    f = dict.fromkeys(FEATURES, 0.0)
    seen = list(side.mons.values())
    unseen = max(0, side.team_size - len(seen))
    f["alive"] = f["hp"] = float(unseen)
    for mon in seen:
        if mon.fainted:
            continue
        f["alive"] += 1
        f["hp"] += mon.hp
        if mon.status == "slp":
            f["rest" if mon.rested else "slp"] += 1
        elif mon.status in ("par", "frz"):
            f[mon.status] += 1
        elif mon.status in ("psn", "tox", "brn"):
            f["psn"] += 1
    active = side.active
    if active is not None and not active.fainted:
        f["boosts"] = float(sum(max(-3, min(3, active.boosts.get(s, 0))) for s in BOOSTED))
        f["sub"] = float("substitute" in active.volatiles)
    return f


def positions(log: str) -> Iterator[tuple[int, dict, dict]]:
    """(turn, p1 features, p2 features) at the start of every turn of one battle log."""
    state = BattleState()
    for ev in iter_events(log):
        if ev.kind == "turn":
            yield int(ev.arg(0) or 0), side_features(state, "p1"), side_features(state, "p2")
        state.apply(ev)


def design(f1: dict, f2: dict) -> list[float]:
    """One position's row for the regression: differences, then the scaled differences."""
    both = max(1.0, f1["alive"] + f2["alive"])
    diff = [f1[k] - f2[k] for k in FEATURES]
    return diff + [(f1[k] - f2[k]) / both for k in SCALED]


def fit_weights(x: np.ndarray, y: np.ndarray, l2: float = 1e-4, steps: int = 200) -> np.ndarray:
    """Logistic regression without intercept (the sides are symmetric): weights over COLUMNS."""
    import torch

    xt, yt = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w, yt) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy()


def log_loss(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    z = x @ w
    return float(np.mean(np.logaddexp(0, z) - y * z))


def load_weights(fmt: str, path: Path = WEIGHTS_FILE) -> dict[str, float]:
    """The weights the worker scores `fmt` with: its own fit, else the file's default format's."""
    table = json.loads(Path(path).read_text(encoding="utf-8"))
    formats = table.get("formats", {})
    entry = formats.get(fmt) or formats.get(table.get("default", ""))
    weights = (entry or {}).get("weights", {})
    missing = [k for k in COLUMNS if not isinstance(weights.get(k), int | float)]
    if missing:
        raise ValueError(f"{path}: no usable weights for {fmt!r} (missing {missing}); "
                         "refit them with scripts/fit_search_value.py")
    return weights


def value(weights: dict[str, float], f1: dict, f2: dict, duel: float = 0.0) -> float:
    """p1's win probability by the model (the worker's evaluate, less its clamp and end states)."""
    both = max(1.0, f1["alive"] + f2["alive"])
    z = sum(weights[k] * v for k, v in zip(COLUMNS, design(f1, f2), strict=True))
    z += (weights["hp"] + weights["hp_tot"] / both) * duel
    return 1 / (1 + math.exp(-z))


def rows(logs: Iterable[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(design matrix, outcomes, battle index per row) over (log, winner) pairs; ties are left out."""
    x, y, g = [], [], []
    for k, (log, winner) in enumerate(logs):
        if winner not in ("p1", "p2"):
            continue
        for _, f1, f2 in positions(log):
            x.append(design(f1, f2))
            y.append(1.0 if winner == "p1" else 0.0)
            g.append(k)
    return np.array(x, dtype=float).reshape(-1, len(COLUMNS)), np.array(y), np.array(g, dtype=int)
