"""The bounded IKE intake (ipsp.ike.intake) and what it protects (issue 11 item 1): bounds in
datagrams and bytes with drop counters, established IKE SAs served ahead of new IKE_SA_INIT,
a budget per loop iteration; the kernel steering of IKE away from a gateway's ESP socket; the
half-open limits past the cookie; log lines from the network limited per reason; and, on
real sockets, a flood fed to a daemon from another thread while its peer rekeys."""

import dataclasses
import errno
import logging
import os
import socket
import struct
import threading
import time

import pytest

from ipsp.ike import ikesa
from ipsp.ike.config import IkeSettings
from ipsp.ike.intake import ESTABLISHED, NEW, Intake
from ipsp.ike.message import KE, SA, ExchangeType, Header, Message, Nonce, Notify, NotifyType
from ipsp.ike.proposals import parse_ike
from ipsp.ike.transport import NON_ESP_MARKER, steering_program
from ipsp.ratelimit import QuietLog

from ike_loop import Pair, socket_daemon as daemon
from nslib import free_udp_ports as free_ports



def init_request(spi_i: bytes = b"\1" * 8, size: int = 0) -> bytes:
    """An IKE_SA_INIT request header (and *size* bytes of body): what the intake looks at."""
    h = Header(spi_i, bytes(8), ExchangeType.IKE_SA_INIT, 0, initiator=True)
    data = bytearray(Message(h, ()).encode() + bytes(size))
    data[24:28] = struct.pack("!I", len(data))
    return bytes(data)


def for_sa(spi_i: bytes, spi_r: bytes, *, from_initiator: bool = True) -> bytes:
    h = Header(spi_i, spi_r, ExchangeType.INFORMATIONAL, 1, initiator=from_initiator, response=not from_initiator)
    return Message(h, ()).encode()


class Wakes:
    def __init__(self):
        self.n = 0

    def __call__(self):
        self.n += 1


def test_classification_by_header_fields():
    ours = {b"R" * 8, b"I" * 8}
    intake = Intake(ours.__contains__, Wakes())
    assert intake.classify(init_request()) == NEW
    assert intake.classify(for_sa(b"x" * 8, b"R" * 8)) == ESTABLISHED            # we are the responder
    assert intake.classify(for_sa(b"I" * 8, b"y" * 8, from_initiator=False)) == ESTABLISHED   # we initiated
    assert intake.classify(for_sa(b"x" * 8, b"z" * 8)) == NEW                      # an SPI we do not hold
    assert intake.classify(for_sa(b"R" * 8, b"z" * 8)) == NEW                      # ours, but on the wrong side
    bad = bytearray(init_request())
    bad[17] = 0x10                                                                  # IKEv1
    for data in (b"", b"\0" * 27, init_request()[:-1] + b"", bytes(bad), init_request() + b"x"):
        assert intake.classify(data) is None


def test_bounds_in_datagrams_and_bytes_each_drop_counted():
    wakes = Wakes()
    intake = Intake(lambda spi: spi == b"R" * 8, wakes, limits={NEW: (10, 1 << 20), ESTABLISHED: (100, 200)})
    results = [intake.put(init_request(i.to_bytes(8, "big")), ("192.0.2.9", 500), 500) for i in range(1, 1001)]
    assert results.count(True) == 10
    known = for_sa(b"x" * 8, b"R" * 8)
    assert [intake.put(known, ("192.0.2.2", 4500), 4500) for _ in range(10)].count(True) == 200 // len(known)
    st = intake.stats()
    assert st["queued_new"] == 10 and st["dropped_new"] == 990 and st["queue_new"] == 10
    assert st["queued_established"] == 200 // len(known) and st["dropped_established"] == 10 - 200 // len(known)
    assert st["queue_established_bytes"] <= 200
    assert wakes.n == 1                            # one wake-up for the whole burst
    assert not intake.put(b"\xff", ("192.0.2.9", 500), 500) and intake.stats()["malformed"] == 1


def test_huge_datagrams_are_bounded_by_bytes():
    intake = Intake(lambda spi: False, Wakes())
    big = init_request(size=65535 - 28)
    assert len(big) == 65535
    taken = sum(intake.put(big, ("192.0.2.9", 500), 500) for _ in range(1000))
    count, size = intake.limits[NEW]
    assert taken == size // 65535 < count
    assert intake.stats()["queue_new_bytes"] <= size


def test_established_first_and_a_budget_per_take():
    intake = Intake(lambda spi: spi == b"R" * 8, Wakes())
    for i in range(200):
        intake.put(init_request(i.to_bytes(8, "big")), ("192.0.2.9", 4500), 4500)
    known = for_sa(b"x" * 8, b"R" * 8)
    for _ in range(3):
        intake.put(known, ("192.0.2.2", 4500), 4500)
    first = list(intake.take())
    assert len(first) == Intake.BUDGET
    assert [d for d, _, _ in first[:3]] == [known] * 3 and all(d != known for d, _, _ in first[3:])
    rest = []
    while intake.pending():
        rest += list(intake.take())
    assert len(first) + len(rest) == 203 and intake.stats()["queue_new"] == 0


def test_wakes_again_after_the_queues_emptied():
    wakes = Wakes()
    intake = Intake(lambda spi: False, wakes)
    intake.put(init_request(), ("192.0.2.9", 500), 500)
    assert len(list(intake.take())) == 1 and not intake.pending()
    intake.put(init_request(), ("192.0.2.9", 500), 500)
    assert wakes.n == 2


# -- the kernel's choice of socket in a SO_REUSEPORT group ------------------------------------------

def test_steering_program_shape():
    prog = steering_program(True, 2, 0)
    assert len(prog) % 8 == 0 and len(prog) // 8 == 9
    # the returns: new, established, ESP
    rets = [struct.unpack_from("=HBBI", prog, i)[3] for i in range(0, len(prog), 8)
            if struct.unpack_from("=HBBI", prog, i)[0] == 0x06]
    assert rets == [2, 3, 0]


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65535))
        except BlockingIOError:
            return out


def test_ike_on_a_shared_port_goes_to_the_daemon_esp_stays_with_the_gateway():
    """A "gateway" socket pair shares the NAT-T port (SO_REUSEPORT, as the gateway's UDP and
    DF sockets do); the daemon joins the group: IKE behind the marker reaches the daemon (its
    intake counts it), ESP and keepalives only the gateway's sockets, whatever their source."""
    port = free_ports(2)
    gw = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.setblocking(False)
        s.bind(("127.0.0.1", port + 1))
        gw.append(s)
    d = daemon("b", "a", "127.0.0.1", "127.0.0.2", port, start="none", nat_socket=gw[0], nat_group=2)
    d.start()
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    try:
        assert d.steered
        esp = [struct.pack("!II", 0x1000 + i, 1) + os.urandom(40) for i in range(4)]
        for s in senders:                       # 16 source ports: the kernel's hash would spread them
            for e in esp:
                s.sendto(e, ("127.0.0.1", port + 1))
            s.sendto(b"\xff", ("127.0.0.1", port + 1))
            s.sendto(NON_ESP_MARKER + init_request(os.urandom(8)), ("127.0.0.1", port + 1))
            s.sendto(NON_ESP_MARKER + for_sa(os.urandom(8), os.urandom(8)), ("127.0.0.1", port + 1))
        time.sleep(0.3)
        got = drain(gw[0]) + drain(gw[1])
        assert sorted(got) == sorted(esp * 16 + [b"\xff"] * 16)   # within the receive buffer
        intake = d.status()["intake"]
        assert intake["queued_new"] == 32 and intake["not_ike"] == 0, intake
    finally:
        d.stop()
        for s in senders + gw:
            s.close()


def test_what_a_batch_sends_leaves_after_its_engine_table_rebuild():
    """A response (here to IKE_SA_INIT; in a rekey, one announcing a new inbound SA) is held
    while the datagrams of its batch are handled and leaves once the engine's table is
    rebuilt: the peer cannot send on an SA before the engine has it."""
    port = free_ports(2)
    d = daemon("b", "a", "127.0.0.1", "127.0.0.2", port, start="none")
    d.start()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    try:
        proposal = parse_ike("aes128gcm16-prfsha256-x25519")
        req = Message(Header(b"\7" * 8, bytes(8), ExchangeType.IKE_SA_INIT, 0, initiator=True),
                      (SA((proposal.payload(1),)), KE(31, os.urandom(32)), Nonce(os.urandom(32)))).encode()

        def inside():
            d.receive(req, peer.getsockname(), port)
            try:
                peer.recv(65535)
                left = True
            except BlockingIOError:
                left = False
            return len(d._outbox), left

        assert d.call(inside) == (1, False)
        peer.settimeout(5)
        reply = Message.decode(peer.recv(65535))
        assert reply.header.response and reply.header.spi_i == b"\7" * 8
    finally:
        d.stop()
        peer.close()


def test_what_was_fed_before_the_loop_started_is_served():
    """The gateway's receive thread starts before the IKE daemon: what it hands over early
    waits in the intake and is served once the loop runs (and later datagrams still wake it)."""
    port = free_ports(2)
    d = daemon("b", "a", "127.0.0.1", "127.0.0.2", port, start="none")
    assert d.feed(init_request(b"\5" * 8), ("198.51.100.7", 4500))
    d.start()
    try:
        deadline = time.monotonic() + 5
        while d.status()["counters"]["received"] < 1:
            assert time.monotonic() < deadline, d.status()
            time.sleep(0.02)
        assert d.feed(init_request(b"\6" * 8), ("198.51.100.7", 4500))
        while d.status()["counters"]["received"] < 2:
            assert time.monotonic() < deadline, d.status()
            time.sleep(0.02)
    finally:
        d.stop()


def test_a_datagram_whose_handling_fails_does_not_stop_the_intake(caplog):
    """Fault injection: the protocol raises on one datagram (a bug); it is counted and
    logged, and the datagrams after it are still served."""
    port = free_ports(2)
    d = daemon("b", "a", "127.0.0.1", "127.0.0.2", port, start="none")
    real = d.ike.receive
    poison = init_request(b"\x09" * 8)

    def receive(data, remote, local_port):
        if data == poison:
            raise RuntimeError("a bug")
        real(data, remote, local_port)

    d.ike.receive = receive
    d.start()
    try:
        with caplog.at_level(logging.ERROR, logger="ipsp.ike"):
            d.feed(poison, ("198.51.100.7", 4500))
            d.feed(init_request(b"\x08" * 8), ("198.51.100.7", 4500))
            deadline = time.monotonic() + 5
            while d.status()["counters"]["received"] < 1:
                assert time.monotonic() < deadline, d.status()
                time.sleep(0.02)
        assert d.status()["intake"]["failed"] == 1
        assert any("handling it failed" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        d.stop()


def test_a_port_held_by_another_socket_is_refused_as_before():
    """Our sockets share their port only with each other (and a gateway's): a second daemon,
    or anything else on 500, makes start() fail with the bind error instead of joining."""
    port = free_ports(2)
    first = daemon("b", "a", "127.0.0.1", "127.0.0.2", port, start="none")
    first.start()
    try:
        second = daemon("b", "a", "127.0.0.1", "127.0.0.2", port, start="none")
        with pytest.raises(OSError) as e:
            second.start()
        assert e.value.errno == errno.EADDRINUSE
    finally:
        first.stop()


# -- the protocol's own bounds -----------------------------------------------------------------------

def test_half_open_limit_per_address_past_the_cookie():
    """Cookies off (a huge threshold): an address that answers cookies, or a configuration
    without them, still holds at most HALF_OPEN_PER_ADDRESS half-open SAs; the excess is
    dropped and counted, other addresses are still served."""
    p = Pair(b_settings=IkeSettings(cookie_threshold=1 << 20))
    p.a.ike.initiate("a-to-b")
    _, first, _, _ = p.wire.popleft()
    msg = Message.decode(first)
    limit = ikesa.HALF_OPEN_PER_ADDRESS
    for i in range(1, limit + 51):
        h = dataclasses.replace(msg.header, spi_i=i.to_bytes(8, "big"))
        p.b.ike.receive(Message(h, msg.payloads).encode(), ("198.51.100.7", 500), 500)
    assert len(p.b.ike.half_open) == limit and p.b.ike.stats["half_open_full"] == 50
    h = dataclasses.replace(msg.header, spi_i=b"other..!")
    p.b.ike.receive(Message(h, msg.payloads).encode(), ("198.51.100.8", 500), 500)
    assert len(p.b.ike.half_open) == limit + 1
    p.wire.clear()
    p.a.ike.sas.clear()
    p.advance(p.b.ike.settings.half_open_timeout + 1)          # they time out and free the address
    assert not p.b.ike.half_open and not p.b.ike._half_open_from


def test_cookies_on_the_nat_port_and_for_distinct_sources():
    """RFC 7296 2.6 on 4500 as on 500: past the threshold, 5,000 IKE_SA_INIT from 5,000
    addresses get cookies and make no state."""
    p = Pair(b_settings=IkeSettings(cookie_threshold=5))
    p.a.ike.initiate("a-to-b")
    _, first, _, _ = p.wire.popleft()
    msg = Message.decode(first)
    for i in range(1, 5001):
        h = dataclasses.replace(msg.header, spi_i=i.to_bytes(8, "big"))
        p.b.ike.receive(Message(h, msg.payloads).encode(), (f"10.{i >> 8}.{i & 255}.1", 4500), 4500)
    assert len(p.b.ike.half_open) == 5 and p.b.ike.stats["cookies_sent"] == 4995


def test_half_open_limit_in_all_past_the_cookie(monkeypatch):
    """However high cookie_threshold is set, cookies are asked from half the hard limit on;
    initiators that return a valid cookie still stop at the limit (counted)."""
    monkeypatch.setattr(ikesa, "HALF_OPEN_LIMIT", 20)
    p = Pair(b_settings=IkeSettings(cookie_threshold=1 << 20))
    p.a.ike.initiate("a-to-b")
    _, first, _, _ = p.wire.popleft()
    msg = Message.decode(first)
    nonce = next(x for x in msg.payloads if isinstance(x, Nonce)).data
    b = p.b.ike
    for i in range(1, 101):
        addr = f"198.51.100.{i}"
        h = dataclasses.replace(msg.header, spi_i=i.to_bytes(8, "big"))
        b.receive(Message(h, msg.payloads).encode(), (addr, 500), 500)
    assert len(b.half_open) == 10 and b.stats["cookies_sent"] == 90
    ver, secret = b._cookie_secrets[0]
    for i in range(11, 101):                 # those 90 come back with their cookies
        addr = f"198.51.100.{i}"
        cookie = Notify(0, b"", NotifyType.COOKIE, b._cookie(ver, secret, nonce, addr, i.to_bytes(8, "big")))
        h = dataclasses.replace(msg.header, spi_i=i.to_bytes(8, "big"))
        b.receive(Message(h, (cookie, *msg.payloads)).encode(), (addr, 500), 500)
    assert len(b.half_open) == 20 and b.stats["half_open_full"] == 80 and b.stats["cookies_refused"] == 0


def test_log_lines_limited_per_reason(caplog):
    now = [0.0]
    quiet = QuietLog(logging.getLogger("ipsp.test.quiet"), rate=1.0, burst=3, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="ipsp.test.quiet"):
        for i in range(1000):
            quiet(logging.WARNING, "flood", "message %d", i)
        quiet(logging.WARNING, "other", "another reason")
        now[0] += 1.0
        quiet(logging.WARNING, "flood", "later")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == ["message 0", "message 1", "message 2"] and lines[3] == "another reason"
    assert lines[4] == "later (and 997 more like it, not logged)" and len(lines) == 5
    assert quiet.suppressed == 997


def test_a_remote_flood_of_bad_proposals_logs_a_few_lines(caplog):
    p = Pair(b_conn={"ike_proposals": ["aes256-sha256-modp2048"]})
    p.a.ike.initiate("a-to-b")
    _, first, _, _ = p.wire.popleft()
    msg = Message.decode(first)
    with caplog.at_level(logging.INFO, logger="ipsp.ike"):
        for i in range(1, 501):
            h = dataclasses.replace(msg.header, spi_i=i.to_bytes(8, "big"))
            p.b.ike.receive(Message(h, msg.payloads).encode(), ("198.51.100.7", 500), 500)
    assert p.b.ike.stats["no_proposal"] == 500
    assert len([r for r in caplog.records if "NO_PROPOSAL_CHOSEN" in r.getMessage()]) <= 10


# -- on real sockets: a flood fed from another thread while the peer rekeys -------------------------

def test_fed_flood_is_bounded_and_rekeys_get_through():
    """b is fed IKE_SA_INIT from another thread as fast as Python can (the gateway's hand-off
    path) while a rekeys the Child SA and the IKE SA with b: both succeed, b's intake never
    holds more than its bounds, its control calls answer, and the counters add up."""
    port = free_ports(2)
    b = daemon("b", "a", "127.0.0.2", "127.0.0.1", port, start="none")
    a = daemon("a", "b", "127.0.0.1", "127.0.0.2", port, start="start")
    b.start()
    a.start()
    stop = threading.Event()
    fed = [0]

    def flood():
        datagrams = [init_request(i.to_bytes(8, "big"), size=200) for i in range(1, 1025)]
        while not stop.is_set():
            for d in datagrams:
                b.feed(d, ("198.51.100.7", 4500))
            fed[0] += len(datagrams)

    feeder = threading.Thread(target=flood, daemon=True)
    try:
        deadline = time.monotonic() + 10
        while not (a.status()["ike_sas"] and a.status()["ike_sas"][0]["children"]):
            assert time.monotonic() < deadline, a.status()
            time.sleep(0.05)
        feeder.start()
        time.sleep(0.3)
        slowest, depth = 0.0, 0
        assert a.call(a.ike.rekey, "c") == 1
        assert a.call(lambda: a.ike.rekey("c", ike=True)) == 1
        deadline = time.monotonic() + 15
        while True:
            t = time.monotonic()
            st = b.status()
            slowest = max(slowest, time.monotonic() - t)
            depth = max(depth, st["intake"]["queue_new_bytes"])
            c = a.status()["counters"]
            if c["child_rekeyed"] == 1 and c["ike_rekeyed"] == 1:
                break
            assert time.monotonic() < deadline, (c, st["intake"])
            time.sleep(0.1)
        stop.set()
        feeder.join(5)
        time.sleep(0.5)
        st = b.status()
        intake, counters = st["intake"], st["counters"]
        assert intake["dropped_new"] > 0 and intake["dropped_established"] == 0, intake
        assert depth <= b.intake.limits[NEW][1]
        assert slowest < 1.0
        # each datagram fed is queued or dropped, each queued one reached the protocol
        assert intake["queued_new"] + intake["dropped_new"] + intake["malformed"] >= fed[0]
        assert counters["received"] == intake["queued_new"] + intake["queued_established"]
        assert counters["ike_rekeyed"] == 1 and counters["child_rekeyed"] == 1   # b, the responder
        text = b.prometheus()
        assert f'ipsp_ike_intake_total{{outcome="dropped_new"}} {intake["dropped_new"]}' in text
        assert 'ipsp_ike_intake_queue{queue="new"} 0' in text
    finally:
        stop.set()
        a.stop()
        b.stop()
