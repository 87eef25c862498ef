"""`tako-server handover`: a new tako-server process takes the listening sockets and the data-dir lock from
the running one, which then drains and exits. Under a request loop over HTTPS (keep-alive and new
connections) and with a WebSocket open, no request fails; a successor that cannot start leaves the running
server serving, unchanged, and the requester learns why."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest
from tests.support.server_process import (
    REPO,
    LoadResult,
    TakoServer,
    https_get,
    run_load,
    wait_for,
    websocket,
)

from tako.server.state import DB_NAME

pytestmark = pytest.mark.integration

HOST = "web.tako.test"


def request_handover(srv: TakoServer) -> subprocess.CompletedProcess[str]:
    """`tako-server handover` as an operator (or `tako servers restart`) runs it."""
    cmd = [sys.executable, "-m", "tako.server.main", "handover", "--socket", str(srv.socket)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)


def stop_pid(pid: int) -> None:
    """SIGTERM a successor (not the test's child) and wait for it, bounded; SIGKILL past the bound."""
    with contextlib.suppress(psutil.NoSuchProcess):
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def srv() -> Iterator[TakoServer]:
    server = TakoServer(app_settings={"drain_timeout": 20.0})
    successors: list[int] = []
    server.successors = successors  # type: ignore[attr-defined]
    try:
        server.start()
        yield server
    finally:
        for pid in successors:
            stop_pid(pid)
        server.cleanup()


def instance_pids(srv: TakoServer) -> list[int]:
    return sorted(int(i["pid"]) for i in srv.call("status", app="web")["instances"])


def hand_over(srv: TakoServer) -> int:
    """A successful hand-over; returns the successor's pid (stopped by the fixture)."""
    done = request_handover(srv)
    assert done.returncode == 0, f"{done.stderr}\n{srv.log()}"
    pid = int(srv.call("hello")["pid"])
    srv.successors.append(pid)  # type: ignore[attr-defined]
    return pid


async def test_handover_under_load_fails_no_request_and_keeps_the_websocket_open(srv: TakoServer) -> None:
    await asyncio.to_thread(srv.deploy, "web", "v1", instances=1)
    assert srv.proc is not None and srv.https_port is not None
    old = srv.proc.pid
    pids = instance_pids(srv)
    pid_file = srv.socket.parent / "tako-server.pid"  # as tako-server-service keeps it, beside the socket
    pid_file.write_text(f"{old}\n")
    stop = asyncio.Event()
    result = LoadResult()
    async with websocket(srv.https_port, HOST) as ws:
        await ws.send("before")
        assert await ws.recv() == "before"
        load = asyncio.create_task(run_load(srv.https_port, HOST, stop, keepalive=3, fresh=2, result=result))
        await asyncio.to_thread(wait_for, lambda: len(result.responses) > 50, 30, what="load running")
        new = await asyncio.to_thread(hand_over, srv)
        assert new != old
        assert pid_file.read_text().strip() == str(new)
        served_before = len(result.responses)
        await asyncio.to_thread(wait_for, lambda: len(result.responses) > served_before + 50, 30)
        # The old process still drains (the WebSocket is in flight on it) while the new one serves.
        assert srv.proc.poll() is None
        await ws.send("after")
        assert await ws.recv() == "after"
    stop.set()
    await load
    assert result.failures() == []
    # With nothing left in flight, the old process exits; the successor keeps the data-dir lock.
    await asyncio.to_thread(srv.proc.wait, 30)
    assert srv.proc.returncode == 0
    assert (await https_get(srv.https_port, HOST)).status == 200
    assert srv.call("hello")["https_port"] == srv.https_port
    # The successor adopted the very instances: same processes, still running after the old one exited.
    assert instance_pids(srv) == pids
    assert all(psutil.pid_exists(pid) for pid in pids)
    # Exactly the two processes shared the lock: a third server on this data dir is still refused.
    third = srv.command(socket=srv.base / "third.sock")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    refused = subprocess.run(third, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert refused.returncode != 0 and "another tako-server" in refused.stderr, refused.stderr


async def test_a_successor_that_cannot_start_leaves_the_running_server_serving(srv: TakoServer) -> None:
    await asyncio.to_thread(srv.deploy, "web", "v1", instances=1)
    assert srv.proc is not None and srv.https_port is not None
    pids = instance_pids(srv)
    good = srv.config.read_text()
    srv.config.write_text(good + "\n[server\n")  # a broken edit of server-config.toml
    failed = await asyncio.to_thread(request_handover, srv)
    assert failed.returncode != 0
    assert "cannot start" in failed.stderr and "keeps serving" in failed.stderr, failed.stderr
    assert "server-config.toml" in failed.stderr, failed.stderr
    # Unchanged: same process, listeners and control socket.
    assert srv.proc.poll() is None
    assert srv.call("hello")["pid"] == srv.proc.pid
    assert instance_pids(srv) == pids
    assert (await https_get(srv.https_port, HOST)).status == 200
    # Fixed, the next hand-over goes through.
    srv.config.write_text(good)
    await asyncio.to_thread(hand_over, srv)
    assert (await https_get(srv.https_port, HOST)).status == 200
    assert instance_pids(srv) == pids


async def test_a_state_database_newer_than_the_successor_is_refused_before_it_takes_over(
    srv: TakoServer,
) -> None:
    """A downgrade: the successor's code knows fewer migrations than the state database has."""
    await asyncio.to_thread(srv.deploy, "web", "v1", instances=1)
    assert srv.proc is not None and srv.https_port is not None
    with contextlib.closing(sqlite3.connect(srv.data_dir / DB_NAME)) as db:
        db.execute("PRAGMA user_version = 9999")
    failed = await asyncio.to_thread(request_handover, srv)
    assert failed.returncode != 0
    assert "written by a newer tako-server" in failed.stderr, failed.stderr
    assert srv.proc.poll() is None
    assert srv.call("hello")["pid"] == srv.proc.pid
    assert (await https_get(srv.https_port, HOST)).status == 200


async def test_a_successor_failing_after_it_adopted_leaves_the_instances_to_the_running_server(
    srv: TakoServer,
) -> None:
    """The new process fails once the old one has stopped accepting (here: its metrics port is taken):
    the instances it adopted keep running, and the old process accepts and answers again."""
    await asyncio.to_thread(srv.deploy, "web", "v1", instances=1)
    assert srv.proc is not None and srv.https_port is not None
    pids = instance_pids(srv)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv.config.write_text(srv.config.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
        failed = await asyncio.to_thread(request_handover, srv)
    assert failed.returncode != 0
    assert "cannot listen for metrics" in failed.stderr and "keeps serving" in failed.stderr, failed.stderr
    assert srv.proc.poll() is None
    assert srv.call("hello")["pid"] == srv.proc.pid
    assert instance_pids(srv) == pids and all(psutil.pid_exists(pid) for pid in pids)
    assert (await https_get(srv.https_port, HOST)).status == 200


async def test_handovers_with_data_plane_workers_fail_no_request() -> None:
    """With `[server] workers = 2` every worker's listening sockets are handed over too: the connections
    queued on an old worker's socket are accepted by the new process's worker, never reset."""
    server = TakoServer(app_settings={"drain_timeout": 20.0})
    server.config.write_text(server.config.read_text() + "\n[server]\nworkers = 2\n")
    successors: list[int] = []
    server.successors = successors  # type: ignore[attr-defined]
    stop = asyncio.Event()
    result = LoadResult()
    try:
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(server.deploy, "web", "v1", instances=1)
        assert server.https_port is not None
        load = asyncio.create_task(
            run_load(server.https_port, HOST, stop, keepalive=2, fresh=4, result=result)
        )
        for _ in range(5):
            await served_more(result, 100)
            await asyncio.to_thread(hand_over, server)
        await served_more(result, 100)
        stop.set()
        await load
        assert len(server.call("hello")["workers"]) == 1
    finally:
        stop.set()
        for pid in successors:
            stop_pid(pid)
        await asyncio.to_thread(server.cleanup)
    assert result.failures() == [], f"{result.failures()} of {len(result.responses)}"


async def served_more(result: LoadResult, count: int) -> None:
    """Wait until the load has had `count` more responses (bounded)."""
    served = len(result.responses)
    await asyncio.to_thread(wait_for, lambda: len(result.responses) > served + count, 60, what="load")


async def test_a_handover_from_one_process_to_data_plane_workers(srv: TakoServer) -> None:
    """`workers = 1` → `workers = 2` in one hand-over: the single process's listeners are shareable."""
    await asyncio.to_thread(srv.deploy, "web", "v1", instances=1)
    assert srv.https_port is not None
    srv.config.write_text(srv.config.read_text() + "\n[server]\nworkers = 2\n")
    await asyncio.to_thread(hand_over, srv)
    assert len(srv.call("hello")["workers"]) == 1
    assert (await https_get(srv.https_port, HOST)).status == 200
