"""Play N real battles between two agents and record them.

    python -m eval.match --p1 maxbp --p2 random --format gen1ou --team-set competitive \
        -n 100 --concurrency 16 --out runs/match [--backend sim|server]

Ends with one JSON line: battles, p1_wins, p2_wins, ties, errors, p1_winrate, ci95,
mean_turns, battles_per_s. "p1" means the agent given as --p1.

Backends (DESIGN "Where battles are played"): `sim` (the default) plays on Showdown's own
simulator hosted by a Node process over pipes (eval/runner.py); `server` plays on the real
local Showdown server over websockets. Both record the same `BattleRecord`s. A host or
server that dies mid-run (or stalls) is restarted, the battles it held are counted in
`errors` and played again, so the run still ends with N finished battles. On the `sim`
backend finished battles reach a shard within `flush_seconds`, the command line resumes (a
rerun into the same --out plays only what is missing of N), and `--workers K` splits the
match over K processes, each with its own simulator host (eval/workers.py).
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
from pathlib import Path

from tqdm import tqdm

from agents.registry import make_player
from battles.logs import BattleLogWriter, BattleRecord
from battles.server import ShowdownServer
from eval.ratings import wilson_interval
from eval.recorded import MatchResult, add_recorded, count, tally
from eval.workers import play_in_workers

log = logging.getLogger(__name__)


BACKENDS = ("sim", "server")


def needs_teams(battle_format: str) -> bool:
    """Random-battle formats bring their own teams; every other format needs a team set."""
    return "random" not in battle_format


class Match:
    """Plays `n` battles of `p1_spec` (challenger) against `p2_spec` and records each one.

    `backend`: "sim" or "server"; left out, it is "server" when a `server` is given, else "sim".
    `resume` (sim only): `n` counts the battles of this pairing already in `out_dir`.
    """

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
        backend: str | None = None,
        resume: bool = False,
        flush_seconds: float = 5.0,
        workers: int = 1,
    ):
        if n < 1:
            raise ValueError(f"-n must be at least 1, got {n}")
        if concurrency < 1:
            raise ValueError(f"--concurrency must be at least 1, got {concurrency}")
        backend = backend or ("server" if server is not None else "sim")
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}: pick one of {', '.join(BACKENDS)}")
        if workers < 1:
            raise ValueError(f"workers={workers} must be at least 1")
        if workers > 1 and backend != "sim":
            raise ValueError(f"workers={workers} needs the sim backend (got backend={backend!r})")
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
        self.backend = backend
        self.resume = resume
        self.flush_seconds = flush_seconds
        self.workers = workers
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

    async def _run_sim(self) -> MatchResult:
        from eval.runner import SimRunner

        result = MatchResult(self.p1_spec, self.p2_spec, self.battle_format)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.resume:
            add_recorded(result, self.out_dir, self.p1_spec, self.p2_spec, self.battle_format)
            self.seed += result.battles  # fresh seeds and team draws for the battles still to play
        todo = max(0, self.n - result.battles)
        writer = BattleLogWriter(self.out_dir, prefix=f"battles-{self._token}", battles_per_shard=10**9)
        specs = {"p1": self.p1_spec, "p2": self.p2_spec}
        last_flush = time.monotonic()

        def on_record(data: dict) -> None:
            nonlocal last_flush
            record = BattleRecord.from_server_json(data, specs=specs, team_set=self.team_set_name,
                                                   id_prefix=f"q{self._token}-")
            writer.add(record)
            count(result, record)
            # A killed match keeps what it finished: at most flush_seconds of battles are lost.
            if len(writer.pending) >= self.shard_size or time.monotonic() - last_flush >= self.flush_seconds:
                self._flush(writer, result)
                last_flush = time.monotonic()

        start = time.monotonic()
        runner = SimRunner(self.p1_spec, self.p2_spec, battle_format=self.battle_format, on_record=on_record,
                           teams=self._team_samplers(), concurrency=self.concurrency, seed=self.seed,
                           max_restarts=self.max_restarts, stall_timeout=self.stall_timeout)
        try:
            with tqdm(total=self.n, initial=result.battles, desc=f"{self.p1_spec} vs {self.p2_spec}",
                      disable=not self.progress) as bar:
                stats = await runner.play(todo, bar)
        finally:
            self._flush(writer, result)
            await runner.close()
        result.errors, result.restarts, result.played = stats.errors, stats.restarts, stats.battles
        result.seconds = time.monotonic() - start
        return result

    def run(self) -> MatchResult:
        """Play all battles (starting a server or a simulator host as needed) and return the result."""
        if self.backend == "sim" and self.workers > 1:
            return play_in_workers(self, self.workers, play_share)
        if self.backend == "sim":
            return asyncio.run(self._run_sim())
        own = self.server is None
        if own:
            self.server = ShowdownServer()
        try:
            self.server.start()
            return asyncio.run(self._run())
        finally:
            if own:
                self.server.stop()


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


def play_share(kwargs: dict) -> dict:
    """One worker's share of a match (eval/workers.py runs it in a fresh process): its counts."""
    result = Match(**kwargs).run()
    return {"errors": result.errors, "restarts": result.restarts}


def main(argv: list[str] | None = None) -> None:
    from agents.registry import known_agents

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--p1", required=True, help=f"agent spec ({', '.join(known_agents())}, ...)")
    parser.add_argument("--p2", required=True, help="agent spec")
    parser.add_argument("--format", default="gen1ou", help="Showdown format id")
    parser.add_argument("--team-set", default="competitive", help="team set name or folder (ignored for random battles)")
    parser.add_argument("-n", type=int, default=100,
                        help="battles to finish (sim backend: in total in --out, counting earlier runs)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/match", help="folder for the battle log shards")
    parser.add_argument("--backend", choices=BACKENDS, default="sim",
                        help="sim: Showdown's simulator over pipes (default); server: the real local server")
    parser.add_argument("--workers", type=int, default=1,
                        help="sim backend: processes, each with its own simulator host (0: one per core)")
    parser.add_argument("--flush-seconds", type=float, default=5.0,
                        help="sim backend: finished battles reach a shard at most this long after they end")
    parser.add_argument("--port", type=int, default=None, help="port for the server backend (default: a free one)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    server = ShowdownServer(args.port) if args.backend == "server" else None
    try:
        result = Match(
            args.p1, args.p2, battle_format=args.format, n=args.n, out_dir=args.out,
            team_set=args.team_set, concurrency=args.concurrency, seed=args.seed,
            server=server, progress=not args.quiet, backend=args.backend, resume=args.backend == "sim",
            workers=args.workers or os.cpu_count() or 1, flush_seconds=args.flush_seconds,
        ).run()
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    finally:
        if server is not None:
            server.stop()
    print(json.dumps(result.summary()), flush=True)


if __name__ == "__main__":
    main()
