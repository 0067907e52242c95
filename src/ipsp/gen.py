"""Synthetic traffic: seeded, checksum-valid packets in standard size mixes, paced at line rate.

Two layers share this module:

* the original helpers ``ipv4_udp``, ``imix_packets`` and ``fixed_packets`` build IPv4/UDP packets one
  at a time (the engine tests depend on their exact bytes, so they stay as they are);
* :func:`generate` and :func:`write_trace`, the benchmark trace generator behind ``ipsp trace gen``:
  IPv4 and IPv6, UDP and TCP, many flows, one of the size profiles below, and nanosecond timestamps
  that put the packets back to back on an Ethernet link of a given rate.

Size profiles (see /work/shared/anchors/traces.md section 4 for the sources):

``64`` ``128`` ``256`` ``512`` ``1024`` ``1280`` ``1518``
    RFC 2544 section 9 Ethernet *frame* sizes.  A frame is the IP packet plus 18 bytes (14 of header,
    4 of FCS), so ``64`` carries 46-byte IP packets and ``1518`` 1500-byte ones.
``fixed:N``
    IP packets of N bytes (20..65535).
``imix``
    Simple IMIX: IP 40, 576 and 1500 bytes 7:4:1, exact in every cycle of 12 and shuffled within it.
``genome:LETTERS``
    An RFC 6985 section 4 IMIX genome: each letter names a frame size (:data:`GENOME_LETTERS`) and the
    string repeats in its order, e.g. ``genome:aaaaaaaaaabg``.  It is not shuffled: the order is what
    the genome specifies.
``internet``
    A bimodal Internet-like mix over many flows with Zipf popularity (:data:`INTERNET_BANDS`).

A profile's size is the IP size of an IPv4/UDP packet.  Headers may need more: sizes below the
minimum of a packet's family and transport (:data:`MIN_IP_SIZE`: IPv4/UDP 28, IPv4/TCP 40, IPv6/UDP 48,
IPv6/TCP 60 bytes) are raised to it.  A 64-byte frame cannot hold IPv6 and a transport header, so
with ``--ipv6-share`` the ``64`` profile's IPv6 packets are 48 bytes (UDP, a 66-byte frame) or 60
(TCP, 78); every other size maps to IPv6 unchanged.

Inner addresses are private only: IPv4 10.1.0.0/16 -> 10.2.0.0/16, IPv6 fd00:0:0:1::/64 ->
fd00:0:0:2::/64 (unique local addresses, RFC 4193).
"""

from __future__ import annotations

import itertools
import os
import random
import struct
from array import array
from bisect import bisect
from typing import BinaryIO, Iterator, NamedTuple

__all__ = ["SIMPLE_IMIX", "internet_checksum", "ipv4_udp", "imix_packets", "fixed_packets",
           "RFC2544_FRAMES", "GENOME_LETTERS", "INTERNET_BANDS", "MIN_IP_SIZE", "parse_profile",
           "parse_rate", "wire_bytes", "generate", "iter_packets", "write_trace", "TraceSummary"]

SIMPLE_IMIX = ((40, 7), (576, 4), (1500, 1))


def internet_checksum(data: bytes) -> int:
    """The RFC 1071 checksum of *data* (complemented, ready to store)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_udp(size: int, src: bytes, dst: bytes, sport: int, dport: int, payload_byte: int, ident: int) -> bytes:
    """A valid IPv4/UDP packet of exactly *size* bytes (size >= 28) with correct checksums."""
    if size < 28:
        raise ValueError(f"an IPv4/UDP packet needs at least 28 bytes, got {size}")
    payload = bytes([payload_byte]) * (size - 28)
    ulen = size - 20
    pseudo = src + dst + struct.pack("!BBH", 0, 17, ulen)
    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    ucs = internet_checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", ucs) + udp[8:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, ident & 0xFFFF, 0, 64, 17, 0, src, dst)
    hdr = hdr[:10] + struct.pack("!H", internet_checksum(hdr)) + hdr[12:]
    return hdr + udp


def _flows(rng: random.Random, count: int) -> list[tuple[bytes, bytes, int, int]]:
    # inner addresses from 10.0.0.0/8 (inside the test namespaces' private ranges)
    return [(bytes([10, 1, rng.randrange(256), rng.randrange(1, 255)]),
             bytes([10, 2, rng.randrange(256), rng.randrange(1, 255)]),
             rng.randrange(1024, 65536), rng.choice((443, 4433, 8080, 5001))) for _ in range(count)]


def imix_packets(n: int, *, seed: int = 1, flows: int = 64, mix=SIMPLE_IMIX) -> list[bytes]:
    """n packets whose IP sizes follow *mix* (size, weight) exactly per cycle, shuffled."""
    rng = random.Random(seed)
    cycle = [size for size, weight in mix for _ in range(weight)]
    fl = _flows(rng, flows)
    out = []
    sizes: list[int] = []
    for i in range(n):
        if not sizes:
            sizes = cycle[:]
            rng.shuffle(sizes)
        src, dst, sp, dp = fl[rng.randrange(flows)]
        out.append(ipv4_udp(sizes.pop(), src, dst, sp, dp, i & 0xFF, i))
    return out


def fixed_packets(size: int, n: int, *, seed: int = 1, flows: int = 64) -> list[bytes]:
    """n packets of one IP size."""
    return imix_packets(n, seed=seed, flows=flows, mix=((size, 1),))


# -- the trace generator ---------------------------------------------------------------------------

RFC2544_FRAMES = (64, 128, 256, 512, 1024, 1280, 1518)   # RFC 2544 section 9, Ethernet frame sizes
ETH_HEADER_FCS = 18     # what an Ethernet frame adds to the IP packet: 14 bytes of header, 4 of FCS
ETH_MIN_FRAME = 64      # shorter frames are padded to 64 bytes on the wire
ETH_WIRE_EXTRA = 20     # per frame on the wire: 7 bytes preamble, 1 SFD, 12 inter-frame gap

# RFC 6985 section 4: a letter per frame size.  z is "the MTU" of the path under test; here the
# standard Ethernet MTU, a 1518-byte frame (IP 1500).
GENOME_LETTERS = {"a": 64, "b": 128, "c": 256, "d": 512, "e": 1024, "f": 1280, "g": 1518,
                  "h": 2112, "i": 9000, "j": 16000, "z": 1518}

# The `internet` profile: IP sizes uniform within each band, bands by share of packets (percent).
# Why these numbers (sources in traces.md section 4):
# * small, 40%: CAIDA, USC/ISI (about 40% at 40 B in 2005) and NANOG NetFlow (38-42% of packets
#   <= 64 B) agree; these are mostly TCP ACKs, 40 B bare or 52-64 B with timestamp/SACK options.
#   Bare ones are fewer than in 2005 now that timestamps are common, so 40 B gets 15 points and
#   41-64 B 25.
# * near the MTU, 30%: full-size segments at the Ethernet MTU (1500 B) plus 1400-1499 B from
#   tunnels, QUIC and reduced-MSS paths (ISI's mode near 1300 B traced to VPN MTUs); NANOG sees
#   31-37% in 1024-1536 B, our ndpi_mix 27.6% in 1400-1500 B.
# * a thin middle, 30%: DNS, VoIP, TLS/QUIC handshakes, HTTP requests.  ndpi_mix has 25% in 128-1399 B
#   and 21% in 64-127 B.
# The mean is 612 B IP, the measured ndpi_mix's is 613 B (CAIDA's 1999 mean, 413 B, predates the
# shift to full-size packets that CAIDA's 1998-2008 comparison shows).
INTERNET_BANDS = (
    (40, 40, 15),        # bare TCP ACKs
    (41, 64, 25),        # ACKs with options, small UDP (DNS queries)
    (65, 255, 15),       # the thin middle ...
    (256, 1399, 15),
    (1400, 1499, 10),    # tunnels, QUIC, reduced MSS
    (1500, 1500, 20),    # full-size segments at the Ethernet MTU
)
# Flow popularity in `internet`: the flow of rank r (from 1) carries packets in proportion to 1/r
# (Zipf, exponent 1): a few elephants and many mice.  With 10,000 flows the top 1% carry 53% of
# the packets and the top flow 10%.
ZIPF_EXPONENT = 1.0
DEFAULT_FLOWS = 64
INTERNET_FLOWS = 10_000
MAX_IP_SIZE = 65535                 # the IPv4 total length field; IPv6 is held to the same

UDP, TCP = 17, 6
# (IP version, transport) -> the smallest packet: IP header + transport header, no payload
MIN_IP_SIZE = {(4, UDP): 28, (4, TCP): 40, (6, UDP): 48, (6, TCP): 60}
_KINDS = ((4, UDP), (4, TCP), (6, UDP), (6, TCP))

_TCP_ACK, _TCP_PSH = 0x10, 0x08
_TCP_WINDOW = 64240                 # Linux's default initial receive window
_DELAYED_ACK = 2 * 1448             # a pure ACK acknowledges two full segments (RFC 5681 section 4.2)
_TTL = 64
_DF = 0x4000                        # don't fragment: what PMTU-discovering stacks send

# header layouts: IPv4 (20) or IPv6 (40) followed by UDP (8) or TCP (20, no options)
_V4UDP = struct.Struct("!BBHHHBBH4s4sHHHH")
_V4TCP = struct.Struct("!BBHHHBBH4s4sHHIIHHHH")
_V6UDP = struct.Struct("!IHBB16s16sHHHH")
_V6TCP = struct.Struct("!IHBB16s16sHHIIHHHH")

# inner addresses, private only: 10.1.x.y -> 10.2.x.y and fd00:0:0:1::/64 -> fd00:0:0:2::/64 (RFC 4193
# unique local), the last 32 bits random
_V6_SRC = bytes.fromhex("fd000000000000010000")
_V6_DST = bytes.fromhex("fd000000000000020000")
_ETH_MACS = bytes.fromhex("020000000002020000000001")    # locally administered dst, src
_LINKTYPES = {"raw": 101, "ethernet": 1}                  # pcap.LINKTYPE_RAW, LINKTYPE_ETHERNET


class Profile(NamedTuple):
    """A parsed size profile: ``kind`` is fixed, imix, genome or internet; ``cycle`` the IP sizes
    that repeat (empty for internet)."""
    name: str
    kind: str
    cycle: tuple[int, ...]

    @property
    def max_size(self) -> int:
        return max(self.cycle) if self.cycle else max(hi for _, hi, _ in INTERNET_BANDS)

    @property
    def default_flows(self) -> int:
        return INTERNET_FLOWS if self.kind == "internet" else DEFAULT_FLOWS


def parse_profile(text: str) -> Profile:
    """The profile named by *text*; a ValueError says what is accepted."""
    t = text.strip().lower()
    if t in ("imix", "internet"):
        cycle = tuple(size for size, weight in SIMPLE_IMIX for _ in range(weight)) if t == "imix" else ()
        return Profile(t, t, cycle)
    if t.isdigit():
        if int(t) not in RFC2544_FRAMES:
            raise ValueError(f"{text!r} is not an RFC 2544 frame size ({', '.join(map(str, RFC2544_FRAMES))}); "
                             "use fixed:N for an IP size of N bytes")
        return Profile(t, "fixed", (int(t) - ETH_HEADER_FCS,))
    kind, sep, arg = t.partition(":")
    if sep and kind == "fixed":
        if not arg.isdigit() or not 20 <= int(arg) <= MAX_IP_SIZE:
            raise ValueError(f"{text!r}: fixed:N needs an IP size N from 20 to {MAX_IP_SIZE}")
        return Profile(t, "fixed", (int(arg),))
    if sep and kind == "genome":
        bad = sorted(set(arg) - set(GENOME_LETTERS))
        if not arg or bad:
            what = f"unknown genome letter(s) {' '.join(bad)}" if bad else "empty genome"
            letters = " ".join(f"{k}={v}" for k, v in GENOME_LETTERS.items())
            raise ValueError(f"{text!r}: {what}; RFC 6985 letters are {letters} (Ethernet frame sizes)")
        return Profile(t, "genome", tuple(GENOME_LETTERS[c] - ETH_HEADER_FCS for c in arg))
    raise ValueError(f"unknown profile {text!r}: expected one of {' '.join(map(str, RFC2544_FRAMES))} "
                     "(RFC 2544 frame sizes), fixed:N (IP size), imix, genome:LETTERS (RFC 6985), internet")


def parse_rate(text: str | float) -> int:
    """A line rate in bit/s from ``10G``, ``2.5G``, ``100M``, ``40000000000`` or a number."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        if not text.isascii():          # float() takes any script's digits
            raise ValueError(f"bad rate {text!r}: expected bit/s such as 1G, 10G, 40G, 100G or 2500000000")
        t = text.strip().upper().removesuffix("BPS").removesuffix("BIT/S")
        scale = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}.get(t[-1:], 1)
        try:
            value = float(t[:-1] if scale != 1 else t) * scale
        except ValueError:
            raise ValueError(f"bad rate {text!r}: expected bit/s such as 1G, 10G, 40G, 100G or 2500000000") from None
    if not value >= 1:          # also refuses NaN
        raise ValueError(f"bad rate {text!r}: must be at least 1 bit/s")
    return round(value)


def wire_bytes(ip_size: int) -> int:
    """Bytes of link time an IP packet takes on Ethernet: its frame (at least 64) plus preamble,
    SFD and inter-frame gap."""
    return max(ip_size + ETH_HEADER_FCS, ETH_MIN_FRAME) + ETH_WIRE_EXTRA


def _sizes(profile: Profile, rng: random.Random) -> Iterator[int]:
    """The profile's IP sizes, one per packet, forever."""
    if profile.kind == "internet":
        lows = [lo for lo, _, _ in INTERNET_BANDS]
        spans = [hi - lo + 1 for lo, hi, _ in INTERNET_BANDS]
        cum = list(itertools.accumulate(w for _, _, w in INTERNET_BANDS))
        total = cum[-1]
        rand = rng.random
        while True:
            b = bisect(cum, rand() * total)
            yield lows[b] + int(rand() * spans[b])
    elif profile.kind == "imix":
        while True:             # exact 7:4:1 in every cycle of 12, in a new order each time
            cycle = list(profile.cycle)
            rng.shuffle(cycle)
            yield from cycle
    else:                       # fixed, and genome in its given order (RFC 6985 section 4)
        yield from itertools.cycle(profile.cycle)


def _fold(s: int) -> int:
    """The one's-complement checksum field for a 32-bit sum of 16-bit words."""
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _word_sum(data: bytes) -> int:
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


class _Flow:
    """One 5-tuple, with what its packets share precomputed: the constant part of each checksum."""
    __slots__ = ("version", "proto", "src", "dst", "sport", "dport", "label", "min_size", "ip_sum", "l4_sum",
                 "seq", "ack")

    def __init__(self, version: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int,
                 rng: random.Random) -> None:
        self.version, self.proto, self.src, self.dst, self.sport, self.dport = version, proto, src, dst, sport, dport
        self.label = rng.getrandbits(20)            # IPv6 flow label, one per flow (RFC 6437)
        self.seq, self.ack = rng.getrandbits(32), rng.getrandbits(32)   # TCP: both sides' ISNs
        self.min_size = MIN_IP_SIZE[version, proto]         # also the header bytes before the payload
        addr = _word_sum(src + dst)
        # IPv4 header minus total length and identification, which change per packet
        self.ip_sum = 0x4500 + _DF + (_TTL << 8 | proto) + addr
        # pseudo-header addresses and protocol (RFC 768, RFC 9293 3.1, RFC 8200 8.1) plus the
        # transport header's constant words; the lengths and TCP's seq/ack/flags are added per packet
        self.l4_sum = addr + proto + sport + dport + (_TCP_WINDOW if proto == TCP else 0)


def _kind_weights(ipv6_share: float, tcp_share: float) -> list[float]:
    """The expected share of packets of each of _KINDS."""
    return [(ipv6_share if v == 6 else 1 - ipv6_share) * (tcp_share if p == TCP else 1 - tcp_share)
            for v, p in _KINDS]


def _make_flows(rng: random.Random, count: int, weights: list[float]) -> list[list[_Flow]]:
    """*count* distinct flows, split over the four (IP version, transport) kinds by *weights*;
    every kind with a non-zero weight gets at least one."""
    active = [k for k, w in enumerate(weights) if w > 0]
    # one each, the rest by largest remainder
    rest = count - len(active)
    exact = {k: rest * weights[k] for k in active}
    counts = {k: 1 + int(exact[k]) for k in active}
    for k in sorted(active, key=lambda k: (int(exact[k]) - exact[k], k))[:count - sum(counts.values())]:
        counts[k] += 1
    seen: set[tuple] = set()
    table: list[list[_Flow]] = [[] for _ in _KINDS]
    for k in active:
        version, proto = _KINDS[k]
        while len(table[k]) < counts[k]:
            if version == 4:
                src = bytes([10, 1, rng.randrange(256), rng.randrange(1, 255)])
                dst = bytes([10, 2, rng.randrange(256), rng.randrange(1, 255)])
            else:
                src = _V6_SRC + bytes(2) + rng.randbytes(4)
                dst = _V6_DST + bytes(2) + rng.randbytes(4)
            sport = rng.randrange(1024, 65536)
            # no 500/4500: IKE and ESP-in-UDP ports would make packets look like something else
            dport = rng.choice((443, 8443, 5001, 8080) if proto == TCP else (443, 53, 123, 5001, 4433))
            key = (proto, src, dst, sport, dport)
            if key not in seen:
                seen.add(key)
                table[k].append(_Flow(version, proto, src, dst, sport, dport, rng))
    return table


_OFFSETS = 1024                     # distinct payload start offsets in the pool (all even)


def _payload_pool(rng: random.Random, max_payload: int) -> tuple[bytes, list[int]]:
    """Random bytes to slice payloads from, and prefix sums of its 16-bit words, so that any
    even-offset payload's checksum contribution is one subtraction instead of a pass over it."""
    pool = rng.randbytes((max_payload + 1) // 2 * 2 + 2 * _OFFSETS)     # an even length: whole words
    prefix = list(itertools.accumulate(struct.unpack(f"!{len(pool) // 2}H", pool), initial=0))
    return pool, prefix


def iter_packets(profile: str | Profile, n: int, *, seed: int = 1, flows: int | None = None,
                 ipv6_share: float = 0.0, tcp_share: float = 0.0, rate_bps: float | str = 10e9,
                 start_ns: int = 0) -> Iterator[tuple[bytes, int]]:
    """Yields ``(ip_packet, timestamp_ns)`` n times; :func:`generate` explains the arguments.

    The arguments are checked at once (ValueError), before the first packet is asked for.
    """
    prof = profile if isinstance(profile, Profile) else parse_profile(profile)
    if n < 0:
        raise ValueError(f"packet count must not be negative, got {n}")
    for name, share in (("ipv6_share", ipv6_share), ("tcp_share", tcp_share)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {share}")
    nflows = prof.default_flows if flows is None else flows
    if nflows < 1:
        raise ValueError(f"need at least one flow, got {nflows}")
    rate = parse_rate(rate_bps)
    weights = _kind_weights(ipv6_share, tcp_share)
    if nflows < sum(w > 0 for w in weights):
        raise ValueError(f"{sum(w > 0 for w in weights)} kinds of flow (IPv4/IPv6 x UDP/TCP) need as many flows, "
                         f"got {nflows}")
    return _packets(prof, n, seed, nflows, weights, rate, start_ns)


def _packets(prof: Profile, n: int, seed: int, nflows: int, weights: list[float], rate: int,
             start_ns: int) -> Iterator[tuple[bytes, int]]:
    # Every random choice comes from its own stream (flow table, sizes, packet kind and flow), each
    # seeded from *seed*, so a trace of n packets is the first n packets of any longer one.
    def stream(name: str) -> random.Random:
        return random.Random(f"ipsp.gen/{seed}/{name}")   # str seeds hash with SHA-512: stable everywhere

    table = _make_flows(stream("flows"), nflows, weights)
    kinds = [k for k in range(len(_KINDS)) if table[k]]
    kind_cum = list(itertools.accumulate(weights[k] for k in kinds))
    zipf = prof.kind == "internet"
    flow_cum = {k: list(itertools.accumulate(1 / r ** ZIPF_EXPONENT for r in range(1, len(table[k]) + 1)))
                for k in kinds} if zipf else {}
    sizes = _sizes(prof, stream("sizes"))
    pick = stream("pick").random
    pool, prefix = _payload_pool(stream("payload"), max(prof.max_size, 60) - 28)
    ns_per_s = 1_000_000_000
    bits = 0

    for i in range(n):
        # which kind of packet (exact shares in expectation), then which flow of that kind
        k = kinds[min(bisect(kind_cum, pick() * kind_cum[-1]), len(kinds) - 1)] if len(kinds) > 1 else kinds[0]
        fl = table[k]
        if zipf:
            cum = flow_cum[k]
            f = fl[min(bisect(cum, pick() * cum[-1]), len(fl) - 1)]
        else:
            f = fl[int(pick() * len(fl))]
        size = next(sizes)
        if size < f.min_size:
            size = f.min_size
        plen = size - f.min_size
        off = (i * 389) % _OFFSETS * 2              # 389 is odd: consecutive packets visit every offset
        w = off >> 1
        psum = prefix[w + (plen >> 1)] - prefix[w]
        if plen & 1:
            psum += pool[off + plen - 1] << 8        # the odd last byte, padded with a zero
        payload = pool[off:off + plen]
        l4len = size - (20 if f.version == 4 else 40)
        if f.proto == UDP:
            # the UDP length counts twice: in the pseudo-header and in the header itself
            cs = _fold(f.l4_sum + 2 * l4len + psum) or 0xFFFF     # 0 means "no checksum" (RFC 768)
            if f.version == 4:
                ident = i & 0xFFFF
                hdr = _V4UDP.pack(0x45, 0, size, ident, _DF, _TTL, UDP, _fold(f.ip_sum + size + ident),
                                  f.src, f.dst, f.sport, f.dport, l4len, cs)
            else:
                hdr = _V6UDP.pack(0x60000000 | f.label, l4len, UDP, _TTL, f.src, f.dst, f.sport, f.dport, l4len, cs)
        else:
            # a data segment carries ACK|PSH, an empty one is a pure ACK; seq advances by the data
            # sent, ack by what a delayed ACK of the peer's data would cover
            seq, ack = f.seq, f.ack
            flags = 0x5000 | (_TCP_ACK | _TCP_PSH if plen else _TCP_ACK)      # data offset 5 words
            cs = _fold(f.l4_sum + l4len + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF)
                       + flags + psum)
            if f.version == 4:
                ident = i & 0xFFFF
                hdr = _V4TCP.pack(0x45, 0, size, ident, _DF, _TTL, TCP, _fold(f.ip_sum + size + ident),
                                  f.src, f.dst, f.sport, f.dport, seq, ack, flags, _TCP_WINDOW, cs, 0)
            else:
                hdr = _V6TCP.pack(0x60000000 | f.label, l4len, TCP, _TTL, f.src, f.dst, f.sport, f.dport,
                                  seq, ack, flags, _TCP_WINDOW, cs, 0)
            if plen:
                f.seq = (seq + plen) & 0xFFFFFFFF
            else:
                f.ack = (ack + _DELAYED_ACK) & 0xFFFFFFFF
        # pacing: packet i's stamp is the end of its slot on the wire, the total link time of
        # packets 0..i.  Counted in bits and divided once, so stamps are exact to the
        # nanosecond below and never drift: each gap is the wire time rounded down or up.
        bits += wire_bytes(size) * 8
        yield hdr + payload, start_ns + bits * ns_per_s // rate


def generate(profile: str, n: int, *, seed: int = 1, flows: int | None = None, ipv6_share: float = 0.0,
             tcp_share: float = 0.0, rate_bps: float | str = 10e9, start_ns: int = 0) -> tuple[list[bytes], array]:
    """n IP packets of *profile* and their timestamps in ns.

    ``flows`` defaults to 10,000 for ``internet`` (Zipf popularity) and 64 otherwise (uniform).
    ``ipv6_share`` and ``tcp_share`` are the expected fractions of IPv6 and of TCP packets, drawn
    independently per packet; each flow has one version and transport.  ``rate_bps`` (bit/s, or a
    string such as ``"40G"``) paces the timestamps: ``ts[i] = start_ns + floor(W_i * 1e9 / rate)``
    where ``W_i`` is the wire bits of packets 0..i (:func:`wire_bytes` x 8).  Same arguments, same bytes.
    """
    packets: list[bytes] = []
    stamps = array("q")
    for pkt, ts in iter_packets(profile, n, seed=seed, flows=flows, ipv6_share=ipv6_share, tcp_share=tcp_share,
                                rate_bps=rate_bps, start_ns=start_ns):
        packets.append(pkt)
        stamps.append(ts)
    return packets, stamps


class TraceSummary(NamedTuple):
    packets: int
    ip_bytes: int
    duration_ns: int        # the last packet's timestamp minus start_ns


def write_trace(path: str | os.PathLike[str] | BinaryIO, profile: str, n: int, *, seed: int = 1,
                flows: int | None = None, ipv6_share: float = 0.0, tcp_share: float = 0.0,
                rate_bps: float | str = 10e9, start_ns: int = 0, linktype: str | int = "raw") -> TraceSummary:
    """Writes :func:`generate`'s trace as a nanosecond pcap, streaming (memory does not grow with n).

    ``linktype`` ``raw`` (101) stores bare IP packets; ``ethernet`` (1) adds a synthetic 14-byte
    header (locally administered MACs), without padding or FCS, as the sending host would capture it.
    """
    from ipsp.pcap import TraceWriter

    lt = _LINKTYPES.get(linktype, linktype) if isinstance(linktype, str) else linktype
    if lt not in _LINKTYPES.values():
        raise ValueError(f"linktype must be raw (101) or ethernet (1), got {linktype!r}")
    it = iter_packets(profile, n, seed=seed, flows=flows, ipv6_share=ipv6_share, tcp_share=tcp_share,
                      rate_bps=rate_bps, start_ns=start_ns)     # validates before the file is created
    eth4, eth6 = _ETH_MACS + b"\x08\x00", _ETH_MACS + b"\x86\xdd"
    count = total = 0
    last = start_ns
    with TraceWriter(path, lt, nanosecond=True) as w:
        write = w.write
        for pkt, last in it:
            write(pkt if lt == 101 else (eth4 if pkt[0] == 0x45 else eth6) + pkt, last)
            count += 1
            total += len(pkt)
    return TraceSummary(count, total, last - start_ns)
