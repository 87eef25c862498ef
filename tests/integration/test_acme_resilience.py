"""ACME failures: an unreachable directory and a CA that forgot our account are retried until they work."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.support.acme_checks import acme_settings, verify_chain, wait_for_states
from tests.support.pebble import Pebble

from tako.config.server import AcmeSettings
from tako.server.tls.acme import AcmeManager

pytestmark = pytest.mark.integration
# Fixtures: challenges, responder, pebble, pebble_unstarted, manager_factory.
pytest_plugins = ["tests.support.acme_fixtures"]

Factory = Callable[[AcmeSettings], AcmeManager]


async def test_unreachable_directory_fails_visibly_then_succeeds_once_back(
    tmp_path: Path, pebble_unstarted: Pebble, manager_factory: Factory
) -> None:
    rig = pebble_unstarted
    await asyncio.to_thread(rig.start_dns)
    rig.add_a("hello.tako.test", "127.0.0.1")
    manager = manager_factory(acme_settings(rig))
    manager.set_hosts(["hello.tako.test"])
    await manager.start()  # never blocks on the CA

    status = await wait_for_states(manager, {"hello.tako.test": "failed"})
    entry = status["hello.tako.test"]
    assert "cannot reach the ACME server" in entry["last_error"]
    assert rig.directory_url in entry["last_error"]
    assert entry["next_attempt"] is not None
    # Attempts are repeated (with backoff) while the CA is down, each one failing the same way.
    deadline = time.monotonic() + 30
    while manager.status()["hello.tako.test"]["failures"] < 3:
        assert time.monotonic() < deadline, manager.status()
        await asyncio.sleep(0.05)
    assert manager.status()["hello.tako.test"]["state"] == "failed"

    await asyncio.to_thread(rig.start_pebble)
    status = await wait_for_states(manager, {"hello.tako.test": "valid"})

    assert status["hello.tako.test"]["last_error"] is None
    fullchain = (tmp_path / "data" / "certs" / "hello.tako.test" / "fullchain.pem").read_bytes()
    verify_chain(fullchain, rig.root_pem(), "hello.tako.test")


async def test_ca_restart_with_forgotten_account_recovers(
    tmp_path: Path, pebble: Pebble, manager_factory: Factory
) -> None:
    for host in ("first.tako.test", "second.tako.test"):
        pebble.add_a(host, "127.0.0.1")
    manager = manager_factory(acme_settings(pebble))
    manager.set_hosts(["first.tako.test"])
    await manager.start()
    await wait_for_states(manager, {"first.tako.test": "valid"})

    # Pebble keeps accounts in memory: after a restart our registration no longer exists there.
    await asyncio.to_thread(pebble.stop_pebble)
    await asyncio.to_thread(pebble.start_pebble)
    manager.set_hosts(["first.tako.test", "second.tako.test"])

    await wait_for_states(manager, {"first.tako.test": "valid", "second.tako.test": "valid"})
    fullchain = (tmp_path / "data" / "certs" / "second.tako.test" / "fullchain.pem").read_bytes()
    verify_chain(fullchain, pebble.root_pem(), "second.tako.test")


async def test_rate_limit_retry_after_is_respected_beyond_backoff_cap(
    tmp_path: Path, manager_factory: Factory
) -> None:
    # Pebble never rate-limits, so this one answer comes from a stand-in CA (a fake, named so): every
    # request gets the problem document Let's Encrypt sends when a limit is hit.
    body = b'{"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many certificates"}'
    hits = 0

    async def fake_ca(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hits
        hits += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/problem+json\r\n"
            b"Retry-After: 3600\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(fake_ca, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = AcmeSettings(
            directory_url=f"http://127.0.0.1:{port}/dir", retry_initial=0.2, retry_max=1.0
        )
        manager = manager_factory(settings)
        manager.set_hosts(["limited.tako.test"])
        await manager.start()

        status = await wait_for_states(manager, {"limited.tako.test": "failed"})
        entry = status["limited.tako.test"]
        assert "too many certificates" in entry["last_error"]
        next_attempt = datetime.datetime.fromisoformat(entry["next_attempt"])
        assert next_attempt - datetime.datetime.now(datetime.UTC) > datetime.timedelta(minutes=50)
        manager.retry_now()  # an operator's "retry" does not override the CA's Retry-After either
        assert manager.status()["limited.tako.test"]["next_attempt"] == entry["next_attempt"]
        assert hits == 1
    finally:
        server.close()
        await server.wait_closed()
