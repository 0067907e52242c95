"""Batch calls over a subset of an arena's packets (indices): how an engine lets several SAs
work on one shared buffer without copying packets into per-SA batches."""

from array import array

import pytest

import fastpath
from fastpath import Cipher, Integ, SAState, Status
from ipsp.gen import imix_packets

STRIDE = 2048


def _pair(spi, cipher=Cipher.CIPHER_AES_GCM, backend=0):
    kw = dict(spi=spi, cipher=cipher, src=bytes([192, 0, 2, 1]), dst=bytes([192, 0, 2, 2]), backend=backend)
    if cipher == Cipher.CIPHER_AES_GCM:
        kw.update(icv_len=16, enc_key=bytes(range(20)))
    else:
        kw.update(integ=Integ.INTEG_HMAC_SHA1_96, enc_key=bytes(16), auth_key=bytes(20))
    return SAState(**kw), SAState(**kw)


def _arena(packets):
    buf = bytearray(len(packets) * STRIDE)
    off = array("q", [i * STRIDE + 128 for i in range(len(packets))])
    for i, p in enumerate(packets):
        buf[off[i]:off[i] + len(p)] = p
    return buf, off, array("I", map(len, packets)), bytearray([0xEE]) * len(packets)


BACKENDS = [0, 1] + ([2] if "ipsecmb" in fastpath.backends() else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cipher", [Cipher.CIPHER_AES_GCM, Cipher.CIPHER_AES_CBC])
def test_two_sas_share_one_arena(backend, cipher):
    packets = imix_packets(300, seed=4)
    buf, off, lens, status = _arena(packets)
    (a_out, a_in), (b_out, b_in) = _pair(0x5001, cipher, backend), _pair(0x5002, cipher, backend)
    even = array("I", range(0, 300, 2))
    odd = array("I", range(1, 300, 2))
    assert a_out.encap_batch(buf, off, lens, status, STRIDE, indices=even) == 150
    assert all(status[i] == 0xEE and off[i] == i * STRIDE + 128 for i in odd)      # untouched
    assert b_out.encap_batch(buf, off, lens, status, STRIDE, indices=odd) == 150
    assert set(status) == {Status.OK}
    spis = [int.from_bytes(buf[off[i] + 20:off[i] + 24], "big") for i in range(300)]
    assert spis == [0x5001 if i % 2 == 0 else 0x5002 for i in range(300)]
    assert a_in.decap_batch(buf, off, lens, status, indices=even) == 150
    assert b_in.decap_batch(buf, off, lens, status, indices=odd) == 150
    assert [bytes(buf[off[i]:off[i] + lens[i]]) for i in range(300)] == packets
    assert a_out.counters()["out"]["packets"] == 150 and b_in.counters()["in"]["packets"] == 150


def test_bad_indices_change_nothing():
    out, _ = _pair(0x5003)
    buf, off, lens, status = _arena(imix_packets(4, seed=1))
    for bad, what in ((array("I", [0, 4]), "not a packet number"), (array("I", [1, 1]), "repeated"),
                      (array("H", [0]), "indices must hold 4-byte items")):
        with pytest.raises(ValueError, match=what):
            out.encap_batch(buf, off, lens, status, STRIDE, indices=bad)
    assert out.seq_out == 0 and set(status) == {0xEE}


def test_closed_sa_marks_only_its_packets():
    out, _ = _pair(0x5004)
    out.close()
    buf, off, lens, status = _arena(imix_packets(10, seed=2))
    assert out.encap_batch(buf, off, lens, status, STRIDE, indices=array("I", [3, 7])) == 0
    assert [i for i in range(10) if status[i] != 0xEE] == [3, 7]
    assert status[3] == status[7] == Status.SA_DEAD
