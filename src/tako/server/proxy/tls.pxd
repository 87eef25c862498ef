# Cython declarations for tls.py (see docs/proxy.md, "Compiled hot path"): C types for the TLS transport's
# state and its internal calls. The .py file stays the source; these only take effect when it is compiled.

cimport cython

from tako.server.proxy.wire cimport Receiver, Writer


cdef class TLSTransport(Writer):
    cdef object __weakref__  # the TLS object's `owner` is a weak reference
    cdef list _buffer
    cdef Py_ssize_t _buffer_size
    cdef bint _closing
    cdef bint _eof
    cdef object _factory
    cdef int _fd
    cdef set _handshaking
    cdef Py_ssize_t _high_water
    cdef object _loop
    cdef bint _lost
    cdef Py_ssize_t _low_water
    cdef object _on_read
    cdef object _on_write
    cdef object _peername
    cdef object _pending
    cdef object _protocol
    cdef bint _reading
    cdef Receiver _receiver
    cdef object _recv
    cdef object _send
    cdef object _sock
    cdef object _timer
    cdef object _tls
    cdef bint _write_paused

    cdef _set_reader(self, callback)
    cdef _set_writer(self, callback)
    cpdef _handshake(self)
    @cython.locals(receiver=Receiver)
    cpdef _read(self)
    cpdef _read_when_writable(self)
    cpdef _read_pending(self)
    cdef _update_reader(self)
    cpdef write(self, data)
    cpdef _write_buffered(self)
    cdef _check_high_water(self)
    cpdef _shutdown(self)
    cdef _restart_timer(self, double seconds)
    cpdef _discard(self)
    cpdef _destroy(self, exc=*)
