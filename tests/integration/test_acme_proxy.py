"""ACME through tako-server's own HTTP listener: Pebble validates against the real proxy, and the HTTPS
listener serves the issued certificate (after the self-signed fallback) without a restart."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import pytest
from tests.support.acme_checks import acme_settings, wait_for_states
from tests.support.pebble import Pebble
from tests.support.proxy_harness import running_proxy
from tests.support.proxy_routes import StaticGate

from tako.server.tls.acme import AcmeManager
from tako.server.tls.challenges import ChallengeStore

pytestmark = pytest.mark.integration

HOST = "hello.tako.test"


async def handshake(port: int, host: str, root_pem: bytes) -> None:
    """A TLS handshake with SNI `host`, verifying against `root_pem` only (raises on failure)."""
    ctx = ssl.create_default_context(cadata=root_pem.decode())
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host)
    writer.close()
    await writer.wait_closed()


async def test_certificate_issued_through_proxy_and_served_without_restart(tmp_path: Path) -> None:
    challenges = ChallengeStore()
    async with running_proxy(tmp_path, {HOST: StaticGate("hello", [])}) as proxy:
        proxy.services.acme_key_authorization = challenges.get  # type: ignore[method-assign]
        rig = Pebble(tmp_path / "pebble", http_port=proxy.http_port)
        manager = AcmeManager(acme_settings(rig), tmp_path, challenges)  # certs: <tmp>/certs, the proxy's
        try:
            await asyncio.to_thread(rig.start)
            rig.add_a(HOST, "127.0.0.1")
            root = rig.root_pem()
            # Before issuance the routed host gets the self-signed fallback, which Pebble's root rejects.
            with pytest.raises(ssl.SSLCertVerificationError):
                await handshake(proxy.https_port, HOST, root)

            manager.set_hosts([HOST])
            await manager.start()
            await wait_for_states(manager, {HOST: "valid"})

            deadline = time.monotonic() + 30  # the store re-reads a changed directory within a second
            while True:
                try:
                    await handshake(proxy.https_port, HOST, root)
                    break
                except ssl.SSLCertVerificationError:
                    assert time.monotonic() < deadline, "issued certificate never served"
                    await asyncio.sleep(0.1)
        finally:
            await manager.stop()
            await asyncio.to_thread(rig.stop)
