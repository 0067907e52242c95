"""Tests for ipsp.ike.crypto: known-answer vectors and cross-checks against pycryptodome."""

from __future__ import annotations

import pytest
from Crypto.Cipher import AES, ChaCha20_Poly1305
from Crypto.Hash import HMAC, SHA1, SHA256, SHA384, SHA512
from Crypto.Util.asn1 import DerNull, DerObjectId, DerSequence
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsp.ike import crypto
from ipsp.ike.crypto import (  # noqa: I001 - kept compact
    DH_GROUPS, SIGNATURE_HASHES, CryptoError, DHGroup, IkeKeys, IntegrityError, Prf, SKCipher,
    UnsupportedAlgorithm, child_keymat, ike_keys, psk_auth, rekey_skeyseed, sign, signed_octets,
    skeyseed, verify, wipe,
)

h = bytes.fromhex

# --------------------------------------------------------------------------- Diffie-Hellman

# RFC 7748 section 6.1 (X25519 Diffie-Hellman test vector).
X25519_ALICE_PRIV = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
X25519_ALICE_PUB = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
X25519_BOB_PRIV = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
X25519_BOB_PUB = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
X25519_SHARED = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# RFC 5903 section 8.1 (256-bit random ECP group test vector).
ECP256_I = h("C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433")
ECP256_GI = h(
    "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180"
    "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3"
)
ECP256_R = h("C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53")
ECP256_GR = h(
    "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63"
    "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB"
)
ECP256_GIR_X = h("D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE")


def test_x25519_rfc7748_vector():
    group = DHGroup.for_id(31)
    alice = group.private_from_bytes(X25519_ALICE_PRIV)
    bob = group.private_from_bytes(X25519_BOB_PRIV)
    assert alice.public == X25519_ALICE_PUB
    assert bob.public == X25519_BOB_PUB
    assert alice.exchange(X25519_BOB_PUB) == X25519_SHARED
    assert bob.exchange(X25519_ALICE_PUB) == X25519_SHARED


def test_ecp256_rfc5903_vector():
    group = DHGroup.for_id(19)
    i = group.private_from_bytes(ECP256_I)
    r = group.private_from_bytes(ECP256_R)
    assert i.public == ECP256_GI and r.public == ECP256_GR
    assert i.exchange(ECP256_GR) == ECP256_GIR_X
    assert r.exchange(ECP256_GI) == ECP256_GIR_X


@pytest.mark.parametrize("group_id, public_len, shared_len", [
    (31, 32, 32), (19, 64, 32), (20, 96, 48), (21, 132, 66),
    (14, 256, 256), (15, 384, 384), (16, 512, 512),
])
def test_groups_agree(group_id, public_len, shared_len):
    group = DH_GROUPS[group_id]
    assert group is DHGroup.for_id(group_id) and group.id == group_id
    a, b = group.generate(), group.generate()
    assert len(a.public) == group.public_len == public_len
    shared = a.exchange(b.public)
    assert shared == b.exchange(a.public) and len(shared) == shared_len
    with pytest.raises(CryptoError):
        a.exchange(b.public[:-1])
    with pytest.raises(CryptoError):
        a.exchange(b.public + b"\x00")


def test_rfc3526_primes_follow_their_definition():
    mpmath = pytest.importorskip("mpmath")
    # RFC 3526 sections 3-5: p = 2^N - 2^(N-64) - 1 + 2^64 * ([2^(N-130) pi] + k)
    with mpmath.workprec(5000):
        for group_id, n, k in ((14, 2048, 124476), (15, 3072, 1690314), (16, 4096, 240904)):
            frac = int(mpmath.floor(mpmath.mpf(2) ** (n - 130) * mpmath.pi))
            assert DH_GROUPS[group_id].p == 2**n - 2 ** (n - 64) - 1 + 2**64 * (frac + k)


def test_modp_out_of_range_rejected():
    group = DH_GROUPS[14]
    priv = group.generate()
    for y in (0, 1, group.p - 1, group.p, 2**2048 - 1):
        with pytest.raises(CryptoError):
            priv.exchange(y.to_bytes(256, "big"))
    assert len(priv.exchange((2).to_bytes(256, "big"))) == 256  # 2 is the lowest allowed


def test_ecp_point_not_on_curve_rejected():
    priv = DH_GROUPS[19].generate()
    bad = bytearray(ECP256_GR)
    bad[-1] ^= 1
    with pytest.raises(CryptoError):
        priv.exchange(bytes(bad))
    with pytest.raises(CryptoError):
        priv.exchange(bytes(64))


@pytest.mark.parametrize("low_order", [
    bytes(32),
    (1).to_bytes(32, "little"),
    # RFC 7748 section 5 / curve25519 order-8 point
    h("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
])
def test_x25519_low_order_rejected(low_order):
    priv = DH_GROUPS[31].private_from_bytes(X25519_ALICE_PRIV)
    with pytest.raises(CryptoError):
        priv.exchange(low_order)


# --------------------------------------------------------------------------- PRF, key schedule


def test_prf_rfc4231_case2():
    # RFC 4231 section 4.3 (test case 2), HMAC-SHA-256.
    prf = Prf.for_id(5)
    assert prf.size == 32
    assert prf(b"Jefe", b"what do ya want for nothing?") == h(
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def _ref_prf_plus(hash_mod, key: bytes, seed: bytes, length: int) -> bytes:
    # RFC 7296 2.13, written independently with pycryptodome.
    out, t, n = b"", b"", 1
    while len(out) < length:
        t = HMAC.new(key, t + seed + bytes([n]), digestmod=hash_mod).digest()
        out += t
        n += 1
    return out[:length]


@pytest.mark.parametrize("prf_id, hash_mod", [(2, SHA1), (5, SHA256), (6, SHA384), (7, SHA512)])
@pytest.mark.parametrize("length", [0, 1, 20, 33, 100, 257])
def test_prf_plus_reference(prf_id, hash_mod, length):
    prf = Prf.for_id(prf_id)
    assert prf.size == hash_mod.digest_size
    assert prf.plus(b"k" * 17, b"seed-bytes", length) == _ref_prf_plus(
        hash_mod, b"k" * 17, b"seed-bytes", length
    )


def test_prf_plus_block_limit():
    prf = Prf.for_id(5)
    assert len(prf.plus(b"k", b"s", 255 * 32)) == 255 * 32
    with pytest.raises(CryptoError):
        prf.plus(b"k", b"s", 255 * 32 + 1)


def test_unknown_ids():
    with pytest.raises(UnsupportedAlgorithm):
        Prf.for_id(4)
    with pytest.raises(UnsupportedAlgorithm):
        DHGroup.for_id(2)
    with pytest.raises(UnsupportedAlgorithm):
        DH_GROUPS[14].private_from_bytes(b"\x05")


NI, NR = b"\x11" * 32, b"\x22" * 32
SPI_I, SPI_R = b"\x01" * 8, b"\x02" * 8


@pytest.mark.parametrize("encr, bits, integ, enc_len, integ_len", [
    (12, 128, 12, 16, 32),  # AES-CBC-128 + HMAC-SHA2-256-128
    (20, 128, 0, 20, 0),  # AES-GCM-16 128 (key + salt)
])
def test_ike_keys_split(encr, bits, integ, enc_len, integ_len):
    prf = Prf.for_id(5)
    assert SKCipher.key_lengths(encr, bits, integ) == (enc_len, integ_len)
    seed = skeyseed(prf, NI, NR, b"shared")
    assert seed == HMAC.new(NI + NR, b"shared", digestmod=SHA256).digest()
    keys = ike_keys(prf, seed, NI, NR, SPI_I, SPI_R, enc_len, integ_len)
    parts = [keys.sk_d, keys.sk_ai, keys.sk_ar, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr]
    assert [len(p) for p in parts] == [32, integ_len, integ_len, enc_len, enc_len, 32, 32]
    total = sum(len(p) for p in parts)
    assert b"".join(parts) == _ref_prf_plus(SHA256, seed, NI + NR + SPI_I + SPI_R, total)


def test_rekey_and_child_keymat():
    prf = Prf.for_id(5)
    ref = HMAC.new(b"old-d", b"g^ir" + NI + NR, digestmod=SHA256).digest()
    assert rekey_skeyseed(prf, b"old-d", b"g^ir", NI, NR) == ref
    assert child_keymat(prf, b"d", NI, NR, 80) == _ref_prf_plus(SHA256, b"d", NI + NR, 80)
    assert child_keymat(prf, b"d", NI, NR, 80, shared=b"g^ir") == _ref_prf_plus(
        SHA256, b"d", b"g^ir" + NI + NR, 80
    )


def test_ike_keys_repr_hides_secrets():
    keys = IkeKeys(*(bytes([0xA0 + n]) * 16 for n in range(7)))
    text = repr(keys)
    for n in range(7):
        value = bytes([0xA0 + n]) * 16
        assert repr(value) not in text and value.hex() not in text
    assert "a0" not in text.lower().replace("ikekeys", "")


def test_wipe():
    buf = bytearray(b"secret key")
    wipe(buf)
    assert buf == bytearray(10)


# --------------------------------------------------------------------------- SK payload

# (encr, key_bits, integ); keys are derived deterministically per suite.
SUITES = [
    (12, 128, 2), (12, 128, 12), (12, 192, 13), (12, 256, 14),
    (20, 128, 0), (19, 192, 0), (18, 256, 0), (28, 0, 0), (28, 256, 0),
]
_INTEG_REF = {2: (SHA1, 12), 12: (SHA256, 16), 13: (SHA384, 24), 14: (SHA512, 32)}
_GCM_ICV = {18: 8, 19: 12, 20: 16}
AAD = bytes(range(28)) + b"\x21\x00\x00\x50"  # header-ish bytes plus an SK generic header


def _keys(encr, bits, integ):
    enc_len, integ_len = SKCipher.key_lengths(encr, bits, integ)
    return bytes(range(1, enc_len + 1)), bytes(range(100, 100 + integ_len))


def _cipher(suite):
    return SKCipher(*suite, *_keys(*suite))


def _ref_open(suite, aad, body):
    """Decrypt an SK body with pycryptodome; returns plaintext including padding."""
    encr, bits, integ = suite
    enc_key, integ_key = _keys(*suite)
    if encr == 12:
        hash_mod, icv_len = _INTEG_REF[integ]
        iv, ct, icv = body[:16], body[16:-icv_len], body[-icv_len:]
        mac = HMAC.new(integ_key, aad + iv + ct, digestmod=hash_mod).digest()[:icv_len]
        assert mac == icv
        return AES.new(enc_key, AES.MODE_CBC, iv=iv).decrypt(ct)
    key, salt, iv = enc_key[:-4], enc_key[-4:], body[:8]
    icv_len = _GCM_ICV.get(encr, 16)
    ct, tag = body[8:-icv_len], body[-icv_len:]
    if encr == 28:
        aead = ChaCha20_Poly1305.new(key=key, nonce=salt + iv)
    else:
        aead = AES.new(key, AES.MODE_GCM, nonce=salt + iv, mac_len=icv_len)
    aead.update(aad)
    return aead.decrypt_and_verify(ct, tag)


def _ref_seal(suite, aad, plaintext):
    encr, bits, integ = suite
    enc_key, integ_key = _keys(*suite)
    if encr == 12:
        hash_mod, icv_len = _INTEG_REF[integ]
        pad = 15 - len(plaintext) % 16
        iv = b"\x5a" * 16
        ct = AES.new(enc_key, AES.MODE_CBC, iv=iv).encrypt(plaintext + b"\xff" * pad + bytes([pad]))
        return iv + ct + HMAC.new(integ_key, aad + iv + ct, digestmod=hash_mod).digest()[:icv_len]
    key, salt, iv = enc_key[:-4], enc_key[-4:], b"\x00\x00\x00\x00\x00\x00\x01\x02"
    icv_len = _GCM_ICV.get(encr, 16)
    if encr == 28:
        aead = ChaCha20_Poly1305.new(key=key, nonce=salt + iv)
    else:
        aead = AES.new(key, AES.MODE_GCM, nonce=salt + iv, mac_len=icv_len)
    aead.update(aad)
    ct, tag = aead.encrypt_and_digest(plaintext + b"\x03\x03\x03\x03")  # 3 pad bytes, pad len 3
    return iv + ct + tag


@pytest.mark.parametrize("suite", SUITES)
def test_sk_round_trip_and_interop(suite):
    ours = _cipher(suite)
    for n in range(71):
        plaintext = bytes((7 * i + n) & 0xFF for i in range(n))
        body = ours.seal(AAD, plaintext)
        assert len(body) == ours.body_len(n)
        assert ours.open(AAD, body) == plaintext
        padded = _ref_open(suite, AAD, body)
        assert padded[: n] == plaintext and padded[-1] == len(padded) - n - 1
        assert ours.open(AAD, _ref_seal(suite, AAD, plaintext)) == plaintext


def test_aead_ivs_do_not_repeat():
    c = _cipher((20, 128, 0))
    ivs = {c.seal(AAD, b"x")[:8] for _ in range(100)}
    assert len(ivs) == 100


@pytest.mark.parametrize("suite", SUITES)
def test_sk_every_bit_flip_detected(suite):
    c = _cipher(suite)
    body = c.seal(AAD, b"payload data 123")
    for target in ("aad", "body"):
        data = AAD if target == "aad" else body
        for bit in range(len(data) * 8):
            flipped = bytearray(data)
            flipped[bit // 8] ^= 1 << (bit % 8)
            args = (bytes(flipped), body) if target == "aad" else (AAD, bytes(flipped))
            with pytest.raises(IntegrityError):
                c.open(*args)


@pytest.mark.parametrize("suite", SUITES)
def test_sk_truncated_body(suite):
    c = _cipher(suite)
    body = c.seal(AAD, b"hello")
    for n in range(len(body)):
        with pytest.raises(IntegrityError):
            c.open(AAD, body[:n])


@settings(max_examples=150, deadline=None)
@given(suite=st.sampled_from(SUITES), aad=st.binary(max_size=40), body=st.binary(max_size=120))
def test_sk_garbage_raises_integrity_error_only(suite, aad, body):
    with pytest.raises(IntegrityError):
        _cipher(suite).open(aad, body)


def test_cbc_bad_pad_length_after_valid_icv():
    # A correctly authenticated body whose Pad Length exceeds the plaintext must still fail.
    suite = (12, 128, 12)
    enc_key, integ_key = _keys(*suite)
    iv = bytes(16)
    ct = AES.new(enc_key, AES.MODE_CBC, iv=iv).encrypt(bytes(15) + b"\x20")
    body = iv + ct + HMAC.new(integ_key, AAD + iv + ct, digestmod=SHA256).digest()[:16]
    with pytest.raises(IntegrityError):
        _cipher(suite).open(AAD, body)


@pytest.mark.parametrize("args, exc", [
    ((12, 0, 12), UnsupportedAlgorithm),  # CBC needs a key length
    ((12, 128, 0), UnsupportedAlgorithm),  # CBC needs integrity
    ((20, 128, 12), UnsupportedAlgorithm),  # AEAD takes none
    ((28, 128, 0), UnsupportedAlgorithm),
    ((13, 128, 12), UnsupportedAlgorithm),  # AES-CTR not implemented
    ((3, 192, 2), UnsupportedAlgorithm),  # 3DES
])
def test_sk_unsupported(args, exc):
    with pytest.raises(exc):
        SKCipher.key_lengths(*args)
    with pytest.raises(exc):
        SKCipher(*args, bytes(16), bytes(32))


def test_sk_wrong_key_lengths():
    with pytest.raises(CryptoError):
        SKCipher(12, 128, 12, bytes(15), bytes(32))
    with pytest.raises(CryptoError):
        SKCipher(12, 128, 12, bytes(16), bytes(20))
    with pytest.raises(CryptoError):
        SKCipher(20, 128, 0, bytes(16), b"")  # salt missing


# --------------------------------------------------------------------------- AUTH


def test_psk_auth_reference():
    prf = Prf.for_id(5)
    octets = signed_octets(b"message-1", NR, prf, b"sk-pi", b"\x02\x00\x00\x00host.example")
    maced_id = HMAC.new(b"sk-pi", b"\x02\x00\x00\x00host.example", digestmod=SHA256).digest()
    assert octets == b"message-1" + NR + maced_id
    pad_key = HMAC.new(b"secret", b"Key Pad for IKEv2", digestmod=SHA256).digest()
    assert psk_auth(prf, b"secret", octets) == HMAC.new(pad_key, octets, digestmod=SHA256).digest()


@pytest.fixture(scope="module")
def keys():
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "p521": ec.generate_private_key(ec.SECP521R1()),
    }


def test_rfc7427_algorithm_identifiers():
    # Rebuild the DER of RFC 7427 appendix A with pycryptodome's encoder.
    def algid(oid, null):
        parts = [DerObjectId(oid).encode()] + ([DerNull().encode()] if null else [])
        return DerSequence(parts).encode()

    assert crypto._ALGID_RSA_SHA256 == algid("1.2.840.113549.1.1.11", True)
    assert crypto._ALGID_RSA_SHA384 == algid("1.2.840.113549.1.1.12", True)
    assert crypto._ALGID_RSA_SHA512 == algid("1.2.840.113549.1.1.13", True)
    assert crypto._ALGID_ECDSA_SHA256 == algid("1.2.840.10045.4.3.2", False)
    assert crypto._ALGID_ECDSA_SHA384 == algid("1.2.840.10045.4.3.3", False)
    assert crypto._ALGID_ECDSA_SHA512 == algid("1.2.840.10045.4.3.4", False)
    assert SIGNATURE_HASHES == (2, 3, 4)


@pytest.mark.parametrize("name, algid_hex", [
    ("rsa", "300d06092a864886f70d01010b0500"),
    ("p256", "300a06082a8648ce3d040302"),
    ("p384", "300a06082a8648ce3d040303"),
    ("p521", "300a06082a8648ce3d040304"),
])
def test_sign_verify(keys, name, algid_hex):
    key = keys[name]
    method, data = sign(key, b"signed octets")
    assert method == 14
    algid = h(algid_hex)
    assert data[0] == len(algid) and data[1 : 1 + len(algid)] == algid
    pub = key.public_key()
    assert verify(pub, 14, data, b"signed octets")
    assert not verify(pub, 14, data, b"other octets")
    for n in (0, 1, 5, len(data) - 1):
        assert not verify(pub, 14, data[:n], b"signed octets")
    other = keys["p256"] if name == "rsa" else keys["rsa"]
    assert not verify(other.public_key(), 14, data, b"signed octets")  # wrong key type
    if name != "rsa":
        assert not verify(keys["rsa"].public_key(), 9, data, b"signed octets")


def test_verify_rsa_sha384_algid(keys):
    key = keys["rsa"]
    sig = key.sign(b"oct", padding.PKCS1v15(), hashes.SHA384())
    data = bytes([15]) + h("300d06092a864886f70d01010c0500") + sig
    assert verify(key.public_key(), 14, data, b"oct")
    unknown = bytes([15]) + h("300d06092a864886f70d0101050500") + sig  # sha1WithRSA
    assert not verify(key.public_key(), 14, unknown, b"oct")


def test_verify_method1_rsa_sha1(keys):
    key = keys["rsa"]
    sig = key.sign(b"octets", padding.PKCS1v15(), hashes.SHA1())
    assert verify(key.public_key(), 1, sig, b"octets")
    assert not verify(key.public_key(), 1, sig, b"octetz")
    assert not verify(key.public_key(), 1, sig[:-1], b"octets")
    assert not verify(keys["p256"].public_key(), 1, sig, b"octets")


@pytest.mark.parametrize("method, name, hash_cls, n", [
    (9, "p256", hashes.SHA256, 32),
    (10, "p384", hashes.SHA384, 48),
    (11, "p521", hashes.SHA512, 66),
])
def test_verify_rfc4754(keys, method, name, hash_cls, n):
    key = keys[name]
    r, s = decode_dss_signature(key.sign(b"octets", ec.ECDSA(hash_cls())))
    raw = r.to_bytes(n, "big") + s.to_bytes(n, "big")
    pub = key.public_key()
    assert verify(pub, method, raw, b"octets")
    assert not verify(pub, method, raw, b"octetz")
    assert not verify(pub, method, raw[:-1], b"octets")
    assert not verify(pub, method, bytes(2 * n), b"octets")
    other = 10 if method == 9 else 9
    assert not verify(pub, other, raw, b"octets")  # method names another curve


def test_verify_unknown_method(keys):
    with pytest.raises(UnsupportedAlgorithm):
        verify(keys["rsa"].public_key(), 2, b"", b"")
    with pytest.raises(UnsupportedAlgorithm):
        sign(object(), b"")
