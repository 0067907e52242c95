"""Hostile datagrams into every way in to IKE (issue 11 item 1): the protocol's receive, the
daemon's bounded intake (IkeDaemon.feed), the daemon's own socket, and the gateway's hand-off
of what its UDP socket receives behind the non-ESP marker. Empty, one byte, 64 KiB, length
fields of every absurd size, zero SPIs, payload lengths past the end, garbage after the
marker: nothing raises, and each datagram is counted exactly once."""

import ipaddress
import random
import socket
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hostile
from nslib import free_udp_ports as free_ports
from ipsp.config import GatewaySettings, config_from_document
from ipsp.engine import Engine
from ipsp.gateway import Gateway
from ipsp.ike.config import IkeSettings
from ipsp.ike.intake import Intake
from ipsp.ike.ikesa import Ike
from ipsp.ike.message import KE, SA, ExchangeType, Header, Message, Nonce, PayloadType
from ipsp.ike.proposals import parse_ike
from ipsp.ike.transport import NON_ESP_MARKER, IkeDaemon
from ipsp.keymgr import KeyManagerAPI
from ipsp.pad import PeerAuthorizationDatabase

from fastpath import Status, netio

PSK = "0x" + "5a" * 32
MAX_UDP = 65507                   # the largest IPv4 UDP payload
# what the protocol does with one datagram: exactly one of these counts it
OUTCOMES = ("malformed", "integrity_failed", "unknown_spi", "unexpected", "responses_resent", "cookies_sent",
            "cookies_refused", "no_proposal", "invalid_ke", "half_open_full", "half_open_created",
            "fragments_received")


def header(spi_i=b"\1" * 8, spi_r=bytes(8), nxt=0, version=0x20, exchange=ExchangeType.IKE_SA_INIT, flags=0x08,
           mid=0, length=None, body=b"") -> bytes:
    total = 28 + len(body) if length is None else length
    return struct.pack("!8s8sBBBBII", spi_i, spi_r, nxt, version, exchange, flags, mid, total & 0xFFFFFFFF) + body


def datagrams() -> list[tuple[str, bytes]]:
    rng = random.Random(11)
    out = [("empty", b""), ("one-byte", b"\0"), ("ff", b"\xff"), ("27-bytes", bytes(27)), ("zero-header", bytes(28)),
           ("garbage-1000", rng.randbytes(1000)), ("garbage-max", rng.randbytes(MAX_UDP - 4)),
           ("ikev1", header(version=0x10)), ("init-no-payloads", header()),
           ("init-zero-spi-i", header(spi_i=bytes(8))),
           ("zero-spis-informational", header(spi_i=bytes(8), exchange=ExchangeType.INFORMATIONAL, mid=1)),
           ("init-response-unknown", header(spi_r=b"\2" * 8, flags=0x20)),
           ("auth-unknown-spi", header(spi_r=b"\3" * 8, exchange=ExchangeType.IKE_AUTH, mid=1,
                                       nxt=PayloadType.SK, body=bytes(64))),
           ("payload-length-past-end", header(nxt=PayloadType.SA, body=struct.pack("!BBH", 0, 0, 0xFFFF))),
           ("payload-length-zero", header(nxt=PayloadType.SA, body=struct.pack("!BBH", 0, 0, 0))),
           ("payload-length-max", header(nxt=PayloadType.NONCE,
                                         body=struct.pack("!BBH", 0, 0, MAX_UDP - 4 - 28) + bytes(MAX_UDP - 36))),
           ("many-unknown-payloads", header(nxt=200, body=b"".join(
               struct.pack("!BBH", 200 if i < 9999 else 0, 0, 4) for i in range(10000)))),
           ("critical-unknown", header(nxt=200, body=struct.pack("!BBH", 0, 0x80, 4)))]
    # complete but for its zero initiator SPI (RFC 7296 3.1: MUST NOT be zero)
    full = Message(Header(bytes(8), bytes(8), ExchangeType.IKE_SA_INIT, 0, initiator=True),
                   (SA((parse_ike("aes128gcm16-prfsha256-x25519").payload(1),)), KE(31, rng.randbytes(32)),
                    Nonce(rng.randbytes(32)))).encode()
    out.append(("init-zero-spi-i-complete", full))
    out += [(f"length-field-{name}", header(length=v, body=bytes(16))) for name, v in hostile.sizes()]
    out += [(f"length-field-{name}", header(length=v)) for name, v in hostile.HUGE_INTEGERS]
    return out


DATAGRAMS = datagrams()


def test_every_case_fits_in_a_udp_datagram():
    assert all(len(d) <= MAX_UDP - 4 for _, d in DATAGRAMS)


@pytest.mark.parametrize("name,data", DATAGRAMS, ids=[n for n, _ in DATAGRAMS])
def test_protocol_counts_each_datagram_once(name, data):
    km = KeyManagerAPI()
    sent = []
    ike = Ike(km, PeerAuthorizationDatabase([]), IkeSettings(), (), local="192.0.2.2",
              send=lambda d, to, port: sent.append(d), clock=time.monotonic)
    before = dict(ike.stats)
    ike.receive(data, ("198.51.100.7", 4500), 4500)
    delta = {k: v - before[k] for k, v in ike.stats.items() if v != before[k]}
    assert delta.pop("received") == 1
    delta.pop("sent", None)
    assert sum(delta.get(k, 0) for k in OUTCOMES) == 1 and set(delta) <= set(OUTCOMES), delta
    assert not ike.half_open and not ike.sas, name     # none of these may leave state behind


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.builds(lambda h, tail: h + tail, st.sampled_from([d for _, d in DATAGRAMS if len(d) < 2000]),
                           st.binary(max_size=64))),
       st.booleans())
def test_intake_takes_or_counts_any_bytes_once(data, known):
    intake = Intake(lambda spi: known, lambda: None)
    before = sum(intake.counters.values())
    assert intake.put(data, ("198.51.100.7", 500), 500) in (True, False)
    assert sum(intake.counters.values()) == before + 1
    assert len(list(intake.take())) == intake.counters["queued_new"] + intake.counters["queued_established"]


def daemon(port: int, **kw) -> IkeDaemon:
    cfg = config_from_document({
        "ike": {"local_id": "fqdn:b.ipsp.test", "port": port, "nat_port": port + 1},
        "peer": [{"name": "a", "id": "fqdn:a.ipsp.test", "auth": "psk", "psk": PSK}],
        "connection": [{"name": "c", "peer": "a", "local_ts": "10.2.0.0/16", "remote_ts": "10.1.0.0/16",
                        "start": "none"}],
    })
    engine = Engine()
    engine.apply_config(cfg)
    return IkeDaemon(engine, cfg.ike, cfg.connections, "127.0.0.1", **kw)


def settle(d: IkeDaemon, expected: int) -> dict:
    deadline = time.monotonic() + 10
    while True:
        st = d.status()
        i = st["intake"]
        if i["queue_new"] == i["queue_established"] == 0 and \
                i["malformed"] + i["queued_new"] + i["queued_established"] + i["dropped_new"] \
                + i["dropped_established"] + i["not_ike"] >= expected:
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.05)


def accounted(st: dict, n: int) -> None:
    i, c = st["intake"], st["counters"]
    assert i["malformed"] + i["queued_new"] + i["queued_established"] + i["dropped_new"] + i["dropped_established"] \
        + i["not_ike"] == n, i
    assert c["received"] == i["queued_new"] + i["queued_established"], (c, i)
    assert sum(c[k] for k in OUTCOMES) == c["received"], c


def test_feed_and_the_daemons_own_sockets_count_each_datagram_once():
    port = free_ports(2)
    d = daemon(port)
    d.start()
    try:
        for _, data in DATAGRAMS:
            assert d.feed(data, ("198.51.100.7", 4500)) in (True, False)
        st = settle(d, len(DATAGRAMS))
        accounted(st, len(DATAGRAMS))
        assert st["counters"]["half_open_created"] == 0 and not st["ike_sas"], st
        assert st["intake"]["malformed"] > 0 and st["intake"]["queued_new"] > 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            for _, data in DATAGRAMS:
                s.sendto(data, ("127.0.0.1", port))                       # 500: IKE as it is
                s.sendto(NON_ESP_MARKER + data, ("127.0.0.1", port + 1))  # 4500: behind the marker
                time.sleep(0.002)
            for garbage in (b"", b"\xff", b"\1\2\3\4" + bytes(100)):      # not IKE on 4500
                s.sendto(garbage, ("127.0.0.1", port + 1))
        total = 3 * len(DATAGRAMS) + 3
        accounted(settle(d, total), total)
    finally:
        d.stop()


def test_gateway_hand_off_counts_each_datagram_once():
    """What the gateway's UDP socket receives (udp_recv_burst), through Engine.inbound, to
    Gateway._ike_input: behind the marker to the daemon's intake, else counted as not IKE."""
    port = free_ports(2)
    d = daemon(port)
    # the settings a [gateway] table makes (config_from_document refuses a loopback outer address)
    settings = GatewaySettings(address=(ipaddress.ip_address("10.2.0.1"),), local=ipaddress.ip_address("127.0.0.1"),
                               udp_port=port + 1, batch=8)
    engine = d.engine
    engine.listen_udp(port + 1)
    gw = Gateway(engine, settings)
    gw.ike = d
    d.start()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind(("127.0.0.1", port + 2))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        cases = [NON_ESP_MARKER + data for _, data in DATAGRAMS] + [b"\0\0\0\0", b"\0\0\0", b"\1" * 100]
        a = gw.in_arena
        got = bypass = 0
        for i in range(0, len(cases), a.n):
            for data in cases[i:i + a.n]:
                tx.sendto(data, ("127.0.0.1", port + 2))
            time.sleep(0.05)
            n = netio.udp_recv_burst(rx.fileno(), a.buf, a.off, a.lens, a.stride, 0, a.n,
                                     socket.inet_aton("127.0.0.1"), port + 1, gw.io)
            off, lens, status, _ = a.batch(n)
            engine.inbound(a.buf, off, lens, status)
            assert Status.OK not in a.status[:n]
            bypass += a.status.count(bytes([Status.BYPASS]), 0, n)     # in clear: what the gateway looks at
            gw._ike_input(n)
            got += n
        assert got == len(cases)
        st = gw.stats()
        handed = st["ike_received"]
        # the marker with nothing after it ("empty", and the bare marker) is not IKE (RFC 3948 2.2)
        assert handed + st["dropped"]["not_ike"] == bypass and handed == len(DATAGRAMS) - 1, (st, bypass)
        accounted(settle(d, handed), handed)
    finally:
        d.stop()
        rx.close()
        tx.close()
