"""Replays as people save them: every input becomes a checked replay or a named skip.

Reads replay-API JSON (one replay or a list), server logs (`inputLog`, teams), raw `.log`
protocol text, and HTML replay pages (the Showdown client's "download replay" and
poke-env's saved replays: the log inside the page's battle-log script block), alone, in
folders, and inside zip and tar archives. `check_replay` turns a raw replay into the
fields a build needs or raises `Skip` with a reason that names what is wrong
(`bad_field:format`, `format_mismatch`, `not_utf8`, `too_long:bytes`, ...); `winner_of`
finds the winner, inferring it from a forfeit, an inactivity loss or a side with no
Pokémon left when a saved log stops before its `|win|` line.
"""

from __future__ import annotations

import json
import re
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from battles.protocol import other_side, to_id

REPLAY_SUFFIXES = (".json", ".log", ".html", ".htm")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
SIDES = ("p1", "p2")
# The log block of a replay page: Showdown's download writes class="battle-log-data", the
# replay site's pages class="log"; either may carry other attributes around it.
_HTML_LOG = re.compile(
    r"<script\b[^>]*\bclass=[\"'](?:battle-log-data|log)[\"'][^>]*>(.*?)</script>", re.S | re.I)
_HTML_REPLAYID = re.compile(r"<input\b[^>]*\bname=[\"']replayid[\"'][^>]*\bvalue=[\"']([^\"']*)[\"']", re.I)
# How the server ends a battle for a player (server/room-battle.ts, forfeitPlayer); |win| follows.
_ENDING = re.compile(r"^\|(?:-message|inactive|raw)\|(.+?) (forfeited|lost due to inactivity|forfeited by changing "
                     r"their name|lost by having an inappropriate name)\.\s*$")
_DOUBLES = re.compile(r"^\|(?:switch|drag|move|faint|detailschange)\|p[1-4][b-c]: |^\|player\|p[34]\|.", re.M)


class Skip(Exception):
    """An input that is counted and skipped; the message is the reason."""


@dataclass(frozen=True)
class Limits:
    """Sizes past which a replay is skipped (`too_long:*`), so memory stays bounded."""

    max_bytes: int = 16 * 1024 * 1024  # a 1,000-turn battle log is about 1 MB
    max_turns: int = 1000  # Showdown's endless battle clause ends every battle at turn 1000

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_turns < 1:
            raise ValueError(f"max_bytes={self.max_bytes}, max_turns={self.max_turns}: both must be >= 1")


def _suffix(name: str) -> str:
    name = name.lower()
    return next((s for s in ARCHIVE_SUFFIXES + REPLAY_SUFFIXES if name.endswith(s)), "")


def is_replay_name(name: str) -> bool:
    """Whether a file inside a folder or archive is read as a replay (by its suffix)."""
    return _suffix(name) in REPLAY_SUFFIXES


def is_archive_name(name: str) -> bool:
    """Whether a file is read as a zip or tar archive of replays (by its suffix)."""
    return _suffix(name) in ARCHIVE_SUFFIXES


# -- bytes from files and archives ---------------------------------------------------------
def read_file(path: Path, limits: Limits) -> bytes:
    """A file's bytes, or Skip('too_long:bytes') without reading it when it is too large."""
    if path.stat().st_size > limits.max_bytes:
        raise Skip("too_long:bytes")
    return path.read_bytes()


def iter_archive(path: Path, limits: Limits) -> Iterator[tuple[str, bytes | Skip]]:
    """(member name, bytes or the Skip that makes it unreadable) for each replay member."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.is_dir() or not is_replay_name(info.filename):
                        continue
                    member = f"{path}!{info.filename}"
                    yield member, Skip("too_long:bytes") if info.file_size > limits.max_bytes else archive.read(info)
        else:
            # Stream mode reads a compressed tar front to back without seeking or indexing it.
            with tarfile.open(path, mode="r|*") as archive:
                for info in archive:
                    if not info.isfile() or not is_replay_name(info.name):
                        continue
                    member = f"{path}!{info.name}"
                    yield member, Skip("too_long:bytes") if info.size > limits.max_bytes else archive.extractfile(info).read()
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as err:
        yield str(path), Skip(f"bad_archive: {err}")


# -- bytes to raw replays ------------------------------------------------------------------
def _header_id(lines: list[str]) -> str | None:
    """The room id of a `>battle-...` header line (poke-env's logs start with one)."""
    for line in lines[:5]:
        if line.startswith(">"):
            return line[1:].strip().removeprefix("battle-") or None
    return None


def replay_from_log_text(text: str, origin: str, rid: str | None = None) -> dict:
    """A raw `.log` protocol text (or a page's log block) as a replay dict."""
    lines = [line.strip() for line in text.strip().split("\n")]
    header = _header_id(lines)
    lines = [line for line in lines if not line.startswith(">")]
    return {"id": header or rid or Path(origin.split("!")[-1]).stem, "log": "\n".join(lines)}


def replay_from_html(text: str, origin: str) -> dict:
    """An HTML replay page as a replay dict; Skip('no_battle_log') when it holds no log block."""
    found = _HTML_LOG.search(text)
    if not found:
        raise Skip("no_battle_log")
    # Showdown's download escapes every '/' as '\/' so that the log cannot close the script.
    block = found.group(1).replace("\\/", "/")
    rid = _HTML_REPLAYID.search(text)
    return replay_from_log_text(block, origin, rid.group(1).removeprefix("battle-") if rid and rid.group(1) else None)


def replays_from_bytes(data: bytes, name: str) -> list[object]:
    """The raw replays in one file (JSON may hold a list); raises Skip for unreadable bytes."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Skip("not_utf8") from None
    kind = _suffix(name)
    start = text.lstrip()[:1]
    if kind in (".html", ".htm") or (kind == "" and start == "<"):
        return [replay_from_html(text, name)]
    if kind == ".log" or (kind == "" and start in ("|", ">")):
        return [replay_from_log_text(text, name)]
    try:
        parsed = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise Skip("not_json") from None
    return parsed if isinstance(parsed, list) else [parsed]


# -- checking one replay -------------------------------------------------------------------
def _utf8(text: str, reason: str) -> str:
    try:  # JSON may escape lone surrogates that no file or Parquet column can store
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Skip(reason) from None
    return text


def log_players(lines: list[str]) -> list[str]:
    """Player names from the first non-empty `|player|pN|NAME` line of each side.

    Showdown writes `|player|pN|` again with an empty name when a player leaves the finished
    battle; that later line must not erase the name.
    """
    names = {"p1": "", "p2": ""}
    for line in lines:
        if line.startswith("|player|"):
            parts = line.split("|")
            if len(parts) > 3 and parts[2] in names and parts[3].strip() and not names[parts[2]]:
                names[parts[2]] = parts[3].strip()
    return [names["p1"], names["p2"]]


def _string_list(value: object, key: str) -> list[str]:
    if isinstance(value, str):
        return value.split("\n")
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise Skip(f"bad_field:{key}")
    return value


def _format_id(raw: dict, lines: list[str]) -> str:
    """The battle's format id; Skip('format_mismatch') when the fields contradict the log."""
    for key in ("formatid", "format"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise Skip(f"bad_field:{key}")
    tier = gen = ""
    for line in lines[:300]:
        if line.startswith("|tier|") and not tier:
            tier = to_id(line[6:])
        elif line.startswith("|gen|") and not gen:
            gen = line[5:].strip()
    given = to_id(raw.get("formatid") or raw.get("format") or "")
    fmt = given or tier
    if not fmt:
        raise Skip("missing_field:format")
    # Custom rules may lengthen one of the two ids ("gen9ou" and "gen9oubo3"); another
    # format or another generation is a label that would build the wrong battle.
    if given and tier and not (given.startswith(tier) or tier.startswith(given)):
        raise Skip("format_mismatch")
    fmt_gen = re.match(r"gen(\d+)", fmt)
    if fmt_gen and gen.isdigit() and int(gen) != int(fmt_gen.group(1)):
        raise Skip("format_mismatch")
    return fmt


def check_replay(raw: object, origin: str, limits: Limits = Limits()) -> dict:
    """A raw replay's checked fields: id, format, players, log, uploadtime, rating,
    input_log (exact choices, or None) and teams (or None); raises Skip naming what is wrong."""
    if not isinstance(raw, dict):
        raise Skip("not_a_replay_object")
    log = raw.get("log")
    if log is None:
        raise Skip("missing_field:log")
    lines = _string_list(log, "log")
    log = "\n".join(lines)
    if not log.strip():
        raise Skip("missing_field:log")
    if len(log) > limits.max_bytes:
        raise Skip("too_long:bytes")
    _utf8(log, "not_utf8")
    rid = raw.get("id") if raw.get("id") is not None else raw.get("roomid")
    if rid is not None and not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise Skip("bad_field:id")
    rid = _utf8(str(rid), "bad_field:id") if rid not in (None, "") else origin
    fmt = _format_id(raw, lines)
    players = raw.get("players")
    if players not in (None, []):  # an empty list says no more than no list: names come from the log
        if not isinstance(players, list) or len(players) < 2 or not all(isinstance(p, str) for p in players[:2]):
            raise Skip("bad_field:players")
        players = list(players[:2])
    else:
        players = [raw.get("p1"), raw.get("p2")]
        for key, name in zip(SIDES, players):
            if name is not None and not isinstance(name, str):
                raise Skip(f"bad_field:{key}")
        players = [p or "" for p in players]
    from_log = log_players(lines)
    players = [p.strip() or q for p, q in zip(players, from_log)]
    if not all(players):
        raise Skip("missing_field:players")
    input_log = None
    for key in ("inputLog", "inputlog"):
        if raw.get(key) is not None:
            input_log = _string_list(raw[key], key)
    teams = None
    if input_log is not None and raw.get("p1team") is not None and raw.get("p2team") is not None:
        for key in ("p1team", "p2team"):
            if not isinstance(raw[key], list) or not all(isinstance(m, dict) for m in raw[key]):
                raise Skip(f"bad_field:{key}")
        teams = {"p1": raw["p1team"], "p2": raw["p2team"]}
    rating = raw.get("rating")
    if rating is None and isinstance(raw.get("p1rating"), dict):
        rating = raw["p1rating"].get("elo")
    uploadtime = raw.get("uploadtime") or raw.get("timestamp")
    return {"id": rid, "format": fmt, "players": players, "log": log,
            "uploadtime": uploadtime if isinstance(uploadtime, int) and not isinstance(uploadtime, bool) else None,
            "rating": float(rating) if isinstance(rating, (int, float)) and not isinstance(rating, bool) else None,
            "input_log": input_log, "teams": teams}


# -- the battle inside -----------------------------------------------------------------------
def count_turns(log: str) -> int:
    """How many `|turn|` lines a log holds."""
    return log.count("\n|turn|") + log.startswith("|turn|")


def is_doubles(log: str) -> bool:
    """A doubles, triples or multi battle, told by its `|gametype|` line or by its positions."""
    gametype = re.search(r"^\|gametype\|(\w+)", log, re.M)
    if gametype:
        return gametype.group(1) != "singles"
    return _DOUBLES.search(log) is not None


def _side_named(name: str, names: dict[str, set[str]]) -> str:
    """The side a name in the log belongs to; exact spelling first, then Showdown ids."""
    name = name.strip()
    exact = [s for s in SIDES if name in names[s]]
    if len(exact) == 1:
        return exact[0]
    by_id = [s for s in SIDES if to_id(name) and to_id(name) in {to_id(n) for n in names[s]}]
    if len(exact) > 1 or len(by_id) > 1:
        raise Skip("ambiguous_player_names")
    if len(by_id) == 1:
        return by_id[0]
    raise Skip("winner_not_a_player")


def winner_of(log: str, players: list[str]) -> tuple[str, str | None]:
    """('p1' | 'p2' | '' for a tie, how it was inferred or None when the log says it).

    The `|win|` or `|tie|` line may sit anywhere after the last turn (chat follows it). A log
    that stops before it still has a winner when a player forfeited or lost to the timer, or
    when one side has no Pokémon left. Raises Skip('truncated_or_no_winner') otherwise.
    """
    lines = log.split("\n")
    names = {s: {p.strip()} for s, p in zip(SIDES, players)}
    for s, p in zip(SIDES, log_players(lines)):
        if p:
            names[s].add(p)
    last_turn = max((i for i, line in enumerate(lines) if line.startswith("|turn|")), default=0)
    tail = lines[last_turn:]
    for line in reversed(tail):
        if line.startswith("|win|"):
            return _side_named(line[5:], names), None
        if line == "|tie" or line.startswith("|tie|"):
            return "", None
    for line in tail:
        if (m := _ENDING.match(line)):
            loser = _side_named(m.group(1), names)
            return other_side(loser), "inactivity" if "inactivity" in m.group(2) else "forfeit"
    size = {s: 0 for s in SIDES}
    fainted = {s: 0 for s in SIDES}
    for line in lines:
        if line.startswith("|teamsize|"):
            parts = line.split("|")
            if len(parts) > 3 and parts[2] in size and parts[3].isdigit():
                size[parts[2]] = int(parts[3])
        elif line.startswith("|faint|p1") or line.startswith("|faint|p2"):
            fainted[line[7:9]] += 1
    out = [s for s in SIDES if size[s] and fainted[s] >= size[s]]
    if len(out) == 2:
        return "", "fainted"
    if len(out) == 1:
        return other_side(out[0]), "fainted"
    raise Skip("truncated_or_no_winner")
