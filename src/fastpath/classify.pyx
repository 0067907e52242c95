"""Policy classification for the engine: which SPD entry a packet falls under, in C.

Policies compile into a table of masked rules, first match wins (RFC 4301 4.4.1: the SPD is
ordered). A per-thread flow cache in front of the table (open addressing on a seeded hash of
the packet's selector fields -> rule index, tagged with the table's uid) makes the per-packet
cost independent of the number of policies for traffic with any flow locality; a miss scans
the table. A packet whose selector fields cannot be read gets CLASS_UNPARSEABLE.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport calloc, malloc, free
from libc.string cimport memcpy, memcmp, memset

from fastpath._include.compat cimport fp_prefetch_line
from fastpath.sa cimport check_places, check_disjoint

CLASS_NONE = CLASS_NONE_C
CLASS_UNPARSEABLE = CLASS_UNPARSEABLE_C

cdef enum:
    CACHE_BITS = 14       # 16384 flows x 64 bytes: 1 MiB, within L2
    SMALL_TABLE = 4       # up to this many rules a scan costs less than hashing into the cache
    CACHE_SIZE = 1 << CACHE_BITS
    GROUP = 32            # keys parsed and their places prefetched together before the lookups

cdef uint32_t _next_uid = 0

cdef extern from "flow_cache.h" nogil:
    # declared here only: one module owns the per-thread caches
    ctypedef struct fp_flow_cache_t:
        uint64_t seed[6]
        uint64_t hits, misses
        void *entries
    fp_flow_cache_t *fp_flow_cache(size_t entries_bytes)


cdef inline uint64_t key_hash(const flow_key_t *k, const uint64_t *seed) noexcept nogil:
    # independent multiplies by random odd constants, folded: short latency, and a flood of
    # chosen flows cannot aim at a bucket without the seed (a collision costs a table scan,
    # never a wrong answer). Its top and middle bits give a flow two places in the cache.
    # An IPv4 key's words 2 and 4 are zero: three words say it all.
    cdef uint64_t h = (k.w[0] * seed[0]) ^ (k.w[1] * seed[1]) ^ (k.w[3] * seed[3])
    if (<uint8_t>k.w[0]) == 6:
        h ^= (k.w[2] * seed[2]) ^ (k.w[4] * seed[4])
    return (h ^ (h >> 29)) * seed[5]


cdef inline bint key_eq(const flow_key_t *a, const flow_key_t *b) noexcept nogil:
    # equal first words mean equal versions, and an IPv4 key's words 2 and 4 are zero
    cdef uint64_t d = (a.w[0] ^ b.w[0]) | (a.w[1] ^ b.w[1]) | (a.w[3] ^ b.w[3])
    if (<uint8_t>a.w[0]) == 6:
        d |= (a.w[2] ^ b.w[2]) | (a.w[4] ^ b.w[4])
    return d == 0


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


cdef inline uint32_t tuple_hash(const uint64_t *key) noexcept nogil:
    # the tables are built from the configuration, not from traffic: no seed needed
    cdef uint64_t h = ((key[0] * <uint64_t>0x9E3779B97F4A7C15ULL) ^ (key[1] * <uint64_t>0xC2B2AE3D27D4EB4FULL)
                       ^ (key[2] * <uint64_t>0x165667B19E3779F9ULL) ^ (key[3] * <uint64_t>0xD6E8FEB86659FD93ULL)
                       ^ (key[4] * <uint64_t>0xFF51AFD7ED558CCDULL))
    return <uint32_t>((h ^ (h >> 31)) >> 17)


cdef inline uint64_t rule_w0_mask(const rule_t *r) noexcept nogil:
    # which of key word 0 a rule pins down: always the version; the protocol if given; each
    # port if it is one value; a full range pins nothing
    cdef uint64_t m = 0xff
    if r.proto >= 0:
        m |= <uint64_t>0xff << 8
    if r.sport_lo == r.sport_hi:
        m |= <uint64_t>0xffff << 16
    if r.dport_lo == r.dport_hi:
        m |= <uint64_t>0xffff << 32
    return m


cdef inline bint rule_is_maskable(const rule_t *r) noexcept nogil:
    return ((r.sport_lo == r.sport_hi or (r.sport_lo == 0 and r.sport_hi == 0xffff))
            and (r.dport_lo == r.dport_hi or (r.dport_lo == 0 and r.dport_hi == 0xffff)))


cdef class Classifier:
    """A compiled, ordered policy table for one direction (immutable)."""

    def __cinit__(self, rules=()):
        global _next_uid
        self.rules = compile_rules(rules, &self.nrules)
        _next_uid += 1                 # under the GIL; 0 never names a table
        self.uid = _next_uid
        self._compile()

    cdef int _compile(self) except -1:
        cdef int32_t i, t
        cdef uint32_t size, h
        cdef const rule_t *r
        cdef uint64_t key[5]
        cdef uint64_t mask[5]
        cdef tuple_t *tp
        groups = {}                    # mask -> rule indices, in rule order
        ranges = []
        for i in range(self.nrules):
            r = &self.rules[i]
            if not rule_is_maskable(r):
                ranges.append(i)
                continue
            m = (rule_w0_mask(r), r.mask[0], r.mask[1], r.mask[2], r.mask[3])
            groups.setdefault(m, []).append(i)
        self.tuples = <tuple_t *>calloc(max(len(groups), 1), sizeof(tuple_t))
        self.ranges = <int32_t *>calloc(max(len(ranges), 1), sizeof(int32_t))
        if self.tuples == NULL or self.ranges == NULL:
            raise MemoryError()
        for i, rule in enumerate(ranges):
            self.ranges[i] = rule
        self.nranges = len(ranges)
        # searched by first rule: once a match is found, tuples whose first rule comes after
        # it cannot hold a better one
        for t, (m, members) in enumerate(sorted(groups.items(), key=lambda g: g[1][0])):
            tp = &self.tuples[t]
            self.ntuples = t + 1
            for k in range(5):
                tp.mask[k] = m[k]
            tp.first_rule = members[0]
            size = 16
            while size < 2 * len(members):
                size *= 2
            tp.entries = <tuple_entry_t *>malloc(size * sizeof(tuple_entry_t))
            if tp.entries == NULL:
                raise MemoryError()
            memset(tp.entries, 0xff, size * sizeof(tuple_entry_t))     # rule -1: empty
            tp.size_mask = size - 1
            for i in members:
                r = &self.rules[i]
                key[0] = (r.version | (<uint64_t>(<uint8_t>r.proto) << 8) | (<uint64_t>r.sport_lo << 16)
                          | (<uint64_t>r.dport_lo << 32)) & tp.mask[0]
                for k in range(4):
                    key[k + 1] = r.net[k]
                h = tuple_hash(key) & tp.size_mask
                while tp.entries[h].rule >= 0 and memcmp(tp.entries[h].key, key, sizeof(key)) != 0:
                    h = (h + 1) & tp.size_mask
                if tp.entries[h].rule < 0:      # an equal selector earlier keeps its place
                    memcpy(tp.entries[h].key, key, sizeof(key))
                    tp.entries[h].rule = i
        return 0

    cdef int32_t lookup(self, const flow_key_t *k) noexcept nogil:
        """The first rule matching k: a probe per tuple, then the rules with port ranges."""
        cdef int32_t t, j, best = 0x7fffffff
        cdef uint32_t h
        cdef uint64_t key[5]
        cdef const tuple_t *tp
        cdef const tuple_entry_t *e
        for t in range(self.ntuples):
            tp = &self.tuples[t]
            if tp.first_rule >= best:
                break
            for j in range(5):
                key[j] = k.w[j] & tp.mask[j]
            h = tuple_hash(key) & tp.size_mask
            while True:
                e = &tp.entries[h]
                if e.rule < 0:
                    break
                if ((e.key[0] ^ key[0]) | (e.key[1] ^ key[1]) | (e.key[2] ^ key[2]) | (e.key[3] ^ key[3])
                        | (e.key[4] ^ key[4])) == 0:
                    if e.rule < best:
                        best = e.rule
                    break
                h = (h + 1) & tp.size_mask
        for j in range(self.nranges):
            if self.ranges[j] >= best:
                break
            if rule_matches(&self.rules[self.ranges[j]], k):
                best = self.ranges[j]
                break
        return best if best != 0x7fffffff else CLASS_NONE_C

    def __dealloc__(self):
        cdef int32_t t
        if self.tuples != NULL:
            for t in range(self.ntuples):
                free(self.tuples[t].entries)
        free(self.tuples)
        free(self.ranges)
        free(self.rules)

    def __len__(self):
        return self.nrules

    cdef void classify_burst(self, const uint8_t *buf, const int64_t *off, const uint32_t *lens,
                             const uint32_t *idx, int32_t *out, uint32_t n) noexcept nogil:
        # Each flow may sit in either of two places (two-choice hashing): a direct-mapped
        # cache would make every pair of flows that share a place evict each other on
        # every packet, a full table scan each time; with two places, and the older entry
        # evicted, a working set well below the cache size stays in it.
        cdef flow_key_t keys[GROUP]
        cdef uint32_t slot[GROUP]
        cdef uint32_t slot2[GROUP]
        cdef bint ok[GROUP]
        cdef uint32_t base, cnt, k, p, hits = 0, misses = 0
        cdef uint64_t h
        cdef cache_entry_t *e
        cdef cache_entry_t *e2
        cdef cache_entry_t *entries
        cdef fp_flow_cache_t *cache = NULL
        if self.nrules > SMALL_TABLE:
            cache = thread_cache()
        if cache == NULL:
            for k in range(n):
                p = idx[k] if idx != NULL else k
                out[p] = (rules_first_match(self.rules, self.nrules, &keys[0])
                          if parse_key(buf + off[p], lens[p], &keys[0]) else CLASS_UNPARSEABLE_C)
            return
        entries = <cache_entry_t *>cache.entries
        base = 0
        while base < n:
            # pass 1: keys, hashes, and both places prefetched for GROUP packets, so the
            # lookups of pass 2 find their lines arriving (DPDK's rte_hash bulk lookup)
            cnt = n - base if n - base < GROUP else GROUP
            for k in range(cnt):
                p = idx[base + k] if idx != NULL else base + k
                ok[k] = parse_key(buf + off[p], lens[p], &keys[k])
                h = key_hash(&keys[k], cache.seed)
                slot[k] = <uint32_t>(h >> (64 - CACHE_BITS))
                slot2[k] = (<uint32_t>(h >> (32 - CACHE_BITS)) & (CACHE_SIZE - 1)) ^ (slot[k] == (<uint32_t>(h >> (32 - CACHE_BITS)) & (CACHE_SIZE - 1)))
                fp_prefetch_line(&entries[slot[k]])
                fp_prefetch_line(&entries[slot2[k]])
            for k in range(cnt):
                p = idx[base + k] if idx != NULL else base + k
                if not ok[k]:
                    out[p] = CLASS_UNPARSEABLE_C
                    continue
                e = &entries[slot[k]]
                e2 = &entries[slot2[k]]
                if e.table == self.uid and key_eq(&e.key, &keys[k]):
                    hits += 1
                elif e2.table == self.uid and key_eq(&e2.key, &keys[k]):
                    hits += 1
                    e = e2
                else:
                    misses += 1
                    if e.table == self.uid and (e2.table != self.uid or e2.stamp < e.stamp):
                        e = e2
                    e.key = keys[k]
                    e.result = self.lookup(&keys[k])
                    e.table = self.uid
                    e.stamp = cache.hits + hits + cache.misses + misses
                out[p] = e.result
            base += cnt
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
        cdef Py_ssize_t n = offsets.shape[0]
        if lengths.shape[0] != n or out.shape[0] < n:
            raise ValueError("offsets, lengths and out must describe the same number of packets")
        if n == 0:
            return
        if n > 0xffffffff:
            raise ValueError(f"{n} packets: a batch is at most {0xffffffff}")
        check_places(buf.shape[0], &offsets[0], &lengths[0], 0, NULL, n)
        # results are written while offsets and lengths are still being read
        check_disjoint(&out[0], out.shape[0] * 4, "out", &offsets[0], n * 8, "offsets")
        check_disjoint(&out[0], out.shape[0] * 4, "out", &lengths[0], n * 4, "lengths")
        with nogil:
            self.classify_burst(&buf[0], &offsets[0], &lengths[0], NULL, &out[0], <uint32_t>n)
