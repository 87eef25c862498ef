"""The HTTPS listener's own TLS transport: handshake deadline, record boundaries, close_notify, back-pressure.

Real TLS clients (Python's ssl over real sockets, in threads where a blocking client is clearer) against a
real `ProxyServer` and upstream on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.support.proxy_harness import (
    ProxyHarness,
    one_app_proxy,
    parse_responses,
    running_proxy,
    websocket_app_proxy,
)
from tests.support.upstreams import _BLOCK

from tako.config.server import ProxySettings
from tako.server.proxy.tls import TLSTransport

pytestmark = [pytest.mark.integration, pytest.mark.uvloop]

HOST = "a.tako.test"


def _tls_client(p: ProxyHarness, timeout: float = 10.0) -> ssl.SSLSocket:
    ctx = p.client_context()
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF  # an end of stream without close_notify is an error
    raw = socket.create_connection(("127.0.0.1", p.https_port), timeout=timeout)
    sock = ctx.wrap_socket(raw, server_hostname=HOST, suppress_ragged_eofs=False)
    return sock


def _read_until_closed(sock: ssl.SSLSocket) -> bytes:
    """Everything up to the server's close_notify (an EOF without one raises SSLEOFError)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _read_responses(sock: ssl.SSLSocket, count: int) -> bytes:
    received = b""
    while len([r for r in parse_responses(received) if r.complete]) < count:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {received!r}"
        received += chunk
    return received


async def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_the_transport_has_every_method_of_an_asyncio_transport() -> None:
    # TLSTransport does not subclass asyncio.Transport (compiled, it cannot): none of the base's methods
    # may be missing, and it must not be the base's NotImplementedError stubs, either.
    methods = {name for name in dir(asyncio.Transport) if not name.startswith("_")}
    assert methods <= set(dir(TLSTransport))
    assert not issubclass(TLSTransport, asyncio.BaseTransport)


async def test_handshake_deadline_closes_silent_and_stalled_clients(tmp_path: Path) -> None:
    def silent_then_partial(port: int) -> tuple[bytes, bytes]:
        results = []
        for first in (b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):  # nothing; half a ClientHello
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                raw.sendall(first)
                results.append(raw.recv(100))
        return results[0], results[1]

    async with running_proxy(tmp_path, {}, ProxySettings(header_timeout=0.3)) as p:
        p.issue(HOST)
        started = time.monotonic()
        silent, partial = await asyncio.to_thread(silent_then_partial, p.https_port)
        assert silent == b"" and partial == b""  # closed by the proxy, well before the client's 10 s
        assert time.monotonic() - started < 9
        # The listener still serves complete handshakes afterwards.
        async with p.https() as client:
            r = await client.get("/_tako/status", extensions={"sni_hostname": HOST})
            assert r.status_code == 200


async def test_requests_in_separate_records_and_pipelined_in_one(tmp_path: Path) -> None:
    request = b"GET /sink HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"

    def exchange(p: ProxyHarness) -> tuple[bytes, bytes]:
        with _tls_client(p) as sock:
            # Three requests as three TLS records written back to back (one TCP segment, most likely).
            for _ in range(3):
                sock.sendall(request)
            separate = _read_responses(sock, 3)
            # Three requests pipelined inside a single record.
            sock.sendall(request * 3)
            pipelined = _read_responses(sock, 3)
        return separate, pipelined

    async with one_app_proxy(tmp_path) as (p, _):
        separate, pipelined = await asyncio.to_thread(exchange, p)
        for data in (separate, pipelined):
            assert [r.status for r in parse_responses(data)] == [200, 200, 200]


def _records_with_finished(
    p: ProxyHarness, records: list[bytes], done: Callable[[bytes], bool], host: str = HOST
) -> bytes:
    """Handshake in memory, then send the client's Finished and `records` (one TLS record each) in one
    write; read until `done(what came back)`. With OpenSSL's read-ahead the handshake's last read takes the
    records in too: they are inside OpenSSL when the handshake completes, and the socket will not announce
    them again, so the transport must read them itself (and, once the protocol paused and resumed reading,
    the ones it had left there)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = p.client_context().wrap_bio(incoming, outgoing, server_hostname=host)
    with socket.create_connection(("127.0.0.1", p.https_port), timeout=10) as raw:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        for record in records:
            tls.write(record)
        raw.sendall(outgoing.read())  # Finished and the records together
        received = b""
        while not done(received):
            try:
                received += tls.read(65536)
            except ssl.SSLWantReadError:
                chunk = raw.recv(65536)  # the socket's timeout bounds the wait
                assert chunk, f"closed after {received!r}"
                incoming.write(chunk)
        return received


def _request_with_finished(p: ProxyHarness, request: bytes) -> bytes:
    return _records_with_finished(p, [request], lambda data: any(r.complete for r in parse_responses(data)))


async def test_request_in_the_same_segment_as_the_finished_message(tmp_path: Path) -> None:
    request = b"GET /sink HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"
    async with one_app_proxy(tmp_path) as (p, _):
        data = await asyncio.to_thread(_request_with_finished, p, request)
        assert [r.status for r in parse_responses(data)] == [200]


async def test_websocket_upgrade_and_first_message_in_the_same_segment_as_the_finished_message(
    tmp_path: Path,
) -> None:
    # The upgrade request and the first message as two records, sent with the client's Finished: the
    # proxy stops reading after the request (until the app accepts the upgrade), with the message's record
    # still inside OpenSSL (read ahead with the Finished), where only resume_reading can find it again.
    host = "ws.tako.test"
    upgrade = (
        b"GET /chat HTTP/1.1\r\nHost: ws.tako.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    mask, text = b"\x01\x02\x03\x04", b"first"
    frame = bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    echo = bytes([0x81, len(text)]) + text  # the app's answer, unmasked

    def answered(data: bytes) -> bool:
        return b"\r\n\r\n" in data and data.split(b"\r\n\r\n", 1)[1].startswith(echo)

    async with websocket_app_proxy(tmp_path, host=host) as w:
        data = await asyncio.to_thread(_records_with_finished, w.proxy, [upgrade, frame], answered, host)
        assert data.startswith(b"HTTP/1.1 101 ")


async def test_more_small_records_in_one_segment_than_one_read_takes(tmp_path: Path) -> None:
    # A body in 60 records of 10 bytes, sent with the head and the client's Finished: all of it is inside
    # OpenSSL at once, more records than one readiness callback reads (RECORDS_PER_CALLBACK), so the
    # transport must come back for the rest on its own; the socket has nothing left to announce.
    pieces = [b"%09d\n" % i for i in range(60)]
    body = b"".join(pieces)
    head = b"POST /sink HTTP/1.1\r\nHost: a.tako.test\r\nContent-Length: %d\r\n\r\n" % len(body)

    def complete(data: bytes) -> bool:
        return any(r.complete for r in parse_responses(data))

    async with one_app_proxy(tmp_path) as (p, _):
        data = await asyncio.to_thread(_records_with_finished, p, [head, *pieces], complete)
        [response] = parse_responses(data)
        assert response.status == 200
        expected = {"received": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        assert json.loads(response.body) == expected


async def test_pipelined_burst_larger_than_one_read(tmp_path: Path) -> None:
    # ~340 KiB of requests in one write: many records, read one per `SSL_read`, while the proxy pauses and
    # resumes reading between requests (with read-ahead, part of it would wait inside OpenSSL).
    count = 1000
    request = b"GET /sink HTTP/1.1\r\nHost: a.tako.test\r\nX-Pad: " + b"p" * 300 + b"\r\n\r\n"

    def burst(p: ProxyHarness) -> bytes:
        received = b""
        with _tls_client(p, timeout=30) as sock:
            sock.sendall(request * count)
            while received.count(b"HTTP/1.1 ") < count:  # parse_responses on every chunk is quadratic
                chunk = sock.recv(65536)
                assert chunk, f"closed after {received.count(b'HTTP/1.1 ')} responses"
                received += chunk
        return received

    async with one_app_proxy(tmp_path) as (p, _):
        data = await asyncio.to_thread(burst, p)
        assert [r.status for r in parse_responses(data)] == [200] * count


async def test_closing_sends_close_notify(tmp_path: Path) -> None:
    def until_closed(p: ProxyHarness, request: bytes) -> bytes:
        with _tls_client(p) as sock:
            sock.sendall(request)
            return _read_until_closed(sock)

    settings = ProxySettings(keepalive_timeout=0.3)
    async with one_app_proxy(tmp_path, settings) as (p, _):
        # The client asks to close; then an idle keep-alive connection the proxy times out.
        closing = b"GET /sink HTTP/1.1\r\nHost: a.tako.test\r\nConnection: close\r\n\r\n"
        data = await asyncio.to_thread(until_closed, p, closing)
        assert [r.status for r in parse_responses(data)] == [200]
        idle = b"GET /sink HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"
        data = await asyncio.to_thread(until_closed, p, idle)
        assert [r.status for r in parse_responses(data)] == [200]
        await _wait_for(lambda: not p.server.connections)


@pytest.mark.deadline(180)
async def test_slow_reader_download_is_complete_and_buffered_within_bounds(tmp_path: Path) -> None:
    size = 32 * 1024 * 1024

    def slow_download(p: ProxyHarness, peak: list[int]) -> tuple[int, str]:
        with _tls_client(p, timeout=60) as sock:
            sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: a.tako.test\r\nConnection: close\r\n\r\n" % size)
            received = b""
            while b"\r\n\r\n" not in received:
                received += sock.recv(65536)
            body = received.split(b"\r\n\r\n", 1)[1]
            digest = hashlib.sha256(body)
            total = len(body)
            while chunk := sock.recv(65536):
                total += len(chunk)
                digest.update(chunk)
                if total < 4 * 1024 * 1024:
                    time.sleep(0.001)  # read slowly at first, so the proxy has to hold back the upstream
                for conn in list(p.server.connections):
                    peak[0] = max(peak[0], conn.transport.get_write_buffer_size())
            return total, digest.hexdigest()

    async with one_app_proxy(tmp_path) as (p, _):
        peak = [0]
        total, digest = await asyncio.to_thread(slow_download, p, peak)
        expected = hashlib.sha256()
        for offset in range(0, size, len(_BLOCK)):
            expected.update(_BLOCK[: size - offset])
        assert total == size and digest == expected.hexdigest()
        # The proxy stops reading the upstream once response_buffer_bytes wait for the client: one
        # read of the upstream (at most 256 KiB) can land on top of that, never the whole body.
        assert peak[0] < ProxySettings().response_buffer_bytes + 512 * 1024


async def test_clients_that_vanish_leave_no_connection_behind(tmp_path: Path) -> None:
    def vanish(p: ProxyHarness) -> None:
        ctx = p.client_context()
        # Mid-handshake: a ClientHello, then a reset.
        raw = socket.create_connection(("127.0.0.1", p.https_port), timeout=10)
        outgoing = ssl.MemoryBIO()
        tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=HOST)
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        raw.sendall(outgoing.read())  # the ClientHello
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        raw.close()
        # Mid-response: ask for a large body and reset the connection after the first bytes.
        sock = _tls_client(p)
        sock.sendall(b"GET /bytes/20000000 HTTP/1.1\r\nHost: a.tako.test\r\n\r\n")
        sock.recv(1000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()

    async with one_app_proxy(tmp_path) as (p, _):
        await asyncio.to_thread(vanish, p)
        await _wait_for(lambda: not p.server.connections)
        async with p.https() as client:
            r = await client.get("/sink", headers={"Host": HOST}, extensions={"sni_hostname": HOST})
            assert r.status_code == 200


async def test_shutdown_closes_connections_still_in_their_handshake(tmp_path: Path) -> None:
    async with running_proxy(tmp_path, {}, ProxySettings(header_timeout=60)) as p:
        raw = socket.create_connection(("127.0.0.1", p.https_port), timeout=30)
        try:
            await _wait_for(lambda: p.server._handshaking)  # accepted, waiting for a ClientHello
            started = time.monotonic()
            await p.server.shutdown(1)
            assert await asyncio.to_thread(raw.recv, 100) == b""
            assert time.monotonic() - started < 30  # closed by the shutdown, not the 60 s deadline
            assert not p.server._handshaking
        finally:
            raw.close()


async def test_corrupt_records_after_the_handshake_close_only_that_connection(tmp_path: Path) -> None:
    def corrupt(p: ProxyHarness, record: bytes) -> bytes | str:
        with _tls_client(p) as sock:
            sock.sendall(b"GET /sink HTTP/1.1\r\nHost: a.tako.test\r\n\r\n")
            _read_responses(sock, 1)
            # Bytes that are not what this TLS session would send, written under the TLS layer.
            with socket.socket(fileno=os.dup(sock.fileno())) as raw:
                raw.sendall(record)
            try:
                return sock.recv(65536)
            except (ssl.SSLError, OSError) as exc:
                return type(exc).__name__

    loop_errors: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: loop_errors.append(ctx))
    async with one_app_proxy(tmp_path) as (p, _):
        for record in (
            b"\x17\x03\x03\x00\x20" + bytes(range(32)),  # application data that fails to decrypt
            b"\x16\x03\x03\x40\x00" + b"\x00" * 64,  # an oversized handshake record, cut short
            b"GET / HTTP/1.1\r\n\r\n",  # plaintext inside a TLS connection
        ):
            result = await asyncio.to_thread(corrupt, p, record)
            assert result in (b"", "SSLError", "ConnectionResetError", "SSLEOFError"), result
        await _wait_for(lambda: not p.server.connections)
        async with p.https() as client:
            r = await client.get("/sink", headers={"Host": HOST}, extensions={"sni_hostname": HOST})
            assert r.status_code == 200
    assert not loop_errors, loop_errors[0]
