"""One HTTPS request to a tako-server on loopback, with its response headers (the route's host as SNI)."""

from __future__ import annotations

import ssl
from typing import NamedTuple

from tests.support.proxy_harness import raw_exchange

_UNVERIFIED = ssl.create_default_context()
_UNVERIFIED.check_hostname = False
_UNVERIFIED.verify_mode = ssl.CERT_NONE  # the server's self-signed fallback certificate


class RawResponse(NamedTuple):
    status: int
    headers: dict[str, list[str]]  # lower-case name -> values in order
    body: bytes
    size: int  # bytes on the wire, head included

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


async def fetch(
    port: int, host: str, path: str = "/", headers: dict[str, str] | None = None, *, method: str = "GET"
) -> RawResponse:
    """`method` `path` on a new connection (closed after it); `headers` are sent as given."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    request = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n".encode()
    raw = await raw_exchange(port, request, ssl_context=_UNVERIFIED, server_hostname=host, timeout=30.0)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    found: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        found.setdefault(name.strip().lower(), []).append(value.strip())
    return RawResponse(int(status_line.split()[1]), found, body, len(raw))
