from libc.stdint cimport uint8_t, uint32_t, int64_t
from cpython.pythread cimport PyThread_type_lock
from fastpath.state cimport sa_t

cdef class SAState:
    # the lock makes one thread at a time own the sequence counter, window and contexts, and
    # keeps close() from wiping keys under a running batch
    cdef sa_t c
    cdef PyThread_type_lock _lock
    cdef bint _closed

    cdef void _wipe(self) noexcept
    cdef uint32_t _batch(self, object buf, object offsets, object lengths, object status,
                         Py_ssize_t stride, bint verify, object indices) except? 0xffffffff
    cdef inline uint32_t _burst(self, uint8_t *buf, size_t buflen, int64_t *off, uint32_t *lens,
                                uint8_t *status, const uint32_t *idx, uint32_t n, size_t stride,
                                bint verify) noexcept nogil

    # The C level for forwarders written in Cython: no Python objects, callable without the
    # GIL. Same contracts as encap_batch / decap_batch; returns the number of OK packets.
    # idx (may be NULL) selects which packets of the arrays to process, n of them.
    cdef uint32_t encap_burst_c(self, uint8_t *buf, size_t buflen, int64_t *off, uint32_t *lens,
                                uint8_t *status, uint32_t n, size_t stride,
                                const uint32_t *idx=*) noexcept nogil
    cdef uint32_t decap_burst_c(self, uint8_t *buf, size_t buflen, int64_t *off, uint32_t *lens,
                                uint8_t *status, uint32_t n, bint verify,
                                const uint32_t *idx=*) noexcept nogil


# The checked buffer acquisition of the batch calls, for other batch APIs (the engine):
# writable, C-contiguous, itemsize bytes of one of the struct codes. Release with
# PyBuffer_Release.
cdef int acquire_array(object obj, Py_buffer *view, Py_ssize_t itemsize, const char *codes,
                       str what) except -1
