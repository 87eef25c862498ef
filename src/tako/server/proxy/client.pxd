# Cython declarations for client.py (see docs/proxy.md, "Compiled hot path"): C types for the attributes and the calls the
# per-request path makes. The .py file stays the source; these only take effect when it is compiled.
cimport cython

from tako.server.proxy cimport native
from tako.server.proxy.access_line cimport AccessLog
from tako.server.proxy.counters cimport AppCounters, InFlight, RequestIds, Rotation
from tako.server.proxy.cycle cimport RequestCycle, ServerFields
from tako.server.proxy.upstream cimport UpstreamConnection, UpstreamPool
from tako.server.proxy.wire cimport RequestSink, Writer


# Request header kinds: C ints, so classifying a header compares C integers rather than module globals.
cdef int _H_PASS, _H_DROP, _H_HOST, _H_LENGTH, _H_TE, _H_CONNECTION, _H_UPGRADE, _H_XFF, _H_EXPECT
cdef int _H_REQUEST_ID, _H_ACCEPT_ENCODING, _H_PROXY_CONNECTION
cdef dict _request_kinds_cache


cdef class ClientConnection(RequestSink):
    cdef public AccessLog access
    cdef public object body_mark
    cdef public object body_need
    cdef public double body_window
    cdef public bint broken
    cdef public bint buffer_bodies
    cdef public bytes client_ip
    cdef public bint closed
    cdef public RequestCycle cycle
    cdef public double deadline
    cdef public int deadline_kind
    cdef public bint eof
    cdef public bint forward
    cdef public bytes forwarded
    cdef public bytes forwarded_for
    cdef public bytes forwarded_for_host
    cdef public Py_ssize_t head_pending
    cdef public double header_timeout
    cdef public bytes held
    cdef public double keepalive_timeout
    cdef public AppCounters last_counters
    cdef public object last_gate
    cdef public str last_host
    cdef public bytes last_host_header
    cdef public object loop
    cdef public object max_body
    cdef public Py_ssize_t max_header_bytes
    cdef public Py_ssize_t max_headers
    cdef public object parser
    cdef public RequestCycle parsing
    cdef public int pause_mask
    cdef public bint paused_in_window
    cdef public object pipeline
    cdef public dict pools
    cdef public int reject_status
    cdef public RequestIds request_ids
    cdef public object route_gate
    cdef public str route_host
    cdef public object route_router
    cdef public double response_timeout
    cdef public double send_deadline
    cdef public ServerFields server
    cdef public bint starting
    cdef public bint tls
    cdef public object traffic
    cdef public object transport
    cdef public UpstreamConnection tunnel
    cdef public bint tunnel_active
    cdef public double tunnel_timeout
    cdef public list upgrade_buffer
    cdef public bint write_paused
    cdef public Writer writer

    cpdef data_received(self, data)
    cpdef on_message_begin(self)
    @cython.locals(i=Py_ssize_t)
    cpdef on_head(
        self, bytes method, bytes url, str version, bint keep_alive, bint upgrade, bytes block, list specials,
        Py_ssize_t count, Py_ssize_t size
    )
    cpdef on_body(self, bytes body)
    cpdef on_message_complete(self)
    cdef _field(self, RequestCycle cycle, bytes name, bytes value)
    cdef _special(self, RequestCycle cycle, int kind, bytes value)
    cdef _head_complete(self, RequestCycle cycle, str version, bytes method, bint keep_alive, bint upgrade)
    cdef _check_head(self, RequestCycle cycle, str version, bytes method, bint keep_alive, bint upgrade)
    cpdef h2_request(self, bytes method, bytes path, bytes authority, list fields, bint end_stream)
    cpdef h2_body(self, bytes data)
    cpdef h2_end(self)
    cdef _h2_rejected(self)
    @cython.locals(
        parts=list, pieces=list, request_id=bytes, host_header=bytes, forwarded=bytes, id_name=bytes
    )
    cpdef bytes _build_head(self, RequestCycle cycle)
    @cython.locals(url=bytes, path=bytes, rotation=Rotation)
    cpdef _start(self, RequestCycle cycle)
    @cython.locals(pool=UpstreamPool, uconn=UpstreamConnection, flight=InFlight)
    cpdef _use_upstream(self, RequestCycle cycle, upstream)
    cpdef _respond(self, RequestCycle cycle, bytes data)
    cpdef request_sent(self, RequestCycle cycle)
    cpdef send_body(self, RequestCycle cycle)
    cpdef pump_body(self, RequestCycle cycle)
    @cython.locals(flight=InFlight)
    cpdef response_complete(self, RequestCycle cycle)
    @cython.locals(now=double)
    cdef double _count(self, RequestCycle cycle, int status) except? -1.0
    cpdef pause(self, int reason)
    cpdef resume(self, int reason)
    cpdef abort(self)


cdef bint _close_after_local(RequestCycle cycle)
cdef _finish_upstream(RequestCycle cycle)
cdef _drop_body(RequestCycle cycle)
