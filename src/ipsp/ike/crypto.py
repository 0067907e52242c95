"""IKEv2 cryptography: Diffie-Hellman, PRF and key schedule, the SK payload and AUTH.

Every primitive comes from the ``cryptography`` package; this module only arranges the bytes
the way RFC 7296 and its companions want them. Nothing here logs, and no repr shows key
material.
"""

from __future__ import annotations

import hmac as _hmac
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import dh, ec, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ipsp.ike.message import AuthMethod, DhGroup, EncrId, IntegId, PrfId

__all__ = [
    "DH_GROUPS",
    "SIGNATURE_HASHES",
    "CryptoError",
    "DHGroup",
    "DHPrivate",
    "IkeKeys",
    "IntegrityError",
    "Prf",
    "SKCipher",
    "UnsupportedAlgorithm",
    "child_keymat",
    "ike_keys",
    "psk_auth",
    "rekey_skeyseed",
    "sign",
    "signed_octets",
    "skeyseed",
    "verify",
    "wipe",
]


class CryptoError(ValueError):
    """Base class of every error raised by this module."""


class IntegrityError(CryptoError):
    """ICV or AEAD tag mismatch, or a malformed protected body."""


class UnsupportedAlgorithm(CryptoError):
    """An algorithm identifier this implementation does not provide."""


# --------------------------------------------------------------------------- Diffie-Hellman


class DHGroup:
    """One key exchange method (RFC 7296 2.14, 3.4); use :meth:`for_id` or ``DH_GROUPS``."""

    id: int
    name: str
    public_len: int

    def __init__(self, group_id: int, name: str, public_len: int) -> None:
        self.id = group_id
        self.name = name
        self.public_len = public_len

    def __repr__(self) -> str:
        return f"DHGroup({self.id}, {self.name!r})"

    @staticmethod
    def for_id(group_id: int) -> DHGroup:
        try:
            return DH_GROUPS[group_id]
        except KeyError:
            raise UnsupportedAlgorithm(f"DH group {group_id} not supported") from None

    def generate(self) -> DHPrivate:
        return DHPrivate(self, self._generate())

    def private_from_bytes(self, raw: bytes) -> DHPrivate:
        """Rebuild a private value from its raw encoding (for known-answer tests)."""
        return DHPrivate(self, self._load_private(raw))

    def _check_len(self, peer_public: bytes) -> None:
        if len(peer_public) != self.public_len:
            raise CryptoError(
                f"{self.name}: KE data is {len(peer_public)} bytes, expected {self.public_len}"
            )

    # Implemented per family below.
    def _generate(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _load_private(self, raw: bytes):  # pragma: no cover - abstract
        raise UnsupportedAlgorithm(f"{self.name}: cannot load a raw private value")

    def _public(self, key) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _exchange(self, key, peer_public: bytes) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError


class _X25519Group(DHGroup):
    # RFC 8031 section 2: the KE data and the shared secret are the 32-byte u-coordinates of
    # RFC 7748, with no further encoding.
    def __init__(self) -> None:
        super().__init__(DhGroup.CURVE25519, "curve25519", 32)

    def _generate(self):
        return x25519.X25519PrivateKey.generate()

    def _load_private(self, raw: bytes):
        try:
            return x25519.X25519PrivateKey.from_private_bytes(raw)
        except ValueError as exc:
            raise CryptoError(f"curve25519: bad private value: {exc}") from None

    def _public(self, key) -> bytes:
        return key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def _exchange(self, key, peer_public: bytes) -> bytes:
        self._check_len(peer_public)
        try:
            shared = key.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            # The backend refuses an all-zero result itself; same meaning as below.
            raise CryptoError("curve25519: all-zero shared secret") from None
        # RFC 8031 2.3: a low-order peer value yields all zeros and MUST be rejected.
        if not any(shared):
            raise CryptoError("curve25519: all-zero shared secret")
        return shared


class _EcpGroup(DHGroup):
    def __init__(self, group_id: int, name: str, curve: ec.EllipticCurve) -> None:
        self.curve = curve
        self.coord_len = (curve.key_size + 7) // 8
        # RFC 5903 section 7: KE data is x || y, each zero-padded to the field size, with no
        # point-format octet.
        super().__init__(group_id, name, 2 * self.coord_len)

    def _generate(self):
        return ec.generate_private_key(self.curve)

    def _load_private(self, raw: bytes):
        try:
            return ec.derive_private_key(int.from_bytes(raw, "big"), self.curve)
        except ValueError as exc:
            raise CryptoError(f"{self.name}: bad private value: {exc}") from None

    def _public(self, key) -> bytes:
        point = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return point[1:]  # drop the X9.62 0x04 prefix (RFC 5903 section 7)

    def _exchange(self, key, peer_public: bytes) -> bytes:
        self._check_len(peer_public)
        try:
            # from_encoded_point checks the point lies on the curve, which RFC 5903 section 7
            # requires of a received value.
            peer = ec.EllipticCurvePublicKey.from_encoded_point(self.curve, b"\x04" + peer_public)
            # RFC 5903 section 9: the shared secret is the x coordinate only, fixed length.
            return key.exchange(ec.ECDH(), peer)
        except ValueError:
            raise CryptoError(f"{self.name}: peer value is not a valid curve point") from None


class _ModpGroup(DHGroup):
    def __init__(self, group_id: int, name: str, prime_hex: str) -> None:
        self.p = int(prime_hex.replace(" ", "").replace("\n", ""), 16)
        self._numbers = dh.DHParameterNumbers(self.p, 2)
        self._params: dh.DHParameters | None = None
        super().__init__(group_id, name, (self.p.bit_length() + 7) // 8)

    def _parameters(self) -> dh.DHParameters:
        # Built lazily: loading checks the prime, costly for the groups we may never use.
        if self._params is None:
            self._params = self._numbers.parameters()
        return self._params

    def _generate(self):
        return self._parameters().generate_private_key()

    def _public(self, key) -> bytes:
        # RFC 7296 3.4: g^x as a big-endian number zero-padded to the length of the prime.
        return key.public_key().public_numbers().y.to_bytes(self.public_len, "big")

    def _exchange(self, key, peer_public: bytes) -> bytes:
        self._check_len(peer_public)
        y = int.from_bytes(peer_public, "big")
        # 1 and p-1 generate subgroups of order at most 2 (a forced, known secret); 0 and >= p
        # are not group elements at all.
        if not 2 <= y <= self.p - 2:
            raise CryptoError(f"{self.name}: peer value out of range")
        try:
            peer = dh.DHPublicNumbers(y, self._numbers).public_key()
            shared = key.exchange(peer)
        except ValueError:
            raise CryptoError(f"{self.name}: peer value rejected") from None
        # RFC 7296 2.14: g^ir is represented at the full length of the prime.
        return shared.rjust(self.public_len, b"\x00")


class DHPrivate:
    """Our half of one exchange; ``public`` is the KE payload's Key Exchange Data."""

    def __init__(self, group: DHGroup, key) -> None:
        self.group = group
        self._key = key
        self.public: bytes = group._public(key)

    def __repr__(self) -> str:
        return f"DHPrivate({self.group.name})"

    def exchange(self, peer_public: bytes) -> bytes:
        return self.group._exchange(self._key, bytes(peer_public))


# RFC 3526 sections 3, 4 and 5: p = 2^N - 2^(N-64) - 1 + 2^64 * ([2^(N-130) pi] + k), g = 2.
_MODP_2048 = """
FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD
EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED
EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F
83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B
E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510
15728E5A8AACAA68FFFFFFFFFFFFFFFF"""
_MODP_3072 = """
FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD
EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED
EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F
83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B
E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510
15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7
ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200C
BBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF"""
_MODP_4096 = """
FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD
EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED
EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F
83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B
E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510
15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7
ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200C
BBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7
88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8DBBBC2DB04DE8EF92E8EFC141FBECAA6
287C59474E6BC05D99B2964FA090C3A2233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9
93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF"""

DH_GROUPS: dict[int, DHGroup] = {
    g.id: g
    for g in (
        _X25519Group(),  # RFC 8031
        _EcpGroup(DhGroup.ECP_256, "ecp256", ec.SECP256R1()),  # RFC 5903
        _EcpGroup(DhGroup.ECP_384, "ecp384", ec.SECP384R1()),
        _EcpGroup(21, "ecp521", ec.SECP521R1()),  # 21: IANA "521-bit random ECP group"
        _ModpGroup(DhGroup.MODP_2048, "modp2048", _MODP_2048),  # RFC 3526 section 3
        _ModpGroup(15, "modp3072", _MODP_3072),  # RFC 3526 section 4
        _ModpGroup(16, "modp4096", _MODP_4096),  # RFC 3526 section 5
    )
}


# --------------------------------------------------------------------------- PRF, key schedule

_PRF_HASHES = {
    PrfId.PRF_HMAC_SHA1: hashes.SHA1,
    PrfId.PRF_HMAC_SHA2_256: hashes.SHA256,
    PrfId.PRF_HMAC_SHA2_384: hashes.SHA384,
    PrfId.PRF_HMAC_SHA2_512: hashes.SHA512,
}


def _hmac_digest(hash_cls, key: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(key, hash_cls())
    mac.update(data)
    return mac.finalize()


class Prf:
    """An HMAC-based IKE PRF (RFC 7296 2.13); ``size`` is its output and preferred key length."""

    def __init__(self, prf_id: int) -> None:
        try:
            self._hash = _PRF_HASHES[prf_id]
        except KeyError:
            raise UnsupportedAlgorithm(f"PRF {prf_id} not supported") from None
        self.id = prf_id
        self.size: int = self._hash.digest_size

    def __repr__(self) -> str:
        return f"Prf({self.id})"

    @staticmethod
    def for_id(prf_id: int) -> Prf:
        return Prf(prf_id)

    def __call__(self, key: bytes, data: bytes) -> bytes:
        return _hmac_digest(self._hash, key, data)

    def plus(self, key: bytes, seed: bytes, length: int) -> bytes:
        # RFC 7296 2.13: T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n); the one-octet counter
        # caps the output at 255 blocks.
        blocks = -(-length // self.size)
        if blocks > 255:
            raise CryptoError(f"prf+ cannot produce {length} bytes (255 blocks at most)")
        out = bytearray()
        t = b""
        for n in range(1, blocks + 1):
            t = self(key, t + seed + bytes([n]))
            out += t
        return bytes(out[:length])


@dataclass(frozen=True)
class IkeKeys:
    """The seven IKE SA keys of RFC 7296 2.14; repr never shows them."""

    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)


def skeyseed(prf: Prf, ni: bytes, nr: bytes, shared: bytes) -> bytes:
    # RFC 7296 2.14: SKEYSEED = prf(Ni | Nr, g^ir); the nonces are the key so that a weak DH
    # result is still mixed with fresh randomness.
    return prf(ni + nr, shared)


def rekey_skeyseed(prf: Prf, old_sk_d: bytes, shared: bytes, ni: bytes, nr: bytes) -> bytes:
    # RFC 7296 2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr).
    return prf(old_sk_d, shared + ni + nr)


def ike_keys(
    prf: Prf,
    seed: bytes,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
    enc_key_len: int,
    integ_key_len: int,
) -> IkeKeys:
    # RFC 7296 2.14: {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
    #                  = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr); SK_d and SK_p* take the PRF's
    # preferred key length. For AEAD, integ_key_len is 0 and enc_key_len includes the salt
    # (RFC 5282 section 7.1, RFC 7634 section 3).
    sizes = [prf.size, integ_key_len, integ_key_len, enc_key_len, enc_key_len, prf.size, prf.size]
    stream = prf.plus(seed, ni + nr + spi_i + spi_r, sum(sizes))
    parts = []
    pos = 0
    for size in sizes:
        parts.append(stream[pos : pos + size])
        pos += size
    return IkeKeys(*parts)


def child_keymat(
    prf: Prf, sk_d: bytes, ni: bytes, nr: bytes, length: int, shared: bytes = b""
) -> bytes:
    # RFC 7296 2.17: KEYMAT = prf+(SK_d, Ni | Nr), or prf+(SK_d, g^ir (new) | Ni | Nr) when the
    # CREATE_CHILD_SA exchange carried KE payloads (PFS).
    return prf.plus(sk_d, shared + ni + nr, length)


# --------------------------------------------------------------------------- SK payload

# integ id -> (hash, key length, ICV length): RFC 7296 3.3.2 / RFC 4868 truncations.
_INTEG = {
    IntegId.AUTH_HMAC_SHA1_96: (hashes.SHA1, 20, 12),
    IntegId.AUTH_HMAC_SHA2_256_128: (hashes.SHA256, 32, 16),
    IntegId.AUTH_HMAC_SHA2_384_192: (hashes.SHA384, 48, 24),
    IntegId.AUTH_HMAC_SHA2_512_256: (hashes.SHA512, 64, 32),
}
# RFC 5282 section 7.1: the GCM transform id fixes the ICV length.
_GCM_ICV = {EncrId.ENCR_AES_GCM_8: 8, EncrId.ENCR_AES_GCM_12: 12, EncrId.ENCR_AES_GCM_16: 16}
_AES_BITS = (128, 192, 256)
_SALT_LEN = 4  # RFC 5282 section 7.1, RFC 7634 section 3
_AEAD_IV_LEN = 8  # RFC 5282 section 3.1, RFC 7634 section 2


class SKCipher:
    """Protection of one direction's Encrypted payloads (RFC 7296 3.14)."""

    def __init__(
        self, encr_id: int, key_bits: int, integ_id: int, enc_key: bytes, integ_key: bytes
    ) -> None:
        enc_len, integ_len = SKCipher.key_lengths(encr_id, key_bits, integ_id)
        if len(enc_key) != enc_len or len(integ_key) != integ_len:
            raise CryptoError(
                f"key lengths {len(enc_key)}/{len(integ_key)}, expected {enc_len}/{integ_len}"
            )
        self._encr_id = encr_id
        self._aead = encr_id != EncrId.ENCR_AES_CBC
        if self._aead:
            self._key = bytes(enc_key[:-_SALT_LEN])
            self._salt = bytes(enc_key[-_SALT_LEN:])
            self._icv_len = _GCM_ICV.get(encr_id, 16)
            # RFC 5282 section 8 / RFC 7634 section 4: an IV must never repeat under one key.
            # A counter guarantees that; starting it at a random value hides message counts.
            self._iv_next = int.from_bytes(os.urandom(_AEAD_IV_LEN), "big")
            self._iv_left = 1 << 64
        else:
            self._key = bytes(enc_key)
            self._integ_hash, _, self._icv_len = _INTEG[integ_id]
            self._integ_key = bytes(integ_key)

    def __repr__(self) -> str:
        return f"SKCipher(encr={self._encr_id})"

    @staticmethod
    def key_lengths(encr_id: int, key_bits: int, integ_id: int) -> tuple[int, int]:
        if encr_id == EncrId.ENCR_AES_CBC:
            if key_bits not in _AES_BITS:
                raise UnsupportedAlgorithm(f"AES-CBC key length {key_bits} not supported")
            if integ_id not in _INTEG:
                raise UnsupportedAlgorithm(f"integrity algorithm {integ_id} not supported")
            return key_bits // 8, _INTEG[integ_id][1]
        if encr_id in _GCM_ICV:
            if key_bits not in _AES_BITS:
                raise UnsupportedAlgorithm(f"AES-GCM key length {key_bits} not supported")
        elif encr_id == EncrId.ENCR_CHACHA20_POLY1305:
            if key_bits not in (0, 256):
                raise UnsupportedAlgorithm(f"ChaCha20-Poly1305 key length {key_bits}")
            key_bits = 256
        else:
            raise UnsupportedAlgorithm(f"encryption algorithm {encr_id} not supported")
        # RFC 5282 section 8 / RFC 7634 section 4: combined-mode ciphers carry no separate
        # integrity transform (or only NONE).
        if integ_id != IntegId.NONE:
            raise UnsupportedAlgorithm("AEAD ciphers take no integrity algorithm")
        return key_bits // 8 + _SALT_LEN, 0

    def body_len(self, plaintext_len: int) -> int:
        if self._aead:
            # RFC 5282 section 3 / RFC 7634 section 2: stream modes need no padding, only the
            # Pad Length octet.
            return _AEAD_IV_LEN + plaintext_len + 1 + self._icv_len
        return 16 + self._padded_len(plaintext_len) + self._icv_len

    @staticmethod
    def _padded_len(plaintext_len: int) -> int:
        # RFC 7296 3.14: plaintext | padding | pad length must fill whole cipher blocks.
        return (plaintext_len + 1 + 15) // 16 * 16

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        if self._aead:
            return self._seal_aead(aad, plaintext)
        pad = self._padded_len(len(plaintext)) - len(plaintext) - 1
        iv = os.urandom(16)  # RFC 7296 3.14: CBC IVs must be unpredictable
        enc = Cipher(algorithms.AES(self._key), modes.CBC(iv)).encryptor()
        ct = enc.update(bytes(plaintext) + bytes(pad) + bytes([pad])) + enc.finalize()
        # RFC 7296 3.14: the checksum covers the IKE header through the encrypted data.
        icv = _hmac_digest(self._integ_hash, self._integ_key, aad + iv + ct)[: self._icv_len]
        return iv + ct + icv

    def open(self, aad: bytes, body: bytes) -> bytes:
        body = bytes(body)
        if self._aead:
            plain = self._open_aead(aad, body)
        else:
            ct_len = len(body) - 16 - self._icv_len
            if ct_len < 16 or ct_len % 16:
                raise IntegrityError("SK body length is not IV + whole blocks + ICV")
            iv, ct, icv = body[:16], body[16 : 16 + ct_len], body[16 + ct_len :]
            want = _hmac_digest(self._integ_hash, self._integ_key, aad + iv + ct)
            # Verify before decrypting, in constant time, so nothing about the plaintext or
            # the padding leaks to a forger.
            if not _hmac.compare_digest(want[: self._icv_len], icv):
                raise IntegrityError("ICV mismatch")
            dec = Cipher(algorithms.AES(self._key), modes.CBC(iv)).decryptor()
            plain = dec.update(ct) + dec.finalize()
        pad = plain[-1]
        if pad + 1 > len(plain):
            raise IntegrityError("pad length exceeds the decrypted data")
        return plain[: len(plain) - pad - 1]

    def _nonce(self, iv: bytes) -> bytes:
        # RFC 5282 section 4 / RFC 7634 section 2: nonce = salt (from the keying material) | IV.
        return self._salt + iv

    def _seal_aead(self, aad: bytes, plaintext: bytes) -> bytes:
        if self._iv_left == 0:
            raise CryptoError("AEAD IV space exhausted; rekey")
        self._iv_left -= 1
        iv = self._iv_next.to_bytes(_AEAD_IV_LEN, "big")
        self._iv_next = (self._iv_next + 1) % (1 << 64)
        data = bytes(plaintext) + b"\x00"  # no padding, Pad Length 0
        # RFC 5282 5.1 / RFC 7634 section 3: AAD = IKE header through the SK generic header.
        if self._encr_id == EncrId.ENCR_CHACHA20_POLY1305:
            return iv + ChaCha20Poly1305(self._key).encrypt(self._nonce(iv), data, aad)
        enc = Cipher(algorithms.AES(self._key), modes.GCM(self._nonce(iv))).encryptor()
        enc.authenticate_additional_data(aad)
        ct = enc.update(data) + enc.finalize()
        # RFC 5282 section 3: ENCR_AES_GCM_8/12 carry the tag truncated to 8/12 octets.
        return iv + ct + enc.tag[: self._icv_len]

    def _open_aead(self, aad: bytes, body: bytes) -> bytes:
        if len(body) < _AEAD_IV_LEN + 1 + self._icv_len:
            raise IntegrityError("SK body too short")
        iv, rest = body[:_AEAD_IV_LEN], body[_AEAD_IV_LEN:]
        try:
            if self._encr_id == EncrId.ENCR_CHACHA20_POLY1305:
                return ChaCha20Poly1305(self._key).decrypt(self._nonce(iv), rest, aad)
            ct, tag = rest[: -self._icv_len], rest[-self._icv_len :]
            mode = modes.GCM(self._nonce(iv), tag, min_tag_length=self._icv_len)
            dec = Cipher(algorithms.AES(self._key), mode).decryptor()
            dec.authenticate_additional_data(aad)
            plain = dec.update(ct)
            dec.finalize()  # raises InvalidTag before the plaintext is released
            return plain
        except InvalidTag:
            raise IntegrityError("AEAD tag mismatch") from None


# --------------------------------------------------------------------------- AUTH


def signed_octets(
    message: bytes, peer_nonce: bytes, prf: Prf, sk_p: bytes, id_body: bytes
) -> bytes:
    # RFC 7296 2.15: RealMessage | NonceData of the peer | prf(SK_px, RestOfIDPayload); the MAC
    # over the ID binds our identity to the key material without sending it twice.
    return bytes(message) + bytes(peer_nonce) + prf(sk_p, id_body)


def psk_auth(prf: Prf, psk: bytes, octets: bytes) -> bytes:
    # RFC 7296 2.15: AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>).
    return prf(prf(psk, b"Key Pad for IKEv2"), octets)


# RFC 7427 appendix A: DER AlgorithmIdentifiers, copied as bytes (A.1.3-A.1.5, A.3.1-A.3.3).
_ALGID_RSA_SHA256 = bytes.fromhex("300d06092a864886f70d01010b0500")
_ALGID_RSA_SHA384 = bytes.fromhex("300d06092a864886f70d01010c0500")
_ALGID_RSA_SHA512 = bytes.fromhex("300d06092a864886f70d01010d0500")
_ALGID_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
_ALGID_ECDSA_SHA384 = bytes.fromhex("300a06082a8648ce3d040303")
_ALGID_ECDSA_SHA512 = bytes.fromhex("300a06082a8648ce3d040304")

_ALGIDS = {
    _ALGID_RSA_SHA256: (rsa.RSAPublicKey, hashes.SHA256),
    _ALGID_RSA_SHA384: (rsa.RSAPublicKey, hashes.SHA384),
    _ALGID_RSA_SHA512: (rsa.RSAPublicKey, hashes.SHA512),
    _ALGID_ECDSA_SHA256: (ec.EllipticCurvePublicKey, hashes.SHA256),
    _ALGID_ECDSA_SHA384: (ec.EllipticCurvePublicKey, hashes.SHA384),
    _ALGID_ECDSA_SHA512: (ec.EllipticCurvePublicKey, hashes.SHA512),
}
# Signing with ECDSA uses the hash matching the curve strength (as RFC 4754 pairs them).
_ECDSA_SIGN = {
    "secp256r1": (_ALGID_ECDSA_SHA256, hashes.SHA256),
    "secp384r1": (_ALGID_ECDSA_SHA384, hashes.SHA384),
    "secp521r1": (_ALGID_ECDSA_SHA512, hashes.SHA512),
}
# RFC 4754 section 3 (methods 9, 10, 11): curve, hash and raw r | s.
_RFC4754 = {
    9: ("secp256r1", hashes.SHA256),
    10: ("secp384r1", hashes.SHA384),
    11: ("secp521r1", hashes.SHA512),
}

# RFC 7427 section 7 hash ids (SHA2_256, SHA2_384, SHA2_512) for SIGNATURE_HASH_ALGORITHMS.
SIGNATURE_HASHES: tuple[int, ...] = (2, 3, 4)


def sign(private_key, octets: bytes) -> tuple[int, bytes]:
    """RFC 7427 DIGITAL_SIGNATURE: len(AlgorithmIdentifier) | AlgorithmIdentifier | signature."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        algid = _ALGID_RSA_SHA256
        sig = private_key.sign(octets, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(private_key, ec.EllipticCurvePrivateKey):
        try:
            algid, hash_cls = _ECDSA_SIGN[private_key.curve.name]
        except KeyError:
            raise UnsupportedAlgorithm(f"curve {private_key.curve.name} not supported") from None
        sig = private_key.sign(octets, ec.ECDSA(hash_cls()))  # DER ECDSA-Sig-Value
    else:
        raise UnsupportedAlgorithm(f"cannot sign with {type(private_key).__name__}")
    return AuthMethod.DIGITAL_SIGNATURE, bytes([len(algid)]) + algid + sig


def verify(public_key, method: int, data: bytes, octets: bytes) -> bool:
    """Check AUTH data; False for any bad or malformed signature, never an exception."""
    if method not in (AuthMethod.RSA_DIGITAL_SIGNATURE, AuthMethod.DIGITAL_SIGNATURE, *_RFC4754):
        raise UnsupportedAlgorithm(f"AUTH method {method} not supported")
    data = bytes(data)
    try:
        if method == AuthMethod.DIGITAL_SIGNATURE:
            return _verify_rfc7427(public_key, data, octets)
        if method == AuthMethod.RSA_DIGITAL_SIGNATURE:
            # RFC 7296 3.8: RSA_DIGITAL_SIGNATURE is PKCS#1 v1.5 with SHA-1.
            if not isinstance(public_key, rsa.RSAPublicKey):
                return False
            public_key.verify(data, octets, padding.PKCS1v15(), hashes.SHA1())
            return True
        curve_name, hash_cls = _RFC4754[method]
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            return False
        if public_key.curve.name != curve_name:
            return False
        n = (public_key.curve.key_size + 7) // 8
        if len(data) != 2 * n:
            return False
        sig = encode_dss_signature(int.from_bytes(data[:n], "big"), int.from_bytes(data[n:], "big"))
        public_key.verify(sig, octets, ec.ECDSA(hash_cls()))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def _verify_rfc7427(public_key, data: bytes, octets: bytes) -> bool:
    # RFC 7427 section 3: 1-octet length, the AlgorithmIdentifier, then the signature.
    if not data:
        return False
    algid = data[1 : 1 + data[0]]
    if len(algid) != data[0] or algid not in _ALGIDS:
        return False
    key_type, hash_cls = _ALGIDS[algid]
    if not isinstance(public_key, key_type):
        return False
    sig = data[1 + data[0] :]
    if key_type is rsa.RSAPublicKey:
        public_key.verify(sig, octets, padding.PKCS1v15(), hash_cls())
    else:
        public_key.verify(sig, octets, ec.ECDSA(hash_cls()))
    return True


def wipe(buf: bytearray) -> None:
    """Overwrite a key buffer we own (best effort: immutable copies may survive elsewhere)."""
    buf[:] = bytes(len(buf))
