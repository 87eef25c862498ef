"""Renewal of managed certificates from a real Pebble: inside the window renewed, outside untouched."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from tests.support.acme_checks import acme_settings, assert_key_matches, verify_chain, wait_for_states
from tests.support.pebble import Pebble

from tako.config.server import AcmeSettings
from tako.server.tls import renewal
from tako.server.tls.acme import AcmeManager
from tako.server.tls.challenges import ChallengeStore

pytestmark = pytest.mark.integration
# Fixtures: challenges, responder, pebble, pebble_unstarted, manager_factory.
pytest_plugins = ["tests.support.acme_fixtures"]


def place_managed(certs: Path, host: str, days_left: float) -> bytes:
    """A certificate Tako's issuer wrote earlier (marker included) that expires in `days_left` days."""
    now = datetime.datetime.now(datetime.UTC)
    leaf = trustme.CA().issue_cert(
        host, not_before=now - datetime.timedelta(days=80), not_after=now + datetime.timedelta(days=days_left)
    )
    fullchain = b"".join(p.bytes() for p in leaf.cert_chain_pems)
    renewal.write_managed(
        certs, host, fullchain, leaf.private_key_pem.bytes(), directory_url="https://old.invalid/dir"
    )
    return fullchain


async def test_expiring_certificate_renewed_at_start_and_distant_one_untouched(
    tmp_path: Path, pebble: Pebble, manager_factory: Callable[[AcmeSettings], AcmeManager]
) -> None:
    certs = tmp_path / "data" / "certs"
    old_soon = place_managed(certs, "soon.tako.test", days_left=10)
    old_later = place_managed(certs, "later.tako.test", days_left=60)
    later_stat = (certs / "later.tako.test" / "fullchain.pem").stat()
    pebble.add_a("soon.tako.test", "127.0.0.1")
    pebble.add_a("later.tako.test", "127.0.0.1")
    manager = manager_factory(acme_settings(pebble))
    manager.set_hosts(["soon.tako.test", "later.tako.test"])
    await manager.start()

    status = await wait_for_states(manager, {"soon.tako.test": "valid", "later.tako.test": "valid"})
    # "valid" for soon.tako.test must mean renewed: wait for the new file rather than racing the check.
    soon = certs / "soon.tako.test"
    assert soon.joinpath("fullchain.pem").read_bytes() != old_soon
    verify_chain(soon.joinpath("fullchain.pem").read_bytes(), pebble.root_pem(), "soon.tako.test")
    assert_key_matches(soon)
    renewed_left = datetime.datetime.fromisoformat(
        status["soon.tako.test"]["not_after"]
    ) - datetime.datetime.now(datetime.UTC)
    assert renewed_left > datetime.timedelta(days=30)

    later = certs / "later.tako.test" / "fullchain.pem"
    assert later.read_bytes() == old_later
    assert later.stat().st_mtime_ns == later_stat.st_mtime_ns
    assert renewal.read_dir(certs / "later.tako.test").managed


async def test_periodic_check_renews_when_certificate_enters_window(
    tmp_path: Path, pebble: Pebble, challenges: ChallengeStore
) -> None:
    certs = tmp_path / "data" / "certs"
    original = place_managed(certs, "aging.tako.test", days_left=45)
    pebble.add_a("aging.tako.test", "127.0.0.1")
    offset = 0.0

    def clock() -> float:
        return time.time() + offset

    manager = AcmeManager(
        acme_settings(pebble, check_interval=0.2), tmp_path / "data", challenges, clock=clock
    )
    manager.set_hosts(["aging.tako.test"])
    await manager.start()
    try:
        await wait_for_states(manager, {"aging.tako.test": "valid"})
        assert (certs / "aging.tako.test" / "fullchain.pem").read_bytes() == original

        offset = 20 * 86400.0  # 25 days left: inside the 30-day window at the next periodic check

        deadline = time.monotonic() + 60
        while (certs / "aging.tako.test" / "fullchain.pem").read_bytes() == original:
            assert time.monotonic() < deadline, manager.status()
            await asyncio.sleep(0.05)
        await wait_for_states(manager, {"aging.tako.test": "valid"})
        verify_chain(
            (certs / "aging.tako.test" / "fullchain.pem").read_bytes(), pebble.root_pem(), "aging.tako.test"
        )
    finally:
        await manager.stop()
