"""Put any agent on any Showdown server: ladder, challenge a user, or accept challenges.

    python -m eval.online ladder --agent bundled --format gen1ou -n 20          # public ladder
    python -m eval.online challenge --agent tactician --opponent SOMEONE -n 3
    python -m eval.online accept --agent search:ms=1000 --minutes 60 [--opponent SOMEONE]
    python -m eval.online ladder --server ws://127.0.0.1:8000/showdown/websocket ...

The account comes from QABRA_SHOWDOWN_USER / QABRA_SHOWDOWN_PASSWORD or an owner-only
file (--credentials, see eval/credentials.py); a server without logins (the local one)
needs no password, and without any account a name is generated. Every finished battle is
recorded like a local one in the run folder (eval/online_runs.py), which builds into
trajectories with `python -m battles.build --logs RUN/battles --out DIR`.

Ctrl-C or SIGTERM: no new battle starts; battles in progress finish (--on-stop finish) or
are forfeited (--on-stop forfeit); a second signal forfeits what is left. A dropped
connection is re-opened, logged in again and its battles rejoined. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import inspect
import json
import logging
import re
import secrets
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from poke_env import AccountConfiguration, ServerConfiguration
from poke_env.concurrency import POKE_LOOP
from poke_env.ps_client.server_configuration import ShowdownServerConfiguration
from tqdm import tqdm

from battles.protocol import to_id
from eval import credentials as creds_mod
from eval.match import folder_name, needs_teams
from eval.online_link import Link
from eval.online_record import OnlineBattle
from eval.online_runs import RunFolder

PUBLIC_SERVER = ShowdownServerConfiguration.websocket_url
PUBLIC_LOGIN = ShowdownServerConfiguration.authentication_url
MODES = ("ladder", "challenge", "accept")
LOCAL_CONCURRENCY = 4  # challenge / accept on a server of our own; a public server gets 1


def is_loopback(url: str) -> bool:
    return (urlparse(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


@dataclass
class OnlineConfig:
    """One online session's settings (the command line's, resolved)."""

    mode: str
    agent: str = "bundled"
    server: str = PUBLIC_SERVER
    login_server: str = PUBLIC_LOGIN
    battle_format: str = "gen1ou"
    team_set: str | None = "competitive"
    team_file: str | None = None
    n: int | None = None  # battles to start; None: until --minutes or a signal (accept)
    opponent: str | None = None
    minutes: float | None = None
    concurrency: int | None = None
    on_stop: str = "finish"
    timer: bool = True
    seed: int = 0
    out: str | None = None
    challenge_timeout: float = 300.0
    login_timeout: float = 60.0
    reconnects: int = 5
    shard_size: int = 10

    def resolve(self) -> OnlineConfig:
        """Fill defaults that depend on the mode and the server; ValueError on a bad setting."""
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.on_stop not in ("finish", "forfeit"):
            raise ValueError(f"--on-stop {self.on_stop!r}: expected finish or forfeit")
        if not re.match(r"^wss?://", self.server):
            raise ValueError(f"--server {self.server!r}: give a websocket URL such as {PUBLIC_SERVER}")
        if self.mode == "challenge" and not self.opponent:
            raise ValueError("challenge needs --opponent NAME (the user to challenge)")
        if self.n is None and self.mode != "accept":
            self.n = 10 if self.mode == "ladder" else 1
        if self.n is not None and self.n < 1:
            raise ValueError(f"-n must be at least 1, got {self.n}")
        if self.concurrency is None:
            self.concurrency = LOCAL_CONCURRENCY if is_loopback(self.server) and self.mode != "ladder" else 1
        if self.concurrency < 1:
            raise ValueError(f"--concurrency must be at least 1, got {self.concurrency}")
        if not needs_teams(self.battle_format):
            self.team_set = self.team_file = None
        elif not (self.team_set or self.team_file):
            raise ValueError(f"format {self.battle_format} needs teams: pass --team-set NAME or --team FILE")
        if self.out is None:
            self.out = str(Path("runs") / "online" / f"{self.mode}-{self.battle_format}-{folder_name(self.agent)}")
        return self


def split_export(text: str) -> list[str]:
    """Teams of a Showdown export: one team, or a teambuilder backup of `=== [fmt] name ===` blocks."""
    blocks = re.split(r"^===.*===\s*$", text, flags=re.MULTILINE)
    return [b.strip() for b in blocks if b.strip()]


def load_teams(cfg: OnlineConfig):
    """A poke-env Teambuilder over the validated teams (a team set or an export file), or None."""
    from battles.teams import Team, TeamError, TeamSampler, load_team_set, validate_teams

    if cfg.team_file:
        path = Path(cfg.team_file).expanduser()
        if not path.is_file():
            raise TeamError(f"--team {path}: no such file (a Showdown export, as the teambuilder writes it)")
        texts = split_export(path.read_text(encoding="utf-8"))
        if not texts:
            raise TeamError(f"--team {path} holds no team")
        results = validate_teams([(cfg.battle_format, t) for t in texts])
        bad = [(i, r) for i, r in enumerate(results, 1) if not r.ok]
        if bad:
            lines = [f"{len(bad)} of {len(texts)} teams in {path} fail Showdown's {cfg.battle_format} validator:"]
            lines += [f"  team {i}: {msg}" for i, r in bad for msg in r.errors]
            raise TeamError("\n".join(lines))
        teams = [Team(f"{path.stem}-{i}", cfg.battle_format, path, t, r.packed)
                 for i, (t, r) in enumerate(zip(texts, results), 1)]
        return TeamSampler(teams, cfg.seed)
    if cfg.team_set:
        return load_team_set(cfg.team_set, cfg.battle_format).sampler(cfg.seed)
    return None


class OnlineSession:
    """One agent on one server for one mode; its coroutine runs on poke-env's event loop."""

    def __init__(self, cfg: OnlineConfig, account: creds_mod.Credentials | None):
        from agents.registry import make_player

        self.cfg, self.account = cfg, account
        self.token = secrets.token_hex(4)
        teams = load_teams(cfg)
        extra = {}
        if account:
            extra["account_configuration"] = AccountConfiguration(account.username, account.password)
        self.player = make_player(
            cfg.agent, battle_format=cfg.battle_format,
            server_configuration=ServerConfiguration(cfg.server, cfg.login_server), team=teams,
            max_concurrent_battles=cfg.concurrency, start_listening=False,
            start_timer_on_battle_start=cfg.timer, **extra,
        )
        if account and account.password:  # a log line that would carry it by accident shows a mask
            redactor = creds_mod.Redactor(account.password)
            for handler in logging.getLogger().handlers + self.player.ps_client.logger.handlers:
                handler.addFilter(redactor)
        self.run = RunFolder(cfg.out, token=self.token, shard_size=cfg.shard_size)
        self.link = Link(self.player, account, on_battle=self._on_battle, rooms=self._playing,
                         login_timeout=cfg.login_timeout, reconnects=cfg.reconnects)
        self.battles: dict[str, OnlineBattle] = {}
        self.started = 0
        self.finished: list[dict] = []  # results rows, in order
        self.events: list[str] = []  # lines for the progress display (read by the main thread)
        self.link.notes = self.events
        self._guard_agent()
        self.stopping = False
        self.stop_reason = ""
        self.forfeit = cfg.on_stop == "forfeit"

    def _guard_agent(self) -> None:
        """An agent that raises plays a random legal move instead of stalling into the timer."""
        choose = self.player.choose_move

        async def choose_move(battle):
            try:
                choice = choose(battle)
                return await choice if inspect.isawaitable(choice) else choice
            except Exception as err:
                self.events.append(f"{battle.battle_tag}: the agent raised {type(err).__name__}: {err}; "
                                   "playing a random legal move")
                return self.player.choose_random_move(battle)

        self.player.choose_move = choose_move

    # -- what the main thread calls --------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """From any thread: start no new battle; a second call forfeits battles in progress."""
        escalate = self.stopping
        self.stopping, self.stop_reason = True, self.stop_reason or reason
        if escalate:
            self.forfeit = True
        POKE_LOOP.call_soon_threadsafe(lambda: asyncio.ensure_future(self._forfeit_all()) if self.forfeit else None)

    @property
    def in_progress(self) -> int:
        return len(self._playing())

    def _playing(self) -> list[str]:
        return [tag for tag, b in self.battles.items() if not (b.finished or b.gone)]

    def status(self) -> str:
        rows = self.finished
        wins = sum(r["result"] == "win" for r in rows)
        losses = sum(r["result"] == "loss" for r in rows)
        ties = len(rows) - wins - losses
        rating = next((r["rating_after"] for r in reversed(rows) if r["rating_after"] is not None), None)
        text = f"W {wins} L {losses}" + (f" T {ties}" if ties else "") + f" | rating {rating if rating else '-'}"
        text += f" | playing {self.in_progress}"
        if self.link.reconnecting:
            text += " | reconnecting"
        return text + (" | stopping" if self.stopping else "")

    # -- battles ---------------------------------------------------------------------------
    def _on_battle(self, tag: str, lines: list[str]) -> OnlineBattle:
        battle = self.battles.get(tag)
        if battle is None:
            battle = self.battles[tag] = OnlineBattle(tag, self.player.username)
            self.started += 1
            if self.forfeit and self.stopping:
                asyncio.ensure_future(self.link.send("/forfeit", tag))
        was_finished, was_gone = battle.finished, battle.gone
        battle.feed(lines)
        if battle.gone and not was_gone:
            # Lost with a server restart: free poke-env's slot, which only a |win| would free.
            self.events.append(f"{tag} is gone from the server (restarted?); not recorded")
            self.player._battle_count_queue.get_nowait()
            self.player._battle_count_queue.task_done()
        if battle.finished and not was_finished:
            # A rated battle's new rating comes a moment after |win|: wait for it a little.
            asyncio.ensure_future(self._finalize(tag, wait=battle.rated))
        return battle

    async def _finalize(self, tag: str, wait: bool) -> None:
        battle = self.battles[tag]
        deadline = time.monotonic() + (15.0 if wait else 0.0)
        while battle.rating_after is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        row = self.run.add(battle, spec=self.cfg.agent, battle_format=self.cfg.battle_format,
                           team_set=self._team_set_name(), id_prefix=f"o{self.token}-")
        self.finished.append(row)
        rating = ""
        if row["rating_after"] is not None:
            delta = row["rating_after"] - (row["rating_before"] or row["rating_after"])
            rating = f", rating {row['rating_after']} ({delta:+d})"
        self.events.append(f"[{len(self.finished)}] {row['result']} vs {row['opponent']} in {row['turns']} turns"
                           f"{' (' + battle.end_type + ')' if battle.end_type != 'normal' else ''}{rating}")
        battle.finalized = True
        await self.link.send(f"/leave {tag}")

    def _team_set_name(self) -> str | None:
        if self.cfg.team_file:
            return f"file:{Path(self.cfg.team_file).name}"
        return self.cfg.team_set

    async def _forfeit_all(self) -> None:
        for tag in self._playing():
            await self.link.send("/forfeit", tag)

    # -- waiting -----------------------------------------------------------------------------
    def _past_deadline(self) -> bool:
        return self.cfg.minutes is not None and time.monotonic() > self._t0 + 60 * self.cfg.minutes

    def _halted(self) -> bool:
        if self.link.error:
            return True
        if self._past_deadline() and not self.stopping:
            self.stopping, self.stop_reason = True, f"--minutes {self.cfg.minutes:g} passed"
        return self.stopping

    async def _slot(self) -> bool:
        """Wait until another battle may start; False once the session stops starting them."""
        while self.in_progress >= self.cfg.concurrency or not self.link.connected:
            if self._halted():
                return False
            await asyncio.sleep(0.1)
        return not self._halted()

    async def _started(self, before: int, timeout: float | None) -> str:
        """'started', 'popup' (the server said no), 'stop' or 'timeout'."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.started <= before:
            if self.link.popups:
                return "popup"
            if self._halted():
                return "stop"
            if deadline is not None and time.monotonic() > deadline:
                return "timeout"
            await asyncio.sleep(0.1)
        return "started"

    # -- modes -------------------------------------------------------------------------------
    async def _ladder(self) -> None:
        for _ in range(self.cfg.n):
            if not await self._slot():
                return
            before = self.started
            self.link.popups.clear()
            await self.player.ps_client.search_ladder_game(self.cfg.battle_format, self.player.next_team)
            outcome = await self._started(before, None)
            if outcome == "popup":
                self.link.fail(f"the server would not start a {self.cfg.battle_format} ladder search: "
                               f"{self.link.popups[-1]}")
            if outcome != "started":
                await self.link.send(f"/cancelsearch {self.cfg.battle_format}")
                return

    async def _challenge(self) -> None:
        opponent = to_id(self.cfg.opponent)
        for _ in range(self.cfg.n):
            if not await self._slot():
                return
            until = time.monotonic() + self.cfg.challenge_timeout
            while True:
                before = self.started
                self.link.popups.clear()
                await self.player.ps_client.challenge(opponent, self.cfg.battle_format, self.player.next_team)
                outcome = await self._started(before, max(0.0, until - time.monotonic()))
                if outcome == "started":
                    break
                if outcome == "popup" and time.monotonic() < until:  # not online yet, or busy
                    self.events.append(f"challenge: {self.link.popups[-1]} (trying again)")
                    await asyncio.sleep(3.0)
                    continue
                await self.link.send(f"/cancelchallenge {opponent}")
                if outcome == "timeout":
                    self.link.fail(f"{self.cfg.opponent} did not accept a challenge within "
                                   f"{self.cfg.challenge_timeout:g}s")
                return

    async def _accept(self) -> None:
        wanted = to_id(self.cfg.opponent) if self.cfg.opponent else None
        accepted = 0
        while self.cfg.n is None or accepted < self.cfg.n:
            if not await self._slot():
                return
            user = next((u for u, fmt in self.link.challengers.items()
                         if fmt == self.cfg.battle_format and (wanted is None or u == wanted)), None)
            if user is None:
                await asyncio.sleep(0.2)
                continue
            before = self.started
            del self.link.challengers[user]
            self.link.popups.clear()
            await self.player.ps_client.accept_challenge(user, self.player.next_team)
            if await self._started(before, 30.0) == "started":
                accepted += 1

    async def main(self) -> dict:
        """Log in, play the mode, let battles in progress end, close; returns the summary."""
        self._t0 = time.monotonic()
        connection = asyncio.ensure_future(self.link.run(self.cfg.server))
        try:
            if await self.link.wait_logged_in():
                self.events.append(f"logged in as {self.player.username} on {self.cfg.server}")
                await {"ladder": self._ladder, "challenge": self._challenge, "accept": self._accept}[self.cfg.mode]()
            while True:
                # Battles in progress end (unless the server can no longer be reached for them),
                # and every finished one is recorded.
                reachable = not self.link.lost and not (self.link.error and not self.link.connected)
                if not ((self.in_progress and reachable) or any(b.finished and not b.finalized
                                                                for b in self.battles.values())):
                    break
                if self.forfeit and self.stopping:
                    await self._forfeit_all()
                    await asyncio.sleep(1.0)
                await asyncio.sleep(0.1)
        except BaseException:
            self.run.writer.close()  # whatever else went wrong, finished battles are kept
            raise
        finally:
            await self.link.close()
            connection.cancel()
        unfinished = self.in_progress
        if unfinished:
            self.events.append(f"{unfinished} battle(s) never finished (connection lost); not recorded")
        return self.run.close({
            "mode": self.cfg.mode, "agent": self.cfg.agent, "server": self.cfg.server,
            "format": self.cfg.battle_format, "username": self.player.username,
            "session_battles": len(self.finished), "stopped": self.stop_reason or None,
            "error": self.link.error, "out": str(self.cfg.out),
        })


def play(cfg: OnlineConfig, account: creds_mod.Credentials | None, *, progress: bool = True) -> dict:
    """Run one session in the foreground, with signals and the progress line; the summary."""
    session = OnlineSession(cfg, account)
    config = asdict(cfg)
    config["account"] = {"username": session.player.username,
                         "from": account.source if account else "generated", "password": "not stored"}
    session.run.save_config(config)
    future = asyncio.run_coroutine_threadsafe(session.main(), POKE_LOOP)

    def on_signal(signum, frame):
        session.request_stop(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=cfg.n, desc=f"{cfg.mode} {cfg.agent}", unit="battle", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    shown, status = 0, ""
    try:
        while True:
            done, _ = concurrent.futures.wait([future], timeout=0.3)
            now = session.status()
            changed = (now, len(session.finished)) != (status, bar.n)
            if changed:  # set before writing, so that write() redraws the bar as it is now
                status, bar.n = now, len(session.finished)
                bar.set_postfix_str(status, refresh=False)
            while shown < len(session.events):
                if progress:
                    bar.write(f"{session.events[shown]} | {now}", file=sys.stderr)
                shown += 1
            if changed and progress:
                bar.refresh()
            if done:
                break
        return future.result()
    finally:
        bar.leave = not session.link.error  # an error's one line stands alone
        bar.close()
        for s, handler in old.items():
            signal.signal(s, handler)


def parse_args(argv: list[str] | None = None) -> tuple[OnlineConfig, argparse.Namespace]:
    from agents.registry import known_agents

    p = argparse.ArgumentParser(prog="python -m eval.online", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=MODES)
    p.add_argument("--agent", default="bundled", help=f"agent spec ({', '.join(known_agents())}, ...); default bundled")
    p.add_argument("--server", default=PUBLIC_SERVER, help=f"websocket URL (default the public server, {PUBLIC_SERVER})")
    p.add_argument("--login-server", default=PUBLIC_LOGIN, help="the login server's action URL")
    p.add_argument("--format", default="gen1ou", help="Showdown format id")
    p.add_argument("--team-set", default="competitive", help="team set name or folder (random formats need none)")
    p.add_argument("--team", default=None, help="a Showdown export file: one team or a teambuilder backup")
    p.add_argument("-n", type=int, default=None, help="battles to play (ladder 10, challenge 1, accept: no limit)")
    p.add_argument("--opponent", default=None, help="challenge: the user to challenge; accept: accept only them")
    p.add_argument("--minutes", type=float, default=None, help="start no battle after this many minutes")
    p.add_argument("--concurrency", type=int, default=None,
                   help=f"battles at once (default 1; {LOCAL_CONCURRENCY} for challenge/accept on a local server)")
    p.add_argument("--on-stop", default="finish", choices=("finish", "forfeit"),
                   help="on Ctrl-C / SIGTERM: let battles in progress finish, or forfeit them")
    p.add_argument("--no-timer", action="store_true", help="do not turn the battle timer on")
    p.add_argument("--credentials", default=None, help=f"owner-only file with username:/password: lines "
                                                       f"(else ${creds_mod.USER_ENV} / ${creds_mod.PASSWORD_ENV})")
    p.add_argument("--user", default=None, help="a name to play as on a server without logins (no password)")
    p.add_argument("--seed", type=int, default=0, help="team sampling seed")
    p.add_argument("--out", default=None, help="run folder (default runs/online/MODE-FORMAT-AGENT)")
    p.add_argument("--challenge-timeout", type=float, default=300.0, help="seconds to wait for a challenge to be accepted")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    args = p.parse_args(argv)
    cfg = OnlineConfig(
        mode=args.mode, agent=args.agent, server=args.server, login_server=args.login_server,
        battle_format=args.format, team_set=None if args.team else args.team_set, team_file=args.team,
        n=args.n, opponent=args.opponent, minutes=args.minutes, concurrency=args.concurrency,
        on_stop=args.on_stop, timer=not args.no_timer, seed=args.seed, out=args.out,
        challenge_timeout=args.challenge_timeout,
    )
    return cfg, args


def main(argv: list[str] | None = None) -> None:
    cfg, args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("poke_env").setLevel(logging.CRITICAL)
    try:
        cfg.resolve()
        account = creds_mod.load(args.credentials)
        if args.user:
            if account and account.password:
                raise creds_mod.CredentialError("--user names an account without a password; "
                                                "leave it out to use the configured credentials")
            account = creds_mod.Credentials(args.user, None, "--user")
        summary = play(cfg, account, progress=not args.quiet)
    except ValueError as err:  # CredentialError and TeamError are ValueErrors too
        raise SystemExit(f"error: {err}") from None
    if summary.get("error") and not summary["session_battles"]:
        raise SystemExit(f"error: {summary['error']}")  # one line: nothing was played
    print(json.dumps(summary), flush=True)
    if summary.get("error"):
        raise SystemExit(f"error: {summary['error']}")


if __name__ == "__main__":
    main()
