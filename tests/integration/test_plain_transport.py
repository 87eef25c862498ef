"""The readiness-driven TCP transport of plain connections (`proxy/plain.py`), over real sockets on uvloop.

Its protocol hears `connection_made` before the constructor returns (no turn of the loop's ready queue),
and it keeps the semantics of the loop's own transport that the proxy's protocols rely on: writes go out
at once and only the rest is buffered, back-pressure by `pause_writing`/`resume_writing`, `write_eof` and
`close` after the buffer is out, `eof_received` deciding whether to close, `connection_lost` once.
"""

from __future__ import annotations

import asyncio
import select
import socket
import time
from typing import Any

import pytest

from tako.server.proxy.plain import PlainTransport

pytestmark = [pytest.mark.integration, pytest.mark.uvloop]


class Recorder(asyncio.Protocol):
    """Records what the transport tells it, in order."""

    def __init__(self, keep_open_on_eof: bool = False) -> None:
        self.events: list[str] = []
        self.data = b""
        self.transport: Any = None
        self.keep_open_on_eof = keep_open_on_eof
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.events.append("eof")
        return self.keep_open_on_eof

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def _pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on loopback: (ours, non-blocking, for the transport; the peer's, blocking)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    ours.setblocking(False)
    peer.settimeout(10)
    return ours, peer


def _read_all(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(1 << 20):
        received += chunk
    return received


async def test_connection_made_comes_from_the_constructor_and_data_and_eof_follow() -> None:
    ours, peer = _pair()
    protocol = Recorder()
    transport = PlainTransport(asyncio.get_running_loop(), ours, protocol, ("127.0.0.1", 1))
    assert protocol.events == ["made"]  # before any loop turn
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)
    peer.sendall(b"hello")
    await _until(lambda: protocol.data == b"hello")
    transport.write(b"world")
    assert peer.recv(5) == b"world"
    peer.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(protocol.lost, 10) is None  # eof_received returned false: closed
    assert protocol.events == ["made", "eof", "lost"]
    assert peer.recv(1) == b""
    peer.close()


async def test_read_now_delivers_what_already_arrived_from_the_constructor() -> None:
    ours, peer = _pair()
    peer.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert select.select([ours], [], [], 10)[0]
    protocol = Recorder()
    transport = PlainTransport(asyncio.get_running_loop(), ours, protocol, read_now=True)
    assert protocol.data == b"GET / HTTP/1.1\r\n\r\n"  # no loop turn in between
    transport.close()
    await asyncio.wait_for(protocol.lost, 10)
    peer.close()


async def test_a_write_larger_than_the_socket_takes_pauses_and_resumes_and_arrives_whole() -> None:
    ours, peer = _pair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    protocol = Recorder()
    transport = PlainTransport(asyncio.get_running_loop(), ours, protocol)
    payload = bytes(range(256)) * 8192  # 2 MiB
    transport.write(payload[:1000])
    transport.write(payload[1000:])
    assert "pause" in protocol.events and transport.get_write_buffer_size() > 0
    transport.write_eof()  # after what is buffered
    received = await asyncio.to_thread(_read_all, peer)
    assert received == payload
    await _until(lambda: "resume" in protocol.events)
    # Half-closed: the peer can still send, and is heard.
    peer.sendall(b"still here")
    await _until(lambda: protocol.data == b"still here")
    transport.close()
    await asyncio.wait_for(protocol.lost, 10)
    peer.close()


async def test_close_sends_what_is_buffered_first_and_abort_does_not_wait() -> None:
    loop = asyncio.get_running_loop()
    ours, peer = _pair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    protocol = Recorder()
    transport = PlainTransport(loop, ours, protocol)
    payload = b"x" * (1 << 20)
    transport.write(payload)
    transport.close()
    assert transport.is_closing() and not protocol.lost.done()
    assert await asyncio.to_thread(_read_all, peer) == payload
    assert await asyncio.wait_for(protocol.lost, 10) is None
    peer.close()

    ours, peer = _pair()
    protocol = Recorder()
    transport = PlainTransport(loop, ours, protocol)
    transport.write(payload)
    transport.abort()
    await asyncio.wait_for(protocol.lost, 10)
    assert protocol.events.count("lost") == 1
    transport.close()  # after abort: nothing more happens
    transport.abort()
    await asyncio.sleep(0)
    assert protocol.events.count("lost") == 1
    peer.close()


async def test_pause_reading_holds_data_until_resumed_and_eof_kept_open_allows_writes() -> None:
    ours, peer = _pair()
    protocol = Recorder(keep_open_on_eof=True)
    transport = PlainTransport(asyncio.get_running_loop(), ours, protocol)
    transport.pause_reading()
    assert not transport.is_reading()
    peer.sendall(b"held")
    assert select.select([ours], [], [], 10)[0]  # the bytes are there to be read
    for _ in range(20):  # loop turns in which a watched socket would have been read
        await asyncio.sleep(0)
    assert protocol.data == b""
    transport.resume_reading()
    await _until(lambda: protocol.data == b"held")
    peer.shutdown(socket.SHUT_WR)
    await _until(lambda: "eof" in protocol.events)
    transport.write(b"answer after the peer's end")  # eof_received returned true: still writable
    transport.close()
    assert await asyncio.to_thread(_read_all, peer) == b"answer after the peer's end"
    await asyncio.wait_for(protocol.lost, 10)
    peer.close()


async def test_a_reset_by_the_peer_reports_the_error_once() -> None:
    ours, peer = _pair()
    protocol = Recorder()
    PlainTransport(asyncio.get_running_loop(), ours, protocol)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()  # RST
    exc = await asyncio.wait_for(protocol.lost, 10)
    assert exc is None or isinstance(exc, ConnectionResetError)
    assert protocol.events.count("lost") == 1
