# native.py's functions in C, inline in each compiled module that cimports this file (see native.py). The
# .py file is what runs where the modules are not compiled; both must behave the same.
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.object cimport PyObject
from cpython.sequence cimport PySequence_Fast_ITEMS
from cpython.exc cimport PyErr_SetFromErrno
from libc.errno cimport EAGAIN, EINTR, errno
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef extern from "Python.h":
    # On borrowed item pointers: no reference counting around each item.
    bint _is_bytes "PyBytes_CheckExact" (PyObject *o)
    char *_bytes_data "PyBytes_AS_STRING" (PyObject *o)
    Py_ssize_t _bytes_size "PyBytes_GET_SIZE" (PyObject *o)
    int PyList_SetSlice(object items, Py_ssize_t low, Py_ssize_t high, PyObject *itemlist) except -1

cdef extern from "sys/socket.h" nogil:
    ssize_t c_recv "recv" (int fd, void *buf, size_t n, int flags)
    ssize_t c_send "send" (int fd, const void *buf, size_t n, int flags)
    int MSG_NOSIGNAL


cdef inline double now():
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline bytes _concat(object pieces, Py_ssize_t n):
    """The items of a list or tuple, if all are exact bytes, copied into one new bytes object; otherwise
    b"".join (which takes any buffer and raises for what is not one)."""
    cdef PyObject **items = PySequence_Fast_ITEMS(pieces)
    cdef Py_ssize_t i, size = 0
    for i in range(n):
        if not _is_bytes(items[i]):
            return b"".join(pieces)
        size += _bytes_size(items[i])
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char *at = PyBytes_AS_STRING(out)
    for i in range(n):
        memcpy(at, _bytes_data(items[i]), _bytes_size(items[i]))
        at += _bytes_size(items[i])
    return out


cdef inline bytes join(tuple pieces):
    return _concat(pieces, len(pieces))


cdef inline bytes join_list(list pieces):
    return _concat(pieces, len(pieces))


cdef inline clear(list items):
    PyList_SetSlice(items, 0, len(items), NULL)


cdef inline bytes copy(bytearray data):
    return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(data), PyByteArray_GET_SIZE(data))


cdef inline object recv(int fd, bytearray buffer):
    cdef char *buf = PyByteArray_AS_STRING(buffer)
    cdef size_t size = <size_t>PyByteArray_GET_SIZE(buffer)
    cdef ssize_t n
    cdef int err
    while True:
        n = c_recv(fd, buf, size, 0)
        if n >= 0:
            return PyBytes_FromStringAndSize(buf, n)
        err = errno
        if err == EINTR:
            continue
        if err == EAGAIN:  # EWOULDBLOCK is EAGAIN on Linux
            return None
        PyErr_SetFromErrno(OSError)


cdef inline Py_ssize_t _send(int fd, const char *buf, Py_ssize_t size) except -1:
    cdef ssize_t n
    cdef int err
    while True:
        n = c_send(fd, buf, <size_t>size, MSG_NOSIGNAL)
        if n >= 0:
            return n
        err = errno
        if err == EINTR:
            continue
        if err == EAGAIN:  # EWOULDBLOCK is EAGAIN on Linux
            return 0
        PyErr_SetFromErrno(OSError)


cdef inline Py_ssize_t send(int fd, object data) except -1:
    cdef Py_buffer view
    if type(data) is bytes:
        return _send(fd, PyBytes_AS_STRING(data), len(<bytes>data))
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return _send(fd, <char *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
