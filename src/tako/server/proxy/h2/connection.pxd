# Cython declarations for connection.py (see docs/proxy.md, "Compiled hot path"): C types for the connection's
# state and its per-stream calls into stream.py. The .py file stays the source; these only take effect compiled.
from tako.server.proxy cimport native
from tako.server.proxy.h2.stream cimport StreamTransport


cdef class H2Connection:
    cdef public set answered_early
    cdef public bint closed
    cdef public object cycle
    cdef public double deadline
    cdef public int deadline_kind
    cdef public bint flush_scheduled
    cdef public bint going_away
    cdef public list idle
    cdef public object loop
    cdef public set paused
    cdef public double send_deadline
    cdef public object server
    cdef public object session
    cdef public dict streams
    cdef public object transport
    cdef public bint write_blocked

    cpdef schedule_flush(self)
    cpdef flush(self)
    cpdef consumed(self, int stream_id, Py_ssize_t n)
    cpdef end_early(self, int stream_id)
    cdef _reset_answered(self)
    cpdef reset(self, int stream_id)
    cdef StreamTransport _new_stream(self)
    cpdef discard_idle(self, StreamTransport stream)
