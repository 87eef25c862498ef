"""Certificate inventory: which hosts can have ACME certificates, who owns a directory, what is due."""

from __future__ import annotations

import datetime
import stat
import time
from pathlib import Path

import pytest
import trustme

from tako.server.tls import renewal
from tako.server.tls.acme_issuer import _parse_retry_after
from tako.server.tls.challenges import ChallengeStore
from tako.server.tls.renewal import Need

DAY = 86400.0


def leaf_pems(*names: str, days_left: float = 90) -> tuple[bytes, bytes]:
    now = datetime.datetime.now(datetime.UTC)
    leaf = trustme.CA().issue_cert(
        *names,
        not_before=now - datetime.timedelta(days=100),
        not_after=now + datetime.timedelta(days=days_left),
    )
    return b"".join(p.bytes() for p in leaf.cert_chain_pems), leaf.private_key_pem.bytes()


def place_user(certs: Path, dirname: str, *names: str, days_left: float = 90) -> None:
    fullchain, key = leaf_pems(*names, days_left=days_left)
    d = certs / dirname
    d.mkdir(parents=True)
    (d / "fullchain.pem").write_bytes(fullchain)
    (d / "privkey.pem").write_bytes(key)


def assess_one(certs: Path, host: str) -> renewal.Assessment:
    return renewal.assess([host], certs, now=time.time(), renew_before=30 * DAY)[host]


@pytest.mark.parametrize(
    ("host", "skipped"),
    [
        ("hello.tako.test", False),
        ("a-b.example.com", False),
        ("localhost", True),
        ("app.localhost", True),
        ("10.0.0.1", True),
        ("::1", True),
        ("intranet", True),
        ("*.tako.test", True),
        ("../etc", True),
        ("bad_name.test", True),
        ("-x.test", True),
    ],
)
def test_skip_reason(host: str, skipped: bool) -> None:
    assert (renewal.skip_reason(host) is not None) is skipped


def test_wildcard_covers_exactly_one_label() -> None:
    info = renewal.CertInfo(names=("*.tako.test",), not_before=0, not_after=1, sha256="")
    assert info.covers("app.tako.test")
    assert not info.covers("tako.test")
    assert not info.covers("a.b.tako.test")
    assert not info.covers("app.tako.testx")


def test_missing_certificate_needs_issue(tmp_path: Path) -> None:
    assert assess_one(tmp_path / "certs", "new.tako.test").need is Need.ISSUE


def test_managed_certificate_windows(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    for host, days in (("soon.tako.test", 10), ("later.tako.test", 60), ("gone.tako.test", -1)):
        fullchain, key = leaf_pems(host, days_left=days)
        renewal.write_managed(certs, host, fullchain, key, directory_url="https://ca.test/dir")
    assert assess_one(certs, "soon.tako.test").need is Need.RENEW
    assert assess_one(certs, "later.tako.test").need is Need.NOTHING
    assert assess_one(certs, "gone.tako.test").need is Need.ISSUE


def test_written_files_are_private_and_marked(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    fullchain, key = leaf_pems("x.tako.test")
    renewal.write_managed(certs, "x.tako.test", fullchain, key, directory_url="https://ca.test/dir")
    d = certs / "x.tako.test"
    for name in ("fullchain.pem", "privkey.pem", ".managed"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
    assert sorted(p.name for p in d.iterdir()) == [".managed", "fullchain.pem", "privkey.pem"]
    assert renewal.read_dir(d).managed


def test_user_certificates_are_never_overwritten(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    place_user(certs, "mine.tako.test", "mine.tako.test", days_left=-5)
    a = assess_one(certs, "mine.tako.test")
    assert a.user_managed and a.need is Need.NOTHING
    assert a.note is not None and "expired" in a.note
    fullchain, key = leaf_pems("mine.tako.test")
    with pytest.raises(PermissionError):
        renewal.write_managed(certs, "mine.tako.test", fullchain, key, directory_url="https://ca.test/dir")


def test_user_replacing_a_managed_certificate_takes_ownership(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    fullchain, key = leaf_pems("swap.tako.test", days_left=10)
    renewal.write_managed(certs, "swap.tako.test", fullchain, key, directory_url="https://ca.test/dir")
    user_chain, user_key = leaf_pems("swap.tako.test", days_left=10)
    (certs / "swap.tako.test" / "fullchain.pem").write_bytes(user_chain)
    (certs / "swap.tako.test" / "privkey.pem").write_bytes(user_key)
    a = assess_one(certs, "swap.tako.test")
    assert a.user_managed and a.need is Need.NOTHING


def test_valid_user_wildcard_serves_host_but_expired_one_does_not(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    place_user(certs, "_wildcard.tako.test", "*.tako.test")
    place_user(certs, "_wildcard.old.test", "*.old.test", days_left=-1)
    place_user(certs, "elsewhere", "*.else.test")
    assert assess_one(certs, "app.tako.test").user_managed
    assert assess_one(certs, "app.old.test").need is Need.ISSUE
    # The certificate store only serves wildcards from certs/_wildcard.<parent>/: others do not count.
    assert assess_one(certs, "app.else.test").need is Need.ISSUE


def test_challenge_store_rejects_odd_tokens() -> None:
    store = ChallengeStore()
    store.set("abc-_123", "abc-_123.thumb")
    assert store.get("abc-_123") == "abc-_123.thumb"
    assert store.get("../x") is None
    assert store.get("") is None
    with pytest.raises(ValueError):
        store.set("a/b", "x")
    store.remove("abc-_123")
    assert store.get("abc-_123") is None


def test_parse_retry_after() -> None:
    assert _parse_retry_after("120") == 120.0
    assert _parse_retry_after(None) is None
    assert _parse_retry_after("soon") is None
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    parsed = _parse_retry_after(later.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    assert parsed is not None and 3500 < parsed <= 3600
