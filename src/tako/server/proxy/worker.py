"""A data-plane worker process (`[server] workers = N`): a `ProxyServer` on the shared ports (SO_REUSEPORT)
fed routing snapshots, the status document and ACME tokens by the main process over a socketpair; it
reports per-instance in-flight counts back in batches and asks the main process to cold-start apps.

Run by `tako.server.workers` as `python -m tako.server.proxy.worker FD`; never started by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from tako.config.server import ProxySettings
from tako.routing import RouteTable, parse_route
from tako.server.proxy.backend import AppGate, AppUnavailable, Snapshot, pick_next
from tako.server.proxy.server import ProxyServer
from tako.server.tls.certstore import CertStore
from tako.server.tls.challenges import CHALLENGES_DIR, ChallengeStore, read_token_file

log = logging.getLogger("tako.server.worker")

REPORT_INTERVAL = 0.05  # in-flight counts reach the main process at most this late
HEARTBEAT = 1.0  # a report is sent at least this often, so the main process can tell a hung worker
WAKE_RESEND = 1.0  # a waiting cold start asks the main process again this often
LINE_LIMIT = 64 * 1024 * 1024
_PR_SET_PDEATHSIG = 1


class WorkerUpstream:
    """One instance as a worker sees it: address plus local counters (hot path: two integer updates)."""

    __slots__ = ("host", "inflight", "key", "port", "reported", "starts")

    def __init__(self, key: str, host: str, port: int) -> None:
        self.key = key
        self.host = host
        self.port = port
        self.inflight = 0
        self.starts = 0  # cumulative, so the main process sees activity even if in-flight did not change
        self.reported = (0, 0)

    def request_started(self) -> None:
        self.inflight += 1
        self.starts += 1

    def request_finished(self) -> None:
        self.inflight -= 1


class WorkerGate:
    """The proxy's `AppGate` in a worker; updated in place by each snapshot so cold-start waiters see it."""

    def __init__(self, name: str, worker: Worker) -> None:
        self.name = name
        self.rotation: tuple[WorkerUpstream, ...] = ()
        self.stopped = False
        self.request_buffering = True
        self.gone = False
        self.failure: AppUnavailable | None = None
        self.waking = False
        self.waiters = 0
        self._worker = worker
        self._rr = 0
        self._changed = asyncio.Event()

    def pick(self) -> WorkerUpstream | None:
        self._rr, chosen = pick_next(self.rotation, self._rr)
        return chosen

    async def wait_upstream(self) -> WorkerUpstream:
        up = self.pick()
        if up is not None:
            return up
        if self.stopped or self.gone:
            raise AppUnavailable(f"App {self.name} is stopped", retry_after=None)
        settings = self._worker.settings
        if self.waiters >= settings["cold_start_queue"]:
            raise AppUnavailable("App is starting", retry_after=1)
        self.waiters += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings["cold_start_timeout"]
        try:
            while True:
                if not self.waking:
                    self.failure = None
                    self.waking = True
                    self._worker.send({"t": "wake", "app": self.name})
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise AppUnavailable("App is starting", retry_after=1)
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(remaining, WAKE_RESEND))
                if not changed.is_set():
                    # Nothing heard for a while: ask again (the main process dedupes wakes per app).
                    self.waking = False
                up = self.pick()
                if up is not None:
                    return up
                failure = self.failure
                if failure is not None:
                    raise AppUnavailable(
                        failure.reason, status=failure.status, retry_after=failure.retry_after
                    )
                if self.stopped or self.gone:
                    raise AppUnavailable(f"App {self.name} is stopped", retry_after=None)
        finally:
            self.waiters -= 1

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class WorkerRouter:
    """The proxy's `Router` over plain data; rebuilt on every snapshot."""

    __slots__ = ("_table",)

    def __init__(self, table: RouteTable[WorkerGate]) -> None:
        self._table = table

    def match(self, host: str, path: str) -> AppGate | None:
        return self._table.match(host, path)

    def is_routed_host(self, host: str) -> bool:
        return self._table.is_routed_host(host)


class Worker:
    """The worker's side of the channel, and the `ServerServices` its listeners answer from."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.settings: dict[str, Any] = {}
        self.version = 0
        self.gates: dict[str, WorkerGate] = {}
        self.upstreams: dict[str, WorkerUpstream] = {}
        self.router = WorkerRouter(RouteTable(()))
        self.challenges = ChallengeStore()
        self.challenge_dir: Path | None = None
        self._status: tuple[int, bytes] = (503, b'{"error":"starting"}')
        self._served_by = b',"served_by":%d}' % os.getpid()
        self._acked = -1
        self._keep: set[str] = set()
        self._last_sent = 0.0
        self.proxy: ProxyServer | None = None
        self.stopping = asyncio.Event()
        self.stop_timeout = 30.0

    # -- ServerServices -------------------------------------------------------------------------------
    def status_document(self) -> tuple[int, bytes]:
        return self._status

    def acme_key_authorization(self, token: str) -> str | None:
        found = self.challenges.get(token)
        if found is None and self.challenge_dir is not None:
            found = read_token_file(self.challenge_dir, token)  # set by the issuer, not pushed here yet
        return found

    # -- channel --------------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def apply_snapshot(self, message: dict[str, Any]) -> None:
        seen: set[str] = set()
        entries = []
        keep: set[str] = set()
        for app in message["apps"]:
            name = app["name"]
            gate = self.gates.get(name)
            if gate is None:
                gate = self.gates[name] = WorkerGate(name, self)
            seen.add(name)
            rotation = []
            for key, host, port in app["up"]:
                up = self.upstreams.get(key)
                if up is None or up.port != port or up.host != host:
                    up = self.upstreams[key] = WorkerUpstream(key, host, port)
                rotation.append(up)
                keep.add(key)
            gate.rotation = tuple(rotation)
            gate.stopped = bool(app["stopped"])
            gate.request_buffering = bool(app.get("request_buffering", True))
            gate.gone = False
            if gate.rotation:
                gate.waking = False
            for route in app["routes"]:
                entries.append((parse_route(route), gate))
            gate.notify()
        for name in list(self.gates):
            if name not in seen:
                gate = self.gates.pop(name)
                gate.gone = True
                gate.rotation = ()
                gate.notify()
        self.router = WorkerRouter(RouteTable(entries))
        self.version = message["v"]
        self._keep = keep
        if self.proxy is not None:
            self.proxy.set_snapshot(Snapshot(router=self.router))
        self.report()  # acknowledges this version with counts taken after it applies

    def report(self) -> None:
        """Send changed per-instance counters (and the applied snapshot version) to the main process."""
        changed: dict[str, list[int]] = {}
        for key, up in list(self.upstreams.items()):
            counters = (up.inflight, up.starts)
            if counters != up.reported:
                changed[key] = [up.inflight, up.starts]
                up.reported = counters
            elif up.inflight <= 0 and key not in self._keep:
                del self.upstreams[key]  # out of every rotation, idle, and its zero already reported
        now = time.monotonic()
        if changed or self.version != self._acked or now - self._last_sent >= HEARTBEAT:
            self._acked = self.version
            self._last_sent = now
            self.send({"t": "report", "v": self.version, "up": changed})

    def apply_status(self, message: dict[str, Any]) -> None:
        body: bytes = message["body"].encode()
        if body.endswith(b"}") and len(body) > 2:
            body = body[:-1] + self._served_by  # which process answered, for operators and tests
        self._status = (int(message["code"]), body)

    def apply_tokens(self, tokens: dict[str, str]) -> None:
        store = ChallengeStore()
        for token, value in tokens.items():
            with contextlib.suppress(ValueError):
                store.set(token, value)
        self.challenges = store

    def apply_wake_failed(self, message: dict[str, Any]) -> None:
        gate = self.gates.get(message["app"])
        if gate is not None:
            gate.waking = False
            gate.failure = AppUnavailable(
                message["reason"], status=message.get("status", 503), retry_after=message.get("retry_after")
            )
            gate.notify()

    async def read_loop(self) -> None:
        """Apply messages until the main process says stop or goes away."""
        while True:
            line = await self.reader.readline()
            if not line:
                self.stop_timeout = min(self.stop_timeout, 1.0)  # the main process is gone
                self.stopping.set()
                return
            try:
                self.apply(json.loads(line))
            except Exception:
                # Serving stale routes would be worse than a restart: exit, the main process starts another.
                log.exception("bad message from the main process; stopping")
                self.stop_timeout = min(self.stop_timeout, 1.0)
                self.stopping.set()
                return

    def apply(self, message: dict[str, Any]) -> None:
        """One message from the main process (see tako.server.workers for the protocol)."""
        kind = message["t"]
        if kind == "snap":
            self.apply_snapshot(message)
        elif kind == "status":
            self.apply_status(message)
        elif kind == "tokens":
            self.apply_tokens(message["tokens"])
        elif kind == "wake_failed":
            self.apply_wake_failed(message)
        elif kind == "stop":
            self.stop_timeout = float(message["timeout"])
            self.stopping.set()

    async def report_loop(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            self.report()


def _die_with_parent(parent: int) -> None:
    """No orphan if the main process is SIGKILLed: the kernel kills us when it dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


async def serve(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
    worker = Worker(reader, writer)
    config = json.loads(await reader.readline())
    worker.settings = config
    worker.stop_timeout = float(config["drain_timeout"])
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.stopping.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # Ctrl-C reaches the group: the main stops us
    certs = CertStore(Path(config["certs"]), worker.router.is_routed_host)
    worker.challenge_dir = Path(config["certs"]).parent / CHALLENGES_DIR
    proxy = worker.proxy = ProxyServer(
        ProxySettings(**config["proxy"]),
        worker,
        certs,
        Snapshot(router=worker.router),
        https_redirect_port=config["https_port"],
        reuse_port=True,
        body_dir=Path(config["certs"]).parent / "tmp",  # <data dir>/tmp, as in the main process
    )
    reading = asyncio.create_task(worker.read_loop())
    http_port = await proxy.start_http(config["listen"], config["http_port"])
    https_port = await proxy.start_https(config["listen"], config["https_port"])
    worker.send({"t": "ready", "pid": os.getpid(), "http_port": http_port, "https_port": https_port})
    reporting = asyncio.create_task(worker.report_loop())
    await worker.stopping.wait()
    await proxy.shutdown(worker.stop_timeout)
    worker.report()  # the last counts (all zero once drained)
    reporting.cancel()
    reading.cancel()
    with contextlib.suppress(Exception):
        await writer.drain()
    writer.close()


def main() -> None:
    fd = int(sys.argv[1])
    _die_with_parent(int(sys.argv[2]))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    import uvloop

    uvloop.run(serve(fd))


if __name__ == "__main__":
    main()
