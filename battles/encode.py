"""Observation encoder: a BattleView to fixed-size entity tokens and numeric features.

    tokens, numbers = encode(view)            # np.int32[N_TOKENS], np.float32[N_NUMBERS]
    mask = legal_mask(view)                   # np.bool_[13]
    enc = ObservationEncoder()                # .n_tokens .n_numbers .vocab .version

Token ids come from a Vocabulary built deterministically from the dex data that ships
with poke-env (species, moves, abilities, types of gens 1-9; weather, fields, side
conditions and statuses from its enums) plus Showdown's item list (battles/data/vocab/
items.json, see SOURCES.md there). Id 0 is padding, 1 unknown, 2 none. Names missing from
the vocabulary map to unknown and are counted. `python -m battles.encode` rebuilds the
shipped vocabulary file and prints its size and hash.

Layout (ENCODER_VERSION 2). Tokens: gen, weather, 4 fields, 6 own and 6 opposing side
conditions, then 12 Pokémon (own side active first then bench in action-slot order, then
the opponent's: active, then the rest by base species) of 11 tokens each: species, item,
ability, 4 moves, 2 types, tera type, status. Numbers: 22 global features, then 35 per
Pokémon (see GLOBAL_FEATURES and MON_FEATURES), then what each action would do
(battles/matchup.py): its GLOBAL features, and last N_ACTIONS x ACTION features in slot
order, which the model reads per action (`ACTION_FEATURES`, its `n_action_features`).
Version 2 added the matchup features: version 1 shards must be rebuilt from their logs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np

from battles import matchup
from battles.actions import N_ACTIONS, legal_mask
from battles.protocol import STATS, STATUSES, UNKNOWN, to_id
from battles.view import TRACKED_VOLATILES, BattleView, PokemonView

ENCODER_VERSION = 2
VOCAB_DIR = Path(__file__).resolve().parent / "data" / "vocab"
VOCAB_FILE = VOCAB_DIR / "vocab.json"
ITEMS_FILE = VOCAB_DIR / "items.json"

PAD, UNK, NONE = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<unknown>", "<none>")
KINDS = ("gen", "species", "move", "item", "ability", "type", "status", "weather", "field", "side_condition")

N_FIELDS = 4
N_SIDE_CONDITIONS = 6
N_MONS_PER_SIDE = 6
MON_TOKENS = ("species", "item", "ability", "move1", "move2", "move3", "move4", "type1", "type2", "tera_type", "status")
GLOBAL_TOKENS = 2 + N_FIELDS + 2 * N_SIDE_CONDITIONS
N_TOKENS = GLOBAL_TOKENS + 2 * N_MONS_PER_SIDE * len(MON_TOKENS)

PREDICTABLE = ("moves", "item", "ability", "tera_type")
GLOBAL_FEATURES = (
    "turn/100", "force_switch", "can_tera", "own_tera_used", "opp_tera_used", "own_alive/6",
    "opp_alive/6", "own_team_size/6", "opp_team_size/6", "opp_seen/6",
) + tuple(f"own_condition{i}_layers/3" for i in range(N_SIDE_CONDITIONS)) + tuple(
    f"opp_condition{i}_layers/3" for i in range(N_SIDE_CONDITIONS))
MON_FEATURES = (
    ("present", "unknown_member", "hp", "level/100") + tuple(f"boost_{s}/6" for s in STATS)
    + ("active", "fainted", "revealed", "terastallized") + tuple(f"predicted_{p}" for p in PREDICTABLE)
    + tuple(f"volatile_{v}" for v in TRACKED_VOLATILES)
)
ACTION_FEATURES = matchup.N_ACTION  # per action slot, the last N_ACTIONS * ACTION_FEATURES numbers
N_NUMBERS = (len(GLOBAL_FEATURES) + 2 * N_MONS_PER_SIDE * len(MON_FEATURES) + matchup.N_GLOBAL
             + N_ACTIONS * ACTION_FEATURES)


class Vocabulary:
    """Token ids for (kind, name) pairs; unknown names give <unknown> and are counted."""

    def __init__(self, kinds: dict[str, list[str]], version: int = ENCODER_VERSION):
        missing = [k for k in KINDS if k not in kinds]
        if missing:
            raise ValueError(f"vocabulary lacks kinds {missing}; rebuild it with python -m battles.encode")
        self.version = version
        self.kinds = {k: sorted(set(kinds[k]) - {"", UNKNOWN}) for k in KINDS}
        self.tokens: list[str] = list(SPECIAL_TOKENS)
        self._ids: dict[str, dict[str, int]] = {}
        for kind in KINDS:
            table = self._ids[kind] = {}
            for name in self.kinds[kind]:
                table[name] = len(self.tokens)
                self.tokens.append(f"{kind}:{name}")
        self.unknown: Counter = Counter()  # (kind, name) -> times seen
        self.misses = 0  # total lookups of names not in the vocabulary
        canonical = json.dumps({"version": version, "tokens": self.tokens}, separators=(",", ":"))
        self.hash = hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def size(self) -> int:
        """The number of token ids (the embedding table's rows)."""
        return len(self.tokens)

    def id(self, kind: str, name: str) -> int:
        """The id of a name of one kind; '' is <none>, UNKNOWN and missing names <unknown>."""
        if not name:
            return NONE
        found = self._ids[kind].get(name)
        if found is not None:
            return found
        if name != UNKNOWN:
            self.unknown[(kind, name)] += 1
            self.misses += 1
        return UNK

    def to_dict(self) -> dict:
        """A JSON-ready form (checkpoints keep it beside the model)."""
        return {"version": self.version, "hash": self.hash, "kinds": self.kinds}

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        """Rebuild from to_dict(); raises if the stored hash does not match."""
        vocab = cls(data["kinds"], data.get("version", ENCODER_VERSION))
        if data.get("hash") and data["hash"] != vocab.hash:
            raise ValueError(f"vocabulary hash {data['hash']} does not match its contents ({vocab.hash})")
        return vocab

    def save(self, path: str | Path) -> None:
        """Write as JSON (sorted, one kind per key)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary written by save()."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read vocabulary {path}: {err}. Rebuild with python -m battles.encode") from err
        return cls.from_dict(data)


def build_vocabulary() -> Vocabulary:
    """Build the vocabulary from poke-env's bundled dex (gens 1-9) and Showdown's item list."""
    import poke_env
    from poke_env.battle import Field, PokemonType, SideCondition, Weather

    root = Path(poke_env.__file__).resolve().parent / "data" / "static"
    kinds: dict[str, set[str]] = {k: set() for k in KINDS}
    for gen in range(1, 10):
        dex = json.loads((root / "pokedex" / f"gen{gen}pokedex.json").read_text())
        kinds["species"] |= {to_id(s) for s in dex}
        kinds["ability"] |= {to_id(a) for e in dex.values() for a in e.get("abilities", {}).values()}
        kinds["move"] |= {to_id(m) for m in json.loads((root / "moves" / f"gen{gen}moves.json").read_text())}
        kinds["gen"].add(f"gen{gen}")
    kinds["item"] = {to_id(i) for i in json.loads(ITEMS_FILE.read_text())}
    kinds["type"] = {to_id(t.name) for t in PokemonType} - {"threequestionmarks"}
    kinds["status"] = set(STATUSES) | {"fnt"}
    # Showdown names weather by condition id; poke-env calls Snow 'SNOWSCAPE'.
    kinds["weather"] = {to_id(w.name) for w in Weather} - {"unknown"} | {"snow"}
    kinds["field"] = {to_id(f.name) for f in Field} - {"unknown"}
    kinds["side_condition"] = {to_id(s.name) for s in SideCondition} - {"unknown"}
    return Vocabulary({k: sorted(v) for k, v in kinds.items()})


@cache
def default_vocabulary() -> Vocabulary:
    """The shipped vocabulary (battles/data/vocab/vocab.json)."""
    return Vocabulary.load(VOCAB_FILE)


_UNSEEN_TOKENS, _ABSENT_TOKENS = [UNK] * len(MON_TOKENS), [PAD] * len(MON_TOKENS)
_UNSEEN_NUMBERS = [0.0, 1.0] + [0.0] * (len(MON_FEATURES) - 2)
_ABSENT_NUMBERS = [0.0] * len(MON_FEATURES)


class ObservationEncoder:
    """BattleView -> (tokens int32[n_tokens], numbers float32[n_numbers]) in a fixed layout."""

    def __init__(self, vocab: Vocabulary | None = None):
        self.vocab = vocab or default_vocabulary()
        self.version = ENCODER_VERSION
        self.n_tokens = N_TOKENS
        self.n_numbers = N_NUMBERS
        self.n_action_features = ACTION_FEATURES
        # Pokémon repeat across a battle's decisions (the bench, the opponent): encode each
        # distinct PokemonView once. Views with unknown names are not cached, so every
        # occurrence is counted in vocab.unknown.
        self._cache: dict[PokemonView, tuple[list[int], list[float]]] = {}
        self._by_id: dict[int, tuple[PokemonView, tuple[list[int], list[float]]]] = {}  # same object: no hashing

    def encode(self, view: BattleView) -> tuple[np.ndarray, np.ndarray]:
        """Encode one view."""
        tokens, numbers = self._lists(view)
        return np.array(tokens, dtype=np.int32), np.array(numbers, dtype=np.float32)

    def encode_many(self, views: list[BattleView]) -> tuple[np.ndarray, np.ndarray]:
        """Encode several views: (tokens int32[n, n_tokens], numbers float32[n, n_numbers])."""
        rows = [self._lists(v) for v in views]
        tokens = np.array([r[0] for r in rows], dtype=np.int32).reshape(len(rows), N_TOKENS)
        numbers = np.array([r[1] for r in rows], dtype=np.float32).reshape(len(rows), N_NUMBERS)
        return tokens, numbers

    def _lists(self, view: BattleView) -> tuple[list[int], list[float]]:
        vid = self.vocab.id
        tokens = [vid("gen", f"gen{view.gen}"), vid("weather", view.weather)]
        fields = list(view.fields[:N_FIELDS])
        tokens += [vid("field", f) for f in fields] + [PAD] * (N_FIELDS - len(fields))
        numbers = [
            min(view.turn, 300) / 100, float(view.force_switch), float(view.can_tera),
            float(view.own.tera_used), float(view.opp.tera_used),
            sum(p.status != "fnt" for p in view.own.pokemon) / 6,
            (view.opp.team_size - sum(p.status == "fnt" for p in view.opp.pokemon)) / 6,
            view.own.team_size / 6, view.opp.team_size / 6, sum(p.revealed for p in view.opp.pokemon) / 6,
        ]
        for side in (view.own, view.opp):
            conds = side.conditions[:N_SIDE_CONDITIONS]
            tokens += [vid("side_condition", c) for c, _ in conds] + [PAD] * (N_SIDE_CONDITIONS - len(conds))
            numbers += [min(n, 3) / 3 for _, n in conds] + [0.0] * (N_SIDE_CONDITIONS - len(conds))
        by_id, add_tokens, add_numbers = self._by_id, tokens.extend, numbers.extend
        for side in (view.own, view.opp):
            mons = side.pokemon[:N_MONS_PER_SIDE]
            for mon in mons:
                same = by_id.get(id(mon))
                if same is not None and same[0] is mon:
                    hit = same[1]
                else:
                    hit = self._cache.get(mon)
                    if hit is None:
                        hit = self._mon(mon)
                    else:
                        if len(by_id) > 20_000:  # views are reused within a battle: keep it small
                            by_id.clear()
                        by_id[id(mon)] = (mon, hit)
                add_tokens(hit[0])
                add_numbers(hit[1])
            for k in range(len(mons), N_MONS_PER_SIDE):
                member = k < side.team_size  # a team member never seen: unknown, not absent
                add_tokens(_UNSEEN_TOKENS if member else _ABSENT_TOKENS)
                add_numbers(_UNSEEN_NUMBERS if member else _ABSENT_NUMBERS)
        glob, per_action = matchup.action_features(view)
        add_numbers(glob)
        add_numbers(per_action)
        assert len(tokens) == N_TOKENS and len(numbers) == N_NUMBERS, (len(tokens), len(numbers))
        return tokens, numbers

    def _mon(self, mon: PokemonView) -> tuple[list[int], list[float]]:
        vid = self.vocab.id
        misses = self.vocab.misses
        moves = list(mon.moves[:4])
        types = list(mon.types[:2])
        tokens = [vid("species", mon.species), vid("item", mon.item), vid("ability", mon.ability)]
        tokens += [vid("move", m) for m in moves] + [NONE] * (4 - len(moves))
        tokens += [vid("type", t) for t in types] + [NONE] * (2 - len(types))
        tokens += [vid("type", mon.tera_type), vid("status", mon.status)]
        numbers = [1.0, 0.0, mon.hp, mon.level / 100]
        numbers += [b / 6 for b in mon.boosts]
        numbers += [float(mon.active), float(mon.status == "fnt"), float(mon.revealed), float(mon.terastallized)]
        numbers += [float(p in mon.predicted) for p in PREDICTABLE]
        numbers += [float(v in mon.volatiles) for v in TRACKED_VOLATILES]
        if self.vocab.misses == misses:
            if len(self._cache) > 100_000:
                self._cache.clear()
                self._by_id.clear()
            self._cache[mon] = (tokens, numbers)
        return tokens, numbers


@cache
def _default_encoder() -> ObservationEncoder:
    return ObservationEncoder()


def encode(view: BattleView) -> tuple[np.ndarray, np.ndarray]:
    """Encode a view with the default encoder and shipped vocabulary."""
    return _default_encoder().encode(view)


__all__ = [
    "ACTION_FEATURES", "ENCODER_VERSION", "N_NUMBERS", "N_TOKENS", "ObservationEncoder", "Vocabulary", "build_vocabulary",
    "default_vocabulary", "encode", "legal_mask",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild the shipped vocabulary from poke-env's dex data.")
    parser.add_argument("--out", default=str(VOCAB_FILE), help="where to write vocab.json")
    args = parser.parse_args(argv)
    vocab = build_vocabulary()
    vocab.save(args.out)
    sizes = {k: len(v) for k, v in vocab.kinds.items()}
    print(json.dumps({"path": args.out, "size": vocab.size, "hash": vocab.hash, "kinds": sizes}))


if __name__ == "__main__":
    main()
