"""Two in-process IKE daemons (ipsp.ike.ikesa.Ike) joined by an in-memory network with a
manual clock: what the exchange tests and the handshake benchmark drive.

``Pair.run()`` delivers datagrams until the network is quiet; ``drop`` decides per datagram
whether it is lost (a test's loss pattern); ``advance(s)`` moves the clock and ticks both.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ipsp.ike.config import Connection, IkeSettings, connection
from ipsp.ike.ikesa import Ike
from ipsp.keymgr import KeyManagerAPI
from ipsp.pad import Identity, Peer, PeerAuthorizationDatabase

A_ADDR, B_ADDR = "192.0.2.1", "192.0.2.2"
A_NET, B_NET = "10.1.0.0/16", "10.2.0.0/16"
PSK = b"a pre-shared key of 32 bytes...."


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Side:
    name: str
    addr: str
    ike: Ike = field(repr=False)
    km: KeyManagerAPI = field(repr=False)
    pad: PeerAuthorizationDatabase = field(repr=False)


class Pair:
    def __init__(self, *, a_conn: dict | None = None, b_conn: dict | None = None, a_peer: dict | None = None,
                 b_peer: dict | None = None, a_settings: IkeSettings | None = None,
                 b_settings: IkeSettings | None = None, a_kw: dict | None = None, b_kw: dict | None = None,
                 a_more: list[dict] = (), b_more: list[dict] = ()):
        self.clock = Clock()
        self.wire: deque[tuple[str, bytes, tuple[str, int], int]] = deque()
        self.log: list[tuple[str, bytes]] = []            # (sender, datagram) in order
        self.drop: Callable[[str, bytes], bool] = lambda sender, data: False
        self.a = self._side("a", A_ADDR, B_ADDR, A_NET, B_NET, a_conn or {}, a_peer or {}, a_settings, a_kw or {},
                            a_more)
        self.b = self._side("b", B_ADDR, A_ADDR, B_NET, A_NET, b_conn or {}, b_peer or {}, b_settings, b_kw or {},
                            b_more)

    def _side(self, name, addr, remote, mine, theirs, conn_kw, peer_kw, settings, kw, more) -> Side:
        other = "b" if name == "a" else "a"
        pad = PeerAuthorizationDatabase([Peer(other, (Identity("fqdn", f"{other}.ipsp.test"),),
                                              **{"auth": "psk", "psk": PSK, **peer_kw})])
        table = {"name": f"{name}-to-{other}", "peer": other, "remote": remote, "local_ts": [mine],
                 "remote_ts": [theirs], "local_id": f"fqdn:{name}.ipsp.test", "reqid": 7, **conn_kw}
        peers = {p.name: p for p in pad}
        conns: list[Connection] = [connection(t, f"connection[{i}]", i, peers)
                                   for i, t in enumerate([table] + [{**table, **extra} for extra in more])]
        km = KeyManagerAPI(clock=self.clock)

        def send(data: bytes, to: tuple[str, int], port: int) -> None:
            self.wire.append((name, data, to, port))

        ike = Ike(km, pad, settings or IkeSettings(), conns, local=addr, send=send, clock=self.clock, **kw)
        return Side(name, addr, ike, km, pad)

    def run(self, limit: int = 1000) -> int:
        """Deliver until nothing is in flight; returns the number of datagrams delivered."""
        n = 0
        while self.wire and n < limit:
            sender, data, to, port = self.wire.popleft()
            self.log.append((sender, data))
            if self.drop(sender, data):
                continue
            src = self.a if sender == "a" else self.b
            dst = self.b if sender == "a" else self.a
            assert ipaddress.ip_address(to[0]) == ipaddress.ip_address(dst.addr)
            dst.ike.receive(data, (src.addr, port), to[1])
            n += 1
        return n

    def advance(self, seconds: float, step: float = 0.5) -> None:
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now = min(end, self.clock.now + step)
            for side in (self.a, self.b):
                side.km.tick()                # lifetimes, and retired SAs past their grace
                side.ike.tick()
            self.run()

    def connect(self) -> None:
        self.a.ike.initiate(next(iter(self.a.ike.connections)))
        self.run()


# -- daemons on real loopback sockets (IkeDaemon, the transport) -----------------------------------

SOCKET_PSK = "0x" + "5a" * 32


def socket_daemon(me: str, peer: str, my_addr: str, peer_addr: str, port: int, *, start: str, **kw):
    """An IkeDaemon on *my_addr*:*port* (and port+1 for NAT-T) with one PSK connection to
    *peer_addr*; *start* as in [[connection]]; **kw to IkeDaemon (nat_socket, ...)."""
    from ipsp.config import config_from_document
    from ipsp.engine import Engine
    from ipsp.ike.transport import IkeDaemon

    cfg = config_from_document({
        "ike": {"local_id": f"fqdn:{me}.ipsp.test", "port": port, "nat_port": port + 1, "retransmit_timeout": 0.2},
        "peer": [{"name": peer, "id": f"fqdn:{peer}.ipsp.test", "auth": "psk", "psk": SOCKET_PSK}],
        "connection": [{"name": "c", "peer": peer, "remote": peer_addr, "local_ts": "10.1.0.0/16" if me == "a"
                        else "10.2.0.0/16", "remote_ts": "10.2.0.0/16" if me == "a" else "10.1.0.0/16",
                        "start": start}],
    })
    engine = Engine()
    engine.apply_config(cfg)
    return IkeDaemon(engine, cfg.ike, cfg.connections, my_addr, **kw)
