"""A data-plane worker whose main process was killed: it serves from its last routes for at most `[server]
orphan_timeout` when no new tako-server comes, then stops (its routes would grow stale); and it takes a
reset channel for the main process gone, like one that ended."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from tests.integration.test_workers import configure, start_worker_process
from tests.support.processes import stop_process
from tests.support.server_process import TakoServer, https_get, wait_for

from tako.server.workers import messages as wm

pytestmark = pytest.mark.integration

HOST = "web.tako.test"


@pytest.fixture
def server() -> Iterator[TakoServer]:
    srv = TakoServer()
    srv.config.write_text(srv.config.read_text() + "\n[server]\nworkers = 2\norphan_timeout = 1\n")
    try:
        yield srv.start()
    finally:
        srv.cleanup()


def exited(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


async def test_an_orphaned_worker_stops_after_orphan_timeout_when_no_tako_server_comes(
    server: TakoServer,
) -> None:
    server.deploy("web", "v1", instances=1)
    (worker,) = [w["pid"] for w in server.call("hello")["workers"]]
    assert server.https_port is not None
    server.kill()
    # Orphaned: it serves on from its last routes, alone (the main process's listeners died with it).
    status = await https_get(server.https_port, HOST, "/_tako/status")
    assert json.loads(status.body)["served_by"] == worker
    # No new tako-server: it stops after 1 s instead of the default 30 s.
    wait_for(lambda: exited(worker), 20, what="the orphaned worker to stop")
    log = server.log()
    assert "no new tako-server within 1 s; stopping" in log, log
    assert "Traceback" not in log, log


def test_a_worker_whose_main_process_died_with_its_reports_unread_stops(tmp_path: Path) -> None:
    """A main process that dies (kill -9) with the worker's reports still unread resets the channel
    instead of ending it: the worker's next read fails with ECONNRESET. That is the main process gone all
    the same, so the worker stops (here at once: no control socket to wait on) rather than serving on
    with its read loop dead."""
    proc, ours = start_worker_process(stderr=subprocess.PIPE)
    try:
        for message in (
            configure(tmp_path),
            wm.RoutingSnapshot(version=1, apps=()),
            wm.StatusDocument(code=200, body="{}"),
        ):
            ours.sendall(wm.encode(message))
        ours.settimeout(15)
        ours.recv(1, socket.MSG_PEEK)  # its Ready (and first Report) arrived, and stay unread
        ours.close()
        _, stderr = proc.communicate(timeout=15)
    finally:
        stop_process(proc)
        ours.close()
    assert proc.returncode == 0, stderr.decode()
    assert "the main process closed the channel; stopping" in stderr.decode()
    assert "Traceback" not in stderr.decode()


async def test_an_orphaned_worker_drains_under_drain_timeout_once_a_new_tako_server_serves() -> None:
    """An orphan that served on stops once a new tako-server's control socket answers, and its request
    in flight then gets `drain_timeout` (5 s here) to finish, not the 1 s of a worker stopped at once."""
    arrived = asyncio.Event()

    async def slow_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await asyncio.sleep(1.5)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nslow\n")
        await writer.drain()
        writer.close()

    app = await asyncio.start_server(slow_app, "127.0.0.1", 0)
    with tempfile.TemporaryDirectory() as tmp:
        control = Path(tmp) / "control.sock"  # none answers there yet: the new tako-server comes later
        proc, ours = start_worker_process()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        try:
            upstream = wm.InstanceAddress("k1", "127.0.0.1", app.sockets[0].getsockname()[1])
            for message in (
                replace(configure(Path(tmp)), control_socket=str(control)),
                wm.RoutingSnapshot(
                    version=1, apps=(wm.AppRouting("web", (HOST,), (upstream,), False, True),)
                ),
                wm.StatusDocument(code=200, body="{}"),
            ):
                writer.write(wm.encode(message))
            while not isinstance(ready := wm.decode_from_worker(await reader.readline()), wm.Ready):
                pass
            request = asyncio.create_task(https_get(ready.https_port, HOST, "/"))
            await asyncio.wait_for(arrived.wait(), 15)
            writer.close()  # the main process is gone
            with socket.socket(socket.AF_UNIX) as new_server:
                new_server.bind(str(control))
                new_server.listen()
                response = await request
                assert (response.status, response.body) == (200, "slow\n")
                assert await asyncio.to_thread(proc.wait, 15) == 0
        finally:
            stop_process(proc)
            writer.close()
            app.close()
