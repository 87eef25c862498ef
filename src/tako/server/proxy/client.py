"""Client side of the data plane: one `ClientConnection` per accepted socket, one `RequestCycle` per request.

The connection owns the parser, its deadlines (checked by the server's sweeper, so the hot path arms no
timers), read flow control and the pipeline of parsed requests; a cycle (cycle.py) owns one request: its
validated head, routing, upstream connection and body framing. Requests are answered strictly in order.
What the connection needs of its server is `ConnectionHost`; what upstream connections call on it is
`cycle.ClientSide` (docs/proxy.md, "Modules of the data plane").

Every forwarded request runs through the parser callbacks, `_start` and `UpstreamConnection.attach`, so
that path is kept lean: the parser (http1_parser.py) classifies header names and gathers the forwarded
lines in C and calls the connection once per head, settings and per-connection bytes are looked up once per
connection, and small helpers on it are inlined where noted.

Compiled with Cython where possible, typed by client.pxd (see compiled.py): an attribute added to a class
here needs its line there too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import httptools

from tako.config.server import ProxySettings
from tako.server.observe.request_id import is_sane as is_sane_request_id
from tako.server.proxy import native, responses
from tako.server.proxy.backend import AppGate, AppUnavailable, Router, ServerServices, Snapshot, Upstream
from tako.server.proxy.body_buffer import READ_CHUNK, BodyBuffer
from tako.server.proxy.counters import UNROUTED_APP, InFlight, Rotation
from tako.server.proxy.cycle import (
    PAUSE_BUFFER,
    PAUSE_PIPELINE,
    PAUSE_UPGRADE,
    PAUSE_UPSTREAM,
    PAUSE_WRITE,
    RequestCycle,
    UpstreamSide,
)
from tako.server.proxy.headers import PASS, HeaderKinds, header_lines, without_lines
from tako.server.proxy.http1_parser import parser_types
from tako.server.proxy.static_stream import serve as serve_static
from tako.server.proxy.upstream import UpstreamConnection, UpstreamPool
from tako.server.proxy.upstream_connect import PendingConnect
from tako.server.proxy.wire import RequestSink, Writer, as_writer

if TYPE_CHECKING:
    from tako.server.proxy.access_line import AccessLog
    from tako.server.proxy.counters import AppCounters, RequestIds, TrafficCounters

log = logging.getLogger("tako.server.proxy")

BODY_BUFFER_LIMIT = 64 * 1024  # held before a request is started, or while a streamed one waits to connect
# A read larger than this is parsed in slices, and what follows a slice that paused the connection is held
# unparsed until it resumes. A plain-TCP read can be 256 KB: parsed whole while the client takes none of
# its answers, that was ~8000 tiny pipelined requests queued at once (measured: +3.7 MB of RSS per such
# connection; with 16 KiB slices the queue is a few hundred requests).
FEED_SLICE = 16 * 1024
LINGER_SECONDS = 2.0  # after an error, keep reading (discarding) so the client sees the response, not RST

_DEADLINE_HEADER = 1
_DEADLINE_KEEPALIVE = 2
_DEADLINE_LINGER = 3
_DEADLINE_BODY = 4  # the end of a window of the request body rate (min_body_rate, body_rate_window)
_DEADLINE_TUNNEL = 5  # tunnel_idle_timeout: checked, then re-armed if bytes moved (no clock read per read)

_CRLF = b"\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_EXPECT = b"expect"
_STATUS_PATH = b"/_tako/status"
_ACME_PREFIX = b"/.well-known/acme-challenge/"

# Request headers with special handling; everything else (and Host) is passed on unchanged.
_H_PASS = PASS
_H_DROP = 0
_H_HOST = 1
_H_LENGTH = 2
_H_TE = 3
_H_CONNECTION = 4
_H_UPGRADE = 5
_H_XFF = 6
_H_EXPECT = 7
_H_REQUEST_ID = 8
_H_ACCEPT_ENCODING = 9
_H_PROXY_CONNECTION = 10  # dropped; llhttp reads its keep-alive / close as a Connection header's
_REQUEST_SPECIAL: dict[bytes, int] = {
    b"host": _H_HOST,
    b"content-length": _H_LENGTH,
    b"transfer-encoding": _H_TE,
    b"connection": _H_CONNECTION,
    b"upgrade": _H_UPGRADE,
    b"x-forwarded-for": _H_XFF,
    b"expect": _H_EXPECT,
    b"x-request-id": _H_REQUEST_ID,
    b"accept-encoding": _H_ACCEPT_ENCODING,
    b"x-forwarded-proto": _H_DROP,
    b"x-forwarded-host": _H_DROP,
    b"keep-alive": _H_DROP,
    b"proxy-connection": _H_PROXY_CONNECTION,
    b"proxy-authorization": _H_DROP,
    b"te": _H_DROP,
    b"trailer": _H_DROP,
}

# Names a Connection header cannot make hop-by-hop: Host routes the request (and the app needs it), the
# framing headers are the proxy's own (written from its parse, never copied), and close / keep-alive /
# upgrade are the tokens the proxy itself acts on.
_NOT_HOP_BY_HOP = frozenset(
    (b"host", b"content-length", b"transfer-encoding", b"close", b"keep-alive", b"upgrade")
)

# The methods llhttp takes in a request line. libnghttp2 lets any token through as `:method`; an HTTP/2
# request with another one is refused as the same HTTP/1.1 request is (400): the apps behind speak HTTP/1.1.
_H1_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH UNLOCK "
    b"BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH "
    b"PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)
_CHUNKED = b"chunked"

# The special kinds whose lines are forwarded as well.
_FORWARDED_KINDS = (_H_HOST, _H_ACCEPT_ENCODING, _H_EXPECT)
# How the HTTP/1.1 parser treats header names (the arguments of its HeaderTable, http1_parser.py).
REQUEST_HEADER_TABLE = (_REQUEST_SPECIAL, b"proxy-", _H_DROP, _H_PASS, _H_DROP, _FORWARDED_KINDS)
_RequestParser, _, _HeaderTable = parser_types()
_request_header_table = _HeaderTable(*REQUEST_HEADER_TABLE)

# HTTP/2 fields (h2_request) are classified here, as the parser classifies HTTP/1.1 header lines.
_request_kinds = HeaderKinds(_REQUEST_SPECIAL, prefix=b"proxy-", prefix_kind=_H_DROP)
# The same dict for good (cleared in place): a C global typed as a dict (client.pxd) when compiled, so the
# per-field lookup is a direct dict call rather than a method call on an untyped global.
_request_kinds_cache = _request_kinds.cache

# Upstream failures by kind: indexes of counters.UPSTREAM_ERROR_KINDS.
_ERR_CONNECT = 0
_ERR_TIMEOUT = 1
_ERR_RESET = 2
_ERR_BAD_RESPONSE = 3
_ERR_UNAVAILABLE = 4
_CLIENT_GONE = 499  # the status counted and logged for a request whose client left before its response
# ClientConnection.route_gate, unless it holds the gate its host routes to on every path:
_BY_PATH = object()  # the host is routed by path
_UNASKED = object()  # not known yet (one request so far)


class _Reject(Exception):
    """Raised inside a parser callback to stop parsing; the status is in ClientConnection.reject_status."""


class ConnectionHost(Protocol):
    """What a client connection uses of the server that accepted it (`server.ProxyServer`)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def settings(self) -> ProxySettings: ...
    @property
    def services(self) -> ServerServices: ...
    @property
    def snapshot(self) -> Snapshot: ...
    @property
    def router(self) -> Router: ...  # the snapshot's
    @property
    def connections(self) -> set[ClientConnection]: ...
    @property
    def pools(self) -> dict[str, UpstreamPool]: ...
    @property
    def shutting_down(self) -> bool: ...
    @property
    def https_suffix(self) -> bytes: ...
    @property
    def traffic(self) -> TrafficCounters: ...
    @property
    def request_ids(self) -> RequestIds: ...
    @property
    def access_log(self) -> AccessLog | None: ...

    def normalise_host(self, host_header: bytes) -> str | None: ...
    def pool_for(self, upstream: Upstream) -> UpstreamPool: ...
    async def connect(self, pool: UpstreamPool) -> UpstreamConnection: ...
    def body_buffer(self) -> BodyBuffer: ...
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...


class ClientConnection(RequestSink):
    """One client connection: parse requests, answer or forward them in order, enforce limits.

    An asyncio protocol by its methods (the event loop and TLSTransport only call them); it does not
    subclass asyncio.Protocol so that it can be compiled as an extension type (client.pxd). A `RequestSink`
    (its transport and its parser call it) and its transport's `Writer` (wire.py): C calls each way.
    """

    # Slots: attribute access stays on the interpreter's fast paths however many fields there are.
    __slots__ = (
        "access",
        "body_mark",
        "body_need",
        "body_window",
        "broken",
        "buffer_bodies",
        "client_ip",
        "closed",
        "cycle",
        "deadline",
        "deadline_kind",
        "eof",
        "forward",
        "forwarded",
        "forwarded_for",
        "forwarded_for_host",
        "head_pending",
        "header_timeout",
        "held",
        "keepalive_timeout",
        "last_counters",
        "last_gate",
        "last_host",
        "last_host_header",
        "loop",
        "max_body",
        "max_header_bytes",
        "max_headers",
        "parser",
        "parsing",
        "pause_mask",
        "paused_in_window",
        "pipeline",
        "pools",
        "reject_status",
        "request_ids",
        "response_timeout",
        "route_gate",
        "route_host",
        "route_router",
        "send_deadline",
        "server",
        "starting",
        "tls",
        "traffic",
        "transport",
        "tunnel",
        "tunnel_active",
        "tunnel_timeout",
        "upgrade_buffer",
        "write_paused",
        "writer",
    )

    def __init__(self, server: ConnectionHost, tls: bool, forward: bool) -> None:
        self.server = server
        self.loop = server.loop
        self.tls = tls
        self.forward = forward  # forward requests (HTTPS, or a plain listener started with forward=True)
        settings = server.settings
        self.max_header_bytes = settings.max_header_bytes
        self.max_headers = settings.max_headers
        self.max_body = settings.max_body_bytes
        self.header_timeout = settings.header_timeout
        self.keepalive_timeout = settings.keepalive_timeout
        self.response_timeout = settings.upstream_response_timeout
        self.tunnel_timeout = settings.tunnel_idle_timeout
        self.buffer_bodies = settings.request_buffering
        # The request body rate rule: at least body_need bytes in every body_window seconds of reading.
        self.body_window, self.body_need = _body_rate(settings)
        self.body_mark = 0  # body bytes received when the current window began
        self.paused_in_window = False  # reading was paused by the proxy during the current window
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.writer: Writer = None  # type: ignore[assignment]  # the transport's write (wire.py), too
        self.parser = _RequestParser(self, _request_header_table)
        self.client_ip = b""
        self.forwarded = b""  # X-Forwarded-For tail + X-Forwarded-Proto, precomputed per connection
        self.forwarded_for = b""  # the same with the header name: when the request had no X-Forwarded-For
        # The last Host header and its normalised form: requests on one connection usually repeat it.
        self.last_host_header: bytes | None = None
        self.last_host: str | None = None
        self.cycle: RequestCycle | None = None  # the request being answered
        self.parsing: RequestCycle | None = None  # the request receiving parser callbacks
        self.pipeline: collections.deque[RequestCycle] = collections.deque()
        self.pause_mask = 0
        self.write_paused = False
        self.starting = False  # inside _next_in_pipeline
        # While the client reads nothing of what is written to it (writing paused), it must make room
        # within keepalive_timeout or the connection is dropped: a stalled reader cannot hold it forever.
        self.send_deadline = 0.0
        self.deadline = 0.0
        self.deadline_kind = 0
        self.head_pending = 0
        self.reject_status = 0
        self.broken = False  # input is discarded (after an error, or once closing)
        self.closed = False
        self.eof = False
        self.tunnel: UpstreamSide | None = None
        self.tunnel_active = False  # bytes moved through the tunnel since its deadline was last checked
        self.upgrade_buffer: list[bytes] | None = None
        self.held: bytes | None = None  # received, not parsed yet: reading paused after a slice (FEED_SLICE)
        # Counting (tako.server.observe): the app last routed to on this connection and its counters, as
        # with the Host above (one dict lookup per connection and app rather than per request).
        self.traffic = server.traffic
        self.request_ids = server.request_ids
        self.pools = server.pools
        self.access = server.access_log  # None when [access_log] is off
        self.last_gate: AppGate | None = None
        self.last_counters: AppCounters | None = None
        # Routing: the snapshot's router last asked, for which host, and its answer, kept when that host
        # routes every path the same (Router.same_for_every_path); _BY_PATH or _UNASKED otherwise.
        self.route_router: Router | None = None
        self.route_host: str | None = None
        self.route_gate: object = _UNASKED

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.writer = as_writer(transport)
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else "unknown"
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[7:]
        self.client_ip = ip.encode("ascii", "replace")
        proto = b"https" if self.tls else b"http"
        self.forwarded = self.client_ip + b"\r\nX-Forwarded-Proto: " + proto + _CRLF
        self.forwarded_for = b"X-Forwarded-For: " + self.forwarded
        self.forwarded_for_host = self.forwarded_for + b"X-Forwarded-Host: "  # the usual lines, in one piece
        self.server.connections.add(self)
        # Responses up to this size are taken from the instance at once (see pause_writing).
        self.transport.set_write_buffer_limits(high=self.server.settings.response_buffer_bytes)
        self.deadline = native.now() + self.header_timeout
        self.deadline_kind = _DEADLINE_HEADER
        if self.server.shutting_down:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.broken = True
        self.server.connections.discard(self)
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.close()
        cycle = self.cycle
        if cycle is not None:
            self.cycle = None
            uconn = cycle.uconn
            if uconn is not None:
                cycle.uconn = None
                if uconn.cycle is cycle:
                    uconn.abort()
            if cycle.sender is not None:
                cycle.sender.close()
            if cycle.counters is not None:
                # A tunnel's end, or a client gone before its response was complete.
                self._count(cycle, cycle.status if cycle.response_started else _CLIENT_GONE)
            _finish_upstream(cycle)
            _drop_body(cycle)
        parsing = self.parsing
        if parsing is not None:
            _drop_body(parsing)
        for waiting in self.pipeline:
            _drop_body(waiting)
        self.pipeline.clear()

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            if self.tunnel.transport.can_write_eof():
                self.tunnel.transport.write_eof()
            return True
        if self.cycle is None and not self.pipeline and self.held is None:
            return False  # idle or lingering: close now
        self.eof = True
        if self.parsing is not None and not self.broken and self.held is None:
            # A request cut short (head or body): it can never be completed, so the instance must not wait
            # for the rest of it. The requests before it are still answered.
            self._fail(400)
        return True  # keep the write side open for the responses still owed

    def pause_writing(self) -> None:
        # Every response path writes through here, local answers included: while the client takes none
        # of what it asked for, neither the instance is read nor further requests from the client (which
        # would each add a response to the buffer), and the send deadline drops a client that never reads.
        self.write_paused = True
        self.send_deadline = native.now() + self.keepalive_timeout
        if self.tunnel is None:
            self.pause(PAUSE_WRITE)
        cycle = self.cycle
        if cycle is not None and cycle.uconn is not None:
            cycle.uconn.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.send_deadline = 0.0
        self.resume(PAUSE_WRITE)  # first: answering the queue below may pause writing (and reading) again
        cycle = self.cycle
        if cycle is not None:
            if cycle.uconn is not None:
                cycle.uconn.transport.resume_reading()
            elif cycle.sender is not None:
                cycle.sender.resume()
        elif self.pipeline and not self.closed:
            self._next_in_pipeline()  # held back while the client was not reading

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.transport.write(data)
            self.tunnel_active = True
            cycle = self.cycle  # the request that opened the tunnel, kept until the connection closes
            if cycle is not None:
                cycle.tunnel_in += len(data)
            return
        if self.broken:
            return
        if self.upgrade_buffer is not None:
            self.upgrade_buffer.append(data)
            return
        if len(data) > FEED_SLICE:
            self._feed_in_slices(data)
            return
        parsing = self.parsing
        if parsing is None or not parsing.headers_done:
            if self.deadline_kind == _DEADLINE_KEEPALIVE:
                self.deadline = 0.0
                self.deadline_kind = 0
            self.head_pending += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_requested(data[exc.args[0] :])
            return
        except httptools.HttpParserError:
            status = self.reject_status or 400
            self.reject_status = 0
            if not self.broken:
                self._fail(status)
            return
        parsing = self.parsing
        if parsing is None or not parsing.headers_done:
            if self.head_pending > self.max_header_bytes:
                if not self.broken:
                    self._fail(431)
            elif parsing is not None and not self.deadline_kind:
                # A request head is still incomplete: the header timeout runs from the read it began in.
                # (Armed here rather than in on_message_begin: most heads complete within one read.)
                self.deadline = native.now() + self.header_timeout
                self.deadline_kind = _DEADLINE_HEADER

    def _feed_in_slices(self, data: bytes) -> None:
        """Parse a large read a slice at a time; once the connection pauses, hold the rest unparsed."""
        end = len(data)
        offset = 0
        while offset < end:
            self.data_received(data[offset : offset + FEED_SLICE])
            offset += FEED_SLICE
            if (
                offset < end
                and self.pause_mask
                and self.tunnel is None
                and self.upgrade_buffer is None
                and not self.broken
            ):
                self.held = data[offset:]
                return

    def _feed_held(self) -> None:
        """Scheduled by resume(): parse what was held, then read again unless that paused once more."""
        held = self.held
        if held is None or self.closed:
            return
        self.held = None
        self.data_received(held)
        if self.closed or self.pause_mask:
            return  # paused again (and perhaps holding again): resume() goes on
        if self.eof:
            if self.parsing is not None and not self.broken:
                self._fail(400)  # cut short by the client's EOF (see eof_received)
            elif self.cycle is None and not self.pipeline:
                self._close(linger=False)
        else:
            self.transport.resume_reading()

    # -- parser callbacks (http1_parser.py) ------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.broken:
            raise _Reject
        cycle = self.parsing = RequestCycle(self)
        cycle.started = native.now()
        if self.deadline_kind:
            # The header deadline of a new connection, or the keep-alive deadline armed earlier in this
            # read: a request has begun (data_received arms the header deadline if its head is incomplete).
            self.deadline = 0.0
            self.deadline_kind = 0

    def on_head(
        self,
        method: bytes,
        url: bytes,
        version: str,
        keep_alive: bool,
        upgrade: bool,
        block: bytes,
        specials: list[Any],
        count: int,
        size: int,
    ) -> None:
        """The request's head, parsed: `block`, the header lines to forward; `specials`, kind, value, ...
        of the headers the proxy acts on; `count` and `size`, what the limits count (http1_parser.py)."""
        cycle = self.parsing
        assert cycle is not None
        cycle.url = url
        cycle.header_count = count
        cycle.header_bytes = len(url) + size
        if count > self.max_headers or cycle.header_bytes > self.max_header_bytes:
            self._reject(431)
        if block:
            cycle.pieces.append(block)
        for i in range(0, len(specials), 2):
            self._special(cycle, specials[i], specials[i + 1])
        self._head_complete(cycle, version, method, keep_alive, upgrade and cycle.upgrade_header is not None)

    def _field(self, cycle: RequestCycle, name: bytes, value: bytes) -> None:
        """One field of an HTTP/2 request: count it against the limits, and record or forward it by its
        kind, as the parser does with an HTTP/1.1 header line."""
        cycle.header_count += 1
        cycle.header_bytes += len(name) + len(value) + 4
        if cycle.header_count > self.max_headers or cycle.header_bytes > self.max_header_bytes:
            self._reject(431)
        kind = _request_kinds_cache.get(name)
        if kind is None:
            kind = _request_kinds.classify(name)
        if kind == _H_PASS:
            # Four appends rather than an extend by a tuple: compiled, they are inline C with no tuple to
            # make and free.
            pieces = cycle.pieces
            pieces.append(name)
            pieces.append(b": ")
            pieces.append(value)
            pieces.append(_CRLF)
        elif kind != _H_DROP:
            if kind in (_H_ACCEPT_ENCODING, _H_HOST, _H_EXPECT):  # _FORWARDED_KINDS
                cycle.pieces.extend((name, b": ", value, _CRLF))
            self._special(cycle, kind, value)

    def _special(self, cycle: RequestCycle, kind: int, value: bytes) -> None:
        """A request header the proxy acts on (any kind but pass and drop)."""
        if kind == _H_ACCEPT_ENCODING:  # first: browsers send it with every request
            # Read by the response compression; forwarded unchanged. Several lines make one list.
            prior = cycle.accept_encoding
            cycle.accept_encoding = value if prior is None else prior + b", " + value
        elif kind == _H_HOST:
            if cycle.host_header is not None:
                self._reject(400)
            cycle.host_header = value
        elif kind == _H_LENGTH:
            # The parser has checked the digits and refused duplicates and CL together with TE.
            cycle.content_length = int(value)
        elif kind == _H_TE:
            if cycle.te is not None:
                self._reject(400)
            cycle.te = value
        elif kind == _H_CONNECTION:
            cycle.connection_header = True
            lvalue = value.lower()
            if lvalue == b"keep-alive" or lvalue == b"close":
                return  # the common values, which need nothing recorded (the parser reads them too)
            for token in lvalue.split(b","):
                token = token.strip()
                if token and token not in _NOT_HOP_BY_HOP:
                    if cycle.conn_tokens is None:
                        cycle.conn_tokens = []
                    cycle.conn_tokens.append(token)
        elif kind == _H_UPGRADE:
            if cycle.upgrade_header is not None:
                self._reject(400)
            cycle.upgrade_header = value
        elif kind == _H_XFF:
            cycle.xff = value if cycle.xff is None else cycle.xff + b", " + value
        elif kind == _H_EXPECT:
            cycle.expect = value  # forwarded, unless the proxy buffers the body and answers it itself
        elif kind == _H_REQUEST_ID and is_sane_request_id(value):
            cycle.request_id = value  # forwarded by _build_head (a made one when it is not sane)
        elif kind == _H_PROXY_CONNECTION:
            cycle.connection_header = True

    def _head_complete(
        self, cycle: RequestCycle, version: str, method: bytes, keep_alive: bool, upgrade: bool
    ) -> None:
        """The request's head is complete: check it, then answer it now or queue it behind the current one."""
        cycle.headers_done = True
        self.head_pending = 0
        if self.deadline_kind == _DEADLINE_HEADER:
            self.deadline = 0.0
            self.deadline_kind = 0
        self._check_head(cycle, version, method, keep_alive, upgrade)
        if not cycle.chunked and not cycle.content_length:
            cycle.body_done = True  # nothing more to read for this request: answering it may start now
        cycle.head = self._build_head(cycle)
        if not cycle.body_done:
            self.deadline = native.now() + self.body_window
            self.deadline_kind = _DEADLINE_BODY
            self.body_mark = 0
            self.paused_in_window = False
        if self.cycle is None and not self.write_paused and not self.pipeline:
            self._start(cycle)
        else:
            self.pipeline.append(cycle)
            self.pause(PAUSE_PIPELINE)

    def _check_head(
        self, cycle: RequestCycle, version: str, method: bytes, keep_alive: bool, upgrade: bool
    ) -> None:
        """Take what the parser decided about the complete head (version, method, keep-alive, whether it
        switches protocols) and refuse what cannot be forwarded safely; normalise the target and the Host."""
        if version != "1.1":
            if version != "1.0":
                self._reject(400)
            cycle.http10 = True
        cycle.method = method
        cycle.is_head = method == b"HEAD"
        cycle.keep_alive = keep_alive
        if method == b"CONNECT":
            self._reject(405)
        url = cycle.url
        if not url.startswith(b"/") and not (url == b"*" and method == b"OPTIONS"):
            self._absolute_form(cycle)
        if cycle.te is not None:
            # Only `chunked` alone can be re-framed safely; HTTP/1.0 has no chunked encoding.
            if cycle.http10 or cycle.te.strip().lower() != b"chunked":
                self._reject(400)
            cycle.chunked = True
        host_header = cycle.host_header
        if host_header is not None:
            if host_header == self.last_host_header:
                cycle.host = self.last_host
            else:
                host = self.server.normalise_host(host_header)
                if host is None:
                    self._reject(400)
                cycle.host = self.last_host = host
                self.last_host_header = host_header
        elif not cycle.http10:
            self._reject(400)
        if self.max_body and cycle.content_length is not None and cycle.content_length > self.max_body:
            self._reject(413)
        if upgrade:
            # The parser's verdict, not a reading of our own: whatever llhttp treats as a switch of
            # protocols, it parses no body for and nothing after. A body announced with it would be framed
            # one way here and another by the app (h11 and gunicorn read it, httptools-based servers do
            # not), which is how a request gets smuggled: refused (docs/proxy.md, "Hostile clients").
            if cycle.chunked or cycle.content_length:
                self._reject(400)
            cycle.upgrade = cycle.upgrade_header
            # Whatever the answer (101 and a tunnel, or anything else), this connection carries no
            # further requests.
            cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        assert cycle is not None
        cycle.body_received += len(body)
        if self.max_body and cycle.body_received > self.max_body:
            self._reject(413)
        uconn = cycle.uconn
        if uconn is not None:
            if cycle.chunked:
                uconn.transport.writelines((b"%x\r\n" % len(body), body, _CRLF))
            else:
                uconn.transport.write(body)
        elif not cycle.response_started:
            held = cycle.body
            if held is None:
                held = cycle.body = self.server.body_buffer()
            try:
                held.append(body)
            except OSError:
                self._reject(500)  # the temporary file could not be written (disk full?)
            if not cycle.buffering and held.size > BODY_BUFFER_LIMIT:
                self.pause(PAUSE_BUFFER)

    def on_message_complete(self) -> None:
        cycle = self.parsing
        assert cycle is not None
        self.parsing = None
        if cycle.body_done:
            if self.cycle is None and not self.pipeline:
                self._idle()
            return
        cycle.body_done = True
        if self.deadline_kind == _DEADLINE_BODY:
            self.deadline = 0.0
            self.deadline_kind = 0
        if cycle.buffering:
            if self.cycle is cycle and not cycle.response_started:
                self._forward_buffered(cycle)
            return
        uconn = cycle.uconn
        if uconn is not None:
            uconn.end_request(cycle)
            self.request_sent(cycle)

    # -- HTTP/2 streams (h2/stream.py): the request as libnghttp2 decoded it -------------------------

    def h2_request(
        self, method: bytes, path: bytes, authority: bytes | None, fields: list[bytes], end_stream: bool
    ) -> None:
        """An HTTP/2 stream's request, decoded and checked by libnghttp2 (`fields`: name, value, name, ...,
        cookie fields joined into one), through what the parser's callbacks do with an HTTP/1.1 head (limits,
        field kinds, `_check_head`, routing) without writing it out as HTTP/1.1 text to parse it again
        (docs/proxy.md, "HTTP/2"). `authority`: `:authority`, or None (a `host` field is then among the
        fields). A body without content-length is forwarded chunked."""
        if self.broken:
            return
        try:
            self.on_message_begin()
            cycle = self.parsing
            assert cycle is not None
            cycle.url = path
            cycle.header_bytes = len(path)
            if cycle.header_bytes > self.max_header_bytes:
                self._reject(431)
            if authority is not None:
                self._field(cycle, b"Host", authority)
            for i in range(0, len(fields), 2):
                self._field(cycle, fields[i], fields[i + 1])
            if method not in _H1_METHODS or not path.isascii():
                self._reject(400)  # what llhttp refuses in a request line and libnghttp2 lets through
            if not end_stream and cycle.content_length is None:
                cycle.te = _CHUNKED
            self._head_complete(cycle, "1.1", method, True, False)
            if cycle.body_done:
                self.on_message_complete()  # as the parser does after a head without a body
        except _Reject:
            self._h2_rejected()

    def h2_body(self, data: bytes) -> None:
        """Request body bytes of an HTTP/2 stream (libnghttp2 checks them against its content-length)."""
        if self.broken or self.parsing is None or not data:
            return
        try:
            self.on_body(data)
        except _Reject:
            self._h2_rejected()

    def h2_end(self) -> None:
        """An HTTP/2 stream's request ended (END_STREAM; trailers are dropped)."""
        if not self.broken and self.parsing is not None:
            self.on_message_complete()

    def _h2_rejected(self) -> None:
        status = self.reject_status or 400
        self.reject_status = 0
        if not self.broken:
            self._fail(status)

    def _absolute_form(self, cycle: RequestCycle) -> None:
        """`GET http://host/path HTTP/1.1`: forward `/path`, with the target's authority as the Host.

        HTTP/1.1 servers must accept this form (RFC 9112, 3.2.2), and the authority in it wins over any
        Host header. Other schemes, userinfo, an empty authority and anything not absolute are refused.
        """
        scheme, sep, rest = cycle.url.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            self._reject(400)
        end = len(rest)
        for delimiter in (b"/", b"?"):
            at = rest.find(delimiter)
            if 0 <= at < end:
                end = at
        authority, target = rest[:end], rest[end:]
        if not authority or b"@" in authority:
            self._reject(400)
        cycle.url = target if target[:1] == b"/" else b"/" + target
        if cycle.host_header is not None:
            lines: list[bytes] = []
            for name, value in header_lines(cycle.pieces):
                lines.extend((name, b": ", authority if name.lower() == b"host" else value, _CRLF))
            cycle.pieces = lines
        else:
            cycle.pieces.extend((b"Host", b": ", authority, _CRLF))
        cycle.host_header = authority

    # -- request head -------------------------------------------------------------------------------

    def _build_head(self, cycle: RequestCycle) -> bytes:
        request_id = cycle.request_id
        if request_id is None:
            request_id = cycle.request_id = self.request_ids.next()
        pieces = cycle.pieces
        if (
            len(pieces) <= 1
            and cycle.xff is None
            and cycle.conn_tokens is None
            and cycle.upgrade is None
            and not cycle.chunked
            and cycle.content_length is None
        ):
            # Most requests: their header lines as the client sent them (one piece, or none), then the
            # proxy's own, joined from a tuple (native.join: one copy each, in C where compiled; CPython's
            # own join takes up to 10 without a heap allocation) rather than a list grown piece by piece.
            host_header = cycle.host_header
            if host_header is None:
                forwarded, host_header, id_name = self.forwarded_for, b"", b"X-Request-Id: "
            else:
                forwarded, id_name = self.forwarded_for_host, b"\r\nX-Request-Id: "
            return native.join(
                (
                    cycle.method,
                    b" ",
                    cycle.url,
                    b" HTTP/1.1\r\n",
                    pieces[0] if pieces else b"",
                    forwarded,
                    host_header,
                    id_name,
                    request_id,
                    b"\r\n\r\n",
                )
            )
        # `parts.extend(...)` rather than `parts += ...`: compiled, a direct list extend; the generic
        # in-place adds took 1,400 instructions a request here (callgrind over bench/proxy/hotpath.py).
        parts = [cycle.method, b" ", cycle.url, b" HTTP/1.1\r\n"]
        if cycle.conn_tokens is not None:
            pieces = without_lines(pieces, cycle.conn_tokens)
        if cycle.buffering and cycle.expect is not None:
            pieces = without_lines(pieces, (_EXPECT,))  # answered by the proxy (_buffer_body)
        parts.extend(pieces)
        if cycle.xff is None:
            parts.append(self.forwarded_for)
        else:
            parts.extend((b"X-Forwarded-For: ", cycle.xff, b", ", self.forwarded))
        if cycle.host_header is not None:
            parts.extend((b"X-Forwarded-Host: ", cycle.host_header, _CRLF))
        if cycle.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif cycle.content_length is not None:
            parts.append(b"Content-Length: %d\r\n" % cycle.content_length)
        if cycle.upgrade is not None:
            parts.extend((b"Connection: upgrade\r\nUpgrade: ", cycle.upgrade, _CRLF))
        parts.extend((b"X-Request-Id: ", request_id, b"\r\n\r\n"))
        return native.join_list(parts)

    # -- answering ----------------------------------------------------------------------------------

    def _start(self, cycle: RequestCycle) -> None:
        """Answer `cycle` now: locally (errors, status, ACME, redirects) or by forwarding it."""
        self.cycle = cycle
        if cycle.error_status:
            self._respond(cycle, responses.error(cycle.error_status, close=True))
            return
        server = self.server
        if server.shutting_down:
            cycle.keep_alive = False
        url = cycle.url
        # Most targets have no query: the path is then the target itself (no partition call, no new bytes).
        path = url if b"?" not in url else url[: url.index(b"?")]
        if path == _STATUS_PATH and (cycle.method == b"GET" or cycle.is_head):
            status, body = server.services.status_document()
            data = responses.response(
                status,
                body,
                close=_close_after_local(cycle),
                content_type=b"application/json",
                head_only=cycle.is_head,
            )
            self._respond(cycle, data)
            return
        host = cycle.host
        gate: AppGate | None = None
        if host is not None:
            # A connection's requests usually repeat its host, whose routes are usually the same for
            # every path: then the router (immutable, replaced with the snapshot) is asked once per
            # connection and snapshot rather than per request (three Python frames in tako-server).
            router = server.router
            if router is not self.route_router or host != self.route_host:
                # The first request for this host under this router: matched. The question is asked on
                # the second, so that an HTTP/2 stream (a connection object of its own) never pays for it.
                self.route_router = router
                self.route_host = host
                self.route_gate = _UNASKED
                route = _BY_PATH
            else:
                route = self.route_gate
                if route is _UNASKED:
                    fixed = router.same_for_every_path(host)
                    route = self.route_gate = router.match(host, "/") if fixed else _BY_PATH
            # An AppGate or None, as the router answered, unless the host is routed by path.
            gate = router.match(host, path.decode("latin-1")) if route is _BY_PATH else route  # type: ignore[assignment]
        if not self.forward and (gate is None or gate.https or path.startswith(_ACME_PREFIX)):
            # ACME and redirects to HTTPS, except for an app served over plain HTTP ([tako] https = false)
            self._answer_plain_http(cycle, path, host, _close_after_local(cycle))
            return
        if gate is None:
            self._respond(
                cycle, responses.error(404, close=_close_after_local(cycle), head_only=cycle.is_head)
            )
            return
        if gate is not self.last_gate:
            self.last_gate = gate
            self.last_counters = self.traffic.for_app(gate.name)
        counters = cycle.counters = self.last_counters
        counters.in_flight += 1  # type: ignore[union-attr]  # set just above
        # tako-server's gates are `Rotation`s: compiled, their per-request fields and `pick` are C.
        rotation = gate if isinstance(gate, Rotation) else None
        maintenance = rotation.maintenance if rotation is not None else gate.maintenance
        if maintenance is not None and not maintenance.admits(self.client_ip):
            self._respond(cycle, maintenance.answer(close=_close_after_local(cycle), head_only=cycle.is_head))
            return
        if cycle.accept_encoding is not None and not gate.compression:
            cycle.accept_encoding = None  # the app turned response compression off ([tako] compression)
        static = rotation.static if rotation is not None else gate.static
        if static is not None and serve_static(self, cycle, static, path, _close_after_local(cycle)):
            return
        if (
            (cycle.content_length or cycle.chunked)
            and self.buffer_bodies
            and cycle.upgrade is None
            and gate.request_buffering
        ):
            self._buffer_body(cycle, gate)
            return
        upstream = rotation.pick() if rotation is not None else gate.pick()
        if upstream is None:
            server.spawn(self._wait_upstream(cycle, gate))
            return
        self._use_upstream(cycle, upstream)

    def _buffer_body(self, cycle: RequestCycle, gate: AppGate) -> None:
        """Receive the whole body before an instance is chosen: a slow client holds no app worker."""
        cycle.buffering = True
        cycle.gate = gate
        if cycle.body_done:
            self._forward_buffered(cycle)
            return
        if (
            cycle.expect is not None
            and not cycle.http10
            and cycle.expect.strip().lower() == b"100-continue"
            and cycle.body is None
        ):
            # The size was checked with the head (413 otherwise): ask for the body now.
            self.transport.write(_CONTINUE)
        if self.pause_mask & PAUSE_BUFFER:
            self.resume(PAUSE_BUFFER)

    def _forward_buffered(self, cycle: RequestCycle) -> None:
        """The buffered body is complete: forward the request with its exact Content-Length."""
        body = cycle.body
        cycle.content_length = body.size if body is not None else 0
        cycle.chunked = False
        cycle.head = self._build_head(cycle)
        gate = cycle.gate
        assert gate is not None
        cycle.gate = None
        upstream = gate.pick()
        if upstream is None:
            self.server.spawn(self._wait_upstream(cycle, gate))
            return
        self._use_upstream(cycle, upstream)

    def send_body(self, cycle: RequestCycle) -> None:
        """Send the head and the held body to the attached instance (called by UpstreamConnection.attach).

        Streaming: what arrived while connecting, then the rest as it comes. Buffering: the whole body,
        from memory and then from the temporary file as the instance's connection drains (pump_body).
        """
        uconn = cycle.uconn
        body = cycle.body
        assert uconn is not None and body is not None
        transport = uconn.transport
        chunks = body.take_chunks()
        if cycle.buffering:
            # The whole body is here: an instance that stops taking it is as late as one that does not
            # answer, so the response timeout covers the sending too (re-armed when the last byte is sent).
            uconn.deadline = native.now() + self.response_timeout
            transport.writelines([cycle.head, *chunks])
            body.rewind()
            self.pump_body(cycle)
            return
        cycle.body = None
        body.close()
        if cycle.chunked:
            framed = [cycle.head]
            for chunk in chunks:
                framed += (b"%x\r\n" % len(chunk), chunk, _CRLF)
            transport.writelines(framed)
        else:
            transport.writelines([cycle.head, *chunks])
        if cycle.body_done:
            uconn.end_request(cycle)
            self.request_sent(cycle)

    def pump_body(self, cycle: RequestCycle) -> None:
        """Forward the buffered body's file a chunk at a time until the instance's connection is full."""
        uconn = cycle.uconn
        body = cycle.body
        if uconn is None or body is None or uconn.cycle is not cycle:
            return
        transport = uconn.transport
        while not uconn.write_paused:
            try:
                data = body.read(READ_CHUNK)
            except OSError:
                data = b""
                uconn.abort()
                self.upstream_failed(cycle, retryable=False)
                return
            if not data:
                cycle.body = None
                body.close()
                uconn.end_request(cycle)
                self.request_sent(cycle)
                return
            transport.write(data)

    def _answer_plain_http(self, cycle: RequestCycle, path: bytes, host: str | None, close: bool) -> None:
        server = self.server
        if path.startswith(_ACME_PREFIX):
            token = path[len(_ACME_PREFIX) :].decode("latin-1")
            answer = server.services.acme_key_authorization(token) if "/" not in token else None
            if answer is None:
                self._respond(cycle, responses.error(404, close=close, head_only=cycle.is_head))
            else:
                data = responses.response(
                    200, answer.encode(), close=close, content_type=b"text/plain", head_only=cycle.is_head
                )
                self._respond(cycle, data)
            return
        if host is not None and server.router.is_routed_host(host):
            location = b"https://" + host.encode("ascii", "replace") + server.https_suffix + cycle.url
            keep_method = cycle.method != b"GET" and not cycle.is_head
            data = responses.redirect(location, keep_method=keep_method, close=close, head_only=cycle.is_head)
            self._respond(cycle, data)
            return
        self._respond(cycle, responses.error(404, close=close, head_only=cycle.is_head))

    async def _wait_upstream(self, cycle: RequestCycle, gate: AppGate) -> None:
        counters = cycle.counters
        if counters is not None:
            counters.cold_starts += 1
        try:
            upstream = await gate.wait_upstream()
        except AppUnavailable as exc:
            if counters is not None:
                counters.upstream_error(_ERR_UNAVAILABLE)
            if not self.closed and self.cycle is cycle:
                data = responses.unavailable(
                    exc.status,
                    exc.reason,
                    exc.retry_after,
                    close=_close_after_local(cycle),
                    head_only=cycle.is_head,
                    page=gate.error_pages.get(exc.status),
                )
                self._respond(cycle, data)
            return
        if self.closed or self.cycle is not cycle:
            return
        self._use_upstream(cycle, upstream)

    def _use_upstream(self, cycle: RequestCycle, upstream: Upstream) -> None:
        cycle.upstream = upstream
        if isinstance(upstream, InFlight):
            flight = upstream  # tako-server's instances: compiled, a C field and a C call (counters.py)
            key = cycle.instance = flight.key
            flight.request_started()
        else:
            key = cycle.instance = upstream.key
            upstream.request_started()
        # The server's pools read here, a C dict lookup when compiled; `pool_for` (a Python call) only
        # makes a new pool. The dict is the server's for good (changed in place).
        pool = self.pools.get(key)
        if pool is None:
            pool = self.server.pool_for(upstream)
        uconn = pool.acquire()
        if uconn is None:
            self._open_upstream(cycle, pool)
        else:
            uconn.attach(cycle)
            if self.pause_mask & PAUSE_BUFFER:
                self.resume(PAUSE_BUFFER)

    def _open_upstream(self, cycle: RequestCycle, pool: UpstreamPool) -> None:
        """A new connection to the pool's instance for `cycle`: by the socket's readiness for an IP address
        (upstream_connect.py: the request goes out in the loop turn the connect completes in), through the
        loop for a host name."""
        server = self.server
        if pool.family:
            # Keeps a pool whose connections are all busy from being dropped.
            pool.last_used = native.now()
            PendingConnect(self, cycle, pool, server.settings.upstream_connect_timeout)
        else:
            server.spawn(self._connect(cycle, pool))

    def upstream_connected(self, cycle: RequestCycle, uconn: UpstreamConnection, sent: int) -> None:
        """A new instance connection for `cycle`, which is still this connection's current request (called
        by PendingConnect); `sent`: bytes of the request head already written to its socket."""
        uconn.attach(cycle, sent)
        self.resume(PAUSE_BUFFER)

    def upstream_connect_failed(self, cycle: RequestCycle, reason: str) -> None:
        """The connect for `cycle` failed or timed out (called by PendingConnect)."""
        if not self.closed and self.cycle is cycle:
            self._upstream_error(cycle, 502, _ERR_CONNECT, f"cannot connect: {reason}")

    async def _connect(self, cycle: RequestCycle, pool: UpstreamPool) -> None:
        try:
            uconn = await self.server.connect(pool)
        except (OSError, TimeoutError) as exc:
            if not self.closed and self.cycle is cycle:
                self._upstream_error(cycle, 502, _ERR_CONNECT, f"cannot connect: {exc or 'timed out'}")
            return
        if self.closed or self.cycle is not cycle:
            pool.release(uconn)
            return
        uconn.attach(cycle)
        self.resume(PAUSE_BUFFER)

    def request_sent(self, cycle: RequestCycle) -> None:
        """The whole request is on its way to the instance: the response timeout starts now."""
        uconn = cycle.uconn
        if uconn is not None and not cycle.response_started:
            now = cycle.sent_at = native.now()
            uconn.deadline = now + self.response_timeout

    def upstream_failed(self, cycle: RequestCycle, *, retryable: bool, bad_response: bool = False) -> None:
        """The instance connection broke before a response started (called by UpstreamConnection)."""
        cycle.uconn = None
        self.resume(PAUSE_UPSTREAM)
        if self.cycle is not cycle or self.closed:
            return
        kind = _ERR_BAD_RESPONSE if bad_response else _ERR_RESET
        if cycle.response_started:
            # Cut off mid-response: the client must see a truncated message, not a spliced error page.
            if cycle.counters is not None:
                cycle.counters.upstream_error(kind)
            _finish_upstream(cycle)
            self.abort()
            return
        if retryable and not cycle.retried and not cycle.content_length and not cycle.chunked:
            # A pooled connection the app closed just as we reused it: safe to send again once.
            cycle.retried = True
            upstream = cycle.upstream
            assert upstream is not None
            self._open_upstream(cycle, self.server.pool_for(upstream))
            return
        reason = "invalid response" if bad_response else "connection closed before the response"
        self._upstream_error(cycle, 502, kind, reason)

    def upstream_timeout(self, cycle: RequestCycle) -> None:
        """The sweeper found the instance late with its response."""
        uconn = cycle.uconn
        cycle.uconn = None
        if uconn is not None:
            uconn.abort()
        self.resume(PAUSE_UPSTREAM)
        if cycle.response_started:
            if cycle.counters is not None:
                cycle.counters.upstream_error(_ERR_TIMEOUT)
            self.abort()
        else:
            self._upstream_error(cycle, 504, _ERR_TIMEOUT, f"no response within {self.response_timeout:g} s")

    def _upstream_error(self, cycle: RequestCycle, status: int, kind: int, reason: str) -> None:
        """Answer `status` (502, 504) for a failed instance; count it and say so in tako-server's log, with
        the request id the client sees (errors only: this is off the per-request path)."""
        counters = cycle.counters
        if counters is not None:
            counters.upstream_error(kind)
        log.warning(
            "%d for %s %s: %s (app %s, instance %s, request id %s)",
            status,
            cycle.method.decode("latin-1"),
            (cycle.host or "") + cycle.url.decode("latin-1")[:200],
            reason,
            counters.name if counters is not None else "-",
            cycle.instance or "-",
            (cycle.request_id or b"-").decode("ascii"),
        )
        upstream = cycle.upstream
        page = upstream.error_pages.get(status) if upstream is not None else None
        _finish_upstream(cycle)
        close = _close_after_local(cycle)
        if page is None:
            self._respond(cycle, responses.error(status, close=close, head_only=cycle.is_head))
        else:
            self._respond(cycle, responses.page(status, page, close=close, head_only=cycle.is_head))

    def _respond(self, cycle: RequestCycle, data: bytes) -> None:
        """Write a complete local response for the current cycle and move on."""
        if cycle.counters is None:
            # No app took the request: counted apart (in /metrics), in no app's access log (see _count).
            counters = cycle.counters = self.traffic.for_app(UNROUTED_APP)
            counters.in_flight += 1
        cycle.response_started = True
        cycle.status = int(data[9:12])  # every local response starts `HTTP/1.1 NNN `
        request_id = cycle.request_id
        if request_id is not None:
            at = data.index(_CRLF) + 2
            data = b"%sX-Request-Id: %s\r\n%s" % (data[:at], request_id, data[at:])
        cycle.bytes_out += len(data)
        self.transport.write(data)
        self.response_complete(cycle)

    def response_complete(self, cycle: RequestCycle) -> None:
        """The response to the current cycle is fully written (called locally and by UpstreamConnection)."""
        cycle.uconn = None
        if self.pause_mask & PAUSE_UPSTREAM:
            self.resume(PAUSE_UPSTREAM)
        now = 0.0  # the clock (native.now) once read, for the keep-alive deadline below
        if cycle.counters is not None:
            now = self._count(cycle, cycle.status)
        upstream = cycle.upstream  # still set: the instance's response, passed on whole (errors clear it)
        if upstream is not None:
            cycle.upstream = None
            if isinstance(upstream, InFlight):
                flight = upstream  # as in _use_upstream
                flight.request_answered()
            else:
                upstream.request_answered()
        if cycle.body is not None:
            _drop_body(cycle)
        self.cycle = None
        if not cycle.body_done or not cycle.keep_alive or self.server.shutting_down:
            # A response that ended before its request body did: the rest of the body is unread and the
            # connection cannot carry another request safely.
            self._close(linger=not cycle.body_done or self.parsing is not None or self.broken)
            return
        if self.pipeline:
            if not self.write_paused and not self.starting:
                self._next_in_pipeline()
            return  # resume_writing, or the loop in _next_in_pipeline, goes on
        if self.eof and self.held is None:
            self._close(linger=False)
            return
        if self.parsing is None and not self.broken:
            # _idle, inline: wait for the next request.
            if now == 0.0:
                now = native.now()
            self.deadline = now + self.keepalive_timeout
            self.deadline_kind = _DEADLINE_KEEPALIVE

    def _count(self, cycle: RequestCycle, status: int) -> float:
        """The request is over (its response complete, its tunnel closed, or its client gone): count it in
        its app's counters and queue its access log line (written in batches, see access_line). Returns the
        clock reading it took."""
        counters = cycle.counters
        assert counters is not None
        cycle.counters = None
        now = native.now()
        counters.in_flight -= 1
        sent_at = cycle.sent_at
        bytes_in = cycle.header_bytes + cycle.body_received + cycle.tunnel_in
        if status == 101:
            counters.tunnel_closed(bytes_in, cycle.bytes_out)  # hours long: kept out of the latencies
        else:
            counters.finished(
                status, now - cycle.started, now - sent_at if sent_at else 0.0, bytes_in, cycle.bytes_out
            )
        access = self.access
        if access is not None and counters.name != UNROUTED_APP:
            access.add(
                (  # the order access_line.Entry gives
                    counters.name,
                    cycle.host,
                    cycle.method,
                    cycle.started,
                    now,
                    sent_at,
                    status,
                    cycle.url,
                    bytes_in,
                    cycle.bytes_out,
                    cycle.request_id,
                    cycle.instance,
                    self.client_ip,
                    self.tls,
                    status == 101,
                )
            )
        return now

    def _next_in_pipeline(self) -> None:
        """Answer queued requests in order: a loop, not a recursion through response_complete (local answers
        complete at once), and it stops while the client is not reading."""
        self.starting = True
        try:
            while self.pipeline and self.cycle is None and not self.write_paused and not self.closed:
                nxt = self.pipeline.popleft()
                if not self.pipeline:
                    self.resume(PAUSE_PIPELINE)
                self._start(nxt)
        finally:
            self.starting = False

    def _idle(self) -> None:
        if not self.broken:
            self.deadline = native.now() + self.keepalive_timeout
            self.deadline_kind = _DEADLINE_KEEPALIVE

    # -- upgrades -------------------------------------------------------------------------------------

    def _upgrade_requested(self, rest: bytes) -> None:
        # httptools stops after a request that asks to switch protocols; the bytes after it belong to
        # the new protocol (or, if the app declines, are never read: the connection closes).
        if self.broken:
            self.parsing = None
            return  # answered already (locally, or refused) and closing: the rest is never read
        last = self.pipeline[-1] if self.pipeline else self.cycle
        if last is None or last.upgrade is None:
            # The parser switched protocols on a request not forwarded as an upgrade (cannot happen while
            # on_head is told what the parser decided): nothing after it can be framed, so drop everything.
            self.abort()
            return
        self.parsing = None
        self.upgrade_buffer = [rest] if rest else []
        self.pause(PAUSE_UPGRADE)

    def start_tunnel(self, cycle: RequestCycle, uconn: UpstreamSide, rest: bytes) -> None:
        """The instance switched protocols: copy bytes both ways until either side closes."""
        cycle.status = 101  # only a started tunnel has it (see _count)
        if cycle.counters is not None:
            cycle.counters.websockets_open += 1  # until connection_lost counts the tunnel's end
        if rest:
            self.transport.write(rest)
            cycle.bytes_out += len(rest)
        self.tunnel = uconn
        buffered = self.upgrade_buffer
        self.upgrade_buffer = None
        if buffered:
            uconn.transport.writelines(buffered)
        if self.tunnel_timeout:
            self.deadline = native.now() + self.tunnel_timeout
            self.deadline_kind = _DEADLINE_TUNNEL
        else:
            self.deadline = 0.0
            self.deadline_kind = 0
        self.resume(PAUSE_UPGRADE | PAUSE_PIPELINE)

    def tunnel_closed(self) -> None:
        self.tunnel = None
        cycle = self.cycle
        if cycle is not None:
            _finish_upstream(cycle)
        self.transport.close()

    # -- flow control, errors, closing ----------------------------------------------------------------

    def pause(self, reason: int) -> None:
        if not self.pause_mask:
            self.transport.pause_reading()
        self.pause_mask |= reason
        self.paused_in_window = True

    def resume(self, reason: int) -> None:
        if self.pause_mask & reason:
            self.pause_mask &= ~reason
            if not self.pause_mask and not self.closed:
                if self.held is None:
                    self.transport.resume_reading()
                else:
                    # Held bytes come before anything the transport reads next; not parsed from inside this
                    # call either (it may come from a parser callback).
                    self.loop.call_soon(self._feed_held)

    def _reject(self, status: int) -> None:
        self.reject_status = status
        raise _Reject

    def _fail(self, status: int) -> None:
        """The input is unusable from here on: answer what came before in order, then `status`, close."""
        self.broken = True
        bad = self.parsing
        self.parsing = None
        cycle = self.cycle
        if bad is not None:
            _drop_body(bad)
        if bad is not None and bad is cycle:
            # The request being answered went bad mid-body (bad chunk, body too large).
            uconn = cycle.uconn
            if uconn is not None:
                cycle.uconn = None
                uconn.abort()
            _finish_upstream(cycle)
            self.pipeline.clear()
            if cycle.response_started:
                self.transport.close()  # connection_lost counts it
                return
            cycle.response_started = True
            data = responses.error(status, close=True, head_only=cycle.is_head)
            cycle.status = status
            cycle.bytes_out += len(data)
            self.transport.write(data)
            if cycle.counters is not None:
                self._count(cycle, status)
            self.cycle = None
            self._close(linger=True)
            return
        if bad is not None:
            with contextlib.suppress(ValueError):
                self.pipeline.remove(bad)
        sentinel = RequestCycle(self)
        sentinel.error_status = status
        sentinel.keep_alive = False
        sentinel.body_done = True
        sentinel.headers_done = True
        if cycle is None and not self.pipeline:
            self._start(sentinel)
        else:
            self.pipeline.append(sentinel)  # after the requests queued while the client was not reading

    def on_deadline(self) -> None:
        """Called by the server's sweeper when `deadline` has passed."""
        kind = self.deadline_kind
        if kind == _DEADLINE_BODY and not self.broken:
            parsing = self.parsing
            received = parsing.body_received if parsing is not None else 0
            if self.pause_mask or self.paused_in_window or received - self.body_mark >= self.body_need:
                # Fast enough, or the proxy itself stopped reading (flow control, or requests answered in
                # order) during the window: the client is not to blame. Next window.
                self.body_mark = received
                self.paused_in_window = bool(self.pause_mask)
                self.deadline = native.now() + self.body_window
                return
        if self.pause_mask and not self.broken and kind == _DEADLINE_HEADER:
            # The proxy itself stopped reading (flow control, or requests answered in order): the client is
            # not late. What bounds such a pause is the response or send deadline of what it waits for.
            self.deadline = native.now() + self.header_timeout
            return
        if kind == _DEADLINE_TUNNEL:
            if self.tunnel_active:
                self.tunnel_active = False
                self.deadline = native.now() + self.tunnel_timeout
                return
            self.deadline = 0.0
            self.deadline_kind = 0
            self.transport.close()  # connection_lost closes the instance's side
            return
        self.deadline = 0.0
        self.deadline_kind = 0
        if kind in (_DEADLINE_HEADER, _DEADLINE_BODY):
            if not self.broken:
                self._fail(408)
        elif kind == _DEADLINE_KEEPALIVE:
            if self.cycle is None and self.parsing is None:
                self.transport.close()
        else:
            self.transport.abort()

    def _close(self, *, linger: bool) -> None:
        self.broken = True
        if not linger or self.tls or self.eof:
            # TLS: close() sends close_notify and keeps reading until the peer's, which lingers already.
            # After the client's EOF there is nothing left to drain.
            self.transport.close()
            return
        if self.closed:
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.pause_mask = 0
        self.held = None
        self.transport.resume_reading()
        self.deadline = native.now() + LINGER_SECONDS
        self.deadline_kind = _DEADLINE_LINGER

    def abort(self) -> None:
        self.broken = True
        self.transport.abort()

    def shutdown(self) -> None:
        """Server shutdown: close if idle; otherwise close after the response in progress."""
        if self.cycle is None and self.parsing is None and self.tunnel is None and not self.pipeline:
            self.broken = True
            self.transport.close()


def _close_after_local(cycle: RequestCycle) -> bool:
    """Whether a response the proxy writes itself closes the connection.

    A local answer sent before the request body arrived ends the connection (see response_complete).
    """
    return not (cycle.keep_alive and cycle.body_done)


def _finish_upstream(cycle: RequestCycle) -> None:
    upstream = cycle.upstream
    if upstream is not None:
        cycle.upstream = None
        upstream.request_finished()


def _drop_body(cycle: RequestCycle) -> None:
    """Free the held body (and its temporary file)."""
    body = cycle.body
    if body is not None:
        cycle.body = None
        body.close()


def _body_rate(settings: ProxySettings) -> tuple[float, int]:
    """The request body rate rule as (window in seconds, bytes needed per window)."""
    if settings.min_body_rate:
        window = settings.body_rate_window or settings.keepalive_timeout
        return window, max(1, int(settings.min_body_rate * window))
    return settings.keepalive_timeout, 1
