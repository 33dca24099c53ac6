"""Play N real battles between two agents on a local Showdown server and record them.

    python -m eval.match --p1 maxbp --p2 random --format gen1ou --team-set competitive \
        -n 100 --concurrency 16 --out runs/match

Ends with one JSON line: battles, p1_wins, p2_wins, ties, errors, p1_winrate, ci95,
mean_turns, battles_per_s. "p1" means the agent given as --p1. A server that dies
mid-run (or stalls) is restarted, the battles it held are counted in `errors` and
played again, so the run still ends with N finished battles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from agents.registry import make_player
from battles.logs import BattleLogWriter, BattleRecord
from battles.server import ShowdownServer
from eval.ratings import wilson_interval

log = logging.getLogger(__name__)


def needs_teams(battle_format: str) -> bool:
    """Random-battle formats bring their own teams; every other format needs a team set."""
    return "random" not in battle_format


@dataclass
class MatchResult:
    """What a match produced: counts by agent (not by side), turns, timing, shards."""

    p1_spec: str
    p2_spec: str
    battle_format: str
    battles: int = 0
    p1_wins: int = 0
    p2_wins: int = 0
    ties: int = 0
    errors: int = 0
    restarts: int = 0
    turns: list[int] = field(default_factory=list)
    seconds: float = 0.0
    shards: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """The one-line JSON summary of DESIGN's match runner."""
        score = self.p1_wins + 0.5 * self.ties
        lo, hi = wilson_interval(score, self.battles)
        return {
            "p1": self.p1_spec,
            "p2": self.p2_spec,
            "format": self.battle_format,
            "battles": self.battles,
            "p1_wins": self.p1_wins,
            "p2_wins": self.p2_wins,
            "ties": self.ties,
            "errors": self.errors,
            "restarts": self.restarts,
            "p1_winrate": round(score / self.battles, 4) if self.battles else None,
            "ci95": [round(lo, 4), round(hi, 4)],
            "mean_turns": round(sum(self.turns) / len(self.turns), 2) if self.turns else None,
            "battles_per_s": round(self.battles / self.seconds, 3) if self.seconds else None,
        }


class Match:
    """Plays `n` battles of `p1_spec` (challenger) against `p2_spec` and records each one."""

    def __init__(
        self,
        p1_spec: str,
        p2_spec: str,
        *,
        battle_format: str,
        n: int,
        out_dir: str | Path,
        team_set: str | None = None,
        concurrency: int = 16,
        seed: int = 0,
        server: ShowdownServer | None = None,
        stall_timeout: float = 120.0,  # seconds without a finished battle or a new turn
        max_restarts: int = 10,
        progress: bool = True,
        shard_size: int = 500,
    ):
        if n < 1:
            raise ValueError(f"-n must be at least 1, got {n}")
        if concurrency < 1:
            raise ValueError(f"--concurrency must be at least 1, got {concurrency}")
        if needs_teams(battle_format) and not team_set:
            raise ValueError(f"format {battle_format} needs a team set: pass --team-set (e.g. competitive)")
        self.p1_spec, self.p2_spec = p1_spec, p2_spec
        self.battle_format = battle_format
        self.n = n
        self.out_dir = Path(out_dir)
        self.team_set_name = team_set if needs_teams(battle_format) else None
        self.concurrency = concurrency
        self.seed = seed
        self.server = server
        self.stall_timeout = stall_timeout
        self.max_restarts = max_restarts
        self.progress = progress
        self.shard_size = shard_size
        self._token = secrets.token_hex(4)
        self._agent_of_name: dict[str, str] = {}  # account name -> 'p1' | 'p2' (the agent, not the side)
        self._consumed: list[Path] = []  # recorded, deleted once their shard is written
        # (name, inode) of files already recorded or found to be another match's: a restarted
        # server numbers its rooms from 1 again, so a name alone may come back.
        self._seen: set[tuple[str, int]] = set()
        self._samplers = None

    # -- players ----------------------------------------------------------------
    def _team_samplers(self):
        if self._samplers is None and self.team_set_name:
            from battles.teams import load_team_set

            team_set = load_team_set(self.team_set_name, self.battle_format)
            self._samplers = (team_set.sampler(2 * self.seed), team_set.sampler(2 * self.seed + 1))
        return self._samplers or (None, None)

    def _make_players(self):
        teams = self._team_samplers()
        players = []
        for role, spec, team in (("p1", self.p1_spec, teams[0]), ("p2", self.p2_spec, teams[1])):
            player = make_player(
                spec,
                battle_format=self.battle_format,
                server_configuration=self.server.server_configuration,
                team=team,
                max_concurrent_battles=self.concurrency,
            )
            self._agent_of_name[player.username] = role
            players.append(player)
        return players

    # -- records ----------------------------------------------------------------
    def _collect(self, writer: BattleLogWriter, result: MatchResult) -> int:
        """Move this match's finished battles from the server's folder into the writer."""
        new = 0
        # Polled several times a second: list names only, and read each file once.
        with os.scandir(self.server.battle_dir) as entries:
            files = sorted((e.name, e.inode()) for e in entries
                           if e.name.endswith(".json") and (e.name, e.inode()) not in self._seen)
        for name, inode in files:
            if result.battles >= self.n:
                break
            path = self.server.battle_dir / name
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # renamed into place atomically; a failure here is another reader's file
            roles = [self._agent_of_name.get(player) for player in data.get("players", [])]
            self._seen.add((name, inode))
            if None in roles:
                continue  # another match on a shared server
            specs = {side: (self.p1_spec if role == "p1" else self.p2_spec) for side, role in zip(("p1", "p2"), roles)}
            record = BattleRecord.from_server_json(
                data, specs=specs, team_set=self.team_set_name, id_prefix=f"q{self._token}r{result.restarts}-"
            )
            writer.add(record)
            self._consumed.append(path)
            result.battles += 1
            result.turns.append(record.turns)
            if record.winner == "":
                result.ties += 1
            elif roles[0 if record.winner == "p1" else 1] == "p1":
                result.p1_wins += 1
            else:
                result.p2_wins += 1
            new += 1
        if len(writer.pending) >= self.shard_size:
            self._flush(writer, result)
        return new

    def _flush(self, writer: BattleLogWriter, result: MatchResult) -> None:
        shard = writer.flush()
        if shard:
            result.shards.append(str(shard))
        for path in self._consumed:
            path.unlink(missing_ok=True)  # only once its record is safely in a shard
        self._consumed = []

    # -- the loop -----------------------------------------------------------------
    async def _round(self, writer, result, bar) -> bool:
        """Play the remaining battles once; False when the server died or stalled."""
        p1, p2 = self._make_players()
        task = asyncio.create_task(p1.battle_against(p2, n_battles=self.n - result.battles))
        last_progress = time.monotonic()
        healthy = True
        seen = None
        try:
            while not task.done():
                await asyncio.sleep(0.2)
                new = self._collect(writer, result)
                if new:
                    bar.update(new)
                    last_progress = time.monotonic()
                # A new battle or turn is progress too: a slow agent (search) is not a stalled server.
                now_seen = (len(p1.battles), sum(b.turn for b in list(p1.battles.values())))
                if now_seen != seen:
                    seen, last_progress = now_seen, time.monotonic()
                if not self.server.is_alive():
                    log.warning("server died mid-match; restarting and replaying lost battles")
                    healthy = False
                    break
                if time.monotonic() - last_progress > self.stall_timeout:
                    log.warning("no battle finished for %.0fs; restarting the server", self.stall_timeout)
                    healthy = False
                    break
            if task.done() and task.exception() is not None:
                log.warning("battles raised %r; restarting the server", task.exception())
                healthy = False
            # The last battles' files are renamed into place before their |win| reaches us.
            bar.update(self._collect(writer, result))
            if not healthy:
                in_flight = sum(1 for b in p1.battles.values() if not b.finished)
                result.errors += max(in_flight, 1)
        finally:
            if not task.done():
                task.cancel()
                try:
                    await task
                except BaseException:
                    pass
            for player in (p1, p2):
                try:
                    await asyncio.wait_for(player.ps_client.stop_listening(), timeout=5)
                except BaseException:
                    pass
                player.battles.clear() if hasattr(player.battles, "clear") else None
        return healthy

    async def _run(self) -> MatchResult:
        result = MatchResult(self.p1_spec, self.p2_spec, self.battle_format)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        writer = BattleLogWriter(self.out_dir, prefix=f"battles-{self._token}", battles_per_shard=10**9)
        start = time.monotonic()
        with tqdm(total=self.n, desc=f"{self.p1_spec} vs {self.p2_spec}", disable=not self.progress) as bar:
            while result.battles < self.n:
                if not await self._round(writer, result, bar):
                    if result.restarts >= self.max_restarts:
                        self._flush(writer, result)
                        raise RuntimeError(
                            f"gave up after {result.restarts} server restarts; {result.battles} battles "
                            f"recorded in {self.out_dir}. Server output:\n{self.server.output_tail()}"
                        )
                    result.restarts += 1
                    self._flush(writer, result)  # before the new server reuses room names
                    if not self.server.ensure_running():
                        self.server.restart()  # alive but stalled
        result.seconds = time.monotonic() - start
        self._flush(writer, result)
        return result

    def run(self) -> MatchResult:
        """Play all battles (starting a server if none was given) and return the result."""
        own = self.server is None
        if own:
            self.server = ShowdownServer()
        try:
            self.server.start()
            return asyncio.run(self._run())
        finally:
            if own:
                self.server.stop()


def tally(folder: str | Path, spec: str) -> tuple[int, int, int]:
    """(battles, wins of the agent `spec`, ties) recorded in a match folder (either seat)."""
    from battles.logs import read_battle_logs

    n = wins = ties = 0
    folder = Path(folder)
    for rec in read_battle_logs(folder) if folder.exists() else []:
        n += 1
        ties += not rec.winner
        wins += bool(rec.winner) and rec.specs.get(rec.winner) == spec
    return n, wins, ties


def folder_name(spec: str) -> str:
    """An agent spec as a folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)


def play_over_team_sets(agent: str, opponent: str, n: int, team_sets: list[str], out: str | Path, *,
                        battle_format: str, seed: int, concurrency: int, server) -> dict:
    """`n` battles of `agent` against `opponent` split evenly over the team sets, one folder each
    under `out`; a rerun plays only what is missing. Counts, win rate, 95% interval, per set."""
    per_set = -(-n // len(team_sets))
    total = wins = ties = 0
    by_set = {}
    for j, team_set in enumerate(team_sets):
        folder = Path(out) / f"{folder_name(opponent)}-{team_set}"
        have = tally(folder, agent)[0]
        if have < per_set:
            Match(agent, opponent, battle_format=battle_format, team_set=team_set, n=per_set - have,
                  out_dir=folder, concurrency=concurrency, seed=seed + j + have, server=server,
                  progress=False).run()
        b, w, t = tally(folder, agent)
        by_set[team_set] = (w + 0.5 * t) / b
        total, wins, ties = total + b, wins + w, ties + t
    lo, hi = wilson_interval(wins + 0.5 * ties, total)
    return {"battles": total, "wins": wins, "ties": ties, "winrate": (wins + 0.5 * ties) / total,
            "ci95": [lo, hi], "by_team_set": by_set}


def run_match(p1: str, p2: str, **kwargs) -> MatchResult:
    """Convenience wrapper: `Match(p1, p2, **kwargs).run()`."""
    return Match(p1, p2, **kwargs).run()


def main(argv: list[str] | None = None) -> None:
    from agents.registry import known_agents

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--p1", required=True, help=f"agent spec ({', '.join(known_agents())}, ...)")
    parser.add_argument("--p2", required=True, help="agent spec")
    parser.add_argument("--format", default="gen1ou", help="Showdown format id")
    parser.add_argument("--team-set", default="competitive", help="team set name or folder (ignored for random battles)")
    parser.add_argument("-n", type=int, default=100, help="battles to finish")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/match", help="folder for the battle log shards")
    parser.add_argument("--port", type=int, default=None, help="port for the server (default: a free one)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    server = ShowdownServer(args.port)
    try:
        result = Match(
            args.p1, args.p2, battle_format=args.format, n=args.n, out_dir=args.out,
            team_set=args.team_set, concurrency=args.concurrency, seed=args.seed,
            server=server, progress=not args.quiet,
        ).run()
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    finally:
        server.stop()
    print(json.dumps(result.summary()), flush=True)


if __name__ == "__main__":
    main()
