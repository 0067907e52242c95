"""Synthetic traffic: checksum-valid IPv4 UDP packets in standard size mixes.

Simple IMIX is 7:4:1 of IP sizes 40, 576 and 1500 bytes (the mix traces.md and most
vendors use). Seeded, so a run can be repeated exactly.
"""

from __future__ import annotations

import random
import struct

__all__ = ["SIMPLE_IMIX", "internet_checksum", "ipv4_udp", "imix_packets", "fixed_packets"]

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
