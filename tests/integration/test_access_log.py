"""Access logs and per-app traffic counters through a real tako-server and app: one JSON line per request
in the app's shared/logs/access.log with what the proxy saw, rotated like app.log, off when
`[access_log] enabled = false`; with `[server] workers = 2` the lines and counts of both processes add up."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from tests.support.proxy_harness import raw_exchange
from tests.support.raw_http import RawResponse, fetch
from tests.support.server_process import TakoServer, wait_for, websocket

pytestmark = pytest.mark.integration

HOST = "web.tako.test"


def access_path(server: TakoServer, suffix: str = "") -> Path:
    return server.data_dir / "apps" / "web" / "shared" / "logs" / f"access.log{suffix}"


def access_lines(server: TakoServer, suffix: str = "") -> list[dict[str, Any]]:
    path = access_path(server, suffix)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def lines_when(server: TakoServer, done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """The access lines once `done` holds for them (they are written in batches, every 100 ms)."""
    return wait_for(lambda: (lines := access_lines(server)) and done(lines) and lines, what="access lines")


async def started(extra_config: str = "", **app_settings: Any) -> TakoServer:
    srv = TakoServer(app_settings=app_settings or None)
    srv.config.write_text(srv.config.read_text() + extra_config)
    try:
        await asyncio.to_thread(srv.start)
        await asyncio.to_thread(srv.deploy, "web", "v1", instances=1)
    except BaseException:
        await asyncio.to_thread(srv.cleanup)
        raise
    return srv


@pytest.fixture
async def server() -> AsyncIterator[TakoServer]:
    srv = await started("\n[proxy]\nupstream_response_timeout = 1.0\n")
    try:
        yield srv
    finally:
        await asyncio.to_thread(srv.cleanup)


async def test_a_line_per_request_with_what_the_proxy_saw(server: TakoServer) -> None:
    assert server.https_port
    ok = await fetch(server.https_port, HOST, "/header/X-Request-Id?token=secret")
    late = await fetch(server.https_port, HOST, "/slow?s=5")
    root = await fetch(server.https_port, HOST, "/")
    assert (ok.status, late.status, root.status) == (200, 504, 200)
    lines = lines_when(server, lambda found: len(found) >= 3)
    third, first, second = sorted(lines, key=lambda line: line["path"])
    assert first["app"] == "web" and first["host"] == HOST and first["method"] == "GET"
    assert first["path"] == "/header/X-Request-Id" and "query" not in first  # queries are off by default
    assert first["status"] == 200 and first["tls"] is True and first["client"] == "127.0.0.1"
    assert first["request_id"] == ok.header("X-Request-Id")
    assert first["bytes_out"] == ok.size and first["bytes_in"] > 0
    assert 0 <= first["upstream_ms"] <= first["duration_ms"]
    assert first["time"].endswith("Z")
    assert second["path"] == "/slow" and second["status"] == 504
    assert second["request_id"] == late.header("X-Request-Id")
    assert second["duration_ms"] >= 1000.0  # the response timeout ran out
    assert f"instance={third['instance']}\n" in root.body.decode()  # the instance that answered
    port = server.call("hello")["metrics_port"]
    wait_for(lambda: _metric(port, 'tako_upstream_errors_total{app="web",kind="timeout"}') == 1)


async def test_a_websocket_is_one_line_when_it_closes(server: TakoServer) -> None:
    assert server.https_port
    async with websocket(server.https_port, HOST) as ws:
        assert ws.response is not None
        given = ws.response.headers.get("X-Request-Id")  # the 101 carries the id like any response
        for text in ("one", "two", "three"):
            await ws.send(text)
            assert await ws.recv() == text
        assert access_lines(server) == []  # open: not logged yet
    (line,) = lines_when(server, lambda found: len(found) >= 1)
    assert line["websocket"] is True and line["status"] == 101 and line["path"] == "/ws"
    assert line["bytes_in"] > 0 and line["bytes_out"] > 0 and line["duration_ms"] > 0
    assert given and line["request_id"] == given


async def test_requests_no_app_answered_are_counted_apart_and_not_logged(server: TakoServer) -> None:
    assert server.https_port and server.http_port
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE  # the fallback certificate
    unknown = await raw_exchange(
        server.https_port,
        b"GET / HTTP/1.1\r\nHost: nowhere.tako.test\r\nConnection: close\r\n\r\n",
        ssl_context=tls,
        server_hostname=HOST,  # a routed name in TLS, an unknown one in Host: no app matches
    )
    assert unknown.startswith(b"HTTP/1.1 404 ")
    plain = await raw_exchange(
        server.http_port, b"GET / HTTP/1.1\r\nHost: nowhere.tako.test\r\nConnection: close\r\n\r\n"
    )
    assert plain.startswith(b"HTTP/1.1 404 ")
    bad = await raw_exchange(server.http_port, b"GET / HTTP/1.1\r\nHost: nowhere\r\nBad Header\r\n\r\n")
    assert bad.startswith(b"HTTP/1.1 400 ")
    assert (await fetch(server.https_port, HOST, "/")).status == 200
    port = server.call("hello")["metrics_port"]
    series = 'tako_http_requests_total{app="_unrouted",status_class="4xx"}'
    wait_for(lambda: _metric(port, series) == 3, what="the three requests no app answered in /metrics")
    # the proxy counts a request once its response is written, which may be just after the client read it
    wait_for(lambda: _requests_2xx(port) == 1, what="the app's own request in /metrics")
    (line,) = lines_when(server, lambda found: len(found) >= 1)  # the app's own request only
    assert line["status"] == 200 and line["host"] == HOST
    assert not (server.data_dir / "apps" / "_unrouted").exists()


async def test_an_app_deleted_and_deployed_again_logs_to_its_new_file(server: TakoServer) -> None:
    assert server.https_port
    assert (await fetch(server.https_port, HOST, "/")).status == 200
    lines_when(server, lambda found: len(found) >= 1)
    await asyncio.to_thread(server.call, "delete", app="web")
    shutil.rmtree(server.data_dir / "apps" / "web")  # what `tako delete` removes after the command
    await asyncio.to_thread(server.deploy, "web", "v2", instances=1)
    assert (await fetch(server.https_port, HOST, "/")).status == 200
    assert len(lines_when(server, lambda found: len(found) >= 1)) == 1


async def test_rotated_like_app_log() -> None:
    server = await started(log_max_bytes=4000, log_backups=2)
    try:
        assert server.https_port
        for _ in range(60):
            assert (await fetch(server.https_port, HOST, "/")).status == 200
        wait_for(lambda: access_path(server, ".2").exists(), what="a second rotated access log")
        assert await asyncio.to_thread(server.stop) == 0  # no rotation under the reads below
        assert not access_path(server, ".3").exists()
        for suffix in (".1", ".2"):
            rotated = access_lines(server, suffix)
            assert rotated and all(line["app"] == "web" for line in rotated)
    finally:
        await asyncio.to_thread(server.cleanup)


async def test_off_switch() -> None:
    server = await started("\n[access_log]\nenabled = false\n")
    try:
        assert server.https_port
        assert (await fetch(server.https_port, HOST, "/")).status == 200
        assert await asyncio.to_thread(server.stop) == 0  # a shutdown writes what is pending
        assert not access_path(server).exists()
    finally:
        await asyncio.to_thread(server.cleanup)


async def _requests_through_both_processes(server: TakoServer, n: int) -> None:
    """`n` requests to the app, each after a status request, and both data-plane processes took some."""
    assert server.https_port
    served_by = set()
    for _ in range(n):
        status = await fetch_when_routed(server.https_port, "/_tako/status")
        served_by.add(json.loads(status.body)["served_by"])
        assert (await fetch_when_routed(server.https_port, "/")).status == 200
    assert len(served_by) == 2, "both processes should have taken connections"


async def test_two_data_plane_processes_add_up() -> None:
    n = 40
    server = await started("\n[server]\nworkers = 2\n")  # /metrics on a port of its own, as every test server
    try:
        await _requests_through_both_processes(server, n)
        lines = lines_when(server, lambda found: len(found) >= n)
        assert len(lines) == n and len({line["request_id"] for line in lines}) == n
        port = server.call("hello")["metrics_port"]
        wait_for(lambda: _requests_2xx(port) == n, what=f"{n} requests in the counters of both processes")
    finally:
        await asyncio.to_thread(server.cleanup)


async def test_two_data_plane_processes_share_the_files_and_their_rotation() -> None:
    n = 60
    server = await started("\n[server]\nworkers = 2\n", log_max_bytes=3000, log_backups=50)
    try:
        await _requests_through_both_processes(server, n)
        assert await asyncio.to_thread(server.stop) == 0  # each process writes what is pending
        files = ["", *(f".{k}" for k in range(1, 51) if access_path(server, f".{k}").exists())]
        lines = [line for suffix in files for line in access_lines(server, suffix)]
        assert len(files) >= 4, "the files should have rotated several times"
        # Every request once, in one file or another: none lost or doubled by two writers rotating.
        assert len(lines) == n and len({line["request_id"] for line in lines}) == n
    finally:
        await asyncio.to_thread(server.cleanup)


async def fetch_when_routed(port: int, path: str) -> RawResponse:
    """`fetch`, again when the TLS handshake is refused: a worker that has not received the routes of the
    deploy yet refuses the host's name (no request was sent, so nothing is logged or counted)."""
    for _ in range(100):
        try:
            return await fetch(port, HOST, path)
        except ssl.SSLError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"{HOST} was never routed by every data-plane process")


def _requests_2xx(port: int) -> float:
    return _metric(port, 'tako_http_requests_total{app="web",status_class="2xx"}')


def _metric(port: int, series: str) -> float:
    """One series' value from tako-server's /metrics (0 while absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0
