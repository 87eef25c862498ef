"""CertStore on real files: selection order, throttled re-checks, half-written replacements, info; the
self-signed certificates kept on disk (the no-SNI default, routed hosts' fallbacks): reused, and replaced
when unsound."""

from __future__ import annotations

import contextlib
import os
import ssl
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from tako.server.tls import certstore, selfsigned
from tako.server.tls.certstore import DEFAULT_FILE, DEFAULT_NAME, SELF_SIGNED_DIR, TLS_DIR, CertStore

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
    assert info["a.example"]["not_after"] and "trustme" in info["a.example"]["issuer"]


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


def _served_der(server_ctx: ssl.SSLContext, server_name: str | None = None) -> bytes:
    """The certificate a client is shown (by default one that sends no SNI): a TLS handshake in memory."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_name)
    for _ in range(4):
        for side, outgoing, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
            peer_in.write(outgoing.read())
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return der


def _file_der(path: Path) -> bytes:
    text = path.read_text()
    return ssl.PEM_cert_to_DER_cert(text[: text.index("-----END CERTIFICATE-----") + 25])


def _default_store(data_dir: Path, routed: Callable[[str], bool] = lambda h: False) -> CertStore:
    return CertStore(data_dir / "certs", routed, tls_dir=data_dir / TLS_DIR)


def test_default_certificate_is_stored_privately_and_reused(tmp_path: Path) -> None:
    served = _served_der(_default_store(tmp_path).ssl_context())
    path = tmp_path / TLS_DIR / DEFAULT_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert served == _file_der(path)
    cert = x509.load_der_x509_certificate(served)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [DEFAULT_NAME]
    before = path.stat()
    # A restart: the next store (process) serves the stored certificate and leaves the file as it is.
    assert _served_der(_default_store(tmp_path).ssl_context()) == served
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left


def _pair(name: str = DEFAULT_NAME, days: int = selfsigned.VALID_DAYS) -> bytes:
    cert_pem, key_pem = selfsigned.generate(name, days=days)
    return cert_pem + key_pem


def _another_key() -> bytes:
    cert_pem, _ = selfsigned.generate(DEFAULT_NAME)
    _, key_pem = selfsigned.generate(DEFAULT_NAME)
    return cert_pem + key_pem


def _readable_by_others(path: Path) -> None:
    path.write_bytes(_pair())
    path.chmod(0o644)


def _symlink(path: Path) -> None:
    target = path.parent.parent / "elsewhere.pem"
    target.write_bytes(_pair())
    target.chmod(0o600)
    path.symlink_to(target)


# What is wrong with the file, and what the warning that replaces it says.
UNSOUND: dict[str, tuple[Callable[[Path], object], str]] = {
    "empty": (lambda p: p.write_bytes(b""), "not one certificate and its key"),
    "not PEM": (lambda p: p.write_bytes(b"\x00garbage\n" * 50), "not one certificate and its key"),
    "cut short by a crash": (lambda p: p.write_bytes(_pair()[:-60]), "PEM"),
    "certificate only": (
        lambda p: p.write_bytes(_pair().split(b"-----BEGIN PRIVATE KEY")[0]),
        "not one certificate and its key",
    ),
    "another key": (lambda p: p.write_bytes(_another_key()), "KEY_VALUES_MISMATCH"),
    "another name": (lambda p: p.write_bytes(_pair("example.com")), "Hostname mismatch"),
    "expiring": (lambda p: p.write_bytes(_pair(days=3)), "valid only until"),
    "readable by others": (_readable_by_others, "not a private file of this user (mode 0644)"),
    "a symbolic link": (_symlink, "Too many levels of symbolic links"),
}


@pytest.mark.parametrize("case", list(UNSOUND))
def test_an_unsound_default_certificate_is_replaced(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / TLS_DIR / DEFAULT_FILE
    path.parent.mkdir(mode=0o700)
    make, reason = UNSOUND[case]
    make(path)
    if case not in ("readable by others", "a symbolic link"):
        path.chmod(0o600)
    before = path.read_bytes() if path.exists() else b""
    served = _served_der(_default_store(tmp_path).ssl_context())
    assert "replaced: " in caplog.text and reason in caplog.text
    assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() != before
    assert served == _file_der(path)
    if case == "a symbolic link":  # the link is replaced, not the file it named
        assert (tmp_path / "elsewhere.pem").read_bytes().count(b"BEGIN PRIVATE KEY") == 1
    # The replacement is sound: the next start reuses it.
    assert _served_der(_default_store(tmp_path).ssl_context()) == served


def test_routed_hosts_self_signed_certificates_are_stored_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(certstore, "MAX_STORED_SELF_SIGNED", 2)
    routed = {"a.example", "b.example", "c.example"}.__contains__
    store = _default_store(tmp_path, routed)
    context = store.ssl_context()
    served = {name: _served_der(context, name) for name in ("a.example", "b.example", "c.example")}
    stored = tmp_path / TLS_DIR / SELF_SIGNED_DIR
    # Two files at most: a wildcard route would make any name under it routed.
    assert sorted(p.name for p in stored.iterdir()) == ["a.example.pem", "b.example.pem"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in stored.iterdir())
    assert _file_der(stored / "a.example.pem") == served["a.example"]
    assert store.certificate_info()["a.example"]["source"] == "self-signed"
    # A restart: the stored ones are served again, the third is made anew.
    again = _default_store(tmp_path, routed).ssl_context()
    assert _served_der(again, "a.example") == served["a.example"]
    assert _served_der(again, "b.example") == served["b.example"]
    assert _served_der(again, "c.example") != served["c.example"]
    # One stored for another name is not served for this one: replaced.
    (stored / "a.example.pem").write_bytes((stored / "b.example.pem").read_bytes())
    replaced = _served_der(_default_store(tmp_path, routed).ssl_context(), "a.example")
    assert replaced not in (served["a.example"], served["b.example"])
    assert _file_der(stored / "a.example.pem") == replaced


def test_a_host_name_too_long_for_a_file_name_gets_a_certificate_not_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    long_name = ".".join(["a" * 63] * 3 + ["b" * 10, "example"])  # 210 characters, 214 with ".pem"
    assert _served_der(_default_store(tmp_path, {long_name}.__contains__).ssl_context(), long_name)
    assert not (tmp_path / TLS_DIR / SELF_SIGNED_DIR).exists() and "self-signed" not in caplog.text
