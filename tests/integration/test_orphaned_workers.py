"""`[server] orphan_timeout`: a data-plane worker whose main process was killed serves from its last routes
for at most this long when no new tako-server comes, then stops (its routes would grow stale)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psutil
import pytest
from tests.support.server_process import TakoServer, https_get, wait_for

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
