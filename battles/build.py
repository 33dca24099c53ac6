"""Battle logs to first-person trajectories, for both players of every battle.

    python -m battles.build --logs PATH... --out DIR [--workers N] [--max-turns T] [--max-bytes B]
                            [--labels SET... [--label-temperature T]] [--role ROLE]

Inputs: replays as people save them (battles/replays.py reads them): replay JSON files
(the shape of public Showdown replays and of bulk replay dumps: `id`, `format`/`formatid`,
`players`, `log`, `uploadtime`, `rating`; server logs with `inputLog` and `p1team`/`p2team`
give exact choices and teams), raw `.log` protocol text, HTML replay pages (Showdown's
downloads, poke-env's saved replays), alone, in folders or in zip/tar archives; and
Qabra's own recorded battle shards (battles/logs.py). Human logs become source `human`;
our battles become `selfplay` (or `--source`), but for the other player of an online battle
(`online:NAME`), who is `human`.

Writes trajectory shards to DIR, skips battles already built there when run again (a
build killed half-way resumes without duplicates: a shard is complete or absent, and a
killed build's temporary shard is removed), and ends with one JSON line: inputs,
trajectories, decisions, skipped (count per reason: `bad_field:format`, `not_utf8`,
`format_mismatch`, `too_long:turns`, ...), recovered (winners inferred from a forfeit, an
inactivity loss or a side with no Pokémon left, when a log stops before `|win|`),
unknown_tokens, inputs_per_s. No input stops a build, and memory stays bounded: a battle
past --max-turns or a file past --max-bytes is skipped before it is parsed.

Trajectories are built from logs plus labels: `--labels SET...` (label set folders,
battles/labels.py: a search bot's labels recorded with its battles, a coach's over built
trajectories) fills the teacher column of the battle sides they label, each label in the row of
its decision; the summary's `labels` counts what was joined and every label that found no row,
by reason. `--role learner` builds only the sides that played that role (recorded with the
battle, battles/logs.py). A built shard is never rewritten: labels made later go into a new build.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import multiprocessing as mp
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from battles.encode import ObservationEncoder
from battles.labels import LabelSet, join
from battles.log_views import decisions_from_log
from battles.logs import read_battle_logs
from battles.replays import (
    Limits,
    Skip,
    check_replay,
    count_turns,
    is_archive_name,
    is_doubles,
    is_replay_name,
    iter_archive,
    read_file,
    replays_from_bytes,
    winner_of,
)
from battles.shards import CorruptShard, list_shards, reading, remove_stale_temporaries
from battles.trajectories import ShardWriter, Trajectory

HUMAN, SELFPLAY = "human", "selfplay"


def side_source(item: Item, side: str) -> str:
    """A side's source: the item's, but `human` for the other player of an online battle (its
    spec is `online:NAME`, eval/online.py), who is a person or someone else's bot, not ours."""
    spec = item.agents.get(side) or ""
    return HUMAN if item.source == SELFPLAY and spec.startswith("online:") else item.source


@dataclass
class Item:
    """One battle to build: a replay-shaped dict plus what is known exactly."""

    key: str  # unique battle id
    replay: dict
    source: str
    choices: dict | None = None
    teams: dict | None = None
    agents: dict = field(default_factory=dict)
    team_set: str | None = None
    winner: str | None = None  # 'p1' | 'p2' | '' (tie), set by check_battle
    inferred: str | None = None  # how the winner was inferred when the log stops before |win|
    room: str | None = None  # the room a recorded battle was played in
    roles: dict = field(default_factory=dict)  # side -> role, as recorded with the battle
    sides: tuple[str, ...] = ("p1", "p2")  # the sides to build
    labels: dict = field(default_factory=dict)  # side -> its label entry (battles/labels.py)
    label_temperature: float = 1.0


def by_role(*roles: str) -> Callable[[Item, str], bool]:
    """A side selector for `build(select=...)`: the sides that played one of `roles`."""
    return lambda item, side: item.roles.get(side) in roles


# -- reading inputs ------------------------------------------------------------------
def item_from_replay(data: object, origin: str, source: str = HUMAN, limits: Limits = Limits()) -> Item:
    """A replay (public replay, server log, `.log` or HTML page read by battles.replays) as a
    build item; raises Skip naming what is wrong."""
    r = check_replay(data, origin, limits)
    replay = {"id": r["id"], "format": r["format"], "players": r["players"], "log": r["log"],
              "uploadtime": r["uploadtime"], "rating": r["rating"]}
    choices = None
    if r["input_log"] is not None:  # a server log: exact choices (and teams)
        choices = {"p1": [], "p2": []}
        for line in r["input_log"]:
            if line[:3] in (">p1", ">p2") and line[3:4] == " ":
                choices[line[1:3]].append(line[4:])
    return Item(key=r["id"], replay=replay, source=source, choices=choices, teams=r["teams"])


def _walk(paths: list[Path]) -> Iterator[Path]:
    for p in paths:
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file()
                              and (f.suffix == ".parquet" or is_replay_name(f.name) or is_archive_name(f.name)))
        elif p.exists():
            yield p
        else:
            raise FileNotFoundError(f"--logs {p}: no such file or folder")


def _members(path: Path, limits: Limits) -> Iterator[tuple[str, bytes | Skip]]:
    if is_archive_name(path.name):
        yield from iter_archive(path, limits)
        return
    try:
        yield str(path), read_file(path, limits)
    except OSError as err:
        yield str(path), Skip(f"unreadable:{type(err).__name__}")
    except Skip as err:
        yield str(path), err


def iter_items(paths: list[Path], source: str | None, skipped: collections.Counter,
               limits: Limits = Limits()) -> Iterator[Item]:
    """Every battle in the inputs, as build items; unreadable ones are counted in `skipped`."""
    for path in _walk(paths):
        if path.suffix == ".parquet":
            try:
                with reading(path):
                    if "p1_choices" not in pq.read_schema(path).names:
                        continue  # trajectory shards and other tables are not inputs
                    for rec in read_battle_logs(path):
                        yield Item(key=rec.id, replay=rec.replay, source=source or SELFPLAY, choices=rec.choices,
                                   teams=rec.teams, agents=dict(rec.specs), team_set=rec.team_set,
                                   room=rec.room or None, roles=rec.roles)
            except CorruptShard as err:
                skipped["corrupt_shard"] += 1
                tqdm.write(f"skipped: {err}")
            continue
        for name, data in _members(path, limits):
            try:
                if isinstance(data, Skip):
                    raise data
                raws = replays_from_bytes(data, name)
            except Skip as err:
                skipped[str(err).split(": ")[0]] += 1
                continue
            for i, raw in enumerate(raws):
                try:
                    yield item_from_replay(raw, name if len(raws) == 1 else f"{name}#{i}", source or HUMAN, limits)
                except Skip as err:
                    skipped[str(err)] += 1


def check_battle(item: Item, limits: Limits) -> None:
    """Set the item's winner, or raise Skip: too long, doubles, never started, no winner."""
    log = item.replay["log"]
    if count_turns(log) > limits.max_turns:
        raise Skip("too_long:turns")
    if is_doubles(log):
        raise Skip("doubles_not_supported")
    if "|turn|1" not in log:
        raise Skip("ended_before_turn_1")
    if "\n|error|" in log or log.startswith("|error|"):
        raise Skip("error_line")
    item.winner, item.inferred = winner_of(log, item.replay["players"])


# -- building one battle -----------------------------------------------------------------
_ENCODER: ObservationEncoder | None = None


def _encoder() -> ObservationEncoder:
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = ObservationEncoder()
    return _ENCODER


def build_item(item: Item) -> tuple[list[Trajectory], str | None, int, collections.Counter]:
    """Trajectories of the item's sides of one battle, or a skip reason; plus unknown tokens seen and
    how its labels joined (battles/labels.py)."""
    assert item.winner is not None, "check_battle(item) sets the winner before the build"
    enc = _encoder()
    winner = item.winner
    before = enc.vocab.misses
    counts: collections.Counter = collections.Counter()
    try:
        by_side = decisions_from_log(item.replay, item.sides, item.choices, item.teams)
    except Exception as err:  # a log our parser cannot follow: skip it, say why
        return [], f"parse_error:{type(err).__name__}", 0, counts
    trajs = []
    for side in item.sides:
        decisions = by_side[side]
        if not decisions:
            continue
        tokens, numbers = enc.encode_many([d.view for d in decisions])
        traj = Trajectory(
            battle_id=item.key, player=side, format=item.replay["format"], source=side_source(item, side),
            outcome=0 if winner == "" else (1 if winner == side else -1),
            encoder_version=enc.version, vocab_hash=enc.vocab.hash,
            tokens=tokens, numbers=numbers,
            action=np.array([d.action for d in decisions], np.int16),
            legal=np.array([d.view.legal for d in decisions], dtype=bool),
            rating=float(item.replay["rating"]) if isinstance(item.replay.get("rating"), (int, float)) else None,
            team_set=item.team_set, agent=item.agents.get(side) or None,
        )
        entry = item.labels.get(side)
        if entry is not None:
            # Row t is the side's decision t when it was paired with its t-th recorded choice;
            # a replay without recorded choices has only the order of its rows.
            recorded = bool(item.choices and item.choices.get(side))
            paired = np.array([not recorded or d.choice_index == t for t, d in enumerate(decisions)])
            traj.teacher = join(entry, traj.legal, traj.action, paired, item.label_temperature, counts)
            traj.teacher_source = entry["source"] + (f",T={item.label_temperature:g}"
                                                     if item.label_temperature != 1.0 else "")
            counts["trajectories_labelled"] += 1
            counts["shallow_decisions"] += entry.get("shallow", 0)
        trajs.append(traj)
    if not trajs:
        return [], "no_decisions", enc.vocab.misses - before, counts
    return trajs, None, enc.vocab.misses - before, counts


# -- the build --------------------------------------------------------------------------
def _fewer_collections() -> tuple[int, ...]:
    """Rebuilding a battle allocates many small containers and frees them with the battle.

    Python's default cycle-collector threshold (700 allocations) then runs a collection
    every few decisions; 50,000 keeps memory bounded and builds ~20% faster. Returns the
    thresholds it replaced.
    """
    old = gc.get_threshold()
    gc.set_threshold(50_000, 10, 10)
    return old


def built_ids(out: Path) -> set[str]:
    """Battle ids already in complete shards of `out`."""
    done: set[str] = set()
    for shard in list_shards(out) if out.exists() else []:
        with reading(shard):
            done.update(pq.read_table(shard, columns=["battle_id"]).column("battle_id").to_pylist())
    return done


def _in_order(pool, items: Iterator[Item], window: int) -> Iterator[tuple]:
    """Results of build_item over `items`, in order, with at most `window` battles in flight.

    Pool.imap would read every input ahead into its task queue: memory grows with the input.
    """
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(pool.apply_async(build_item, (item,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def build(logs: list[str | Path], out: str | Path, *, workers: int = 1, source: str | None = None,
          rows_per_shard: int = 2048, progress: bool = True, limits: Limits = Limits(),
          labels: str | Path | Iterable[str | Path] | None = None, label_temperature: float = 1.0,
          select: Callable[[Item, str], bool] | None = None) -> dict:
    """Build trajectories from `logs` into `out`; returns the summary dict.

    `labels`: label set folders whose labels fill the teacher column, sharpened by
    `label_temperature` (shares ** (1/T)); `select(item, side)`: which sides to build
    (`by_role("learner")`; default both).
    """
    if not label_temperature > 0:
        raise ValueError(f"label_temperature={label_temperature}: must be > 0 (1 keeps the labels as they are)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    done = built_ids(out)
    label_set = LabelSet(labels) if labels is not None else None
    skipped: collections.Counter = collections.Counter()  # before dispatch: unreadable, duplicate, built
    failed: collections.Counter = collections.Counter()  # dispatched, but no trajectories
    recovered: collections.Counter = collections.Counter()
    joined: collections.Counter = collections.Counter()
    seen: set[str] = set()

    def fresh_items() -> Iterator[Item]:
        for item in iter_items([Path(p) for p in logs], source, skipped, limits):
            if item.key in seen:
                skipped["duplicate_id"] += 1
                continue
            seen.add(item.key)
            if item.key in done:
                skipped["already_built"] += 1
                continue
            if select is not None:
                item.sides = tuple(s for s in item.sides if select(item, s))
                if not item.sides:
                    skipped["no_side_selected"] += 1
                    continue
            try:
                check_battle(item, limits)
            except Skip as err:
                skipped[str(err)] += 1
                continue
            if item.inferred:
                recovered[f"winner_inferred:{item.inferred}"] += 1
            if label_set is not None:
                players = dict(zip(("p1", "p2"), item.replay["players"]))
                item.labels = {s: e for s in item.sides
                               if (e := label_set.find(item.key, s, item.room, players.get(s))) is not None}
                item.label_temperature = label_temperature
            yield item

    stats = {"inputs": 0, "trajectories": 0, "decisions": 0, "unknown_tokens": 0}
    start = time.monotonic()
    gc_thresholds = gc.get_threshold()
    prefix = f"trajectories-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
    with ShardWriter(out, prefix, rows_per_shard=rows_per_shard) as writer, \
            tqdm(desc="build", unit="battle", disable=not progress) as bar:
        if workers > 1:
            pool = mp.get_context("spawn").Pool(workers, initializer=_fewer_collections)
            results = _in_order(pool, fresh_items(), window=32 * workers)
        else:
            pool = None
            gc_thresholds = _fewer_collections()
            results = map(build_item, fresh_items())
        try:
            for trajs, reason, unknown, counts in results:
                stats["inputs"] += 1
                joined.update(counts)
                stats["unknown_tokens"] += unknown
                if reason:
                    failed[reason] += 1
                for t in trajs:
                    writer.write(t)
                    stats["trajectories"] += 1
                    stats["decisions"] += len(t.action)
                bar.update(1)
        finally:
            if pool is not None:
                pool.terminate()
            gc.set_threshold(*gc_thresholds)
    elapsed = time.monotonic() - start
    stats["inputs"] += sum(skipped.values())
    summary = {**stats, "skipped": dict(sorted((skipped + failed).items())),
               "recovered": dict(sorted(recovered.items())),
               "inputs_per_s": round(stats["inputs"] / elapsed, 2) if elapsed > 0 else None}
    if label_set is not None:
        # An entry labels one battle side; the others labelled nothing in this build (their side was
        # not built here: another role, built before, or not among the logs).
        summary["labels"] = {"entries": len(label_set), **dict(sorted(joined.items())),
                             "unused_entries": len(label_set) - joined["trajectories_labelled"],
                             "ambiguous_entries": len(label_set.ambiguous)}
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build first-person trajectories from battle logs.")
    parser.add_argument("--logs", nargs="+", required=True,
                        help="replay JSON / .log / HTML files, folders or zip/tar archives of them, battle shards")
    parser.add_argument("--out", required=True, help="folder for trajectory shards")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--source", default=None, help="override the source label (default: human / selfplay)")
    parser.add_argument("--max-turns", type=int, default=Limits.max_turns,
                        help="skip battles longer than this (too_long:turns)")
    parser.add_argument("--max-bytes", type=int, default=Limits.max_bytes,
                        help="skip replay files larger than this (too_long:bytes)")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="label set folders (battles/labels.py) whose labels fill the teacher column")
    parser.add_argument("--label-temperature", type=float, default=1.0, help="sharpen labels: shares ** (1/T)")
    parser.add_argument("--role", default=None, help="build only the sides that played this role (e.g. learner)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.workers < 1:
        raise SystemExit(f"error: --workers {args.workers}: use 1 or more processes")
    try:
        limits = Limits(max_bytes=args.max_bytes, max_turns=args.max_turns)
    except ValueError as err:
        raise SystemExit(f"error: --max-bytes / --max-turns: {err}") from None
    try:
        summary = build(args.logs, args.out, workers=args.workers, source=args.source, progress=not args.quiet,
                        limits=limits, labels=args.labels, label_temperature=args.label_temperature,
                        select=by_role(args.role) if args.role else None)
    except (FileNotFoundError, ValueError, CorruptShard) as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
