"""The gateway's parts, without a network namespace (tests/gateway runs the whole thing):

- ICMP "fragmentation needed" and ICMPv6 "packet too big" as scapy reads them: checksums,
  the MTU, the quoted bytes, the size limits, and the cases where no error may be sent;
- RFC 791 fragmentation, reassembled by scapy's defragment;
- path MTU estimates, the rate limit, ICMP reports read from a raw ICMP socket;
- the [gateway] table and the SA's `fragment` key, with their errors' key paths;
- the forwarder's two halves (Gateway.send, Gateway.deliver) over UDP sockets on the
  loopback address, with a pipe standing in for the TUN device;
- the control socket's "gateway" section and `ipsp gateway`'s refusals.
"""

import ipaddress
import json
import os
import pathlib
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
import types

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPOption_RR, IPOption_Security, defragment
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6PacketTooBig, IPv6

import fastpath
import ipsp
from fastpath import Cipher, SAState, netio
from ipsp import cli
from ipsp.config import GatewaySettings, config_from_document
from ipsp.control import ControlClient
from ipsp.engine import Engine
from ipsp.errors import ConfigError
from ipsp.gateway import Gateway, GatewayControl
from ipsp.pmtu import PathMTU, frag_needed, fragment4, packet_too_big, parse_frag_needed
from ipsp.ratelimit import RateLimit

SRC = os.pathsep.join(dict.fromkeys(str(pathlib.Path(m.__file__).resolve().parents[1]) for m in (ipsp, fastpath)))
A4, A6 = ipaddress.IPv4Address("10.1.0.1"), ipaddress.IPv6Address("2001:db8:1::1")


def valid_ip_checksum(raw: bytes) -> bool:
    p = IP(raw)
    c = p.chksum
    del p.chksum
    return IP(bytes(p)).chksum == c


# -- ICMP errors ---------------------------------------------------------------------------------

def test_frag_needed_as_scapy_reads_it():
    offending = bytes(IP(src="10.1.0.2", dst="10.2.0.2", flags="DF", id=77) / UDP(sport=5, dport=6) / bytes(1472))
    msg = frag_needed(offending, 1438, A4)
    ip = IP(msg)
    assert (ip.src, ip.dst, ip.proto, ip.tos, ip.ttl, ip.len) == ("10.1.0.1", "10.1.0.2", 1, 0xC0, 64, len(msg))
    assert len(msg) == 576                                # RFC 1812 4.3.2.3: as much as fits 576
    assert valid_ip_checksum(msg)
    icmp = ip[ICMP]
    assert (icmp.type, icmp.code, icmp.nexthopmtu) == (3, 4, 1438)
    c = icmp.chksum
    del icmp.chksum
    assert ICMP(bytes(icmp)).chksum == c
    assert msg[28:] == offending[:548]                    # the quote: the packet's first bytes
    small = bytes(IP(src="10.1.0.2", dst="10.2.0.2", flags="DF") / UDP() / b"x")
    assert frag_needed(small, 600, A4)[28:] == small      # all of a short packet
    assert IP(frag_needed(small, 10, A4))[ICMP].nexthopmtu == 68    # RFC 791: no MTU below 68


@pytest.mark.parametrize("case", ["icmp error", "later fragment", "multicast dst", "broadcast dst", "zero src",
                                  "loopback src", "class e src", "not ipv4"])
def test_no_frag_needed_where_rfc_1122_forbids(case):
    p = {"icmp error": IP(src="10.1.0.2", dst="10.2.0.2") / ICMP(type=11) / bytes(100),
         "later fragment": IP(src="10.1.0.2", dst="10.2.0.2", frag=100, flags="DF") / bytes(100),
         "multicast dst": IP(src="10.1.0.2", dst="224.0.0.5") / bytes(100),
         "broadcast dst": IP(src="10.1.0.2", dst="255.255.255.255") / bytes(100),
         "zero src": IP(src="0.0.0.0", dst="10.2.0.2") / bytes(100),
         "loopback src": IP(src="127.0.0.1", dst="10.2.0.2") / bytes(100),
         "class e src": IP(src="240.0.0.1", dst="10.2.0.2") / bytes(100),
         "not ipv4": IPv6() / bytes(100)}[case]
    assert frag_needed(bytes(p), 1400, A4) is None
    assert frag_needed(b"\x45\x00", 1400, A4) is None    # too short to be a header


def test_an_echo_request_does_get_one():
    assert frag_needed(bytes(IP(src="10.1.0.2", dst="10.2.0.2") / ICMP(type=8) / bytes(100)), 1400, A4)


def test_packet_too_big_as_scapy_reads_it():
    offending = bytes(IPv6(src="2001:db8:1::2", dst="2001:db8:2::2") / UDP() / bytes(1452))
    msg = packet_too_big(offending, 1422, A6)
    ip = IPv6(msg)
    assert (ip.src, ip.dst, ip.nh, ip.plen) == ("2001:db8:1::1", "2001:db8:1::2", 58, len(msg) - 40)
    assert len(msg) == 1280                               # RFC 4443 2.4 (c)
    ptb = ip[ICMPv6PacketTooBig]
    assert (ptb.type, ptb.code, ptb.mtu) == (2, 0, 1422)
    c = ptb.cksum
    del ptb.cksum
    assert IPv6(bytes(ip))[ICMPv6PacketTooBig].cksum == c       # the pseudo-header checksum
    assert msg[48:] == offending[:1232]
    assert IPv6(packet_too_big(offending, 900, A6))[ICMPv6PacketTooBig].mtu == 1280   # RFC 8201 4


def test_packet_too_big_rules():
    base = dict(src="2001:db8:1::2", dst="2001:db8:2::2")
    assert packet_too_big(bytes(IPv6(**base) / ICMPv6DestUnreach() / bytes(1400)), 1300, A6) is None  # an error
    assert packet_too_big(bytes(IPv6(src="::", dst="2001:db8:2::2") / bytes(1400)), 1300, A6) is None
    assert packet_too_big(bytes(IPv6(src="ff02::1", dst="2001:db8:2::2") / bytes(1400)), 1300, A6) is None
    # unlike other errors, it answers a packet sent to a group (RFC 4443 2.4 e.2)
    assert packet_too_big(bytes(IPv6(src="2001:db8:1::2", dst="ff0e::1") / UDP() / bytes(1400)), 1300, A6)
    assert packet_too_big(bytes(IP() / bytes(100)), 1300, A6) is None


# -- fragmentation -------------------------------------------------------------------------------

def test_fragments_reassemble_to_the_packet():
    options = [IPOption_Security(), IPOption_RR()]     # copied (type 130) and not copied (type 7)
    original = IP(src="10.1.0.2", dst="10.2.0.2", id=4242, ttl=9, options=options) / UDP(sport=1, dport=2) / (
        bytes(range(256)) * 12)
    raw = bytes(original)
    frags = fragment4(raw, 1000)
    assert len(frags) == 4 and all(len(f) <= 1000 for f in frags)
    ips = [IP(f) for f in frags]
    for i, f in enumerate(ips):
        assert valid_ip_checksum(frags[i]) and f.id == 4242 and f.ttl == 9
        assert f.flags.MF == (i < 3)
        if i < 3:
            assert len(f.payload) % 8 == 0
    def options(ip):
        return [o.option for o in ip.options if o.option != 0]         # without the end-of-list padding
    assert options(ips[0]) == [2, 7] and all(options(f) == [2] for f in ips[1:])    # later: only the copied one
    whole = defragment([IP(f) for f in frags])[0]
    assert bytes(whole[UDP]) == bytes(original[UDP])
    # a fragment fragmented again keeps its offsets and its MF
    first, second = fragment4(frags[0], 500), fragment4(frags[-1], 300)
    again = defragment([IP(f) for f in first + frags[1:3] + second])[0]
    assert bytes(again[UDP]) == bytes(original[UDP])
    assert IP(second[-1]).flags.MF == 0 and IP(first[-1]).flags.MF == 1


def test_fragment4_refuses():
    df = bytes(IP(flags="DF") / bytes(2000))
    with pytest.raises(ValueError, match="DF"):
        fragment4(df, 1000)
    with pytest.raises(ValueError, match="room"):
        fragment4(bytes(IP() / bytes(2000)), 24)
    with pytest.raises(ValueError):
        fragment4(b"\x60" + bytes(60), 1000)
    fits = bytes(IP(flags="DF") / bytes(100))
    assert fragment4(fits + b"trailing", 1000) == [fits]   # fits: alone, without what follows it


# -- estimates, rate limit, reports ---------------------------------------------------------------

def test_path_mtu_estimates():
    now = [100.0]
    p = PathMTU(1500, clock=lambda: now[0], age=600)
    assert p.get("192.0.2.2") == 1500
    assert p.report("192.0.2.2", 1400) and p.get("192.0.2.2") == 1400
    assert not p.report("192.0.2.2", 1450) and p.get("192.0.2.2") == 1400      # never raised by a report
    assert p.report("192.0.2.2", 100) and p.get("192.0.2.2") == 576            # floor: 576 for IPv4
    assert p.report("2001:db8::2", 600) and p.get("2001:db8::2") == 1280       # 1280 for IPv6
    assert p.get("192.0.2.9") == 1500 and p.lowered() == {"192.0.2.2": 576, "2001:db8::2": 1280}
    now[0] += 599
    assert p.expire() == []
    now[0] += 1
    assert sorted(p.expire()) == ["192.0.2.2", "2001:db8::2"] and p.get("192.0.2.2") == 1500
    p.set_initial(1400)
    assert p.get("192.0.2.2") == 1400 and not p.report("192.0.2.2", 1400)


def test_forged_reports_naming_new_peers_keep_the_table_bounded():
    # ICMP reports are unauthenticated: one naming a fresh address each time must not grow the
    # table without bound; the estimate lowered longest ago makes room, a refreshed one stays
    p = PathMTU(1500, limit=64)
    assert p.report("192.0.2.2", 1400)
    for i in range(10_000):
        p.report(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1300)
        if i % 32 == 0:
            p.report("192.0.2.2", 1400 - 1 - i // 32)     # still being reported: kept
    assert len(p.lowered()) == 64 and p.evicted == 10_001 - 64
    assert p.get("192.0.2.2") < 1400 and p.get("10.0.0.0") == 1500


def test_rate_limit():
    now = [0.0]
    r = RateLimit(rate=10, burst=3, clock=lambda: now[0])
    assert [r.allow() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.1
    assert r.allow() and not r.allow()


def test_parse_frag_needed():
    local = ipaddress.IPv4Address("192.0.2.1")
    sent = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=4500, dport=4500) / bytes(1400))
    icmp = bytes(IP(src="198.51.100.9", dst="192.0.2.1") / ICMP(type=3, code=4, nexthopmtu=1300) / sent[:28])
    assert parse_frag_needed(icmp, local.packed, 17, 4500) == ("192.0.2.2", 1300)
    assert parse_frag_needed(icmp, local.packed, 17, 4501) is None                  # another socket's
    assert parse_frag_needed(icmp, bytes(4), 17, 4500) is None
    assert parse_frag_needed(icmp, local.packed, 50) is None
    esp = bytes(IP(src="192.0.2.1", dst="192.0.2.2", proto=50) / bytes(100))
    icmp = bytes(IP(dst="192.0.2.1") / ICMP(type=3, code=4, nexthopmtu=1280) / esp[:28])
    assert parse_frag_needed(icmp, local.packed, 50) == ("192.0.2.2", 1280)
    unreach = bytes(IP(dst="192.0.2.1") / ICMP(type=3, code=3) / sent[:28])
    assert parse_frag_needed(unreach, local.packed, 17, 4500) is None
    assert parse_frag_needed(b"", local.packed, 17) is None
    zero = bytes(IP(dst="192.0.2.1") / ICMP(type=3, code=4, nexthopmtu=0) / sent[:28])
    assert parse_frag_needed(zero, local.packed, 17, 4500) is None                  # RFC 1191 unaware router


# -- configuration ------------------------------------------------------------------------------

KEY = "0x" + "11" * 20


def doc(gateway=None, sa=None, **extra) -> dict:
    gw = {"tun": "ipsp0", "address": "10.1.0.1", "routes": ["10.2.0.0/16"], "tun_mtu": 1500, "outer": "udp",
          "local": "192.0.2.1", "udp_port": 4500, "path_mtu": 1500, "batch": 256, "keepalive": 20}
    gw.update(gateway or {})
    base = {"encap": "udp", "reqid": 1, "proposal": "aes128gcm16", "enc_key": KEY}
    sas = [{**base, "direction": "out", "spi": 0x1001, "src": "192.0.2.1", "dst": "192.0.2.2"},
           {**base, "direction": "in", "spi": 0x2001, "src": "192.0.2.2", "dst": "192.0.2.1"}]
    for entry in sas:
        entry.update(sa or {})
    return {"gateway": {k: v for k, v in gw.items() if v is not None}, "sa": sas, **extra}


def test_gateway_table_loads():
    cfg = config_from_document(doc(sa={"fragment": "inner"}), path="gw.toml")
    assert cfg.gateway == GatewaySettings(address=(A4,), local=ipaddress.IPv4Address("192.0.2.1"), tun="ipsp0",
                                          routes=(ipaddress.IPv4Network("10.2.0.0/16"),), tun_mtu=1500, outer="udp",
                                          udp_port=4500, path_mtu=1500, batch=256, keepalive=20.0)
    assert [m.config.fragment for m in cfg.sas] == ["inner", "inner"]
    assert config_from_document({}).gateway is None
    minimal = config_from_document({"gateway": {"address": "10.1.0.1", "local": "192.0.2.1"}}).gateway
    assert (minimal.tun, minimal.routes, minimal.outer, minimal.udp_port, minimal.keepalive) == ("ipsp0", (), "udp", 4500, 20)
    both = config_from_document(doc({"address": ["10.1.0.1", "2001:db8:1::1"], "routes": ["10.2.0.0/16", "2001:db8:2::/48"]}))
    assert both.gateway.source_for(6) == A6 and both.gateway.source_for(4) == A4
    esp = config_from_document(doc({"outer": "esp"}, sa={"encap": None}))
    assert esp.gateway.outer == "esp"


@pytest.mark.parametrize("gateway, sa, key, message", [
    ({"routes": ["10.2.0.0/16", "nonsense"]}, None, "gateway.routes[1]", "not an IP prefix"),
    ({"routes": ["192.0.2.0/24"]}, None, "gateway.routes[0]", "covers the gateway's outer address"),
    ({"routes": ["192.0.0.0/8"], "local": "198.51.100.1"}, {"src": "198.51.100.1"}, None, None),
    ({"address": ["10.1.0.1", "10.1.0.9"]}, None, "gateway.address[1]", "one per IP version"),
    ({"address": "0.0.0.0"}, None, "gateway.address", "unicast"),
    ({"address": None}, None, "gateway", "missing required key 'address'"),
    ({"local": "0.0.0.0"}, None, "gateway.local", "unicast address of this host"),
    ({"outer": "tcp"}, None, "gateway.outer", "must be one of udp, esp"),
    ({"outer": "esp"}, None, "sa[0].encap", "SAs need no encap"),
    ({"udp_port": 4501}, None, "sa[0].sport", "must be the gateway's udp_port 4501"),
    ({"path_mtu": 500}, None, "gateway.path_mtu", "must be 576..65535"),
    ({"batch": 2000}, None, "gateway.batch", "must be 1..1024"),
    ({"keepalive": -1}, None, "gateway.keepalive", "must be at least 0"),
    ({"tun": "a-name-far-too-long"}, None, "gateway.tun", "not a network interface name"),
    ({"tun_mtu": 1000, "routes": ["2001:db8::/32"]}, None, "gateway.tun_mtu", "must be 1280..65535"),
    ({"mtu": 1400}, None, "gateway", "unknown key(s) mtu"),
    (None, {"fragment": "both"}, "sa[0].fragment", "must be one of outer, inner"),
    (None, {"fragment": "inner", "mode": "transport"}, "sa[0].fragment", "needs tunnel mode"),
])
def test_gateway_table_errors(gateway, sa, key, message):
    d = doc(gateway, sa)
    if key is None:                   # the peer itself inside a route: its ESP would loop
        d["sa"][0]["dst"] = d["sa"][1]["src"] = "192.1.2.3"
        d["sa"][1]["dst"] = "198.51.100.1"
        key, message = "gateway.routes[0]", "covers the peer 192.1.2.3 of sa[0]"
    with pytest.raises(ConfigError) as info:
        config_from_document(d, path="gw.toml")
    assert (info.value.path, info.value.key) == ("gw.toml", key), info.value
    assert message in info.value.message


def test_sa_local_end_must_be_the_gateway():
    d = doc()
    d["sa"][1]["dst"] = "192.0.2.99"
    with pytest.raises(ConfigError) as info:
        config_from_document(d)
    assert info.value.key == "sa[1].dst" and "192.0.2.1" in info.value.message


# -- the forwarder over loopback sockets ------------------------------------------------------------

K_OUT, K_IN = bytes(range(20)), bytes(range(20, 40))


class Rig:
    """A Gateway whose outer socket is UDP on 127.0.0.1 and whose TUN is a pipe; a peer
    socket with the SAs of the other side."""

    def __init__(self, fragment="outer", path_mtu=1500):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (self.sock, self.peer):
            s.bind(("127.0.0.1", 0))
            netio.setup_outer_socket(s.fileno(), socket.AF_INET)
        mine, theirs = self.sock.getsockname()[1], self.peer.getsockname()[1]
        base = {"reqid": 1, "proposal": "aes128gcm16", "encap": "udp", "src": "127.0.0.1", "dst": "127.0.0.1"}
        cfg = config_from_document({
            "policy": [{"action": "protect", "src": "10.1.0.0/16", "dst": "10.2.0.0/16", "reqid": 1},
                       {"action": "bypass", "src": "10.1.0.0/16", "dst": "10.2.0.53/32", "priority": 10}],
            "sa": [{**base, "direction": "out", "spi": 0x1001, "enc_key": "0x" + K_OUT.hex(), "sport": mine,
                    "dport": theirs, "fragment": fragment},
                   {**base, "direction": "in", "spi": 0x2001, "enc_key": "0x" + K_IN.hex(), "sport": theirs,
                    "dport": mine}]})
        self.engine = Engine()
        self.engine.apply_config(cfg)
        settings = GatewaySettings(address=(A4,), local=ipaddress.IPv4Address("127.0.0.1"), udp_port=mine,
                                   path_mtu=path_mtu, batch=16, keepalive=1.0, tun_mtu=4000)
        self.gw = Gateway(self.engine, settings)
        self.tun_r, tun_w = os.pipe()
        self.gw.tun, self.gw.sock = types.SimpleNamespace(fd=tun_w), self.sock
        self._tun_w = tun_w
        self.engine.km.subscribe(self.gw._apply_pmtu)
        self.gw._apply_pmtu()
        kw = dict(cipher=Cipher.CIPHER_AES_GCM, icv_len=16, src=bytes([127, 0, 0, 1]), dst=bytes([127, 0, 0, 1]),
                  udp=True)
        self.rx = SAState(spi=0x1001, enc_key=K_OUT, sport=mine, dport=theirs, **kw)     # decrypts what gw sends
        self.tx = SAState(spi=0x2001, enc_key=K_IN, sport=theirs, dport=mine, **kw)      # encrypts toward gw

    def close(self):
        self.gw.tun = self.gw.sock = None         # the rig's own: closed here
        self.gw.close()
        self.engine.close()
        for s in (self.sock, self.peer):
            s.close()
        os.close(self.tun_r)
        os.close(self._tun_w)

    def send(self, packets):
        """Packets as if read from the TUN, through Gateway.send."""
        a = self.gw.out_arena
        for i, p in enumerate(packets):
            a.off[i], a.lens[i] = i * a.stride + a.headroom, len(p)
            a.buf[a.off[i]:a.off[i] + len(p)] = p
        self.gw.send(len(packets))

    def peer_receives(self):
        """What reached the peer, decrypted with the gateway's outbound keys."""
        out = []
        while select.select([self.peer], [], [], 0.5)[0]:
            esp = self.peer.recv(65535)
            try:
                out.append(self.rx.decap(bytes(IP(src="127.0.0.1", dst="127.0.0.1") / UDP(sport=1, dport=self.rx_dport)
                                               / esp)))
            except fastpath.PacketError as exc:
                out.append(exc.status)
        return out

    @property
    def rx_dport(self):
        return self.peer.getsockname()[1]

    def tun_packets(self):
        """IP packets written to the "TUN" (the pipe), split by their lengths."""
        data = b""
        while select.select([self.tun_r], [], [], 0.2)[0]:
            data += os.read(self.tun_r, 65536)
        out = []
        while data:
            n = struct.unpack_from("!H", data, 2)[0] if data[0] >> 4 == 4 else 40 + struct.unpack_from("!H", data, 4)[0]
            out.append(data[:n])
            data = data[n:]
        return out


@pytest.fixture
def rig(request):
    r = Rig(**getattr(request, "param", {}))
    yield r
    r.close()


def inner(size, *, df, dst="10.2.0.2"):
    return bytes(IP(src="10.1.0.2", dst=dst, flags="DF" if df else 0, id=9) / UDP(sport=7, dport=9) / bytes(size - 28))


def test_send_encrypts_answers_and_drops(rig):
    limit = rig.engine.slot_sas()[0].kernel.max_inner(1500)
    ok, big, clear = inner(500, df=True), inner(limit + 1, df=True), inner(1500, df=False)
    rig.send([ok, big, clear, inner(100, df=False, dst="10.9.9.9")])     # the last: no policy
    assert rig.peer_receives() == [ok, clear]         # DF clear: sent whole, the outer IP layer fragments
    (icmp,) = rig.tun_packets()
    ip = IP(icmp)
    assert (ip.src, ip.dst, ip[ICMP].type, ip[ICMP].code, ip[ICMP].nexthopmtu) == ("10.1.0.1", "10.1.0.2", 3, 4, limit)
    assert icmp[28:] == big[:548]
    st = rig.gw.stats()
    assert st["icmp"]["frag_needed_sent"] == 1 and st["io"]["net_send"]["packets"] == 2
    assert st["io"]["net_send"]["syscalls"] == 1 and st["outbound"]["packets"] == 2
    assert st["path_mtu"] == [{"spi": 0x1001, "dst": "127.0.0.1", "path_mtu": 1500, "max_inner": limit,
                               "fragment": "outer"}]
    totals = rig.engine.counters()["totals"]["out"]
    assert (totals["packets"], totals["TOO_BIG"], totals["NO_POLICY"]) == (2, 1, 1)


@pytest.mark.parametrize("rig", [{"fragment": "inner"}], indirect=True)
def test_inner_fragments_are_encapsulated_one_by_one(rig):
    limit = rig.engine.slot_sas()[0].kernel.max_inner(1500)
    packet = inner(3000, df=False)
    rig.send([packet])
    got = rig.peer_receives()
    assert len(got) == 3 and all(len(f) <= limit for f in got)
    assert bytes(defragment([IP(f) for f in got])[0]) == packet
    st = rig.gw.stats()["fragments"]
    assert (st["packets_fragmented"], st["fragments_made"]) == (1, 3)
    rig.send([inner(3000, df=True)])                  # DF set: still an ICMP error
    assert rig.peer_receives() == [] and len(rig.tun_packets()) == 1


@pytest.mark.parametrize("rig", [{"path_mtu": 1500}], indirect=True)
def test_reports_lower_the_sas_path_mtu_and_age_out(rig):
    sa = rig.engine.slot_sas()[0].kernel
    rig.gw._pmtu_reports([("127.0.0.1", 1300), ("192.0.2.77", 1000)])
    assert sa.path_mtu == 1300
    rig.send([inner(1300, df=True)])
    assert IP(rig.tun_packets()[0])[ICMP].nexthopmtu == sa.max_inner(1300)
    rig.gw.pmtu.age = 0
    rig.gw.tick()
    assert sa.path_mtu == 1500 and rig.gw.stats()["pmtu"]["reports"] == 2


def test_deliver_decrypts_into_the_tun(rig):
    packets = [bytes(IP(src="10.2.0.2", dst="10.1.0.2") / UDP() / bytes(n)) for n in (10, 1000)]
    for p in packets:
        rig.peer.sendto(rig.tx.encap(p)[28:], rig.sock.getsockname())
    rig.peer.sendto(b"\xff", rig.sock.getsockname())                                 # a NAT keepalive
    rig.peer.sendto(bytes(8) + b"IKE", rig.sock.getsockname())                         # IKE: non-ESP marker
    a = rig.gw.in_arena
    time.sleep(0.1)
    n = netio.udp_recv_burst(rig.sock.fileno(), a.buf, a.off, a.lens, a.stride, 0, a.n, bytes([127, 0, 0, 1]),
                             rig.sock.getsockname()[1], rig.gw.io)
    assert n == 4
    rig.gw.deliver(n)
    assert rig.tun_packets() == packets
    totals = rig.engine.counters()["totals"]["in"]
    assert totals["packets"] == 2 and totals["NAT_KEEPALIVE"] == 1


def test_keepalives_only_toward_quiet_peers(rig):
    rig.gw.tick()                                    # first sight of the peer
    rig.gw._keepalive = {k: (v[0], v[1] - 5) for k, v in rig.gw._keepalive.items()}     # quiet for 5 s
    rig.gw.tick()
    assert select.select([rig.peer], [], [], 1)[0] and rig.peer.recv(10) == b"\xff"
    assert rig.gw.stats()["keepalives_sent"] == 1
    rig.send([inner(100, df=False)])                 # traffic: no keepalive needed
    rig.peer_receives()
    rig.gw._keepalive = {k: (v[0], v[1] - 5) for k, v in rig.gw._keepalive.items()}
    rig.gw.tick()
    assert not select.select([rig.peer], [], [], 0.2)[0]


def test_bypass_without_a_raw_socket_is_counted(rig):
    rig.send([bytes(IP(src="10.1.0.2", dst="10.2.0.53") / UDP(dport=53) / b"q")])
    assert rig.gw.stats()["dropped"]["bypass_unsent"] == 1
    assert rig.engine.counters()["totals"]["out"]["BYPASS"] == 1


# -- the control socket and the command ------------------------------------------------------------

@pytest.fixture
def short_dir():
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="ipsp-") as d:
        yield pathlib.Path(d)


def test_control_socket_has_a_gateway_section(rig, short_dir, capsys):
    server = GatewayControl(rig.gw, short_dir / "gw.sock").start()
    try:
        client = ControlClient(short_dir / "gw.sock")
        stats = client.call("stats")
        assert stats["gateway"]["tun"] == "ipsp0" and "totals" in stats
        assert "ipsp_gateway_io_syscalls_total{path=\"net_send\"}" in client.call("prometheus")
        with pytest.raises(ConfigError, match="no \\[gateway\\] table"):
            server.apply(config_from_document({}))
        cli._gateway_tables(stats["gateway"])
        out = capsys.readouterr().out
        assert "PER SYSCALL" in out and "net_send" in out and "icmp:      frag_needed_sent=0" in out
    finally:
        server.close()


def run_ipsp(*args):
    return subprocess.run([sys.executable, "-m", "ipsp", *map(str, args)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": SRC})


def test_ipsp_gateway_refuses_a_file_without_what_it_needs(short_dir):
    plain = short_dir / "engine.toml"
    plain.write_text('[engine]\ncontrol_socket = "/tmp/x.sock"\n')
    r = run_ipsp("gateway", "--config", plain)
    assert r.returncode == 1 and "no [gateway] table" in r.stderr and "ready" not in r.stderr
    nosock = short_dir / "gw.toml"
    nosock.write_text('[gateway]\naddress = "10.1.0.1"\nlocal = "192.0.2.1"\n')
    r = run_ipsp("gateway", "--config", nosock)
    assert r.returncode == 2 and "no control socket" in r.stderr
    bad = short_dir / "bad.toml"
    bad.write_text('[gateway]\naddress = "10.1.0.1"\nlocal = "192.0.2.1"\nbatch = 0\n')
    r = run_ipsp("gateway", "--config", bad)
    assert r.returncode == 1 and f"{bad}:gateway.batch: must be 1..1024" in r.stderr
    r = run_ipsp("config", "check", nosock)
    assert r.returncode == 0 and "gateway: tun ipsp0 (mtu 1500), address 10.1.0.1" in r.stdout
    assert json.loads(run_ipsp("config", "check", nosock, "--json").stdout)["gateway"]["local"] == "192.0.2.1"


def test_the_embedding_example_runs():
    example = pathlib.Path(__file__).resolve().parents[2] / "examples" / "forwarder.py"
    if not example.exists():
        pytest.skip("examples/ is not part of this installation")
    r = subprocess.run([sys.executable, example], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": SRC})
    assert r.returncode == 0, r.stderr
    assert "A sent 63 ESP packets in 1 sendmmsg call(s)" in r.stdout and "all intact" in r.stdout
