"""Get human battle data: download public Showdown replays, or import local replay dumps.

    python scripts/get_replays.py download --format gen1ou --out data/replays -n 500
    python scripts/get_replays.py import DUMP... --out data/replays

Both write one JSON per replay to OUT/<formatid>/<id>.json (written to a temporary
name, then renamed), with player names replaced by pseudonyms, and end by printing a
one-line JSON summary. Import reads replay JSON, raw `.log` files and HTML replay pages
(Showdown's downloads, poke-env's saved replays) alone, in folders and in zip/tar
archives; a file that cannot be a replay is counted under a reason (battles/replays.py
names them) and never stops the import. Downloading is polite (one request per second
by default), de-duplicated by id, and resumable: replays already on disk are never
fetched again.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from battles.files import write_atomic
from battles.protocol import to_id
from battles.replays import (
    Limits,
    Skip,
    check_replay,
    is_archive_name,
    is_replay_name,
    iter_archive,
    read_file,
    replays_from_bytes,
)

DEFAULT_BASE_URL = "https://replay.pokemonshowdown.com"
USER_AGENT = "qabra-get-replays/0.1 (research; polite)"
MAX_BYTES = 64 * 1024 * 1024  # no real replay is near this; guards against odd archive members
MAX_NAME = 200  # characters of an id or format: <id>.json and its temporary name fit in 255 bytes
_ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)+$")
_SIDE_RE = re.compile(r"^(p\d: )(.+)$")
_RANK_SYMBOLS = set(" +%@*&~#$^☆§‽!")
# Protocol lines whose third field is a user name: |c|USER|MSG, |j|USER, |n|USER|OLDID ...
_USER_LINES = {"c", "chat", "j", "J", "join", "l", "L", "leave", "n", "N", "name"}
# Lines of free text that may mention a player; battle events never carry user names.
_TEXT_LINES = {"c", "chat", "c:", "inactive", "inactiveoff", "-message", "message", "raw", "html",
               "uhtml", "uhtmlchange", "bigerror", "error", "title", "chatmsg", "chatmsg-raw",
               "debug", "-hint", "notify"}


def _split_rank(user: str) -> tuple[str, str]:
    if user and user[0] in _RANK_SYMBOLS:
        return user[0], user[1:]
    return "", user


def anonymise(replay: dict) -> dict:
    """Replace player (and spectator) names by pseudonyms stable within this battle."""
    lines = replay["log"].split("\n") if isinstance(replay["log"], str) else list(replay["log"])
    pseudonym: dict[str, str] = {}  # to_id(name) -> pseudonym
    for line in lines:
        parts = line.split("|")
        if len(parts) > 3 and parts[1] == "player" and re.fullmatch(r"p\d", parts[2]) and parts[3]:
            pseudonym.setdefault(to_id(parts[3]), f"anon-{parts[2]}")
    for i, name in enumerate(replay.get("players") or []):
        if isinstance(name, str) and name:
            pseudonym.setdefault(to_id(name), f"anon-p{i + 1}")
    for key in ("p1", "p2"):
        if isinstance(replay.get(key), str) and replay[key]:
            pseudonym.setdefault(to_id(replay[key]), f"anon-{key}")
    spellings = {uid for uid in pseudonym}  # every form a name is written in
    spectators = 0
    for line in lines:
        parts = line.split("|")
        kind = parts[1] if len(parts) > 1 else ""
        users = []
        if kind in _USER_LINES and len(parts) > 2:
            users.append(_split_rank(parts[2])[1])
        if kind in ("n", "N", "name") and len(parts) > 3:
            users.append(parts[3])
        if kind == "c:" and len(parts) > 3:
            users.append(_split_rank(parts[3])[1])
        if kind in ("player", "win") and len(parts) > 2:
            users.append(parts[3] if kind == "player" and len(parts) > 3 else parts[2])
        for user in users:
            uid = to_id(user)
            if uid and uid not in pseudonym:
                spectators += 1
                pseudonym[uid] = f"anon-s{spectators}"
            if uid:
                spellings.add(user.strip())
    for name in replay.get("players") or []:
        if isinstance(name, str) and to_id(name):
            spellings.add(name)
    ordered = sorted((n for n in spellings if to_id(n)), key=len, reverse=True)
    pattern = re.compile(
        r"(?<![A-Za-z0-9])(" + "|".join(map(re.escape, ordered)) + r")(?![A-Za-z0-9])",
        re.IGNORECASE,
    ) if ordered else None

    def by_id(name: str) -> str:
        return pseudonym.get(to_id(name), name) if to_id(name) else name

    def in_text(text: str) -> str:
        if pattern is None:
            return text
        return pattern.sub(lambda m: pseudonym.get(to_id(m[1]), m[1]), text)

    out = []
    for line in lines:
        parts = line.split("|")
        kind = parts[1] if len(parts) > 1 and line.startswith("|") else None
        if kind == "player" and len(parts) > 3:
            parts[3] = by_id(parts[3])
            if len(parts) > 4:
                parts[4] = ""  # custom avatars are named after the user
        elif kind == "win" and len(parts) > 2:
            parts[2] = by_id(parts[2])
        elif kind in _USER_LINES and len(parts) > 2:
            rank, user = _split_rank(parts[2])
            parts[2] = rank + by_id(user)
            if kind in ("n", "N", "name") and len(parts) > 3:
                parts[3] = to_id(by_id(parts[3]))
            if kind in ("c", "chat") and len(parts) > 3:
                parts[3:] = [in_text(p) for p in parts[3:]]
        elif kind == "c:" and len(parts) > 3:
            rank, user = _split_rank(parts[3])
            parts[3] = rank + by_id(user)
            parts[4:] = [in_text(p) for p in parts[4:]]
        elif kind is None or kind in _TEXT_LINES:
            parts = [in_text(p) for p in parts]
        else:  # battle events name sides as "p1: NAME" (-sidestart, -sideend, ...)
            parts = [_SIDE_RE.sub(lambda m: m[1] + by_id(m[2]), p) for p in parts]
        out.append("|".join(parts))
    replay["log"] = "\n".join(out) if isinstance(replay["log"], str) else out
    if isinstance(replay.get("players"), list):
        replay["players"] = [by_id(p) if isinstance(p, str) else p for p in replay["players"]]
    for key in ("p1", "p2", "winner"):
        if isinstance(replay.get(key), str):
            replay[key] = by_id(replay[key])
    for key in ("p1rating", "p2rating"):
        if isinstance(replay.get(key), dict):
            replay[key] = {k: by_id(v) if isinstance(v, str) else v for k, v in replay[key].items()}
    for key in ("inputlog", "inputLog"):
        if isinstance(replay.get(key), str):
            replay[key] = in_text(replay[key])
        elif isinstance(replay.get(key), list):
            replay[key] = [in_text(x) if isinstance(x, str) else x for x in replay[key]]
    return replay


def normalise(raw: object, origin: str = "") -> dict:
    """A replay in the common layout (id, formatid, format, players, log, ...), anonymised.

    Raises Skip naming what is wrong; the fields are checked as battles.build checks them,
    so every replay imported here can be built.
    """
    if not isinstance(raw, dict):
        raise Skip("not_a_replay_object")
    rid = raw.get("id") or raw.get("roomid")
    if not isinstance(rid, str) or not rid:
        raise Skip("missing_id")
    rid = rid.removeprefix("battle-")
    if len(rid) > MAX_NAME:
        raise Skip("too_long:id")
    if not _ID_RE.match(rid):
        raise Skip("bad_id")
    # Turns are the build's limit to set; here only the bytes bound memory.
    checked = check_replay(raw, origin, Limits(max_bytes=MAX_BYTES, max_turns=sys.maxsize))
    if len(checked["format"]) > MAX_NAME:
        raise Skip("too_long:format")
    replay = {k: v for k, v in raw.items() if k != "password"}
    # Server logs keep `log` as a list of lines; one string is the replay API's shape.
    replay.update(id=rid, formatid=checked["format"], format=raw.get("format") or checked["format"],
                  log=checked["log"], players=checked["players"])
    return anonymise(replay)


def write_replay(out: Path, replay: dict) -> Path:
    """Write OUT/<formatid>/<id>.json atomically (temporary name, then rename)."""
    return write_atomic(out / replay["formatid"] / f"{replay['id']}.json", json.dumps(replay, ensure_ascii=False))


def ids_on_disk(out: Path, formatid: str | None = None) -> set[tuple[str, str]]:
    """(formatid, id) of every replay already under OUT (or under one format)."""
    folders = [out / formatid] if formatid else [p for p in out.glob("*") if p.is_dir()]
    return {(f.name, p.stem) for f in folders if f.is_dir() for p in f.glob("*.json")}


class Fetcher:
    """GET with a minimum interval between requests and retries on transient failures."""

    def __init__(self, base_url: str, rate: float, timeout: float, retries: int,
                 retry_wait: float) -> None:
        if rate <= 0:
            raise ValueError(f"--rate {rate}: must be a positive number of requests per second")
        self.base = base_url.rstrip("/")
        self.interval, self.timeout = 1.0 / rate, timeout
        self.retries, self.retry_wait = retries, retry_wait
        self.requests = 0
        self._last = -float("inf")

    def get(self, path: str) -> bytes:
        """The body at base_url + path; raises Skip(reason) when it cannot be had."""
        reason = "network_error"
        for attempt in range(self.retries + 1):
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last = time.monotonic()
            self.requests += 1
            request = urllib.request.Request(self.base + path, headers={"User-Agent": USER_AGENT})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read(MAX_BYTES + 1)
            except urllib.error.HTTPError as err:
                reason = f"http_{err.code}"
                if err.code != 429 and err.code < 500:
                    raise Skip(reason) from err
            except (urllib.error.URLError, TimeoutError, ConnectionError):
                reason = "network_error"
            if attempt < self.retries:
                time.sleep(self.retry_wait * 2**attempt)
        raise Skip(reason)


def _parse_json(data: bytes) -> object:
    if len(data) > MAX_BYTES:
        raise Skip("too_long:bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise Skip("not_utf8") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise Skip("not_json") from err


def download(formatid: str, out: Path, limit: int, *, base_url: str = DEFAULT_BASE_URL,
             rate: float = 1.0, before: int | None = None, timeout: float = 30.0,
             retries: int = 3, retry_wait: float = 2.0, progress: bool = True) -> dict:
    """Download replays of a format until OUT/<formatid> holds `limit` of them; return a summary."""
    formatid = to_id(formatid)
    if not formatid:
        raise ValueError("--format must name a Showdown format, such as gen1ou")
    started = time.monotonic()
    fetch = Fetcher(base_url, rate, timeout, retries, retry_wait)
    on_disk = {rid for _, rid in ids_on_disk(out, formatid)}
    initial = len(on_disk)
    seen: set[str] = set()
    skipped: Counter[str] = Counter()
    counts = Counter()
    stopped = "no_more_replays"
    idle_pages = 0
    bar = tqdm(total=limit, initial=min(initial, limit), unit="replay", disable=not progress,
               desc=f"download {formatid}")
    while len(on_disk) < limit:
        query = {"format": formatid} | ({"before": before} if before is not None else {})
        try:
            page = _parse_json(fetch.get("/search.json?" + urllib.parse.urlencode(query)))
            if not isinstance(page, list):
                raise Skip("not_a_list")
        except Skip as reason:
            skipped[f"search_page_{reason}"] += 1
            stopped = f"search_page_{reason}"  # without a page there is no cursor to go on from
            break
        counts["pages"] += 1
        entries = [e for e in page if isinstance(e, dict) and isinstance(e.get("id"), str)
                   and isinstance(e.get("uploadtime"), int)]
        if len(entries) < len(page):
            skipped["bad_search_entry"] += len(page) - len(entries)
        if not entries:
            break
        new = 0
        for entry in entries:
            rid = entry["id"]
            if rid in seen:
                counts["duplicates"] += 1
                continue
            seen.add(rid)
            new += 1
            if rid in on_disk:
                counts["already_there"] += 1
                continue
            if len(on_disk) >= limit:
                break
            try:
                if not _ID_RE.match(rid):
                    raise Skip("bad_id")
                replay = normalise(_parse_json(fetch.get(f"/{rid}.json")))
                if replay["id"] != rid:
                    raise Skip("id_mismatch")
                if replay["formatid"] != formatid:
                    raise Skip("other_format")
            except Skip as reason:
                skipped[str(reason)] += 1
                bar.set_postfix(skipped=sum(skipped.values()))
                continue
            write_replay(out, replay)
            on_disk.add(rid)
            counts["downloaded"] += 1
            bar.update(1)
        idle_pages = 0 if new else idle_pages + 1
        if idle_pages == 2:  # two pages in a row with nothing new: the cursor is not moving
            stopped = "no_progress"
            break
        oldest = min(e["uploadtime"] for e in entries)
        # `before` is exclusive: ask again from the oldest second seen (+1) so replays sharing
        # that second are not lost; when a page brought nothing new, move strictly past it.
        nxt = oldest + 1 if new else oldest
        if before is not None and nxt >= before:
            nxt = before - 1
        before = nxt
    else:
        stopped = "limit"
    bar.close()
    return {"mode": "download", "format": formatid, "out": str(out), "on_disk": len(on_disk),
            "downloaded": counts["downloaded"], "already_there": counts["already_there"],
            "duplicates": counts["duplicates"], "skipped": dict(skipped),
            "pages": counts["pages"], "requests": fetch.requests, "stopped": stopped,
            "seconds": round(time.monotonic() - started, 2)}


def iter_dump(path: Path) -> Iterator[tuple[str, bytes | Skip]]:
    """(member name, bytes or the Skip that makes it unreadable) for each replay file in a dump."""
    limits = Limits(max_bytes=MAX_BYTES)
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file():
                yield from iter_dump(child)
    elif is_archive_name(path.name):
        yield from iter_archive(path, limits)
    elif is_replay_name(path.name):
        try:
            yield str(path), read_file(path, limits)
        except Skip as reason:
            yield str(path), reason
        except OSError as err:
            yield str(path), Skip(f"unreadable: {err}")
    else:
        yield str(path), Skip("unsupported_file")


def import_dumps(inputs: list[Path], out: Path, *, formatid: str | None = None,
                 progress: bool = True) -> dict:
    """Copy replays from folders, .json, .zip and .tar(.gz) dumps into OUT/<formatid>/<id>.json."""
    started = time.monotonic()
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise ValueError(f"dump paths not found: {missing}; pass existing folders or archives")
    want = to_id(formatid) if formatid else None
    on_disk = ids_on_disk(out)
    seen: set[tuple[str, str]] = set()
    skipped: Counter[str] = Counter()
    examples: dict[str, str] = {}
    counts: Counter[str] = Counter()
    per_format: Counter[str] = Counter()
    bar = tqdm(unit="file", disable=not progress, desc="import")
    def skip(reason: Skip, member: str) -> None:
        kind = str(reason).split(": ")[0]
        skipped[kind] += 1
        examples.setdefault(kind, f"{member}: {reason}")

    for path in inputs:
        for member, data in iter_dump(path):
            counts["files"] += 1
            bar.update(1)
            try:
                if isinstance(data, Skip):
                    raise data
                # JSON (one replay or a list of them), a raw .log, or an HTML replay page.
                parsed = replays_from_bytes(data, member)
            except Skip as reason:
                skip(reason, member)
                continue
            for raw in parsed:
                try:
                    replay = normalise(raw, member)
                    if want and replay["formatid"] != want:
                        raise Skip("other_format")
                except Skip as reason:
                    skip(reason, member)
                    continue
                key = (replay["formatid"], replay["id"])
                if key in seen:
                    counts["duplicates"] += 1
                elif key in on_disk:
                    counts["already_there"] += 1
                else:
                    try:
                        write_replay(out, replay)
                    except OSError as err:  # one replay the file system refuses is not the import's end
                        skip(Skip(f"unwritable: {err}"), member)
                        continue
                    counts["imported"] += 1
                    per_format[replay["formatid"]] += 1
                seen.add(key)
            bar.set_postfix(imported=counts["imported"], skipped=sum(skipped.values()))
    bar.close()
    return {"mode": "import", "inputs": [str(p) for p in inputs], "out": str(out),
            "files": counts["files"], "imported": counts["imported"],
            "already_there": counts["already_there"], "duplicates": counts["duplicates"],
            "skipped": dict(skipped), "examples": examples, "per_format": dict(per_format),
            "seconds": round(time.monotonic() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints a one-line JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    dl = sub.add_parser("download", help="download public replays of one format")
    dl.add_argument("--format", required=True, help="Showdown format id, e.g. gen1ou")
    dl.add_argument("--out", type=Path, required=True, help="folder; replays go to OUT/<format>/")
    dl.add_argument("-n", "--limit", type=int, default=100,
                    help="stop once OUT/<format> holds this many replays (ones there count)")
    dl.add_argument("--base-url", default=DEFAULT_BASE_URL, help="replay server (for tests)")
    dl.add_argument("--rate", type=float, default=1.0, help="requests per second at most")
    dl.add_argument("--before", type=int, help="start with replays uploaded before this time")
    dl.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    dl.add_argument("--retries", type=int, default=3, help="retries on 429, 5xx, network errors")
    dl.add_argument("--retry-wait", type=float, default=2.0, help="first retry wait (doubles)")
    im = sub.add_parser("import", help="import local dumps: folders, .json/.log/.html, .zip, .tar(.gz)")
    im.add_argument("dumps", nargs="+", type=Path)
    im.add_argument("--out", type=Path, required=True)
    im.add_argument("--format", help="import only this format id")
    for p in (dl, im):
        p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if args.mode == "download":
            if args.limit < 1:
                raise ValueError(f"-n {args.limit}: ask for at least one replay")
            summary = download(args.format, args.out, args.limit, base_url=args.base_url,
                               rate=args.rate, before=args.before, timeout=args.timeout,
                               retries=args.retries, retry_wait=args.retry_wait,
                               progress=not args.quiet)
        else:
            summary = import_dumps(args.dumps, args.out, formatid=args.format,
                                   progress=not args.quiet)
    except ValueError as err:
        print(f"get_replays: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
