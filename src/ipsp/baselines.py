"""What a user would otherwise write, for ``ipsp bench`` to compare against in the same run.

- :class:`NaiveESP`: ESP tunnel mode built per packet in Python over the ``cryptography``
  package (one cipher object per SA, reused; headers packed with ``struct``): the straight
  way to "just use cryptography".
- :class:`ScapyESP`: scapy's ``SecurityAssociation`` (tunnel mode), one packet object at a
  time.

Both are checked, not trusted: what they encapsulate must be accepted by an ipsp SA with the
same keys and give back the input, or the baseline is reported as unverified.
"""

from __future__ import annotations

import os
import struct
import time
from hmac import compare_digest
from typing import Sequence

import fastpath
from fastpath import Cipher, Integ

from ipsp.gen import internet_checksum
from ipsp.sa import SAConfig

__all__ = ["NaiveESP", "ScapyESP", "measure"]

_HASHES = {Integ.INTEG_HMAC_SHA1_96: "SHA1", Integ.INTEG_HMAC_SHA256_128: "SHA256",
           Integ.INTEG_HMAC_SHA384_192: "SHA384", Integ.INTEG_HMAC_SHA512_256: "SHA512",
           Integ.INTEG_HMAC_MD5_96: "MD5"}
_SCAPY_CIPHERS = {Cipher.CIPHER_AES_GCM: "AES-GCM", Cipher.CIPHER_CHACHA20_POLY1305: "CHACHA20-POLY1305",
                  Cipher.CIPHER_AES_CBC: "AES-CBC", Cipher.CIPHER_DES_CBC: "DES", Cipher.CIPHER_3DES_CBC: "3DES",
                  Cipher.CIPHER_AES_CTR: "AES-CTR", Cipher.CIPHER_NULL: "NULL"}
_SCAPY_AUTH = {Integ.INTEG_HMAC_SHA1_96: "HMAC-SHA1-96", Integ.INTEG_HMAC_SHA256_128: "SHA2-256-128",
               Integ.INTEG_HMAC_SHA384_192: "SHA2-384-192", Integ.INTEG_HMAC_SHA512_256: "SHA2-512-256",
               Integ.INTEG_HMAC_MD5_96: "HMAC-MD5-96"}


class NaiveESP:
    """RFC 4303 tunnel mode over IPv4, per packet, with ``cryptography``. Supports the AEAD
    transforms (AES-GCM, ChaCha20-Poly1305) and CBC + HMAC (AES, DES, 3DES)."""

    def __init__(self, cfg: SAConfig):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers import algorithms
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
        t = cfg.transform
        self.cfg, self.t = cfg, t
        self.spi = struct.pack("!I", cfg.spi)
        self.outer = (cfg.src.packed, cfg.dst.packed)
        if t.cipher == Cipher.CIPHER_AES_GCM:
            self.aead, self.salt = AESGCM(cfg.enc_key[:-4]), cfg.enc_key[-4:]
        elif t.cipher == Cipher.CIPHER_CHACHA20_POLY1305:
            self.aead, self.salt = ChaCha20Poly1305(cfg.enc_key[:-4]), cfg.enc_key[-4:]
        elif t.cipher in (Cipher.CIPHER_AES_CBC, Cipher.CIPHER_DES_CBC, Cipher.CIPHER_3DES_CBC):
            self.aead = None
            if t.cipher == Cipher.CIPHER_AES_CBC:
                self.algorithm = algorithms.AES(cfg.enc_key)
            else:
                from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
                # single DES is 3DES with three equal keys
                self.algorithm = TripleDES(cfg.enc_key * 3 if len(cfg.enc_key) == 8 else cfg.enc_key)
            self.hash = getattr(hashes, _HASHES[Integ(t.integ)])()
        else:
            raise ValueError(f"no naive cryptography baseline for {t.name}")

    def encap(self, packet: bytes, seq: int) -> bytes:
        from cryptography.hazmat.primitives import hmac
        from cryptography.hazmat.primitives.ciphers import Cipher as C, modes
        t = self.t
        pad = (-(len(packet) + 2)) % t.block
        plain = packet + bytes(range(1, pad + 1)) + bytes([pad, 4 if packet[0] >> 4 == 4 else 41])
        head = self.spi + struct.pack("!I", seq)
        if self.aead is not None:
            iv = struct.pack("!Q", seq)
            body = iv + self.aead.encrypt(self.salt + iv, plain, head)
        else:
            iv = os.urandom(t.iv_len)
            enc = C(self.algorithm, modes.CBC(iv)).encryptor()
            ct = enc.update(plain) + enc.finalize()
            h = hmac.HMAC(self.cfg.auth_key, self.hash)
            h.update(head + iv + ct)
            body = iv + ct + h.finalize()[:t.icv_len]
        total = 20 + len(head) + len(body)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 50, 0, *self.outer)
        ip = ip[:10] + struct.pack("!H", internet_checksum(ip)) + ip[12:]
        return ip + head + body

    def decap(self, packet: bytes) -> bytes:
        from cryptography.hazmat.primitives import hmac
        from cryptography.hazmat.primitives.ciphers import Cipher as C, modes
        t = self.t
        esp = packet[(packet[0] & 0x0F) * 4:]
        head, iv = esp[:8], esp[8:8 + t.iv_len]
        if self.aead is not None:
            plain = self.aead.decrypt(self.salt + iv, esp[8 + t.iv_len:], head)
        else:
            ct, icv = esp[8 + t.iv_len:-t.icv_len], esp[-t.icv_len:]
            h = hmac.HMAC(self.cfg.auth_key, self.hash)
            h.update(head + iv + ct)
            if not compare_digest(h.finalize()[:t.icv_len], icv):     # the ICV is truncated
                raise ValueError("ICV mismatch")
            dec = C(self.algorithm, modes.CBC(iv)).decryptor()
            plain = dec.update(ct) + dec.finalize()
        return plain[:len(plain) - 2 - plain[-2]]


class ScapyESP:
    """scapy's SecurityAssociation in tunnel mode with the same keys."""

    def __init__(self, cfg: SAConfig):
        from scapy.layers.inet import IP
        from scapy.layers.ipsec import ESP, SecurityAssociation
        t = cfg.transform
        if Cipher(t.cipher) not in _SCAPY_CIPHERS or (not t.aead and Integ(t.integ) not in _SCAPY_AUTH):
            raise ValueError(f"scapy has no {t.name}")
        kw = dict(spi=cfg.spi, crypt_algo=_SCAPY_CIPHERS[Cipher(t.cipher)], crypt_key=cfg.enc_key or None,
                  tunnel_header=IP(src=str(cfg.src), dst=str(cfg.dst)))
        if t.aead:
            kw["crypt_icv_size"] = t.icv_len
        else:
            kw.update(auth_algo=_SCAPY_AUTH[Integ(t.integ)], auth_key=cfg.auth_key)
        self.sa = SecurityAssociation(ESP, **kw)
        self._ip = IP

    def encap(self, packet: bytes, seq: int) -> bytes:
        self.sa.seq_num = seq
        return bytes(self.sa.encrypt(self._ip(packet)))

    def decap(self, packet: bytes) -> bytes:
        return bytes(self.sa.decrypt(self._ip(packet)))


def measure(kind: str, cfg: SAConfig, packets: Sequence[bytes]) -> dict:
    """ns per packet to encapsulate and to decapsulate *packets* with a baseline, and whether
    an ipsp SA with the same keys accepted all it produced and got the inputs back.
    Raises ImportError or ValueError where the baseline is not available."""
    impl = NaiveESP(cfg) if kind == "cryptography" else ScapyESP(cfg)
    inner = [p for p in packets if p[0] >> 4 == 4]          # both baselines build IPv4 tunnels
    t0 = time.perf_counter_ns()
    esp = [impl.encap(p, i + 1) for i, p in enumerate(inner)]
    t1 = time.perf_counter_ns()
    try:
        back = [impl.decap(e) for e in esp]
    except Exception:            # InvalidTag, a bad ICV, garbage: not a baseline to quote
        back = None
    t2 = time.perf_counter_ns()
    check = cfg.make_state()
    try:
        verified = back == list(inner) and all(check.decap(e) == p for e, p in zip(esp, inner))
    except fastpath.PacketError:
        verified = False
    finally:
        check.close()
    n = max(len(inner), 1)
    return {"packets": len(inner), "encap_ns": (t1 - t0) / n, "decap_ns": (t2 - t1) / n, "verified": verified}
