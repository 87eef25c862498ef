"""An in-process `ProxyServer` on loopback port-0 listeners with a trustme CA, plus raw-socket helpers."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import httpx
import trustme
from tests.support.proxy_routes import StaticGate, StaticServices, StaticUpstream, snapshot
from tests.support.upstreams import HttpUpstream, WebSocketUpstream
from websockets.asyncio.client import connect

from tako.config.server import ProxySettings
from tako.server.proxy import ProxyServer
from tako.server.proxy.backend import AppGate
from tako.server.tls.certstore import CertStore


@dataclass
class ProxyHarness:
    server: ProxyServer
    certs: CertStore
    services: StaticServices
    ca: trustme.CA
    certs_dir: Path
    http_port: int
    https_port: int

    def issue(self, *names: str, directory: str | None = None) -> Path:
        """Write a certificate for `names` (signed by the test CA) into certs_dir/<directory or names[0]>."""
        target = self.certs_dir / (directory or names[0])
        target.mkdir(parents=True, exist_ok=True)
        cert = self.ca.issue_cert(*names)
        cert.private_key_pem.write_to_path(str(target / "privkey.pem"))
        chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
        (target / "fullchain.pem").write_bytes(chain)
        return target

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    async def exchange(
        self,
        data: bytes | list[bytes],
        *,
        host: str = "a.tako.test",
        until_closed: bool = True,
        expect_responses: int = 0,
        timeout: float = 10.0,
    ) -> bytes:
        """`raw_exchange` with the HTTPS listener, as a client that trusts the test CA and asks for `host`."""
        return await raw_exchange(
            self.https_port,
            data,
            until_closed=until_closed,
            expect_responses=expect_responses,
            timeout=timeout,
            ssl_context=self.client_context(),
            server_hostname=host,
        )

    def http(self, **kwargs: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.http_port}", timeout=30, **kwargs)  # type: ignore[arg-type]

    def https(self, **kwargs: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{self.https_port}",
            verify=self.client_context(),
            timeout=30,
            **kwargs,  # type: ignore[arg-type]
        )


async def https_get(client: httpx.AsyncClient, host: str, path: str, **kwargs: object) -> httpx.Response:
    """GET over HTTPS to the proxy, with SNI and Host set to `host` (no DNS involved)."""
    headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
    headers.setdefault("Host", host)
    return await client.request(
        str(kwargs.pop("method", "GET")),
        path,
        headers=headers,
        extensions={"sni_hostname": host},
        **kwargs,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def running_proxy(
    tmp_path: Path,
    routes: dict[str, AppGate],
    settings: ProxySettings | None = None,
    *,
    https: bool = True,
) -> AsyncIterator[ProxyHarness]:
    certs_dir = tmp_path / "certs"
    certs_dir.mkdir(exist_ok=True)
    services = StaticServices()
    certs = CertStore(certs_dir, lambda host: False)
    server = ProxyServer(settings or ProxySettings(), services, certs, snapshot(routes))
    try:
        http_port = await server.start_http("127.0.0.1", 0)
        https_port = await server.start_https("127.0.0.1", 0) if https else 0
        yield ProxyHarness(server, certs, services, trustme.CA(), certs_dir, http_port, https_port)
    finally:
        await server.shutdown(5)


@contextlib.asynccontextmanager
async def one_app_proxy(
    tmp_path: Path, settings: ProxySettings | None = None, host: str = "a.tako.test"
) -> AsyncIterator[tuple[ProxyHarness, HttpUpstream]]:
    """A running proxy that routes `host` to one `HttpUpstream` and has a certificate for it."""
    up = await HttpUpstream().start()
    try:
        async with running_proxy(tmp_path, {host: StaticGate("a", [StaticUpstream(up.port)])}, settings) as p:
            p.issue(host)
            yield p, up
    finally:
        await up.stop()


@dataclass
class WebSocketApp:
    """`websocket_app_proxy`'s parts: the proxy, the app's instance (its in-flight count) and the app."""

    proxy: ProxyHarness
    instance: StaticUpstream
    app: WebSocketUpstream
    host: str

    def connect(self, path: str, **kwargs: object) -> connect:
        """A `websockets` client connection to `path` on the app, over TLS through the proxy."""
        return connect(
            f"wss://{self.host}{path}",
            ssl=self.proxy.client_context(),
            host="127.0.0.1",
            port=self.proxy.https_port,
            server_hostname=self.host,
            **kwargs,  # type: ignore[arg-type]
        )


@contextlib.asynccontextmanager
async def websocket_app_proxy(
    tmp_path: Path, settings: ProxySettings | None = None, host: str = "ws.tako.test"
) -> AsyncIterator[WebSocketApp]:
    """A running proxy that routes `host` to one `WebSocketUpstream` and has a certificate for it."""
    app = await WebSocketUpstream().start()
    instance = StaticUpstream(app.port)
    try:
        async with running_proxy(tmp_path, {host: StaticGate("ws", [instance])}, settings) as p:
            p.issue(host)
            yield WebSocketApp(p, instance, app, host)
    finally:
        await app.stop()


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    complete: bool = False

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.decode().lower() == name.lower():
                return value.decode()
        return None


@dataclass
class _Collector:
    responses: list[RawResponse] = field(default_factory=list)
    parser: httptools.HttpResponseParser | None = None
    _name: bytes = b""

    def on_message_begin(self) -> None:
        self.responses.append(RawResponse(0, []))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.responses[-1].headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.responses[-1].status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.responses[-1].body += body

    def on_message_complete(self) -> None:
        self.responses[-1].complete = True


def parse_responses(data: bytes) -> list[RawResponse]:
    """Parse back-to-back responses (none to HEAD); a close-delimited last body is kept as received."""
    collector = _Collector()
    parser = httptools.HttpResponseParser(collector)
    collector.parser = parser
    with contextlib.suppress(httptools.HttpParserUpgrade):
        parser.feed_data(data)
    return collector.responses


async def read_responses(reader: asyncio.StreamReader, *, expect: int = 0) -> bytes:
    """What the peer sends until it closes (or resets), or until `expect` (> 0) responses are complete."""
    received = b""
    while True:
        try:
            chunk = await reader.read(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
        if expect and sum(r.complete for r in parse_responses(received)) >= expect:
            break
    return received


async def raw_exchange(
    port: int,
    data: bytes | list[bytes],
    *,
    until_closed: bool = True,
    expect_responses: int = 0,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> bytes:
    """Send raw bytes and read until the proxy closes (or `expect_responses` complete responses arrive)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ssl_context, server_hostname=server_hostname
    )
    try:
        async with asyncio.timeout(timeout):
            for piece in [data] if isinstance(data, bytes) else data:
                writer.write(piece)
                await writer.drain()
            received = await read_responses(reader, expect=0 if until_closed else expect_responses)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return received
