"""`TLSTransport`: HTTPS connections with OpenSSL reading and writing the socket itself.

The event loop's own TLS support runs OpenSSL over memory buffers: every record is read from the socket
into a buffer, copied into OpenSSL, decrypted into a new buffer, and the reverse on the way out, with a
state machine around each step. Profiles of the HTTPS proxy put that machinery at a large share of the
per-request CPU. Here OpenSSL is layered on the accepted non-blocking socket itself, so `SSL_read` and
`SSL_write` work on the file descriptor directly, and the loop only reports readiness (`add_reader` /
`add_writer`). It implements the `asyncio.Transport` methods the proxy's protocols use.

The TLS object is the C-level one that `ssl.SSLSocket` keeps inside (`SSLContext._wrap_socket`, stable since
Python 3.7): its `read`, `write` and `do_handshake` are the very calls the public wrapper makes, without
the wrapper's Python frame on every read and write, and without its set-up on every connection (a second
socket object for the descriptor, a `getpeername` check, timeout and option checks). Measured: 29.6 ->
27.8 µs of CPU per HTTPS request (one process, 100 keep-alive connections).

Where the compiled `_libssl` binding is loaded, reads and writes call libssl on the TLS object's own `SSL`
directly instead (a `Channel`, see _libssl.pyx): "nothing more to read" is a return value, not a raised
`SSLWantReadError`, the GIL is not released and re-taken around each call, and OpenSSL reads ahead (one
`read` syscall per request instead of two). Read-ahead leaves what followed a record inside OpenSSL, where
readiness does not announce it, so the transport reads while `Channel.pending()` says OpenSSL holds more:
after each record, after the handshake, and on `resume_reading`. Elsewhere (TAKO_PURE_PYTHON=1, no compiler,
another Python) the same transport calls the TLS object's methods, one record per `read` and nothing left
inside OpenSSL.

This module is one of the compiled set (compiled.py): `tls.pxd` types the transport's attributes and its
internal calls, so where the proxy runs compiled an HTTPS request's readiness callback, read, write and
hand-off to the protocol run without an interpreter frame. `TLSTransport` is therefore not a subclass of
`asyncio.Transport` (an extension type cannot have a Python base class): it is a transport by its methods,
as `h2.stream.StreamTransport` is, and `as_transport` tells the type checker so.

Closing sends close_notify, then half-closes and discards what the client still sends for a short while
(so a client still uploading sees the response, not a reset) before the socket is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

from tako.server.proxy.compiled import PURE_PYTHON_ENV, TLS_BINDING, binding_problem
from tako.server.proxy.wire import Receiver, Writer, as_receiver

# One SSL_read returns at most one record (16 KiB of plaintext). A buffer larger than that means no
# decrypted bytes are ever left inside OpenSSL after a read, where the loop could not see them.
RECV_SIZE = 65536
# With read-ahead (the libssl binding), records already inside OpenSSL that one readiness callback reads
# before leaving the rest to the next loop turn: 16 records are up to 256 KiB, so a client uploading
# faster than the proxy forwards cannot hold the loop.
RECORDS_PER_CALLBACK = 16
# Every connection of the process reads into this one buffer and copies out what it got: `read(n)` would
# allocate n bytes per call (a 64 KiB malloc for a request of a few hundred bytes, then shrunk), which put
# glibc's _int_malloc at 10% of a data-plane worker's CPU in perf through a testbed host (HTTPS, 100
# keep-alive connections). The loop runs one callback at a time, so the buffer is never shared mid-read.
_RECV_BUFFER = bytearray(RECV_SIZE)
_RECV_VIEW = memoryview(_RECV_BUFFER)
HIGH_WATER = 64 * 1024  # pause the protocol's writing above this many buffered bytes
LOW_WATER = 16 * 1024  # and resume it at or below this
LINGER_SECONDS = 2.0  # after close_notify: keep discarding the client's bytes this long at most
CLOSE_FLUSH_SECONDS = 60.0  # closing with bytes still to send: give up once the client takes none this long

_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
_FAILED = (OSError, ValueError)  # ssl.SSLError is an OSError; ValueError: the socket is already closed


class _Channel(Protocol):
    """What `_libssl.Channel` offers (see _libssl.pyx)."""

    def read(self) -> bytes | None: ...
    def write(self, data: bytes | bytearray | memoryview) -> int: ...
    def pending(self) -> bool: ...


def _channel_factory() -> Callable[[Any, int], _Channel | None] | None:
    """`_libssl.channel` where the binding is wanted, current and loads; else None (the `_ssl` methods)."""
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0") or binding_problem(TLS_BINDING) is not None:
        return None
    try:
        from tako.server.proxy._libssl import channel
    except ImportError:
        return None
    return channel  # type: ignore[no-any-return]


_make_channel = _channel_factory()


def _module_reader(tls: Any) -> Callable[[], bytes | None]:
    """`Channel.read` through the TLS object's own `read`: one record per call (see RECV_SIZE)."""
    recv = tls.read

    def read() -> bytes | None:
        try:
            return _RECV_VIEW[: recv(RECV_SIZE, _RECV_BUFFER)].tobytes()
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLEOFError:
            # Closed without close_notify: the end of the stream, as `ssl.SSLSocket` reads it by default
            # (suppress_ragged_eofs); HTTP clients often end that way once they have their response.
            return b""

    return read


def accept(
    loop: asyncio.AbstractEventLoop,
    conn: socket.socket,
    peername: Any,
    context: ssl.SSLContext,
    protocol_factory: Callable[[str | None], asyncio.Protocol],
    handshake_timeout: float | None,
    handshaking: set[TLSTransport],
) -> None:
    """Start the TLS handshake on an accepted non-blocking socket; the protocol is made once it completes,
    by `protocol_factory` given the protocol the client chose in ALPN (None: it chose none).

    The transport is in `handshaking` until then (so a server shutting down can abort it). A failed
    handshake (unknown server name, old protocol version, a port scanner) just closes the socket.
    """
    try:
        tls = context._wrap_socket(conn, True)  # type: ignore[attr-defined]  # see the module docstring
    except _FAILED:
        conn.close()
        return
    TLSTransport(loop, conn, tls, peername, protocol_factory, handshake_timeout, handshaking)


def as_transport(transport: TLSTransport) -> asyncio.Transport:
    """A `TLSTransport` is an asyncio transport by its methods (the ones the proxy's protocols call)."""
    return cast(asyncio.Transport, transport)


class TLSTransport(Writer):
    """One server-side TLS connection driven by socket readiness (an `asyncio.Transport` by its methods)."""

    __slots__ = (
        "__weakref__",  # the TLS object's `owner`
        "_buffer",
        "_buffer_size",
        "_closing",
        "_eof",
        "_factory",
        "_fd",
        "_handshaking",
        "_high_water",
        "_loop",
        "_lost",
        "_low_water",
        "_on_read",
        "_on_write",
        "_peername",
        "_pending",
        "_protocol",
        "_reading",
        "_receiver",
        "_recv",
        "_send",
        "_sock",
        "_timer",
        "_tls",
        "_write_paused",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        tls: Any,
        peername: Any,
        protocol_factory: Callable[[str | None], asyncio.Protocol],
        handshake_timeout: float | None,
        handshaking: set[TLSTransport],
    ) -> None:
        self._loop = loop
        self._sock = sock  # owns the descriptor; the TLS object holds only a weak reference to it
        self._tls = tls  # `_ssl._SSLSocket`: read, write, do_handshake, shutdown, pending, context, ...
        self._fd = sock.fileno()
        self._factory = protocol_factory
        self._protocol: asyncio.Protocol | None = None
        self._receiver: Receiver | None = None  # the protocol's data_received, once the handshake is done
        channel = _make_channel(tls, self._fd) if _make_channel is not None else None  # None: `_ssl`'s own
        self._recv = _module_reader(tls) if channel is None else channel.read
        self._send = tls.write if channel is None else channel.write
        # Whether OpenSSL holds received bytes that no readiness will announce (it reads ahead where the
        # binding is loaded); None: it never does (through `_ssl`, one record per read, see RECV_SIZE).
        self._pending = None if channel is None else channel.pending
        self._buffer: list[bytes | bytearray | memoryview] = []  # waiting for the socket to be writable
        self._buffer_size = 0
        self._high_water = HIGH_WATER
        self._low_water = LOW_WATER
        self._reading = True  # what the protocol asked for (pause_reading / resume_reading)
        self._write_paused = False  # the protocol was told pause_writing()
        self._closing = False  # close() or abort() was called, or the connection failed
        self._eof = False  # the client finished sending (close_notify or end of stream)
        self._lost = False  # the socket is closed and connection_lost scheduled
        self._on_read: Callable[[], None] | None = None  # what the loop calls when readable / writable
        self._on_write: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # the handshake deadline, then the linger deadline
        self._peername = peername
        self._handshaking = handshaking
        # The SNI callback is handed the owner (else the bare socket): the transport, whose `context`
        # setter below lets the certificate store switch to the certificate for the requested name.
        tls.owner = self
        handshaking.add(self)
        if handshake_timeout:
            self._timer = loop.call_later(handshake_timeout, self._destroy)
        self._handshake()

    @property
    def context(self) -> ssl.SSLContext:
        """The connection's `SSLContext`; set by the certificate store's SNI callback."""
        return self._tls.context  # type: ignore[no-any-return]

    @context.setter
    def context(self, ctx: ssl.SSLContext) -> None:
        self._tls.context = ctx

    # -- readiness --------------------------------------------------------------------------------

    def _set_reader(self, callback: Callable[[], None] | None) -> None:
        if callback != self._on_read:  # bound methods: equal, not identical, across accesses
            self._on_read = callback
            if callback is None:
                self._loop.remove_reader(self._fd)
            else:
                self._loop.add_reader(self._fd, callback)

    def _set_writer(self, callback: Callable[[], None] | None) -> None:
        if callback != self._on_write:
            self._on_write = callback
            if callback is None:
                self._loop.remove_writer(self._fd)
            else:
                self._loop.add_writer(self._fd, callback)

    # -- handshake --------------------------------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._set_writer(None)
            self._set_reader(self._handshake)
            return
        except ssl.SSLWantWriteError:
            self._set_reader(None)
            self._set_writer(self._handshake)
            return
        except _FAILED:
            self._destroy()
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._handshaking.discard(self)
        self._set_writer(None)
        protocol = self._protocol = self._factory(self._tls.selected_alpn_protocol())
        self._receiver = as_receiver(protocol)  # data_received, a C call (wire.py)
        protocol.connection_made(as_transport(self))
        # Hands the socket's read readiness from the handshake straight to _read: replacing the callback
        # keeps the loop's poll handle, where removing it first would tear it down and make a new one.
        self._update_reader()
        # A request sent with the client's Finished came in with it (read-ahead): the socket will not
        # announce it again.
        self._read_pending()

    # -- reading ----------------------------------------------------------------------------------

    def _read(self) -> None:
        records = 0
        while True:
            try:
                data = self._recv()
            except ssl.SSLWantWriteError:
                # OpenSSL must write before it can read on (answering a TLS 1.3 key update): retry when
                # writable.
                self._set_writer(self._read_when_writable)
                return
            except _FAILED as exc:
                self._destroy(exc)
                return
            if data is None:
                return
            if not data:
                break
            receiver = self._receiver
            assert receiver is not None
            receiver.data_received(data)
            # With read-ahead, the records that came after this one may be inside OpenSSL already: the
            # socket will not announce them, so read them now, one record per call as the protocol takes
            # them. Not while the protocol holds reading (resume_reading comes back for them), and not
            # without end: the rest goes to the next loop turn.
            pending = self._pending
            if pending is None or not self._reading or self._closing or not pending():
                return
            records += 1
            if records == RECORDS_PER_CALLBACK:
                self._loop.call_soon(self._read_pending)
                return
        # close_notify or end of stream: the client will send nothing more.
        self._eof = True
        self._reading = False
        self._update_reader()
        protocol = self._protocol
        assert protocol is not None
        if not protocol.eof_received():
            self.close()

    def _read_pending(self) -> None:
        """Read what OpenSSL holds already, if the protocol is reading: readiness will not announce it."""
        pending = self._pending
        if pending is None or not self._reading or self._closing or self._protocol is None:
            return
        if pending():
            self._read()

    def _read_when_writable(self) -> None:
        self._set_writer(self._write_buffered if self._buffer else None)
        if self._on_read is not None:
            self._read()

    def _update_reader(self) -> None:
        wanted = self._reading and not self._closing and self._protocol is not None
        self._set_reader(self._read if wanted else None)

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._update_reader()

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._update_reader()
            # Records read ahead while reading was held are inside OpenSSL, where readiness cannot see
            # them. Read on the next loop turn, not here: the protocol may be calling from its own callback.
            if self._pending is not None and self._pending():
                self._loop.call_soon(self._read_pending)

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # -- writing ----------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if self._buffer:
            self._buffer.append(data)
            self._buffer_size += len(data)
            self._check_high_water()
            return
        try:
            sent = self._send(data)
        except _WANT:
            sent = 0  # OpenSSL keeps what it encrypted; the retry passes the same bytes again
        except _FAILED as exc:
            self._destroy(exc)
            return
        if sent < len(data):
            rest = memoryview(data)[sent:]
            self._buffer.append(rest)
            self._buffer_size = len(rest)
            self._set_writer(self._write_buffered)
            self._check_high_water()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def _write_buffered(self) -> None:
        buffer = self._buffer
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        try:
            sent = self._send(data)
        except _WANT:
            self._buffer = [data]
            return
        except _FAILED as exc:
            self._destroy(exc)
            return
        if self._closing and sent:
            self._restart_timer(CLOSE_FLUSH_SECONDS)  # the client is still taking bytes
        if sent < len(data):
            self._buffer = [memoryview(data)[sent:]]
            self._buffer_size = len(data) - sent
        else:
            self._buffer = []
            self._buffer_size = 0
            self._set_writer(None)
            if self._closing:
                self._shutdown()
                return
        if self._write_paused and self._buffer_size <= self._low_water:
            self._write_paused = False
            if self._protocol is not None:
                self._protocol.resume_writing()

    def _check_high_water(self) -> None:
        if not self._write_paused and self._buffer_size > self._high_water and self._protocol is not None:
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
        return False  # TLS has no half-close; close() sends close_notify

    def write_eof(self) -> None:
        raise NotImplementedError("a TLS connection cannot half-close; use close()")

    # -- closing ----------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is buffered, then close_notify, then linger briefly before closing the socket."""
        if self._closing:
            return
        self._closing = True
        if self._buffer:
            self._update_reader()  # nothing more is read while the rest goes out; _shutdown discards after
            self._restart_timer(CLOSE_FLUSH_SECONDS)
        else:
            # Straight on: _shutdown swaps the read callback for _discard in place, where removing it
            # first would make the loop tear its poll handle down and build a new one (seven syscalls).
            self._shutdown()

    def abort(self) -> None:
        self._destroy()

    def _shutdown(self) -> None:
        with contextlib.suppress(*_FAILED):
            # Sends close_notify; waiting for the client's then raises SSLWantReadError, which is fine.
            self._tls.shutdown()
        if self._eof:
            self._destroy()  # the client is done too: nothing to linger for
            return
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except _FAILED:
            self._destroy()
            return
        self._set_reader(self._discard)
        self._restart_timer(LINGER_SECONDS)

    def _restart_timer(self, seconds: float) -> None:
        """Close the connection `seconds` from now (replacing the previous deadline)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(seconds, self._destroy)

    def _discard(self) -> None:
        try:
            data = os.read(self._fd, RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._destroy()

    def _destroy(self, exc: Exception | None = None) -> None:
        """Close the socket now; the protocol (if any) hears connection_lost on the next loop turn."""
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._set_reader(None)
        self._set_writer(None)
        self._buffer = []
        self._buffer_size = 0
        # No read or write reaches the Channel after this (the callbacks are gone and `_closing` is set):
        # its SSL still names the descriptor's number, which the next accepted socket may reuse.
        self._sock.close()
        self._handshaking.discard(self)
        if self._protocol is not None:
            self._loop.call_soon(self._protocol.connection_lost, exc)

    # -- the rest of asyncio.Transport ------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._tls
        if name == "socket":
            return self._sock
        if name == "sslcontext":
            return self._tls.context
        if name == "peercert":
            return self._tls.getpeercert()
        if name == "cipher":
            return self._tls.cipher()
        if name == "peername":
            return self._peername
        if name == "sockname":
            try:
                return self._sock.getsockname()
            except _FAILED:
                return default
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol
        self._receiver = as_receiver(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def __repr__(self) -> str:
        state = "closing" if self._closing else "open"
        return f"<TLSTransport fd={self._fd} {state} peer={self._peername}>"
