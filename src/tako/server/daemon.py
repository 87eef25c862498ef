"""tako-server's wiring: state, app registry, proxy listeners, control socket; signals and shutdown order.

Start order: data-dir lock (one server per data dir) → state → restore apps (routes) and adopt the
instances a previous tako-server left running → HTTP/HTTPS listeners → the missing always-on instances
started in the background (a request for an app still starting waits as in a cold start) → control socket.
Shutdown (SIGTERM/SIGINT): control socket closed → listeners stop accepting and finish in-flight requests
under a deadline → instances drained and stopped → state closed → lock released. SIGQUIT (a restart: the
service manager starts the next tako-server) shuts down the same way but leaves the instances running and
on record, for the next tako-server to adopt.

Hand-over (`tako-server handover`, server/handover.py): this process starts its successor and passes it the
lock and the listening sockets; once the successor is ready, this one stops accepting, closes its control
socket, drains and exits like a shutdown. A successor starts the same way as above but with the inherited
lock and sockets, leaves the instances on record to their owner, and binds its control socket last.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tako.config.server import ServerConfig
from tako.errors import TakoError
from tako.server import fd_store, handover, status
from tako.server.apps import isolation, oneoff_protocol, scaling
from tako.server.apps.oneoff import OneOffServer
from tako.server.apps.registry import AppRegistry
from tako.server.control import ControlServer
from tako.server.data_lock import DataDirLock
from tako.server.gc_tuning import freeze_startup_objects
from tako.server.observe.access_log import AccessFiles, AccessLog
from tako.server.observe.metrics_service import MetricsService
from tako.server.observe.metrics_sources import MetricsSources
from tako.server.observe.traffic import TrafficSnapshot, TrafficTotals
from tako.server.proxy import compiled as proxy_compiled
from tako.server.proxy.server import ProxyServer
from tako.server.startup_clock import StartupClock
from tako.server.state import DB_NAME, StateStore
from tako.server.tls.acme import AcmeManager
from tako.server.tls.certstore import TLS_DIR, CertStore
from tako.server.tls.challenges import CHALLENGES_DIR, ChallengeStore
from tako.server.workers.served_by import PidServices
from tako.server.workers.supervisor import WorkerPool

log = logging.getLogger("tako.server")


class Daemon:
    """One tako-server. Implements the proxy's `ServerServices` (status document, ACME challenges)."""

    def __init__(
        self,
        config: ServerConfig,
        handover_channel: socket.socket | None = None,
        clock: StartupClock | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or StartupClock()  # where the start-up time goes: logged once serving
        self._handover_channel = handover_channel  # started by a running tako-server to take over from it
        self.data_dir = config.data_dir
        self.lock: DataDirLock | None = None
        self.store: StateStore | None = None
        self.registry: AppRegistry | None = None
        self.control: ControlServer | None = None
        self.oneoff: OneOffServer | None = None
        self.proxy: ProxyServer | None = None
        self.workers: WorkerPool | None = None  # [server] workers > 1: data-plane worker processes
        self.traffic: TrafficTotals | None = None  # every app's traffic over this process and the workers
        self.access_files: AccessFiles | None = None  # every app's access.log (None: [access_log] off)
        self.metrics: MetricsService | None = None  # /metrics and the figures of `tako status`
        self.http_port: int | None = None
        self.https_port: int | None = None
        self.challenges = ChallengeStore(config.data_dir / CHALLENGES_DIR)
        self.acme = AcmeManager(
            config.acme, config.data_dir, self.challenges, on_stored=self._certificate_stored
        )
        self._stop = asyncio.Event()
        self.leave_instances = False  # on exit: leave the instances running for the next tako-server
        self.isolation = isolation.OFF
        self.inherited: handover.Inherited | None = None  # set in a successor during its hand-over
        self.kept: fd_store.Listeners | None = None  # the listening sockets the service manager kept
        self.handover_server: handover.HandoverServer | None = None
        self._idle: asyncio.Task[None] | None = None  # the idle loop (stops idle on-demand instances)
        self.handed_over = False  # a successor serves on our listening sockets: exit as _retire says

    # -- ServerServices -------------------------------------------------------------------------------
    def status_document(self) -> tuple[int, bytes]:
        return status.status_document(self.registry or (), certificates=self.acme.status())

    def acme_key_authorization(self, token: str) -> str | None:
        return self.challenges.get(token)

    def _routed_hosts_changed(self, hosts: set[str]) -> None:
        """Routes changed: certificates for new hosts are requested in the background (a deploy never
        waits for them)."""
        self.acme.set_hosts(h for h in hosts if not h.startswith("*."))

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        settings = self.config.server
        # Nothing tako-server creates (state db, logs, keys) is readable by other users, apps included.
        os.umask(0o027)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Before anything else (orphan sweep, state, sockets): a second server must leave the first one's
        # instances alone, and say only that it is refused.
        if self._handover_channel is not None:
            self.inherited = handover.receive(self._handover_channel)
            self.lock = DataDirLock.inherit(self.data_dir, self.inherited.lock_fd)
        else:
            self.lock = await DataDirLock.acquire(self.data_dir)
        self.clock.mark("lock")
        self.registry = self._open_state()
        await self.registry.restore()
        self.clock.mark("restore")
        if self.inherited is None:
            await self.registry.adopt_running()
            self.clock.mark("adopt")
        self._make_proxy()
        self.clock.mark("proxy")
        if self.inherited is None:
            self.kept = fd_store.matching(
                fd_store.take(), settings.listen, settings.http_port, settings.https_port
            )
        if self.inherited is not None:
            # Everything but the adoption before "ready": between "go" and our listening, nobody accepts.
            await self._take_over(self.inherited)
            self.clock.mark("handover_adopt")
        await self._listen()
        self.clock.mark("listen")
        # Listeners first: one app with a slow boot must not keep every other app unreachable.
        self.registry.start_restored()
        await self._start_workers()
        self._keep_listeners()
        self.clock.mark("workers")
        await self._open_sockets(Path(settings.socket))
        await self.acme.start()  # after the HTTP listener: HTTP-01 validations must find it
        self.clock.mark("control")
        if self.inherited is not None:
            self.leave_instances = False
            handover.announce_serving(self.inherited)
        freeze_startup_objects()
        self._log_ready()

    def _log_ready(self) -> None:
        log.info("start-up: %s", self.clock.line())
        log.info(
            "tako-server ready data_dir=%s socket=%s http_port=%s https_port=%s apps=%d data_plane=%s "
            "isolation=%s",
            self.data_dir,
            self.config.server.socket,
            self.http_port,
            self.https_port,
            len(self.registry.apps) if self.registry else 0,
            proxy_compiled.mode(),
            self.isolation.describe(),
        )

    def _open_state(self) -> AppRegistry:
        """App isolation, the state database and the (still empty) app registry."""
        self.isolation = isolation.detect(self.config.apps.isolation)
        if not self.isolation.enabled and self.config.apps.isolation != "off":
            log.warning("app isolation is off: apps run as tako-server's own user: %s", self.isolation.reason)
        (self.data_dir / "apps").mkdir(exist_ok=True)
        self.store = StateStore(self.data_dir / DB_NAME)
        return AppRegistry(
            self.data_dir,
            self.config.apps,
            self.store,
            on_hosts_changed=self._routed_hosts_changed,
            isolated=self.isolation,
        )

    async def _open_sockets(self, socket: Path) -> None:
        """Metrics listener, idle loop, control, one-off and hand-over sockets: what a hand-over stops in
        the old process before the new one starts them."""
        assert self.registry is not None
        await self._start_metrics()
        self._idle = asyncio.create_task(scaling.idle_loop(lambda: self.registry or ()))
        self.control = ControlServer(self.registry, self._info, self.acme.status, self._figures)
        await self.control.start(socket)
        self.oneoff = OneOffServer(self.registry)
        await self.oneoff.start(oneoff_protocol.socket_path(socket))
        self.handover_server = handover.HandoverServer(self._hand_over)
        await self.handover_server.start(handover.socket_path(socket))

    async def _take_over(self, inherited: handover.Inherited) -> None:
        """A successor, its routes restored: tell the old process we are ready, wait until it stopped
        accepting and watching its instances, then adopt them (they keep running throughout)."""
        assert self.registry is not None
        await handover.announce_ready(inherited)
        # From here until we serve, a failure must leave the instances running: the old process, which
        # then accepts again, still has them.
        self.leave_instances = True
        adopted = await self.registry.adopt_running()
        log.info("hand-over: adopted %d instance(s)", adopted)

    async def _hand_over(self) -> dict[str, Any]:
        """`tako-server handover`: start a successor and hand it the lock and listeners; drain and exit
        once it serves. On failure this process goes on serving, unchanged."""
        assert self.lock is not None and self.proxy is not None
        http, https = self.proxy.listening_sockets()
        workers = self.workers.listeners if self.workers is not None else []
        pid_file = Path(self.config.server.socket).parent / handover.PID_FILE
        handing = handover.Handing(
            self.lock.fd, http, https, workers, self._let_go, self._resume, self._retire, pid_file
        )
        return await handover.hand_over(handing, handover.successor_argv())

    async def _let_go(self) -> None:
        """The successor is ready: accept no more (the sockets stay open until it serves), free the
        control, one-off, hand-over and metrics sockets, stop reaping idle instances (it adopts them)."""
        assert self.proxy is not None
        self.proxy.pause_accepting()
        await self._close_sockets()

    async def _close_sockets(self) -> None:
        """What `_open_sockets` opened: idle loop, metrics, hand-over, control and one-off sockets."""
        if self._idle is not None:
            self._idle.cancel()
        if self.metrics is not None:
            await self.metrics.close()
        if self.handover_server is not None:
            self.handover_server.close()
        if self.control is not None:
            await self.control.close()
        if self.oneoff is not None:
            await self.oneoff.close()

    async def _resume(self) -> None:
        """The successor failed after `_let_go`: serve again as before."""
        assert self.proxy is not None
        self.proxy.resume_accepting()
        await self._open_sockets(Path(self.config.server.socket))

    def _retire(self) -> None:
        """The successor serves: close our copies of the listeners, drain, and leave the instances running
        on exit (the successor has adopted them)."""
        assert self.proxy is not None
        self.proxy.stop_accepting()
        if self.workers is not None:
            self.workers.stop_accepting()
        self.handed_over = True
        self.request_leave()

    async def _start_metrics(self) -> None:
        registry = self.registry
        assert registry is not None
        sources = MetricsSources(
            traffic=self._traffic,
            apps=lambda: registry.apps.values(),
            events=lambda: registry.events,
            certificates=self.acme.status,
            workers=lambda: self.workers.info() if self.workers is not None else [],
        )
        self.metrics = MetricsService(self.config.metrics, sources)
        await self.metrics.start()

    def _traffic(self) -> TrafficSnapshot:
        return self.traffic.snapshot() if self.traffic is not None else TrafficSnapshot()

    def _figures(self, app: str) -> dict[str, Any] | None:
        if self.metrics is None or not self.config.metrics.count_requests:
            return None  # requests not counted: `tako status` shows no last-minute line
        return self.metrics.figures.for_app(app)

    async def _certificate_stored(self, name: str) -> None:
        """Every process serving HTTPS re-reads the certificate ACME just stored for `name`."""
        if self.proxy is not None:
            self.proxy.certs.refresh(name)
        if self.workers is not None:
            await self.workers.certificate_stored(name)

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"http_port": self.http_port, "https_port": self.https_port}
        info["metrics_port"] = self.metrics.port if self.metrics is not None else None
        info["pid"] = os.getpid()
        info["isolation"] = self.isolation.describe()
        if self.workers is not None:
            info["workers"] = self.workers.info()
        return info

    def _make_proxy(self) -> None:
        assert self.registry is not None
        settings = self.config.server
        registry = self.registry
        certs = CertStore(
            self.data_dir / "certs",
            lambda h: registry.router.is_routed_host(h),
            tls_dir=self.data_dir / TLS_DIR,
        )
        multi = settings.workers > 1  # see server/workers: this process serves too, beside workers - 1 others
        services = PidServices(self) if multi else self
        snapshot = registry.snapshot
        proxy = self.proxy = ProxyServer(
            self.config.proxy,
            services,
            certs,
            snapshot,
            # Always: a worker orphaned by a kill -9 of the previous tako-server may still listen on these
            # ports until this one serves (it then exits), whatever `workers` is now.
            reuse_port=True,
            body_dir=self.data_dir / "tmp",
            access_log=self._access_log(),
            count_requests=self.config.metrics.count_requests,
        )
        self.traffic = TrafficTotals(proxy.traffic)
        registry.set_publisher(proxy.set_snapshot)
        # Made now, so the listener opens at once: the default certificate is read from the data dir, or made
        # (about 0.12 s, a child process) when missing or unsound.
        certs.ssl_context()

    async def _listen(self) -> None:
        settings = self.config.server
        proxy = self.proxy
        assert proxy is not None
        given = self.inherited or self.kept  # a hand-over's sockets, or those the service manager kept
        # Only workers' sockets kept: ours are bound on their ports (the configured ones, unless 0).
        http_port, https_port = self.kept.ports() if self.kept else (settings.http_port, settings.https_port)
        with _listener_errors(settings.listen, http_port, "HTTP", "http_port"):
            sock = given.http if given else None
            self.http_port = await proxy.start_http(settings.listen, http_port, sock=sock)
        with _listener_errors(settings.listen, https_port, "HTTPS", "https_port"):
            sock = given.https if given else None
            self.https_port = await proxy.start_https(settings.listen, https_port, sock=sock)

    def _access_log(self) -> AccessLog | None:
        """This process's access log, writing to the files the workers' lines go to too (None when off)."""
        settings = self.config.access_log
        if not settings.enabled:
            return None
        apps = self.config.apps
        files = AccessFiles(self.data_dir, max_bytes=apps.log_max_bytes, backups=apps.log_backups)
        self.access_files = files
        return AccessLog(asyncio.get_running_loop(), files.write, query=settings.query)

    async def _start_workers(self) -> None:
        # The previous tako-server's workers' listeners (a hand-over, or kept by the service manager):
        # taken by ours, closed by the pool when fewer workers are configured now.
        given = self.inherited or self.kept
        inherited = given.workers if given is not None else []
        if self.config.server.workers > 1:
            assert self.registry is not None and self.proxy is not None
            assert self.http_port is not None and self.https_port is not None and self.traffic is not None
            ports = {"http_port": self.http_port, "https_port": self.https_port}
            self.workers = WorkerPool(
                self.config,
                self.registry,
                self,
                self.challenges,
                **ports,
                traffic=self.traffic,
                listeners=inherited,
            )
            settings = self.config.server
            with _listener_errors(settings.listen, self.http_port, "a worker's", "[server] workers = 1"):
                await self.workers.start(self.proxy.set_snapshot)
        else:
            for pair in inherited:
                for sock in pair:
                    sock.close()

    def _keep_listeners(self) -> None:
        """Copies of the listening sockets to the service manager: after a crash, connections wait in
        their backlog for the next tako-server instead of being refused (server/fd_store.py). With
        workers, theirs only: after a crash the workers serve on, and the main process's sockets, closed
        with it, then send them every new connection instead of keeping some waiting for the next one."""
        assert self.proxy is not None
        if self.workers is not None:
            kept = fd_store.Listeners(None, None, list(self.workers.listeners))
        else:
            kept = fd_store.Listeners(*self.proxy.listening_sockets(), [])
        given = self.inherited or self.kept
        known = len(given.workers) if given is not None else 0
        fd_store.keep(kept, known_workers=known)

    def request_stop(self) -> None:
        self._stop.set()

    def request_leave(self) -> None:
        """Exit for a restart: the instances stay up, and the next tako-server adopts them."""
        self.leave_instances = True
        self._stop.set()

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, shut down in order."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGQUIT, self.request_leave)
        try:
            await self.start()
            await self._stop.wait()
            log.info("shutting down")
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        if self.lock is None:
            return  # refused before it started anything (another server holds the data dir)
        await self.acme.stop()
        await self._close_sockets()
        workers = None
        if self.workers is not None:
            workers = asyncio.create_task(self.workers.stop(self.config.apps.drain_timeout))
        if self.proxy is not None:
            await self.proxy.shutdown(self.config.apps.drain_timeout, handed_over=self.handed_over)
        if workers is not None:
            await workers  # stopped alongside this process's listeners; their in-flight counts drain too
        if self.proxy is not None and self.proxy.access_log is not None:
            self.proxy.access_log.close()  # the last lines, then the files
        if self.access_files is not None:
            self.access_files.close()
        if self.registry is not None and self.leave_instances:
            self.registry.detach()
        elif self.registry is not None:
            await self.registry.close()
        if self.store is not None:
            self.store.close()
        if self.lock is not None:
            self.lock.release()  # last: the next server may start only once these instances are gone
        log.info("tako-server stopped")


@contextlib.contextmanager
def _listener_errors(host: str, port: int, what: str, key: str) -> Iterator[None]:
    """A listener that cannot bind: say which port and why, instead of a traceback."""
    try:
        yield
    except OSError as exc:
        where = f"{host}:{port} ({what})"
        if exc.errno == errno.EADDRINUSE:
            raise TakoError(
                f"cannot listen on {where}: the port is already in use",
                hint=f"another process holds it (see: ss -ltnp 'sport = :{port}'); stop it, or set {key} "
                "in server-config.toml",
            ) from None
        if exc.errno == errno.EACCES:
            raise TakoError(
                f"cannot listen on {where}: permission denied",
                hint="ports below 1024 need CAP_NET_BIND_SERVICE: start tako-server with the systemd unit or "
                f"tako-server-service, or set {key} to a port above 1023",
            ) from None
        raise TakoError(f"cannot listen on {where}: {exc.strerror or exc}") from None
