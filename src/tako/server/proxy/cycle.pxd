# Cython declarations for cycle.py (see docs/proxy.md, "Compiled hot path"): C types for the attributes both
# halves of the data plane read on every request. The .py file stays the source; these only take effect
# when it is compiled.
from tako.server.proxy.client cimport ClientConnection
from tako.server.proxy.counters cimport AppCounters
from tako.server.proxy.upstream cimport UpstreamConnection


cdef class ServerFields:
    cdef public object router
    cdef public bint shutting_down
    cdef public object snapshot


cdef class RequestCycle:
    cdef public bytes accept_encoding
    cdef public object body
    cdef public bint body_done
    cdef public object body_received
    cdef public bint buffering
    cdef public Py_ssize_t bytes_out
    cdef public bint chunked
    cdef public ClientConnection conn
    cdef public list conn_tokens
    cdef public bint connection_header
    cdef public object content_length
    cdef public AppCounters counters
    cdef public int error_status
    cdef public bytes expect
    cdef public object gate
    cdef public bytes head
    cdef public Py_ssize_t header_bytes
    cdef public Py_ssize_t header_count
    cdef public bint headers_done
    cdef public str host
    cdef public bytes host_header
    cdef public bint http10
    cdef public str instance
    cdef public bint is_head
    cdef public bint keep_alive
    cdef public bytes method
    cdef public list pieces
    cdef public bytes request_id
    cdef public bint response_started
    cdef public bint retried
    cdef public object sender
    cdef public double sent_at
    cdef public double started
    cdef public int status
    cdef public bytes te
    cdef public Py_ssize_t tunnel_in
    cdef public UpstreamConnection uconn
    cdef public bytes upgrade
    cdef public bytes upgrade_header
    cdef public object upstream
    cdef public bytes url
    cdef public bytes xff
