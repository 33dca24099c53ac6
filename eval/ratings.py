"""Win rates and ratings. Pure functions, no I/O.

    r = rate(["random", "maxbp"], a=[0, 0, 1], b=[1, 1, 0], score=[0.0, 0.5, 1.0])
    r.rating, r.lo, r.hi          # Elo-scale Bradley–Terry ratings, bootstrap 95% interval
    r.matrix.rate[i, j]           # i's score rate against j, Wilson interval in .lo / .hi
    r.expected                    # i's expected score against the whole field

Games are arrays of (a, b, score): agent indices and a's score (1 win, 0.5 tie, 0 loss).
Ratings are Bradley–Terry strengths fit by Newton's method, with `prior` virtual wins and
`prior` virtual losses for every agent against a fixed reference so that an undefeated
agent stays finite, reported on the Elo scale (400·log10 odds) with mean `center` or an
anchor agent at `center`. Intervals come from resampling battles (seeded); a resample
cannot show what the battles never did (a pair that went 40–0 stays 40–0), so an agent
that lost every game gets its interval's width from its games against the rest and a
finite rating from the prior.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ELO = 400.0 / math.log(10.0)  # natural-log strength -> Elo points


def wilson_interval(wins: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a win rate (ties may count as half wins)."""
    if n <= 0:
        return (0.0, 1.0)
    p = wins / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _games(a, b, score, n_agents: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    if not (a.shape == b.shape == score.shape and a.ndim == 1):
        raise ValueError(f"a, b and score must be 1-D arrays of one length, got {a.shape}, {b.shape}, {score.shape}")
    if a.size and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= n_agents):
        raise ValueError(f"agent indices must lie in [0, {n_agents}); got {a.min()}..{a.max()}, {b.min()}..{b.max()}")
    if np.any(a == b):
        raise ValueError("a game needs two different agents (a == b somewhere)")
    if np.any((score < 0) | (score > 1)):
        raise ValueError("scores must lie in [0, 1] (1 win, 0.5 tie, 0 loss)")
    return a, b, score


def score_matrices(a, b, score, n_agents: int, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """(W, N): W[i, j] = i's total score against j, N[i, j] = games between i and j."""
    a, b, score = _games(a, b, score, n_agents)
    w = np.ones_like(score) if weights is None else np.asarray(weights, dtype=np.float64)
    W = np.zeros((n_agents, n_agents))
    N = np.zeros((n_agents, n_agents))
    np.add.at(W, (a, b), w * score)
    np.add.at(W, (b, a), w * (1 - score))
    np.add.at(N, (a, b), w)
    np.add.at(N, (b, a), w)
    return W, N


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for large |x|


def fit_strengths(W: np.ndarray, N: np.ndarray, prior: float = 1.0, *, tol: float = 1e-9,
                  max_iter: int = 200) -> np.ndarray:
    """Bradley–Terry log-strengths (natural log) maximizing the posterior; batched over a leading axis."""
    if prior <= 0:
        raise ValueError(f"prior must be > 0 (it keeps undefeated agents finite), got {prior}")
    W, N = np.asarray(W, dtype=np.float64), np.asarray(N, dtype=np.float64)
    batched = W.ndim == 3
    if not batched:
        W, N = W[None], N[None]
    n = W.shape[-1]
    theta = np.zeros(W.shape[:2])  # (B, n)
    wins = W.sum(-1)  # (B, n)
    for _ in range(max_iter):
        s = _sigmoid(theta[:, :, None] - theta[:, None, :])  # (B, n, n): P(i beats j)
        s0 = _sigmoid(theta)  # against the reference at strength 0
        grad = wins - (N * s).sum(-1) + prior * (1.0 - 2.0 * s0)
        v = N * s * (1.0 - s)
        hess = v.copy()  # off-diagonal: +N s (1 - s)
        diag = -v.sum(-1) - 2.0 * prior * s0 * (1.0 - s0)
        hess[:, np.arange(n), np.arange(n)] = diag
        step = np.linalg.solve(hess, -grad[..., None])[..., 0]
        # The posterior is concave, but a full Newton step from far away can overshoot.
        step = np.clip(step, -2.0, 2.0)
        theta = theta + step
        if np.max(np.abs(step)) < tol:
            break
    else:
        raise AssertionError(f"Bradley–Terry fit did not converge in {max_iter} Newton steps")
    return theta if batched else theta[0]


def to_elo(theta: np.ndarray, *, center: float = 1500.0, anchor: int | None = None) -> np.ndarray:
    """Log-strengths on the Elo scale, with mean `center` (or agent `anchor` at `center`)."""
    elo = ELO * np.asarray(theta, dtype=np.float64)
    ref = elo[..., anchor] if anchor is not None else elo.mean(-1)
    return elo - np.asarray(ref)[..., None] + center


def elo_ratings(a, b, score, n_agents: int, *, prior: float = 1.0, center: float = 1500.0,
                anchor: int | None = None) -> np.ndarray:
    """Bradley–Terry ratings on the Elo scale from games (a, b, a's score)."""
    W, N = score_matrices(a, b, score, n_agents)
    return to_elo(fit_strengths(W, N, prior), center=center, anchor=anchor)


def bootstrap_ratings(a, b, score, n_agents: int, *, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95, prior: float = 1.0, center: float = 1500.0,
                      anchor: int | None = None, samples: bool = False):
    """(lo, hi) percentile intervals of the Elo ratings over battles resampled with replacement;
    with `samples`, also the resampled ratings themselves (n_boot, n_agents), from which the
    interval of a difference between two agents can be read."""
    a, b, score = _games(a, b, score, n_agents)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1 or a.size == 0:
        nan = np.full(n_agents, np.nan)
        return (nan, nan.copy(), np.empty((0, n_agents))) if samples else (nan, nan.copy())
    rng = np.random.default_rng(seed)
    # Resampling battles with replacement draws a multinomial count per distinct outcome
    # (a, b, score), in proportion to how often it occurred: exact and cheap.
    outcomes, sizes = np.unique(np.stack([a, b, score]), axis=1, return_counts=True)
    counts = rng.multinomial(a.size, sizes / a.size, size=n_boot)  # (B, outcomes)
    W = np.zeros((n_boot, n_agents, n_agents))
    N = np.zeros((n_boot, n_agents, n_agents))
    for k, (i, j, s) in enumerate(outcomes.T):
        i, j, c = int(i), int(j), counts[:, k]
        W[:, i, j] += c * s
        W[:, j, i] += c * (1 - s)
        N[:, i, j] += c
        N[:, j, i] += c
    elo = to_elo(fit_strengths(W, N, prior), center=center, anchor=anchor)  # (B, n)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(elo, tail, axis=0), np.percentile(elo, 100 - tail, axis=0)
    return (lo, hi, elo) if samples else (lo, hi)


def expected_score(elo: np.ndarray) -> np.ndarray:
    """E[i, j]: i's expected score against j from Elo ratings (diagonal 0.5)."""
    elo = np.asarray(elo, dtype=np.float64)
    return 1.0 / (1.0 + 10.0 ** ((elo[None, :] - elo[:, None]) / 400.0))


def field_expectation(elo: np.ndarray) -> np.ndarray:
    """Each agent's expected score against every other agent, averaged (the whole field)."""
    n = len(elo)
    if n < 2:
        return np.full(n, np.nan)
    e = expected_score(elo)
    return (e.sum(1) - 0.5) / (n - 1)


@dataclass(frozen=True)
class WinRateMatrix:
    """Pairwise score rates: rate[i, j] = i's score against j; Wilson lo/hi; games; nan off-play."""

    score: np.ndarray
    games: np.ndarray
    rate: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def win_rate_matrix(a, b, score, n_agents: int) -> WinRateMatrix:
    """The win-rate matrix (ties half) with a Wilson interval in each cell."""
    W, N = score_matrices(a, b, score, n_agents)
    rate = np.full_like(W, np.nan)
    lo, hi = np.full_like(W, np.nan), np.full_like(W, np.nan)
    for i in range(n_agents):
        for j in range(n_agents):
            if N[i, j] > 0:
                rate[i, j] = W[i, j] / N[i, j]
                lo[i, j], hi[i, j] = wilson_interval(W[i, j], int(N[i, j]))
    return WinRateMatrix(W, N.astype(np.int64), rate, lo, hi)


@dataclass(frozen=True)
class Ratings:
    """Everything a ranking needs, indexed like `names`."""

    names: list[str]
    rating: np.ndarray  # Elo scale
    lo: np.ndarray  # bootstrap interval
    hi: np.ndarray
    expected: np.ndarray  # expected score against the field, from the ratings
    observed: np.ndarray  # observed score rate over all its games
    games: np.ndarray
    matrix: WinRateMatrix
    boot: np.ndarray | None = None  # the bootstrap's resampled ratings (n_boot, n_agents)

    def gain_interval(self, i: int, j: int, level: float = 0.95) -> tuple[float, float]:
        """The bootstrap interval of rating[i] - rating[j] (both from the same resampled battles)."""
        if self.boot is None or len(self.boot) == 0:
            return float("nan"), float("nan")
        diff = self.boot[:, i] - self.boot[:, j]
        tail = 100 * (1 - level) / 2
        return float(np.percentile(diff, tail)), float(np.percentile(diff, 100 - tail))

    def order(self) -> list[int]:
        """Agent indices from the highest rating down (name breaks ties)."""
        return sorted(range(len(self.names)), key=lambda i: (-self.rating[i], self.names[i]))


def rate(names: Sequence[str], a, b, score, *, prior: float = 1.0, n_boot: int = 1000,
         seed: int = 0, level: float = 0.95, center: float = 1500.0, anchor: str | None = None) -> Ratings:
    """Ratings, bootstrap intervals, win-rate matrix and field expectations for named agents."""
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"agent names must be unique, got {names}")
    if anchor is not None and anchor not in names:
        raise ValueError(f"anchor agent {anchor!r} is not among {names}")
    n = len(names)
    anchor_i = names.index(anchor) if anchor is not None else None
    a, b, score = _games(a, b, score, n)
    rating = elo_ratings(a, b, score, n, prior=prior, center=center, anchor=anchor_i)
    lo, hi, boot = bootstrap_ratings(a, b, score, n, n_boot=n_boot, seed=seed, level=level,
                                     prior=prior, center=center, anchor=anchor_i, samples=True)
    matrix = win_rate_matrix(a, b, score, n)
    games = matrix.games.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = np.where(games > 0, matrix.score.sum(1) / np.maximum(games, 1), np.nan)
    return Ratings(names, rating, lo, hi, field_expectation(rating), observed, games, matrix, boot)


def index_games(names: Sequence[str], a_names: Sequence[str], b_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Agent-name columns -> index arrays into `names` (ValueError on an unknown name)."""
    pos = {name: i for i, name in enumerate(names)}
    missing = sorted({x for x in (*a_names, *b_names) if x not in pos})
    if missing:
        raise ValueError(f"games name agents not in the list {list(names)}: {missing}")
    return (np.array([pos[x] for x in a_names], dtype=np.int64),
            np.array([pos[x] for x in b_names], dtype=np.int64))
