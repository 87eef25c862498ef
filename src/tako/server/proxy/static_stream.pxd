# Cython declarations for static_stream.py (see docs/proxy.md, "Compiled hot path"): C types for the
# request cycle and the mounts a static answer reads. The .py file stays the source.
cimport cython
from tako.server.proxy.cycle cimport RequestCycle
from tako.server.proxy.static_files cimport StaticMount, StaticMounts


cdef class FileSender:
    cdef public object conn
    cdef public RequestCycle cycle
    cdef public int fd
    cdef public long long offset
    cdef public long long remaining
    cdef public bint scheduled


@cython.locals(found=tuple, mount=StaticMount, rest=bytes, method=bytes, request_id=bytes)
cpdef bint serve(object conn, RequestCycle cycle, StaticMounts mounts, bytes path, bint close)

@cython.locals(request_id=bytes, after=bytes)
cdef _send_kept(object conn, RequestCycle cycle, object asset, bytes body)
