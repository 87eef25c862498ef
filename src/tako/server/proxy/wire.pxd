# Cython declarations for wire.py (see docs/proxy.md, "Compiled hot path"): the method tables the transports,
# the connections and the HTTP/1.1 parser binding call each other through. The .py file stays the source.

cdef class Receiver:
    cpdef data_received(self, data)


cdef class Writer:
    cpdef write(self, data)


# The parsers' calls (_http1.pyx cimports these): the connections' own declarations must match.
cdef class MessageSink(Receiver):
    cpdef on_message_begin(self)
    cpdef on_body(self, bytes body)
    cpdef on_message_complete(self)


cdef class RequestSink(MessageSink):
    cpdef on_head(
        self, bytes method, bytes url, str version, bint keep_alive, bint upgrade, bytes block, list specials,
        Py_ssize_t count, Py_ssize_t size
    )


cdef class ResponseSink(MessageSink):
    cpdef on_head(self, int status, bytes reason, bint keep_alive, bint upgrade, bytes block, list specials)


cdef class _ReceiverOf(Receiver):
    cdef object _protocol


cdef class _WriterOf(Writer):
    cdef object _transport


cpdef Receiver as_receiver(protocol)
cpdef Writer as_writer(transport)
