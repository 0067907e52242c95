from libc.stdint cimport uint8_t, uint32_t, int64_t
from fastpath.crypto cimport crypto_op_t
from fastpath.state cimport sa_t, pkt_meta_t
from fastpath.status cimport Status

cdef enum:
    # packets prepared, sealed and finished together: enough for the multi-buffer backend to
    # keep its lanes full, small enough for the per-chunk arrays to live on the stack
    CHUNK = 256
    # how far ahead the prepare loops prefetch a packet's first lines
    PREFETCH_AHEAD = 4

cdef inline uint8_t *slot_end(uint8_t *buf, size_t buflen, size_t start, size_t stride) noexcept nogil:
    # the end of the slot that starts at buf + start, cut to the buffer; start <= buflen (the
    # batch contract, checked once per batch), so no sum here can wrap whatever the stride
    return buf + (start + stride if stride < buflen - start else buflen)

cdef uint32_t encap_burst(sa_t *sa, uint8_t *buf, size_t buflen, int64_t *off, uint32_t *lens,
                          uint8_t *status, const uint32_t *idx, uint32_t n, size_t stride) noexcept nogil
cdef int encap_one(sa_t *sa, const uint8_t *pkt, uint32_t len, uint8_t *out, size_t cap,
                   uint32_t *out_len) noexcept nogil

# The stages of encap_burst, declared for fastpath.stages (per-stage benchmarks and tests)
cdef Status encap_prepare(sa_t *sa, uint8_t *lo, uint8_t *pkt, uint32_t len, uint8_t *hi,
                          crypto_op_t *op, pkt_meta_t *m) noexcept nogil
cdef void encap_finish(sa_t *sa, pkt_meta_t *m) noexcept nogil
