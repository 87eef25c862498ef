"""Differential framing tests: what clients got through the proxy equals what real app servers parsed.

Each app server (gunicorn sync and gthread, uvicorn with h11 and with httptools, the standard library's
ThreadingHTTPServer) runs `tests/support/framing_apps.py`, which logs every request it parsed and answers
with that same report. Through the real proxy with its upstream pool, an attacker connection sends one
hostile shape, then victims send ordinary requests on fresh connections. Request for request, the app's
log must hold exactly the requests the proxy forwarded as such, and every victim must get the report of
its own request: an upstream connection left out of step (a body announced but not sent, a response
ended before its request) must never be reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.processes import stop_process
from tests.support.proxy_harness import ProxyHarness, parse_responses, running_proxy
from tests.support.proxy_routes import StaticGate, StaticUpstream

from tako.config.server import ProxySettings

pytestmark = [pytest.mark.integration, pytest.mark.uvloop]

REPO = Path(__file__).resolve().parents[2]
HOST = "a.tako.test"
H = b"Host: a.tako.test\r\n"
APP = "tests.support.framing_apps"
BIN = Path(sys.executable).parent

SERVERS: dict[str, list[str]] = {
    "gunicorn-sync": [str(BIN / "gunicorn"), "-k", "sync", "-w", "2", f"{APP}:wsgi_app", "-b"],
    "gunicorn-gthread": [str(BIN / "gunicorn"), "-k", "gthread", "--threads", "4", f"{APP}:wsgi_app", "-b"],
    "uvicorn-h11": [sys.executable, "-m", "uvicorn", "--http", "h11", "--no-access-log", f"{APP}:asgi_app"],
    "uvicorn-httptools": [
        sys.executable,
        "-m",
        "uvicorn",
        "--http",
        "httptools",
        "--no-access-log",
        f"{APP}:asgi_app",
    ],
    "stdlib": [sys.executable, "-m", APP],
}


@dataclass
class AppServer:
    name: str
    port: int
    log: Path

    def entries(self) -> list[dict[str, object]]:
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["path"] != "/ready"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command(name: str, port: int) -> list[str]:
    cmd = list(SERVERS[name])
    if name.startswith("gunicorn"):
        return [*cmd, f"127.0.0.1:{port}"]
    if name.startswith("uvicorn"):
        return [*cmd, "--host", "127.0.0.1", "--port", str(port)]
    return [*cmd, str(port)]


def _ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@pytest.fixture(scope="module", params=sorted(SERVERS))
def app_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AppServer]:
    name = str(request.param)
    log = tmp_path_factory.mktemp(name) / "requests.jsonl"
    port = _free_port()
    proc = subprocess.Popen(
        _command(name, port),
        cwd=REPO,
        env={**os.environ, "FRAMING_LOG": str(log)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not _ready(port):
            assert proc.poll() is None, f"{name} exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"{name} not ready within 30 s"
            time.sleep(0.05)
        yield AppServer(name, port, log)
    finally:
        stop_process(proc)


def _report(method: str, path: str, body: bytes | None) -> dict[str, object]:
    return {
        "method": method,
        "path": path,
        "body_len": -1 if body is None else len(body),
        "sha256": "" if body is None else hashlib.sha256(body).hexdigest(),
    }


def _upgrade(path: str, framing: bytes) -> bytes:
    return (
        b"GET " + path.encode() + b" HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: foo\r\n" + framing
    )


# A request the app server would parse if a body were eaten or a request spliced.
EVIL = b"GET /evil HTTP/1.1\r\n" + H + b"\r\n"
CRAFTED_POST = b"POST /crafted HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n%s" % (len(EVIL), EVIL)


@dataclass
class Shape:
    """Attacker connections (each: bytes to send, whether to wait for responses), what they get, what the
    app must have parsed."""

    sends: list[tuple[bytes, bool]]  # (data, read the answers)
    statuses: list[list[int]]
    parsed: list[dict[str, object]]


SHAPES: dict[str, Shape] = {
    "upgrade-cl-no-body": Shape([(_upgrade("/a", b"Content-Length: 135\r\n\r\n"), True)], [[400]], []),
    "upgrade-cl-then-crafted-post": Shape(
        [(_upgrade("/a", b"Content-Length: 135\r\n\r\n"), True), (CRAFTED_POST, True)],
        [[400], [200]],
        [_report("POST", "/crafted", EVIL)],
    ),
    "upgrade-cl-with-body": Shape(
        [(_upgrade("/a", b"Content-Length: %d\r\n\r\n%s" % (len(EVIL), EVIL)), True)], [[400]], []
    ),
    "upgrade-chunked": Shape(
        [
            (
                _upgrade(
                    "/a", b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(EVIL), EVIL)
                ),
                True,
            )
        ],
        [[400]],
        [],
    ),
    "upgrade-cl-zero": Shape(
        [(_upgrade("/ws", b"Content-Length: 0\r\n\r\n"), True)], [[200]], [_report("GET", "/ws", b"")]
    ),
    "upgrade-empty-value-with-body": Shape(
        [
            (
                b"GET /e HTTP/1.1\r\n"
                + H
                + b"Connection: upgrade\r\nUpgrade:\r\nContent-Length: 5\r\n\r\nabcde",
                True,
            )
        ],
        [[200]],
        [_report("GET", "/e", b"abcde")],
    ),
    "upgrade-without-connection-token": Shape(
        [(b"POST /u HTTP/1.1\r\n" + H + b"Upgrade: foo\r\nContent-Length: 5\r\n\r\nabcde", True)],
        [[200]],
        [_report("POST", "/u", b"abcde")],
    ),
    "pipelined-after-bodyful-upgrade": Shape(
        [
            (
                b"GET /first HTTP/1.1\r\n"
                + H
                + b"\r\n"
                + _upgrade("/a", b"Content-Length: 5\r\n\r\nabcde")
                + EVIL,
                True,
            )
        ],
        [[200, 400]],
        [_report("GET", "/first", b"")],
    ),
    "cl-and-te": Shape(
        [
            (
                b"POST /x HTTP/1.1\r\n"
                + H
                + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                True,
            )
        ],
        [[400]],
        [],
    ),
    "te-and-cl-smuggle": Shape(
        [
            (
                b"POST /x HTTP/1.1\r\n"
                + H
                + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\n"
                + EVIL
                + b"\r\n0\r\n\r\n",
                True,
            )
        ],
        [[400]],
        [],
    ),
    "early-response-partial-body": Shape(
        [(b"POST /noread HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\n0123456789", True)],
        [[200]],
        [_report("POST", "/noread", None)],
    ),
    "early-response-then-pipelined": Shape(
        [(b"POST /noread HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n%s" % (len(EVIL), EVIL), True)],
        [[200]],
        [_report("POST", "/noread", None)],
    ),
    "partial-body-then-close": Shape(
        [(b"POST /sink HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\n0123456789", False)], [[]], []
    ),
    "partial-chunked-then-close": Shape(
        [(b"POST /sink HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nab", False)], [[]], []
    ),
    "chunked-post-and-pipelined-get": Shape(
        [
            (
                b"POST /c HTTP/1.1\r\n"
                + H
                + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                + EVIL,
                True,
            )
        ],
        [[200, 200]],
        [_report("POST", "/c", b"abc"), _report("GET", "/evil", b"")],
    ),
    "cl-post-and-pipelined-get": Shape(
        [(CRAFTED_POST + b"GET /second HTTP/1.1\r\n" + H + b"\r\n", True)],
        [[200, 200]],
        [_report("POST", "/crafted", EVIL), _report("GET", "/second", b"")],
    ),
}


# With request buffering (the default) a body that never completes never reaches the app: the client gets
# 408 from the body rate rule instead of the app's early answer.
BUFFERED: dict[str, Shape] = {
    "early-response-partial-body": Shape(SHAPES["early-response-partial-body"].sends, [[408]], []),
}


async def _exchange(p: ProxyHarness, data: bytes, expect: int, timeout: float = 8.0) -> bytes:
    """Send `data` on a new TLS connection; read until the proxy closes or `expect` responses are complete
    (0: close at once without reading)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", p.https_port, ssl=p.client_context(), server_hostname=HOST
    )
    received = b""
    try:
        writer.write(data)
        await writer.drain()
        if expect:
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                async with asyncio.timeout(timeout):
                    while chunk := await reader.read(65536):
                        received += chunk
                        if sum(r.complete for r in parse_responses(received)) >= expect:
                            break
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return received


@pytest.mark.parametrize("mode", ["buffered", "streamed"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.deadline(60)
async def test_framing_matches_app_server(
    tmp_path: Path, app_server: AppServer, shape: str, mode: str
) -> None:
    buffered = mode == "buffered"
    spec = BUFFERED.get(shape, SHAPES[shape]) if buffered else SHAPES[shape]
    app_server.log.unlink(missing_ok=True)
    settings = ProxySettings(
        upstream_response_timeout=5.0,
        keepalive_timeout=5.0,
        request_buffering=buffered,
        body_rate_window=1.0,
    )

    routes = {HOST: StaticGate("a", [StaticUpstream(app_server.port)])}
    async with running_proxy(tmp_path, routes, settings) as p:
        p.issue(HOST)
        got: list[list[int]] = []
        for data, read in spec.sends:
            received = await _exchange(p, data, len(spec.statuses[len(got)]) if read else 0)
            got.append([r.status for r in parse_responses(received) if r.complete])
        # Victims on fresh connections: each must get the report of its own request.
        victims = []
        for i in range(3):
            path = f"/victim/{i}"
            data = await _exchange(p, f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(), 1)
            answers = parse_responses(data)
            assert len(answers) == 1 and answers[0].complete, (app_server.name, path, data[:300])
            assert json.loads(answers[0].body) == _report("GET", path, b""), (app_server.name, path)
            victims.append(_report("GET", path, b""))
        assert app_server.entries() == spec.parsed + victims, app_server.name
        assert got == spec.statuses, app_server.name
