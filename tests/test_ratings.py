"""Ratings: Bradley–Terry on the Elo scale, bootstrap intervals, win-rate matrix, Wilson."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from eval.ratings import (
    bootstrap_ratings,
    elo_ratings,
    expected_score,
    field_expectation,
    index_games,
    rate,
    score_matrices,
    wilson_interval,
    win_rate_matrix,
)


def simulate(true_elo, games_per_pair, seed=0, tie_rate=0.0):
    """Games drawn from the Bradley–Terry model with the given Elo ratings."""
    rng = np.random.default_rng(seed)
    a, b, s = [], [], []
    for i, j in itertools.combinations(range(len(true_elo)), 2):
        p = 1 / (1 + 10 ** ((true_elo[j] - true_elo[i]) / 400))
        for _ in range(games_per_pair):
            u = rng.random()
            a.append(i)
            b.append(j)
            # a tie takes tie_rate of the probability mass, centred on the win probability
            s.append(0.5 if abs(u - p) < tie_rate / 2 else float(u < p))
    return np.array(a), np.array(b), np.array(s)


def test_recovers_known_strengths_within_intervals():
    true = np.array([1250.0, 1400.0, 1500.0, 1620.0, 1730.0])
    a, b, s = simulate(true, 250, seed=3)
    r = rate(list("abcde"), a, b, s, n_boot=1000, seed=0, prior=1.0)
    centred = true - true.mean() + 1500
    assert np.all(r.lo <= centred) and np.all(centred <= r.hi), (r.lo, centred, r.hi)
    assert np.all(np.abs(r.rating - centred) < 40)
    assert r.order() == [4, 3, 2, 1, 0]
    assert abs(r.rating.mean() - 1500) < 1e-6
    assert np.all(r.hi - r.lo < 120) and np.all(r.hi - r.lo > 10)


def test_undefeated_agent_stays_finite_and_prior_shrinks():
    a, b, s = np.zeros(30, int), np.ones(30, int), np.ones(30)
    weak = elo_ratings(a, b, s, 2, prior=0.1)
    strong = elo_ratings(a, b, s, 2, prior=5.0)
    assert np.all(np.isfinite(weak)) and weak[0] > weak[1]
    assert weak[0] - weak[1] > strong[0] - strong[1] > 0


def test_ties_count_half():
    a, b = np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])
    r = elo_ratings(a, b, np.full(4, 0.5), 2)
    assert r == pytest.approx([1500, 1500])
    # one win and one tie against the same opponent: a 0.75 score
    W, N = score_matrices([0, 0], [1, 1], [1.0, 0.5], 2)
    assert W[0, 1] == 1.5 and W[1, 0] == 0.5 and N[0, 1] == N[1, 0] == 2
    m = win_rate_matrix([0, 0], [1, 1], [1.0, 0.5], 2)
    assert m.rate[0, 1] == 0.75 and m.rate[1, 0] == 0.25


def test_ratings_match_bradley_terry_likelihood_for_two_agents():
    # Two agents, 30-10: the posterior mode with prior k satisfies a closed form only
    # approximately, but with a tiny prior the gap must be 400*log10(30/10).
    a, b = np.zeros(40, int), np.ones(40, int)
    s = np.r_[np.ones(30), np.zeros(10)]
    r = elo_ratings(a, b, s, 2, prior=1e-6)
    assert r[0] - r[1] == pytest.approx(400 * np.log10(3), abs=0.01)


def test_anchor_and_center():
    a, b, s = simulate([1300, 1500, 1700], 60, seed=1)
    r = elo_ratings(a, b, s, 3, anchor=1, center=1000.0)
    assert r[1] == pytest.approx(1000.0)
    m = elo_ratings(a, b, s, 3)
    assert np.diff(r) == pytest.approx(np.diff(m))


def test_bootstrap_is_seeded():
    a, b, s = simulate([1400, 1600], 50, seed=2)
    lo1, hi1 = bootstrap_ratings(a, b, s, 2, n_boot=200, seed=7)
    lo2, hi2 = bootstrap_ratings(a, b, s, 2, n_boot=200, seed=7)
    lo3, _ = bootstrap_ratings(a, b, s, 2, n_boot=200, seed=8)
    assert np.array_equal(lo1, lo2) and np.array_equal(hi1, hi2)
    assert not np.array_equal(lo1, lo3)
    point = elo_ratings(a, b, s, 2)
    assert np.all(lo1 <= point) and np.all(point <= hi1)


def test_win_rate_matrix_and_wilson():
    a, b, s = simulate([1400, 1500, 1600], 40, seed=4, tie_rate=0.1)
    m = win_rate_matrix(a, b, s, 3)
    off = ~np.eye(3, dtype=bool)
    assert np.allclose((m.rate + m.rate.T)[off], 1.0)
    assert np.all(m.games[off] == 40) and np.all(np.diag(m.games) == 0)
    assert np.all(m.lo[off] <= m.rate[off]) and np.all(m.rate[off] <= m.hi[off])
    assert np.isnan(m.rate[0, 0])
    lo, hi = wilson_interval(m.score[0, 1], 40)
    assert (m.lo[0, 1], m.hi[0, 1]) == (lo, hi)


def test_wilson_interval_values():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(10, 20)
    assert lo == pytest.approx(0.2993, abs=1e-4) and hi == pytest.approx(0.7007, abs=1e-4)
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and 0.8 < lo < 0.9


def test_field_expectation():
    e = expected_score(np.array([1700.0, 1300.0]))
    assert e[0, 1] == pytest.approx(10 / 11) and e[1, 0] == pytest.approx(1 / 11)
    f = field_expectation(np.array([1700.0, 1300.0, 1500.0]))
    assert f[0] == pytest.approx((10 / 11 + 1 / (1 + 10 ** -0.5)) / 2)
    assert f.sum() == pytest.approx(1.5)  # every game's expected scores add to one


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="different agents"):
        elo_ratings([0], [0], [1.0], 2)
    with pytest.raises(ValueError, match="indices"):
        elo_ratings([0], [5], [1.0], 2)
    with pytest.raises(ValueError, match="scores"):
        elo_ratings([0], [1], [2.0], 2)
    with pytest.raises(ValueError, match="prior"):
        elo_ratings([0], [1], [1.0], 2, prior=0)
    with pytest.raises(ValueError, match="not in the list"):
        index_games(["x", "y"], ["x"], ["z"])
    with pytest.raises(ValueError, match="anchor"):
        rate(["x", "y"], [0], [1], [1.0], anchor="q")


def test_agent_without_games_gets_the_prior_rating():
    r = rate(["a", "b", "c"], [0, 0], [1, 1], [1.0, 0.0], n_boot=50)
    assert r.games.tolist() == [2, 2, 0]
    assert np.isnan(r.observed[2])
    assert r.rating[0] == pytest.approx(r.rating[1]) == pytest.approx(r.rating[2])
