"""The `/metrics` listener: a small HTTP/1.x server apart from the data plane, for a Prometheus scraper.

It is not a way in: it answers `GET /metrics` and nothing else (405 for another method, 404 for another
path), reads at most MAX_REQUEST_BYTES of request head within READ_TIMEOUT, takes no request body, serves
MAX_CONNECTIONS connections at once (more are closed unanswered) and closes each after its one answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger("tako.server.metrics")

PATH = "/metrics"
MAX_REQUEST_BYTES = 8 * 1024  # a scraper's request head is a few hundred bytes
READ_TIMEOUT = 5.0
MAX_CONNECTIONS = 16  # scrapers are few; a flood of idle connections holds at most this many


class MetricsListener:
    """Serves the figures `collect()` reads at GET /metrics on one address.

    `collect` runs on the event loop (what it reads changes there); the text rendering, most of a scrape's
    cost (bench/metrics/scrape.py: 100 apps, docs/benchmarks.md), runs in a thread, so the data plane of
    this process is never held for all of it.
    """

    def __init__(self, collect: Callable[[], list[Metric]]) -> None:
        self._collect = collect
        self._imported = False  # observe.metrics (and prometheus_client) imported, on the first scrape
        self._server: asyncio.Server | None = None
        self._open = 0

    async def start(self, host: str, port: int) -> int:
        """Listen; the bound port (`port` 0 picks one)."""
        # No SO_REUSEPORT: a second tako-server on the same address must fail to start, not share the
        # scrapes (each would answer for itself). A hand-over closes the old listener before the new binds.
        self._server = await asyncio.start_server(self._client, host, port, limit=MAX_REQUEST_BYTES)
        bound: int = self._server.sockets[0].getsockname()[1]
        log.info("metrics listening on %s:%d%s", host, bound, PATH)
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            if self._open <= MAX_CONNECTIONS:
                head = await _read_head(reader)
                if head is not None:
                    writer.write(await self.answer(head))
                    await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def answer(self, head: bytes) -> bytes:
        """The whole response to one request head."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _response(400, "Bad Request", b"malformed request line\n")
        method, target = parts[0], parts[1]
        if method != "GET":
            return _response(405, "Method Not Allowed", b"only GET /metrics\n", extra="Allow: GET\r\n")
        if target.split("?", 1)[0] != PATH:
            return _response(404, "Not Found", b"only GET /metrics\n")
        if any(_names_a_body(line) for line in lines[1:]):
            return _response(400, "Bad Request", b"GET /metrics takes no request body\n")
        try:
            if not self._imported:
                # In a thread: the import takes 60-80 ms that would otherwise hold the event loop.
                await asyncio.to_thread(importlib.import_module, "tako.server.observe.metrics")
                self._imported = True
            from tako.server.observe.metrics import CONTENT_TYPE, exposition

            body = await asyncio.to_thread(exposition, self._collect())
        except Exception:
            log.exception("metrics: rendering failed")
            return _response(500, "Internal Server Error", b"rendering the metrics failed\n")
        return _response(200, "OK", body, content_type=CONTENT_TYPE)


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The request head, or None for a client that sent too much, too slowly, or went away."""
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
        return None


def _names_a_body(line: str) -> bool:
    name, _, value = line.partition(":")
    name = name.strip().lower()
    return name == "transfer-encoding" or (name == "content-length" and value.strip() != "0")


def _response(
    status: int, reason: str, body: bytes, *, content_type: str = "text/plain; charset=utf-8", extra: str = ""
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + body
