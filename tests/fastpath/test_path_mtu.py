"""The kernel's path MTU check (SAState.set_path_mtu): which packets come back TOO_BIG, left
exactly as they came, and which are encapsulated whole for the outer IP layer to fragment;
max_inner() against overhead(); TFC padding cut to fit; the engine's slots for TOO_BIG."""

import ipaddress
from array import array

import pytest

import fastpath as fp
import fp_support as S
from fastpath import Status

from ipsp import Engine
from ipsp.config import config_from_document

GCM = S.TRANSFORM_BY_NAME["aes128gcm16"]
TRANSFORMS = [GCM] + [S.TRANSFORM_BY_NAME[n] for n in ("aes128cbc-sha1", "3des-sha1", "null-sha256")]


def v4(size: int, *, df: bool) -> bytes:
    """An IPv4 packet of exactly *size* bytes."""
    return S.inner4(size - 28, df=df)


def v6(size: int) -> bytes:
    return S.inner6(size - 48)


def one(sa, packet: bytes):
    """(status, result or the untouched input) of one packet in a batch."""
    b = S.batch_of([packet], stride=16384)
    b.encap(sa)
    return Status(b.status[0]), bytes(b.packet(0))


@pytest.mark.parametrize("t", TRANSFORMS, ids=lambda t: t.name)
@pytest.mark.parametrize("mode", ["tunnel4", "tunnel6", "transport"])
def test_max_inner_is_the_longest_packet_that_fits(t, mode):
    sa = S.make_sa(t, mode)
    header = 20 if mode == "transport" else 0
    for mtu in (576, 577, 1000, 1280, 1499, 1500, 9000):
        exact = max(n for n in range(header, mtu + 1) if n + sa.overhead(n, header) <= mtu)
        assert sa.max_inner(mtu, header) == exact, (mtu, t.name)
    assert sa.max_inner(sa.headroom) == 0


@pytest.mark.parametrize("t", TRANSFORMS, ids=lambda t: t.name)
def test_df_set_above_the_path_mtu_comes_back_untouched(t):
    sa = S.make_sa(t)
    sa.set_path_mtu(1500)
    limit = sa.max_inner(1500)
    st, out = one(sa, v4(limit, df=True))
    assert st == Status.OK and len(out) <= 1500
    big = v4(limit + 1, df=True)
    st, out = one(sa, big)
    assert st == Status.TOO_BIG and out == big
    assert sa.counters()["out"]["TOO_BIG"] == 1
    with pytest.raises(fp.PacketTooBig):
        sa.encap(big)


def test_df_clear_goes_whole_unless_fragment_inner():
    sa = S.make_sa(GCM)
    sa.set_path_mtu(1500)
    packet = v4(1500, df=False)
    st, out = one(sa, packet)
    assert st == Status.OK and len(out) > 1500          # the outer IP layer fragments it
    sa.set_path_mtu(1500, fragment_inner=True)
    assert (sa.path_mtu, sa.fragment_inner) == (1500, True)
    st, out = one(sa, packet)
    assert st == Status.TOO_BIG and out == packet


def test_ipv6_up_to_1280_always_goes():
    # RFC 8200 5 / RFC 2473 7.1: a tunnel carries 1280-byte packets by fragmenting its outer one
    sa = S.make_sa(GCM, "tunnel6")
    sa.set_path_mtu(1280)
    st, out = one(sa, v6(1280))
    assert st == Status.OK and len(out) > 1280
    st, out = one(sa, v6(1281))
    assert st == Status.TOO_BIG


def test_transport_mode_reads_the_packets_own_df():
    sa = S.make_sa(GCM, "transport")
    sa.set_path_mtu(1000)
    assert one(sa, v4(1000, df=True))[0] == Status.TOO_BIG
    assert one(sa, v4(1000, df=False))[0] == Status.OK


def test_no_path_mtu_means_no_check():
    sa = S.make_sa(GCM)
    assert sa.path_mtu == 0 and not sa.fragment_inner
    assert one(sa, v4(9000, df=True))[0] == Status.OK


def test_tfc_padding_is_cut_to_the_path_mtu():
    # RFC 4303 2.7: TFC padding never makes a packet too big
    sa = S.make_sa(GCM, tfc_pad=2000)
    sa.set_path_mtu(1400)
    sizes = set()
    for _ in range(50):
        st, out = one(sa, v4(1000, df=True))
        assert st == Status.OK and len(out) <= 1400
        sizes.add(len(out))
    assert len(sizes) > 1                                # still random below the limit


def test_set_path_mtu_is_checked():
    sa = S.make_sa(GCM)
    for bad in (1, 575, 65536):
        with pytest.raises((ValueError, OverflowError)):
            sa.set_path_mtu(bad)
    sa.set_path_mtu(0)
    assert sa.path_mtu == 0


def test_engine_reports_the_sa_of_a_too_big_packet():
    cfg = config_from_document({
        "policy": [{"action": "protect", "src": "10.0.0.0/8", "dst": "10.0.0.0/8", "reqid": 1}],
        "sa": [{"direction": "out", "reqid": 1, "spi": 0x1001, "src": "192.0.2.1", "dst": "192.0.2.2",
                "proposal": "aes128gcm16", "enc_key": "0x" + "11" * 20}]})
    engine = Engine()
    engine.apply_config(cfg)
    sas = engine.slot_sas()
    (sa,) = sas
    sa.kernel.set_path_mtu(1500)
    stride, packets = 2048, [v4(100, df=True), v4(1500, df=True), v4(1500, df=False)]
    buf = bytearray(stride * 3)
    off = array("q", [i * stride + 128 for i in range(3)])
    lens = array("I", map(len, packets))
    for i, p in enumerate(packets):
        buf[off[i]:off[i] + len(p)] = p
    status, slots = bytearray(3), array("i", [0] * 3)
    engine.outbound(buf, off, lens, status, stride, slots=slots)
    assert [Status(s) for s in status] == [Status.OK, Status.TOO_BIG, Status.OK]
    assert list(slots) == [0, 0, 0] and engine.slot_sas() is sas and sas[slots[1]] is sa
    assert bytes(buf[off[1]:off[1] + lens[1]]) == packets[1]
    assert engine.counters()["totals"]["out"]["TOO_BIG"] == 1 and sa.dst == ipaddress.ip_address("192.0.2.2")
    engine.close()
    assert engine.slot_sas() is not sas
