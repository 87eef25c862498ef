"""`PlainTransport`: a plain TCP connection driven by the socket's readiness: an accepted plain-HTTP
client, or a new connection to an instance (`upstream_connect.py`).

The loop's own TCP transport tells its protocol `connection_made` through the ready queue and only starts
reading after it. Each step through that queue costs a whole loop turn, and under load a turn is long:
while every poll returns a full batch of events, libuv polls again (up to 48 batches of 1024) before it
runs timers and ready callbacks. Through a testbed host at 5000 plain-HTTP connections that put a
connection's first request, and the first response on a new connection to an instance, 1-3 s behind the
requests on established connections: p99 3.3 s against nginx's 0.4-0.9 s. Here the protocol hears
`connection_made` from the code that has the socket (the accept callback, which also reads a request that
has arrived: `read_now`; the connect's own callback), and reads and writes run in readiness callbacks, as
`tls.TLSTransport` does for HTTPS.

Reads and writes are `native.recv`/`native.send` on the descriptor: compiled, `recv`/`send` called from C
with the GIL held (the socket is non-blocking, so neither waits), as the loop's transport does; in Python
(TAKO_PURE_PYTHON=1, no compiler, a stale build) `os.readv`/`os.write`, with the same behaviour.

It is one of the compiled modules (compiled.py; `plain.pxd` types its attributes and internal calls), so
an extension type, not a subclass of `asyncio.Transport`: it is a transport by its methods, the ones the
proxy's protocols use, with the semantics of the loop's transport they were written against. A write goes
to the socket at once and only what does not fit is buffered; the protocol is told `pause_writing` above
the high-water mark and `resume_writing` at the low one; `eof_received` returning false closes;
`write_eof` half-closes once the buffer is out; `close` sends what is buffered first; `connection_lost`
follows on the next loop turn.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from typing import Any, cast

from tako.server.proxy import native
from tako.server.proxy.wire import Writer, as_receiver

# One read takes at most this much. Every connection of the process reads into this one buffer and copies
# out what it got (native.recv): `recv(n)` would allocate n bytes per call and shrink them (glibc's
# _int_malloc was 10% of a data-plane worker's CPU that way, see tls.py). One callback runs at a time, so it
# is never shared mid-read.
RECV_SIZE = 65536
_RECV_BUFFER = bytearray(RECV_SIZE)
HIGH_WATER = 64 * 1024  # pause the protocol's writing above this many buffered bytes
LOW_WATER = 16 * 1024  # and resume it at or below this

_FAILED = (OSError, ValueError)  # ValueError: the socket object is already closed


def as_transport(transport: PlainTransport) -> asyncio.Transport:
    """A `PlainTransport` is an asyncio transport by its methods."""
    return cast(asyncio.Transport, transport)


class PlainTransport(Writer):
    """One connected non-blocking TCP socket; `protocol.connection_made` is called from the constructor."""

    __slots__ = (
        "_buffer",
        "_buffer_size",
        "_closing",
        "_eof_sent",
        "_eof_wanted",
        "_fd",
        "_high_water",
        "_loop",
        "_lost",
        "_low_water",
        "_peername",
        "_protocol",
        "_reader_on",
        "_reading",
        "_receiver",
        "_sock",
        "_write_paused",
        "_writer_on",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.Protocol,
        peername: Any = None,
        *,
        read_now: bool = False,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._receiver = as_receiver(protocol)  # data_received, a C call (wire.py)
        self._peername = peername
        self._buffer: list[bytes | bytearray | memoryview] = []  # waiting for the socket to be writable
        self._buffer_size = 0
        self._high_water = HIGH_WATER
        self._low_water = LOW_WATER
        self._reading = True  # what the protocol asked for (pause_reading / resume_reading)
        self._reader_on = False  # the loop watches the socket for readability
        self._writer_on = False  # ... and for writability
        self._write_paused = False  # the protocol was told pause_writing()
        self._closing = False  # close() or abort() was called, or the connection failed
        self._eof_wanted = False  # write_eof() was called: half-close once the buffer is out
        self._eof_sent = False
        self._lost = False  # the socket is closed and connection_lost scheduled
        protocol.connection_made(as_transport(self))
        self._update_reader()
        if read_now and self._reader_on:
            # A client's first request has usually arrived by the time its connection is accepted, while
            # the loop starts watching a new socket only at its next poll phase, a turn later.
            self._read()

    # -- readiness --------------------------------------------------------------------------------

    def _update_reader(self) -> None:
        wanted = self._reading and not self._closing
        if wanted != self._reader_on:
            self._reader_on = wanted
            if wanted:
                self._loop.add_reader(self._fd, self._read)
            else:
                self._loop.remove_reader(self._fd)

    def _set_writer(self, wanted: bool) -> None:
        if wanted != self._writer_on:
            self._writer_on = wanted
            if wanted:
                self._loop.add_writer(self._fd, self._write_buffered)
            else:
                self._loop.remove_writer(self._fd)

    # -- reading ----------------------------------------------------------------------------------

    def _read(self) -> None:
        try:
            data = native.recv(self._fd, _RECV_BUFFER)
        except _FAILED as exc:
            self._destroy(exc)
            return
        if data:
            self._receiver.data_received(data)
            return
        if data is None:
            return  # nothing there yet
        # The peer will send nothing more.
        self._reading = False
        self._update_reader()
        if not self._protocol.eof_received():
            self.close()

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._update_reader()

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._update_reader()

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # -- writing ----------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_wanted or not data:
            return
        if self._buffer:
            self._buffer.append(data)
            self._buffer_size += len(data)
            self._check_high_water()
            return
        try:
            sent = self._send(data)
        except _FAILED as exc:
            self._destroy(exc)
            return
        if sent < len(data):
            rest = memoryview(data)[sent:]
            self._buffer.append(rest)
            self._buffer_size = len(rest)
            self._set_writer(True)
            self._check_high_water()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def _write_buffered(self) -> None:
        buffer = self._buffer
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        try:
            sent = self._send(data)
        except _FAILED as exc:
            self._destroy(exc)
            return
        if sent < len(data):
            self._buffer = [memoryview(data)[sent:]]
            self._buffer_size = len(data) - sent
        else:
            self._buffer = []
            self._buffer_size = 0
            self._set_writer(False)
            if self._closing:
                self._destroy()
                return
            if self._eof_wanted:
                self._shutdown_write()
        if self._write_paused and self._buffer_size <= self._low_water:
            self._write_paused = False
            self._protocol.resume_writing()

    def _send(self, data: bytes | bytearray | memoryview) -> int:
        """Bytes of `data` the socket took (0 when it is full)."""
        return native.send(self._fd, data)

    def _check_high_water(self) -> None:
        if not self._write_paused and self._buffer_size > self._high_water:
            self._write_paused = True
            self._protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self._buffer_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low_water, self._high_water

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high_water = HIGH_WATER if high is None else high
        self._low_water = (self._high_water // 4) if low is None else low

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_wanted:
            return
        self._eof_wanted = True
        if not self._buffer:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        if self._eof_sent:
            return
        self._eof_sent = True
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except _FAILED as exc:
            self._destroy(exc)

    # -- closing ----------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; close the socket once what is buffered is sent."""
        if self._closing:
            return
        self._closing = True
        self._update_reader()
        if not self._buffer:
            self._destroy()

    def abort(self) -> None:
        self._destroy()

    def _destroy(self, exc: Exception | None = None) -> None:
        """Close the socket now; the protocol hears connection_lost on the next loop turn."""
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._update_reader()
        self._set_writer(False)
        self._buffer = []
        self._buffer_size = 0
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)

    # -- the rest of asyncio.Transport ------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            if self._peername is None:
                try:
                    self._peername = self._sock.getpeername()
                except _FAILED:
                    return default
            return self._peername
        if name == "socket":
            return self._sock
        if name == "sockname":
            try:
                return self._sock.getsockname()
            except _FAILED:
                return default
        return default

    def set_protocol(self, protocol: asyncio.Protocol) -> None:
        self._protocol = protocol
        self._receiver = as_receiver(protocol)

    def get_protocol(self) -> asyncio.Protocol:
        return self._protocol

    def __repr__(self) -> str:
        state = "closing" if self._closing else "open"
        return f"<PlainTransport fd={self._fd} {state} peer={self._peername}>"
