"""Batched packet I/O for forwarders, straight into the engine's arena layout: packet i of a
burst lands in slot i (``buf[i * stride : (i + 1) * stride]``) at ``headroom`` bytes into it,
and ``offsets[i]`` / ``lengths[i]`` describe it, as Engine.outbound / inbound expect.

- TUN (IFF_TUN | IFF_NO_PI): one packet per read() and per write(); a burst reads until
  EAGAIN or max_n packets. With ``vnet=True`` (a device opened with IFF_VNET_HDR and
  TUNSETOFFLOAD TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) each read() starts with a struct
  virtio_net_hdr and may carry a TCP super-packet of up to 64 KiB, split here into its
  segments (several packets per system call); each write gets a zeroed header in front.
- ESP in UDP (RFC 3948): ONE recvmmsg() for up to max_n datagrams, each given a synthetic
  outer IPv4 (IPv6) and UDP header - source the datagram's sender, destination the local
  address and port - so the engine sees whole IP packets (its SA lookup, NAT mapping check
  and RFC 6040 ECN handling read that header); ONE sendmmsg() sends the ESP of every packet
  the engine produced, to the address and port its outer header names.
- Raw ESP (IP protocol 50): IPv4 raw sockets deliver the whole (reassembled) packet; IPv6 raw
  sockets the payload only, which gets a synthetic header. Sending strips the engine's outer
  header; the kernel builds its own (IP_HDRINCL off), fragmenting as needed.
- Whole IP packets (BYPASS traffic) through an IPPROTO_RAW socket.
- read_errqueue(): the ICMP "fragmentation needed" / "packet too big" reports IP_RECVERR
  queues on a socket (RFC 1191, RFC 8201), as (destination, MTU).

System calls and packets are counted per path in an IOStats. Buffers and arrays are checked
before any I/O (a caller error raises ValueError); what arrives from the network is bounds
checked and never trusted.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_FORMAT, PyBUF_C_CONTIGUOUS
from libc.errno cimport (errno, EAGAIN, EINTR, EMSGSIZE, ECONNREFUSED, EHOSTUNREACH,
                         ENETUNREACH, EHOSTDOWN, EPROTO, ENOPROTOOPT, EBADF, ENOTSOCK)
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

from fastpath._include.compat cimport (fp_load_be16, fp_load_be32, fp_store_be16, fp_ipv4_csum, fp_atomic_add,
                                       fp_csum_add, fp_csum_fold)
from fastpath.sa cimport as_ssize, batch_bufs_t, batch_take, batch_release, check_places
from fastpath.wire cimport *

import os as _os
import socket as _socket


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr *CMSG_FIRSTHDR(msghdr *m)
    cmsghdr *CMSG_NXTHDR(msghdr *m, cmsghdr *c)
    unsigned char *CMSG_DATA(cmsghdr *c)
    size_t CMSG_SPACE(size_t n)
    size_t CMSG_LEN(size_t n)
    int recvmmsg(int fd, mmsghdr *msgs, unsigned int vlen, int flags, void *timeout)
    int sendmmsg(int fd, mmsghdr *msgs, unsigned int vlen, int flags)
    ssize_t recvmsg(int fd, msghdr *m, int flags)
    int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
    enum:
        AF_INET
        AF_INET6
        MSG_DONTWAIT
        MSG_TRUNC
        MSG_ERRQUEUE

cdef extern from "<netinet/in.h>" nogil:
    enum:
        IPPROTO_IP
        IP_TOS
        IP_PKTINFO
        IP_RECVTOS
        IP_RECVERR
        IP_MTU_DISCOVER
        IP_PMTUDISC_DONT
        IP_PMTUDISC_PROBE
        IPV6_PKTINFO
        IPV6_RECVPKTINFO
        IPV6_TCLASS
        IPV6_RECVTCLASS
        IPV6_RECVERR
        IPV6_MTU_DISCOVER
        IPV6_PMTUDISC_DONT
        IPV6_PMTUDISC_PROBE
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        uint16_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct in6_addr:
        uint8_t s6_addr[16]
    struct sockaddr_in6:
        uint16_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    struct in_pktinfo:
        int ipi_ifindex
        in_addr ipi_spec_dst
        in_addr ipi_addr
    struct in6_pktinfo:
        in6_addr ipi6_addr
        unsigned int ipi6_ifindex
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long n, int timeout)
    enum:
        POLLOUT

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t n)
    ssize_t write(int fd, const void *buf, size_t n)

cdef extern from "<sys/uio.h>" nogil:
    ssize_t readv(int fd, const iovec *iov, int n)
    ssize_t writev(int fd, const iovec *iov, int n)

cdef extern from "<stdlib.h>" nogil:
    void *malloc(size_t n)


cdef enum:
    # the paths IOStats counts
    P_TUN_READ = 0
    P_TUN_WRITE = 1
    P_NET_RECV = 2
    P_NET_SEND = 3
    P_RAW_SEND = 4
    N_PATHS = 5
    # recvmmsg/sendmmsg take at most UIO_MAXIOV messages
    MAX_MMSG = 1024
    # per-message control room: a pktinfo (IPv6: 20 bytes) and a TOS/traffic class
    CTRL_ROOM = 64
    UDP4_SYNTH = IPV4_HDR_MIN + UDP_HDR_LEN
    UDP6_SYNTH = IPV6_HDR_LEN + UDP_HDR_LEN
    # what a send strips from each packet: the engine's outer IP (+ UDP) header, or nothing
    STRIP_UDP = 0
    STRIP_IP = 1
    WHOLE_IP = 2
    # what a receive adds: an IP + UDP header, an IPv6 header (raw ESP), or nothing
    SYNTH_UDP = 0
    SYNTH_IP6 = 1
    SYNTH_NONE = 2
    # sock_extended_err (linux/errqueue.h), read by offset rather than through the header
    SO_EE_ORIGIN_LOCAL = 1
    SO_EE_ORIGIN_ICMP = 2
    SO_EE_ORIGIN_ICMP6 = 3
    ICMP_DEST_UNREACH = 3
    ICMP_FRAG_NEEDED = 4
    ICMPV6_PKT_TOOBIG = 2

cdef enum:
    # struct virtio_net_hdr (include/uapi/linux/virtio_net.h): flags, gso_type, hdr_len,
    # gso_size, csum_start, csum_offset; the legacy header TUN uses by default (10 bytes,
    # TUNSETVNETHDRSZ not called), in the host's byte order (little-endian here, as
    # wireguard-go tun/offload_linux.go reads it)
    VNET_HDR_LEN = 10
    VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
    VIRTIO_NET_HDR_GSO_NONE = 0
    VIRTIO_NET_HDR_GSO_TCPV4 = 1
    VIRTIO_NET_HDR_GSO_TCPV6 = 4
    VIRTIO_NET_HDR_GSO_ECN = 0x80
    # room for the largest super-packet a TUN read delivers (64 KiB of IP) beyond a slot
    GSO_ROOM = 65536 + 256
    # TCP flags touched when splitting
    TCP_FIN = 0x01
    TCP_PSH = 0x08
    TCP_CWR = 0x80

VNET_HDR_SIZE = VNET_HDR_LEN
TUN_READ_RESERVE = 46

PATHS = ("tun_read", "tun_write", "net_recv", "net_send", "raw_send")

# socket errors that report an earlier packet's fate (an ICMP error, RFC 1122 4.1.3.3), not
# this call's: a receive returns nothing this time, a send tries the packet once more
cdef inline bint _is_async_error(int e) noexcept nogil:
    return (e == ECONNREFUSED or e == EHOSTUNREACH or e == ENETUNREACH or e == EHOSTDOWN or e == EPROTO
            or e == EMSGSIZE or e == ENOPROTOOPT)


cdef class IOStats:
    """Packets, system calls, errors and drops per I/O path; any thread may add to them.
    ``as_dict()`` gives ``{path: {"packets", "syscalls", "packets_per_syscall", "errors",
    "dropped"}}`` for tun_read, tun_write, net_recv, net_send and raw_send."""

    cdef uint64_t packets[N_PATHS]
    cdef uint64_t calls[N_PATHS]
    cdef uint64_t errors[N_PATHS]
    cdef uint64_t dropped[N_PATHS]     # truncated on receive, malformed or unsendable on send

    def as_dict(self):
        out = {}
        for k, name in enumerate(PATHS):
            out[name] = {"packets": self.packets[k], "syscalls": self.calls[k],
                         "packets_per_syscall": round(<double>self.packets[k] / self.calls[k], 3) if self.calls[k] else 0.0,
                         "errors": self.errors[k], "dropped": self.dropped[k]}
        return out

    def add(self, str path, *, packets=0, syscalls=0, errors=0, dropped=0):
        """Count I/O done elsewhere (a single write in Python) on one of the paths."""
        cdef uint64_t p, c, e, d
        if path not in PATHS:
            raise ValueError(f"unknown I/O path {path!r} (known: {', '.join(PATHS)})")
        cdef int k = PATHS.index(path)
        # all converted before any is added: a bad count changes nothing
        for v in (packets, syscalls, errors, dropped):
            if not isinstance(v, int):
                raise TypeError(f"counts must be integers, not {type(v).__name__}")
        try:
            p, c, e, d = packets, syscalls, errors, dropped
        except OverflowError:
            raise ValueError("counts must be integers in 0 .. 2**64 - 1") from None
        fp_atomic_add(&self.packets[k], p)
        fp_atomic_add(&self.calls[k], c)
        fp_atomic_add(&self.errors[k], e)
        fp_atomic_add(&self.dropped[k], d)


cdef inline void _count(IOStats s, int path, uint64_t packets, uint64_t calls, uint64_t errors,
                        uint64_t dropped) noexcept nogil:
    if s is not None:
        if packets:
            fp_atomic_add(&s.packets[path], packets)
        if calls:
            fp_atomic_add(&s.calls[path], calls)
        if errors:
            fp_atomic_add(&s.errors[path], errors)
        if dropped:
            fp_atomic_add(&s.dropped[path], dropped)


# -- arenas ------------------------------------------------------------------------------------

cdef int _check_slots(batch_bufs_t *a, Py_ssize_t stride, Py_ssize_t headroom, Py_ssize_t max_n,
                      Py_ssize_t extra) except -1:
    if stride <= 0 or headroom < 0 or max_n < 0:
        raise ValueError(f"stride must be positive, headroom and max_n not negative (got {stride}, {headroom}, {max_n})")
    # written so that no sum or product can overflow, whatever was passed
    if headroom >= stride - extra:
        raise ValueError(f"headroom {headroom} (+{extra} header bytes) leaves no room in a {stride}-byte slot")
    if max_n > a.n:
        raise ValueError(f"max_n {max_n} is more than the {a.n} entries of offsets and lengths")
    if max_n and stride > a.size // max_n:
        raise ValueError(f"{max_n} slots of {stride} bytes do not fit a {a.size}-byte buffer")
    return 0


cdef int _selection(object ok_statuses, uint8_t *table) except -1:
    memset(table, 0, 256)
    if isinstance(ok_statuses, int):
        ok_statuses = (ok_statuses,)
    for code in bytes(ok_statuses):
        table[code] = 1
    return 0


cdef int _take_status(object status, Py_buffer *view, Py_ssize_t n) except -1:
    # read only here: bytes will do
    try:
        PyObject_GetBuffer(status, view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS)
    except (BufferError, TypeError) as exc:
        raise TypeError(f"status must be a contiguous buffer of uint8: {exc}") from None
    if view.itemsize != 1 or (view.format != NULL and view.format[0] not in b"B@=<" or
                              view.format != NULL and view.format[0] in b"@=<" and view.format[1] != b"B"):
        PyBuffer_Release(view)
        raise ValueError("status must hold uint8 items (format 'B')")
    if view.len < n:
        PyBuffer_Release(view)
        raise ValueError(f"status holds {view.len} entries for {n} packets")
    return 0


# -- TUN -----------------------------------------------------------------------------------------

cdef inline bint _link_scoped(const uint8_t *p, ssize_t n) noexcept nogil:
    # IPv6 to an interface- or link-local multicast group (RFC 4291 2.7: scope 1 or 2): what
    # the kernel sends about the link itself (MLD reports for ff02::2 once forwarding is on,
    # neighbour discovery); a point-to-point TUN link has no other end to hear it
    return n >= IPV6_HDR_LEN and p[0] >> 4 == 6 and p[24] == 0xff and (p[25] & 0x0f) <= 2


cdef class TunScratch:
    """The room a vnet TUN read needs beyond its slot (a TCP super-packet of up to 64 KiB),
    kept between tun_read_burst calls together with a super-packet that did not fit the
    slots left in a burst: the next call splits it first. One per reading thread."""

    cdef uint8_t *data
    cdef Py_ssize_t size
    cdef Py_ssize_t held           # bytes of a held-back super-packet at data, 0 if none
    cdef uint8_t hdr[VNET_HDR_LEN]

    def __dealloc__(self):
        free(self.data)

    @property
    def held(self):
        return self.held


cdef int _scratch_room(TunScratch s, Py_ssize_t size) except -1:
    cdef uint8_t *p
    if s.size < size:
        if s.held:
            # a held super-packet stays where it is: a larger slot than before is rare; drop it
            s.held = 0
        p = <uint8_t *>malloc(<size_t>size)
        if p == NULL:
            raise MemoryError()
        free(s.data)
        s.data, s.size = p, size
    return 0


cdef inline uint16_t _le16(const uint8_t *p) noexcept nogil:
    return <uint16_t>(p[0] | (p[1] << 8))


cdef inline void _store_be32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0], p[1], p[2], p[3] = (v >> 24) & 0xff, (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff


cdef inline bint _finish_csum(uint8_t *p, ssize_t n, const uint8_t *h) noexcept nogil:
    """VIRTIO_NET_HDR_F_NEEDS_CSUM without GSO: the kernel left the pseudo-header sum in the
    checksum field at csum_start + csum_offset; the full checksum is the complement of the
    sum from csum_start to the end, that field included (as wireguard-go's
    gsoNoneChecksum). False if the place is not inside the packet."""
    cdef size_t start = _le16(h + 6), at = start + _le16(h + 8)
    if at + 2 > <size_t>n or at < start:
        return False
    cdef uint16_t c = <uint16_t>~fp_csum_fold(fp_csum_add(0, p + start, <size_t>n - start))
    if c == 0 and _le16(h + 8) == 6:
        c = 0xffff                 # UDP: a zero sum goes as all ones (RFC 768)
    fp_store_be16(p + at, c)
    return True


cdef inline int _gso_count(const uint8_t *p, ssize_t n, const uint8_t *h, size_t cap,
                           size_t *hlen_out) noexcept nogil:
    """How many segments TCP super-packet p (n bytes) splits into, or -1 if its header does
    not describe a TCP/IPv4 or TCP/IPv6 packet that can be split into segments of at most
    cap - 1 bytes (wireguard-go tun/offload_linux.go gsoSplit checks the same things)."""
    cdef int gso_type = h[1] & ~VIRTIO_NET_HDR_GSO_ECN
    cdef size_t th = _le16(h + 6), gso = _le16(h + 4), hlen
    if gso == 0 or not (h[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM):
        return -1
    if gso_type == VIRTIO_NET_HDR_GSO_TCPV4:
        if n < IPV4_HDR_MIN or p[0] >> 4 != 4 or th != <size_t>(p[0] & 0x0f) * 4 or th < IPV4_HDR_MIN \
                or p[9] != IPPROTO_TCP or fp_load_be16(p + 6) & (IPV4_MF | IPV4_FRAG_OFFSET_MASK):
            return -1
    elif gso_type == VIRTIO_NET_HDR_GSO_TCPV6:
        # extension headers are not split through: the kernel's TCP puts none there
        if n < IPV6_HDR_LEN or p[0] >> 4 != 6 or th != IPV6_HDR_LEN or p[6] != IPPROTO_TCP:
            return -1
    else:
        return -1
    if th + 20 > <size_t>n:
        return -1
    hlen = th + (p[th + 12] >> 4) * 4
    if hlen < th + 20 or hlen > <size_t>n or hlen + gso >= cap or hlen + gso > 65535:
        return -1
    hlen_out[0] = hlen
    if <size_t>n == hlen:
        return 1
    return <int>((<size_t>n - hlen + gso - 1) // gso)


cdef void _gso_split(const uint8_t *p, ssize_t n, const uint8_t *h, size_t hlen, int k,
                     uint8_t *data, Py_ssize_t stride, Py_ssize_t headroom, Py_ssize_t first,
                     int64_t *off, uint32_t *lens) noexcept nogil:
    """Split super-packet p into k segments in slots first..first+k-1 (checked by the
    caller): per segment the IP and TCP headers, then gso_size bytes of payload (the last
    what remains); IPv4 total length, ID (+1 per segment) and header checksum, IPv6 payload
    length, TCP sequence number (+gso_size per segment), FIN and PSH only on the last, CWR
    only on the first, and the full TCP checksum over the pseudo-header (RFC 793 3.1,
    RFC 8200 8.1) - the segmentation wireguard-go's gsoSplit and the kernel's tcp_gso_segment do."""
    cdef size_t th = _le16(h + 6), gso = _le16(h + 4), pay, plen, tcplen
    cdef bint v4 = p[0] >> 4 == 4
    cdef uint32_t seq = fp_load_be32(p + th + 4), s
    cdef uint16_t ipid = fp_load_be16(p + 4) if v4 else 0
    cdef int j
    cdef uint8_t *o
    for j in range(k):
        pay = hlen + <size_t>j * gso
        plen = min(gso, <size_t>n - pay)
        o = data + (first + j) * stride + headroom
        memcpy(o, p, hlen)
        memcpy(o + hlen, p + pay, plen)
        tcplen = hlen - th + plen
        if v4:
            fp_store_be16(o + 2, <uint16_t>(hlen + plen))
            fp_store_be16(o + 4, <uint16_t>(ipid + j))
            fp_store_be16(o + 10, 0)
            fp_store_be16(o + 10, fp_ipv4_csum(o, th))
        else:
            fp_store_be16(o + 4, <uint16_t>(hlen - IPV6_HDR_LEN + plen))
        _store_be32(o + th + 4, seq + <uint32_t>(j * gso))
        if j != k - 1:
            o[th + 13] &= ~(TCP_FIN | TCP_PSH)
        if j != 0:
            o[th + 13] &= ~TCP_CWR
        # the pseudo-header: addresses, protocol, TCP length
        if v4:
            s = fp_csum_add(0, o + 12, 8)
        else:
            s = fp_csum_add(0, o + 8, 32)
        s += IPPROTO_TCP + <uint32_t>tcplen
        fp_store_be16(o + th + 16, 0)
        s = fp_csum_add(s, o + th, tcplen)
        fp_store_be16(o + th + 16, <uint16_t>~fp_csum_fold(s))
        off[first + j] = (first + j) * stride + headroom
        lens[first + j] = <uint32_t>(hlen + plen)


def tun_read_burst(int fd, buf, offsets, lengths, stride_, headroom_, max_n_, IOStats stats=None,
                   bint vnet=False, TunScratch scratch=None):
    """Read packets from a non-blocking TUN descriptor until it has none left (EAGAIN) or
    max_n were read: packet i into slot i at *headroom*, offsets[i] and lengths[i] set.
    Returns how many. A packet that fills its slot's whole room may have been cut short by
    the read: it is dropped (counted) and its slot reused; so is IPv6 to a link-scoped
    multicast group (the kernel's MLD and neighbour discovery on the device). An error other than EAGAIN
    raises OSError if nothing was read (else the next call reports it).

    With *vnet* (IFF_VNET_HDR) each read is a struct virtio_net_hdr and a packet: a
    NEEDS_CSUM packet gets its checksum completed, a TCP super-packet (GSO_TCPV4/TCPV6) is
    split into its segments in consecutive slots (one read, many packets). A super-packet
    that does not fit the slots left ends the burst: with a *scratch* (TunScratch) it is
    kept there and split first by the next call; without one, or if it could not fit even
    max_n slots, or if its header is malformed, it is dropped and counted in tun_read's
    "dropped"."""
    cdef Py_ssize_t stride = as_ssize(stride_, "stride"), headroom = as_ssize(headroom_, "headroom")
    cdef Py_ssize_t max_n = as_ssize(max_n_, "max_n")
    cdef batch_bufs_t a
    cdef Py_ssize_t i = 0, cap
    cdef ssize_t r
    cdef int err = 0, k, gso_type
    cdef uint64_t calls = 0, dropped = 0
    cdef iovec iov[3]
    cdef uint8_t hdr[VNET_HDR_LEN]
    cdef uint8_t *room = NULL
    cdef uint8_t *slot
    cdef size_t hlen = 0
    cdef bint own = False
    batch_take(&a, buf, offsets, lengths, None, True)
    try:
        _check_slots(&a, stride, headroom, max_n, 0)
        if max_n == 0:
            # nothing to read; and the slots, unchecked against the buffer, size no scratch
            return 0
        cap = stride - headroom
        if vnet:
            if scratch is None:
                scratch, own = TunScratch(), True
            _scratch_room(scratch, cap + GSO_ROOM)
            room = scratch.data
        with nogil:
            if vnet and scratch.held and max_n > 0:
                # the super-packet the last call kept back
                r = scratch.held
                memcpy(hdr, scratch.hdr, VNET_HDR_LEN)
                k = _gso_count(room, r, hdr, <size_t>cap, &hlen)
                if k < 0 or k > max_n:
                    dropped += 1
                else:
                    _gso_split(room, r, hdr, hlen, k, a.data, stride, headroom, 0, a.off, a.lens)
                    i = k
                scratch.held = 0
            while i < max_n:
                slot = a.data + i * stride + headroom
                if vnet:
                    iov[0].iov_base, iov[0].iov_len = hdr, VNET_HDR_LEN
                    iov[1].iov_base, iov[1].iov_len = slot, <size_t>cap
                    iov[2].iov_base, iov[2].iov_len = room + cap, GSO_ROOM
                    r = readv(fd, iov, 3)
                else:
                    r = read(fd, slot, <size_t>cap)
                calls += 1
                if r < 0:
                    if errno == EINTR:
                        continue
                    if errno != EAGAIN:
                        err = errno
                    break
                if r == 0:
                    break
                if vnet:
                    if r < VNET_HDR_LEN:
                        dropped += 1
                        continue
                    r -= VNET_HDR_LEN
                    gso_type = hdr[1] & ~VIRTIO_NET_HDR_GSO_ECN
                    if gso_type != VIRTIO_NET_HDR_GSO_NONE:
                        # contiguous in the scratch: the part in the slot goes in front
                        memcpy(room, slot, <size_t>min(r, cap))
                        k = _gso_count(room, r, hdr, <size_t>cap, &hlen)
                        if k < 0 or k > max_n:
                            dropped += 1
                            continue
                        if k > max_n - i:
                            if own:
                                dropped += 1
                            else:
                                memcpy(scratch.hdr, hdr, VNET_HDR_LEN)
                                scratch.held = r
                            break
                        _gso_split(room, r, hdr, hlen, k, a.data, stride, headroom, i, a.off, a.lens)
                        i += k
                        continue
                    if r >= cap:
                        dropped += 1
                        continue
                    if hdr[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM and not _finish_csum(slot, r, hdr):
                        dropped += 1
                        continue
                if r >= cap or _link_scoped(slot, r):
                    dropped += 1
                    continue
                a.off[i] = i * stride + headroom
                a.lens[i] = <uint32_t>r
                i += 1
        _count(stats, P_TUN_READ, i, calls, 1 if err else 0, dropped)
    finally:
        batch_release(&a)
    if err and i == 0:
        raise OSError(err, _os.strerror(err))
    return i


def tun_write_burst(int fd, buf, offsets, lengths, status, ok_statuses, IOStats stats=None, bint vnet=False):
    """Write each packet whose status is one of *ok_statuses* (bytes of Status codes) to a
    TUN descriptor, one write() each (TUN takes one packet per call). A packet the device
    refuses is counted as an error and skipped. Returns how many were written. With *vnet*
    (IFF_VNET_HDR) each goes behind a zeroed virtio_net_hdr (no GSO, checksums complete),
    through one writev()."""
    cdef batch_bufs_t a
    cdef Py_buffer sv
    cdef uint8_t table[256]
    cdef Py_ssize_t i
    cdef ssize_t r, want
    cdef uint64_t written = 0, calls = 0, errors = 0
    cdef uint8_t hdr[VNET_HDR_LEN]
    cdef iovec iov[2]
    memset(hdr, 0, VNET_HDR_LEN)
    _selection(ok_statuses, table)
    batch_take(&a, buf, offsets, lengths, None, True)
    try:
        _take_status(status, &sv, a.n)
        try:
            check_places(a.size, a.off, a.lens, 0, NULL, a.n, <const uint8_t *>sv.buf, table)
            with nogil:
                for i in range(a.n):
                    if not table[(<const uint8_t *>sv.buf)[i]]:
                        continue
                    while True:
                        if vnet:
                            iov[0].iov_base, iov[0].iov_len = hdr, VNET_HDR_LEN
                            iov[1].iov_base, iov[1].iov_len = a.data + a.off[i], a.lens[i]
                            r = writev(fd, iov, 2)
                            want = VNET_HDR_LEN + a.lens[i]
                        else:
                            r = write(fd, a.data + a.off[i], a.lens[i])
                            want = a.lens[i]
                        calls += 1
                        if r < 0 and errno == EINTR:
                            continue
                        break
                    if r == want:
                        written += 1
                    else:
                        errors += 1
            _count(stats, P_TUN_WRITE, written, calls, errors, 0)
        finally:
            PyBuffer_Release(&sv)
    finally:
        batch_release(&a)
    return written


# -- the outer socket: receive -------------------------------------------------------------------

cdef struct mmsg_t:
    mmsghdr *msgs
    iovec *iov
    sockaddr_in6 *names
    uint8_t *ctrl


cdef int _mmsg_alloc(mmsg_t *m, Py_ssize_t n) except -1:
    cdef size_t k = <size_t>max(n, 1)
    m.msgs = <mmsghdr *>calloc(k, sizeof(mmsghdr))
    m.iov = <iovec *>calloc(k, sizeof(iovec))
    m.names = <sockaddr_in6 *>calloc(k, sizeof(sockaddr_in6))
    m.ctrl = <uint8_t *>calloc(k, CTRL_ROOM)
    if m.msgs == NULL or m.iov == NULL or m.names == NULL or m.ctrl == NULL:
        _mmsg_free(m)
        raise MemoryError()
    return 0


cdef void _mmsg_free(mmsg_t *m) noexcept:
    free(m.msgs)
    free(m.iov)
    free(m.names)
    free(m.ctrl)
    m.msgs, m.iov, m.names, m.ctrl = NULL, NULL, NULL, NULL


cdef void _recv_meta(msghdr *h, uint8_t *dst, uint8_t *tos) noexcept nogil:
    """The local address the datagram was sent to (IP_PKTINFO: a socket bound to a wildcard
    address is told which one) and its TOS / traffic class byte, from the control data."""
    cdef cmsghdr *c = CMSG_FIRSTHDR(h)
    cdef int v
    while c != NULL:
        if c.cmsg_level == IPPROTO_IP and c.cmsg_type == IP_PKTINFO and c.cmsg_len >= CMSG_LEN(sizeof(in_pktinfo)):
            memcpy(dst, &(<in_pktinfo *>CMSG_DATA(c)).ipi_addr, 4)
        elif c.cmsg_level == IPPROTO_IP and c.cmsg_type == IP_TOS and c.cmsg_len >= CMSG_LEN(1):
            tos[0] = CMSG_DATA(c)[0]
        elif c.cmsg_level == IPPROTO_IPV6 and c.cmsg_type == IPV6_PKTINFO and c.cmsg_len >= CMSG_LEN(sizeof(in6_pktinfo)):
            memcpy(dst, &(<in6_pktinfo *>CMSG_DATA(c)).ipi6_addr, 16)
        elif c.cmsg_level == IPPROTO_IPV6 and c.cmsg_type == IPV6_TCLASS and c.cmsg_len >= CMSG_LEN(sizeof(int)):
            memcpy(&v, CMSG_DATA(c), sizeof(int))
            tos[0] = <uint8_t>v
        c = CMSG_NXTHDR(h, c)


cdef void _synth_header(uint8_t *h, int kind, bint v6, const sockaddr_in6 *src, const uint8_t *dst,
                        uint16_t port, uint8_t tos, uint32_t n) noexcept nogil:
    """The outer header the datagram arrived with, as the engine expects it in front of it."""
    cdef const sockaddr_in *s4 = <const sockaddr_in *>src
    cdef uint32_t hl
    if not v6:
        # RFC 791; the identification and flags of a reassembled datagram are gone: zero
        memset(h, 0, IPV4_HDR_MIN)
        h[0] = 0x45
        h[1] = tos
        fp_store_be16(h + 2, <uint16_t>(UDP4_SYNTH + n))
        h[8] = 64
        h[9] = IPPROTO_UDP
        memcpy(h + 12, &s4.sin_addr, 4)
        memcpy(h + 16, dst, 4)
        fp_store_be16(h + 10, fp_ipv4_csum(h, IPV4_HDR_MIN))
        hl = IPV4_HDR_MIN
        fp_store_be16(h + hl, ntohs(s4.sin_port))
    else:
        # RFC 8200; the flow label is not delivered to a socket: zero
        h[0] = 0x60 | (tos >> 4)
        h[1] = <uint8_t>(tos << 4)
        h[2] = 0
        h[3] = 0
        h[6] = IPPROTO_UDP if kind == SYNTH_UDP else IPPROTO_ESP
        h[7] = 64
        memcpy(h + 8, &src.sin6_addr, 16)
        memcpy(h + 24, dst, 16)
        hl = IPV6_HDR_LEN
        if kind != SYNTH_UDP:
            fp_store_be16(h + 4, <uint16_t>n)
            return
        fp_store_be16(h + 4, <uint16_t>(UDP_HDR_LEN + n))
        fp_store_be16(h + hl, ntohs(src.sin6_port))
    # RFC 768; the kernel verified the checksum already, and the engine does not read it
    fp_store_be16(h + hl + 2, port)
    fp_store_be16(h + hl + 4, <uint16_t>(UDP_HDR_LEN + n))
    fp_store_be16(h + hl + 6, 0)


cdef Py_ssize_t _recv_burst(int fd, object buf, object offsets, object lengths, object stride_,
                            object headroom_, object max_n_, object local, object port_, int kind,
                            IOStats stats) except -1:
    cdef Py_ssize_t stride = as_ssize(stride_, "stride"), headroom = as_ssize(headroom_, "headroom")
    cdef Py_ssize_t max_n = as_ssize(max_n_, "max_n")
    cdef batch_bufs_t a
    cdef mmsg_t m
    # address bytes only: bytes() of an integer would allocate that many zero bytes
    cdef bytes loc = bytes(memoryview(local))
    cdef bint v6 = len(loc) == 16
    cdef uint8_t local_addr[16]
    cdef Py_ssize_t hdr, i, k, got = 0, vlen
    cdef int r, err = 0
    cdef uint8_t dst[16]
    cdef uint8_t tos
    cdef uint64_t dropped = 0
    cdef msghdr *h
    cdef uint8_t *p
    if len(loc) not in (4, 16):
        raise ValueError(f"local must be an IPv4 or IPv6 address (4 or 16 bytes), got {len(loc)}")
    if not 0 <= port_ <= 65535:
        raise ValueError(f"port must be 0..65535, got {port_}")
    cdef int port = port_
    memset(local_addr, 0, 16)
    memcpy(local_addr, <const char *>loc, len(loc))
    if kind == SYNTH_UDP:
        hdr = UDP6_SYNTH if v6 else UDP4_SYNTH
    else:
        kind = SYNTH_IP6 if v6 else SYNTH_NONE
        hdr = IPV6_HDR_LEN if v6 else 0
    batch_take(&a, buf, offsets, lengths, None, True)
    try:
        _check_slots(&a, stride, headroom, max_n, hdr)
        vlen = min(max_n, MAX_MMSG)
        if vlen == 0:
            return 0
        _mmsg_alloc(&m, vlen)
        try:
            with nogil:
                for i in range(vlen):
                    m.iov[i].iov_base = a.data + i * stride + headroom + hdr
                    m.iov[i].iov_len = <size_t>(stride - headroom - hdr)
                    h = &m.msgs[i].msg_hdr
                    h.msg_name = &m.names[i]
                    h.msg_namelen = sizeof(sockaddr_in6)
                    h.msg_iov = &m.iov[i]
                    h.msg_iovlen = 1
                    h.msg_control = m.ctrl + i * CTRL_ROOM
                    h.msg_controllen = CTRL_ROOM
                while True:
                    r = recvmmsg(fd, m.msgs, <unsigned int>vlen, MSG_DONTWAIT, NULL)
                    if r < 0 and errno == EINTR:
                        continue
                    break
                if r < 0:
                    if errno != EAGAIN:
                        err = errno
                    r = 0
                for i in range(r):
                    h = &m.msgs[i].msg_hdr
                    k = m.msgs[i].msg_len
                    if h.msg_flags & MSG_TRUNC:
                        dropped += 1          # longer than the slot: cut short
                        continue
                    p = a.data + i * stride + headroom
                    if kind == SYNTH_NONE:
                        # IPv4 raw: the packet as the IP layer reassembled it, header and all
                        if k < IPV4_HDR_MIN:
                            dropped += 1
                            continue
                    else:
                        if (v6 and m.names[i].sin6_family != AF_INET6) or (not v6 and m.names[i].sin6_family != AF_INET):
                            dropped += 1      # a sender of the other family (a mapped address)
                            continue
                        tos = 0
                        memcpy(dst, local_addr, 16)
                        _recv_meta(h, dst, &tos)
                        _synth_header(p, kind, v6, &m.names[i], dst, <uint16_t>port, tos, <uint32_t>k)
                    # entry got describes the packet in slot i: inbound needs no slot rule
                    a.off[got] = i * stride + headroom
                    a.lens[got] = <uint32_t>(hdr + k)
                    got += 1
            _count(stats, P_NET_RECV, got, 1, 1 if err else 0, dropped)
        finally:
            _mmsg_free(&m)
    finally:
        batch_release(&a)
    if err and not _is_async_error(err):
        raise OSError(err, _os.strerror(err))
    return got


def udp_recv_burst(int sockfd, buf, offsets, lengths, stride, headroom, max_n, local, port,
                   IOStats stats=None):
    """ONE recvmmsg() (non-blocking) for up to max_n ESP-in-UDP datagrams, datagram k at
    ``k * stride + headroom + 28`` (IPv6: + 48) with a synthetic IPv4 (IPv6) and UDP header
    in front of it: source the sender's address and port, destination *local* (the address
    bytes; IP_PKTINFO's, when the socket delivers it) and *port*, TOS / traffic class as
    received (IP_RECVTOS), so that Engine.inbound sees the packets as they arrived.
    Entries 0..n-1 of offsets and lengths describe them (a datagram too long for its slot is
    dropped and counted, so entry j may lie in a later slot). Returns n. An error the socket
    reports for an earlier packet (an ICMP error) is counted and returns 0."""
    return _recv_burst(sockfd, buf, offsets, lengths, stride, headroom, max_n, local, port, SYNTH_UDP, stats)


def esp_recv_burst(int sockfd, buf, offsets, lengths, stride, headroom, max_n, local,
                   IOStats stats=None):
    """ONE recvmmsg() for up to max_n packets of a raw IP protocol 50 socket. IPv4 raw
    sockets deliver whole, reassembled packets: they are fed as they are. IPv6 raw sockets
    deliver the payload: it gets a synthetic IPv6 header (40 bytes) as udp_recv_burst does.
    *local* (4 or 16 bytes) names the family and the destination to write."""
    return _recv_burst(sockfd, buf, offsets, lengths, stride, headroom, max_n, local, 0, SYNTH_NONE, stats)


# -- the outer socket: send ----------------------------------------------------------------------

cdef inline bint _outer(const uint8_t *p, uint32_t n, int mode, sockaddr_in6 *to, socklen_t *tolen,
                        uint32_t *start, uint32_t *length, int *tos) noexcept nogil:
    """Where packet p goes and which of its bytes: for STRIP_UDP the payload of its UDP
    header, for STRIP_IP that of its IP header, for WHOLE_IP all of it. False if the packet
    is not what the mode expects."""
    cdef uint32_t ihl, tot, ulen
    cdef sockaddr_in *s4 = <sockaddr_in *>to
    cdef uint8_t proto
    memset(to, 0, sizeof(sockaddr_in6))
    if n >= IPV4_HDR_MIN and p[0] >> 4 == 4:
        ihl = (p[0] & 0x0f) * 4
        tot = fp_load_be16(p + 2)
        if ihl < IPV4_HDR_MIN or tot < ihl or tot > n:
            return False
        if mode != WHOLE_IP and fp_load_be16(p + 6) & (IPV4_MF | IPV4_FRAG_OFFSET_MASK):
            return False
        proto = p[9]
        s4.sin_family = AF_INET
        memcpy(&s4.sin_addr, p + 16, 4)
        tolen[0] = sizeof(sockaddr_in)
        tos[0] = p[1]
    elif n >= IPV6_HDR_LEN and p[0] >> 4 == 6:
        ihl = IPV6_HDR_LEN
        tot = IPV6_HDR_LEN + fp_load_be16(p + 4)
        if tot > n:
            return False
        proto = p[6]
        to.sin6_family = AF_INET6
        memcpy(&to.sin6_addr, p + 24, 16)
        tolen[0] = sizeof(sockaddr_in6)
        tos[0] = <uint8_t>(fp_load_be16(p) >> 4)
    else:
        return False
    if mode == WHOLE_IP:
        start[0], length[0] = 0, tot
        return True
    if mode == STRIP_IP:
        if proto != IPPROTO_ESP:
            return False
        start[0], length[0] = ihl, tot - ihl
        return True
    if proto != IPPROTO_UDP or ihl + UDP_HDR_LEN > tot:
        return False
    ulen = fp_load_be16(p + ihl + 4)
    if ulen < UDP_HDR_LEN or ihl + ulen > tot:
        return False
    # the port sits in the same place in both address structures
    to.sin6_port = htons(fp_load_be16(p + ihl + 2))
    start[0], length[0] = ihl + UDP_HDR_LEN, ulen - UDP_HDR_LEN
    return True


cdef inline int _outer_df(const uint8_t *p, uint32_t n) noexcept nogil:
    # 1 if packet p is IPv4 with DF set in the outer header the engine built, else 0 (IPv6,
    # and anything malformed, which _outer then drops on the DF-clear socket)
    return 1 if n >= IPV4_HDR_MIN and p[0] >> 4 == 4 and (fp_load_be16(p + 6) & IPV4_DF) else 0


cdef Py_ssize_t _send_burst(int fd, object buf, object offsets, object lengths, object status,
                            object ok_statuses, int mode, int version, int path, IOStats stats,
                            int df=-1) except -1:
    cdef batch_bufs_t a
    cdef Py_buffer sv
    cdef mmsg_t m
    cdef uint8_t table[256]
    cdef const uint8_t *st
    cdef Py_ssize_t i, k = 0, count = 0, sent = 0
    cdef uint32_t start, length
    cdef int tos, r, e, err = 0
    cdef bint retried = False
    cdef uint64_t calls = 0, errors = 0, dropped = 0
    cdef msghdr *h
    cdef cmsghdr *c
    cdef pollfd pfd
    _selection(ok_statuses, table)
    batch_take(&a, buf, offsets, lengths, None, True)
    try:
        _take_status(status, &sv, a.n)
        try:
            st = <const uint8_t *>sv.buf
            check_places(a.size, a.off, a.lens, 0, NULL, a.n, st, table)
            for i in range(a.n):
                count += table[st[i]]
            if count == 0:
                return 0
            _mmsg_alloc(&m, count)
            try:
                with nogil:
                    count = 0
                    for i in range(a.n):
                        if not table[st[i]]:
                            continue
                        if df >= 0 and _outer_df(a.data + a.off[i], a.lens[i]) != df:
                            continue          # the other outer socket sends it
                        h = &m.msgs[count].msg_hdr
                        if not _outer(a.data + a.off[i], a.lens[i], mode, &m.names[count], &h.msg_namelen,
                                      &start, &length, &tos):
                            dropped += 1
                            continue
                        if version and (m.names[count].sin6_family == AF_INET6) != (version == 6):
                            continue          # the other family's socket sends it
                        m.iov[count].iov_base = a.data + a.off[i] + start
                        m.iov[count].iov_len = length
                        h.msg_name = &m.names[count]
                        h.msg_iov = &m.iov[count]
                        h.msg_iovlen = 1
                        if tos and mode != WHOLE_IP:
                            # the outer DSCP and ECN the engine chose (RFC 4301 5.1.2.1,
                            # RFC 6040 4.1) travel with the packet: the kernel writes the header
                            h.msg_control = m.ctrl + count * CTRL_ROOM
                            h.msg_controllen = CMSG_SPACE(sizeof(int))
                            c = CMSG_FIRSTHDR(h)
                            c.cmsg_level = IPPROTO_IPV6 if m.names[count].sin6_family == AF_INET6 else IPPROTO_IP
                            c.cmsg_type = IPV6_TCLASS if m.names[count].sin6_family == AF_INET6 else IP_TOS
                            c.cmsg_len = CMSG_LEN(sizeof(int))
                            memcpy(CMSG_DATA(c), &tos, sizeof(int))
                        count += 1
                    while k < count:
                        r = sendmmsg(fd, m.msgs + k, <unsigned int>min(count - k, MAX_MMSG), 0)
                        calls += 1
                        if r > 0:
                            sent += r
                            k += r
                            retried = False
                            continue
                        e = errno
                        if r < 0 and e == EINTR:
                            continue
                        if r < 0 and e == EAGAIN:
                            # a non-blocking socket with a full buffer: wait for room
                            pfd.fd, pfd.events, pfd.revents = fd, POLLOUT, 0
                            if poll(&pfd, 1, 1000) > 0:
                                continue
                        elif not retried and _is_async_error(e):
                            retried = True   # maybe an earlier packet's error: this one again
                            continue
                        elif e == EBADF or e == ENOTSOCK:
                            err = e          # not a socket: nothing can be sent
                            break
                        errors += 1          # this packet is lost; the rest go on
                        k += 1
                        retried = False
                _count(stats, path, sent, calls, errors, dropped)
            finally:
                _mmsg_free(&m)
        finally:
            PyBuffer_Release(&sv)
    finally:
        batch_release(&a)
    if err:
        raise OSError(err, _os.strerror(err))
    return sent


def udp_send_burst(int sockfd, buf, offsets, lengths, status, ok_statuses=b"\x00", IOStats stats=None, int df=-1):
    """Send the ESP of every packet whose status is in *ok_statuses* (default OK) with ONE
    sendmmsg() (more only past 1024 packets, or to step over a packet the kernel refuses):
    the engine's outer IP and UDP headers are stripped, and the payload goes to the address
    and UDP port they name, from the socket's own address and port. The TOS / traffic class
    byte goes along as a control message. Packets that are not UDP are dropped and counted.
    Returns how many were sent.

    *df* selects by the DF bit of the engine's outer IPv4 header (the SA's ``df`` policy,
    RFC 4301 5.1.2): -1 every packet, 1 only those with DF set (for a socket with
    IP_PMTUDISC_PROBE), 0 the others, IPv6 included (for the IP_PMTUDISC_DONT socket)."""
    if df not in (-1, 0, 1):
        raise ValueError(f"df must be -1, 0 or 1, got {df}")
    return _send_burst(sockfd, buf, offsets, lengths, status, ok_statuses, STRIP_UDP, 0, P_NET_SEND, stats, df)


def esp_send_burst(int sockfd, buf, offsets, lengths, status, ok_statuses=b"\x00", IOStats stats=None, int df=-1):
    """As udp_send_burst, for a raw IP protocol 50 socket: the engine's outer IP header is
    stripped and the ESP sent to the address it names; the kernel builds the IP header and
    fragments the packet if it must (IP_HDRINCL off). *df* as for udp_send_burst."""
    if df not in (-1, 0, 1):
        raise ValueError(f"df must be -1, 0 or 1, got {df}")
    return _send_burst(sockfd, buf, offsets, lengths, status, ok_statuses, STRIP_IP, 0, P_NET_SEND, stats, df)


def ip_send_burst(int sockfd, buf, offsets, lengths, status, ok_statuses, int version=4, IOStats stats=None):
    """Send whole IP packets of one IP version (the others are left for the other family's
    socket) through an IPPROTO_RAW socket, each to the destination in its header (BYPASS
    traffic). Returns how many were sent."""
    if version not in (4, 6):
        raise ValueError(f"version must be 4 or 6, got {version}")
    return _send_burst(sockfd, buf, offsets, lengths, status, ok_statuses, WHOLE_IP, version, P_RAW_SEND, stats)


# -- socket options and the error queue ------------------------------------------------------------

def setup_outer_socket(int sockfd, int family, bint udp=True, bint df=False):
    """The options the outer socket needs: DF clear (IP_PMTUDISC_DONT: the outer IP layer
    fragments after encapsulation, the receiver's reassembles) or, with *df*, DF set
    (IP_PMTUDISC_PROBE: never fragmented, and the kernel's cached path MTU is not applied,
    so the caller's own per-SA estimate is the limit; only the interface MTU is), IP_RECVERR (ICMP reports
    queued for read_errqueue) and, for receiving, the destination address and TOS of each
    datagram (IP_PKTINFO, IP_RECVTOS; IPv6: IPV6_RECVPKTINFO, IPV6_RECVTCLASS). A raw IPv4
    socket needs neither of the last two: it receives the header itself."""
    cdef int one = 1, dont
    cdef list opts
    if family == AF_INET:
        dont = IP_PMTUDISC_PROBE if df else IP_PMTUDISC_DONT
        opts = [(IPPROTO_IP, IP_MTU_DISCOVER, dont), (IPPROTO_IP, IP_RECVERR, one)]
        if udp:
            opts += [(IPPROTO_IP, IP_PKTINFO, one), (IPPROTO_IP, IP_RECVTOS, one)]
    elif family == AF_INET6:
        dont = IPV6_PMTUDISC_PROBE if df else IPV6_PMTUDISC_DONT
        opts = [(IPPROTO_IPV6, IPV6_MTU_DISCOVER, dont), (IPPROTO_IPV6, IPV6_RECVERR, one),
                (IPPROTO_IPV6, IPV6_RECVPKTINFO, one), (IPPROTO_IPV6, IPV6_RECVTCLASS, one)]
    else:
        raise ValueError(f"family must be AF_INET or AF_INET6, got {family}")
    cdef int level, name, value
    for level, name, value in opts:
        if setsockopt(sockfd, level, name, &value, sizeof(int)) != 0:
            raise OSError(errno, _os.strerror(errno))


def read_errqueue(int sockfd, IOStats stats=None, Py_ssize_t limit=4096, bint local=False):
    """Drain the socket's error queue (MSG_ERRQUEUE, IP_RECVERR). Returns the path MTU
    reports in it as ``[(destination address, MTU), ...]``: ICMP "fragmentation needed"
    (type 3 code 4, RFC 1191), ICMPv6 "packet too big" (type 2, RFC 8201) and the kernel's
    own EMSGSIZE for a local MTU (ee_info = MTU). Other reports (port unreachable and so on)
    are drained and counted as net_send errors. At most *limit* reports per call. With
    *local*, each report is ``(destination, MTU, is_local)``: True for the kernel's EMSGSIZE."""
    cdef uint8_t data[64]
    cdef uint8_t ctrl[512]
    cdef sockaddr_in6 name
    cdef iovec iov
    cdef msghdr h
    cdef cmsghdr *c
    cdef const uint8_t *ee
    cdef ssize_t r
    cdef Py_ssize_t n = 0
    cdef uint32_t ee_errno, info
    cdef uint8_t origin, etype, code
    cdef bint mtu
    cdef uint64_t other = 0
    out = []
    while n < limit:
        memset(&h, 0, sizeof(h))
        memset(&name, 0, sizeof(name))
        iov.iov_base = data
        iov.iov_len = sizeof(data)
        h.msg_name = &name
        h.msg_namelen = sizeof(name)
        h.msg_iov = &iov
        h.msg_iovlen = 1
        h.msg_control = ctrl
        h.msg_controllen = sizeof(ctrl)
        with nogil:
            r = recvmsg(sockfd, &h, MSG_ERRQUEUE | MSG_DONTWAIT)
        if r < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                break
            raise OSError(errno, _os.strerror(errno))
        n += 1
        c = CMSG_FIRSTHDR(&h)
        while c != NULL:
            if ((c.cmsg_level == IPPROTO_IP and c.cmsg_type == IP_RECVERR)
                    or (c.cmsg_level == IPPROTO_IPV6 and c.cmsg_type == IPV6_RECVERR)) and c.cmsg_len >= CMSG_LEN(16):
                ee = CMSG_DATA(c)
                # struct sock_extended_err: errno, origin, type, code, pad, info, data
                memcpy(&ee_errno, ee, 4)
                origin, etype, code = ee[4], ee[5], ee[6]
                memcpy(&info, ee + 8, 4)
                mtu = ((origin == SO_EE_ORIGIN_ICMP and etype == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED)
                       or (origin == SO_EE_ORIGIN_ICMP6 and etype == ICMPV6_PKT_TOOBIG)
                       or (origin == SO_EE_ORIGIN_LOCAL and ee_errno == EMSGSIZE))
                address = _address(&name)
                if mtu and info and address is not None:
                    out.append((address, info, origin == SO_EE_ORIGIN_LOCAL) if local else (address, info))
                else:
                    other += 1
            c = CMSG_NXTHDR(&h, c)
    _count(stats, P_NET_SEND, 0, 0, other, 0)
    return out


cdef object _address(const sockaddr_in6 *name):
    # the destination of the packet the report is about (the error queue's msg_name)
    if name.sin6_family == AF_INET:
        return _socket.inet_ntop(_socket.AF_INET, (<const char *>&(<const sockaddr_in *>name).sin_addr)[:4])
    if name.sin6_family == AF_INET6:
        return _socket.inet_ntop(_socket.AF_INET6, (<const char *>&name.sin6_addr)[:16])
    return None
