# Cython declarations for access_line.py (see docs/proxy.md, "Compiled hot path"): `add` is a C call from
# client.py, and the numbers of a line are C numbers, formatted without making Python objects. The .py file stays the source.
cimport cython


cdef bint _COMPILED


@cython.locals(c="unsigned char")
cdef bint _plain(bytes value)


cdef class AccessLog:
    cdef list _entries
    cdef object _formatter  # the binding's Formatter or a LineFormatter
    cdef object _loop
    cdef object _sink
    cdef object _timer

    cpdef add(self, tuple entry)
    cpdef flush(self)
    cpdef close(self)


cdef class LineFormatter:
    cdef public dict heads
    cdef public bint query
    cdef public long long second
    cdef public str stamp
    cdef public dict tails

    @cython.locals(
        entry=tuple, started=double, when=double, ended=double, sent_at=double, url=bytes, mark=Py_ssize_t,
        path=bytes, request_id=bytes,
        up_us="long long", us="long long", millis=int, status=int, bytes_in="long long", bytes_out="long long",
        lines=dict, heads=dict, tails=dict, query=bint, text=list, line=str,
    )
    cpdef dict format(self, list entries, double wall)
    cpdef new_second(self, double when)
    cpdef str head(self, tuple key)
    cpdef str tail(self, tuple key)
