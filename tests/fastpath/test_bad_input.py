"""Malformed, hostile and unprocessable input: every case gets its named Status in a batch and
the matching PacketError subclass from a single call, is counted once, and never changes
state it must not change (the replay window, a forged packet's bytes, the sequence counter).

Packets with a broken inside (padding, next header, dummy) are sealed by fp_support.seal,
an independent ESP implementation on cryptography / pycryptodome / hmac.
"""

from __future__ import annotations

import struct
from array import array

import pytest

import fastpath as fp
import fp_support as S
from fastpath import Cipher as C
from fastpath import Status

EXC = {
    Status.TRUNCATED: fp.MalformedPacket, Status.BAD_IP_HEADER: fp.MalformedPacket,
    Status.NOT_ESP: fp.MalformedPacket, Status.NAT_KEEPALIVE: fp.NoDataPacket,
    Status.FRAGMENT: fp.MalformedPacket, Status.BAD_SPI: fp.MalformedPacket,
    Status.REPLAY: fp.ReplayError, Status.TOO_OLD: fp.ReplayError, Status.ICV_FAIL: fp.IntegrityError,
    Status.BAD_LENGTH: fp.MalformedPacket, Status.BAD_PADDING: fp.MalformedPacket,
    Status.BAD_NEXT_HEADER: fp.MalformedPacket, Status.DUMMY: fp.NoDataPacket,
    Status.ECN_DROP: fp.PacketError, Status.NO_ROOM: fp.BufferTooSmall, Status.OVERSIZE: fp.MalformedPacket,
    Status.BAD_INNER: fp.MalformedPacket, Status.SEQ_EXHAUSTED: fp.SequenceExhausted,
    Status.SA_DEAD: fp.SAClosedError,
}

CORE = [pytest.param(t, id=t.name) for t in S.CORE]
ALL_T = [pytest.param(t, id=t.name) for t in S.TRANSFORMS]


def t_b_params(transforms=S.TRANSFORMS):
    return [pytest.param(t, b, id=f"{t.name}-{S.BACKEND_NAMES[b]}") for t in transforms for b in S.backends_for(t)]


def expect_single(sa, pkt, status, *, direction="decap"):
    """The single call raises exactly the exception class mapped to status, carrying it."""
    fn = sa.decap if direction == "decap" else sa.encap
    if status == Status.OK:
        return fn(pkt)
    with pytest.raises(fp.PacketError) as ei:
        fn(pkt)
    assert ei.value.status == status
    assert type(ei.value) is EXC[status], (status, type(ei.value))
    assert isinstance(ei.value, ValueError)
    return None


def batch_statuses(sa, pkts, direction="decap", **kw) -> list:
    b = S.batch_of(pkts, **kw)
    n = b.decap(sa) if direction == "decap" else b.encap(sa)
    st = [Status(x) for x in b.status]
    assert n == st.count(Status.OK)
    return st


def test_status_exception_table_is_complete():
    assert set(fp.STATUS_EXCEPTIONS) == set(Status) - {Status.OK}
    for s, cls in EXC.items():
        assert fp.STATUS_EXCEPTIONS[s] is cls
        assert fp.status_name(s) == s.name
        assert fp.status_description(s)
    fp.raise_for_status(Status.OK)
    with pytest.raises(fp.IntegrityError):
        fp.raise_for_status(Status.ICV_FAIL)


# =======================================================================================
# truncation


@pytest.mark.parametrize("mode, udp", [("tunnel4", False), ("tunnel6", True), ("transport", False)])
@pytest.mark.parametrize("t", CORE)
def test_truncated_prefixes_ip_framing(t, mode, udp):
    """Every proper prefix of a valid packet: the outer IP length says it is cut short."""
    tx, rx = S.make_pair(t, mode, udp=udp)
    inner = S.inner6(45) if mode == "tunnel6" else S.inner4(45)
    pkt = tx.encap(inner)
    prefixes = [pkt[:n] for n in range(len(pkt))]
    for p in prefixes:
        expect_single(rx, p, Status.TRUNCATED)
    assert batch_statuses(rx, prefixes) == [Status.TRUNCATED] * len(prefixes)
    assert rx.counters()["in"]["TRUNCATED"] == 2 * len(prefixes)
    assert rx.replay_top == 0
    assert rx.decap(pkt) == inner


def _esp_prefix_status(t, n):
    if n < 8 + t.iv_len + t.icv_len + 2:
        return Status.TRUNCATED
    body = n - 8 - t.iv_len - t.icv_len
    if t.cipher in S.CBC and body % t.block:
        return Status.BAD_LENGTH
    return Status.ICV_FAIL


@pytest.mark.parametrize("t", ALL_T)
def test_truncated_prefixes_esp(t):
    """Prefixes behind a consistent outer header (framing ESP, and IPv4 with its length
    fixed): too short for header, IV, trailer and ICV -> TRUNCATED; a CBC body off the
    block -> BAD_LENGTH; otherwise the ICV (whatever the cut left there) fails."""
    tx, rx = S.make_pair(t, "esp")
    _, rx4 = S.make_pair(t, "tunnel4")
    pkt = tx.encap(S.inner4(45))
    want = [_esp_prefix_status(t, n) for n in range(len(pkt))]
    got_single = [S.status_of(rx.decap, pkt[:n]) for n in range(len(pkt))]
    assert got_single == want
    assert batch_statuses(rx, [pkt[:n] for n in range(len(pkt))]) == want
    wrapped = [S.wrap4(pkt[:n]) for n in range(len(pkt))]
    assert [S.status_of(rx4.decap, p) for p in wrapped] == want
    assert batch_statuses(rx4, wrapped) == want
    assert rx.replay_top == rx4.replay_top == 0
    cnt = rx.counters()["in"]
    for st in set(want):
        assert cnt[st.name] == 2 * want.count(st)
    assert rx.decap(pkt) == S.inner4(45)


# =======================================================================================
# header-level refusals (before any crypto)


def _ipv4_with(pkt: bytes, **fields) -> bytes:
    h = bytearray(pkt[:20])
    if "flags_frag" in fields:
        h[6:8] = struct.pack("!H", fields["flags_frag"])
    if "proto" in fields:
        h[9] = fields["proto"]
    if "ver_ihl" in fields:
        h[0] = fields["ver_ihl"]
    if "total" in fields:
        h[2:4] = struct.pack("!H", fields["total"])
    h[10:12] = b"\0\0"
    h[10:12] = struct.pack("!H", S.csum(bytes(h)))
    return bytes(h) + pkt[20:]


@pytest.mark.parametrize("t", CORE)
def test_outer_header_refusals(t):
    tx, rx = S.make_pair(t, "tunnel4")
    tx6, rx6 = S.make_pair(t, "tunnel6")
    txu, rxu = S.make_pair(t, "tunnel4", udp=True)
    inner = S.inner4(30)
    good, good6, goodu = tx.encap(inner), tx6.encap(inner), txu.encap(inner)
    esp6 = good6[40:]
    cases = [
        (rx, _ipv4_with(good, flags_frag=0x2000), Status.FRAGMENT),            # MF
        (rx, _ipv4_with(good, flags_frag=0x0001), Status.FRAGMENT),            # offset 8
        (rx, _ipv4_with(good, flags_frag=0x4000), Status.OK),                  # DF is fine
        (rx, _ipv4_with(good, proto=6), Status.NOT_ESP),
        (rx, _ipv4_with(good, proto=17), Status.NOT_ESP),
        (rx, _ipv4_with(good, ver_ihl=0x44), Status.BAD_IP_HEADER),            # IHL 4
        (rx, _ipv4_with(good, ver_ihl=0x55), Status.BAD_IP_HEADER),            # version 5
        (rx, _ipv4_with(good, total=19), Status.BAD_IP_HEADER),                # shorter than IHL
        (rx, b"\x00" + good[1:], Status.BAD_IP_HEADER),                        # version 0
        (rx6, S.ipv6_header(len(esp6) + 8, 44, S.OUT6_SRC, S.OUT6_DST)
         + bytes([50, 0, 0, 1, 0, 0, 0, 1]) + esp6, Status.FRAGMENT),          # fragment header
        (rx6, S.ipv6_header(len(esp6) + 16, 0, S.OUT6_SRC, S.OUT6_DST)
         + bytes([44, 0, 1, 4, 0, 0, 0, 0]) + bytes([50, 0, 0, 0, 0, 0, 0, 1]) + esp6, Status.FRAGMENT),
        (rx6, S.ipv6_header(len(esp6), 6, S.OUT6_SRC, S.OUT6_DST) + esp6, Status.NOT_ESP),
        (rx6, S.ipv6_header(8, 0, S.OUT6_SRC, S.OUT6_DST) + bytes([50, 1, 1, 4, 0, 0, 0, 0]),
         Status.BAD_IP_HEADER),                                                # HBH runs past the payload
        (rx6, S.ipv6_header(len(esp6) + 8, 0, S.OUT6_SRC, S.OUT6_DST)
         + bytes([50, 0, 1, 4, 0, 0, 0, 0]) + esp6[:4] + b"\0\0\0\7" + esp6[8:], Status.ICV_FAIL),
        # UDP encapsulation
        (rxu, good, Status.NOT_ESP),                                           # plain ESP to a UDP SA
        (rxu, S.wrap4(goodu[28:], udp_ports=(4500, 4501)), Status.NOT_ESP),    # wrong destination port
        (rxu, S.wrap4(goodu[28:], udp_ports=(1234, 4500)), Status.OK),         # any source port (NAT)
        (rxu, S.wrap4(b"\xff", udp_ports=(4500, 4500)), Status.NAT_KEEPALIVE),
        (rxu, S.wrap4(b"\0\0\0\0" + b"IKE message", udp_ports=(4500, 4500)), Status.NOT_ESP),
        (rxu, S.wrap4(b"\0\0\0\0", udp_ports=(4500, 4500)), Status.NOT_ESP),
        (rxu, S.wrap4(b"\xff\xff", udp_ports=(4500, 4500)), Status.TRUNCATED),
        (rxu, goodu[:24] + struct.pack("!H", 7) + goodu[26:], Status.BAD_IP_HEADER),       # UDP length 7
        (rxu, goodu[:24] + struct.pack("!H", len(goodu) - 19) + goodu[26:], Status.BAD_IP_HEADER),
        (rxu, _ipv4_with(goodu[:28], total=27), Status.TRUNCATED),             # no room for UDP
        (rx, good[:20] + b"\0\0\x12\x35" + good[24:], Status.BAD_SPI),
        (rx, good[:20] + struct.pack("!I", 0x1234 ^ 0x80000000) + good[24:], Status.BAD_SPI),
    ]
    for i, (sa, pkt, want) in enumerate(cases):
        if want == Status.OK:
            continue
        got = S.status_of(sa.decap, pkt)
        assert got == want, f"case {i}: {got.name} != {want.name}"
        expect_single(sa, pkt, want)
    assert rx.replay_top == rx6.replay_top == rxu.replay_top == 0
    for sa in (rx, rx6, rxu):
        pk = [p for s_, p, w in cases if s_ is sa]
        ws = [w for s_, p, w in cases if s_ is sa]
        st = batch_statuses(sa, pk)
        # statuses other than the OK ones (whose sequence numbers may already be used) match
        assert [s for s, w in zip(st, ws) if w != Status.OK] == [w for w in ws if w != Status.OK]


def test_keepalive_on_a_udp_socket_sa():
    """Framing ESP with udp=True: the buffer is a UDP payload; 0xff is a keepalive and a
    zero marker is IKE, exactly as behind an IP/UDP header."""
    t = S.TRANSFORM_BY_NAME["aes128gcm16"]
    tx, rx = S.make_pair(t, "esp", udp=True)
    assert tx.headroom == 8 + 8                # no outer headers at all
    p = tx.encap(S.inner4(10))
    assert p[:4] == struct.pack("!I", 0x1234)
    expect_single(rx, b"\xff", Status.NAT_KEEPALIVE)
    expect_single(rx, b"\0\0\0\0IKE", Status.NOT_ESP)
    assert batch_statuses(rx, [b"\xff", p, b"\0\0\0\0IKE"]) == [Status.NAT_KEEPALIVE, Status.OK, Status.NOT_ESP]
    c = rx.counters()["in"]
    assert c["NAT_KEEPALIVE"] == 2 and c["NOT_ESP"] == 2 and c["packets"] == 1


# =======================================================================================
# integrity failures: refused, counted, and the packet left exactly as it came


def _mutations(pkt: bytes, esp_off: int, t) -> dict[str, bytes]:
    out = {}

    def flip(name, pos):
        b = bytearray(pkt)
        b[pos] ^= 0x01
        out[name] = bytes(b)

    flip("icv-last", len(pkt) - 1)
    flip("icv-first", len(pkt) - t.icv_len)
    flip("cipher-first", esp_off + 8 + t.iv_len)
    flip("cipher-last", len(pkt) - t.icv_len - 1)
    flip("seq", esp_off + 6)                    # seq + 256: still ahead of the window
    if t.iv_len:
        flip("iv", esp_off + 8)
    return out


@pytest.mark.parametrize("t, backend", t_b_params())
@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
def test_icv_fail_leaves_packet_as_it_came(t, backend, esn):
    """RFC 4303 3.4.4: a packet whose ICV does not verify is dropped. In place (batch), the
    kernel may already have decrypted it (AEAD, or the mb job API, which decrypts in the
    same pass): it must put the bytes back, exactly."""
    tx, rx = S.make_pair(t, "tunnel4", esn=esn, backend=backend, rx_extra={"backend": backend})
    good = [tx.encap(S.inner4(40 + i, seed=i)) for i in range(12)]
    muts = []
    for i, g in enumerate(good[:6]):
        muts += list(_mutations(g, 20, t).values())
    # interleave forged and genuine packets so that chunks mix both
    pkts, want = [], []
    for i, m in enumerate(muts):
        pkts.append(m)
        want.append(Status.ICV_FAIL)
        if i % 3 == 0 and good[6:]:
            pkts.append(good.pop(6))
            want.append(Status.OK)
    b = S.batch_of(pkts)
    offs, lens = list(b.offsets[:len(pkts)]), list(b.lengths[:len(pkts)])
    b.decap(rx)
    assert [Status(x) for x in b.status] == want
    for i, w in enumerate(want):
        if w == Status.ICV_FAIL:
            assert (b.offsets[i], b.lengths[i]) == (offs[i], lens[i])
            assert bytes(b.packet(i)) == pkts[i], f"packet {i} changed in place"
    # single calls: IntegrityError, window untouched by the forgeries
    top = rx.replay_top
    for m in muts:
        expect_single(rx, m, Status.ICV_FAIL)
    assert rx.replay_top == top
    assert rx.counters()["in"]["ICV_FAIL"] == 2 * len(muts)
    # with verify=False the ICV is not checked at all
    rx2 = S.make_sa(t, "tunnel4", esn=esn, backend=backend)
    icv_mut = _mutations(good[0], 20, t)["icv-last"]
    assert rx2.decap(icv_mut, verify=False) == S.inner4(40, seed=0)


@pytest.mark.parametrize("t, backend", t_b_params(S.CORE))
def test_icv_fail_in_big_batches(t, backend):
    """The same in-place guarantee across several chunks (64 packets each) and the nogil path."""
    tx, rx = S.make_pair(t, "tunnel6", udp=True, backend=backend, rx_extra={"backend": backend})
    pkts, want = [], []
    for i in range(200):
        p = tx.encap(S.inner6(i % 90, seed=i))
        if i % 7 == 3:
            b = bytearray(p)
            b[-1 - (i % t.icv_len)] ^= 0x40
            p = bytes(b)
            want.append(Status.ICV_FAIL)
        else:
            want.append(Status.OK)
        pkts.append(p)
    b = S.batch_of(pkts)
    assert b.decap(rx) == want.count(Status.OK)
    assert [Status(x) for x in b.status] == want
    for i, w in enumerate(want):
        got = bytes(b.packet(i))
        assert got == (pkts[i] if w == Status.ICV_FAIL else S.inner6(i % 90, seed=i))


# =======================================================================================
# inside the cipher region: padding, next header, dummy packets


SEALABLE = [pytest.param(t, id=t.name) for t in S.TRANSFORMS]


def _decap_both(t, region, mode="tunnel4", seq=1, **kw):
    """(single-call status, batch status, the single-call SA, the packet) for a sealed region."""
    esp = S.seal(t, 0, 0x1234, seq, region)
    pkt = esp if mode == "esp" else S.wrap4(esp)
    rx1 = S.make_sa(t, mode, **kw)
    rx2 = S.make_sa(t, mode, **kw)
    st1 = S.status_of(rx1.decap, pkt)
    st2 = batch_statuses(rx2, [pkt])[0]
    return st1, st2, rx1, pkt


@pytest.mark.parametrize("t", SEALABLE)
def test_independently_sealed_packet_opens(t):
    inner = S.inner4(50)
    st1, st2, rx, pkt = _decap_both(t, S.region_for(t, inner, 4))
    assert st1 == st2 == Status.OK
    rx2 = S.make_sa(t, "tunnel4")
    assert rx2.decap(pkt) == inner


@pytest.mark.parametrize("t", SEALABLE)
def test_bad_padding(t):
    inner = S.inner4(49)
    n = -(len(inner) + 2) % t.block or t.block    # at least one pad byte
    good_pad = bytes(range(1, n + 1))
    bad = [
        S.region_for(t, inner, 4, pad=good_pad[:-1] + bytes([good_pad[-1] + 1])),   # 1, 2, ..., n+1
        S.region_for(t, inner, 4, pad=bytes([0]) + good_pad[1:]),                    # 0, 2, 3, ...
        S.region_for(t, inner, 4, pad=bytes(n)),                                     # zeros
    ]
    # a pad length longer than everything in front of it
    region = S.region_for(t, inner, 4)
    bad.append(region[:-2] + bytes([len(region) - 1, 4]))
    bad.append(region[:-2] + bytes([255, 4]))
    for r in bad:
        assert len(r) % t.block == 0
        st1, st2, rx, pkt = _decap_both(t, r)
        assert st1 == st2 == Status.BAD_PADDING
        expect_single(S.make_sa(t, "tunnel4"), pkt, Status.BAD_PADDING)
        # authenticated, so the window moved (RFC 4303 3.4.3: update after the ICV verified)
        assert rx.replay_top == 1


@pytest.mark.parametrize("t", SEALABLE)
def test_bad_next_header_tunnel(t):
    v4, v6 = S.inner4(40), S.inner6(40)
    bad_v4_len = v4[:2] + struct.pack("!H", len(v4) + 1) + v4[4:]
    bad_v4_ihl = bytes([0x44]) + v4[1:]
    bad_v6_len = v6[:4] + struct.pack("!H", len(v6)) + v6[6:]
    cases = [
        S.region_for(t, v4, 6),          # TCP is no inner packet
        S.region_for(t, v4, 17),
        S.region_for(t, v4, 41),         # says IPv6, holds IPv4
        S.region_for(t, v6, 4),          # says IPv4, holds IPv6
        S.region_for(t, bad_v4_len, 4),  # inner total length past the payload
        S.region_for(t, bad_v4_ihl, 4),
        S.region_for(t, bad_v6_len, 41),
        S.region_for(t, b"", 4),         # nothing at all
        S.region_for(t, v4[:19], 4),
    ]
    for r in cases:
        st1, st2, _, pkt = _decap_both(t, r)
        assert st1 == st2 == Status.BAD_NEXT_HEADER, r[-1]
        expect_single(S.make_sa(t, "tunnel4"), pkt, Status.BAD_NEXT_HEADER)


@pytest.mark.parametrize("t", SEALABLE)
def test_dummy_packets(t):
    """RFC 4303 2.6: next header 59 marks a dummy packet, authenticated and dropped."""
    for mode in ("tunnel4", "esp", "transport"):
        for payload in (b"", S.payload_bytes(33)):
            region = S.region_for(t, payload, 59)
            st1, st2, rx, pkt = _decap_both(t, region, mode)
            assert st1 == st2 == Status.DUMMY
            assert rx.replay_top == 1
            expect_single(rx, pkt, Status.REPLAY)
            assert rx.counters()["in"]["DUMMY"] == 1
            assert rx.counters()["in"]["packets"] == 0


@pytest.mark.parametrize("t", SEALABLE)
def test_transport_takes_any_next_header(t):
    seg = S.udp(S.payload_bytes(20))
    for nh in (6, 17, 1, 4, 41, 200):
        esp = S.seal(t, 0, 0x1234, 1, S.region_for(t, seg, nh))
        rx = S.make_sa(t, "transport")
        out = rx.decap(S.wrap4(esp))
        assert out[9] == nh and out[20:] == seg and S.ipv4_checksum_ok(out)
        rx6 = S.make_sa(t, "transport")
        out6 = rx6.decap(S.wrap6(esp))
        assert out6[6] == nh and out6[40:] == seg
        assert struct.unpack("!H", out6[4:6])[0] == len(seg)


@pytest.mark.parametrize("t", [pytest.param(t, id=t.name) for t in S.TRANSFORMS if t.cipher in S.CBC])
def test_cbc_length_not_a_block_multiple(t):
    tx, rx = S.make_pair(t, "tunnel4")
    good = tx.encap(S.inner4(40))
    esp = good[20:]
    for delta in (1, 3, t.block - 1, -1, -(t.block // 2)):
        if delta > 0:
            bad = esp[:-t.icv_len] + bytes(delta) + esp[-t.icv_len:]
        else:
            bad = esp[:-t.icv_len + delta] + esp[-t.icv_len:]
        pkt = S.wrap4(bad)
        expect_single(rx, pkt, Status.BAD_LENGTH)
        assert batch_statuses(rx, [pkt]) == [Status.BAD_LENGTH]
    assert rx.counters()["in"]["BAD_LENGTH"] == 10
    assert rx.counters()["in"]["ICV_FAIL"] == 0     # refused before any crypto
    assert rx.decap(good) == S.inner4(40)


# =======================================================================================
# ECN (RFC 6040 section 4.2)


def _ecn_case(t, mode, inner_fam, inner_ecn, outer_ecn):
    tx, rx = S.make_pair(t, mode)
    rxb = S.make_sa(t, mode)
    inner = S.inner4(30) if inner_fam == 4 else S.inner6(30)
    inner = S.set_ecn4(inner, inner_ecn) if inner_fam == 4 else S.set_ecn6(inner, inner_ecn)
    out = tx.encap(inner)
    assert S.get_ecn(out) == inner_ecn                 # normal mode: copied on the way in
    out = S.set_ecn4(out, outer_ecn) if mode == "tunnel4" else S.set_ecn6(out, outer_ecn)
    return inner, rx, rxb, out


ECN_TABLE = [
    # (inner, outer, result) -- RFC 6040 Figure 4
    (0, 0, 0), (0, 1, 0), (0, 2, 0), (0, 3, None),
    (1, 0, 1), (1, 1, 1), (1, 2, 1), (1, 3, 3),
    (2, 0, 2), (2, 1, 1), (2, 2, 2), (2, 3, 3),
    (3, 0, 3), (3, 1, 3), (3, 2, 3), (3, 3, 3),
]


@pytest.mark.parametrize("mode, fam", [("tunnel4", 4), ("tunnel4", 6), ("tunnel6", 4), ("tunnel6", 6)])
@pytest.mark.parametrize("inner_ecn, outer_ecn, result", ECN_TABLE)
def test_ecn_decapsulation(mode, fam, inner_ecn, outer_ecn, result):
    t = S.TRANSFORM_BY_NAME["aes128gcm16"]
    inner, rx, rxb, out = _ecn_case(t, mode, fam, inner_ecn, outer_ecn)
    if result is None:
        expect_single(rx, out, Status.ECN_DROP)
        assert batch_statuses(rxb, [out]) == [Status.ECN_DROP]
        assert rx.counters()["in"]["ECN_DROP"] == 1
        return
    want = S.set_ecn4(inner, result) if fam == 4 else S.set_ecn6(inner, result)
    got = rx.decap(out)
    assert got == want
    assert S.get_ecn(got) == result
    if fam == 4:
        assert S.ipv4_checksum_ok(got)
    b = S.batch_of([out])
    assert b.decap(rxb) == 1 and bytes(b.packet(0)) == want


# =======================================================================================
# outbound refusals


@pytest.mark.parametrize("t", CORE)
def test_bad_inner_packets(t):
    tx4 = S.make_sa(t, "tunnel4")
    txt = S.make_sa(t, "transport")
    v4, v6 = S.inner4(30), S.inner6(30)
    frag4 = S.ipv4_header(38, 17, flags_frag=0x2000) + v4[20:]
    frag6 = S.ipv6_header(8 + 38, 44) + bytes([17, 0, 0, 0, 0, 0, 0, 1]) + v6[40:]
    cases = [
        (tx4, b"", Status.BAD_INNER),
        (tx4, b"\x45", Status.BAD_INNER),
        (tx4, b"hello, world, this is not IP", Status.BAD_INNER),
        (tx4, v4[:2] + struct.pack("!H", len(v4) + 1) + v4[4:], Status.BAD_INNER),  # longer than given
        (tx4, bytes([0x44]) + v4[1:], Status.BAD_INNER),
        (tx4, v6[:4] + struct.pack("!H", 31 + 8 + 1) + v6[6:], Status.BAD_INNER),
        (tx4, v6[:39], Status.BAD_INNER),
        (txt, frag4, Status.BAD_INNER),                                             # RFC 4301 7
        (txt, frag6, Status.BAD_INNER),
        (txt, b"\x60" + bytes(38), Status.BAD_INNER),
    ]
    for sa, pkt, want in cases:
        expect_single(sa, pkt, want, direction="encap")
    assert tx4.seq_out == txt.seq_out == 0          # no sequence number spent on refusals
    sts = batch_statuses(tx4, [c[1] for c in cases if c[0] is tx4] + [v4], direction="encap")
    assert sts == [Status.BAD_INNER] * 7 + [Status.OK]
    assert tx4.seq_out == 1
    assert tx4.counters()["out"]["BAD_INNER"] == 14
    # trailing bytes after the inner packet (Ethernet padding) are not protected
    tx, rx = S.make_pair(t, "tunnel4")
    assert rx.decap(tx.encap(v4 + b"\0" * 6)) == v4


def test_oversize():
    t = S.TRANSFORM_BY_NAME["aes128gcm16"]
    tx, rx = S.make_pair(t, "tunnel4")
    big = S.inner4(65535 - 28)                       # an IPv4 packet of 65535 bytes
    expect_single(tx, big, Status.OVERSIZE, direction="encap")
    assert tx.seq_out == 0
    ok = S.inner4(65535 - 28 - tx.overhead(65535) - 8)
    assert rx.decap(tx.encap(ok)) == ok
    tx6, rx6 = S.make_pair(t, "tunnel6")
    expect_single(tx6, S.inner6(65535 - 40 - 8), Status.OVERSIZE, direction="encap")
    fits6 = S.inner6(65535 - 40 - 8 - 60)            # IPv6 payload length limit, not total length
    assert rx6.decap(tx6.encap(fits6)) == fits6


@pytest.mark.parametrize("t", CORE)
def test_output_buffer_too_small(t):
    tx, rx = S.make_pair(t, "tunnel6", udp=True)
    p = S.inner4(100)
    need = len(p) + tx.overhead(len(p))
    out = bytearray(need - 1)
    with pytest.raises(fp.BufferTooSmall) as ei:
        tx.encap_into(p, out)
    assert ei.value.status == Status.NO_ROOM
    assert tx.seq_out == 0
    with pytest.raises(fp.BufferTooSmall):
        tx.encap_into(p, bytearray(0))
    e = tx.encap(p)
    with pytest.raises(fp.BufferTooSmall):
        rx.decap_into(e, bytearray(len(p) - 1))
    with pytest.raises(fp.BufferTooSmall):
        rx.decap_into(e, bytearray(0))
    assert rx.replay_top == 0
    assert rx.counters()["in"]["NO_ROOM"] == 2
    assert tx.counters()["out"]["NO_ROOM"] == 2
    assert rx.decap(e) == p


@pytest.mark.parametrize("t", CORE)
def test_batch_without_room(t):
    tx = S.make_sa(t, "tunnel6", udp=True)
    p = S.inner4(100)
    # headroom below what the SA writes in front
    b = S.batch_of([p, p], stride=1024, headroom=tx.headroom - 1)
    before = bytes(b.buffer)
    assert b.encap(tx) == 0
    assert list(b.status) == [Status.NO_ROOM] * 2
    assert bytes(b.buffer) == before
    # the result starts at the slot's start; a slot one byte short of it has no tailroom
    need = len(p) + tx.overhead(len(p))
    b = S.batch_of([p, p], stride=need - 1, headroom=tx.headroom)
    before = bytes(b.buffer)
    assert b.encap(tx) == 0
    assert list(b.status) == [Status.NO_ROOM] * 2
    assert bytes(b.buffer) == before
    # exactly enough
    b = S.batch_of([p, p], stride=need, headroom=tx.headroom)
    assert b.encap(tx) == 2
    assert tx.seq_out == 2
    assert tx.counters()["out"]["NO_ROOM"] == 4


def test_sequence_exhaustion_32():
    t = S.TRANSFORM_BY_NAME["aes128gcm16"]
    tx, rx = S.make_pair(t, "tunnel4", seq_out=2**32 - 2)
    assert not tx.seq_exhausted
    p = S.inner4(10)
    e = tx.encap(p)
    assert S.esp_seq(e) == 2**32 - 1
    assert tx.seq_exhausted and tx.seq_out == 2**32 - 1
    expect_single(tx, p, Status.SEQ_EXHAUSTED, direction="encap")
    with pytest.raises(fp.SequenceExhausted):
        tx.encap_into(p, bytearray(2000))
    assert batch_statuses(tx, [p] * 3, direction="encap") == [Status.SEQ_EXHAUSTED] * 3
    assert tx.seq_out == 2**32 - 1
    assert tx.counters()["out"]["SEQ_EXHAUSTED"] == 5
    assert rx.decap(e) == p
    # a batch that runs out midway
    tx = S.make_sa(t, "tunnel4", seq_out=2**32 - 3)
    assert batch_statuses(tx, [p] * 4, direction="encap") == [Status.OK, Status.OK] + [Status.SEQ_EXHAUSTED] * 2


def test_sequence_exhaustion_esn():
    t = S.TRANSFORM_BY_NAME["aes128cbc-sha1"]
    tx = S.make_sa(t, "tunnel4", esn=True, seq_out=2**32 - 1)
    assert not tx.seq_exhausted
    e = tx.encap(S.inner4(5))
    assert S.esp_seq(e) == 0 and tx.seq_out == 2**32       # ESN: 2^32 is just the next number
    tx = S.make_sa(t, "tunnel4", esn=True, seq_out=2**64 - 2)
    tx.encap(S.inner4(5))
    assert tx.seq_exhausted
    expect_single(tx, S.inner4(5), Status.SEQ_EXHAUSTED, direction="encap")


@pytest.mark.parametrize("t", CORE)
def test_closed_sa(t):
    tx, rx = S.make_pair(t, "tunnel4")
    p = S.inner4(10)
    e = tx.encap(p)
    tx.close()
    rx.close()
    assert tx.closed and rx.closed
    tx.close()                                      # idempotent
    expect_single(tx, p, Status.SA_DEAD, direction="encap")
    expect_single(rx, e, Status.SA_DEAD)
    with pytest.raises(fp.SAClosedError):
        tx.encap_into(p, bytearray(1000))
    with pytest.raises(fp.SAClosedError):
        rx.decap_into(e, bytearray(1000))
    b = S.batch_of([p] * 9)
    assert b.encap(tx) == 0 and list(b.status) == [Status.SA_DEAD] * 9
    b = S.batch_of([e] * 3)
    before = bytes(b.buffer)
    assert b.decap(rx) == 0 and list(b.status) == [Status.SA_DEAD] * 3
    assert bytes(b.buffer) == before
    tx.counters()
    rx.counters()


# =======================================================================================
# construction errors name the problem


KEY_ERRORS = [
    (dict(cipher=C.CIPHER_AES_CBC, integ=2, enc_key=bytes(15), auth_key=bytes(20)), ["AES_CBC", "15"]),
    (dict(cipher=C.CIPHER_AES_CBC, integ=2, enc_key=bytes(16), auth_key=bytes(19)), ["SHA1", "20", "19"]),
    (dict(cipher=C.CIPHER_AES_CBC, integ=5, enc_key=bytes(16), auth_key=bytes(32)), ["SHA512", "64", "32"]),
    (dict(cipher=C.CIPHER_3DES_CBC, integ=1, enc_key=bytes(16), auth_key=bytes(16)), ["3DES", "24", "16"]),
    (dict(cipher=C.CIPHER_DES_CBC, integ=1, enc_key=bytes(24), auth_key=bytes(16)), ["DES", "8"]),
    (dict(cipher=C.CIPHER_AES_GCM, icv_len=16, enc_key=bytes(16)), ["AES_GCM", "20"]),
    (dict(cipher=C.CIPHER_AES_GCM, icv_len=16, enc_key=bytes(3)), ["salt"]),
    (dict(cipher=C.CIPHER_AES_GCM, icv_len=4, enc_key=bytes(20)), ["ICV", "4"]),
    (dict(cipher=C.CIPHER_AES_GCM, icv_len=16, integ=2, enc_key=bytes(20), auth_key=bytes(20)), ["AEAD"]),
    (dict(cipher=C.CIPHER_AES_GMAC, icv_len=8, enc_key=bytes(20)), ["GMAC", "16"]),
    (dict(cipher=C.CIPHER_CHACHA20_POLY1305, icv_len=16, enc_key=bytes(32)), ["CHACHA20", "36"]),
    (dict(cipher=C.CIPHER_CHACHA20_POLY1305, icv_len=12, enc_key=bytes(36)), ["16"]),
    (dict(cipher=C.CIPHER_AES_CTR, integ=2, enc_key=bytes(16), auth_key=bytes(20)), ["AES_CTR", "20", "16"]),
    (dict(cipher=C.CIPHER_AES_CBC, integ=0, enc_key=bytes(16)), ["integrity"]),
    (dict(cipher=C.CIPHER_NULL, integ=0), ["integrity"]),
    (dict(cipher=C.CIPHER_NULL, integ=2, enc_key=bytes(1), auth_key=bytes(20)), ["NULL", "0"]),
    (dict(cipher=C.CIPHER_AES_CBC, integ=2, icv_len=16, enc_key=bytes(16), auth_key=bytes(20)), ["12", "16"]),
    (dict(cipher=99, integ=2, enc_key=bytes(16), auth_key=bytes(20)), ["cipher", "99"]),
    (dict(cipher=C.CIPHER_AES_CBC, integ=9, enc_key=bytes(16), auth_key=bytes(20)), ["integrity", "9"]),
    (dict(cipher=C.CIPHER_AES_CBC, integ=2, enc_key=bytes(16), auth_key=bytes(20), implicit_iv=True), ["implicit"]),
    (dict(cipher=C.CIPHER_AES_GMAC, icv_len=16, enc_key=bytes(20), implicit_iv=True), ["implicit"]),
]


@pytest.mark.parametrize("kw, words", KEY_ERRORS, ids=[f"e{i}" for i in range(len(KEY_ERRORS))])
def test_construction_errors_name_the_problem(kw, words):
    with pytest.raises(ValueError) as ei:
        fp.SAState(spi=0x1234, mode=fp.TRANSPORT, **kw)
    msg = str(ei.value)
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("kw, words", [
    (dict(spi=255), ["SPI", "reserved"]),
    (dict(spi=0), ["reserved"]),
    (dict(mode=7), ["mode"]),
    (dict(framing=9), ["framing"]),
    (dict(mode=fp.TRANSPORT, framing=fp.ESP), ["transport"]),
    (dict(src=None), ["src"]),
    (dict(src=bytes(4), dst=bytes(16)), ["IPv4", "IPv6"]),
    (dict(src=bytes(5), dst=bytes(5)), ["4 bytes"]),
    (dict(tfc_pad=70000), ["tfc_pad"]),
    (dict(mode=fp.TRANSPORT, tfc_pad=10), ["TFC", "tunnel"]),
    (dict(df=5), ["df"]),
    (dict(dscp=64), ["dscp"]),
    (dict(ttl=0), ["ttl"]),
    (dict(ttl=256), ["ttl"]),
    (dict(udp=True, sport=0), ["port"]),
    (dict(udp=True, dport=70000), ["port"]),
    (dict(seq_out=2**32), ["seq_out"]),
    (dict(backend=2, cipher=C.CIPHER_AES_GMAC), ["GMAC"]),
], ids=lambda x: "-".join(f"{k}" for k in x) if isinstance(x, dict) else None)
def test_parameter_errors_name_the_problem(kw, words):
    base = dict(spi=0x1234, cipher=C.CIPHER_AES_GCM, icv_len=16, enc_key=bytes(20), mode=fp.TUNNEL,
                src=bytes(4), dst=bytes(4))
    base.update(kw)
    if "ipsecmb" not in fp.backends() and kw.get("backend") == 2:
        words = ["intel-ipsec-mb"]
    with pytest.raises(ValueError) as ei:
        fp.SAState(**base)
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))


def test_init_twice_is_refused():
    sa = S.make_sa(S.TRANSFORM_BY_NAME["aes128gcm16"])
    with pytest.raises(RuntimeError):
        sa.__init__(**S.sa_kwargs(S.TRANSFORM_BY_NAME["aes128gcm16"]))


# =======================================================================================
# buffers


def test_read_only_and_non_contiguous_buffers():
    t = S.TRANSFORM_BY_NAME["aes128gcm16"]
    tx, rx = S.make_pair(t, "tunnel4")
    p = S.inner4(20)
    e = tx.encap(p)
    with pytest.raises(BufferError):
        tx.encap_into(p, bytes(1000))
    with pytest.raises(BufferError):
        rx.decap_into(e, bytes(1000))
    with pytest.raises(TypeError):
        tx.encap_into(p, 1000)
    with pytest.raises(TypeError):
        tx.encap(12345)
    nc_out = memoryview(bytearray(4000))[::2]
    with pytest.raises(BufferError):
        tx.encap_into(p, nc_out)
    with pytest.raises(BufferError):
        rx.decap_into(e, nc_out)
    nc_p = memoryview(bytearray(p * 2))[::2]
    assert bytes(nc_p) != p
    with pytest.raises(BufferError):
        tx.encap(nc_p)
    with pytest.raises(BufferError):
        tx.encap_into(nc_p, bytearray(1000))
    assert tx.seq_out == 1
    assert rx.decap(e) == p
    # other buffer types are fine
    assert rx.decap(bytearray(tx.encap(memoryview(p)))) == p
    assert rx.decap(memoryview(tx.encap(array("B", p)))) == p


def test_decap_refuses_non_contiguous_input_with_buffer_error():
    """Regression: at commit 060f2c4 SAState.decap() raised TypeError for a non-contiguous
    buffer ('memoryview: casts are restricted to C-contiguous views', from
    len(memoryview(packet).cast("B")) in sa.pyx) where encap(), encap_into() and
    decap_into() all raise BufferError. Reproducer: sa.decap(memoryview(bytearray(200))[::2])."""
    t = S.TRANSFORM_BY_NAME["aes128gcm16"]
    tx, rx = S.make_pair(t, "tunnel4")
    e = tx.encap(S.inner4(20))
    nc = memoryview(bytearray(e * 2))[::2]
    with pytest.raises(BufferError):
        rx.decap_into(nc, bytearray(1000))
    with pytest.raises(BufferError):
        rx.decap(nc)


def test_batch_buffer_errors():
    t = S.TRANSFORM_BY_NAME["aes128gcm16"]
    tx = S.make_sa(t, "tunnel4")
    offs, lens, st = array("q", [128]), array("I", [28]), array("B", [0])
    with pytest.raises(BufferError):
        tx.encap_batch(bytes(2048), offs, lens, st, 2048)
    with pytest.raises(BufferError):
        tx.encap_batch(memoryview(bytearray(4096))[::2], offs, lens, st, 2048)
    with pytest.raises(BufferError):
        tx.decap_batch(bytes(2048), offs, lens, st)
    with pytest.raises(ValueError):
        tx.encap_batch(bytearray(2048), array("i", [128]), lens, st, 2048)
    with pytest.raises(ValueError):
        tx.encap_batch(bytearray(2048), offs, array("H", [28]), st, 2048)
    with pytest.raises(ValueError):
        tx.encap_batch(bytearray(2048), offs, lens, array("B"), 2048)      # status too short
    with pytest.raises(ValueError):
        tx.encap_batch(bytearray(2048), offs, array("I", [28, 28]), array("B", [0, 0]), 2048)
    with pytest.raises(ValueError):
        tx.encap_batch(bytearray(2048), offs, lens, st, 0)
    with pytest.raises(TypeError):
        tx.encap_batch(None, offs, lens, st, 2048)
    assert tx.seq_out == 0


# =======================================================================================
# counters: every status counted once per packet


def test_counters_count_each_packet_once():
    t = S.TRANSFORM_BY_NAME["aes128cbc-sha1"]
    tx, rx = S.make_pair(t, "tunnel4")
    pkts = [S.inner4(10 * i) for i in range(6)]
    outs = [tx.encap(p) for p in pkts]
    c0 = rx.counters()
    assert set(c0) == {"out", "in"}
    assert set(c0["in"]) == {"packets", "bytes"} | {s.name for s in Status if s != Status.OK}
    forged = outs[5][:-1] + bytes([outs[5][-1] ^ 1])
    batch = [outs[0], outs[1], outs[0], forged, outs[2][:30], b"", outs[3][:20] + b"\0\0\0\1" + outs[3][24:],
             _ipv4_with(outs[4], flags_frag=0x2000)]
    want = [Status.OK, Status.OK, Status.REPLAY, Status.ICV_FAIL, Status.TRUNCATED, Status.TRUNCATED,
            Status.BAD_SPI, Status.FRAGMENT]
    assert batch_statuses(rx, batch) == want
    for p in (outs[0], forged, outs[3]):
        S.status_of(rx.decap, p)
    d = S.counters_delta(c0, rx.counters())
    assert d["out"] == {}
    assert d["in"] == {"packets": 3, "bytes": len(pkts[0]) + len(pkts[1]) + len(pkts[3]),
                       "REPLAY": 2, "ICV_FAIL": 2, "TRUNCATED": 2, "BAD_SPI": 1, "FRAGMENT": 1}
    c = tx.counters()["out"]
    assert c["packets"] == 6 and c["bytes"] == sum(map(len, pkts))
    assert all(v == 0 for k, v in c.items() if k not in ("packets", "bytes"))


# =======================================================================================
# the input of a single-packet decap is read-only


_RO_SCRIPT = r"""
import mmap, sys, tempfile
import fp_support as S
name, backend, esn = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
t = S.TRANSFORM_BY_NAME[name]
tx, rx = S.make_pair(t, "tunnel4", backend=backend, esn=esn, rx_extra={"backend": backend})
inner = S.inner4(50)
e = tx.encap(inner)
with tempfile.TemporaryFile() as f:
    f.write(e)
    f.flush()
    mm = mmap.mmap(f.fileno(), len(e), prot=mmap.PROT_READ)
    out = bytearray(len(e))
    n = rx.decap_into(mm, out)
    assert bytes(out[:n]) == inner
    assert mm[:] == e
print("ok")
"""


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("t, backend", t_b_params([S.TRANSFORM_BY_NAME[n] for n in (
    "aes128cbc-sha1", "3des-sha1", "aes128gcm16", "chacha20poly1305")]))
def test_decap_reads_a_read_only_mapping(t, backend, esn):
    """decap_into takes the packet as a read-only buffer ("the input is never modified"):
    a PROT_READ mapping must work. Run in a subprocess, since a write would be SIGSEGV.

    Regression ([esn-*-ipsecmb], cipher+HMAC transforms): at commit 404d344, with
    backend=IPSECMB forced and ESN on, single-packet decap went through the job API, whose
    job_fill() stored the ESN high half into the *input* packet's ICV bytes: SIGSEGV on a
    read-only mapping (and an immutable bytes object modified behind Python's back).
    Reproducer: the script above with name=aes128cbc-sha1, backend=2, esn=1."""
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(fp.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, pkg_root]))
    # _support.py is importable as fp_support through a tiny shim module name
    script = "import importlib.util, sys\n" \
             f"spec = importlib.util.spec_from_file_location('fp_support', {os.path.join(here, '_support.py')!r})\n" \
             "m = importlib.util.module_from_spec(spec); sys.modules['fp_support'] = m; spec.loader.exec_module(m)\n" \
             + _RO_SCRIPT
    r = subprocess.run([sys.executable, "-c", script, t.name, str(backend), "1" if esn else "0"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])
