"""ACME issuance against a real Pebble with real HTTP-01 validation over loopback."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from tests.support.acme_checks import acme_settings, assert_key_matches, verify_chain, wait_for_states
from tests.support.acme_responder import ChallengeResponder
from tests.support.pebble import Pebble

from tako.config.server import AcmeSettings
from tako.server.tls.acme import AcmeManager
from tako.server.tls.challenges import ChallengeStore

pytestmark = pytest.mark.integration
# Fixtures: challenges, responder, pebble, pebble_unstarted, manager_factory.
pytest_plugins = ["tests.support.acme_fixtures"]

Factory = Callable[[AcmeSettings], AcmeManager]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_issues_certificate_verified_against_pebble_root(
    tmp_path: Path,
    pebble: Pebble,
    responder: ChallengeResponder,
    challenges: ChallengeStore,
    manager_factory: Factory,
) -> None:
    pebble.add_a("hello.tako.test", "127.0.0.1")
    manager = manager_factory(acme_settings(pebble))
    manager.set_hosts(["hello.tako.test"])
    await manager.start()

    status = await wait_for_states(manager, {"hello.tako.test": "valid"})

    cert_dir = tmp_path / "data" / "certs" / "hello.tako.test"
    leaf = verify_chain((cert_dir / "fullchain.pem").read_bytes(), pebble.root_pem(), "hello.tako.test")
    assert_key_matches(cert_dir)
    assert status["hello.tako.test"]["not_after"] == leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert status["hello.tako.test"]["last_error"] is None
    assert mode(cert_dir / "fullchain.pem") == 0o600
    assert mode(cert_dir / "privkey.pem") == 0o600
    acme_dir = tmp_path / "data" / "acme"
    assert mode(acme_dir / "account.key") == 0o600
    assert mode(acme_dir / "account.json") == 0o600
    assert pebble.directory_url in json.loads((acme_dir / "account.json").read_text())
    # Validation really went over HTTP to our responder, with the Host header Pebble sends (port included).
    assert any(
        host.split(":")[0] == "hello.tako.test" and path.startswith("/.well-known/acme-challenge/")
        for host, path in responder.requests
    )
    assert len(challenges) == 0  # tokens are removed once the authorization is settled


async def test_two_hosts_get_two_certificates(
    tmp_path: Path, pebble: Pebble, manager_factory: Factory
) -> None:
    hosts = ["one.tako.test", "two.tako.test"]
    for host in hosts:
        pebble.add_a(host, "127.0.0.1")
    manager = manager_factory(acme_settings(pebble))
    await manager.start()
    manager.set_hosts(hosts)

    await wait_for_states(manager, dict.fromkeys(hosts, "valid"))

    root = pebble.root_pem()
    serials = set()
    for host in hosts:
        cert_dir = tmp_path / "data" / "certs" / host
        leaf = verify_chain((cert_dir / "fullchain.pem").read_bytes(), root, host)
        assert_key_matches(cert_dir)
        serials.add(leaf.serial_number)
    assert len(serials) == 2


async def test_user_placed_certificates_are_used_and_never_replaced(
    tmp_path: Path, pebble: Pebble, manager_factory: Factory
) -> None:
    certs = tmp_path / "data" / "certs"
    ca = trustme.CA()
    placed: dict[Path, bytes] = {}
    for dirname, names in (
        ("_wildcard.tako.test", ["*.tako.test"]),
        ("exact.other.test", ["exact.other.test"]),
    ):
        leaf = ca.issue_cert(*names)
        d = certs / dirname
        d.mkdir(parents=True)
        (d / "fullchain.pem").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        (d / "privkey.pem").write_bytes(leaf.private_key_pem.bytes())
        for f in ("fullchain.pem", "privkey.pem"):
            placed[d / f] = (d / f).read_bytes()
    pebble.add_a("fresh.other.test", "127.0.0.1")
    manager = manager_factory(acme_settings(pebble))
    manager.set_hosts(["app.tako.test", "exact.other.test", "fresh.other.test"])
    await manager.start()

    status = await wait_for_states(
        manager,
        {"app.tako.test": "user-managed", "exact.other.test": "user-managed", "fresh.other.test": "valid"},
    )

    assert status["app.tako.test"]["not_after"] is not None
    for path, data in placed.items():
        assert path.read_bytes() == data
    assert not (certs / "exact.other.test" / ".managed").exists()
    assert not (certs / "app.tako.test").exists()  # the wildcard serves it: no shadowing exact cert
    verify_chain(
        (certs / "fresh.other.test" / "fullchain.pem").read_bytes(), pebble.root_pem(), "fresh.other.test"
    )


async def test_hosts_without_possible_certificate_are_skipped_with_reason(
    pebble: Pebble, manager_factory: Factory
) -> None:
    manager = manager_factory(acme_settings(pebble))
    manager.set_hosts(["127.0.0.1", "localhost", "intranet"])
    await manager.start()

    status = await wait_for_states(
        manager, {"127.0.0.1": "skipped", "localhost": "skipped", "intranet": "skipped"}
    )

    assert all(entry["last_error"] for entry in status.values())


async def test_failed_validation_is_reported_then_retried(
    tmp_path: Path, pebble: Pebble, manager_factory: Factory
) -> None:
    # No DNS record yet: Pebble cannot resolve the name, so validation fails for real.
    manager = manager_factory(acme_settings(pebble))
    manager.set_hosts(["late.tako.test"])
    await manager.start()

    status = await wait_for_states(manager, {"late.tako.test": "failed"})
    assert "validation of late.tako.test failed" in status["late.tako.test"]["last_error"]
    assert status["late.tako.test"]["next_attempt"] is not None
    assert not (tmp_path / "data" / "certs" / "late.tako.test" / "fullchain.pem").exists()

    pebble.add_a("late.tako.test", "127.0.0.1")
    status = await wait_for_states(manager, {"late.tako.test": "valid"})
    assert status["late.tako.test"]["last_error"] is None
