"""The policy player in real battles: batched decisions, never an illegal choice."""

from __future__ import annotations

import asyncio

import pytest
from poke_env import AccountConfiguration
from poke_env.player import RandomPlayer

from agents.policy import PolicyPlayer
from battles.encode import ObservationEncoder
from battles.teams import load_team_set
from models.checkpoint import save_checkpoint
from models.policy import PolicyConfig, PolicyTransformer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    enc = ObservationEncoder()
    model = PolicyTransformer(PolicyConfig.preset("tiny", vocab_size=enc.vocab.size, n_tokens=enc.n_tokens,
                                                  n_numbers=enc.n_numbers,
                                                  n_action_features=enc.n_action_features))
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(path, model, encoder_version=enc.version, vocab_hash=enc.vocab.hash)
    return path


class Watched(PolicyPlayer):
    """Counts every error line the server sends back (an illegal choice gets one)."""

    errors: list

    async def _handle_battle_message(self, split_messages):
        for msg in split_messages:
            if len(msg) > 1 and msg[1] == "error":
                self.errors.append("|".join(msg))
        await super()._handle_battle_message(split_messages)


@pytest.mark.server
@pytest.mark.parametrize("fmt,n", [("gen1ou", 8), ("gen9ou", 4)])
def test_never_illegal_and_batched(showdown, checkpoint, fmt, n):
    teams = load_team_set("competitive", fmt)
    # A random-init model at a high temperature tries every kind of legal action.
    policy = Watched(str(checkpoint), temperature=3.0, seed=0,
                     account_configuration=AccountConfiguration.generate("pol", rand=True), battle_format=fmt,
                     team=teams.sampler(0), server_configuration=showdown.server_configuration,
                     max_concurrent_battles=n, log_level=40)
    policy.errors = []
    rival = RandomPlayer(account_configuration=AccountConfiguration.generate("rnd", rand=True), battle_format=fmt,
                         team=teams.sampler(1), server_configuration=showdown.server_configuration,
                         max_concurrent_battles=n, log_level=40)

    async def play():
        await policy.battle_against(rival, n_battles=n)
        for p in (policy, rival):
            await p.ps_client.stop_listening()

    asyncio.run(play())
    assert policy.n_finished_battles == n
    assert policy.errors == []
    assert policy.decisions >= 5 * n
    assert policy.batches < policy.decisions  # concurrent battles shared forward passes
    assert policy._caches == {}  # every finished battle released its cache


@pytest.mark.server
def test_self_play_shares_one_model_and_its_forward_passes(checkpoint):
    """Both sides of a self-play match on the sim backend: one loaded model, and forward passes
    that answer both players at once (their requests arrive together)."""
    from eval.runner import SimRunner

    teams = load_team_set("competitive", "gen1ou")
    runner = SimRunner(f"policy:{checkpoint}", f"policy:{checkpoint}", battle_format="gen1ou",
                       on_record=lambda record: None, teams=(teams.sampler(0), teams.sampler(1)), concurrency=3)
    p1, p2 = runner.players
    passes = p1._shared.passes  # (earlier tests' players of this checkpoint may share it too)

    async def play():
        try:
            return await runner.play(3)
        finally:
            await runner.close()

    stats = asyncio.run(play())
    assert stats.battles == 3 and stats.errors == 0
    assert p1.model is p2.model and p1._shared is p2._shared
    assert p1.decisions > 0 and p2.decisions > 0
    assert p1._shared.passes - passes < p1.batches + p2.batches  # some passes served both sides
    assert p1._caches == {} and p2._caches == {}


@pytest.mark.server
def test_bundled_model_loads_and_plays_legally(showdown):
    """The shipped model: loads without unpickling, plays real gen1ou battles without an illegal
    choice, and beats random play (it wins about every game; 3 of 4 is a low bar)."""
    from agents.registry import bundled_path

    teams = load_team_set("competitive", "gen1ou")
    policy = Watched(str(bundled_path()), greedy=True, seed=0,
                     account_configuration=AccountConfiguration.generate("bun", rand=True),
                     battle_format="gen1ou", team=teams.sampler(0),
                     server_configuration=showdown.server_configuration, max_concurrent_battles=4,
                     log_level=40)
    policy.errors = []
    rival = RandomPlayer(account_configuration=AccountConfiguration.generate("rnd", rand=True),
                         battle_format="gen1ou", team=teams.sampler(1),
                         server_configuration=showdown.server_configuration, max_concurrent_battles=4,
                         log_level=40)

    async def play():
        await policy.battle_against(rival, n_battles=4)
        for p in (policy, rival):
            await p.ps_client.stop_listening()

    asyncio.run(play())
    assert policy.n_finished_battles == 4 and policy.errors == []
    assert policy.n_won_battles >= 3


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_sampling_follows_the_masked_softmax(temperature):
    """_pick samples each legal action as often as softmax(logits / T) says, illegal never."""
    import types

    import numpy as np

    logits = np.array([[2.0, 0.5, -1.0, 9.0, 0.0, 1.0] + [0.0] * 7] * 20_000, np.float32)
    legal = np.zeros_like(logits, dtype=bool)
    legal[:, [0, 1, 2, 5, 12]] = True  # the largest logit (3) is illegal
    fake = types.SimpleNamespace(temperature=temperature, _rng=np.random.default_rng(0))
    picks = PolicyPlayer._pick(fake, logits, legal)
    assert legal[np.arange(len(picks)), picks].all()
    z = np.where(legal[0], logits[0] / temperature, -np.inf)
    expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    observed = np.bincount(picks, minlength=13) / len(picks)
    assert np.abs(observed - expected).max() < 0.015, (observed, expected)
    fake.temperature = 0.0
    assert (PolicyPlayer._pick(fake, logits[:3], legal[:3]) == 0).all()
