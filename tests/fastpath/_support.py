"""Shared helpers for the fastpath kernel tests.

Loaded by tests/fastpath/conftest.py under the module name ``fp_support`` (the test suite
runs with --import-mode=importlib, so test modules cannot import a sibling by name).

Everything here is deliberately independent of the kernel: packets are built with struct,
checksums with a plain RFC 1071 loop, HMACs with Python's hmac module.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import struct
from array import array
from dataclasses import dataclass

import fastpath as fp
from fastpath import Cipher as C
from fastpath import Integ as I
from fastpath import Status

# ---------------------------------------------------------------------------------------
# transforms

# integ id -> (hashlib name, digest length, ICV length, scapy name)
INTEG_INFO = {
    I.INTEG_HMAC_MD5_96: ("md5", 16, 12, "HMAC-MD5-96"),
    I.INTEG_HMAC_SHA1_96: ("sha1", 20, 12, "HMAC-SHA1-96"),
    I.INTEG_HMAC_SHA256_128: ("sha256", 32, 16, "SHA2-256-128"),
    I.INTEG_HMAC_SHA384_192: ("sha384", 48, 24, "SHA2-384-192"),
    I.INTEG_HMAC_SHA512_256: ("sha512", 64, 32, "SHA2-512-256"),
}

AEAD_CIPHERS = (C.CIPHER_AES_GCM, C.CIPHER_AES_GMAC, C.CIPHER_CHACHA20_POLY1305)
SALTED = (C.CIPHER_AES_CTR, C.CIPHER_AES_GCM, C.CIPHER_AES_GMAC, C.CIPHER_CHACHA20_POLY1305)
CBC = (C.CIPHER_DES_CBC, C.CIPHER_3DES_CBC, C.CIPHER_AES_CBC)


@dataclass(frozen=True)
class Transform:
    name: str
    cipher: int
    integ: int = 0
    key_len: int = 0          # cipher key without salt
    icv: int = 0              # AEAD ICV length; 0 = the integrity algorithm's
    scapy_crypt: str | None = None

    @property
    def aead(self) -> bool:
        return self.cipher in AEAD_CIPHERS

    @property
    def salted(self) -> bool:
        return self.cipher in SALTED

    @property
    def icv_len(self) -> int:
        return self.icv if self.aead else INTEG_INFO[self.integ][2]

    @property
    def iv_len(self) -> int:
        if self.cipher == C.CIPHER_NULL:
            return 0
        if self.cipher == C.CIPHER_AES_CBC:
            return 16
        return 8

    @property
    def block(self) -> int:
        return {C.CIPHER_DES_CBC: 8, C.CIPHER_3DES_CBC: 8, C.CIPHER_AES_CBC: 16}.get(self.cipher, 4)

    @property
    def implicit_iv_ok(self) -> bool:
        # RFC 8750 section 6 registers implicit-IV forms of GCM, CCM and ChaCha20-Poly1305 only
        return self.cipher in (C.CIPHER_AES_GCM, C.CIPHER_CHACHA20_POLY1305)

    @property
    def scapy_auth(self) -> str | None:
        return None if self.aead else INTEG_INFO[self.integ][3]

    @property
    def scapy_ok(self) -> bool:
        # scapy's AES-GCM always emits a full 16-byte tag
        return self.scapy_crypt is not None and not (self.cipher == C.CIPHER_AES_GCM and self.icv != 16)

    def keys(self, seed: int = 0) -> tuple[bytes, bytes]:
        rng = random.Random(f"{self.name}/{seed}")
        enc = rng.randbytes(self.key_len + (4 if self.salted else 0))
        auth = b"" if self.aead else rng.randbytes(INTEG_INFO[self.integ][1])
        return enc, auth

    def __str__(self):
        return self.name


def _t(name, cipher, integ=0, key_len=0, icv=0, scapy=None):
    return Transform(name, cipher, integ, key_len, icv, scapy)


TRANSFORMS = [
    _t("null-md5", C.CIPHER_NULL, I.INTEG_HMAC_MD5_96, scapy="NULL"),
    _t("null-sha1", C.CIPHER_NULL, I.INTEG_HMAC_SHA1_96, scapy="NULL"),
    _t("null-sha256", C.CIPHER_NULL, I.INTEG_HMAC_SHA256_128, scapy="NULL"),
    _t("null-sha384", C.CIPHER_NULL, I.INTEG_HMAC_SHA384_192, scapy="NULL"),
    _t("null-sha512", C.CIPHER_NULL, I.INTEG_HMAC_SHA512_256, scapy="NULL"),
    _t("des-sha1", C.CIPHER_DES_CBC, I.INTEG_HMAC_SHA1_96, 8, scapy="DES"),
    _t("3des-md5", C.CIPHER_3DES_CBC, I.INTEG_HMAC_MD5_96, 24, scapy="3DES"),
    _t("3des-sha1", C.CIPHER_3DES_CBC, I.INTEG_HMAC_SHA1_96, 24, scapy="3DES"),
    _t("aes128cbc-sha1", C.CIPHER_AES_CBC, I.INTEG_HMAC_SHA1_96, 16, scapy="AES-CBC"),
    _t("aes128cbc-md5", C.CIPHER_AES_CBC, I.INTEG_HMAC_MD5_96, 16, scapy="AES-CBC"),
    _t("aes192cbc-sha256", C.CIPHER_AES_CBC, I.INTEG_HMAC_SHA256_128, 24, scapy="AES-CBC"),
    _t("aes256cbc-sha384", C.CIPHER_AES_CBC, I.INTEG_HMAC_SHA384_192, 32, scapy="AES-CBC"),
    _t("aes256cbc-sha512", C.CIPHER_AES_CBC, I.INTEG_HMAC_SHA512_256, 32, scapy="AES-CBC"),
    _t("aes128ctr-sha1", C.CIPHER_AES_CTR, I.INTEG_HMAC_SHA1_96, 16, scapy="AES-CTR"),
    _t("aes192ctr-sha256", C.CIPHER_AES_CTR, I.INTEG_HMAC_SHA256_128, 24, scapy="AES-CTR"),
    _t("aes256ctr-sha512", C.CIPHER_AES_CTR, I.INTEG_HMAC_SHA512_256, 32, scapy="AES-CTR"),
    _t("aes128gcm16", C.CIPHER_AES_GCM, 0, 16, 16, scapy="AES-GCM"),
    _t("aes192gcm16", C.CIPHER_AES_GCM, 0, 24, 16, scapy="AES-GCM"),
    _t("aes256gcm16", C.CIPHER_AES_GCM, 0, 32, 16, scapy="AES-GCM"),
    _t("aes128gcm8", C.CIPHER_AES_GCM, 0, 16, 8, scapy="AES-GCM"),
    _t("aes256gcm12", C.CIPHER_AES_GCM, 0, 32, 12, scapy="AES-GCM"),
    _t("aes128gmac", C.CIPHER_AES_GMAC, 0, 16, 16, scapy="AES-NULL-GMAC"),
    _t("aes256gmac", C.CIPHER_AES_GMAC, 0, 32, 16, scapy="AES-NULL-GMAC"),
    _t("chacha20poly1305", C.CIPHER_CHACHA20_POLY1305, 0, 32, 16, scapy="CHACHA20-POLY1305"),
]
TRANSFORM_BY_NAME = {t.name: t for t in TRANSFORMS}

# a few representative transforms for tests that are about framing, not crypto
CORE = [TRANSFORM_BY_NAME[n] for n in ("null-sha256", "3des-sha1", "aes128cbc-sha1", "aes128ctr-sha1",
                                       "aes128gcm16", "aes128gmac", "chacha20poly1305")]

# ---------------------------------------------------------------------------------------
# addresses and SA construction

OUT4_SRC = bytes([192, 0, 2, 1])
OUT4_DST = bytes([198, 51, 100, 1])
OUT6_SRC = ipaddress.IPv6Address("2001:db8::1").packed
OUT6_DST = ipaddress.IPv6Address("2001:db8::2").packed
IN4_SRC = bytes([10, 0, 0, 1])
IN4_DST = bytes([10, 0, 0, 2])
IN6_SRC = ipaddress.IPv6Address("fd00::1").packed
IN6_DST = ipaddress.IPv6Address("fd00::2").packed

# "tunnel4"/"tunnel6": tunnel mode with an IPv4/IPv6 outer header; "transport": transport
# mode (the packet's own family); "esp": tunnel mode with framing ESP (no outer headers)
MODES = ("tunnel4", "tunnel6", "transport", "esp")


def sa_kwargs(t: Transform, mode: str = "tunnel4", *, seed: int = 0, spi: int = 0x1234,
              **extra) -> dict:
    enc, auth = t.keys(seed)
    kw = dict(spi=spi, cipher=int(t.cipher), integ=int(t.integ), icv_len=t.icv if t.aead else 0,
              enc_key=enc, auth_key=auth)
    if mode == "tunnel4":
        kw.update(mode=fp.TUNNEL, src=OUT4_SRC, dst=OUT4_DST)
    elif mode == "tunnel6":
        kw.update(mode=fp.TUNNEL, src=OUT6_SRC, dst=OUT6_DST)
    elif mode == "transport":
        kw.update(mode=fp.TRANSPORT)
    elif mode == "esp":
        kw.update(mode=fp.TUNNEL, framing=fp.ESP)
    else:
        raise ValueError(mode)
    kw.update(extra)
    return kw


def make_sa(t: Transform, mode: str = "tunnel4", **kw) -> fp.SAState:
    return fp.SAState(**sa_kwargs(t, mode, **kw))


def make_pair(t: Transform, mode: str = "tunnel4", *, rx_extra: dict | None = None, **kw):
    """(sender, receiver) with the same keys; rx_extra overrides receiver-only settings."""
    tx = make_sa(t, mode, **kw)
    rkw = {k: v for k, v in kw.items() if k not in ("seq_out", "tfc_pad")}
    rkw.update(rx_extra or {})
    return tx, make_sa(t, mode, **rkw)


# ---------------------------------------------------------------------------------------
# packets (built by hand)

from ipsp.gen import internet_checksum as csum  # noqa: E402  (RFC 1071, complemented)


def ipv4_header(payload_len: int, proto: int, src=IN4_SRC, dst=IN4_DST, *, tos=0, ttl=64,
                ident=0x1234, flags_frag=0, options=b"") -> bytes:
    ihl = 5 + len(options) // 4
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, ihl * 4 + payload_len, ident, flags_frag,
                    ttl, proto, 0, src, dst) + options
    return h[:10] + struct.pack("!H", csum(h)) + h[12:]


def ipv4_checksum_ok(h: bytes) -> bool:
    ihl = (h[0] & 0x0F) * 4
    return csum(h[:ihl]) == 0


def ipv6_header(payload_len: int, nh: int, src=IN6_SRC, dst=IN6_DST, *, tc=0, flow=0, hlim=64) -> bytes:
    return struct.pack("!IHBB16s16s", (6 << 28) | (tc << 20) | flow, payload_len, nh, hlim, src, dst)


def udp(payload: bytes, sport=40000, dport=40001, csum_value=0) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), csum_value) + payload


def udp6_checksum(src: bytes, dst: bytes, seg: bytes) -> int:
    """The checksum a UDP segment (its checksum field zeroed) must carry over IPv6."""
    seg = seg[:6] + b"\0\0" + seg[8:]
    c = csum(src + dst + struct.pack("!IxxxB", len(seg), 17) + seg)
    return c or 0xFFFF


def payload_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def inner4(n: int = 100, *, seed: int = 0, tos: int = 0, df: bool = False, ttl: int = 64,
           ident: int = 0x1234) -> bytes:
    """An IPv4/UDP packet with n bytes of UDP payload."""
    seg = udp(payload_bytes(n, seed))
    return ipv4_header(len(seg), 17, tos=tos, ttl=ttl, ident=ident, flags_frag=0x4000 if df else 0) + seg


def inner6(n: int = 100, *, seed: int = 0, tc: int = 0, hlim: int = 64) -> bytes:
    """An IPv6/UDP packet with n bytes of UDP payload (valid UDP checksum)."""
    seg = udp(payload_bytes(n, seed))
    seg = seg[:6] + struct.pack("!H", udp6_checksum(IN6_SRC, IN6_DST, seg)) + seg[8:]
    return ipv6_header(len(seg), 17, tc=tc, hlim=hlim) + seg


def set_ecn4(pkt: bytes, ecn: int) -> bytes:
    """Rewrite an IPv4 header's ECN field, fixing its checksum."""
    ihl = (pkt[0] & 0x0F) * 4
    h = bytearray(pkt[:ihl])
    h[1] = (h[1] & 0xFC) | ecn
    h[10:12] = b"\0\0"
    h[10:12] = struct.pack("!H", csum(bytes(h)))
    return bytes(h) + pkt[ihl:]


def set_ecn6(pkt: bytes, ecn: int) -> bytes:
    w = struct.unpack("!I", pkt[:4])[0]
    w = (w & ~(0x3 << 20)) | (ecn << 20)
    return struct.pack("!I", w) + pkt[4:]


def get_ecn(pkt: bytes) -> int:
    if pkt[0] >> 4 == 4:
        return pkt[1] & 3
    return (struct.unpack("!I", pkt[:4])[0] >> 20) & 3


def esp_offset(pkt: bytes, *, udp_encap: bool = False, framing_esp: bool = False) -> int:
    """Where the ESP header starts in an encapsulated packet (IPv6: after HBH/routing/dstopts)."""
    if framing_esp:
        return 0
    if pkt[0] >> 4 == 4:
        off = (pkt[0] & 0x0F) * 4
    else:
        off, nh = 40, pkt[6]
        while nh in (0, 43, 60):
            nh, off = pkt[off], off + (pkt[off + 1] + 1) * 8
    return off + (8 if udp_encap else 0)


def esp_seq(pkt: bytes, **kw) -> int:
    off = esp_offset(pkt, **kw)
    return struct.unpack("!I", pkt[off + 4:off + 8])[0]


# ---------------------------------------------------------------------------------------
# hand-built ESP (NULL cipher, or any cipher whose plaintext the test computed itself)

def hmac_icv(t: Transform, auth_key: bytes, data: bytes, esn_high: int | None = None) -> bytes:
    name, _, icv, _ = INTEG_INFO[t.integ]
    if esn_high is not None:
        data = data + struct.pack("!I", esn_high)
    return hmac.new(auth_key, data, getattr(hashlib, name)).digest()[:icv]


def null_esp(t: Transform, auth_key: bytes, spi: int, seq: int, body: bytes,
             esn_high: int | None = None) -> bytes:
    """SPI || seq || body || HMAC ICV, body being the complete (plaintext) cipher region."""
    assert t.cipher == C.CIPHER_NULL
    hdr = struct.pack("!II", spi, seq & 0xFFFFFFFF)
    return hdr + body + hmac_icv(t, auth_key, hdr + body, esn_high)


def trailer(payload: bytes, nh: int, align: int = 4, *, pad: bytes | None = None) -> bytes:
    """payload || padding 1, 2, 3, ... || pad length || next header (or the given pad bytes)."""
    if pad is None:
        n = -(len(payload) + 2) % align
        pad = bytes(range(1, n + 1))
    return payload + pad + bytes([len(pad), nh])


def wrap4(esp: bytes, *, proto: int = 50, udp_ports: tuple[int, int] | None = None, **kw) -> bytes:
    """Put an ESP packet (or anything) behind an outer IPv4 header (and UDP)."""
    if udp_ports is not None:
        esp = udp(esp, *udp_ports)
        proto = 17
    return ipv4_header(len(esp), proto, OUT4_SRC, OUT4_DST, **kw) + esp


def wrap6(esp: bytes, *, nh: int = 50, udp_ports: tuple[int, int] | None = None, **kw) -> bytes:
    if udp_ports is not None:
        esp = udp(esp, *udp_ports)
        nh = 17
    return ipv6_header(len(esp), nh, OUT6_SRC, OUT6_DST, **kw) + esp


# ---------------------------------------------------------------------------------------
# batches

def batch_arrays(packets: list[bytes], stride: int, headroom: int):
    """A raw arena like PacketBatch's: (buf, offsets, lengths, status)."""
    buf = bytearray(stride * max(1, len(packets)))
    offs = array("q", [0] * len(packets))
    lens = array("I", [0] * len(packets))
    st = array("B", [Status.NOT_PROCESSED] * len(packets))
    for i, p in enumerate(packets):
        o = i * stride + headroom
        buf[o:o + len(p)] = p
        offs[i] = o
        lens[i] = len(p)
    return buf, offs, lens, st


def batch_of(packets, stride: int = 2048, headroom: int = 128) -> fp.PacketBatch:
    b = fp.PacketBatch(max(1, len(packets)), stride=stride, headroom=headroom)
    for p in packets:
        b.append(p)
    return b


def batch_results(b: fp.PacketBatch) -> list:
    """Per packet: bytes of the result when OK, else the Status."""
    return [bytes(b.packet(i)) if b.status[i] == Status.OK else Status(b.status[i]) for i in range(len(b))]


def status_of(callable_, *args, **kw) -> Status:
    """Run a single-packet call; OK or the status carried by its PacketError."""
    try:
        callable_(*args, **kw)
    except fp.PacketError as exc:
        return exc.status
    return Status.OK


def counters_delta(before: dict, after: dict) -> dict:
    return {d: {k: after[d][k] - before[d][k] for k in after[d] if after[d][k] != before[d][k]}
            for d in after}


VECTORS = __import__("pathlib").Path(__file__).resolve().parents[1] / "vectors"


# ---------------------------------------------------------------------------------------
# backends

def available_backends() -> list[int]:
    out = [int(fp.Backend.BACKEND_AUTO), int(fp.Backend.BACKEND_OPENSSL)]
    if "ipsecmb" in fp.backends():
        out.append(int(fp.Backend.BACKEND_IPSECMB))
    return out


BACKENDS = available_backends()
BACKEND_NAMES = {0: "auto", 1: "openssl", 2: "ipsecmb"}


def backends_for(t: Transform) -> list[int]:
    """Backends an SA with this transform can be forced onto (the mb backend has no GMAC)."""
    return [b for b in BACKENDS if not (b == 2 and t.cipher == C.CIPHER_AES_GMAC)]


# ---------------------------------------------------------------------------------------
# an independent ESP sealer: any cipher region (valid or deliberately broken) under any
# transform, with the libraries the kernel does not use for it (cryptography, pycryptodome,
# hmac)

def seal(t: Transform, seed: int, spi: int, seq: int, region: bytes, *, esn_high: int | None = None,
         iv: bytes | None = None, implicit_iv: bool = False) -> bytes:
    """ESP header || IV || sealed region || ICV for the keys make_sa(t, seed=seed) uses.
    With esn_high the ICV/AAD covers the 64-bit number (esn_high, seq)."""
    from Crypto.Cipher import DES as PyDES
    from Crypto.Cipher import DES3 as PyDES3
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    enc, auth = t.keys(seed)
    hdr = struct.pack("!II", spi, seq & 0xFFFFFFFF)
    full = ((esn_high << 32) | (seq & 0xFFFFFFFF)) if esn_high is not None else seq
    if iv is None:
        iv = struct.pack("!Q", full) if t.iv_len == 8 else bytes(range(t.iv_len))
    if t.aead:
        key, salt = enc[:-4], enc[-4:]
        nonce = salt + (struct.pack("!Q", full) if implicit_iv else iv)
        wire_iv = b"" if implicit_iv else iv
        aad = hdr[:4] + struct.pack("!I", esn_high) + hdr[4:] if esn_high is not None else hdr
        if t.cipher == C.CIPHER_AES_GMAC:
            tag = AESGCM(key).encrypt(nonce, b"", aad + wire_iv + region)
            return hdr + wire_iv + region + tag
        aead = AESGCM(key) if t.cipher == C.CIPHER_AES_GCM else ChaCha20Poly1305(key)
        ct = aead.encrypt(nonce, region, aad)
        return hdr + wire_iv + ct[:len(region)] + ct[len(region):][:t.icv_len]
    if t.cipher == C.CIPHER_NULL:
        ct = region
    elif t.cipher == C.CIPHER_AES_CBC:
        e = Cipher(algorithms.AES(enc), modes.CBC(iv)).encryptor()
        ct = e.update(region) + e.finalize()
    elif t.cipher == C.CIPHER_AES_CTR:
        e = Cipher(algorithms.AES(enc[:-4]), modes.CTR(enc[-4:] + iv + b"\0\0\0\1")).encryptor()
        ct = e.update(region) + e.finalize()
    elif t.cipher == C.CIPHER_DES_CBC:
        ct = PyDES.new(enc, PyDES.MODE_CBC, iv=iv).encrypt(region)
    else:
        ct = PyDES3.new(enc, PyDES3.MODE_CBC, iv=iv).encrypt(region)
    body = hdr + iv + ct
    return body + hmac_icv(t, auth, body, esn_high)


def region_for(t: Transform, payload: bytes, nh: int, *, pad: bytes | None = None, pad_len: int | None = None,
               extra: bytes = b"") -> bytes:
    """payload || extra || padding || pad length || next header, aligned for t unless the
    caller forces the pad bytes / pad length byte."""
    if pad is None:
        n = -(len(payload) + len(extra) + 2) % t.block
        pad = bytes(range(1, n + 1))
    return payload + extra + pad + bytes([len(pad) if pad_len is None else pad_len, nh])
