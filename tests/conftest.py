"""Shared fixtures. Tests marked `server` start the real local Showdown server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def log_header(gen: int, *, team_size: int = 6, tier: str = "", names: tuple[str, str] = ("Alice", "Bob")) -> str:
    """The opening lines of a singles battle log: players, team sizes, gen, tier, the HP percentage rule."""
    lines = [f"|player|p1|{names[0]}|1|", f"|player|p2|{names[1]}|2|",
             f"|teamsize|p1|{team_size}", f"|teamsize|p2|{team_size}", f"|gen|{gen}"]
    lines += [f"|tier|{tier}"] if tier else []
    return "\n".join([*lines, "|rule|HP Percentage Mod: HP is shown in percentages"])


@pytest.fixture(scope="session")
def showdown():
    """One real Showdown server for the whole session (tests that need their own start one)."""
    from battles.server import ShowdownServer

    logging.getLogger("poke_env").setLevel(logging.CRITICAL)
    with ShowdownServer() as server:
        yield server
