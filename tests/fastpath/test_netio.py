"""fastpath.netio: batched I/O into the engine's arena layout.

Over UDP sockets on the loopback address: the synthetic outer header each received datagram
gets (scapy reads it; the kernel's SA parsing accepts it), one recvmmsg/sendmmsg per burst,
TOS both ways, truncation, an ESP-in-UDP round trip through two SAs. Over socketpairs:
random input never crashes a send or a receive. Caller errors raise before any I/O.

The TUN device, raw ESP and the error queue need root: they run in a throwaway network
namespace, in a subprocess (`ip netns exec NS python -c ...`), skipped with the reason when
that is not possible.
"""

import json
import os
import pathlib
import random
import select
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
from array import array

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

import fastpath
import ipsp
from fastpath import Cipher, SAState, Status, netio

SRC = os.pathsep.join(dict.fromkeys(str(pathlib.Path(m.__file__).resolve().parents[1]) for m in (ipsp, fastpath)))
LO4 = socket.inet_aton("127.0.0.1")


def arena(n: int, stride: int):
    return bytearray(n * stride), array("q", [0] * n), array("I", [0] * n)


def udp_pair(family=socket.AF_INET, host="127.0.0.1"):
    a = socket.socket(family, socket.SOCK_DGRAM)
    b = socket.socket(family, socket.SOCK_DGRAM)
    a.bind((host, 0))
    b.bind((host, 0))
    netio.setup_outer_socket(b.fileno(), family)
    return a, b


def wait(sock, timeout=2.0):
    assert select.select([sock], [], [], timeout)[0], "nothing arrived"


def packets(buf, off, lens, n):
    return [bytes(buf[off[i]:off[i] + lens[i]]) for i in range(n)]


# -- receive -------------------------------------------------------------------------------------

def test_udp_recv_burst_writes_the_outer_header_the_datagram_came_with():
    a, b = udp_pair()
    with a, b:
        a.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x2E << 2 | 1)      # AF41, ECT(1)
        sent = [bytes([i]) * (20 + i) for i in range(6)]
        for d in sent:
            a.sendto(d, b.getsockname())
        wait(b)
        stride, n = 256, 8
        buf, off, lens = arena(n, stride)
        stats = netio.IOStats()
        got = netio.udp_recv_burst(b.fileno(), buf, off, lens, stride, 16, n, LO4, b.getsockname()[1], stats)
        assert got == 6
        assert list(off[:got]) == [i * stride + 16 for i in range(got)]
        for d, p in zip(sent, packets(buf, off, lens, got)):
            ip = IP(p)
            assert (ip.version, ip.ihl, ip.len, ip.proto, ip.tos, ip.flags, ip.frag) == (4, 5, 28 + len(d), 17, 0xB9, 0, 0)
            assert (ip.src, ip.dst) == ("127.0.0.1", "127.0.0.1")
            assert ip.chksum == IP(bytes(IP(p[:20]))).chksum                     # valid header checksum
            assert (ip[UDP].sport, ip[UDP].dport, ip[UDP].len) == (a.getsockname()[1], b.getsockname()[1], 8 + len(d))
            assert bytes(ip[UDP].payload) == d
        io = stats.as_dict()["net_recv"]
        assert (io["packets"], io["syscalls"], io["packets_per_syscall"]) == (6, 1, 6.0)
        # nothing left: no packets, no error
        assert netio.udp_recv_burst(b.fileno(), buf, off, lens, stride, 16, n, LO4, 4500, stats) == 0


def test_udp_recv_burst_ipv6():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        a, b = udp_pair(socket.AF_INET6, "::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    with a, b:
        a.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0xB8)
        a.sendto(b"esp" * 10, b.getsockname()[:2])
        wait(b)
        buf, off, lens = arena(4, 512)
        local = socket.inet_pton(socket.AF_INET6, "::1")
        assert netio.udp_recv_burst(b.fileno(), buf, off, lens, 512, 0, 4, local, 4500) == 1
        ip = IPv6(packets(buf, off, lens, 1)[0])
        assert (ip.tc, ip.nh, ip.plen, ip.src, ip.dst) == (0xB8, 17, 38, "::1", "::1")
        assert (ip[UDP].sport, ip[UDP].dport, bytes(ip[UDP].payload)) == (a.getsockname()[1], 4500, b"esp" * 10)


def test_a_datagram_too_long_for_its_slot_is_dropped_and_counted():
    a, b = udp_pair()
    with a, b:
        for size in (50, 500, 60):
            a.sendto(bytes(size), b.getsockname())
        wait(b)
        stride = 128
        buf, off, lens = arena(4, stride)
        stats = netio.IOStats()
        got = netio.udp_recv_burst(b.fileno(), buf, off, lens, stride, 0, 4, LO4, 4500, stats)
        assert got == 2 and [lens[0], lens[1]] == [78, 88]
        assert off[1] == 2 * stride                       # entry 1 lies in slot 2: the long one's slot stayed
        assert stats.as_dict()["net_recv"]["dropped"] == 1


def test_esp_in_udp_round_trip_through_two_sas():
    """An SA's output leaves through udp_send_burst, arrives through udp_recv_burst and the
    peer SA decapsulates it: the synthetic header is what the kernel parses."""
    a, b = udp_pair()
    with a, b:
        pa, pb = a.getsockname()[1], b.getsockname()[1]
        netio.setup_outer_socket(a.fileno(), socket.AF_INET)
        kw = dict(spi=0x3001, cipher=Cipher.CIPHER_AES_GCM, icv_len=16, enc_key=bytes(range(20)),
                  src=LO4, dst=LO4, udp=True, sport=pa, dport=pb)
        tx, rx = SAState(**kw), SAState(**kw)
        inner = [bytes(IP(src="10.1.0.2", dst="10.2.0.2", tos=2) / UDP() / (b"x" * n)) for n in (10, 700, 1400)]
        stride, n = 2048, len(inner)
        buf, off, lens = arena(n, stride)
        for i, p in enumerate(inner):
            off[i], lens[i] = i * stride + 128, len(p)
            buf[off[i]:off[i] + len(p)] = p
        status = bytearray(n)
        assert tx.encap_batch(buf, off, lens, status, stride) == n
        status[1] = Status.NO_ROOM                       # not OK: not sent
        stats = netio.IOStats()
        assert netio.udp_send_burst(a.fileno(), buf, off, lens, status, stats=stats) == 2
        assert stats.as_dict()["net_send"]["syscalls"] == 1
        wait(b)
        rbuf, roff, rlens = arena(4, 2048)
        got = netio.udp_recv_burst(b.fileno(), rbuf, roff, rlens, 2048, 0, 4, LO4, pb, stats)
        assert got == 2
        for p in packets(rbuf, roff, rlens, got):
            assert IP(p).tos == 2                         # the inner ECN went out on the outer header
        rstatus = bytearray(got)
        assert rx.decap_batch(rbuf, memoryview(roff)[:got], memoryview(rlens)[:got], rstatus) == 2
        assert packets(rbuf, roff, rlens, got) == [inner[0], inner[2]]


def test_udp_send_burst_splits_by_the_outer_df_bit():
    """df=0 sends the DF-clear packets (and IPv6), df=1 the DF-set ones, each in order with one
    sendmmsg; a socket set up with df=True (IP_PMTUDISC_PROBE) sends with DF set."""
    a, b = udp_pair()
    with a, b:
        netio.setup_outer_socket(a.fileno(), socket.AF_INET, True, True)
        assert a.getsockopt(socket.IPPROTO_IP, 10) == 3        # IP_MTU_DISCOVER: IP_PMTUDISC_PROBE
        port = b.getsockname()[1]
        flags = ["DF", 0, "DF", 0, "DF"]
        pkts = [bytes(IP(src="127.0.0.1", dst="127.0.0.1", flags=f) / UDP(sport=1, dport=port) / bytes([i]))
                for i, f in enumerate(flags)]
        stride = 256
        buf, off, lens = arena(len(pkts), stride)
        for i, p in enumerate(pkts):
            off[i], lens[i] = i * stride, len(p)
            buf[off[i]:off[i] + len(p)] = p
        stats = netio.IOStats()
        assert netio.udp_send_burst(a.fileno(), buf, off, lens, bytearray(len(off)), b"\x00", stats, 1) == 3
        assert netio.udp_send_burst(a.fileno(), buf, off, lens, bytearray(len(off)), b"\x00", stats, 0) == 2
        assert stats.as_dict()["net_send"]["syscalls"] == 2
        got = []
        for _ in range(5):
            wait(b)
            got.append(b.recv(10)[0])
        assert got == [0, 2, 4, 1, 3]
        with pytest.raises(ValueError):
            netio.udp_send_burst(a.fileno(), buf, off, lens, bytearray(len(off)), b"\x00", stats, 2)


def test_udp_send_burst_drops_what_is_not_udp():
    a, b = udp_pair()
    with a, b:
        good = bytes(IP(src="127.0.0.1", dst="127.0.0.1") / UDP(sport=1, dport=b.getsockname()[1]) / b"payload")
        bad = [bytes(IP(dst="127.0.0.1", proto=50) / (b"x" * 20)), b"\x45" + bytes(30), b"", b"\x60" * 30,
               bytes(IP(dst="127.0.0.1", flags="MF") / UDP(dport=b.getsockname()[1]) / b"frag")]
        stride = 256
        buf, off, lens = arena(len(bad) + 1, stride)
        for i, p in enumerate([good] + bad):
            off[i], lens[i] = i * stride, len(p)
            buf[off[i]:off[i] + len(p)] = p
        stats = netio.IOStats()
        assert netio.udp_send_burst(a.fileno(), buf, off, lens, bytearray(len(off)), b"\x00", stats) == 1
        assert stats.as_dict()["net_send"]["dropped"] == len(bad)
        wait(b)
        assert b.recv(100) == b"payload"


# -- caller errors and hostile input -------------------------------------------------------------

def test_caller_errors_raise_before_any_io():
    r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with r, w:
        buf, off, lens = arena(4, 256)
        calls = [
            lambda: netio.udp_recv_burst(r.fileno(), buf, off, lens, 256, 256, 4, LO4, 1),       # headroom >= stride
            lambda: netio.udp_recv_burst(r.fileno(), buf, off, lens, 256, 230, 4, LO4, 1),       # no room after 28
            lambda: netio.udp_recv_burst(r.fileno(), buf, off, lens, 256, 0, 5, LO4, 1),         # more than the arrays
            lambda: netio.udp_recv_burst(r.fileno(), buf, off, lens, 512, 0, 4, LO4, 1),         # beyond the buffer
            lambda: netio.udp_recv_burst(r.fileno(), buf, off, lens, 2 ** 62, 0, 4, LO4, 1),     # overflow
            lambda: netio.udp_recv_burst(r.fileno(), buf, off, lens, 256, 2 ** 62, 4, LO4, 1),
            lambda: netio.udp_recv_burst(r.fileno(), buf, off, lens, 0, 0, 4, LO4, 1),
            lambda: netio.udp_recv_burst(r.fileno(), buf, off, lens, 256, 0, 4, b"\x7f\0\0", 1),  # not an address
            lambda: netio.udp_recv_burst(r.fileno(), buf, off, lens, 256, 0, 4, LO4, 70000),
            lambda: netio.tun_read_burst(r.fileno(), buf, off, lens, 256, -1, 4),
            lambda: netio.tun_read_burst(r.fileno(), bytes(1024), off, lens, 256, 0, 4),        # read-only
            lambda: netio.tun_read_burst(r.fileno(), buf, array("i", [0] * 4), lens, 256, 0, 4),  # wrong type
            lambda: netio.udp_send_burst(w.fileno(), buf, off, lens, bytearray(3)),              # short status
            lambda: netio.ip_send_burst(w.fileno(), buf, off, lens, bytearray(4), b"\0", 5),
        ]
        for call in calls:
            with pytest.raises((ValueError, TypeError, BufferError, OverflowError)):
                call()
        off[2], lens[2] = 1000, 100                                                            # outside
        with pytest.raises(ValueError, match="packet 2"):
            netio.udp_send_burst(w.fileno(), buf, off, lens, bytearray(4))
        off[2], lens[2] = -8, 4
        with pytest.raises(ValueError, match="packet 2"):
            netio.tun_write_burst(w.fileno(), buf, off, lens, bytearray(4), [0])
        # a packet outside the buffer whose status is not selected is never looked at
        assert netio.tun_write_burst(w.fileno(), buf, off, lens, bytes([0, 0, 1, 0]), [0]) == 3


def test_random_packets_never_crash_a_send():
    rng = random.Random(5)
    r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with r, w:
        stats = netio.IOStats()
        for _ in range(200):
            n, stride = rng.randint(1, 16), rng.choice([64, 256, 1600])
            buf = bytearray(rng.randbytes(n * stride))
            off = array("q", [i * stride + rng.randint(0, 8) for i in range(n)])
            lens = array("I", [rng.randint(0, stride - 8) for _ in range(n)])
            for i in range(n):
                if rng.random() < 0.5:                 # plausible headers, random rest
                    buf[off[i]] = rng.choice([0x45, 0x46, 0x60])
            status = bytearray(rng.choice([0, 22]) for _ in range(n))
            for send in (netio.udp_send_burst, netio.esp_send_burst):
                assert 0 <= send(w.fileno(), buf, off, lens, status, b"\x00", stats) <= n
            for version in (4, 6):
                assert 0 <= netio.ip_send_burst(w.fileno(), buf, off, lens, status, bytes([22]), version, stats) <= n
        # a Unix socket takes no IP destination: everything is an error, nothing crashed
        assert stats.as_dict()["net_send"]["packets"] == 0


def test_random_datagrams_never_crash_a_receive():
    rng = random.Random(6)
    r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with r, w:
        stats = netio.IOStats()
        for _ in range(50):
            for _ in range(rng.randint(0, 20)):
                w.send(rng.randbytes(rng.randint(0, 300)))
            stride = rng.choice([64, 256, 512])
            buf, off, lens = arena(32, stride)
            # no sender address (a Unix socket): every datagram dropped, counted
            assert netio.udp_recv_burst(r.fileno(), buf, off, lens, stride, 0, 32, LO4, 4500, stats) == 0
            for _ in range(rng.randint(0, 20)):
                w.send(rng.randbytes(rng.randint(0, 300)))
            got = netio.esp_recv_burst(r.fileno(), buf, off, lens, stride, 0, 32, LO4, stats)
            for i in range(got):          # raw IPv4: taken as it came, from 20 bytes up, within its slot
                assert 20 <= lens[i] <= stride and off[i] % stride == 0


def test_stats_add_and_as_dict():
    s = netio.IOStats()
    s.add("tun_write", packets=3, syscalls=4, errors=1)
    d = s.as_dict()
    assert set(d) == set(netio.PATHS)
    assert d["tun_write"] == {"packets": 3, "syscalls": 4, "packets_per_syscall": 0.75, "errors": 1, "dropped": 0}
    with pytest.raises(ValueError):
        s.add("nowhere", packets=1)


# -- IFF_VNET_HDR: virtio_net_hdr parsing and TCP segmentation (no device: a datagram socketpair
#    delivers one "read" per datagram, as a TUN does) ------------------------------------------------

def _vnet(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0) -> bytes:
    # struct virtio_net_hdr (include/uapi/linux/virtio_net.h), host (little-endian) order
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def _pseudo_sum(pkt: bytes, th: int) -> int:
    """The folded, uncomplemented pseudo-header sum the kernel leaves in the checksum field
    for CHECKSUM_PARTIAL (what TUN hands over with VIRTIO_NET_HDR_F_NEEDS_CSUM)."""
    if pkt[0] >> 4 == 4:
        ph = pkt[12:20] + struct.pack("!BBH", 0, pkt[9], len(pkt) - th)
    else:
        ph = pkt[8:40] + struct.pack("!IxxxB", len(pkt) - th, pkt[6])
    s = sum(struct.unpack(f"!{len(ph) // 2}H", ph))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _partial(pkt: bytes, th: int, at: int) -> bytes:
    b = bytearray(pkt)
    b[th + at:th + at + 2] = struct.pack("!H", _pseudo_sum(pkt, th))
    return bytes(b)


def _checksums_valid(seg: bytes) -> bool:
    from scapy.layers.inet import TCP
    p = IP(seg) if seg[0] >> 4 == 4 else IPv6(seg)
    q = p.copy()
    if seg[0] >> 4 == 4:
        del q[IP].chksum
    del q[TCP].chksum
    r = type(p)(bytes(q))
    return bytes(r) == seg


def _read_vnet(datagrams, n=64, stride=2048, headroom=64, stats=None, scratch=None):
    r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with r, w:
        r.setblocking(False)
        for d in datagrams:
            w.send(d)
        buf, off, lens = arena(n, stride)
        got = netio.tun_read_burst(r.fileno(), buf, off, lens, stride, headroom, n, stats, True, scratch)
        return [bytes(buf[off[i]:off[i] + lens[i]]) for i in range(got)], got


@pytest.mark.parametrize("version", [4, 6])
def test_vnet_tcp_super_packet_is_split_into_segments(version):
    from scapy.layers.inet import TCP
    gso, payload = 1000, bytes(random.Random(version).randbytes(4500))        # 4 full segments and 500 bytes
    ip = IP(src="10.1.0.2", dst="10.2.0.7", id=0xFFFE, flags="DF") if version == 4 else IPv6(src="2001:db8::2",
                                                                                              dst="2001:db8:1::7")
    sup = bytes(ip / TCP(sport=40000, dport=5201, seq=0xFFFFF000, ack=77, flags="PAFCE",
                         options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]) / payload)
    th = 20 if version == 4 else 40
    hlen = th + 32
    sup = _partial(sup, th, 16)
    hdr = _vnet(1, 1 if version == 4 else 4, hlen, gso, th, 16)
    stats = netio.IOStats()
    segs, got = _read_vnet([hdr + sup], stats=stats)
    assert got == 5
    for j, seg in enumerate(segs):
        p = IP(seg) if version == 4 else IPv6(seg)
        plen = gso if j < 4 else 500
        assert len(seg) == hlen + plen
        assert bytes(p[TCP].payload) == payload[j * gso:j * gso + plen]
        assert p[TCP].seq == (0xFFFFF000 + j * gso) & 0xFFFFFFFF and p[TCP].ack == 77
        flags = str(p[TCP].flags)
        assert ("F" in flags) == ("P" in flags) == (j == 4)
        assert ("C" in flags) == (j == 0) and "E" in flags and "A" in flags
        if version == 4:
            assert p.len == len(seg) and p.id == (0xFFFE + j) & 0xFFFF and p.flags == "DF"
        else:
            assert p.plen == len(seg) - 40
        assert _checksums_valid(seg), j
    s = stats.as_dict()["tun_read"]
    assert s["packets"] == 5 and s["syscalls"] == 2 and s["packets_per_syscall"] == 2.5 and s["dropped"] == 0


def test_vnet_needs_csum_and_plain_packets():
    from scapy.layers.inet import TCP
    tcp = bytes(IP(src="10.1.0.2", dst="10.2.0.7") / TCP(sport=1, dport=2, flags="S") / b"abc")
    udp = bytes(IPv6(src="2001:db8::2", dst="2001:db8:1::7") / UDP(sport=3, dport=4) / b"hello")
    plain = bytes(IP(src="10.1.0.2", dst="10.2.0.7") / UDP(sport=5, dport=6) / b"x")
    segs, got = _read_vnet([_vnet(1, 0, 0, 0, 20, 16) + _partial(tcp, 20, 16),
                            _vnet(1, 0, 0, 0, 40, 6) + _partial(udp, 40, 6),
                            _vnet() + plain])
    assert segs == [tcp, udp, plain]


def test_vnet_malformed_headers_are_dropped_and_good_packets_kept():
    from scapy.layers.inet import TCP
    good = bytes(IP(src="10.1.0.2", dst="10.2.0.7") / UDP(sport=5, dport=6) / b"x")
    sup = bytes(IP(src="10.1.0.2", dst="10.2.0.7") / TCP(sport=1, dport=2) / bytes(3000))
    bad = [b"\x01\x01",                                                      # shorter than the header
           _vnet(1, 1, 40, 0, 20, 16) + sup,                                  # gso_size 0
           _vnet(1, 1, 40, 1000, 24, 16) + sup,                               # csum_start is not the TCP header
           _vnet(1, 4, 60, 1000, 40, 16) + sup,                               # TCPV6 on an IPv4 packet
           _vnet(1, 1, 40, 1000, 20, 16) + sup[:30],                          # TCP header cut short
           _vnet(1, 1, 40, 4000, 20, 16) + sup,                               # segments too big for a slot
           _vnet(1, 3, 40, 1000, 20, 16) + sup,                               # UDP fragmentation offload
           _vnet(1, 0, 0, 0, 20, 4000) + good]                                # checksum place outside
    stats = netio.IOStats()
    segs, got = _read_vnet([*bad, _vnet() + good, _vnet(1, 1, 40, 1000, 20, 16) + sup, _vnet() + good], stats=stats)
    assert got == 5 and segs[0] == good and segs[4] == good and all(len(s) == 1040 for s in segs[1:4])
    assert stats.as_dict()["tun_read"]["dropped"] == len(bad)
    rng = random.Random(9)
    for _ in range(300):                                                     # random headers never crash it
        junk = [_vnet(*(rng.randrange(256), rng.choice([0, 1, 4, 0x81, rng.randrange(256)]), rng.randrange(80),
                        rng.choice([0, 1, 7, 536, rng.randrange(65536)]), rng.choice([20, 40, rng.randrange(200)]),
                        rng.choice([6, 16, rng.randrange(65536)]))) + rng.choice([sup, good, rng.randbytes(200)])
                for _ in range(4)]
        segs, got = _read_vnet(junk, n=16, stride=1600, headroom=16)
        assert 0 <= got <= 16 and all(len(s) < 1600 - 16 for s in segs)


def test_vnet_super_packet_that_does_not_fit_the_burst():
    """It ends the burst: kept in a TunScratch and split first by the next call; without one
    (or too big for the whole arena) dropped and counted."""
    from scapy.layers.inet import TCP
    sup = bytes(IP(src="10.1.0.2", dst="10.2.0.7") / TCP(sport=1, dport=2) / bytes(5000))
    small = bytes(IP(src="10.1.0.2", dst="10.2.0.7") / UDP(sport=5, dport=6) / b"x")
    d = [_vnet() + small, _vnet() + small, _vnet(1, 1, 40, 1000, 20, 16) + sup, _vnet() + small]
    r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with r, w:
        r.setblocking(False)
        for x in d:
            w.send(x)
        scratch, stats = netio.TunScratch(), netio.IOStats()
        buf, off, lens = arena(6, 2048)
        assert netio.tun_read_burst(r.fileno(), buf, off, lens, 2048, 0, 6, stats, True, scratch) == 2
        assert scratch.held == len(sup)
        assert netio.tun_read_burst(r.fileno(), buf, off, lens, 2048, 0, 6, stats, True, scratch) == 6
        assert [lens[i] for i in range(6)] == [1040] * 5 + [len(small)] and scratch.held == 0
        assert stats.as_dict()["tun_read"]["dropped"] == 0
        # no scratch: the burst ends there too, the super-packet dropped and counted
        for x in d:
            w.send(x)
        assert netio.tun_read_burst(r.fileno(), buf, off, lens, 2048, 0, 6, stats, True) == 2
        assert stats.as_dict()["tun_read"]["dropped"] == 1
        assert netio.tun_read_burst(r.fileno(), buf, off, lens, 2048, 0, 6, stats, True) == 1
        # more segments than the whole arena has slots: dropped, the next packet read
        w.send(_vnet(1, 1, 40, 1000, 20, 16) + sup)
        w.send(_vnet() + small)
        buf, off, lens = arena(4, 2048)
        assert netio.tun_read_burst(r.fileno(), buf, off, lens, 2048, 0, 4, stats, True, scratch) == 1
        assert lens[0] == len(small) and scratch.held == 0 and stats.as_dict()["tun_read"]["dropped"] == 2


# -- as root, in a throwaway network namespace ---------------------------------------------------

def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespace, TUN device, raw sockets)"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


@pytest.fixture
def netns():
    """run(script) -> the JSON its last line prints, run by `ip netns exec` in a new namespace
    with only the loopback interface (up); the namespace is deleted afterwards."""
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    name = f"ipsp-netio-{os.getpid()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")

    def run(script: str) -> dict:
        r = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", textwrap.dedent(script)],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": SRC})
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield run
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_tun_write_and_read_bursts(netns):
    """Echo requests written into a TUN device come back from the kernel as replies, read in
    one burst: one write per packet, one read per packet plus the one that finds none."""
    out = netns("""
        import json, select, subprocess
        from array import array
        from scapy.layers.inet import IP, ICMP
        from fastpath import netio
        from ipsp.netdev import Tun
        tun = Tun("ipsptest0", 1500)
        v = tun.vnet_hdr
        subprocess.run(["ip", "addr", "add", "10.9.0.1/24", "dev", "ipsptest0"], check=True)
        pings = [bytes(IP(src="10.9.0.2", dst="10.9.0.1") / ICMP(id=7, seq=i) / (b"p" * (20 + i))) for i in range(4)]
        stride = 256
        buf = bytearray(stride * 8); off = array("q", [0] * 8); lens = array("I", [0] * 8)
        for i, p in enumerate(pings):
            off[i], lens[i] = i * stride + 64, len(p)
            buf[off[i]:off[i] + len(p)] = p
        stats = netio.IOStats()
        status = bytes([0, 0, 5, 0])                          # the third is not OK: not written
        written = netio.tun_write_burst(tun.fd, buf, off[:4], lens[:4], status, b"\\0", stats, v)
        # a packet the device refuses (not IP) counts as an error and the rest go on
        bad = netio.tun_write_burst(tun.fd, bytearray(b"\\x00" * 40), array("q", [0]), array("I", [40]),
                                    bytearray(1), b"\\0", stats, v)
        replies = []
        while len(replies) < 3 and select.select([tun.fd], [], [], 2)[0]:
            n = netio.tun_read_burst(tun.fd, buf, off, lens, stride, 32, 8, stats, v, tun.scratch)
            replies += [bytes(buf[off[i]:off[i] + lens[i]]) for i in range(n)]
            assert all(off[i] == i * stride + 32 for i in range(n))
        seqs = sorted(IP(r)[ICMP].seq for r in replies if IP(r).haslayer(ICMP) and IP(r)[ICMP].type == 0)
        # a slot too small for the packet: it is dropped, not cut short
        netio.tun_write_burst(tun.fd, bytearray(pings[0]), array("q", [0]), array("I", [len(pings[0])]), bytearray(1),
                              b"\\0", stats, v)
        select.select([tun.fd], [], [], 2)
        before = stats.as_dict()["tun_read"]["dropped"]
        short = netio.tun_read_burst(tun.fd, buf, off, lens, 64, 16, 8, stats, v, tun.scratch)
        short_dropped = stats.as_dict()["tun_read"]["dropped"] - before
        tun.close()
        print(json.dumps({"vnet": v, "written": written, "bad": bad, "seqs": seqs, "short": short, "short_dropped": short_dropped,
                          "stats": stats.as_dict()}))
    """)
    assert out["vnet"]
    assert out["written"] == 3 and out["bad"] == 0 and out["seqs"] == [0, 1, 3]
    s = out["stats"]
    assert s["tun_write"]["packets"] == 4 and s["tun_write"]["syscalls"] == 5 and s["tun_write"]["errors"] == 1
    # the replies (the kernel's MLD reports for the new link, if any, are skipped and counted)
    assert s["tun_read"]["packets"] == 3 and s["tun_read"]["syscalls"] >= 4
    assert out["short"] == 0 and out["short_dropped"] == 1


def test_raw_esp_bursts_and_the_error_queue(netns):
    """Raw ESP out and in over the loopback (IPv4: the packet as it came; IPv6: a synthetic
    header), and read_errqueue's reports: an ICMP "fragmentation needed" about our ESP, an
    ICMPv6 "packet too big" about our UDP, a port unreachable (drained, not reported)."""
    out = netns("""
        import json, select, socket, struct, time
        from array import array
        from scapy.layers.inet import ICMP, IP, UDP
        from scapy.layers.inet6 import IPv6
        from fastpath import netio

        def arena(n, stride):
            return bytearray(n * stride), array("q", [0] * n), array("I", [0] * n)

        res = {}
        lo4 = socket.inet_aton("127.0.0.1")
        esp = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50); esp.bind(("127.0.0.1", 0))
        netio.setup_outer_socket(esp.fileno(), socket.AF_INET, False)
        # what the engine hands over: an outer IPv4 header (TOS 0xb8) and ESP; the kernel writes its own
        pkt = bytes(IP(src="127.0.0.1", dst="127.0.0.1", proto=50, tos=0xB8) / (b"\\0\\0\\x10\\x01" + bytes(60)))
        buf, off, lens = arena(2, 2048)
        off[0], lens[0] = 100, len(pkt); buf[100:100 + len(pkt)] = pkt
        res["esp_sent"] = netio.esp_send_burst(esp.fileno(), buf, off[:1], lens[:1], bytearray(1))
        select.select([esp], [], [], 2)
        n = netio.esp_recv_burst(esp.fileno(), buf, off, lens, 2048, 0, 2, lo4)
        got = IP(bytes(buf[off[0]:off[0] + lens[0]]))
        res["esp_in"] = [n, got.proto, got.tos, bytes(got.payload)[:4].hex(), len(got.payload)]

        # the error queue: a "fragmentation needed" about that ESP packet, from a router
        # (built by hand: ipsp.pmtu.frag_needed sends nothing to a loopback source, RFC 1122 3.2.2)
        quoted = bytes(IP(src="127.0.0.1", dst="127.0.0.2", proto=50) / bytes(64))[:28]
        icmp = bytes(IP(src="127.0.0.3", dst="127.0.0.1") / ICMP(type=3, code=4, nexthopmtu=1300) / quoted)
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        raw.sendto(icmp, ("127.0.0.1", 0))
        select.select([], [], [esp], 2)
        res["esp_reports"] = netio.read_errqueue(esp.fileno())

        # UDP with DF clear: the kernel queues no "fragmentation needed" (ipsp.gateway watches
        # ICMP instead), but a port unreachable it does: drained, counted, not a report
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 4500))
        netio.setup_outer_socket(u.fileno(), socket.AF_INET)
        u.sendto(b"x", ("127.0.0.1", 9))
        time.sleep(0.2)
        stats = netio.IOStats()
        res["udp_reports"] = netio.read_errqueue(u.fileno(), stats)
        res["udp_other"] = stats.as_dict()["net_send"]["errors"]

        # IPv6: "packet too big" about our UDP datagram is queued even with DF off (IPv6 has none)
        try:
            u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6.bind(("::1", 4500))
            netio.setup_outer_socket(u6.fileno(), socket.AF_INET6)
            quoted = bytes(IPv6(src="::1", dst="::1") / UDP(sport=4500, dport=4501) / bytes(100))
            ptb = struct.pack("!BBHI", 2, 0, 0, 1400) + quoted
            i6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            i6.sendto(ptb, ("::1", 0))
            select.select([], [], [u6], 2)
            res["udp6_reports"] = netio.read_errqueue(u6.fileno())
            # raw ESP over IPv6: the payload gets a synthetic IPv6 header
            e6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 50); e6.bind(("::1", 0))
            netio.setup_outer_socket(e6.fileno(), socket.AF_INET6, False)
            p6 = bytes(IPv6(src="::1", dst="::1", nh=50, tc=0x20) / (b"\\0\\0\\x20\\x02" + bytes(40)))
            buf, off, lens = arena(2, 2048)
            off[0], lens[0] = 0, len(p6); buf[:len(p6)] = p6
            netio.esp_send_burst(e6.fileno(), buf, off[:1], lens[:1], bytearray(1))
            select.select([e6], [], [], 2)
            n = netio.esp_recv_burst(e6.fileno(), buf, off, lens, 2048, 0, 2, socket.inet_pton(socket.AF_INET6, "::1"))
            g6 = IPv6(bytes(buf[off[0]:off[0] + lens[0]]))
            res["esp6_in"] = [n, g6.nh, g6.tc, g6.plen, g6.src, g6.dst, bytes(g6.payload)[:4].hex()]
        except OSError as exc:
            res["ipv6"] = str(exc)
        print(json.dumps(res))
    """)
    assert out["esp_sent"] == 1
    assert out["esp_in"] == [1, 50, 0xB8, "00001001", 64]
    assert out["esp_reports"] == [["127.0.0.2", 1300]]
    assert out["udp_reports"] == [] and out["udp_other"] == 1
    if "ipv6" in out:
        pytest.skip(f"IPv6 part: {out['ipv6']}")
    assert out["udp6_reports"] == [["::1", 1400]]
    assert out["esp6_in"] == [1, 50, 0x20, 44, "::1", "::1", "00002002"]
