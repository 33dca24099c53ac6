"""A Showdown account for online play: from environment variables or an owner-only file.

    QABRA_SHOWDOWN_USER=me QABRA_SHOWDOWN_PASSWORD=... python -m eval.online ladder ...
    python -m eval.online ladder --credentials ~/.config/qabra/showdown.txt ...

The file holds `username: NAME` and `password: SECRET` lines (`=` works too; `#` starts a
comment) and must be readable by its owner only (chmod 600): a file that others can read
is refused. The password is never printed, logged or written anywhere; `Redactor` masks
it in any log record that would carry it by accident.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

USER_ENV = "QABRA_SHOWDOWN_USER"
PASSWORD_ENV = "QABRA_SHOWDOWN_PASSWORD"
FILE_ENV = "QABRA_SHOWDOWN_CREDENTIALS"
DEFAULT_FILE = Path("~/.config/qabra/showdown.txt")
MASK = "********"


class CredentialError(ValueError):
    """Credentials that cannot be used; the message never holds the secret."""


@dataclass(frozen=True)
class Credentials:
    """An account name and, where the server needs a login, its password (never shown)."""

    username: str
    password: str | None = field(default=None, repr=False)
    source: str = ""  # where they came from, for messages: "environment", a file path

    def __str__(self) -> str:
        return f"{self.username} (password {'set' if self.password else 'not set'}, from {self.source})"


def check_private(path: Path) -> None:
    """CredentialError unless `path` is a regular file owned by us that only we may read."""
    try:
        st = path.stat()
    except OSError as err:
        raise CredentialError(f"cannot read credentials file {path}: {err.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CredentialError(f"credentials file {path} is not a regular file")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise CredentialError(f"credentials file {path} belongs to another user; use a file of your own")
    if st.st_mode & 0o077:
        raise CredentialError(
            f"credentials file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run `chmod 600 {path}` and try again"
        )


def read_file(path: str | Path) -> Credentials:
    """Credentials from an owner-only file of `username:` / `password:` lines."""
    path = Path(path).expanduser()
    check_private(path)
    values: dict[str, str] = {}
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        sep = min((i for i in (line.find(":"), line.find("=")) if i > 0), default=-1)
        key = line[:sep].strip().lower() if sep > 0 else ""
        if key not in ("username", "user", "password"):
            # Name the line, not its text: a malformed line may be the password itself.
            raise CredentialError(
                f"credentials file {path}, line {n}: expected `username: NAME` or `password: SECRET`"
            )
        values["username" if key == "user" else key] = line[sep + 1:].strip()
    if not values.get("username"):
        raise CredentialError(f"credentials file {path} has no `username:` line")
    return Credentials(values["username"], values.get("password") or None, str(path))


def load(path: str | Path | None = None, env: dict[str, str] | None = None) -> Credentials | None:
    """The account to play as: a given file, else the environment, else the default file.

    None when nothing is configured (a server without logins then gets a generated name).
    """
    env = os.environ if env is None else env
    if path is None and env.get(FILE_ENV):
        path = env[FILE_ENV]
    if path is not None:
        return read_file(path)
    user, password = env.get(USER_ENV, "").strip(), env.get(PASSWORD_ENV) or None
    if user:
        return Credentials(user, password, "environment")
    if password:
        raise CredentialError(f"{PASSWORD_ENV} is set but {USER_ENV} is not; set both")
    default = DEFAULT_FILE.expanduser()
    if default.exists():
        return read_file(default)
    return None


class Redactor(logging.Filter):
    """Masks a secret in every log record that passes through the handler it is added to."""

    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret and self.secret in record.getMessage():
            record.msg, record.args = record.getMessage().replace(self.secret, MASK), None
        return True


def redact(text: str, creds: Credentials | None) -> str:
    """`text` with the password masked (for messages that quote a server's reply)."""
    if creds and creds.password:
        return text.replace(creds.password, MASK)
    return text
