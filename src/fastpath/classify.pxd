# Policy classification (RFC 4301 4.4.1): the selector fields of a packet as a flow key, the
# compiled form of a policy selector, and the first-match table with its flow cache. The
# engine cimports these; fastpath.classify.Classifier is the Python face.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t, int32_t, int64_t
from libc.string cimport memcpy
from fastpath._include.compat cimport fp_load_be16
from fastpath.wire cimport *

cdef enum:
    CLASS_NONE_C = -1           # no policy matched
    CLASS_UNPARSEABLE_C = -2    # not an IP packet whose selector fields can be read

ctypedef struct flow_key_t:
    # w[0]: version | proto << 8 | sport << 16 | dport << 32 (ICMP: type, code);
    # w[1..2]: source address bytes, w[3..4]: destination (IPv4: first 4 bytes, rest zero)
    uint64_t w[5]

ctypedef struct rule_t:
    # a selector compiled to the key's layout: masked address words, a protocol, port ranges
    uint64_t net[4]
    uint64_t mask[4]
    uint8_t version
    int16_t proto               # -1: any
    uint16_t sport_lo, sport_hi, dport_lo, dport_hi


cdef inline bint parse_key(const uint8_t *p, uint32_t n, flow_key_t *k) noexcept nogil:
    # RFC 4301 4.4.1.1 selector fields; ICMP type and code in the port fields (4.4.1.3);
    # non-initial fragments carry no ports, so they match only ranges covering 0 (RFC 4301
    # section 7 treats them as OPAQUE). Words come straight from the packet: bytes stored one
    # by one and read back as words would stall store forwarding on every packet.
    cdef uint32_t off, ihl, a32, b32
    cdef uint64_t sport = 0, dport = 0
    cdef uint8_t nh, version
    cdef bint ports = True
    if n >= IPV4_HDR_MIN and p[0] >> 4 == 4:
        ihl = (p[0] & 0x0f) * 4
        if ihl < IPV4_HDR_MIN or ihl > n:
            return False
        version = 4
        memcpy(&a32, p + 12, 4)
        memcpy(&b32, p + 16, 4)
        k.w[1] = a32
        k.w[2] = 0
        k.w[3] = b32
        k.w[4] = 0
        nh = p[9]
        off = ihl
        ports = (fp_load_be16(p + 6) & IPV4_FRAG_OFFSET_MASK) == 0
    elif n >= IPV6_HDR_LEN and p[0] >> 4 == 6:
        version = 6
        memcpy(&k.w[1], p + 8, 32)
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
    if ports and (nh == IPPROTO_TCP or nh == IPPROTO_UDP or nh == IPPROTO_SCTP) and off + 4 <= n:
        sport = fp_load_be16(p + off)
        dport = fp_load_be16(p + off + 2)
    elif ports and (nh == IPPROTO_ICMP or nh == IPPROTO_ICMPV6) and off + 2 <= n:
        sport = p[off]
        dport = p[off + 1]
    k.w[0] = version | (<uint64_t>nh << 8) | (sport << 16) | (dport << 32)
    return True


cdef inline bint rule_matches(const rule_t *r, const flow_key_t *k) noexcept nogil:
    cdef uint16_t sport = <uint16_t>(k.w[0] >> 16), dport = <uint16_t>(k.w[0] >> 32)
    return ((<uint8_t>k.w[0]) == r.version
            and (r.proto < 0 or r.proto == <uint8_t>(k.w[0] >> 8))
            and r.sport_lo <= sport <= r.sport_hi and r.dport_lo <= dport <= r.dport_hi
            and (((k.w[1] & r.mask[0]) ^ r.net[0]) | ((k.w[2] & r.mask[1]) ^ r.net[1])
                 | ((k.w[3] & r.mask[2]) ^ r.net[2]) | ((k.w[4] & r.mask[3]) ^ r.net[3])) == 0)


cdef inline int32_t rules_first_match(const rule_t *rules, int32_t n, const flow_key_t *k) noexcept nogil:
    cdef int32_t i
    for i in range(n):
        if rule_matches(&rules[i], k):
            return i
    return CLASS_NONE_C


cdef rule_t *compile_rules(object rules, int32_t *count) except NULL


ctypedef struct cache_entry_t:
    # one cache line each (the array is line-aligned): a lookup touches one line
    flow_key_t key
    uint32_t table              # the Classifier.uid that answered; 0: empty
    int32_t result
    uint64_t stamp              # when it was filled: of a flow's two places, the older is evicted
    uint64_t pad


ctypedef struct tuple_entry_t:
    uint64_t key[5]             # a rule's selector values under its tuple's mask
    int32_t rule                # the first rule with exactly these values; -1: empty

ctypedef struct tuple_t:
    # rules that mask the key the same way (prefix lengths, protocol given or not, ports
    # exact or any) in one hash table: a lookup is one probe per tuple, not one test per rule
    uint64_t mask[5]
    int32_t first_rule          # the smallest rule index inside: tuples are searched in this order
    uint32_t size_mask
    tuple_entry_t *entries


cdef class Classifier:
    # immutable once built: a policy change builds a new one, so a running batch keeps a
    # consistent table and cached answers of an older table (another uid) are never used
    cdef rule_t *rules
    cdef int32_t nrules
    cdef uint32_t uid
    cdef tuple_t *tuples        # the compiled lookup (tuple space search, as Open vSwitch's
    cdef int32_t ntuples        # classifier), used when the flow cache misses
    cdef int32_t *ranges        # rules whose port ranges no mask can express, scanned in order
    cdef int32_t nranges

    cdef int _compile(self) except -1
    cdef int32_t lookup(self, const flow_key_t *k) noexcept nogil

    # out[idx[i]] (out[i] without idx) = the rule of packet idx[i], for n packets, using
    # the calling thread's flow cache
    cdef void classify_burst(self, const uint8_t *buf, const int64_t *off, const uint32_t *lens,
                             const uint32_t *idx, int32_t *out, uint32_t n) noexcept nogil
