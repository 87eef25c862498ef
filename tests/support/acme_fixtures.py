"""Pytest fixtures for ACME tests: a challenge responder, a Pebble on free ports, a manager factory.

Load them with `pytest_plugins = ["tests.support.acme_fixtures"]` in the test module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from tests.support.acme_responder import ChallengeResponder
from tests.support.pebble import Pebble

from tako.config.server import AcmeSettings
from tako.server.tls.acme import AcmeManager
from tako.server.tls.challenges import ChallengeStore


@pytest.fixture
def challenges() -> ChallengeStore:
    return ChallengeStore()


@pytest.fixture
async def responder(challenges: ChallengeStore) -> AsyncIterator[ChallengeResponder]:
    server = ChallengeResponder(challenges.get)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def pebble_unstarted(tmp_path: Path, responder: ChallengeResponder) -> Iterator[Pebble]:
    """Configured (ports, API certificate) but not running: start it when the test wants."""
    rig = Pebble(tmp_path / "pebble", http_port=responder.port)
    try:
        yield rig
    finally:
        rig.stop()


@pytest.fixture
def pebble(pebble_unstarted: Pebble) -> Pebble:
    pebble_unstarted.start()
    return pebble_unstarted


@pytest.fixture
async def manager_factory(
    tmp_path: Path, challenges: ChallengeStore
) -> AsyncIterator[Callable[[AcmeSettings], AcmeManager]]:
    """Build managers on `<tmp>/data`; every one built is stopped at teardown."""
    made: list[AcmeManager] = []

    def make(settings: AcmeSettings) -> AcmeManager:
        manager = AcmeManager(settings, tmp_path / "data", challenges)
        made.append(manager)
        return manager

    try:
        yield make
    finally:
        for manager in made:
            await manager.stop()
