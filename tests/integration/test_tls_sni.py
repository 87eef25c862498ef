"""HTTPS listener: certificate by SNI (exact, wildcard, self-signed fallback, unknown), reload from disk,
TLS 1.2+ only, ALPN h2 (where the HTTP/2 binding is built) and http/1.1, and no-SNI clients."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.x509.oid import NameOID
from tests.support.proxy_harness import ProxyHarness, https_get, running_proxy
from tests.support.proxy_routes import StaticGate, StaticUpstream, wait_for
from tests.support.upstreams import HttpUpstream

from tako.server.proxy import h2 as proxy_h2

pytestmark = [pytest.mark.integration, pytest.mark.uvloop]

_PREFERRED = "h2" if proxy_h2.available() else "http/1.1"  # what a client offering both gets


async def _handshake(
    p: ProxyHarness, server_name: str | None, ctx: ssl.SSLContext | None = None
) -> tuple[x509.Certificate, str | None]:
    if ctx is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2", "http/1.1"])
    _, writer = await asyncio.open_connection("127.0.0.1", p.https_port, ssl=ctx, server_hostname=server_name)
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der), sslobj.selected_alpn_protocol()
    finally:
        writer.close()


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _sans(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


async def test_sni_exact_wildcard_fallback_unknown(tmp_path: Path) -> None:
    up = await HttpUpstream().start()
    gate = StaticGate("a", [StaticUpstream(up.port)])
    routes = {"exact.tako.test": gate, "*.wild.tako.test": gate, "pending.tako.test": gate}
    try:
        async with running_proxy(tmp_path, routes) as p:
            p.issue("exact.tako.test")
            p.issue("*.wild.tako.test", directory="_wildcard.wild.tako.test")
            async with p.https() as client:
                # Exact and wildcard certificates verify against the CA with a real client.
                r = await https_get(client, "exact.tako.test", "/echo")
                assert r.status_code == 200
                r = await https_get(client, "a.wild.tako.test", "/echo")
                assert r.status_code == 200
            cert, alpn = await _handshake(p, "exact.tako.test")
            assert _sans(cert) == ["exact.tako.test"] and alpn == _PREFERRED
            cert, _ = await _handshake(p, "Other.Wild.tako.test")
            assert _sans(cert) == ["*.wild.tako.test"]
            # A routed host without a certificate yet gets a self-signed one for its name.
            cert, _ = await _handshake(p, "pending.tako.test")
            assert _cn(cert) == "pending.tako.test" and cert.issuer == cert.subject
            with pytest.raises(ssl.SSLCertVerificationError):
                await _handshake(p, "pending.tako.test", p.client_context())
            # A TLS wildcard covers one label; deeper names under a wildcard route fall back.
            cert, _ = await _handshake(p, "a.b.wild.tako.test")
            assert _cn(cert) == "a.b.wild.tako.test"
            # Unknown names fail the handshake, and directory names cannot be asked for.
            for name in ("unknown.tako.test", "_wildcard.wild.tako.test", "x.unknown.tako.test"):
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    await _handshake(p, name)
            info = p.certs.certificate_info()
            assert info["exact.tako.test"]["source"] == "file"
            assert info["*.wild.tako.test"]["source"] == "file"
            assert info["pending.tako.test"]["source"] == "self-signed"
            assert "not_after" in info["exact.tako.test"] and info["exact.tako.test"]["issuer"]
    finally:
        await up.stop()


async def test_certificate_replaced_on_disk_is_served_without_restart(tmp_path: Path) -> None:
    async with running_proxy(tmp_path, {}) as p:
        p.issue("rotate.tako.test")
        first, _ = await _handshake(p, "rotate.tako.test")
        other_ca = trustme.CA()
        p.ca = other_ca
        p.issue("rotate.tako.test")  # same directory, new issuer
        new_issuer = other_ca.cert_pem.bytes()
        expected = x509.load_pem_x509_certificate(new_issuer).subject

        async def served_issuer() -> x509.Name:
            cert, _ = await _handshake(p, "rotate.tako.test")
            return cert.issuer

        deadline = asyncio.get_running_loop().time() + 10
        while await served_issuer() != expected:
            assert asyncio.get_running_loop().time() < deadline, "new certificate not picked up"
            await asyncio.sleep(0.1)
        assert first.issuer != expected
        # A certificate added for a new name is picked up too.
        p.issue("added.tako.test")
        await wait_for(lambda: p.certs.select("added.tako.test") is not None)
        cert, _ = await _handshake(p, "added.tako.test")
        assert _sans(cert) == ["added.tako.test"]


async def test_tls_versions_alpn_and_clients_without_sni(tmp_path: Path) -> None:
    async with running_proxy(tmp_path, {}) as p:
        p.issue("a.tako.test")
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _handshake(p, "a.tako.test", old)
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = p.client_context()
            ctx.minimum_version = ctx.maximum_version = version
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            _, alpn = await _handshake(p, "a.tako.test", ctx)
            assert alpn == _PREFERRED
        # No SNI (a client dialling the IP): the default self-signed certificate; status still answers.
        cert, _ = await _handshake(p, None)
        assert _cn(cert) == "tako-server"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", p.https_port, ssl=ctx)
        writer.write(b"GET /_tako/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_openssl_client_sees_tls12_and_13_only(tmp_path: Path) -> None:
    async def s_client(port: int, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "a.tako.test", *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode(errors="replace")

    async with running_proxy(tmp_path, {}) as p:
        p.issue("a.tako.test")
        # SECLEVEL=0 lets the client offer TLS 1.1, so a refusal comes from the server.
        code, out = await s_client(p.https_port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
        assert code != 0 and "Cipher is (NONE)" in out
        for version, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
            code, out = await s_client(p.https_port, version, "-alpn", "h2,http/1.1")
            assert code == 0 and f"New, {name}" in out
            assert f"ALPN protocol: {_PREFERRED}" in out
