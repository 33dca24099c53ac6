"""Build team sets from human replays (`replay`) or from usage statistics (`variety`).

    python -m battles.teamsets build replay  --format gen9ou [--replays PATH...]
    python -m battles.teamsets build variety --format gen1ou --n 16 --seed 0

`replay`: each side of each replay becomes one team. What the log revealed (species,
moves, item, ability, tera type, level) is kept as it was; only what was never shown is
completed from the format's usage statistics, most likely option first. A side that
showed fewer than six Pokémon gets the teammates its revealed Pokémon most often have. A
server log that carries the real teams (`p1team`/`p2team`) gives them exactly.
`variety`: a first Pokémon drawn by usage, each teammate by the teammate tables of those
already chosen, every set drawn from the stats.

Every set is checked by Showdown's validator (battles.teams.validate_teams); an invalid
completion moves on to the next most likely (replay) or to a new draw (variety).
Duplicate teams are dropped. The set folder <out>/<kind>/<format>/ gets one export file
per team and a MANIFEST.json recording inputs, seed, date, counts, validator version and
where each team came from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain, islice
from pathlib import Path

import numpy as np

from battles.files import write_atomic
from battles.protocol import UNKNOWN, iter_events, norm_move, to_id
from battles.state import BattleState
from battles.teams import TEAMS_ROOT, TeamError, showdown_version, validate_teams
from battles.usage import (
    DATA,
    MIN_USAGE,
    PokemonSet,
    UsageTable,
    completions,
    dex_number,
    display_names,
    export_team,
    first_valid,
    gen_of,
    load_stats,
    name_ids,
    pokedex,
    sampled_sets,
    team_species,
)

REPLAYS_DIR = DATA / "replays"
KINDS = ("replay", "variety")

# -- what replays revealed ----------------------------------------------------------------
@dataclass
class RevealedSide:
    """One side of one replay: the sets its log showed, and the real team when the log has it."""

    replay: str
    file: str
    side: str
    player: str
    sets: list[PokemonSet]  # None fields: never shown
    team: list[PokemonSet] | None = None


def _replay_files(paths: Sequence[str | Path]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if not p.exists():
            raise TeamError(f"--replays {p}: no such file or folder")
        files.extend(sorted(f for f in p.rglob("*.json") if f.is_file()) if p.is_dir() else [p])
    return files


def _exact_set(entry: dict) -> PokemonSet:
    stats = ("hp", "atk", "def", "spa", "spd", "spe")
    evs, ivs = entry.get("evs") or {}, entry.get("ivs") or {}
    ability = to_id(entry.get("ability") or "")
    return PokemonSet(
        species=to_id(entry.get("species") or entry.get("name") or ""),
        moves=tuple(to_id(m) for m in entry.get("moves", []) if m), item=to_id(entry.get("item") or ""),
        ability="" if ability == "none" else ability, tera=to_id(entry.get("teraType") or ""),
        level=int(entry.get("level") or 100), nature=to_id(entry.get("nature") or ""),
        evs=tuple(int(evs.get(s, 0)) for s in stats), ivs=tuple(int(ivs.get(s, 31)) for s in stats))


def _revealed_set(gen: int, mon) -> PokemonSet:
    return PokemonSet(
        species=team_species(gen, to_id(mon.species.removesuffix("-*"))),
        moves=tuple(dict.fromkeys(norm_move(m) for m in mon.moves)),
        item=None if mon.first_item == UNKNOWN else mon.first_item,
        ability=None if mon.first_ability == UNKNOWN else mon.first_ability,
        tera=mon.tera if mon.terastallized else None, level=mon.level).gen_blank(gen)


def revealed_sides(paths: Sequence[str | Path], fmt: str) -> tuple[list[RevealedSide], list[dict], Counter]:
    """Both sides of every replay of `fmt` under paths: (sides, inputs read, files skipped by reason)."""
    from battles.build import Skip, item_from_replay  # pulls in pyarrow; only replay sets need it

    gen, sides, inputs, skipped = gen_of(fmt), [], [], Counter()
    for path in _replay_files(paths):
        raw = path.read_bytes()
        try:
            item = item_from_replay(json.loads(raw), str(path))
        except (ValueError, UnicodeDecodeError):
            skipped["not_json"] += 1
            continue
        except Skip as err:
            skipped[str(err)] += 1
            continue
        if item.replay["format"] != to_id(fmt) or item.key in {i["id"] for i in inputs}:
            skipped["other_format" if item.replay["format"] != to_id(fmt) else "repeated_id"] += 1
            continue
        inputs.append({"id": item.key, "file": _rel(path), "sha256_16": _sha16(raw)})
        state = BattleState()
        for event in iter_events(item.replay["log"]):
            state.apply(event)
        for s, player in zip(("p1", "p2"), item.replay["players"], strict=True):
            side = state.sides[s]
            team = [_exact_set(e) for e in item.teams[s]] if item.teams and item.teams.get(s) else None
            mons = list(side.mons.values()) + side.preview  # preview: shown, never sent out
            shown = [_revealed_set(gen, m) for m in mons]
            sides.append(RevealedSide(item.key, _rel(path), s, side.name or player, shown, team))
    return sides, inputs, skipped


def contradictions(shown: Sequence[PokemonSet], team: Sequence[PokemonSet]) -> list[str]:
    """What a log showed that a team lacks: a species, or a move/item/ability/tera/level of one."""
    by_species, out = {s.species: s for s in team}, []
    for r in shown:
        s = by_species.get(r.species)
        if s is None:
            out.append(f"{r.species} is missing")
            continue
        out.extend(f"{r.species} lacks move {m}" for m in r.moves if m not in s.moves)
        out.extend(f"{r.species} has {f} {getattr(s, f)!r}, the log shows {getattr(r, f)!r}"
                   for f in ("item", "ability", "tera", "level")
                   if getattr(r, f) is not None and getattr(r, f) != getattr(s, f))
    return out


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(path)


def _sha16(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# -- building ---------------------------------------------------------------------------
@dataclass
class BuiltTeam:
    """A validated team and where it came from (its MANIFEST.json entry)."""

    name: str
    sets: list[PokemonSet]
    text: str  # Showdown export
    source: dict = field(default_factory=dict)


def _team_key(sets: Sequence[PokemonSet], gen: int, names: dict[str, str]) -> str:
    # Order does not make two teams different: the lead is chosen at team preview or in battle.
    return "\n".join(sorted(export_team([s], gen, names) for s in sets))


def _teammate_order(gen: int, chosen: Sequence[str], stats: UsageTable) -> list[str]:
    """Candidates for the next teammate, most often seen beside `chosen` first (then by usage)."""
    nums = {dex_number(gen, s) for s in chosen}
    tables = [stats.species[s].teammates for s in chosen if s in stats.species]
    score = {c: sum(t.get(c, 0.0) for t in tables) for c in stats.species if dex_number(gen, c) not in nums}
    return sorted(score, key=lambda c: (-score[c], -stats.species[c].usage, c))


def _unusable(side: RevealedSide, names: dict[str, str], stats: UsageTable) -> str:
    """Why a side cannot become a team ('' when it can)."""
    sets = side.sets + (side.team or [])
    unknown = sorted({i for s in sets for i in (s.species, s.item, s.ability, s.tera, *s.moves)
                      if i and i not in names})
    if unknown:
        return f"ids Showdown does not know: {', '.join(unknown)}"
    if len(side.sets) > 6 or any(len(s.moves) > 4 for s in side.sets):
        return "the log shows more than 6 Pokémon, or more than 4 moves on one"
    if side.team is not None:
        bad = contradictions(side.sets, side.team)
        return f"the log's team contradicts its own log: {'; '.join(bad)}" if bad else ""
    no_stats = [s.species for s in side.sets if s.species not in stats.species]
    return f"no usage statistics to complete {', '.join(no_stats)} from ({stats.source.name})" if no_stats else ""


def build_replay_set(fmt: str, replays: Sequence[str | Path], stats: UsageTable) -> tuple[list[BuiltTeam], dict]:
    """Teams rebuilt from the replays' sides, each validated: (teams, manifest notes)."""
    gen = gen_of(fmt)
    sides, inputs, skipped_files = revealed_sides(replays, fmt)
    names = display_names(name_ids(stats, [s for d in sides for s in d.sets + (d.team or [])]))
    skipped: list[dict] = []
    work: list[tuple[RevealedSide, list[PokemonSet]]] = []
    for side in sides:
        reason = _unusable(side, names, stats)
        if reason:
            skipped.append({"replay": side.replay, "side": side.side, "reason": reason})
        else:
            work.append((side, list(side.team if side.team is not None else side.sets)))

    # Complete what each side showed; all sides share the same Node runs.
    todo = [(k, j) for k, (side, sets) in enumerate(work) if side.team is None for j in range(len(sets))]
    failed: dict[int, str] = {}
    for (k, j), (found, tried, errors) in zip(
            todo, first_valid(fmt, [completions(gen, work[k][1][j], stats) for k, j in todo], names),
            strict=True):
        if found is None:
            failed.setdefault(k, f"no valid completion of {work[k][1][j].species} in {tried} tries: "
                                 + "; ".join(errors))
        work[k][1][j] = found or work[k][1][j]
    # Short teams get the teammates their revealed Pokémon are most often seen with.
    added: dict[int, list[str]] = {k: [] for k in range(len(work))}
    asked: dict[int, set[str]] = {k: set() for k in range(len(work))}
    while True:
        asks = []
        for k, (side, sets) in enumerate(work):
            if k not in failed and side.team is None and len(sets) < 6:
                order = [c for c in _teammate_order(gen, [s.species for s in sets], stats) if c not in asked[k]]
                if not order:
                    failed[k] = "no teammate with a valid set left in the usage statistics"
                    continue
                asked[k].add(order[0])
                asks.append((k, order[0]))
        if not asks:
            break
        streams = [completions(gen, PokemonSet(c), stats) for _, c in asks]
        for (k, c), (found, _, _) in zip(asks, first_valid(fmt, streams, names), strict=True):
            if found is not None:
                work[k][1].append(found)
                added[k].append(c)
    skipped += [{"replay": work[k][0].replay, "side": work[k][0].side, "reason": why}
                for k, why in sorted(failed.items())]
    built = [(k, side, sets) for k, (side, sets) in enumerate(work) if k not in failed]
    verdicts = validate_teams([(fmt, export_team(sets, gen, names)) for _, _, sets in built])
    teams, seen, duplicates = [], {}, []
    for (k, side, sets), v in zip(built, verdicts, strict=True):
        name, key = _safe(f"{side.replay}_{side.side}"), _team_key(sets, gen, names)
        assert not contradictions(side.sets, sets), "a completion changed what the log showed"
        if not v.ok:
            skipped.append({"replay": side.replay, "side": side.side,
                            "reason": "team fails the validator: " + "; ".join(v.errors)})
        elif key in seen:
            duplicates.append({"replay": side.replay, "side": side.side, "same_as": seen[key]})
        else:
            seen[key] = name
            shown = {s.species: {"moves": list(s.moves), **{f: getattr(s, f) for f in ("item", "ability", "tera")
                                                           if getattr(s, f)}} for s in side.sets}
            teams.append(BuiltTeam(name, sets, export_team(sets, gen, names), {
                "replay": side.replay, "file": side.file, "side": side.side, "player": side.player,
                "exact": side.team is not None, "revealed": shown, "added_teammates": added[k],
                "filled": {s.species: list(s.filled) for s in sets if s.filled}}))
    counts = {"replays": len(inputs), "sides": len(sides), "teams": len(teams),
              "exact": sum(t.source["exact"] for t in teams),
              "teammates_added": sum(len(t.source["added_teammates"]) for t in teams),
              "skipped_sides": len(skipped), "duplicates_removed": len(duplicates),
              "files_skipped": dict(skipped_files)}
    return teams, {"inputs": {"replays": inputs, "stats": _stats_input(stats)}, "counts": counts,
                   "skipped": skipped, "duplicates": duplicates}


def _stats_input(stats: UsageTable) -> dict:
    return {"file": _rel(stats.source), "sha256_16": _sha16(stats.source.read_bytes())}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def _draw_species(gen: int, pool: Sequence[str], stats: UsageTable, rng: np.random.Generator) -> list[str]:
    """A lead by usage, then each teammate by the summed teammate shares of those chosen so far."""
    usage = np.array([stats.species[s].usage for s in pool])
    chosen = [pool[int(rng.choice(len(pool), p=usage / usage.sum()))]]
    while len(chosen) < 6:
        nums = {dex_number(gen, s) for s in chosen}
        cands = [c for c in pool if dex_number(gen, c) not in nums]
        w = np.array([sum(stats.species[s].teammates.get(c, 0.0) for s in chosen) for c in cands])
        if w.sum() <= 0:  # no chosen Pokémon lists any of them as a teammate
            w = np.array([stats.species[c].usage for c in cands])
        chosen.append(cands[int(rng.choice(len(cands), p=w / w.sum()))])
    return chosen


def build_variety_set(fmt: str, stats: UsageTable, n: int, seed: int) -> tuple[list[BuiltTeam], dict]:
    """n distinct validated teams drawn from the usage statistics under a seed."""
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    gen = gen_of(fmt)
    names = display_names(name_ids(stats, []))
    dex = pokedex(gen)
    cands = sorted(s for s, u in stats.species.items()
                   if u.usage >= MIN_USAGE and s in names and s in dex and u.moves and u.spreads)
    # A species joins the pool once its most likely set passes: that also keeps banned ones out.
    tops = first_valid(fmt, [completions(gen, PokemonSet(s), stats) for s in cands], names, max_tries=12)
    fallback = {s: f for s, (f, _, _) in zip(cands, tops, strict=True) if f is not None}
    pool = sorted(fallback)
    if len({dex_number(gen, s) for s in pool}) < 6:
        raise TeamError(f"fewer than 6 species in {stats.source.name} have a valid {fmt} set")
    # Draw d uses its own generator, seeded (seed, d): a larger --n extends a smaller one.
    teams: list[BuiltTeam] = []
    seen: set[str] = set()
    rejected: Counter = Counter()
    draws = 0
    while len(teams) < n:
        want = n - len(teams)
        if draws + want > 20 * n:
            raise TeamError(f"only {len(teams)} of {n} distinct valid {fmt} teams after {draws} draws "
                            f"(rejected: {dict(rejected)}); ask for fewer with --n")
        rngs = [np.random.default_rng([seed, d]) for d in range(draws, draws + want)]
        draws += want
        drafts = [_draw_species(gen, pool, stats, rng) for rng in rngs]
        streams = [chain(islice(sampled_sets(gen, s, stats, rng), 24), [fallback[s]])
                   for rng, draft in zip(rngs, drafts, strict=True) for s in draft]
        found = [f for f, _, _ in first_valid(fmt, streams, names, max_tries=25)]
        assert all(f is not None for f in found), "a pool species' most likely set always passes"
        sets_of = [found[6 * k: 6 * k + 6] for k in range(want)]
        verdicts = validate_teams([(fmt, export_team(sets, gen, names)) for sets in sets_of])
        for sets, v in zip(sets_of, verdicts, strict=True):
            key = _team_key(sets, gen, names)
            if not v.ok or key in seen:
                rejected["team_invalid" if not v.ok else "duplicate"] += 1
            elif len(teams) < n:
                seen.add(key)
                teams.append(BuiltTeam(f"variety-{len(teams) + 1:03d}", sets, export_team(sets, gen, names), {
                    "seed": seed, "species": [s.species for s in sets],
                    "most_likely_set_used_for": [s.species for s in sets if s is fallback[s.species]]}))
    counts = {"teams": len(teams), "draws": draws, "rejected": dict(rejected), "species_pool": len(pool),
              "species_without_valid_set": sorted(set(cands) - set(pool))}
    method = ("lead drawn by usage; each teammate by the summed teammate shares of the Pokémon already "
              f"chosen; sets drawn from the stats (moves without replacement); species on at least "
              f"{MIN_USAGE:.0%} of teams; Species Clause by dex number; no Choice item or Assault Vest "
              "with a status move; draw d seeded (seed, d)")
    return teams, {"inputs": {"stats": _stats_input(stats)}, "counts": counts, "method": method}


# -- writing and the command line -----------------------------------------------------------
def write_set(out: str | Path, kind: str, fmt: str, teams: Sequence[BuiltTeam], manifest: dict) -> Path:
    """Replace the set folder <out>/<kind>/<fmt>/ with these teams and their MANIFEST.json."""
    if not teams:
        why = "".join(f"\n  {s['replay']} {s['side']}: {s['reason']}" for s in manifest.get("skipped", []))
        raise TeamError(f"no {kind} team could be built for {fmt} "
                        f"({json.dumps(manifest.get('counts', {}))}){why}")
    folder = Path(out) / kind / fmt
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.txt"):  # a set is one build: teams of an older build must not linger
        old.unlink()
    for team in teams:
        write_atomic(folder / f"{team.name}.txt", team.text)
    manifest = {**manifest, "teams": {f"{t.name}.txt": t.source for t in teams}}
    path = folder / "MANIFEST.json"
    return write_atomic(path, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")  # written last


def build(kind: str, fmt: str, *, replays: Sequence[str | Path] | None = None,
          stats_path: str | Path | None = None, n: int = 16, seed: int = 0,
          out: str | Path = TEAMS_ROOT, command: str = "") -> Path:
    """Build one team set and write it; returns its MANIFEST.json path."""
    fmt = to_id(fmt)
    if kind not in KINDS:
        raise ValueError(f"unknown team set kind '{kind}'; choose one of {', '.join(KINDS)}")
    stats = load_stats(fmt, stats_path)
    if kind == "replay":
        teams, notes = build_replay_set(fmt, list(replays or [REPLAYS_DIR / fmt]), stats)
    else:
        teams, notes = build_variety_set(fmt, stats, n, seed)
    manifest = {"kind": kind, "format": fmt, "command": command or f"build {kind} --format {fmt}",
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "seed": seed if kind == "variety" else None,
                "validator": f"pokemon-showdown@{showdown_version()}", **notes}
    return write_set(out, kind, fmt, teams, manifest)


def main(argv: list[str] | None = None) -> None:
    """python -m battles.teamsets build KIND --format F [--replays PATH...] [--n N] [--seed S] [--out DIR]"""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m battles.teamsets", description=__doc__.split("\n")[0])
    b = parser.add_subparsers(dest="cmd", required=True).add_parser("build", help="build one team set")
    b.add_argument("kind", choices=KINDS)
    b.add_argument("--format", required=True, help="e.g. gen1ou, gen9ou")
    b.add_argument("--replays", nargs="+", help="replay JSON files or folders (default: the bundled ones)")
    b.add_argument("--stats", help="usage statistics file (default: the bundled one for the format)")
    b.add_argument("--n", type=int, default=16, help="teams to draw (variety)")
    b.add_argument("--seed", type=int, default=0, help="seed (variety)")
    b.add_argument("--out", default=str(TEAMS_ROOT), help=f"team sets folder (default {TEAMS_ROOT})")
    args = parser.parse_args(argv)
    try:
        path = build(args.kind, args.format, replays=args.replays, stats_path=args.stats, n=args.n,
                     seed=args.seed, out=args.out, command=" ".join(["python -m battles.teamsets", *argv]))
    except (TeamError, ValueError, RuntimeError) as err:
        raise SystemExit(f"error: {err}") from None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    print(f"{args.kind}/{manifest['format']}: {json.dumps(manifest['counts'])}")
    for s in manifest.get("skipped", []):
        print(f"  skipped {s['replay']} {s['side']}: {s['reason']}")
    print(f"wrote {path.parent}")


if __name__ == "__main__":
    main()
