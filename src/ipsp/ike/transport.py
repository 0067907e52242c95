"""The IKE daemon's I/O: :class:`ipsp.ike.ikesa.Ike` on an asyncio loop in a thread of its own.

UDP 500 is the daemon's socket. UDP 4500 (NAT traversal, RFC 3948 and RFC 7296 2.23) carries
both ESP and IKE; IKE there starts with the four-byte non-ESP marker. Inside ``ipsp gateway``
the gateway owns the 4500 socket (its ESP data plane); where that socket is shared
(SO_REUSEPORT, IPv4) the daemon's own sockets join it on the port and the kernel gives them
the IKE (:func:`steering_program`), else the gateway hands the daemon what carries the
marker (:meth:`IkeDaemon.feed`). The daemon sends through the gateway's socket, so its IKE
and the ESP leave from one address and port, as the peer's NAT mapping needs. Standalone the
daemon opens 4500 itself.

Every datagram, from the daemon's own sockets or from the gateway, enters through one
bounded :class:`ipsp.ike.intake.Intake`: messages of our IKE SAs are served before new
IKE_SA_INIT, whatever is beyond the queues' bounds is dropped and counted, and the loop serves
a budget per iteration so control calls and timers are never stuck behind a flood. The
daemon's own sockets are read until empty (at most ``READ_BURST`` datagrams per wake-up):
leaving a flood in the kernel's receive buffer would drop the established SAs' messages
there, before anything could tell them apart. Sends never queue: a datagram the socket will
not take now is dropped and counted (IKE retransmits).

Engine events reach the protocol on its own thread: ``acquire`` (a trap policy's first
packet) starts a negotiation.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
import struct
import threading
import time
from typing import Callable

from ipsp.ike import certs
from ipsp.ike.config import Connection, IkeSettings
from ipsp.ike.ikesa import Ike
from ipsp.ike.intake import Intake
from ipsp.ratelimit import QuietLog

__all__ = ["IkeDaemon", "NON_ESP_MARKER", "load_credentials"]

log = logging.getLogger("ipsp.ike")

NON_ESP_MARKER = b"\0\0\0\0"       # RFC 3948 2.2
TICK = 0.1                         # retransmission and timer resolution, seconds
READ_BURST = 256                   # datagrams read from one socket per wake-up
SO_ATTACH_REUSEPORT_CBPF = 51      # Linux 4.5, <asm-generic/socket.h>
SO_DETACH_REUSEPORT_BPF = 68       # Linux 5.3
_NEW, _ESTABLISHED = 0, 1          # the order of a port's two sockets in its SO_REUSEPORT group
SO_MEMINFO, _SK_MEMINFO_DROPS = 55, 8     # Linux: u32 sk_meminfo[], [8] datagrams the socket dropped


def steering_program(marker: bool, base: int, other: int) -> bytes:
    """Classic BPF for a SO_REUSEPORT group (SO_ATTACH_REUSEPORT_CBPF), run by the kernel on
    each datagram's UDP payload: the index of the socket that gets it. IKE with a zero
    responder SPI (IKE_SA_INIT requests, RFC 7296 3.1) goes to socket *base*, other IKE to
    *base* + 1, so a flood of the first fills only its own receive buffer; with *marker*
    (RFC 3948 2.2) what does not start with four zero bytes (ESP) goes to socket *other*. A
    datagram too short to hold the fields makes the program end with 0: socket 0."""
    ld, jeq, ret = 0x20, 0x15, 0x06          # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_RET|K
    spi = 4 if marker else 0
    # (code, jt, jf, k); the jumps count instructions skipped
    prog = [(ld, 0, 0, spi + 8), (jeq, 0, 3, 0), (ld, 0, 0, spi + 12), (jeq, 0, 1, 0),
            (ret, 0, 0, base + _NEW), (ret, 0, 0, base + _ESTABLISHED)]
    if marker:
        prog = [(ld, 0, 0, 0), (jeq, 0, len(prog), 0)] + prog + [(ret, 0, 0, other)]
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


def _set_program(sock: socket.socket, program: bytes) -> None:
    code = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def load_credentials(settings: IkeSettings, pad) -> tuple[certs.Credential | None, certs.TrustStore | None]:
    """Our certificate and key, and the trust anchors ([ike].cacerts plus each pubkey peer's
    ca) with the CRLs; ConfigError names the file that is wrong."""
    credential = certs.Credential.load(settings.cert, settings.key, settings.chain) if settings.cert else None
    anchors = list(dict.fromkeys([*settings.cacerts, *(p.ca for p in pad if p.auth == "pubkey" and p.ca)]))
    trust = certs.TrustStore.load(anchors, settings.crls) if anchors else None
    return credential, trust


class IkeDaemon:
    """``start()``, then ``feed()`` from the gateway's receive thread; ``stop()``."""

    def __init__(self, engine, settings: IkeSettings, connections: tuple[Connection, ...], local, *,
                 nat_socket: socket.socket | None = None, nat_group: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.settings = settings
        self.local = str(local)
        self.nat_socket = nat_socket
        # the sockets already in nat_socket's SO_REUSEPORT group (0: none, it is not shared)
        self.nat_group = nat_group
        self.steered = False           # the kernel sends the gateway's IKE to our own sockets
        credential, trust = load_credentials(settings, engine.km.pad)
        self.ike = Ike(engine.km, engine.km.pad, settings, connections, local=local, send=self._send, clock=clock,
                       credential=credential, trust=trust, changes=engine.changes)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sockets: dict[int, list[socket.socket]] = {}      # port -> [new, established]
        self.intake = Intake(self.ike.sas.__contains__, self._wake)
        self.quiet: QuietLog = self.ike.quiet
        self.counters = dict.fromkeys(("not_ike", "send_failed", "failed"), 0)     # written on the loop only
        self._ready = threading.Event()
        self._batch: contextlib.ExitStack | None = None
        self._outbox: list[tuple[bytes, tuple[str, int], int]] = []     # sends held until the batch ends
        self._error: BaseException | None = None
        engine.km.on("acquire", self._on_acquire)
        engine.km.on("expire", self._on_expire)

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ipsp-ike", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._open())
        except BaseException as exc:          # a socket we cannot bind: start() raises it
            self._error = exc
            self._ready.set()
            self.loop.close()
            return
        self._ready.set()
        ticker = self.loop.create_task(self._ticks())
        # what the gateway fed before the loop existed woke nobody: the first drain serves it
        self.loop.call_soon(self._drain)
        self.loop.run_forever()
        ticker.cancel()
        with contextlib.suppress(BaseException):
            self.loop.run_until_complete(ticker)
        if self._batch is not None:       # stopped within a batch: its changes and sends complete here
            self._end_batch()
        self._close_sockets()
        self.loop.close()

    async def _open(self) -> None:
        """Two sockets per port in a SO_REUSEPORT group, the kernel choosing between them by
        steering_program: IKE_SA_INIT requests to one, the rest to the other. Inside a
        gateway whose UDP socket is shared (IPv4) our two join its group on its port and the
        program, set on the gateway's socket, leaves ESP to the gateway and gives us the IKE,
        so a flood of IKE never competes with ESP for the gateway's receive buffer (and
        thread). Otherwise the gateway hands us its IKE through feed()."""
        try:
            self._bind_pair(self.settings.port, False, 0, None)
            if self.nat_socket is None:
                self._bind_pair(self.settings.nat_port, True, 0, None)
            elif self.nat_group:
                try:
                    self._bind_pair(self.settings.nat_port, True, self.nat_group, self.nat_socket)
                    self.steered = True
                except OSError as exc:
                    log.warning("IKE on port %d stays with the gateway's socket (no SO_REUSEPORT steering: %s)",
                                self.settings.nat_port, exc)
        except BaseException:
            self._close_sockets()
            raise
        self.ike.start()

    def _bind_pair(self, port: int, marker: bool, base: int, group: socket.socket | None) -> None:
        """Our two sockets on *port*, at indices base and base + 1 of its SO_REUSEPORT group;
        *group*: a socket of the group already there (the gateway's), else we make the group.
        The program is in place before a socket of ours joins, so no ESP ever lands on ours
        (indices beyond the group fall back to the kernel's hash over the sockets there)."""
        family = socket.AF_INET6 if ":" in self.local else socket.AF_INET
        program = steering_program(marker, base, 0 if group is not None else base + _NEW)
        if group is None:
            # SO_REUSEPORT would let us join whatever holds the port (another daemon of the
            # same user): a plain bind first fails, as without it, if anything does
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.bind((self.local, port))
        pair: list[socket.socket] = []
        try:
            for _ in (_NEW, _ESTABLISHED):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                pair.append(sock)
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if group is not None and len(pair) == 1:
                    _set_program(group, program)
                sock.bind((self.local, port))
                if group is None and len(pair) == 1:
                    _set_program(sock, program)
        except BaseException:
            for sock in pair:
                sock.close()
            if group is not None:
                with contextlib.suppress(OSError):
                    group.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
            raise
        self._sockets[port] = pair
        for sock in pair:
            self.loop.add_reader(sock.fileno(), self._readable, sock, port, marker)

    def _close_sockets(self) -> None:
        for pair in self._sockets.values():
            for sock in pair:
                if self.loop is not None and not self.loop.is_closed() and sock.fileno() >= 0:
                    self.loop.remove_reader(sock.fileno())
                sock.close()
        self._sockets.clear()
        if self.steered:
            # ours are gone: the program's indices now fall back to the hash over the gateway's
            with contextlib.suppress(OSError):
                self.nat_socket.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
            self.steered = False

    async def _ticks(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self.ike.tick()
            except Exception:
                log.exception("IKE timer failed")

    def stop(self) -> None:
        """Delete our IKE SAs (a Delete each), remove what they installed, stop the thread."""
        if self.loop is None or self._thread is None:
            return
        done = threading.Event()

        def close() -> None:
            try:
                self.ike.close()
            finally:
                done.set()
                self.loop.stop()

        if self.loop.is_running():
            self.loop.call_soon_threadsafe(close)
            done.wait(5)
        self._thread.join(timeout=5)
        self._thread = None

    # -- I/O ----------------------------------------------------------------------------------------

    def feed(self, data: bytes, remote: tuple[str, int]) -> bool:
        """An IKE message (marker removed) that arrived on the gateway's 4500 socket; any
        thread, never blocks. False if it was dropped (the intake counted it)."""
        return self.intake.put(data, remote, self.settings.nat_port)

    def _readable(self, sock: socket.socket, port: int, marker: bool) -> None:
        """On the loop: what one of our sockets holds, up to READ_BURST datagrams, into the intake."""
        for _ in range(READ_BURST):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:          # an ICMP error reported on the socket
                self.quiet(logging.DEBUG, "socket", "IKE socket on port %d: %s", port, exc)
                continue
            if marker:
                if len(data) <= 4 or data[:4] != NON_ESP_MARKER:
                    self.counters["not_ike"] += 1       # ESP or a keepalive on a daemon without a gateway
                    continue
                data = data[4:]
            self.intake.put(data, (addr[0], addr[1]), port)

    def _wake(self) -> None:
        """From any thread: the intake has datagrams and no drain is scheduled."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):      # the loop closed meanwhile: nothing to serve
                loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        """On the loop: a budget of queued datagrams, then the rest in a later iteration."""
        for data, remote, local_port in self.intake.take():
            try:
                self.receive(data, remote, local_port)
            except Exception:           # a bug met by one datagram must not stop the intake
                self.counters["failed"] += 1
                self.quiet(logging.ERROR, "failed", "IKE message from %s:%d: handling it failed", remote[0],
                           remote[1], exc_info=True)
        if self.intake.pending():
            self.loop.call_soon(self._drain)

    def receive(self, data: bytes, remote: tuple[str, int], local_port: int) -> None:
        """On the loop: one datagram to the protocol. The datagrams of one loop iteration share
        one engine table rebuild (the rebuild costs in proportion to all installed SAs: one per
        handshake would make many handshakes at once cost the square of their number). What
        the protocol sends meanwhile waits for the rebuild: a response that announces a new
        inbound SA must not reach the peer, which then sends on it, before the engine has it."""
        if self._batch is None:
            self._batch = contextlib.ExitStack()
            self._batch.enter_context(self.engine.changes())
            self.loop.call_soon(self._end_batch)
        self.ike.receive(data, remote, local_port)

    def _end_batch(self) -> None:
        batch, self._batch = self._batch, None
        try:
            batch.close()
        finally:
            out, self._outbox = self._outbox, []
            for args in out:
                self._transmit(*args)

    def _send(self, data: bytes, remote: tuple[str, int], local_port: int) -> None:
        if self._batch is not None:
            self._outbox.append((data, remote, local_port))      # at most what one drain's budget answers
        else:
            self._transmit(data, remote, local_port)

    def _transmit(self, data: bytes, remote: tuple[str, int], local_port: int) -> None:
        """Never queues (an asyncio transport would buffer without bound behind a full socket)."""
        try:
            if local_port == self.settings.port:
                self._sockets[self.settings.port][_NEW].sendto(data, remote)
            elif self.nat_socket is not None:
                self.nat_socket.sendto(NON_ESP_MARKER + data, socket.MSG_DONTWAIT, remote)
            else:
                self._sockets[self.settings.nat_port][_NEW].sendto(NON_ESP_MARKER + data, remote)
        except OSError as exc:
            self.counters["send_failed"] += 1
            self.quiet(logging.INFO, "send", "sending IKE to %s:%d: %s", remote[0], remote[1], exc)

    def call(self, fn: Callable, *args, timeout: float = 10):
        """Run fn(*args) on the daemon's thread and return its result (for control commands)."""
        if self.loop is None or not self.loop.is_running():
            raise RuntimeError("the IKE daemon is not running")
        return asyncio.run_coroutine_threadsafe(self._call(fn, *args), self.loop).result(timeout)

    @staticmethod
    async def _call(fn: Callable, *args):
        return fn(*args)

    def _kernel_drops(self) -> dict[str, int]:
        """What the kernel dropped on our sockets (receive buffer full) before we could read it."""
        out = {"kernel_dropped_new": 0, "kernel_dropped_established": 0}
        for pair in self._sockets.values():
            for kind, sock in zip(("new", "established"), pair):
                info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 64)
                if len(info) >= 4 * (_SK_MEMINFO_DROPS + 1):
                    out[f"kernel_dropped_{kind}"] += struct.unpack_from("=I", info, 4 * _SK_MEMINFO_DROPS)[0]
        return out

    def _on_acquire(self, event) -> None:
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.ike.acquire, event.policy.reqid)

    def _on_expire(self, event) -> None:
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.ike.expired, event.sa.spi, event.sa.direction, event.hard)

    def prometheus(self) -> str:
        st = self.status()
        states: dict[str, int] = {}
        for sa in st["ike_sas"]:
            states[sa["state"]] = states.get(sa["state"], 0) + 1
        lines = ["# HELP ipsp_ike_messages_total IKE messages and their outcomes, by kind.",
                 "# TYPE ipsp_ike_messages_total counter"]
        lines += [f'ipsp_ike_messages_total{{kind="{k}"}} {v}' for k, v in st["counters"].items()]
        intake = st["intake"]
        lines += ["# HELP ipsp_ike_intake_total IKE datagrams queued for the protocol or dropped on the way in.",
                  "# TYPE ipsp_ike_intake_total counter"]
        lines += [f'ipsp_ike_intake_total{{outcome="{k}"}} {v}' for k, v in intake.items()
                  if not k.startswith("queue_")]
        lines += ["# HELP ipsp_ike_intake_queue IKE datagrams waiting, by queue.", "# TYPE ipsp_ike_intake_queue gauge"]
        lines += [f'ipsp_ike_intake_queue{{queue="{k[6:]}"}} {v}' for k, v in intake.items()
                  if k.startswith("queue_") and not k.endswith("_bytes")]
        lines += ["# HELP ipsp_ike_sas IKE SAs by state.", "# TYPE ipsp_ike_sas gauge"]
        lines += [f'ipsp_ike_sas{{state="{k}"}} {v}' for k, v in sorted(states.items())]
        lines += ["# HELP ipsp_ike_child_sas Child SAs of the IKE SAs.", "# TYPE ipsp_ike_child_sas gauge",
                  f"ipsp_ike_child_sas {sum(len(sa['children']) for sa in st['ike_sas'])}"]
        return "\n".join(lines) + "\n"

    def status(self) -> dict:
        """IKE SAs, Child SAs and counters, for `ipsp stats` (no keys)."""
        def snapshot() -> dict:
            return {
                "ike_sas": [{"connection": sa.conn.name if sa.conn else None, "state": sa.state,
                             "initiator": sa.initiator, "spi_i": sa.spi_i.hex(), "spi_r": sa.spi_r.hex(),
                             "remote": f"{sa.remote[0]}:{sa.remote[1]}", "proposal": sa.proposal.name if sa.proposal
                             else None, "peer": str(sa.peer_id) if sa.peer_id else None,
                             "children": [{"spi_in": f"{c.spi_in:08x}", "spi_out": f"{c.spi_out:08x}",
                                           "proposal": c.proposal.name, "state": c.state} for c in sa.children]}
                            for sa in self.ike.ike_sas()],
                "counters": dict(self.ike.stats),
                "intake": {**self.intake.stats(), **self.counters, **self._kernel_drops(),
                           "log_lines_suppressed": self.quiet.suppressed},
            }
        return self.call(snapshot)
