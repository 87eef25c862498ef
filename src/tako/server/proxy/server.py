"""`ProxyServer`: the listeners, batch accept, upstream pools, deadline sweeper and graceful shutdown.

Per-connection and per-request work lives in `client.py` / `upstream.py`; this module owns what spans
connections: the current routing snapshot, the pools keyed by instance, and the server's lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, cast

from tako.config.server import ProxySettings
from tako.routing import normalise_host
from tako.server.proxy import h2, native, tls
from tako.server.proxy.access_line import AccessLog
from tako.server.proxy.backend import ServerServices, Snapshot, Upstream
from tako.server.proxy.body_buffer import BodyBuffer, default_directory
from tako.server.proxy.client import _DEADLINE_HEADER as DEADLINE_HEADER
from tako.server.proxy.client import ClientConnection
from tako.server.proxy.counters import RequestIds, TrafficCounters
from tako.server.proxy.cycle import ServerFields
from tako.server.proxy.plain import PlainTransport
from tako.server.proxy.upstream import UpstreamConnection, UpstreamPool
from tako.server.tls.certstore import CertStore

log = logging.getLogger(__name__)

ACCEPT_BATCH = 256  # connections accepted per readiness event: a burst never starves the loop
ACCEPT_BACKOFF = 0.1  # out of file descriptors: stop accepting this long instead of spinning
LISTEN_BACKLOG = 4096
_HOST_CACHE_MAX = 4096


class _Listener:
    __slots__ = ("forward", "port", "sock", "ssl", "tls")

    def __init__(self, sock: socket.socket, ssl_context: ssl.SSLContext | None, forward: bool) -> None:
        self.sock = sock
        self.tls = ssl_context is not None
        self.forward = forward
        self.ssl = ssl_context
        self.port: int = sock.getsockname()[1]


class ProxyServer(ServerFields):
    """The HTTP and HTTPS listeners of tako-server and everything they share."""

    def __init__(
        self,
        settings: ProxySettings,
        services: ServerServices,
        certs: CertStore,
        snapshot: Snapshot,
        *,
        https_redirect_port: int | None = None,
        reuse_port: bool = False,
        body_dir: Path | None = None,
        access_log: AccessLog | None = None,
        count_requests: bool = True,
    ) -> None:
        self.settings = settings
        # Per-app counters, request ids and access lines of the requests this process serves.
        self.traffic = TrafficCounters(count_requests)
        self.request_ids = RequestIds()
        self.access_log = access_log
        # Request bodies past request_buffer_memory go to anonymous temporary files here (<data dir>/tmp).
        self.body_dir = body_dir if body_dir is not None else default_directory()
        self.services = services
        self.certs = certs
        super().__init__(snapshot)  # the snapshot and `shutting_down`, read per request (cycle.ServerFields)
        self.loop = asyncio.get_running_loop()
        self.connections: set[ClientConnection] = set()
        self.pools: dict[str, UpstreamPool] = {}
        self._redirect_port = https_redirect_port
        self._reuse_port = reuse_port  # several worker processes sharing the listening ports
        self.https_suffix = b"" if https_redirect_port in (None, 443) else b":%d" % https_redirect_port
        self._listeners: list[_Listener] = []
        self._paused = False  # pause_accepting: a hand-over in progress
        self._tasks: set[asyncio.Task[Any]] = set()
        self._host_cache: dict[bytes, str | None] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._handshake_timeout = settings.header_timeout or None
        self._handshaking: set[tls.TLSTransport] = set()  # TLS connections before their first request
        timeouts = (
            settings.header_timeout,
            settings.keepalive_timeout,
            settings.upstream_response_timeout,
            settings.tunnel_idle_timeout,
            settings.body_rate_window,
        )
        self._sweep_interval = max(0.05, min(1.0, min((t for t in timeouts if t > 0), default=4.0) / 4))
        certs.set_routed_host_predicate(self._is_routed_host)
        self.http2 = h2.available()
        if not self.http2:
            log.info("HTTP/2 is not offered: %s", h2.unavailable_reason())
        certs.offer_http2(self.http2)

    # -- public API -------------------------------------------------------------------------------

    async def start_http(
        self, host: str, port: int, *, forward: bool = False, sock: socket.socket | None = None
    ) -> int:
        """Listen for plain HTTP on host:port (0 = ephemeral), or on `sock`, a listening socket handed
        over by the previous tako-server; returns the bound port.

        It answers ACME challenges and status and redirects routed hosts to HTTPS; with `forward=True` it
        proxies like the HTTPS listener instead (behind a TLS-terminating balancer, and for benchmarks).
        """
        return self._listen(host, port, None, forward, sock)

    async def start_https(self, host: str, port: int, *, sock: socket.socket | None = None) -> int:
        """Listen for HTTPS on host:port (0 = ephemeral) or on a handed-over `sock`; returns the port.

        HTTP->HTTPS redirects name this port unless it is 443 or `https_redirect_port` was given.
        """
        bound = self._listen(host, port, self.certs.ssl_context(), True, sock)
        if self._redirect_port is None:
            self.https_suffix = b"" if bound == 443 else b":%d" % bound
        return bound

    def listening_sockets(self) -> tuple[socket.socket, socket.socket]:
        """The HTTP and HTTPS listening sockets (in the order started), to hand over."""
        http, https = (listener.sock for listener in self._listeners)
        return http, https

    def pause_accepting(self) -> None:
        """A hand-over: accept nothing more for now; new connections wait in the backlog, for the new
        tako-server (or for `resume_accepting` if it fails)."""
        self._paused = True
        for listener in self._listeners:
            self.loop.remove_reader(listener.sock.fileno())

    def resume_accepting(self) -> None:
        self._paused = False
        for listener in self._listeners:
            self.loop.add_reader(listener.sock.fileno(), self._accept, listener)

    def stop_accepting(self) -> None:
        """Accept no more connections; those accepted go on. Closing our descriptor leaves a socket
        handed over to a new tako-server listening there, its backlog intact."""
        for listener in self._listeners:
            self.loop.remove_reader(listener.sock.fileno())
            listener.sock.close()
        self._listeners.clear()

    async def shutdown(self, timeout: float, *, handed_over: bool = False) -> None:
        """Stop accepting, let in-flight requests finish within `timeout`, then close everything.

        `handed_over`: a new tako-server accepts on these sockets now. Connections this process accepted
        but that are still before their first request (TLS handshake, head not read yet) then get it
        answered instead of closed: their clients cannot tell that close from a failure, whereas a client
        whose idle keep-alive connection closes retries on a new one (which the new process accepts).
        Bounded by the header timeout, as such a connection would be anyway."""
        self.stop_accepting()
        deadline = self.loop.time() + timeout
        if handed_over:
            first_requests = min(deadline, self.loop.time() + (self.settings.header_timeout or timeout))
            while self._awaiting_first_request() and self.loop.time() < first_requests:
                await asyncio.sleep(0.02)
        self.shutting_down = True
        for transport in list(self._handshaking):
            transport.abort()
        for conn in list(self.connections):
            conn.shutdown()
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        for pool in self.pools.values():
            pool.close_all()
        self.pools.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _awaiting_first_request(self) -> bool:
        if self._handshaking:
            return True
        return any(c.deadline_kind == DEADLINE_HEADER and c.cycle is None for c in self.connections)

    @property
    def ports(self) -> list[int]:
        return [listener.port for listener in self._listeners]

    # -- used by connections ----------------------------------------------------------------------

    def normalise_host(self, host_header: bytes) -> str | None:
        cache = self._host_cache
        try:
            return cache[host_header]
        except KeyError:
            pass
        host = normalise_host(host_header.decode("latin-1"))
        if len(cache) >= _HOST_CACHE_MAX:
            cache.clear()
        cache[host_header] = host
        return host

    def pool_for(self, upstream: Upstream) -> UpstreamPool:
        key = upstream.key
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = UpstreamPool(key, upstream.host, upstream.port, self.loop)
        return pool

    async def connect(self, pool: UpstreamPool) -> UpstreamConnection:
        """A new connection to the pool's instance, within the connect timeout (TimeoutError past it)."""
        pool.last_used = native.now()  # keeps a pool whose connections are all busy from being dropped
        async with asyncio.timeout(self.settings.upstream_connect_timeout or None):
            _, protocol = await self.loop.create_connection(
                lambda: _as_protocol(UpstreamConnection(pool)), pool.host, pool.port
            )
        return cast(UpstreamConnection, protocol)

    def body_buffer(self) -> BodyBuffer:
        """A buffer for one request body."""
        return BodyBuffer(self.settings.request_buffer_memory, self.body_dir)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    # -- internals --------------------------------------------------------------------------------

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("proxy task failed", exc_info=task.exception())

    def _is_routed_host(self, host: str) -> bool:
        return self.router.is_routed_host(host)

    def _listen(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        forward: bool,
        inherited: socket.socket | None,
    ) -> int:
        sock = inherited if inherited is not None else self._bind(host, port)
        sock.setblocking(False)
        listener = _Listener(sock, ssl_context, forward)
        self._listeners.append(listener)
        self.loop.add_reader(sock.fileno(), self._accept, listener)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._sweep_interval, self._sweep)
        return listener.port

    def _bind(self, host: str, port: int) -> socket.socket:
        sock = bind_listener(host, port, reuse_port=self._reuse_port)
        listen(sock)
        return sock

    def _accept(self, listener: _Listener) -> None:
        # uvloop's own server accepts one connection per loop iteration; under a burst of new connections
        # that leaves the backlog full for seconds. Accept a batch per readiness event instead.
        sock = listener.sock
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peername = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # The socket stays readable, so retrying at once would spin: back off instead.
                    log.warning("accept paused for %.1f s: %s", ACCEPT_BACKOFF, exc)
                    self.loop.remove_reader(sock.fileno())
                    self.loop.call_later(ACCEPT_BACKOFF, self._resume_accept, listener)
                return
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if listener.ssl is not None:
                tls.accept(
                    self.loop,
                    conn,
                    peername,
                    listener.ssl,
                    self._https_protocol,
                    self._handshake_timeout,
                    self._handshaking,
                )
            else:
                # In the accept callback, not through the loop's ready queue (see plain.py).
                protocol = _as_protocol(ClientConnection(self, False, listener.forward))
                PlainTransport(self.loop, conn, protocol, peername, read_now=True)

    def _resume_accept(self, listener: _Listener) -> None:
        if listener in self._listeners and not self._paused:
            self.loop.add_reader(listener.sock.fileno(), self._accept, listener)

    def _https_protocol(self, alpn: str | None) -> asyncio.Protocol:
        if alpn == h2.ALPN_H2 and self.http2:
            return h2.new_connection(self)
        return _as_protocol(ClientConnection(self, True, True))

    def _sweep(self) -> None:
        """Fire connection deadlines (header, keep-alive, linger, stalled reader, upstream response, idle
        tunnel); trim idle pools."""
        now = native.now()  # the clock of the connections' deadlines
        for conn in list(self.connections):
            if conn.send_deadline and now >= conn.send_deadline:
                conn.send_deadline = 0.0
                conn.abort()  # the client stopped reading what it asked for
                continue
            deadline = conn.deadline
            if deadline and now >= deadline:
                conn.on_deadline()
            cycle = conn.cycle
            if cycle is not None:
                uconn = cycle.uconn
                if uconn is not None and uconn.deadline and now >= uconn.deadline and uconn.cycle is cycle:
                    conn.upstream_timeout(cycle)
        stale = []
        for key, pool in self.pools.items():
            pool.sweep(now)
            if not pool.idle and now - pool.last_used > 60.0:
                stale.append(key)
        for key in stale:
            del self.pools[key]
        if not self.shutting_down or self.connections:
            self._sweeper = self.loop.call_later(self._sweep_interval, self._sweep)


def _as_protocol(protocol: ClientConnection | UpstreamConnection) -> asyncio.Protocol:
    """The connection classes are asyncio protocols by their methods, not by subclassing (that would keep
    them from being compiled as extension types, see client.py): tell the type checker."""
    return cast(asyncio.Protocol, protocol)


def bind_listener(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to host:port, not listening yet (`listen` makes it take connections)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def listen(sock: socket.socket) -> None:
    """Start taking connections on a bound socket (again on one already listening: no change)."""
    sock.listen(LISTEN_BACKLOG)
