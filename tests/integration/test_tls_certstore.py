"""CertStore on real files: selection order, throttled re-checks, half-written replacements, info."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trustme

from tako.server.tls.certstore import CertStore

pytestmark = pytest.mark.integration


def _write(certs: Path, directory: str, ca: trustme.CA, *names: str) -> None:
    target = certs / directory
    target.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert(*names)
    cert.private_key_pem.write_to_path(str(target / "privkey.pem"))
    (target / "fullchain.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))


def test_selection_order_and_throttled_reload(tmp_path: Path) -> None:
    now = [0.0]
    routed = {"routed.example", "a.example"}
    store = CertStore(tmp_path, routed.__contains__, clock=lambda: now[0])
    ca = trustme.CA()
    assert store.select("a.example") is not None  # routed, no file: self-signed
    assert store.certificate_info()["a.example"]["source"] == "self-signed"
    assert store.select("nobody.example") is None
    assert store.select("../etc") is None and store.select("a/b") is None
    _write(tmp_path, "a.example", ca, "a.example")
    # Within the re-check interval the store still serves the self-signed certificate...
    self_signed = store.select("a.example")
    now[0] += 1.5
    from_file = store.select("a.example")
    assert from_file is not self_signed
    assert store.select("a.example") is from_file  # cached, not reloaded
    _write(tmp_path, "_wildcard.b.example", ca, "*.b.example")
    _write(tmp_path, "a.b.example", ca, "a.b.example")
    now[0] += 1.5
    wildcard = store.select("x.b.example")
    assert wildcard is not None
    assert store.select("a.b.example") not in (None, wildcard)  # exact wins over wildcard
    assert store.select("x.y.b.example") is None  # a wildcard covers one label
    info = store.certificate_info()
    assert info["a.example"]["source"] == "file" and info["*.b.example"]["source"] == "file"


def test_refresh_serves_a_new_certificate_within_the_recheck_interval(tmp_path: Path) -> None:
    now = [0.0]
    store = CertStore(tmp_path, {"a.example"}.__contains__, clock=lambda: now[0])
    self_signed = store.select("a.example")  # checked now: no file, the fallback
    _write(tmp_path, "a.example", trustme.CA(), "a.example")
    store.refresh("a.example")
    from_file = store.select("a.example")
    assert from_file is not None and from_file is not self_signed
    assert store.certificate_info()["a.example"]["source"] == "file"


def test_half_written_pair_keeps_serving_the_previous(tmp_path: Path) -> None:
    now = [0.0]
    store = CertStore(tmp_path, lambda h: False, clock=lambda: now[0])
    ca = trustme.CA()
    _write(tmp_path, "a.example", ca, "a.example")
    first = store.select("a.example")
    assert first is not None
    # A new chain whose key has not been written yet: mismatched pair.
    other = trustme.CA().issue_cert("a.example")
    (tmp_path / "a.example" / "fullchain.pem").write_bytes(other.cert_chain_pems[0].bytes())
    now[0] += 2
    assert store.select("a.example") is first
    assert store.certificate_info()["a.example"]["error"]
    other.private_key_pem.write_to_path(str(tmp_path / "a.example" / "privkey.pem"))
    os.utime(tmp_path / "a.example" / "privkey.pem", ns=(1, 1))
    now[0] += 2
    second = store.select("a.example")
    assert second is not None and second is not first
    assert store.certificate_info()["a.example"]["error"] is None
