"""Opening a new connection to an instance for a request, driven by the socket's readiness.

Owns the step between "the pool has no idle connection" and "the request is on the wire": a non-blocking
`connect`, then a request that is all head (no body to stream or buffer) written to the socket at once,
since over loopback or a veth pair the handshake has completed by the time `connect` returns; only when
that would block does it wait for the socket to be writable. Then a `plain.PlainTransport` is made around
the socket, and the connection joins the request (or the pool) in its `connection_made`, at once.

Why not `loop.create_connection` in a task: each step through the loop's ready queue costs a whole loop
turn, and under load a turn lasts 1-3 s (libuv polls up to 48 full batches of events before it runs ready
callbacks). The task's first step, its wake-up once connected and `connection_made` were three such turns
before the app saw the request, and the loop's transport would add a fourth before reading the response.
Now the app has the request at once, and its response is read as soon as it arrives. (Waiting for
writability costs a turn: libuv starts polling a new watcher only in its next poll phase.)

Host names (not IP literals) still go through the loop, which resolves them (`ClientConnection._connect`).
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Protocol

from tako.server.proxy.cycle import RequestCycle, ServerState
from tako.server.proxy.plain import PlainTransport
from tako.server.proxy.upstream import UpstreamConnection, UpstreamPool


class ConnectingClient(Protocol):
    """What a connect reads of and calls on the client connection it is for (`client.ClientConnection`)."""

    @property
    def closed(self) -> bool: ...

    @property
    def cycle(self) -> RequestCycle | None:
        """The request being answered."""

    @property
    def server(self) -> ServerState: ...

    def upstream_connected(self, cycle: RequestCycle, uconn: UpstreamConnection, sent: int) -> None:
        """`uconn` is connected for `cycle`, `sent` bytes of whose head are on its socket already."""

    def upstream_connect_failed(self, cycle: RequestCycle, reason: str) -> None:
        """The connect for `cycle` failed or timed out."""


class PendingConnect:
    """One connect in progress for `cycle` of `client` (which gets `upstream_connected` or
    `upstream_connect_failed`). A client that goes away meanwhile is not told: the connection then joins
    the pool, or is closed if the request had already been written to it."""

    __slots__ = ("client", "cycle", "fd", "pool", "sent", "sock", "timer")

    def __init__(
        self, client: ConnectingClient, cycle: RequestCycle, pool: UpstreamPool, timeout: float
    ) -> None:
        self.client = client
        self.cycle = cycle
        self.pool = pool
        self.sent = 0
        self.timer: Any = None
        loop = pool.loop
        sock = self.sock = socket.socket(pool.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the loop's own connections
        self.fd = sock.fileno()
        err = sock.connect_ex((pool.host, pool.port))
        if err == errno.EINPROGRESS:
            # Over loopback or a veth pair the handshake has usually completed by the time connect returns:
            # then the request goes out now, not one loop turn later (a new writer is only polled from the
            # next turn on, and under load a turn lasts seconds).
            err = self._send_early()
            if err == errno.EAGAIN:
                loop.add_writer(self.fd, self._writable)
                if timeout:
                    self.timer = loop.call_later(timeout, self._timed_out)
                return
        if err:
            self._failed(os.strerror(err))
        else:
            self._make_transport()

    def _send_early(self) -> int:
        """Write a body-less request's head to the socket if it is connected (probe with an empty send
        otherwise); 0 if it is, EAGAIN while the handshake is on, or the connect's error."""
        client = self.client
        cycle = self.cycle
        wanted = not client.closed and client.cycle is cycle and cycle.body is None and cycle.body_done
        try:
            self.sent = self.sock.send(cycle.head if wanted else b"")
        except BlockingIOError:
            return errno.EAGAIN
        except OSError as exc:
            return exc.errno or errno.ECONNREFUSED
        return 0

    def _writable(self) -> None:
        self.pool.loop.remove_writer(self.fd)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not err:
            err = self._send_early()
            if err == errno.EAGAIN:
                err = 0  # connected, the socket full (not expected of a new one): the transport writes it
        if err:
            self._failed(os.strerror(err))
        else:
            self._make_transport()

    def _timed_out(self) -> None:
        self.timer = None
        self.pool.loop.remove_writer(self.fd)
        self._failed("timed out")

    def _failed(self, reason: str) -> None:
        self.sent = 0
        self.sock.close()
        self.client.upstream_connect_failed(self.cycle, reason)

    def _make_transport(self) -> None:
        """Connected, a body-less request's head written: the transport around the socket tells the
        connection `connection_made` at once (see plain.py), which hands it over (`made`)."""
        uconn = UpstreamConnection(self.pool)
        uconn.connecting = self
        PlainTransport(self.pool.loop, self.sock, uconn)  # type: ignore[arg-type]

    def made(self, uconn: UpstreamConnection) -> None:
        """The transport exists (`uconn.connection_made`): hand the connection over."""
        client = self.client
        cycle = self.cycle
        if client.closed or client.cycle is not cycle:
            if self.sent or client.server.shutting_down:
                # The app answers a request nobody waits for (out of step for good), or the pools are gone.
                uconn.close()
            else:
                self.pool.release(uconn)
            return
        client.upstream_connected(cycle, uconn, self.sent)
