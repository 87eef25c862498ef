"""Limits and timeouts from ProxySettings: 431, 408, keep-alive close, 502 on connect, 504, 413."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import select
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.processes import stop_process
from tests.support.proxy_harness import one_app_proxy, parse_responses, raw_exchange, running_proxy
from tests.support.proxy_process import proxy_process
from tests.support.proxy_routes import StaticGate, StaticUpstream, wait_for
from tests.support.upstreams import HttpUpstream

from tako.config.server import ProxySettings
from tako.server.proxy.counters import UPSTREAM_ERROR_KINDS

pytestmark = [pytest.mark.integration, pytest.mark.uvloop]

SETTINGS = ProxySettings(
    max_header_bytes=4096,
    max_headers=20,
    header_timeout=0.3,
    keepalive_timeout=0.3,
    upstream_connect_timeout=0.3,
    upstream_response_timeout=0.3,
    max_body_bytes=1000,
    body_rate_window=0.3,
)


def _statuses(data: bytes) -> list[int]:
    return [r.status for r in parse_responses(data)]


async def test_header_size_and_count_limits(tmp_path: Path) -> None:
    up = await HttpUpstream().start()
    try:
        async with running_proxy(
            tmp_path, {"a.tako.test": StaticGate("a", [StaticUpstream(up.port)])}, SETTINGS
        ) as p:
            big = b"GET / HTTP/1.1\r\nHost: a.tako.test\r\nX-Big: " + b"v" * 5000 + b"\r\n\r\n"
            many = (
                b"GET / HTTP/1.1\r\nHost: a.tako.test\r\n"
                + b"".join(b"X-%d: 1\r\n" % i for i in range(30))
                + b"\r\n"
            )
            long_url = b"GET /" + b"u" * 5000 + b" HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"
            endless = b"GET / HTTP/1.1\r\nHost: a.tako.test\r\nX-Endless: " + b"e" * 20000
            for request in (big, many, long_url, endless):
                data = await raw_exchange(p.http_port, request)
                assert _statuses(data) == [431], request[:40]
                assert parse_responses(data)[0].header("connection") == "close"
            assert up.requests == 0
            # Just under the limits is fine.
            ok = (
                b"GET / HTTP/1.1\r\nHost: a.tako.test\r\nX-Ok: "
                + b"v" * 3000
                + b"\r\nConnection: close\r\n\r\n"
            )
            assert _statuses(await raw_exchange(p.http_port, ok)) == [301]
    finally:
        await up.stop()


async def test_header_timeout_answers_408_and_closes(tmp_path: Path) -> None:
    async with running_proxy(tmp_path, {}, SETTINGS) as p:
        # Slowloris: a request line and part of a header, then nothing.
        data = await raw_exchange(p.http_port, b"GET / HTTP/1.1\r\nHost: a.tako.te")
        assert _statuses(data) == [408]
        # A connection that sends nothing at all is closed the same way.
        data = await raw_exchange(p.http_port, b"")
        assert _statuses(data) == [408]
        assert not p.server.connections or all(c.closed or c.broken for c in p.server.connections)


async def test_header_timeout_applies_to_later_requests_on_a_connection(tmp_path: Path) -> None:
    async with running_proxy(tmp_path, {}, SETTINGS) as p:
        status = b"GET /_tako/status HTTP/1.1\r\nHost: x\r\n\r\n"
        # A complete request and, in the same packet, the start of another that never completes.
        data = await raw_exchange(p.http_port, status + b"GET /_tako/status HTTP/1.1\r\nHo")
        assert _statuses(data) == [200, 408]
        # The same start of a request after the first response, once the connection was idle.
        reader, writer = await asyncio.open_connection("127.0.0.1", p.http_port)
        try:
            writer.write(status)
            await reader.readuntil(b"}")
            writer.write(b"G")
            data = await asyncio.wait_for(reader.read(), 10)
            assert _statuses(data) == [408]
        finally:
            writer.close()


async def test_idle_keepalive_connection_is_closed(tmp_path: Path) -> None:
    async with running_proxy(tmp_path, {}, SETTINGS) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.http_port)
        writer.write(b"GET /_tako/status HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" not in head
        await reader.readuntil(b"}")
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the proxy, no response
        writer.close()


def _blackhole() -> tuple[socket.socket, list[socket.socket]]:
    """A listener whose backlog is full, and what fills it: it drops new SYNs, so a connect to it hangs."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(blackhole.getsockname())
        fillers.append(s)
    return blackhole, fillers


async def test_upstream_connect_failures_are_502(tmp_path: Path) -> None:
    # The connect to the blackhole hangs until the proxy's timeout.
    blackhole, fillers = _blackhole()
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    refused_port = refused.getsockname()[1]
    refused.close()
    routes = {
        "hang.tako.test": StaticGate("hang", [StaticUpstream(blackhole.getsockname()[1])]),
        "refused.tako.test": StaticGate("refused", [StaticUpstream(refused_port)]),
    }
    try:
        async with running_proxy(tmp_path, routes, SETTINGS) as p:
            p.issue("hang.tako.test")
            p.issue("refused.tako.test")
            for host in (b"hang.tako.test", b"refused.tako.test"):
                data = await p.exchange(
                    b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\nGET /_tako/status HTTP/1.1\r\nHost: x\r\n"
                    b"Connection: close\r\n\r\n",
                    host=host.decode(),
                )
                # The client connection survives an upstream failure.
                assert _statuses(data) == [502, 200], host
                assert b"Bad Gateway" in parse_responses(data)[0].body
            for app in ("hang", "refused"):
                errors = p.server.traffic.for_app(app).upstream_errors
                assert errors[UPSTREAM_ERROR_KINDS.index("connect")] == 1 and sum(errors) == 1, app
    finally:
        for s in fillers:
            s.close()
        blackhole.close()


async def test_a_client_gone_while_its_upstream_connect_is_pending_leaks_no_descriptor(
    tmp_path: Path,
) -> None:
    # The connect runs on the socket's readiness (proxy/upstream_connect.py), outside any task: the socket
    # of a connect whose client left is still closed when the connect times out.
    blackhole, fillers = _blackhole()
    routes = {"hang.tako.test": StaticGate("hang", [StaticUpstream(blackhole.getsockname()[1])])}

    def sockets() -> int:
        links = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
        return sum(link.startswith("socket:") for link in links)

    try:
        # A connect timeout long enough that the proxy sees the client go before it.
        async with running_proxy(
            tmp_path, routes, dataclasses.replace(SETTINGS, upstream_connect_timeout=1)
        ) as p:
            p.issue("hang.tako.test")
            before = sockets()
            sock = socket.create_connection(("127.0.0.1", p.https_port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # gone: a reset
            _, writer = await asyncio.open_connection(
                sock=sock, ssl=p.client_context(), server_hostname="hang.tako.test"
            )
            writer.write(b"GET / HTTP/1.1\r\nHost: hang.tako.test\r\n\r\n")
            await wait_for(lambda: sockets() == before + 3)  # client, accepted, and the connect's
            writer.transport.abort()
            await wait_for(lambda: not p.server.connections)
            await wait_for(lambda: sockets() == before)  # the connect's too, once it timed out
    finally:
        for s in fillers:
            s.close()
        blackhole.close()


async def test_upstream_response_timeout_is_504(tmp_path: Path) -> None:
    up = await HttpUpstream().start()
    upstream = StaticUpstream(up.port)
    try:
        async with running_proxy(tmp_path, {"a.tako.test": StaticGate("a", [upstream])}, SETTINGS) as p:
            p.issue("a.tako.test")
            data = await p.exchange(
                b"GET /slow/5 HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"
                b"GET /slow/0 HTTP/1.1\r\nHost: a.tako.test\r\nConnection: close\r\n\r\n"
            )
            assert _statuses(data) == [504, 200]
            assert upstream.in_flight == 0 and upstream.started == 2
    finally:
        await up.stop()


async def test_body_limit_is_413(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path, SETTINGS) as (p, up):
        ctx = p.client_context()
        declared = b"POST /sink HTTP/1.1\r\nHost: a.tako.test\r\nContent-Length: 2000\r\n\r\n" + b"a" * 2000
        data = await raw_exchange(p.https_port, declared, ssl_context=ctx, server_hostname="a.tako.test")
        assert _statuses(data) == [413]
        assert up.requests == 0
        chunk = b"400\r\n" + b"c" * 1024 + b"\r\n"
        streamed = (
            b"POST /sink HTTP/1.1\r\nHost: a.tako.test\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3
        )
        data = await raw_exchange(p.https_port, streamed, ssl_context=ctx, server_hostname="a.tako.test")
        assert _statuses(data) == [413]
        within = (
            b"POST /sink HTTP/1.1\r\nHost: a.tako.test\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
        )
        data = await raw_exchange(
            p.https_port, within + b"b" * 1000, ssl_context=ctx, server_hostname="a.tako.test"
        )
        assert _statuses(data) == [200]


async def test_stalled_request_body_is_408(tmp_path: Path) -> None:
    up = await HttpUpstream().start()
    upstream = StaticUpstream(up.port)
    try:
        async with running_proxy(tmp_path, {"a.tako.test": StaticGate("a", [upstream])}, SETTINGS) as p:
            p.issue("a.tako.test")
            stalled = b"POST /sink HTTP/1.1\r\nHost: a.tako.test\r\nContent-Length: 10\r\n\r\nabc"
            data = await p.exchange(stalled)
            assert _statuses(data) == [408]
            # The body is buffered by the proxy: the instance never saw the incomplete request.
            assert upstream.in_flight == 0 and upstream.started == 0
    finally:
        await up.stop()


async def test_running_out_of_file_descriptors_recovers(tmp_path: Path) -> None:
    up = await HttpUpstream().start()
    config = {"routes": {"a.tako.test": [up.port]}, "certs_dir": str(tmp_path), "nofile": 64}
    try:
        with proxy_process(config) as (proc, ports):
            # Far more connections than descriptors: the proxy pauses accepting instead of failing.
            held = []
            for _ in range(150):
                held.append(await asyncio.open_connection("127.0.0.1", ports["http"]))
            for _, writer in held:
                writer.close()
            data = await raw_exchange(
                ports["http"], b"GET /_tako/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert _statuses(data) == [200]
            assert proc.poll() is None
    finally:
        await up.stop()


async def test_a_client_that_stops_reading_is_dropped(tmp_path: Path) -> None:
    request = b"GET /bytes/50000000 HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"

    def stalled_client(port: int, ctx: ssl.SSLContext | None) -> socket.socket:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
        raw.connect(("127.0.0.1", port))
        sock = ctx.wrap_socket(raw, server_hostname="a.tako.test") if ctx is not None else raw
        sock.sendall(request)
        return sock  # and never reads

    async with one_app_proxy(tmp_path, SETTINGS) as (p, _):
        plain_port = await p.server.start_http("127.0.0.1", 0, forward=True)
        for port, ctx in ((plain_port, None), (p.https_port, p.client_context())):
            sock = await asyncio.to_thread(stalled_client, port, ctx)
            try:
                # Dropped once it has made no room for keepalive_timeout (0.3 s here).
                deadline = time.monotonic() + 20
                while p.server.connections:
                    assert time.monotonic() < deadline, f"the stalled client on {port} is still connected"
                    await asyncio.sleep(0.05)
            finally:
                sock.close()
        data = await raw_exchange(p.http_port, b"GET /_tako/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _statuses(data) == [200]


MB = 1024 * 1024
PIPELINE_SEND_MAX = 48 * MB  # a proxy that never stops reading gets this much (and fails the RSS bound)
PIPELINE_RSS_LIMIT = 2 * MB  # measured 0.6-0.7 MB; 2.7-3.7 MB when whole 256 KB reads were parsed

PIPELINED: dict[str, tuple[bytes, bool, bytes]] = {
    # kind: (one request, whether the plain listener forwards, the status line it gets)
    "redirect": (b"GET /a HTTP/1.1\r\nHost: a.tako.test\r\n\r\n", False, b"HTTP/1.1 301 "),
    "not-found": (b"GET /a HTTP/1.1\r\nHost: nowhere.tako.test\r\n\r\n", False, b"HTTP/1.1 404 "),
    "status": (b"GET /_tako/status HTTP/1.1\r\nHost: x\r\n\r\n", False, b"HTTP/1.1 200 "),
    # A long path: the app's answer repeats it, so the proxy's send buffer fills within a few hundred.
    "proxied": (b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\nHost: a.tako.test\r\n\r\n", True, b"HTTP/1.1 200 "),
}


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("kind", sorted(PIPELINED))
def test_a_client_that_never_reads_cannot_grow_the_proxy(tmp_path: Path, kind: str) -> None:
    """Pipelined requests from a client that reads nothing: whatever answers them (the proxy itself or an
    app), the proxy stops reading once its send buffer is full, so its memory stays flat, and it drops the
    connection after keepalive_timeout."""
    request, forward, answer = PIPELINED[kind]
    app_log = tmp_path / "app.jsonl"
    app_port = _free_port()
    app = subprocess.Popen(
        [sys.executable, "-m", "tests.support.framing_apps", str(app_port)],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "FRAMING_LOG": str(app_log)},
        stderr=subprocess.DEVNULL,  # it reports each connection the proxy drops
    )
    config = {
        "routes": {"a.tako.test": [app_port]},
        "certs_dir": str(tmp_path / "certs"),
        # A 64 KiB response buffer instead of the default 256 KiB: the bounds below are about what parsing
        # ahead costs. The response buffer adds up to its size per connection by design (answers held for
        # a slow reader), and filling it with the app's few dozen answers a second takes long.
        "settings": {"keepalive_timeout": 2.0, "response_buffer_bytes": 65536},
        "forward_http": forward,
    }
    try:
        (tmp_path / "certs").mkdir()
        with proxy_process(config) as (proc, ports):
            port = ports["http"]
            # Warm up (lazy imports, first allocations) with the same kind of request, read normally; this
            # also waits for the app to listen (until then the proxy answers 502).
            deadline = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                        s.sendall(request.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1))
                        if s.recv(64).startswith(answer):
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "the proxy or the app did not answer within 30 s"
                select.select([], [], [], 0.02)  # poll interval while the app starts
            baseline = peak = _rss(proc.pid)
            burst = request * (65536 // len(request))
            sent = 0
            dropped = False
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # takes nothing of the answers
                s.connect(("127.0.0.1", port))
                s.setblocking(False)
                deadline = time.monotonic() + 30
                while sent < PIPELINE_SEND_MAX and time.monotonic() < deadline:
                    peak = max(peak, _rss(proc.pid))
                    try:
                        sent += s.send(burst)
                    except BlockingIOError:
                        select.select([], [s], [], 0.1)  # the proxy stopped reading: wait for it to drop us
                    except (ConnectionResetError, BrokenPipeError):
                        dropped = True
                        break
            peak = max(peak, _rss(proc.pid))
            print(
                f"{kind}: sent {sent / MB:.1f} MB, proxy RSS {baseline / MB:.1f} -> peak {peak / MB:.1f} MB"
            )
            assert peak - baseline < PIPELINE_RSS_LIMIT, (kind, sent, baseline, peak)
            assert dropped, f"{kind}: the connection was not dropped after keepalive_timeout"
    finally:
        stop_process(app)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_header_timeout_does_not_run_while_the_proxy_is_not_reading(tmp_path: Path) -> None:
    # A pipelined request whose head arrives in two pieces while the proxy waits for a slow answer to an
    # earlier one: the proxy is not reading (requests are answered in order), so the client is not late.
    settings = ProxySettings(header_timeout=0.3, upstream_response_timeout=10.0)

    async with one_app_proxy(tmp_path, settings) as (p, _):
        head = b"GET /slow/1 HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"
        head += b"GET /echo?2 HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"
        head += b"GET /echo?3 HTTP/1.1\r\nHo"
        rest = b"st: a.tako.test\r\nConnection: close\r\n\r\n"
        data = await p.exchange([head, rest])
        assert _statuses(data) == [200, 200, 200]
