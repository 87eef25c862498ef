# Cython declarations for upstream.py (see docs/proxy.md, "Compiled hot path"): C types for the attributes and the calls the
# per-request path makes. The .py file stays the source; these only take effect when it is compiled.
cimport cython

from tako.server.proxy cimport native
from tako.server.proxy.client cimport ClientConnection
from tako.server.proxy.cycle cimport RequestCycle
from tako.server.proxy.h2.stream cimport StreamTransport
from tako.server.proxy.wire cimport ResponseSink, Writer


cdef int FRAME_NONE, FRAME_LENGTH, FRAME_CHUNKED, FRAME_CLOSE, FRAME_DONE
# Response header kinds: C ints, so the head's framing headers are told apart by C comparisons.
cdef int _H_PASS, _H_DROP, _H_CONNECTION, _H_LENGTH, _H_TE
# The response head's constant pieces: C globals rather than a module dict lookup each per response.
cdef int _END_PLAIN, _END_KEEP_ALIVE, _END_CLOSE
cdef bytes _CRLF, _LENGTH_NAME
cdef tuple _STATUS_LINE_STARTS, _ENDS, _CHUNKED_ENDS


cdef class UpstreamPool:
    cdef public int family
    cdef public object loop
    cdef public str key
    cdef public str host
    cdef public object port
    cdef public list idle
    cdef public double last_used

    @cython.locals(idle=list, conn=UpstreamConnection)
    cpdef UpstreamConnection acquire(self)
    cpdef release(self, UpstreamConnection conn)


cdef class UpstreamConnection(ResponseSink):
    cdef public bint _chunked
    cdef public bint _conn_close
    cdef public list _conn_tokens
    cdef public object _encoder
    cdef public int _frame
    cdef public bint _got_bytes
    cdef public bint _head_done
    cdef public bint _keep_alive
    cdef public bytes _length
    cdef public list _out
    cdef public bytes _reason
    cdef public int _status
    cdef public bint _until_close
    cdef public bint closed
    cdef public object connecting
    cdef public RequestCycle cycle
    cdef public double deadline
    cdef public double idle_since
    cdef public object parser
    cdef public UpstreamPool pool
    cdef public bint request_complete
    cdef public Py_ssize_t requests
    cdef public object transport
    cdef public bint tunnel
    cdef public bint write_paused
    cdef public Writer writer

    @cython.locals(out=list)
    cpdef data_received(self, data)
    cpdef on_message_begin(self)
    cpdef on_body(self, bytes body)
    cpdef on_message_complete(self)
    cpdef attach(self, RequestCycle cycle, Py_ssize_t sent=*)
    cpdef end_request(self, RequestCycle cycle)
    cpdef close(self)
    cpdef abort(self)
    @cython.locals(client=ClientConnection)
    cpdef _finish_response(self, RequestCycle cycle)
    cdef _parser_stopped(self, RequestCycle cycle, list out)
    @cython.locals(
        i=Py_ssize_t, kind=int, value=bytes, lvalue=bytes, token=bytes, headers=list, frame=int, end=int, length=bytes,
        lines=bytes, request_id=bytes, start=bytes, head=bytes
    )
    cpdef on_head(
        self, int status, bytes reason, bint keep_alive, bint upgrade, bytes block, list specials
    )
    @cython.locals(piece=bytes, size=Py_ssize_t, length=bytes, no_body=bint, close=bint, request_id=bytes)
    cdef bint _head_to_stream(self, RequestCycle cycle, StreamTransport stream, int status, list headers,
                              list out) except -1
    cdef _informational(self, RequestCycle cycle, int status, list headers)
    cdef _end_encoding(self)


cdef _encoder_for(RequestCycle cycle, bytes accept, int status, list headers, bytes length)
cdef _flush(RequestCycle cycle, list out)
