from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "compat.h" nogil:
    bint fp_likely(bint)
    bint fp_unlikely(bint)
    uint16_t fp_load_be16(const uint8_t *p)
    uint32_t fp_load_be32(const uint8_t *p)
    uint64_t fp_load_be64(const uint8_t *p)
    void fp_store_be16(uint8_t *p, uint16_t v)
    void fp_store_be32(uint8_t *p, uint32_t v)
    void fp_store_be64(uint8_t *p, uint64_t v)
    uint32_t fp_csum_add(uint32_t s, const uint8_t *p, size_t n)
    uint16_t fp_csum_fold(uint32_t s)
    uint16_t fp_ipv4_csum(const uint8_t *h, size_t ihl)
    uint64_t fp_now_ns()
    void fp_copy_small(uint8_t *d, const uint8_t *s, size_t n)
    void fp_zero_small(uint8_t *d, size_t n)
    void fp_prefetch_packet(const uint8_t *p, uint32_t len)
