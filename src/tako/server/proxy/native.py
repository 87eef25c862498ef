"""Byte and socket operations of the per-request path, where C does them for far less than CPython's
generic calls: in C where the proxy's modules are compiled (native.pxd holds them as inline functions,
compiled into each module that cimports it), and here, in Python, where they are not.

A compiled module imports this module (`from tako.server.proxy import native`) and cimports native.pxd under
the same name, so `native.join(...)` is the inline C function when compiled and the function below when not
(compiled.py hashes native.pxd into every compiled module's source hash, since its code is compiled into
them). Measured with callgrind (bench/proxy/tls_instructions.py): `b"".join` costs about 70 instructions
per piece (a buffer export and release each), `bytes(bytearray)` about 600 (a type call), and a call into
a separate binding module about 200 before it does anything.
"""

from __future__ import annotations

import os
import time
from typing import Any

# Seconds on the monotonic clock (CLOCK_MONOTONIC, as the loop's `time()` reads it, to the nanosecond
# rather than the loop turn's millisecond): the proxy's request stamps and connection deadlines.
now = time.monotonic


def join(pieces: tuple[bytes, ...]) -> bytes:
    """The pieces, concatenated."""
    return b"".join(pieces)


def join_list(pieces: list[bytes]) -> bytes:
    """The pieces, concatenated."""
    return b"".join(pieces)


def clear(items: list[Any]) -> None:
    """Empty the list in place."""
    items.clear()


def copy(data: bytearray) -> bytes:
    """The bytearray's bytes, as bytes."""
    return bytes(data)


def recv(fd: int, buffer: bytearray) -> bytes | None:
    """What one read of the non-blocking socket `fd` into `buffer` (the caller's, shared by its connections)
    returns, copied out: bytes, b"" at the end of the stream, or None when nothing is there yet. Raises
    OSError for anything else (a reset)."""
    try:
        n = os.readv(fd, (buffer,))
    except BlockingIOError:
        return None
    return memoryview(buffer)[:n].tobytes()


def send(fd: int, data: bytes | bytearray | memoryview) -> int:
    """Bytes of `data` one write to the non-blocking socket `fd` took: 0 when the socket is full. Raises
    OSError for anything else (a reset, a closed peer: Python ignores SIGPIPE)."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
