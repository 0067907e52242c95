#!/usr/bin/env python3
"""A forwarder of your own around ipsp's engine, in about a hundred lines.

Two sites, A and B, each an Engine with its policies and SAs (configured from a dict, as a
TOML file would be), exchange ESP in UDP over sockets on 127.0.0.1: A encrypts a batch of
inner packets and sends them with one sendmmsg(); B receives them with one recvmmsg(),
decrypts them and checks they are what A's hosts sent. Where `ipsp gateway` reads a TUN
device and writes one, this script makes up the packets and prints them: the engine calls
and the arena are the same (src/ipsp/gateway.py, Gateway.send and Gateway.deliver).

Runs without root, from the top of the source tree with ipsp installed (pip install .):

    python examples/forwarder.py

or, without installing, after `python setup.py build_ext --inplace`:
`PYTHONPATH=src python examples/forwarder.py` (docs/embedding.md).
"""

import socket
from array import array

from scapy.layers.inet import IP, UDP          # only to make up inner packets

from fastpath import Status, netio
from ipsp import Engine
from ipsp.config import config_from_document

BATCH, STRIDE, HEADROOM = 64, 2048, 128        # slot i: buf[i*STRIDE : (i+1)*STRIDE], packet at +HEADROOM
LO = socket.inet_aton("127.0.0.1")
KEYS = {0x1001: "11" * 20, 0x2001: "22" * 20}  # aes128gcm16: a 16-byte key and a 4-byte salt


def site(mine: str, theirs: str, port: int, peer_port: int, spi_out: int, spi_in: int) -> Engine:
    """An engine that protects mine <-> theirs with a pair of manually keyed SAs."""
    sa = {"reqid": 1, "proposal": "aes128gcm16", "encap": "udp", "src": "127.0.0.1", "dst": "127.0.0.1"}
    engine = Engine()
    engine.apply_config(config_from_document({
        "policy": [{"direction": "out", "action": "protect", "src": mine, "dst": theirs, "reqid": 1},
                   {"direction": "in", "action": "protect", "src": theirs, "dst": mine, "reqid": 1}],
        "sa": [{**sa, "direction": "out", "spi": spi_out, "enc_key": "0x" + KEYS[spi_out], "sport": port, "dport": peer_port},
               {**sa, "direction": "in", "spi": spi_in, "enc_key": "0x" + KEYS[spi_in], "sport": peer_port, "dport": port}],
    }))
    return engine


class Arena:
    """One buffer of BATCH slots and the four arrays of the batch contract (README)."""

    def __init__(self):
        self.buf = bytearray(BATCH * STRIDE)
        self.off, self.lens = array("q", [0] * BATCH), array("I", [0] * BATCH)
        self.status = bytearray(BATCH)

    def views(self, n: int):
        return memoryview(self.off)[:n], memoryview(self.lens)[:n], memoryview(self.status)[:n]


def send(engine: Engine, sock: socket.socket, arena: Arena, packets: list[bytes], stats: netio.IOStats) -> int:
    """Inner packets -> policy and ESP in place -> one sendmmsg() of everything that is OK."""
    for i, p in enumerate(packets):                   # a TUN read burst would put them here
        arena.off[i], arena.lens[i] = i * STRIDE + HEADROOM, len(p)
        arena.buf[arena.off[i]:arena.off[i] + len(p)] = p
    off, lens, status = arena.views(len(packets))
    engine.outbound(arena.buf, off, lens, status, STRIDE)
    # BYPASS would go out unchanged, TOO_BIG back to its sender as an ICMP error (ipsp.pmtu)
    return netio.udp_send_burst(sock.fileno(), arena.buf, off, lens, status, bytes([Status.OK]), stats)


def receive(engine: Engine, sock: socket.socket, arena: Arena, stats: netio.IOStats) -> list[bytes]:
    """One recvmmsg() (each datagram gets the outer header it came with) -> ESP, selectors."""
    n = netio.udp_recv_burst(sock.fileno(), arena.buf, arena.off, arena.lens, STRIDE, 0, BATCH, LO,
                             sock.getsockname()[1], stats)
    off, lens, status = arena.views(n)
    engine.inbound(arena.buf, off, lens, status)
    # a TUN write burst would take these: netio.tun_write_burst(fd, buf, off, lens, status, OK)
    return [bytes(arena.buf[off[i]:off[i] + lens[i]]) for i in range(n) if status[i] == Status.OK]


def main() -> None:
    sock_a, sock_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (sock_a, sock_b):
        s.bind(("127.0.0.1", 0))
        netio.setup_outer_socket(s.fileno(), socket.AF_INET)      # DF clear, errors queued, pktinfo
    port_a, port_b = sock_a.getsockname()[1], sock_b.getsockname()[1]
    a = site("10.1.0.0/16", "10.2.0.0/16", port_a, port_b, 0x1001, 0x2001)
    b = site("10.2.0.0/16", "10.1.0.0/16", port_b, port_a, 0x2001, 0x1001)
    stats_a, stats_b = netio.IOStats(), netio.IOStats()
    packets = [bytes(IP(src="10.1.0.2", dst=f"10.2.0.{1 + i % 200}") / UDP(sport=1000 + i, dport=53) / bytes(i * 20))
               for i in range(BATCH)]
    packets.append(bytes(IP(src="10.1.0.2", dst="10.9.0.1") / UDP()))   # no policy: dropped, counted
    sent = send(a, sock_a, Arena(), packets[:BATCH - 1] + packets[-1:], stats_a)
    got = []
    while len(got) < sent:
        got += receive(b, sock_b, Arena(), stats_b)
    assert got == packets[:BATCH - 1], "B did not get what A's hosts sent"
    print(f"A sent {sent} ESP packets in {stats_a.as_dict()['net_send']['syscalls']} sendmmsg call(s); "
          f"B received them in {stats_b.as_dict()['net_recv']['syscalls']} recvmmsg call(s), decrypted, all intact")
    print("A outbound:", a.counters()["totals"]["out"])
    print("B inbound: ", b.counters()["totals"]["in"])
    for engine in (a, b):
        engine.close()                                                 # keys wiped
    sock_a.close()
    sock_b.close()


if __name__ == "__main__":
    main()
