# cython: language_level=3
"""Plain socket reads and writes for `PlainTransport` (plain.py), calling the kernel directly.

Through the socket object, a read is a method lookup and call, argument parsing, a buffer export, a GIL
release and re-take around `recv`, and a copy out of the shared buffer into a new bytes object; a write
the same around `send`. The loop's own transport does each in C. Here `recv` and `send` are called on the
descriptor with the GIL held (the socket is non-blocking, so neither waits), and the common outcomes are
return values: nothing to read is None, a full socket is 0 bytes sent. Without this binding
(TAKO_PURE_PYTHON=1, no compiler, a stale build) plain.py goes through the socket object, same behaviour.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport EAGAIN, EINTR, errno

import os


cdef extern from "sys/socket.h" nogil:
    ssize_t c_recv "recv" (int fd, void *buf, size_t n, int flags)
    ssize_t c_send "send" (int fd, const void *buf, size_t n, int flags)
    int MSG_NOSIGNAL


# One read takes at most this much (as plain.RECV_SIZE). Every connection of the process reads into this
# one buffer and copies out what it got; the loop runs one callback at a time.
cdef enum:
    RECV_SIZE = 65536
cdef char _buffer[RECV_SIZE]


def recv(int fd):
    """What one `recv` on `fd` returns: bytes, b"" at the end of the stream, or None when nothing is there
    yet. Raises OSError for anything else (a reset)."""
    cdef ssize_t n
    cdef int err
    while True:
        n = c_recv(fd, _buffer, RECV_SIZE, 0)
        if n >= 0:
            return PyBytes_FromStringAndSize(_buffer, n)
        err = errno
        if err == EINTR:
            continue
        if err == EAGAIN:  # EWOULDBLOCK is EAGAIN on Linux
            return None
        raise OSError(err, os.strerror(err))


def send(int fd, data):
    """Bytes of `data` (any contiguous buffer) that one `send` on `fd` took: 0 when the socket is full.
    Raises OSError for anything else (a reset, a closed peer: no SIGPIPE)."""
    cdef Py_buffer view
    cdef ssize_t n
    cdef int err
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        while True:
            n = c_send(fd, view.buf, <size_t>view.len, MSG_NOSIGNAL)
            if n >= 0:
                return n
            err = errno
            if err == EINTR:
                continue
            if err == EAGAIN:  # EWOULDBLOCK is EAGAIN on Linux
                return 0
            raise OSError(err, os.strerror(err))
    finally:
        PyBuffer_Release(&view)
