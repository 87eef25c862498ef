"""Real upstream servers for proxy tests: a small HTTP/1.1 app server and a WebSocket echo server.

`HttpUpstream` (asyncio streams, port 0) answers by path:
  /bytes/<n>      n bytes with Content-Length      /chunked/<n>   n bytes, chunked  (?slow=1: read slowly)
  /close/<n>      n bytes, close-delimited         /sink          reads the body: {"received", "sha256"}
  /slow/<sec>     answers after <sec> seconds      /status/<code> that status (no body for 1xx/204/304)
  /interim        103 Early Hints, then 200        /hop           hop-by-hop response headers to be dropped
  /hopframe       a Connection header naming Content-Length and Transfer-Encoding
  /fields/<n>     n fields X-Field-<i> of 100 bytes each, body b"fields"
  /te-gzip        Transfer-Encoding: gzip (not chunked): the body ends with the connection
  /die/<n>        promises 2n bytes, sends n, closes  /bye        answers, then closes without saying so
  anything else   JSON echo of method, path, headers, body length and the connection number
HEAD gets the GET headers without a body. `Expect: 100-continue` is answered with 100 before the body is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from typing import Any

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve

_BLOCK = b"x" * 65536


class HttpUpstream:
    def __init__(self, name: str = "app") -> None:
        self.name = name
        self.port = 0
        self.connections = 0  # TCP connections accepted so far
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> HttpUpstream:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, limit=256 * 1024, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_no = self.connections
        self._writers.add(writer)
        try:
            while await self._one_request(reader, writer, conn_no):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn_no: int
    ) -> bool:
        line = await reader.readline()
        if not line:
            return False
        method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        headers: list[tuple[str, str]] = []
        while True:
            hl = await reader.readuntil(b"\r\n")
            if hl == b"\r\n":
                break
            name, _, value = hl.decode("latin-1").partition(":")
            headers.append((name, value.strip()))
        self.requests += 1
        lower = {k.lower(): v for k, v in headers}
        keep_alive = lower.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        path = target.split("?", 1)[0]
        if lower.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        slow = "slow=1" in target
        body_len, digest = await self._read_body(reader, lower, slow=slow)
        head = method == "HEAD"
        parts = path.strip("/").split("/")
        try:
            if parts[0] == "bytes":
                n = int(parts[1])
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
                if not head:
                    await _stream(writer, n, chunked=False)
            elif parts[0] == "chunked":
                n = int(parts[1])
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                if not head:
                    await _stream(writer, n, chunked=True)
                    writer.write(b"0\r\n\r\n")
            elif parts[0] == "close":
                n = int(parts[1])
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                if not head:
                    await _stream(writer, n, chunked=False)
                await writer.drain()
                return False
            elif parts[0] == "die":
                n = int(parts[1])
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (2 * n))
                await _stream(writer, n, chunked=False)
                return False
            elif parts[0] == "bye":
                _json(writer, {"bye": conn_no}, head=head)
                await writer.drain()
                return False  # closes without saying so, like an app's keep-alive timeout
            elif parts[0] == "sink":
                _json(writer, {"received": body_len, "sha256": digest}, head=head)
            elif parts[0] == "slow":
                await asyncio.sleep(float(parts[1]))
                _json(writer, {"slept": float(parts[1])}, head=head)
            elif parts[0] == "status":
                code = int(parts[1])
                if code in (204, 304):
                    writer.write(b'HTTP/1.1 %d X\r\nETag: "v1"\r\n\r\n' % code)
                else:
                    writer.write(
                        b"HTTP/1.1 %d X\r\nContent-Length: 3\r\n\r\n%s" % (code, b"" if head else b"abc")
                    )
            elif parts[0] == "interim":
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
                _json(writer, {"interim": True}, head=head)
            elif parts[0] == "te-gzip":
                # A transfer coding other than chunked last: the body runs until the connection closes.
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
                if not head:
                    writer.write(b"not really gzip")
                await writer.drain()
                return False
            elif parts[0] == "hopframe":
                # A Connection header naming the framing headers: the proxy must keep framing the response.
                body = b"framed"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nConnection: Content-Length, Transfer-Encoding, X-B\r\nX-B: 1\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), b"" if head else body)
                )
            elif parts[0] == "fields":
                fields = b"".join(b"X-Field-%d: %s\r\n" % (i, b"v" * 100) for i in range(int(parts[1])))
                body = b"fields"
                writer.write(
                    b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s"
                    % (fields, len(body), b"" if head else body)
                )
            elif parts[0] == "hop":
                body = b"hop"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nX-Secret: 1\r\n"
                    b"Keep-Alive: timeout=5\r\n"
                    b"Proxy-Authenticate: Basic\r\nTrailer: X-T\r\nUpgrade: foo\r\nX-Kept: yes\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), b"" if head else body)
                )
            else:
                _json(
                    writer,
                    {
                        "app": self.name,
                        "method": method,
                        "target": target,
                        "version": version,
                        "headers": headers,
                        "body_len": body_len,
                        "sha256": digest,
                        "conn": conn_no,
                    },
                    head=head,
                )
        except (IndexError, ValueError):
            # A route without its number (`/bytes/`, `/status/x`): the proxy's fuzz tests send such.
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        return keep_alive

    async def _read_body(
        self, reader: asyncio.StreamReader, headers: dict[str, str], slow: bool
    ) -> tuple[int, str]:
        """Read (and hash) the body; `slow` throttles reading to exercise the proxy's flow control."""
        digest = hashlib.sha256()
        total = 0
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    break
                await _hash_exactly(reader, size, digest, slow)
                total += size
                await reader.readexactly(2)
        elif "content-length" in headers:
            total = int(headers["content-length"])
            await _hash_exactly(reader, total, digest, slow)
        return total, digest.hexdigest()


async def _stream(writer: asyncio.StreamWriter, n: int, *, chunked: bool) -> None:
    remaining = n
    while remaining:
        block = _BLOCK if remaining >= len(_BLOCK) else _BLOCK[:remaining]
        if chunked:
            writer.write(b"%x\r\n" % len(block) + block + b"\r\n")
        else:
            writer.write(block)
        remaining -= len(block)
        await writer.drain()


def _json(writer: asyncio.StreamWriter, data: dict[str, Any], *, head: bool) -> None:
    body = json.dumps(data).encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    if not head:
        writer.write(body)


class WebSocketUpstream:
    """Echoes every message back; `/close-after-one` closes after the first echo."""

    def __init__(self) -> None:
        self.port = 0
        self._server: Server | None = None
        self.seen_headers: list[dict[str, str]] = []

    async def start(self) -> WebSocketUpstream:
        self._server = await serve(self._echo, "127.0.0.1", 0, max_size=None)
        self.port = self._server.sockets[0].getsockname()[1] if hasattr(self._server, "sockets") else 0
        if not self.port:
            self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def _echo(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.seen_headers.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                await ws.send(message)
                if ws.request.path == "/close-after-one":
                    await ws.close()
                    return

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)


async def _hash_exactly(reader: asyncio.StreamReader, size: int, digest: Any, slow: bool) -> None:
    """Read `size` bytes into `digest`; `slow` pauses after each read (the reader falls behind)."""
    remaining = size
    while remaining:
        data = await reader.read(min(remaining, 262144))
        if not data:
            raise asyncio.IncompleteReadError(b"", remaining)
        digest.update(data)
        remaining -= len(data)
        if slow:
            await asyncio.sleep(0.001)
