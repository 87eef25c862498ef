# Cython declarations for stream.py (see docs/proxy.md, "Compiled hot path"): C types for a stream's state and
# the calls its connection makes per stream. The .py file stays the source; these only take effect compiled.
from tako.server.proxy.client cimport ClientConnection


cdef class StreamTransport:
    cdef public bint closed
    cdef public bint done
    cdef public object h2
    cdef public bint has_body
    cdef public bytes head
    cdef public Py_ssize_t head_at
    cdef public list held
    cdef public Py_ssize_t high_water
    cdef public bint in_head
    cdef public bint is_head
    cdef public Py_ssize_t low_water
    cdef public Py_ssize_t owed
    cdef public object parser
    cdef public ClientConnection protocol
    cdef public bint reading
    cdef public bint request_ended
    cdef public int stream_id
    cdef public bint write_paused

    cpdef bind(self, int stream_id, bint is_head, bint end_stream)
    cpdef bint reusable(self)
    cpdef on_data(self, bytes data)
    cpdef on_end(self)
    cdef _deliver(self, bytes data, Py_ssize_t window)
    cpdef bint respond_fields(self, int status, bytes lines, bytes request_id, bytes length, bint has_body)
    cpdef _more_body(self, data)
    cpdef peer_closed(self)
    cpdef drained(self)
    cdef _queued(self, Py_ssize_t queued)
