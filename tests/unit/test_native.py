"""`native.py`: the byte and socket operations the per-request path makes, as the pure-Python proxy runs
them (compiled, native.pxd's C versions run inside the modules; tests/integration/test_plain_transport.py
and the proxy tests check those through the transports and connections, in both modes)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest

from tako.server.proxy import native


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_join_takes_any_buffer_and_refuses_anything_else() -> None:
    assert native.join((b"GET ", b"/", b"")) == b"GET /"
    assert native.join_list([b"a", bytearray(b"b"), memoryview(b"c")]) == b"abc"  # type: ignore[list-item]
    assert native.join(()) == b""
    with pytest.raises(TypeError):
        native.join((b"a", "b"))  # type: ignore[arg-type]


def test_copy_is_independent_of_the_bytearray_and_clear_empties_in_place() -> None:
    text = bytearray(b"3f9c-1a")
    copied = native.copy(text)
    text[-1] = ord("b")
    assert copied == b"3f9c-1a" and type(copied) is bytes
    items = [b"head", b"body"]
    same = items
    native.clear(items)
    assert same == []


def test_recv_tells_nothing_yet_data_and_the_end_apart(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    buffer = bytearray(16)
    assert native.recv(a.fileno(), buffer) is None  # nothing there yet
    b.send(b"0123456789abcdefXYZ")
    assert native.recv(a.fileno(), buffer) == b"0123456789abcdef"  # at most len(buffer)
    assert native.recv(a.fileno(), buffer) == b"XYZ"
    b.shutdown(socket.SHUT_WR)
    assert native.recv(a.fileno(), buffer) == b""


def test_recv_raises_for_a_reset() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()  # with linger 0: an RST
        client.setblocking(False)
        deadline = time.monotonic() + 5
        with pytest.raises(ConnectionResetError):
            while time.monotonic() < deadline:
                native.recv(client.fileno(), bytearray(64))
    finally:
        client.close()
        listener.close()


def test_send_takes_what_fits_and_zero_when_full(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    assert native.send(a.fileno(), b"hello") == 5
    assert b.recv(16) == b"hello"
    chunk = memoryview(b"x" * 65536)
    sent = 0
    while (n := native.send(a.fileno(), chunk)) > 0:
        sent += n
        assert sent < 64 * 1024 * 1024, "the socket never filled"
    assert n == 0 and sent > 0  # full: 0, not an exception


def test_now_is_the_monotonic_clock() -> None:
    before = time.monotonic()
    now = native.now()
    assert before <= now <= time.monotonic()
