"""Indexed, zero-copy reading and simple writing of packet capture files.

Two on-disk formats are understood:

classic pcap
    https://datatracker.ietf.org/doc/draft-ietf-opsawg-pcap/

    A 24-byte file header (magic, version 2.4, reserved fields, snaplen,
    link type) followed by records, each a 16-byte header (seconds,
    fraction, captured length, original length) and the captured bytes.
    The magic number selects both the byte order of every header field
    (it is written in the writer's native order, so reading it back tells
    us whether to swap) and the timestamp resolution: ``0xA1B2C3D4`` means
    the fraction counts microseconds, ``0xA1B23C4D`` nanoseconds.  The
    link type field carries FCS information in its upper bits; only the
    low 16 bits are the link type.

pcapng
    https://datatracker.ietf.org/doc/draft-ietf-opsawg-pcapng/

    A sequence of blocks, each ``type, total length, body, total length``
    with the length repeated at the end so a file can be walked backwards.
    A Section Header Block (SHB, type ``0x0A0D0D0A``, palindromic so it
    can be found before the byte order is known) opens each section and
    carries a byte-order magic; every later block of that section uses
    that byte order.  Interface Description Blocks (IDB) declare link
    type, snaplen and timestamp resolution/offset for the interfaces of
    the section, numbered from 0 in order of appearance.  Packets are in
    Enhanced Packet Blocks (EPB, interface id + 64-bit timestamp), Simple
    Packet Blocks (SPB, interface 0, no timestamp) or the obsolete Packet
    Block (PB).  Every other block type is skipped using its length.

Link-layer types follow https://www.tcpdump.org/linktypes.html.

The reader maps the file and records, per packet, where its bytes are and
its lengths, timestamp and link type in flat ``array.array`` columns;
packet bytes are handed out as ``memoryview`` slices of the mapping and
are never copied.  Problems that make the file unreadable raise
:class:`TraceError` naming the byte offset; a final record or block that
is cut short (the usual result of a capture killed mid-write) is reported
in :attr:`Trace.truncated_tail` instead, keeping every packet before it.
"""

from __future__ import annotations

import mmap
import os
import struct
from array import array
from types import TracebackType
from typing import BinaryIO, Final, TypeAlias, Union

# Anything exposing a contiguous byte buffer (collections.abc.Buffer is 3.12+).
BufferLike: TypeAlias = Union[bytes, bytearray, memoryview, mmap.mmap]

__all__ = [
    "TraceError",
    "Trace",
    "TraceWriter",
    "open_trace",
    "LINKTYPE_NULL",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_RAW",
    "LINKTYPE_LOOP",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL2",
    "MAX_CAPLEN",
]

LINKTYPE_NULL: Final = 0
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101
LINKTYPE_LOOP: Final = 108
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
LINKTYPE_LINUX_SLL2: Final = 276

# A record larger than this is certainly corrupt; bounding it also keeps a
# flipped length field from making us believe in a multi-gigabyte packet.
MAX_CAPLEN: Final = 256 * 1024 * 1024
# Real files carry packets longer than their snaplen: GRO/TSO super-frames
# of up to 64 KiB plus a link header under a 65535 snaplen, and libpcap
# itself tolerates this, so only lengths well beyond it are treated as
# corruption.
SNAPLEN_SLACK: Final = 65536
# Packet data plus generous room for the fixed fields and options.
MAX_BLOCK_LENGTH: Final = MAX_CAPLEN + 65536

_NS_PER_S: Final = 1_000_000_000
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1

# pcap magic numbers as they read in little-endian order.
_PCAP_MAGIC_US: Final = 0xA1B2C3D4
_PCAP_MAGIC_NS: Final = 0xA1B23C4D
_PCAP_MAGIC_US_SWAPPED: Final = 0xD4C3B2A1
_PCAP_MAGIC_NS_SWAPPED: Final = 0x4D3CB2A1
_PCAP_HEADER_LEN: Final = 24
_PCAP_RECORD_LEN: Final = 16

_BT_SHB: Final = 0x0A0D0D0A
_BT_IDB: Final = 0x00000001
_BT_PB: Final = 0x00000002
_BT_SPB: Final = 0x00000003
_BT_EPB: Final = 0x00000006
_BOM_LITTLE: Final = b"\x4d\x3c\x2b\x1a"
_BOM_BIG: Final = b"\x1a\x2b\x3c\x4d"
_OPT_ENDOFOPT: Final = 0
_OPT_IF_TSRESOL: Final = 9
_OPT_IF_TSOFFSET: Final = 14
# Minimum total lengths: 12 bytes of framing plus the fixed body fields.
_MIN_SHB: Final = 28
_MIN_IDB: Final = 20
_MIN_EPB: Final = 32
_MIN_PB: Final = 32
_MIN_SPB: Final = 16

_VLAN_TPIDS: Final = frozenset((0x8100, 0x88A8, 0x9100))
_ETHERTYPE_IPV4: Final = 0x0800
_ETHERTYPE_IPV6: Final = 0x86DD
# AF_INET is 2 everywhere; AF_INET6 differs per OS (Linux 10, the BSDs 24,
# FreeBSD 28, Darwin 30) and a capture may come from any of them.
_AF_FAMILY: Final = {2: 4, 10: 6, 24: 6, 28: 6, 30: 6}

_U32 = {"<": struct.Struct("<I"), ">": struct.Struct(">I")}
_PCAP_HDR = {"<": struct.Struct("<IHHiIII"), ">": struct.Struct(">IHHiIII")}
_PCAP_REC = {"<": struct.Struct("<IIII"), ">": struct.Struct(">IIII")}
_BLOCK_HDR = {"<": struct.Struct("<II"), ">": struct.Struct(">II")}
_SHB_VER = {"<": struct.Struct("<HH"), ">": struct.Struct(">HH")}
_IDB_FIXED = {"<": struct.Struct("<HHI"), ">": struct.Struct(">HHI")}
_EPB_FIXED = {"<": struct.Struct("<IIIII"), ">": struct.Struct(">IIIII")}
_PB_FIXED = {"<": struct.Struct("<HHIIII"), ">": struct.Struct(">HHIIII")}
_OPT_HDR = {"<": struct.Struct("<HH"), ">": struct.Struct(">HH")}
_I64 = {"<": struct.Struct("<q"), ">": struct.Struct(">q")}
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_LE32 = struct.Struct("<I")


class TraceError(ValueError):
    """A capture file is malformed; ``offset`` is where the problem was found."""

    offset: int

    def __init__(self, offset: int, what: str) -> None:
        super().__init__(f"offset {offset}: {what}")
        self.offset = offset
        self.what = what

    def __reduce__(self) -> tuple[type[TraceError], tuple[int, str]]:
        # Exceptions pickle via their args, which here is only the message;
        # rebuild from the parts so errors survive multiprocessing.
        return (TraceError, (self.offset, self.what))


class _Interface:
    """Per-interface state needed to turn an EPB timestamp into nanoseconds."""

    __slots__ = ("linktype", "snaplen", "mul", "div", "shift", "offset_ns")

    def __init__(self, linktype: int, snaplen: int) -> None:
        self.linktype = linktype
        self.snaplen = snaplen
        # Default if_tsresol is 6 (microseconds).
        self.mul = 1000
        self.div = 1
        self.shift = 0
        self.offset_ns = 0

    def set_tsresol(self, code: int) -> None:
        exp = code & 0x7F
        if code & 0x80:
            # Units of 2**-exp seconds: scale to ns first so the shift
            # truncates only below a nanosecond.
            self.mul, self.div, self.shift = _NS_PER_S, 1, exp
        elif exp <= 9:
            self.mul, self.div, self.shift = 10 ** (9 - exp), 1, 0
        else:
            self.mul, self.div, self.shift = 1, 10 ** (exp - 9), 0

    @property
    def sub_microsecond(self) -> bool:
        # Units finer than 1 µs: 10**-7.. or 2**-20 (~0.95 µs) and finer.
        if self.shift:
            return self.shift >= 20
        return self.div > 1 or self.mul < 1000

    def to_ns(self, units: int) -> int:
        return ((units * self.mul) // self.div >> self.shift) + self.offset_ns


class Trace:
    """An indexed capture file: packets are never copied into Python objects while indexing.

    Normally obtained from :func:`open_trace`; constructing one directly
    from any buffer (``bytes``, ``mmap``, ``memoryview``) indexes that
    buffer in place, which is handy for data already in memory.

    ``linktype`` is that of the first interface (-1 when the file declares
    none, e.g. an empty file).  ``nanosecond`` is true when any interface
    records timestamps finer than a microsecond, i.e. when rewriting the
    trace needs a nanosecond pcap to be lossless.  SPB packets carry no
    timestamp; their ``timestamps`` entry is 0.
    """

    format: str
    linktype: int
    nanosecond: bool
    count: int
    offsets: array[int]
    caplens: array[int]
    origlens: array[int]
    timestamps: array[int]
    linktypes: array[int]
    truncated_tail: str | None

    def __init__(self, data: BufferLike, *, path: str | None = None) -> None:
        view = memoryview(data)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        self.path = path
        self._data: BufferLike | None = data
        self._view: memoryview | None = view
        self.format = "pcap"
        self.linktype = -1
        self.nanosecond = False
        self.count = 0
        self.offsets = array("q")
        self.caplens = array("I")
        self.origlens = array("I")
        self.timestamps = array("q")
        self.linktypes = array("H")
        self.truncated_tail = None
        try:
            self._index(view)
        except BaseException:
            # Drop our export so the caller can close the mmap it passed in;
            # the mapping itself is the caller's to close.
            view.release()
            self._view = None
            self._data = None
            raise

    def _index(self, view: memoryview) -> None:
        size = len(view)
        if size == 0:
            # A capture started and killed before writing its header: valid,
            # just empty.
            return
        if size < 4:
            raise TraceError(0, f"file header cut short ({size} of at least 4 bytes)")
        magic = _LE32.unpack_from(view, 0)[0]
        if magic in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS, _PCAP_MAGIC_US_SWAPPED, _PCAP_MAGIC_NS_SWAPPED):
            self._index_pcap(view, magic)
        elif magic == _BT_SHB:
            self.format = "pcapng"
            self._index_pcapng(view)
        else:
            raise TraceError(0, f"unknown magic number 0x{magic:08x} (neither pcap nor pcapng)")
        self.count = len(self.offsets)

    # -- classic pcap ---------------------------------------------------

    def _index_pcap(self, buf: memoryview, magic: int) -> None:
        size = len(buf)
        bo = "<" if magic in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS) else ">"
        self.nanosecond = magic in (_PCAP_MAGIC_NS, _PCAP_MAGIC_NS_SWAPPED)
        if size < _PCAP_HEADER_LEN:
            raise TraceError(0, f"pcap file header cut short ({size} of {_PCAP_HEADER_LEN} bytes)")
        # thiszone and sigfigs are ignored: the draft requires writers to
        # store 0 and real-world values are unreliable.
        _, vmaj, vmin, _, _, snaplen, lt_field = _PCAP_HDR[bo].unpack_from(buf, 0)
        # 2.2 and 2.3 files exist in the wild and share the 2.4 layout.
        if vmaj != 2 or vmin > 4:
            raise TraceError(4, f"unsupported pcap version {vmaj}.{vmin}")
        # Upper bits hold FCS length flags, not part of the link type.
        linktype = lt_field & 0xFFFF
        self.linktype = linktype
        limit = min(MAX_CAPLEN, snaplen + SNAPLEN_SLACK) if snaplen else MAX_CAPLEN
        frac_ns = 1 if self.nanosecond else 1000
        rec = _PCAP_REC[bo]
        offsets, caplens, origlens = self.offsets, self.caplens, self.origlens
        timestamps, linktypes = self.timestamps, self.linktypes
        pos = _PCAP_HEADER_LEN
        while pos < size:
            if size - pos < _PCAP_RECORD_LEN:
                self.truncated_tail = (
                    f"offset {pos}: record header cut short "
                    f"({size - pos} of {_PCAP_RECORD_LEN} bytes present)"
                )
                break
            sec, frac, caplen, origlen = rec.unpack_from(buf, pos)
            if caplen > limit:
                raise TraceError(
                    pos + 8, f"captured length {caplen} exceeds limit {limit} (snaplen {snaplen})"
                )
            data = pos + _PCAP_RECORD_LEN
            if caplen > size - data:
                self.truncated_tail = (
                    f"offset {pos}: packet data cut short "
                    f"({size - data} of {caplen} bytes present)"
                )
                break
            offsets.append(data)
            caplens.append(caplen)
            origlens.append(origlen)
            # Both fields are unsigned 32-bit, so this always fits int64.
            timestamps.append(sec * _NS_PER_S + frac * frac_ns)
            linktypes.append(linktype)
            pos = data + caplen

    # -- pcapng ---------------------------------------------------------

    def _truncated(self, pos: int, what: str) -> None:
        if pos == 0:
            # Without a complete first SHB there is no section to speak of.
            raise TraceError(0, what)
        self.truncated_tail = f"offset {pos}: {what}"

    def _index_pcapng(self, buf: memoryview) -> None:
        size = len(buf)
        bo = "<"
        interfaces: list[_Interface] = []
        offsets, caplens, origlens = self.offsets, self.caplens, self.origlens
        timestamps, linktypes = self.timestamps, self.linktypes
        pos = 0
        while pos < size:
            rem = size - pos
            if rem < 8:
                self._truncated(pos, f"block header cut short ({rem} of 8 bytes present)")
                break
            # The SHB type reads the same in both byte orders, so it can be
            # recognised before we know the new section's order.
            btype = _U32[bo].unpack_from(buf, pos)[0]
            if btype == _BT_SHB:
                if rem < 12:
                    self._truncated(pos, f"section header cut short ({rem} of 12 bytes present)")
                    break
                bom = bytes(buf[pos + 8 : pos + 12])
                if bom == _BOM_LITTLE:
                    bo = "<"
                elif bom == _BOM_BIG:
                    bo = ">"
                else:
                    raise TraceError(pos + 8, f"bad byte-order magic {bom.hex()} in section header")
            blen = _U32[bo].unpack_from(buf, pos + 4)[0]
            if blen % 4:
                raise TraceError(pos + 4, f"block total length {blen} is not a multiple of 4")
            if blen < 12:
                raise TraceError(pos + 4, f"block total length {blen} is less than 12")
            if blen > MAX_BLOCK_LENGTH:
                raise TraceError(pos + 4, f"block total length {blen} runs past any plausible end of file")
            if blen > rem:
                self._truncated(pos, f"block of length {blen} cut short ({rem} bytes present)")
                break
            trailer = _U32[bo].unpack_from(buf, pos + blen - 4)[0]
            if trailer != blen:
                raise TraceError(
                    pos + blen - 4, f"trailing block length {trailer} differs from leading length {blen}"
                )
            end = pos + blen - 4  # end of the block body

            if btype == _BT_SHB:
                if blen < _MIN_SHB:
                    raise TraceError(pos + 4, f"section header block length {blen} is less than {_MIN_SHB}")
                vmaj, vmin = _SHB_VER[bo].unpack_from(buf, pos + 12)
                if vmaj != 1:
                    raise TraceError(pos + 12, f"unsupported pcapng version {vmaj}.{vmin}")
                # Interface ids restart at 0 in every section.
                interfaces = []

            elif btype == _BT_IDB:
                if blen < _MIN_IDB:
                    raise TraceError(pos + 4, f"interface description block length {blen} is less than {_MIN_IDB}")
                linktype, _, snaplen = _IDB_FIXED[bo].unpack_from(buf, pos + 8)
                iface = _Interface(linktype, snaplen)
                self._parse_idb_options(buf, bo, pos + 16, end, iface)
                interfaces.append(iface)
                if self.linktype < 0:
                    self.linktype = linktype
                if iface.sub_microsecond:
                    self.nanosecond = True

            elif btype == _BT_EPB or btype == _BT_PB:
                if btype == _BT_EPB:
                    if blen < _MIN_EPB:
                        raise TraceError(pos + 4, f"enhanced packet block length {blen} is less than {_MIN_EPB}")
                    ifid, ts_hi, ts_lo, caplen, origlen = _EPB_FIXED[bo].unpack_from(buf, pos + 8)
                else:
                    if blen < _MIN_PB:
                        raise TraceError(pos + 4, f"packet block length {blen} is less than {_MIN_PB}")
                    ifid, _, ts_hi, ts_lo, caplen, origlen = _PB_FIXED[bo].unpack_from(buf, pos + 8)
                if ifid >= len(interfaces):
                    raise TraceError(
                        pos + 8, f"packet refers to interface {ifid} but the section declares {len(interfaces)}"
                    )
                data = pos + 28
                if caplen > end - data:
                    raise TraceError(
                        pos + 20, f"captured length {caplen} runs past the end of its block ({end - data} bytes)"
                    )
                iface = interfaces[ifid]
                ts = iface.to_ns((ts_hi << 32) | ts_lo)
                if not _INT64_MIN <= ts <= _INT64_MAX:
                    raise TraceError(pos + 12, "timestamp does not fit in 64-bit nanoseconds")
                offsets.append(data)
                caplens.append(caplen)
                origlens.append(origlen)
                timestamps.append(ts)
                linktypes.append(iface.linktype)

            elif btype == _BT_SPB:
                if blen < _MIN_SPB:
                    raise TraceError(pos + 4, f"simple packet block length {blen} is less than {_MIN_SPB}")
                if not interfaces:
                    raise TraceError(pos, "simple packet block before any interface description block")
                iface = interfaces[0]
                origlen = _U32[bo].unpack_from(buf, pos + 8)[0]
                # The SPB has no captured length: it is the original length
                # cut to the snaplen (0 meaning unlimited) of interface 0.
                caplen = origlen if iface.snaplen == 0 else min(origlen, iface.snaplen)
                data = pos + 12
                if caplen > end - data:
                    raise TraceError(
                        pos + 8, f"packet length {caplen} runs past the end of its block ({end - data} bytes)"
                    )
                offsets.append(data)
                caplens.append(caplen)
                origlens.append(origlen)
                timestamps.append(0)
                linktypes.append(iface.linktype)

            pos += blen

    @staticmethod
    def _parse_idb_options(buf: memoryview, bo: str, pos: int, end: int, iface: _Interface) -> None:
        opt_hdr = _OPT_HDR[bo]
        while end - pos >= 4:
            code, olen = opt_hdr.unpack_from(buf, pos)
            if code == _OPT_ENDOFOPT:
                break
            value = pos + 4
            if olen > end - value:
                raise TraceError(pos, f"option {code} of length {olen} runs past the end of its block")
            if code == _OPT_IF_TSRESOL:
                if olen != 1:
                    raise TraceError(pos, f"if_tsresol option has length {olen}, expected 1")
                iface.set_tsresol(buf[value])
            elif code == _OPT_IF_TSOFFSET:
                if olen != 8:
                    raise TraceError(pos, f"if_tsoffset option has length {olen}, expected 8")
                iface.offset_ns = _I64[bo].unpack_from(buf, value)[0] * _NS_PER_S
            pos = value + ((olen + 3) & ~3)

    # -- access ---------------------------------------------------------

    def _open_view(self) -> memoryview:
        view = self._view
        if view is None:
            raise ValueError("trace is closed")
        return view

    def _packet(self, i: int) -> int:
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError(f"packet index out of range (count {self.count})")
        return i

    def __len__(self) -> int:
        return self.count

    def frame(self, i: int) -> memoryview:
        """Zero-copy view of packet ``i``'s captured bytes (valid until close)."""
        view = self._open_view()
        i = self._packet(i)
        start = self.offsets[i]
        return view[start : start + self.caplens[i]]

    def l3(self, i: int) -> tuple[int, int]:
        """Where packet ``i``'s IP header starts and which IP version it is.

        Returns ``(offset within the frame, 4 or 6)``, or ``(0, 0)`` when the
        frame is not IP, is too short to tell, or uses an unknown link type.
        A non-zero family guarantees the frame holds at least one byte at
        the offset and that its version nibble agrees.
        """
        view = self._open_view()
        i = self._packet(i)
        start = self.offsets[i]
        n = self.caplens[i]
        lt = self.linktypes[i]
        if lt == LINKTYPE_ETHERNET:
            return _ethertype_l3(view, start, n, 12)
        if lt == LINKTYPE_RAW:
            if n < 1:
                return (0, 0)
            version = view[start] >> 4
            return (0, version) if version in (4, 6) else (0, 0)
        if lt == LINKTYPE_IPV4:
            return _checked(view, start, n, 0, 4)
        if lt == LINKTYPE_IPV6:
            return _checked(view, start, n, 0, 6)
        if lt == LINKTYPE_LINUX_SLL:
            # libpcap reinserts stripped VLAN tags after the cooked header,
            # so the same tag walk as Ethernet applies.
            return _ethertype_l3(view, start, n, 14)
        if lt == LINKTYPE_LINUX_SLL2:
            if n < 20:
                return (0, 0)
            return _checked(view, start, n, 20, _ethertype_family(_BE16.unpack_from(view, start)[0]))
        if lt == LINKTYPE_NULL or lt == LINKTYPE_LOOP:
            if n < 4:
                return (0, 0)
            if lt == LINKTYPE_LOOP:
                af = _BE32.unpack_from(view, start)[0]
            else:
                # "Host order" of a machine we cannot know; the AF values are
                # small, so a value with only high bits set is byte-swapped.
                af = _LE32.unpack_from(view, start)[0]
                if af & 0xFFFF0000 and not af & 0xFFFF:
                    af = _BE32.unpack_from(view, start)[0]
            return _checked(view, start, n, 4, _AF_FAMILY.get(af, 0))
        return (0, 0)

    def close(self) -> None:
        """Release the mapping; frames obtained earlier keep it alive until dropped."""
        view, data = self._view, self._data
        self._view = None
        self._data = None
        if view is not None:
            view.release()
        if isinstance(data, mmap.mmap):
            try:
                data.close()
            except BufferError:
                # Caller still holds frame views; the mapping is unmapped
                # when the last of them is garbage collected.
                pass

    def __enter__(self) -> Trace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._view is None else "open"
        return (
            f"<Trace {self.format} {state} path={self.path!r} count={self.count} "
            f"linktype={self.linktype} truncated_tail={self.truncated_tail!r}>"
        )


def _ethertype_family(ethertype: int) -> int:
    if ethertype == _ETHERTYPE_IPV4:
        return 4
    if ethertype == _ETHERTYPE_IPV6:
        return 6
    return 0


def _checked(view: memoryview, start: int, n: int, off: int, family: int) -> tuple[int, int]:
    # Trust the link header only when the IP version nibble agrees, so a
    # caller never sees a family for bytes that cannot be that header.
    if family and off < n and view[start + off] >> 4 == family:
        return (off, family)
    return (0, 0)


def _ethertype_l3(view: memoryview, start: int, n: int, p: int) -> tuple[int, int]:
    """Follow an EtherType at ``p`` through any stacked VLAN tags."""
    while True:
        if p + 2 > n:
            return (0, 0)
        ethertype = _BE16.unpack_from(view, start + p)[0]
        if ethertype not in _VLAN_TPIDS:
            break
        # Skip this TPID and the 2-byte TCI; the next EtherType follows.
        p += 4
    return _checked(view, start, n, p + 2, _ethertype_family(ethertype))


def open_trace(path: str | os.PathLike[str]) -> Trace:
    """Map ``path`` read-only, detect pcap or pcapng by its magic, and index it."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        # mmap refuses empty files, and an empty file is a valid empty trace.
        data: BufferLike = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    try:
        return Trace(data, path=os.fspath(path))
    except BaseException:
        if isinstance(data, mmap.mmap):
            data.close()
        raise


class TraceWriter:
    """Writes classic little-endian pcap, version 2.4.

    The file header is written at once, so a writer closed without packets
    leaves a valid empty capture.  Frames longer than ``snaplen`` are cut
    to it (keeping the true length as the original length), as a capture
    with that snaplen would.  With ``nanosecond=False`` timestamps are
    truncated to whole microseconds.
    """

    def __init__(
        self,
        path_or_file: str | os.PathLike[str] | BinaryIO,
        linktype: int,
        nanosecond: bool = True,
        snaplen: int = 262144,
    ) -> None:
        if not 0 <= linktype <= 0xFFFF:
            raise ValueError(f"link type {linktype} does not fit in 16 bits")
        if not 0 < snaplen <= 0xFFFFFFFF:
            raise ValueError(f"snaplen {snaplen} out of range")
        if isinstance(path_or_file, (str, bytes, os.PathLike)):
            self._file: BinaryIO | None = open(path_or_file, "wb")
            self._owned = True
        else:
            self._file = path_or_file
            self._owned = False
        self.linktype = linktype
        self.nanosecond = nanosecond
        self.snaplen = snaplen
        self._frac_div = 1 if nanosecond else 1000
        self._rec = struct.Struct("<IIII")
        magic = _PCAP_MAGIC_NS if nanosecond else _PCAP_MAGIC_US
        self._file.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))

    def write(self, frame: BufferLike, timestamp_ns: int, origlen: int | None = None) -> None:
        """Append one record; ``origlen`` defaults to the frame's length."""
        f = self._file
        if f is None:
            raise ValueError("writer is closed")
        data = memoryview(frame)
        if data.ndim != 1 or data.format != "B":
            data = data.cast("B")
        length = len(data)
        if origlen is None:
            origlen = length
        elif origlen < length:
            raise ValueError(f"original length {origlen} is less than the frame length {length}")
        if origlen > 0xFFFFFFFF:
            raise ValueError(f"original length {origlen} does not fit in 32 bits")
        if length > self.snaplen:
            data = data[: self.snaplen]
            length = self.snaplen
        sec, ns = divmod(timestamp_ns, _NS_PER_S)
        if not 0 <= sec <= 0xFFFFFFFF:
            raise ValueError(f"timestamp {timestamp_ns} ns is outside the unsigned 32-bit seconds of pcap")
        f.write(self._rec.pack(sec, ns // self._frac_div, length, origlen))
        f.write(data)

    def close(self) -> None:
        f = self._file
        if f is None:
            return
        self._file = None
        if self._owned:
            f.close()
        else:
            f.flush()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
