"""ESP transforms, named by strongSwan's ESP proposal keywords.

A proposal such as ``aes128gcm16`` or ``aes256-sha256`` names a cipher and, for non-AEAD
ciphers, an integrity algorithm. Parsing one gives a :class:`Transform` with everything the
kernel needs (ids, key, IV and ICV lengths) and the RFC that defines it.

Status per RFC 8221 (cryptographic algorithm requirements for ESP): DES and HMAC-MD5 are
MUST NOT and are kept only as explicit legacy transforms (DES is the 1993 working group's
cipher); using them needs ``allow_insecure``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastpath import Cipher, Integ

from ipsp.errors import ConfigError, shown

__all__ = ["Transform", "parse_proposal", "parse_esp_proposal", "DH_GROUPS", "PROPOSALS"]

# strongSwan's Diffie-Hellman keywords -> IANA transform type 4 ids: the groups ipsp.ike
# implements (ipsp.ike.crypto.DH_GROUPS). In an ESP proposal they ask for PFS (RFC 7296 1.3.1)
DH_GROUPS = {"modp2048": 14, "modp3072": 15, "modp4096": 16, "ecp256": 19, "ecp384": 20, "ecp521": 21,
             "x25519": 31, "curve25519": 31}


@dataclass(frozen=True)
class Transform:
    """One ESP transform: the kernel ids and the key material it takes."""

    name: str                 # canonical strongSwan keyword
    cipher: Cipher
    integ: Integ
    icv_len: int              # bytes of ICV on the wire
    enc_key_len: int          # bytes of enc_key, salt or nonce included
    auth_key_len: int         # bytes of auth_key (0 for AEAD)
    iv_len: int               # bytes of IV on the wire (before RFC 8750 implicit IV)
    block: int                # padding granularity
    legacy: bool              # RFC 8221 MUST NOT: refused unless insecure transforms are allowed
    rfc: str

    @property
    def aead(self) -> bool:
        return self.integ == Integ.INTEG_NONE

    @property
    def salt_len(self) -> int:
        return 4 if self.cipher in _SALTED else 0


_SALTED = {Cipher.CIPHER_AES_GCM, Cipher.CIPHER_AES_GMAC, Cipher.CIPHER_CHACHA20_POLY1305, Cipher.CIPHER_AES_CTR}

# integrity keyword -> (id, key length, ICV length, RFC, legacy); strongSwan's aliases included
_INTEG = {
    "md5": (Integ.INTEG_HMAC_MD5_96, 16, 12, "RFC 2403", True),
    "sha1": (Integ.INTEG_HMAC_SHA1_96, 20, 12, "RFC 2404", False),
    "sha": (Integ.INTEG_HMAC_SHA1_96, 20, 12, "RFC 2404", False),
    "sha256": (Integ.INTEG_HMAC_SHA256_128, 32, 16, "RFC 4868", False),
    "sha2_256": (Integ.INTEG_HMAC_SHA256_128, 32, 16, "RFC 4868", False),
    "sha384": (Integ.INTEG_HMAC_SHA384_192, 48, 24, "RFC 4868", False),
    "sha2_384": (Integ.INTEG_HMAC_SHA384_192, 48, 24, "RFC 4868", False),
    "sha512": (Integ.INTEG_HMAC_SHA512_256, 64, 32, "RFC 4868", False),
    "sha2_512": (Integ.INTEG_HMAC_SHA512_256, 64, 32, "RFC 4868", False),
}
_CANON_INTEG = {"sha": "sha1", "sha2_256": "sha256", "sha2_384": "sha384", "sha2_512": "sha512"}

# cipher keyword -> (id, key length without salt, IV length, block, RFC, legacy)
_CIPHERS = {
    "null": (Cipher.CIPHER_NULL, 0, 0, 4, "RFC 2410", False),
    "des": (Cipher.CIPHER_DES_CBC, 8, 8, 8, "RFC 2405", True),
    "3des": (Cipher.CIPHER_3DES_CBC, 24, 8, 8, "RFC 2451", False),
}
for _bits in (128, 192, 256):
    _CIPHERS[f"aes{_bits}"] = (Cipher.CIPHER_AES_CBC, _bits // 8, 16, 16, "RFC 3602", False)
    _CIPHERS[f"aes{_bits}ctr"] = (Cipher.CIPHER_AES_CTR, _bits // 8, 8, 4, "RFC 3686", False)

# strongSwan writes the GCM ICV length in bytes (gcm16) or bits (gcm128)
_GCM = re.compile(r"^aes(128|192|256)gcm(8|12|16|64|96|128)$")
_GMAC = re.compile(r"^aes(128|192|256)gmac$")
_ICV_BYTES = {"8": 8, "12": 12, "16": 16, "64": 8, "96": 12, "128": 16}


def parse_proposal(text: str) -> Transform:
    """The transform a strongSwan ESP proposal keyword names, e.g. ``aes128gcm16``,
    ``aes256-sha256``, ``des-sha1``. Raises ConfigError naming what is wrong."""
    word = text.strip().lower()
    m = _GCM.match(word)
    if m:
        bits, icv = int(m.group(1)), _ICV_BYTES[m.group(2)]
        return Transform(f"aes{bits}gcm{icv}", Cipher.CIPHER_AES_GCM, Integ.INTEG_NONE, icv,
                         bits // 8 + 4, 0, 8, 4, False, "RFC 4106")
    m = _GMAC.match(word)
    if m:
        bits = int(m.group(1))
        return Transform(word, Cipher.CIPHER_AES_GMAC, Integ.INTEG_NONE, 16, bits // 8 + 4, 0, 8, 4,
                         False, "RFC 4543")
    if word in ("chacha20poly1305", "chacha20poly1305-"):
        return Transform("chacha20poly1305", Cipher.CIPHER_CHACHA20_POLY1305, Integ.INTEG_NONE, 16,
                         36, 0, 8, 4, False, "RFC 7634")
    parts = word.split("-")
    if len(parts) == 2 and (_GCM.match(parts[0]) or _GMAC.match(parts[0]) or parts[0] == "chacha20poly1305"):
        raise ConfigError(f"{parts[0]} is an AEAD cipher: it takes no integrity algorithm, and "
                          f"{shown(parts[1])} after it is not one of the Diffie-Hellman groups "
                          f"{', '.join(DH_GROUPS)}")
    if len(parts) != 2:
        raise ConfigError(f"unknown ESP proposal {shown(text)}: expected e.g. 'aes128gcm16', "
                          "'chacha20poly1305' or '<cipher>-<integrity>' such as 'aes256-sha256', "
                          "optionally followed by a Diffie-Hellman group ('-modp2048')")
    cname, iname = parts
    if cname not in _CIPHERS:
        raise ConfigError(f"unknown cipher {shown(cname)} (known: {', '.join(sorted(_CIPHERS))}, "
                          "aes128gcm16, aes128gmac, chacha20poly1305)")
    if iname not in _INTEG:
        raise ConfigError(f"unknown integrity algorithm {shown(iname)} after {cname} "
                          f"(known: {', '.join(sorted(set(_INTEG) - set(_CANON_INTEG)))})")
    cid, klen, ivlen, block, crfc, clegacy = _CIPHERS[cname]
    iid, aklen, icv, irfc, ilegacy = _INTEG[iname]
    salt = 4 if cid == Cipher.CIPHER_AES_CTR else 0
    return Transform(f"{cname}-{_CANON_INTEG.get(iname, iname)}", cid, iid, icv, klen + salt, aklen,
                     ivlen, block, clegacy or ilegacy, f"{crfc} + {irfc}")


def parse_esp_proposal(text: str) -> tuple[Transform, tuple[int, ...]]:
    """A strongSwan ESP proposal: the transform and the Diffie-Hellman groups that may follow
    it (``aes128gcm16-modp2048``, ``aes256-sha256-x25519-ecp256``), as IANA ids. The one
    parser of ESP proposals, for manual SAs (which have no use for the groups) and for IKE
    (where they mean PFS on CREATE_CHILD_SA)."""
    words = text.strip().lower().split("-")
    first = next((i for i, w in enumerate(words) if w in DH_GROUPS), len(words))
    if first == 0:
        raise ConfigError(f"ESP proposal starts with the Diffie-Hellman group {words[0]}: name the cipher first")
    stray = [w for w in words[first:] if w not in DH_GROUPS]
    if stray:
        raise ConfigError(f"{shown(stray[0])} after the Diffie-Hellman group {words[first]} is not a group "
                          f"(known: {', '.join(DH_GROUPS)})")
    groups = tuple(dict.fromkeys(DH_GROUPS[w] for w in words[first:]))
    return parse_proposal("-".join(words[:first])), groups


# the proposals the README and the tests name; any other valid keyword works too
PROPOSALS = [
    "aes128gcm16", "aes192gcm16", "aes256gcm16", "aes128gcm8", "aes128gcm12", "aes256gcm8",
    "aes256gcm12", "chacha20poly1305", "aes128gmac", "aes256gmac", "aes128-sha1",
    "aes128-sha256", "aes256-sha256", "aes192-sha384", "aes256-sha512", "aes128-md5",
    "aes128ctr-sha256", "3des-sha1", "des-md5", "des-sha1", "null-sha256",
]
