/* Unaligned-safe big-endian loads and stores (memcpy, as pgproto's hton.h does) and the
 * Internet checksum. Packet bytes are never read through casted struct pointers. */
#ifndef FASTPATH_COMPAT_H
#define FASTPATH_COMPAT_H

#include <stdint.h>
#include <string.h>
#include <time.h>
#if defined(__SSE2__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#include <emmintrin.h>
#define FP_STORE16_LE 1
#endif

#define fp_likely(x)   __builtin_expect(!!(x), 1)
#define fp_unlikely(x) __builtin_expect(!!(x), 0)

/* Ask for the lines a packet's first touch needs (its start, and the room in front of it
 * where headers are written) a few packets ahead of the loop that touches them. */
/* counters shared by threads that run batches side by side; relaxed: totals, not ordering */
static inline void fp_atomic_add(uint64_t *p, uint64_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }

/* one cache line about to be read and written (a hash bucket) */
static inline void fp_prefetch_line(const void *p) { __builtin_prefetch(p, 1, 3); }

static inline void fp_prefetch_packet(const uint8_t *p, uint32_t len)
{
    __builtin_prefetch(p - 64, 1, 3);
    __builtin_prefetch(p, 1, 3);
    __builtin_prefetch(p + len - 1, 1, 3);
}

static inline uint16_t fp_load_be16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return __builtin_bswap16(v); }
static inline uint32_t fp_load_be32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return __builtin_bswap32(v); }
static inline uint64_t fp_load_be64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return __builtin_bswap64(v); }
static inline void fp_store_be16(uint8_t *p, uint16_t v) { v = __builtin_bswap16(v); memcpy(p, &v, 2); }
static inline void fp_store_be32(uint8_t *p, uint32_t v) { v = __builtin_bswap32(v); memcpy(p, &v, 4); }
static inline void fp_store_be64(uint8_t *p, uint64_t v) { v = __builtin_bswap64(v); memcpy(p, &v, 8); }

/* Copies and clears of a few bytes whose length is only known at run time (IVs, ICVs,
 * header templates). A variable-length memcpy becomes `rep movs`, which costs tens of
 * cycles to start; these use fixed-size, possibly overlapping moves instead. n <= 64, and
 * the regions must not overlap. */
static inline void fp_copy_small(uint8_t *d, const uint8_t *s, size_t n)
{
    if (n >= 16) {
        uint8_t a[16], b[16];
        memcpy(a, s, 16); memcpy(b, s + n - 16, 16);
        if (n > 32) { memcpy(d + 16, s + 16, 16); if (n > 48) memcpy(d + 32, s + 32, 16); }
        memcpy(d, a, 16); memcpy(d + n - 16, b, 16);
    } else if (n >= 8) {
        uint64_t a, b;
        memcpy(&a, s, 8); memcpy(&b, s + n - 8, 8);
        memcpy(d, &a, 8); memcpy(d + n - 8, &b, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, s, 4); memcpy(&b, s + n - 4, 4);
        memcpy(d, &a, 4); memcpy(d + n - 4, &b, 4);
    } else {
        for (size_t i = 0; i < n; i++) d[i] = s[i];
    }
}

static inline void fp_zero_small(uint8_t *d, size_t n)
{
    static const uint8_t zeros[64];
    fp_copy_small(d, zeros, n);
}

/* The 16 bytes lo || hi (little-endian words) written with one store where the CPU allows:
 * a nonce or AAD built from smaller stores makes the crypto library's vector load of it wait
 * on a failed store forward, as much as a third of a 64-byte packet's AES-GCM. */
static inline void fp_store_words16(uint8_t *out, uint64_t lo, uint64_t hi)
{
#ifdef FP_STORE16_LE
    _mm_storeu_si128((__m128i *)out, _mm_set_epi64x((long long)hi, (long long)lo));
#else
    uint8_t b[16];
    for (int i = 0; i < 8; i++) { b[i] = (uint8_t)(lo >> (8 * i)); b[8 + i] = (uint8_t)(hi >> (8 * i)); }
    memcpy(out, b, 16);
#endif
}

/* Byte strings as the little-endian words fp_store_words16 takes. */
static inline uint64_t fp_le_bytes(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* RFC 4106 section 4, RFC 7634 section 2, RFC 4543 section 3.1: nonce = salt || 8-byte IV;
 * with an implicit IV (RFC 8750 section 3) the IV is the 64-bit sequence number. */
static inline void fp_nonce16(uint8_t *out, const uint8_t *salt, const uint8_t *iv, uint64_t seq)
{
    uint8_t ivb[8];
    if (!iv) { fp_store_be64(ivb, seq); iv = ivb; }
    fp_store_words16(out, fp_le_bytes(salt, 4) | fp_le_bytes(iv, 4) << 32, fp_le_bytes(iv + 4, 4));
}

/* RFC 4106 section 5: the ESN AAD is SPI || sequence high || sequence low (12 bytes). */
static inline void fp_esn_aad16(uint8_t *out, const uint8_t *esp, uint64_t seq)
{
    uint8_t hi[4];
    fp_store_be32(hi, (uint32_t)(seq >> 32));
    fp_store_words16(out, fp_le_bytes(esp, 4) | fp_le_bytes(hi, 4) << 32, fp_le_bytes(esp + 4, 4));
}

/* RFC 3686 section 4: counter block = nonce || IV || 32-bit block counter 1. */
static inline void fp_ctr_block16(uint8_t *out, const uint8_t *nonce, const uint8_t *iv)
{
    static const uint8_t one[4] = {0, 0, 0, 1};
    fp_store_words16(out, fp_le_bytes(nonce, 4) | fp_le_bytes(iv, 4) << 32,
                     fp_le_bytes(iv + 4, 4) | fp_le_bytes(one, 4) << 32);
}

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
