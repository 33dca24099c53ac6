"""Team sets: folders of Showdown export teams, validated by Showdown itself, sampled by seed.

    battles/data/teams/<set>/<format>/<name>.txt      one team per file (Showdown export)

    teams = load_team_set("competitive", "gen9ou")    # validated once, then cached
    player = RandomPlayer(battle_format="gen9ou", team=teams.sampler(seed=0))

Every team is checked by the installed server's own validator (battles/validate_teams.js,
one Node process per batch). Results are cached by content hash in a JSON file, so a set
is validated once per pokemon-showdown version. `python -m battles.teams` lists the sets
and validates them all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from poke_env.teambuilder import Teambuilder

from battles.files import write_atomic
from battles.protocol import to_id
from battles.server import showdown_dir

log = logging.getLogger(__name__)

TEAMS_ROOT = Path(__file__).resolve().parent / "data" / "teams"
VALIDATOR_JS = Path(__file__).resolve().parent / "validate_teams.js"
CACHE_ENV = "QABRA_TEAM_CACHE"
_CACHE_SCHEMA = 1


class TeamError(ValueError):
    """A team or team set that cannot be used: missing, unreadable or illegal."""


@dataclass(frozen=True)
class ValidationResult:
    """What Showdown's validator said about one team."""

    ok: bool
    errors: tuple[str, ...]
    packed: str  # the validated team in Showdown's packed format; "" when not ok


@dataclass(frozen=True)
class Team:
    """One validated team: its export text and the packed form the server receives."""

    name: str
    format: str
    path: Path
    text: str
    packed: str

    @property
    def species(self) -> tuple[str, ...]:
        """Species ids (Showdown's toID: "ironmoth") in team order, from the packed form."""
        return packed_species(self.packed)


def packed_species(packed: str) -> tuple[str, ...]:
    """Species ids of a packed team (NICKNAME|SPECIES|...; SPECIES is left empty when it equals the nickname)."""
    return tuple(to_id(f[1] or f[0]) for f in (mon.split("|") for mon in packed.split("]")))


# -- validation -----------------------------------------------------------------------


def showdown_version(ps_dir: Path | None = None) -> str:
    """The installed pokemon-showdown package version (part of every cache key)."""
    package = (ps_dir or showdown_dir()) / "package.json"
    return json.loads(package.read_text(encoding="utf-8"))["version"]


def default_cache_path() -> Path:
    """Where validation results are cached ($QABRA_TEAM_CACHE, else next to the install)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    ps_dir = showdown_dir()
    # .showdown/node_modules/pokemon-showdown -> .showdown/
    base = ps_dir.parent.parent if ps_dir.parent.name == "node_modules" else ps_dir.parent
    return base / "team-validation-cache.json"


def cache_key(battle_format: str, text: str, version: str) -> str:
    """sha256 of what decides a verdict: format, team text and the validator's version."""
    h = hashlib.sha256()
    for part in (battle_format, text, version):
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def _validator_version(ps_dir: Path) -> str:
    # Our script's hash too: a change in how it validates or packs must not reuse old entries.
    script = hashlib.sha256(VALIDATOR_JS.read_bytes()).hexdigest()[:16]
    return f"pokemon-showdown@{showdown_version(ps_dir)}+validate_teams.js@{script}"


def _read_cache(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable team validation cache %s (%s)", path, err)
        return {}
    if not isinstance(data, dict) or data.get("schema") != _CACHE_SCHEMA:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, new_entries: dict[str, dict]) -> None:
    # Merge with what is on disk now: another process may have added entries meanwhile.
    entries = _read_cache(path)
    entries.update(new_entries)
    write_atomic(path, json.dumps({"schema": _CACHE_SCHEMA, "entries": entries}, sort_keys=True))


def _run_validator(items: Sequence[tuple[str, str]], ps_dir: Path) -> list[ValidationResult]:
    payload = json.dumps([{"format": f, "text": t} for f, t in items])
    try:
        proc = subprocess.run(
            ["node", str(VALIDATOR_JS), str(ps_dir)],
            input=payload,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=120 + len(items),
        )
    except FileNotFoundError:
        raise RuntimeError(
            "Node.js ('node') is not on PATH; it is needed to validate teams. "
            "Install Node.js 18+ and run ./setup_env.sh."
        ) from None
    if proc.returncode != 0:
        raise RuntimeError(
            f"the team validator ({VALIDATOR_JS.name}) failed with exit code "
            f"{proc.returncode}:\n{proc.stderr.strip()}"
        )
    raw = json.loads(proc.stdout)
    assert len(raw) == len(items), "validator answered a different number of teams"
    return [ValidationResult(bool(r["ok"]), tuple(r["errors"]), r["packed"]) for r in raw]


def validate_teams(
    items: Sequence[tuple[str, str]], *, cache_path: Path | None = None, use_cache: bool = True
) -> list[ValidationResult]:
    """Validate (format, export text) pairs with Showdown's validator, in one Node run."""
    for i, item in enumerate(items):
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise TypeError(f"item {i} must be a (format, text) pair, got {item!r}")
    ps_dir = showdown_dir()
    version = _validator_version(ps_dir)
    keys = [cache_key(f, t, version) for f, t in items]
    path = cache_path or default_cache_path()
    cached = _read_cache(path) if use_cache else {}

    results: dict[str, ValidationResult] = {}
    for key in keys:
        entry = cached.get(key)
        if entry is not None:
            results[key] = ValidationResult(entry["ok"], tuple(entry["errors"]), entry["packed"])
    todo = {k: item for k, item in zip(keys, items, strict=True) if k not in results}
    if todo:
        fresh = _run_validator(list(todo.values()), ps_dir)
        results.update(zip(todo, fresh, strict=True))
        if use_cache:
            new = {k: {"ok": r.ok, "errors": list(r.errors), "packed": r.packed}
                   for k, r in zip(todo, fresh, strict=True)}
            _write_cache(path, new)
    return [results[k] for k in keys]


# -- team sets ------------------------------------------------------------------------


def available_team_sets(root: Path | None = None) -> dict[str, list[str]]:
    """{set name: [formats that hold at least one team]} under root (default: ours)."""
    root = Path(root) if root is not None else TEAMS_ROOT
    if not root.is_dir():
        return {}
    sets = {}
    for set_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        formats = sorted(d.name for d in set_dir.iterdir() if d.is_dir() and any(d.glob("*.txt")))
        if formats:
            sets[set_dir.name] = formats
    return sets


class TeamSet:
    """The validated teams of one set for one format."""

    def __init__(self, name: str, battle_format: str, teams: Sequence[Team]):
        if not teams:
            raise TeamError(f"team set '{name}' has no teams for {battle_format}")
        self.name = name
        self.format = battle_format
        self.teams = list(teams)

    def sampler(self, seed: int) -> TeamSampler:
        """A poke-env Teambuilder that hands out these teams in a seeded order."""
        return TeamSampler(self.teams, seed)

    def get(self, name: str) -> Team:
        """The team called name (its file name without .txt)."""
        for team in self.teams:
            if team.name == name:
                return team
        raise KeyError(f"no team '{name}' in set '{self.name}' ({self.format}); "
                       f"it has: {', '.join(t.name for t in self.teams)}")

    def __len__(self) -> int:
        return len(self.teams)

    def __iter__(self) -> Iterator[Team]:
        return iter(self.teams)

    def __repr__(self) -> str:
        return f"TeamSet({self.name!r}, {self.format!r}, {len(self)} teams)"


def _format_dir(name: str, battle_format: str, root: Path | None) -> tuple[str, Path]:
    """(set name, folder of .txt files) for a set name under root, or a path to a folder."""
    root = Path(root) if root is not None else TEAMS_ROOT
    sets = available_team_sets(root)
    if name in sets:
        if battle_format not in sets[name]:
            raise TeamError(
                f"team set '{name}' has no teams for format '{battle_format}'. "
                f"Its formats: {', '.join(sets[name])}."
            )
        return name, root / name / battle_format
    folder = Path(name).expanduser()
    if folder.is_dir():
        if (folder / battle_format).is_dir():  # a set folder: <set>/<format>/*.txt
            return folder.resolve().name, folder / battle_format
        if any(folder.glob("*.txt")):  # already a format folder
            return folder.resolve().parent.name, folder
        formats = sorted(d.name for d in folder.iterdir() if d.is_dir())
        raise TeamError(
            f"team set folder {folder} has no teams for format '{battle_format}' "
            f"(formats there: {', '.join(formats) or 'none'}). Add {folder / battle_format}/*.txt."
        )
    raise TeamError(
        f"no team set '{name}': not a set in {root} (sets there: {', '.join(sets) or 'none'}) "
        "and not an existing folder. Pass one of those names or a path to a folder of teams."
    )


def load_team_set(name: str, battle_format: str, root: Path | None = None) -> TeamSet:
    """Load and validate a team set (a name under root, or a path to a folder)."""
    set_name, folder = _format_dir(str(name), battle_format, root)
    paths = sorted(folder.glob("*.txt"))
    if not paths:
        raise TeamError(f"{folder} holds no .txt team files")
    texts = []
    for path in paths:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise TeamError(f"cannot read team file {path}: {err}") from None
    results = validate_teams([(battle_format, text) for text in texts])
    bad = [(p, r) for p, r in zip(paths, results, strict=True) if not r.ok]
    if bad:
        lines = [f"{len(bad)} of {len(paths)} teams in {folder} fail Showdown's {battle_format} "
                 "validator; fix or remove them:"]
        for path, result in bad:
            lines.append(f"  {path}:")
            lines.extend(f"    {msg}" for msg in result.errors)
        raise TeamError("\n".join(lines))
    teams = [Team(p.stem, battle_format, p, t, r.packed)
             for p, t, r in zip(paths, texts, results, strict=True)]
    return TeamSet(set_name, battle_format, teams)


# -- sampling -------------------------------------------------------------------------


class _Deck:
    """Seeded shuffled passes over n items: every item once per pass, so use stays even."""

    def __init__(self, n: int, rng: np.random.Generator):
        self._n, self._rng, self._queue = n, rng, []

    def next(self) -> int:
        if not self._queue:
            self._queue = [int(i) for i in self._rng.permutation(self._n)]
        return self._queue.pop()


class TeamSampler(Teambuilder):
    """A seeded poke-env Teambuilder over validated teams that remembers what it gave."""

    def __init__(self, teams: Sequence[Team], seed: int):
        if not teams:
            raise TeamError("TeamSampler needs at least one team")
        self.teams = list(teams)
        self.seed = int(seed)
        # Separate streams: poke-env calls yield_team whenever it likes, and that must not
        # shift the pairings planned with draw().
        self._yield_deck = _Deck(len(self.teams), np.random.default_rng([self.seed, 0]))
        self._draw_deck = _Deck(len(self.teams), np.random.default_rng([self.seed, 1]))
        self.history: list[Team] = []
        self.last_team: Team | None = None

    def yield_team(self) -> str:
        """The next team's packed string (poke-env calls this once per challenge)."""
        team = self.teams[self._yield_deck.next()]
        self.last_team = team
        self.history.append(team)
        return team.packed

    def draw(self, n: int) -> list[Team]:
        """The next n teams of the planning stream (independent of yield_team)."""
        if n < 0:
            raise ValueError(f"draw(n) needs n >= 0, got {n}")
        return [self.teams[self._draw_deck.next()] for _ in range(n)]


# -- command line ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """List the team sets and validate every one of them."""
    parser = argparse.ArgumentParser(description="List and validate Qabra's team sets.")
    parser.add_argument("--root", type=Path, default=None, help=f"team sets folder (default {TEAMS_ROOT})")
    args = parser.parse_args(argv)
    sets = available_team_sets(args.root)
    if not sets:
        raise SystemExit(f"no team sets under {args.root or TEAMS_ROOT}")
    failed = False
    for name, formats in sets.items():
        for fmt in formats:
            try:
                team_set = load_team_set(name, fmt, args.root)
                print(f"{name}/{fmt}: {len(team_set)} valid teams")
            except TeamError as err:
                failed = True
                print(f"{name}/{fmt}: INVALID\n{err}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
