"""A data-plane worker whose main process was killed: it serves from its last routes for at most `[server]
orphan_timeout` when no new tako-server comes, then stops (its routes would grow stale); and it takes a
reset channel for the main process gone, like one that ended."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
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
