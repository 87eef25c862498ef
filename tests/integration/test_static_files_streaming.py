"""A large static file to a client that stops reading: the proxy stops reading the file once the client's
write buffer is full (it holds one buffer and a chunk, not the file), goes on when the client reads, and
the client gets every byte; a client that leaves mid-file releases it. Plain HTTP and TLS."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from tests.support.proxy_harness import ProxyHarness, running_proxy
from tests.support.proxy_routes import StaticGate, wait_for

from tako.config.server import ProxySettings
from tako.server.proxy.static_files import StaticMounts
from tako.server.proxy.static_stream import BURST, CHUNK, FileSender

pytestmark = pytest.mark.integration

HOST = "a.tako.test"
SIZE = 48 * 1024 * 1024 + 5
BUFFER = 256 * 1024  # response_buffer_bytes: the connection's write high-water mark


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    public = tmp_path_factory.mktemp("public")
    data = os.urandom(1024 * 1024) * (SIZE // (1024 * 1024)) + b"tail!"
    (public / "big.bin").write_bytes(data)
    return public, hashlib.sha256(data).digest()


@contextlib.asynccontextmanager
async def static_proxy(tmp_path: Path, public: Path, tls: bool) -> AsyncIterator[tuple[int, ProxyHarness]]:
    gate = StaticGate("a", [])
    gate.static = StaticMounts({"/static": str(public)})
    settings = ProxySettings(response_buffer_bytes=BUFFER)
    async with running_proxy(tmp_path, {HOST: gate}, settings) as proxy:
        proxy.issue(HOST)
        port = proxy.https_port if tls else await proxy.server.start_http("127.0.0.1", 0, forward=True)
        yield port, proxy


async def download(
    port: int, tls: bool, proxy: ProxyHarness
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection with a small receive buffer that has asked for the big file."""
    context: ssl.SSLContext | None = proxy.client_context() if tls else None
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # small: the proxy fills it soon
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=context, server_hostname=HOST if tls else None, limit=1024 * 1024
    )
    writer.write(f"GET /static/big.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    return reader, writer


def sender_of(proxy: ProxyHarness) -> FileSender | None:
    for conn in proxy.server.connections:
        cycle = conn.cycle
        if cycle is not None and cycle.sender is not None:
            return cast(FileSender, cycle.sender)
    return None


Downloading = tuple[ProxyHarness, asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture(params=[False, True], ids=["http", "https"])
async def downloading(
    request: pytest.FixtureRequest, tmp_path: Path, big_file: tuple[Path, bytes]
) -> AsyncIterator[Downloading]:
    """A proxy serving the big file, and a client that has asked for it (plain HTTP, then TLS)."""
    tls = bool(request.param)
    async with static_proxy(tmp_path, big_file[0], tls) as (port, proxy):
        reader, writer = await download(port, tls, proxy)
        yield proxy, reader, writer


async def test_a_client_that_stops_reading_holds_one_buffer_not_the_file(
    downloading: Downloading, big_file: tuple[Path, bytes]
) -> None:
    proxy, reader, writer = downloading
    digest = big_file[1]
    # The client reads nothing: the proxy's write buffer fills and the file is no longer read.
    await wait_for(lambda: any(c.write_paused for c in proxy.server.connections), timeout=30)
    sender = sender_of(proxy)
    assert sender is not None
    held = sender.offset
    assert held < SIZE // 4  # the kernel's buffers, one write buffer and a burst: a few MiB at most
    for conn in proxy.server.connections:
        assert conn.transport.get_write_buffer_size() <= BUFFER + BURST * CHUNK

    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: %d\r\n" % SIZE in head
    body = await asyncio.wait_for(reader.readexactly(SIZE), 120)
    assert hashlib.sha256(body).digest() == digest
    # The connection carries the next request once the file is complete.
    writer.write(f"GET /static/missing HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 30)).startswith(b"HTTP/1.1 404")
    writer.close()


async def test_a_client_gone_mid_file_releases_it(downloading: Downloading) -> None:
    proxy, reader, writer = downloading
    await wait_for(lambda: sender_of(proxy) is not None, timeout=30)
    sender = sender_of(proxy)
    assert sender is not None
    await asyncio.wait_for(reader.readexactly(1024 * 1024), 30)
    writer.transport.abort()
    await wait_for(lambda: not proxy.server.connections, timeout=30)
    assert sender.fd == -1  # the file is closed
