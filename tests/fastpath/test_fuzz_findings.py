"""Regressions for what the fuzzer (fuzz/) found; each test fails on the code before its fix."""

from array import array

import pytest

import fastpath
from fastpath import Backend, Cipher, Integ, SAState, Status

BACKENDS = [Backend.BACKEND_OPENSSL] + ([Backend.BACKEND_IPSECMB] if "ipsecmb" in fastpath.backends() else [])
INNER = bytes.fromhex("45000030000000004011f99b0a0000010a000002") + bytes(28)


def _sa(backend, framing=fastpath.IP, cipher=Cipher.CIPHER_AES_CTR, **kw):
    keys = {Cipher.CIPHER_AES_CTR: bytes(20), Cipher.CIPHER_NULL: b"", Cipher.CIPHER_AES_GCM: bytes(20)}
    integ = Integ.INTEG_NONE if cipher == Cipher.CIPHER_AES_GCM else Integ.INTEG_HMAC_SHA256_128
    return SAState(spi=0x4001, cipher=cipher, integ=integ, icv_len=16 if cipher == Cipher.CIPHER_AES_GCM else 0,
                   enc_key=keys[cipher], auth_key=b"" if integ == Integ.INTEG_NONE else bytes(32),
                   framing=framing, src=bytes([192, 0, 2, 1]), dst=bytes([192, 0, 2, 2]), backend=backend, **kw)


@pytest.mark.parametrize("call", ["encap", "decap"])
def test_offsets_near_the_int64_limit_are_refused_not_wrapped(call):
    # found by fuzz: off + len overflowed int64 and passed the range check (SIGSEGV at -O3)
    sa = _sa(Backend.BACKEND_OPENSSL)
    args = (bytearray(64), array("q", [2**63 - 5]), array("I", [64]), bytearray(1))
    with pytest.raises(ValueError, match="not inside"):
        sa.encap_batch(*args, 64) if call == "encap" else sa.decap_batch(*args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cipher", [Cipher.CIPHER_AES_CTR, Cipher.CIPHER_NULL])
def test_esp_larger_than_any_ip_packet_is_oversize_on_every_backend(backend, cipher):
    # found by fuzz: the job API answered INTERNAL (tear the SA down) for > 64 KiB inputs
    sa = _sa(backend, framing=fastpath.ESP, cipher=cipher)
    big = sa.spi.to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes(65560)
    buf = bytearray(big)
    status = bytearray(1)
    assert sa.decap_batch(buf, array("q", [0]), array("I", [len(big)]), status) == 0
    assert status[0] == Status.OVERSIZE and sa.counters()["in"]["INTERNAL"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_unverified_decryption_never_moves_the_window(backend):
    # found by fuzz: decap(verify=False) let an unauthenticated number move replay_top
    tx, rx = _sa(backend, cipher=Cipher.CIPHER_AES_GCM), _sa(backend, cipher=Cipher.CIPHER_AES_GCM)
    first = tx.encap(INNER)
    forged = bytearray(first)
    forged[24:28] = (5_000_000).to_bytes(4, "big")        # the sequence number, unauthenticated
    rx.decap(bytes(forged), verify=False)
    assert rx.replay_top == 0
    assert rx.decap(first) == INNER and rx.replay_top == 1
