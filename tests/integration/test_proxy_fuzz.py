"""Property test: malformed, random and mutated requests thrown at a live proxy never break it.

The proxy runs on its own uvloop thread with real upstreams; hypothesis drives blocking socket clients.
After every example the proxy must still answer a valid request, and no internal error may be logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.proxy_harness import ProxyHarness, parse_responses, running_proxy
from tests.support.proxy_routes import StaticGate, StaticUpstream
from tests.support.upstreams import HttpUpstream

from tako.config.server import ProxySettings

pytestmark = pytest.mark.integration

VALID = b"GET /echo HTTP/1.1\r\nHost: a.tako.test\r\nConnection: close\r\n\r\n"


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def live_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyHarness, _Errors, list[Any]]]:
    import uvloop

    errors = _Errors()
    logging.getLogger("tako").addHandler(errors)
    loop_errors: list[Any] = []
    ready = threading.Event()
    stop: list[asyncio.Event] = []
    holder: list[ProxyHarness] = []
    tmp = tmp_path_factory.mktemp("fuzz")

    async def serve() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: loop_errors.append(ctx))
        up = await HttpUpstream().start()
        stop.append(asyncio.Event())
        settings = ProxySettings(
            header_timeout=0.2, keepalive_timeout=0.2, body_rate_window=0.2, max_body_bytes=100_000
        )
        routes = {"a.tako.test": StaticGate("a", [StaticUpstream(up.port)])}
        try:
            async with running_proxy(Path(tmp), routes, settings) as p:
                p.issue("a.tako.test")
                holder.append(p)
                ready.set()
                await stop[0].wait()
        finally:
            await up.stop()

    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30), "proxy did not start"
    try:
        yield holder[0], errors, loop_errors
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(30)
        logging.getLogger("tako").removeHandler(errors)


def _exchange(port: int, data: bytes, tls: ssl.SSLContext | None = None, timeout: float = 5.0) -> bytes:
    """Send `data`, then read until the proxy closes (plain: after our half-close; TLS: on its timeouts)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        sock = tls.wrap_socket(raw, server_hostname="a.tako.test") if tls is not None else raw
        with contextlib.suppress(OSError):
            sock.sendall(data)
            if tls is None:
                sock.shutdown(socket.SHUT_WR)
        received = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


_TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b"0",
    b"1",
    b"ff",
    b"-1",
    b"chunked",
    b"gzip",
    b"Content-Length: ",
    b"Transfer-Encoding: ",
    b"Host: a.tako.test",
    b"Connection: ",
    b"upgrade",
    b"Upgrade: websocket",
    b"Expect: 100-continue",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"GET",
    b"POST",
    b"\x00",
    b"\xff",
    b"/",
    b"?",
    b"%",
    b"0\r\n\r\n",
]
_TEMPLATES = [
    VALID,
    b"POST /sink HTTP/1.1\r\nHost: a.tako.test\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /sink HTTP/1.1\r\nHost: a.tako.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /bytes/10 HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"
    b"GET /chunked/10 HTTP/1.1\r\nHost: a.tako.test\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a.tako.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_TEMPLATES)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        if op == "insert":
            data[pos:pos] = draw(st.sampled_from(_TOKENS))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "replace" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"G\x00T", b""]))
    target = draw(st.sampled_from([b"/echo", b"/sink", b"*", b"http://x/", b"/a b", b"", b"/_tako/status"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"http/1.1"]))
    headers = draw(
        st.lists(
            st.sampled_from(
                [
                    b"Host: a.tako.test",
                    b"Host: other",
                    b"Content-Length: 3",
                    b"Content-Length: 99999999",
                    b"Transfer-Encoding: chunked",
                    b"Transfer-Encoding: identity",
                    b"Connection: close",
                    b"Connection: keep-alive, upgrade",
                    b"Upgrade: h2c",
                    b"Expect: 100-continue",
                    b"X: \x01",
                    b" folded",
                    b"X-Forwarded-For: 1.2.3.4",
                    b"Bad Header: x",
                    b"Content-Length: 3 ",
                ]
            ),
            max_size=6,
        )
    )
    body = draw(st.binary(max_size=64))
    return (
        method
        + b" "
        + target
        + b" "
        + version
        + b"\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + b"\r\n"
        + body
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=512), mutated(), structured()))
def test_malformed_input_never_breaks_the_proxy(
    live_proxy: tuple[ProxyHarness, _Errors, list[Any]], data: bytes
) -> None:
    p, errors, loop_errors = live_proxy
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    for port, ctx in ((p.http_port, None), (p.https_port, tls)):
        reply = _exchange(port, data, ctx)
        if reply:
            # Whatever came back is well-formed HTTP/1.1.
            assert reply.startswith(b"HTTP/1.1 "), reply[:80]
    # The same bytes where a TLS handshake should start: at most a TLS alert comes back, never HTTP.
    assert not _exchange(p.https_port, data).startswith(b"HTTP")
    assert [r.status for r in parse_responses(_exchange(p.http_port, VALID))] == [301]
    response = parse_responses(_exchange(p.https_port, VALID, tls))
    assert [r.status for r in response] == [200] and b'"app": "app"' in response[0].body
    assert not errors.records, errors.records[0].getMessage()
    assert not loop_errors, loop_errors[0]
