"""HTTP/2 from a real tako-server with `[server] workers = 2`: both serving processes (the main one and the
data-plane worker) answer streams over HTTP/2, and a hand-over finishes a stream in progress on an old
process (GOAWAY after it) while new connections get HTTP/2 from the new processes."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator

import pytest
from tests.integration.test_handover import hand_over, stop_pid
from tests.support.h2_client import H2Client, RawFrames
from tests.support.server_process import TakoServer

from tako.server.proxy import h2 as proxy_h2

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not proxy_h2.available(), reason="the libnghttp2 binding is not built"),
]

HOST = "web.tako.test"


@pytest.fixture
async def server() -> AsyncIterator[TakoServer]:
    srv = TakoServer(app_settings={"drain_timeout": 20.0})
    srv.config.write_text(srv.config.read_text() + "\n[server]\nworkers = 2\n")
    successors: list[int] = []
    srv.successors = successors  # type: ignore[attr-defined]
    try:
        await asyncio.to_thread(srv.start)
        await asyncio.to_thread(srv.deploy, "web", "v1", instances=1)
        yield srv
    finally:
        for pid in successors:
            await asyncio.to_thread(stop_pid, pid)
        await asyncio.to_thread(srv.cleanup)


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the proxy serves a self-signed certificate for routed hosts
    return context


async def _get(c: H2Client, path: str) -> tuple[bytes, bytes]:
    """One stream on `c`: its status and body."""
    sid = c.request(path, HOST)
    await c.receive_until(lambda: c.ended(sid), timeout=30)
    return c.response(sid)[b":status"], bytes(c.bodies.get(sid, b""))


async def _serving_pids(server: TakoServer, want: int, timeout: float = 30.0) -> set[int]:
    """The processes that answered HTTP/2 streams on new connections, until `want` were seen (bounded)."""
    assert server.https_port is not None
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    for _ in range(500):
        c = await H2Client.connect(server.https_port, _context(), HOST)
        try:
            status, body = await _get(c, "/_tako/status")
            assert status == b"200"
            seen.add(int(json.loads(body)["served_by"]))
            status, body = await _get(c, "/")  # a second stream on the connection, proxied to the app
            assert status == b"200" and body.startswith(b"version=v1"), body
        finally:
            await c.close()
        if len(seen) >= want or time.monotonic() > deadline:
            break
    return seen


async def test_both_processes_answer_http2(server: TakoServer) -> None:
    assert server.proc is not None
    (worker,) = [w["pid"] for w in (await asyncio.to_thread(server.call, "hello"))["workers"]]
    assert await _serving_pids(server, 2) == {server.proc.pid, worker}


async def test_a_handover_finishes_the_stream_in_progress_and_new_connections_get_http2(
    server: TakoServer,
) -> None:
    assert server.proc is not None and server.https_port is not None
    old = {server.proc.pid, *(w["pid"] for w in (await asyncio.to_thread(server.call, "hello"))["workers"])}
    c = await H2Client.connect(server.https_port, _context(), HOST)
    sid = c.request("/slow?s=2", HOST)
    raw = c.raw = RawFrames()
    new_main = await asyncio.to_thread(hand_over, server)
    await c.receive_until(lambda: sid in raw.ended, timeout=60)
    assert raw.headers[sid][b":status"] == b"200" and bytes(raw.bodies[sid]) == b"slow v1\n"
    await c.receive_until(lambda: raw.goaway() is not None, timeout=60)
    goaway = raw.goaway()
    assert goaway is not None and goaway.error_code == 0 and goaway.last_stream_id == sid
    await c.close()
    workers = [w["pid"] for w in (await asyncio.to_thread(server.call, "hello"))["workers"]]
    assert len(workers) == 1 and not {new_main, *workers} & old
    assert await _serving_pids(server, 2) == {new_main, *workers}
