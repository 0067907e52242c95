"""Policy classification for the engine: which SPD entry a packet falls under, in C.

Policies compile into a table of masked rules, first match wins (RFC 4301 4.4.1: the SPD is
ordered). A flow cache in front of the table (an open-addressed hash of the packet's
selector fields -> rule index, tagged with the table's generation) makes the per-packet cost
independent of the number of policies for traffic with any flow locality; a miss scans the
table. A packet whose selector fields cannot be read gets CLASS_UNPARSEABLE.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t, int32_t, int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

from fastpath._include.compat cimport fp_load_be16
from fastpath.wire cimport *

cdef enum:
    CACHE_BITS = 14       # 16384 flows x 48 bytes: 768 KiB, within L2
    CACHE_SIZE = 1 << CACHE_BITS

CLASS_NONE = -1          # no policy matched
CLASS_UNPARSEABLE = -2   # not an IP packet whose selector fields can be read

ctypedef struct flow_key_t:
    # 40 bytes, zeroed before filling: hashed and compared as five 64-bit words
    uint8_t version
    uint8_t proto
    uint16_t sport
    uint16_t dport
    uint8_t pad[2]
    uint8_t src[16]
    uint8_t dst[16]

ctypedef struct rule_t:
    uint8_t version
    int16_t proto            # -1: any
    uint16_t sport_lo, sport_hi, dport_lo, dport_hi
    uint8_t src[16]
    uint8_t smask[16]
    uint8_t dst[16]
    uint8_t dmask[16]

ctypedef struct cache_entry_t:
    flow_key_t key
    uint32_t generation      # 0: empty
    int32_t result


cdef inline bint parse_key(const uint8_t *p, uint32_t n, flow_key_t *k) noexcept nogil:
    """The selector fields of an IP packet (RFC 4301 4.4.1.1): addresses, next-layer
    protocol, ports (ICMP type and code in their place, 4.4.1.3). Non-initial fragments carry
    no ports: they match port ranges covering 0 (RFC 4301 7 treats them as OPAQUE)."""
    cdef uint32_t off, ihl
    cdef uint8_t nh
    cdef bint ports = True
    memset(k, 0, sizeof(flow_key_t))       # the padding too: keys are compared as words
    if n >= IPV4_HDR_MIN and p[0] >> 4 == 4:
        ihl = (p[0] & 0x0f) * 4
        if ihl < IPV4_HDR_MIN or ihl > n:
            return False
        k.version = 4
        memcpy(k.src, p + 12, 4)
        memcpy(k.dst, p + 16, 4)
        nh = p[9]
        off = ihl
        ports = (fp_load_be16(p + 6) & IPV4_FRAG_OFFSET_MASK) == 0
    elif n >= IPV6_HDR_LEN and p[0] >> 4 == 6:
        k.version = 6
        memcpy(k.src, p + 8, 16)
        memcpy(k.dst, p + 24, 16)
        nh = p[6]
        off = IPV6_HDR_LEN
        while nh == IPPROTO_HOPOPTS or nh == IPPROTO_ROUTING or nh == IPPROTO_DSTOPTS or nh == IPPROTO_FRAGMENT:
            if off + 8 > n:
                return False
            if nh == IPPROTO_FRAGMENT:
                ports = ports and (fp_load_be16(p + off + 2) & 0xfff8) == 0
                nh = p[off]
                off += 8
            else:
                nh = p[off]
                off += (p[off + 1] + 1) * 8
    else:
        return False
    k.proto = nh
    if ports and (nh == IPPROTO_TCP or nh == IPPROTO_UDP or nh == 132) and off + 4 <= n:
        k.sport = fp_load_be16(p + off)
        k.dport = fp_load_be16(p + off + 2)
    elif ports and (nh == 1 or nh == 58) and off + 2 <= n:
        k.sport = p[off]         # ICMP type
        k.dport = p[off + 1]     # ICMP code
    return True


cdef inline bint masked_eq(const uint8_t *a, const uint8_t *m, const uint8_t *b, int n) noexcept nogil:
    cdef uint64_t x, y, z
    cdef int i = 0
    while i < n:
        memcpy(&x, a + i, 8)
        memcpy(&y, m + i, 8)
        memcpy(&z, b + i, 8)
        if (x & y) != z:
            return False
        i += 8
    return True


cdef inline uint64_t key_word(const flow_key_t *k, int i) noexcept nogil:
    cdef uint64_t w
    memcpy(&w, (<const uint8_t *>k) + 8 * i, 8)
    return w


cdef inline uint32_t key_hash(const flow_key_t *k) noexcept nogil:
    # a multiply-xorshift mix of the five words: a cache index needs spread, not secrecy
    # (a collision costs a rescan of the table, never a wrong answer)
    cdef uint64_t h = <uint64_t>0x9E3779B97F4A7C15ULL
    cdef int i
    for i in range(5):
        h = (h ^ key_word(k, i)) * <uint64_t>0xFF51AFD7ED558CCDULL
        h ^= h >> 29
    return <uint32_t>(h >> 32)


cdef inline bint key_eq(const flow_key_t *a, const flow_key_t *b) noexcept nogil:
    cdef uint64_t d = 0
    cdef int i
    for i in range(5):
        d |= key_word(a, i) ^ key_word(b, i)
    return d == 0


cdef class Classifier:
    """A compiled, ordered policy table for one direction, with a flow cache."""
    cdef rule_t *rules
    cdef int32_t nrules
    cdef cache_entry_t *cache
    cdef uint32_t generation
    cdef readonly uint64_t hits, misses

    def __cinit__(self):
        self.cache = <cache_entry_t *>calloc(CACHE_SIZE, sizeof(cache_entry_t))
        if self.cache == NULL:
            raise MemoryError()
        self.generation = 1

    def __dealloc__(self):
        free(self.rules)
        free(self.cache)

    def load(self, rules):
        """Replace the table with *rules*: a sequence of (version, src_bytes, src_prefixlen,
        dst_bytes, dst_prefixlen, proto or -1, sport_lo, sport_hi, dport_lo, dport_hi), in
        match order. The flow cache is invalidated."""
        cdef Py_ssize_t i, n = len(rules)
        cdef rule_t *new = <rule_t *>calloc(max(n, 1), sizeof(rule_t))
        if new == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                version, src, splen, dst, dplen, proto, slo, shi, dlo, dhi = rules[i]
                width = 4 if version == 4 else 16
                if len(src) != width or len(dst) != width:
                    raise ValueError(f"rule {i}: addresses must be {width} bytes for IPv{version}")
                new[i].version = version
                new[i].proto = proto
                new[i].sport_lo, new[i].sport_hi, new[i].dport_lo, new[i].dport_hi = slo, shi, dlo, dhi
                for field, addr, plen in ((0, src, splen), (1, dst, dplen)):
                    mask = ((1 << plen) - 1) << (width * 8 - plen) if plen else 0
                    mbytes = mask.to_bytes(width, "big")
                    net = bytes(a & b for a, b in zip(addr, mbytes))
                    if field == 0:
                        memcpy(new[i].src, <const char *>net, width)
                        memcpy(new[i].smask, <const char *>mbytes, width)
                    else:
                        memcpy(new[i].dst, <const char *>net, width)
                        memcpy(new[i].dmask, <const char *>mbytes, width)
        except BaseException:
            free(new)
            raise
        free(self.rules)
        self.rules = new
        self.nrules = <int32_t>n
        self.generation += 1      # every cached answer is now stale

    cdef int32_t scan(self, const flow_key_t *k) noexcept nogil:
        cdef int32_t i
        cdef const rule_t *r
        for i in range(self.nrules):
            r = &self.rules[i]
            if (r.version == k.version and (r.proto < 0 or r.proto == k.proto)
                    and r.sport_lo <= k.sport <= r.sport_hi and r.dport_lo <= k.dport <= r.dport_hi
                    and masked_eq(k.src, r.smask, r.src, 16) and masked_eq(k.dst, r.dmask, r.dst, 16)):
                return i
        return CLASS_NONE_C

    cdef int32_t classify_c(self, const uint8_t *p, uint32_t n) noexcept nogil:
        cdef flow_key_t k
        cdef cache_entry_t *e
        if not parse_key(p, n, &k):
            return CLASS_UNPARSEABLE_C
        e = &self.cache[key_hash(&k) & (CACHE_SIZE - 1)]
        if e.generation == self.generation and key_eq(&e.key, &k):
            self.hits += 1
            return e.result
        self.misses += 1
        e.key = k
        e.result = self.scan(&k)
        e.generation = self.generation
        return e.result

    def classify(self, packet) -> int:
        """The index of the first rule matching *packet* (an IP packet), CLASS_NONE or
        CLASS_UNPARSEABLE."""
        cdef const uint8_t[::1] v = packet
        if v.shape[0] == 0:
            return CLASS_UNPARSEABLE_C
        return self.classify_c(&v[0], v.shape[0])

    def classify_batch(self, const uint8_t[::1] buf, const int64_t[::1] offsets,
                       const uint32_t[::1] lengths, int32_t[::1] out):
        """classify() for every packet of a batch, results index for index, without the GIL."""
        cdef Py_ssize_t i, n = offsets.shape[0]
        if lengths.shape[0] != n or out.shape[0] < n:
            raise ValueError("offsets, lengths and out must describe the same number of packets")
        for i in range(n):
            if offsets[i] < 0 or offsets[i] + lengths[i] > buf.shape[0]:
                raise ValueError(f"packet {i} runs outside the buffer")
        with nogil:
            for i in range(n):
                out[i] = self.classify_c(&buf[offsets[i]], lengths[i])


cdef enum:
    CLASS_NONE_C = -1
    CLASS_UNPARSEABLE_C = -2
