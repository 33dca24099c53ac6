"""Shared fixtures. Tests marked `server` start the real local Showdown server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def showdown():
    """One real Showdown server for the whole session (tests that need their own start one)."""
    from battles.server import ShowdownServer

    logging.getLogger("poke_env").setLevel(logging.CRITICAL)
    with ShowdownServer() as server:
        yield server
