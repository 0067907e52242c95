"""Policy classification for the engine: which SPD entry a packet falls under, in C.

Policies compile into a table of masked rules, first match wins (RFC 4301 4.4.1: the SPD is
ordered). A per-thread flow cache in front of the table (open addressing on a seeded hash of
the packet's selector fields -> rule index, tagged with the table's uid) makes the per-packet
cost independent of the number of policies for traffic with any flow locality; a miss scans
the table. A packet whose selector fields cannot be read gets CLASS_UNPARSEABLE.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

from fastpath._include.compat cimport fp_prefetch_object

CLASS_NONE = CLASS_NONE_C
CLASS_UNPARSEABLE = CLASS_UNPARSEABLE_C

cdef enum:
    CACHE_BITS = 14       # 16384 flows x 64 bytes: 1 MiB, within L2
    SMALL_TABLE = 4       # up to this many rules a scan costs less than hashing into the cache
    CACHE_SIZE = 1 << CACHE_BITS
    LOOKAHEAD = 16        # keys parsed and buckets prefetched this far ahead of the lookups

cdef uint32_t _next_uid = 0

cdef extern from "flow_cache.h" nogil:
    # declared here only: one module owns the per-thread caches
    ctypedef struct fp_flow_cache_t:
        uint64_t seed[6]
        uint64_t hits, misses
        void *entries
    fp_flow_cache_t *fp_flow_cache(size_t entries_bytes)


cdef inline uint32_t key_hash(const flow_key_t *k, const uint64_t *seed) noexcept nogil:
    # five independent multiplies by random odd constants, folded: short latency, and a
    # flood of chosen flows cannot aim at one bucket without the seed (a collision costs a
    # table scan, never a wrong answer)
    cdef uint64_t h = ((k.w[0] * seed[0]) ^ (k.w[1] * seed[1]) ^ (k.w[2] * seed[2])
                       ^ (k.w[3] * seed[3]) ^ (k.w[4] * seed[4]))
    return <uint32_t>(((h ^ (h >> 29)) * seed[5]) >> (64 - CACHE_BITS))


cdef inline bint key_eq(const flow_key_t *a, const flow_key_t *b) noexcept nogil:
    return ((a.w[0] ^ b.w[0]) | (a.w[1] ^ b.w[1]) | (a.w[2] ^ b.w[2]) | (a.w[3] ^ b.w[3])
            | (a.w[4] ^ b.w[4])) == 0


cdef rule_t *compile_rules(object rules, int32_t *count) except NULL:
    """Selectors as rule_t: each a (version, src_bytes, src_prefixlen, dst_bytes,
    dst_prefixlen, proto or -1, sport_lo, sport_hi, dport_lo, dport_hi) tuple."""
    cdef Py_ssize_t i, n = len(rules)
    cdef rule_t *out = <rule_t *>calloc(max(n, 1), sizeof(rule_t))
    cdef bytes net, mask
    if out == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            version, src, splen, dst, dplen, proto, slo, shi, dlo, dhi = rules[i]
            width = 4 if version == 4 else 16
            if version not in (4, 6) or len(src) != width or len(dst) != width:
                raise ValueError(f"rule {i}: addresses must be {width} bytes for IPv{version}")
            if not (0 <= splen <= width * 8 and 0 <= dplen <= width * 8):
                raise ValueError(f"rule {i}: prefix length out of range")
            out[i].version = version
            out[i].proto = proto
            out[i].sport_lo, out[i].sport_hi, out[i].dport_lo, out[i].dport_hi = slo, shi, dlo, dhi
            for half, addr, plen in ((0, src, splen), (2, dst, dplen)):
                # in the key's layout: the address bytes padded to 16, as two words
                m = ((1 << plen) - 1) << (width * 8 - plen) if plen else 0
                mask = m.to_bytes(width, "big").ljust(16, b"\0")
                net = bytes(a & b for a, b in zip(bytes(addr).ljust(16, b"\0"), mask))
                memcpy(&out[i].net[half], <const char *>net, 16)
                memcpy(&out[i].mask[half], <const char *>mask, 16)
    except BaseException:
        free(out)
        raise
    count[0] = <int32_t>n
    return out


cdef inline fp_flow_cache_t *thread_cache() noexcept nogil:
    return fp_flow_cache(CACHE_SIZE * sizeof(cache_entry_t))


def cache_stats():
    """(hits, misses) of the calling thread's flow cache."""
    cdef fp_flow_cache_t *c = thread_cache()
    if c == NULL:
        return (0, 0)
    return (c.hits, c.misses)


cdef class Classifier:
    """A compiled, ordered policy table for one direction (immutable)."""

    def __cinit__(self, rules=()):
        global _next_uid
        self.rules = compile_rules(rules, &self.nrules)
        _next_uid += 1                 # under the GIL; 0 never names a table
        self.uid = _next_uid

    def __dealloc__(self):
        free(self.rules)

    def __len__(self):
        return self.nrules

    cdef void classify_burst(self, const uint8_t *buf, const int64_t *off, const uint32_t *lens,
                             const uint32_t *idx, int32_t *out, uint32_t n) noexcept nogil:
        # keys are parsed and their buckets prefetched LOOKAHEAD packets ahead of the lookups,
        # so a bucket's cache miss overlaps other packets' work (DPDK's rte_hash bulk lookup)
        cdef flow_key_t keys[LOOKAHEAD]
        cdef uint32_t slot[LOOKAHEAD]
        cdef bint ok[LOOKAHEAD]
        cdef uint32_t i, j, p, hits = 0, misses = 0
        cdef cache_entry_t *e
        cdef cache_entry_t *entries
        cdef fp_flow_cache_t *cache = NULL
        if self.nrules > SMALL_TABLE:
            cache = thread_cache()
        if cache == NULL:
            for i in range(n):
                p = idx[i] if idx != NULL else i
                out[p] = (rules_first_match(self.rules, self.nrules, &keys[0])
                          if parse_key(buf + off[p], lens[p], &keys[0]) else CLASS_UNPARSEABLE_C)
            return
        entries = <cache_entry_t *>cache.entries
        for i in range(n + LOOKAHEAD):
            if i >= LOOKAHEAD:
                j = (i - LOOKAHEAD) % LOOKAHEAD
                p = idx[i - LOOKAHEAD] if idx != NULL else i - LOOKAHEAD
                if not ok[j]:
                    out[p] = CLASS_UNPARSEABLE_C
                else:
                    e = &entries[slot[j]]
                    if e.table == self.uid and key_eq(&e.key, &keys[j]):
                        hits += 1
                    else:
                        misses += 1
                        e.key = keys[j]
                        e.result = rules_first_match(self.rules, self.nrules, &keys[j])
                        e.table = self.uid
                    out[p] = e.result
            if i < n:
                j = i % LOOKAHEAD
                p = idx[i] if idx != NULL else i
                ok[j] = parse_key(buf + off[p], lens[p], &keys[j])
                if ok[j]:
                    slot[j] = key_hash(&keys[j], cache.seed)
                    fp_prefetch_object(&entries[slot[j]], 1)
        cache.hits += hits
        cache.misses += misses

    def classify(self, packet) -> int:
        """The index of the first rule matching *packet* (an IP packet), CLASS_NONE or
        CLASS_UNPARSEABLE."""
        cdef const uint8_t[::1] v = packet
        cdef int64_t off = 0
        cdef uint32_t n = v.shape[0]
        cdef int32_t out
        if n == 0:
            return CLASS_UNPARSEABLE_C
        self.classify_burst(&v[0], &off, &n, NULL, &out, 1)
        return out

    def classify_batch(self, const uint8_t[::1] buf, const int64_t[::1] offsets,
                       const uint32_t[::1] lengths, int32_t[::1] out):
        """classify() for every packet of a batch, results index for index, without the GIL."""
        cdef Py_ssize_t i, n = offsets.shape[0]
        if lengths.shape[0] != n or out.shape[0] < n:
            raise ValueError("offsets, lengths and out must describe the same number of packets")
        for i in range(n):
            if offsets[i] < 0 or offsets[i] > buf.shape[0] or lengths[i] > buf.shape[0] - offsets[i]:
                raise ValueError(f"packet {i} runs outside the buffer")
        if n == 0:
            return
        with nogil:
            self.classify_burst(&buf[0], &offsets[0], &lengths[0], NULL, &out[0], <uint32_t>n)
