/* Unaligned-safe big-endian loads and stores (memcpy, as pgproto's hton.h does) and the
 * Internet checksum. Packet bytes are never read through casted struct pointers. */
#ifndef FASTPATH_COMPAT_H
#define FASTPATH_COMPAT_H

#include <stdint.h>
#include <string.h>
#include <time.h>

#define fp_likely(x)   __builtin_expect(!!(x), 1)
#define fp_unlikely(x) __builtin_expect(!!(x), 0)

static inline uint16_t fp_load_be16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return __builtin_bswap16(v); }
static inline uint32_t fp_load_be32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return __builtin_bswap32(v); }
static inline uint64_t fp_load_be64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return __builtin_bswap64(v); }
static inline void fp_store_be16(uint8_t *p, uint16_t v) { v = __builtin_bswap16(v); memcpy(p, &v, 2); }
static inline void fp_store_be32(uint8_t *p, uint32_t v) { v = __builtin_bswap32(v); memcpy(p, &v, 4); }
static inline void fp_store_be64(uint8_t *p, uint64_t v) { v = __builtin_bswap64(v); memcpy(p, &v, 8); }

/* RFC 1071 one's-complement sum, folded; callers complement it. */
static inline uint32_t fp_csum_add(uint32_t sum, const uint8_t *p, size_t n)
{
    while (n >= 2) { sum += ((uint32_t)p[0] << 8) | p[1]; p += 2; n -= 2; }
    if (n) sum += (uint32_t)p[0] << 8;
    return sum;
}

static inline uint16_t fp_csum_fold(uint32_t sum)
{
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

/* IPv4 header checksum over ihl bytes with the checksum field taken as zero. */
static inline uint16_t fp_ipv4_csum(const uint8_t *h, size_t ihl)
{
    uint32_t s = fp_csum_add(0, h, 10);
    s = fp_csum_add(s, h + 12, ihl - 12);
    return (uint16_t)~fp_csum_fold(s);
}

/* Monotonic nanoseconds, for the floor loops that time themselves. */
static inline uint64_t fp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif
