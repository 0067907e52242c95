"""Tests for ipsp.pcap: indexing pcap/pcapng captures and writing pcap.

Files are built three ways so the reader is not only checked against its
own writer: by hand with struct (exact control over byte order, options
and damage), by ipsp's TraceWriter, and by scapy, which also serves as an
independent reader.
"""

from __future__ import annotations

import io
import mmap
import pickle
import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import ipsp.pcap as pcap
from fastpath import capture
from scapy.layers.inet import IP, TCP, UDP, ICMP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw
from scapy.utils import PcapNgWriter, PcapWriter, RawPcapNgReader, RawPcapReader, wrpcap

TraceError = pcap.TraceError
NS = 1_000_000_000
# Explicit addresses: without them scapy tries ARP resolution, which is slow.
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}

IPV4_PKT = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=500, dport=4500) / b"hello")
IPV6_PKT = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1, dport=2) / b"x")
ETH_V4 = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(dst="192.0.2.1") / ICMP())
ETH_V6 = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IPv6(dst="2001:db8::9") / UDP())


# ---------------------------------------------------------------- builders


def pcap_bytes(
    bo: str,
    nano: bool,
    linktype: int,
    records: list[tuple[int, int, bytes, int]],
    snaplen: int = 65535,
    version: tuple[int, int] = (2, 4),
) -> bytes:
    """Classic pcap in byte order ``bo``; records are (sec, frac, data, origlen)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = bytearray(struct.pack(bo + "IHHiIII", magic, version[0], version[1], 0, 0, snaplen, linktype))
    for sec, frac, data, origlen in records:
        out += struct.pack(bo + "IIII", sec, frac, len(data), origlen) + data
    return bytes(out)


def pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def block(bo: str, btype: int, body: bytes) -> bytes:
    body = pad4(body)
    n = len(body) + 12
    return struct.pack(bo + "II", btype, n) + body + struct.pack(bo + "I", n)


def opt(bo: str, code: int, value: bytes) -> bytes:
    return struct.pack(bo + "HH", code, len(value)) + pad4(value)


def end_opt(bo: str) -> bytes:
    return struct.pack(bo + "HH", 0, 0)


def shb(bo: str, version: tuple[int, int] = (1, 0), options: bytes = b"") -> bytes:
    body = struct.pack(bo + "I", 0x1A2B3C4D) + struct.pack(bo + "HHq", version[0], version[1], -1) + options
    return block(bo, 0x0A0D0D0A, body)


def idb(
    bo: str,
    linktype: int,
    snaplen: int = 0,
    tsresol: int | None = None,
    tsoffset: int | None = None,
    name: bytes | None = None,
) -> bytes:
    opts = b""
    if name is not None:
        opts += opt(bo, 2, name)
    if tsresol is not None:
        opts += opt(bo, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += opt(bo, 14, struct.pack(bo + "q", tsoffset))
    if opts:
        opts += end_opt(bo)
    return block(bo, 1, struct.pack(bo + "HHI", linktype, 0, snaplen) + opts)


def epb(bo: str, ifid: int, units: int, data: bytes, origlen: int | None = None, options: bytes = b"") -> bytes:
    origlen = len(data) if origlen is None else origlen
    fixed = struct.pack(bo + "IIIII", ifid, units >> 32, units & 0xFFFFFFFF, len(data), origlen)
    return block(bo, 6, fixed + pad4(data) + options)


def pb(bo: str, ifid: int, units: int, data: bytes) -> bytes:
    fixed = struct.pack(bo + "HHIIII", ifid, 0, units >> 32, units & 0xFFFFFFFF, len(data), len(data))
    return block(bo, 2, fixed + pad4(data))


def spb(bo: str, origlen: int, data: bytes) -> bytes:
    return block(bo, 3, struct.pack(bo + "I", origlen) + data)


def scapy_read(reader: type, path: Path) -> list:
    """Read a whole file with one of scapy's raw readers, closing it (warnings are errors here)."""
    with reader(str(path)) as r:
        return list(r)


def write_frames(linktype: int, frames: list[bytes], nanosecond: bool = True) -> bytes:
    buf = io.BytesIO()
    with pcap.TraceWriter(buf, linktype, nanosecond=nanosecond) as w:
        for k, f in enumerate(frames):
            w.write(f, 1_700_000_000 * NS + k)
    return buf.getvalue()


def assert_offset(exc: pytest.ExceptionInfo[TraceError], offset: int) -> None:
    assert exc.value.offset == offset
    assert str(exc.value).startswith(f"offset {offset}:")


# ---------------------------------------------------------------- writer round trips


@pytest.mark.parametrize("nanosecond", [False, True])
def test_writer_round_trip(tmp_path: Path, nanosecond: bool) -> None:
    rng = random.Random(7)
    frames = [rng.randbytes(rng.randrange(0, 300)) for _ in range(40)]
    stamps = [rng.randrange(0, (1 << 32) * NS) for _ in frames]
    stamps[0] = 0
    stamps[1] = ((1 << 32) - 1) * NS + 999_999_999  # the last representable instant
    path = tmp_path / "rt.pcap"
    with pcap.TraceWriter(path, pcap.LINKTYPE_RAW, nanosecond=nanosecond) as w:
        for f, ts in zip(frames, stamps):
            w.write(f, ts, origlen=len(f) + 3)
    with pcap.open_trace(path) as t:
        assert (t.format, t.linktype, t.nanosecond, t.count, len(t)) == (
            "pcap",
            pcap.LINKTYPE_RAW,
            nanosecond,
            len(frames),
            len(frames),
        )
        assert t.truncated_tail is None
        for i, (f, ts) in enumerate(zip(frames, stamps)):
            assert bytes(t.frame(i)) == f
            assert t.caplens[i] == len(f)
            assert t.origlens[i] == len(f) + 3
            assert t.linktypes[i] == pcap.LINKTYPE_RAW
            assert t.timestamps[i] == (ts if nanosecond else ts - ts % 1000)
        assert [t.offsets.typecode, t.caplens.typecode, t.origlens.typecode] == ["q", "I", "I"]
        assert [t.timestamps.typecode, t.linktypes.typecode] == ["q", "H"]
        assert [t.l3_offsets.typecode, t.l3_lengths.typecode] == ["q", "I"]
        assert list(t.l3_offsets) == [-1 if not f or f[0] >> 4 not in (4, 6) else t.offsets[i] for i, f in enumerate(frames)]


@pytest.mark.parametrize("nanosecond, magic", [(True, 0xA1B23C4D), (False, 0xA1B2C3D4)])
def test_writer_header_only(tmp_path: Path, nanosecond: bool, magic: int) -> None:
    path = tmp_path / "empty.pcap"
    pcap.TraceWriter(path, pcap.LINKTYPE_ETHERNET, nanosecond=nanosecond, snaplen=1500).close()
    assert path.read_bytes() == struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 1500, 1)
    with pcap.open_trace(path) as t:
        assert (t.count, t.linktype, t.nanosecond, t.truncated_tail) == (0, 1, nanosecond, None)


def test_writer_file_object_snaplen_and_errors() -> None:
    buf = io.BytesIO()
    w = pcap.TraceWriter(buf, pcap.LINKTYPE_ETHERNET, snaplen=8)
    w.write(bytearray(range(20)), 5 * NS + 1)  # cut to the snaplen like a capture would be
    w.write(memoryview(b"abcd"), 6 * NS, origlen=9)
    with pytest.raises(ValueError):
        w.write(b"abcd", 0, origlen=3)
    with pytest.raises(ValueError):
        w.write(b"abcd", -1)
    with pytest.raises(ValueError):
        w.write(b"abcd", (1 << 32) * NS)
    w.close()
    w.close()  # idempotent
    assert not buf.closed  # a caller's file object is the caller's to close
    with pytest.raises(ValueError):
        w.write(b"x", 0)
    t = pcap.Trace(buf.getvalue())
    assert t.count == 2
    assert bytes(t.frame(0)) == bytes(range(8))
    assert (t.caplens[0], t.origlens[0], t.timestamps[0]) == (8, 20, 5 * NS + 1)
    assert (bytes(t.frame(1)), t.origlens[1], t.timestamps[1]) == (b"abcd", 9, 6 * NS)
    with pytest.raises(ValueError):
        pcap.TraceWriter(io.BytesIO(), 0x10000)


# ---------------------------------------------------------------- classic pcap reading


@pytest.mark.parametrize("bo", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_byte_orders(tmp_path: Path, bo: str, nano: bool) -> None:
    records = [
        (1_600_000_000, 123_456, ETH_V4, len(ETH_V4)),
        (1_600_000_001, 999_999, ETH_V6, len(ETH_V6) + 100),
        (0, 0, b"", 0),
    ]
    # Upper bits of the link type field carry FCS flags and must be ignored.
    data = pcap_bytes(bo, nano, 0x14000000 | pcap.LINKTYPE_ETHERNET, records)
    path = tmp_path / "bo.pcap"
    path.write_bytes(data)
    mult = 1 if nano else 1000
    with pcap.open_trace(path) as t:
        assert (t.format, t.linktype, t.nanosecond, t.count) == ("pcap", 1, nano, 3)
        for i, (sec, frac, payload, origlen) in enumerate(records):
            assert bytes(t.frame(i)) == payload
            assert t.origlens[i] == origlen
            assert t.timestamps[i] == sec * NS + frac * mult
            assert t.linktypes[i] == 1
        assert t.l3(0) == (14, 4)
        assert t.l3(1) == (14, 6)
        assert t.l3(2) == (0, 0)


def test_pcap_old_minor_version_accepted() -> None:
    t = pcap.Trace(pcap_bytes("<", False, 101, [(1, 2, IPV4_PKT, len(IPV4_PKT))], version=(2, 2)))
    assert t.count == 1 and t.l3(0) == (0, 4)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "zero.pcap"
    path.write_bytes(b"")
    with pcap.open_trace(path) as t:
        assert (t.count, t.linktype, t.truncated_tail) == (0, -1, None)
        with pytest.raises(IndexError):
            t.frame(0)


def test_frame_is_zero_copy_view_of_mapping(tmp_path: Path) -> None:
    path = tmp_path / "z.pcap"
    path.write_bytes(write_frames(pcap.LINKTYPE_RAW, [IPV4_PKT, IPV6_PKT]))
    t = pcap.open_trace(path)
    f = t.frame(-1)  # negative indices count from the end
    assert isinstance(f, memoryview) and f.readonly
    assert isinstance(f.obj, mmap.mmap)
    assert bytes(f) == IPV6_PKT
    assert t.offsets[1] == 24 + 16 + len(IPV4_PKT) + 16
    with pytest.raises(IndexError):
        t.frame(2)
    with pytest.raises(IndexError):
        t.l3(-3)
    t.close()  # a live frame view must not make close() fail ...
    assert bytes(f) == IPV6_PKT  # ... nor invalidate the view
    with pytest.raises(ValueError):
        t.frame(0)
    with pytest.raises(ValueError):
        t.l3(0)
    t.close()
    assert t.count == 2 and list(t.caplens) == [len(IPV4_PKT), len(IPV6_PKT)]


# ---------------------------------------------------------------- pcapng


def test_pcapng_scapy_two_interfaces(tmp_path: Path) -> None:
    path = tmp_path / "scapy.pcapng"
    p1 = Ether(ETH_V4)
    p1.time = 1_700_000_000.25
    p2 = IP(IPV4_PKT)
    p2.time = 1_700_000_001.5
    p2.sniffed_on = "tun0"  # a second interface, with its own link type (228)
    p3 = Ether(ETH_V6)
    p3.time = 1_700_000_002.125
    w = PcapNgWriter(str(path))
    for p in (p1, p2, p3):
        w.write(p)
    w.close()

    expected = scapy_read(RawPcapNgReader, path)
    with pcap.open_trace(path) as t:
        assert (t.format, t.linktype, t.nanosecond, t.count) == ("pcapng", 1, False, 3)
        assert list(t.linktypes) == [1, pcap.LINKTYPE_IPV4, 1]
        for i, (data, meta) in enumerate(expected):
            assert bytes(t.frame(i)) == data
            units = (meta.tshigh << 32) | meta.tslow
            assert t.timestamps[i] == units * NS // meta.tsresol
            assert t.linktypes[i] == meta.linktype
            assert t.origlens[i] == meta.wirelen
        assert [t.timestamps[i] for i in range(3)] == [
            1_700_000_000_250_000_000,
            1_700_000_001_500_000_000,
            1_700_000_002_125_000_000,
        ]
        assert [t.l3(i) for i in range(3)] == [(14, 4), (0, 4), (14, 6)]


def _rich_little_endian_pcapng() -> tuple[bytes, list[tuple[bytes, int, int, int]]]:
    """A section exercising every packet block, both if_tsresol forms and if_tsoffset.

    Returns the file and, per packet, (data, origlen, timestamp_ns, linktype).
    """
    bo = "<"
    out = shb(bo, options=opt(bo, 1, b"comment on the section") + end_opt(bo))
    # Interface 0: Ethernet, ns resolution, 100 s offset, snaplen 64 (used by SPB).
    out += idb(bo, pcap.LINKTYPE_ETHERNET, snaplen=64, tsresol=9, tsoffset=100, name=b"eth0")
    # Name Resolution Block: skipped.
    out += block(bo, 4, struct.pack("<HH", 1, 8) + bytes([192, 0, 2, 1]) + b"h\0\0\0" + end_opt(bo))
    # Interface 1: raw IP, 2**-20 s units.
    out += idb(bo, pcap.LINKTYPE_RAW, tsresol=0x80 | 20)
    expected = []
    out += epb(bo, 0, 1_700_000_000_123_456_789, ETH_V4, options=opt(bo, 1, b"pkt comment") + end_opt(bo))
    expected.append((ETH_V4, len(ETH_V4), 1_700_000_100_123_456_789, 1))
    units = (1_700_000_000 << 20) + (1 << 19)  # x.5 seconds
    out += epb(bo, 1, units, IPV6_PKT, origlen=1000)
    expected.append((IPV6_PKT, 1000, 1_700_000_000_500_000_000, 101))
    # Interface Statistics Block, Decryption Secrets Block, custom block: skipped.
    out += block(bo, 5, struct.pack("<III", 0, 0, 0))
    out += block(bo, 0x0000000A, struct.pack("<II", 0x544C534B, 3) + b"abc")
    out += block(bo, 0x00000BAD, struct.pack("<I", 32473) + b"vendor stuff")
    # Obsolete Packet Block on interface 0 (tsresol 9, tsoffset 100 s).
    out += pb(bo, 0, 5, ETH_V6)
    expected.append((ETH_V6, len(ETH_V6), 100 * NS + 5, 1))
    # Simple Packet Block: data cut to interface 0's snaplen of 64.
    long_frame = ETH_V4 + bytes(range(60))
    out += spb(bo, len(long_frame), long_frame[:64])
    expected.append((long_frame[:64], len(long_frame), 0, 1))
    out += spb(bo, 30, ETH_V4[:30])  # shorter than snaplen: kept whole
    expected.append((ETH_V4[:30], 30, 0, 1))
    return out, expected


def test_pcapng_hand_built_all_blocks(tmp_path: Path) -> None:
    data, expected = _rich_little_endian_pcapng()
    path = tmp_path / "rich.pcapng"
    path.write_bytes(data)
    with pcap.open_trace(path) as t:
        assert (t.format, t.linktype, t.nanosecond, t.count) == ("pcapng", 1, True, len(expected))
        assert t.truncated_tail is None
        for i, (payload, origlen, ts, lt) in enumerate(expected):
            assert bytes(t.frame(i)) == payload
            assert (t.caplens[i], t.origlens[i]) == (len(payload), origlen)
            assert t.timestamps[i] == ts
            assert t.linktypes[i] == lt
        assert t.l3(1) == (0, 6)
        assert t.l3(3) == (14, 4)


def test_pcapng_scapy_reads_our_hand_built_file(tmp_path: Path) -> None:
    # Independent confirmation that the hand-built blocks are well formed.
    data, expected = _rich_little_endian_pcapng()
    path = tmp_path / "rich.pcapng"
    path.write_bytes(data)
    got = [d for d, _ in scapy_read(RawPcapNgReader, path)]
    assert got[:2] == [e[0] for e in expected[:2]]


def test_pcapng_binary_resolution_coarser_than_us_is_not_nanosecond() -> None:
    data = shb("<") + idb("<", 101, tsresol=0x80 | 10) + epb("<", 0, 3 << 10, IPV4_PKT)
    t = pcap.Trace(data)
    assert (t.nanosecond, t.timestamps[0]) == (False, 3 * NS)
    data = shb("<") + idb("<", 101, tsresol=3) + epb("<", 0, 1234, IPV4_PKT)
    t = pcap.Trace(data)
    assert (t.nanosecond, t.timestamps[0]) == (False, 1_234_000_000)
    data = shb("<") + idb("<", 101, tsresol=12) + epb("<", 0, 1_234_567_891_234, IPV4_PKT)
    t = pcap.Trace(data)
    assert (t.nanosecond, t.timestamps[0]) == (True, 1_234_567_891)


def test_pcapng_sections_with_different_byte_orders() -> None:
    first, expected = _rich_little_endian_pcapng()
    bo = ">"
    second = shb(bo)
    second += idb(bo, pcap.LINKTYPE_IPV6, snaplen=0, tsresol=3, tsoffset=-10)
    second += idb(bo, pcap.LINKTYPE_LINUX_SLL2, snaplen=0)
    second += epb(bo, 0, 1_700_000_000_123, IPV6_PKT)
    sll2 = struct.pack(">HHIHBB8s", 0x0800, 0, 3, 1, 0, 6, b"\x02" * 8) + IPV4_PKT
    second += epb(bo, 1, 7, sll2)
    second += spb(bo, len(IPV6_PKT), pad4(IPV6_PKT))  # snaplen 0: caplen is the original length
    third = shb("<") + idb("<", pcap.LINKTYPE_LOOP) + epb("<", 0, 1, struct.pack(">I", 30) + IPV6_PKT)
    t = pcap.Trace(first + second + third)
    n = len(expected)
    assert t.count == n + 4
    assert t.linktype == pcap.LINKTYPE_ETHERNET  # that of the very first interface
    assert list(t.linktypes[n:]) == [229, 276, 229, 108]
    assert bytes(t.frame(n)) == IPV6_PKT
    assert t.timestamps[n] == 1_700_000_000_123_000_000 - 10 * NS
    assert t.timestamps[n + 1] == 7 * 1000
    assert bytes(t.frame(n + 2)) == IPV6_PKT and t.timestamps[n + 2] == 0
    assert [t.l3(i) for i in range(n, n + 4)] == [(0, 6), (20, 4), (0, 6), (4, 6)]


def test_pcapng_big_endian_only_file(tmp_path: Path) -> None:
    bo = ">"
    data = shb(bo) + idb(bo, pcap.LINKTYPE_ETHERNET, snaplen=1500) + epb(bo, 0, 42, ETH_V4) + spb(bo, len(ETH_V6), ETH_V6)
    path = tmp_path / "be.pcapng"
    path.write_bytes(data)
    with pcap.open_trace(path) as t:
        assert (t.format, t.count, t.nanosecond) == ("pcapng", 2, False)
        assert bytes(t.frame(0)) == ETH_V4 and t.timestamps[0] == 42_000
        assert bytes(t.frame(1)) == ETH_V6
        assert [t.l3(0), t.l3(1)] == [(14, 4), (14, 6)]


def test_pcapng_header_only_is_valid() -> None:
    t = pcap.Trace(shb("<"))
    assert (t.format, t.count, t.linktype, t.truncated_tail) == ("pcapng", 0, -1, None)
    t = pcap.Trace(shb(">") + idb(">", 113))
    assert (t.count, t.linktype) == (0, 113)


# ---------------------------------------------------------------- damaged files


def test_bad_magic() -> None:
    with pytest.raises(TraceError) as exc:
        pcap.Trace(b"\x00\x01\x02\x03" + bytes(40))
    assert_offset(exc, 0)
    assert isinstance(exc.value, ValueError)
    again = pickle.loads(pickle.dumps(exc.value))
    assert (type(again), again.offset, str(again)) == (TraceError, 0, str(exc.value))


def test_bad_magic_via_open_trace(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(TraceError) as exc:
        pcap.open_trace(path)
    assert_offset(exc, 0)


@pytest.mark.parametrize("cut", [1, 3, 10, 23])
def test_pcap_truncated_global_header(cut: int) -> None:
    data = write_frames(1, [ETH_V4])
    with pytest.raises(TraceError) as exc:
        pcap.Trace(data[:cut])
    assert_offset(exc, 0)


@pytest.mark.parametrize("cut", [8, 11, 27])
def test_pcapng_truncated_first_section_header(cut: int) -> None:
    data = shb("<") + idb("<", 1)
    with pytest.raises(TraceError) as exc:
        pcap.Trace(data[:cut])
    assert_offset(exc, 0)


def test_pcap_unsupported_version() -> None:
    with pytest.raises(TraceError) as exc:
        pcap.Trace(pcap_bytes("<", False, 1, [], version=(3, 0)))
    assert_offset(exc, 4)
    with pytest.raises(TraceError) as exc:
        pcap.Trace(pcap_bytes(">", True, 1, [], version=(2, 5)))
    assert_offset(exc, 4)


def test_pcapng_unsupported_version() -> None:
    with pytest.raises(TraceError) as exc:
        pcap.Trace(shb("<", version=(2, 0)))
    assert_offset(exc, 12)


@pytest.mark.parametrize("bo", ["<", ">"])
def test_pcap_absurd_caplen(bo: str) -> None:
    good = pcap_bytes(bo, False, 1, [(1, 0, ETH_V4, len(ETH_V4))])
    bad = bytearray(good + struct.pack(bo + "IIII", 2, 0, 0x7FFFFFFF, 0x7FFFFFFF) + bytes(64))
    second = len(good)
    with pytest.raises(TraceError) as exc:
        pcap.Trace(bytes(bad))
    assert_offset(exc, second + 8)
    assert "2147483647" in str(exc.value)


def test_pcap_caplen_beyond_snaplen_slack() -> None:
    frame = bytes(100 + pcap.SNAPLEN_SLACK + 1)
    with pytest.raises(TraceError) as exc:
        pcap.Trace(pcap_bytes("<", False, 1, [(0, 0, frame, len(frame))], snaplen=100))
    assert_offset(exc, 24 + 8)
    # Within the slack is tolerated: real captures exceed their snaplen.
    ok = bytes(100 + 1000)
    assert pcap.Trace(pcap_bytes("<", False, 1, [(0, 0, ok, len(ok))], snaplen=100)).count == 1


@pytest.mark.parametrize("bo", ["<", ">"])
def test_pcap_truncated_last_record_data(bo: str) -> None:
    recs = [(k, k, bytes([k]) * (20 + k), 20 + k) for k in range(3)]
    data = pcap_bytes(bo, True, 101, recs)
    last = len(pcap_bytes(bo, True, 101, recs[:2]))
    t = pcap.Trace(data[:-5])
    assert t.count == 2
    assert t.truncated_tail is not None and t.truncated_tail.startswith(f"offset {last}:")
    assert "17 of 22" in t.truncated_tail
    assert [bytes(t.frame(i)) for i in range(2)] == [r[2] for r in recs[:2]]


def test_pcap_truncated_last_record_header() -> None:
    recs = [(1, 1, ETH_V4, len(ETH_V4)), (2, 2, ETH_V6, len(ETH_V6))]
    data = pcap_bytes("<", False, 1, recs)
    last = len(pcap_bytes("<", False, 1, recs[:1]))
    t = pcap.Trace(data[: last + 7])
    assert t.count == 1 and bytes(t.frame(0)) == ETH_V4
    assert t.truncated_tail is not None and t.truncated_tail.startswith(f"offset {last}:")
    assert "record header" in t.truncated_tail


def _three_packet_pcapng(bo: str = "<") -> tuple[bytes, list[int]]:
    """File and the offsets of its three EPBs."""
    data = shb(bo) + idb(bo, 1)
    starts = []
    for k, frame in enumerate((ETH_V4, ETH_V6, ETH_V4)):
        starts.append(len(data))
        data += epb(bo, 0, k, frame)
    return data, starts


@pytest.mark.parametrize("bo", ["<", ">"])
@pytest.mark.parametrize("cut", [1, 6, 8, 30, 60])
def test_pcapng_truncated_final_block(bo: str, cut: int) -> None:
    data, starts = _three_packet_pcapng(bo)
    t = pcap.Trace(data[: starts[2] + cut])
    assert t.count == 2
    assert [bytes(t.frame(0)), bytes(t.frame(1))] == [ETH_V4, ETH_V6]
    assert t.truncated_tail is not None and t.truncated_tail.startswith(f"offset {starts[2]}:")


def test_pcapng_truncated_later_section_header() -> None:
    data, _ = _three_packet_pcapng()
    t = pcap.Trace(data + shb(">")[:10])
    assert t.count == 3
    assert t.truncated_tail is not None and t.truncated_tail.startswith(f"offset {len(data)}:")


def _patch_u32(data: bytes, pos: int, value: int, bo: str = "<") -> bytes:
    out = bytearray(data)
    struct.pack_into(bo + "I", out, pos, value)
    return bytes(out)


@pytest.mark.parametrize("bo", ["<", ">"])
def test_pcapng_block_length_not_multiple_of_4(bo: str) -> None:
    data, starts = _three_packet_pcapng(bo)
    blen = struct.unpack_from(bo + "I", data, starts[1] + 4)[0]
    with pytest.raises(TraceError) as exc:
        pcap.Trace(_patch_u32(data, starts[1] + 4, blen + 2, bo))
    assert_offset(exc, starts[1] + 4)
    assert "multiple of 4" in str(exc.value)


def test_pcapng_block_length_too_small() -> None:
    data, starts = _three_packet_pcapng()
    with pytest.raises(TraceError) as exc:
        pcap.Trace(_patch_u32(data, starts[0] + 4, 8))
    assert_offset(exc, starts[0] + 4)


def test_pcapng_block_length_implausible() -> None:
    data, starts = _three_packet_pcapng()
    with pytest.raises(TraceError) as exc:
        pcap.Trace(_patch_u32(data, starts[0] + 4, 0xFFFFFFFC))
    assert_offset(exc, starts[0] + 4)


@pytest.mark.parametrize("bo", ["<", ">"])
def test_pcapng_trailing_length_mismatch(bo: str) -> None:
    data, starts = _three_packet_pcapng(bo)
    trailer = starts[1] - 4  # the trailing length of the first EPB
    with pytest.raises(TraceError) as exc:
        pcap.Trace(_patch_u32(data, trailer, 1234, bo))
    assert_offset(exc, trailer)
    assert "1234" in str(exc.value)


def test_pcapng_epb_caplen_past_block() -> None:
    data, starts = _three_packet_pcapng()
    with pytest.raises(TraceError) as exc:
        pcap.Trace(_patch_u32(data, starts[0] + 20, len(ETH_V4) + 100))
    assert_offset(exc, starts[0] + 20)


def test_pcapng_unknown_interface() -> None:
    data, starts = _three_packet_pcapng()
    with pytest.raises(TraceError) as exc:
        pcap.Trace(_patch_u32(data, starts[1] + 8, 1))
    assert_offset(exc, starts[1] + 8)
    # Interface numbering restarts with each section.
    two_sections = data + shb("<") + epb("<", 0, 0, ETH_V4)
    with pytest.raises(TraceError) as exc:
        pcap.Trace(two_sections)
    assert_offset(exc, len(data) + 28 + 8)


def test_pcapng_epb_before_any_interface() -> None:
    for bo in "<>":
        with pytest.raises(TraceError) as exc:
            pcap.Trace(shb(bo) + epb(bo, 0, 0, ETH_V4) + idb(bo, 1))
        assert_offset(exc, 28 + 8)  # the interface id field
        assert "interface 0 but the section declares 0" in str(exc.value)


@pytest.mark.parametrize("bo", ["<", ">"])
def test_pcapng_unknown_blocks_are_skipped(bo: str) -> None:
    # Types the reader does not know, including local-use ones (high bit set, pcapng 10.1),
    # of various lengths, between and around packets.
    data = shb(bo) + block(bo, 0x0BAD, b"") + idb(bo, 1) + block(bo, 0x80000001, bytes(37))
    data += epb(bo, 0, 1, ETH_V4) + block(bo, 4, bytes(8)) + block(bo, 0x7FFFFFFF, bytes(400))
    data += epb(bo, 0, 2, ETH_V6) + block(bo, 0xFFFFFFFF, b"x")
    t = pcap.Trace(data)
    assert (t.count, t.truncated_tail) == (2, None)
    assert [bytes(t.frame(i)) for i in range(2)] == [ETH_V4, ETH_V6]


def test_pcapng_spb_without_interface() -> None:
    with pytest.raises(TraceError) as exc:
        pcap.Trace(shb("<") + spb("<", 4, b"abcd"))
    assert_offset(exc, 28)


def test_pcapng_bad_byte_order_magic_in_later_section() -> None:
    data, _ = _three_packet_pcapng()
    bad = bytearray(shb("<"))
    bad[8:12] = b"\x01\x02\x03\x04"
    with pytest.raises(TraceError) as exc:
        pcap.Trace(data + bytes(bad))
    assert_offset(exc, len(data) + 8)


def test_pcapng_option_past_block() -> None:
    bo = "<"
    bad = block(bo, 1, struct.pack(bo + "HHI", 1, 0, 0) + struct.pack(bo + "HH", 9, 200))
    with pytest.raises(TraceError) as exc:
        pcap.Trace(shb(bo) + bad)
    assert_offset(exc, 28 + 16)


def test_pcapng_timestamp_overflow() -> None:
    head = shb("<") + idb("<", 1, tsresol=0)  # whole seconds: 2**64-1 of them overflow
    with pytest.raises(TraceError) as exc:
        pcap.Trace(head + epb("<", 0, (1 << 64) - 1, ETH_V4))
    assert_offset(exc, len(head) + 12)  # the timestamp field


# ---------------------------------------------------------------- l3()


def _sll(proto: int, payload: bytes) -> bytes:
    return struct.pack(">HHH8sH", 0, 1, 6, b"\x02" * 8, proto) + payload


def _sll2(proto: int, payload: bytes) -> bytes:
    return struct.pack(">HHIHBB8s", proto, 0, 2, 1, 0, 6, b"\x02" * 8) + payload


L3_CASES: list[tuple[str, int, bytes, tuple[int, int]]] = [
    ("eth-v4", 1, ETH_V4, (14, 4)),
    ("eth-v6", 1, ETH_V6, (14, 6)),
    ("eth-dot1q", 1, bytes(Ether(**MACS) / Dot1Q(vlan=7) / IP() / UDP()), (18, 4)),
    ("eth-qinq", 1, bytes(Ether(**MACS) / Dot1AD(vlan=5) / Dot1Q(vlan=7) / IPv6() / UDP()), (22, 6)),
    ("eth-arp", 1, bytes(Ether(**MACS) / ARP()), (0, 0)),
    ("eth-type-v4-but-v6-inside", 1, bytes(Ether(type=0x0800, **MACS)) + IPV6_PKT, (0, 0)),
    ("eth-short", 1, ETH_V4[:13], (0, 0)),
    ("eth-header-only", 1, ETH_V4[:14], (0, 0)),
    ("eth-vlan-cut", 1, bytes(Ether(**MACS) / Dot1Q(vlan=7) / IP())[:16], (0, 0)),
    ("raw-v4", 101, IPV4_PKT, (0, 4)),
    ("raw-v6", 101, IPV6_PKT, (0, 6)),
    ("raw-junk", 101, b"\x11\x22", (0, 0)),
    ("raw-empty", 101, b"", (0, 0)),
    ("ipv4", 228, IPV4_PKT, (0, 4)),
    ("ipv4-holding-v6", 228, IPV6_PKT, (0, 0)),
    ("ipv6", 229, IPV6_PKT, (0, 6)),
    ("ipv6-holding-v4", 229, IPV4_PKT, (0, 0)),
    ("sll-v4", 113, _sll(0x0800, IPV4_PKT), (16, 4)),
    ("sll-v6", 113, _sll(0x86DD, IPV6_PKT), (16, 6)),
    ("sll-vlan", 113, _sll(0x8100, b"\x00\x07\x08\x00" + IPV4_PKT), (20, 4)),
    ("sll-arp", 113, _sll(0x0806, bytes(ARP())), (0, 0)),
    ("sll-short", 113, _sll(0x0800, b"")[:15], (0, 0)),
    ("sll2-v4", 276, _sll2(0x0800, IPV4_PKT), (20, 4)),
    ("sll2-v6", 276, _sll2(0x86DD, IPV6_PKT), (20, 6)),
    ("sll2-other", 276, _sll2(0x0806, bytes(ARP())), (0, 0)),
    ("sll2-short", 276, _sll2(0x0800, b"")[:19], (0, 0)),
    ("null-le-inet", 0, struct.pack("<I", 2) + IPV4_PKT, (4, 4)),
    ("null-be-inet", 0, struct.pack(">I", 2) + IPV4_PKT, (4, 4)),
    ("null-linux-inet6", 0, struct.pack("<I", 10) + IPV6_PKT, (4, 6)),
    ("null-bsd-inet6", 0, struct.pack("<I", 24) + IPV6_PKT, (4, 6)),
    ("null-freebsd-inet6", 0, struct.pack(">I", 28) + IPV6_PKT, (4, 6)),
    ("null-darwin-inet6", 0, struct.pack("<I", 30) + IPV6_PKT, (4, 6)),
    ("null-unknown-af", 0, struct.pack("<I", 7) + IPV4_PKT, (0, 0)),
    ("null-short", 0, b"\x02\x00\x00", (0, 0)),
    ("loop-inet", 108, struct.pack(">I", 2) + IPV4_PKT, (4, 4)),
    ("loop-inet6", 108, struct.pack(">I", 24) + IPV6_PKT, (4, 6)),
    ("loop-wrong-order", 108, struct.pack("<I", 2) + IPV4_PKT, (0, 0)),
    ("unknown-linktype", 147, IPV4_PKT, (0, 0)),
]


@pytest.mark.parametrize("linktype, frame, expected", [c[1:] for c in L3_CASES], ids=[c[0] for c in L3_CASES])
def test_l3(linktype: int, frame: bytes, expected: tuple[int, int]) -> None:
    t = pcap.Trace(write_frames(linktype, [frame]))
    assert t.l3(0) == expected
    off, fam = expected
    if fam:
        assert t.frame(0)[off] >> 4 == fam
        # the columns give the same IP packet without a call per packet
        assert (t.l3_offsets[0], t.l3_lengths[0]) == (t.offsets[0] + off, len(frame) - off)
        assert bytes(t.ip(0)) == frame[off:]
    else:
        assert (t.l3_offsets[0], t.l3_lengths[0], t.ip(0)) == (-1, 0, None)
    assert _ref_l3(frame, linktype) == expected


def _ref_l3(f: bytes, lt: int) -> tuple[int, int]:
    """The reader's l3 rules, written out in Python: an oracle for the C walker."""

    def checked(off: int, fam: int) -> tuple[int, int]:
        return (off, fam) if fam and off < len(f) and f[off] >> 4 == fam else (0, 0)

    def ethertype_at(p: int) -> tuple[int, int]:
        while p + 2 <= len(f):
            et = int.from_bytes(f[p : p + 2], "big")
            if et not in (0x8100, 0x88A8, 0x9100):
                return checked(p + 2, {0x0800: 4, 0x86DD: 6}.get(et, 0))
            p += 4
        return (0, 0)

    if lt == 1:
        return ethertype_at(12)
    if lt == 113:
        return ethertype_at(14)
    if lt == 101:
        return (0, f[0] >> 4) if f and f[0] >> 4 in (4, 6) else (0, 0)
    if lt in (228, 229):
        return checked(0, 4 if lt == 228 else 6)
    if lt == 276:
        return checked(20, {0x0800: 4, 0x86DD: 6}.get(int.from_bytes(f[:2], "big"), 0)) if len(f) >= 20 else (0, 0)
    if lt in (0, 108) and len(f) >= 4:
        af = int.from_bytes(f[:4], "big" if lt == 108 else "little")
        if lt == 0 and af >> 16 and not af & 0xFFFF:
            af = int.from_bytes(f[:4], "big")
        return checked(4, {2: 4, 10: 6, 24: 6, 28: 6, 30: 6}.get(af, 0))
    return (0, 0)


# Frames that start like real link headers, so the random tails reach the IP checks.
_L3_PREFIXES = [b"", bytes(12) + b"\x08\x00", bytes(12) + b"\x86\xdd", bytes(12) + b"\x81\x00\x00\x01",
                bytes(12) + b"\x88\xa8\x00\x01\x81\x00\x00\x02", bytes(14) + b"\x08\x00", b"\x86\xdd" + bytes(18),
                b"\x02\x00\x00\x00", b"\x00\x00\x00\x18", b"\x00\x00\x00\x1e", b"\x0a\x00\x00\x00"]


@settings(max_examples=2000, deadline=None)
@given(
    linktype=st.sampled_from([0, 1, 101, 108, 113, 228, 229, 276, 147]),
    prefix=st.sampled_from(_L3_PREFIXES),
    tail=st.binary(max_size=40),
)
def test_l3_matches_reference(linktype: int, prefix: bytes, tail: bytes) -> None:
    frame = prefix + tail
    off = capture.l3_offset_of(frame, linktype)
    ref = _ref_l3(frame, linktype)
    assert (off, frame[off] >> 4 if off >= 0 else 0) == (ref if ref[1] else (-1, 0))


def test_l3_on_pcapng_mixed_link_types() -> None:
    data = shb("<") + idb("<", 1) + idb("<", 113) + idb("<", 0)
    data += epb("<", 0, 0, ETH_V6) + epb("<", 1, 0, _sll(0x0800, IPV4_PKT)) + epb("<", 2, 0, struct.pack("<I", 30) + IPV6_PKT)
    t = pcap.Trace(data)
    assert [t.l3(i) for i in range(3)] == [(14, 6), (16, 4), (4, 6)]


# ---------------------------------------------------------------- scapy cross-checks


def _random_packets(n: int, seed: int) -> list:
    rng = random.Random(seed)
    pkts = []
    for k in range(n):
        payload = Raw(rng.randbytes(rng.randrange(0, 1200)))
        kind = rng.randrange(4)
        if kind == 0:
            p = Ether(**MACS) / IP(src="10.1.0.1", dst="10.1.0.2", id=k) / UDP(sport=rng.randrange(65536)) / payload
        elif kind == 1:
            p = Ether(**MACS) / IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(seq=rng.randrange(1 << 32)) / payload
        elif kind == 2:
            p = Ether(**MACS) / Dot1Q(vlan=rng.randrange(4096)) / IP(dst="192.0.2.7") / payload
        else:
            p = Ether(**MACS) / ARP(psrc="192.0.2.1")
        p.time = 1_600_000_000 + rng.randrange(100_000_000) + rng.randrange(1_000_000) / 1_000_000
        pkts.append(p)
    return pkts


@pytest.mark.parametrize("nano", [False, True])
def test_scapy_wrpcap_cross_check(tmp_path: Path, nano: bool) -> None:
    pkts = _random_packets(50, seed=11 + nano)
    path = tmp_path / "scapy.pcap"
    if nano:
        with PcapWriter(str(path), nano=True) as w:
            for p in pkts:
                w.write(p)
    else:
        wrpcap(str(path), pkts)
    expected = scapy_read(RawPcapReader, path)
    assert len(expected) == 50
    with pcap.open_trace(path) as t:
        assert (t.count, t.nanosecond, t.linktype) == (50, nano, 1)
        for i, (p, (data, meta)) in enumerate(zip(pkts, expected)):
            assert bytes(t.frame(i)) == bytes(p) == data
            assert t.timestamps[i] == meta.sec * NS + meta.usec * (1 if nano else 1000)
            assert t.origlens[i] == meta.wirelen
            # scapy rounds the float time to the file's resolution.
            assert abs(t.timestamps[i] - int(p.time) * NS - round((p.time - int(p.time)) * NS)) <= 1000
            layers = p.layers()
            if IP in layers:
                assert t.l3(i) == (len(p) - len(p[IP]), 4)
            elif IPv6 in layers:
                assert t.l3(i) == (len(p) - len(p[IPv6]), 6)
            else:
                assert t.l3(i) == (0, 0)


@pytest.mark.parametrize("nano", [False, True])
def test_scapy_reads_our_writer(tmp_path: Path, nano: bool) -> None:
    pkts = _random_packets(20, seed=3)
    path = tmp_path / "ours.pcap"
    stamps = [1_650_000_000 * NS + k * 1_234_567 for k in range(len(pkts))]
    with pcap.TraceWriter(path, pcap.LINKTYPE_ETHERNET, nanosecond=nano) as w:
        for p, ts in zip(pkts, stamps):
            w.write(bytes(p), ts)
    got = scapy_read(RawPcapReader, path)
    assert [d for d, _ in got] == [bytes(p) for p in pkts]
    div = 1 if nano else 1000
    assert [(m.sec, m.usec) for _, m in got] == [(ts // NS, ts % NS // div) for ts in stamps]


# ---------------------------------------------------------------- robustness property


def _samples() -> list[bytes]:
    recs = [(k, k * 7, bytes(_random_packets(1, k)[0]), 0) for k in range(4)]
    recs = [(s, f, d, len(d)) for s, f, d, _ in recs]
    ng, _ = _rich_little_endian_pcapng()
    be = shb(">") + idb(">", 229, snaplen=100, tsresol=0x80 | 30) + epb(">", 0, 99, IPV6_PKT) + spb(">", 200, bytes(100))
    return [
        pcap_bytes("<", False, 1, recs),
        pcap_bytes(">", True, 1, recs, snaplen=0),
        ng + be,
    ]


SAMPLES = _samples()


def _check_invariants(t: pcap.Trace, size: int) -> None:
    n = t.count
    assert len(t.offsets) == len(t.caplens) == len(t.origlens) == len(t.timestamps) == len(t.linktypes) == n
    assert len(t.l3_offsets) == len(t.l3_lengths) == n
    for i in range(n):
        off, cap = t.offsets[i], t.caplens[i]
        assert 0 <= off <= size
        assert off + cap <= size
        assert len(t.frame(i)) == cap
        l3off, fam = t.l3(i)
        assert fam in (0, 4, 6)
        if fam:
            assert 0 <= l3off < cap
            assert (t.l3_offsets[i], t.l3_lengths[i]) == (off + l3off, cap - l3off)
        else:
            assert l3off == 0
            assert (t.l3_offsets[i], t.l3_lengths[i]) == (-1, 0)
        assert (l3off, fam) == _ref_l3(bytes(t.frame(i)), t.linktypes[i])


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sample=st.sampled_from(range(len(SAMPLES))),
    cut=st.integers(0, 1 << 16),
    flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), max_size=6),
)
def test_damage_never_escapes_trace_error(sample: int, cut: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(SAMPLES[sample])
    for where, mask in flips:
        data[where % len(data)] ^= mask
    del data[cut:]
    try:
        t = pcap.Trace(bytes(data))
    except TraceError as e:
        event("TraceError")
        assert 0 <= e.offset <= len(data)
        assert str(e).startswith(f"offset {e.offset}:")
        return
    event("indexed, truncated tail" if t.truncated_tail else "indexed")
    _check_invariants(t, len(data))


def _record_ends(data: bytes) -> tuple[int, list[tuple[int, bool]]]:
    """(length of the file header, [(end of each record/block, holds a packet)])."""
    if data[:4] != b"\n\r\r\n":
        bo = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        ends, pos = [], 24
        while pos < len(data):
            pos += 16 + struct.unpack_from(bo + "I", data, pos + 8)[0]
            ends.append((pos, True))
        return 24, ends
    ends, pos, bo = [], 0, "<"
    while pos < len(data):
        btype = data[pos : pos + 4]
        if btype == b"\n\r\r\n":
            bo = "<" if data[pos + 8 : pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        pos += struct.unpack_from(bo + "I", data, pos + 4)[0]
        ends.append((pos, struct.unpack(bo + "I", btype)[0] in (2, 3, 6)))
    return ends[0][0], ends[1:]


@settings(max_examples=300, deadline=None)
@given(sample=st.sampled_from(range(len(SAMPLES))), cut=st.integers(0, 10_000))
def test_truncation_keeps_every_complete_packet(sample: int, cut: int) -> None:
    full = SAMPLES[sample]
    ref = pcap.Trace(full)
    cut = min(cut, len(full))
    header, ends = _record_ends(full)
    assert sum(is_pkt for _, is_pkt in ends) == ref.count
    if 0 < cut < header:
        with pytest.raises(TraceError) as exc:
            pcap.Trace(full[:cut])
        assert exc.value.offset == 0
        return
    t = pcap.Trace(full[:cut])
    _check_invariants(t, cut)
    assert t.count == sum(is_pkt for end, is_pkt in ends if end <= cut)
    for i in range(t.count):
        assert t.offsets[i] == ref.offsets[i]
        assert bytes(t.frame(i)) == bytes(ref.frame(i))
        assert t.timestamps[i] == ref.timestamps[i]
    at_boundary = cut in (0, header) or any(end == cut for end, _ in ends)
    assert (t.truncated_tail is None) == at_boundary
