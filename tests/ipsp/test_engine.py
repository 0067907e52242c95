"""The engine: policy, SA choice, kernel and status handling for whole batches, between two
engines standing for two gateways (gw1 protects 10.1/16, gw2 protects 10.2/16)."""

import ipaddress
import os
import re
import threading
from array import array

import pytest

from fastpath import Status
from ipsp import SAConfig, Selector, parse_proposal
from ipsp.config import config_from_document
from ipsp.engine import Engine
from ipsp.gen import ipv4_udp
from ipsp.sad import Lifetime, Lifetimes, SAStateName
from ipsp.spd import Action, Direction, PolicySelector

N = ipaddress.ip_network
GW1, GW2 = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")
STRIDE = 256
HEAD = 96


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Batch:
    """Packets in slots of one buffer, as the batch calls take them."""

    def __init__(self, packets):
        self.n = len(packets)
        self.buf = bytearray(self.n * STRIDE)
        self.off = array("q", [i * STRIDE + HEAD for i in range(self.n)])
        self.lens = array("I", [len(p) for p in packets])
        self.status = bytearray(self.n)
        self.slots = array("i", [0] * self.n)
        for i, p in enumerate(packets):
            self.buf[self.off[i]:self.off[i] + len(p)] = p

    def packet(self, i):
        return bytes(self.buf[self.off[i]:self.off[i] + self.lens[i]])

    def statuses(self):
        return [Status(s).name for s in self.status]


def udp(src, dst, ident=0, sport=1000, dport=2000, size=80):
    return ipv4_udp(size, ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed,
                    sport, dport, 0x41 + ident % 26, ident)


def cfg(spi, key, src=GW1, dst=GW2, **kw):
    return SAConfig(spi=spi, src=src, dst=dst, transform=parse_proposal("aes128gcm16"), enc_key=key, **kw)


def pair(clock=None, *, reqid=1, key=None, out_sel=None, in_sel=None):
    """gw1 -> gw2 for 10.1/16 -> 10.2/16: gw1 holds the outbound SA, gw2 the inbound one."""
    key = key or os.urandom(20)
    gw1, gw2 = Engine(clock=clock or Clock()), Engine(clock=clock or Clock())
    gw1.km.add_policy(out_sel or PolicySelector(N("10.1.0.0/16"), N("10.2.0.0/16")), Action.PROTECT, reqid=reqid)
    gw2.km.add_policy(in_sel or PolicySelector(N("10.1.0.0/16"), N("10.2.0.0/16")), Action.PROTECT,
                      Direction.IN, reqid=reqid)
    gw1.km.add_sa(cfg(0x1001, key), "out", reqid=reqid)
    gw2.km.add_sa(cfg(0x1001, key), "in", reqid=reqid)
    return gw1, gw2


def test_protected_traffic_crosses_and_comes_out_equal():
    gw1, gw2 = pair()
    sent = [udp("10.1.0.1", f"10.2.0.{i}", i) for i in range(40)]
    b = Batch(sent)
    assert gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE, slots=b.slots) == 40
    assert set(b.statuses()) == {"OK"} and set(b.slots) == {0}
    assert gw2.inbound(b.buf, b.off, b.lens, b.status) == 40
    assert [b.packet(i) for i in range(40)] == sent
    assert gw1.counters()["totals"]["out"]["packets"] == 40
    assert gw2.counters()["totals"]["in"]["packets"] == 40


def test_each_policy_decision_has_its_status_and_counter():
    gw1 = Engine(clock=Clock())
    km = gw1.km
    km.add_policy(PolicySelector(N("10.1.0.0/16"), N("10.2.0.53/32"), proto=17, dport=(53, 53)), Action.BYPASS,
                  priority=10)
    km.add_policy(PolicySelector(N("10.1.0.0/16"), N("10.2.99.0/24")), Action.DISCARD, priority=20)
    km.add_policy(PolicySelector(N("10.1.0.0/16"), N("10.2.0.0/16")), Action.PROTECT, reqid=1, priority=30)
    km.add_policy(PolicySelector(N("10.1.0.0/16"), N("10.3.0.0/16")), Action.PROTECT, reqid=2, priority=40)
    km.add_sa(cfg(0x1001, os.urandom(20)), "out", reqid=1)
    acquires = []
    km.on("acquire", acquires.append)
    packets = [udp("10.1.0.1", "10.2.0.53", 0, dport=53), udp("10.1.0.1", "10.2.99.1", 1),
               udp("10.1.0.1", "10.2.0.9", 2), udp("10.1.0.1", "10.3.0.9", 3, sport=4242, dport=80),
               udp("10.9.0.1", "10.2.0.9", 4), b"\x45" + bytes(7)]
    b = Batch(packets)
    assert gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE, slots=b.slots) == 1
    assert b.statuses() == ["BYPASS", "POLICY_DISCARD", "OK", "NO_SA", "NO_POLICY", "BAD_INNER"]
    assert list(b.slots) == [-1, -1, 0, -1, -1, -1]
    assert b.packet(0) == packets[0] and b.packet(1) == packets[1]      # untouched
    assert [(a.policy.reqid, a.src, a.dst, a.proto, a.sport, a.dport) for a in acquires] == [
        (2, "10.1.0.1", "10.3.0.9", 17, 4242, 80)]
    totals = gw1.counters()["totals"]["out"]
    assert {k: totals[k] for k in ("BYPASS", "POLICY_DISCARD", "NO_SA", "NO_POLICY", "BAD_INNER", "packets")} == {
        "BYPASS": 1, "POLICY_DISCARD": 1, "NO_SA": 1, "NO_POLICY": 1, "BAD_INNER": 1, "packets": 1}
    assert [e["kind"] for e in gw1.events()] == ["acquire"]


def test_acquire_is_rate_limited_per_policy_and_the_sa_then_takes_over():
    clock = Clock()
    gw1 = Engine(clock=clock, acquire_interval=1.0)
    gw1.km.add_policy(PolicySelector(N("10.1.0.0/16"), N("10.2.0.0/16")), Action.PROTECT, reqid=5)
    seen = []
    gw1.km.on("acquire", seen.append)
    for _ in range(3):
        b = Batch([udp("10.1.0.1", "10.2.0.1", i) for i in range(4)])
        gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE)
        assert set(b.statuses()) == {"NO_SA"}
    assert len(seen) == 1
    clock.t += 1.5
    gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE)
    assert len(seen) == 2
    gw1.km.add_sa(cfg(0x2002, os.urandom(20)), "out", reqid=5)      # what the key manager does
    b = Batch([udp("10.1.0.1", "10.2.0.1", i) for i in range(4)])
    assert gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE) == 4


def test_interleaved_flows_go_to_their_own_sas_in_order():
    k1, k2 = os.urandom(20), os.urandom(20)
    gw1, gw2 = Engine(clock=Clock()), Engine(clock=Clock())
    for reqid, net, spi, key in ((1, "10.2.0.0/16", 0x1001, k1), (2, "10.3.0.0/16", 0x1002, k2)):
        gw1.km.add_policy(PolicySelector(N("10.1.0.0/16"), N(net)), Action.PROTECT, reqid=reqid)
        gw1.km.add_sa(cfg(spi, key), "out", reqid=reqid)
        gw2.km.add_sa(cfg(spi, key), "in", reqid=reqid)
        gw2.km.add_policy(PolicySelector(N("10.1.0.0/16"), N(net)), Action.PROTECT, Direction.IN, reqid=reqid)
    sent = [udp("10.1.0.1", f"10.{2 + i % 3 % 2}.0.1", i) for i in range(300)]
    b = Batch(sent)
    assert gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE, slots=b.slots) == 300
    spis = [int.from_bytes(b.packet(i)[20:24], "big") for i in range(300)]
    seqs = [int.from_bytes(b.packet(i)[24:28], "big") for i in range(300)]
    assert spis == [0x1002 if p[16:18] == bytes([10, 3]) else 0x1001 for p in sent]
    for spi in (0x1001, 0x1002):                     # each SA numbers its packets in arrival order
        mine = [s for s, x in zip(seqs, spis) if x == spi]
        assert mine == list(range(1, len(mine) + 1))
    assert gw2.inbound(b.buf, b.off, b.lens, b.status) == 300
    assert [b.packet(i) for i in range(300)] == sent


def test_inbound_drops_have_names_unknown_spi_mismatch_unprotected():
    key = os.urandom(20)
    # gw1 protects more than gw2's inbound policy allows: 10.1.0.0/16 -> 10.2.0.0/16 against 10.1.5.0/24
    gw1, gw2 = pair(key=key, in_sel=PolicySelector(N("10.1.5.0/24"), N("10.2.0.0/16")))
    gw2.km.add_policy(PolicySelector(N("203.0.113.0/24"), N("192.0.2.0/24"), proto=17, dport=(500, 500)),
                      Action.BYPASS, Direction.IN)
    gw2.km.add_policy(PolicySelector(N("10.1.0.0/16"), N("10.2.0.0/16")), Action.PROTECT, Direction.IN, reqid=9,
                      priority=2000)
    stranger = Engine(clock=Clock())
    stranger.km.add_policy(PolicySelector(N("10.1.0.0/16"), N("10.2.0.0/16")), Action.PROTECT, reqid=1)
    stranger.km.add_sa(cfg(0x7777, os.urandom(20)), "out", reqid=1)
    a = Batch([udp("10.1.5.1", "10.2.0.1", 0), udp("10.1.6.1", "10.2.0.1", 1)])
    gw1.outbound(a.buf, a.off, a.lens, a.status, STRIDE)
    s = Batch([udp("10.1.5.1", "10.2.0.1", 2)])
    stranger.outbound(s.buf, s.off, s.lens, s.status, STRIDE)
    arrivals = [a.packet(0), a.packet(1), s.packet(0), udp("203.0.113.9", "192.0.2.2", 3, dport=500),
                udp("10.1.5.1", "10.2.0.1", 4), udp("198.51.100.1", "192.0.2.2", 5), b"\x60" + bytes(3)]
    b = Batch(arrivals)
    assert gw2.inbound(b.buf, b.off, b.lens, b.status, slots=b.slots) == 1
    assert b.statuses() == ["OK", "POLICY_MISMATCH", "UNKNOWN_SPI", "BYPASS", "UNPROTECTED", "NO_POLICY",
                            "BAD_IP_HEADER"]
    assert list(b.slots)[:3] == [0, 0, -1]
    (sa,) = gw2.counters()["sas"]
    assert sa["counters"]["packets"] == 1 and sa["counters"]["POLICY_MISMATCH"] == 1


def test_an_sa_without_inbound_policy_carries_the_mirror_of_its_outbound_one():
    key = os.urandom(20)
    gw1 = Engine(clock=Clock())
    gw1.km.add_policy(PolicySelector(N("10.1.0.0/16"), N("10.2.0.0/16")), Action.PROTECT, reqid=1)
    gw1.km.add_sa(cfg(0x1001, key), "out", reqid=1)
    gw2 = Engine(clock=Clock())          # its outbound policy is the reverse direction, reqid 1
    gw2.km.add_policy(PolicySelector(N("10.2.0.0/16"), N("10.1.0.0/16")), Action.PROTECT, reqid=1)
    gw2.km.add_sa(cfg(0x1001, key), "in", reqid=1)
    b = Batch([udp("10.1.0.1", "10.2.0.1", 0), udp("10.1.0.1", "10.2.0.2", 1)])
    gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE)
    assert gw2.inbound(b.buf, b.off, b.lens, b.status) == 2


def test_sa_match_selector_limits_a_manual_sa():
    key = os.urandom(20)
    gw1 = Engine(clock=Clock())
    gw1.km.add_policy(PolicySelector(N("10.1.0.0/16"), N("10.2.0.0/16")), Action.PROTECT, reqid=1)
    gw1.km.add_sa(cfg(0x1001, key), "out", reqid=1)
    gw2 = Engine(clock=Clock())
    gw2.km.add_sa(cfg(0x1001, key, match=Selector(N("10.1.0.0/24"), N("10.2.0.0/16"))), "in")
    b = Batch([udp("10.1.0.1", "10.2.0.1", 0), udp("10.1.1.1", "10.2.0.2", 1)])
    gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE)
    gw2.inbound(b.buf, b.off, b.lens, b.status)
    assert b.statuses() == ["OK", "POLICY_MISMATCH"]


def test_keepalives_fragments_and_ike_on_4500():
    """IKE behind the non-ESP marker is BYPASS with no policy saying so (the key manager's);
    other clear traffic meets the inbound SPD, here empty."""
    gw2 = Engine(clock=Clock())
    keepalive = udp("198.51.100.7", "192.0.2.2", 0, sport=4500, dport=4500, size=29)
    keepalive = keepalive[:28] + b"\xff"
    ike = udp("198.51.100.7", "192.0.2.2", 1, sport=4500, dport=4500, size=60)
    ike = ike[:28] + bytes(4) + ike[32:]                  # the non-ESP marker
    frag = bytearray(udp("198.51.100.7", "192.0.2.2", 2))
    frag[6] |= 0x20                                       # more fragments
    other = udp("198.51.100.7", "192.0.2.2", 3, sport=500, dport=500, size=60)
    b = Batch([keepalive, ike, bytes(frag), other])
    gw2.inbound(b.buf, b.off, b.lens, b.status)
    assert b.statuses() == ["NAT_KEEPALIVE", "BYPASS", "FRAGMENT", "NO_POLICY"]


def test_ike_on_a_listened_port_before_any_sa():
    """A gateway on UDP 14500 with no SA yet: its port is an ESP-in-UDP port only once the
    engine is told (listen_udp); until then IKE there is clear traffic for the SPD."""
    gw = Engine(clock=Clock())
    ike = udp("198.51.100.7", "192.0.2.2", 1, sport=14500, dport=14500, size=60)
    ike = ike[:28] + bytes(4) + ike[32:]
    b = Batch([ike])
    gw.inbound(b.buf, b.off, b.lens, b.status)
    assert b.statuses() == ["NO_POLICY"]
    gw.listen_udp(14500)
    b = Batch([ike])
    gw.inbound(b.buf, b.off, b.lens, b.status)
    assert b.statuses() == ["BYPASS"]


def test_hard_packet_limit_stops_the_sa_within_the_batch():
    clock = Clock()
    gw1, _ = pair(clock)
    gw1.km.update_sa(0x1001, GW2, "out", lifetimes=Lifetimes(hard=Lifetime(packets=5)))
    expired = []
    gw1.km.on("expire", expired.append)
    b = Batch([udp("10.1.0.1", "10.2.0.1", i) for i in range(8)])
    assert gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE) == 5
    assert b.statuses() == ["OK"] * 5 + ["SA_DEAD"] * 3
    gw1.tick()
    assert [(e.hard, e.limit) for e in expired] == [(True, "packets")]
    b = Batch([udp("10.1.0.1", "10.2.0.1", 9)])
    gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE)
    assert b.statuses() == ["NO_SA"]                      # the SA is gone; acquire raised
    assert gw1.counters()["totals"]["out"]["packets"] == 5        # a dead SA's counts stay in the totals


def test_mapping_event_only_for_authenticated_packets_from_a_new_address():
    key = os.urandom(20)
    gw1 = Engine(clock=Clock())
    gw1.km.add_policy(PolicySelector(N("10.1.0.0/16"), N("10.2.0.0/16")), Action.PROTECT, reqid=1)
    gw1.km.add_sa(cfg(0x1001, key, udp=True, sport=4500, dport=4500), "out", reqid=1)
    gw2 = Engine(clock=Clock())
    gw2.km.add_sa(cfg(0x1001, key, udp=True, sport=4500, dport=4500), "in")
    moved = []
    gw2.km.on("mapping", moved.append)
    b = Batch([udp("10.1.0.1", "10.2.0.1", i) for i in range(3)])
    gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE)
    esp = [bytearray(b.packet(i)) for i in range(3)]
    for p in esp:                    # a NAT rewrote the source port to 31000 (checksum 0: none)
        p[20:22] = (31000).to_bytes(2, "big")
    forged = bytearray(esp[2])
    forged[-1] ^= 1
    bad = Batch([bytes(forged)])
    gw2.inbound(bad.buf, bad.off, bad.lens, bad.status)
    assert bad.statuses() == ["ICV_FAIL"] and moved == []
    good = Batch([bytes(p) for p in esp[:2]])
    assert gw2.inbound(good.buf, good.off, good.lens, good.status) == 2
    assert [(m.old, m.new) for m in moved] == [(("192.0.2.1", 4500), ("192.0.2.1", 31000))]


def _sender_receiver_group(replay, senders=("198.51.100.7", "198.51.100.8")):
    """An RFC 5374 group SA to 233.252.0.1 with two senders sharing one key."""
    key = "0x" + os.urandom(20).hex()
    doc = {"sa": [{"direction": "in", "spi": 0x4000, "src": senders[0], "dst": "233.252.0.1",
                   "proposal": "aes128gcm16", "enc_key": key, "replay": replay}]}
    if replay == "per-sender":
        doc["sa"][0]["senders"] = list(senders)
    rx = Engine(clock=Clock())
    rx.apply_config(config_from_document(doc))
    txs = []
    for s in senders:
        tx = Engine(clock=Clock())
        tx.km.add_policy(PolicySelector(N("10.7.0.0/16"), N("239.1.0.0/16")), Action.PROTECT, reqid=1)
        tx.km.add_sa(SAConfig(spi=0x4000, src=ipaddress.ip_address(s), dst=ipaddress.ip_address("233.252.0.1"),
                              transform=parse_proposal("aes128gcm16"), enc_key=bytes.fromhex(key[2:])),
                     "out", reqid=1)
        txs.append(tx)
    return rx, txs


def _group_send(tx, n):
    b = Batch([udp("10.7.0.1", "239.1.0.1", i) for i in range(n)])
    assert tx.outbound(b.buf, b.off, b.lens, b.status, STRIDE) == n
    return [b.packet(i) for i in range(n)]


@pytest.mark.parametrize("replay,expect_second", [("per-sender", "OK"), ("shared", "REPLAY"), ("off", "OK")])
def test_multicast_group_sa_replay_per_sender_shared_or_off(replay, expect_second):
    rx, (tx1, tx2) = _sender_receiver_group(replay)
    first, second = _group_send(tx1, 4), _group_send(tx2, 4)   # both senders count from 1
    b = Batch(first + second)
    rx.inbound(b.buf, b.off, b.lens, b.status)
    assert b.statuses() == ["OK"] * 4 + [expect_second] * 4
    again = Batch(first)
    rx.inbound(again.buf, again.off, again.lens, again.status)
    assert set(again.statuses()) == ({"OK"} if replay == "off" else {"REPLAY"})


def test_rekey_is_make_before_break_and_the_old_inbound_sa_lives_out_its_grace():
    clock = Clock()
    gw1, gw2 = pair(clock)
    new_key = os.urandom(20)
    in_flight = Batch([udp("10.1.0.1", "10.2.0.1", i) for i in range(4)])
    gw1.outbound(in_flight.buf, in_flight.off, in_flight.lens, in_flight.status, STRIDE)   # old SA
    gw2.km.add_sa(cfg(0x2001, new_key), "in", reqid=1)          # 1. new inbound first
    gw1.km.add_sa(cfg(0x2001, new_key), "out", reqid=1)         # 2. then the outbound switch
    b = Batch([udp("10.1.0.1", "10.2.0.1", i) for i in range(4)])
    gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE)
    assert {int.from_bytes(b.packet(i)[20:24], "big") for i in range(4)} == {0x2001}
    assert gw2.inbound(b.buf, b.off, b.lens, b.status) == 4
    # packets of the old SA still arrive: accepted during the grace period, counted as late
    assert gw2.inbound(in_flight.buf, in_flight.off, in_flight.lens, in_flight.status) == 4
    old = gw2.km.sad.get(0x1001, GW2)
    assert old.state is SAStateName.DYING and old.late_packets == 4
    assert {r["spi"]: r["late_packets"] for r in gw2.sa_list()} == {0x1001: 4, 0x2001: 0}
    clock.t += 5.0
    gw1.tick()
    gw2.tick()
    assert [sa.spi for sa in gw2.km.sad] == [0x2001] and [sa.spi for sa in gw1.km.sad] == [0x2001]
    assert old.kernel.closed                                    # keys wiped
    late = Batch([udp("10.1.0.1", "10.2.0.1", 0)])
    old_tx = cfg(0x1001, os.urandom(20)).make_state()
    late.lens[0] = old_tx.encap_into(late.packet(0), memoryview(late.buf)[late.off[0]:late.off[0] + 200])
    gw2.inbound(late.buf, late.off, late.lens, late.status)
    assert late.statuses() == ["UNKNOWN_SPI"]


def _sharded_pairs(clock, threads: int) -> tuple[Engine, Engine]:
    """Two engines with one PROTECT policy and SA pair per thread (flow 10.1.T.0/24 -> 10.2/16,
    SPI 0x100 + T, reqid T + 1), as a forwarder shards flows over cores."""
    gw1, gw2 = Engine(clock=clock), Engine(clock=clock)
    for t in range(threads):
        net1, net2 = N(f"10.1.{t}.0/24"), N("10.2.0.0/16")
        gw1.km.add_policy(PolicySelector(net1, net2), Action.PROTECT, reqid=t + 1)
        gw2.km.add_policy(PolicySelector(net1, net2), Action.PROTECT, Direction.IN, reqid=t + 1)
        key = os.urandom(20)
        gw2.km.add_sa(cfg(0x100 + t, key), "in", reqid=t + 1)
        gw1.km.add_sa(cfg(0x100 + t, key), "out", reqid=t + 1)
    return gw1, gw2


def test_concurrent_batches_through_repeated_rekeys_lose_nothing_and_accept_nothing_twice():
    """Each thread drives its own flow and SA pair (a forwarder shards flows over cores);
    the main thread rekeys every pair again and again while the batches run."""
    clock = Clock()
    threads = 3
    gw1, gw2 = _sharded_pairs(clock, threads)
    batches = [0] * threads
    stop = threading.Event()
    received: list[list[bytes]] = [[] for _ in range(threads)]
    failures: list[str] = []
    kept: list[Batch] = []

    def run(t):
        seq = 0
        while not stop.is_set():
            sent = [udp(f"10.1.{t}.1", "10.2.0.1", i) for i in range(64)]
            sent = [p[:28] + (seq + i).to_bytes(4, "big") + p[32:] for i, p in enumerate(sent)]   # a tag
            seq += 64
            b = Batch(sent)
            if gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE) != 64:
                failures.append(f"thread {t} outbound {sorted(set(b.statuses()))}")
            copy = Batch([b.packet(i) for i in range(64)])
            if gw2.inbound(b.buf, b.off, b.lens, b.status) != 64:
                failures.append(f"thread {t} inbound {sorted(set(b.statuses()))}")
            received[t].extend(b.packet(i) for i in range(64) if b.status[i] == Status.OK)
            if len(kept) < 8:
                kept.append(copy)
            batches[t] += 1

    def wait_for_batches():
        # every thread finishes two more batches: whatever began on the old tables is done
        mark = list(batches)
        while min(b - m for b, m in zip(batches, mark)) < 2 and not failures:
            threading.Event().wait(0.001)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    try:
        for generation in range(1, 7):
            wait_for_batches()
            for t in range(threads):
                key = os.urandom(20)
                spi = 0x10000 * generation + t
                gw2.km.add_sa(cfg(spi, key), "in", reqid=t + 1)       # make ...
                gw1.km.add_sa(cfg(spi, key), "out", reqid=t + 1)      # ... before break
            wait_for_batches()
            clock.t += 6.0                                            # past the grace period
            gw1.tick()
            gw2.tick()
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert failures == []
    for t in range(threads):
        tags = [int.from_bytes(p[28:32], "big") for p in received[t]]
        assert tags == list(range(len(tags)))                    # every packet, once, in order
    assert len(gw2.km.sad) == threads and len(gw1.km.sad) == threads
    for b in kept:                                               # replays of early batches: all refused
        gw2.inbound(b.buf, b.off, b.lens, b.status)
        assert set(b.statuses()) <= {"UNKNOWN_SPI", "REPLAY"}


def test_prometheus_exposition_parses_and_matches_the_counters():
    gw1, gw2 = pair()
    b = Batch([udp("10.1.0.1", "10.2.0.1", i) for i in range(5)] + [udp("10.9.0.1", "10.2.0.1", 9)])
    gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE)
    text = gw1.prometheus()
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? \d+$')
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert 'ipsp_packets_total{direction="out",status="OK"} 5' in text
    assert 'ipsp_packets_total{direction="out",status="NO_POLICY"} 1' in text
    assert 'ipsp_sas{state="mature"} 1' in text


def test_apply_config_is_atomic_and_keeps_unchanged_sas():
    key = "0x" + "11" * 20
    sa = {"direction": "out", "reqid": 1, "spi": 0x1001, "src": "192.0.2.1", "dst": "192.0.2.2",
          "proposal": "aes128gcm16", "enc_key": key}
    pol = {"action": "protect", "src": "10.1.0.0/16", "dst": "10.2.0.0/16", "reqid": 1}
    gw1 = Engine(clock=Clock())
    gw1.apply_config(config_from_document({"sa": [sa], "policy": [pol]}))
    b = Batch([udp("10.1.0.1", "10.2.0.1", i) for i in range(3)])
    assert gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE) == 3
    kernel = gw1.km.sad.get(0x1001, GW2, "out").kernel
    # an SA installed through the API, then a file that would collide with it
    gw1.km.add_sa(cfg(0x3003, os.urandom(20)), "out", reqid=7)
    clash = dict(sa, spi=0x3003, reqid=7)
    before = ([s.spi for s in gw1.km.sad], [p.id for p in gw1.km.spd])
    with pytest.raises(Exception, match="already installed"):
        gw1.apply_config(config_from_document({"sa": [sa, clash], "policy": [pol]}))
    assert ([s.spi for s in gw1.km.sad], [p.id for p in gw1.km.spd]) == before
    # the same SA again: its state (sequence numbers) carries on
    bypass = {"action": "bypass", "src": "10.1.0.0/16", "dst": "10.5.0.0/16"}
    gw1.apply_config(config_from_document({"sa": [sa], "policy": [pol, bypass]}))
    assert gw1.km.sad.get(0x1001, GW2, "out").kernel is kernel and kernel.seq_out == 3
    assert len(gw1.km.spd) == 2
    gw1.km.del_sa(0x1001, GW2, "out")                          # gone meanwhile: the file brings it back
    gw1.apply_config(config_from_document({"sa": [sa], "policy": [pol]}))
    assert gw1.km.sad.get(0x1001, GW2, "out").kernel.seq_out == 0
    gw1.apply_config(config_from_document({"policy": [pol]}))   # the manual SA leaves, the API's stays
    assert sorted(s.spi for s in gw1.km.sad) == [0x3003] and kernel.closed


def test_inbound_selectors_with_protocol_and_ports_are_checked_past_the_ip_header():
    gw1, gw2 = pair(in_sel=PolicySelector(N("10.1.0.0/16"), N("10.2.0.0/16"), proto=17, dport=(53, 53)))
    b = Batch([udp("10.1.0.1", "10.2.0.1", 0, dport=53), udp("10.1.0.1", "10.2.0.1", 1, dport=54)])
    gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE)
    gw2.inbound(b.buf, b.off, b.lens, b.status)
    assert b.statuses() == ["OK", "POLICY_MISMATCH"]


def test_drops_are_logged_by_tick_at_most_once_per_interval_per_reason(caplog):
    clock = Clock()
    gw1, gw2 = pair(clock)
    gw2.log_interval = 10.0
    b = Batch([udp("10.1.0.1", "10.2.0.1", i) for i in range(4)])
    gw1.outbound(b.buf, b.off, b.lens, b.status, STRIDE)
    replay = Batch([b.packet(i) for i in range(4)])
    gw2.inbound(b.buf, b.off, b.lens, b.status)
    with caplog.at_level("WARNING", logger="ipsp.engine"):
        for _ in range(3):
            gw2.inbound(replay.buf, replay.off, replay.lens, replay.status)   # 4 replays each time
            replay = Batch([bytes(replay.packet(i)) for i in range(4)])
            clock.t += 4.0
            gw2.tick()
    lines = [r.getMessage() for r in caplog.records]
    # ticks at t+4 and t+8 are inside the interval; t+12 logs everything since the start
    assert lines == ["SA 0x00001001 inbound: 12 packets dropped as REPLAY"]


def _total(engine, direction):
    return sum(v for k, v in engine.counters()["totals"][direction].items() if k != "bytes")


def test_every_packet_is_in_exactly_one_counter_while_sas_are_rekeyed_and_deleted():
    """Issue 11 item 6: threads push batches through both engines while the main thread
    rekeys every SA pair and deletes the old SAs at once (no grace), so batches that took
    the old tables meet closed SAs. Per direction, the engine's totals (its own decisions,
    live, draining and retired SAs) add up to exactly the packets submitted, SA_DEAD ones
    included."""
    clock = Clock()
    threads = 3
    gw1, gw2 = _sharded_pairs(clock, threads)
    current = {t: 0x100 + t for t in range(threads)}
    gw1.km.add_policy(PolicySelector(N("10.1.99.0/24"), N("10.2.0.0/16")), Action.PROTECT, reqid=99)
    gw2.km.add_policy(PolicySelector(N("10.1.99.0/24"), N("10.2.0.0/16")), Action.PROTECT, Direction.IN, reqid=99)
    submitted = {"out": 0, "in": 0}
    count_lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def push(engine, direction, b):
        if direction == "out":
            engine.outbound(b.buf, b.off, b.lens, b.status, STRIDE)
        else:
            engine.inbound(b.buf, b.off, b.lens, b.status)
        with count_lock:
            submitted[direction] += b.n

    def run(t):
        try:
            i = 0
            while not stop.is_set():
                b = Batch([udp(f"10.1.{t}.1", "10.2.0.1", i + k) for k in range(48)])
                i += 48
                push(gw1, "out", b)
                push(gw2, "in", b)          # ESP, and what met no SA arrives in clear
        except BaseException as exc:      # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    try:
        for generation in range(1, 25):
            for t in range(threads):
                key, spi = os.urandom(20), 0x10000 * generation + t
                gw2.km.add_sa(cfg(spi, key), "in", reqid=t + 1)
                gw1.km.add_sa(cfg(spi, key), "out", reqid=t + 1)
                gw1.km.del_sa(current[t], GW2, "out")           # break at once: no grace
                gw2.km.del_sa(current[t], GW2, "in")
                current[t] = spi
            # and, for certain, batches on tables that still hold a closed SA (a pair of its
            # own, reqid 99: killed inside changes(), the tables keep it until the block ends)
            key, spi = os.urandom(20), 0x10000 * generation + 0x8000
            gw1.km.add_sa(cfg(spi, key), "out", reqid=99)
            gw2.km.add_sa(cfg(spi, key), "in", reqid=99)
            esp = Batch([udp("10.1.99.1", "10.2.0.1", k) for k in range(16)])
            push(gw1, "out", esp)
            dead = Batch([udp("10.1.99.1", "10.2.0.1", k) for k in range(16)])
            with gw1.changes():
                gw1.km.del_sa(spi, GW2, "out")
                push(gw1, "out", dead)
            with gw2.changes():
                gw2.km.del_sa(spi, GW2, "in")
                push(gw2, "in", esp)
            assert set(esp.statuses()) == set(dead.statuses()) == {"SA_DEAD"}
            clock.t += 1.0
            gw1.tick()
            gw2.tick()
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert errors == []
    assert _total(gw1, "out") == submitted["out"]
    assert _total(gw2, "in") == submitted["in"]
    assert gw1.counters()["totals"]["out"]["SA_DEAD"] >= 16 * 24
    assert gw2.counters()["totals"]["in"]["SA_DEAD"] >= 16 * 24
    assert _total(gw1, "in") == 0 and _total(gw2, "out") == 0


def test_a_batch_running_when_its_sa_is_killed_is_counted_on_it():
    # kill() used to copy the counters before close(), which waits for the running batch:
    # the batch was then in the kernel's counters but not in the copy the SA reported
    from ipsp.sad import SecurityAssociation
    sa = SecurityAssociation(cfg(0x3001, os.urandom(20)), "out")
    n = 60000
    b = Batch([udp("10.1.0.1", "10.2.0.1", 0)] * n)
    done = []
    worker = threading.Thread(target=lambda: done.append(
        sa.kernel.encap_batch(b.buf, b.off, b.lens, b.status, STRIDE)))
    worker.start()
    while sa.kernel.seq_out == 0 and worker.is_alive():
        pass                              # the batch has begun (sequence numbers are taken)
    sa.kill()
    worker.join()
    assert done == [n]
    assert sa.usage()[1] == n and sa.counters()["out"]["packets"] == n
    late = Batch([udp("10.1.0.1", "10.2.0.1", 0)] * 3)
    assert sa.kernel.encap_batch(late.buf, late.off, late.lens, late.status, STRIDE) == 0
    assert sa.counters()["out"]["SA_DEAD"] == 3 and sa.counters()["out"]["packets"] == n


def test_an_sa_deleted_while_a_batch_holds_the_old_tables_drains_before_its_counts_are_final():
    # The batch groups its packets by SA: A's long burst runs first; B is deleted meanwhile
    # (killed, and the tables rebuilt without it). The batch then reaches B on the tables it
    # started with and marks B's packets SA_DEAD. The old engine folded B's counters into its
    # totals at the rebuild, before those packets existed, and lost them.
    gw1 = Engine(clock=Clock())
    for t in (1, 2):
        gw1.km.add_policy(PolicySelector(N(f"10.1.{t}.0/24"), N("10.2.0.0/16")), Action.PROTECT, reqid=t)
        gw1.km.add_sa(cfg(0x4000 + t, os.urandom(20)), "out", reqid=t)
    a, b = gw1.km.sad.get(0x4001, GW2, "out"), gw1.km.sad.get(0x4002, GW2, "out")
    n = 60000
    batch = Batch([udp("10.1.1.1", "10.2.0.1", 0)] * n + [udp("10.1.2.1", "10.2.0.1", 0)] * 16)
    worker = threading.Thread(target=gw1.outbound, args=(batch.buf, batch.off, batch.lens, batch.status, STRIDE))
    worker.start()
    while a.kernel.seq_out == 0 and worker.is_alive():
        pass
    assert b.kernel.seq_out == 0, "the batch reached B before it was deleted: nothing was tested"
    gw1.km.del_sa(0x4002, GW2, "out")
    worker.join()
    assert batch.statuses() == ["OK"] * n + ["SA_DEAD"] * 16
    totals = gw1.counters()["totals"]["out"]
    assert totals["packets"] == n and totals["SA_DEAD"] == 16 and _total(gw1, "out") == n + 16
