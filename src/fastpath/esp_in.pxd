from libc.stdint cimport uint8_t, uint32_t, int64_t
from fastpath.state cimport sa_t

cdef uint32_t decap_burst(sa_t *sa, uint8_t *buf, size_t buflen, int64_t *off, uint32_t *lens,
                          uint8_t *status, const uint32_t *idx, uint32_t n, bint verify) noexcept nogil
cdef int decap_one(sa_t *sa, const uint8_t *pkt, uint32_t len, uint8_t *out, size_t cap,
                   uint32_t *out_len, bint verify) noexcept nogil
