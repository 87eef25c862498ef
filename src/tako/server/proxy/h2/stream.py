"""`StreamTransport`: one HTTP/2 stream, seen by a `ClientConnection` as a keep-alive connection.

The stream's request is handed to an ordinary `ClientConnection` as the fields libnghttp2 decoded
(`ClientConnection.h2_request`, then `h2_body` and `h2_end`), which runs them through what its HTTP/1.1
parser's callbacks do, so routing, limits, request ids, access logs, counters, maintenance, error pages,
cold starts, body buffering and timeouts are the HTTP/1.1 ones, not a second copy. A transport whose
stream ended whole carries a later stream of the same connection, as a keep-alive connection carries its
next request. The instance's usual response (a Content-Length, or no body) has its head handed over as
the fields the upstream parser read (`respond_fields`, called by upstream.py) and its body written; what
else that connection writes back (a chunked, close-delimited or compressed response as the upstream side
re-frames it, interim 1xx heads, a local answer) is HTTP/1.1 text, read here. Either way it is submitted
to the HTTP/2 session: the head as a HEADERS frame (names lower-case, connection-specific fields dropped),
the body as DATA frames as the client's windows allow.

Flow control both ways: a response body the client does not take stays queued in the session; above the
connection's write limit the ClientConnection is told `pause_writing` and stops reading the instance.
Request body bytes are acknowledged to the client (WINDOW_UPDATE) only once the ClientConnection took
them; while it has paused reading they wait here, bounded by the stream's window.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import httptools


class StreamProtocol(Protocol):
    """What a stream uses of its `ClientConnection` (client.py, which imports this module through
    upstream.py: an upstream connection hands a stream's response head to `respond_fields`)."""

    @property
    def cycle(self) -> object: ...  # the request in progress, or None
    @property
    def parsing(self) -> object: ...  # a request being received, or None
    @property
    def broken(self) -> bool: ...

    def h2_request(
        self, method: bytes, path: bytes, authority: bytes | None, fields: list[bytes], end_stream: bool
    ) -> None: ...
    def h2_body(self, data: bytes) -> None: ...
    def h2_end(self) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...


class StreamOwner(Protocol):
    """What a stream uses of its HTTP/2 connection (`connection.H2Connection`, which imports this module)."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    session: Any  # _nghttp2.Session
    paused: set[StreamTransport]
    flush_scheduled: bool  # a flush() is scheduled for this loop turn

    def schedule_flush(self) -> None: ...
    def flush(self) -> None: ...
    def consumed(self, stream_id: int, n: int) -> None: ...
    def reset(self, stream_id: int) -> None: ...
    def end_early(self, stream_id: int) -> None: ...
    def discard_idle(self, stream: StreamTransport) -> None: ...


class _HeadDone(Exception):
    """Stops the response parser after the head of a response to HEAD (it has no body)."""


class StreamTransport:
    """The transport a stream's ClientConnection reads its request from and writes its response to."""

    __slots__ = (
        "closed",
        "done",
        "h2",
        "has_body",
        "head",
        "head_at",
        "held",
        "high_water",
        "in_head",
        "is_head",
        "low_water",
        "owed",
        "parser",
        "protocol",
        "reading",
        "request_ended",
        "stream_id",
        "write_paused",
    )

    def __init__(self, h2: StreamOwner) -> None:
        self.h2 = h2
        self.stream_id = 0  # 0 while idle (between streams)
        self.is_head = False
        self.protocol: StreamProtocol = None  # type: ignore[assignment]  # set by H2Connection
        self.parser = httptools.HttpResponseParser(self)
        self.head = b""  # the response's bytes while its head is incomplete
        self.head_at = 0  # where in `head` the message being parsed starts (after interim responses)
        self.in_head = True
        self.has_body = False
        self.owed = 0  # body bytes still to come of a response submitted without the parser (write)
        self.done = True  # the whole response is submitted to the session (none is owed while idle)
        self.closed = False  # the ClientConnection is told (or about to be told) connection_lost
        self.request_ended = True
        self.reading = True
        # Request body bytes and their window share, unread (None: the end of the request).
        self.held: list[tuple[bytes | None, int]] = []
        self.high_water = 65536
        self.low_water = 16384
        self.write_paused = False

    def bind(self, stream_id: int, is_head: bool, end_stream: bool) -> None:
        """Carry the request of `stream_id` next (a new transport, or one whose last stream ended whole)."""
        if self.is_head:
            self.parser = httptools.HttpResponseParser(self)  # stopped after the head (_HeadDone)
        self.stream_id = stream_id
        self.is_head = is_head
        self.done = False
        self.has_body = False
        self.request_ended = end_stream
        self.head = b""
        self.head_at = 0
        self.in_head = True
        self.owed = 0

    def reusable(self) -> bool:
        """Whether the stream ended whole and its ClientConnection waits for a next request, like a
        keep-alive connection: it then carries a later stream of the same connection. Measured: making a
        ClientConnection and two parsers per stream was ~10 % of the CPU under h2load."""
        conn = self.protocol
        return (
            self.done
            and self.request_ended
            and not self.closed
            and not self.write_paused
            and not self.held
            and self.reading
            and conn.cycle is None
            and conn.parsing is None
            and not conn.broken
        )

    # -- the request, from the session ------------------------------------------------------------

    def on_data(self, data: bytes) -> None:
        if self.reading and not self.held:
            self._deliver(data, len(data))
        else:
            self.held.append((data, len(data)))

    def on_end(self) -> None:
        self.request_ended = True
        if self.reading and not self.held:
            self._deliver(None, 0)
        else:
            self.held.append((None, 0))

    def _deliver(self, data: bytes | None, window: int) -> None:
        if not self.closed:
            if data is None:
                self.protocol.h2_end()
            else:
                self.protocol.h2_body(data)
        if window:
            self.h2.consumed(self.stream_id, window)

    def _deliver_held(self) -> None:
        while self.held and self.reading and not self.closed:
            data, window = self.held.pop(0)
            self._deliver(data, window)

    # -- asyncio.Transport, as the ClientConnection uses it -----------------------------------------

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            if self.held:
                # Not from inside the ClientConnection's own call (it may be a parser callback).
                self.h2.loop.call_soon(self._deliver_held)

    def is_reading(self) -> bool:
        return self.reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high_water = 65536 if high is None else high
        self.low_water = self.high_water // 4 if low is None else low

    def get_write_buffer_size(self) -> int:
        return self.h2.session.queued(self.stream_id)  # type: ignore[no-any-return]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # The addresses only: the socket and the TLS object carry the whole HTTP/2 connection, and a
        # stream that wrote to them (sendfile, say) would corrupt every other stream on it.
        if name in ("peername", "sockname"):
            return self.h2.transport.get_extra_info(name, default)
        return default

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("an HTTP/2 stream's response ends with its body")

    def is_closing(self) -> bool:
        return self.closed

    def writelines(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def write(self, data: bytes) -> None:
        if self.closed or self.done:
            return
        if self.owed:
            self._more_body(data)
            return
        if self.in_head and not self.head:
            # The usual response (a whole head, a body with a length) is submitted by the session without
            # the HTTP/1.1 parser; it declines (-1) what needs the parser.
            h2 = self.h2
            owed = h2.session.respond_message(self.stream_id, data, self.is_head)
            if owed >= 0:
                self.in_head = False
                self.owed = owed
                if owed:
                    self._queued(h2.session.queued(self.stream_id))
                else:
                    self.done = True
                if not h2.flush_scheduled:  # h2.schedule_flush(), without a call per stream
                    h2.flush_scheduled = True
                    h2.loop.call_soon(h2.flush)
                return
        if self.in_head:
            self.head = self.head + data if self.head else data  # until the head is complete (rarely split)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, ValueError):
            if not self.done:  # not the end of a response to HEAD: a response that is not HTTP
                self.abort()
                return
        self.h2.schedule_flush()

    def respond_fields(
        self, status: int, lines: bytes, request_id: bytes, length: bytes | None, has_body: bool
    ) -> bool:
        """The final response head as the upstream connection read it, submitted without being written out
        as HTTP/1.1 text and read again (upstream.py, `_head_to_stream`): `lines`, "Name: value\r\n" each,
        without the connection-specific ones, `length` the Content-Length to send (None:
        none), `has_body`: a body of that length follows through write(). False, with nothing submitted,
        where the head must go as text after all (a Content-Length that is not a plain number)."""
        if self.closed or self.done:
            return True  # as write() drops what comes after the stream is gone
        h2 = self.h2
        owed: int = h2.session.respond_fields(self.stream_id, status, lines, request_id, length, has_body)
        if owed < 0:
            return False
        if self.head:
            # Interim responses (1xx) went before as text, through the parser; it is between messages.
            self.head = b""
            self.head_at = 0
        self.in_head = False
        self.owed = owed
        if not owed:
            self.done = True
        if not h2.flush_scheduled:  # h2.schedule_flush(), without a call per stream
            h2.flush_scheduled = True
            h2.loop.call_soon(h2.flush)
        return True

    def _more_body(self, data: bytes) -> None:
        """Body bytes of a response whose head went without the parser (its Content-Length counts them)."""
        if len(data) > self.owed:
            self.abort()  # more than the head said: never passed on
            return
        self.owed -= len(data)
        if not self.owed:
            self.done = True
        self._queued(self.h2.session.body(self.stream_id, data, not self.owed))
        self.h2.schedule_flush()

    def close(self) -> None:
        """The ClientConnection is done: the response went whole, or it is cut off (reset the stream)."""
        if self.closed:
            return
        self.closed = True
        if not self.done:
            self.h2.reset(self.stream_id)
        elif not self.request_ended and self.stream_id:
            # Answered before the request ended (413, say): once the answer is out, tell the client to
            # stop sending, or the stream would stay open, and the connection with it, for good.
            self.h2.end_early(self.stream_id)
        if not self.stream_id:
            self.h2.discard_idle(self)  # closed between streams (keep-alive timeout, server shutdown)
        self.h2.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.stream_id:
            if not self.done:
                self.h2.reset(self.stream_id)
        else:
            self.h2.discard_idle(self)
        self.done = True
        self.h2.loop.call_soon(self.protocol.connection_lost, None)

    def peer_closed(self) -> None:
        """The session closed the stream (reset by the client, or the connection is gone)."""
        if not self.closed:
            self.closed = True
            self.done = True
            self.protocol.connection_lost(None)

    def drained(self) -> None:
        """Called by H2Connection after writing to the socket while this stream's writing is paused."""
        if self.write_paused and self.h2.session.queued(self.stream_id) <= self.low_water:
            self.write_paused = False
            self.h2.paused.discard(self)
            if not self.closed:
                self.protocol.resume_writing()

    # -- httptools callbacks: the HTTP/1.1 response the ClientConnection writes -----------------------
    # (No on_header: the session reads the fields from the head's bytes, see Session.respond_head.)

    def on_headers_complete(self) -> None:
        head = self.head
        end = head.index(b"\r\n\r\n", self.head_at)
        status: int = self.h2.session.respond_head(self.stream_id, head, self.head_at, end, self.is_head)
        if status < 200:
            self.head_at = end + 4  # an interim response (100 Continue, 103 Early Hints); the final follows
            return
        self.head = b""
        self.head_at = 0
        self.in_head = False
        self.has_body = not (self.is_head or status == 204 or status == 304)
        if not self.has_body:
            self.done = True
            if self.is_head:
                raise _HeadDone

    def on_body(self, body: bytes) -> None:
        self._queued(self.h2.session.body(self.stream_id, body, False))

    def _queued(self, queued: int) -> None:
        """Past the write limit, the ClientConnection stops reading the instance until the client takes it."""
        if queued > self.high_water and not self.write_paused and not self.closed:
            self.write_paused = True
            self.h2.paused.add(self)
            self.protocol.pause_writing()

    def on_message_complete(self) -> None:
        if self.has_body:
            self.h2.session.body(self.stream_id, b"", True)
            self.done = True


def as_transport(stream: StreamTransport) -> asyncio.Transport:
    """A stream is an asyncio transport by its methods (the ones ClientConnection calls)."""
    return stream  # type: ignore[return-value]
