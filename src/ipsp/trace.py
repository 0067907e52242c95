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

The output is written to a temporary file next to it and renamed into place when the run
succeeded (:mod:`ipsp.files`); it is refused when it is the input or the SA file. A run
that read packets but processed none of them (a wrong key, SAs that match nothing) raises
:class:`NothingProcessed` and writes nothing.

SAs come from an SA file (:func:`ipsp.config.load_sa_file`) or from the secrets files
people already have (:func:`load_secrets`): tcpdump's ``-E`` / espsecret lines and
Wireshark's ``esp_sa`` table.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import fastpath
from fastpath import PacketBatch, Status

from ipsp import pcap
from ipsp.errors import ConfigError
from ipsp.files import FileError, check_input, read_input, replacing
from ipsp.sa import SAConfig
from ipsp.transforms import parse_proposal

__all__ = ["TraceReport", "NothingProcessed", "encrypt_trace", "decrypt_trace", "load_secrets"]

CHUNK = 4096
HEADROOM = 128


@dataclass
class TraceReport:
    packets: int = 0           # frames read
    processed: int = 0         # frames encrypted or decrypted and written
    passed: int = 0            # frames no SA claimed, written unchanged
    failed: Counter = field(default_factory=Counter)   # status name -> frames left out
    truncated_tail: str | None = None
    unchecked: list[str] = field(default_factory=list)  # SAs whose ICVs were stripped unchecked

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
        if self.unchecked:
            out.append(f"note: ICVs stripped unchecked (no integrity key, or --no-verify): {', '.join(self.unchecked)}")
        return out


class NothingProcessed(ValueError):
    """The capture held packets but the SAs processed none of them; nothing was written."""

    def __init__(self, report: TraceReport, verb: str) -> None:
        self.report = report
        super().__init__(f"no packet could be {verb} ({report.dropped} dropped, {report.passed} passed "
                         "through no SA claimed): output not written")


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
    # 228/229 promise one IP version for the whole file; ESP may change it. A file without
    # interfaces (0 bytes, or a pcapng header alone: valid and empty) becomes an empty raw IP file
    return pcap.LINKTYPE_RAW if linktype in (pcap.LINKTYPE_IPV4, pcap.LINKTYPE_IPV6, -1) else linktype


def _run(in_path: str, out_path: str, sas: list[SAConfig], encrypt: bool, verify: bool,
         sources: Iterable[str]) -> TraceReport:
    if not sas:
        raise ValueError("no SAs given")
    if encrypt and any(sa.icv_unchecked for sa in sas):
        raise ValueError("an SA without its integrity key (icv_unchecked) can only decrypt")
    check_input(in_path)
    report = TraceReport()
    verifies = [verify and not sa.icv_unchecked for sa in sas]
    if not encrypt:
        report.unchecked = [f"{sa.spi:#010x} to {sa.dst}" for sa, v in zip(sas, verifies) if not v]
    with replacing(out_path, inputs=[in_path, *sources]) as tmp:
        states = [sa.make_state() for sa in sas]
        chooser = _Chooser(sas)
        try:
            with pcap.open_trace(in_path) as trace:
                report.truncated_tail = trace.truncated_tail
                linktype = trace.linktype
                with pcap.TraceWriter(tmp, _out_linktype(linktype), nanosecond=True) as writer:
                    for start in range(0, trace.count, CHUNK):
                        _chunk(trace, writer, range(start, min(start + CHUNK, trace.count)), states, chooser,
                               encrypt, verifies, report)
        finally:
            for st in states:
                st.close()
        if report.packets and not report.processed:
            raise NothingProcessed(report, "encrypted" if encrypt else "decrypted")
    return report


def _chunk(trace: pcap.Trace, writer: pcap.TraceWriter, idx: Iterable[int], states: list[fastpath.SAState],
           chooser: _Chooser, encrypt: bool, verifies: list[bool], report: TraceReport) -> None:
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
            batch.decap(state, verify=verifies[sa])
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


def encrypt_trace(in_path: str, out_path: str, sas: list[SAConfig], *, sources: Iterable[str] = ()) -> TraceReport:
    """ESP-protect every packet an SA claims; see the module docstring for the rules.
    ``sources``: other files the output must not overwrite (the SA file)."""
    return _run(in_path, out_path, sas, True, True, sources)


def decrypt_trace(in_path: str, out_path: str, sas: list[SAConfig], *, verify: bool = True,
                  sources: Iterable[str] = ()) -> TraceReport:
    """Decapsulate every ESP packet an SA claims. verify=False strips the ICV unchecked, for
    captures where only the cipher key is known (as tcpdump -E and Wireshark allow); so is
    that of every SA with ``icv_unchecked``, whatever ``verify`` says."""
    return _run(in_path, out_path, sas, False, verify, sources)


# ---------------------------------------------------------------------------------------
# secrets files of other tools: tcpdump -E / espsecret and Wireshark's esp_sa table

MAX_SECRETS_BYTES = 1 << 20     # thousands of SAs; a larger "secrets file" is the wrong file

# tcpdump: OpenSSL cipher names, "-cbc" and "-hmac96" (a 12-byte ICV, never checked) optional
_TCPDUMP_CIPHERS = {"des": "des", "3des": "3des", "des-ede3": "3des", "aes128": "aes128", "aes-128": "aes128",
                    "aes192": "aes192", "aes-192": "aes192", "aes256": "aes256", "aes-256": "aes256"}

# Wireshark's names (epan/dissectors/packet-esp.c), old and new spellings -> proposal stem
_WS_CIPHERS = {"tripledes-cbc [rfc2451]": "3des", "3des [rfc2451]": "3des", "des-cbc [rfc2405]": "des",
               "aes-cbc [rfc3602]": "aes", "aes-cbc-128 [rfc3602]": "aes128", "aes-cbc-192 [rfc3602]": "aes192",
               "aes-cbc-256 [rfc3602]": "aes256", "aes-ctr [rfc3686]": "aesctr",
               "aes-gcm with 8 octet icv [rfc4106]": "gcm8", "aes-gcm with 12 octet icv [rfc4106]": "gcm12",
               "aes-gcm with 16 octet icv [rfc4106]": "gcm16",
               "aes-gcm with iiv and 16 octet icv [rfc4106 & rfc8750]": "gcm16-iiv",
               "chacha20 with poly1305 [rfc7634]": "chacha20poly1305",
               "chacha20 with poly1305 and iiv [rfc7634 & rfc8750]": "chacha20poly1305-iiv"}
_WS_AUTH = {"null": None, "hmac-sha-1-96 [rfc2404]": "sha1", "hmac-sha-256-128 [rfc4868]": "sha256",
            "hmac-sha-384-192 [rfc4868]": "sha384", "hmac-sha-512-256 [rfc4868]": "sha512",
            "hmac-md5-96 [rfc2403]": "md5", "hmac_sha1_96 [rfc2404]": "sha1", "hmac_sha2_256_128 [rfc4868]": "sha256",
            "hmac_sha2_384_192 [rfc4868]": "sha384", "hmac_sha2_512_256 [rfc4868]": "sha512",
            "hmac_md5_96 [rfc2403]": "md5",
            # an ICV of that length stripped unchecked: any HMAC of that truncation serves
            "any 96 bit authentication [no checking]": "sha1!", "any 128 bit authentication [no checking]": "sha256!",
            "any 192 bit authentication [no checking]": "sha384!",
            "any 256 bit authentication [no checking]": "sha512!"}


class _Line:
    def __init__(self, path: str, number: int):
        self.path, self.number = path, number

    def error(self, problem: str) -> FileError:
        return FileError(self.path, f"line {self.number}: {problem}")


def _secret(text: str, where: _Line, what: str) -> bytes:
    """A key as both tools write it: 0x and hex digits, else the ASCII text itself. Errors
    never repeat the text: it is key material."""
    if text[:2].lower() == "0x":
        digits = text[2:]
        if len(digits) % 2:
            digits = "0" + digits            # as Wireshark reads an odd count
        try:
            return bytes.fromhex(digits)
        except ValueError:
            raise where.error(f"{what} is not valid hex after 0x") from None
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise where.error(f"{what} is neither 0x-hex nor ASCII text") from None


def _address_of(text: str, where: _Line, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise where.error(f"{what} is not an IPv4 or IPv6 address") from None


def _spi_of(text: str, where: _Line) -> int:
    try:
        spi = int(text, 0)
    except ValueError:
        raise where.error("the SPI is not a number such as 0x1001") from None
    if not 256 <= spi <= 0xFFFFFFFF:
        raise where.error("the SPI is outside 0x100..0xffffffff (RFC 4303 2.1)")
    return spi


def _make_sa(where: _Line, proposal: str, spi: int, src, dst, enc_key: bytes, auth_key: bytes,
             unchecked: bool, implicit_iv: bool = False) -> SAConfig:
    try:
        # decrypting a capture protects nothing: legacy ciphers are read as the capture has them
        return SAConfig(spi=spi, src=src, dst=dst, transform=parse_proposal(proposal), enc_key=enc_key,
                        auth_key=auth_key, implicit_iv=implicit_iv, allow_insecure=True, icv_unchecked=unchecked)
    except ConfigError as exc:
        raise where.error(exc.message) from None


def _aes_bits(n: int, where: _Line, takes: str) -> int:
    if n not in (16, 24, 32):
        raise where.error(f"the encryption key is the wrong length for AES: {takes} bytes")
    return n * 8


def _tcpdump_line(text: str, where: _Line) -> SAConfig:
    # "SPI@DST ALGO:SECRET" (tcpdump(1) -E; print-esp.c reads one SA a line from a file)
    parts = text.split(None, 1)
    if len(parts) != 2:
        raise where.error("expected SPI@DST ALGO:SECRET (a default SA without SPI@DST is not supported)")
    spikey, decode = parts[0], parts[1].strip()
    if spikey.lower() in ("file", "ikev2"):
        raise where.error(f"'{spikey.lower()}' lines are not supported: give ESP SAs as SPI@DST ALGO:SECRET")
    spi_text, at, dst_text = spikey.partition("@")
    if not at:
        raise where.error("expected SPI@DST before the algorithm")
    spi = _spi_of(spi_text, where)
    dst = _address_of(dst_text, where, "the address after @")
    algo, colon, secret = decode.partition(":")
    if not colon:
        raise where.error("expected ALGO:SECRET after SPI@DST")
    name = algo.strip().lower()
    hmac96 = name.endswith("-hmac96")
    name = name.removesuffix("-hmac96").removesuffix("-cbc")
    cipher = _TCPDUMP_CIPHERS.get(name)
    if cipher is None:
        raise where.error(f"unknown algorithm: expected one of {', '.join(sorted(_TCPDUMP_CIPHERS))} "
                          "with -cbc and -hmac96 (e.g. aes128-cbc-hmac96)")
    if not hmac96:
        raise where.error("the algorithm needs -hmac96 (a 12-byte ICV): ESP without an ICV is not supported")
    src = ipaddress.ip_address(0 if dst.version == 4 else "::")   # tcpdump matches on SPI and destination only
    return _make_sa(where, f"{cipher}-sha1", spi, src, dst, _secret(secret.strip(), where, "the secret"), b"",
                    unchecked=True)


def _uat_fields(text: str, where: _Line) -> list[str]:
    """The fields of one UAT line: comma-separated, each "quoted" with \\xNN and \\" escapes."""
    fields, i, n = [], 0, len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            out = []
            while True:
                if i >= n:
                    raise where.error("a quoted field is not closed")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n:
                    if text[i + 1] == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", text[i + 2:i + 4]):
                        out.append(chr(int(text[i + 2:i + 4], 16)))
                        i += 4
                        continue
                    out.append(text[i + 1])
                    i += 2
                    continue
                out.append(c)
                i += 1
            fields.append("".join(out))
        else:
            j = text.find(",", i)
            fields.append(text[i:j if j >= 0 else n].strip())
            i = j if j >= 0 else n
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            return fields
        if text[i] != ",":
            raise where.error("expected a comma between fields")
        i += 1


def _wireshark_line(text: str, where: _Line) -> SAConfig:
    # protocol, src, dst, SPI, encryption, its key, authentication, its key (and, in newer
    # releases, fields after these, which decryption does not need)
    f = _uat_fields(text, where)
    if len(f) < 8:
        raise where.error(f"expected 8 fields (protocol, source, destination, SPI, encryption, key, "
                          f"authentication, key), got {len(f)}")
    proto, src_t, dst_t, spi_t, enc_t, enc_key_t, auth_t, auth_key_t = f[:8]
    if proto not in ("IPv4", "IPv6", "Any", "*"):
        raise where.error("the protocol is not IPv4, IPv6 or Any")
    if "*" in dst_t or "*" in spi_t:
        raise where.error("wildcards in the destination or SPI are not supported: SAs are found by both")
    spi = _spi_of(spi_t, where)
    dst = _address_of(dst_t, where, "the destination")
    if proto in ("IPv4", "IPv6") and dst.version != int(proto[-1]):
        raise where.error(f"the destination is not an {proto} address")
    src = (ipaddress.ip_address(0 if dst.version == 4 else "::") if src_t in ("", "*")
           else _address_of(src_t, where, "the source"))
    stem = _WS_CIPHERS.get(enc_t.strip().lower())
    if stem is None:
        raise where.error(f"unsupported encryption algorithm (supported: {', '.join(sorted(set(_WS_CIPHERS)))})")
    auth = _WS_AUTH.get(auth_t.strip().lower(), "?")
    if auth == "?":
        raise where.error(f"unsupported authentication algorithm (supported: {', '.join(sorted(_WS_AUTH))})")
    enc_key = _secret(enc_key_t.strip(), where, "the encryption key")
    auth_key = _secret(auth_key_t.strip(), where, "the authentication key") if auth_key_t.strip() else b""
    iiv = stem.endswith("-iiv")
    stem = stem.removesuffix("-iiv")
    if stem.startswith("gcm") or stem == "chacha20poly1305":
        if auth is not None:
            raise where.error("an AEAD cipher takes authentication NULL")
        if stem == "chacha20poly1305":
            proposal = stem
        else:
            proposal = f"aes{_aes_bits(len(enc_key) - 4, where, 'AES-GCM takes 20, 28 or 36 (key and 4-byte salt)')}{stem}"
        return _make_sa(where, proposal, spi, src, dst, enc_key, b"", unchecked=False, implicit_iv=iiv)
    if auth is None:
        raise where.error("ESP without an ICV (authentication NULL with a CBC/CTR cipher) is not supported")
    if stem in ("aes", "aesctr"):
        ctr = stem == "aesctr"
        bits = _aes_bits(len(enc_key) - 4 * ctr, where,
                         "AES-CTR takes 20, 28 or 36 (key and 4-byte nonce)" if ctr else "AES-CBC takes 16, 24 or 32")
        stem = f"aes{bits}" + ("ctr" if ctr else "")
    unchecked = auth.endswith("!") or not auth_key
    return _make_sa(where, f"{stem}-{auth.rstrip('!')}", spi, src, dst, enc_key,
                    b"" if auth.endswith("!") else auth_key, unchecked=unchecked)


def load_secrets(path: str) -> list[SAConfig]:
    """The SAs of a tcpdump espsecret file (``SPI@DST ALGO:SECRET`` a line, as ``tcpdump -E``
    takes) or of a Wireshark ``esp_sa`` UAT file (quoted, comma-separated fields), told apart
    by the first line that is not a comment. Raises FileError naming the file and line, never
    a key. An SA without its integrity key gets ``icv_unchecked``: decrypted, its ICV stripped."""
    data = read_input(path, MAX_SECRETS_BYTES)[0]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FileError(path, "not UTF-8 text") from None
    if "\0" in text:
        raise FileError(path, "contains a NUL byte: not a text file")
    sas: list[SAConfig] = []
    seen: dict[tuple[int, bytes], int] = {}
    parse = None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if parse is None:
            parse = _wireshark_line if line.startswith('"') else _tcpdump_line
        where = _Line(path, number)
        sa = parse(line, where)
        key = (sa.spi, sa.dst.packed)
        if key in seen:
            raise where.error(f"SPI {sa.spi:#x} to {sa.dst} is already given on line {seen[key]}")
        seen[key] = number
        sas.append(sa)
    if not sas:
        raise FileError(path, "no SAs: expected SPI@DST ALGO:SECRET lines (tcpdump) or esp_sa records (Wireshark)")
    return sas
