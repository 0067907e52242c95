"""``ipsp gateway``: the engine as a tunnel gateway, a forwarder with its own I/O.

    hosts --> kernel --route--> TUN --read burst--> Engine.outbound --sendmmsg--> outer socket --> peer
    hosts <-- kernel <--------- TUN <--write------- Engine.inbound  <--recvmmsg-- outer socket <-- peer

Two threads, one per direction, each blocking in poll(); the engine is thread-safe and
releases the GIL for every batch, and so do the I/O calls (fastpath.netio). The outer socket
is UDP (ESP in UDP, RFC 3948) or raw IP protocol 50. The outer DF bit follows each SA's
``df`` policy (RFC 4301 5.1.2), as written in the outer IPv4 header the engine built: packets
with DF clear go out through the outer socket (IP_PMTUDISC_DONT: the outer IP layer fragments,
the peer's reassembles), those with DF set through a second one on the same address and port
(IP_PMTUDISC_PROBE: never fragmented, and only the SA's own path MTU estimate limits them, not
the kernel's cached one), each with one sendmmsg() per burst. An ICMP "fragmentation needed"
for a DF-set packet (either error queue, or the ICMP watch socket for UDP) lowers the path MTU
toward that peer. What the engine returns decides each packet's fate:

- outbound OK: the ESP goes to the peer; BYPASS: the packet leaves unchanged through a raw
  IP socket on the outer interface; TOO_BIG (its ESP would exceed the SA's path MTU): the
  sender gets an ICMP error from the gateway's inner address, or, for an SA with
  ``fragment = "inner"`` and IPv4 with DF clear, the packet is fragmented and each fragment
  encapsulated (ipsp.pmtu); anything else is a drop the engine counted.
- inbound OK: the inner packet is written into the TUN; BYPASS: likewise, except on the UDP
  socket, where a packet in clear is IKE (the non-ESP marker) and belongs to a key manager
  (the kernel would hand it back to this very socket); anything else is a counted drop.

The main thread ticks once a second (engine.tick, path MTU aging, NAT keepalives) and serves
signals; the control socket (ipsp stats --socket) adds a "gateway" section to the stats.
"""

from __future__ import annotations

import array
import dataclasses
import logging
import mmap
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Any

from fastpath import TUNNEL, Status, netio

from ipsp import netdev
from ipsp.config import Config, GatewaySettings
from ipsp.control import ControlError, ControlServer, SIGNALS, _only, _param, load_for_serving, serve
from ipsp.engine import Engine
from ipsp.errors import ConfigError, shown
from ipsp.pmtu import PathMTU, frag_needed, fragment4, packet_too_big, parse_frag_needed
from ipsp.ratelimit import QuietLog, RateLimit

__all__ = ["Gateway", "GatewayControl", "run_gateway"]

log = logging.getLogger("ipsp.gateway")

HEADROOM = 128          # in front of each outbound packet: the longest ESP prefix (IPv6 40, UDP 8, ESP 8, IV 16)
TAILROOM = 64 + 256     # behind it: padding, trailer and ICV (at most 49 bytes), and TFC padding
MAX_DATAGRAM = 65535    # an inbound slot holds any IP packet the outer IP layer can reassemble
_OK, _BYPASS, _TOO_BIG = bytes([Status.OK]), bytes([Status.BYPASS]), bytes([Status.TOO_BIG])
# settings a running gateway cannot change: they name its device and sockets and size its arenas
_FIXED = ("tun", "outer", "local", "udp_port", "tun_mtu", "batch")


def _round(n: int, to: int = 64) -> int:
    return (n + to - 1) // to * to


class _Arena:
    """One direction's packet memory: *n* slots of *stride* bytes (anonymous memory: a page
    is only touched once a packet uses it) and the batch arrays of the engine's contract."""

    def __init__(self, n: int, stride: int, headroom: int):
        self.n, self.stride, self.headroom = n, stride, headroom
        self.buf = mmap.mmap(-1, n * stride)
        self.off = array.array("q", bytes(8 * n))
        self.lens = array.array("I", bytes(4 * n))
        self.status = bytearray(n)
        self.slots = array.array("i", bytes(4 * n))
        self._views = tuple(memoryview(a) for a in (self.off, self.lens, self.status, self.slots))

    def batch(self, n: int) -> tuple[memoryview, ...]:
        """offsets, lengths, status and slots of the first n packets (views, no copies)."""
        return tuple(v[:n] for v in self._views)

    def having(self, code: bytes, n: int):
        """The packet numbers below n whose status is *code* (one byte)."""
        i = self.status.find(code, 0, n)
        while i >= 0:
            yield i
            i = self.status.find(code, i + 1, n)

    def packet(self, i: int) -> bytes:
        return self.buf[self.off[i]:self.off[i] + self.lens[i]]


class Gateway:
    """The forwarder: TUN and outer socket around an Engine (docs/embedding.md shows the
    shape of such a loop). open(), start(), then tick() every second; stop() and close()."""

    def __init__(self, engine: Engine, settings: GatewaySettings):
        self.engine = engine
        self.settings = settings
        self.io = netio.IOStats()
        self.pmtu = PathMTU(settings.path_mtu)
        self.quiet = QuietLog(log)
        self.icmp_limit = RateLimit()
        self.failed = False
        self.tun: netdev.Tun | None = None
        self.routes: netdev.Routes | None = None
        self.sock: socket.socket | None = None
        self.sock_df: socket.socket | None = None     # DF-set outer packets (IPv4 only)
        self.raw: dict[int, socket.socket | None] = {4: None, 6: None}
        self.watch: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        self._keepalive: dict[tuple[str, int], tuple[int, float]] = {}
        self.ike = None                 # an ipsp.ike.transport.IkeDaemon takes IKE from the UDP socket
        # each dict is written by one thread only: outbound, inbound, main
        self._out = dict.fromkeys(("frag_needed_sent", "packet_too_big_sent", "rate_limited", "not_allowed",
                                   "no_source", "packets_fragmented", "fragments_made", "unfragmentable",
                                   "stale_slot", "bypass_unsent", "polls"), 0)
        self._in = dict.fromkeys(("ike_dropped", "ike_received", "not_ike", "pmtu_reports", "emsgsize", "polls"), 0)
        self._main = dict.fromkeys(("keepalives_sent", "keepalive_errors"), 0)
        s = settings
        self.out_arena = _Arena(s.batch, _round(HEADROOM + s.tun_mtu + TAILROOM), HEADROOM)
        self.in_arena = _Arena(s.batch, _round(48 + MAX_DATAGRAM), 0)

    # -- setting up and tearing down ---------------------------------------------------------

    def open(self) -> None:
        """The TUN device up, its routes, the outer socket and the raw sockets; on failure
        whatever was set up is undone."""
        s = self.settings
        try:
            self.tun = netdev.Tun(s.tun, s.tun_mtu, txqueuelen=max(1000, 4 * s.batch))
            self._tun_sysctls(s)
            self.routes = netdev.Routes(s.tun)
            self.routes.apply(s.routes, self._route_sources(s))
            v4 = s.local.version == 4
            self.sock = netdev.outer_socket(s.outer, s.local, s.udp_port, shared=v4)
            if v4:
                self.sock_df = netdev.outer_socket(s.outer, s.local, s.udp_port, df=True, shared=True)
            device = netdev.device_of(s.local)
            self.raw = {v: netdev.raw_ip_socket(v, device) for v in (4, 6)}
            if s.outer == "udp" and s.local.version == 4:
                self.watch = netdev.icmp_watch_socket()
        except BaseException:
            self._close_host()
            raise
        if s.outer == "udp":
            self.engine.listen_udp(s.udp_port)
        self.engine.km.subscribe(self._apply_pmtu)
        self._apply_pmtu()
        self._warn_about_host()

    def _tun_sysctls(self, s: GatewaySettings) -> None:
        v4 = f"net/ipv4/conf/{s.tun}"
        # the ICMP errors this gateway writes into the TUN carry a source address of this
        # host: without accept_local the kernel drops them as martians; reverse-path checks
        # add nothing on this device (what leaves the tunnel passed its SA's selectors)
        netdev.set_sysctl(f"{v4}/accept_local", "1")
        netdev.set_sysctl(f"{v4}/rp_filter", "0")
        if netdev.sysctl(f"net/ipv6/conf/{s.tun}/disable_ipv6") is not None:
            # no IPv6 to carry: IPv6 stays off on the device altogether
            v6 = any(n.version == 6 for n in s.routes) or s.source_for(6) is not None
            netdev.set_sysctl(f"net/ipv6/conf/{s.tun}/disable_ipv6", "0" if v6 else "1")

    @staticmethod
    def _route_sources(s: GatewaySettings) -> dict[int, str | None]:
        # the host's own packets into the tunnel should leave from the inner address
        return {a.version: str(a) if netdev.is_local(a) else None for a in s.address}

    def _warn_about_host(self) -> None:
        s = self.settings
        if netdev.sysctl("net/ipv4/ip_forward") == "0" and any(n.version == 4 for n in s.routes):
            log.warning("net.ipv4.ip_forward is 0: only this host's own packets reach %s", s.tun)
        if netdev.sysctl("net/ipv4/conf/all/rp_filter") == "1":
            log.warning("net.ipv4.conf.all.rp_filter is 1 (strict): the ICMP errors written into %s are dropped; "
                        "use 2 (loose)", s.tun)

    def start(self) -> None:
        for name, loop in (("ipsp-out", self._outbound_loop), ("ipsp-in", self._inbound_loop)):
            t = threading.Thread(target=self._run, args=(loop,), name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, loop) -> None:
        try:
            loop()
        except Exception:
            if not self._stopping:
                log.exception("%s failed: stopping", threading.current_thread().name)
                self.failed = True
                os.kill(os.getpid(), signal.SIGTERM)

    def stop(self) -> None:
        self._stopping = True
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()

    def close(self) -> None:
        """Routes removed, sockets and TUN closed (a TUN device this gateway created goes)."""
        self._close_host()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _close_host(self) -> None:
        if self.routes is not None:
            self.routes.remove_all()
        for s in (self.sock, self.sock_df, self.watch, *self.raw.values()):
            if s is not None:
                s.close()
        self.sock, self.sock_df, self.watch, self.raw = None, None, None, {4: None, 6: None}
        if self.tun is not None:
            self.tun.close()
            self.tun = None

    # -- outbound: TUN -> engine -> peer -----------------------------------------------------------

    def _outbound_loop(self) -> None:
        a, tun = self.out_arena, self.tun.fd
        # IFF_VNET_HDR: TCP super-packets, split into their segments by the read (issue 5)
        vnet, scratch = getattr(self.tun, "vnet_hdr", False), getattr(self.tun, "scratch", None)
        poller = select.poll()
        poller.register(tun, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            poller.poll()
            self._out["polls"] += 1
            if self._stopping:
                return
            n = netio.tun_read_burst(tun, a.buf, a.off, a.lens, a.stride, a.headroom, a.n, self.io, vnet, scratch)
            if n:
                self.send(n)

    def send(self, n: int) -> None:
        """Encapsulate the n packets read into the outbound arena and send what can go."""
        a = self.out_arena
        off, lens, status, slots = a.batch(n)
        sas = self.engine.slot_sas()
        self.engine.outbound(a.buf, off, lens, status, a.stride, slots=slots)
        self._send_outer(a.buf, off, lens, status)
        if a.status.find(_BYPASS, 0, n) >= 0:
            self._bypass(off, lens, status, n)
        if a.status.find(_TOO_BIG, 0, n) >= 0:
            self._too_big(n, sas)

    def _send_outer(self, buf, off, lens, status) -> None:
        """The ESP of the packets with status OK: DF clear through the outer socket, DF set
        through the DF socket (one sendmmsg each, order kept within each)."""
        send = netio.udp_send_burst if self.settings.outer == "udp" else netio.esp_send_burst
        if self.sock_df is None:
            send(self.sock.fileno(), buf, off, lens, status, _OK, self.io)
            return
        send(self.sock.fileno(), buf, off, lens, status, _OK, self.io, 0)
        send(self.sock_df.fileno(), buf, off, lens, status, _OK, self.io, 1)

    def _bypass(self, off, lens, status, n: int) -> None:
        a = self.out_arena
        for version, raw in self.raw.items():
            if raw is not None:
                netio.ip_send_burst(raw.fileno(), a.buf, off, lens, status, _BYPASS, version, self.io)
            else:
                self._out["bypass_unsent"] += sum(1 for i in a.having(_BYPASS, n) if a.buf[a.off[i]] >> 4 == version)

    def _too_big(self, n: int, sas) -> None:
        """Packets whose ESP would not fit their SA's path MTU (RFC 4301 8.2.1)."""
        a = self.out_arena
        current = self.engine.slot_sas()
        for i in a.having(_TOO_BIG, n):
            slot = a.slots[i]
            if current is not sas or not 0 <= slot < len(sas):
                self._out["stale_slot"] += 1      # the SAs changed under this batch: it is dropped
                continue
            sa = sas[slot].kernel
            packet = a.packet(i)
            version = packet[0] >> 4
            # transport mode pads what follows the packet's own header (IPv6: its fixed part)
            header = 0 if sa.mode == TUNNEL else (packet[0] & 0x0F) * 4 if version == 4 else 40
            limit = sa.max_inner(sa.path_mtu, header)
            if version == 4 and not packet[6] & 0x40 and sa.fragment_inner:
                self._send_fragments(sa, packet, limit)
            else:
                self._icmp_error(packet, limit, version)

    def _icmp_error(self, packet: bytes, mtu: int, version: int) -> None:
        source = self.settings.source_for(version)
        if source is None:
            self._out["no_source"] += 1
            return
        message = frag_needed(packet, mtu, source) if version == 4 else packet_too_big(packet, mtu, source)
        if message is None:
            self._out["not_allowed"] += 1        # about an ICMP error, a later fragment, ...
            return
        if not self.icmp_limit.allow():
            self._out["rate_limited"] += 1
            return
        try:
            os.write(self.tun.fd, bytes(netio.VNET_HDR_SIZE) + message if getattr(self.tun, "vnet_hdr", False)
                     else message)
        except OSError:
            self.io.add("tun_write", syscalls=1, errors=1)
            return
        self.io.add("tun_write", packets=1, syscalls=1)
        self._out["frag_needed_sent" if version == 4 else "packet_too_big_sent"] += 1

    def _send_fragments(self, sa, packet: bytes, limit: int) -> None:
        """RFC 791 fragments of an inner IPv4 packet, each encapsulated by the SA the packet
        was classified to (the fragments after the first carry no ports a policy could see)."""
        try:
            fragments = fragment4(packet, limit)
        except ValueError:
            self._out["unfragmentable"] += 1
            return
        k, stride = len(fragments), _round(HEADROOM + limit + TAILROOM)
        buf = bytearray(k * stride)
        off = array.array("q", (i * stride + HEADROOM for i in range(k)))
        lens = array.array("I", map(len, fragments))
        status = bytearray(k)
        for i, f in enumerate(fragments):
            buf[off[i]:off[i] + len(f)] = f
        sa.encap_batch(buf, off, lens, status, stride)
        self._send_outer(buf, off, lens, status)
        self._out["packets_fragmented"] += 1
        self._out["fragments_made"] += k

    # -- inbound: peer -> engine -> TUN ------------------------------------------------------------

    def _inbound_loop(self) -> None:
        a, s, fd = self.in_arena, self.settings, self.sock.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        socks = {fd: self.sock}
        if self.sock_df is not None:
            # UDP: the port is shared (SO_REUSEPORT), a peer's datagrams may arrive on either;
            # raw: the DF socket receives nothing (a drop-all filter), only its error queue
            dfd = self.sock_df.fileno()
            socks[dfd] = self.sock_df
            poller.register(dfd, select.POLLIN if s.outer == "udp" else 0)
        poller.register(self._wake_r, select.POLLIN)
        if self.watch is not None:
            poller.register(self.watch.fileno(), select.POLLIN)
        local = s.local.packed
        while not self._stopping:
            events = poller.poll()
            self._in["polls"] += 1
            if self._stopping:
                return
            for ready, what in events:
                if ready in socks and what & select.POLLERR:
                    self._errqueue(socks[ready])
                if ready in socks and what & select.POLLIN:
                    if s.outer == "udp":
                        n = netio.udp_recv_burst(ready, a.buf, a.off, a.lens, a.stride, 0, a.n, local, s.udp_port, self.io)
                    else:
                        n = netio.esp_recv_burst(ready, a.buf, a.off, a.lens, a.stride, 0, a.n, local, self.io)
                    if n:
                        self.deliver(n)
                elif self.watch is not None and ready == self.watch.fileno():
                    self._watch_icmp()

    def deliver(self, n: int) -> None:
        """Decapsulate the n packets received into the inbound arena and write what passes."""
        a = self.in_arena
        off, lens, status, _ = a.batch(n)
        self.engine.inbound(a.buf, off, lens, status)
        deliverable = _OK + _BYPASS
        if self.settings.outer == "udp":
            # in clear on the UDP socket means IKE: written into the TUN it would come
            # straight back to this socket; it goes to the IKE daemon, if there is one
            if self.ike is not None:
                self._ike_input(n)
            else:
                self._in["ike_dropped"] += a.status.count(_BYPASS, 0, n)
            deliverable = _OK
        netio.tun_write_burst(self.tun.fd, a.buf, off, lens, status, deliverable, self.io,
                              getattr(self.tun, "vnet_hdr", False))

    def _ike_input(self, n: int) -> None:
        """The datagrams of this burst that carry the non-ESP marker (RFC 3948 2.2), to IKE:
        the engine marks them BYPASS (Engine.listen_udp has the port), so only those are looked
        at, found by bytes.find, not a Python loop over the burst. The daemon's intake takes
        or drops each at once (bounded, counted there): this thread never waits for IKE."""
        a = self.in_arena
        for i in a.having(_BYPASS, n):
            p = a.packet(i)
            header = (p[0] & 0x0F) * 4 if p[0] >> 4 == 4 else 40
            if len(p) > header + 12 and p[header + 8:header + 12] == b"\0\0\0\0":
                src = socket.inet_ntop(socket.AF_INET if header != 40 else socket.AF_INET6,
                                       p[12:16] if header != 40 else p[8:24])
                sport = int.from_bytes(p[header:header + 2], "big")
                self._in["ike_received"] += 1
                self.ike.feed(p[header + 12:], (src, sport))
            else:
                self._in["not_ike"] += 1            # in clear, but neither ESP nor IKE

    def _errqueue(self, sock: socket.socket) -> None:
        reports = netio.read_errqueue(sock.fileno(), self.io, local=True)
        # an ICMP error also leaves a pending socket error: read it, or poll() never blocks
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        # the kernel's own EMSGSIZE (a DF-set packet above the interface MTU) is a report too
        self._in["emsgsize"] += sum(1 for r in reports if r[2])
        self._pmtu_reports([r[:2] for r in reports])

    def _watch_icmp(self) -> None:
        s, reports = self.settings, []
        for _ in range(self.settings.batch):        # a flood of them must not starve the ESP
            try:
                packet = self.watch.recv(2048)
            except (BlockingIOError, InterruptedError):
                break
            report = parse_frag_needed(packet, s.local.packed, 17, s.udp_port)
            if report is not None:
                reports.append(report)
        self._pmtu_reports(reports)

    def _pmtu_reports(self, reports) -> None:
        changed = False
        for peer, mtu in reports:
            if self.pmtu.report(peer, mtu):
                self._in["pmtu_reports"] += 1
                # the reports are unauthenticated: a flood of forged ones must not flood the log
                self.quiet(logging.INFO, "pmtu", "path MTU to %s lowered to %d", peer, self.pmtu.get(peer))
                changed = True
        if changed:
            self._apply_pmtu()

    # -- path MTU into the SAs, the clock ------------------------------------------------------------

    def _outbound_sas(self):
        return [sa for sa in list(self.engine.km.sad) if sa.direction == "out" and not sa.kernel.closed]

    def _apply_pmtu(self) -> None:
        """Each outbound SA checks packets against the path MTU toward its peer. Runs after
        every change to the SAs (a key-manager listener) and every change of an estimate."""
        for sa in self._outbound_sas():
            mtu, inner = self.pmtu.get(sa.dst), sa.config.fragment == "inner"
            if (sa.kernel.path_mtu, sa.kernel.fragment_inner) != (mtu, inner):
                try:
                    sa.kernel.set_path_mtu(mtu, fragment_inner=inner)
                except ValueError as exc:
                    log.warning("SA %#010x: %s", sa.spi, exc)

    def tick(self) -> None:
        """Once a second: lowered path MTUs age out, NAT keepalives go out."""
        for peer in self.pmtu.expire():
            log.info("path MTU to %s back to %d", peer, self.pmtu.get(peer))
            self._apply_pmtu()
        self._keepalives()

    def _keepalives(self) -> None:
        """RFC 3948 2.3: a one-byte 0xFF datagram to each ESP-in-UDP peer that was sent
        nothing for ``keepalive`` seconds, so a NAT on the way keeps its mapping."""
        s = self.settings
        if s.outer != "udp" or not s.keepalive or self.sock is None:
            return
        now = time.monotonic()
        sent: dict[tuple[str, int], int] = {}
        for sa in self._outbound_sas():
            if sa.config.udp:
                key = (str(sa.dst), sa.config.dport)
                sent[key] = sent.get(key, 0) + sa.kernel.counters()["out"]["packets"]
        for key, packets in sent.items():
            seen = self._keepalive.get(key)
            if seen is not None and seen[0] == packets and now - seen[1] >= s.keepalive:
                try:
                    self.sock.sendto(b"\xff", key)
                    self._main["keepalives_sent"] += 1
                except OSError:
                    self._main["keepalive_errors"] += 1
                seen = None
            if seen is None or seen[0] != packets:
                self._keepalive[key] = (packets, now)
        for key in [k for k in self._keepalive if k not in sent]:
            del self._keepalive[key]

    def reconfigure(self, new: GatewaySettings) -> None:
        """A reloaded [gateway]: routes, addresses, path MTU and keepalive take effect now;
        what names the device and sockets or sizes the arenas only on restart."""
        old = self.settings
        fixed = [name for name in _FIXED if getattr(old, name) != getattr(new, name)]
        if fixed:
            log.warning("gateway.%s changed: takes effect on restart", ", gateway.".join(fixed))
            new = dataclasses.replace(new, **{name: getattr(old, name) for name in fixed})
        self._tun_sysctls(new)
        self.routes.apply(new.routes, self._route_sources(new))
        self.pmtu.set_initial(new.path_mtu)
        self.settings = new
        self._apply_pmtu()

    # -- counters ----------------------------------------------------------------------------------

    def stats(self) -> dict:
        """The "gateway" section of ``ipsp stats``."""
        s, io, out = self.settings, self.io.as_dict(), dict(self._out)

        def direction(paths, polls):
            packets = io[paths[-1]]["packets"]
            calls = sum(io[p]["syscalls"] for p in paths)
            return {"packets": packets, "syscalls": calls, "packets_per_syscall": round(packets / calls, 3) if calls else 0.0,
                    "polls": polls}

        return {
            "tun": s.tun, "outer": s.outer, "local": str(s.local), "udp_port": s.udp_port if s.outer == "udp" else None,
            # packets leaving per system call of that direction (reads, sends, writes; polls apart)
            "outbound": direction(("tun_read", "net_send"), out["polls"]),
            "inbound": direction(("net_recv", "tun_write"), self._in["polls"]),
            "io": io,
            "icmp": {"frag_needed_sent": out["frag_needed_sent"], "packet_too_big_sent": out["packet_too_big_sent"],
                     "rate_limited": out["rate_limited"], "not_allowed": out["not_allowed"], "no_source": out["no_source"]},
            "fragments": {"packets_fragmented": out["packets_fragmented"], "fragments_made": out["fragments_made"],
                          "unfragmentable": out["unfragmentable"]},
            "keepalives_sent": self._main["keepalives_sent"],
            "ike_received": self._in["ike_received"],
            "dropped": {"ike": self._in["ike_dropped"], "not_ike": self._in["not_ike"],
                        "bypass_unsent": out["bypass_unsent"], "stale_slot": out["stale_slot"],
                        "keepalive_errors": self._main["keepalive_errors"]},
            "pmtu": {"initial": self.pmtu.initial, "reports": self._in["pmtu_reports"], "emsgsize": self._in["emsgsize"],
                     "evicted": self.pmtu.evicted, "lowered": self.pmtu.lowered()},
            "path_mtu": [{"spi": sa.spi, "dst": str(sa.dst), "path_mtu": sa.kernel.path_mtu,
                          "max_inner": sa.kernel.max_inner(sa.kernel.path_mtu) if sa.kernel.path_mtu else None,
                          "fragment": sa.config.fragment} for sa in self._outbound_sas()],
        }

    def prometheus(self) -> str:
        st = self.stats()
        lines = ["# HELP ipsp_gateway_io_packets_total Packets through each I/O path of the gateway.",
                 "# TYPE ipsp_gateway_io_packets_total counter"]
        lines += [f'ipsp_gateway_io_packets_total{{path="{p}"}} {v["packets"]}' for p, v in st["io"].items()]
        lines += ["# HELP ipsp_gateway_io_syscalls_total System calls of each I/O path of the gateway.",
                  "# TYPE ipsp_gateway_io_syscalls_total counter"]
        lines += [f'ipsp_gateway_io_syscalls_total{{path="{p}"}} {v["syscalls"]}' for p, v in st["io"].items()]
        lines += ["# HELP ipsp_gateway_icmp_errors_total ICMP errors the gateway sent or held back.",
                  "# TYPE ipsp_gateway_icmp_errors_total counter"]
        lines += [f'ipsp_gateway_icmp_errors_total{{outcome="{k}"}} {v}' for k, v in st["icmp"].items()]
        lines += ["# HELP ipsp_gateway_fragments_total Inner IPv4 packets fragmented before encapsulation, and fragments.",
                  "# TYPE ipsp_gateway_fragments_total counter",
                  f'ipsp_gateway_fragments_total{{kind="packets"}} {st["fragments"]["packets_fragmented"]}',
                  f'ipsp_gateway_fragments_total{{kind="fragments"}} {st["fragments"]["fragments_made"]}',
                  "# HELP ipsp_gateway_keepalives_total NAT keepalives sent (RFC 3948 2.3).",
                  "# TYPE ipsp_gateway_keepalives_total counter",
                  f"ipsp_gateway_keepalives_total {st['keepalives_sent']}",
                  "# HELP ipsp_gateway_path_mtu Path MTU each outbound SA's packets are checked against.",
                  "# TYPE ipsp_gateway_path_mtu gauge"]
        lines += [f'ipsp_gateway_path_mtu{{spi="{r["spi"]:#010x}",dst="{r["dst"]}"}} {r["path_mtu"]}'
                  for r in st["path_mtu"]]
        return "\n".join(lines) + "\n"


class GatewayControl(ControlServer):
    """The control socket of a gateway: the engine's ops, a "gateway" section in the stats,
    and reloads that also apply the [gateway] table."""

    def __init__(self, gateway: Gateway, path, *, config_path=None):
        super().__init__(gateway.engine, path, config_path=config_path)
        self.gateway = gateway
        self._ops["ike"] = self._ike

    def _stats(self, params: dict) -> dict:
        out = {**super()._stats(params), "gateway": self.gateway.stats()}
        if self.gateway.ike is not None:
            out["ike"] = self.gateway.ike.status()
        return out

    def _prometheus(self, params: dict) -> str:
        text = super()._prometheus(params) + self.gateway.prometheus()
        return text + (self.gateway.ike.prometheus() if self.gateway.ike is not None else "")

    def _ike(self, params: dict) -> Any:
        """``ipsp ike``: status, or initiate / terminate / rekey a connection."""
        daemon = self.gateway.ike
        if daemon is None:
            raise ConfigError("this gateway has no [[connection]]: no IKE daemon runs")
        _only(params, "action", "connection", "ike")
        action = _param(params, "action", str, "status")
        if action == "status":
            return daemon.status()
        name = _param(params, "connection", str, None)
        if name is None:
            raise ConfigError(f"ike {shown(action)} needs the name of a connection")
        ike = daemon.ike
        if action == "initiate":
            daemon.call(ike.initiate, name)
            return {"connection": name}
        if action == "terminate":
            daemon.call(ike.terminate, name)
            return {"connection": name}
        if action == "rekey":
            rekey_ike = _param(params, "ike", bool, False)
            return {"connection": name, "started": daemon.call(lambda: ike.rekey(name, ike=rekey_ike))}
        raise ConfigError(f"unknown ike action {shown(action)} (status, initiate, terminate, rekey)")

    def apply(self, cfg: Config) -> None:
        if cfg.gateway is None:
            raise ConfigError("no [gateway] table: a running gateway keeps its own", path=cfg.path, key="gateway")
        running = self.engine.config
        super().apply(cfg)                   # all or nothing
        if running is not None and (running.connections, running.ike) != (cfg.connections, cfg.ike):
            log.warning("[ike] and [[connection]] changed: they take effect on restart")
        try:
            self.gateway.reconfigure(cfg.gateway)
        except OSError as exc:
            raise ConfigError(f"the engine took the new configuration, but: {exc}", path=cfg.path,
                              key="gateway.routes") from None


def _ike_daemon(engine: Engine, cfg: Config, gateway: Gateway):
    """The IKE daemon of a gateway with [[connection]] tables: it speaks IKE on UDP 500 and,
    through the gateway's own socket, on the gateway's UDP port (NAT traversal)."""
    from ipsp.ike.transport import IkeDaemon

    g = cfg.gateway
    settings = dataclasses.replace(cfg.ike, nat_port=g.udp_port)
    nat = gateway.sock if g.outer == "udp" else None      # (encap = true without it: refused by the loader)
    # the UDP socket and the DF socket share the port (SO_REUSEPORT, IPv4): the daemon's IKE
    # sockets join them there and the kernel steers IKE to those (IkeDaemon._open)
    group = [sock for sock in (gateway.sock, gateway.sock_df) if sock is not None] if g.local.version == 4 else []
    return IkeDaemon(engine, settings, cfg.connections, g.local, nat_socket=nat,
                     nat_group=len(group) if nat is not None else 0)


def run_gateway(config_path: str, socket_path: str | None = None) -> int:
    """``ipsp gateway``: returns the exit status (0 after SIGTERM or SIGINT)."""
    loaded = load_for_serving(config_path, socket_path)
    if isinstance(loaded, int):
        return loaded
    cfg, socket_path = loaded
    if cfg.gateway is None:
        log.error("%s: no [gateway] table (docs/configuration.md)", config_path)
        return 1
    # blocked before any thread exists (they inherit the mask); serve() takes them in turn
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    engine = Engine(rekey_grace=cfg.engine.rekey_grace, log_interval=cfg.engine.log_interval)
    gateway = Gateway(engine, cfg.gateway)
    server = GatewayControl(gateway, socket_path, config_path=config_path)
    try:
        try:
            engine.apply_config(cfg)
            gateway.open()
            if cfg.connections:
                gateway.ike = _ike_daemon(engine, cfg, gateway)
            server.start()
            gateway.start()
            if gateway.ike is not None:
                gateway.ike.start()
        except (ConfigError, ControlError, OSError) as exc:
            log.error("%s", exc)
            return 1
        g = cfg.gateway
        log.info("gateway running: %s (mtu %d) <-> %s %s%s, %d routes, %d policies, %d SAs (pid %d)",
                 g.tun, g.tun_mtu, g.outer, g.local, f":{g.udp_port}" if g.outer == "udp" else "",
                 len(g.routes), len(cfg.policies), len(cfg.sas), os.getpid())
        print("ipsp gateway: ready", file=sys.stderr, flush=True)
        serve(engine, server, on_tick=gateway.tick)
        return 1 if gateway.failed else 0
    finally:
        if gateway.ike is not None:
            gateway.ike.stop()
        gateway.stop()
        gateway.close()
        server.close()
        engine.close()
        log.info("gateway stopped: routes removed, keys wiped")
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
