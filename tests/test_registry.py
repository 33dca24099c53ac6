"""The agent registry: spec parsing, errors a user can make, and building every kind."""

from __future__ import annotations

import logging

import pytest
from poke_env.player import MaxBasePowerPlayer, RandomPlayer, SimpleHeuristicsPlayer
from poke_env.ps_client.server_configuration import LocalhostServerConfiguration

from agents.heuristics import DamagePlayer, TacticianPlayer
from agents.registry import AgentSpec, describe, known_agents, make_player, parse_spec

BUILT_IN = {
    "random": RandomPlayer,
    "maxbp": MaxBasePowerPlayer,
    "heuristic": SimpleHeuristicsPlayer,
    "bestdamage": DamagePlayer,
    "tactician": TacticianPlayer,
}


def build(spec: str, **kwargs):
    return make_player(spec, battle_format="gen1randombattle",
                       server_configuration=LocalhostServerConfiguration,
                       start_listening=False, **kwargs)


def test_plain_kind():
    spec = parse_spec("  maxbp ")
    assert spec == AgentSpec(kind="maxbp", params={}, text="maxbp")


def test_positional_path_and_typed_params():
    spec = parse_spec("policy:runs/pretrain/final,temperature=0.5,greedy=TRUE,seed=-3,device=cuda:0")
    assert spec.kind == "policy"
    assert spec.params == {
        "path": "runs/pretrain/final", "temperature": 0.5, "greedy": True, "seed": -3,
        "device": "cuda:0",
    }
    assert type(spec.params["seed"]) is int and type(spec.params["temperature"]) is float
    # a path that looks like a number stays a string
    assert parse_spec("policy:123").params == {"path": "123"}
    assert parse_spec("policy:p,temperature=1e-2,greedy=false").params["temperature"] == 0.01
    assert parse_spec("policy:p,greedy=false").params["greedy"] is False


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "known kinds: random, maxbp"),
        ("", "empty agent spec"),
        ("maxbp:", "no arguments"),
        ("policy:a,b", "only the first item may be a bare path"),
        ("policy:a,,seed=1", "empty item"),
        ("policy:a,=3", "must be key=value"),
        ("policy:a,seed=", "must be key=value"),
        ("policy:a,seed=1,seed=2", "'seed' twice"),
        ("policy:a,tempreture=1", "takes no param 'tempreture'; accepted: path, temperature"),
        ("random:runs/x", "takes no param 'path'; accepted: none"),
        ("policy", "needs path"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(ValueError) as err:
        parse_spec(spec)
    assert message in str(err.value)
    if spec:
        assert repr(spec.strip()) in str(err.value) or spec in str(err.value)


def test_known_agents_and_describe():
    kinds = known_agents()
    assert set(BUILT_IN) <= set(kinds)
    for kind in kinds:
        line = describe(kind)
        assert line.startswith(f"{kind}: ") and "\n" not in line
    with pytest.raises(ValueError, match="known kinds"):
        describe("nope")


@pytest.mark.parametrize("kind", sorted(BUILT_IN))
def test_make_player_builds_each_kind_without_a_server(kind):
    player = build(kind)
    assert type(player) is BUILT_IN[kind]
    assert player.format == "gen1randombattle"
    assert player.logger.level == logging.ERROR  # quiet by default
    name = player.username
    assert len(name) <= 18 and name.startswith(kind[:12])


def test_account_names_are_unique_and_short():
    names = {build("tactician").username for _ in range(50)}
    assert len(names) == 50
    long = build("random", name="a-very-long-player-name")
    assert len(long.username) <= 18 and long.username.startswith("a-very-long")


def test_player_kwargs_pass_through():
    player = build("bestdamage", max_concurrent_battles=3, log_level=logging.DEBUG)
    assert player._max_concurrent_battles == 3
    assert player.logger.level == logging.DEBUG


def test_policy_with_a_missing_checkpoint_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-run"
    with pytest.raises(ValueError, match="does not exist"):
        build(f"policy:{missing}")
