# cython: language_level=3
"""The TLS transport's record I/O, calling libssl on the connection's own `SSL` object.

`TLSTransport` (tls.py) drives a TLS object made by `ssl.SSLContext._wrap_socket`. Its `read` and `write`
go through the `_ssl` module, which cannot turn on OpenSSL's read-ahead (so every record costs two `read`
syscalls: its 5-byte header, then its body), releases and re-takes the GIL around each call, and reports
"no more data" with a raised `SSLWantReadError`. A `Channel` made here calls `SSL_read` / `SSL_write` on the
same `SSL` object directly, without the GIL round trip, and the common outcomes are return values. The
handshake, SNI (certificate selection), ALPN, session tickets and close_notify stay with the `_ssl` object,
unchanged.

`channel()` turns OpenSSL's read-ahead on: one `read` syscall takes whatever the socket holds (up to
OpenSSL's record buffer, 16,709 bytes), so a request costs one `read` instead of two. What that read brought
beyond the record `SSL_read` returns stays inside OpenSSL, where the loop's readiness cannot see it: the
transport (tls.py) asks `Channel.pending()` after every read, after the handshake and when reading resumes,
and reads it itself. Without those reads a request sent with the client's Finished, a WebSocket message
sent with its upgrade request, or the rest of a burst of records waits for the client's next packet; the
request's header timeout then answers 408 (tests/integration/test_proxy_tls_transport.py covers each).
`SSL_MODE_RELEASE_BUFFERS` stays off: OpenSSL 3.0 keeps little in an idle connection's buffers (20.5
against 21.2 KiB per idle connection measured, docs/benchmarks.md) and each request would allocate them
again.

The `SSL *` is the second field after the object header of `_ssl._SSLSocket` (CPython's `PySSLSocket`:
`PyObject_HEAD; PyObject *Socket; SSL *ssl; ...`, unchanged from 3.7 through 3.13). `channel()` only trusts
it on those versions, for an object of exactly that type, and only if OpenSSL says that `SSL` is on the
connection's own descriptor; otherwise it returns None and the transport uses the `_ssl` methods. This
module links the system's libssl, the very library the `_ssl` module is linked to (checked at import).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.object cimport PyObject
from libc.errno cimport errno

import ssl
import sys

import _ssl


cdef extern from "openssl/ssl.h":
    ctypedef struct SSL:
        pass
    int SSL_read(SSL *s, void *buf, int num)
    int SSL_write(SSL *s, const void *buf, int num)
    int SSL_get_error(const SSL *s, int ret)
    int SSL_get_fd(const SSL *s)
    int SSL_has_pending(const SSL *s)
    void SSL_set_read_ahead(SSL *s, int yes)
    const char *OpenSSL_version(int t)
    enum:
        SSL_ERROR_NONE
        SSL_ERROR_SSL
        SSL_ERROR_WANT_READ
        SSL_ERROR_WANT_WRITE
        SSL_ERROR_SYSCALL
        SSL_ERROR_ZERO_RETURN
        SSL_R_UNEXPECTED_EOF_WHILE_READING
        OPENSSL_VERSION

cdef extern from "openssl/err.h":
    unsigned long ERR_peek_error()
    unsigned long ERR_get_error()
    void ERR_clear_error()
    int ERR_GET_REASON(unsigned long e)
    void ERR_error_string_n(unsigned long e, char *buf, size_t len)


ctypedef struct SSLSocketHead:  # the start of CPython's PySSLSocket (see the module docstring)
    Py_ssize_t ob_refcnt
    void *ob_type
    PyObject *Socket
    SSL *conn


cdef enum:
    READ_SIZE = 16384  # one record's plaintext at most, so one SSL_read leaves no decrypted bytes behind

cdef char _buffer[READ_SIZE]
cdef bint _layout_known = (3, 7) <= sys.version_info[:2] <= (3, 13)
_SSL_SOCKET = _ssl._SSLSocket
_SAME_LIBRARY = ssl.OPENSSL_VERSION == OpenSSL_version(OPENSSL_VERSION).decode()


cdef object _error(int code, int syscall_errno):
    """The exception for a failed SSL_read / SSL_write (as `_ssl` would raise it); None: end of stream."""
    cdef unsigned long err
    cdef char text[256]
    if code == SSL_ERROR_WANT_WRITE:
        return ssl.SSLWantWriteError(code, "The operation did not complete (write)")
    if code == SSL_ERROR_WANT_READ:
        return ssl.SSLWantReadError(code, "The operation did not complete (read)")
    if code == SSL_ERROR_SYSCALL:
        if ERR_peek_error() == 0 and syscall_errno != 0:
            return OSError(syscall_errno, "TLS socket I/O failed")
        return None  # EOF without close_notify (OpenSSL 1.1)
    err = ERR_get_error()
    ERR_clear_error()
    if ERR_GET_REASON(err) == SSL_R_UNEXPECTED_EOF_WHILE_READING:
        return None  # EOF without close_notify (OpenSSL 3)
    ERR_error_string_n(err, text, sizeof(text))
    return ssl.SSLError(code, text.decode(errors="replace"))


cdef inline void _clear_errors() noexcept:
    """Empty this thread's OpenSSL error queue, which SSL_get_error reads after a failed call.

    It is almost always empty already: `ERR_clear_error` resets all 16 of its slots regardless (840
    machine instructions, 1.7k per HTTPS request with one read and one write: 2.5% of a keep-alive
    request under bench/proxy/tls_instructions.py), where `ERR_peek_error` only compares two indexes."""
    if ERR_peek_error() != 0:
        ERR_clear_error()


cdef class Channel:
    """SSL_read and SSL_write on the `SSL` object of one `_ssl._SSLSocket` (which this keeps alive)."""

    cdef object _owner
    cdef SSL *_ssl

    def read(self):
        """Plaintext the client sent (bytes), b"" at its end (close_notify, or EOF without it), or None
        when nothing more has arrived. Raises `ssl.SSLWantWriteError` when OpenSSL must write first (a TLS
        1.3 key update), an `OSError` (`ssl.SSLError` included) when the connection failed.

        One `SSL_read`, so at most one record. OpenSSL reads ahead (see `channel`), so what followed that
        record in the socket may now be inside OpenSSL, where the loop's readiness does not see it: the
        caller asks `pending()` after each read and reads again while it is true.
        """
        cdef SSL *conn = self._ssl
        cdef int n, code, failure
        _clear_errors()
        n = SSL_read(conn, _buffer, READ_SIZE)
        if n > 0:
            return PyBytes_FromStringAndSize(_buffer, n)
        failure = errno
        code = SSL_get_error(conn, n)
        if code == SSL_ERROR_WANT_READ:
            return None
        if code == SSL_ERROR_ZERO_RETURN:
            return b""
        exc = _error(code, failure)
        if exc is None:
            return b""
        raise exc

    def pending(self):
        """Whether OpenSSL holds bytes it read from the socket (a whole record or part of one) that `read`
        has not returned yet. A part of a record makes the next `read` return None (after one `read`
        syscall that finds nothing more); a whole one makes it return the record without a syscall."""
        return SSL_has_pending(self._ssl) != 0

    def write(self, data):
        """Encrypt and send all of `data` (returns its length); raises `ssl.SSLWantWriteError` (or
        `SSLWantReadError`) when the socket is full, after which the same bytes must be passed again, and an
        `OSError` when the connection failed."""
        cdef Py_buffer view
        cdef int n, code, failure
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if view.len > 0x40000000:
                raise ValueError("write at most 1 GiB at a time")
            _clear_errors()
            n = SSL_write(self._ssl, view.buf, <int>view.len)
            if n > 0:
                return n
            failure = errno
            code = SSL_get_error(self._ssl, n)
            exc = _error(code, failure)
            if exc is None:
                exc = ssl.SSLEOFError(code, "EOF occurred in violation of protocol")
            raise exc
        finally:
            PyBuffer_Release(&view)


def channel(tls, int fd):
    """A `Channel` on `tls` (an `_ssl._SSLSocket` on descriptor `fd`) with OpenSSL's read-ahead on, or None
    where the `SSL` object cannot be reached safely (see the module docstring). Made before the handshake,
    so the handshake reads ahead too: a request sent with the client's Finished is then inside OpenSSL
    when the handshake completes (the transport reads it at once, see tls.py)."""
    cdef SSL *conn
    cdef Channel result
    if not _layout_known or not _SAME_LIBRARY or type(tls) is not _SSL_SOCKET:
        return None
    conn = (<SSLSocketHead *><PyObject *>tls).conn
    if conn == NULL or SSL_get_fd(conn) != fd:
        return None
    SSL_set_read_ahead(conn, 1)
    result = Channel.__new__(Channel)
    result._owner = tls
    result._ssl = conn
    return result
