"""Known-answer tests: the kernel against published vectors (tests/vectors/*.json).

Where a vector is a complete ESP packet it goes through decap as it is; for encapsulation
the kernel chooses its own IV (random for CBC, the sequence number for counter modes), so
the encapsulated packet is checked field by field and its cipher region is opened with an
independent library using exactly the layout the vector documents.

Raw cipher vectors (RFC 3602 cases 1-4, RFC 3686, NIST GCM, FIPS 81 DES, CAVP 3DES) are
pushed through ESP too: the vector's IV and ciphertext are placed in an ESP packet, followed
by one extra cipher block (CBC) or key-stream bytes (CTR/GCM) carrying a valid ESP trailer,
so the kernel's decryption of the vector's own ciphertext is what gets compared.
"""

from __future__ import annotations

import json
import struct

import pytest
from Crypto.Cipher import DES as PyDES
from Crypto.Cipher import DES3 as PyDES3
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

import fastpath as fp
import fp_support as S
from fastpath import Cipher as C
from fastpath import Integ as I

VECTORS = S.VECTORS


def _vectors(name: str, pred=lambda v: True, ident=lambda i, v: str(i)):
    """pytest params for the vectors of one file; a single skipped param if it is absent."""
    path = VECTORS / name
    if not path.exists():
        return [pytest.param(None, id="absent", marks=pytest.mark.skip(reason=f"{name} is absent"))]
    vs = [v for v in json.loads(path.read_text())["vectors"] if pred(v)]
    return [pytest.param(v, id=ident(i, v)) for i, v in enumerate(vs, 1)]


def h(s: str | None) -> bytes:
    return bytes.fromhex(s or "")


HMAC_ALG = {
    "md5": I.INTEG_HMAC_MD5_96,
    "sha1": I.INTEG_HMAC_SHA1_96,
    "sha256": I.INTEG_HMAC_SHA256_128,
    "sha384": I.INTEG_HMAC_SHA384_192,
    "sha512": I.INTEG_HMAC_SHA512_256,
}

# the integrity transform used where a vector has none (RFC 3602 ESP examples) or where the
# test wraps a raw cipher vector in ESP
AUTH_T = S.TRANSFORM_BY_NAME["aes128cbc-sha1"]
AUTH_KEY = bytes(range(0x40, 0x54))


def icv_for(data: bytes) -> bytes:
    return S.hmac_icv(AUTH_T, AUTH_KEY, data)


# =======================================================================================
# HMAC (RFC 2202, RFC 4231) through the kernel's precomputed-pad path


def _hmac_vectors():
    out = []
    for name in ("rfc2202_hmac.json", "rfc4231_hmac_sha2.json"):
        out += _vectors(name, ident=lambda i, v, n=name: f"{n[:7]}-{v['alg']}-{v['case']}")
    return out


@pytest.mark.parametrize("v", _hmac_vectors())
def test_hmac_vector(v):
    integ = HMAC_ALG[v["alg"]]
    got = fp.hmac_digest(integ, h(v["key"]), h(v["data"]))
    if "digest" in v:
        assert got.hex() == v["digest"]
    if "digest_96" in v:
        assert got[:12].hex() == v["digest_96"]
    if "digest_truncated" in v:
        assert got[: v["truncated_bits"] // 8].hex() == v["digest_truncated"]
    assert any(k in v for k in ("digest", "digest_96", "digest_truncated"))


def test_hmac_digest_lengths_and_empty_inputs():
    # an empty key and empty data are legal HMAC inputs (RFC 2104)
    import hashlib
    import hmac

    for integ, (name, dlen, _, _) in S.INTEG_INFO.items():
        for key, data in ((b"", b""), (b"k", b""), (b"", b"d"), (bytes(200), bytes(1000))):
            got = fp.hmac_digest(integ, key, data)
            assert len(got) == dlen
            assert got == hmac.new(key, data, getattr(hashlib, name)).digest()


def test_hmac_digest_rejects_unknown_algorithm():
    with pytest.raises(ValueError):
        fp.hmac_digest(0, b"k", b"d")
    with pytest.raises(ValueError):
        fp.hmac_digest(99, b"k", b"d")


# =======================================================================================
# RFC 3602 cases 5-8: complete AES-CBC ESP packets


def _esp_vectors_3602():
    return _vectors("rfc3602_esp_aes_cbc.json", lambda v: "esp_packet" in v,
                    lambda i, v: f"case{v['case']}-{v['esp_mode']}")


def _sa_3602(v, **kw) -> fp.SAState:
    args = dict(spi=int(v["spi"], 16), cipher=C.CIPHER_AES_CBC, integ=AUTH_T.integ,
                enc_key=h(v["key"]), auth_key=AUTH_KEY)
    if v["esp_mode"] == "tunnel":
        hdr = h(v["outer_ip_header"])
        args.update(mode=fp.TUNNEL, src=hdr[12:16], dst=hdr[16:20])
    else:
        args.update(mode=fp.TRANSPORT)
    args.update(kw)
    return fp.SAState(**args)


def _with_icv_3602(v, icv: bytes) -> bytes:
    """The RFC packet (which has no ICV: encryption-only examples) with an ICV appended and
    the outer total length and checksum adjusted to match."""
    pkt = h(v["esp_packet"])
    esp = pkt[20:] + icv
    hdr = bytearray(h(v["outer_ip_header"]))
    assert struct.unpack("!H", hdr[2:4])[0] == len(pkt)
    hdr[2:4] = struct.pack("!H", 20 + len(esp))
    hdr[10:12] = b"\0\0"
    hdr[10:12] = struct.pack("!H", S.csum(bytes(hdr)))
    return bytes(hdr) + esp


@pytest.mark.parametrize("v", _esp_vectors_3602())
def test_rfc3602_esp_decap(v):
    pkt = h(v["esp_packet"])
    assert pkt[20:28] == h(v["esp_header"])
    good = _with_icv_3602(v, icv_for(pkt[20:]))
    rx = _sa_3602(v)
    assert rx.decap(good) == h(v["plaintext_packet"])
    assert rx.replay_top == v["seq"]
    # the same packet with an ICV nobody computed: only verify=False opens it
    forged = _with_icv_3602(v, bytes(12))
    rx2 = _sa_3602(v)
    with pytest.raises(fp.IntegrityError):
        rx2.decap(forged)
    assert rx2.decap(forged, verify=False) == h(v["plaintext_packet"])


@pytest.mark.parametrize("v", _esp_vectors_3602())
def test_rfc3602_esp_decap_batch(v):
    pkt = h(v["esp_packet"])
    b = S.batch_of([_with_icv_3602(v, icv_for(pkt[20:]))])
    assert b.decap(_sa_3602(v)) == 1
    assert bytes(b.packet(0)) == h(v["plaintext_packet"])


@pytest.mark.parametrize("v", _esp_vectors_3602())
def test_rfc3602_esp_encap_layout(v):
    """The IV is random, so the RFC bytes cannot be reproduced; everything else can: the
    lengths, the ESP header, the outer header and the exact CBC plaintext (padding, pad
    length, next header) of the RFC's 'Pre-encryption Data'."""
    rfc = h(v["esp_packet"])
    plain = h(v["plaintext_packet"])
    tx = _sa_3602(v, seq_out=v["seq"] - 1)
    out = tx.encap(plain)
    assert len(out) == len(rfc) + AUTH_T.icv_len
    assert out[20:28] == h(v["esp_header"])
    rfc_hdr = h(v["outer_ip_header"])
    if v["esp_mode"] == "transport":
        # the packet's own header, protocol ESP, length and checksum updated
        want = bytearray(rfc_hdr)
        want[2:4] = struct.pack("!H", len(out))
        want[10:12] = b"\0\0"
        want[10:12] = struct.pack("!H", S.csum(bytes(want)))
        assert out[:20] == bytes(want)
    else:
        # identification is per SA; the rest of the outer header is the RFC's
        assert S.ipv4_checksum_ok(out[:20])
        assert out[:4] == rfc_hdr[:2] + struct.pack("!H", len(out))
        assert out[6:10] == rfc_hdr[6:10]
        assert out[12:20] == rfc_hdr[12:20]
    iv = out[28:44]
    ct = out[44:-AUTH_T.icv_len]
    dec = Cipher(algorithms.AES(h(v["key"])), modes.CBC(iv)).decryptor()
    assert dec.update(ct) + dec.finalize() == h(v["payload_with_trailer"])
    assert out[-12:] == icv_for(out[20:-12])
    rx = _sa_3602(v)
    assert rx.decap(out) == plain


# =======================================================================================
# raw CBC vectors (RFC 3602 1-4, FIPS 81 DES, CAVP 3DES) pushed through ESP decapsulation


def _block_encrypt(cipher: int, key: bytes, block: bytes) -> bytes:
    if cipher == C.CIPHER_AES_CBC:
        e = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        return e.update(block) + e.finalize()
    if cipher == C.CIPHER_DES_CBC:
        return PyDES.new(key, PyDES.MODE_ECB).encrypt(block)
    return PyDES3.new(key, PyDES3.MODE_ECB).encrypt(block)


def _cbc_esp_check(cipher: int, key: bytes, iv: bytes, plaintext: bytes, ciphertext: bytes):
    bs = len(iv)
    assert len(ciphertext) == len(plaintext) and len(ciphertext) % bs == 0
    # one extra block whose CBC decryption is a valid trailer: padding, pad length, next header
    trailer_block = bytes(range(1, bs - 1)) + bytes([bs - 2, 17])
    prev = ciphertext[-bs:] if ciphertext else iv
    extra = _block_encrypt(cipher, key, bytes(a ^ b for a, b in zip(trailer_block, prev)))
    spi, seq = 0x3602, 1
    esp = struct.pack("!II", spi, seq) + iv + ciphertext + extra
    pkt = S.wrap4(esp + icv_for(esp))
    sa = fp.SAState(spi=spi, cipher=cipher, integ=AUTH_T.integ, enc_key=key, auth_key=AUTH_KEY,
                    mode=fp.TRANSPORT)
    out = sa.decap(pkt)
    assert out[9] == 17
    assert out[20:] == plaintext
    assert S.ipv4_checksum_ok(out)


@pytest.mark.parametrize("v", _vectors("rfc3602_esp_aes_cbc.json", lambda v: "esp_packet" not in v,
                                       lambda i, v: f"case{v['case']}"))
def test_rfc3602_raw_cbc_through_esp(v):
    _cbc_esp_check(C.CIPHER_AES_CBC, h(v["key"]), h(v["iv"]), h(v["plaintext"]), h(v["ciphertext"]))


@pytest.mark.parametrize("v", _vectors("des_cbc.json", ident=lambda i, v: f"{v['alg']}-{i}"))
def test_des_vectors_through_esp(v):
    cipher = C.CIPHER_DES_CBC if v["alg"] == "des-cbc" else C.CIPHER_3DES_CBC
    _cbc_esp_check(cipher, h(v["key"]), h(v["iv"]), h(v["plaintext"]), h(v["ciphertext"]))


# =======================================================================================
# RFC 3686 AES-CTR


def _ctr_vectors():
    return _vectors("rfc3686_aes_ctr.json", ident=lambda i, v: f"case{v['case']}")


def _ctr_sa(v, **kw):
    return fp.SAState(spi=0x3686, cipher=C.CIPHER_AES_CTR, integ=AUTH_T.integ,
                      enc_key=h(v["key"]) + h(v["nonce"]), auth_key=AUTH_KEY, mode=fp.TRANSPORT, **kw)


@pytest.mark.parametrize("v", _ctr_vectors())
def test_rfc3686_decap(v):
    pt, ct, iv = h(v["plaintext"]), h(v["ciphertext"]), h(v["iv"])
    # key stream for the trailer: continue the vector's counter blocks (nonce || IV || i, i >= 1)
    tail = S.trailer(b"", 17, 1, pad=bytes(range(1, 1 + (-(len(pt) + 2) % 4))))
    enc = Cipher(algorithms.AES(h(v["key"])), modes.CTR(h(v["initial_counter_block"]))).encryptor()
    full = enc.update(pt + tail) + enc.finalize()
    assert full[:len(ct)] == ct          # the vector, re-derived: the trailer extends it
    esp = struct.pack("!II", 0x3686, 1) + iv + full
    out = _ctr_sa(v).decap(S.wrap4(esp + icv_for(esp)))
    assert out[20:] == pt and out[9] == 17


@pytest.mark.parametrize("v", _ctr_vectors())
def test_rfc3686_encap_at_iv_sequence_number(v):
    """The kernel's CTR IV is the sequence number (64 bits with ESN); sending at seq = IV
    must reproduce the vector's ciphertext byte for byte."""
    iv = int(v["iv"], 16)
    if iv == 0:
        pytest.skip("IV 0 is no sequence number (the first packet is 1)")
    pt = h(v["plaintext"])
    tx = _ctr_sa(v, esn=True, seq_out=iv - 1)
    out = tx.encap(S.ipv4_header(len(pt), 17) + pt)
    assert out[20:24] == struct.pack("!I", 0x3686)
    assert out[24:28] == struct.pack("!I", iv & 0xFFFFFFFF)
    assert out[28:36] == h(v["iv"])
    assert out[36:36 + len(pt)] == h(v["ciphertext"])
    # and the ICV covers the ESN high half (RFC 4303 2.2.1)
    assert out[-12:] == S.hmac_icv(AUTH_T, AUTH_KEY, out[20:-12], esn_high=iv >> 32)


# =======================================================================================
# RFC 7634 Appendix A: ChaCha20-Poly1305 ESP example


def _chacha_vectors():
    return _vectors("rfc7634_esp_chacha20poly1305.json", ident=lambda i, v: "appendixA")


def _chacha_sa(v, **kw):
    pkt = h(v["esp_packet"])
    return fp.SAState(spi=int(v["spi"], 16), cipher=C.CIPHER_CHACHA20_POLY1305, icv_len=16,
                      enc_key=h(v["keymat"]), mode=fp.TUNNEL, src=pkt[12:16], dst=pkt[16:20], **kw)


@pytest.mark.parametrize("v", _chacha_vectors())
def test_rfc7634_decap(v):
    assert v["esp_mode"] == "tunnel" and not v["esn"]
    rx = _chacha_sa(v)
    assert rx.decap(h(v["esp_packet"])) == h(v["source_packet"])
    assert rx.replay_top == v["seq"]
    with pytest.raises(fp.ReplayError):
        rx.decap(h(v["esp_packet"]))
    b = S.batch_of([h(v["esp_packet"])])
    assert b.decap(_chacha_sa(v)) == 1
    assert bytes(b.packet(0)) == h(v["source_packet"])


@pytest.mark.parametrize("v", _chacha_vectors())
def test_rfc7634_encap(v):
    rfc = h(v["esp_packet"])
    tx = _chacha_sa(v, seq_out=v["seq"] - 1)
    out = tx.encap(h(v["source_packet"]))
    assert len(out) == len(rfc)
    assert out[20:28] == rfc[20:28]                           # SPI || seq
    assert out[:2] == rfc[:2] and out[6:10] == rfc[6:10] and out[12:20] == rfc[12:20]
    assert S.ipv4_checksum_ok(out[:20])
    iv = out[28:36]
    # RFC 7634 section 2: the counter method makes the IV the sequence number
    assert iv == struct.pack("!Q", v["seq"])
    if iv == h(v["iv"]):
        assert out[20:] == rfc[20:]
    aead = ChaCha20Poly1305(h(v["key"]))
    assert aead.decrypt(h(v["salt"]) + iv, out[36:], h(v["aad"])) == h(v["plaintext"])


# =======================================================================================
# draft-mcgrew-gcm-test-01: AES-GCM and AES-GMAC ESP packets


def _gcm_vectors():
    return _vectors("gcm_esp_mcgrew.json",
                    ident=lambda i, v: f"case{i}-{v['mode']}{'-esn' if v['esn'] else ''}")


def _gcm_full_seq(v) -> int:
    return ((v["esn_high"] << 32) | v["seq"]) if v["esn"] else v["seq"]


def _gcm_sa(v, **kw):
    spi = int(v["spi"], 16)
    if spi <= 255:
        pytest.skip(f"SPI {spi} is reserved (RFC 4303 2.1): no SA can be configured with it")
    cipher = C.CIPHER_AES_GMAC if v["mode"] == "gmac" else C.CIPHER_AES_GCM
    return fp.SAState(spi=spi, cipher=cipher, icv_len=v["tag_len"], enc_key=h(v["key"]) + h(v["salt"]),
                      mode=fp.TRANSPORT, esn=v["esn"], **kw)


def _gcm_payload(v) -> tuple[bytes, int, bytes]:
    """(payload, next header, cipher region incl. trailer) as the draft prints them."""
    region = h(v["plaintext"]) if v["mode"] == "gcm" else h(v["esp_packet"])[16:-16]
    pl, nh = region[-2], region[-1]
    return region[:len(region) - 2 - pl], nh, region


def _gcm_receiver(v) -> fp.SAState:
    """A receiver for the vector's packet. A new ESN receiver's window is in epoch 0; for
    the vectors of later epochs it is resumed (replay_top) just behind the vector's number,
    where RFC 4303 A2.1 infers the vector's high half."""
    if v["esn"] and v["esn_high"] != 0:
        return _gcm_sa(v, replay_top=_gcm_full_seq(v) - 1)
    return _gcm_sa(v)


@pytest.mark.parametrize("v", _gcm_vectors())
def test_mcgrew_gcm_decap(v):
    rx = _gcm_receiver(v)
    payload, nh, _ = _gcm_payload(v)
    # the draft's packets start at the ESP header: put them behind an IPv4 header (transport)
    out = rx.decap(S.wrap4(h(v["esp_packet"])))
    assert out[9] == nh
    assert out[20:] == payload
    assert S.ipv4_checksum_ok(out)
    assert rx.replay_top == _gcm_full_seq(v)
    b = S.batch_of([S.wrap4(h(v["esp_packet"]))])
    assert b.decap(_gcm_receiver(v)) == 1
    assert bytes(b.packet(0)) == out


@pytest.mark.parametrize("v", _gcm_vectors())
def test_mcgrew_gcm_decap_rejects_tampering(v):
    rx = _gcm_receiver(v)
    top = rx.replay_top
    # ICV, last cipher byte, IV (integrity failures); the sequence number (integrity failure,
    # or refused by the window first when the changed number falls behind it)
    seq_errors = (fp.IntegrityError, fp.ReplayError)
    for pos, errors in ((-1, fp.IntegrityError), (-17, fp.IntegrityError), (20 + 9, fp.IntegrityError),
                        (20 + 7, seq_errors), (20 + 4, seq_errors)):
        pkt = bytearray(S.wrap4(h(v["esp_packet"])))
        pkt[pos] ^= 0x80
        with pytest.raises(errors):
            rx.decap(bytes(pkt))
    assert rx.replay_top == top
    if v["esn"]:
        # the right low half in the wrong epoch: the ICV covers the high half
        shift = -(2**32) if v["esn_high"] else 2**32
        wrong = _gcm_sa(v, replay_top=_gcm_full_seq(v) + shift - 1)
        with pytest.raises((fp.IntegrityError, fp.ReplayError)):
            wrong.decap(S.wrap4(h(v["esp_packet"])))


@pytest.mark.parametrize("v", _gcm_vectors())
def test_mcgrew_gcm_encap(v):
    """Encapsulate the draft's payload at the draft's (extended) sequence number and open
    the result with the draft's AAD layout (SPI || 32- or 64-bit sequence number for GCM;
    SPI || SN || IV || payload for GMAC): the cipher region must be the draft's plaintext,
    padding included."""
    full = _gcm_full_seq(v)
    payload, nh, region = _gcm_payload(v)
    tx = _gcm_sa(v, seq_out=full - 1)
    out = tx.encap(S.ipv4_header(len(payload), nh) + payload)
    esp = out[20:]
    assert out[9] == 50
    assert esp[:8] == h(v["esp_packet"])[:8]                  # SPI || low 32 bits of seq
    iv = esp[8:16]
    assert iv == struct.pack("!Q", full)
    if iv == h(v["iv"]):
        assert esp == h(v["esp_packet"])
    nonce = h(v["salt"]) + iv
    aead = AESGCM(h(v["key"]))
    if v["mode"] == "gcm":
        assert len(esp) == len(h(v["esp_packet"]))
        assert aead.decrypt(nonce, esp[16:], h(v["aad"])) == region
    else:
        body, tag = esp[16:-16], esp[-16:]
        assert body == region
        aad = h(v["aad"])[:8] + iv + body                     # the draft's GMAC AAD layout
        assert aead.encrypt(nonce, b"", aad) == tag


# =======================================================================================
# NIST GCM (McGrew-Viega Appendix B, CAVP) pushed through ESP


def _nist_vectors():
    return _vectors("nist_gcm.json",
                    lambda v: v.get("result") == "pass" and len(v["iv"]) == 24 and bool(v.get("plaintext")),
                    lambda i, v: f"{v['set']}-{i}")


@pytest.mark.parametrize("v", _nist_vectors())
def test_nist_gcm_decap(v):
    key, iv, pt = h(v["key"]), h(v["iv"]), h(v["plaintext"])
    spi, seq = 0x4106, 1
    aad = struct.pack("!II", spi, seq)
    region = S.trailer(pt, 17)
    sealed = AESGCM(key).encrypt(iv, region, aad)
    # GCM's cipher text does not depend on the AAD: the vector's bytes lead the region
    assert sealed[:len(pt)] == h(v["ciphertext"])
    esp = aad + iv[4:] + sealed
    sa = fp.SAState(spi=spi, cipher=C.CIPHER_AES_GCM, icv_len=16, enc_key=key + iv[:4], mode=fp.TRANSPORT)
    out = sa.decap(S.wrap4(esp))
    assert out[20:] == pt and out[9] == 17


@pytest.mark.parametrize("v", _nist_vectors())
def test_nist_gcm_encap_at_iv_sequence_number(v):
    key, iv, pt = h(v["key"]), h(v["iv"]), h(v["plaintext"])
    seq = int.from_bytes(iv[4:], "big")
    if seq == 0:
        pytest.skip("the IV's low 64 bits are 0, which is no sequence number")
    sa = fp.SAState(spi=0x4106, cipher=C.CIPHER_AES_GCM, icv_len=16, enc_key=key + iv[:4],
                    mode=fp.TRANSPORT, esn=True, seq_out=seq - 1)
    out = sa.encap(S.ipv4_header(len(pt), 17) + pt)
    assert out[28:36] == iv[4:]
    assert out[36:36 + len(pt)] == h(v["ciphertext"])


# =======================================================================================
# RFC 8750 implicit IV: nonce = salt || 64-bit sequence number, AAD unchanged (SPEC_NOTES 4)


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("tname", ["aes128gcm16", "aes256gcm16", "chacha20poly1305"])
def test_implicit_iv_layout(tname, esn):
    t = S.TRANSFORM_BY_NAME[tname]
    seq = (7 << 32) + 41 if esn else 41
    tx = S.make_sa(t, "esp", implicit_iv=True, esn=esn, seq_out=seq - 1)
    inner = S.inner4(37)
    out = tx.encap(inner)
    enc, _ = t.keys()
    key, salt = enc[:-4], enc[-4:]
    assert out[:8] == struct.pack("!II", 0x1234, seq & 0xFFFFFFFF)
    nonce = salt + struct.pack("!Q", seq)
    aad = struct.pack("!IQ", 0x1234, seq) if esn else out[:8]
    aead = AESGCM(key) if t.cipher == C.CIPHER_AES_GCM else ChaCha20Poly1305(key)
    region = aead.decrypt(nonce, out[8:], aad)         # no IV on the wire
    assert region == S.trailer(inner, 4)
    assert len(out) == 8 + len(region) + 16
    assert tx.iv_len == 0


def test_vector_files_present():
    """The vector directory is another helper's product: losing a file should be loud."""
    names = ["rfc2202_hmac.json", "rfc4231_hmac_sha2.json", "rfc3602_esp_aes_cbc.json",
             "rfc3686_aes_ctr.json", "rfc7634_esp_chacha20poly1305.json", "gcm_esp_mcgrew.json",
             "nist_gcm.json", "des_cbc.json"]
    present = [n for n in names if (VECTORS / n).exists()]
    if not present:
        pytest.skip("no vector files")
    for n in present:
        d = json.loads((VECTORS / n).read_text())
        assert d["vectors"], n
