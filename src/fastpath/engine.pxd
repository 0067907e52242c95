# The engine's packet path: policy, SA choice and kernel calls for whole batches, in C.
# ipsp.engine.Engine builds an EngineTables from its databases on every change and swaps it
# into the EngineCore in one reference assignment; a running batch keeps the tables it
# started with, so it never sees half an update (and a rekey's outbound switch is atomic).

from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from fastpath.classify cimport Classifier, rule_t
from fastpath.status cimport N_STATUS

cdef enum:
    # ipsp.spd.Action
    ACTION_PROTECT = 0
    ACTION_BYPASS = 1
    ACTION_DISCARD = 2
    MAX_UDP_PORTS = 8           # ports inbound ESP-in-UDP may arrive on (RFC 3948: 4500)
    MAX_EVENTS = 32             # events one call reports; the next batch raises the rest again
    EVENT_ACQUIRE = 1
    EVENT_MAPPING = 2

ctypedef struct slot_t:
    # one SA as the engine sees it, beside its kernel state
    PyObject *sa                # the SAState, borrowed from EngineTables.sas
    int32_t sel_start           # inbound: its selectors, sel_rules[sel_start : + sel_count];
    int32_t sel_count           #   none means it may carry any inner packet
    uint8_t sel_addr_only       # its selectors name addresses only: no need to parse further
    uint64_t hard_packets       # hard lifetime: 0 for none; past it the engine stops using the
    uint64_t hard_bytes         #   SA at once, before the key manager's next tick deletes it
    uint8_t inbound
    uint8_t udp                 # inbound ESP-in-UDP: report a mapping if the peer moves
    uint8_t peer_version
    uint16_t peer_port
    uint64_t peer[2]            # the peer's address in flow-key layout

ctypedef struct spi_entry_t:
    # RFC 4301 4.1 lookup keys: SPI alone, SPI + destination, SPI + destination + source
    uint64_t dst[2]
    uint64_t src[2]
    uint32_t spi
    uint8_t kind                # 0 empty, 1 SPI, 2 + destination, 3 + source (the longest wins)
    uint8_t version
    int32_t slot

ctypedef struct event_t:
    uint8_t kind
    uint8_t version             # mapping: the address family of addr
    uint16_t port
    int32_t ref                 # acquire: the outbound rule; mapping: the slot
    uint32_t packet             # the packet that raised it (acquire: still in the buffer)
    uint64_t addr[2]

ctypedef struct scratch_t:
    # per-call working arrays, one allocation
    int32_t *slot_of            # per packet: its SA slot, or -1
    uint32_t *order             # packets bound for SAs, in arrival order
    uint32_t *grouped           # the same, grouped by slot
    uint32_t *gid               # per entry of order: its group
    int32_t *gslot
    uint32_t *gstart
    uint32_t *gcount
    int32_t *hkey
    uint32_t *hval
    uint32_t hsize
    void *block


cdef class EngineTables:
    cdef Classifier out_cls
    cdef uint8_t *out_action
    cdef int32_t *out_slot      # per outbound rule: the SA slot, -1 when no SA is installed
    cdef Classifier in_cls      # inbound policies for packets that arrive in clear
    cdef uint8_t *in_action
    cdef list sas
    cdef slot_t *slots
    cdef int32_t nslots
    cdef rule_t *sel_rules
    cdef int32_t nsel
    cdef spi_entry_t *spi_tab
    cdef uint32_t spi_mask
    cdef bint src_keys          # some key names a source (multicast group SAs)
    cdef uint16_t udp_ports[MAX_UDP_PORTS]
    cdef int nudp
    cdef readonly object context  # the builder's own data, handed back with each event
    # a weak reference tells the builder when no batch runs on these tables any more (a
    # running batch holds them), so counters of SAs that left them are final
    cdef object __weakref__

    cdef int32_t lookup_spi(self, uint32_t spi, uint8_t version, const uint64_t *dst,
                            const uint64_t *src) noexcept nogil

cdef class EngineCore:
    cdef readonly EngineTables tables
    cdef uint64_t out_count[N_STATUS]     # the engine's own decisions, per direction
    cdef uint64_t in_count[N_STATUS]
    cdef public object on_acquire         # callable(context, rule index, packet bytes)
    cdef public object on_mapping         # callable(context, slot, address bytes, port)

    cdef object _run(self, object buf, object offsets, object lengths, object status,
                     Py_ssize_t stride, object slots, bint outbound)
    cdef void _report(self, EngineTables t, const event_t *e, const uint8_t *buf,
                      const int64_t *off, const uint32_t *lens)
    cdef uint32_t outbound_c(self, EngineTables t, uint8_t *buf, size_t buflen, int64_t *off,
                             uint32_t *lens, uint8_t *status, uint32_t n, size_t stride,
                             int32_t *slot_out, scratch_t *s, event_t *ev, uint32_t *nev) noexcept nogil
    cdef uint32_t inbound_c(self, EngineTables t, uint8_t *buf, size_t buflen, int64_t *off,
                            uint32_t *lens, uint8_t *status, uint32_t n, int32_t *slot_out,
                            scratch_t *s, event_t *ev, uint32_t *nev) noexcept nogil
