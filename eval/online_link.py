"""One player's connection to a Showdown server: login, reconnects, and what the session sees.

poke-env's own client logs in blindly and gives up on a dropped socket; `Link` takes over
its connection: it logs in (a clear one-line error for a server that needs a login we do
not have, or a login the server rejects, never echoing the password), re-opens a dropped
connection and rejoins its battles, hands every battle line to the session's recorder
before poke-env sees it, notes the challenges waiting for us and the server's popups, and
holds back poke-env's `/leave` after a battle so the new ladder rating still reaches us.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from urllib.parse import urlparse

import websockets

from battles.protocol import to_id
from eval import credentials as creds_mod
from eval.online_record import OnlineBattle

REJECTED_CHOICE = ("[Invalid choice]", "[Unavailable choice]")


class LinkError(RuntimeError):
    """The server or the login server said no; the message is for the user, secret-free."""


def _host(url: str) -> str:
    return urlparse(url).netloc or url


class Link:
    """Owns one poke-env player's websocket for an online session (runs on poke-env's loop)."""

    def __init__(self, player, account: creds_mod.Credentials | None, *,
                 on_battle: Callable[[str, list[str]], OnlineBattle], rooms: Callable[[], list[str]],
                 login_timeout: float = 60.0, reconnects: int = 5):
        self.player, self.client, self.account = player, player.ps_client, account
        self.on_battle, self.rooms = on_battle, rooms
        self.login_timeout, self.reconnects = login_timeout, reconnects
        self.error: str | None = None
        self.popups: list[str] = []
        self.challengers: dict[str, str] = {}  # user id -> format of a challenge waiting for us
        self.notes: list[str] = []  # reconnects, for the progress display
        self.lost = False  # the connection is gone for good
        self._closing = False
        self._tries = 0
        self._rejoin = False
        self._ever_logged_in = False
        self._battle_message = self.client._on_battle_message
        self._send_message = self.client.send_message
        # poke-env calls these through the instance: route them through us.
        self.client.log_in = self._log_in
        self.client._on_battle_message = self._on_battle_message
        self.client.send_message = self._filtered_send

    @property
    def connected(self) -> bool:
        return self.client.logged_in.is_set()

    @property
    def reconnecting(self) -> bool:
        return self._ever_logged_in and not self._closing and not self.connected

    def fail(self, message: str) -> None:
        """Stop the session with one line for the user (the first failure wins)."""
        if not self.error:
            self.error = creds_mod.redact(message, self.account)

    # -- the socket ------------------------------------------------------------------------
    async def run(self, url: str) -> None:
        """Keep a connection open until close(), reconnecting after a drop."""
        while not self._closing:
            try:
                async with websockets.connect(url, max_queue=None, open_timeout=15, ping_interval=20,
                                              ping_timeout=20) as ws:
                    self.client.websocket = ws
                    async for message in ws:
                        task = asyncio.create_task(self._on_message(str(message)))
                        self.client._active_tasks.add(task)
                        task.add_done_callback(self.client._active_tasks.discard)
                reason = "closed by the server"
            except asyncio.CancelledError:
                raise
            except Exception as err:  # refused, reset, timed out: all mean the same here
                reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            self.client.logged_in.clear()
            if self._closing or self.error:
                return
            if not self._ever_logged_in:
                self.fail(f"cannot connect to {url}: {reason}")
                return
            self._tries += 1
            if self._tries > self.reconnects:
                self.lost = True
                self.fail(f"lost the connection to {url} ({reason}); gave up after {self.reconnects} tries")
                return
            self.notes.append(f"connection lost ({reason}); reconnecting, try {self._tries}")
            self._rejoin = True
            await asyncio.sleep(min(2.0 ** self._tries, 30.0))

    async def wait_logged_in(self) -> bool:
        """True once logged in; False (with `error` set) on a failure or after the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.login_timeout
        while not self.connected:
            if self.error:
                return False
            if loop.time() > deadline:
                self.fail(f"no login on {self.client.server_configuration.websocket_url} within "
                          f"{self.login_timeout:g}s")
                return False
            await asyncio.sleep(0.05)
        return True

    async def send(self, message: str, room: str = "") -> None:
        """Send unless the socket is down (a forfeit or a leave then waits for nobody)."""
        try:
            await self._send_message(message, room)
        except Exception:
            pass

    async def close(self) -> None:
        self._closing = True
        ws = getattr(self.client, "websocket", None)
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), timeout=5)
            except Exception:
                pass

    # -- login -------------------------------------------------------------------------------
    async def _log_in(self, parts: list[str]) -> None:
        assertion = ""
        if self.account and self.account.password:
            try:
                assertion = await asyncio.to_thread(self._assertion, parts[2] + "%7C" + parts[3])
            except LinkError as err:
                self.fail(str(err))
                return
        await self._send_message(f"/trn {self.client.username},0,{assertion}")

    def _assertion(self, challstr: str) -> str:
        """Ask the login server for a signed assertion (as poke-env and the web client do)."""
        import requests

        url = self.client.server_configuration.authentication_url
        name, host = self.account.username, _host(url)
        try:
            reply = requests.post(url, data={"act": "login", "name": name, "pass": self.account.password,
                                             "challstr": challstr}, timeout=15)
        except requests.RequestException as err:
            raise LinkError(f"cannot reach the login server {host} ({type(err).__name__})") from None
        text = reply.text
        try:
            data = json.loads(text[1:] if text.startswith("]") else text)
        except json.JSONDecodeError:
            raise LinkError(f"the login server {host} did not answer with a login reply "
                            f"(HTTP {reply.status_code})") from None
        assertion = data.get("assertion") if isinstance(data, dict) else None
        if not isinstance(assertion, str) or not assertion or assertion.startswith(";"):
            reason = assertion[2:] if isinstance(assertion, str) and assertion.startswith(";;") else ""
            reason = re.sub(r"<[^>]+>", "", reason).strip() or "wrong name or password"
            raise LinkError(creds_mod.redact(f"login as {name} rejected by {host}: {reason}", self.account))
        return assertion

    # -- what comes in -------------------------------------------------------------------------
    async def _on_message(self, message: str) -> None:
        first = message.split("\n", 1)[0].split("|")
        kind = first[1] if len(first) > 1 and not first[0].startswith(">") else ""
        if kind == "nametaken":
            self._name_refused(first)
            return
        if kind == "popup":
            text = " ".join("|".join(first[2:]).replace("||", " ").split())
            if not text.startswith("You tried to send"):  # a late choice to a battle that just ended
                self.popups.append(text)
            return
        if kind == "pm" and len(first) > 4:
            self._pm(first)
        logged_in = kind == "updateuser" and len(first) > 2 and to_id(first[2]) == to_id(self.client.username)
        try:
            await self.client._handle_message(message)
        except Exception as err:  # poke-env raises on what it does not expect; keep playing
            self.notes.append(f"ignored a message poke-env could not handle ({type(err).__name__})")
        if logged_in:
            self._ever_logged_in, self._tries = True, 0
            if self._rejoin:  # back after a drop: take up the battles we were playing
                self._rejoin = False
                self.notes.append("reconnected")
                for room in self.rooms():
                    await self.send(f"/join {room}")

    def _name_refused(self, parts: list[str]) -> None:
        name = parts[2] if len(parts) > 2 else self.client.username
        why = "|".join(parts[3:]).strip() or "name refused"
        server = _host(self.client.server_configuration.websocket_url)
        if self.account and self.account.password:
            self.fail(f"{server} refused the login as {name}: {why}")
        else:
            self.fail(f"{server} needs a login to play as {name} ({why}); set {creds_mod.USER_ENV} and "
                      f"{creds_mod.PASSWORD_ENV}, or pass --credentials FILE (readable by you only)")

    def _pm(self, parts: list[str]) -> None:
        sender, to, text = to_id(parts[2]), to_id(parts[3]), "|".join(parts[4:])
        if not text.startswith("/challenge"):
            return
        fmt = text[len("/challenge"):].split("|")[0].strip()
        me = to_id(self.client.username)
        if to == me and sender != me and fmt:
            self.challengers[sender] = to_id(fmt)
        elif not fmt:  # a challenge was accepted, refused or cancelled
            self.challengers.pop(sender, None)
            self.challengers.pop(to, None)

    async def _on_battle_message(self, split_messages: list[list[str]]) -> None:
        tag = split_messages[0][0][1:]
        if tag.startswith("battle-"):
            battle = self.on_battle(tag, ["|".join(m) for m in split_messages[1:]])
            for m in split_messages[1:]:
                if len(m) > 2 and m[1] == "error" and m[2].startswith(REJECTED_CHOICE):
                    battle.rejected()
        await self._battle_message(split_messages)

    async def _filtered_send(self, message: str, room: str = "", message_2: str | None = None) -> None:
        if not room and message.startswith("/leave battle-"):
            return  # the session leaves once the battle is recorded and its rating is in
        if room.startswith("battle-") and message.startswith(("/choose ", "/team ")):
            self.on_battle(room, []).sent(message)  # a choice: its battle exists
        await self._send_message(message, room, message_2)
