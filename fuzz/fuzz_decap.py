#!/usr/bin/env python3
"""Atheris harness for fastpath's inbound ESP path (decap, decap_into, decap_batch), with
encap/encap_batch as packet sources and as a second target.

Run through fuzz/run.sh (it sets LD_PRELOAD to atheris' ASan+libFuzzer runtime and
PYTHONPATH to the instrumented build made by fuzz/build.sh); see fuzz/README.md.

Each input is read front to back by a small reader (bytes past the end read as zero):

  byte 0      strategy (RAW, ENCAP_MUTATED, SEALED, BATCH, ENCAP_BATCH, MISUSE)
  bytes 1..   the SA configuration: transform, mode, framing, outer family, UDP, ESN,
              replay window, implicit IV, backend, resumed counters, TFC padding
  the rest    what the strategy needs: packet bytes, inner packets, mutations, buffer
              placement (exact-size numpy arrays for ASan redzones, or mmap regions flush
              against a PROT_NONE page, which also catch overreads in the uninstrumented
              OpenSSL / intel-ipsec-mb code), output capacities, batch layouts

Oracles (any failure raises AssertionError, which atheris reports as a crash):
  - only fastpath.PacketError subclasses escape packet calls (ValueError / BufferError /
    TypeError only from the deliberate API misuse of the MISUSE strategy)
  - decap never modifies its input; results fit the output and never exceed the input
  - decap_batch: results lie inside the packet's original bytes; bytes between packets are
    never written; packets refused before or at the integrity check keep their bytes; every
    status slot is written; the return value equals the number of OK statuses
  - counters: the in (out) counts grow by exactly the number of packets processed, per
    status, and the byte counter by the result lengths
  - packets sealed by an independent implementation (cryptography, hashlib/hmac)
    pass the ICV check, and well-formed ones decapsulate to exactly the expected packet
  - encap -> decap round trips give back the inner packet; decap_batch agrees with
    one-by-one decap on a twin SA (the other backend) packet for packet
"""

import ctypes
import hashlib
import hmac
import mmap
import os
import struct
import sys

import atheris

# No Python instrumentation: the coverage that guides the fuzzer is the native kernel's
# (fuzz/build.sh compiles it with -fsanitize=fuzzer-no-link).
import numpy as np
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher as _Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

import fastpath as fp

C = fp.Cipher
I = fp.Integ
S = fp.Status

# ---------------------------------------------------------------------------------------
# transforms and fixed keys


class T:
    def __init__(self, name, cipher, integ, icv, klen, aklen, iv_len, block, hashname=None):
        self.name, self.cipher, self.integ, self.icv = name, int(cipher), int(integ), icv
        self.aead = cipher in (C.CIPHER_AES_GCM, C.CIPHER_AES_GMAC, C.CIPHER_CHACHA20_POLY1305)
        salted = cipher in (C.CIPHER_AES_GCM, C.CIPHER_AES_GMAC, C.CIPHER_CHACHA20_POLY1305, C.CIPHER_AES_CTR)
        seed = sum(name.encode())
        self.enc_key = bytes((seed + 7 * i) & 0xFF for i in range(klen + (4 if salted else 0)))
        self.auth_key = bytes((seed * 3 + 11 * i) & 0xFF for i in range(aklen))
        self.iv_len, self.block, self.hashname = iv_len, block, hashname
        # ciphertext length granularity the receiver checks (CBC block, else none)
        self.rx_align = block if cipher in (C.CIPHER_AES_CBC, C.CIPHER_3DES_CBC, C.CIPHER_DES_CBC) else 1


TRANSFORMS = [
    T("aes128gcm16", C.CIPHER_AES_GCM, I.INTEG_NONE, 16, 16, 0, 8, 4),
    T("aes128gcm8", C.CIPHER_AES_GCM, I.INTEG_NONE, 8, 16, 0, 8, 4),
    T("aes256gcm12", C.CIPHER_AES_GCM, I.INTEG_NONE, 12, 32, 0, 8, 4),
    T("chacha20poly1305", C.CIPHER_CHACHA20_POLY1305, I.INTEG_NONE, 16, 32, 0, 8, 4),
    T("aes128gmac", C.CIPHER_AES_GMAC, I.INTEG_NONE, 16, 16, 0, 8, 4),
    T("aes128-sha1", C.CIPHER_AES_CBC, I.INTEG_HMAC_SHA1_96, 12, 16, 20, 16, 16, "sha1"),
    T("aes256-sha512", C.CIPHER_AES_CBC, I.INTEG_HMAC_SHA512_256, 32, 32, 64, 16, 16, "sha512"),
    T("aes192-sha384", C.CIPHER_AES_CBC, I.INTEG_HMAC_SHA384_192, 24, 24, 48, 16, 16, "sha384"),
    T("3des-sha1", C.CIPHER_3DES_CBC, I.INTEG_HMAC_SHA1_96, 12, 24, 20, 8, 8, "sha1"),
    T("des-md5", C.CIPHER_DES_CBC, I.INTEG_HMAC_MD5_96, 12, 8, 16, 8, 8, "md5"),
    T("aes128ctr-sha256", C.CIPHER_AES_CTR, I.INTEG_HMAC_SHA256_128, 16, 16, 32, 8, 4, "sha256"),
    T("null-sha256", C.CIPHER_NULL, I.INTEG_HMAC_SHA256_128, 16, 0, 32, 0, 4, "sha256"),
]

HAVE_MB = "ipsecmb" in fp.backends()
# Findings the campaign should not keep rediscovering while they are open, named in
# FUZZ_SKIP_KNOWN (none are open now; "offset-overflow" was the int64 range check of the
# batch calls, fixed and kept as a regression test in tests/fastpath/test_fuzz_findings.py)
SKIP_KNOWN = set(os.environ.get("FUZZ_SKIP_KNOWN", "").replace(",", " ").split())
SPI = 0x1000ABCD
SEQ32 = 1 << 32

# ---------------------------------------------------------------------------------------
# input reader


class R:
    """Reads the fuzz input front to back; past the end every read is zero."""
    __slots__ = ("d", "i")

    def __init__(self, data):
        self.d, self.i = data, 0

    def u8(self):
        if self.i < len(self.d):
            self.i += 1
            return self.d[self.i - 1]
        return 0

    def u16(self):
        return (self.u8() << 8) | self.u8()

    def u32(self):
        return (self.u16() << 16) | self.u16()

    def pick(self, seq):
        return seq[self.u8() % len(seq)]

    def flag(self, one_in=2):
        return self.u8() % one_in == 0

    def take(self, n):
        b = self.d[self.i:self.i + n]
        self.i += len(b)
        return b

    def left(self):
        return len(self.d) - self.i


# ---------------------------------------------------------------------------------------
# buffers: exact-size heap arrays (ASan redzones) or mmap regions against a guard page


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PAGE = mmap.PAGESIZE


class Guarded:
    """A writable region with a PROT_NONE page on each side. tail() places bytes flush
    against the trailing guard, head() flush against the leading one."""

    def __init__(self, size):
        self.size = (size + PAGE - 1) // PAGE * PAGE
        self.m = mmap.mmap(-1, self.size + 2 * PAGE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(self.m))
        for a in (addr, addr + PAGE + self.size):
            if _libc.mprotect(ctypes.c_void_p(a), PAGE, 0) != 0:
                raise OSError(ctypes.get_errno(), "mprotect")
        self.mv = memoryview(self.m)

    def tail(self, data, n=None):
        n = len(data) if n is None else n
        assert n <= self.size
        end = PAGE + self.size
        v = self.mv[end - n:end]
        if data is not None:
            v[:] = data
        return v

    def head(self, data, n=None):
        n = len(data) if n is None else n
        assert n <= self.size
        v = self.mv[PAGE:PAGE + n]
        if data is not None:
            v[:] = data
        return v

    def protect(self, prot):
        addr = ctypes.addressof(ctypes.c_char.from_buffer(self.m)) + PAGE
        if _libc.mprotect(ctypes.c_void_p(addr), self.size, prot) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")

    def readonly_tail(self, data):
        """data flush against the trailing guard, in pages made read-only: a write by any
        code faults (decap promises never to modify its input)."""
        self.protect(mmap.PROT_READ | mmap.PROT_WRITE)
        v = self.tail(data)
        self.protect(mmap.PROT_READ)
        return v


ARENA_SIZE = 1 << 20
G_IN = Guarded(ARENA_SIZE)
G_OUT = Guarded(ARENA_SIZE)
G_BATCH = Guarded(ARENA_SIZE)
G_RO = Guarded(ARENA_SIZE)


def holder(r, data, arena, readonly_ok=False):
    """The packet as one of: bytes, bytearray, exact-size numpy array, guarded region
    (read-only pages too, for inputs that must not be written)."""
    k = r.u8() % (6 if readonly_ok else 5)
    if k == 5 and len(data) <= ARENA_SIZE:
        return G_RO.readonly_tail(data)
    if k == 0:
        return bytes(data)
    if k == 1:
        return bytearray(data)
    if k == 2 or len(data) > ARENA_SIZE:
        return np.frombuffer(data, dtype=np.uint8).copy()
    if k == 3:
        return arena.tail(data)
    return arena.head(data)


def out_buffer(r, n):
    k = r.u8() % 3
    if k == 0 or n > ARENA_SIZE:
        return np.zeros(n, dtype=np.uint8)
    if k == 1:
        v = G_OUT.tail(None, n)
    else:
        v = G_OUT.head(None, n)
    v[:] = b"\xcc" * n
    return v


# ---------------------------------------------------------------------------------------
# SA configurations


class Cfg:
    pass


def pick_cfg(r):
    c = Cfg()
    c.t = r.pick(TRANSFORMS)
    c.mode = fp.TRANSPORT if r.flag(3) else fp.TUNNEL
    c.framing = fp.ESP if c.mode == fp.TUNNEL and r.flag(4) else fp.IP
    c.v6 = r.flag()
    c.udp = r.flag(3)
    c.esn = r.flag(3)
    c.window = r.pick([32, 64, 1024, 4096]) if c.esn else r.pick([0, 32, 64, 1024])
    # RFC 8750 implicit IVs: AES-GCM and ChaCha20-Poly1305 (the kernel refuses them for GMAC)
    c.implicit_iv = c.t.cipher in (C.CIPHER_AES_GCM, C.CIPHER_CHACHA20_POLY1305) and r.flag(3)
    backends = [1, 2, 0] if HAVE_MB else [1, 0]
    c.backend = r.pick(backends)
    if c.backend == 2 and c.t.cipher == C.CIPHER_AES_GMAC:
        c.backend = 1
    k = r.u8() % 8
    if k < 3:
        top = 0
    elif k == 3:
        top = r.u8()
    elif k == 4:
        top = SEQ32 - 1 - (r.u8() % 8)          # at the end of 32-bit numbers
    elif k == 5:
        top = r.u32()
    elif k == 6 and c.esn:
        top = SEQ32 + (r.u8() % 8) - 4          # across the first 2^32 boundary
    else:
        top = (r.u32() << 32 | r.u32()) if c.esn else 1000
    if not c.esn:
        top &= 0xFFFFFFFF
    c.top = top
    c.tfc = r.pick([0, 0, 0, 8, 200]) if c.mode == fp.TUNNEL else 0
    c.dport = 4500 if not r.flag(16) else 4501
    return c


def make_sa(c, backend=None):
    t = c.t
    kw = dict(spi=SPI, cipher=t.cipher, integ=t.integ, icv_len=t.icv, enc_key=t.enc_key,
              auth_key=t.auth_key, mode=c.mode, framing=c.framing, udp=c.udp, esn=c.esn,
              replay_window=c.window, implicit_iv=c.implicit_iv,
              backend=c.backend if backend is None else backend, tfc_pad=c.tfc,
              seq_out=c.top, replay_top=c.top, dport=c.dport)
    if c.mode == fp.TUNNEL and c.framing == fp.IP:
        kw["src"], kw["dst"] = (bytes(range(1, 17)), bytes(range(17, 33))) if c.v6 else (b"\xc0\x00\x02\x01", b"\xc6\x33\x64\x02")
    return fp.SAState(**kw)


def twin_backend(c):
    """Another backend for the same transform, for differential runs."""
    if not HAVE_MB or c.t.cipher == C.CIPHER_AES_GMAC:
        return 1
    return 2 if c.backend == 1 else 1


# ---------------------------------------------------------------------------------------
# IP building blocks


def csum(b):
    if len(b) % 2:
        b = b + b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_fix_csum(h, ihl):
    h[10:12] = b"\0\0"
    h[10:12] = struct.pack("!H", csum(bytes(h[:ihl])))


def ip_header(r, v6, proto, payload_len, ecn, ext_ok=True):
    """An IP header (IPv4 with options / IPv6 with hop-by-hop, routing and destination
    headers) for payload_len bytes of proto. Returns (bytearray header, nh_off)."""
    if not v6:
        words = r.u8() % 4 if ext_ok and r.flag(4) else 0
        ihl = 5 + words
        h = bytearray(ihl * 4)
        h[0] = 0x40 | ihl
        h[1] = (r.u8() & 0xFC) | ecn
        h[2:4] = struct.pack("!H", ihl * 4 + payload_len)
        h[4:6] = struct.pack("!H", r.u16())
        h[6] = 0x40 if r.flag() else 0
        h[8] = 64
        h[9] = proto
        h[12:20] = b"\x0a\x00\x00\x01\x0a\x00\x00\x02"
        for i in range(20, ihl * 4):
            h[i] = 1                                       # NOP options
        ipv4_fix_csum(h, ihl * 4)
        return h, 9
    n_ext = r.u8() % 3 if ext_ok and r.flag(4) else 0
    exts = []
    for k in range(n_ext):
        typ = 0 if k == 0 and r.flag() else r.pick([43, 60])
        exts.append((typ, r.u8() % 3))
    tc = (r.u8() & 0xFC) | ecn
    h = bytearray(40)
    h[0:4] = struct.pack("!I", (6 << 28) | (tc << 20) | (r.u16() & 0xFFFF))
    ext_len = sum((ln + 1) * 8 for _, ln in exts)
    h[4:6] = struct.pack("!H", ext_len + payload_len)
    h[7] = 64
    h[8:24] = bytes(range(0x20, 0x30))
    h[24:40] = bytes(range(0x30, 0x40))
    nh_off = 6
    h[6] = exts[0][0] if exts else proto
    for k, (typ, ln) in enumerate(exts):
        off = len(h)
        e = bytearray((ln + 1) * 8)
        e[0] = exts[k + 1][0] if k + 1 < len(exts) else proto
        e[1] = ln
        if typ != 43:
            e[2] = 1                                        # PadN
            e[3] = len(e) - 4
        h += e
        nh_off = off
    return h, nh_off


def inner_packet(r, v6=None, max_payload=300):
    """A valid IP packet (the thing tunnel mode protects, or transport mode's packet)."""
    if v6 is None:
        v6 = r.flag()
    n = r.u16() % (max_payload + 1)
    payload = r.take(n)
    payload += bytes(n - len(payload))
    proto = r.pick([6, 17, 1, 58, 59, 50, 4, 41, r.u8()])
    h, _ = ip_header(r, v6, proto, len(payload), r.u8() & 3)
    pkt = bytes(h) + payload
    k = r.u8() % 16
    if k == 0:
        pkt += r.take(r.u8() % 16)                          # trailing bytes (Ethernet padding)
    elif k == 1:
        b = bytearray(pkt)                                  # a broken header for BAD_INNER
        i = r.u8() % min(len(b), 48)
        b[i] = r.u8()
        pkt = bytes(b)
    elif k == 2:
        pkt = pkt[:r.u8() % (len(pkt) + 1)]
    return pkt


def udp_header(r, c, esp_len):
    dport = c.dport if not r.flag(16) else r.u16()
    ln = 8 + esp_len if not r.flag(16) else r.u16()
    return struct.pack("!HHHH", 4500, dport, ln & 0xFFFF, 0)


def frame(r, c, esp):
    """Put ESP bytes into what the SA's framing expects. Returns (packet, IP header, its
    nh offset, outer ECN or None, clean) where clean says the framing is what the SA takes."""
    if c.framing == fp.ESP:
        return esp, None, None, None, True
    clean = True
    udp = b""
    if c.udp:
        udp = udp_header(r, c, len(esp))
        clean = udp == struct.pack("!HHHH", 4500, c.dport, 8 + len(esp), 0)
    proto = 17 if c.udp else 50
    v6 = c.v6 if not r.flag(4) else not c.v6
    ecn = r.u8() & 3
    h, nh_off = ip_header(r, v6, proto, len(udp) + len(esp), ecn)
    return bytes(h) + udp + esp, h, nh_off, ecn, clean


# ---------------------------------------------------------------------------------------
# an independent sealer (cryptography, hashlib/hmac)


def esn_infer(top, size, seql):
    """RFC 4303 Appendix A2.1 as the kernel applies it (None: no valid epoch)."""
    w = size or 32
    tl, th = top & 0xFFFFFFFF, top >> 32
    bottom = (tl - w + 1) & 0xFFFFFFFF
    if tl >= w - 1:
        seqh = th if seql >= bottom else (th + 1) & 0xFFFFFFFF
    elif seql >= bottom:
        if th == 0:
            return None
        seqh = th - 1
    else:
        seqh = th
    return (seqh << 32) | seql


def ref_seal(c, seq, body, iv):
    t = c.t
    hdr = struct.pack("!II", SPI, seq & 0xFFFFFFFF)
    hi = struct.pack("!I", seq >> 32) if c.esn else b""
    if t.aead:
        key, salt = t.enc_key[:-4], t.enc_key[-4:]
        wire_iv = b"" if c.implicit_iv else iv[:8]
        nonce = salt + (struct.pack("!Q", seq) if c.implicit_iv else wire_iv)
        aad = hdr[:4] + hi + hdr[4:]
        if t.cipher == C.CIPHER_AES_GMAC:
            tag = AESGCM(key).encrypt(nonce, b"", aad + wire_iv + body)
            return hdr + wire_iv + body + tag[:t.icv]
        a = AESGCM(key) if t.cipher == C.CIPHER_AES_GCM else ChaCha20Poly1305(key)
        ct = a.encrypt(nonce, body, aad)
        return hdr + wire_iv + ct[:len(body)] + ct[len(body):][:t.icv]
    iv = iv[:t.iv_len]
    if t.cipher == C.CIPHER_NULL:
        ct = body
    elif t.cipher == C.CIPHER_AES_CBC:
        e = _Cipher(algorithms.AES(t.enc_key), modes.CBC(iv)).encryptor()
        ct = e.update(body) + e.finalize()
    elif t.cipher == C.CIPHER_AES_CTR:
        e = _Cipher(algorithms.AES(t.enc_key[:-4]), modes.CTR(t.enc_key[-4:] + iv + b"\0\0\0\1")).encryptor()
        ct = e.update(body) + e.finalize()
    else:
        # (pycryptodome is not used: it dlopens with RTLD_DEEPBIND, which ASan refuses)
        key = t.enc_key * 3 if t.cipher == C.CIPHER_DES_CBC else t.enc_key    # DES = EDE with K1=K2=K3
        e = _Cipher(TripleDES(key), modes.CBC(iv)).encryptor()
        ct = e.update(body) + e.finalize()
    m = hdr + iv + ct
    return m + hmac.new(t.auth_key, m + hi, getattr(hashlib, t.hashname)).digest()[:t.icv]


def ecn_model(inner, outer_ecn):
    """RFC 6040 4.2 as the kernel applies it: (status, inner)."""
    b = bytearray(inner)
    v4 = b[0] >> 4 == 4
    tos = b[1] if v4 else ((b[0] << 8 | b[1]) >> 4) & 0xFF
    ecn = tos & 3
    if outer_ecn == 3:
        if ecn == 0:
            return S.ECN_DROP, None
        new = 3
    elif outer_ecn == 1 and ecn == 2:
        new = 1
    else:
        return S.OK, bytes(b)
    if new == ecn:
        return S.OK, bytes(b)
    tos = (tos & ~3) | new
    if v4:
        b[1] = tos
        ipv4_fix_csum(b, (b[0] & 0x0F) * 4)
    else:
        w = (b[0] << 8 | b[1])
        w = (w & 0xF00F) | (tos << 4)
        b[0:2] = struct.pack("!H", w)
    return S.OK, bytes(b)


def sealed_packet(r, c, sa):
    """A packet sealed by ref_seal with a fuzz-chosen cipher region. Returns (packet,
    expected) where expected is None (anything may happen), a Status, or the exact result."""
    t = c.t
    # the sequence number: the next one, a recent one, or any
    k = r.u8() % 4
    top = sa.replay_top
    if k == 0:
        seql = (top + 1) & 0xFFFFFFFF
    elif k == 1:
        seql = (top - (r.u8() % 40)) & 0xFFFFFFFF
    elif k == 2:
        seql = (top + 1 + r.u16()) & 0xFFFFFFFF
    else:
        seql = r.u32()
    no_epoch = False
    if c.esn:
        seq = esn_infer(top, sa.replay_window, seql)
        if seq is None:                                  # the kernel answers TOO_OLD
            seq, no_epoch = seql, True
    else:
        seq = seql
    well_formed = r.u8() % 4 != 0
    expect = None
    if well_formed:
        if c.mode == fp.TUNNEL:
            inner = inner_packet(r)
            # inner_packet may break the packet on purpose; only a valid one has an expectation
            valid = fp_inner_ok(inner)
            payload = inner
            nh = 4 if inner[:1] and inner[0] >> 4 == 4 else 41
            if r.flag(16):
                nh = 59
            tfc = bytes(r.u8() % 24) if r.flag(4) else b""
        else:
            payload = r.take(r.u8())
            nh = r.pick([6, 17, 58, 59, 4, 41, 0, r.u8()])
            valid, tfc = True, b""
        extra_blocks = r.u8() % 3 if r.flag(4) else 0
        padn = (-(len(payload) + len(tfc) + 2)) % t.block + extra_blocks * t.block
        if padn > 255:
            padn = (-(len(payload) + len(tfc) + 2)) % t.block
        body = payload + tfc + bytes(range(1, padn + 1)) + bytes([padn, nh])
        tweak = r.u8() % 8
        if tweak == 0 and len(body) > 2:
            b = bytearray(body)                            # break the trailer / padding
            i = len(b) - 1 - (r.u8() % min(len(b), 40))
            b[i] = r.u8()
            body = bytes(b)
            valid = False
        if valid and tweak != 0:
            expect = ("body", payload, nh)
    else:
        body = r.take(r.u16() % 600)
    if len(body) < 2:
        body += bytes(2 - len(body))
        expect = None
    if len(body) % t.rx_align:
        # CBC needs whole blocks to seal (a misaligned ciphertext comes from mutations)
        body += bytes(t.rx_align - len(body) % t.rx_align)
        expect = None
    iv = r.take(16)
    iv += bytes(16 - len(iv))
    esp = ref_seal(c, seq, body, iv)
    pkt, hdr, nh_off, outer_ecn, clean = frame(r, c, esp)
    if expect is not None:
        _, payload, nh = expect
        if not clean or len(pkt) > 65535 + 40:
            return pkt, None
        if no_epoch:
            return pkt, S.TOO_OLD
        fresh = seq > sa.replay_top or (sa.replay_window == 0 and seq != 0)
        if not fresh or seq == 0:
            return pkt, None
        if nh == 59:
            return pkt, S.DUMMY
        if c.mode == fp.TUNNEL:
            tot = inner_tot(payload)
            inner = payload[:tot]
            if outer_ecn is not None:
                st, inner = ecn_model(inner, outer_ecn)
                if st != S.OK:
                    return pkt, st
            return pkt, inner
        ip_len = len(hdr)
        h = bytearray(hdr)
        h[nh_off] = nh
        if h[0] >> 4 == 4:
            h[2:4] = struct.pack("!H", ip_len + len(payload))
            ipv4_fix_csum(h, ip_len)
        else:
            h[4:6] = struct.pack("!H", ip_len - 40 + len(payload))
        return pkt, bytes(h) + payload
    return pkt, None


def inner_tot(p):
    if p[0] >> 4 == 4:
        return struct.unpack("!H", p[2:4])[0]
    return 40 + struct.unpack("!H", p[4:6])[0]


def fp_inner_ok(p):
    """Would tunnel decap accept p as the whole inner packet (no TFC)?"""
    if len(p) >= 20 and p[0] >> 4 == 4:
        ihl = (p[0] & 15) * 4
        tot = struct.unpack("!H", p[2:4])[0]
        return ihl >= 20 and ihl <= tot <= len(p)
    if len(p) >= 40 and p[0] >> 4 == 6:
        return 40 + struct.unpack("!H", p[4:6])[0] <= len(p)
    return False


# ---------------------------------------------------------------------------------------
# mutations


def mutate(r, pkt):
    b = bytearray(pkt)
    for _ in range(r.u8() % 5):
        op = r.u8() % 9
        n = len(b)
        pos = r.u16() % (n + 1)
        if op == 0 and n:
            b[pos % n] ^= 1 << (r.u8() % 8)
        elif op == 1 and n:
            b[pos % n] = r.u8()
        elif op == 2:
            del b[pos:]
        elif op == 3:
            b += r.take(r.u8())
        elif op == 4:
            b[pos:pos] = r.take(r.u8() % 32)
        elif op == 5:
            del b[pos:pos + r.u8() % 32]
        elif op == 6 and n >= 2:
            p = pos % (n - 1)
            b[p:p + 2] = struct.pack("!H", r.u16())
        elif op == 7:
            b += bytes([r.u8()]) * (r.u16() + (70000 if r.flag(8) else 0))
        elif op == 8 and n >= 8:
            # the ESP header region of common layouts: SPI / sequence number
            p = r.pick([0, 4, 20, 24, 28, 32, 40, 44, 48, 56]) % (n - 3)
            b[p:p + 4] = struct.pack("!I", r.pick([SPI, 0, 0xFFFFFFFF, r.u32()]))
    return bytes(b)


# ---------------------------------------------------------------------------------------
# oracles


def in_total(sa):
    d = sa.counters()["in"]
    return sum(v for k, v in d.items() if k != "bytes"), d


def out_total(sa):
    d = sa.counters()["out"]
    return sum(v for k, v in d.items() if k != "bytes"), d


def body_cap(c, pkt_len):
    """The least output capacity decap_into needs for a tunnel packet in ESP framing."""
    return pkt_len - 8 - (0 if c.implicit_iv else c.t.iv_len) - c.t.icv


def single(r, c, sa, pkt, verify, expect=None):
    """One decap or decap_into call with every single-packet oracle; returns (status, result)."""
    data = bytes(pkt)
    src = holder(r, data, G_IN, readonly_ok=True)
    before, cb = in_total(sa)
    k = r.u8() % 4
    cap = None
    if k == 0:
        call = lambda: sa.decap(src, verify=verify)  # noqa: E731
    else:
        caps = [len(data), body_cap(c, len(data)), body_cap(c, len(data)) - 1,
                r.u8(), len(data) + r.u8(), r.u16() % (len(data) + 1)]
        cap = max(0, r.pick(caps))
        out = out_buffer(r, cap)
        call = lambda: sa.decap_into(src, out, verify=verify)  # noqa: E731
    try:
        res = call()
        st = S.OK
    except fp.PacketError as e:
        st, res = e.status, None
    assert bytes(src) == data, "decap modified its input"
    after, ca = in_total(sa)
    assert after - before == 1, f"in-counters grew by {after - before} for one packet"
    if st == S.OK:
        if cap is not None:
            n = res
            assert 0 <= n <= cap, f"decap_into returned {n} for a {cap}-byte output"
            res = bytes(out[:n])
        assert len(res) <= len(data), f"result {len(res)} longer than input {len(data)}"
        assert ca["packets"] - cb["packets"] == 1 and ca["bytes"] - cb["bytes"] == len(res)
    else:
        assert st != S.NOT_PROCESSED and st != S.SA_DEAD, st
        assert st != S.INTERNAL, f"INTERNAL for a {len(data)}-byte packet ({c.t.name})"
        name = S(st).name
        assert ca[name] - cb[name] == 1, f"{name} not counted"
        assert ca["bytes"] == cb["bytes"]
    if expect is not None and not (st == S.NO_ROOM and cap is not None):
        if isinstance(expect, bytes):
            assert st == S.OK, f"well-formed sealed packet refused: {S(st).name} ({c.t.name})"
            assert res == expect, f"wrong decap result\n got {res.hex()}\nwant {expect.hex()}"
        else:
            assert st == expect, f"expected {S(expect).name}, got {S(st).name}"
    return st, res


# statuses decided before (or by) the integrity check: the packet must be left as it came
UNTOUCHED = {S.TRUNCATED, S.BAD_IP_HEADER, S.NOT_ESP, S.NAT_KEEPALIVE, S.FRAGMENT, S.BAD_SPI,
             S.BAD_LENGTH, S.ICV_FAIL}
SAME_CLASS = {S.TOO_OLD: S.REPLAY}


def batch_decap(r, c, sa, pkts, verify, twin=None):
    n = len(pkts)
    gaps = [r.u8() % 24 if r.flag(3) else 0 for _ in range(n + 1)]
    total = sum(len(p) for p in pkts) + sum(gaps)
    offs = np.zeros(n, dtype=np.int64)
    lens = np.zeros(n, dtype=np.uint32)
    img = bytearray(b"\xa5" * total)
    o = gaps[0]
    for i, p in enumerate(pkts):
        offs[i], lens[i] = o, len(p)
        img[o:o + len(p)] = p
        o += len(p) + gaps[i + 1]
    k = r.u8() % 3
    if k == 0 or total > ARENA_SIZE or total == 0:
        buf = np.frombuffer(bytes(img), dtype=np.uint8).copy()
    else:
        buf = (G_BATCH.tail if k == 1 else G_BATCH.head)(bytes(img))
    status = np.full(n + (r.u8() % 3 if r.flag(8) else 0), 0xEE, dtype=np.uint8)
    o0, l0 = offs.copy(), lens.copy()
    before, cb = in_total(sa)
    ok = sa.decap_batch(buf, offs, lens, status, verify=verify)
    after, ca = in_total(sa)
    final = bytes(buf)
    assert after - before == n, f"in-counters grew by {after - before} for {n} packets"
    sts = [int(s) for s in status[:n]]
    assert all(s < len(S) for s in sts), f"status not written: {sts}"
    assert ok == sts.count(0), f"returned {ok}, {sts.count(0)} OK statuses"
    for i, s in enumerate(sts):
        assert s != S.INTERNAL, f"packet {i}: INTERNAL for {len(pkts[i])} bytes ({c.t.name})"
    assert all(status[n:] == 0xEE), "status written past n"
    nbytes = 0
    covered = bytearray(total)
    for i in range(n):
        lo, hi = int(o0[i]), int(o0[i]) + int(l0[i])
        covered[lo:hi] = b"\x01" * (hi - lo)
        if sts[i] == S.OK:
            assert lo <= offs[i] and offs[i] + lens[i] <= hi, \
                f"packet {i}: result [{offs[i]}, +{lens[i]}) outside [{lo}, {hi})"
            nbytes += int(lens[i])
        else:
            assert offs[i] == o0[i] and lens[i] == l0[i], f"packet {i} ({S(sts[i]).name}): offset/length changed"
            if sts[i] in UNTOUCHED:
                assert final[lo:hi] == pkts[i], f"packet {i} ({S(sts[i]).name}) modified"
    outside = np.frombuffer(final, dtype=np.uint8)[np.frombuffer(bytes(covered), dtype=np.uint8) == 0]
    assert bool(np.all(outside == 0xA5)), "bytes outside every packet were written"
    assert ca["packets"] - cb["packets"] == ok and ca["bytes"] - cb["bytes"] == nbytes
    for s in set(sts):
        if s:
            name = S(s).name
            assert ca[name] - cb[name] == sts.count(s), f"{name} miscounted"
    if twin is not None:
        # one by one on a twin SA (the other backend): the same outcome packet for packet
        for i, p in enumerate(pkts):
            try:
                res, st = twin.decap(p, verify=verify), S.OK
            except fp.PacketError as e:
                res, st = None, e.status
            sb = S(sts[i])
            # a batch checks every packet against the window as it was before the batch, so a
            # forged packet that one-by-one decap refuses as a replay meets the ICV check there
            late = SAME_CLASS.get(st, st) == S.REPLAY and sb == S.ICV_FAIL
            assert late or SAME_CLASS.get(st, st) == SAME_CLASS.get(sb, sb), \
                f"packet {i}: batch {sb.name}, single {S(st).name} ({c.t.name} backend {c.backend})"
            if st == S.OK:
                got = final[int(offs[i]):int(offs[i]) + int(lens[i])]
                assert got == res, f"packet {i}: batch and single results differ"
    return sts


# ---------------------------------------------------------------------------------------
# strategies


def one_packet(r, c, sa):
    """A packet from one of the generators: (bytes, expectation)."""
    k = r.u8() % 8
    if k == 0:
        return r.take(r.u16() % 2048), None
    if k <= 3:
        inner = inner_packet(r)
        try:
            e = sa.encap(inner)
        except fp.PacketError:
            return inner, None
        if r.flag(3):
            return e, None
        return mutate(r, e), None
    pkt, expect = sealed_packet(r, c, sa)
    if r.flag(3):
        return mutate(r, pkt), None
    return pkt, expect


def roundtrip_expect(c, p):
    """What decap gives back for a packet encap accepted: the inner packet without trailing
    bytes; transport mode rebuilds the IPv4 checksum."""
    want = bytearray(p[:inner_tot(p)])
    if c.mode == fp.TRANSPORT and want[0] >> 4 == 4:
        ipv4_fix_csum(want, (want[0] & 15) * 4)
    return bytes(want)


def strat_raw(r, c):
    sa = make_sa(c)
    data = r.take(r.u16() % 4096) if r.flag() else r.d[r.i:]
    single(r, c, sa, data, r.flag())


def strat_encap_mutated(r, c):
    sa = make_sa(c)
    # decap(verify=False) moves the replay window (and so the ESN epoch) with sequence
    # numbers nobody authenticated: after one, a later packet's fate is not predictable
    tainted = False
    for _ in range(1 + r.u8() % 3):
        inner = inner_packet(r)
        try:
            e = sa.encap(inner)
        except fp.PacketError:
            continue
        verify = not r.flag(4)
        m = mutate(r, e)
        st, res = single(r, c, sa, m, verify)
        if m == e and st != S.NO_ROOM and not tainted:
            # an unmodified packet from our own encap opens (transport: DUMMY for proto 59)
            assert st in (S.OK, S.DUMMY), f"own packet refused: {S(st).name} ({c.t.name})"
            if st == S.OK:
                assert res == roundtrip_expect(c, inner), f"round trip differs ({c.t.name})"
        tainted = tainted or not verify


def strat_sealed(r, c):
    sa = make_sa(c)
    for _ in range(1 + r.u8() % 3):
        pkt, expect = sealed_packet(r, c, sa)
        mutated = r.flag(4)
        if mutated:
            pkt, expect = mutate(r, pkt), None
        verify = not r.flag(4)
        st, _ = single(r, c, sa, pkt, verify, expect if verify else expect)
        if not mutated and verify:
            assert st != S.ICV_FAIL, f"independently sealed packet failed its ICV ({c.t.name} esn={c.esn})"


def strat_batch(r, c):
    sa = make_sa(c)
    twin = make_sa(c, twin_backend(c)) if not c.esn else None
    n = 1 + (r.u8() % 12 if not r.flag(8) else 60 + r.u8() % 12)
    pkts = []
    for i in range(n):
        if pkts and r.flag(4):
            pkts.append(pkts[r.u8() % len(pkts)])          # a duplicate (replay inside the batch)
        else:
            pkts.append(one_packet(r, c, sa)[0])
    batch_decap(r, c, sa, pkts, not r.flag(4), twin)


def strat_encap_batch(r, c):
    sa = make_sa(c)
    n = 1 + r.u8() % 10
    inners = [inner_packet(r, max_payload=200) for _ in range(n)]
    need = sa.headroom + sa.tailroom
    stride = r.pick([max(len(p) for p in inners) + need + r.u8() % 64,
                     16 + r.u16() % 600, max(len(p) for p in inners) + r.u8() % (need + 1)])
    stride = max(stride, 1)
    buflen = n * stride - (r.u8() % stride if r.flag(4) else 0)
    img = bytearray(b"\x5a" * buflen)
    offs = np.zeros(n, dtype=np.int64)
    lens = np.zeros(n, dtype=np.uint32)
    keep = []
    for i, p in enumerate(inners):
        lo, hi = i * stride, min((i + 1) * stride, buflen)
        room = hi - lo                                     # > 0: buflen > (n - 1) * stride
        if len(p) > room:
            p = p[:room]
        slack = max(0, (hi - lo) - len(p))
        head = r.pick([min(sa.headroom, slack), slack, r.u8() % (slack + 1), 0])
        offs[i], lens[i] = lo + head, len(p)
        img[lo + head:lo + head + len(p)] = p
        keep.append(p)
    if any(offs[i] + lens[i] > buflen for i in range(n)):
        return
    buf = (np.frombuffer(bytes(img), dtype=np.uint8).copy() if r.flag() or not buflen
           else G_BATCH.tail(bytes(img)))
    status = np.full(n, 0xEE, dtype=np.uint8)
    o0, l0 = offs.copy(), lens.copy()
    before, cb = out_total(sa)
    ok = sa.encap_batch(buf, offs, lens, status, stride)
    after, ca = out_total(sa)
    final = bytes(buf)
    assert after - before == n
    sts = [int(s) for s in status]
    assert ok == sts.count(0) and all(s < len(S) for s in sts), sts
    for i in range(n):
        lo, hi = i * stride, min((i + 1) * stride, buflen)
        if sts[i] == S.OK:
            assert lo <= offs[i] and offs[i] + lens[i] <= hi, f"encap result {i} outside its slot"
            out = final[int(offs[i]):int(offs[i]) + int(lens[i])]
            try:
                res = sa.decap(out)
            except fp.PacketError as e:
                assert e.status == S.DUMMY, f"own batch packet {i} refused: {e.status.name} ({c.t.name})"
                continue
            assert res == roundtrip_expect(c, keep[i]), f"encap_batch round trip {i} differs ({c.t.name})"
        else:
            assert offs[i] == o0[i] and lens[i] == l0[i]
            if sts[i] != S.INTERNAL:
                assert final[lo:hi] == bytes(img[lo:hi]), f"refused packet {i} ({S(sts[i]).name}) changed its slot"
    assert ca["packets"] - cb["packets"] == ok


def expect_misuse(fn, *exc):
    try:
        fn()
    except exc:
        return
    raise AssertionError(f"misuse accepted: {fn}")


def array_of(a, code):
    from array import array
    try:
        return array(code, [int(x) if code not in "fd" else float(x) for x in np.asarray(a).ravel()])
    except OverflowError:
        return array(code, bytes(array(code).itemsize * len(a)))


def strat_misuse(r, c):
    sa = make_sa(c)
    pkt = one_packet(r, c, sa)[0] or b"\0"
    n = len(pkt)
    buf = np.frombuffer(pkt, dtype=np.uint8).copy()
    k = r.u8() % 9
    if k == 0:
        bad = [-1, n, n - 1, 1 << 40, -(1 << 40), -(1 << 63)]
        if "offset-overflow" not in SKIP_KNOWN:
            bad += [(1 << 63) - 1 - (r.u8() % 64)]
        off = np.array([r.pick(bad)], dtype=np.int64)
        ln = np.array([r.pick([2, 0xFFFFFFFF, 2 + r.u8()])], np.uint32)   # >= 2: never inside
        if r.flag():
            expect_misuse(lambda: sa.decap_batch(buf, off, ln, np.zeros(1, np.uint8)), ValueError)
        else:
            expect_misuse(lambda: sa.encap_batch(buf, off, ln, np.zeros(1, np.uint8), max(1, n)), ValueError)
    elif k == 1:
        expect_misuse(lambda: sa.decap_batch(buf, np.zeros(2, np.int64), np.ones(1, np.uint32), np.zeros(2, np.uint8)), ValueError)
    elif k == 2:
        expect_misuse(lambda: sa.decap_batch(pkt, np.zeros(1, np.int64), np.array([n], np.uint32), np.zeros(1, np.uint8)),
                      ValueError, BufferError, TypeError)
    elif k == 3:
        # wrong item types and layouts for each of the four arrays; whatever a build accepts,
        # it must refuse a strided, read-only, float or wrong-width array
        arrs = [buf, np.zeros(1, np.int64), np.array([n], np.uint32), np.zeros(1, np.uint8)]
        width = [1, 8, 4, 1]
        j = r.u8() % 4
        alt = r.u8() % 4
        if alt == 0:
            bad = np.zeros(max(2, len(arrs[j])) * 2, arrs[j].dtype)[::2]       # not contiguous
        elif alt == 1:
            bad = arrs[j].astype(r.pick([np.int8, np.int16, np.int32, np.uint64, np.float64, np.float32]))
        elif alt == 2:
            bad = array_of(arrs[j], r.pick("bBhHiIlLqQfd"))
        else:
            bad = memoryview(bytes(arrs[j].tobytes()))                          # read-only
        mv = memoryview(bad)
        must_fail = (not mv.c_contiguous or mv.readonly or mv.itemsize != width[j]
                     or mv.format.lstrip("@=<") in ("f", "d"))
        arrs[j] = bad
        try:
            sa.decap_batch(*arrs)
        except (ValueError, BufferError, TypeError):
            return
        assert not must_fail, f"decap_batch accepted {mv.format!r} x{mv.itemsize} (readonly={mv.readonly}, " \
                              f"contiguous={mv.c_contiguous}) as argument {j}"
    elif k == 4:
        expect_misuse(lambda: sa.decap_into(pkt, bytes(n)), BufferError, TypeError)
    elif k == 5:
        expect_misuse(lambda: sa.encap_batch(buf, np.zeros(1, np.int64), np.array([n], np.uint32), np.zeros(1, np.uint8),
                                             r.pick([0, -1, -(1 << 63)])), ValueError)
    elif k == 6:
        stride = max(1, r.u8())
        expect_misuse(lambda: sa.encap_batch(buf, np.array([stride + n], np.int64), np.array([n], np.uint32),
                                             np.zeros(1, np.uint8), stride), ValueError)
    elif k == 7:
        # a closed SA: single calls raise SAClosedError, batches mark SA_DEAD
        sa.close()
        try:
            sa.decap(pkt)
            raise AssertionError("decap on a closed SA succeeded")
        except fp.SAClosedError:
            pass
        st = np.zeros(1, np.uint8)
        assert sa.decap_batch(buf, np.zeros(1, np.int64), np.array([n], np.uint32), st) == 0
        assert st[0] == S.SA_DEAD
        assert bytes(buf) == pkt
    else:
        # an empty batch and a zero-length packet
        assert sa.decap_batch(buf, np.zeros(0, np.int64), np.zeros(0, np.uint32), np.zeros(0, np.uint8)) == 0
        st = np.zeros(1, np.uint8)
        sa.decap_batch(buf, np.array([r.u16() % (n + 1)], np.int64), np.zeros(1, np.uint32), st)
        assert st[0] in (S.TRUNCATED, S.NAT_KEEPALIVE, S.NOT_ESP, S.BAD_IP_HEADER), S(st[0]).name


STRATEGIES = [strat_raw, strat_encap_mutated, strat_encap_mutated, strat_sealed, strat_sealed,
              strat_sealed, strat_batch, strat_batch, strat_encap_batch, strat_misuse]


def TestOneInput(data):
    r = R(data)
    strat = STRATEGIES[r.u8() % len(STRATEGIES)]
    c = pick_cfg(r)
    strat(r, c)


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
