"""Upstream side of the data plane: pooled keep-alive connections to app instances.

One `UpstreamConnection` per TCP connection to an instance; it parses the response (http1_parser.py) and
writes it straight to the client's transport, re-framed (Content-Length, chunked or close-delimited); for
an HTTP/2 stream, the head of a response with a Content-Length or no body goes to the stream as its
status and fields instead (`_head_to_stream`), and only the body as bytes. One
`UpstreamPool` per instance key keeps idle connections for reuse (LIFO, idle ones closed by the sweeper).
It reaches the client connection of the request it carries only through `cycle.ClientSide`.

Every response runs through the parser callbacks and `data_received`, so that path is kept lean: the
parser classifies header names and gathers the lines to pass on in C and calls the connection once per
head, the response head is assembled from pieces and joined once per read
together with the body bytes (one write: one TLS record, or one `write` rather than a `writev` on plain
TCP), and small helpers on it are inlined where noted.

Compiled with Cython where possible, typed by upstream.pxd (see compiled.py): an attribute added to a
class here needs its line there too.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httptools

from tako.server.proxy import native
from tako.server.proxy.compression import Encoder, start_encoding
from tako.server.proxy.cycle import PAUSE_UPSTREAM, RequestCycle
from tako.server.proxy.h2.stream import StreamTransport
from tako.server.proxy.headers import PASS, as_pieces, without_headers
from tako.server.proxy.http1_parser import parser_types
from tako.server.proxy.wire import ResponseSink, Writer, as_writer

# Framing of the response towards the client. C ints when compiled (upstream.pxd): compared on every
# response, as module globals they cost 1,000 more machine instructions per request (1.3 %; callgrind's
# count over bench/proxy/hotpath.py). So they stay here, the one module that uses them.
FRAME_NONE = 0  # no body (HEAD, 204, 304)
FRAME_LENGTH = 1  # Content-Length, passed through
FRAME_CHUNKED = 2  # re-encoded as chunked
FRAME_CLOSE = 3  # body ends when the client connection closes (HTTP/1.0 client, unknown length)
FRAME_DONE = -1  # the response is complete (set in a parser callback, finished after its bytes are written)

# Idle upstream connections older than this are closed by the sweeper: below the 5 s keep-alive timeout
# of uvicorn/gunicorn, so the proxy rarely reuses a connection the app is closing at the same moment.
POOL_IDLE_SECONDS = 4.0
# What bounds a pool is that sweep: it never holds more connections than requests were in flight within the
# last few seconds. The count cap is only a guard (a quarter of the service's LimitNOFILE). A low cap
# (it was 1024) made the pool churn under thousands of client connections: each burst of requests opened
# connections that the following burst of releases closed again, so one request in ten waited for a new
# TCP connection, and the instance accepts those one at a time under load (p99 3 s at 5000 connections).
POOL_MAX_IDLE = 16384
# Idle connections closed per pool per sweep: the leftovers of a burst (thousands) go over several sweeps
# rather than in one loop turn, which would stall every request in flight for tens of milliseconds.
SWEEP_CLOSE_MAX = 128

# Response headers the proxy never passes on (hop-by-hop or re-framed); value = what to record.
_H_PASS = PASS
_H_DROP = 0
_H_CONNECTION = 1
_H_LENGTH = 2
_H_TE = 3
_RESPONSE_SPECIAL: dict[bytes, int] = {
    b"connection": _H_CONNECTION,
    b"keep-alive": _H_DROP,
    b"proxy-connection": _H_DROP,
    b"proxy-authenticate": _H_DROP,
    b"te": _H_DROP,
    b"trailer": _H_DROP,
    b"upgrade": _H_DROP,
    b"content-length": _H_LENGTH,
    b"transfer-encoding": _H_TE,
    b"x-request-id": _H_DROP,  # the client gets the id the app was sent (added to every response head)
}

# How the response parser treats header names (the arguments of its HeaderTable, http1_parser.py): no
# prefix of names to drop, and none of the special ones forwarded.
RESPONSE_HEADER_TABLE = (_RESPONSE_SPECIAL, b"", _H_PASS, _H_PASS, _H_DROP, ())
_, _ResponseParser, _HeaderTable = parser_types()
_response_header_table = _HeaderTable(*RESPONSE_HEADER_TABLE)

_CHUNK_END = b"0\r\n\r\n"
_CRLF = b"\r\n"

# The start of the status line for each status code (httptools reads at most three digits).
_STATUS_LINE_STARTS = tuple(b"HTTP/1.1 %d " % code for code in range(1000))
# How a response head ends after its X-Request-Id value, by the connection's fate (_END_*): the line's CRLF,
# then a Content-Length line's value and CRLF (_LENGTH_NAME comes before the value), or the chunked framing,
# then the Connection header the client needs, then the blank line.
_END_PLAIN = 0
_END_KEEP_ALIVE = 1  # an HTTP/1.0 client kept alive is told so
_END_CLOSE = 2
_LENGTH_NAME = b"\r\nContent-Length: "
_ENDS = (b"\r\n\r\n", b"\r\nConnection: keep-alive\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
_CHUNKED_ENDS = tuple(b"\r\nTransfer-Encoding: chunked" + end for end in _ENDS)


class _HeadDone(Exception):
    """Raised from on_head to stop the parser after a body-less response to HEAD."""


class UpstreamPool:
    """Idle keep-alive connections to one instance."""

    __slots__ = ("family", "host", "idle", "key", "last_used", "loop", "port")

    def __init__(self, key: str, host: str, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.key = key
        self.host = host
        self.port = port
        self.family = ip_family(host)  # 0: a name, connected to through the loop (it resolves it)
        self.idle: list[UpstreamConnection] = []
        self.last_used = 0.0

    def acquire(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed:
            return
        if not conn.request_complete or conn.cycle is not None:
            conn.close()  # out of step with the app: the next request would be read as this one's rest
            return
        if len(self.idle) >= POOL_MAX_IDLE:
            conn.close()
            return
        now = native.now()
        conn.idle_since = now
        self.last_used = now
        self.idle.append(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle longer than POOL_IDLE_SECONDS (oldest are at the front), at most
        SWEEP_CLOSE_MAX of them."""
        idle = self.idle
        cutoff = now - POOL_IDLE_SECONDS
        n = 0
        limit = min(len(idle), SWEEP_CLOSE_MAX)
        while n < limit and idle[n].idle_since < cutoff:
            idle[n].close()
            n += 1
        if n:
            del idle[:n]

    def close_all(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class UpstreamConnection(ResponseSink):
    """One keep-alive connection to an instance, carrying one request at a time (no upstream pipelining).

    An asyncio protocol by its methods; not a subclass of asyncio.Protocol so that it can be compiled as an
    extension type (upstream.pxd). A `ResponseSink` (its transport and its parser call it) and its
    transport's `Writer` (wire.py): C calls each way.
    """

    __slots__ = (
        "_chunked",
        "_conn_close",
        "_conn_tokens",
        "_encoder",
        "_frame",
        "_got_bytes",
        "_head_done",
        "_keep_alive",
        "_length",
        "_out",
        "_reason",
        "_status",
        "_until_close",
        "closed",
        "connecting",
        "cycle",
        "deadline",
        "idle_since",
        "parser",
        "pool",
        "request_complete",
        "requests",
        "transport",
        "tunnel",
        "write_paused",
        "writer",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.writer: Writer = None  # type: ignore[assignment]  # the transport's write (wire.py), too
        self.parser = _ResponseParser(self, _response_header_table)
        self.cycle: RequestCycle | None = None
        self.closed = False
        # The open in progress (upstream_connect.PendingConnect), told when the transport exists.
        self.connecting: object = None
        self.requests = 0  # requests completed on this connection: > 0 means it came from the pool
        # The request last attached was sent whole, exactly as its head framed it (head, the body it
        # announced, chunk terminator included). Set only where its last byte is written (attach, or
        # ClientConnection.on_message_complete): UpstreamPool.release takes nothing else back, so a
        # connection the app still reads a body from is never handed to another request.
        self.request_complete = True  # nothing sent yet: in step
        self.idle_since = 0.0
        self.deadline = 0.0  # upstream response deadline (native.now), 0 = none
        self.write_paused = False
        self.tunnel = False
        self._reason = b""
        self._length: bytes | None = None
        self._chunked = False
        self._conn_close = False
        self._conn_tokens: list[bytes] | None = None
        self._encoder: Encoder | None = None  # the response's body is compressed (compression.py)
        self._frame = FRAME_NONE
        self._status = 0
        self._keep_alive = False
        self._until_close = False
        self._head_done = False
        self._got_bytes = False
        self._out: list[bytes] = []

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.writer = as_writer(transport)
        connecting = self.connecting
        if connecting is not None:
            self.connecting = None
            connecting.made(self)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        cycle = self.cycle
        if cycle is None:
            return
        self.cycle = None
        if self.tunnel:
            cycle.conn.tunnel_closed()
            return
        if self._until_close and cycle.response_started:
            # A close-delimited response ends with the connection.
            if self._encoder is not None:
                self._end_encoding()
                _flush(cycle, self._out)
                self._out.clear()
            if self._frame == FRAME_CHUNKED:
                cycle.conn.transport.write(_CHUNK_END)
            cycle.conn.response_complete(cycle)
            return
        cycle.conn.upstream_failed(cycle, retryable=not self._got_bytes and self.requests > 0)

    def eof_received(self) -> bool | None:
        return None  # the instance closed its side: close ours too (connection_lost follows)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.cycle is not None:
            self.cycle.conn.pause(PAUSE_UPSTREAM)

    def resume_writing(self) -> None:
        self.write_paused = False
        cycle = self.cycle
        if cycle is not None:
            if cycle.body is not None:
                cycle.conn.pump_body(cycle)  # a buffered request body: the next chunks of its file
            cycle.conn.resume(PAUSE_UPSTREAM)

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if self.tunnel:
            if cycle is not None:
                conn = cycle.conn
                conn.transport.write(data)
                conn.tunnel_active = True
                cycle.bytes_out += len(data)
            return
        if cycle is None:
            # Bytes with no request outstanding: the connection is out of step; never reuse it.
            self.close()
            return
        self._got_bytes = True
        out = self._out
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if out:
                _flush(cycle, out)
                out.clear()
            self._start_tunnel(cycle, data[exc.args[0] :])
            return
        except httptools.HttpParserError:
            self._parser_stopped(cycle, out)
            return
        if out:
            # _flush, inline: this is every response's path.
            payload = out[0] if len(out) == 1 else native.join_list(out)
            cycle.bytes_out += len(payload)
            cycle.conn.writer.write(payload)
            native.clear(out)
        if self._frame == FRAME_DONE:
            # The response completed inside feed_data; finish after its bytes were written.
            self._finish_response(cycle)

    def _parser_stopped(self, cycle: RequestCycle, out: list[bytes]) -> None:
        """The parser stopped with an error: the end of a response to HEAD, stray bytes after a complete
        response (delivered; the connection is not reused), or a malformed response."""
        if self._head_done:
            # Not an error: the body-less response to HEAD is complete (see on_head).
            self._head_done = False
            self.parser = _ResponseParser(self, _response_header_table)
        elif self._frame == FRAME_DONE:
            self._keep_alive = False
        else:
            out.clear()
            self.close()
            self.cycle = None
            if cycle.response_started:
                cycle.conn.abort()
            else:
                cycle.conn.upstream_failed(cycle, retryable=False, bad_response=True)
            return
        _flush(cycle, out)
        out.clear()
        self._finish_response(cycle)

    # -- request side -----------------------------------------------------------------------------

    def attach(self, cycle: RequestCycle, sent: int = 0) -> None:
        """Send `cycle`'s request head (and any body received so far) on this connection; `sent`: bytes of a
        body-less request's head already written to the socket before the transport existed."""
        self.cycle = cycle
        cycle.uconn = self
        self.request_complete = False
        self._got_bytes = False
        self._frame = FRAME_NONE
        self.deadline = 0.0
        conn = cycle.conn
        transport = self.transport
        if conn.write_paused:
            transport.pause_reading()
        if cycle.body is not None:
            conn.send_body(cycle)  # the head, then the body held so far (all of it, when buffered)
        else:
            if sent == 0:
                self.writer.write(cycle.head)
            elif sent < len(cycle.head):
                transport.write(cycle.head[sent:])
            if cycle.body_done:
                self.end_request(cycle)
                conn.request_sent(cycle)
        if self.write_paused:
            conn.pause(PAUSE_UPSTREAM)

    def end_request(self, cycle: RequestCycle) -> None:
        """The client's request is complete and all of its body written: end the body on the wire and
        record whether it went exactly as the head framed it (the only place `request_complete` is set)."""
        if cycle.chunked:
            self.transport.write(_CHUNK_END)  # the proxy re-chunks, so its own terminator ends it exactly
            self.request_complete = True
        else:
            length = cycle.content_length
            self.request_complete = cycle.body_received == (length if length is not None else 0)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.cycle = None
        self.transport.abort()

    # -- parser callbacks (http1_parser.py) --------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._frame == FRAME_DONE:
            raise _HeadDone  # bytes after the complete response: handled in data_received
        self._length = None
        self._chunked = False
        self._conn_close = False
        self._conn_tokens = None
        self._reason = b""
        self._until_close = False

    def on_head(
        self, status: int, reason: bytes, keep_alive: bool, upgrade: bool, block: bytes, specials: list[Any]
    ) -> None:
        """The response's head, parsed: `block`, the header lines to pass on; `specials`, kind, value, ...
        of the framing headers (http1_parser.py)."""
        cycle = self.cycle
        assert cycle is not None
        self._reason = reason
        for i in range(0, len(specials), 2):
            kind = specials[i]
            value = specials[i + 1]
            if kind == _H_LENGTH:
                self._length = value.strip()
            elif kind == _H_TE:
                # Chunked only if that is the last coding, as the parser reads it; otherwise the body runs
                # until the app closes (and is re-framed as such). The last Transfer-Encoding line decides.
                self._chunked = value == b"chunked" or value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
            elif kind == _H_CONNECTION:
                if value == b"keep-alive":
                    continue  # the common value, which needs nothing recorded (the parser reads it too)
                lvalue = value.lower()
                if lvalue == b"keep-alive":
                    continue
                for token in lvalue.split(b","):
                    token = token.strip()
                    if token == b"close":
                        self._conn_close = True
                    elif token and token not in (b"keep-alive", b"upgrade"):
                        if self._conn_tokens is None:
                            self._conn_tokens = []
                        self._conn_tokens.append(token)
        # The head's lines as one piece; split into name, ": ", value, CRLF only where they are rewritten.
        headers = [block] if block else []
        self._status = status
        self._keep_alive = keep_alive
        self.deadline = 0.0
        if self._conn_tokens is not None:
            headers = without_headers(as_pieces(headers), self._conn_tokens)
        if status < 200:
            self._informational(cycle, status, headers)
            return
        accept = cycle.accept_encoding  # None: the one test a response pays for compression
        encoder = None if accept is None else _encoder_for(cycle, accept, status, headers, self._length)
        self._encoder = encoder
        cycle.response_started = True
        cycle.status = status
        if cycle.upgrade is not None:
            # The app declined the upgrade: the client parser is already past the request, so close after.
            cycle.keep_alive = False
        out = self._out
        stream: object = cycle.conn.transport  # a StreamTransport for an HTTP/2 stream
        if (
            type(stream) is StreamTransport
            and encoder is None
            and not self._chunked
            and self._head_to_stream(cycle, stream, status, headers, out)
        ):
            if cycle.is_head:
                self._head_done = True
                raise _HeadDone
            return
        # The head is one bytes object, joined from a tuple of at most 9 pieces (native.join: one copy each,
        # in C where compiled; CPython's own join takes up to 10 without a heap allocation; no list grown
        # piece by piece); it goes into the output, joined once per read with the body bytes: one write per
        # read. On plain TCP, too, that costs less than
        # the copy it saves (a `writev` of head and body measured 1 µs more per request than one `write`).
        length: bytes | None = None  # the Content-Length line's value, if the head has one
        if cycle.is_head or status == 204 or status == 304:
            frame = FRAME_NONE
            if status != 204:
                length = self._length
        elif self._chunked:
            frame = FRAME_CHUNKED if not cycle.http10 else FRAME_CLOSE
        elif self._length is not None and encoder is None:
            frame = FRAME_LENGTH
            length = self._length
        else:  # no length (the body ends when the app closes), or an encoded one's, known only at its end
            self._until_close = self._length is None
            frame = FRAME_CHUNKED if not cycle.http10 else FRAME_CLOSE
        if frame == FRAME_CLOSE:
            cycle.keep_alive = False
        if not cycle.keep_alive or cycle.conn.server.shutting_down:
            cycle.keep_alive = False
            end = _END_CLOSE
        elif cycle.http10:
            end = _END_KEEP_ALIVE
        else:
            end = _END_PLAIN
        lines = headers[0] if len(headers) == 1 else b"".join(headers)
        request_id = cycle.request_id or b"-"  # set by _build_head, always
        start = _STATUS_LINE_STARTS[status]
        if length is not None:
            head = native.join(
                (
                    start,
                    self._reason,
                    _CRLF,
                    lines,
                    b"X-Request-Id: ",
                    request_id,
                    _LENGTH_NAME,
                    length,
                    _ENDS[end],
                )
            )
        elif frame == FRAME_CHUNKED:
            head = native.join(
                (start, self._reason, _CRLF, lines, b"X-Request-Id: ", request_id, _CHUNKED_ENDS[end])
            )
        else:
            head = native.join((start, self._reason, _CRLF, lines, b"X-Request-Id: ", request_id, _ENDS[end]))
        out.append(head)
        self._frame = frame
        if cycle.is_head:
            # The parser is not told that a response to HEAD has no body: it is stopped here.
            self._head_done = True
            raise _HeadDone

    def _head_to_stream(
        self,
        cycle: RequestCycle,
        stream: StreamTransport,
        status: int,
        headers: list[bytes],
        out: list[bytes],
    ) -> bool:
        """An HTTP/2 stream's final response head with a Content-Length or no body: its status and fields
        go to the stream as they are (`StreamTransport.respond_fields`), not as HTTP/1.1 text the stream
        reads again. False where the text path is taken instead (no length: the body runs until the app
        closes; or the stream declines the length). `cycle.bytes_out` counts the head this replaces, so the
        access log and counters read what they read for the text. Measured under callgrind (h2load, 10 x 10
        streams): docs/proxy.md, "HTTP/2"."""
        length = self._length
        no_body = cycle.is_head or status == 204 or status == 304
        if length is None and not no_body:
            return False
        if status == 204:
            length = None  # as on the text path: never a Content-Length on a 204
        if out:
            # Interim (1xx) responses of this read go first, as text (the stream's parser reads those).
            _flush(cycle, out)
            out.clear()
        request_id = cycle.request_id or b"-"
        if not stream.respond_fields(status, b"".join(headers), request_id, length, not no_body):
            return False
        close = not cycle.keep_alive or cycle.conn.server.shutting_down
        # The text: status line, the fields, X-Request-Id, Content-Length, then "Connection: close" or the
        # blank line alone.
        size = len(_STATUS_LINE_STARTS[status]) + len(self._reason) + 18 + len(request_id)
        for piece in headers:
            size += len(piece)
        if length is not None:
            size += 18 + len(length)
        size += 21 if close else 2
        cycle.bytes_out += size
        if close:
            cycle.keep_alive = False
        self._frame = FRAME_NONE if no_body else FRAME_LENGTH
        return True

    def _informational(self, cycle: RequestCycle, status: int, headers: list[bytes]) -> None:
        """A 1xx response: the 101 that starts a tunnel, or an interim one (100 Continue, 103 Early Hints)."""
        if status == 101:
            if cycle.upgrade is None:
                raise httptools.HttpParserError("101 without an upgrade request")
            self._out.append(
                b"HTTP/1.1 101 %s\r\n%sX-Request-Id: %s\r\nConnection: upgrade\r\nUpgrade: %s\r\n\r\n"
                % (self._reason, b"".join(headers), cycle.request_id or b"-", cycle.upgrade)
            )
            cycle.response_started = True
            return
        # Interim responses go to HTTP/1.1 clients as they are.
        if not cycle.http10:
            self._out.append(b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, self._reason, b"".join(headers)))

    def on_body(self, body: bytes) -> None:
        if self._encoder is not None:
            body = self._encoder.chunk(body)
            if not body:
                return  # an empty chunk would end a chunked body
        if self._frame == FRAME_CHUNKED:
            self._out.extend((b"%x\r\n" % len(body), body, _CRLF))
        else:
            self._out.append(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if cycle is None or self._status < 200:
            return  # an interim (1xx) response, or the 101 before a tunnel
        if self._encoder is not None:
            self._end_encoding()
        if self._frame == FRAME_CHUNKED:
            self._out.append(_CHUNK_END)
        self._frame = FRAME_DONE

    def _end_encoding(self) -> None:
        """Append the end of the encoded stream to the output, framed like the body."""
        encoder = self._encoder
        assert encoder is not None
        self._encoder = None
        tail = encoder.finish()
        if tail:
            if self._frame == FRAME_CHUNKED:
                self._out.extend((b"%x\r\n" % len(tail), tail, _CRLF))
            else:
                self._out.append(tail)

    # -- completion -------------------------------------------------------------------------------

    def _finish_response(self, cycle: RequestCycle) -> None:
        client = cycle.conn
        self._frame = FRAME_NONE
        self.cycle = None
        self.requests += 1
        if not self._until_close and not self._conn_close and self.request_complete and self._keep_alive:
            if client.write_paused:
                self.transport.resume_reading()
            self.pool.release(self)
        else:
            self.close()
        client.response_complete(cycle)

    def _start_tunnel(self, cycle: RequestCycle, rest: bytes) -> None:
        self.tunnel = True
        cycle.conn.start_tunnel(cycle, self, rest)


def ip_family(host: str) -> int:
    """The address family of an IP address literal, 0 for anything else (a host name)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return 0


def _encoder_for(
    cycle: RequestCycle, accept: bytes, status: int, headers: list[bytes], length: bytes | None
) -> Encoder | None:
    """The encoder of a response whose client accepts some encoding, if it is one to compress (then
    `headers` now say so); None for one without a body or an upgrade the app declined."""
    if cycle.is_head or status == 204 or status == 304 or cycle.upgrade is not None:
        return None
    if length is not None and len(length) < 4:
        return None  # under 1000 bytes, below compression.MIN_LENGTH: no call into it (-3,000 instructions)
    headers[:] = as_pieces(headers)  # what start_encoding reads and rewrites
    return start_encoding(accept, status, headers, length)


def _flush(cycle: RequestCycle, out: list[bytes]) -> None:
    """Write what one read of the response produced at once (one TLS record rather than one per piece)."""
    payload = out[0] if len(out) == 1 else b"".join(out)
    cycle.bytes_out += len(payload)
    cycle.conn.transport.write(payload)
