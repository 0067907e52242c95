"""Round trips: decap(encap(p)) == p for every transform and framing, single and batch.

Hypothesis draws the transform, the mode (tunnel with IPv4 or IPv6 outer header, tunnel
with framing ESP, transport), UDP encapsulation, ESN, implicit IV (AEAD only), TFC padding
(tunnel only), the inner family and header options, and 1-4 packet sizes in 0..9000.
The single-packet and batch paths must agree byte for byte.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastpath as fp
import fp_support as S
from fastpath import Status

STRIDE = 9728            # 9000-byte payloads + IPv6/UDP headers + headroom + tailroom (TFC up to 255)
HEADROOM = 128
MAX_PAYLOAD = 9000

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def build_inner(fam: int, n: int, *, seed: int = 0, tos: int = 0, opt_words: int = 0, hbh: bool = False) -> bytes:
    """A UDP packet with n payload bytes; IPv4 with opt_words words of options (NOPs then
    EOL), IPv6 optionally with a hop-by-hop header (PadN) in front of UDP."""
    seg = S.udp(S.payload_bytes(n, seed))
    if fam == 4:
        opts = b"\x01" * (4 * opt_words - 1) + b"\x00" if opt_words else b""
        return S.ipv4_header(len(seg), 17, tos=tos, options=opts) + seg
    seg = seg[:6] + struct.pack("!H", S.udp6_checksum(S.IN6_SRC, S.IN6_DST, seg)) + seg[8:]
    if hbh:
        ext = bytes([17, 0, 1, 4, 0, 0, 0, 0])        # next header UDP, PadN(4)
        return S.ipv6_header(len(ext) + len(seg), 0, tc=tos) + ext + seg
    return S.ipv6_header(len(seg), 17, tc=tos) + seg


@st.composite
def configs(draw):
    t = draw(st.sampled_from(S.TRANSFORMS))
    mode = draw(st.sampled_from(S.MODES))
    cfg = dict(
        udp=draw(st.booleans()),
        esn=draw(st.booleans()),
        implicit_iv=draw(st.booleans()) if t.implicit_iv_ok else False,
        tfc_pad=draw(st.sampled_from([0, 0, 1, 16, 255])) if mode != "transport" else 0,
    )
    bks = S.backends_for(t)
    cfg["backend"] = draw(st.sampled_from(bks))
    rx_backend = draw(st.sampled_from(bks))
    fam = draw(st.sampled_from([4, 6]))
    tos = draw(st.integers(0, 255))
    opt_words = draw(st.integers(0, 10)) if fam == 4 else 0
    hbh = draw(st.booleans()) if fam == 6 else False
    sizes = draw(st.lists(st.one_of(st.integers(0, 64), st.integers(0, MAX_PAYLOAD)), min_size=1, max_size=4))
    seed = draw(st.integers(0, 2**16))
    pkts = []
    for i, n in enumerate(sizes):
        p = build_inner(fam, n, seed=seed + i, tos=tos, opt_words=opt_words, hbh=hbh)
        # the builders never emit the payload before the header is complete
        assert len(p) <= MAX_PAYLOAD + 8 + 60
        pkts.append(p)
    return t, mode, cfg, pkts, rx_backend


def _payload_of(pkt: bytes, cfg: dict, mode: str) -> int:
    return S.esp_offset(pkt, udp_encap=cfg["udp"] and mode != "esp", framing_esp=mode == "esp")


@settings(max_examples=250, **SETTINGS)
@given(configs())
def test_roundtrip_single_and_batch(c):
    t, mode, cfg, pkts, rxb = c
    n = len(pkts)
    rcfg = {k: v for k, v in cfg.items() if k != "tfc_pad"} | {"backend": rxb}
    tx1, rx1 = S.make_pair(t, mode, **cfg, rx_extra={"backend": rxb})
    tx2, rx2 = S.make_pair(t, mode, **cfg, rx_extra={"backend": rxb})
    rx3 = S.make_sa(t, mode, **rcfg)
    rx4 = S.make_sa(t, mode, **rcfg)

    # single packets
    singles = [tx1.encap(p) for p in pkts]
    assert tx1.seq_out == n
    for i, e in enumerate(singles):
        off = _payload_of(e, cfg, mode)
        assert struct.unpack("!II", e[off:off + 8]) == (0x1234, i + 1)
    assert [rx1.decap(e) for e in singles] == pkts
    assert rx1.replay_top == n

    # a batch
    b = S.batch_of(pkts, STRIDE, HEADROOM)
    assert b.encap(tx2) == n
    assert list(b.status) == [Status.OK] * n
    assert tx2.seq_out == n
    batched = [bytes(b.packet(i)) for i in range(n)]
    for i, e in enumerate(batched):
        off = _payload_of(e, cfg, mode)
        assert struct.unpack("!II", e[off:off + 8]) == (0x1234, i + 1)
        # same SA parameters, same packet: same length unless TFC padding is random
        if cfg["tfc_pad"] == 0:
            assert len(e) == len(singles[i])
    assert b.decap(rx2) == n
    assert S.batch_results(b) == pkts

    # cross: batch-made packets opened singly, single-made packets opened as a batch; the two
    # decapsulations must be byte-identical
    one_by_one = [rx3.decap(e) for e in batched]
    b2 = S.batch_of(singles, STRIDE, HEADROOM)
    assert b2.decap(rx4) == n
    assert one_by_one == S.batch_results(b2) == pkts
    c1, c2 = rx1.counters()["in"], rx2.counters()["in"]
    assert c1["packets"] == c2["packets"] == n
    assert c1["bytes"] == c2["bytes"] == sum(map(len, pkts))
    assert tx1.counters()["out"]["packets"] == tx2.counters()["out"]["packets"] == n


@settings(max_examples=60, **SETTINGS)
@given(configs())
def test_roundtrip_into_exact_buffers(c):
    """encap_into with exactly len + headroom + tailroom bytes, decap_into with the packet's
    length: both suffice, and the results sit at the start of the buffers."""
    t, mode, cfg, pkts, rxb = c
    tx, rx = S.make_pair(t, mode, **cfg, rx_extra={"backend": rxb})
    for p in pkts:
        out = bytearray(len(p) + tx.headroom + tx.tailroom)
        k = tx.encap_into(p, out)
        back = bytearray(k)
        m = rx.decap_into(memoryview(out)[:k], back)
        assert bytes(back[:m]) == p


@settings(max_examples=40, **SETTINGS)
@given(configs(), st.lists(st.integers(1, 5), min_size=1, max_size=6))
def test_sequence_numbers_increase_by_one(c, chunks):
    """Mixed single and batch calls take consecutive sequence numbers."""
    t, mode, cfg, pkts, rxb = c
    tx, rx = S.make_pair(t, mode, **cfg, rx_extra={"backend": rxb})
    p = pkts[0]
    want = 0
    for k, size in enumerate(chunks):
        if k % 2:
            b = S.batch_of([p] * size, STRIDE, HEADROOM)
            assert b.encap(tx) == size
            outs = [bytes(x) for x in b]
        else:
            outs = [tx.encap(p) for _ in range(size)]
        for e in outs:
            want += 1
            off = _payload_of(e, cfg, mode)
            assert struct.unpack("!I", e[off + 4:off + 8])[0] == want
            assert rx.decap(e) == p
        assert tx.seq_out == want == rx.replay_top


# ---------------------------------------------------------------------------------------
# overhead(n): the bytes ESP adds (what path-MTU arithmetic needs), checked exhaustively
# over every padding residue


@pytest.mark.parametrize("mode", S.MODES)
def test_overhead_equals_growth(mode):
    """overhead(len(p)) == len(encap(p)) - len(p) for every transform, family, UDP setting
    and padding residue. In transport mode only what follows the packet's own IP header is
    padded, so the header length is passed (header_len)."""
    bad = []
    for t in S.TRANSFORMS:
        for udp in (False, True):
            tx = S.make_sa(t, mode, udp=udp)
            for fam in (4, 6):
                for n in range(0, 40):
                    p = build_inner(fam, n)
                    grown = len(tx.encap(p)) - len(p)
                    hdr = (20 if fam == 4 else 40) if mode == "transport" else 0
                    if grown != tx.overhead(len(p), hdr):
                        bad.append((t.name, f"IPv{fam}", "udp" if udp else "ip", len(p), grown, tx.overhead(len(p), hdr)))
    assert not bad, (f"{len(bad)} mismatches; (transform, family, framing, len(p), actual growth, overhead()): "
                     f"{bad[:4]} ... transforms: {sorted({b[0] for b in bad})}")


@pytest.mark.parametrize("t", [pytest.param(t, id=t.name) for t in S.TRANSFORMS])
def test_headroom_tailroom_bound_growth(t):
    """headroom and tailroom bound what encapsulation writes in front of and after a packet."""
    for mode in ("tunnel4", "tunnel6", "esp"):
        for tfc in (0, 100):
            tx = S.make_sa(t, mode, udp=True, tfc_pad=tfc)
            for n in range(0, 40, 3):
                p = build_inner(4, n)
                assert len(tx.encap(p)) - len(p) <= tx.headroom + tx.tailroom


@pytest.mark.parametrize("t", [pytest.param(t, id=t.name) for t in S.TRANSFORMS])
def test_properties(t):
    tx = S.make_sa(t, "tunnel6", udp=True)
    assert tx.icv_len == t.icv_len
    assert tx.iv_len == t.iv_len
    assert tx.block_size == t.block
    assert tx.cipher == t.cipher and tx.integ == t.integ
    assert tx.spi == 0x1234 and tx.mode == fp.TUNNEL
    # IPv6 (40) + UDP (8) + ESP header (8) + IV
    assert tx.headroom == 40 + 8 + 8 + t.iv_len
    assert tx.tailroom == t.block - 1 + 2 + t.icv_len
    assert tx.seq_out == 0 and tx.replay_top == 0 and not tx.closed
    assert tx.backend in (fp.Backend.BACKEND_OPENSSL, fp.Backend.BACKEND_IPSECMB)
    if t.implicit_iv_ok:
        assert S.make_sa(t, "esp", implicit_iv=True).iv_len == 0


@settings(max_examples=30, **SETTINGS)
@given(st.sampled_from(S.TRANSFORMS), st.integers(0, 2000), st.integers(1, 300))
def test_tfc_padding_hides_length_and_is_stripped(t, n, tfc):
    """RFC 4303 2.7: tunnel-mode TFC padding lengthens packets by 0..tfc_pad bytes (before
    block padding) and the receiver strips it using the inner header's length."""
    tx, rx = S.make_pair(t, "tunnel4", tfc_pad=tfc)
    p = build_inner(4, n)
    base = tx.overhead(len(p))
    for _ in range(8):
        e = tx.encap(p)
        grown = len(e) - len(p)
        assert base <= grown <= base + tfc + t.block
        assert rx.decap(e) == p


# ---------------------------------------------------------------------------------------
# every backend, single and batch, against an independent ESP implementation


def _tb_params():
    return [pytest.param(t, b, id=f"{t.name}-{S.BACKEND_NAMES[b]}") for t in S.TRANSFORMS for b in S.backends_for(t)]


@pytest.mark.parametrize("t, backend", _tb_params())
@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
def test_encap_matches_independent_sealer(t, backend, esn):
    """The kernel's ESP bytes equal fp_support.seal's (cryptography / pycryptodome / hmac)
    for the same region; for CBC the kernel's random IV is taken from its packet."""
    high = 3 if esn else None
    for implicit in ([False, True] if t.implicit_iv_ok else [False]):
        tx = S.make_sa(t, "esp", backend=backend, esn=esn, implicit_iv=implicit,
                       seq_out=((3 << 32) + 40) if esn else 40)
        inners = [build_inner(4 if i % 2 else 6, i * 7, seed=i) for i in range(12)]
        b = S.batch_of(inners)
        assert b.encap(tx) == len(inners)
        outs = [bytes(p) for p in b] + [tx.encap(p) for p in inners]
        for k, out in enumerate(outs):
            p = inners[k % len(inners)]
            seq = 41 + k
            iv = out[8:8 + t.iv_len] if t.cipher in S.CBC else None
            want = S.seal(t, 0, 0x1234, seq, S.region_for(t, p, 4 if p[0] >> 4 == 4 else 41),
                          esn_high=high, iv=iv, implicit_iv=implicit)
            assert out == want, (k, implicit)


@pytest.mark.parametrize("t, backend", _tb_params())
@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
def test_decap_of_independently_sealed_packets(t, backend, esn):
    """Packets sealed by fp_support.seal open on every backend, singly and in batches.

    Regression ([null-*-ipsecmb]): at commit 060f2c4, with the intel-ipsec-mb backend forced
    (backend=2) and the NULL cipher, single-packet decap / decap_into returned
    BAD_NEXT_HEADER for genuine packets after moving the replay window (the packet was
    lost): the job API's NULL "cipher" does not copy the payload to a separate output
    buffer. Batches (in place) were unaffected. Reproducer:
        kw = dict(spi=0x1234, cipher=CIPHER_NULL, integ=INTEG_HMAC_SHA256_128, auth_key=bytes(32),
                  mode=TUNNEL, src=bytes(4), dst=bytes(4), backend=2)
        SAState(**kw).decap(SAState(**kw).encap(inner_ipv4_packet))   # MalformedPacket BAD_NEXT_HEADER"""
    high = 5 if esn else None
    for implicit in ([False, True] if t.implicit_iv_ok else [False]):
        kw = dict(backend=backend, esn=esn, implicit_iv=implicit, replay_top=(5 << 32) if esn else 0)
        rx1, rx2 = S.make_sa(t, "tunnel6", **kw), S.make_sa(t, "tunnel6", **kw)
        inners = [build_inner(4 if i % 2 else 6, i * 11, seed=i) for i in range(10)]
        pkts = [S.wrap6(S.seal(t, 0, 0x1234, 1 + i, S.region_for(t, p, 4 if p[0] >> 4 == 4 else 41),
                               esn_high=high, implicit_iv=implicit)) for i, p in enumerate(inners)]
        got = []
        for p in pkts:
            try:
                got.append(rx1.decap(p))
            except fp.PacketError as e:
                got.append(e.status)
        assert got == inners, (implicit, [g if isinstance(g, Status) else "OK" for g in got])
        b = S.batch_of(pkts)
        assert b.decap(rx2) == len(pkts)
        assert S.batch_results(b) == inners


# ---------------------------------------------------------------------------------------
# IVs: CBC IVs are unpredictable (RFC 3602 3) -- at least never repeated or constant, in
# batches, single calls and across threads; counter-mode IVs are the sequence number


@pytest.mark.parametrize("t, backend", [pytest.param(S.TRANSFORM_BY_NAME[n], b, id=f"{n}-{S.BACKEND_NAMES[b]}")
                                        for n in ("aes128cbc-sha1", "3des-sha1", "des-sha1")
                                        for b in S.BACKENDS])
def test_cbc_ivs_never_repeat(t, backend):
    import threading

    ivs: list[bytes] = []
    lock = threading.Lock()

    def work(k):
        tx = S.make_sa(t, "esp", backend=backend, seed=k)
        got = []
        for _ in range(5):
            b = S.batch_of([S.inner4(20)] * 400)
            assert b.encap(tx) == 400
            got += [bytes(p)[8:8 + t.iv_len] for p in b]
            got += [tx.encap(S.inner4(20))[8:8 + t.iv_len] for _ in range(50)]
        with lock:
            ivs.extend(got)

    ths = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    assert len(ivs) == 3 * 5 * 450
    assert len(set(ivs)) == len(ivs)
    assert bytes(t.iv_len) not in ivs
    # every byte position takes many values (not a counter, not a constant)
    for pos in range(t.iv_len):
        assert len({iv[pos] for iv in ivs}) > 200


@pytest.mark.parametrize("t", [pytest.param(t, id=t.name) for t in S.TRANSFORMS
                               if t.iv_len == 8 and t.cipher not in S.CBC])
def test_counter_mode_iv_is_the_sequence_number(t):
    """RFC 4106 3.1 / RFC 3686 / RFC 7634 2: a counter-mode IV must never repeat under a key;
    the kernel uses the (64-bit) sequence number."""
    for esn, start in ((False, 0), (True, (7 << 32) - 3)):
        tx = S.make_sa(t, "esp", esn=esn, seq_out=start)
        b = S.batch_of([S.inner6(10)] * 70)
        assert b.encap(tx) == 70
        outs = [bytes(p) for p in b] + [tx.encap(S.inner6(10))]
        assert [struct.unpack("!Q", o[8:16])[0] for o in outs] == list(range(start + 1, start + 72))
