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
    # idx (may be NULL) selects which packets of the arrays to process, n of them. Nothing
    # is checked here: places that come from outside go through check_places first.
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
# together and checked to describe n packets, each array its own memory; released together.
ctypedef struct batch_bufs_t:
    Py_buffer views[4]
    int held
    uint32_t n
    uint8_t *data
    Py_ssize_t size
    int64_t *off
    uint32_t *lens
    uint8_t *status

# size arguments: past 64 bits a ValueError; a stride must be positive
cdef Py_ssize_t as_ssize(object value, str what) except? -1
cdef Py_ssize_t batch_stride(object stride) except -1

# status may be None only with status_optional (the I/O calls, which write no status)
cdef int batch_take(batch_bufs_t *b, object buf, object offsets, object lengths,
                    object status, bint status_optional=*) except -1
cdef void batch_release(batch_bufs_t *b) noexcept
# A further array of the call (indices, slots, seqs) must not share memory with the batch's.
cdef int batch_apart(const batch_bufs_t *b, const Py_buffer *view, str what) except -1
cdef int check_apart(const Py_buffer *a, str aname, const Py_buffer *b, str bname) except -1
cdef int check_disjoint(const void *a, Py_ssize_t alen, str aname, const void *b, Py_ssize_t blen,
                        str bname) except -1
cdef int batch_check_places(const batch_bufs_t *b, Py_ssize_t stride, const uint32_t *idx,
                            uint32_t count) except -1
# The one place check of every batch API (the batch calls, the engine, the stages, netio,
# the classifier and the floors): packets idx[0..count) (0..count without idx; with table,
# only those whose status[i] the table selects) lie inside a buffer of size bytes, at least
# front bytes into it, and with a stride inside their own slots. Overflow-safe for any values.
cdef int check_places(Py_ssize_t size, const int64_t *off, const uint32_t *lens, Py_ssize_t stride,
                      const uint32_t *idx, Py_ssize_t count, const uint8_t *status=*,
                      const uint8_t *table=*, Py_ssize_t front=*) except -1
cdef int check_regions(const uint8_t *buf, Py_ssize_t size, const int64_t *off, Py_ssize_t noff,
                       const uint32_t *lens, Py_ssize_t nlens, Py_ssize_t front) except -1
