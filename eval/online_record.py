"""One battle played online, as its player saw it, turned into a record like a local one.

A remote server writes no battle files for us, so the recorder keeps what the player
receives: the room's protocol lines (in the form every spectator gets, once our own
exact HP is written the way the simulator shows it to others), the team from the first
request, and the choices we sent. `OnlineBattle.record()` gives a `BattleRecord` whose
`replay` has the public replay shape, so online battles build into trajectories with
`python -m battles.build` like any other.
"""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import dataclass, field

from battles.logs import BattleRecord
from battles.protocol import parse_line, to_id

# Lines a player gets that a public replay lacks (or that say nothing about the battle).
PRIVATE = frozenset({
    "init", "title", "request", "askreg", "error", "bigerror", "deinit", "noinit", "c", "c:", "chat",
    "j", "J", "join", "l", "L", "leave", "n", "N", "name", "html", "uhtml", "uhtmlchange",
    "tempnotify", "tempnotifyoff", "inactive", "inactiveoff", "hidelines", "unlink", "notify",
})
HP_FIELD = {"switch": 4, "drag": 4, "-damage": 3, "-heal": 3, "-sethp": 3}  # index in line.split("|")
RATING = re.compile(r"^(.+?)'s rating: (\d+) &rarr; <strong>(\d+)</strong>")
CONDITION = re.compile(r"^(\d+)/(\d+)(.*)$")


def shared_hp(hp: int, maxhp: int, mode: str, gen: int) -> str:
    """HP as the simulator shows it to the other side and spectators (sim/pokemon.ts getHealth)."""
    if hp <= 0:
        return "0"
    if mode == "exact":
        return f"{hp}/{maxhp}"
    if mode == "percent" or gen >= 7:
        pct = -(-100 * hp // maxhp)
        return f"{99 if pct == 100 and hp < maxhp else pct}/100"
    pixels = (48 * hp // maxhp) or 1
    suffix = ""
    if gen >= 5 and pixels == 9:
        suffix = "y" if hp * 5 > maxhp else "r"
    elif gen >= 5 and pixels == 24:
        suffix = "g" if hp * 2 > maxhp else "y"
    return f"{pixels}/48{suffix}"


def team_from_request(request: dict) -> list[dict]:
    """Our team, in team order, from the first request (the shape of a server log's p1team)."""
    team = []
    for mon in request.get("side", {}).get("pokemon", []):
        details = mon.get("details", "").split(", ")
        level = next((int(d[1:]) for d in details[1:] if d[:1] == "L" and d[1:].isdigit()), 100)
        entry = {
            "name": mon.get("ident", "").split(": ", 1)[-1],
            "species": details[0],
            "level": level,
            "moves": list(mon.get("moves", [])),
            "item": mon.get("item", ""),
            "ability": mon.get("baseAbility") or mon.get("ability") or "",
        }
        if mon.get("teraType"):
            entry["teraType"] = mon["teraType"]
        team.append(entry)
    return team


@dataclass
class OnlineBattle:
    """What one of our players saw of one battle room, kept line by line."""

    tag: str  # the room: battle-gen9ou-123
    username: str
    raw: list[str] = field(default_factory=list)  # public lines, own HP still exact
    side: str | None = None
    team: list[dict] | None = None
    choices: list[str] = field(default_factory=list)
    players: list[str] = field(default_factory=lambda: ["", ""])
    ratings: list[int | None] = field(default_factory=lambda: [None, None])  # from |player| lines
    rated: bool = False
    winner: str | None = None  # 'p1' | 'p2' | '' (tie) once finished
    end_type: str = "normal"
    rating_before: int | None = None
    rating_after: int | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    finalized: bool = False  # recorded in the run folder
    gone: bool = False  # the server no longer has this room (it restarted while we were away)
    _bench: list[str] = field(default_factory=list)  # ids of our Pokémon in the last request's order
    _moves: list[str] = field(default_factory=list)  # ids of the active Pokémon's moves, last request
    _split: int = 0
    _begun: bool = False  # |start| seen: later |player| lines announce leaving and rejoining

    @property
    def finished(self) -> bool:
        return self.winner is not None

    @property
    def opponent(self) -> str:
        other = "p2" if self.side == "p1" else "p1"
        return self.players[int(other[1]) - 1]

    @property
    def result(self) -> str:
        """'win', 'loss', 'tie' or '' (not finished)."""
        if self.winner is None:
            return ""
        return "tie" if self.winner == "" else ("win" if self.winner == self.side else "loss")

    def feed(self, lines: list[str]) -> None:
        """Take the lines of one message to this room (the `>room` header removed)."""
        for line in lines:
            parts = line.split("|")
            kind = parts[1] if len(parts) > 1 else ""
            if self._split:  # |split|pN: the secret line comes first, then the shared one
                self._split -= 1
                if self._split == 1:
                    continue
            if kind == "split":
                self._split = 2
                continue
            if self.finished and kind != "raw":
                continue  # after |win|: only the ratings belong to the battle (a late forfeit does not)
            if kind == "init" and self.raw:
                self.raw, self._begun = [], False  # rejoined: the server sends the whole log again
            elif kind == "start":
                self._begun = True
            elif kind == "player" and self._begun:
                continue  # not in the server's own log
            elif kind == "request":
                self._request(parts)
            elif kind == "move":
                self._forced_move(line)
            elif kind == "player" and len(parts) > 3 and parts[2] in ("p1", "p2") and parts[3]:
                i = int(parts[2][1]) - 1
                self.players[i] = parts[3]
                if len(parts) > 5 and parts[5].strip().isdigit():
                    self.ratings[i] = int(parts[5])
                if to_id(parts[3]) == to_id(self.username):
                    self.side = parts[2]
            elif kind == "noinit" and not self.finished:
                self.gone = True
            elif kind == "rated":
                self.rated = True
            elif kind == "win" and len(parts) > 2:
                winner = to_id(parts[2])
                self.winner = next((s for s, p in zip(("p1", "p2"), self.players) if to_id(p) == winner), "")
                self.ended = time.time()
            elif kind == "tie":
                self.winner, self.ended = "", time.time()
            elif kind == "-message" and len(parts) > 2:
                if parts[2].endswith(" forfeited."):
                    self.end_type = "forfeit"
                elif "due to inactivity" in parts[2]:
                    self.end_type = "timer"
            elif kind == "raw" and len(parts) > 2:
                match = RATING.match("|".join(parts[2:]))
                if match and to_id(html.unescape(match.group(1))) == to_id(self.username):
                    self.rating_before, self.rating_after = int(match.group(2)), int(match.group(3))
            if kind not in PRIVATE and line.startswith("|"):
                self.raw.append(line)

    def _forced_move(self, line: str) -> None:
        """A move the simulator made our Pokémon use whatever we chose (gen 1's partial-trapping
        lock: `|move|p1a: Dragonite|Wrap|p2a: Snorlax|[from] Wrap`, its request still offering
        every move): the simulator's input log writes that move, so our record does too."""
        ev = parse_line(line)
        if ev is None or not self.side or not ev.arg(0).startswith(f"{self.side}a") or \
                not self.choices or not self.choices[-1].startswith("move "):
            return
        move = to_id(ev.arg(1))
        if to_id(ev.tags.get("from", "")) in (move, "lockedmove"):
            self.choices[-1] = f"move {move}"

    def _request(self, parts: list[str]) -> None:
        text = "|".join(parts[2:])
        if not text:
            return
        request = json.loads(text)
        side = request.get("side", {}).get("id")
        if side in ("p1", "p2"):
            self.side = side
        active = request.get("active") or [{}]
        self._moves = [m.get("id", "") for m in active[0].get("moves", [])]
        pokemon = request.get("side", {}).get("pokemon") or []
        if pokemon:
            self._bench = [to_id(m.get("ident", "").split(": ", 1)[-1]) for m in pokemon]
            if self.team is None:
                self.team = team_from_request(request)

    def sent(self, message: str) -> None:
        """Note a choice we sent to this room (`/choose move 1`, `/team 123`)."""
        if message.startswith("/choose "):
            choice = message[len("/choose "):].split("|")[0].strip()
            verb, _, target = choice.partition(" ")
            # The simulator's input log writes switches by slot and moves by id: keep records
            # alike whoever recorded them.
            if verb == "switch" and not target.isdigit() and to_id(target) in self._bench:
                choice = f"switch {self._bench.index(to_id(target)) + 1}"
            slot, _, rest = target.partition(" ")
            if verb == "move" and len(self._moves) == 1:  # locked, recharging, Struggle, gen 1's "fight"
                choice = f"move {self._moves[0]}"
            elif verb == "move" and slot.isdigit() and 0 < int(slot) <= len(self._moves):
                choice = " ".join(["move", self._moves[int(slot) - 1], rest]).strip()
            self.choices.append(choice)
        elif message.startswith("/team "):
            self.choices.append("team " + message[len("/team "):].split("|")[0].strip())

    def rejected(self) -> None:
        """The server refused our last choice; it never entered the battle."""
        if self.choices:
            self.choices.pop()

    def log(self) -> str:
        """The spectator log: our own exact HP written as the other side saw it."""
        text = "\n".join(self.raw)
        mode = "exact" if "|rule|Exact HP Mod" in text else ("percent" if "|rule|HP Percentage Mod" in text else "pixels")
        gen = next((int(line[5:]) for line in self.raw if line.startswith("|gen|") and line[5:].isdigit()), 9)
        if self.side is None or mode == "exact":
            return text + "\n"
        own = f"{self.side}a:"
        out = []
        for line in self.raw:
            parts = line.split("|")
            i = HP_FIELD.get(parts[1]) if len(parts) > 2 else None
            if i is not None and len(parts) > i and parts[2].startswith(own):
                match = CONDITION.match(parts[i])
                if match:
                    hp, maxhp, rest = int(match.group(1)), int(match.group(2)), match.group(3)
                    parts[i] = shared_hp(hp, maxhp, mode, gen) + rest
                    line = "|".join(parts)
            out.append(line)
        return "\n".join(out) + "\n"

    def record(self, spec: str, *, team_set: str | None, id_prefix: str, battle_format: str) -> BattleRecord:
        """The battle as a BattleRecord: our side's spec, exact team and choices; the opponent's
        spec is `online:NAME` (a person or a bot we do not know)."""
        assert self.finished, f"{self.tag} is not finished"
        side = self.side or "p1"
        other = "p2" if side == "p1" else "p1"
        turns = max((int(line[6:]) for line in self.raw if line.startswith("|turn|") and line[6:].isdigit()),
                    default=0)
        known = [r for r in self.ratings if r is not None]
        return BattleRecord(
            id=f"{id_prefix}{self.tag.removeprefix('battle-')}",
            format=battle_format,
            players=list(self.players),
            log=self.log(),
            uploadtime=int(self.ended or time.time()),
            winner=self.winner or "",
            turns=turns,
            choices={side: list(self.choices), other: []},
            teams={side: self.team, other: None},
            specs={side: spec, other: f"online:{self.opponent}"},
            team_set=team_set,
            rating=float(min(known)) if self.rated and known else None,
            end_type=self.end_type,
        )
