"""`[server] workers = 2`: a real tako-server serving from its main process and one data-plane worker on
the same ports (SO_REUSEPORT). Requests reach both; rolling updates, cold starts, idle stop and SIGTERM
keep their promises for requests a worker serves; a killed worker is replaced; none outlives the server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import psutil
import pytest
from tests.support.processes import stop_process
from tests.support.server_process import (
    REPO,
    HttpsConnection,
    LoadResult,
    TakoServer,
    get,
    https_get,
    run_load,
    wait_for,
)

from tako.config.server import ProxySettings
from tako.server.proxy.server import bind_listener
from tako.server.workers import messages as wm

pytestmark = pytest.mark.integration

HOST = "web.tako.test"
M = TypeVar("M", bound=wm.FromWorker)


@pytest.fixture
async def server() -> AsyncIterator[TakoServer]:
    srv = TakoServer(app_settings={"healthy_timeout": 3.0})
    srv.config.write_text(srv.config.read_text() + "\n[server]\nworkers = 2\n")
    try:
        await asyncio.to_thread(srv.start)
        yield srv
    finally:
        await asyncio.to_thread(srv.cleanup)


def worker_pids(server: TakoServer) -> list[int]:
    return [w["pid"] for w in server.call("hello")["workers"]]


async def served_by(conn: HttpsConnection) -> int:
    resp = await conn.get("/_tako/status")
    return int(json.loads(resp.body)["served_by"])


async def connection_to(server: TakoServer, pid: int, timeout: float = 15.0) -> HttpsConnection:
    """A keep-alive connection the kernel handed to process `pid` (new connections spread by hash; a
    worker just restarted listens once it has started, which takes a while on a busy machine)."""
    assert server.https_port
    deadline = time.monotonic() + timeout
    for _ in range(10_000):
        conn = HttpsConnection(server.https_port, HOST)
        if await served_by(conn) == pid:
            return conn
        await conn.close()
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no connection reached process {pid} within {timeout:g} s")


async def test_both_processes_take_connections(server: TakoServer) -> None:
    assert server.proc is not None and server.https_port
    await asyncio.to_thread(server.deploy, "web", "v1", instances=1)
    (worker,) = await asyncio.to_thread(worker_pids, server)
    assert worker != server.proc.pid and psutil.Process(worker).ppid() == server.proc.pid
    seen: set[int] = set()
    for _ in range(200):
        conn = HttpsConnection(server.https_port, HOST)
        try:
            seen.add(await served_by(conn))
            resp = await conn.get("/")
        finally:
            await conn.close()
        assert resp.status == 200 and resp.body.startswith("version=v1")
        if len(seen) == 2:
            break
    assert seen == {server.proc.pid, worker}
    # The worker answers /_tako/status from the document the main process sends it.
    conn = await connection_to(server, worker)
    try:
        doc = json.loads((await conn.get("/_tako/status")).body)
    finally:
        await conn.close()
    assert [a["app"] for a in doc["apps"]] == ["web"] and doc["healthy"] is True


async def test_an_app_that_streams_request_bodies_does_so_in_every_process(server: TakoServer) -> None:
    # request_buffering = false (tako.toml -> app.json) reaches the proxies of the main process and of the
    # worker: the app answers a request whose body is still incomplete (buffered, it would wait for it).
    assert server.proc is not None
    await asyncio.to_thread(server.deploy, "web", "v1", instances=1, request_buffering=False)
    (worker,) = await asyncio.to_thread(worker_pids, server)
    for pid in (server.proc.pid, worker):
        conn = await connection_to(server, pid)
        try:
            assert conn.writer is not None
            conn.writer.write(
                f"GET /pid HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 10\r\n\r\nhello".encode()
            )
            resp = await asyncio.wait_for(conn._read(), 10)
        finally:
            await conn.close()
        assert resp.status == 200, pid


async def test_rolling_update_under_load_with_workers(server: TakoServer) -> None:
    assert server.https_port
    await asyncio.to_thread(server.deploy, "web", "v1", instances=2)
    stop = asyncio.Event()
    result = LoadResult()
    load = asyncio.create_task(run_load(server.https_port, HOST, stop, result=result, keepalive=8, fresh=3))
    try:
        await asyncio.to_thread(server.deploy, "web", "v2", instances=2)
        target = len(result.responses) + 100
        await asyncio.to_thread(wait_for, lambda: len(result.responses) >= target or result.failures(), 30)
    finally:
        stop.set()
        await load
    assert result.failures() == []
    assert result.responses[0].body.startswith("version=v1")
    assert any(r.body.startswith("version=v2") for r in result.responses)
    assert all(r.body.startswith("version=v2") for r in result.responses[-50:])


async def test_cold_start_from_a_worker_gets_no_503(server: TakoServer) -> None:
    data = await asyncio.to_thread(server.deploy, "web", "v1", instances=0, env={"BOOT_DELAY": "0.3"})
    assert data["instances"] == []
    (worker,) = await asyncio.to_thread(worker_pids, server)
    conn = await connection_to(server, worker)
    try:
        first = asyncio.create_task(conn.get("/"))
        burst = await asyncio.gather(*(https_get(server.https_port, HOST) for _ in range(20)))  # type: ignore[arg-type]
        resp = await first
    finally:
        await conn.close()
    assert resp.status == 200 and resp.body.startswith("version=v1")
    assert [r.status for r in burst] == [200] * 20
    status = await asyncio.to_thread(server.call, "status", app="web")
    assert len(status["instances"]) == 1  # one cold start served both processes' queues


async def test_idle_stop_never_cuts_a_request_served_by_a_worker(server: TakoServer) -> None:
    await asyncio.to_thread(server.deploy, "web", "v1", instances=1)
    await asyncio.to_thread(server.deploy, "web", "v1", instances=0, idle_timeout=1)
    (worker,) = await asyncio.to_thread(worker_pids, server)
    conn = await connection_to(server, worker)
    try:
        slow = asyncio.create_task(conn.get("/slow?s=3"))

        def worker_request_counted() -> bool:
            return any(i["inflight"] == 1 for i in server.call("status", app="web")["instances"])

        # The main process knows about the worker's request (batched report), so idle stop waits.
        await asyncio.to_thread(wait_for, worker_request_counted)
        resp = await slow  # outlives idle_timeout three times over
    finally:
        await conn.close()
    assert resp.status == 200 and resp.body.startswith("slow v1")

    def stopped() -> bool:
        return bool(server.call("status", app="web")["instances"] == [])

    await asyncio.to_thread(wait_for, stopped, 15)
    assert "idle for 1 s: stopping 1 instance(s)" in server.app_log("web")


async def test_killed_worker_is_replaced(server: TakoServer) -> None:
    await asyncio.to_thread(server.deploy, "web", "v1", instances=1)
    (old,) = await asyncio.to_thread(worker_pids, server)
    os.kill(old, signal.SIGKILL)

    def replaced() -> int | None:
        info = server.call("hello")["workers"][0]
        return info["pid"] if info["pid"] != old and info["restarts"] == 1 else None

    new = await asyncio.to_thread(wait_for, replaced)
    conn = await connection_to(server, new)
    try:
        resp = await conn.get("/")
    finally:
        await conn.close()
    assert resp.status == 200 and resp.body.startswith("version=v1")


async def test_sigterm_drains_a_worker_request(server: TakoServer) -> None:
    await asyncio.to_thread(server.deploy, "web", "v1", instances=1)
    (worker,) = await asyncio.to_thread(worker_pids, server)
    conn = await connection_to(server, worker)
    try:
        slow = asyncio.create_task(conn.get("/slow?s=1.5"))

        def in_flight() -> bool:
            return bool(server.call("status", app="web")["instances"][0]["inflight"] == 1)

        await asyncio.to_thread(wait_for, in_flight)
        code = await asyncio.to_thread(server.stop)
        resp = await slow
    finally:
        await conn.close()
    assert resp.status == 200 and resp.body.startswith("slow v1")
    assert code == 0
    assert not psutil.pid_exists(worker)
    assert server.instance_processes() == []


async def test_a_worker_orphaned_by_a_sigkill_serves_until_a_new_server_does(server: TakoServer) -> None:
    """After `kill -9` of the main process its worker goes on serving from its last routing snapshot, and
    exits once a new tako-server serves, which can bind the same ports even with `workers = 1`."""
    await asyncio.to_thread(server.deploy, "web", "v1", instances=1)
    (worker,) = await asyncio.to_thread(worker_pids, server)
    assert server.https_port is not None
    await asyncio.to_thread(server.kill)
    # The main process's listeners died with it: every new connection reaches the worker.
    assert (await https_get(server.https_port, HOST, "/")).status == 200
    status = await https_get(server.https_port, HOST, "/_tako/status")
    assert json.loads(status.body)["served_by"] == worker
    server.config.write_text(server.config.read_text().replace("workers = 2", "workers = 1"))
    hello = await asyncio.to_thread(restart_on_the_same_ports, server)
    assert hello["https_port"] == server.https_port and "workers" not in hello

    def gone() -> bool:
        try:
            return bool(psutil.Process(worker).status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return True

    await asyncio.to_thread(wait_for, gone, 15, what="the orphaned worker to exit")
    log = server.log()
    assert "serving from the last routes" in log and "a new tako-server serves; stopping" in log, log
    assert "Traceback" not in log, log
    # Only the new single process listens now (it stamps no `served_by`: there is no other to tell from).
    status = await https_get(server.https_port, HOST, "/_tako/status")
    assert "served_by" not in json.loads(status.body)
    assert (await https_get(server.https_port, HOST, "/")).status == 200


def restart_on_the_same_ports(server: TakoServer) -> dict[str, object]:
    """A new tako-server on the crashed one's data dir, config and ports, as the service manager starts
    it; its `hello` once it serves."""
    cmd = server.command(http_port=server.http_port or 0)
    cmd[cmd.index("--https-port") + 1] = str(server.https_port)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with open(server.stderr_path, "ab") as log:
        server.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=server.base)

    def serving() -> dict[str, object] | None:
        assert server.proc is not None and server.proc.poll() is None, server.log()
        try:
            return dict(server.call("hello"))
        except OSError:
            return None

    hello: dict[str, object] = wait_for(serving, 30, what="the new tako-server")
    return hello


async def test_the_log_level_reaches_the_workers() -> None:
    """`tako-server --log-level debug` makes its workers log at debug too (each routing snapshot they
    apply); at the default level they do not."""
    for flags, expected in (((), False), (("--log-level", "debug"), True)):
        srv = TakoServer(app_settings={"healthy_timeout": 3.0})
        srv.config.write_text(srv.config.read_text() + "\n[server]\nworkers = 2\n")
        try:
            await asyncio.to_thread(srv.start, flags=flags)
            await asyncio.to_thread(srv.deploy, "web", "v1", instances=1)
            (worker,) = await asyncio.to_thread(worker_pids, srv)
            conn = await connection_to(srv, worker)
            try:
                resp = await conn.get("/")  # the worker routed it: it applied the snapshot with the app
            finally:
                await conn.close()
            assert resp.status == 200
            line = f"DEBUG tako.server.worker[{worker}]: routing snapshot"
            assert (line in srv.log()) is expected, srv.log()
        finally:
            await asyncio.to_thread(srv.cleanup)


async def test_worker_process_protocol(tmp_path: Path) -> None:
    """One worker process driven directly over its channel: it routes by the snapshot, answers status and
    ACME tokens from what it was sent, asks for a cold start and answers 503 when told it failed, and
    reports in-flight activity back."""

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nup\n")
        writer.close()

    app_server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    app_port = app_server.sockets[0].getsockname()[1]
    proc, ours = start_worker_process()
    reader, writer = await asyncio.open_unix_connection(sock=ours)

    def send(message: wm.ToWorker) -> None:
        writer.write(wm.encode(message))

    async def receive(kind: type[M]) -> M:
        while True:
            message = wm.decode_from_worker(await asyncio.wait_for(reader.readline(), 15))
            if isinstance(message, kind):
                return message

    try:
        send(configure(tmp_path))
        apps = (
            wm.AppRouting("web", (HOST,), (wm.InstanceAddress("k1", "127.0.0.1", app_port),), False, True),
            wm.AppRouting("cold", ("cold.tako.test",), (), False, True),
        )
        send(wm.RoutingSnapshot(version=1, apps=apps))
        send(wm.StatusDocument(code=200, body='{"healthy":true,"apps":[]}'))
        send(wm.AcmeTokens(tokens={"tok-1": "tok-1.thumb"}))
        ready = await receive(wm.Ready)
        assert ready.pid == proc.pid and ready.channel == wm.CHANNEL_VERSION
        assert (await receive(wm.Report)).version == 1

        resp = await https_get(ready.https_port, HOST, "/")
        assert (resp.status, resp.body) == (200, "up\n")
        report = await receive(wm.Report)
        while report.counters.get("k1", wm.Counters(inflight=1, starts=1)).inflight:
            report = await receive(wm.Report)  # one sent while the request was in flight (every 50 ms)
        # One request started and finished, the instance's whole response passed on: answered.
        assert report.counters["k1"] == wm.Counters(inflight=0, starts=1, answered=1)

        status = await https_get(ready.https_port, HOST, "/_tako/status")
        assert json.loads(status.body) == {"healthy": True, "apps": [], "served_by": proc.pid}
        assert get(ready.http_port, "/.well-known/acme-challenge/tok-1") == (200, "tok-1.thumb")

        cold = asyncio.create_task(https_get(ready.https_port, "cold.tako.test", "/"))
        assert (await receive(wm.Wake)).app == "cold"
        send(wm.WakeFailed(app="cold", reason="App is starting", status=503, retry_after=1))
        resp = await cold
        assert resp.status == 503 and "App is starting" in resp.body

        send(wm.Stop(timeout=5))
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        stop_process(proc)
        writer.close()
        app_server.close()


def start_worker_process(stderr: int | None = None) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """`python -m tako.server.workers.child` as the supervisor runs it, and our end of its channel."""
    ours, theirs = socket.socketpair()
    # Bound, not listening: the worker listens once it has its routes, as with the supervisor's sockets.
    http, https = (bind_listener("127.0.0.1", 0, reuse_port=True) for _ in range(2))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    fds = (theirs.fileno(), http.fileno(), https.fileno())
    argv = [sys.executable, "-m", "tako.server.workers.child", *map(str, fds)]
    proc = subprocess.Popen(argv, pass_fds=fds, env=env, stderr=stderr)
    for sock in (theirs, http, https):
        sock.close()
    return proc, ours


def configure(data_dir: Path, channel: int = wm.CHANNEL_VERSION) -> wm.Configure:
    return wm.Configure(
        channel=channel,
        log_level="INFO",
        listen="127.0.0.1",
        http_port=0,
        https_port=0,
        data_dir=str(data_dir),
        proxy=ProxySettings(),
        cold_start_queue=10,
        cold_start_timeout=10.0,
        drain_timeout=5.0,
    )


def test_a_worker_refuses_a_main_process_of_another_channel_version(tmp_path: Path) -> None:
    """A worker started by a main process of another Tako version (files upgraded under a running
    server) exits at once, saying why, instead of misreading its messages."""
    proc, ours = start_worker_process(stderr=subprocess.PIPE)
    try:
        ours.sendall(wm.encode(configure(tmp_path, channel=wm.CHANNEL_VERSION + 1)))
        _, stderr = proc.communicate(timeout=15)
    finally:
        stop_process(proc)
        ours.close()
    assert proc.returncode == 2
    assert f"speaks worker channel version {wm.CHANNEL_VERSION + 1}" in stderr.decode()
    assert "restart tako-server" in stderr.decode()
