"""The agent registry: spec strings such as `maxbp` or `policy:runs/x,temp=0.5` -> poke-env Players.

Grammar: `kind` or `kind:ARGS`, ARGS comma-separated. The first item may lack `=`: it is the
positional argument `path`. Every other item is `key=value`; values that look like an int,
a float or a bool (`true`/`false`) are parsed as such, anything else stays a string.

    player = make_player("tactician", battle_format="gen1randombattle",
                         server_configuration=server.server_configuration)

The table `AGENTS` maps each kind to its factory. Kinds whose code is heavy (the policy, the
search bot) import it inside their factory, so listing the kinds stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poke_env import AccountConfiguration
from poke_env.player import MaxBasePowerPlayer, Player, RandomPlayer, SimpleHeuristicsPlayer

QUIET = 40  # logging.ERROR: battle chatter stays out of long runs
_NAME_KEY_CHARS = 12  # "key xxxxx" must fit Showdown's 18-character names

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)


@dataclass(frozen=True)
class AgentSpec:
    """A parsed agent spec: the kind, its parameters (`path` for the positional one), the text."""

    kind: str
    params: dict = field(hash=False)
    text: str


@dataclass(frozen=True)
class AgentKind:
    """One registry entry: how to build the player, which params it takes, a help line."""

    factory: Callable[..., Player]
    params: tuple[str, ...]
    help: str
    required: tuple[str, ...] = ()


def _plain(cls: type[Player]) -> Callable[..., Player]:
    def factory(spec: AgentSpec, **player_kwargs: Any) -> Player:
        return cls(**player_kwargs)

    return factory


def _bestdamage(spec: AgentSpec, **player_kwargs: Any) -> Player:
    from agents.heuristics import DamagePlayer

    return DamagePlayer(**player_kwargs)


def _tactician(spec: AgentSpec, **player_kwargs: Any) -> Player:
    from agents.heuristics import TacticianPlayer

    return TacticianPlayer(**player_kwargs)


def _policy(spec: AgentSpec, **player_kwargs: Any) -> Player:
    params = dict(spec.params)
    path = params.pop("path")
    if not Path(path).exists():
        raise ValueError(
            f"agent spec {spec.text!r}: checkpoint folder {path!r} does not exist; give the "
            "folder holding config.json and model.safetensors"
        )
    if "labels" in params:
        from agents.labelled_policy import SearchLabelledPolicy

        return SearchLabelledPolicy(path, **params, **player_kwargs)
    if any(k.startswith("label_") for k in params):
        raise ValueError(f"agent spec {spec.text!r}: label_* params need labels=DIR")
    from agents.policy import PolicyPlayer  # torch and the model load only when asked for

    return PolicyPlayer(path, **params, **player_kwargs)


BUNDLED_DIR = Path(__file__).resolve().parents[1] / "models" / "bundled"
DEFAULT_BUNDLED = "qabra-gen1ou"


def bundled_models() -> list[str]:
    """Names of the checkpoints shipped in models/bundled/."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.parent.name for p in BUNDLED_DIR.glob("*/model.safetensors"))


def bundled_path(name: str = DEFAULT_BUNDLED) -> Path:
    """The folder of a bundled checkpoint; ValueError naming the ones that exist."""
    path = BUNDLED_DIR / name
    if not (path / "model.safetensors").is_file():
        raise ValueError(f"no bundled model {name!r}; shipped: {', '.join(bundled_models()) or 'none'} "
                         f"(in {BUNDLED_DIR})")
    return path


def _bundled(spec: AgentSpec, **player_kwargs: Any) -> Player:
    from agents.policy import PolicyPlayer

    params = dict(spec.params)
    path = bundled_path(params.pop("path", DEFAULT_BUNDLED))
    if "temperature" not in params:
        params.setdefault("greedy", True)  # the model card's numbers are greedy play
    return PolicyPlayer(str(path), **params, **player_kwargs)


def _search(spec: AgentSpec, **player_kwargs: Any) -> Player:
    from agents.search import SearchPlayer  # numpy, threads and the Node worker only when asked for

    return SearchPlayer(**spec.params, **player_kwargs)


AGENTS: dict[str, AgentKind] = {
    "random": AgentKind(_plain(RandomPlayer), (), "uniformly random legal order"),
    "maxbp": AgentKind(
        _plain(MaxBasePowerPlayer), (), "the available move with the highest base power"
    ),
    "heuristic": AgentKind(
        _plain(SimpleHeuristicsPlayer), (), "poke-env's SimpleHeuristicsPlayer (modern-gen rules)"
    ),
    "bestdamage": AgentKind(
        _bestdamage, (), "best expected damage (gen-aware types, stats, STAB); switches only when forced"
    ),
    "tactician": AgentKind(
        _tactician,
        (),
        "bestdamage plus status moves, healing, safe set-up and switching out of lost match-ups",
    ),
    "policy": AgentKind(
        _policy,
        ("path", "temperature", "greedy", "seed", "device", "threads", "labels", "label_ms", "label_samples",
         "label_seed", "label_min_visits", "label_below"),
        "a trained PolicyTransformer checkpoint: policy:PATH[,temperature=T,greedy=true]; with "
        "labels=DIR[,label_ms=100,label_below=P] a search bot labels every position it faces (or those where "
        "the policy's top action is less likely than P) (agents/search_labels.py)",
        required=("path",),
    ),
    "bundled": AgentKind(
        _bundled,
        ("path", "temperature", "greedy", "seed", "device", "threads"),
        "the policy shipped with Qabra (models/bundled/NAME, default qabra-gen1ou; see its MODEL_CARD.md), "
        "greedy unless a temperature is given: bundled[:NAME][,temperature=T]",
    ),
    "search": AgentKind(
        _search,
        ("ms", "samples", "iterations", "workers", "c", "bias", "depth", "rollout", "seed", "labels",
         "label_min_visits"),
        "decoupled UCT over Showdown's own simulator on sampled opponent sets: "
        "search:ms=1000[,samples=2,workers=N,iterations=N,c=1.5,bias=2,depth=8,rollout=2,labels=DIR]",
    ),
}


def known_agents() -> list[str]:
    """The agent kinds the registry can build, in table order."""
    return list(AGENTS)


def describe(kind: str) -> str:
    """One help line for an agent kind (its params included)."""
    entry = _lookup(kind, spec=kind)
    params = f" [params: {', '.join(entry.params)}]" if entry.params else ""
    return f"{kind}: {entry.help}{params}"


def _lookup(kind: str, *, spec: str) -> AgentKind:
    if kind not in AGENTS:
        raise ValueError(
            f"unknown agent kind {kind!r} in spec {spec!r}; known kinds: {', '.join(AGENTS)}"
        )
    return AGENTS[kind]


def _parse_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def parse_spec(spec: str) -> AgentSpec:
    """Parse `kind` or `kind:ARGS`; ValueError naming the spec on any mistake."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty agent spec {spec!r}; known kinds: {', '.join(AGENTS)}")
    text = spec.strip()
    kind, sep, args = text.partition(":")
    kind = kind.strip()
    entry = _lookup(kind, spec=text)
    params: dict[str, Any] = {}
    if sep:
        if not args.strip():
            raise ValueError(f"agent spec {text!r} has ':' but no arguments after it")
        for i, raw in enumerate(args.split(",")):
            item = raw.strip()
            if not item:
                raise ValueError(f"agent spec {text!r} has an empty item (a stray comma?)")
            key, eq, value = item.partition("=")
            if not eq:
                if i != 0:
                    raise ValueError(
                        f"agent spec {text!r}: item {item!r} has no '='; only the first item "
                        "may be a bare path"
                    )
                key, value = "path", item
            else:
                key, value = key.strip(), value.strip()
                if not key or not value:
                    raise ValueError(f"agent spec {text!r}: item {item!r} must be key=value")
            if key in params:
                raise ValueError(f"agent spec {text!r} gives {key!r} twice")
            params[key] = value if key == "path" else _parse_value(value)
    for key in params:
        if key not in entry.params:
            accepted = ", ".join(entry.params) or "none"
            raise ValueError(
                f"agent spec {text!r}: kind {kind!r} takes no param {key!r}; accepted: {accepted}"
            )
    missing = [key for key in entry.required if key not in params]
    if missing:
        raise ValueError(
            f"agent spec {text!r}: kind {kind!r} needs {', '.join(missing)} "
            f"(e.g. {kind}:runs/pretrain/final)"
        )
    return AgentSpec(kind=kind, params=params, text=text)


def make_player(
    spec: str,
    *,
    battle_format: str,
    server_configuration,
    team=None,
    max_concurrent_battles: int = 1,
    name: str | None = None,
    **player_kwargs: Any,
) -> Player:
    """Build the poke-env Player a spec names, with a unique account name."""
    parsed = parse_spec(spec)
    key = (name or parsed.kind)[:_NAME_KEY_CHARS].strip() or parsed.kind[:_NAME_KEY_CHARS]
    kwargs: dict[str, Any] = {
        "account_configuration": AccountConfiguration.generate(key, rand=True),
        "battle_format": battle_format,
        "server_configuration": server_configuration,
        "team": team,
        "max_concurrent_battles": max_concurrent_battles,
        "log_level": QUIET,
        "start_listening": True,
    }
    kwargs.update(player_kwargs)
    return AGENTS[parsed.kind].factory(parsed, **kwargs)
