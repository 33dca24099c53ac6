"""Battle logs to first-person trajectories, for both players of every battle.

    python -m battles.build --logs PATH... --out DIR [--workers N]

Inputs: replay JSON files or folders of them (the shape of public Showdown replays and
of bulk replay dumps: `id`, `format`/`formatid`, `players`, `log`, `uploadtime`,
`rating`; server logs with `inputLog` and `p1team`/`p2team` give exact choices and
teams), raw `.log` protocol text, and Qabra's own recorded battle shards
(battles/logs.py). Human logs become source `human`; our battles become `selfplay`
(or `--source`).

Writes trajectory shards to DIR, skips battles already built there when run again (a
build killed half-way resumes without duplicates: a shard is complete or absent), and
ends with one JSON line: inputs, trajectories, decisions, skipped (count per reason),
unknown_tokens, inputs_per_s. One bad file never stops a build.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import multiprocessing as mp
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from battles.encode import ObservationEncoder
from battles.logs import read_battle_logs, to_id
from battles.shards import list_shards
from battles.trajectories import ShardWriter, Trajectory
from battles.view import decisions_from_log

HUMAN, SELFPLAY = "human", "selfplay"


class Skip(Exception):
    """An input that cannot become trajectories; the message is the reason's key."""


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


# -- reading inputs ------------------------------------------------------------------
def _format_of(data: dict, log: str) -> str:
    fmt = data.get("formatid") or data.get("format") or ""
    if fmt and " " not in fmt and "[" not in fmt:
        return to_id(fmt)
    for line in log.split("\n", 200)[:200]:
        if line.startswith("|tier|"):
            return to_id(line[6:])
    return to_id(fmt)


def item_from_replay(data: dict, origin: str, source: str = HUMAN) -> Item:
    """A replay JSON (public replay or server log) as a build item; raises Skip."""
    if not isinstance(data, dict):
        raise Skip("not_a_replay_object")
    log = data.get("log")
    if isinstance(log, list):
        log = "\n".join(log)
    if not isinstance(log, str) or not log.strip():
        raise Skip("missing_field:log")
    players = data.get("players") or [data.get("p1"), data.get("p2")]
    if not players or len(players) < 2 or not all(isinstance(p, str) for p in players[:2]):
        raise Skip("missing_field:players")
    fmt = _format_of(data, log)
    if not fmt:
        raise Skip("missing_field:format")
    key = str(data.get("id") or data.get("roomid") or origin)
    replay = {"id": key, "format": fmt, "players": list(players[:2]), "log": log,
              "uploadtime": data.get("uploadtime") or data.get("timestamp"), "rating": data.get("rating")}
    choices = teams = None
    if isinstance(data.get("inputLog"), list):  # a server log: exact choices and teams
        choices = {"p1": [], "p2": []}
        for line in data["inputLog"]:
            if line[:3] in (">p1", ">p2") and line[3:4] == " ":
                choices[line[1:3]].append(line[4:])
        if isinstance(data.get("p1team"), list) and isinstance(data.get("p2team"), list):
            teams = {"p1": data["p1team"], "p2": data["p2team"]}
    if replay["rating"] is None and isinstance(data.get("p1rating"), dict):
        replay["rating"] = data["p1rating"].get("elo")
    return Item(key=key, replay=replay, source=source, choices=choices, teams=teams)


def _iter_files(paths: list[Path]) -> Iterator[Path]:
    for p in paths:
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".json", ".log", ".parquet"))
        elif p.exists():
            yield p
        else:
            raise FileNotFoundError(f"--logs {p}: no such file or folder")


def iter_items(paths: list[Path], source: str | None, skipped: collections.Counter) -> Iterator[Item]:
    """Every battle in the inputs, as build items; unreadable files are counted in `skipped`."""
    for path in _iter_files(paths):
        if path.suffix == ".parquet":
            schema = pq.read_schema(path)
            if "p1_choices" not in schema.names:
                continue  # trajectory shards and other tables are not inputs
            for rec in read_battle_logs(path):
                yield Item(key=rec.id, replay=rec.replay, source=source or SELFPLAY, choices=rec.choices,
                           teams=rec.teams, agents=dict(rec.specs), team_set=rec.team_set)
        elif path.suffix == ".log":
            text = path.read_text(errors="replace")
            players = ["", ""]
            for line in text.split("\n"):
                if line.startswith("|player|"):
                    parts = line.split("|")
                    if len(parts) > 3 and parts[2] in ("p1", "p2"):
                        players[int(parts[2][1]) - 1] = parts[3]
            try:
                yield item_from_replay({"id": path.stem, "players": players, "log": text}, str(path), source or HUMAN)
            except Skip as err:
                skipped[str(err)] += 1
        else:
            try:
                data = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                skipped["not_json"] += 1
                continue
            try:
                yield item_from_replay(data, str(path), source or HUMAN)
            except Skip as err:
                skipped[str(err)] += 1


# -- building one battle -----------------------------------------------------------------
_ENCODER: ObservationEncoder | None = None


def _encoder() -> ObservationEncoder:
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = ObservationEncoder()
    return _ENCODER


def _winner_side(log: str, players: list[str]) -> str | None:
    """'p1', 'p2', '' for a tie, None when the log has no ending (truncated)."""
    for line in reversed(log.rstrip().split("\n")[-60:]):
        if line.startswith("|win|"):
            name = to_id(line[5:])
            for side, player in zip(("p1", "p2"), players):
                if to_id(player) == name:
                    return side
            return None
        if line == "|tie" or line.startswith("|tie|"):
            return ""
    return None


def build_item(item: Item) -> tuple[list[Trajectory], str | None, int]:
    """Trajectories of both players of one battle, or a skip reason; plus unknown tokens seen."""
    enc = _encoder()
    log = item.replay["log"]
    if "|gametype|doubles" in log or "|gametype|triples" in log or "|gametype|freeforall" in log:
        return [], "doubles_not_supported", 0
    if "|turn|1" not in log:
        return [], "ended_before_turn_1", 0
    if "\n|error|" in log or log.startswith("|error|"):
        return [], "error_line", 0
    winner = _winner_side(log, item.replay["players"])
    if winner is None:
        return [], "truncated_or_no_winner", 0
    before = enc.vocab.misses
    try:
        by_side = decisions_from_log(item.replay, ("p1", "p2"), item.choices, item.teams)
    except Exception as err:  # a log our parser cannot follow: skip it, say why
        return [], f"parse_error:{type(err).__name__}", 0
    trajs = []
    for side in ("p1", "p2"):
        decisions = by_side[side]
        if not decisions:
            continue
        tokens, numbers = enc.encode_many([d.view for d in decisions])
        trajs.append(Trajectory(
            battle_id=item.key, player=side, format=item.replay["format"], source=item.source,
            outcome=0 if winner == "" else (1 if winner == side else -1),
            encoder_version=enc.version, vocab_hash=enc.vocab.hash,
            tokens=tokens, numbers=numbers,
            action=np.array([d.action for d in decisions], np.int16),
            legal=np.array([d.view.legal for d in decisions], dtype=bool),
            rating=float(item.replay["rating"]) if isinstance(item.replay.get("rating"), (int, float)) else None,
            team_set=item.team_set, agent=item.agents.get(side) or None,
        ))
    if not trajs:
        return [], "no_decisions", enc.vocab.misses - before
    return trajs, None, enc.vocab.misses - before


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
        done.update(pq.read_table(shard, columns=["battle_id"]).column("battle_id").to_pylist())
    return done


def build(logs: list[str | Path], out: str | Path, *, workers: int = 1, source: str | None = None,
          rows_per_shard: int = 2048, progress: bool = True) -> dict:
    """Build trajectories from `logs` into `out`; returns the summary dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = built_ids(out)
    skipped: collections.Counter = collections.Counter()  # before dispatch: unreadable, duplicate, built
    failed: collections.Counter = collections.Counter()  # dispatched, but no trajectories
    seen: set[str] = set()

    def fresh_items() -> Iterator[Item]:
        for item in iter_items([Path(p) for p in logs], source, skipped):
            if item.key in seen:
                skipped["duplicate_id"] += 1
                continue
            seen.add(item.key)
            if item.key in done:
                skipped["already_built"] += 1
                continue
            yield item

    stats = {"inputs": 0, "trajectories": 0, "decisions": 0, "unknown_tokens": 0}
    start = time.monotonic()
    gc_thresholds = gc.get_threshold()
    prefix = f"trajectories-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
    with ShardWriter(out, prefix, rows_per_shard=rows_per_shard) as writer, \
            tqdm(desc="build", unit="battle", disable=not progress) as bar:
        if workers > 1:
            pool = mp.get_context("spawn").Pool(workers, initializer=_fewer_collections)
            results = pool.imap(build_item, fresh_items(), chunksize=16)
        else:
            pool = None
            gc_thresholds = _fewer_collections()
            results = map(build_item, fresh_items())
        try:
            for trajs, reason, unknown in results:
                stats["inputs"] += 1
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
    return {**stats, "skipped": dict(sorted((skipped + failed).items())),
            "inputs_per_s": round(stats["inputs"] / elapsed, 2) if elapsed > 0 else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build first-person trajectories from battle logs.")
    parser.add_argument("--logs", nargs="+", required=True, help="replay JSON / .log files or folders, battle shards")
    parser.add_argument("--out", required=True, help="folder for trajectory shards")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--source", default=None, help="override the source label (default: human / selfplay)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        summary = build(args.logs, args.out, workers=args.workers, source=args.source, progress=not args.quiet)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
