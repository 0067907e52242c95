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

# A batch call's buffer, offset (int64), length (uint32) and status (uint8) arrays, taken
# together and checked to describe n packets; released together.
ctypedef struct batch_bufs_t:
    Py_buffer views[4]
    int held
    uint32_t n
    uint8_t *data
    Py_ssize_t size
    int64_t *off
    uint32_t *lens
    uint8_t *status

cdef int batch_take(batch_bufs_t *b, object buf, object offsets, object lengths,
                    object status) except -1
cdef void batch_release(batch_bufs_t *b) noexcept
cdef int batch_check_places(const batch_bufs_t *b, Py_ssize_t stride, const uint32_t *idx,
                            uint32_t count) except -1
