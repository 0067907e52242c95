"""Offline ESP over capture files: ``ipsp trace encrypt`` and ``ipsp trace decrypt``.

Packets are processed in chunks through the kernel's batch calls, one batch per SA, and
written back in their original order with their link-layer headers kept. Which SA a packet
uses:
  - decrypt: the SA whose SPI and destination address match the ESP packet (RFC 4301 4.1);
    ESP-in-UDP is recognised on the SA's UDP port.
  - encrypt: the first SA, in file order, whose ``match`` selector (inner source and
    destination prefixes) covers the packet; a transport-mode SA without ``match`` takes
    packets between its own src and dst; a tunnel-mode SA without ``match`` takes every
    packet when it is the only SA in the file.
Packets no SA claims (non-IP frames, other traffic, IKE) are copied unchanged and counted as
passed. Packets an SA claims but cannot process are counted per reason and left out of
the output; every packet is in exactly one count.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import fastpath
from fastpath import PacketBatch, Status

from ipsp import pcap
from ipsp.sa import SAConfig

__all__ = ["TraceReport", "encrypt_trace", "decrypt_trace"]

CHUNK = 4096
HEADROOM = 128


@dataclass
class TraceReport:
    packets: int = 0           # frames read
    processed: int = 0         # frames encrypted or decrypted and written
    passed: int = 0            # frames no SA claimed, written unchanged
    failed: Counter = field(default_factory=Counter)   # status name -> frames left out
    truncated_tail: str | None = None

    @property
    def dropped(self) -> int:
        return sum(self.failed.values())

    def lines(self) -> list[str]:
        out = [f"{self.packets} packets read: {self.processed} processed, {self.passed} passed through "
               f"unchanged, {self.dropped} dropped"]
        for name, n in sorted(self.failed.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"  {n:>10}  {name}: {fastpath.status_description(Status[name])}")
        if self.truncated_tail:
            out.append(f"warning: {self.truncated_tail}")
        return out


# ---------------------------------------------------------------------------------------
# minimal header views, only to choose an SA (the kernel does the real parsing)

def _ip_fields(pkt: memoryview) -> tuple[int, bytes, bytes, int, int] | None:
    """(version, src, dst, protocol, offset of the payload) or None if not IP."""
    if len(pkt) >= 20 and pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 15) * 4
        return 4, bytes(pkt[12:16]), bytes(pkt[16:20]), pkt[9], ihl
    if len(pkt) >= 40 and pkt[0] >> 4 == 6:
        nh, off = pkt[6], 40
        while nh in (0, 43, 60) and off + 2 <= len(pkt):
            nh, off = pkt[off], off + (pkt[off + 1] + 1) * 8
        return 6, bytes(pkt[8:24]), bytes(pkt[24:40]), nh, off
    return None


def _addr(b: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(b)


class _Chooser:
    def __init__(self, sas: list[SAConfig]):
        self.sas = sas
        self.by_spi = {(sa.spi, sa.dst.packed): i for i, sa in enumerate(sas)}
        self.udp_ports = {sa.dport for sa in sas if sa.udp}

    def for_decrypt(self, pkt: memoryview) -> int | None:
        f = _ip_fields(pkt)
        if f is None:
            return None
        _, _, dst, proto, off = f
        if proto == 17 and len(pkt) >= off + 12 and struct.unpack_from("!H", pkt, off + 2)[0] in self.udp_ports:
            off += 8
        elif proto != 50 or len(pkt) < off + 4:
            return None
        spi = struct.unpack_from("!I", pkt, off)[0]
        i = self.by_spi.get((spi, dst))
        if i is None or (proto == 17) != self.sas[i].udp:
            return None
        return i

    def for_encrypt(self, pkt: memoryview) -> int | None:
        f = _ip_fields(pkt)
        if f is None:
            return None
        _, src, dst, _, _ = f
        s, d = _addr(src), _addr(dst)
        for i, sa in enumerate(self.sas):
            if sa.match is not None:
                if sa.match.matches(s, d):
                    return i
            elif sa.mode == "transport":
                if s == sa.src and d == sa.dst:
                    return i
            elif len(self.sas) == 1:
                return 0
        return None


# link-layer family fields, rewritten when ESP changes the IP version (IPv4 inside IPv6 ...)
def _relink(frame: memoryview, linktype: int, l3off: int, family: int) -> bytes:
    head = bytearray(frame[:l3off])
    if linktype == pcap.LINKTYPE_ETHERNET or linktype == pcap.LINKTYPE_LINUX_SLL:
        head[l3off - 2:l3off] = (0x0800 if family == 4 else 0x86DD).to_bytes(2, "big")
    elif linktype == pcap.LINKTYPE_LINUX_SLL2:
        head[0:2] = (0x0800 if family == 4 else 0x86DD).to_bytes(2, "big")
    elif linktype in (pcap.LINKTYPE_NULL, pcap.LINKTYPE_LOOP):
        af = 2 if family == 4 else 24
        head[0:4] = af.to_bytes(4, "little" if linktype == pcap.LINKTYPE_NULL else "big")
    return bytes(head)


def _out_linktype(linktype: int) -> int:
    # 228/229 promise one IP version for the whole file; ESP may change it
    return pcap.LINKTYPE_RAW if linktype in (pcap.LINKTYPE_IPV4, pcap.LINKTYPE_IPV6) else linktype


def _run(in_path: str, out_path: str, sas: list[SAConfig], encrypt: bool, verify: bool) -> TraceReport:
    states = [sa.make_state() for sa in sas]
    chooser = _Chooser(sas)
    report = TraceReport()
    try:
        with pcap.open_trace(in_path) as trace:
            report.truncated_tail = trace.truncated_tail
            linktype = trace.linktype
            with pcap.TraceWriter(out_path, _out_linktype(linktype), nanosecond=True) as writer:
                for start in range(0, trace.count, CHUNK):
                    _chunk(trace, writer, range(start, min(start + CHUNK, trace.count)), states, chooser,
                           encrypt, verify, report)
    finally:
        for st in states:
            st.close()
    return report


def _chunk(trace: pcap.Trace, writer: pcap.TraceWriter, idx: Iterable[int], states: list[fastpath.SAState],
           chooser: _Chooser, encrypt: bool, verify: bool, report: TraceReport) -> None:
    idx = list(idx)
    owner: dict[int, tuple[int, int]] = {}          # frame index -> (SA, slot in its batch)
    groups: dict[int, list[int]] = {}
    for i in idx:
        report.packets += 1
        l3off, family = trace.l3(i)
        if family == 0:
            continue
        pkt = trace.frame(i)[l3off:]
        sa = chooser.for_encrypt(pkt) if encrypt else chooser.for_decrypt(pkt)
        if sa is not None:
            owner[i] = (sa, len(groups.setdefault(sa, [])))
            groups[sa].append(i)
    batches: dict[int, PacketBatch] = {}
    for sa, members in groups.items():
        state = states[sa]
        biggest = max(trace.caplens[i] for i in members)
        stride = (HEADROOM + biggest + state.tailroom + 255) & ~255
        batch = PacketBatch(len(members), stride=stride, headroom=HEADROOM)
        for i in members:
            batch.append(trace.frame(i)[trace.l3(i)[0]:])
        if encrypt:
            batch.encap(state)
        else:
            batch.decap(state, verify=verify)
        batches[sa] = batch
    for i in idx:
        frame = trace.frame(i)
        ts = trace.timestamps[i]
        if i not in owner:
            report.passed += 1
            writer.write(frame, ts, trace.origlens[i])
            continue
        sa, slot = owner[i]
        batch = batches[sa]
        st = batch.status[slot]
        if st != Status.OK:
            report.failed[fastpath.status_name(st)] += 1
            continue
        report.processed += 1
        result = batch.packet(slot)
        l3off = trace.l3(i)[0]
        out = _relink(frame, trace.linktypes[i], l3off, result[0] >> 4) + bytes(result)
        writer.write(out, ts)


def encrypt_trace(in_path: str, out_path: str, sas: list[SAConfig]) -> TraceReport:
    """ESP-protect every packet an SA claims; see the module docstring for the rules."""
    return _run(in_path, out_path, sas, True, True)


def decrypt_trace(in_path: str, out_path: str, sas: list[SAConfig], *, verify: bool = True) -> TraceReport:
    """Decapsulate every ESP packet an SA claims. verify=False strips the ICV unchecked, for
    captures where only the cipher key is known (as tcpdump -E and Wireshark allow)."""
    return _run(in_path, out_path, sas, False, verify)
