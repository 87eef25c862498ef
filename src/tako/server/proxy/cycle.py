"""`RequestCycle`, one request and its response, and what the two halves of the data plane share.

The data plane's modules import in one direction: `server.py` (listeners, pools, sweeper) → `client.py`
(one `ClientConnection` per accepted socket) → `upstream.py` (pooled connections to instances) → this
module. Calls back against that direction go through the interfaces declared here (see docs/proxy.md,
"Modules of the data plane"): `ClientSide` is everything an upstream connection calls on the client
connection of the request it carries, `UpstreamSide` what a client connection uses of the upstream
connection its request is on. The bits a client connection stops reading for (`PAUSE_*`) are here too.

Compiled with Cython where possible, typed by cycle.pxd (see compiled.py): every request creates a cycle
and both halves read its fields, so they are C struct members there. An attribute added here needs its
line in the .pxd too.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from tako.server.proxy.backend import AppGate, Router, Snapshot, Upstream
from tako.server.proxy.body_buffer import BodyBuffer
from tako.server.proxy.wire import Writer

if TYPE_CHECKING:
    from tako.server.proxy.counters import AppCounters

# Reasons a client connection stops reading, as bits: reading resumes when none is left.
PAUSE_PIPELINE = 1  # a later request waits for the current response
PAUSE_BUFFER = 2  # body held while no upstream connection is ready yet (streaming, or not started)
PAUSE_UPSTREAM = 4  # the instance reads the request body slower than the client sends it
PAUSE_UPGRADE = 8  # waiting for the instance to accept an Upgrade
PAUSE_WRITE = 16  # the client is not taking its responses: parse no more requests until it does


class ServerState(Protocol):
    """What an upstream connection reads of the server."""

    @property
    def shutting_down(self) -> bool: ...


class ServerFields:
    """What the connections read of their server on every request: the base of `server.ProxyServer`.
    Compiled (cycle.pxd), these are C fields where they were attribute lookups on a Python object, about
    120 machine instructions each and five a request."""

    __slots__ = ("router", "shutting_down", "snapshot")

    def __init__(self, snapshot: Snapshot) -> None:
        self.shutting_down = False
        self.snapshot = snapshot
        self.router: Router = snapshot.router

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """Swap the routing snapshot; requests that start after this use the new one."""
        self.snapshot = snapshot
        self.router = snapshot.router


class UpstreamSide(Protocol):
    """What a client connection uses of the upstream connection its request is on (or tunnels through)."""

    deadline: float  # native.now() by which the response must have begun, 0 = none

    @property
    def transport(self) -> asyncio.Transport: ...

    @property
    def cycle(self) -> RequestCycle | None: ...

    @property
    def write_paused(self) -> bool: ...

    def end_request(self, cycle: RequestCycle) -> None:
        """The request and all of its body are written: end it on the wire."""

    def close(self) -> None: ...

    def abort(self) -> None: ...


class ClientSide(Protocol):
    """The calls an upstream connection makes on the client connection of the request it carries.

    The response itself is written straight to its transport, through `writer` (one write per read from
    the instance).
    """

    tunnel_active: bool  # set when bytes moved through the tunnel (its idle deadline is re-armed)

    @property
    def transport(self) -> asyncio.Transport: ...

    @property
    def writer(self) -> Writer:
        """The transport's `write`, a C call once compiled (wire.py)."""

    @property
    def write_paused(self) -> bool: ...

    @property
    def server(self) -> ServerState: ...

    def pause(self, reason: int) -> None:
        """Stop reading from the client for `reason` (a PAUSE_* bit)."""

    def resume(self, reason: int) -> None:
        """`reason` no longer holds reading back."""

    def send_body(self, cycle: RequestCycle) -> None:
        """Write the head and the body held so far to the newly attached upstream connection."""

    def pump_body(self, cycle: RequestCycle) -> None:
        """The upstream connection drained: send more of the buffered body."""

    def request_sent(self, cycle: RequestCycle) -> None:
        """The whole request is on its way: the response timeout starts."""

    def response_complete(self, cycle: RequestCycle) -> None:
        """The response is fully written to the client."""

    def upstream_failed(self, cycle: RequestCycle, *, retryable: bool, bad_response: bool = False) -> None:
        """The upstream connection broke before the response was complete (`bad_response`: the instance
        sent something that is not HTTP)."""

    def start_tunnel(self, cycle: RequestCycle, uconn: UpstreamSide, rest: bytes) -> None:
        """The instance switched protocols: copy bytes both ways from now on."""

    def tunnel_closed(self) -> None:
        """The instance closed its side of the tunnel."""

    def abort(self) -> None:
        """Drop the client connection (a response cut off midway)."""


class FileSide(Protocol):
    """A static file being written to the client (`static_stream.FileSender`)."""

    def resume(self) -> None:
        """The client's write buffer drained: write more."""

    def close(self) -> None:
        """The connection is gone: release the file."""


class RequestCycle:
    """One request and its response."""

    __slots__ = (
        "accept_encoding",
        "body",
        "body_done",
        "body_received",
        "buffering",
        "bytes_out",
        "chunked",
        "conn",
        "conn_tokens",
        "connection_header",
        "content_length",
        "counters",
        "error_status",
        "expect",
        "gate",
        "head",
        "header_bytes",
        "header_count",
        "headers_done",
        "host",
        "host_header",
        "http10",
        "instance",
        "is_head",
        "keep_alive",
        "method",
        "pieces",
        "request_id",
        "response_started",
        "retried",
        "sender",
        "sent_at",
        "started",
        "status",
        "te",
        "tunnel_in",
        "uconn",
        "upgrade",
        "upgrade_header",
        "upstream",
        "url",
        "xff",
    )

    def __init__(self, conn: ClientSide) -> None:
        self.conn = conn
        self.method = b""
        self.url = b""
        # The forwarded header lines: byte strings that joined are "Name: value\r\n" lines (the parser's
        # block, or an HTTP/2 request's fields as name, ": ", value, CRLF; headers.py reads them back).
        self.pieces: list[bytes] = []
        self.host_header: bytes | None = None
        self.host: str | None = None
        self.xff: bytes | None = None
        self.te: bytes | None = None
        self.expect: bytes | None = None
        # Accept-Encoding, when the client sent one and its app allows compression (compression.py).
        self.accept_encoding: bytes | None = None
        self.upgrade_header: bytes | None = None
        self.upgrade: bytes | None = None  # set when the request asks to switch protocols
        self.conn_tokens: list[bytes] | None = None
        self.connection_header = False  # a Connection or Proxy-Connection header came (client.py)
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.http10 = False
        self.is_head = False
        self.headers_done = False
        self.body_done = False
        self.body_received = 0
        self.header_count = 0
        self.header_bytes = 0
        self.head = b""
        # The body received while no upstream connection takes it: all of it when buffering.
        self.body: BodyBuffer | None = None
        self.buffering = False  # the whole body is received before the request is forwarded
        self.gate: AppGate | None = None  # the app a buffered request goes to once its body is complete
        self.uconn: UpstreamSide | None = None
        self.upstream: Upstream | None = None
        self.response_started = False
        self.error_status = 0
        self.retried = False
        self.sender: FileSide | None = None  # a static file being streamed (static_stream)
        # What the traffic counters and the access log read (tako.server.observe).
        self.counters: AppCounters | None = None  # the app's, from routing until the request is counted
        self.request_id: bytes | None = None  # X-Request-Id: the client's if sane, else made (request_id)
        self.started = 0.0  # native.now() when the request began
        self.sent_at = 0.0  # native.now() when the whole request was on its way to the instance, 0 = never
        self.status = 0  # of the response the client got
        self.bytes_out = 0  # response bytes written to the client (a tunnel's too)
        self.tunnel_in = 0  # bytes the client sent through a tunnel
        self.instance: str | None = None  # key of the instance it was sent to
