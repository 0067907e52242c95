"""Outer header fields (RFC 4301 5.1.2, RFC 6040, RFC 3948, RFC 8200), checked with scapy's
own parser and checksum code: lengths, checksums, DF, DSCP, ECN, TTL / hop limit,
identification, UDP encapsulation, and transport mode's kept headers (IPv4 options, IPv6
hop-by-hop / routing headers in front of ESP).
"""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, in6_chksum
from scapy.layers.ipsec import ESP
from scapy.packet import raw

import fastpath as fp
import fp_support as S

T = S.TRANSFORM_BY_NAME["aes128gcm16"]
T_CBC = S.TRANSFORM_BY_NAME["aes128cbc-sha1"]
TS = [pytest.param(T, id="gcm"), pytest.param(T_CBC, id="cbc")]


def ip4_checksum_ok_scapy(pkt: bytes) -> bool:
    p = IP(pkt)
    q = p.copy()
    del q.chksum
    return IP(raw(q)).chksum == p.chksum


def udp6_checksum_ok_scapy(pkt: bytes) -> bool:
    p = IPv6(pkt)
    u = p[UDP]
    want = in6_chksum(17, u.underlayer, raw(u)[:6] + b"\0\0" + raw(u)[8:])
    return u.chksum == (want or 0xFFFF)


# =======================================================================================
# IPv4 outer header


@pytest.mark.parametrize("t", TS)
@pytest.mark.parametrize("udp", [False, True])
def test_ipv4_outer_header(t, udp):
    tx, rx = S.make_pair(t, "tunnel4", udp=udp, ttl=77)
    inner = S.inner4(123, ttl=9, tos=0)
    outs = [tx.encap(inner) for _ in range(3)]
    ids = []
    for out in outs:
        p = IP(out)
        assert p.version == 4 and p.ihl == 5
        assert p.len == len(out)
        assert ip4_checksum_ok_scapy(out) and S.ipv4_checksum_ok(out)
        assert p.ttl == 77
        assert p.proto == (17 if udp else 50)
        assert p.src == "192.0.2.1" and p.dst == "198.51.100.1"
        assert p.frag == 0 and not (p.flags & 1)            # MF clear, no offset
        ids.append(p.id)
        if udp:
            u = p[UDP]
            assert (u.sport, u.dport) == (4500, 4500)
            assert u.len == len(out) - 20
            assert u.chksum == 0                            # RFC 3948 2.1: zero over IPv4
        assert raw(p[ESP])[:4] == struct.pack("!I", 0x1234)
        assert rx.decap(out) == inner                       # the inner TTL is not touched
    # identification: per SA, one per packet
    assert [(i - ids[0]) & 0xFFFF for i in ids] == [0, 1, 2]


@pytest.mark.parametrize("df_mode, inner_df, inner_fam, want", [
    (fp.DF_COPY_INNER, True, 4, True),
    (fp.DF_COPY_INNER, False, 4, False),
    (fp.DF_COPY_INNER, None, 6, False),
    (fp.DF_ALWAYS, False, 4, True),
    (fp.DF_ALWAYS, None, 6, True),
    (fp.DF_NEVER, True, 4, False),
])
def test_df_bit(df_mode, inner_df, inner_fam, want):
    """RFC 4301 5.1.2.2: the outer DF is copied from the inner header, set or cleared."""
    tx, rx = S.make_pair(T, "tunnel4", df=df_mode)
    inner = S.inner4(40, df=bool(inner_df)) if inner_fam == 4 else S.inner6(40)
    out = tx.encap(inner)
    p = IP(out)
    assert bool(p.flags & 2) == want
    assert ip4_checksum_ok_scapy(out)
    assert rx.decap(out) == inner


@pytest.mark.parametrize("outer", ["tunnel4", "tunnel6"])
@pytest.mark.parametrize("inner_fam", [4, 6])
@pytest.mark.parametrize("dscp", [None, 0, 10, 46, 63])
@pytest.mark.parametrize("inner_tos", [0x00, 0xB8, 0x03, 0x29, 0xFE])
def test_dscp_and_ecn(outer, inner_fam, dscp, inner_tos):
    """RFC 4301 5.1.2.1: DSCP copied from the inner header unless configured; RFC 6040 4.1
    (normal mode): ECN copied, CE included."""
    tx, rx = S.make_pair(T, outer, dscp=dscp)
    inner = S.inner4(30, tos=inner_tos) if inner_fam == 4 else S.inner6(30, tc=inner_tos)
    out = tx.encap(inner)
    tos = IP(out).tos if outer == "tunnel4" else IPv6(out).tc
    assert tos & 3 == inner_tos & 3
    assert tos >> 2 == (inner_tos >> 2 if dscp is None else dscp)
    if outer == "tunnel4":
        assert ip4_checksum_ok_scapy(out)
    else:
        assert IPv6(out).fl == 0
    assert rx.decap(out) == inner                           # outer ECN == inner ECN: unchanged


# =======================================================================================
# IPv6 outer header


@pytest.mark.parametrize("t", TS)
@pytest.mark.parametrize("udp", [False, True])
@pytest.mark.parametrize("inner_fam", [4, 6])
def test_ipv6_outer_header(t, udp, inner_fam):
    tx, rx = S.make_pair(t, "tunnel6", udp=udp, ttl=3)
    for n in (0, 1, 77, 1400):
        inner = S.inner4(n) if inner_fam == 4 else S.inner6(n)
        out = tx.encap(inner)
        p = IPv6(out)
        assert p.version == 6 and p.fl == 0
        assert p.plen == len(out) - 40
        assert p.hlim == 3
        assert p.nh == (17 if udp else 50)
        assert p.src == "2001:db8::1" and p.dst == "2001:db8::2"
        if udp:
            u = p[UDP]
            assert (u.sport, u.dport) == (4500, 4500)
            assert u.len == len(out) - 40
            assert u.chksum != 0                            # RFC 8200 8.1: mandatory over IPv6
            assert udp6_checksum_ok_scapy(out)
            assert S.udp6_checksum(S.OUT6_SRC, S.OUT6_DST, out[40:]) == u.chksum
        assert rx.decap(out) == inner


def test_udp_ports_are_configurable():
    tx, rx = S.make_pair(T, "tunnel6", udp=True, sport=1701, dport=4501)
    out = tx.encap(S.inner4(9))
    u = IPv6(out)[UDP]
    assert (u.sport, u.dport) == (1701, 4501)
    assert udp6_checksum_ok_scapy(out)
    assert rx.decap(out) == S.inner4(9)
    rx_default = S.make_sa(T, "tunnel6", udp=True)
    assert S.status_of(rx_default.decap, out) == fp.Status.NOT_ESP


def test_framing_esp_has_no_outer_headers():
    for udp in (False, True):
        tx, rx = S.make_pair(T, "esp", udp=udp)
        inner = S.inner6(50)
        out = tx.encap(inner)
        assert out[:8] == struct.pack("!II", 0x1234, 1)
        assert len(out) == len(inner) + tx.overhead(len(inner))
        assert rx.decap(out) == inner


# =======================================================================================
# transport mode: the packet's own header stays in front


@pytest.mark.parametrize("t", TS)
@pytest.mark.parametrize("udp", [False, True])
def test_transport_ipv4_keeps_header_and_options(t, udp):
    tx, rx = S.make_pair(t, "transport", udp=udp)
    seg = S.udp(S.payload_bytes(60))
    opts = bytes([0x94, 0x04, 0x00, 0x00])                  # router alert
    pkt = S.ipv4_header(len(seg), 17, tos=0x28, ttl=5, ident=0xBEEF, flags_frag=0x4000, options=opts) + seg
    out = tx.encap(pkt)
    p = IP(out)
    assert p.ihl == 6 and raw(p)[20:24] == opts
    assert (p.tos, p.ttl, p.id, p.flags) == (0x28, 5, 0xBEEF, 2)
    assert p.len == len(out)
    assert p.proto == (17 if udp else 50)
    assert ip4_checksum_ok_scapy(out)
    if udp:
        assert p[UDP].len == len(out) - 24 and p[UDP].chksum == 0
    assert rx.decap(out) == pkt


def _ipv6_with_ext(exts: list[tuple[int, bytes]], seg: bytes, *, dst=S.IN6_DST) -> bytes:
    """IPv6 with extension headers [(type, body-without-the-next-header-byte)], then UDP."""
    chain = b""
    types = [e[0] for e in exts] + [17]
    for i, (_, body) in enumerate(exts):
        chain += bytes([types[i + 1]]) + body
    return S.ipv6_header(len(chain) + len(seg), types[0], dst=dst) + chain + seg


HBH = (0, bytes([0, 1, 4, 0, 0, 0, 0]))                    # PadN
DST_OPTS = (60, bytes([0, 1, 4, 0, 0, 0, 0]))


def _routing(final: bytes, segleft: int = 1) -> tuple[int, bytes]:
    # type 0 routing header (parsed as a generic routing header), one address
    return 43, bytes([2, 0, segleft]) + bytes(4) + final


@pytest.mark.parametrize("t", TS)
@pytest.mark.parametrize("udp", [False, True])
@pytest.mark.parametrize("exts, kept", [
    ([HBH], 1),
    ([HBH, DST_OPTS], 1),                  # destination options after HBH without routing: encrypted
    ([DST_OPTS, _routing(S.IN6_DST, 0)], 2),
    ([HBH, DST_OPTS, _routing(S.IN6_DST, 0)], 3),
    ([HBH, _routing(S.IN6_DST, 0), DST_OPTS], 2),
], ids=["hbh", "hbh-dst", "dst-rt", "hbh-dst-rt", "hbh-rt-dst"])
def test_transport_ipv6_keeps_extension_headers_in_front(t, udp, exts, kept):
    """RFC 4303 3.1.1: in transport mode ESP follows hop-by-hop, routing (and destination
    options preceding a routing header); destination options after them are protected."""
    tx, rx = S.make_pair(t, "transport", udp=udp)
    seg = S.udp(S.payload_bytes(40))
    pkt = _ipv6_with_ext(exts, seg)
    out = tx.encap(pkt)
    keep = 40 + sum(len(b) + 1 for _, b in exts[:kept])
    assert out[:40 + 0][:4] == pkt[:4] and out[8:40] == pkt[8:40]
    assert struct.unpack("!H", out[4:6])[0] == len(out) - 40
    # every kept header is unchanged except the last next-header byte, now ESP (or UDP)
    nh_pos = 6 if kept == 0 else 40 + sum(len(b) + 1 for _, b in exts[:kept - 1])
    assert out[nh_pos] == (17 if udp else 50)
    assert out[40:keep][:nh_pos - 40] + out[nh_pos + 1:keep] == pkt[40:keep][:nh_pos - 40] + pkt[nh_pos + 1:keep] \
        if nh_pos >= 40 else out[40:keep] == pkt[40:keep]
    esp_at = keep + (8 if udp else 0)
    assert out[esp_at:esp_at + 4] == struct.pack("!I", 0x1234)
    if udp:
        assert struct.unpack("!H", out[keep + 4:keep + 6])[0] == len(out) - keep
    p = IPv6(out)
    assert p.plen == len(out) - 40
    if not udp:
        assert p.haslayer(ESP)
        if exts[0][0] == 0:
            assert p.haslayer(IPv6ExtHdrHopByHop)
    assert rx.decap(out) == pkt


@pytest.mark.parametrize("exts", [[], [HBH], [HBH, DST_OPTS]], ids=["none", "hbh", "hbh-dst"])
def test_transport_ipv6_udp_checksum(exts):
    tx, rx = S.make_pair(T, "transport", udp=True)
    pkt = _ipv6_with_ext(exts, S.udp(S.payload_bytes(33)))
    out = tx.encap(pkt)
    assert udp6_checksum_ok_scapy(out)
    assert rx.decap(out) == pkt


FINAL = bytes.fromhex("fd000000000000000000000000000099")
OTHER = bytes.fromhex("fd000000000000000000000000000042")


def _rh(rtype: int, addrs: list[bytes], segleft: int) -> tuple[int, bytes]:
    return 43, bytes([2 * len(addrs), rtype, segleft]) + bytes(4) + b"".join(addrs)


def _srh(segments: list[bytes], segleft: int) -> tuple[int, bytes]:
    # RFC 8754: Segment List[0] is the last segment (the final destination)
    return 43, bytes([2 * len(segments), 4, segleft, len(segments) - 1, 0, 0, 0]) + b"".join(segments)


@pytest.mark.parametrize("exts, want", [
    ([HBH, _rh(0, [FINAL], 1)], FINAL),
    ([_rh(0, [OTHER, FINAL], 2)], FINAL),
    ([HBH, _rh(0, [FINAL], 0)], S.IN6_DST),          # no segments left: the destination field
    ([_rh(2, [FINAL], 1)], FINAL),                   # Mobile IPv6 type 2
    ([HBH, _srh([FINAL, OTHER], 1)], FINAL),         # SRH: Segment List[0]
    ([DST_OPTS, _rh(0, [FINAL], 1)], FINAL),
], ids=["rt0", "rt0-two", "rt0-segleft0", "rt2", "srh", "dst-rt0"])
def test_transport_ipv6_udp_checksum_uses_final_destination(exts, want):
    """RFC 8200 8.1: with a routing header the UDP pseudo-header carries the final
    destination, not the IPv6 destination field. scapy's in6_chksum implements that rule.

    Regression: at commit 404d344 the kernel always used the destination field."""
    tx, rx = S.make_pair(T, "transport", udp=True)
    pkt = _ipv6_with_ext(exts, S.udp(S.payload_bytes(33)))
    out = tx.encap(pkt)
    keep = 40 + sum(len(b) + 1 for _, b in exts)
    assert struct.unpack("!H", out[keep + 6:keep + 8])[0] == S.udp6_checksum(S.IN6_SRC, want, out[keep:])
    assert udp6_checksum_ok_scapy(out)
    assert rx.decap(out) == pkt


def test_transport_ipv4_rebuilt_on_decap():
    """Decap puts the payload's protocol back, fixes the total length and checksum."""
    tx, rx = S.make_pair(T_CBC, "transport")
    for n in range(0, 40, 3):
        pkt = S.inner4(n)
        out = tx.encap(pkt)
        assert IP(out).proto == 50
        back = rx.decap(out)
        assert back == pkt
        assert ip4_checksum_ok_scapy(back)
        assert IP(back)[UDP].len == n + 8


def test_outer_dest_options_before_esp_are_skipped_on_decap():
    """A receiver finds ESP behind hop-by-hop and destination options headers in the outer
    (tunnel) IPv6 header."""
    tx, rx = S.make_pair(T, "tunnel6")
    inner = S.inner4(20)
    out = tx.encap(inner)
    esp = out[40:]
    ext = bytes([60, 0, 1, 4, 0, 0, 0, 0]) + bytes([50, 0, 1, 4, 0, 0, 0, 0])
    pkt = S.ipv6_header(len(ext) + len(esp), 0, S.OUT6_SRC, S.OUT6_DST) + ext + esp
    p = IPv6(pkt)
    assert p.haslayer(IPv6ExtHdrDestOpt)
    assert rx.decap(pkt) == inner


# =======================================================================================
# transport IPv4 header checksum over many header shapes (the kernel updates it
# incrementally, RFC 1624: every field combination must still give a valid checksum)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=400, deadline=None)
@given(tos=st.integers(0, 255), ttl=st.integers(0, 255), ident=st.integers(0, 0xFFFF),
       df=st.booleans(), opt_words=st.integers(0, 10), n=st.integers(0, 1500),
       proto=st.sampled_from([1, 6, 17, 47, 132, 253]), udp=st.booleans(),
       src=st.binary(min_size=4, max_size=4), dst=st.binary(min_size=4, max_size=4),
       t=st.sampled_from([T, T_CBC, S.TRANSFORM_BY_NAME["null-sha1"]]))
def test_transport_ipv4_checksum_always_valid(tos, ttl, ident, df, opt_words, n, proto, udp, src, dst, t):
    tx, rx = S.make_pair(t, "transport", udp=udp)
    body = S.payload_bytes(n, n)
    opts = b"\x01" * (4 * opt_words)
    pkt = S.ipv4_header(len(body), proto, src, dst, tos=tos, ttl=ttl, ident=ident,
                        flags_frag=0x4000 if df else 0, options=opts) + body
    out = tx.encap(pkt)
    ihl = 20 + 4 * opt_words
    assert S.csum(out[:ihl]) == 0, "outer checksum invalid"
    assert out[:2] == pkt[:2] and out[4:9] == pkt[4:9] and out[12:ihl] == pkt[12:ihl]
    assert out[9] == (17 if udp else 50)
    assert struct.unpack("!H", out[2:4])[0] == len(out)
    back = rx.decap(out)
    assert back == pkt


@settings(max_examples=200, deadline=None)
@given(tos=st.integers(0, 255), ttl=st.integers(1, 255), ident=st.integers(0, 0xFFFF),
       df=st.sampled_from([fp.DF_COPY_INNER, fp.DF_ALWAYS, fp.DF_NEVER]), inner_df=st.booleans(),
       dscp=st.one_of(st.none(), st.integers(0, 63)), n=st.integers(0, 3000), udp=st.booleans())
def test_tunnel_ipv4_outer_checksum_always_valid(tos, ttl, ident, df, inner_df, dscp, n, udp):
    tx, rx = S.make_pair(T, "tunnel4", udp=udp, ttl=ttl, df=df, dscp=dscp)
    inner = S.inner4(n, tos=tos, df=inner_df, ident=ident)
    for _ in range(3):
        out = tx.encap(inner)
        assert S.csum(out[:20]) == 0
        assert ip4_checksum_ok_scapy(out)
        assert out[8] == ttl
        assert rx.decap(out) == inner


def test_outer_ipv4_options_and_trailing_bytes_on_decap():
    """The receiver honours the outer IHL and total length: options are skipped, bytes after
    the total length (Ethernet padding) are ignored."""
    tx, rx = S.make_pair(T_CBC, "tunnel4")
    inner = S.inner4(33)
    out = tx.encap(inner)
    esp = out[20:]
    with_opts = S.ipv4_header(len(esp), 50, S.OUT4_SRC, S.OUT4_DST, options=bytes([0x94, 4, 0, 0, 1, 1, 1, 0])) + esp
    assert rx.decap(with_opts) == inner
    out2 = tx.encap(inner)
    assert rx.decap(out2 + bytes(18)) == inner
    b = S.batch_of([tx.encap(inner) + b"\xee" * 7])
    assert b.decap(rx) == 1 and bytes(b.packet(0)) == inner
