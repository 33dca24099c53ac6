"""Usage statistics and Pokémon sets: the one reader of Smogon usage stats (load_stats,
bundled_stats), completing revealed sets, sampling sets, and writing Showdown export text.

The stats serve the team set builders (battles/teamsets.py), the own-team guesses of views
rebuilt from logs (battles/log_views.py) and the search bot's sampled opponents
(agents/search_spec.py)."""

from __future__ import annotations

import heapq
import json
import math
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cache
from itertools import islice
from pathlib import Path

import numpy as np
from poke_env.data import GenData

from battles.protocol import is_status_move, species_entry, to_id
from battles.server import showdown_dir
from battles.teams import TeamError, validate_teams

DATA = Path(__file__).resolve().parent / "data"
STATS_FILES = {"gen1ou": DATA / "stats" / "gen1ou.json",
               "gen9ou": DATA / "stats" / "gen9ou-1825.moveset.txt"}
STAT_NAMES = ("HP", "Atk", "Def", "SpA", "SpD", "Spe")
# Items that lock a Pokémon into attacking moves; completions never pair them with status moves.
ATTACK_ONLY_ITEMS = frozenset({"choiceband", "choicespecs", "choicescarf", "assaultvest"})
ITEM_MOVERS = frozenset({"trick", "switcheroo"})
NEUTRAL_SPREAD = "hardy:84/84/84/84/84/84"  # only for a species whose stats list no spread
MIN_USAGE = 0.01  # variety draws species used on at least 1% of teams
PER_ROUND, MAX_TRIES = 4, 40  # candidates validated per Pokémon per Node run, and in all


def gen_of(fmt: str) -> int:
    """The generation of a format id ('gen9ou' -> 9)."""
    fmt = to_id(fmt)
    if not (fmt.startswith("gen") and fmt[3:4].isdigit()):
        raise ValueError(f"format '{fmt}' does not start with genN (e.g. gen9ou)")
    return int(fmt[3])


# -- usage statistics -------------------------------------------------------------------
@dataclass(frozen=True)
class SpeciesUsage:
    """One species' usage: option id -> share of its sets, per field."""

    usage: float  # share of teams that carry it
    moves: dict[str, float]
    items: dict[str, float]  # "" = no item
    abilities: dict[str, float]
    spreads: dict[str, float]  # "Nature:hp/atk/def/spa/spd/spe"
    tera: dict[str, float]
    teammates: dict[str, float]
    name: str = ""  # the species' display name, as the stats write it


@dataclass(frozen=True)
class UsageTable:
    """A format's usage statistics, by species id."""

    format: str
    source: Path
    species: dict[str, SpeciesUsage]

    def ranked(self, species: str, kind: str) -> tuple[str, ...]:
        """Ids of one field ('moves', 'items', 'abilities', 'tera') of a species (or of its
        base species), most used first; () when the stats do not list it."""
        u = self.species.get(species) or self.species.get(species_entry(9, species)[0])
        return tuple(k for k, _ in _ranked(getattr(u, kind), [])) if u is not None else ()


FIELDS = ("moves", "items", "abilities", "spreads", "tera", "teammates")
_NONE_IDS = {"nothing": "", "noability": ""}
_SECTIONS = {"Abilities": "abilities", "Items": "items", "Spreads": "spreads", "Moves": "moves",
             "Tera Types": "tera", "Teammates": "teammates"}


def _weights(named: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, w in named.items():
        key = name if ":" in name else _NONE_IDS.get(to_id(name), to_id(name))  # spreads keep ':'
        if to_id(name) != "other" and w > 0:
            out[key] = out.get(key, 0.0) + float(w)
    return out


def _from_json(data: dict) -> dict[str, dict]:
    # pkmn/smogon stats JSON: {"pokemon": {"Tauros": {"usage": {"weighted": ..}, "moves": {..}}}}
    src = {"tera": "teraTypes"}
    return {to_id(name): {"name": name, "usage": float(e.get("usage", {}).get("weighted", 0.0)),
                          **{f: e.get(src.get(f, f), {}) for f in FIELDS}}
            for name, e in data.get("pokemon", {}).items()}


def _from_moveset_text(text: str) -> dict[str, dict]:
    # Smogon's boxed report: boxes between +----+ lines; a one-row box names a species, the
    # next holds "Raw count" and "Avg. weight", then one box per section.
    boxes: list[list[str]] = [[]]
    for line in text.splitlines():
        row = line.strip().strip("|").strip()
        if row.startswith("+"):
            boxes.append([])
        elif row:
            boxes[-1].append(row)
    boxes = [b for b in boxes if b]
    out, current = {}, None
    for k, rows in enumerate(boxes):
        nxt = boxes[k + 1][0] if k + 1 < len(boxes) else ""
        if len(rows) == 1 and rows[0] not in _SECTIONS and nxt.startswith("Raw count"):
            head = dict(r.split(": ", 1) for r in boxes[k + 1] if ": " in r)
            current = {"name": rows[0], "usage": float(head["Raw count"]) * float(head.get("Avg. weight", 1.0))}
            out[to_id(rows[0])] = current
        elif current is not None and rows[0] in _SECTIONS:
            pairs = [row.rpartition(" ") for row in rows[1:]]
            current[_SECTIONS[rows[0]]] = {n.strip(): float(p[:-1]) / 100 for n, _, p in pairs
                                           if p.endswith("%")}
    total = sum(e["usage"] for e in out.values()) or 1.0
    for e in out.values():
        e["usage"] = 6 * e["usage"] / total  # weighted counts -> share of teams (6 per team)
    return out


def load_stats(fmt: str, path: str | Path | None = None) -> UsageTable:
    """A format's usage statistics: pkmn/smogon JSON or Smogon moveset text (default: bundled)."""
    fmt = to_id(fmt)
    if path is None and fmt not in STATS_FILES:
        raise TeamError(f"no bundled usage statistics for '{fmt}' (have: {', '.join(STATS_FILES)});"
                        " pass --stats FILE (pkmn/smogon JSON or Smogon moveset text)")
    path = Path(path) if path is not None else STATS_FILES[fmt]
    try:
        text = path.read_text(encoding="utf-8")
        raw = _from_json(json.loads(text)) if path.suffix == ".json" else _from_moveset_text(text)
    except (OSError, ValueError, KeyError) as err:
        raise TeamError(f"cannot read usage statistics {path}: {err}") from None
    if not raw:
        raise TeamError(f"usage statistics {path} hold no Pokémon")
    species = {sid: SpeciesUsage(e["usage"], *(_weights(e.get(f, {})) for f in FIELDS), name=e["name"])
               for sid, e in raw.items()}
    return UsageTable(fmt, path, species)


@cache
def bundled_stats(fmt: str) -> UsageTable | None:
    """The bundled usage statistics of a format (read once), or None when there are none."""
    return load_stats(fmt) if to_id(fmt) in STATS_FILES else None


# -- sets, names and export text ----------------------------------------------------------
@dataclass(frozen=True)
class PokemonSet:
    """One set, as ids. For a revealed set, None marks a field the log never showed."""

    species: str
    moves: tuple[str, ...] = ()
    item: str | None = None
    ability: str | None = None
    tera: str | None = None
    level: int = 100
    nature: str = ""
    evs: tuple[int, ...] = ()  # HP Atk Def SpA SpD Spe
    ivs: tuple[int, ...] = ()
    filled: tuple[str, ...] = ()  # fields completed from usage statistics

    def gen_blank(self, gen: int) -> PokemonSet:
        """Fields a generation does not have are known to be empty."""
        return replace(self, item="" if gen == 1 else self.item,
                       ability="" if gen <= 2 else self.ability, tera="" if gen != 9 else self.tera)


def _spread(key: str) -> tuple[str, tuple[int, ...]]:
    nature, _, evs = key.partition(":")
    return to_id(nature), tuple(int(x) for x in evs.split("/"))


def export_team(sets: Sequence[PokemonSet], gen: int, names: dict[str, str]) -> str:
    """Showdown export text of a team (gen 1-2: every EV 252, as RBY/GSC sets are written)."""
    blocks = []
    for s in sets:
        lines = [names[s.species] + (f" @ {names[s.item]}" if s.item else "")]
        if gen >= 3 and s.ability:
            lines.append(f"Ability: {names[s.ability]}")
        if s.level != 100:
            lines.append(f"Level: {s.level}")
        if gen == 9 and s.tera:
            lines.append(f"Tera Type: {names[s.tera]}")
        evs = [f"{v} {n}" for v, n in zip((252,) * 6 if gen <= 2 else s.evs, STAT_NAMES)
               if v and (gen > 2 or n != "SpD")]  # gen 1-2: SpD follows SpA
        if evs:
            lines.append("EVs: " + " / ".join(evs))
        if gen >= 3 and s.nature:
            lines.append(f"{names[s.nature]} Nature")
        ivs = [f"{v} {n}" for v, n in zip(s.ivs, STAT_NAMES) if v != 31] if gen >= 3 else []
        if ivs:
            lines.append("IVs: " + " / ".join(ivs))
        lines.extend(f"- {names[m]}" for m in s.moves)
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


_NAMES_JS = r"""
const path = require('path');
const {Dex} = require(path.join(path.resolve(process.argv[1]), 'dist', 'sim'));
let input = '';
process.stdin.on('data', c => { input += c; });
process.stdin.on('end', () => {
  const out = {};
  for (const [kind, ids] of Object.entries(JSON.parse(input))) {
    out[kind] = {};
    for (const id of ids) { const e = Dex[kind].get(id); if (e && e.exists) out[kind][id] = e.name; }
  }
  process.stdout.write(JSON.stringify(out));
});
"""


_NAMES: dict[tuple[str, str], str | None] = {}  # (kind, id) -> name; one Node run per new batch


def display_names(ids: dict[str, set[str]]) -> dict[str, str]:
    """Showdown's display names of ids by kind ('species', 'moves', ...); unknown ids are absent."""
    todo = {k: sorted(i for i in v if i and (k, i) not in _NAMES) for k, v in ids.items()}
    if any(todo.values()):
        try:
            proc = subprocess.run(["node", "-e", _NAMES_JS, str(showdown_dir())], input=json.dumps(todo),
                                  capture_output=True, text=True, encoding="utf-8", timeout=120)
        except FileNotFoundError:
            raise RuntimeError("Node.js ('node') is not on PATH; it is needed to build team sets.") from None
        if proc.returncode != 0:
            raise RuntimeError(f"looking up Showdown display names failed:\n{proc.stderr.strip()}")
        found = json.loads(proc.stdout)
        _NAMES.update({(k, i): found[k].get(i) for k, v in todo.items() for i in v})
    return {i: _NAMES[k, i] for k, v in ids.items() for i in v if i and _NAMES[k, i] is not None}


def name_ids(stats: UsageTable, sets: Sequence[PokemonSet]) -> dict[str, set[str]]:
    ids: dict[str, set[str]] = {k: set() for k in ("species", "moves", "items", "abilities",
                                                   "natures", "types")}
    for sid, u in stats.species.items():
        ids["species"].update([sid, *u.teammates])
        ids["natures"].update(_spread(k)[0] for k in u.spreads)
        for kind, table in (("moves", u.moves), ("items", u.items), ("abilities", u.abilities),
                            ("types", u.tera)):
            ids[kind].update(table)
    for s in sets:
        ids["species"].add(s.species)
        ids["moves"].update(s.moves)
        for kind, value in (("items", s.item), ("abilities", s.ability), ("types", s.tera)):
            ids[kind].add(value or "")
    gen = gen_of(stats.format)
    ids["abilities"].update(a for sid in ids["species"] for a in _dex_abilities(gen, sid))
    return ids


# -- dex facts (the dex that ships with poke-env) -------------------------------------------
def pokedex(gen: int) -> dict:
    return GenData.from_gen(gen).pokedex


def team_species(gen: int, species: str) -> str:
    """The species id a team lists for a log's species (battle-only formes -> their base)."""
    base = (pokedex(gen).get(species) or {}).get("battleOnly")
    base = base[0] if isinstance(base, list) else base
    return to_id(base) if base else species


def dex_number(gen: int, species: str) -> int | str:
    return (pokedex(gen).get(species) or {}).get("num", species)  # Species Clause counts these


def _dex_abilities(gen: int, species: str) -> list[str]:
    return [to_id(a) for a in (pokedex(gen).get(species) or {}).get("abilities", {}).values()]


# -- candidate sets ----------------------------------------------------------------------
def _coherent(gen: int, s: PokemonSet, revealed: PokemonSet) -> bool:
    # An attack-only item beside a status move is not a real set, unless the log showed both.
    if s.item not in ATTACK_ONLY_ITEMS:
        return True
    status = [m for m in s.moves if is_status_move(gen, m) and m not in ITEM_MOVERS]
    return not status or (revealed.item == s.item and all(m in revealed.moves for m in status))


def _ranked(table: dict[str, float], fallback: list) -> list[tuple[str, float]]:
    return sorted(table.items(), key=lambda kv: (-kv[1], kv[0])) or [(v, 1.0) for v in fallback]


def completions(gen: int, revealed: PokemonSet, stats: UsageTable) -> Iterator[PokemonSet]:
    """Completions of a revealed set, most likely first (the product of the stats' shares).

    Moves, item, ability and tera type the log showed are kept; the rest come from the
    species' usage statistics. Raises TeamError when the species has none.
    """
    u = stats.species.get(revealed.species)
    if u is None:
        raise TeamError(f"no usage statistics for {revealed.species} in {stats.source.name}")
    r = revealed.gen_blank(gen)
    abilities = _dex_abilities(gen, r.species)
    types = [to_id(t) for t in (pokedex(gen).get(r.species) or {}).get("types", [])]
    known = lambda v: [(v, 1.0)]  # noqa: E731
    fields = [  # ranked (value, share) options: item, ability, tera type, spread
        _ranked(u.items, [""]) if r.item is None else known(r.item),
        _ranked({a: w for a, w in u.abilities.items() if a in abilities}, abilities[:1])
        if r.ability is None else known(r.ability),
        _ranked(u.tera, types[:1]) if r.tera is None else known(r.tera),
        _ranked(u.spreads, [NEUTRAL_SPREAD]),
    ]
    moves = _ranked({m: w for m, w in u.moves.items() if m not in r.moves}, [])
    need = min(4 - len(r.moves), len(moves))
    filled = tuple(f for f, v in (("item", r.item), ("ability", r.ability), ("tera", r.tera)) if v is None)
    filled += ("spread",) * (gen >= 3) + ("moves",) * (need > 0)

    def score(state: tuple) -> float:
        *idx, combo = state
        logs = [fields[f][i][1] for f, i in enumerate(idx)] + [moves[i][1] for i in combo]
        return sum(math.log(max(p, 1e-9)) for p in logs)

    # Best-first search over (option index per field, sorted indices of the added moves):
    # every step makes one choice less likely, so states leave the heap in score order.
    start = (0, 0, 0, 0, tuple(range(need)))
    heap, seen = [(-score(start), start)], {start}
    while heap:
        _, state = heapq.heappop(heap)
        *idx, combo = state
        item, ability, tera, spread = (fields[f][i][0] for f, i in enumerate(idx))
        nature, evs = _spread(spread)
        cand = replace(r, moves=r.moves + tuple(moves[i][0] for i in combo), item=item,
                       ability=ability, tera=tera, nature=nature, evs=evs, filled=filled)
        if _coherent(gen, cand, r):
            yield cand
        nexts = [(*idx[:f], idx[f] + 1, *idx[f + 1:], combo)
                 for f in range(len(fields)) if idx[f] + 1 < len(fields[f])]
        nexts += [(*idx, tuple(sorted(combo[:j] + (combo[j] + 1,) + combo[j + 1:])))
                  for j in range(need) if combo[j] + 1 < len(moves) and combo[j] + 1 not in combo]
        for nxt in nexts:
            if nxt not in seen:
                seen.add(nxt)
                heapq.heappush(heap, (-score(nxt), nxt))


def sampled_sets(gen: int, species: str, stats: UsageTable,
                 rng: np.random.Generator) -> Iterator[PokemonSet]:
    """Endless sets of one species drawn from its usage statistics (moves without replacement)."""
    u = stats.species[species]
    abilities = {a: w for a, w in u.abilities.items() if a in _dex_abilities(gen, species)}

    def draw(table: dict[str, float], fallback: str) -> str:
        keys = sorted(table)
        if not keys:
            return fallback
        p = np.array([table[k] for k in keys])
        return keys[int(rng.choice(len(keys), p=p / p.sum()))]

    while True:
        left, moves = dict(u.moves), []
        while left and len(moves) < 4:
            moves.append(draw(left, ""))
            del left[moves[-1]]
        items = u.items
        if any(is_status_move(gen, m) and m not in ITEM_MOVERS for m in moves):
            items = {i: w for i, w in items.items() if i not in ATTACK_ONLY_ITEMS} or {"": 1.0}
        item, ability = draw(items, ""), draw(abilities, (_dex_abilities(gen, species) or [""])[0])
        tera = draw(u.tera, "")
        nature, evs = _spread(draw(u.spreads, NEUTRAL_SPREAD))
        yield PokemonSet(species, tuple(moves), item, ability, tera, 100, nature, evs,
                         filled=("moves", "item", "ability", "tera", "spread")).gen_blank(gen)


def first_valid(fmt: str, streams: Sequence[Iterator[PokemonSet]], names: dict[str, str],
                max_tries: int = MAX_TRIES) -> list[tuple[PokemonSet | None, int, tuple[str, ...]]]:
    """For each stream, its first set the validator accepts: (set or None, tried, first errors).

    Candidates are validated a few per stream per Node run, in stream order, so the answer
    is the one validating them one by one would give.
    """
    gen, n = gen_of(fmt), len(streams)
    found: list[PokemonSet | None] = [None] * n
    tried, errors = [0] * n, [()] * n
    open_ = list(range(n))
    while open_:
        batch, exhausted = [], set()
        for i in open_:
            want = min(PER_ROUND, max_tries - tried[i])
            got = list(islice(streams[i], want))
            if len(got) < want:
                exhausted.add(i)
            batch.extend((i, cand) for cand in got)
        verdicts = validate_teams([(fmt, export_team([c], gen, names)) for _, c in batch])
        for (i, cand), v in zip(batch, verdicts, strict=True):
            if found[i] is None:
                tried[i] += 1
                found[i] = cand if v.ok else None
                errors[i] = errors[i] or v.errors
        open_ = [i for i in open_ if found[i] is None and tried[i] < max_tries and i not in exhausted]
    return list(zip(found, tried, errors, strict=True))
