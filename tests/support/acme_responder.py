"""A minimal HTTP-01 responder for ACME tests that need no proxy: answers the challenge path from a lookup.

Real sockets and real HTTP/1.1 (one request per connection), so Pebble's validator talks to it as it would
to tako-server's HTTP listener.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

PREFIX = "/.well-known/acme-challenge/"


class ChallengeResponder:
    def __init__(self, lookup: Callable[[str], str | None], host: str = "127.0.0.1", port: int = 0) -> None:
        self._lookup = lookup
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self.requests: list[tuple[str, str]] = []  # (Host header, path) seen, for assertions

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            host = next(
                (ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("host:")), ""
            )
            self.requests.append((host, path))
            answer = self._lookup(path[len(PREFIX) :]) if path.startswith(PREFIX) else None
            if method == "GET" and answer is not None:
                body = answer.encode()
                status = "200 OK"
            else:
                body = b"not found\n"
                status = "404 Not Found"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
