# Cython declarations for static_files.py (see docs/proxy.md, "Compiled hot path"): the lookup of a file
# already seen is a dict lookup on a C struct's field, and the calls from static_stream.py are C calls.
# The .py file stays the source.
cimport cython


cdef class StaticMount:
    cdef public dict _entries
    cdef public Py_ssize_t _kept
    cdef public bytes prefix
    cdef public str root

    @cython.locals(now=double, fresh_until=double, entry=tuple)
    cpdef object asset(self, bytes rest)


cdef class StaticMounts:
    cdef public dict dirs
    cdef public tuple mounts

    @cython.locals(mount=StaticMount, prefix=bytes, rest=bytes)
    cpdef tuple find(self, bytes path)


@cython.locals(found=dict, block=bytes, lower=bytes, start=bytes, at=Py_ssize_t, value_at=Py_ssize_t)
cpdef object request_headers(list pieces)
