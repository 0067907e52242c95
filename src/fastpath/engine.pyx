"""The engine's packet path: policy (RFC 4301 5.1, 5.2), SA choice and kernel calls for
whole batches, without the GIL.

Outbound, each packet is classified against the outbound SPD (first match, flow cache);
PROTECT packets are grouped by SA and each group goes to its SA's kernel batch call over
the shared buffer (no copies); BYPASS, DISCARD, no policy and no SA get their own statuses.
Inbound, ESP (raw or RFC 3948 UDP) is matched to an SA by the RFC 4301 4.1 longest match,
grouped and decapsulated; the inner packet must then match the SA's selectors (RFC 4301 5.2
step 4). Packets that arrive in clear are classified against the inbound SPD.
"""

from cpython.buffer cimport PyBuffer_Release
from cpython.pythread cimport PyThread_type_lock, PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport calloc, malloc, free
from libc.string cimport memcpy, memset

from fastpath._include.compat cimport fp_load_be16, fp_load_be32, fp_atomic_add
from fastpath.classify cimport (Classifier, flow_key_t, rule_t, parse_key, rule_matches,
                                compile_rules, CLASS_NONE_C, CLASS_UNPARSEABLE_C)
from fastpath.sa cimport (SAState, acquire_array, batch_bufs_t, batch_take, batch_release, batch_check_places,
                          batch_apart, batch_stride)
from fastpath.state cimport sa_t
from fastpath.status cimport Status, N_STATUS
from fastpath.wire cimport *

from fastpath.status import Status as _Status

cdef enum:
    # what an arriving packet is, before any SA is involved
    ARRIVED_ESP = 0
    ARRIVED_CLEAR = 1           # not ESP: the inbound SPD decides
    ARRIVED_KEEPALIVE = 2       # RFC 3948 2.3
    ARRIVED_FRAGMENT = 3        # the IP layer reassembles before ESP (RFC 4303 3.4.1)
    ARRIVED_BAD = 4
    # IKE behind the non-ESP marker (RFC 3948 2.2) on an ESP-in-UDP port: the key manager's,
    # never subject to the SPD (RFC 4301 5.2: IKE is always let through, like strongSwan's
    # socket bypass policies)
    ARRIVED_IKE = 5


cdef inline uint32_t spi_hash(uint32_t spi, uint32_t mask) noexcept nogil:
    return (spi * <uint32_t>2654435761u) >> 7 & mask


cdef class EngineTables:
    """One immutable snapshot of what the packet path needs (built by ipsp.engine).

    outbound: (rule, action, slot or -1) per outbound policy, in match order;
    inbound: (rule, action) per inbound policy, for packets that arrive in clear;
    sas: per slot (SAState, inbound, selector rules, hard_packets, hard_bytes, peer) where
        peer is None or (address bytes, UDP port) of an inbound ESP-in-UDP SA;
    spis: (spi, destination bytes or None, source bytes or None, slot) inbound lookup keys;
    udp_ports: the UDP ports inbound ESP-in-UDP arrives on;
    context: anything; events from batches run on these tables carry it.
    A rule is the tuple fastpath.classify.Classifier takes."""

    def __cinit__(self, outbound=(), inbound=(), sas=(), spis=(), udp_ports=(4500,), context=None):
        cdef Py_ssize_t i, k, nsel = 0, size
        cdef spi_entry_t e
        cdef spi_entry_t *t
        cdef uint32_t h
        outbound, inbound, sas, spis = list(outbound), list(inbound), list(sas), list(spis)
        self.context = context
        if len(udp_ports) > MAX_UDP_PORTS:
            raise ValueError(f"at most {MAX_UDP_PORTS} ESP-in-UDP ports")
        self.out_cls = Classifier([r for r, _, _ in outbound])
        self.in_cls = Classifier([r for r, _ in inbound])
        self.out_action = <uint8_t *>calloc(len(outbound) + 1, 1)
        self.out_slot = <int32_t *>calloc(len(outbound) + 1, sizeof(int32_t))
        self.in_action = <uint8_t *>calloc(len(inbound) + 1, 1)
        self.slots = <slot_t *>calloc(len(sas) + 1, sizeof(slot_t))
        size = 16
        while size < 2 * len(spis):
            size *= 2
        self.spi_tab = <spi_entry_t *>calloc(size, sizeof(spi_entry_t))
        if (self.out_action == NULL or self.out_slot == NULL or self.in_action == NULL
                or self.slots == NULL or self.spi_tab == NULL):
            raise MemoryError()
        self.spi_mask = size - 1
        for i, (_, action, slot) in enumerate(outbound):
            if action not in (ACTION_PROTECT, ACTION_BYPASS, ACTION_DISCARD) or not -1 <= slot < len(sas):
                raise ValueError(f"outbound rule {i}: bad action {action} or slot {slot}")
            self.out_action[i] = action
            self.out_slot[i] = slot
        for i, (_, action) in enumerate(inbound):
            if action not in (ACTION_PROTECT, ACTION_BYPASS, ACTION_DISCARD):
                raise ValueError(f"inbound rule {i}: bad action {action}")
            self.in_action[i] = action
        self.sas = []
        selectors = []
        for i, (state, is_in, rules, hard_packets, hard_bytes, peer) in enumerate(sas):
            if not isinstance(state, SAState):
                raise TypeError(f"slot {i}: expected an SAState, got {type(state).__name__}")
            self.sas.append(state)
            self.slots[i].sa = <PyObject *>state
            self.slots[i].inbound = bool(is_in)
            self.slots[i].sel_start = <int32_t>len(selectors)
            self.slots[i].sel_count = <int32_t>len(rules)
            selectors.extend(rules)
            self.slots[i].hard_packets = hard_packets or 0
            self.slots[i].hard_bytes = hard_bytes or 0
            if peer is not None:
                addr, port = peer
                self.slots[i].udp = 1
                self.slots[i].peer_version = 4 if len(addr) == 4 else 6
                addr16(addr, self.slots[i].peer)
                self.slots[i].peer_port = port
        self.nslots = <int32_t>len(sas)
        self.sel_rules = compile_rules(selectors, &self.nsel)
        for i in range(self.nslots):
            self.slots[i].sel_addr_only = all(
                self.sel_rules[k].proto < 0 and self.sel_rules[k].sport_lo == 0 and self.sel_rules[k].sport_hi == 0xffff
                and self.sel_rules[k].dport_lo == 0 and self.sel_rules[k].dport_hi == 0xffff
                for k in range(self.slots[i].sel_start, self.slots[i].sel_start + self.slots[i].sel_count))
        for spi, dst, src, slot in spis:
            if not 0 <= slot < len(sas) or not self.slots[slot].inbound:
                raise ValueError(f"SPI {spi:#x}: slot {slot} is not an inbound SA")
            memset(&e, 0, sizeof(e))
            e.spi, e.slot = spi, slot
            e.kind = 1 if dst is None else 2 if src is None else 3
            if dst is not None:
                e.version = 4 if len(dst) == 4 else 6
                addr16(dst, e.dst)
            if src is not None:
                addr16(src, e.src)
                self.src_keys = True
            h = spi_hash(e.spi, self.spi_mask)
            while self.spi_tab[h].kind:
                t = &self.spi_tab[h]
                if (t.spi == e.spi and t.kind == e.kind and t.version == e.version
                        and memcmp16(t.dst, e.dst) and memcmp16(t.src, e.src)):
                    raise ValueError(f"SPI {spi:#x}: the same lookup key twice")
                h = (h + 1) & self.spi_mask
            self.spi_tab[h] = e
        for port in udp_ports:
            self.udp_ports[self.nudp] = port
            self.nudp += 1

    def __dealloc__(self):
        free(self.out_action)
        free(self.out_slot)
        free(self.in_action)
        free(self.slots)
        free(self.sel_rules)
        free(self.spi_tab)

    cdef int32_t lookup_spi(self, uint32_t spi, uint8_t version, const uint64_t *dst,
                                   const uint64_t *src) noexcept nogil:
        # every key of one SPI sits on one probe run; the longest that matches wins
        cdef uint32_t h = spi_hash(spi, self.spi_mask)
        cdef const spi_entry_t *e
        cdef int32_t best = -1
        cdef uint8_t best_kind = 0
        while self.spi_tab[h].kind:
            e = &self.spi_tab[h]
            if e.spi == spi and e.kind > best_kind and (
                    e.kind == 1 or (e.version == version and memcmp16(e.dst, dst)
                                    and (e.kind == 2 or memcmp16(e.src, src)))):
                best, best_kind = e.slot, e.kind
            h = (h + 1) & self.spi_mask
        return best


cdef int addr16(object addr, uint64_t *w) except -1:
    # an address as it sits in a flow key: its bytes, zero-padded to 16
    cdef bytes b = bytes(addr)
    if len(b) not in (4, 16):
        raise ValueError(f"an address is 4 or 16 bytes, got {len(b)}")
    b = b.ljust(16, b"\0")
    memcpy(w, <const char *>b, 16)
    return 0


cdef inline bint memcmp16(const uint64_t *a, const uint64_t *b) noexcept nogil:
    return ((a[0] ^ b[0]) | (a[1] ^ b[1])) == 0


cdef inline void addr_words(const uint8_t *p, uint8_t version, uint64_t *w) noexcept nogil:
    cdef uint32_t a32
    if version == 4:
        memcpy(&a32, p, 4)
        w[0] = a32
        w[1] = 0
    else:
        memcpy(w, p, 16)


cdef inline int arrived(EngineTables t, const uint8_t *p, uint32_t n, uint32_t *spi,
                        uint8_t *version, uint64_t *dst, uint64_t *src, uint16_t *sport) noexcept nogil:
    """Classify an arriving IP packet and, for ESP, find its SPI and addresses. The kernel
    validates the rest once the SA is known."""
    cdef uint32_t off, ihl, k
    cdef uint8_t nh
    cdef uint16_t dport
    if n >= IPV4_HDR_MIN and p[0] >> 4 == 4:
        ihl = (p[0] & 0x0f) * 4
        if ihl < IPV4_HDR_MIN or ihl > n:
            return ARRIVED_BAD
        if fp_load_be16(p + 6) & (IPV4_MF | IPV4_FRAG_OFFSET_MASK):
            return ARRIVED_FRAGMENT
        version[0] = 4
        addr_words(p + 16, 4, dst)
        addr_words(p + 12, 4, src)
        nh = p[9]
        off = ihl
    elif n >= IPV6_HDR_LEN and p[0] >> 4 == 6:
        version[0] = 6
        addr_words(p + 24, 6, dst)
        addr_words(p + 8, 6, src)
        nh = p[6]
        off = IPV6_HDR_LEN
        while nh == IPPROTO_HOPOPTS or nh == IPPROTO_ROUTING or nh == IPPROTO_DSTOPTS or nh == IPPROTO_FRAGMENT:
            if nh == IPPROTO_FRAGMENT:
                return ARRIVED_FRAGMENT
            if off + 8 > n:
                return ARRIVED_BAD
            nh = p[off]
            off += (p[off + 1] + 1) * 8
    else:
        return ARRIVED_BAD
    sport[0] = 0
    if nh == IPPROTO_ESP:
        if off + 4 > n:
            return ARRIVED_BAD
        spi[0] = fp_load_be32(p + off)
        return ARRIVED_ESP
    if nh == IPPROTO_UDP and off + UDP_HDR_LEN <= n:
        dport = fp_load_be16(p + off + 2)
        for k in range(t.nudp):
            if dport == t.udp_ports[k]:
                sport[0] = fp_load_be16(p + off)
                off += UDP_HDR_LEN
                if n - off == 1 and p[off] == 0xff:
                    return ARRIVED_KEEPALIVE
                if n - off < 4:
                    return ARRIVED_CLEAR
                if fp_load_be32(p + off) == 0:
                    return ARRIVED_IKE
                spi[0] = fp_load_be32(p + off)
                return ARRIVED_ESP
    return ARRIVED_CLEAR


cdef int scratch_alloc(scratch_t *s, uint32_t n, uint32_t groups) noexcept nogil:
    # the slot hash holds at most min(n, slots) keys: sized by that, in 64 bits, so a batch
    # of 2**31 packets can neither wrap the doubling (it spun forever) nor size it absurdly
    cdef uint64_t hs = 16, keys = groups if groups < n else n
    cdef uint8_t *b
    while hs < 2 * keys:
        hs *= 2
    if hs > <uint64_t>1 << 31:
        return -1
    b = <uint8_t *>malloc(<size_t>n * 28 + <size_t>hs * 8 + 64)
    if b == NULL:
        return -1
    s.block = b
    s.slot_of = <int32_t *>b
    s.order = <uint32_t *>(b + <size_t>n * 4)
    s.grouped = <uint32_t *>(b + <size_t>n * 8)
    s.gid = <uint32_t *>(b + <size_t>n * 12)
    s.gslot = <int32_t *>(b + <size_t>n * 16)
    s.gstart = <uint32_t *>(b + <size_t>n * 20)
    s.gcount = <uint32_t *>(b + <size_t>n * 24)
    s.hkey = <int32_t *>(b + <size_t>n * 28)
    s.hval = <uint32_t *>(b + <size_t>n * 28 + <size_t>hs * 4)
    s.hsize = <uint32_t>hs
    return 0


cdef uint32_t group_by_slot(scratch_t *s, uint32_t m) noexcept nogil:
    """Group the m packets of s.order by their slot (a counting sort keyed through a small
    hash of the slots present); returns the number of groups. Arrival order is kept within
    a group, so each SA sees its packets in sequence."""
    cdef uint32_t j, h, g, ngroups = 0, mask = s.hsize - 1
    cdef int32_t slot
    memset(s.hkey, 0xff, s.hsize * sizeof(int32_t))
    for j in range(m):
        slot = s.slot_of[s.order[j]]
        h = (<uint32_t>slot * <uint32_t>2654435761u) & mask
        while s.hkey[h] != slot and s.hkey[h] != -1:
            h = (h + 1) & mask
        if s.hkey[h] == -1:
            s.hkey[h] = slot
            s.hval[h] = ngroups
            s.gslot[ngroups] = slot
            s.gcount[ngroups] = 0
            ngroups += 1
        g = s.hval[h]
        s.gid[j] = g
        s.gcount[g] += 1
    h = 0
    for g in range(ngroups):
        s.gstart[g] = h
        h += s.gcount[g]
        s.gcount[g] = 0
    for j in range(m):
        g = s.gid[j]
        s.grouped[s.gstart[g] + s.gcount[g]] = s.order[j]
        s.gcount[g] += 1
    return ngroups


cdef inline uint32_t past_hard_limit(const slot_t *slot, uint32_t cnt, const uint32_t *idx,
                                     uint8_t *status, bint outbound) noexcept nogil:
    """How many of the cnt packets the SA may still take before its hard lifetime (RFC 4301
    4.4.2.1); the rest get SA_DEAD. Counters are read without the SA's lock: they only grow,
    and the worst case is one batch over the byte limit."""
    cdef sa_t *c = &(<SAState>slot.sa).c
    cdef uint64_t used = c.out_count[0] if outbound else c.in_count[0]
    cdef uint64_t nbytes = c.out_bytes if outbound else c.in_bytes
    cdef uint32_t allowed = cnt, k
    if slot.hard_bytes and nbytes >= slot.hard_bytes:
        allowed = 0
    elif slot.hard_packets:
        if used >= slot.hard_packets:
            allowed = 0
        elif slot.hard_packets - used < cnt:
            allowed = <uint32_t>(slot.hard_packets - used)
    for k in range(allowed, cnt):
        status[idx[k]] = Status.SA_DEAD
    return allowed


cdef inline event_t *add_event(event_t *ev, uint32_t *nev, uint8_t kind, int32_t ref,
                               uint32_t packet) noexcept nogil:
    # one event per (kind, ref) per call; NULL when it is already there or there is no room
    cdef uint32_t k
    for k in range(nev[0]):
        if ev[k].kind == kind and ev[k].ref == ref:
            return NULL
    if nev[0] == MAX_EVENTS:
        return NULL
    memset(&ev[nev[0]], 0, sizeof(event_t))
    ev[nev[0]].kind = kind
    ev[nev[0]].ref = ref
    ev[nev[0]].packet = packet
    nev[0] += 1
    return &ev[nev[0] - 1]


cdef inline bint selectors_allow(const rule_t *rules, int32_t n, bint addr_only, const uint8_t *p,
                                 uint32_t len) noexcept nogil:
    # RFC 4301 5.2 step 4: the decapsulated packet must fall under one of the SA's selectors.
    # Selectors of addresses alone (a subnet-to-subnet tunnel) need no look past the IP header.
    cdef flow_key_t key
    cdef uint32_t a32, b32
    cdef int32_t j
    if addr_only:
        if len >= IPV4_HDR_MIN and p[0] >> 4 == 4:
            memcpy(&a32, p + 12, 4)
            memcpy(&b32, p + 16, 4)
            key.w[0], key.w[1], key.w[2], key.w[3], key.w[4] = 4, a32, 0, b32, 0
        elif len >= IPV6_HDR_LEN and p[0] >> 4 == 6:
            key.w[0] = 6
            memcpy(&key.w[1], p + 8, 32)
        else:
            return False
        for j in range(n):
            if (<uint8_t>key.w[0] == rules[j].version
                    and (((key.w[1] & rules[j].mask[0]) ^ rules[j].net[0]) | ((key.w[2] & rules[j].mask[1]) ^ rules[j].net[1])
                         | ((key.w[3] & rules[j].mask[2]) ^ rules[j].net[2])
                         | ((key.w[4] & rules[j].mask[3]) ^ rules[j].net[3])) == 0):
                return True
        return False
    if not parse_key(p, len, &key):
        return False
    for j in range(n):
        if rule_matches(&rules[j], &key):
            return True
    return False


cdef class EngineCore:
    """Runs batches against the current EngineTables; any number of threads may call it at
    once (each SA's kernel state has its own lock; the tables are immutable)."""

    def __cinit__(self):
        self.tables = EngineTables()

    def load(self, EngineTables tables not None):
        """Publish new tables; batches already running finish on the old ones."""
        self.tables = tables

    def counters(self):
        """The engine's own decisions and drops per direction, by status name (the kernel's
        per-SA counters hold the rest)."""
        return {"out": {_Status(k).name: self.out_count[k] for k in range(N_STATUS) if self.out_count[k]},
                "in": {_Status(k).name: self.in_count[k] for k in range(N_STATUS) if self.in_count[k]}}

    def outbound(self, buf, offsets, lengths, status, stride, *, slots=None):
        """Apply the outbound SPD to a batch laid out as for SAState.encap_batch (packet i in
        slot i of *stride* bytes) and encapsulate what it protects, in place. status[i] gets
        OK (encapsulated), BYPASS (send unchanged) or why it was dropped; slots[i] (int32,
        optional) the SA slot used or -1. Returns the number encapsulated."""
        return self._run(buf, offsets, lengths, status, batch_stride(stride), slots, True)

    def inbound(self, buf, offsets, lengths, status, *, slots=None):
        """Process arriving IP packets: ESP is matched to its SA, decapsulated in place and
        checked against the SA's selectors; packets in clear meet the inbound SPD. status[i]
        gets OK (decapsulated), BYPASS (accept as it is) or why it was dropped. Returns the
        number decapsulated."""
        return self._run(buf, offsets, lengths, status, 0, slots, False)

    cdef object _run(self, object buf, object offsets, object lengths, object status,
                     Py_ssize_t stride, object slots, bint outbound):
        cdef EngineTables t = self.tables       # this call's snapshot
        cdef batch_bufs_t b
        cdef Py_buffer vx
        cdef bint have_slots = False
        cdef uint32_t j, ok = 0, nev = 0
        cdef int32_t *slot_out = NULL
        cdef event_t ev[MAX_EVENTS]
        cdef scratch_t s
        batch_take(&b, buf, offsets, lengths, status)
        try:
            if slots is not None:
                acquire_array(slots, &vx, 4, b"iil", "slots")
                have_slots = True
                batch_apart(&b, &vx, "slots")
                if vx.len // 4 < b.n:
                    raise ValueError(f"slots holds {vx.len // 4} entries for {b.n} packets")
                slot_out = <int32_t *>vx.buf
            batch_check_places(&b, stride, NULL, b.n)
            if b.n == 0:
                return 0
            if scratch_alloc(&s, b.n, <uint32_t>t.nslots) != 0:
                raise MemoryError()
            try:
                with nogil:
                    if outbound:
                        ok = self.outbound_c(t, b.data, b.size, b.off, b.lens, b.status, b.n, stride,
                                             slot_out, &s, ev, &nev)
                    else:
                        ok = self.inbound_c(t, b.data, b.size, b.off, b.lens, b.status, b.n, slot_out,
                                            &s, ev, &nev)
            finally:
                free(s.block)
            for j in range(nev):
                self._report(t, &ev[j], b.data, b.off, b.lens)
            return ok
        finally:
            if have_slots:
                PyBuffer_Release(&vx)
            batch_release(&b)

    cdef void _report(self, EngineTables t, const event_t *e, const uint8_t *buf,
                      const int64_t *off, const uint32_t *lens):
        # runs with the GIL after the batch; the handlers (ipsp.engine) catch their own errors
        if e.kind == EVENT_ACQUIRE and self.on_acquire is not None:
            self.on_acquire(t.context, e.ref, (<const char *>(buf + off[e.packet]))[:lens[e.packet]])
        elif e.kind == EVENT_MAPPING and self.on_mapping is not None:
            self.on_mapping(t.context, e.ref, (<const char *>e.addr)[:4 if e.version == 4 else 16], e.port)

    cdef uint32_t outbound_c(self, EngineTables t, uint8_t *buf, size_t buflen, int64_t *off,
                             uint32_t *lens, uint8_t *status, uint32_t n, size_t stride,
                             int32_t *slot_out, scratch_t *s, event_t *ev, uint32_t *nev) noexcept nogil:
        cdef uint32_t i, m = 0, g, ngroups, allowed, ok = 0
        cdef int32_t r, slot, first = -1
        cdef bint one_sa = True
        cdef uint64_t counts[N_STATUS]
        cdef uint8_t st
        cdef const slot_t *sl
        memset(counts, 0, sizeof(counts))
        t.out_cls.classify_burst(buf, off, lens, NULL, s.slot_of, n)
        for i in range(n):
            r = s.slot_of[i]
            slot = -1
            if r < 0:
                st = Status.NO_POLICY if r == CLASS_NONE_C else Status.BAD_INNER
            elif t.out_action[r] == ACTION_PROTECT:
                slot = t.out_slot[r]
                if slot < 0:
                    st = Status.NO_SA
                    add_event(ev, nev, EVENT_ACQUIRE, r, i)
            else:
                st = Status.BYPASS if t.out_action[r] == ACTION_BYPASS else Status.POLICY_DISCARD
            s.slot_of[i] = slot
            if slot_out != NULL:
                slot_out[i] = slot
            if slot >= 0:
                s.order[m] = i
                m += 1
                if first < 0:
                    first = slot
                one_sa = one_sa and slot == first
            else:
                status[i] = st
                counts[st] += 1
        if m == n and one_sa:
            # the common case, one SA for the whole batch: the kernel's own loop, no index
            sl = &t.slots[first]
            allowed = past_hard_limit(sl, m, s.order, status, True)
            if allowed == m:
                ok = (<SAState>sl.sa).encap_burst_c(buf, buflen, off, lens, status, m, stride)
            else:
                counts[<int>Status.SA_DEAD] += m - allowed
                ok = (<SAState>sl.sa).encap_burst_c(buf, buflen, off, lens, status, allowed, stride, s.order)
        elif m:
            ngroups = group_by_slot(s, m)
            for g in range(ngroups):
                sl = &t.slots[s.gslot[g]]
                allowed = past_hard_limit(sl, s.gcount[g], s.grouped + s.gstart[g], status, True)
                counts[<int>Status.SA_DEAD] += s.gcount[g] - allowed
                ok += (<SAState>sl.sa).encap_burst_c(buf, buflen, off, lens, status, allowed, stride,
                                                    s.grouped + s.gstart[g])
        for i in range(N_STATUS):
            if counts[i]:
                fp_atomic_add(&self.out_count[i], counts[i])
        return ok

    cdef uint32_t inbound_c(self, EngineTables t, uint8_t *buf, size_t buflen, int64_t *off,
                            uint32_t *lens, uint8_t *status, uint32_t n, int32_t *slot_out,
                            scratch_t *s, event_t *ev, uint32_t *nev) noexcept nogil:
        cdef uint32_t i, j, k, m = 0, nclear = 0, g, ngroups, allowed, cnt, ok = 0, mismatched
        cdef uint32_t spi, last_spi = 0       # SPI 0 is reserved (RFC 4303 2.1): never a match
        cdef int32_t slot, r, last_slot = -1, first = -1
        cdef uint8_t version, st, last_version = 0
        cdef uint64_t last_dst[2]
        cdef uint64_t last_src[2]
        cdef bint one_sa = True
        cdef uint16_t sport
        cdef uint64_t dst[2]
        cdef uint64_t src[2]
        cdef uint64_t counts[N_STATUS]
        cdef uint64_t mismatched_bytes
        cdef const slot_t *sl
        cdef const uint32_t *idx
        cdef event_t *e
        cdef sa_t *c
        cdef PyThread_type_lock lock
        memset(counts, 0, sizeof(counts))
        # 1. what arrived: ESP for an SA, or something the SPD or the IP layer deals with.
        # Packets in clear are collected at the end of order[] (it has room for n).
        for i in range(n):
            slot = -1
            k = arrived(t, buf + off[i], lens[i], &spi, &version, dst, src, &sport)
            if k == ARRIVED_ESP:
                # packets of one SA come in runs: the previous answer, if the key is the same
                if (spi == last_spi and version == last_version and memcmp16(dst, last_dst)
                        and (not t.src_keys or memcmp16(src, last_src))):
                    slot = last_slot
                else:
                    slot = t.lookup_spi(spi, version, dst, src)
                    last_spi, last_version, last_slot = spi, version, slot
                    last_dst[0], last_dst[1], last_src[0], last_src[1] = dst[0], dst[1], src[0], src[1]
                if slot < 0:
                    st = Status.UNKNOWN_SPI
                else:
                    s.order[m] = i
                    m += 1
                    if first < 0:
                        first = slot
                    one_sa = one_sa and slot == first
                    sl = &t.slots[slot]
                    if sl.udp and (sport != sl.peer_port or not memcmp16(src, sl.peer)):
                        # noted now (the outer header goes with decapsulation), reported only
                        # if the packet authenticates (RFC 7296 2.23)
                        e = add_event(ev, nev, EVENT_MAPPING, slot, i)
                        if e != NULL:
                            e.version, e.port, e.addr[0], e.addr[1] = version, sport, src[0], src[1]
            elif k == ARRIVED_CLEAR:
                nclear += 1
                s.order[n - nclear] = i
                st = Status.NOT_PROCESSED      # decided below
            else:
                st = (Status.NAT_KEEPALIVE if k == ARRIVED_KEEPALIVE else Status.BYPASS if k == ARRIVED_IKE else
                      Status.FRAGMENT if k == ARRIVED_FRAGMENT else Status.BAD_IP_HEADER)
            s.slot_of[i] = slot
            if slot_out != NULL:
                slot_out[i] = slot
            if slot < 0 and k != ARRIVED_CLEAR:
                status[i] = st
                counts[st] += 1
        # 2. packets in clear: RFC 4301 5.2 step 3a, the inbound SPD
        if nclear:
            idx = s.order + n - nclear
            t.in_cls.classify_burst(buf, off, lens, idx, s.slot_of, nclear)
            for j in range(nclear):
                i = idx[j]
                r = s.slot_of[i]
                s.slot_of[i] = -1
                if r == CLASS_UNPARSEABLE_C:
                    st = Status.BAD_IP_HEADER
                elif r == CLASS_NONE_C:
                    st = Status.NO_POLICY
                else:
                    st = (Status.BYPASS if t.in_action[r] == ACTION_BYPASS else
                          Status.POLICY_DISCARD if t.in_action[r] == ACTION_DISCARD else Status.UNPROTECTED)
                status[i] = st
                counts[st] += 1
        # 3. ESP, grouped by SA; then each decapsulated packet against its SA's selectors
        if m:
            if one_sa:
                # one SA for everything: no grouping, and the arrival order is the order
                ngroups = 1
                s.gslot[0], s.gstart[0], s.gcount[0] = first, 0, m
                s.grouped, s.order = s.order, s.grouped
            else:
                ngroups = group_by_slot(s, m)
            for g in range(ngroups):
                sl = &t.slots[s.gslot[g]]
                c = &(<SAState>sl.sa).c
                idx = s.grouped + s.gstart[g]
                cnt = s.gcount[g]
                allowed = past_hard_limit(sl, cnt, idx, status, False)
                counts[<int>Status.SA_DEAD] += cnt - allowed
                if allowed == n:      # every packet of the call, in order: the kernel's own loop
                    ok += (<SAState>sl.sa).decap_burst_c(buf, buflen, off, lens, status, n, True)
                else:
                    ok += (<SAState>sl.sa).decap_burst_c(buf, buflen, off, lens, status, allowed, True, idx)
                if sl.sel_count == 0:
                    continue
                mismatched = 0
                mismatched_bytes = 0
                for k in range(allowed):
                    i = idx[k]
                    if status[i] != Status.OK:
                        continue
                    if not selectors_allow(t.sel_rules + sl.sel_start, sl.sel_count, sl.sel_addr_only, buf + off[i], lens[i]):
                        status[i] = Status.POLICY_MISMATCH
                        mismatched += 1
                        mismatched_bytes += lens[i]
                if mismatched:
                    # authentic, so the kernel counted them; they move to their own counter
                    ok -= mismatched
                    lock = (<SAState>sl.sa)._lock
                    PyThread_acquire_lock(lock, WAIT_LOCK)
                    c.in_count[<int>Status.OK] -= mismatched
                    c.in_count[<int>Status.POLICY_MISMATCH] += mismatched
                    c.in_bytes -= mismatched_bytes
                    PyThread_release_lock(lock)
        # mappings stand only for packets that authenticated
        j = 0
        for k in range(nev[0]):
            if ev[k].kind != EVENT_MAPPING or status[ev[k].packet] == Status.OK:
                ev[j] = ev[k]
                j += 1
        nev[0] = j
        for i in range(N_STATUS):
            if counts[i]:
                fp_atomic_add(&self.in_count[i], counts[i])
        return ok
