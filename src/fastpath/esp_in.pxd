from libc.stdint cimport uint8_t, uint32_t, int64_t
from fastpath.crypto cimport crypto_op_t
from fastpath.state cimport sa_t, pkt_meta_t
from fastpath.status cimport Status

cdef uint32_t decap_burst(sa_t *sa, uint8_t *buf, size_t buflen, int64_t *off, uint32_t *lens,
                          uint8_t *status, const uint32_t *idx, uint32_t n, bint verify) noexcept nogil
cdef int decap_one(sa_t *sa, const uint8_t *pkt, uint32_t len, uint8_t *out, size_t cap,
                   uint32_t *out_len, bint verify) noexcept nogil

# The stages of decap_burst, declared for fastpath.stages (per-stage benchmarks and tests)
cdef Status decap_prepare(sa_t *sa, const uint8_t *pkt, uint32_t len, uint8_t *out,
                          size_t cap, crypto_op_t *op, pkt_meta_t *m, bint verify) noexcept nogil
cdef Status decap_finish(sa_t *sa, crypto_op_t *op, pkt_meta_t *m, bint verify) noexcept nogil
