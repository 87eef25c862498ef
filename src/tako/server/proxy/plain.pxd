# Cython declarations for plain.py (see docs/proxy.md, "Compiled hot path"): C types for the transport's
# state and its internal calls. The .py file stays the source; these only take effect when it is compiled.

from tako.server.proxy cimport native
from tako.server.proxy.wire cimport Receiver, Writer


cdef bytearray _RECV_BUFFER


cdef class PlainTransport(Writer):
    cdef list _buffer
    cdef Py_ssize_t _buffer_size
    cdef bint _closing
    cdef bint _eof_sent
    cdef bint _eof_wanted
    cdef int _fd
    cdef Py_ssize_t _high_water
    cdef object _loop
    cdef bint _lost
    cdef Py_ssize_t _low_water
    cdef object _peername
    cdef object _protocol
    cdef bint _reader_on
    cdef bint _reading
    cdef Receiver _receiver
    cdef object _sock
    cdef bint _write_paused
    cdef bint _writer_on

    cdef _update_reader(self)
    cdef _set_writer(self, bint wanted)
    cpdef _read(self)
    cpdef write(self, data)
    cpdef _write_buffered(self)
    cdef Py_ssize_t _send(self, data) except -1
    cdef _check_high_water(self)
    cdef _shutdown_write(self)
    cpdef _destroy(self, exc=*)
