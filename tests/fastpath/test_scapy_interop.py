"""Interoperability with scapy's independent ESP implementation (scapy.layers.ipsec).

For every transform scapy implements, in tunnel (IPv4-in-IPv4, IPv6-in-IPv6, IPv4-in-IPv6)
and transport (IPv4, IPv6) mode, with and without RFC 3948 UDP encapsulation, with and
without extended sequence numbers:
  * ours encapsulates -> scapy decrypts to the identical inner packet, and
  * scapy encrypts    -> ours decapsulates to the identical inner packet.
Each direction uses fresh SAs. ESN cases run in epoch 1 (high half 1) so that the high
half is really exercised; the receiving window is first moved to the end of epoch 0.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import raw

import fastpath as fp
import fp_support as S
from fastpath import Cipher as C

SCAPY_TRANSFORMS = [t for t in S.TRANSFORMS if t.scapy_ok]

# (name, our SA mode, outer family or None for transport, inner family)
LAYOUTS = [
    ("tun4in4", "tunnel4", 4),
    ("tun6in6", "tunnel6", 6),
    ("tun4in6", "tunnel6", 4),
    ("tun6in4", "tunnel4", 6),
    ("trans4", "transport", 4),
    ("trans6", "transport", 6),
]

ESN_HIGH = 1
SEQ = 5
SPI = 0x1234
# a new receiver's window (1024) sits at 0: a low half within 1023 of 2^32 would be taken
# for epoch "-1" and refused, so the primer lies further back, still in epoch 0
PRIME_SEQ = 2**32 - 2000


def _inner(fam: int, n: int = 77) -> bytes:
    # inner UDP ports 40000/40001: nothing scapy would dissect further
    return S.inner4(n, seed=n) if fam == 4 else S.inner6(n, seed=n)


def _scapy_sa(t: S.Transform, mode: str, udp: bool, esn: bool, esn_high: int = ESN_HIGH, seq: int = SEQ):
    enc, auth = t.keys()
    kw = dict(spi=SPI, seq_num=seq, crypt_algo=t.scapy_crypt, crypt_key=enc or None,
              auth_algo=t.scapy_auth, auth_key=auth or None)
    if t.aead:
        kw["crypt_icv_size"] = t.icv_len
    if mode == "tunnel4":
        kw["tunnel_header"] = IP(src="192.0.2.1", dst="198.51.100.1")
    elif mode == "tunnel6":
        kw["tunnel_header"] = IPv6(src="2001:db8::1", dst="2001:db8::2")
    if udp:
        kw["nat_t_header"] = UDP(sport=4500, dport=4500)
    if esn:
        kw.update(esn_en=True, esn=esn_high)
    return SecurityAssociation(ESP, **kw)


def _parse(pkt: bytes):
    return IP(pkt) if pkt[0] >> 4 == 4 else IPv6(pkt)


def _params():
    """Every transform x layout x UDP x ESN on the AUTO backend; each forced backend with
    IPv4-in-IPv4 (no UDP, no ESN) and IPv6 transport (UDP, ESN): the backends differ in
    crypto, not in framing."""
    out = []
    for t in SCAPY_TRANSFORMS:
        for backend in S.backends_for(t):
            for lname, mode, fam in LAYOUTS:
                for udp in (False, True):
                    for esn in (False, True):
                        if backend != 0 and (lname, udp, esn) not in (("tun4in4", False, False),
                                                                      ("trans6", True, True)):
                            continue
                        out.append(pytest.param(
                            t, mode, fam, udp, esn, backend,
                            id=f"{t.name}-{S.BACKEND_NAMES[backend]}-{lname}-{'udp' if udp else 'ip'}-"
                               f"{'esn' if esn else 'seq32'}"))
    return out


@pytest.mark.parametrize("t, mode, fam, udp, esn, backend", _params())
def test_ours_to_scapy(t, mode, fam, udp, esn, backend):
    start = ((ESN_HIGH << 32) | SEQ) if esn else SEQ
    tx = S.make_sa(t, mode, udp=udp, esn=esn, seq_out=start - 1, backend=backend)
    inner = _inner(fam)
    out = tx.encap(inner)
    assert tx.seq_out == start
    pkt = _parse(out)
    if udp:
        assert pkt[UDP].sport == 4500 and pkt[UDP].dport == 4500
    esp = pkt[ESP]
    assert esp.spi == SPI and esp.seq == SEQ
    sa = _scapy_sa(t, mode, udp, esn)
    dec = sa.decrypt(pkt)
    assert raw(dec) == inner


@pytest.mark.parametrize("t, mode, fam, udp, esn, backend", _params())
def test_scapy_to_ours(t, mode, fam, udp, esn, backend):
    rx = S.make_sa(t, mode, udp=udp, esn=esn, backend=backend)
    if esn:
        # move the window to the end of epoch 0 so that SEQ is inferred to be in epoch 1
        primer = _scapy_sa(t, mode, udp, esn, esn_high=0, seq=PRIME_SEQ)
        primer.esn = 0
        p0 = _inner(fam, 3)
        assert rx.decap(raw(primer.encrypt(_parse(p0)))) == p0
        assert rx.replay_top == PRIME_SEQ
    sa = _scapy_sa(t, mode, udp, esn)
    inner = _inner(fam)
    enc = raw(sa.encrypt(_parse(inner)))
    assert rx.decap(enc) == inner
    assert rx.replay_top == (((ESN_HIGH << 32) | SEQ) if esn else SEQ)
    # the same bytes again are a replay
    with pytest.raises(fp.ReplayError):
        rx.decap(enc)


@pytest.mark.parametrize("t", [pytest.param(t, id=t.name) for t in SCAPY_TRANSFORMS])
@pytest.mark.parametrize("size", [0, 1, 2, 3, 13, 14, 15, 16, 17, 1400])
def test_sizes_both_ways(t, size):
    """Every padding length, both ways (tunnel IPv4, no UDP)."""
    tx, rx = S.make_pair(t, "tunnel4")
    sa = _scapy_sa(t, "tunnel4", False, False, seq=1)
    inner = _inner(4, size)
    assert raw(sa.decrypt(IP(tx.encap(inner)))) == inner
    assert rx.decap(raw(sa.encrypt(IP(inner)))) == inner


@pytest.mark.parametrize("t, backend", [pytest.param(t, b, id=f"{t.name}-{S.BACKEND_NAMES[b]}")
                                        for t in SCAPY_TRANSFORMS for b in S.backends_for(t)])
def test_batch_interop(t, backend):
    """Batches of both kinds interoperate too (ours encap_batch -> scapy; scapy -> ours decap_batch)."""
    inners = [_inner(4 if i % 2 else 6, 20 + 31 * i) for i in range(10)]
    tx, rx = S.make_pair(t, "tunnel6", udp=True, backend=backend, rx_extra={"backend": backend})
    b = S.batch_of(inners)
    assert b.encap(tx) == len(inners)
    sa = _scapy_sa(t, "tunnel6", True, False, seq=1)
    for i, inner in enumerate(inners):
        assert raw(sa.decrypt(IPv6(bytes(b.packet(i))))) == inner
    sa = _scapy_sa(t, "tunnel6", True, False, seq=1)
    b = S.batch_of([raw(sa.encrypt(_parse(p))) for p in inners])
    assert b.decap(rx) == len(inners)
    assert S.batch_results(b) == inners


def test_transform_table_covers_scapy():
    """Every scapy algorithm the kernel also implements is in the matrix above."""
    from scapy.layers.ipsec import AUTH_ALGOS, CRYPT_ALGOS

    ours = {t.scapy_crypt for t in SCAPY_TRANSFORMS} | {t.scapy_auth for t in SCAPY_TRANSFORMS}
    kernel_crypt = {"NULL", "AES-CBC", "AES-CTR", "AES-GCM", "AES-NULL-GMAC", "CHACHA20-POLY1305", "DES", "3DES"}
    kernel_auth = {"HMAC-SHA1-96", "SHA2-256-128", "SHA2-384-192", "SHA2-512-256", "HMAC-MD5-96"}
    assert kernel_crypt <= set(CRYPT_ALGOS) and kernel_auth <= set(AUTH_ALGOS)
    assert kernel_crypt | kernel_auth <= ours
    assert {t.cipher for t in SCAPY_TRANSFORMS} == set(C)
