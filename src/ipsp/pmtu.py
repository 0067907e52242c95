"""Path MTU for a forwarder in front of the engine: what the path to each peer carries, the
ICMP errors that tell inner senders, and RFC 791 fragmentation of inner packets.

- :class:`PathMTU` keeps one estimate per peer (RFC 4301 8.2.1): it starts at the configured
  path MTU, only ICMP reports lower it (never below 576 for IPv4, 1280 for IPv6), and a
  lowered value ages back after ten minutes (RFC 4301 8.2.2, RFC 1191 6.3, RFC 8201 5.3).
  The forwarder copies it into each outbound SA (``SAState.set_path_mtu``); the kernel then
  hands back, as TOO_BIG, the packets whose ESP would not fit.
- :func:`frag_needed` and :func:`packet_too_big` build the ICMP "fragmentation needed"
  (RFC 792, RFC 1191 section 4) and ICMPv6 "packet too big" (RFC 4443 3.2) for such a packet,
  announcing the largest inner packet that fits (``SAState.max_inner``); they return None
  where the RFCs forbid an error (about an ICMP error, a non-first fragment, a source that is
  not one host). :class:`ipsp.ratelimit.RateLimit` bounds how many go out (RFC 1812 4.3.2.8, RFC 4443 2.4 f).
- :func:`fragment4` splits an IPv4 packet with DF clear (RFC 791 3.2) for SAs with
  ``fragment = "inner"``.
- :func:`parse_frag_needed` reads an ICMP "fragmentation needed" from a raw ICMP socket, for
  the one case the kernel does not queue it on the socket: UDP with DF clear.

Everything here is per packet in Python, and runs only for packets that do not fit.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import struct
import threading
import time
from typing import Callable

from ipsp.gen import internet_checksum

__all__ = ["PathMTU", "frag_needed", "packet_too_big", "fragment4", "parse_frag_needed",
           "MIN_MTU", "PMTU_AGE", "PMTU_PEERS"]

MIN_MTU = {4: 576, 6: 1280}       # RFC 1122 3.3.3 (what every IPv4 host reassembles); RFC 8200 5
PMTU_AGE = 600.0                  # seconds before a lowered estimate is tried again (RFC 1191 6.3)
PMTU_PEERS = 4096                 # estimates kept at most (PathMTU's docstring says why)
ICMP_QUOTE_LIMIT = 576            # RFC 1812 4.3.2.3: the whole ICMP error within 576 bytes
ICMPV6_QUOTE_LIMIT = 1280         # RFC 4443 2.4 (c): within the minimum IPv6 MTU
_IPV4_ICMP_ERRORS = {3, 4, 5, 11, 12}     # RFC 792; RFC 1122 3.2.2: never an error about these
_IPV6_EXT = {0, 43, 60}                   # hop-by-hop, routing, destination options
_PREC_INTERNETWORK_CONTROL = 0xC0         # RFC 1812 4.3.2.5: precedence 6 for ICMP errors
_ids = itertools.count(int.from_bytes(os.urandom(2), "big"))


# -- the estimates -------------------------------------------------------------------------------

class PathMTU:
    """Path MTU estimates per peer address. Thread-safe: a receive thread reports, a timer
    ages, the send path reads.

    The reports come off the network unauthenticated (RFC 4301 8.2.1 leaves that to local
    policy), so at most *limit* peers are remembered: a forged report naming a new address
    each time would otherwise grow the table until the next aging. When it is full, the
    estimate lowered longest ago goes (``evicted``): at worst that peer's next large packet
    draws a fresh ICMP report and the estimate is learned again."""

    def __init__(self, initial: int, *, clock: Callable[[], float] = time.monotonic, age: float = PMTU_AGE,
                 limit: int = PMTU_PEERS):
        self.initial = initial
        self.age = age
        self.limit = limit
        self._clock = clock
        # peer -> (mtu, when), oldest first: a report re-inserts its peer at the end
        self._lowered: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self.reports = 0           # reports taken (they lowered an estimate)
        self.ignored = 0           # reports that did not: higher than the estimate
        self.evicted = 0           # estimates forgotten early, to make room (see above)

    def get(self, peer) -> int:
        with self._lock:
            entry = self._lowered.get(str(peer))
        return min(entry[0], self.initial) if entry else self.initial

    def report(self, peer, mtu: int) -> bool:
        """An ICMP report says packets to *peer* must be at most *mtu* bytes. Lowers the
        estimate (clamped to the minimum MTU of the peer's IP version; a report cannot raise
        it, RFC 8201 4); returns True if it changed."""
        address = ipaddress.ip_address(str(peer))
        mtu = max(int(mtu), MIN_MTU[address.version])
        key = str(address)
        with self._lock:
            current = self._lowered.get(key, (self.initial, 0.0))[0]
            if mtu >= min(current, self.initial):
                self.ignored += 1
                return False
            if self._lowered.pop(key, None) is None and len(self._lowered) >= self.limit:
                del self._lowered[next(iter(self._lowered))]
                self.evicted += 1
            self._lowered[key] = (mtu, self._clock())
            self.reports += 1
            return True

    def expire(self) -> list[str]:
        """Forget estimates lowered more than ``age`` seconds ago; returns their peers."""
        now = self._clock()
        with self._lock:
            gone = [p for p, (_, when) in self._lowered.items() if now - when >= self.age]
            for p in gone:
                del self._lowered[p]
        return gone

    def set_initial(self, mtu: int) -> None:
        with self._lock:
            self.initial = mtu

    def lowered(self) -> dict[str, int]:
        with self._lock:
            return {p: m for p, (m, _) in self._lowered.items()}


# -- ICMP errors ---------------------------------------------------------------------------------

def _one_host(address) -> bool:
    # RFC 1122 3.2.2 / RFC 1812 4.3.2.7, RFC 4443 2.4 (e): an error goes only to a source
    # that names one host
    return not (address.is_unspecified or address.is_multicast or address.is_loopback
                or (address.version == 4 and (address == ipaddress.IPv4Address("255.255.255.255")
                                              or address in ipaddress.ip_network("240.0.0.0/4"))))


def frag_needed(packet: bytes, mtu: int, source: ipaddress.IPv4Address) -> bytes | None:
    """The ICMP "fragmentation needed and DF set" (type 3, code 4) for an IPv4 *packet* that
    cannot go on, from *source* to the packet's sender, announcing *mtu* as the next-hop MTU
    (RFC 1191 4). It quotes as much of the packet as fits 576 bytes (RFC 1812 4.3.2.3).
    None if no error may be sent (RFC 1122 3.2.2): about an ICMP error, a fragment other
    than the first, or to a source or from a destination that is not one host."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl:
        return None
    if struct.unpack_from("!H", packet, 6)[0] & 0x1FFF:
        return None
    if packet[9] == 1 and len(packet) > ihl and packet[ihl] in _IPV4_ICMP_ERRORS:
        return None
    src, dst = ipaddress.IPv4Address(packet[12:16]), ipaddress.IPv4Address(packet[16:20])
    if not _one_host(src) or not _one_host(dst):
        return None
    quote = packet[:ICMP_QUOTE_LIMIT - 28]
    icmp = bytearray(struct.pack("!BBHHH", 3, 4, 0, 0, max(68, min(mtu, 0xFFFF))) + quote)   # RFC 791: >= 68
    struct.pack_into("!H", icmp, 2, internet_checksum(bytes(icmp)))
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, _PREC_INTERNETWORK_CONTROL, 20 + len(icmp),
                                   next(_ids) & 0xFFFF, 0, 64, 1, 0, source.packed, src.packed))
    struct.pack_into("!H", header, 10, internet_checksum(bytes(header)))
    return bytes(header + icmp)


def _icmpv6_type(packet: bytes) -> int | None:
    # the ICMPv6 type of an IPv6 packet, past its extension headers; None if it is not ICMPv6
    nh, off = packet[6], 40
    while nh in _IPV6_EXT or nh == 44:
        if off + 8 > len(packet):
            return None
        if nh == 44:
            if struct.unpack_from("!H", packet, off + 2)[0] & 0xFFF8:
                return None       # not the first fragment: the type is not here
            nh, off = packet[off], off + 8
        else:
            nh, off = packet[off], off + (packet[off + 1] + 1) * 8
    return packet[off] if nh == 58 and off < len(packet) else None


def packet_too_big(packet: bytes, mtu: int, source: ipaddress.IPv6Address) -> bytes | None:
    """The ICMPv6 "packet too big" (type 2, RFC 4443 3.2) for an IPv6 *packet*, from
    *source* to its sender, with *mtu* (at least 1280: RFC 8201 4) and as much of the packet
    as fits 1280 bytes (RFC 4443 2.4 c). None if no error may be sent: about an ICMPv6 error
    message (2.4 e.1) or to a source that is not one host (2.4 e.6). Unlike other errors it
    may answer a packet to a multicast group (2.4 e.2)."""
    if len(packet) < 40 or packet[0] >> 4 != 6:
        return None
    src = ipaddress.IPv6Address(packet[8:24])
    if not _one_host(src):
        return None
    kind = _icmpv6_type(packet)
    if kind is not None and kind < 128:
        return None
    quote = packet[:ICMPV6_QUOTE_LIMIT - 48]
    icmp = bytearray(struct.pack("!BBHI", 2, 0, 0, max(1280, mtu)) + quote)
    pseudo = source.packed + src.packed + struct.pack("!I3xB", len(icmp), 58)   # RFC 8200 8.1
    struct.pack_into("!H", icmp, 2, internet_checksum(pseudo + bytes(icmp)))
    header = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), 58, 64, source.packed, src.packed)
    return header + bytes(icmp)


# -- inner fragmentation -------------------------------------------------------------------------

def _copied_options(options: bytes) -> bytes:
    """The options a fragment after the first carries: those with the copied flag set
    (RFC 791 3.1, "Options"), padded to a multiple of 4 bytes."""
    out, i = bytearray(), 0
    while i < len(options):
        kind = options[i]
        if kind == 0:                 # end of option list
            break
        if kind == 1:                 # no-operation: one byte, not copied
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            break                     # malformed: keep what was read
        length = options[i + 1]
        if kind & 0x80:
            out += options[i:i + length]
        i += length
    return bytes(out + b"\0" * (-len(out) % 4))


def fragment4(packet: bytes, mtu: int) -> list[bytes]:
    """Split an IPv4 packet into fragments of at most *mtu* bytes (RFC 791 3.2, "An Example
    Fragmentation Procedure"): every fragment but the last carries a multiple of 8 data
    bytes; the first keeps all options, the others only the copied ones; offsets continue
    those of a packet that was itself a fragment, and its MF flag goes to the last piece.
    A packet that fits comes back alone. Raises ValueError for a packet with DF set, a
    malformed header, or an MTU that leaves no room for 8 data bytes."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        raise ValueError("not an IPv4 packet")
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    if ihl < 20 or total < ihl or total > len(packet):
        raise ValueError("malformed IPv4 header")
    if total <= mtu:
        return [packet[:total]]
    flags = struct.unpack_from("!H", packet, 6)[0]
    if flags & 0x4000:
        raise ValueError("DF is set: the packet may not be fragmented")
    later_options = _copied_options(packet[20:ihl])
    if mtu < ihl + 8 or mtu < 20 + len(later_options) + 8:
        raise ValueError(f"MTU {mtu} leaves no room for data after a {ihl}-byte header")
    offset, more = flags & 0x1FFF, flags & 0x2000
    data = packet[ihl:total]
    fragments, pos = [], 0
    while pos < len(data):
        header = bytearray(packet[:ihl] if pos == 0 else packet[:20] + later_options)
        room = (mtu - len(header)) & ~7
        chunk = data[pos:pos + room]
        last = pos + len(chunk) >= len(data)
        header[0] = 0x40 | (len(header) // 4)
        struct.pack_into("!HHH", header, 2, len(header) + len(chunk), struct.unpack_from("!H", packet, 4)[0],
                         (0 if last and not more else 0x2000) | (offset + pos // 8))
        struct.pack_into("!H", header, 10, 0)
        struct.pack_into("!H", header, 10, internet_checksum(bytes(header)))
        fragments.append(bytes(header) + chunk)
        pos += len(chunk)
    return fragments


# -- ICMP reports read from a raw ICMP socket ----------------------------------------------------

def parse_frag_needed(packet: bytes, local: bytes, protocol: int, port: int = 0) -> tuple[str, int] | None:
    """(destination, MTU) from an ICMP "fragmentation needed" (an IPv4 packet as a raw ICMP
    socket delivers it) about a packet this host sent from *local* with IP *protocol*
    (17: from UDP *port*); None for anything else."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != 1:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:]
    if len(icmp) < 8 + 20 or icmp[0] != 3 or icmp[1] != 4:
        return None
    mtu = struct.unpack_from("!H", icmp, 6)[0]
    quoted = icmp[8:]
    qihl = (quoted[0] & 0x0F) * 4
    if quoted[0] >> 4 != 4 or qihl < 20 or len(quoted) < qihl or quoted[9] != protocol or quoted[12:16] != local:
        return None
    if protocol == 17 and (len(quoted) < qihl + 2 or struct.unpack_from("!H", quoted, qihl)[0] != port):
        return None
    if mtu == 0:
        return None        # an RFC 1191 unaware router: nothing to learn (no plateau guessing)
    return str(ipaddress.IPv4Address(quoted[16:20])), mtu
