# Cython declarations for counters.py (see docs/proxy.md, "Compiled hot path"): the counters are C fields
# and the calls client.py makes per request C calls. The .py file stays the source.
cimport cython

from tako.server.proxy cimport native


cdef class AppCounters:
    cdef public long long bytes_in
    cdef public long long bytes_out
    cdef public long long cold_starts
    cdef public bint counting
    cdef public long long in_flight
    cdef public list latency
    cdef public double latency_sum
    cdef public str name
    cdef public list requests
    cdef public list upstream_errors
    cdef public double upstream_seconds_sum
    cdef public long long websockets_open

    # C locals: the bucket search compares C doubles and the lists are indexed with C integers.
    @cython.locals(index=int, bucket=Py_ssize_t, bound=double)
    cpdef finished(self, int status, double seconds, double upstream_seconds, long long bytes_in, long long bytes_out)
    cpdef tunnel_closed(self, long long bytes_in, long long bytes_out)
    cpdef upstream_error(self, int kind)


cdef class RequestIds:
    cdef Py_ssize_t _start
    cdef bytearray _text

    @cython.locals(text=bytearray, i=Py_ssize_t, digit=int)
    cpdef bytes next(self)


cdef class Activity:
    cdef public Py_ssize_t inflight
    cdef public double last


cdef class InFlight:
    cdef public Activity activity
    cdef public long long answered
    cdef public Py_ssize_t inflight
    cdef public str key
    cdef public bint report_idle
    cdef public long long starts

    @cython.locals(activity=Activity)
    cpdef request_started(self)
    @cython.locals(activity=Activity)
    cpdef request_finished(self)
    cpdef request_answered(self)
    cpdef idle(self)


cdef class Rotation:
    cdef Py_ssize_t _last
    cdef public object maintenance
    cdef public tuple rotation
    cdef public object static

    @cython.locals(n=Py_ssize_t, i=Py_ssize_t)
    cpdef pick(self)
