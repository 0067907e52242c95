"""Record walking for capture files in C: the per-packet half of ipsp.pcap.

ipsp.pcap parses the rare headers (the pcap file header, pcapng Section Header and Interface
Description Blocks) in Python and lets a Walker index the records in between. For every
packet the walker appends, without a Python object per packet, where its bytes are, its
captured and original lengths, its timestamp in ns, its link type and where its IP header
is. It stops at the first record that is not wholly in the buffer, so that the caller can
read more (streaming) or report a truncated tail, and raises Damaged for malformed records.

Layouts: draft-ietf-opsawg-pcap sections 4 and 5 (file header, packet record),
draft-ietf-opsawg-pcapng section 3 (block framing) and 4.3-4.5 (EPB, SPB, PB); link types
per https://www.tcpdump.org/linktypes.html.
"""

from cpython cimport array
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

import array as _array

cdef extern from *:
    """
    #include <string.h>
    /* Fields are in the byte order of the file (pcap) or section (pcapng), not the host's. */
    static inline uint32_t cap_ld32(const uint8_t *p, int big) {
        uint32_t v; memcpy(&v, p, 4);
    #if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        return big ? __builtin_bswap32(v) : v;
    #else
        return big ? v : __builtin_bswap32(v);
    #endif
    }
    static inline uint16_t cap_ld16(const uint8_t *p, int big) {
        uint16_t v; memcpy(&v, p, 2);
    #if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        return big ? __builtin_bswap16(v) : v;
    #else
        return big ? v : __builtin_bswap16(v);
    #endif
    }
    /* ns = (units * mul / div >> shift) + offset_s seconds, in 128 bits: an EPB counts up to
       2**64 units and if_tsoffset is any int64 of seconds, so the exact value can exceed
       int64 and must be refused, not wrapped. div 0 stands for a divisor beyond 2**64,
       which brings every count to 0. Returns -1 when the result does not fit int64. */
    static inline int cap_units_to_ns(uint64_t units, uint64_t mul, uint64_t div, unsigned shift,
                                      int64_t offset_s, int64_t *out) {
        unsigned __int128 q = (unsigned __int128)units * mul;
        if (div != 1) q = div ? q / div : 0;
        __int128 ns = (__int128)(q >> shift) + (__int128)offset_s * 1000000000;
        if (ns < INT64_MIN || ns > INT64_MAX) return -1;
        *out = (int64_t)ns;
        return 0;
    }
    """
    uint32_t cap_ld32(const uint8_t *p, bint big) noexcept nogil
    uint16_t cap_ld16(const uint8_t *p, bint big) noexcept nogil
    int cap_units_to_ns(uint64_t units, uint64_t mul, uint64_t div, unsigned shift,
                        int64_t offset_s, int64_t *out) noexcept nogil

# Why a walk returned: the buffer is used up, an SHB or IDB for the caller starts at the
# returned position, or the record there is not wholly in the buffer.
END = 0
BLOCK = 1
SHORT = 2

cdef enum:
    NS_PER_S = 1000000000
    PCAP_RECORD = 16
    BT_SHB = 0x0A0D0D0A
    BT_IDB = 1
    BT_PB = 2
    BT_SPB = 3
    BT_EPB = 6
    MIN_EPB = 32       # 12 bytes of framing plus the fixed fields
    MIN_PB = 32
    MIN_SPB = 16
    GROW_FIRST = 4096


class Damaged(Exception):
    """A malformed record; ``offset`` is relative to the buffer walked."""

    def __init__(self, offset, what):
        super().__init__(offset, what)
        self.offset = offset
        self.what = what


# ---------------------------------------------------------------- where the IP header is

cdef inline int ethertype_family(uint16_t ethertype) noexcept nogil:
    if ethertype == 0x0800:
        return 4
    if ethertype == 0x86DD:
        return 6
    return 0


cdef inline int64_t checked(const uint8_t *f, uint32_t n, uint32_t off, int family) noexcept nogil:
    # Trust the link header only when the IP version nibble agrees, so a caller never gets
    # an IP offset for bytes that cannot be that header.
    if family and off < n and (f[off] >> 4) == family:
        return off
    return -1


cdef inline int64_t ethertype_l3(const uint8_t *f, uint32_t n, uint32_t p) noexcept nogil:
    """Follow the EtherType at ``p`` through any stacked VLAN tags (802.1Q, 802.1ad, old QinQ)."""
    cdef uint16_t ethertype
    while True:
        if p + 2 > n:
            return -1
        ethertype = cap_ld16(f + p, True)
        if ethertype != 0x8100 and ethertype != 0x88A8 and ethertype != 0x9100:
            return checked(f, n, p + 2, ethertype_family(ethertype))
        p += 4      # this TPID and its TCI; the next EtherType follows


cdef inline int af_family(uint32_t af) noexcept nogil:
    # AF_INET is 2 everywhere; AF_INET6 differs per OS (Linux 10, the BSDs 24, FreeBSD 28,
    # Darwin 30) and a capture may come from any of them.
    if af == 2:
        return 4
    if af == 10 or af == 24 or af == 28 or af == 30:
        return 6
    return 0


cdef int64_t l3_offset(const uint8_t *f, uint32_t n, uint16_t linktype) noexcept nogil:
    """Offset of the IPv4/IPv6 header within a frame, or -1 when it carries none we can find."""
    cdef uint32_t af
    if linktype == 1:                           # LINKTYPE_ETHERNET
        return ethertype_l3(f, n, 12)
    if linktype == 101:                         # LINKTYPE_RAW: either version
        if n >= 1 and ((f[0] >> 4) == 4 or (f[0] >> 4) == 6):
            return 0
        return -1
    if linktype == 228:                         # LINKTYPE_IPV4
        return checked(f, n, 0, 4)
    if linktype == 229:                         # LINKTYPE_IPV6
        return checked(f, n, 0, 6)
    if linktype == 113:                         # LINKTYPE_LINUX_SLL
        # libpcap reinserts stripped VLAN tags after the cooked header: same tag walk
        return ethertype_l3(f, n, 14)
    if linktype == 276:                         # LINKTYPE_LINUX_SLL2: protocol first
        if n < 20:
            return -1
        return checked(f, n, 20, ethertype_family(cap_ld16(f, True)))
    if linktype == 0 or linktype == 108:        # LINKTYPE_NULL, LINKTYPE_LOOP
        if n < 4:
            return -1
        af = cap_ld32(f, True)
        if linktype == 0:
            # "host order" of a machine we cannot know; the AF values are small, so a
            # value with only high bits set is byte-swapped
            af = cap_ld32(f, False)
            if (af >> 16) != 0 and (af & 0xFFFF) == 0:
                af = cap_ld32(f, True)
        return checked(f, n, 4, af_family(af))
    return -1


def l3_offset_of(const uint8_t[::1] frame, uint16_t linktype):
    """l3 offset of one frame (-1: none), for tests and one-off callers."""
    if frame.shape[0] == 0:
        return -1
    return l3_offset(&frame[0], <uint32_t>frame.shape[0], linktype)


# ---------------------------------------------------------------- the walker

cdef struct iface_t:
    uint16_t linktype
    uint32_t snaplen
    uint64_t mul          # ns = units * mul / div >> shift, plus offset_s seconds
    uint64_t div
    uint32_t shift
    int64_t offset_s


cdef inline uint64_t pow10(uint32_t e) noexcept nogil:
    cdef uint64_t v = 1
    while e:
        v *= 10
        e -= 1
    return v


cdef class Walker:
    """Indexes records into growable columns (array.array, taken with ``take()``).

    Holds what outlives one buffer when a file is read in chunks: the byte order, the pcap
    limits and the current pcapng section's interfaces.
    """

    cdef array.array _off, _cap, _orig, _ts, _lt, _l3o, _l3l
    cdef int64_t *p_off
    cdef uint32_t *p_cap
    cdef uint32_t *p_orig
    cdef int64_t *p_ts
    cdef uint16_t *p_lt
    cdef int64_t *p_l3o
    cdef uint32_t *p_l3l
    cdef Py_ssize_t n, capacity

    cdef readonly int stop              # END, BLOCK or SHORT: why the last walk returned
    cdef readonly str missing           # SHORT: what of the record is missing
    cdef readonly Py_ssize_t need       # SHORT: bytes the record needs in all (header included)
    cdef readonly Py_ssize_t block_len  # BLOCK: total length of the SHB or IDB
    cdef readonly bint big_endian       # byte order of the pcap file or current pcapng section

    cdef uint64_t max_block
    cdef uint32_t pcap_limit, pcap_snaplen, pcap_frac_ns
    cdef uint16_t pcap_linktype
    cdef iface_t *ifaces
    cdef Py_ssize_t n_ifaces, ifaces_cap

    def __cinit__(self, uint64_t max_block_length):
        self.max_block = max_block_length
        self._new_columns()

    def __dealloc__(self):
        PyMem_Free(self.ifaces)

    # -- columns

    cdef _new_columns(self):
        self._off = _array.array("q")
        self._cap = _array.array("I")
        self._orig = _array.array("I")
        self._ts = _array.array("q")
        self._lt = _array.array("H")
        self._l3o = _array.array("q")
        self._l3l = _array.array("I")
        self.n = 0
        self.capacity = 0

    cdef int _resize(self, Py_ssize_t capacity) except -1:
        # The arrays stay private until take(), so their size can run ahead of the count.
        array.resize(self._off, capacity)
        array.resize(self._cap, capacity)
        array.resize(self._orig, capacity)
        array.resize(self._ts, capacity)
        array.resize(self._lt, capacity)
        array.resize(self._l3o, capacity)
        array.resize(self._l3l, capacity)
        self.capacity = capacity
        self.p_off = <int64_t *>self._off.data.as_voidptr
        self.p_cap = <uint32_t *>self._cap.data.as_voidptr
        self.p_orig = <uint32_t *>self._orig.data.as_voidptr
        self.p_ts = <int64_t *>self._ts.data.as_voidptr
        self.p_lt = <uint16_t *>self._lt.data.as_voidptr
        self.p_l3o = <int64_t *>self._l3o.data.as_voidptr
        self.p_l3l = <uint32_t *>self._l3l.data.as_voidptr
        return 0

    def reserve(self, Py_ssize_t packets):
        """Room for this many packets in all, so a good guess saves regrowing."""
        if packets > self.capacity:
            self._resize(packets)

    @property
    def count(self):
        return self.n

    def take(self):
        """The columns so far, cut to the count: (offsets, caplens, origlens, timestamps,
        linktypes, l3_offsets, l3_lengths). The walker starts new, empty ones."""
        self._resize(self.n)
        out = (self._off, self._cap, self._orig, self._ts, self._lt, self._l3o, self._l3l)
        self._new_columns()
        return out

    cdef inline int _push(self, Py_ssize_t data, uint32_t caplen, uint32_t origlen, int64_t ts,
                          uint16_t linktype, const uint8_t *frame) except -1:
        cdef Py_ssize_t i = self.n
        cdef int64_t l3
        if i == self.capacity:
            self._resize(max(GROW_FIRST, 2 * self.capacity))
        l3 = l3_offset(frame, caplen, linktype)
        self.p_off[i] = data
        self.p_cap[i] = caplen
        self.p_orig[i] = origlen
        self.p_ts[i] = ts
        self.p_lt[i] = linktype
        if l3 < 0:
            self.p_l3o[i] = -1
            self.p_l3l[i] = 0
        else:
            self.p_l3o[i] = data + l3
            self.p_l3l[i] = caplen - <uint32_t>l3
        self.n = i + 1
        return 0

    cdef Py_ssize_t _short(self, Py_ssize_t pos, Py_ssize_t need, str what):
        self.stop = SHORT
        self.need = need
        self.missing = what
        return pos

    cdef Py_ssize_t _end(self, Py_ssize_t pos):
        self.stop = END
        self.need = 0
        self.missing = None
        return pos

    # -- classic pcap

    def set_pcap(self, bint big_endian, bint nanosecond, uint16_t linktype, uint32_t limit, uint32_t snaplen):
        """Parameters from the file header: every record has this byte order and link type."""
        self.big_endian = big_endian
        self.pcap_frac_ns = 1 if nanosecond else 1000
        self.pcap_linktype = linktype
        self.pcap_limit = limit
        self.pcap_snaplen = snaplen

    def pcap(self, const uint8_t[::1] buf, Py_ssize_t pos):
        """Index pcap records from ``pos``; returns where the walk stopped (see ``stop``)."""
        cdef Py_ssize_t end = buf.shape[0], data, rem
        cdef const uint8_t *b
        cdef uint32_t caplen
        cdef int64_t ts
        cdef bint big = self.big_endian
        if pos < 0:
            raise ValueError(f"pos must not be negative, got {pos}")
        if pos >= end:
            return self._end(pos)
        b = &buf[0]
        while True:
            rem = end - pos
            if rem == 0:
                return self._end(pos)
            if rem < PCAP_RECORD:
                return self._short(pos, PCAP_RECORD, f"record header cut short ({rem} of {PCAP_RECORD} bytes present)")
            caplen = cap_ld32(b + pos + 8, big)
            # checked before the data is looked for, so a corrupt length is an error
            # rather than a truncated tail
            if caplen > self.pcap_limit:
                raise Damaged(pos + 8, f"captured length {caplen} exceeds limit {self.pcap_limit} "
                                       f"(snaplen {self.pcap_snaplen})")
            data = pos + PCAP_RECORD
            if caplen > end - data:
                return self._short(pos, PCAP_RECORD + caplen, f"packet data cut short ({end - data} of {caplen} bytes present)")
            # both fields are unsigned 32-bit, so this always fits int64
            ts = <int64_t>cap_ld32(b + pos, big) * NS_PER_S + <int64_t>cap_ld32(b + pos + 4, big) * self.pcap_frac_ns
            self._push(data, caplen, cap_ld32(b + pos + 12, big), ts, self.pcap_linktype, b + data)
            pos = data + caplen

    # -- pcapng

    def new_section(self):
        """An SHB was read: interface ids restart at 0 (the byte order was set by the walk)."""
        self.n_ifaces = 0

    def add_interface(self, uint16_t linktype, uint32_t snaplen, uint8_t tsresol, int64_t offset_s):
        """An IDB was read: the next interface id gets these (if_tsresol code, if_tsoffset)."""
        cdef iface_t *grown
        cdef iface_t *f
        cdef uint32_t exp = tsresol & 0x7F
        if self.n_ifaces == self.ifaces_cap:
            grown = <iface_t *>PyMem_Realloc(self.ifaces, (2 * self.ifaces_cap + 4) * sizeof(iface_t))
            if grown == NULL:
                raise MemoryError()
            self.ifaces = grown
            self.ifaces_cap = 2 * self.ifaces_cap + 4
        f = &self.ifaces[self.n_ifaces]
        f.linktype = linktype
        f.snaplen = snaplen
        f.offset_s = offset_s
        f.mul, f.div, f.shift = 1, 1, 0
        if tsresol & 0x80:
            # units of 2**-exp s: scale to ns first so the shift truncates only below a ns
            f.mul, f.shift = NS_PER_S, exp
        elif exp <= 9:
            f.mul = pow10(9 - exp)
        elif exp - 9 <= 19:
            f.div = pow10(exp - 9)
        else:
            f.div = 0            # beyond uint64: any count of such units is under 1 ns
        self.n_ifaces += 1

    def pcapng(self, const uint8_t[::1] buf, Py_ssize_t pos):
        """Index packet blocks from ``pos``, skipping unknown ones; returns where the walk
        stopped (see ``stop``): at the end, at an SHB or IDB for the caller, or short."""
        cdef Py_ssize_t end = buf.shape[0], rem, data, body_end
        cdef const uint8_t *b
        cdef uint32_t btype, blen, trailer, ifid, caplen, origlen, bom
        cdef iface_t *f
        cdef int64_t ts
        cdef bint big = self.big_endian
        if pos < 0:
            raise ValueError(f"pos must not be negative, got {pos}")
        if pos >= end:
            return self._end(pos)
        b = &buf[0]
        while True:
            rem = end - pos
            if rem == 0:
                return self._end(pos)
            if rem < 8:
                return self._short(pos, 8, f"block header cut short ({rem} of 8 bytes present)")
            # The SHB type reads the same in both byte orders, so it is recognised before
            # the new section's order is known (pcapng 4.1).
            btype = cap_ld32(b + pos, big)
            if btype == BT_SHB:
                if rem < 12:
                    return self._short(pos, 12, f"section header cut short ({rem} of 12 bytes present)")
                bom = cap_ld32(b + pos + 8, True)
                if bom == 0x1A2B3C4D:
                    big = True
                elif bom == 0x4D3C2B1A:
                    big = False
                else:
                    raise Damaged(pos + 8, f"bad byte-order magic {(<const char *>b)[pos + 8:pos + 12].hex()} in section header")
                self.big_endian = big
            blen = cap_ld32(b + pos + 4, big)
            if blen % 4:
                raise Damaged(pos + 4, f"block total length {blen} is not a multiple of 4")
            if blen < 12:
                raise Damaged(pos + 4, f"block total length {blen} is less than 12")
            if blen > self.max_block:
                # checked before waiting for the data: a flipped length must not make a
                # reader buffer gigabytes
                raise Damaged(pos + 4, f"block total length {blen} runs past any plausible end of file")
            if blen > rem:
                return self._short(pos, blen, f"block of length {blen} cut short ({rem} bytes present)")
            trailer = cap_ld32(b + pos + blen - 4, big)
            if trailer != blen:
                raise Damaged(pos + blen - 4, f"trailing block length {trailer} differs from leading length {blen}")
            if btype == BT_SHB or btype == BT_IDB:
                self.stop = BLOCK
                self.block_len = blen
                return pos
            body_end = pos + blen - 4

            if btype == BT_EPB or btype == BT_PB:
                # same layout but for a 16-bit interface id and drop count in the PB
                if btype == BT_EPB:
                    if blen < MIN_EPB:
                        raise Damaged(pos + 4, f"enhanced packet block length {blen} is less than {MIN_EPB}")
                    ifid = cap_ld32(b + pos + 8, big)
                else:
                    if blen < MIN_PB:
                        raise Damaged(pos + 4, f"packet block length {blen} is less than {MIN_PB}")
                    ifid = cap_ld16(b + pos + 8, big)
                if ifid >= self.n_ifaces:
                    raise Damaged(pos + 8, f"packet refers to interface {ifid} but the section declares {self.n_ifaces}")
                caplen = cap_ld32(b + pos + 20, big)
                origlen = cap_ld32(b + pos + 24, big)
                data = pos + 28
                if caplen > body_end - data:
                    raise Damaged(pos + 20, f"captured length {caplen} runs past the end of its block ({body_end - data} bytes)")
                f = &self.ifaces[ifid]
                if cap_units_to_ns((<uint64_t>cap_ld32(b + pos + 12, big) << 32) | cap_ld32(b + pos + 16, big),
                                   f.mul, f.div, f.shift, f.offset_s, &ts) < 0:
                    raise Damaged(pos + 12, "timestamp does not fit in 64-bit nanoseconds")
                self._push(data, caplen, origlen, ts, f.linktype, b + data)

            elif btype == BT_SPB:
                if blen < MIN_SPB:
                    raise Damaged(pos + 4, f"simple packet block length {blen} is less than {MIN_SPB}")
                if self.n_ifaces == 0:
                    raise Damaged(pos, "simple packet block before any interface description block")
                f = &self.ifaces[0]
                origlen = cap_ld32(b + pos + 8, big)
                # no captured length: it is the original length cut to interface 0's
                # snaplen, 0 meaning unlimited (pcapng 4.4)
                caplen = origlen if f.snaplen == 0 or origlen < f.snaplen else f.snaplen
                data = pos + 12
                if caplen > body_end - data:
                    raise Damaged(pos + 8, f"packet length {caplen} runs past the end of its block ({body_end - data} bytes)")
                self._push(data, caplen, origlen, 0, f.linktype, b + data)

            # any other block (NRB, ISB, DSB, custom, unknown) is skipped by its length
            pos += blen
