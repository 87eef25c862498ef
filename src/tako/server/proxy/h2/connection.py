"""`H2Connection`: one HTTP/2 client connection on the HTTPS listener (ALPN `h2`).

The session (libnghttp2, `_nghttp2.Session`) parses frames and calls back here; each request stream gets
a `StreamTransport` and an ordinary `ClientConnection` on it (stream.py), so a stream is proxied exactly
like an HTTP/1.1 request, to the same pooled HTTP/1.1 upstream connections. What the session has to
send is taken once per loop turn in which anything was queued (one TLS write for all the streams that
answered in that turn), or at once after each read from the client.

Limits (docs/proxy.md, "HTTP/2"): at most MAX_STREAMS concurrent streams (more are refused); a request
header block larger than max_header_bytes, or with more than max_headers fields, is answered 431 without
being kept; RST_STREAM from the client is rate-limited (a token bucket, RESET_BURST then RESET_RATE per
second) and past it the connection gets GOAWAY; CONTINUATION, SETTINGS and PING floods are bounded by
libnghttp2. The connection is in the server's `connections` like an HTTP/1.1 one: the sweeper closes it
after `keepalive_timeout` without a stream (GOAWAY first) or `header_timeout` before the first, and drops
it when the client takes nothing of what is written for `keepalive_timeout`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from tako.server.proxy import native, responses
from tako.server.proxy.client import _DEADLINE_HEADER, _DEADLINE_KEEPALIVE, ClientConnection
from tako.server.proxy.h2._nghttp2 import Session
from tako.server.proxy.h2.stream import StreamTransport, as_transport

if TYPE_CHECKING:
    from tako.server.proxy.client import ConnectionHost

log = logging.getLogger("tako.server.proxy")

MAX_STREAMS = 128  # SETTINGS_MAX_CONCURRENT_STREAMS, as nginx's http2_max_concurrent_streams
STREAM_WINDOW = 256 * 1024  # request body bytes a stream may have unacknowledged
CONNECTION_WINDOW = 4 * 1024 * 1024  # and all streams of a connection together: what it can hold unread
# Finished streams' transports (each with its ClientConnection and parsers, a few KB) kept for the next
# streams: enough for browsers' usual concurrency; more concurrent streams make new ones.
IDLE_STREAMS_MAX = 32
RESET_BURST = 256  # RST_STREAM frames from the client allowed at once
RESET_RATE = 32  # and per second after that
_NO_ERROR = 0
_PROTOCOL_ERROR = 1
_INTERNAL_ERROR = 2
_REFUSED_STREAM = 7
_CALM = 11  # ENHANCE_YOUR_CALM
_FLOODS = (-904, -905)  # NGHTTP2_ERR_FLOODED, NGHTTP2_ERR_TOO_MANY_CONTINUATIONS
# The deadline kinds are ClientConnection's: a hand-over waits for connections whose deadline is still
# the header one (their first request has not come yet).


class H2Connection:
    """An asyncio protocol by its methods (TLSTransport calls them), like ClientConnection."""

    __slots__ = (
        "answered_early",
        "closed",
        "cycle",
        "deadline",
        "deadline_kind",
        "flush_scheduled",
        "going_away",
        "idle",
        "loop",
        "paused",
        "send_deadline",
        "server",
        "session",
        "streams",
        "transport",
        "write_blocked",
    )

    def __init__(self, server: ConnectionHost) -> None:
        self.server = server
        self.loop = server.loop
        settings = server.settings
        self.session = Session(
            self,
            max_streams=MAX_STREAMS,
            stream_window=STREAM_WINDOW,
            connection_window=CONNECTION_WINDOW,
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            reset_burst=RESET_BURST,
            reset_rate=RESET_RATE,
        )
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.streams: dict[int, StreamTransport] = {}
        # Transports (and their ClientConnections) whose stream ended whole, for the next streams.
        self.idle: list[StreamTransport] = []
        self.paused: set[StreamTransport] = set()  # streams whose ClientConnection was told pause_writing
        self.answered_early: set[int] = set()  # streams to reset once their response is out (end_early)
        self.flush_scheduled = False
        self.write_blocked = False  # the socket's buffer is full: take nothing more from the session
        self.closed = False
        self.going_away = False  # GOAWAY sent: close once the streams are done
        self.cycle = None  # what the server's sweeper and hand-over read of every connection
        self.deadline = 0.0
        self.deadline_kind = 0
        self.send_deadline = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)  # type: ignore[arg-type]  # swept like a ClientConnection
        self.deadline = native.now() + self.server.settings.header_timeout
        self.deadline_kind = _DEADLINE_HEADER
        if self.server.shutting_down:
            self.shutdown()
        self.flush()  # the server's SETTINGS

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        code = self.session.receive(data)
        if self.session.error is not None:
            self._failed()
            return
        if code < 0:
            # Fatal for the session (a frame flood, too many CONTINUATIONs, not HTTP/2 at all): say why
            # with the one GOAWAY it can still send, then close.
            self.session.terminate(_CALM if code in _FLOODS else _PROTOCOL_ERROR)
        self.flush()

    def _failed(self) -> None:
        """A callback raised (a bug): log it, end the session with GOAWAY INTERNAL_ERROR, close."""
        error = self.session.error
        self.session.error = None
        log.error("HTTP/2 connection failed", exc_info=error)
        self.session.terminate(_INTERNAL_ERROR)
        if (data := self.session.send()) and not self.write_blocked:
            self.transport.write(data)
        self.closed = True
        self.transport.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)  # type: ignore[arg-type,unused-ignore]
        streams = [*self.streams.values(), *self.idle]
        self.streams.clear()
        self.idle.clear()
        self.paused.clear()
        for stream in streams:
            stream.peer_closed()

    def pause_writing(self) -> None:
        self.write_blocked = True
        self.send_deadline = native.now() + self.server.settings.keepalive_timeout

    def resume_writing(self) -> None:
        self.write_blocked = False
        self.send_deadline = 0.0
        self.flush()

    # -- sending ----------------------------------------------------------------------------------

    def schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what the session has to send, as far as the socket takes it."""
        self.flush_scheduled = False
        if self.closed:
            return
        session = self.session
        transport = self.transport
        while not self.write_blocked:
            data = session.send()
            if not data:
                break
            transport.write(data)
        if session.error is not None:  # raised in a callback while sending (a stream's close)
            self._failed()
            return
        if self.paused:
            for stream in list(self.paused):
                stream.drained()
        if self.answered_early and not self.write_blocked:
            self._reset_answered()
        if not session.want_io() or (self.going_away and not self.streams):
            self.closed = True
            transport.close()

    def consumed(self, stream_id: int, n: int) -> None:
        """A stream's ClientConnection took `n` request body bytes: open the client's windows again."""
        self.session.consume(stream_id, n)
        self.schedule_flush()

    def end_early(self, stream_id: int) -> None:
        """The stream's response is complete but its request is not: RST_STREAM NO_ERROR once the response
        is sent (RFC 9113, 8.1)."""
        self.answered_early.add(stream_id)
        self.schedule_flush()

    def _reset_answered(self) -> None:
        session = self.session
        for stream_id in list(self.answered_early):
            if session.queued(stream_id) == 0:  # all of the body went out with the writes above
                self.answered_early.discard(stream_id)
                session.reset(stream_id, _NO_ERROR)
        while not self.write_blocked and (data := session.send()):
            self.transport.write(data)

    def reset(self, stream_id: int) -> None:
        if not self.closed:
            self.session.reset(stream_id, _INTERNAL_ERROR)
            self.schedule_flush()

    # -- the session's callbacks ------------------------------------------------------------------

    def on_request(
        self,
        stream_id: int,
        method: bytes | None,
        path: bytes,
        authority: bytes | None,
        fields: list[bytes],
        is_head: bool,
        end_stream: bool,
    ) -> None:
        if method is None:
            self._too_large(stream_id)
            return
        stream = self.idle.pop() if self.idle else self._new_stream()
        if stream.closed:  # a server shutting down closed it at once
            self.session.reset(stream_id, _REFUSED_STREAM)
            return
        stream.bind(stream_id, is_head, end_stream)
        self.streams[stream_id] = stream
        self.deadline = 0.0
        self.deadline_kind = 0
        stream.protocol.h2_request(method, path, authority, fields, end_stream)

    def _new_stream(self) -> StreamTransport:
        stream = StreamTransport(self)
        conn = stream.protocol = ClientConnection(self.server, True, True)
        conn.connection_made(as_transport(stream))
        return stream

    def discard_idle(self, stream: StreamTransport) -> None:
        if stream in self.idle:
            self.idle.remove(stream)

    def on_data(self, stream_id: int, data: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.closed:
            self.session.consume(stream_id, len(data))  # nobody reads it: let the client go on
            return
        stream.on_data(data)

    def on_end(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_end()

    def on_close(self, stream_id: int, error_code: int) -> None:
        # Once per stream: the sets are tested before they are touched (they are nearly always empty).
        if self.answered_early:
            self.answered_early.discard(stream_id)
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            if self.paused:
                self.paused.discard(stream)
            if stream.reusable() and not self.going_away and len(self.idle) < IDLE_STREAMS_MAX:
                stream.stream_id = 0  # idle until the next stream binds it
                self.idle.append(stream)
            else:
                stream.peer_closed()
        if not self.streams:
            self.deadline = native.now() + self.server.settings.keepalive_timeout
            self.deadline_kind = _DEADLINE_KEEPALIVE

    def _too_large(self, stream_id: int) -> None:
        """A header block over the limits: answered 431 from here (nothing of it was kept)."""
        body = responses.error(431, close=False).partition(b"\r\n\r\n")[2]
        self.session.respond(
            stream_id, [b":status", b"431", b"content-type", b"text/plain; charset=utf-8"], True, True
        )
        self.session.body(stream_id, body, True)

    # -- deadlines and shutdown (the server's sweeper) ----------------------------------------------

    def on_deadline(self) -> None:
        self.deadline = 0.0
        self.deadline_kind = 0
        if not self.streams:
            self.shutdown()

    def shutdown(self) -> None:
        """Server shutdown or hand-over: GOAWAY now; close once the streams in progress are done."""
        if self.closed:
            return
        if not self.going_away:
            self.going_away = True
            self.session.goaway(_NO_ERROR)
        self.flush()

    def abort(self) -> None:
        self.closed = True
        self.transport.abort()

    def upstream_timeout(self, cycle: Any) -> None:  # pragma: no cover - an H2Connection has no cycle
        return None
