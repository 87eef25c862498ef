"""Certificates on disk and TLS certificate selection by SNI for the HTTPS listener.

Layout: `<certs_dir>/<name>/{fullchain.pem,privkey.pem}`; a wildcard certificate for `*.example.com`
lives in `<certs_dir>/_wildcard.example.com/`. Selection for a server name: exact directory, then the
wildcard directory of its parent domain, then (for a routed host only) an in-memory self-signed
certificate; anything else fails the handshake. Files are re-checked (mtime, size, inode) at most once
per second per name, so certificates added or replaced on disk are served without a restart; `refresh`
re-reads a name at once (tako-server calls it in every process when it has stored a certificate).

The no-SNI default certificate is self-signed too. Given a `tls_dir` (tako-server passes
`<data_dir>/tls`), self-signed certificates are kept there, each with its key in one private file written
atomically: the default in `default.pem`, a routed host's in `self-signed/<host>.pem` (at most
MAX_STORED_SELF_SIGNED of those). A restart then loads them (a few ms) instead of making them: the
default by a child Python process (about 0.12 s before the listeners open), a host's in this process at
its first handshake (importing the cryptography library: about 0.1 s of the event loop). A file that is
not ours alone, does not load as a matching pair, does not cover its name or is valid for less than
RENEW_SECONDS more is replaced by a new one.

Certificates are described (expiry, issuer: the cryptography library) only for `certificate_info`, never
on a handshake.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tako.fsutil import write_atomic

log = logging.getLogger(__name__)

FULLCHAIN = "fullchain.pem"
PRIVKEY = "privkey.pem"
WILDCARD_PREFIX = "_wildcard."
RECHECK_SECONDS = 1.0
DEFAULT_NAME = "tako-server"  # the self-signed certificate shown to clients that send no SNI
TLS_DIR = "tls"  # under the data dir: the stored self-signed certificates
DEFAULT_FILE = "default.pem"  # in TLS_DIR: the no-SNI default certificate, then its key
SELF_SIGNED_DIR = "self-signed"  # in TLS_DIR: <host>.pem, a routed host's fallback certificate and key
MAX_STORED_SELF_SIGNED = 256  # hosts' files kept at most (a wildcard route makes any name under it routed)
RENEW_SECONDS = 7 * 86400  # a stored self-signed certificate valid for less than this is replaced
_MAX_STORED_NAME = 200  # a host name (up to 253 characters) longer than this is not stored
_STORED_MAX_BYTES = 64 * 1024  # a certificate and an EC key are about 1 KB: anything far larger is not ours
_KEY_MARKER = b"-----BEGIN PRIVATE KEY-----"
_MAX_NEGATIVE = 10_000
_NAME_RE = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")

_Signature = tuple[int, int, int, int, int, int]


@dataclass
class _Entry:
    """One certificate directory: its loaded context and what it was loaded from."""

    context: ssl.SSLContext | None = None
    signature: _Signature | None = None
    checked_at: float = float("-inf")
    error: str | None = None


ALPN_HTTP1 = ("http/1.1",)
ALPN_HTTP2 = ("h2", "http/1.1")  # the server's preference first: a client offering both gets HTTP/2


def _new_context(alpn: tuple[str, ...]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # On every context, not only the listener's: ALPN is answered from the one SNI selected.
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def _context_from_pem(cert_pem: bytes, key_pem: bytes, alpn: tuple[str, ...]) -> ssl.SSLContext:
    # The ssl module loads chains only from files: write them to a private temporary directory.
    ctx = _new_context(alpn)
    with tempfile.TemporaryDirectory(prefix="tako-cert-") as tmp:
        cert_path = os.path.join(tmp, FULLCHAIN)
        key_path = os.path.join(tmp, PRIVKEY)
        with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as fh:
            fh.write(key_pem)
        with open(cert_path, "wb") as fh:
            fh.write(cert_pem)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def _generate_in_child(name: str) -> tuple[bytes, bytes]:
    """A self-signed pair made by a short-lived child process, so that an idle server (which needs only the
    no-SNI default certificate) never loads the cryptography library (about 10 MB of memory)."""
    out = subprocess.run(
        [sys.executable, "-m", "tako.server.tls.selfsigned", name],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    at = out.index(_KEY_MARKER)
    return out[:at], out[at:]


def _describe(cert_pem: bytes) -> tuple[str, str]:
    from cryptography import x509  # imported on first use: an idle server does not pay its memory

    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_after_utc.isoformat(), cert.issuer.rfc4514_string()


class CertStore:
    """Chooses the certificate for each TLS handshake (the SSLContext's SNI callback)."""

    def __init__(
        self,
        certs_dir: Path,
        is_routed_host: Callable[[str], bool],
        *,
        clock: Callable[[], float] = time.monotonic,
        tls_dir: Path | None = None,
    ) -> None:
        self.certs_dir = Path(certs_dir)
        self._tls_dir = tls_dir  # None: self-signed certificates are made anew by each store
        self._is_routed_host = is_routed_host
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._self_signed: dict[str, tuple[ssl.SSLContext, bytes]] = {}  # name: context, certificate PEM
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        self._alpn: tuple[str, ...] = ALPN_HTTP1

    def offer_http2(self, offered: bool) -> None:
        """Offer `h2` in ALPN (the proxy does when it can serve HTTP/2), on every context from now on."""
        self._alpn = ALPN_HTTP2 if offered else ALPN_HTTP1
        with self._lock:
            contexts = [e.context for e in self._entries.values() if e.context is not None]
            contexts += [ctx for ctx, _ in self._self_signed.values()]
        for ctx in contexts:
            ctx.set_alpn_protocols(list(self._alpn))

    def set_routed_host_predicate(self, is_routed_host: Callable[[str], bool]) -> None:
        """Replace the test for "some route names this host" (the proxy wires in its routing snapshot)."""
        self._is_routed_host = is_routed_host

    def ssl_context(self) -> ssl.SSLContext:
        """The server context for the HTTPS listener (TLS 1.2+, ALPN h2 when offered and http/1.1, SNI)."""
        if self._context is None:
            ctx = self._self_signed_context(DEFAULT_NAME)
            ctx.sni_callback = self._on_sni
            self._context = ctx
        return self._context

    def select(self, server_name: str) -> ssl.SSLContext | None:
        """The context to serve for `server_name` (already lower-case), or None to refuse the handshake."""
        name = server_name.rstrip(".")
        if not _NAME_RE.match(name) or name.startswith(WILDCARD_PREFIX):
            return None
        entry = self._entry(name)
        if entry is not None and entry.context is not None:
            return entry.context
        dot = name.find(".")
        if dot > 0 and "." in name[dot + 1 :]:
            wildcard = self._entry(WILDCARD_PREFIX + name[dot + 1 :])
            if wildcard is not None and wildcard.context is not None:
                return wildcard.context
        if self._is_routed_host(name):
            return self._self_signed_context(name)
        return None

    def refresh(self, name: str) -> None:
        """Re-read the certificate directory `name` now, not at the next once-a-second check."""
        self._entry(name, force=True)

    def certificate_info(self) -> dict[str, dict[str, Any]]:
        """Per certificate name: not_after (ISO 8601), issuer, source (`file` or `self-signed`), error."""
        info: dict[str, dict[str, Any]] = {}
        if self.certs_dir.is_dir():
            for child in sorted(self.certs_dir.iterdir()):
                if not (child / FULLCHAIN).exists():
                    continue
                name = child.name
                display = "*." + name[len(WILDCARD_PREFIX) :] if name.startswith(WILDCARD_PREFIX) else name
                entry = self._entry(name, force=True)
                not_after = issuer = None
                error = entry.error if entry else None
                if entry is not None and entry.context is not None:
                    try:
                        not_after, issuer = _describe((child / FULLCHAIN).read_bytes())
                    except (OSError, ValueError) as exc:
                        error = f"cannot read {child / FULLCHAIN}: {exc}"
                info[display] = {"not_after": not_after, "issuer": issuer, "source": "file", "error": error}
        for name, (_, cert_pem) in list(self._self_signed.items()):
            if name != DEFAULT_NAME and name not in info:
                not_after, issuer = _describe(cert_pem)
                info[name] = {
                    "not_after": not_after,
                    "issuer": issuer,
                    "source": "self-signed",
                    "error": None,
                }
        return info

    # -- internals --------------------------------------------------------------------------------

    def _on_sni(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
        # `sslobj` is whatever owns the connection's TLS object and has a settable `context`: the
        # proxy's `TLSTransport`, or an `ssl.SSLObject`/`SSLSocket` in other callers.
        if server_name is None:
            return None  # keep the default self-signed certificate
        ctx = self.select(server_name.lower())
        if ctx is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = ctx
        return None

    def _entry(self, name: str, *, force: bool = False) -> _Entry | None:
        now = self._clock()
        entry = self._entries.get(name)
        if entry is not None and not force and now - entry.checked_at < RECHECK_SECONDS:
            return entry
        directory = self.certs_dir / name
        try:
            chain_stat = os.stat(directory / FULLCHAIN)
            key_stat = os.stat(directory / PRIVKEY)
        except OSError:
            if entry is None:
                if len(self._entries) >= _MAX_NEGATIVE:
                    self._entries = {k: v for k, v in self._entries.items() if v.context is not None}
                entry = self._entries[name] = _Entry()
            entry.checked_at = now
            entry.context = None
            entry.signature = None
            return entry
        signature = (
            chain_stat.st_mtime_ns,
            chain_stat.st_size,
            chain_stat.st_ino,
            key_stat.st_mtime_ns,
            key_stat.st_size,
            key_stat.st_ino,
        )
        if entry is None:
            entry = self._entries[name] = _Entry()
        entry.checked_at = now
        if entry.signature == signature and (entry.context is not None or entry.error is not None):
            return entry
        try:
            ctx = _new_context(self._alpn)
            ctx.load_cert_chain(directory / FULLCHAIN, directory / PRIVKEY)
        except (OSError, ssl.SSLError, ValueError) as exc:
            # Often a half-written pair during replacement: keep serving the previous one, retry later.
            entry.error = f"cannot load {directory}: {exc}"
            entry.signature = signature
            log.warning("certificate %s not loaded: %s", name, exc)
            return entry
        entry.context = ctx
        entry.signature = signature
        entry.error = None
        return entry

    def _self_signed_context(self, name: str) -> ssl.SSLContext:
        cached = self._self_signed.get(name)
        if cached is not None:
            return cached[0]
        with self._lock:
            cached = self._self_signed.get(name)
            if cached is not None:
                return cached[0]
            path = self._stored_path(name)
            if path is not None:
                try:
                    ctx, cert_pem = _load_stored(path, name, self._alpn, now=time.time())
                    self._self_signed[name] = (ctx, cert_pem)
                    return ctx
                except FileNotFoundError:
                    pass
                except (OSError, ssl.SSLError, ValueError) as exc:
                    log.warning("self-signed certificate %s replaced: %s", path, exc)
            if name == DEFAULT_NAME:
                cert_pem, key_pem = _generate_in_child(name)
            else:
                from tako.server.tls import selfsigned  # on first use, like _describe

                cert_pem, key_pem = selfsigned.generate(name)
            if path is not None and (name == DEFAULT_NAME or path.exists() or self._room_for_another_host()):
                try:
                    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    write_atomic(path, cert_pem + key_pem, mode=0o600)
                except OSError as exc:  # served all the same: made again at the next start
                    log.warning("cannot store the self-signed certificate in %s: %s", path, exc)
            ctx = _context_from_pem(cert_pem, key_pem, self._alpn)
            self._self_signed[name] = (ctx, cert_pem)
            return ctx

    def _stored_path(self, name: str) -> Path | None:
        if self._tls_dir is None:
            return None
        if name == DEFAULT_NAME:
            return self._tls_dir / DEFAULT_FILE
        if len(name) > _MAX_STORED_NAME:  # the file name and write_atomic's temporary one: 255 bytes at most
            return None
        return self._tls_dir / SELF_SIGNED_DIR / f"{name}.pem"  # `name` passed select()'s _NAME_RE

    def _room_for_another_host(self) -> bool:
        assert self._tls_dir is not None
        try:
            return len(os.listdir(self._tls_dir / SELF_SIGNED_DIR)) < MAX_STORED_SELF_SIGNED
        except FileNotFoundError:
            return True
        except OSError:
            return False


def _load_stored(path: Path, name: str, alpn: tuple[str, ...], *, now: float) -> tuple[ssl.SSLContext, bytes]:
    """The server context for a stored self-signed certificate, and the certificate's PEM; raises when the
    file must be replaced: not a regular file of this user's alone (its key may have been read), not one
    certificate and its key, not valid for `name` from now until RENEW_SECONDS later."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise ValueError(f"not a private file of this user (mode {stat.S_IMODE(st.st_mode):04o})")
        data = fh.read(_STORED_MAX_BYTES + 1)
    if len(data) > _STORED_MAX_BYTES or data.count(_KEY_MARKER) != 1:
        raise ValueError("not one certificate and its key")
    cert_pem = data[: data.index(_KEY_MARKER)]
    # From the file itself (certificate, then key): load_cert_chain refuses a key that is not the
    # certificate's; the handshake checks the rest, against the certificate read above.
    ctx = _new_context(alpn)
    ctx.load_cert_chain(path)
    not_after = _verified_not_after(ctx, cert_pem, name)
    if not_after - now < RENEW_SECONDS:
        raise ValueError(f"valid only until {time.strftime('%Y-%m-%d %H:%M', time.gmtime(not_after))} UTC")
    return ctx, cert_pem


def _verified_not_after(server_ctx: ssl.SSLContext, cert_pem: bytes, name: str) -> float:
    """A TLS handshake in memory with a client that trusts `cert_pem` alone and expects `name`: OpenSSL
    itself checks the name, the validity period and the signature made with the key. Returns the end of
    the validity period (epoch seconds). Without the cryptography library: an idle server never loads it."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cadata=cert_pem.decode("ascii"))
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(server_in, server_out, server_side=True)
    client = client_ctx.wrap_bio(client_in, client_out, server_hostname=name)
    for _ in range(4):  # TLS 1.3: the client's hello, the server's flight, the client's finished
        _step(client, client_out, server_in)
        _step(server, server_out, client_in)
        if client.version() is not None and server.version() is not None:
            break
    peer_cert = client.getpeercert()
    if not peer_cert:
        raise ValueError("the handshake with it did not complete")
    return float(ssl.cert_time_to_seconds(str(peer_cert["notAfter"])))


def _step(side: ssl.SSLObject, outgoing: ssl.MemoryBIO, peer_incoming: ssl.MemoryBIO) -> None:
    """One handshake step of `side`, what it wrote passed to its peer."""
    with contextlib.suppress(ssl.SSLWantReadError):
        side.do_handshake()
    peer_incoming.write(outgoing.read())
