"""The main process's side of `[server] workers = N` (N > 1): it keeps its own listeners and runs N-1
worker processes (`python -m tako.server.workers.child`) on the same ports (SO_REUSEPORT). It binds each
worker's listening sockets itself and keeps them open for its whole life, so that the connections queued
on a worker's socket wait there for its replacement (a restart, or the next tako-server's worker after a
hand-over, which is handed these sockets) instead of being reset when the worker exits. It feeds them
routing snapshots, the status document and ACME tokens, folds their reports into the instances' in-flight
counts (`ledger`), cold-starts apps for them, restarts a worker that dies or hangs and stops them all
gracefully at shutdown. Every message is a dataclass of `messages`, built in one method here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from tako.config.server import ServerConfig
from tako.errors import ProtocolError, TakoError
from tako.server.apps.app import ManagedApp
from tako.server.apps.instance import Instance
from tako.server.apps.registry import AppRegistry
from tako.server.observe.traffic import TrafficTotals
from tako.server.proxy.backend import AppUnavailable, ServerServices, Snapshot
from tako.server.proxy.server import bind_listener
from tako.server.tls.challenges import ChallengeStore
from tako.server.workers import messages
from tako.server.workers.ledger import InflightLedger

log = logging.getLogger("tako.server.workers")

STATUS_INTERVAL = 0.5  # the status document workers serve is at most this old (plus a change's push)
TOKENS_INTERVAL = 0.05  # pending ACME tokens reach the workers this fast
READY_TIMEOUT = 30.0
SETTLE_TIMEOUT = 2.0  # seconds a change waits for the workers to apply it before its reply
SETTLE_POLL = 0.005
MAX_RESTART_DELAY = 10.0
SILENCE_LIMIT = 10.0  # a ready worker silent this long (it reports every second) is hung: killed, replaced
MAX_BACKLOG = 64 * 1024 * 1024  # a worker this far behind on its channel is stuck: it is killed and replaced


class WorkerHandle:
    """The main process's handle on one worker process and its account of what the worker uses."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pid: int | None = None
        self.ready = asyncio.Event()
        self.ledger = InflightLedger()
        self.restarts = 0
        self.started_at = 0.0
        self.last_heard = 0.0

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def send(self, line: bytes) -> None:
        """One encoded message (encoded once for every worker it goes to)."""
        writer = self.writer
        if writer is None or writer.is_closing():
            return
        if writer.transport.get_write_buffer_size() > MAX_BACKLOG:
            log.error("data-plane worker pid=%s stopped reading its channel; killing it", self.pid)
            writer.close()
            self.kill()
            return
        writer.write(line)


class WorkerPool:
    """N-1 worker processes beside the main process's own `ProxyServer`."""

    def __init__(
        self,
        config: ServerConfig,
        registry: AppRegistry,
        services: ServerServices,
        challenges: ChallengeStore,
        *,
        http_port: int,
        https_port: int,
        traffic: TrafficTotals,
        listeners: list[tuple[socket.socket, socket.socket]] | None = None,
    ) -> None:
        self.config = config
        self.traffic = traffic  # workers' counters are folded in here (Traffic messages)
        self.registry = registry
        self.services = services
        self.challenges = challenges
        self.http_port = http_port
        self.https_port = https_port
        self.workers = [WorkerHandle(slot) for slot in range(config.server.workers - 1)]
        # Each worker's (HTTP, HTTPS) listening sockets, handed over by the previous tako-server or bound
        # in `start`; a worker restarted takes the same ones.
        self.listeners = list(listeners or [])
        self.version = 0
        self._snapshot_line = b""
        self._rotation: dict[str, Instance] = {}
        self._instances: dict[str, Instance] = {}
        self._tokens: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waking: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._handed_over = False  # stop_accepting: a successor's workers accept on our listeners
        self._status_pending = False
        self._start_failed = asyncio.Event()
        self._last_status = b""

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self, local_publish: Callable[[Snapshot], None]) -> None:
        """Start the workers and wait until each listens; from now on every snapshot reaches them too."""

        def publish(snapshot: Snapshot) -> None:
            local_publish(snapshot)
            self.publish()

        self._bind_listeners()
        self.registry.set_publisher(publish)
        self.registry.settled = self.applied
        for worker in self.workers:
            self._spawn_task(self._supervise(worker))
        ready: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(*(w.ready.wait() for w in self.workers))
        )
        failed: asyncio.Future[Any] = asyncio.ensure_future(self._start_failed.wait())
        await asyncio.wait([ready, failed], timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        failed.cancel()
        if not all(w.ready.is_set() for w in self.workers):
            why = "one exited" if self._start_failed.is_set() else f"not ready within {READY_TIMEOUT:g} s"
            raise TakoError(
                f"data-plane workers did not start ({why})",
                hint="see the worker's error above in the log (e.g. a port it cannot bind); "
                "or set workers = 1 in the [server] section of server-config.toml",
            )
        self._spawn_task(self._status_loop())
        log.info("data-plane workers ready: %s", ", ".join(str(w.pid) for w in self.workers))

    def _bind_listeners(self) -> None:
        """One (HTTP, HTTPS) pair per worker: those handed over, then new ones bound (not listening: the
        worker listens once it can route). Handed-over pairs beyond the workers now configured are closed:
        the connections queued on them are reset, as when their worker would have closed them."""
        wanted = len(self.workers)
        for http, https in self.listeners[wanted:]:
            http.close()
            https.close()
        del self.listeners[wanted:]
        listen = self.config.server.listen
        while len(self.listeners) < wanted:
            http = bind_listener(listen, self.http_port, reuse_port=True)
            try:
                https = bind_listener(listen, self.https_port, reuse_port=True)
            except OSError:
                http.close()
                raise
            self.listeners.append((http, https))

    def _close_listeners(self) -> None:
        """Our copies: a worker (or a successor tako-server) listening on one keeps it open."""
        for http, https in self.listeners:
            http.close()
            https.close()
        self.listeners.clear()

    async def applied(self) -> None:
        """Wait until every running worker acknowledged the latest routing snapshot (a worker reports
        right after applying one), at most SETTLE_TIMEOUT: a hung worker is the heartbeat's business."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT
        while any(w.ready.is_set() and w.ledger.acked < self.version for w in self.workers):
            if loop.time() > deadline:
                log.warning("a data-plane worker has not applied routing snapshot %d yet", self.version)
                return
            await asyncio.sleep(SETTLE_POLL)

    def stop_accepting(self) -> None:
        """A hand-over: workers stop accepting and drain now (not restarted when they exit); `stop` then
        waits for them."""
        self._stopping = True
        self._handed_over = True
        self._broadcast(messages.Stop(timeout=self.config.apps.drain_timeout, handed_over=True))

    async def stop(self, timeout: float) -> None:
        """Workers stop accepting and finish in-flight requests within `timeout`, then exit."""
        self._stopping = True
        self._broadcast(messages.Stop(timeout=timeout, handed_over=self._handed_over))
        self._close_listeners()  # no worker is restarted now: new connections go to a listening process
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        if procs:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(p.wait()) for p in procs], timeout=timeout + 5
            )
            for task in pending:
                task.cancel()
            for proc in procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    with contextlib.suppress(Exception):
                        await proc.wait()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in self.workers:
            worker.ledger.release(self._instances)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def info(self) -> list[dict[str, Any]]:
        return [{"pid": w.pid, "restarts": w.restarts} for w in self.workers]

    def _broadcast(self, message: messages.ToWorker) -> None:
        line = messages.encode(message)
        for worker in self.workers:
            worker.send(line)

    # -- snapshots (called on every route or instance change) -----------------------------------------
    def publish(self) -> None:
        self.version += 1
        apps = []
        rotation: dict[str, Instance] = {}
        instances: dict[str, Instance] = {}
        for app in self.registry.apps.values():
            instances.update((inst.key, inst) for inst in app.instances)
            rotation.update((inst.key, inst) for inst in app.rotation)
            apps.append(
                messages.AppRouting(
                    name=app.name,
                    routes=tuple(app.routes),
                    rotation=tuple(messages.InstanceAddress(i.key, i.host, i.port) for i in app.rotation),
                    stopped=app.stopped or app.closing,
                    request_buffering=app.request_buffering,
                    maintenance=maintenance_routing(app),
                    error_pages={str(status): page.decode() for status, page in app.error_pages.items()},
                    static=app.release.static_dirs(),
                    compression=app.compression,
                    https=app.https,
                )
            )
        # Instances a worker still counts requests on stay known until the counts come back to zero.
        for worker in self.workers:
            for key in worker.ledger.counts:
                if key not in instances and key in self._instances:
                    instances[key] = self._instances[key]
        self._instances = instances
        self._rotation = rotation
        snapshot = messages.RoutingSnapshot(version=self.version, apps=tuple(apps))
        self._snapshot_line = messages.encode(snapshot)
        for worker in self.workers:
            if worker.writer is not None:
                self._send_snapshot(worker)
        self._push_status_soon()

    def _send_snapshot(self, worker: WorkerHandle) -> None:
        worker.ledger.snapshot_sent(self.version, self._rotation)
        worker.send(self._snapshot_line)

    # -- status and ACME tokens -----------------------------------------------------------------------
    def _status_line(self) -> bytes:
        code, body = self.services.status_document()
        return messages.encode(messages.StatusDocument(code=code, body=body.decode()))

    def _push_status_soon(self) -> None:
        if not self._status_pending:
            self._status_pending = True
            asyncio.get_running_loop().call_soon(self._push_status)

    def _push_status(self) -> None:
        self._status_pending = False
        line = self._status_line()
        if line == self._last_status:
            return  # unchanged (a new worker gets it when it starts)
        self._last_status = line
        for worker in self.workers:
            worker.send(line)

    def _push_tokens(self, force: bool = False) -> None:
        with self.challenges._lock:  # a consistent copy; ChallengeStore has no change hook
            tokens = dict(self.challenges._pending)
        if tokens != self._tokens or force:
            self._tokens = tokens
            self._broadcast(messages.AcmeTokens(tokens=tokens))

    async def certificate_stored(self, name: str) -> None:
        """Every worker re-reads the certificate just stored for `name`; returns once each has (at most
        SETTLE_TIMEOUT). The acknowledgement is the routing snapshot's: a worker applies messages in order,
        so one that acknowledges the snapshot sent after this message has applied this one too."""
        self._broadcast(messages.CertificateStored(name=name))
        self.publish()
        await self.applied()

    async def _status_loop(self) -> None:
        last_status = 0.0
        while True:
            await asyncio.sleep(TOKENS_INTERVAL)
            self._push_tokens()
            now = time.monotonic()
            if now - last_status >= STATUS_INTERVAL:
                last_status = now
                self._push_status()
                self._kill_silent(now)

    def _kill_silent(self, now: float) -> None:
        for worker in self.workers:
            if (
                worker.ready.is_set()
                and worker.writer is not None
                and now - worker.last_heard > SILENCE_LIMIT
            ):
                log.error("data-plane worker pid=%s silent for %g s; killing it", worker.pid, SILENCE_LIMIT)
                worker.last_heard = now
                worker.kill()

    # -- cold starts asked by workers ------------------------------------------------------------------
    def _wake(self, name: str) -> None:
        task = self._waking.get(name)
        if task is not None and not task.done():
            return
        if name in self.registry.apps:
            self._waking[name] = self._spawn_task(self._run_wake(name))

    async def _run_wake(self, name: str) -> None:
        app = self.registry.apps.get(name)
        if app is None:
            return
        try:
            await app.wait_upstream()
        except AppUnavailable as exc:
            reason, status, retry_after = exc.reason, exc.status, exc.retry_after
            self._broadcast(messages.WakeFailed(name, reason, status, retry_after))

    # -- supervision ----------------------------------------------------------------------------------
    def _spawn_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _configure(self) -> messages.Configure:
        cfg = self.config
        return messages.Configure(
            channel=messages.CHANNEL_VERSION,
            # This process's level (tako-server --log-level), so a worker logs what the main process does.
            log_level=logging.getLevelName(logging.getLogger("tako").getEffectiveLevel()),
            listen=cfg.server.listen,
            http_port=self.http_port,
            https_port=self.https_port,
            data_dir=str(cfg.data_dir),
            proxy=cfg.proxy,
            access_log=cfg.access_log,
            log_max_bytes=cfg.apps.log_max_bytes,
            log_backups=cfg.apps.log_backups,
            count_requests=cfg.metrics.count_requests,
            cold_start_queue=cfg.apps.cold_start_queue,
            cold_start_timeout=cfg.apps.cold_start_timeout,
            drain_timeout=cfg.apps.drain_timeout,
            control_socket=str(cfg.server.socket),
            orphan_timeout=cfg.server.orphan_timeout,
        )

    async def _supervise(self, worker: WorkerHandle) -> None:
        delay = 0.0
        while not self._stopping:
            if delay:
                await asyncio.sleep(delay)
            worker.started_at = time.monotonic()
            try:
                await self._run_worker(worker)
            except Exception:
                log.exception("data-plane worker %d failed", worker.slot)
            worker.ledger.release(self._instances)
            if worker.pid is not None:
                self.traffic.retire(worker.pid)  # its counts stay in the totals, its gauges drop
            if not worker.ready.is_set():
                self._start_failed.set()
            if self.stopping:
                return
            # A worker that ran a while is restarted at once; one that keeps dying backs off.
            delay = (
                0.0
                if time.monotonic() - worker.started_at > 30
                else min(MAX_RESTART_DELAY, max(0.5, delay * 2))
            )
            worker.restarts += 1
            log.warning("data-plane worker pid=%s exited; restarting in %.1f s", worker.pid, delay)

    async def _run_worker(self, worker: WorkerHandle) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = (theirs.fileno(), *(sock.fileno() for sock in self.listeners[worker.slot]))
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tako.server.workers.child",
                *(str(fd) for fd in fds),
                pass_fds=fds,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        worker.proc = proc
        worker.pid = proc.pid
        worker.last_heard = time.monotonic()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=messages.MAX_FROM_WORKER)
        worker.writer = writer
        try:
            writer.write(messages.encode(self._configure()))
            self._send_snapshot(worker)
            writer.write(self._status_line())
            self._push_tokens(force=True)
            await self._read_messages(worker, reader)
        finally:
            worker.writer = None
            writer.close()
            if proc.returncode is None and not self._stopping:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()

    async def _read_messages(self, worker: WorkerHandle, reader: asyncio.StreamReader) -> None:
        """Until the worker closes its channel; a message that does not parse ends the worker."""
        while line := await messages.read_line(reader):
            worker.last_heard = time.monotonic()
            try:
                self._on_message(worker, messages.decode_from_worker(line))
            except ProtocolError as exc:
                log.error("data-plane worker pid=%s: %s; killing it", worker.pid, exc)
                return

    def _on_message(self, worker: WorkerHandle, message: messages.FromWorker) -> None:
        match message:
            case messages.Report():
                worker.ledger.apply(message, self._instances)
            case messages.Wake():
                self._wake(message.app)
            case messages.Traffic():
                if worker.pid is not None:
                    self.traffic.update(worker.pid, message.snapshot)
            case messages.Ready():
                messages.check_channel(message.channel, f"worker pid={worker.pid}")
                worker.ready.set()


def maintenance_routing(app: ManagedApp) -> messages.MaintenanceRouting | None:
    """The app's maintenance answer as the workers receive it (None while the app is not in maintenance)."""
    answer = app.maintenance
    if answer is None:
        return None
    return messages.MaintenanceRouting(page=answer.page.decode(), allow=app.maintenance_setting.allow)
