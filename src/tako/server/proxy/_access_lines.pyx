# cython: language_level=3
"""Access lines formatted in C: `Formatter.format(entries, wall)` is `access_line.LineFormatter.format` (the
same JSON lines, byte for byte), writing each line into one C buffer per app instead of joining Python
strings.

As compiled Python the line formatter made a string per number and per f-string, looked up the parts that
repeat in dicts keyed by tuples, and joined the lines: about 6,600 machine instructions a line, a sixth of
a whole proxied request (callgrind over bench/proxy/hotpath.py --access-log). Here the numbers are written
as digits into the buffer, and the text parts (app, host, method, path, request id, instance, client)
are copied as they are when they are printable ASCII without quotes or backslashes, which is what JSON
would write for them too; anything else is escaped by the `json` module, as the Python formatter escapes
it, so both give the same bytes for every input (tests/unit/test_access_line_binding.py holds them to
it). Every line is ASCII: bytes from the wire are read as latin-1 and non-ASCII text is written as \\u
escapes, so a batch is written to the file as it is.

Used by `access_line.AccessLog` where this binding is built and current (see compiled.py); the Python
formatter otherwise.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.string cimport memchr, memcpy, strlen
from libc.time cimport gmtime_r, strftime, time_t, tm

import json


cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void *PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)


# The order access_line.Entry gives.
cdef enum:
    APP, HOST, METHOD, STARTED, ENDED, SENT_AT, STATUS, URL, BYTES_IN, BYTES_OUT, REQUEST_ID, INSTANCE
    CLIENT, TLS, WEBSOCKET, ENTRY_LENGTH


cdef struct Buffer:
    char *data
    size_t length
    size_t capacity


cdef int _grow(Buffer *buf, size_t need) except -1:
    cdef size_t capacity = buf.capacity * 2 if buf.capacity else 65536  # a batch of lines, mostly
    cdef char *grown
    while capacity < need:
        capacity *= 2
    grown = <char *>PyMem_Realloc(buf.data, capacity)
    if grown is NULL:
        raise MemoryError()
    buf.data = grown
    buf.capacity = capacity
    return 0


cdef inline int _put(Buffer *buf, const char *at, size_t n) except -1:
    if buf.length + n > buf.capacity:
        _grow(buf, buf.length + n)
    memcpy(buf.data + buf.length, at, n)
    buf.length += n
    return 0


cdef inline int _put_literal(Buffer *buf, const char *text) except -1:
    return _put(buf, text, strlen(text))  # of a literal: a constant once inlined


cdef int _put_bytes(Buffer *buf, bytes text) except -1:
    return _put(buf, PyBytes_AS_STRING(text), <size_t>PyBytes_GET_SIZE(text))


cdef int _put_digits(Buffer *buf, long long n) except -1:
    """`n` in decimal, as `str(n)`."""
    cdef char digits[24]
    cdef int i = 24
    cdef bint negative = n < 0
    cdef unsigned long long u = <unsigned long long>(-(n + 1)) + 1 if negative else <unsigned long long>n
    while True:
        i -= 1
        digits[i] = c'0' + <char>(u % 10)
        u //= 10
        if u == 0:
            break
    if negative:
        i -= 1
        digits[i] = c'-'
    return _put(buf, digits + i, 24 - i)


cdef int _put_millis(Buffer *buf, long long us) except -1:
    """Microseconds as milliseconds with three decimals (`12.346`); never negative."""
    cdef char three[3]
    cdef int rest
    if us < 0:
        us = 0
    _put_digits(buf, us // 1000)
    rest = <int>(us % 1000)
    three[0] = c'0' + <char>(rest // 100)
    three[1] = c'0' + <char>(rest // 10 % 10)
    three[2] = c'0' + <char>(rest % 10)
    _put_literal(buf, ".")
    return _put(buf, three, 3)


# By byte: 1 for printable ASCII other than a quote or a backslash, what JSON writes as it is. One load per
# byte where the four comparisons were about a tenth of a line's cost.
cdef unsigned char _PLAIN[256]
cdef int _byte
for _byte in range(256):
    _PLAIN[_byte] = 32 <= _byte <= 126 and _byte != 34 and _byte != 92


cdef inline bint _plain(const char *at, Py_ssize_t n) noexcept:
    """Printable ASCII without quotes or backslashes: what JSON writes as it is."""
    cdef Py_ssize_t i
    for i in range(n):
        if not _PLAIN[<unsigned char>at[i]]:
            return False
    return True


cdef int _put_raw(Buffer *buf, const char *at, Py_ssize_t n) except -1:
    """Bytes from the wire inside a JSON string (no quotes), read as latin-1 (as access_line._escaped)."""
    if _plain(at, n):
        return _put(buf, at, <size_t>n)
    return _put_bytes(buf, json.dumps(PyBytes_FromStringAndSize(at, n).decode("latin-1"))[1:-1].encode())


cdef int _put_quoted_raw(Buffer *buf, bytes value) except -1:
    """Bytes from the wire as a JSON string, read as latin-1 (`json.dumps(value.decode("latin-1"))`)."""
    _put(buf, "\"", 1)
    _put_raw(buf, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
    return _put(buf, "\"", 1)


cdef int _put_json_text(Buffer *buf, object value) except -1:
    """A str (or None) as JSON (`json.dumps(value)`)."""
    cdef const char *at
    cdef Py_ssize_t n
    if value is None:
        return _put_literal(buf, "null")
    if type(value) is str and PyUnicode_IS_COMPACT_ASCII(value):
        at = <const char *>PyUnicode_DATA(value)
        n = PyUnicode_GET_LENGTH(value)
        if _plain(at, n):
            _put(buf, "\"", 1)
            _put(buf, at, <size_t>n)
            return _put(buf, "\"", 1)
    return _put_bytes(buf, json.dumps(value).encode())


# Buffers kept for the next batches (`Formatter.spare`), and the largest kept: a batch is at most
# access_line.MAX_BATCH lines, so one buffer of an app's lines grows once and is then reused, instead of a
# new buffer allocated and grown for each app of each batch.
cdef enum:
    SPARE_BUFFERS = 8
    SPARE_CAPACITY_MAX = 1 << 20


cdef class _Lines:
    """One app's lines of a batch."""

    cdef Buffer buf

    def __dealloc__(self):
        PyMem_Free(self.buf.data)

    cdef bytes take(self):
        """The lines as one bytes object; the buffer is then empty (its memory kept)."""
        cdef bytes lines = PyBytes_FromStringAndSize(self.buf.data, <Py_ssize_t>self.buf.length)
        self.buf.length = 0
        return lines


cdef class Formatter:
    """Formats batches of `access_line.Entry` tuples (`query`: `[access_log] query`, add the query)."""

    cdef bint query
    cdef list spare  # emptied `_Lines` for the next batches, at most SPARE_BUFFERS
    cdef long long second  # the second `stamp` is for
    cdef char stamp[40]  # `{"time":"2026-12-06T18:59:01.`
    cdef size_t stamp_length

    def __init__(self, bint query):
        self.query = query
        self.spare = []
        self.second = -1
        self.stamp_length = 0

    cdef void _new_second(self, long long second) noexcept:
        cdef time_t t = <time_t>second
        cdef tm parts
        cdef size_t n
        self.second = second
        memcpy(self.stamp, b'{"time":"', 9)
        gmtime_r(&t, &parts)
        n = strftime(self.stamp + 9, sizeof(self.stamp) - 9, "%Y-%m-%dT%H:%M:%S.", &parts)
        self.stamp_length = 9 + n

    def format(self, list entries, double wall):
        """The entries as JSON lines by app (`wall` turns native.now() stamps into UNIX time): app -> its
        lines as one bytes object, each line ending with a newline."""
        cdef dict by_app = {}
        cdef _Lines lines
        cdef Buffer *buf
        cdef tuple entry
        cdef double started, ended, sent_at, when
        cdef long long second, us
        cdef int millis
        cdef bytes url
        cdef const char *target
        cdef const char *mark
        cdef Py_ssize_t target_length, path_length
        cdef char three[3]
        for item in entries:
            entry = <tuple?>item
            if len(entry) != ENTRY_LENGTH:
                raise ValueError(f"an access entry has {ENTRY_LENGTH} fields, not {len(entry)}")
            app = entry[APP]
            lines = by_app.get(app)
            if lines is None:
                lines = by_app[app] = self.spare.pop() if self.spare else _Lines()
            buf = &lines.buf
            started = entry[STARTED]
            ended = entry[ENDED]
            sent_at = entry[SENT_AT]
            when = started + wall
            second = <long long>when
            if second != self.second:
                self._new_second(second)
            millis = <int>((when - <double>self.second) * 1000)
            _put(buf, self.stamp, self.stamp_length)
            three[0] = c'0' + <char>(millis // 100)
            three[1] = c'0' + <char>(millis // 10 % 10)
            three[2] = c'0' + <char>(millis % 10)
            _put(buf, three, 3)
            _put_literal(buf, 'Z","app":')
            _put_json_text(buf, app)
            _put_literal(buf, ',"host":')
            _put_json_text(buf, entry[HOST])
            _put_literal(buf, ',"method":')
            _put_quoted_raw(buf, entry[METHOD])
            url = entry[URL]
            target = PyBytes_AS_STRING(url)
            target_length = PyBytes_GET_SIZE(url)
            mark = <const char *>memchr(target, b'?', <size_t>target_length)
            path_length = mark - target if mark is not NULL else target_length
            _put_literal(buf, ',"path":"')
            _put_raw(buf, target, path_length)
            if self.query and mark is not NULL:
                _put_literal(buf, '","query":"')
                _put_raw(buf, mark + 1, target_length - path_length - 1)
            _put_literal(buf, '","status":')
            _put_digits(buf, entry[STATUS])
            _put_literal(buf, ',"bytes_in":')
            _put_digits(buf, entry[BYTES_IN])
            _put_literal(buf, ',"bytes_out":')
            _put_digits(buf, entry[BYTES_OUT])
            _put_literal(buf, ',"duration_ms":')
            us = <long long>((ended - started) * 1e6 + 0.5)
            _put_millis(buf, us)
            if sent_at:
                _put_literal(buf, ',"upstream_ms":')
                _put_millis(buf, <long long>((ended - sent_at) * 1e6 + 0.5))
            _put_literal(buf, ',"request_id":')
            request_id = entry[REQUEST_ID]
            if request_id is None:
                _put_literal(buf, "null")
            else:
                _put_quoted_raw(buf, request_id)
            _put_literal(buf, ',"instance":')
            _put_json_text(buf, entry[INSTANCE])
            _put_literal(buf, ',"client":')
            _put_quoted_raw(buf, entry[CLIENT])
            if entry[TLS]:
                _put_literal(buf, ',"tls":true')
            else:
                _put_literal(buf, ',"tls":false')
            if entry[WEBSOCKET]:
                _put_literal(buf, ',"websocket":true}\n')
            else:
                _put_literal(buf, "}\n")
        batch = {}
        for app, lines in by_app.items():
            batch[app] = lines.take()
            if len(self.spare) < SPARE_BUFFERS and lines.buf.capacity <= SPARE_CAPACITY_MAX:
                self.spare.append(lines)
        return batch
