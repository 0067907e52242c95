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

Indexing walks the records in C (:mod:`fastpath.capture`); only the rare
headers (the pcap file header, pcapng SHB and IDB) are parsed here.  Per
packet it records, in flat ``array.array`` columns, where its bytes are,
its lengths, timestamp and link type, and where its IP header is, so
callers reach IP packets without a Python call per packet.  Two ways in:

* :func:`open_trace` maps the whole file for random access; packet bytes
  are handed out as ``memoryview`` slices of the mapping, never copied.
* :func:`iter_chunks` streams a file of any size through one reused
  buffer, yielding :class:`TraceChunk` objects, in bounded memory.

Problems that make the file unreadable raise :class:`TraceError` naming
the byte offset in the file; a final record or block that is cut short
(the usual result of a capture killed mid-write) is reported in
``truncated_tail`` instead, keeping every packet before it.
"""

from __future__ import annotations

import mmap
import os
import struct
from array import array
from types import TracebackType
from typing import BinaryIO, Final, Iterator, TypeAlias, Union

from fastpath import capture

# Anything exposing a contiguous byte buffer (collections.abc.Buffer is 3.12+).
BufferLike: TypeAlias = Union[bytes, bytearray, memoryview, mmap.mmap]

__all__ = [
    "TraceError",
    "Trace",
    "TraceChunk",
    "TraceWriter",
    "open_trace",
    "iter_chunks",
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
# The smallest streaming buffer: it must hold a pcap file header (24 bytes)
# so that only records, never the header, straddle two chunks.
MIN_CHUNK_BYTES: Final = 64

# pcap magic numbers as they read in little-endian order.
_PCAP_MAGIC_US: Final = 0xA1B2C3D4
_PCAP_MAGIC_NS: Final = 0xA1B23C4D
_PCAP_MAGIC_US_SWAPPED: Final = 0xD4C3B2A1
_PCAP_MAGIC_NS_SWAPPED: Final = 0x4D3CB2A1
_PCAP_HEADER_LEN: Final = 24
_NS_PER_S: Final = 1_000_000_000

_BT_SHB: Final = 0x0A0D0D0A
_OPT_ENDOFOPT: Final = 0
_OPT_IF_TSRESOL: Final = 9
_OPT_IF_TSOFFSET: Final = 14
# Minimum total lengths: 12 bytes of framing plus the fixed body fields.
_MIN_SHB: Final = 28
_MIN_IDB: Final = 20

_U32 = {"<": struct.Struct("<I"), ">": struct.Struct(">I")}
_PCAP_HDR = {"<": struct.Struct("<IHHiIII"), ">": struct.Struct(">IHHiIII")}
_SHB_VER = {"<": struct.Struct("<HH"), ">": struct.Struct(">HH")}
_IDB_FIXED = {"<": struct.Struct("<HHI"), ">": struct.Struct(">HHI")}
_OPT_HDR = {"<": struct.Struct("<HH"), ">": struct.Struct(">HH")}
_I64 = {"<": struct.Struct("<q"), ">": struct.Struct(">q")}
_LE32 = struct.Struct("<I")

_Damaged = capture.Damaged


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


# ---------------------------------------------------------------- indexing


class _Indexer:
    """Indexes one capture file, given whole or as successive buffers.

    The headers are parsed here, the records between them by a
    :class:`fastpath.capture.Walker`, which also keeps what must outlive one
    buffer: the byte order and the current pcapng section's interfaces.
    """

    def __init__(self) -> None:
        self.walker = capture.Walker(MAX_BLOCK_LENGTH)
        self.format = ""  # until the file's first bytes are seen
        self.linktype = -1
        self.nanosecond = False

    def index(self, buf: memoryview, base: int, final: bool) -> tuple[int, str | None, int]:
        """Index the records in ``buf``, which holds the file from offset ``base`` on.

        Returns ``(end, missing, need)``: ``end`` is where the last whole
        record ends; if a record starts there, ``missing`` says what of it is
        not in ``buf`` and ``need`` how many bytes it takes in all.  ``final``
        says ``buf`` runs to the end of the file.  A buffer that is not final
        holds at least MIN_CHUNK_BYTES.  Columns accumulate in the walker.
        """
        try:
            end, missing, need = self._index(buf, final)
        except _Damaged as e:
            raise TraceError(base + e.offset, e.what) from None
        if missing is not None and final and base + end == 0:
            # Without a complete first SHB there is no section to speak of.
            raise TraceError(0, missing)
        return end, missing, need

    def _index(self, buf: memoryview, final: bool) -> tuple[int, str | None, int]:
        w = self.walker
        pos = 0
        if not self.format:
            size = len(buf)
            if size == 0 and final:
                # A capture started and killed before writing its header:
                # valid, just empty.
                self.format = "pcap"
                return 0, None, 0
            if size < 4:
                raise _Damaged(0, f"file header cut short ({size} of at least 4 bytes)")
            magic = _LE32.unpack_from(buf, 0)[0]
            if magic in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS, _PCAP_MAGIC_US_SWAPPED, _PCAP_MAGIC_NS_SWAPPED):
                pos = self._pcap_header(buf, magic)
            elif magic == _BT_SHB:
                self.format = "pcapng"
            else:
                raise _Damaged(0, f"unknown magic number 0x{magic:08x} (neither pcap nor pcapng)")
        if self.format == "pcap":
            pos = w.pcap(buf, pos)
        else:
            while True:
                pos = w.pcapng(buf, pos)
                if w.stop != capture.BLOCK:
                    break
                self._header_block(buf, pos, w.block_len)
                pos += w.block_len
        if w.stop == capture.SHORT:
            return pos, w.missing, w.need
        return pos, None, 0

    def _pcap_header(self, buf: memoryview, magic: int) -> int:
        big = magic in (_PCAP_MAGIC_US_SWAPPED, _PCAP_MAGIC_NS_SWAPPED)
        self.format = "pcap"
        self.nanosecond = magic in (_PCAP_MAGIC_NS, _PCAP_MAGIC_NS_SWAPPED)
        if len(buf) < _PCAP_HEADER_LEN:
            raise _Damaged(0, f"pcap file header cut short ({len(buf)} of {_PCAP_HEADER_LEN} bytes)")
        # thiszone and sigfigs are ignored: the draft requires writers to
        # store 0 and real-world values are unreliable.
        _, vmaj, vmin, _, _, snaplen, lt_field = _PCAP_HDR[">" if big else "<"].unpack_from(buf, 0)
        # 2.2 and 2.3 files exist in the wild and share the 2.4 layout.
        if vmaj != 2 or vmin > 4:
            raise _Damaged(4, f"unsupported pcap version {vmaj}.{vmin}")
        # Upper bits hold FCS length flags, not part of the link type.
        self.linktype = lt_field & 0xFFFF
        limit = min(MAX_CAPLEN, snaplen + SNAPLEN_SLACK) if snaplen else MAX_CAPLEN
        self.walker.set_pcap(big, self.nanosecond, self.linktype, limit, snaplen)
        return _PCAP_HEADER_LEN

    def _header_block(self, buf: memoryview, pos: int, blen: int) -> None:
        """An SHB or IDB, its framing already checked by the walker."""
        w = self.walker
        bo = ">" if w.big_endian else "<"
        if _U32[bo].unpack_from(buf, pos)[0] == _BT_SHB:
            if blen < _MIN_SHB:
                raise _Damaged(pos + 4, f"section header block length {blen} is less than {_MIN_SHB}")
            vmaj, vmin = _SHB_VER[bo].unpack_from(buf, pos + 12)
            if vmaj != 1:
                raise _Damaged(pos + 12, f"unsupported pcapng version {vmaj}.{vmin}")
            w.new_section()
            return
        if blen < _MIN_IDB:
            raise _Damaged(pos + 4, f"interface description block length {blen} is less than {_MIN_IDB}")
        linktype, _, snaplen = _IDB_FIXED[bo].unpack_from(buf, pos + 8)
        tsresol, offset_s = _idb_options(buf, bo, pos + 16, pos + blen - 4)
        w.add_interface(linktype, snaplen, tsresol, offset_s)
        if self.linktype < 0:
            self.linktype = linktype
        # Units finer than 1 µs: 10**-7 s and finer, or 2**-20 s (~0.95 µs) and finer.
        exp = tsresol & 0x7F
        if exp >= 20 if tsresol & 0x80 else exp > 6:
            self.nanosecond = True


def _idb_options(buf: memoryview, bo: str, pos: int, end: int) -> tuple[int, int]:
    """The if_tsresol code and if_tsoffset seconds of an IDB (default 6, i.e. µs, and 0)."""
    tsresol, offset_s = 6, 0
    opt_hdr = _OPT_HDR[bo]
    while end - pos >= 4:
        code, olen = opt_hdr.unpack_from(buf, pos)
        if code == _OPT_ENDOFOPT:
            break
        value = pos + 4
        if olen > end - value:
            raise _Damaged(pos, f"option {code} of length {olen} runs past the end of its block")
        if code == _OPT_IF_TSRESOL:
            if olen != 1:
                raise _Damaged(pos, f"if_tsresol option has length {olen}, expected 1")
            tsresol = buf[value]
        elif code == _OPT_IF_TSOFFSET:
            if olen != 8:
                raise _Damaged(pos, f"if_tsoffset option has length {olen}, expected 8")
            offset_s = _I64[bo].unpack_from(buf, value)[0]
        pos = value + ((olen + 3) & ~3)
    return tsresol, offset_s


# ---------------------------------------------------------------- packet access


class _Packets:
    """Indexed packets: the columns and access to their bytes.

    Per packet ``i``: ``offsets[i]`` is where its captured bytes start in
    the buffer and ``caplens[i]`` how many there are; ``origlens[i]`` its
    length on the wire; ``timestamps[i]`` nanoseconds since the epoch (0 for
    pcapng SPB packets, which carry none); ``linktypes[i]`` its link type;
    ``l3_offsets[i]`` where its IPv4/IPv6 header starts in the buffer, or
    -1 when the frame carries none we can find, and ``l3_lengths[i]`` the
    bytes from there to the end of the frame (0 when there is no header).
    A non-negative ``l3_offsets[i]`` guarantees at least one byte there and
    that its version nibble agrees with the link header.
    """

    count: int
    offsets: array[int]  # "q"
    caplens: array[int]  # "I"
    origlens: array[int]  # "I"
    timestamps: array[int]  # "q"
    linktypes: array[int]  # "H"
    l3_offsets: array[int]  # "q"
    l3_lengths: array[int]  # "I"

    def _set_columns(self, columns: tuple[array[int], ...]) -> None:
        (self.offsets, self.caplens, self.origlens, self.timestamps, self.linktypes,
         self.l3_offsets, self.l3_lengths) = columns
        self.count = len(self.offsets)

    def _open_view(self) -> memoryview:
        raise NotImplementedError

    def _packet(self, i: int) -> int:
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError(f"packet index out of range (count {self.count})")
        return i

    def __len__(self) -> int:
        return self.count

    def frame(self, i: int) -> memoryview:
        """Zero-copy view of packet ``i``'s captured bytes."""
        view = self._open_view()
        i = self._packet(i)
        start = self.offsets[i]
        return view[start : start + self.caplens[i]]

    def ip(self, i: int) -> memoryview | None:
        """Zero-copy view of packet ``i`` from its IP header on, or None if it has none."""
        view = self._open_view()
        i = self._packet(i)
        start = self.l3_offsets[i]
        return None if start < 0 else view[start : start + self.l3_lengths[i]]

    def l3(self, i: int) -> tuple[int, int]:
        """Where packet ``i``'s IP header starts and which IP version it is.

        Returns ``(offset within the frame, 4 or 6)``, or ``(0, 0)`` when the
        frame is not IP, is too short to tell, or uses an unknown link type.
        """
        view = self._open_view()
        i = self._packet(i)
        start = self.l3_offsets[i]
        if start < 0:
            return (0, 0)
        return (start - self.offsets[i], view[start] >> 4)


class Trace(_Packets):
    """An indexed capture file: packets are never copied into Python objects while indexing.

    Normally obtained from :func:`open_trace`; constructing one directly
    from any buffer (``bytes``, ``mmap``, ``memoryview``) indexes that
    buffer in place, which is handy for data already in memory.

    ``linktype`` is that of the first interface (-1 when the file declares
    none, e.g. an empty file).  ``nanosecond`` is true when any interface
    records timestamps finer than a microsecond, i.e. when rewriting the
    trace needs a nanosecond pcap to be lossless.  The columns are described
    in :class:`_Packets`; their offsets are into the whole buffer.
    """

    format: str
    linktype: int
    nanosecond: bool
    truncated_tail: str | None

    def __init__(self, data: BufferLike, *, path: str | None = None) -> None:
        view = memoryview(data)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        self.path = path
        self._data: BufferLike | None = data
        self._view: memoryview | None = view
        indexer = _Indexer()
        try:
            end, missing, _ = indexer.index(view, 0, final=True)
        except BaseException:
            # Drop our export so the caller can close the mmap it passed in;
            # the mapping itself is the caller's to close.
            view.release()
            self._view = None
            self._data = None
            raise
        self.format = indexer.format
        self.linktype = indexer.linktype
        self.nanosecond = indexer.nanosecond
        self._set_columns(indexer.walker.take())
        self.truncated_tail = None if missing is None else f"offset {end}: {missing}"

    def _open_view(self) -> memoryview:
        view = self._view
        if view is None:
            raise ValueError("trace is closed")
        return view

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


# ---------------------------------------------------------------- streaming


class TraceChunk(_Packets):
    """The packets of one chunk of a streamed capture (see :func:`iter_chunks`).

    ``buffer`` holds the chunk's whole records.  It is the stream's reused
    buffer: it, and frames taken from it, stay valid only until the next
    chunk is requested; copy what must live longer.  The columns (see
    :class:`_Packets`) cover this chunk only, with offsets into ``buffer``;
    ``base`` is the file offset of ``buffer[0]`` and ``first_index`` the
    index in the whole file of the chunk's first packet.  ``format``,
    ``linktype`` and ``nanosecond`` are as known so far (a later pcapng IDB
    may declare a finer interface).  ``truncated_tail`` is set on the last
    chunk only, as in :class:`Trace`.
    """

    def __init__(
        self,
        buffer: memoryview,
        base: int,
        first_index: int,
        indexer: _Indexer,
        columns: tuple[array[int], ...],
        truncated_tail: str | None,
    ) -> None:
        self.buffer = buffer
        self.base = base
        self.first_index = first_index
        self.format = indexer.format
        self.linktype = indexer.linktype
        self.nanosecond = indexer.nanosecond
        self.truncated_tail = truncated_tail
        self._set_columns(columns)

    def _open_view(self) -> memoryview:
        return self.buffer

    def __repr__(self) -> str:
        return (
            f"<TraceChunk {self.format} base={self.base} first_index={self.first_index} "
            f"count={self.count} truncated_tail={self.truncated_tail!r}>"
        )


def iter_chunks(
    source: str | os.PathLike[str] | BinaryIO, *, chunk_bytes: int = 64 << 20
) -> Iterator[TraceChunk]:
    """Stream a pcap or pcapng file in chunks, in memory bounded whatever its size.

    ``source`` is a path or a binary file object with ``readinto`` (read
    from its current position, left open).  The file is read with
    ``readinto`` into one buffer of ``chunk_bytes``, reused for every
    chunk, so peak memory is about ``chunk_bytes`` plus the columns of one
    chunk (38 bytes a packet).  A record straddling the end of the buffer
    is carried into the next chunk.  A single record larger than
    ``chunk_bytes`` gets a larger buffer for that record only (grown by
    doubling up to its length, so a damaged length field cannot allocate
    more than the file holds), and the stream goes back to the first
    buffer after it.  pcapng sections and interfaces carry across chunks.

    Chunks without packets are not yielded, except the last, which always
    is: it carries ``truncated_tail`` and lets a caller learn the link type
    of a file without packets.  Errors are raised, as :class:`TraceError`
    with the absolute file offset, when the chunk holding them is reached;
    every packet of the chunks before was yielded.  A file that cannot be
    opened raises on the first ``next()``.
    """
    if chunk_bytes < MIN_CHUNK_BYTES:
        raise ValueError(f"chunk_bytes {chunk_bytes} is less than {MIN_CHUNK_BYTES}")
    return _stream(source, chunk_bytes)


def _stream(source: str | os.PathLike[str] | BinaryIO, chunk_bytes: int) -> Iterator[TraceChunk]:
    owned = isinstance(source, (str, bytes, os.PathLike))
    # Unbuffered: readinto goes straight from the kernel into our buffer.
    f: BinaryIO = open(source, "rb", buffering=0) if owned else source  # type: ignore[arg-type,assignment]
    try:
        indexer = _Indexer()
        home = memoryview(bytearray(chunk_bytes))
        buf = home
        filled = 0  # bytes of the file in buf, from file offset base
        base = 0
        first_index = 0
        eof = False
        while True:
            while filled < len(buf) and not eof:
                n = f.readinto(buf[filled:])
                eof = not n
                filled += n or 0
            end, missing, need = indexer.index(buf[:filled], base, eof)
            columns = indexer.walker.take()
            if columns[0] or eof:
                tail = f"offset {base + end}: {missing}" if eof and missing is not None else None
                yield TraceChunk(buf[:end], base, first_index, indexer, columns, tail)
            if eof:
                return
            first_index += len(columns[0])
            # Carry the record cut by the end of the buffer to the front of
            # the next; only a record that does not fit gets a larger buffer.
            carry = filled - end
            size = len(home) if need <= len(home) else min(need, 2 * len(buf))
            if size != len(buf):
                nbuf = home if size == len(home) else memoryview(bytearray(size))
            else:
                nbuf = buf
            nbuf[:carry] = buf[end:filled]  # a memmove when nbuf is buf
            buf, base, filled = nbuf, base + end, carry
    finally:
        if owned:
            f.close()


# ---------------------------------------------------------------- writing


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
