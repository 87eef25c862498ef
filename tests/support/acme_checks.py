"""Helpers for ACME tests: settings for a Pebble rig, waiting on host states, verifying issued chains."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509 import verification
from tests.support.pebble import Pebble

from tako.config.server import AcmeSettings
from tako.server.tls.acme import AcmeManager


def acme_settings(rig: Pebble, **overrides: Any) -> AcmeSettings:
    """Settings for a manager talking to `rig`, with a short backoff so retries happen within a test."""
    base = AcmeSettings(
        directory_url=rig.directory_url,
        ca_bundle=str(rig.ca_bundle),
        email="ops@tako.test",
        retry_initial=0.2,
        retry_max=1.0,
    )
    return replace(base, **overrides)


async def wait_for_states(
    manager: AcmeManager, wanted: dict[str, str], timeout: float = 60.0
) -> dict[str, dict[str, Any]]:
    """Wait until every named host is in the wanted state; fail with the last status seen."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, dict[str, Any]] = manager.status()
        if all(status.get(h, {}).get("state") == s for h, s in wanted.items()):
            return status
        if time.monotonic() >= deadline:
            raise AssertionError(f"hosts not in states {wanted} after {timeout:.0f} s: {status}")
        await asyncio.sleep(0.05)


def verify_chain(fullchain_pem: bytes, root_pem: bytes, host: str) -> x509.Certificate:
    """Verify the served chain for `host` against `root_pem` as a TLS client would; return the leaf."""
    certs = x509.load_pem_x509_certificates(fullchain_pem)
    root = x509.load_pem_x509_certificate(root_pem)
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([root]))
        .time(datetime.datetime.now(datetime.UTC))
        .build_server_verifier(x509.DNSName(host))
    )
    verifier.verify(certs[0], certs[1:])
    return certs[0]


def assert_key_matches(cert_dir: Path) -> None:
    """The pair loads into an SSL context, which fails if the key does not belong to the certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_dir / "fullchain.pem", cert_dir / "privkey.pem")
