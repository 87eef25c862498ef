"""Request and response buffering against a real gunicorn app (2 threads): slow clients hold no app worker.

Request bodies are received whole by the proxy (memory, then an anonymous temporary file) and forwarded with
their exact length; a body arriving too slowly is cut with 408; responses up to response_buffer_bytes are
taken from the instance at once, however slowly the client reads; `request_buffering = false` streams.
An instance that takes none of a buffered body gets 504; stalled uploads cost bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import trustme
from tests.support.pebble import free_port
from tests.support.processes import stop_process
from tests.support.proxy_harness import (
    ProxyHarness,
    parse_responses,
    read_responses,
    running_proxy,
)
from tests.support.proxy_process import proxy_process
from tests.support.proxy_routes import StaticGate, StaticUpstream
from tests.support.upstreams import HttpUpstream

from tako.config.server import ProxySettings
from tako.server.proxy.body_buffer import default_directory

pytestmark = [pytest.mark.integration, pytest.mark.uvloop]

HOST = "a.tako.test"
THREADS = 2
KB = 1024
MB = 1024 * KB

# The app: /sink reads and describes the body, /fast answers at once, /early answers before reading the body,
# /big/<n> sends n bytes, /count says how many bodies /sink has read to the end.
APP = textwrap.dedent(
    """
    import hashlib, json, threading

    lock = threading.Lock()
    sinks = [0]

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/sink":
            digest = hashlib.sha256()
            total = 0
            stream = environ["wsgi.input"]
            while True:
                data = stream.read(65536)
                if not data:
                    break
                digest.update(data)
                total += len(data)
            with lock:
                sinks[0] += 1
            info = {
                "received": total,
                "sha256": digest.hexdigest(),
                "content_length": environ.get("CONTENT_LENGTH"),
                "transfer_encoding": environ.get("HTTP_TRANSFER_ENCODING"),
                "expect": environ.get("HTTP_EXPECT"),
            }
            body = json.dumps(info).encode()
        elif path == "/early":
            body = b"early"  # gunicorn calls the app once the head is in; the body is read on demand
        elif path.startswith("/big/"):
            body = b"x" * int(path[5:])
        elif path == "/count":
            body = json.dumps({"sinks": sinks[0]}).encode()
        else:
            body = b"fast"
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    """
)


@dataclass
class Gunicorn:
    port: int
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def gunicorn_app(tmp_path: Path) -> Iterator[Gunicorn]:
    """gunicorn with one worker of THREADS threads serving APP; stopped (and waited for) on exit."""
    (tmp_path / "bufapp.py").write_text(APP)
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers=1",
            f"--threads={THREADS}",
            f"--bind=127.0.0.1:{port}",
            f"--chdir={tmp_path}",
            "--timeout=120",
            "bufapp:app",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_accepting(port, process)
        yield Gunicorn(port, process)
    finally:
        stop_process(process, grace=15)


def _wait_accepting(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)  # polling a condition (the port accepts) under a deadline
    raise TimeoutError("gunicorn did not start listening")


@contextlib.asynccontextmanager
async def app_proxy(
    tmp_path: Path, settings: ProxySettings | None = None, *, request_buffering: bool = True
) -> AsyncIterator[tuple[ProxyHarness, StaticUpstream]]:
    with gunicorn_app(tmp_path) as app:
        instance = StaticUpstream(app.port)
        gate = StaticGate("a", [instance], request_buffering=request_buffering)
        async with running_proxy(tmp_path, {HOST: gate}, settings) as p:
            p.issue(HOST)
            yield p, instance


async def _open(
    p: ProxyHarness, sock: socket.socket | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to the proxy's HTTPS listener (on `sock` if given)."""
    if sock is not None:
        return await asyncio.open_connection(sock=sock, ssl=p.client_context(), server_hostname=HOST)
    return await asyncio.open_connection(
        "127.0.0.1", p.https_port, ssl=p.client_context(), server_hostname=HOST
    )


async def _read_all(reader: asyncio.StreamReader, timeout: float = 30.0) -> bytes:
    async with asyncio.timeout(timeout):
        return await read_responses(reader)


async def _exchange(p: ProxyHarness, data: bytes) -> bytes:
    """`data` on a new TLS connection; everything the proxy sends until it closes."""
    return await p.exchange(data, host=HOST, timeout=30.0)


async def _read_response(reader: asyncio.StreamReader, timeout: float = 30.0) -> bytes:
    """Read until one complete response has arrived (or the connection closes)."""
    data = b""
    async with asyncio.timeout(timeout):
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return data
            data += chunk
            if _one_response_in(data):
                return data


def _one_response_in(data: bytes) -> bool:
    parsed = parse_responses(data)
    return bool(parsed) and parsed[0].complete


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def _wait_for(condition: object, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)  # polling a condition under a deadline


def _json_body(data: bytes) -> dict[str, object]:
    responses = parse_responses(data)
    assert responses and responses[0].status == 200, data[:200]
    return json.loads(responses[0].body)  # type: ignore[no-any-return]


def _post_head(path: str, *, length: int | None = None, chunked: bool = False, extra: str = "") -> bytes:
    framing = "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {length}\r\n"
    return f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\n{framing}{extra}\r\n".encode()


async def test_slow_uploads_hold_no_app_worker_and_are_cut_by_the_rate_rule(tmp_path: Path) -> None:
    settings = ProxySettings(min_body_rate=50, body_rate_window=1.0)
    slow_clients = THREADS + 2

    async with app_proxy(tmp_path, settings) as (p, instance):
        streams = [await _open(p) for _ in range(slow_clients)]
        stop = asyncio.Event()

        async def trickle(writer: asyncio.StreamWriter) -> None:
            writer.write(_post_head("/sink", length=1000))
            # ~2 bytes/s: the pace of the hostile client under test (not a wait for a condition).
            with contextlib.suppress(ConnectionError):
                while not stop.is_set():
                    writer.write(b"x")
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.5)

        tricklers = [asyncio.create_task(trickle(w)) for _, w in streams]
        try:
            # Meanwhile other requests are answered (each on its own connection).
            for _ in range(THREADS * 3):
                reader, writer = await _open(p)
                writer.write(f"GET /fast HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                data = await _read_all(reader, timeout=10)
                await _close(writer)
                assert [r.status for r in parse_responses(data)] == [200]
                assert parse_responses(data)[0].body == b"fast"
            # Each slow upload gets 408 and is closed, none reached the app.
            answers = await asyncio.gather(*(_read_all(r, timeout=20) for r, _ in streams))
            for data in answers:
                responses = parse_responses(data)
                assert [r.status for r in responses] == [408], data[:200]
                assert b"too long" in responses[0].body
        finally:
            stop.set()
            await asyncio.gather(*tricklers, return_exceptions=True)
            for _, writer in streams:
                await _close(writer)
        reader, writer = await _open(p)
        writer.write(f"GET /count HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        assert _json_body(await _read_all(reader)) == {"sinks": 0}
        await _close(writer)
        await _wait_for(lambda: instance.in_flight == 0)


def _open_fds_under(directory: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(directory)):
                found.append(target)
    return found


async def test_body_over_the_memory_limit_goes_through_an_unnamed_temporary_file(tmp_path: Path) -> None:
    settings = ProxySettings(request_buffer_memory=64 * KB)
    body = os.urandom(3 * MB)
    bodies = tmp_path / "bodies"

    async with app_proxy(tmp_path, settings) as (p, instance):
        p.server.body_dir = bodies
        reader, writer = await _open(p)
        half = len(body) // 2
        writer.write(_post_head("/sink", length=len(body)) + body[:half])
        await writer.drain()
        # Past the memory limit the body is in a file that has no name (nothing to leave behind).
        await _wait_for(lambda: bool(_open_fds_under(bodies)))
        assert os.listdir(bodies) == []
        assert instance.started == 0  # the app has seen nothing yet
        writer.write(body[half:])
        info = _json_body(await _read_response(reader))
        assert info["received"] == len(body)
        assert info["sha256"] == hashlib.sha256(body).hexdigest()
        assert info["content_length"] == str(len(body))
        await _close(writer)
        await _wait_for(lambda: not _open_fds_under(bodies))
        assert os.listdir(bodies) == []


async def test_chunked_body_arrives_with_its_content_length(tmp_path: Path) -> None:
    pieces = [b"hello ", b"buffered ", b"world" * 1000]
    whole = b"".join(pieces)

    async with app_proxy(tmp_path) as (p, _):
        reader, writer = await _open(p)
        writer.write(_post_head("/sink", chunked=True))
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        writer.write(b"0\r\n\r\n")
        info = _json_body(await _read_response(reader))
        await _close(writer)
        assert info["received"] == len(whole)
        assert info["sha256"] == hashlib.sha256(whole).hexdigest()
        assert info["content_length"] == str(len(whole))
        assert info["transfer_encoding"] is None


async def test_max_body_bytes_answers_413_without_involving_the_app(tmp_path: Path) -> None:
    settings = ProxySettings(max_body_bytes=1000)

    async with app_proxy(tmp_path, settings) as (p, instance):
        data = await _exchange(p, _post_head("/sink", length=1001) + b"x" * 1001)
        assert [r.status for r in parse_responses(data)] == [413]
        chunked = b"3e8\r\n" + b"x" * 1000 + b"\r\n1\r\nx\r\n0\r\n\r\n"
        data = await _exchange(p, _post_head("/sink", chunked=True) + chunked)
        assert [r.status for r in parse_responses(data)] == [413]
        assert instance.started == 0


async def test_expect_100_continue_is_answered_by_the_proxy(tmp_path: Path) -> None:
    settings = ProxySettings(max_body_bytes=1000)

    async with app_proxy(tmp_path, settings) as (p, instance):
        reader, writer = await _open(p)
        writer.write(_post_head("/sink", length=5, extra="Expect: 100-continue\r\n"))
        async with asyncio.timeout(10):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert instance.started == 0
        writer.write(b"hello")
        info = _json_body(await _read_response(reader))
        assert info["received"] == 5 and info["expect"] is None
        # Too large: 413 at once, never 100.
        writer.write(_post_head("/sink", length=1001, extra="Expect: 100-continue\r\n"))
        data = await _read_all(reader)
        await _close(writer)
        assert b"100 Continue" not in data
        assert [r.status for r in parse_responses(data)] == [413]


@pytest.mark.parametrize("where", ["server", "app"])
async def test_streaming_mode_forwards_the_body_before_it_is_complete(tmp_path: Path, where: str) -> None:
    # Off for the whole server ([proxy] request_buffering), or for one app (tako.toml, via its gate).
    settings = ProxySettings(request_buffering=where != "server")

    async with app_proxy(tmp_path, settings, request_buffering=where != "app") as (p, _):
        reader, writer = await _open(p)
        writer.write(_post_head("/early", length=10) + b"hello")
        # The request reaches the app, and its answer the client, while half of the body is unsent.
        data = await _read_response(reader)
        await _close(writer)
        responses = parse_responses(data)
        assert responses[0].status == 200 and responses[0].body == b"early"


def _read_blocking(tls: ssl.SSLSocket, timeout: float = 30.0) -> bytes:
    """Read one response from a blocking TLS socket."""
    tls.settimeout(timeout)
    data = b""
    while True:
        chunk = tls.recv(65536)
        if not chunk:
            return data
        data += chunk
        if _one_response_in(data):
            return data


async def test_a_slow_response_reader_does_not_hold_the_instance(tmp_path: Path) -> None:
    # Larger than what the kernel's socket buffers can absorb (a loopback send buffer grows to 4 MiB), so
    # the proxy's own buffer is what releases the instance.
    size = 10 * MB
    settings = ProxySettings(response_buffer_bytes=16 * MB)

    async with app_proxy(tmp_path, settings) as (p, instance):
        # A plain blocking socket that reads nothing for now (no stream reader buffering behind it).
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        tls = p.client_context().wrap_socket(raw, server_hostname=HOST, do_handshake_on_connect=False)
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, tls.connect, ("127.0.0.1", p.https_port))
            await loop.run_in_executor(None, tls.do_handshake)
            tls.sendall(f"GET /big/{size} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            # The whole response is taken from the instance while the client has read none of it.
            await _wait_for(lambda: instance.started == 1 and instance.in_flight == 0)
            data = await loop.run_in_executor(None, _read_blocking, tls)
        finally:
            tls.close()
        responses = parse_responses(data)
        assert responses[0].status == 200 and len(responses[0].body) == size


async def test_an_instance_that_takes_no_body_gets_504_and_the_body_is_freed(tmp_path: Path) -> None:
    body = os.urandom(32 * MB)  # more than the kernel's socket buffers: sending it stalls
    bodies = tmp_path / "bodies"
    settings = ProxySettings(upstream_response_timeout=1.0)

    accepted: list[asyncio.StreamWriter] = []

    async def never_read(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # an app stuck before reading its request

    app = await asyncio.start_server(never_read, "127.0.0.1", 0)
    instance = StaticUpstream(app.sockets[0].getsockname()[1])
    try:
        async with running_proxy(tmp_path, {HOST: StaticGate("a", [instance])}, settings) as p:
            p.issue(HOST)
            p.server.body_dir = bodies
            reader, writer = await _open(p)
            writer.write(_post_head("/sink", length=len(body)) + body)
            data = await _read_response(reader)
            await _close(writer)
            assert [r.status for r in parse_responses(data)] == [504]
            await _wait_for(lambda: instance.in_flight == 0 and not _open_fds_under(bodies))
            assert instance.started == 1
    finally:
        for stuck in accepted:
            stuck.close()
        app.close()
        await app.wait_closed()


async def test_stalled_large_uploads_cost_bounded_memory(tmp_path: Path) -> None:
    """Each upload announces 100 MB, sends 3 MB and stalls: past request_buffer_memory the bodies are on
    disk, so the proxy's memory grows by well under 3 MB per connection."""
    uploads = 16
    sent = 3 * MB
    bodies = default_directory()  # the proxy process is given no body_dir
    ca = trustme.CA()
    (tmp_path / "certs" / HOST).mkdir(parents=True)
    cert = ca.issue_cert(HOST)
    cert.private_key_pem.write_to_path(str(tmp_path / "certs" / HOST / "privkey.pem"))
    (tmp_path / "certs" / HOST / "fullchain.pem").write_bytes(
        b"".join(b.bytes() for b in cert.cert_chain_pems)
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)

    def spilled(pid: int) -> int:
        count = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(bodies))
        return count

    up = await HttpUpstream().start()
    config = {"routes": {HOST: [up.port]}, "certs_dir": str(tmp_path / "certs")}
    writers: list[asyncio.StreamWriter] = []
    try:
        with proxy_process(config) as (proc, ports):
            rss = psutil.Process(proc.pid)

            async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
                return await asyncio.open_connection(
                    "127.0.0.1", ports["https"], ssl=context, server_hostname=HOST
                )

            reader, writer = await connect()  # warm-up: TLS, the upstream pool
            writer.write(f"GET /warm HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            assert [r.status for r in parse_responses(await _read_all(reader))] == [200]
            await _close(writer)
            baseline = rss.memory_info().rss
            chunk = os.urandom(sent)
            for _ in range(uploads):
                _, writer = await connect()
                writers.append(writer)
                writer.write(_post_head("/sink", length=100 * MB) + chunk)
            # Every body has gone past the memory limit into its (unnamed) file.
            await _wait_for(lambda: spilled(proc.pid) == uploads, timeout=60)
            growth = rss.memory_info().rss - baseline
            print(f"RSS growth with {uploads} stalled uploads of {sent // MB} MB: {growth / MB:.1f} MB")
            assert growth < uploads * 2 * MB, growth
    finally:
        for writer in writers:
            await _close(writer)
        await up.stop()
