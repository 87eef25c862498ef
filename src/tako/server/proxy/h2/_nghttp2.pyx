# cython: language_level=3
# distutils: libraries = nghttp2
"""The HTTP/2 framing layer: the system's libnghttp2 (server side), driven from Python.

libnghttp2 does the framing, HPACK, stream states, flow-control accounting and the protocol's checks
(pseudo-headers, connection-specific headers, content-length against DATA), and bounds the known
floods: rapid reset (a token bucket on RST_STREAM), CONTINUATION floods (at most 8 per header block),
and SETTINGS and PING floods (at most 1000 acknowledgements queued unsent). This module only moves
bytes and events between it and `H2Connection` (connection.py): a request's header block arrives as its
decoded fields (method, path, authority and a list of the others, collected while HPACK decodes it), body
bytes per DATA frame, and each stream's response body is queued here until the client's windows let
libnghttp2 take it.

Chosen by measurement over the pure-Python `h2` package: that one spent ~100 µs of CPU per stream (a
GET and a 13-byte answer) before any proxying, three times the proxy's whole HTTP/1.1 request (see
docs/proxy.md, "HTTP/2").
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy


cdef extern from "nghttp2/nghttp2.h":
    ctypedef struct nghttp2_session:
        pass
    ctypedef struct nghttp2_session_callbacks:
        pass
    ctypedef struct nghttp2_option:
        pass
    ctypedef struct nghttp2_frame_hd:
        size_t length
        int32_t stream_id
        uint8_t type
        uint8_t flags
    ctypedef struct nghttp2_headers:
        nghttp2_frame_hd hd
        int cat
    ctypedef union nghttp2_frame:
        nghttp2_frame_hd hd
        nghttp2_headers headers
    ctypedef struct nghttp2_nv:
        uint8_t *name
        uint8_t *value
        size_t namelen
        size_t valuelen
        uint8_t flags
    ctypedef union nghttp2_data_source:
        int fd
        void *ptr
    ctypedef ssize_t (*nghttp2_data_source_read_callback)(
        nghttp2_session *, int32_t, uint8_t *, size_t, uint32_t *, nghttp2_data_source *, void *
    ) noexcept
    ctypedef struct nghttp2_data_provider:
        nghttp2_data_source source
        nghttp2_data_source_read_callback read_callback
    ctypedef struct nghttp2_settings_entry:
        int32_t settings_id
        uint32_t value

    ctypedef int (*begin_headers_cb)(nghttp2_session *, const nghttp2_frame *, void *) noexcept
    ctypedef int (*header_cb)(
        nghttp2_session *, const nghttp2_frame *, const uint8_t *, size_t, const uint8_t *, size_t,
        uint8_t, void *
    ) noexcept
    ctypedef int (*frame_recv_cb)(nghttp2_session *, const nghttp2_frame *, void *) noexcept
    ctypedef int (*data_chunk_cb)(
        nghttp2_session *, uint8_t, int32_t, const uint8_t *, size_t, void *
    ) noexcept
    ctypedef int (*stream_close_cb)(nghttp2_session *, int32_t, uint32_t, void *) noexcept

    int nghttp2_session_callbacks_new(nghttp2_session_callbacks **)
    void nghttp2_session_callbacks_del(nghttp2_session_callbacks *)
    void nghttp2_session_callbacks_set_on_begin_headers_callback(nghttp2_session_callbacks *, begin_headers_cb)
    void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks *, header_cb)
    void nghttp2_session_callbacks_set_on_frame_recv_callback(nghttp2_session_callbacks *, frame_recv_cb)
    void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(nghttp2_session_callbacks *, data_chunk_cb)
    void nghttp2_session_callbacks_set_on_stream_close_callback(nghttp2_session_callbacks *, stream_close_cb)

    int nghttp2_option_new(nghttp2_option **)
    void nghttp2_option_del(nghttp2_option *)
    void nghttp2_option_set_no_auto_window_update(nghttp2_option *, int)
    void nghttp2_option_set_no_closed_streams(nghttp2_option *, int)
    void nghttp2_option_set_stream_reset_rate_limit(nghttp2_option *, uint64_t, uint64_t)
    void nghttp2_option_set_max_continuations(nghttp2_option *, size_t)
    void nghttp2_option_set_max_outbound_ack(nghttp2_option *, size_t)

    int nghttp2_session_server_new2(nghttp2_session **, const nghttp2_session_callbacks *, void *,
                                    const nghttp2_option *)
    void nghttp2_session_del(nghttp2_session *)
    ssize_t nghttp2_session_mem_recv(nghttp2_session *, const uint8_t *, size_t)
    ssize_t nghttp2_session_mem_send(nghttp2_session *, const uint8_t **)
    int nghttp2_session_want_read(nghttp2_session *)
    int nghttp2_session_want_write(nghttp2_session *)
    int nghttp2_session_consume(nghttp2_session *, int32_t, size_t)
    int nghttp2_session_consume_connection(nghttp2_session *, size_t)
    int nghttp2_session_resume_data(nghttp2_session *, int32_t)
    int nghttp2_session_set_local_window_size(nghttp2_session *, uint8_t, int32_t, int32_t)
    int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session *)
    int nghttp2_submit_settings(nghttp2_session *, uint8_t, const nghttp2_settings_entry *, size_t)
    int nghttp2_submit_response(nghttp2_session *, int32_t, const nghttp2_nv *, size_t,
                                const nghttp2_data_provider *)
    int32_t nghttp2_submit_headers(nghttp2_session *, uint8_t, int32_t, const void *, const nghttp2_nv *,
                                   size_t, void *)
    int nghttp2_submit_rst_stream(nghttp2_session *, uint8_t, int32_t, uint32_t)
    int nghttp2_submit_goaway(nghttp2_session *, uint8_t, int32_t, uint32_t, const uint8_t *, size_t)
    int nghttp2_session_terminate_session(nghttp2_session *, uint32_t)
    const char *nghttp2_strerror(int)

    enum:
        NGHTTP2_ERR_DEFERRED
        NGHTTP2_ERR_CALLBACK_FAILURE
        NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        NGHTTP2_DATA_FLAG_EOF
        NGHTTP2_FLAG_NONE
        NGHTTP2_FLAG_END_STREAM
        NGHTTP2_DATA
        NGHTTP2_HEADERS
        NGHTTP2_HCAT_REQUEST
        NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        NGHTTP2_SETTINGS_ENABLE_PUSH
        NGHTTP2_NV_FLAG_NONE
        NGHTTP2_NV_FLAG_NO_INDEX
        NGHTTP2_NO_ERROR
        NGHTTP2_INTERNAL_ERROR


VERSION = "1.x (system libnghttp2)"
cdef enum:
    OUT_CHUNK = 65536  # bytes taken from libnghttp2 per write to the socket: about four TLS records
    # A response head of up to this many lines, ending this far into its bytes, is submitted from stack
    # space (no allocation per response).
    _STACK_FIELDS = 48
    _STACK_HEAD = 4096
    _SEND_STACK = 16384  # what send() gathers on the stack before it allocates
    _KEEP_BYTES = 8192  # of the cookie buffer kept between header blocks


cdef class _Out:
    """A stream's response body not yet taken by libnghttp2 (the client's windows hold it)."""

    cdef list chunks
    cdef Py_ssize_t offset  # into chunks[0]
    cdef public Py_ssize_t size
    cdef public bint eof
    cdef bint deferred  # libnghttp2 was told there is nothing now: resume_data once there is

    def __cinit__(self):
        self.chunks = []
        self.offset = 0
        self.size = 0
        self.eof = False
        self.deferred = False


cdef ssize_t _read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                        uint32_t *data_flags, nghttp2_data_source *source, void *user_data) noexcept:
    cdef _Out out = <_Out>source.ptr
    cdef size_t copied = 0
    cdef Py_ssize_t n
    cdef bytes chunk
    while copied < length and out.chunks:
        chunk = out.chunks[0]
        n = PyBytes_GET_SIZE(chunk) - out.offset
        if <size_t>n > length - copied:
            n = length - copied
        memcpy(buf + copied, PyBytes_AS_STRING(chunk) + out.offset, n)
        copied += n
        out.offset += n
        if out.offset == PyBytes_GET_SIZE(chunk):
            del out.chunks[0]
            out.offset = 0
    out.size -= copied
    if not out.chunks and out.eof:
        data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
        return copied
    if copied == 0:
        out.deferred = True
        return NGHTTP2_ERR_DEFERRED
    return copied


cdef struct _Buf:
    char *data
    Py_ssize_t size
    Py_ssize_t capacity


cdef inline bint _add(_Buf *buf, const void *data, size_t n) noexcept:
    """Append to a session's C buffer (kept, and grown, across header blocks); false without memory."""
    cdef Py_ssize_t need = buf.size + <Py_ssize_t>n
    cdef char *grown
    if need > buf.capacity:
        grown = <char *>PyMem_Realloc(buf.data, need * 2)
        if grown is NULL:
            return False
        buf.data = grown
        buf.capacity = need * 2
    memcpy(buf.data + buf.size, data, n)
    buf.size = need
    return True


cdef inline void _trim(_Buf *buf) noexcept:
    """Free a buffer a large header block grew: a connection keeps at most _KEEP_BYTES of each between
    blocks (a client sending large blocks on many connections would otherwise hold ~2 x max_header_bytes
    of each per connection)."""
    if buf.capacity > _KEEP_BYTES:
        PyMem_Free(buf.data)
        buf.data = NULL
        buf.capacity = 0
        buf.size = 0


# The methods and field names most requests carry, the usual first: handed over as these same objects
# (`_common`) rather than a new bytes object each, which the proxy's lookup of the field's kind then hashed
# again. Under callgrind (h2load, 10 x 10 streams) PyBytes_FromStringAndSize alone went from 1,194 to 1,077
# instructions per request; with those objects' frees and hashes, a few hundred in all.
cdef tuple _COMMON = (
    b"GET", b"POST", b"HEAD", b"accept", b"user-agent", b"accept-encoding", b"accept-language",
    b"referer", b"origin", b"priority", b"content-type", b"content-length", b"cache-control",
    b"authorization", b"sec-fetch-dest", b"sec-fetch-mode", b"sec-fetch-site", b"sec-fetch-user",
)
cdef enum:
    _COMMON_COUNT = 18
cdef const char *_common_text[_COMMON_COUNT]
cdef Py_ssize_t _common_size[_COMMON_COUNT]
cdef Py_ssize_t _at
assert len(_COMMON) == _COMMON_COUNT
for _at in range(_COMMON_COUNT):
    _common_text[_at] = PyBytes_AS_STRING(_COMMON[_at])
    _common_size[_at] = PyBytes_GET_SIZE(_COMMON[_at])


cdef inline bytes _common(const uint8_t *data, size_t n):
    """data[:n] as a bytes object: the one in _COMMON equal to it, or a new one."""
    cdef Py_ssize_t i
    for i in range(_COMMON_COUNT):
        if _common_size[i] == <Py_ssize_t>n and memcmp(_common_text[i], data, n) == 0:
            return <bytes>_COMMON[i]
    return PyBytes_FromStringAndSize(<const char *>data, n)


cdef int _on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) noexcept:
    cdef Session self = <Session>user_data
    self.cookies.size = 0
    self.has_cookies = False
    self.method = self.path = b""
    self.authority = None
    self.is_head = False
    self.request_fields = []
    self.block_bytes = 0
    self.block_count = 0
    self.block_over = False
    return 0


cdef int _on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                    size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                    void *user_data) noexcept:
    """One field of a request's header block, kept as the request's method, path, authority or one of its
    fields (name and value, in `request_fields`); cookie fields are joined in a C buffer of the session.
    libnghttp2 has validated it (RFC 9113 8.2, 8.3)."""
    cdef Session self = <Session>user_data
    if self.block_over or frame.headers.cat != NGHTTP2_HCAT_REQUEST:
        return 0  # over the limits, or trailers (dropped)
    # Bounded here, while HPACK decodes: a block of one-byte references to a large table entry would
    # otherwise grow far beyond what the client sent.
    self.block_bytes += namelen + valuelen + 4
    self.block_count += 1
    if self.block_bytes > self.max_header_bytes or self.block_count > self.max_headers:
        self.block_over = True
        self.request_fields = None
        return 0
    try:
        if name[0] == 58:  # ":" (libnghttp2 takes each pseudo-header once, before the fields)
            if namelen == 7 and memcmp(name, b":method", 7) == 0:
                self.method = _common(value, valuelen)
                self.is_head = valuelen == 4 and memcmp(value, b"HEAD", 4) == 0
            elif namelen == 5 and memcmp(name, b":path", 5) == 0:
                self.path = PyBytes_FromStringAndSize(<const char *>value, valuelen)
            elif namelen == 10 and memcmp(name, b":authority", 10) == 0:
                self.authority = PyBytes_FromStringAndSize(<const char *>value, valuelen)
            return 0
        if namelen == 6 and memcmp(name, b"cookie", 6) == 0:
            if self.has_cookies and not _add(&self.cookies, b"; ", 2):
                return NGHTTP2_ERR_CALLBACK_FAILURE
            self.has_cookies = True
            return 0 if _add(&self.cookies, value, valuelen) else NGHTTP2_ERR_CALLBACK_FAILURE
        if namelen == 4 and memcmp(name, b"host", 4) == 0 and self.authority is not None:
            return 0  # :authority wins, and is forwarded as Host
        self.request_fields.append(_common(name, namelen))
        self.request_fields.append(PyBytes_FromStringAndSize(<const char *>value, valuelen))
    except BaseException as exc:
        self.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) noexcept:
    cdef Session self = <Session>user_data
    cdef bint end = (frame.hd.flags & NGHTTP2_FLAG_END_STREAM) != 0
    try:
        if frame.hd.type == NGHTTP2_HEADERS:
            if frame.headers.cat == NGHTTP2_HCAT_REQUEST:
                if self.block_over:
                    self.on_request(frame.hd.stream_id, None, None, None, None, False, end)
                else:
                    fields = self.request_fields
                    if self.has_cookies:  # RFC 9113, 8.2.3: one field for the HTTP/1.1 request
                        fields.append(b"Cookie")
                        fields.append(PyBytes_FromStringAndSize(self.cookies.data, self.cookies.size))
                    self.on_request(
                        frame.hd.stream_id, self.method, self.path, self.authority, fields, self.is_head, end
                    )
                self.request_fields = None
                self.authority = None
                _trim(&self.cookies)
            elif end:
                self.on_end(frame.hd.stream_id)  # trailers: dropped, the body ends
        elif frame.hd.type == NGHTTP2_DATA and end:
            self.on_end(frame.hd.stream_id)
    except BaseException as exc:
        self.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_data(nghttp2_session *session, uint8_t flags, int32_t stream_id, const uint8_t *data,
                  size_t length, void *user_data) noexcept:
    cdef Session self = <Session>user_data
    try:
        self.on_data(stream_id, PyBytes_FromStringAndSize(<char *>data, length))
    except BaseException as exc:
        self.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                   void *user_data) noexcept:
    cdef Session self = <Session>user_data
    self.outs.pop(stream_id, None)
    try:
        self.on_close(stream_id, error_code)
    except BaseException as exc:
        self.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef inline Py_ssize_t _line_end(const char *data, Py_ssize_t at, Py_ssize_t end) noexcept:
    """Where the line starting at `at` ends (its CR), or `end`."""
    cdef const char *cr
    while at < end - 1:
        cr = <const char *>memchr(data + at, 13, end - 1 - at)  # libc's: word by word, not byte by byte
        if cr is NULL:
            return end
        at = cr - data
        if data[at + 1] == 10:
            return at
        at += 1
    return end


cdef inline const char *_blank_line(const char *data, Py_ssize_t size) noexcept:
    """Where the first CRLFCRLF in data[:size] starts, or NULL. libc's memchr for each CR (glibc's memmem
    was ~850 instructions per response head)."""
    cdef const char *at = data
    cdef const char *end = data + size
    while end - at >= 4:
        at = <const char *>memchr(at, 13, end - at - 3)
        if at is NULL:
            return NULL
        if at[1] == 10 and at[2] == 13 and at[3] == 10:
            return at
        at += 1
    return NULL


cdef inline char _lower(char c) noexcept:
    return c + 32 if 65 <= c <= 90 else c


cdef inline bint _connection_specific(const char *name, Py_ssize_t n) noexcept:
    if n == 10:
        return memcmp(name, b"connection", 10) == 0 or memcmp(name, b"keep-alive", 10) == 0
    if n == 17:
        return memcmp(name, b"transfer-encoding", 17) == 0
    if n == 16:
        return memcmp(name, b"proxy-connection", 16) == 0
    if n == 7:
        return memcmp(name, b"upgrade", 7) == 0
    return False


cdef inline Py_ssize_t _length(const char *value, Py_ssize_t n) noexcept:
    """A Content-Length value: its number, or -2 when it is not 1 to 18 digits."""
    cdef Py_ssize_t i, number = 0
    if n < 1 or n > 18:
        return -2
    for i in range(n):
        if not 48 <= value[i] <= 57:
            return -2
        number = number * 10 + (value[i] - 48)
    return number


cdef inline uint8_t _index_flag(const char *name, Py_ssize_t n) noexcept:
    """Whether HPACK may keep the field in the connection's table. Not `date` nor `x-request-id`: a new
    value every second (every response), each would be added to the 4 KiB table and evict the fields that
    repeat (server, content-type), and libnghttp2 compares a field's value with every kept one of its
    name before sending it."""
    if (n == 4 and memcmp(name, b"date", 4) == 0) or (n == 12 and memcmp(name, b"x-request-id", 12) == 0):
        return NGHTTP2_NV_FLAG_NO_INDEX
    return NGHTTP2_NV_FLAG_NONE


cdef inline void _field(nghttp2_nv *nv, const char *name, size_t namelen, const char *value, size_t valuelen,
                        uint8_t flags) noexcept:
    nv.name = <uint8_t *>name
    nv.namelen = namelen
    nv.value = <uint8_t *>value
    nv.valuelen = valuelen
    nv.flags = flags


cdef Py_ssize_t _fields(const char *data, Py_ssize_t start, Py_ssize_t end, nghttp2_nv *nva,
                        char *names, Py_ssize_t *length) noexcept:
    """The fields of the head in data[start:end] into `nva` (names lower-cased into `names`, which is
    indexed like `data`; values point into `data`), skipping the status line and connection-specific
    fields. Returns how many. `length`: the body's Content-Length, -1 without one, -2 where the body is
    framed otherwise (Transfer-Encoding, or a Content-Length that is not one plain number)."""
    cdef Py_ssize_t i, colon, vstart, vend, count = 0
    cdef Py_ssize_t line = _line_end(data, start, end) + 2  # past the status line
    cdef const char *found
    while line < end:
        i = _line_end(data, line, end)
        found = <const char *>memchr(data + line, 58, i - line)  # ":"
        colon = i if found is NULL else found - data
        if line < colon < i:
            for vstart in range(line, colon):
                names[vstart] = _lower(data[vstart])
            vstart = colon + 1
            while vstart < i and (data[vstart] == 32 or data[vstart] == 9):
                vstart += 1
            vend = i
            while vend > vstart and (data[vend - 1] == 32 or data[vend - 1] == 9):
                vend -= 1
            if colon - line == 14 and memcmp(names + line, b"content-length", 14) == 0:
                length[0] = _length(data + vstart, vend - vstart) if length[0] == -1 else -2
            elif colon - line == 17 and memcmp(names + line, b"transfer-encoding", 17) == 0:
                length[0] = -2
            if not _connection_specific(names + line, colon - line):
                nva[count].name = <uint8_t *>(names + line)
                nva[count].namelen = colon - line
                nva[count].value = <uint8_t *>(data + vstart)
                nva[count].valuelen = vend - vstart
                nva[count].flags = _index_flag(names + line, colon - line)
                count += 1
        line = i + 2
    return count


cdef class Session:
    """One server-side HTTP/2 session. `handler` gets on_request(stream_id, method, path, authority or
    None, fields (name, value, name, ...), is HEAD, end_stream), with method None when the block is over
    the limits; on_data(stream_id, bytes), on_end(stream_id) and on_close(stream_id, error_code)."""

    cdef nghttp2_session *session
    cdef object handler
    cdef dict outs
    # The request header block being decoded: its pseudo-headers, its other fields as they will be
    # forwarded (name, value, ...) and the cookie fields' values joined (a C buffer kept for the next blocks).
    cdef bytes method, path, authority
    cdef bint is_head
    cdef list request_fields
    cdef _Buf cookies
    cdef bint has_cookies
    cdef Py_ssize_t block_bytes
    cdef Py_ssize_t block_count
    cdef bint block_over
    # The handler's methods, looked up once.
    cdef object on_request, on_data, on_end, on_close
    cdef Py_ssize_t max_header_bytes
    cdef Py_ssize_t max_headers
    cdef public object error  # an exception raised by the handler inside a callback

    def __cinit__(self, handler, *, int max_streams, int stream_window, int connection_window,
                  Py_ssize_t max_header_bytes, Py_ssize_t max_headers, int reset_burst, int reset_rate):
        cdef nghttp2_session_callbacks *callbacks
        cdef nghttp2_option *option
        cdef nghttp2_settings_entry settings[4]
        self.handler = handler
        self.on_request = handler.on_request
        self.on_data = handler.on_data
        self.on_end = handler.on_end
        self.on_close = handler.on_close
        self.outs = {}
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.error = None
        if nghttp2_session_callbacks_new(&callbacks) != 0:
            raise MemoryError()
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, _on_begin_headers)
        nghttp2_session_callbacks_set_on_header_callback(callbacks, _on_header)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, _on_frame_recv)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, _on_data)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, _on_close)
        nghttp2_option_new(&option)
        # Request bodies are acknowledged (WINDOW_UPDATE) only once the proxy took them: a request whose
        # instance reads slowly holds the client at its window instead of filling memory here.
        nghttp2_option_set_no_auto_window_update(option, 1)
        nghttp2_option_set_no_closed_streams(option, 1)
        nghttp2_option_set_stream_reset_rate_limit(option, reset_burst, reset_rate)
        rv = nghttp2_session_server_new2(&self.session, callbacks, <void *>self, option)
        nghttp2_session_callbacks_del(callbacks)
        nghttp2_option_del(option)
        if rv != 0:
            raise MemoryError()
        settings[0].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        settings[0].value = max_streams
        settings[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        settings[1].value = stream_window
        settings[2].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        settings[2].value = max_header_bytes
        settings[3].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
        settings[3].value = 0
        nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, settings, 4)
        nghttp2_session_set_local_window_size(self.session, NGHTTP2_FLAG_NONE, 0, connection_window)

    def __dealloc__(self):
        if self.session is not NULL:
            nghttp2_session_del(self.session)
            self.session = NULL
        PyMem_Free(self.cookies.data)

    def receive(self, bytes data):
        """Process bytes from the client; a negative libnghttp2 error code if the session is over."""
        cdef ssize_t rv = nghttp2_session_mem_recv(self.session, <const uint8_t *>PyBytes_AS_STRING(data),
                                                   PyBytes_GET_SIZE(data))
        return rv if rv < 0 else 0

    def send(self):
        """The next bytes to write to the client (up to about OUT_CHUNK), b"" when there are none. One
        bytes object for all the frames libnghttp2 has ready (often a HEADERS and a DATA frame for each of
        several streams), not one per frame and a join."""
        cdef const uint8_t *data
        cdef ssize_t n
        cdef char stack[_SEND_STACK]
        cdef char *grown
        cdef _Buf out
        out.data = stack
        out.size = 0
        out.capacity = _SEND_STACK
        try:
            while out.size < OUT_CHUNK:
                n = nghttp2_session_mem_send(self.session, &data)
                if n <= 0:
                    break
                if out.size + n > out.capacity:
                    # Off the stack: `data` is only valid until the next mem_send, so it is kept here.
                    grown = <char *>PyMem_Malloc(out.size + n + OUT_CHUNK)
                    if grown is NULL:
                        raise MemoryError()
                    memcpy(grown, out.data, out.size)
                    if out.data is not stack:
                        PyMem_Free(out.data)
                    out.data = grown
                    out.capacity = out.size + n + OUT_CHUNK
                memcpy(out.data + out.size, data, n)
                out.size += n
            return PyBytes_FromStringAndSize(out.data, out.size) if out.size else b""
        finally:
            if out.data is not stack:
                PyMem_Free(out.data)

    def want_io(self):
        """Whether the session still reads or writes anything (false once a GOAWAY ended it)."""
        return nghttp2_session_want_read(self.session) or nghttp2_session_want_write(self.session)

    def respond(self, int32_t stream_id, list headers, bint final, bint has_body):
        """Submit a response head (`final` false: an interim 1xx one); `has_body`: body() calls follow."""
        cdef Py_ssize_t count = len(headers) // 2
        cdef nghttp2_nv *nva = <nghttp2_nv *>PyMem_Malloc(count * sizeof(nghttp2_nv) + 1)
        cdef int rv
        cdef bytes name, value
        if nva is NULL:
            raise MemoryError()
        try:
            for i in range(count):
                name = headers[2 * i]
                value = headers[2 * i + 1]
                nva[i].name = <uint8_t *>PyBytes_AS_STRING(name)
                nva[i].namelen = PyBytes_GET_SIZE(name)
                nva[i].value = <uint8_t *>PyBytes_AS_STRING(value)
                nva[i].valuelen = PyBytes_GET_SIZE(value)
                nva[i].flags = NGHTTP2_NV_FLAG_NONE
            rv = self._submit(stream_id, nva, count, final, has_body)
        finally:
            PyMem_Free(nva)
        return rv if rv < 0 else 0

    cdef int _submit(self, int32_t stream_id, nghttp2_nv *nva, Py_ssize_t count, bint final,
                     bint has_body) except? -999:
        """Submit a head: interim (not `final`), or final with body() calls to follow (`has_body`) or not."""
        cdef nghttp2_data_provider provider
        cdef _Out out
        cdef int rv
        if not final:
            return nghttp2_submit_headers(self.session, NGHTTP2_FLAG_NONE, stream_id, NULL, nva, count, NULL)
        if not has_body:
            return nghttp2_submit_response(self.session, stream_id, nva, count, NULL)
        out = _Out()
        self.outs[stream_id] = out
        provider.source.ptr = <void *>out
        provider.read_callback = _read_body
        rv = nghttp2_submit_response(self.session, stream_id, nva, count, &provider)
        if rv < 0:
            del self.outs[stream_id]  # the stream is gone already (reset by the client)
        return rv

    def respond_head(self, int32_t stream_id, bytes head, Py_ssize_t start, Py_ssize_t end, bint is_head):
        """Submit the HTTP/1.1 response head in head[start:end] (status line and fields, without the blank
        line) as the stream's HEADERS: names lower-case, connection-specific fields dropped (RFC 9113,
        8.2.2). A 1xx head is sent as an interim response. Returns the status code.

        Parsed here rather than field by field through the HTTP/1.1 parser's callbacks: that was five or
        six Python calls per response."""
        cdef Py_ssize_t length = -1
        return self._respond(stream_id, head, start, end, is_head, False, &length)

    def respond_message(self, int32_t stream_id, bytes data, bint is_head):
        """The common response in one call: a final head complete at the start of `data`, its body framed
        by Content-Length (or absent). Submits the head and queues the body bytes that follow it; returns
        how many body bytes are still to come (0: the response is complete). -1, with nothing submitted,
        where the HTTP/1.1 parser must read it instead: the head is incomplete or interim (1xx), or the
        body is chunked or runs until the connection closes.

        Saves the parser's pass over the response and its three callbacks per stream (callgrind: about a
        tenth of an HTTP/2 request's instructions; docs/proxy.md, "HTTP/2")."""
        cdef const char *raw = PyBytes_AS_STRING(data)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t at = 0, length = -1, body_at
        cdef int status
        cdef const char *blank = _blank_line(raw, size)
        if blank is NULL:
            return -1
        at = blank - raw
        status = self._respond(stream_id, data, 0, at, is_head, True, &length)
        if status == 0:
            return -1
        if is_head or status == 204 or status == 304 or length == 0:
            return 0
        body_at = at + 4
        if size - body_at > length:  # more than the head said: the parser decides what that is
            nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_INTERNAL_ERROR)
            return 0
        if size > body_at:
            self._body(stream_id, data, body_at, size - body_at == length)
        return length - (size - body_at)

    def respond_fields(self, int32_t stream_id, int status, bytes lines not None, bytes request_id not None,
                       bytes length, bint has_body):
        """Submit a final response head from the lines the upstream parser read, with no HTTP/1.1 text
        around them to read again: `lines` as the upstream connection keeps them ("Name: value\r\n" each,
        written by the proxy from the parser's fields, the connection-specific ones already dropped), then
        `x-request-id` and, unless `length` is None, `content-length`. Names are lower-cased, values
        trimmed, as respond_head does. `has_body`: a body of `length` bytes follows through body(). Returns
        how many body bytes are still to come (0: the HEADERS end the stream), or -1, with nothing
        submitted, when `length` is not a plain number (the HTTP/1.1 text path then reads it).

        Saves rebuilding the head as text, joining it with the body and parsing its status line and framing
        here (callgrind: docs/proxy.md, "HTTP/2")."""
        cdef const char *data = PyBytes_AS_STRING(lines)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(lines)
        cdef Py_ssize_t groups = 0, owed = 0, at = 0, pos = 0, colon, end, i, j, n, vstart, vend
        cdef Py_ssize_t count
        cdef nghttp2_nv *nva
        cdef char *names
        cdef char status_text[3]
        cdef nghttp2_nv stack_nva[_STACK_FIELDS]
        cdef char stack_names[_STACK_HEAD]
        if not 200 <= status <= 999 or (has_body and length is None):
            raise ValueError("not a final response with its length")
        if has_body:
            owed = _length(PyBytes_AS_STRING(length), PyBytes_GET_SIZE(length))
            if owed < 0:
                return -1
            has_body = owed > 0
        for i in range(size):
            if data[i] == 10:  # one LF per line
                groups += 1
        count = groups + 3
        # The usual head fits on the stack; a larger one is allocated (its names fit in the lines' size).
        if count <= _STACK_FIELDS and size <= _STACK_HEAD:
            nva = stack_nva
            names = stack_names
        else:
            nva = <nghttp2_nv *>PyMem_Malloc(count * sizeof(nghttp2_nv))
            names = <char *>PyMem_Malloc(size + 1)
            if nva is NULL or names is NULL:
                PyMem_Free(nva)
                PyMem_Free(names)
                raise MemoryError()
        try:
            status_text[0] = 48 + status // 100
            status_text[1] = 48 + status // 10 % 10
            status_text[2] = 48 + status % 10
            _field(nva, b":status", 7, status_text, 3, NGHTTP2_NV_FLAG_NONE)
            count = 1
            while pos < size:
                # A name holds no colon and a value no CR (the parser refused both), so the first colon
                # ends the name and the CR the value.
                colon = pos
                while colon < size and data[colon] != 58:
                    colon += 1
                end = colon
                while end < size and data[end] != 13:
                    end += 1
                if end >= size:
                    break  # not a whole line: never written by the proxy
                n = colon - pos
                for j in range(n):
                    names[at + j] = _lower(data[pos + j])
                vstart = colon + 1
                vend = end
                while vstart < vend and (data[vstart] == 32 or data[vstart] == 9):
                    vstart += 1
                while vend > vstart and (data[vend - 1] == 32 or data[vend - 1] == 9):
                    vend -= 1
                _field(nva + count, names + at, n, data + vstart, vend - vstart, _index_flag(names + at, n))
                at += n
                count += 1
                pos = end + 2
            _field(nva + count, b"x-request-id", 12, PyBytes_AS_STRING(request_id), PyBytes_GET_SIZE(request_id),
                   NGHTTP2_NV_FLAG_NO_INDEX)
            count += 1
            if length is not None:
                _field(nva + count, b"content-length", 14, PyBytes_AS_STRING(length), PyBytes_GET_SIZE(length),
                       NGHTTP2_NV_FLAG_NONE)
                count += 1
            self._submit(stream_id, nva, count, True, has_body)
        finally:
            if nva is not stack_nva:
                PyMem_Free(nva)
                PyMem_Free(names)
        return owed

    cdef int _respond(self, int32_t stream_id, bytes head, Py_ssize_t start, Py_ssize_t end, bint is_head,
                      bint framed_only, Py_ssize_t *length) except -1:
        """respond_head's work. `framed_only`: submit nothing and return 0 unless the head is a final one
        whose body (if it has one) has a Content-Length, in `length`."""
        cdef const char *data = PyBytes_AS_STRING(head)
        cdef Py_ssize_t i, count = 1
        cdef int status
        cdef bint has_body
        cdef nghttp2_nv *nva
        cdef char *names
        cdef char status_text[3]
        cdef const char *newline
        cdef nghttp2_nv stack_nva[_STACK_FIELDS]
        cdef char stack_names[_STACK_HEAD]
        if end - start < 12 or memcmp(data + start, b"HTTP/1.", 7) != 0:
            if framed_only:
                return 0
            raise ValueError("not an HTTP/1.x response head")
        status_text[0] = data[start + 9]
        status_text[1] = data[start + 10]
        status_text[2] = data[start + 11]
        status = (status_text[0] - 48) * 100 + (status_text[1] - 48) * 10 + (status_text[2] - 48)
        if framed_only and not 200 <= status <= 999:
            return 0
        has_body = status >= 200 and not (is_head or status == 204 or status == 304)
        newline = <const char *>memchr(data + start, 10, end - start)
        while newline is not NULL:
            count += 1
            newline = <const char *>memchr(newline + 1, 10, data + end - newline - 1)
        # The usual head fits on the stack; a larger one (or one far into `head`) is allocated.
        if count <= _STACK_FIELDS and end < _STACK_HEAD:
            nva = stack_nva
            names = stack_names
        else:
            nva = <nghttp2_nv *>PyMem_Malloc(count * sizeof(nghttp2_nv))
            names = <char *>PyMem_Malloc(end + 1)  # indexed like `data`
            if nva is NULL or names is NULL:
                PyMem_Free(nva)
                PyMem_Free(names)
                raise MemoryError()
        try:
            nva[0].name = <uint8_t *>b":status"
            nva[0].namelen = 7
            nva[0].value = <uint8_t *>status_text
            nva[0].valuelen = 3
            nva[0].flags = NGHTTP2_NV_FLAG_NONE
            count = 1 + _fields(data, start, end, nva + 1, names, length)
            if framed_only and has_body and length[0] < 0:
                return 0
            if framed_only and length[0] == 0:
                has_body = False  # Content-Length: 0 ends the stream with its HEADERS
            self._submit(stream_id, nva, count, status >= 200, has_body)
        finally:
            if nva is not stack_nva:
                PyMem_Free(nva)
                PyMem_Free(names)
        return status

    def body(self, int32_t stream_id, bytes data, bint end):
        """Queue response body bytes (and/or its end); returns the bytes now queued for the stream."""
        return self._body(stream_id, data, 0, end)

    cdef Py_ssize_t _body(self, int32_t stream_id, bytes data, Py_ssize_t start, bint end) except -1:
        """body() of data[start:], without copying it out of `data` (the whole response, for the first
        piece of a body that came with its head)."""
        cdef _Out out = self.outs.get(stream_id)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data) - start
        if out is None:
            return 0  # the stream is gone (reset by the client)
        if n > 0:
            if start and out.chunks:
                data = data[start:]
                start = 0
            out.chunks.append(data)
            if start:
                out.offset = start  # chunks[0], as the list was empty
            out.size += n
        if end:
            out.eof = True
        if out.deferred:
            out.deferred = False
            nghttp2_session_resume_data(self.session, stream_id)
        return out.size

    def queued(self, int32_t stream_id):
        """Response bytes of the stream not yet taken by libnghttp2."""
        cdef _Out out = self.outs.get(stream_id)
        return 0 if out is None else out.size

    def consume(self, int32_t stream_id, size_t n):
        """The proxy took `n` request body bytes of the stream: the client may send that many more."""
        if stream_id:
            nghttp2_session_consume(self.session, stream_id, n)
        else:
            nghttp2_session_consume_connection(self.session, n)

    def reset(self, int32_t stream_id, uint32_t error_code):
        # The stream's queued body stays until libnghttp2 closes the stream (_on_close): its DATA item may
        # still point at it until then.
        nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, stream_id, error_code)

    def goaway(self, uint32_t error_code):
        """GOAWAY naming the last stream taken: those are finished, later ones the client retries."""
        last = nghttp2_session_get_last_proc_stream_id(self.session)
        nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE, last, error_code, NULL, 0)

    def terminate(self, uint32_t error_code):
        nghttp2_session_terminate_session(self.session, error_code)


def strerror(int code):
    return nghttp2_strerror(code).decode()

