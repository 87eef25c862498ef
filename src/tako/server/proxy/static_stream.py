"""Answering a request under a static mount on its client connection: `serve` (the client connection's one
call) and `FileSender`, which streams a file too large to keep in memory.

A `FileSender` writes the file a chunk at a time while the client takes it: it stops when the connection's
write buffer passes its high-water mark and goes on when the connection says it drained (`resume`), so a
slow client holds one write buffer and one chunk of a file, whatever its size. It reads at most `BURST`
chunks per turn of the event loop, so a fast client of a large file does not hold the loop either; a read
blocks the loop for one chunk at most.
"""

from __future__ import annotations

import asyncio
import os
from typing import Protocol

from tako.server.proxy.cycle import RequestCycle
from tako.server.proxy.static_files import (
    NO_HEADERS,
    OK_BEFORE_ID,
    Asset,
    FileSpan,
    StaticMounts,
    answer,
    request_headers,
)

CHUNK = 64 * 1024
BURST = 4  # chunks per loop turn: 256 KiB, about one write buffer
_OK_BEFORE_ID_LENGTH = len(OK_BEFORE_ID)


class StaticClient(Protocol):
    """What serving a static file uses of the client connection (`client.ClientConnection`)."""

    @property
    def transport(self) -> asyncio.Transport: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def write_paused(self) -> bool: ...

    def response_complete(self, cycle: RequestCycle) -> None: ...

    def abort(self) -> None: ...


def serve(conn: StaticClient, cycle: RequestCycle, mounts: StaticMounts, path: bytes, close: bool) -> bool:
    """Answer `cycle` from a static mount if `path` lies under one (True); False: not a static path."""
    found = mounts.find(path)
    if found is None:
        return False
    mount, rest = found
    method = cycle.method
    headers = request_headers(cycle.pieces)
    asset = mount.asset(rest) if method == b"GET" or method == b"HEAD" else None
    if asset is not None and headers is NO_HEADERS and not close and method == b"GET":
        kept = asset.plain.body
        if kept:  # the common request: a whole small file from memory, its head built once
            _send_kept(conn, cycle, asset, kept)
            return True
    status, head, body = answer(asset, method, headers, close=close)
    sender: FileSender | None = None
    if isinstance(body, FileSpan):
        try:
            fd = os.open(body.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # gone since it was looked up
            status, head, body = answer(None, b"GET", NO_HEADERS, close=close)
        else:
            sender = cycle.sender = FileSender(conn, cycle, fd, body)
    cycle.response_started = True
    cycle.status = status
    request_id = cycle.request_id
    if request_id is not None:
        at = head.index(b"\r\n") + 2
        head = b"%sX-Request-Id: %s\r\n%s" % (head[:at], request_id, head[at:])
    transport = conn.transport
    if body is None or isinstance(body, FileSpan):
        cycle.bytes_out += len(head)
        transport.write(head)
    else:
        cycle.bytes_out += len(head) + len(body)
        transport.writelines((head, body))
    if sender is None:
        conn.response_complete(cycle)
    else:
        sender.pump()
    return True


def _send_kept(conn: StaticClient, cycle: RequestCycle, asset: Asset, body: bytes) -> None:
    """A 200 with the whole of a file kept in memory: the prebuilt head's pieces, the id between them
    (no head is copied to insert it)."""
    cycle.response_started = True
    cycle.status = 200
    request_id = cycle.request_id
    if request_id is None:
        cycle.bytes_out += len(asset.ok_head) + len(body)
        conn.transport.writelines((asset.ok_head, body))
    else:
        after = asset.ok_after_id
        cycle.bytes_out += _OK_BEFORE_ID_LENGTH + len(request_id) + len(after) + len(body)
        conn.transport.writelines((OK_BEFORE_ID, request_id, after, body))
    conn.response_complete(cycle)


class FileSender:
    """Writes `span` of an open file to the client of `cycle`, then completes the response."""

    __slots__ = ("conn", "cycle", "fd", "offset", "remaining", "scheduled")

    def __init__(self, conn: StaticClient, cycle: RequestCycle, fd: int, span: FileSpan) -> None:
        self.conn = conn
        self.cycle = cycle
        self.fd = fd
        self.offset = span.offset
        self.remaining = span.length
        self.scheduled = False

    def resume(self) -> None:
        """The client's write buffer drained (called by the connection)."""
        self.pump()

    def pump(self) -> None:
        self.scheduled = False
        conn = self.conn
        for _ in range(BURST):
            if self.fd < 0 or conn.write_paused:
                return
            if not self.remaining:
                self._finish()
                return
            try:
                data = os.pread(self.fd, min(CHUNK, self.remaining), self.offset)
            except OSError:
                data = b""
            if not data:  # the file shrank or cannot be read: the response cannot be completed
                self.close()
                conn.abort()
                return
            self.offset += len(data)
            self.remaining -= len(data)
            self.cycle.bytes_out += len(data)
            conn.transport.write(data)
        if not self.remaining and not conn.write_paused:
            self._finish()
        elif not self.scheduled and not conn.write_paused:
            self.scheduled = True
            conn.loop.call_soon(self.pump)

    def _finish(self) -> None:
        self.close()
        self.conn.response_complete(self.cycle)

    def close(self) -> None:
        """Release the file (the response is complete, or the connection is gone)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.cycle.sender = None
