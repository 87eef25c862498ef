"""A data-plane worker process (`[server] workers = N`): a `ProxyServer` on the shared ports (SO_REUSEPORT)
fed routing snapshots, the status document and ACME tokens by the main process over a socketpair (the
messages of `tako.server.workers.messages`); it reports per-instance in-flight counters back in batches and
asks the main process to cold-start apps.

Run by the supervisor as `python -m tako.server.workers.child FD HTTP_FD HTTPS_FD` (its channel and the
listening sockets the main process bound for it and keeps); never started by hand.

When the main process disappears without saying stop (kill -9, a crash), a worker serves on from its last
routing snapshot (the instances outlive tako-server) until a new tako-server serves or `[server]
orphan_timeout` (30 s) passes, then drains like at a stop: requests keep being served while tako-server
restarts. Bounded, because its in-flight counts no longer hold a drain or an idle stop back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from tako.errors import ProtocolError
from tako.protocol.client_networks import parse_networks
from tako.routing import RouteTable, parse_route
from tako.server.gc_tuning import freeze_startup_objects
from tako.server.observe.access_log import AccessFiles, AccessLog
from tako.server.observe.traffic import TrafficSnapshot, traffic_snapshot
from tako.server.proxy.backend import AppUnavailable, Snapshot
from tako.server.proxy.cold_start import ColdStartQueue
from tako.server.proxy.counters import InFlight, Rotation
from tako.server.proxy.maintenance import MaintenanceAnswer
from tako.server.proxy.server import ProxyServer, listen
from tako.server.proxy.static_files import StaticMounts
from tako.server.tls.certstore import TLS_DIR, CertStore
from tako.server.tls.challenges import CHALLENGES_DIR, ChallengeStore, read_token_file
from tako.server.workers.messages import (
    CHANNEL_VERSION,
    MAX_TO_WORKER,
    AcmeTokens,
    AppRouting,
    CertificateStored,
    Configure,
    Counters,
    FromWorker,
    MaintenanceRouting,
    Ready,
    Report,
    RoutingSnapshot,
    StatusDocument,
    Stop,
    ToWorker,
    Traffic,
    Wake,
    WakeFailed,
    check_channel,
    decode_to_worker,
    encode,
    read_line,
)
from tako.server.workers.served_by import stamp_served_by

log = logging.getLogger("tako.server.worker")

REPORT_INTERVAL = 0.05  # in-flight counts reach the main process at most this late
HEARTBEAT = 1.0  # a report is sent at least this often, so the main process can tell a hung worker
TRAFFIC_INTERVAL = 1.0  # per-app traffic counters reach the main process at most this late
WAKE_RESEND = 1.0  # a waiting cold start asks the main process again this often
ORPHAN_DRAIN = 1.0  # seconds in-flight requests get when the main process goes and it does not serve on
ORPHAN_POLL = 0.1  # how often an orphan checks whether the new tako-server's control socket answers


class WorkerUpstream(InFlight):
    """One instance as a worker sees it: address plus local counters (`InFlight`: the hot path's two
    calls, compiled with the proxy)."""

    __slots__ = ("error_pages", "host", "port", "reported")  # `key` is InFlight's

    def __init__(self, key: str, host: str, port: int) -> None:
        super().__init__()
        self.key = key
        self.host = host
        self.port = port
        self.error_pages: dict[int, bytes] = {}  # its app's, set with each snapshot
        self.reported = (0, 0, 0)


class WorkerGate(Rotation):
    """The proxy's `AppGate` in a worker; updated in place by each snapshot so cold-start waiters see it
    (`Rotation`: the instances in rotation, and the proxy's `pick` over them)."""

    def __init__(self, name: str, child: DataPlaneChild) -> None:
        super().__init__()
        self.name = name
        self.stopped = False
        self.request_buffering = True
        self.compression = True
        self.https = True
        self.maintenance: MaintenanceAnswer | None = None
        self.error_pages: dict[int, bytes] = {}
        self.static: StaticMounts | None = None
        self._maintenance_from: MaintenanceRouting | None = None
        self._pages_from: dict[str, str] = {}
        self.gone = False
        self.failure: AppUnavailable | None = None
        self.waking = False
        self._child = child
        self._changed = asyncio.Event()
        self._queue = ColdStartQueue()

    async def wait_upstream(self) -> WorkerUpstream:
        config = self._child.config
        return await self._queue.wait(self, config.cold_start_queue, config.cold_start_timeout)

    def is_stopped(self) -> bool:
        return self.stopped or self.gone

    async def await_cold_start(self, remaining: float) -> None:
        """Ask the main process for an instance and wait for a snapshot (or a failure) about this app."""
        if not self.waking:
            self.failure = None
            self.waking = True
            self._child.send(Wake(app=self.name))
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), min(remaining, WAKE_RESEND))
        if not changed.is_set():
            self.waking = False  # nothing heard for a while: ask again (the main process dedupes wakes)
        failure = self.failure
        if failure is not None and not self.rotation:
            raise AppUnavailable(failure.reason, status=failure.status, retry_after=failure.retry_after)

    def update(self, app: AppRouting, rotation: tuple[WorkerUpstream, ...]) -> None:
        self.rotation = rotation
        self.stopped = app.stopped
        self.request_buffering = app.request_buffering
        self.compression = app.compression
        self.https = app.https
        self._take_pages(app)
        for upstream in rotation:
            upstream.error_pages = self.error_pages
        self.gone = False
        if rotation:
            self.waking = False
        self.notify()

    def _take_pages(self, app: AppRouting) -> None:
        """Rebuild the maintenance answer and the error pages only when the main process changed them."""
        if app.maintenance != self._maintenance_from:
            wire = self._maintenance_from = app.maintenance
            self.maintenance = (
                None if wire is None else MaintenanceAnswer(wire.page.encode(), parse_networks(wire.allow))
            )
        if app.error_pages != self._pages_from:
            self._pages_from = app.error_pages
            self.error_pages = {int(status): page.encode() for status, page in app.error_pages.items()}
        if app.static != (self.static.dirs if self.static is not None else {}):
            self.static = StaticMounts(app.static) if app.static else None

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class DataPlaneChild:
    """The worker's side of the channel, and the `ServerServices` its listeners answer from."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, config: Configure) -> None:
        self.reader = reader
        self.writer = writer
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.version = 0
        self.gates: dict[str, WorkerGate] = {}
        self.upstreams: dict[str, WorkerUpstream] = {}
        # The proxy's `Router` as it is: a route table from patterns to gates, rebuilt on every snapshot.
        self.router: RouteTable[WorkerGate] = RouteTable(())
        self.challenges = ChallengeStore()
        self._status: tuple[int, bytes] | None = None
        self._routed = False
        # Set once a routing snapshot and the status document arrived: only then does the worker listen,
        # so a restarted worker never refuses a routed host's TLS handshake or answers status with 503.
        self.primed = asyncio.Event()
        self._acked = -1
        self._keep: set[str] = set()
        self._last_sent = 0.0
        self.proxy: ProxyServer | None = None
        self.stopping = asyncio.Event()
        self.stop_timeout = config.drain_timeout
        self.handed_over = False  # a Stop said a successor's worker accepts on our listeners
        self._traffic_sent = TrafficSnapshot()

    # -- ServerServices -------------------------------------------------------------------------------
    def status_document(self) -> tuple[int, bytes]:
        return self._status or (503, b'{"error":"starting"}')

    def acme_key_authorization(self, token: str) -> str | None:
        found = self.challenges.get(token)
        if found is None:  # set by the issuer, not pushed here yet
            found = read_token_file(self.data_dir / CHALLENGES_DIR, token)
        return found

    # -- channel --------------------------------------------------------------------------------------
    def send(self, message: FromWorker) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(message))

    def apply(self, message: ToWorker) -> None:
        """One message from the main process."""
        match message:
            case RoutingSnapshot():
                self.apply_snapshot(message)
            case StatusDocument():
                body = stamp_served_by(message.body.encode(), os.getpid())
                self._status = (message.code, body)
            case AcmeTokens():
                self.apply_tokens(message.tokens)
            case CertificateStored():
                if self.proxy is not None:  # before it serves, its store reads the files on first use
                    self.proxy.certs.refresh(message.name)
            case WakeFailed():
                self.apply_wake_failed(message)
            case Stop():
                self.handed_over = self.handed_over or message.handed_over
                self.stop(message.timeout)
            case Configure():
                raise ProtocolError("the main process sent its configuration twice")
        if self._routed and self._status is not None:
            self.primed.set()

    def stop(self, timeout: float) -> None:
        self.stop_timeout = min(self.stop_timeout, timeout) if self.stopping.is_set() else timeout
        self.stopping.set()

    def apply_snapshot(self, snapshot: RoutingSnapshot) -> None:
        entries = []
        keep: set[str] = set()
        for app in snapshot.apps:
            gate = self.gates.get(app.name)
            if gate is None:
                gate = self.gates[app.name] = WorkerGate(app.name, self)
            gate.update(app, tuple(self._upstream(a.key, a.host, a.port) for a in app.rotation))
            keep.update(a.key for a in app.rotation)
            entries += [(parse_route(route), gate) for route in app.routes]
        listed = {app.name for app in snapshot.apps}
        for name in [n for n in self.gates if n not in listed]:
            gate = self.gates.pop(name)
            gate.gone = True
            gate.rotation = ()
            gate.notify()
        self.router = RouteTable(entries)
        self.version = snapshot.version
        self._routed = True
        self._keep = keep
        if self.proxy is not None:
            self.proxy.set_snapshot(Snapshot(router=self.router))
        log.debug(
            "routing snapshot %d applied: %d app(s), %d instance(s) in rotation",
            snapshot.version,
            len(snapshot.apps),
            len(keep),
        )
        self.report()  # acknowledges this version with counts taken after it applies

    def _upstream(self, key: str, host: str, port: int) -> WorkerUpstream:
        up = self.upstreams.get(key)
        if up is None or up.port != port or up.host != host:
            up = self.upstreams[key] = WorkerUpstream(key, host, port)
        return up

    def report(self) -> None:
        """Send changed per-instance counters (and the applied snapshot version) to the main process."""
        changed: dict[str, Counters] = {}
        for key, up in list(self.upstreams.items()):
            counters = (up.inflight, up.starts, up.answered)
            if counters != up.reported:
                changed[key] = Counters(inflight=up.inflight, starts=up.starts, answered=up.answered)
                up.reported = counters
            elif up.inflight <= 0 and key not in self._keep:
                del self.upstreams[key]  # out of every rotation, idle, and its zero already reported
        now = time.monotonic()
        if changed or self.version != self._acked or now - self._last_sent >= HEARTBEAT:
            self._acked = self.version
            self._last_sent = now
            self.send(Report(version=self.version, counters=changed))

    def apply_tokens(self, tokens: dict[str, str]) -> None:
        store = ChallengeStore()
        for token, value in tokens.items():
            with contextlib.suppress(ValueError):
                store.set(token, value)
        self.challenges = store

    def apply_wake_failed(self, message: WakeFailed) -> None:
        gate = self.gates.get(message.app)
        if gate is not None:
            gate.waking = False
            gate.failure = AppUnavailable(
                message.reason, status=message.status, retry_after=message.retry_after
            )
            gate.notify()

    async def read_loop(self) -> None:
        """Apply messages until the main process says stop or goes away; however this ends, the worker
        stops (`serve` waits for that alone)."""
        drain = ORPHAN_DRAIN
        try:
            while line := await read_line(self.reader):
                self.apply(decode_to_worker(line))
        except Exception:
            # Serving stale routes would be worse than a restart: exit, the main process starts another.
            log.exception("bad message from the main process; stopping")
        else:
            if await self.serve_orphaned():
                drain = self.config.drain_timeout  # it served on: its requests get a stop's drain
        finally:
            self.stop(drain)

    async def serve_orphaned(self) -> bool:
        """The main process is gone without saying stop (kill -9, a crash): go on serving from the last
        routing snapshot until a new tako-server serves (its control socket, opened last, answers) or
        `[server] orphan_timeout` passes (True: it served). The instances outlive tako-server, so the
        routes still reach them."""
        path = self.config.control_socket
        if self.stopping.is_set() or not self.primed.is_set() or not path:
            log.warning("the main process closed the channel; stopping")
            return False
        log.warning("the main process is gone; serving from the last routes until a new one serves")
        self.writer.close()  # nothing reads reports now
        loop = asyncio.get_running_loop()
        limit = self.config.orphan_timeout
        deadline = loop.time() + limit
        while not self.stopping.is_set():
            if await _answers(path):
                log.info("a new tako-server serves; stopping")
                # It accepts on these very listeners (kept for it): like a hand-over, the connections this
                # worker accepted but has not read a request on yet are answered, not aborted.
                self.handed_over = True
                break
            if loop.time() > deadline:
                log.warning("no new tako-server within %g s; stopping", limit)
                break
            await asyncio.sleep(ORPHAN_POLL)
        return True

    async def report_loop(self) -> None:
        next_traffic = 0.0
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            self.report()
            now = time.monotonic()
            if now >= next_traffic:
                next_traffic = now + TRAFFIC_INTERVAL
                self.report_traffic()

    def report_traffic(self) -> None:
        """Send this worker's per-app traffic counters when they changed since the last time."""
        if self.proxy is None:
            return
        snapshot = traffic_snapshot(self.proxy.traffic)
        if snapshot != self._traffic_sent:
            self._traffic_sent = snapshot
            self.send(Traffic(snapshot))


async def _answers(path: str) -> bool:
    """A server listens on the unix socket `path` (a dead one's socket file refuses connections)."""
    try:
        _, writer = await asyncio.open_unix_connection(path)
    except OSError:
        return False
    writer.close()
    return True


async def _configure(reader: asyncio.StreamReader) -> Configure:
    """The first message: the configuration, from a main process that speaks this channel version."""
    config = decode_to_worker(await reader.readline())
    if not isinstance(config, Configure):
        raise ProtocolError(f"the main process sent {config.kind!r} before its configuration")
    check_channel(config.channel, "the main process")
    logging.getLogger().setLevel(config.log_level)
    return config


async def serve(fd: int, listeners: tuple[socket.socket, socket.socket]) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd), limit=MAX_TO_WORKER)
    child = DataPlaneChild(reader, writer, await _configure(reader))
    config = child.config
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, child.stopping.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # Ctrl-C reaches the group: the main stops us
    # This worker appends its own access lines to the apps' files (see observe/access_log.AccessFiles).
    access_files = (
        AccessFiles(child.data_dir, max_bytes=config.log_max_bytes, backups=config.log_backups)
        if config.access_log.enabled
        else None
    )
    proxy = child.proxy = ProxyServer(
        config.proxy,
        child,
        CertStore(child.data_dir / "certs", child.router.is_routed_host, tls_dir=child.data_dir / TLS_DIR),
        Snapshot(router=child.router),
        https_redirect_port=config.https_port,
        reuse_port=True,
        body_dir=child.data_dir / "tmp",  # as in the main process
        access_log=(
            AccessLog(loop, access_files.write, query=config.access_log.query) if access_files else None
        ),
        count_requests=config.count_requests,
    )
    reading = asyncio.create_task(child.read_loop())
    await _first_of(child.primed, child.stopping)  # routes and status first, then listen
    if not child.stopping.is_set():
        http, https = listeners
        listen(http)
        listen(https)
        http_port = await proxy.start_http(config.listen, config.http_port, sock=http)
        https_port = await proxy.start_https(config.listen, config.https_port, sock=https)
        child.send(Ready(CHANNEL_VERSION, pid=os.getpid(), http_port=http_port, https_port=https_port))
        freeze_startup_objects()
    reporting = asyncio.create_task(child.report_loop())
    await child.stopping.wait()
    await proxy.shutdown(child.stop_timeout, handed_over=child.handed_over)
    child.report()  # the last counts (all zero once drained)
    child.report_traffic()
    if proxy.access_log is not None and access_files is not None:
        proxy.access_log.close()
        access_files.close()
    reporting.cancel()
    reading.cancel()
    with contextlib.suppress(Exception):
        await writer.drain()
    writer.close()


async def _first_of(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()


def main() -> None:
    if len(sys.argv) != 4:  # started by a tako-server of another version (the files upgraded under it)
        sys.exit("tako worker: expected FD HTTP_FD HTTPS_FD; restart tako-server")
    fd, http_fd, https_fd = (int(arg) for arg in sys.argv[1:4])
    logging.basicConfig(
        level=logging.INFO,  # until the configuration names tako-server's level
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    import uvloop

    try:
        uvloop.run(serve(fd, (socket.socket(fileno=http_fd), socket.socket(fileno=https_fd))))
    except ProtocolError as exc:
        log.error("cannot start: %s%s", exc, f" ({exc.hint})" if exc.hint else "")
        sys.exit(2)


if __name__ == "__main__":
    main()
