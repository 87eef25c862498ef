# cython: language_level=3
"""The HTTP/1.1 parsers of the proxy, on llhttp (the version httptools bundles, vendored in
src/vendor/llhttp/) with its callbacks in C: `RequestParser` for `ClientConnection` (client.py),
`ResponseParser` for `UpstreamConnection` (upstream.py).

Through httptools, every header line of every message is a Python call from the parser into the
connection, with two new bytes objects, a hash and a dict lookup to classify the name, and four list
appends to forward it; then the head is joined from those pieces. Here the callbacks stay in C: each
header name is classified against a `HeaderTable` (the names the proxy acts on, and a prefix of names it
drops), the lines that are forwarded are written straight into one buffer, and the connection hears one
call per head: a request's `on_head(method, url, version, keep_alive, upgrade, block, specials, count,
size)`, a response's `on_head(status, reason, keep_alive, upgrade, block, specials)`.
- `block`: the forwarded header lines as one bytes object ("Name: value\r\n" each, in their order);
- `specials`: kind, value, kind, value, ... for every header whose kind is neither the table's `pass_kind`
  nor its `drop_kind` (those in its `forwarded` are in `block` as well);
- `count`, `size`: header lines and their bytes as the limits count them (name + value + 4 each).
`on_message_begin`, `on_body` and `on_message_complete` are called as httptools calls them. A protocol that
is a `RequestSink` or `ResponseSink` (wire.py: the compiled connections) is called through its C method
table, any other by its methods (about 200 machine instructions more per call). The errors are
httptools' own (`HttpParserError` and its subclasses, `HttpParserUpgrade` with the offset of the bytes
after the head), so the connections handle both parsers alike. http1_parser.py has the same on httptools,
used where this binding is not (TAKO_PURE_PYTHON=1, no compiler, a stale build);
tests/unit/test_http1_parser.py holds the two to the same results.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.stdint cimport int32_t, uint8_t, uint16_t
from libc.string cimport memcpy

from tako.server.proxy.wire cimport MessageSink, RequestSink, ResponseSink

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserInvalidMethodError,
    HttpParserInvalidStatusError,
    HttpParserInvalidURLError,
    HttpParserUpgrade,
)


cdef extern from "llhttp.h":
    ctypedef struct llhttp_t:
        int32_t error
        void *data
        uint8_t method
        uint8_t http_major
        uint8_t http_minor
        uint8_t upgrade
        uint16_t status_code
    ctypedef int (*llhttp_data_cb)(llhttp_t*, const char *at, size_t length) noexcept
    ctypedef int (*llhttp_cb)(llhttp_t*) noexcept
    ctypedef struct llhttp_settings_t:
        llhttp_cb on_message_begin
        llhttp_data_cb on_url
        llhttp_data_cb on_status
        llhttp_data_cb on_header_field
        llhttp_data_cb on_header_value
        llhttp_cb on_header_field_complete
        llhttp_cb on_header_value_complete
        llhttp_cb on_headers_complete
        llhttp_data_cb on_body
        llhttp_cb on_message_complete
    ctypedef enum llhttp_type_t:
        HTTP_REQUEST
        HTTP_RESPONSE
    ctypedef enum llhttp_errno_t:
        HPE_OK
        HPE_INVALID_METHOD
        HPE_INVALID_URL
        HPE_INVALID_STATUS
        HPE_PAUSED_UPGRADE
        HPE_USER
    void llhttp_settings_init(llhttp_settings_t *settings)
    void llhttp_init(llhttp_t *parser, llhttp_type_t type, const llhttp_settings_t *settings)
    llhttp_errno_t llhttp_execute(llhttp_t *parser, const char *data, size_t len)
    int llhttp_should_keep_alive(const llhttp_t *parser)
    const char *llhttp_get_error_pos(const llhttp_t *parser)
    const char *llhttp_get_error_reason(const llhttp_t *parser)
    void llhttp_resume_after_upgrade(llhttp_t *parser)
    const char *llhttp_method_name(int method)


cdef enum:
    MAX_SPECIAL = 64  # names in the table: the proxy's own list is 15
    KEEP_BUFFER = 16384  # a buffer grown past this by one large head is freed after it


# A growing buffer in C memory: one per parser, kept between heads (nginx keeps 1 KiB per connection too).
cdef struct Buffer:
    char *data
    size_t length
    size_t capacity


cdef int _grow(Buffer *buf, size_t need) noexcept:
    cdef size_t capacity = buf.capacity * 2 if buf.capacity else 1024
    cdef char *grown
    while capacity < need:
        capacity *= 2
    grown = <char *>PyMem_Realloc(buf.data, capacity)
    if grown is NULL:
        return -1
    buf.data = grown
    buf.capacity = capacity
    return 0


cdef inline int _append(Buffer *buf, const char *at, size_t n) noexcept:
    # Inlined: two dozen appends per request and response (each piece of each header line).
    cdef size_t need = buf.length + n
    if need > buf.capacity and _grow(buf, need) < 0:
        return -1
    memcpy(buf.data + buf.length, at, n)
    buf.length = need
    return 0


cdef void _reset(Buffer *buf) noexcept:
    buf.length = 0
    if buf.capacity > KEEP_BUFFER:
        PyMem_Free(buf.data)
        buf.data = NULL
        buf.capacity = 0


cdef list _methods = [None] * 256  # llhttp's method number -> its name as bytes, made once each
cdef dict _versions = {}  # major * 256 + minor -> "major.minor"


cdef object _method_name(int method):
    name = _methods[method]
    if name is None:
        name = _methods[method] = <bytes>llhttp_method_name(method)
    return name


cdef str _HTTP11 = "1.1"


cdef object _version(int major, int minor):
    if major == 1 and minor == 1:
        return _HTTP11  # nearly every request: no dict lookup
    key = major * 256 + minor
    version = _versions.get(key)
    if version is None:
        version = _versions[key] = f"{major}.{minor}"
    return version


def _name_length(entry):
    return len(entry[0])


cdef inline char _lower(char c) noexcept:
    return c + 32 if b'A' <= c <= b'Z' else c


cdef class HeaderTable:
    """How a parser treats header names, made once for every parser: `special`: lower-case name -> kind;
    other names starting with `prefix` (if not empty) are `prefix_kind`; the rest `pass_kind`. Headers of
    `pass_kind` and of the kinds in `forwarded` go into the block, `drop_kind` ones nowhere."""

    # The names (kept alive in `names`), their lengths and kinds.
    cdef list names
    cdef const char *name_data[MAX_SPECIAL]
    cdef Py_ssize_t name_length[MAX_SPECIAL]
    cdef int name_kind[MAX_SPECIAL]
    cdef bint name_forwarded[MAX_SPECIAL]
    cdef int name_count
    # By a name's first character (lower case): bit n set if a name of that length n (< 64) starts with
    # it, so most names not in the table are told apart without comparing them to any (about 110
    # instructions a header before).
    cdef unsigned long long lengths_by_first[256]
    # The names are kept in order of length: those of length n are at [by_length[n], by_length[n + 1]).
    cdef int by_length[65]
    cdef bytes prefix
    cdef int prefix_kind
    cdef int pass_kind
    cdef int drop_kind

    def __init__(
        self,
        dict special,
        bytes prefix,
        int prefix_kind,
        int pass_kind,
        int drop_kind,
        forwarded,
    ):
        if len(special) > MAX_SPECIAL:
            raise ValueError(f"at most {MAX_SPECIAL} special header names")
        cdef int first, n
        self.names = []
        self.name_count = 0
        for first in range(256):
            self.lengths_by_first[first] = 0
        entries = sorted(((bytes(name).lower(), kind) for name, kind in special.items()), key=_name_length)
        for n in range(65):
            self.by_length[n] = len([name for name, _ in entries if len(name) < n])
        for name, kind in entries:
            if not name or len(name) >= 64:
                raise ValueError(f"a special header name has 1 to 63 characters: {name!r}")
            self.lengths_by_first[name[0]] |= (<unsigned long long>1) << len(name)
            self.names.append(name)
            self.name_data[self.name_count] = <const char *>name
            self.name_length[self.name_count] = len(name)
            self.name_kind[self.name_count] = kind
            self.name_forwarded[self.name_count] = kind in forwarded
            self.name_count += 1
        self.prefix = prefix.lower()
        self.prefix_kind = prefix_kind
        self.pass_kind = pass_kind
        self.drop_kind = drop_kind

    cdef int find(self, const char *name, size_t length) noexcept:
        """The index of `name` (any case) in the table, or -1."""
        cdef int i
        cdef size_t j
        cdef const char *entry
        cdef bint same
        if length == 0 or length >= 64:
            return -1  # no name in the table is that long (or empty)
        if not (self.lengths_by_first[<unsigned char>_lower(name[0])] >> length) & 1:
            return -1
        for i in range(self.by_length[length], self.by_length[length + 1]):
            entry = self.name_data[i]
            same = True
            for j in range(length):
                if _lower(name[j]) != entry[j]:
                    same = False
                    break
            if same:
                return i
        return -1

    cdef bint has_prefix(self, const char *name, size_t length) noexcept:
        cdef Py_ssize_t n = len(self.prefix)
        cdef const char *prefix = self.prefix
        cdef Py_ssize_t j
        if n == 0 or <Py_ssize_t>length < n:
            return False  # an empty prefix: no names are told by their prefix
        for j in range(n):
            if _lower(name[j]) != prefix[j]:
                return False
        return True


cdef class _HeadParser:
    """What the request and the response parser share: llhttp, the header callbacks, the buffers."""

    cdef llhttp_t parser
    # The protocol: a sink (a RequestSink or ResponseSink as `response` says, called in C), or else its
    # bound methods.
    cdef MessageSink sink
    cdef object on_message_begin
    cdef object on_head
    cdef object on_body
    cdef object on_message_complete
    cdef object error  # what a callback raised, the context of the HttpParserError that follows
    cdef bint response  # parses responses (else requests)
    # The head as it is gathered: the request target (a response's reason phrase), then the lines to forward.
    cdef Buffer block
    cdef size_t lines_start  # where the lines start (the target's end)
    cdef list specials
    cdef Py_ssize_t count
    cdef Py_ssize_t size
    cdef bint in_head  # header callbacks after the head are a chunked body's trailers: ignored
    cdef size_t field_start  # where the current header line starts in `block`
    cdef size_t value_start  # where its value starts
    cdef int kind  # the current header's kind
    cdef bint forward  # and whether its line goes into the block
    cdef HeaderTable table

    def __cinit__(self):
        self.block.data = NULL
        self.block.length = self.block.capacity = 0

    cdef void _start(self, protocol, HeaderTable table, bint response):
        self.table = table
        self.response = response
        if isinstance(protocol, ResponseSink if response else RequestSink):
            self.sink = protocol
        else:
            self.on_message_begin = protocol.on_message_begin
            self.on_head = protocol.on_head
            self.on_body = protocol.on_body
            self.on_message_complete = protocol.on_message_complete
        self.error = None
        self.specials = []
        self.in_head = False
        if response:
            llhttp_init(&self.parser, HTTP_RESPONSE, &_response_settings)
        else:
            llhttp_init(&self.parser, HTTP_REQUEST, &_request_settings)
        self.parser.data = <void *>self

    def __dealloc__(self):
        PyMem_Free(self.block.data)

    def feed_data(self, data):
        """Parse `data`, calling the protocol; raises HttpParserError, or HttpParserUpgrade(offset of the
        bytes after a head that switches protocols)."""
        cdef Py_buffer view
        cdef llhttp_errno_t err
        cdef Py_ssize_t offset
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            err = llhttp_execute(&self.parser, <const char *>view.buf, <size_t>view.len)
            if err == HPE_PAUSED_UPGRADE and self.parser.upgrade:
                offset = llhttp_get_error_pos(&self.parser) - <const char *>view.buf
                llhttp_resume_after_upgrade(&self.parser)
                raise HttpParserUpgrade(offset)
        finally:
            PyBuffer_Release(&view)
        if err != HPE_OK:
            # The classes httptools raises for the same errors.
            reason = llhttp_get_error_reason(&self.parser)
            message = (<bytes>reason).decode("latin-1") if reason is not NULL else "parse error"
            if self.error is not None:
                exc = HttpParserCallbackError(message)
                exc.__context__ = self.error
                self.error = None
            elif err == HPE_INVALID_METHOD:
                exc = HttpParserInvalidMethodError(message)
            elif err == HPE_INVALID_URL:
                exc = HttpParserInvalidURLError(message)
            elif err == HPE_INVALID_STATUS:
                exc = HttpParserInvalidStatusError(message)
            else:
                exc = HttpParserError(message)
            raise exc


cdef class RequestParser(_HeadParser):
    """An HTTP/1.1 request parser for `protocol` (see the module's docstring), its header names treated as
    `table` says: `on_head(method, url, version, keep_alive, upgrade, block, specials, count, size)`."""

    def __init__(self, protocol, HeaderTable table not None):
        self._start(protocol, table, False)


cdef class ResponseParser(_HeadParser):
    """An HTTP/1.1 response parser for `protocol`, its header names treated as `table` says:
    `on_head(status, reason, keep_alive, upgrade, block, specials)`."""

    def __init__(self, protocol, HeaderTable table not None):
        self._start(protocol, table, True)

cdef int _fail(_HeadParser p, object exc) noexcept:
    p.error = exc
    return -1


# llhttp calls these from llhttp_execute, inside feed_data: the GIL is held. Each returns 0, or -1 with the
# exception kept for feed_data to raise (as the context of an HttpParserError).

cdef int _on_message_begin(llhttp_t *parser) noexcept:
    cdef _HeadParser p = <_HeadParser>parser.data
    p.block.length = 0
    p.lines_start = p.field_start = 0
    p.specials = []
    p.count = 0
    p.size = 0
    p.in_head = True
    try:
        if p.sink is not None:
            p.sink.on_message_begin()
        else:
            p.on_message_begin()
    except BaseException as exc:
        return _fail(p, exc)
    return 0


cdef int _on_url(llhttp_t *parser, const char *at, size_t length) noexcept:
    cdef _HeadParser p = <_HeadParser>parser.data
    if _append(&p.block, at, length) < 0:
        return _fail(p, MemoryError())
    p.lines_start = p.field_start = p.block.length
    return 0


cdef int _on_header_bytes(llhttp_t *parser, const char *at, size_t length) noexcept:
    # Part of a header's name or value (either can arrive in pieces, split across reads): appended at the
    # end of the block, after `field_start` (a name) or `value_start` (a value).
    cdef _HeadParser p = <_HeadParser>parser.data
    if not p.in_head:
        return 0
    if _append(&p.block, at, length) < 0:
        return _fail(p, MemoryError())
    return 0


cdef int _on_header_field_complete(llhttp_t *parser) noexcept:
    cdef _HeadParser p = <_HeadParser>parser.data
    cdef const char *name
    cdef size_t length
    cdef int found
    cdef HeaderTable table = p.table
    if not p.in_head:
        return 0
    name = p.block.data + p.field_start
    length = p.block.length - p.field_start
    found = table.find(name, length)
    if found >= 0:
        p.kind = table.name_kind[found]
        p.forward = table.name_forwarded[found] or p.kind == table.pass_kind
    elif table.has_prefix(name, length):
        p.kind = table.prefix_kind
        p.forward = p.kind == table.pass_kind
    else:
        p.kind = table.pass_kind
        p.forward = True
    p.size += length + 4
    if p.forward and _append(&p.block, ": ", 2) < 0:
        return _fail(p, MemoryError())
    p.value_start = p.block.length
    return 0


cdef int _on_header_value_complete(llhttp_t *parser) noexcept:
    cdef _HeadParser p = <_HeadParser>parser.data
    cdef size_t length
    if not p.in_head:
        return 0
    length = p.block.length - p.value_start
    p.count += 1
    p.size += length
    if p.kind != p.table.pass_kind and p.kind != p.table.drop_kind:
        try:
            p.specials.append(p.kind)
            p.specials.append(PyBytes_FromStringAndSize(p.block.data + p.value_start, length))
        except BaseException as exc:
            return _fail(p, exc)
    if p.forward:
        if _append(&p.block, "\r\n", 2) < 0:
            return _fail(p, MemoryError())
    else:
        p.block.length = p.field_start  # not forwarded: the line is cut off again
    p.field_start = p.block.length
    return 0


cdef int _on_headers_complete(llhttp_t *parser) noexcept:
    cdef _HeadParser p = <_HeadParser>parser.data
    cdef bint keep_alive, upgrade
    p.in_head = False
    try:
        url = PyBytes_FromStringAndSize(p.block.data, p.lines_start)
        block = PyBytes_FromStringAndSize(p.block.data + p.lines_start, p.block.length - p.lines_start)
        _reset(&p.block)
        specials = p.specials
        p.specials = None
        keep_alive = llhttp_should_keep_alive(parser) != 0
        upgrade = parser.upgrade != 0
        if p.sink is not None and p.response:
            (<ResponseSink>p.sink).on_head(parser.status_code, url, keep_alive, upgrade, block, specials)
        elif p.sink is not None:
            (<RequestSink>p.sink).on_head(
                _method_name(parser.method),
                url,
                _version(parser.http_major, parser.http_minor),
                keep_alive,
                upgrade,
                block,
                specials,
                p.count,
                p.size,
            )
        elif p.response:
            p.on_head(parser.status_code, url, keep_alive, upgrade, block, specials)
        else:
            p.on_head(
                _method_name(parser.method),
                url,
                _version(parser.http_major, parser.http_minor),
                keep_alive,
                upgrade,
                block,
                specials,
                p.count,
                p.size,
            )
    except BaseException as exc:
        return _fail(p, exc)
    # As httptools: a message that switches protocols has no body here; llhttp_execute then returns
    # HPE_PAUSED_UPGRADE at the end of the head.
    return 1 if parser.upgrade else 0


cdef int _on_body(llhttp_t *parser, const char *at, size_t length) noexcept:
    cdef _HeadParser p = <_HeadParser>parser.data
    try:
        body = PyBytes_FromStringAndSize(at, length)
        if p.sink is not None:
            p.sink.on_body(body)
        else:
            p.on_body(body)
    except BaseException as exc:
        return _fail(p, exc)
    return 0


cdef int _on_message_complete(llhttp_t *parser) noexcept:
    cdef _HeadParser p = <_HeadParser>parser.data
    try:
        if p.sink is not None:
            p.sink.on_message_complete()
        else:
            p.on_message_complete()
    except BaseException as exc:
        return _fail(p, exc)
    return 0


# llhttp reads its callbacks from these for every parser of a kind (llhttp_init keeps the pointer): the
# same for every connection, so set once here rather than per parser.
cdef llhttp_settings_t _request_settings
cdef llhttp_settings_t _response_settings


cdef void _set_callbacks(llhttp_settings_t *settings, bint response) noexcept:
    llhttp_settings_init(settings)
    settings.on_message_begin = _on_message_begin
    if response:
        settings.on_status = _on_url
    else:
        settings.on_url = _on_url
    settings.on_header_field = _on_header_bytes
    settings.on_header_field_complete = _on_header_field_complete
    settings.on_header_value = _on_header_bytes
    settings.on_header_value_complete = _on_header_value_complete
    settings.on_headers_complete = _on_headers_complete
    settings.on_body = _on_body
    settings.on_message_complete = _on_message_complete


_set_callbacks(&_request_settings, False)
_set_callbacks(&_response_settings, True)
