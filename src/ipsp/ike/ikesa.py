"""The IKEv2 protocol engine (RFC 7296), sans I/O.

:class:`Ike` takes datagrams (``receive``), time (``tick``) and commands (``initiate``,
``acquire``, ``rekey_child``, ``rekey_ike``, ``terminate``) and gives datagrams to the ``send``
callable it was made with; it installs and removes ESP SAs and policies through the
key-manager API (:class:`ipsp.keymgr.KeyManagerAPI`), the only coupling to the engine. The
transport (:mod:`ipsp.ike.transport`) owns sockets and the clock; the tests drive two
instances against each other in memory.

What each exchange does, and the RFC 7296 sections behind it:

- IKE_SA_INIT (1.2, 2.6 cookies, 2.7 proposals, 2.10 nonces, 2.23 NAT detection): the
  responder keeps no state before a valid cookie once ``cookie_threshold`` IKE SAs are
  half-open; a wrong KE group is answered with INVALID_KE_PAYLOAD and the initiator retries.
- IKE_AUTH (2.15 PSK and signatures, RFC 7427; 2.9 traffic selectors, narrowed by the
  responder; 2.17 Child SA keys; 2.4 INITIAL_CONTACT).
- CREATE_CHILD_SA (1.3): new Child SAs, Child SA rekeys (1.3.3, with PFS when the ESP
  proposal names a group) and IKE SA rekeys (1.3.2, 2.18). A rekey is make-before-break:
  the rekey initiator installs both new SAs when the response arrives; the responder installs
  its new inbound SA at once and moves its outbound traffic to the new SA only when the
  initiator deletes the old one, so neither side ever sends on an SA the other lacks. A rekey
  request for an SA this side is itself rekeying is answered TEMPORARY_FAILURE (2.25) and
  both retry after a random delay.
- INFORMATIONAL (1.4): Delete of Child and IKE SAs, liveness checks (an empty request after
  ``dpd`` seconds without a word from the peer).
- Retransmission of requests with backoff, and a response cache per IKE SA for retransmitted
  requests (2.1, 2.2): one request in flight per IKE SA (window size 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac as _hmac
import ipaddress
import logging
import os
import random
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.serialization import Encoding

from ipsp.errors import ConfigError
from ipsp.ike import certs
from ipsp.ike.config import Connection, IkeSettings
from ipsp.ike.crypto import (DHGroup, IkeKeys, Prf, SKCipher, child_keymat, ike_keys, psk_auth, rekey_skeyseed,
                             sign, signed_octets, skeyseed, verify, SIGNATURE_HASHES, CryptoError, IntegrityError)
from ipsp.ratelimit import QuietLog
from ipsp.ike.message import (AUTH, CERT, CERTREQ, HEADER_LEN, KE, SA, SK, SKF, AuthMethod, Delete, ExchangeType,
                              Header,
                              IDi, IDr, MalformedMessage, Message, Nonce, Notify, NotifyType, Payload, ProtocolId,
                              TrafficSelector, TSi, TSr, TSType, UnsupportedCriticalPayload, decode_payloads,
                              encode_payloads, first_type)
from ipsp.ike.proposals import (EspProposal, IkeProposal, NoProposalChosen, accepted_esp, accepted_ike,
                                choose_esp, choose_ike)
from ipsp.pad import Identity, Peer
from ipsp.sa import SAConfig
from ipsp.sad import Lifetime, Lifetimes
from ipsp.spd import ANY, Action, Direction, Policy, PolicySelector
from ipsp.transforms import parse_proposal

__all__ = ["Ike", "IkeSA", "ChildSA"]

log = logging.getLogger("ipsp.ike")

NONCE_LEN = 32
ZERO_SPI = bytes(8)
_ID_BODY = struct.Struct("!B3x")
_ANY_TS = {4: (b"\0" * 4, b"\xff" * 4), 6: (b"\0" * 16, b"\xff" * 16)}
_TS_TYPE = {4: TSType.TS_IPV4_ADDR_RANGE, 6: TSType.TS_IPV6_ADDR_RANGE}
# notify types whose arrival in a response means the request failed (RFC 7296 3.10.1: 0..16383)
_ERROR_MAX = 16383
MAX_FRAGMENTS = 64                  # a reassembled message stays below 64 fragments (about 80 KB)
# half-open responder IKE SAs (each holds a DH key and derived keys) at most, in all and from
# one address, even for initiators that answer cookies: what a flood from addresses the
# attacker really owns can make us hold (RFC 7296 2.6 leaves the bound to the implementation).
# Cookies are asked from half the limit on, whatever cookie_threshold says.
HALF_OPEN_LIMIT = 4096
HALF_OPEN_PER_ADDRESS = 64
# reqids for Child SAs beyond a connection's first (others with other selectors): above any
# a configuration file assigns by default
_DYNAMIC_REQID = 0x40000000


class _Refused(Exception):
    """A request is answered with an error notify (and, for IKE_AUTH, the IKE SA ends)."""

    def __init__(self, notify: int, why: str, data: bytes = b""):
        super().__init__(why)
        self.notify, self.data = notify, data


def _nat_hash(spi_i: bytes, spi_r: bytes, addr: str, port: int) -> bytes:
    # RFC 7296 2.23: SHA-1 of the SPIs, the address and the port
    h = hashes.Hash(hashes.SHA1())
    h.update(spi_i + spi_r + ipaddress.ip_address(addr).packed + struct.pack("!H", port))
    return h.finalize()


def _notify_name(notify_type: int) -> str:
    return NotifyType(notify_type).name if notify_type in NotifyType._value2member_map_ else str(notify_type)


def _notifies(payloads: Iterable[Payload]) -> dict[int, Notify]:
    return {p.notify_type: p for p in payloads if isinstance(p, Notify)}


def _one(payloads: Iterable[Payload], kind: type) -> Any:
    return next((p for p in payloads if isinstance(p, kind)), None)


# -- traffic selectors (RFC 7296 2.9, 3.13) ----------------------------------------------------

def ts_of(nets: Iterable[ipaddress._BaseNetwork]) -> tuple[TrafficSelector, ...]:
    return tuple(TrafficSelector(_TS_TYPE[n.version], 0, 0, 65535, n[0].packed, n[-1].packed) for n in nets)


def narrow(offered: Iterable[TrafficSelector], ours: Iterable[ipaddress._BaseNetwork]) -> tuple[TrafficSelector, ...]:
    """What of *offered* lies inside *ours* (the responder's narrowing, RFC 7296 2.9): each
    offered range cut to each of our prefixes; protocol and ports as offered."""
    out = []
    for ts in offered:
        if ts.ts_type not in (TSType.TS_IPV4_ADDR_RANGE, TSType.TS_IPV6_ADDR_RANGE):
            continue
        lo, hi = int.from_bytes(ts.start_address, "big"), int.from_bytes(ts.end_address, "big")
        version = 4 if ts.ts_type == TSType.TS_IPV4_ADDR_RANGE else 6
        for net in ours:
            if net.version != version:
                continue
            a, b = max(lo, int(net[0])), min(hi, int(net[-1]))
            if a <= b and ts.start_port <= ts.end_port:
                size = 4 if version == 4 else 16
                sel = TrafficSelector(ts.ts_type, ts.ip_protocol, ts.start_port, ts.end_port,
                                      a.to_bytes(size, "big"), b.to_bytes(size, "big"))
                if sel not in out:
                    out.append(sel)
    return tuple(out)


def _inside(sel: TrafficSelector, within: Iterable[TrafficSelector]) -> bool:
    lo, hi = int.from_bytes(sel.start_address, "big"), int.from_bytes(sel.end_address, "big")
    return any(w.ts_type == sel.ts_type and int.from_bytes(w.start_address, "big") <= lo
               and hi <= int.from_bytes(w.end_address, "big") and w.start_port <= sel.start_port
               and sel.end_port <= w.end_port and w.ip_protocol in (0, sel.ip_protocol) for w in within)


def _networks(sel: TrafficSelector) -> list:
    cls = ipaddress.IPv4Address if sel.ts_type == TSType.TS_IPV4_ADDR_RANGE else ipaddress.IPv6Address
    return list(ipaddress.summarize_address_range(cls(sel.start_address), cls(sel.end_address)))


def _ts_text(sels: Iterable[TrafficSelector]) -> str:
    return ", ".join(str(n) for s in sels for n in _networks(s))


# -- state --------------------------------------------------------------------------------------

@dataclass
class _Request:
    exchange: int
    payloads: tuple[Payload, ...]
    on_response: Callable[[tuple[Payload, ...]], None]
    on_fail: Callable[[str], None] | None = None
    mid: int = -1
    data: list[bytes] = field(default_factory=list)     # the datagrams: one message, or its fragments
    sent_at: float = 0.0
    tries: int = 0


@dataclass
class _Reassembly:
    total: int
    parts: dict[int, tuple[bytes, int]] = field(default_factory=dict)   # number -> (plaintext, next payload)


@dataclass(eq=False)
class ChildSA:
    """One negotiated pair of ESP SAs."""

    conn: Connection
    spi_in: int
    spi_out: int
    proposal: EspProposal
    ts_local: tuple[TrafficSelector, ...]
    ts_remote: tuple[TrafficSelector, ...]
    nonces: tuple[bytes, bytes]
    reqid: int                                # joins its SAs and policies in the engine
    created: float
    rekey_at: float
    state: str = "installed"                  # installed | rekeying | rekeyed | deleting
    out_pending: SAConfig | None = field(default=None, repr=False)   # rekey responder: outbound waits
    out_pending_since: float = 0.0
    lifetimes: Lifetimes = Lifetimes()
    successor: "ChildSA | None" = None


class IkeSA:
    """One IKE SA: keys, message IDs, its Child SAs, and the exchanges it is running."""

    def __init__(self, ike: "Ike", *, initiator: bool, spi_i: bytes, spi_r: bytes, remote: tuple[str, int],
                 local_port: int, conn: Connection | None):
        self.ike = ike
        self.initiator = initiator
        self.spi_i, self.spi_r = spi_i, spi_r
        self.remote = remote
        self.local_port = local_port
        self.conn = conn
        self.state = "init"                    # init | auth | established | deleting | dead
        self.natt = False
        self.proposal: IkeProposal | None = None
        self.prf: Prf | None = None
        self.keys: IkeKeys | None = None
        self.cin: SKCipher | None = None
        self.cout: SKCipher | None = None
        self.ni = self.nr = b""
        self.dh = None
        self.init_request = self.init_response = b""
        self.peer: Peer | None = None
        self.peer_id: Identity | None = None
        self.mid_out = 0
        self.mid_in = 0
        self.pending: _Request | None = None
        self.queue: list[_Request] = []
        self.last_response: tuple[int, list[bytes]] | None = None
        self.frag = False                      # both sides announced RFC 7383 fragmentation
        self.reassembly: dict[tuple[int, bool], _Reassembly] = {}
        self.children: list[ChildSA] = []
        now = ike.clock()
        self.created = self.last_heard = now
        self.rekey_at: float | None = None
        # delayed retries after TEMPORARY_FAILURE: None for this IKE SA's rekey, else the Child SA
        self.retry_at: dict[ChildSA | None, float] = {}
        self.rekeying = False
        self.sent_initial_contact = False

    @property
    def spi(self) -> bytes:
        """Our SPI: the key of this IKE SA in Ike.sas."""
        return self.spi_i if self.initiator else self.spi_r

    def __repr__(self) -> str:
        return (f"IkeSA({self.conn.name if self.conn else '?'} {self.spi_i.hex()}_i {self.spi_r.hex()}_r "
                f"{self.state} {self.remote[0]}:{self.remote[1]})")

    # -- messages ----------------------------------------------------------------------------

    def header(self, exchange: int, mid: int, response: bool) -> Header:
        return Header(self.spi_i, self.spi_r, exchange, mid, initiator=self.initiator, response=response)

    def seal(self, exchange: int, mid: int, response: bool, payloads: tuple[Payload, ...]) -> list[bytes]:
        """An SK message (RFC 7296 3.14): header and SK header authenticated, payloads
        encrypted; as Encrypted Fragment payloads (RFC 7383 2.5) when both sides support them
        and the message would not fit the fragment size, each fragment sealed on its own."""
        inner = encode_payloads(payloads)
        first = first_type(payloads)
        header = self.header(exchange, mid, response)
        whole = self._sealed(header, SK(first, b""), inner)
        limit = self.ike.fragment_limit(self)
        if not self.frag or len(whole) <= limit:
            return [whole]
        chunk = limit - HEADER_LEN - 8 - self.cout.body_len(0)
        while chunk > 1 and HEADER_LEN + 8 + self.cout.body_len(chunk) > limit:
            chunk -= 1
        pieces = [inner[i:i + chunk] for i in range(0, len(inner), chunk)]
        return [self._sealed(header, SKF(first if k == 1 else 0, k, len(pieces), b""), piece)
                for k, piece in enumerate(pieces, 1)]

    def _sealed(self, header: Header, payload: SK | SKF, plain: bytes) -> bytes:
        n = self.cout.body_len(len(plain))
        skeleton = Message(header, (dataclasses.replace(payload, body=bytes(n)),)).encode()
        aad = skeleton[:len(skeleton) - n]
        return aad + self.cout.seal(aad, plain)

    def open(self, data: bytes, msg: Message) -> tuple[bytes, SK | SKF]:
        """The plaintext of the message's SK or SKF payload (raises IntegrityError)."""
        enc = msg.payloads[-1] if msg.payloads else None
        if not isinstance(enc, (SK, SKF)):
            raise MalformedMessage(0, "no Encrypted payload")
        aad = data[:len(data) - len(enc.body)]
        return self.cin.open(aad, enc.body), enc

    def unseal(self, data: bytes, msg: Message) -> tuple[Payload, ...] | None:
        """The payloads of an authentic message; None while a fragmented one is incomplete
        (RFC 7383 2.6: each fragment is verified on arrival, the whole decoded at the end)."""
        plain, enc = self.open(data, msg)
        if isinstance(enc, SK):
            return decode_payloads(plain, enc.next_payload)
        h = msg.header
        if not self.frag:
            raise MalformedMessage(HEADER_LEN, "an Encrypted Fragment payload, but fragmentation was not negotiated")
        if enc.total_fragments > MAX_FRAGMENTS:
            raise MalformedMessage(HEADER_LEN + 6, f"{enc.total_fragments} fragments (at most {MAX_FRAGMENTS})")
        key = (h.message_id, h.response)
        buf = self.reassembly.get(key)
        if buf is None or buf.total != enc.total_fragments:
            buf = self.reassembly[key] = _Reassembly(enc.total_fragments)   # 2.6.2: a new total starts over
        buf.parts[enc.fragment_number] = (plain, enc.next_payload)
        if len(buf.parts) < buf.total:
            return None
        del self.reassembly[key]
        return decode_payloads(b"".join(buf.parts[k][0] for k in range(1, buf.total + 1)), buf.parts[1][1])

    def request(self, exchange: int, payloads: Iterable[Payload], on_response, on_fail=None) -> None:
        self.queue.append(_Request(exchange, tuple(payloads), on_response, on_fail))
        self.flush()

    def flush(self) -> None:
        if self.pending is not None or not self.queue or self.state == "dead":
            return
        req = self.queue.pop(0)
        req.mid = self.mid_out
        self.mid_out += 1
        req.data = self.seal(req.exchange, req.mid, False, req.payloads)
        req.sent_at, req.tries = self.ike.clock(), 1
        self.pending = req
        self.ike.transmit(self, req.data)

    def respond(self, exchange: int, mid: int, payloads: Iterable[Payload]) -> None:
        data = self.seal(exchange, mid, True, tuple(payloads))
        self.reassembly.clear()
        self.last_response = (mid, data)
        self.ike.transmit(self, data)


class Ike:
    """The IKEv2 daemon's protocol state, without sockets or clock of its own."""

    def __init__(self, km, pad, settings: IkeSettings, connections: Iterable[Connection], *, local,
                 send: Callable[[bytes, tuple[str, int], int], None], clock: Callable[[], float],
                 credential: certs.Credential | None = None, trust: certs.TrustStore | None = None,
                 changes: Callable[[], Any] = contextlib.nullcontext, rng: random.Random | None = None):
        self.km = km
        self.pad = pad
        self.settings = settings
        self.connections = {c.name: c for c in connections}
        self.local = ipaddress.ip_address(local)
        self.send = send
        self.clock = clock
        self.credential = credential
        self.trust = trust
        self.changes = changes
        self.rng = rng or random.SystemRandom()
        self.sas: dict[bytes, IkeSA] = {}
        self.half_open: dict[tuple[bytes, str], IkeSA] = {}        # responder: (SPIi, address)
        self._half_open_from: Counter[str] = Counter()               # address -> its entries in half_open
        self.stats: dict[str, int] = dict.fromkeys((
            "received", "sent", "malformed", "integrity_failed", "unknown_spi", "unexpected", "retransmits",
            "responses_resent", "cookies_sent", "cookies_refused", "no_proposal", "invalid_ke", "auth_failed",
            "ts_unacceptable", "ike_established", "ike_rekeyed", "ike_deleted", "child_installed",
            "child_rekeyed", "child_deleted", "dead_peers", "temporary_failures", "half_open_created",
            "half_open_full", "fragments_received"), 0)
        self.quiet = QuietLog(log, clock=clock)
        self._cookie_secrets = [(0, os.urandom(32))]
        self._cookie_rotated = clock()
        self._policies: dict[tuple, tuple[list[Policy], int]] = {}
        self._last_usage: dict[int, int] = {}
        self._dynamic_reqids: set[int] = set()

    # -- public commands ------------------------------------------------------------------------

    def start(self) -> None:
        """Install trap policies and initiate the connections that start at load."""
        for conn in self.connections.values():
            if conn.start == "trap":
                self._hold_policies(conn.reqid, ts_of(conn.local_ts), ts_of(conn.remote_ts))
            elif conn.start == "start":
                self.initiate(conn.name)

    def close(self) -> None:
        """Delete every IKE SA (one Delete each, not waited for) and what was installed."""
        for sa in list(self.sas.values()):
            if sa.state == "established":
                with contextlib.suppress(Exception):
                    self.transmit(sa, sa.seal(ExchangeType.INFORMATIONAL, sa.mid_out, False,
                                              (Delete(ProtocolId.IKE, 0),)))
            self._destroy(sa, "daemon stopping")
        reqids = {c.reqid for c in self.connections.values()} | self._dynamic_reqids
        with self.changes():
            for old in [x for x in self.km.sad if x.reqid in reqids]:
                # rekeyed SAs still in their grace period: ours too, so they go with us
                with contextlib.suppress(KeyError, ConfigError):
                    self.km.del_sa(old.spi, old.dst, old.direction)
            for key in list(self._policies):
                self._drop_policies(key, force=True)

    def initiate(self, name: str) -> IkeSA | None:
        conn = self.connections.get(name)
        if conn is None:
            raise ConfigError(f"no connection is named {name!r}")
        if conn.remote is None:
            raise ConfigError(f"connection {name!r} has no remote address: it can only respond")
        # one IKE SA per peer: another connection to it adds a Child SA (RFC 7296 1.3.1)
        existing = self._ike_for(conn) or next(
            (s for s in self.sas.values() if s.state == "established" and s.conn is not None
             and s.conn.peer == conn.peer and s.remote[0] == str(conn.remote)), None)
        if existing is not None:
            if existing.state == "established" and not self._children(conn):
                self._create_child(existing, conn)
            return existing
        return self._start_ike(conn)

    def acquire(self, reqid: int) -> None:
        """An outbound packet matched a trap policy with no SA: negotiate one (once)."""
        for conn in self.connections.values():
            if conn.reqid == reqid and conn.remote is not None:
                if self._ike_for(conn) is None or not self._children(conn):
                    log.info("%s: acquire: negotiating", conn.name)
                    self.initiate(conn.name)
                return

    def expired(self, spi: int, direction: str, hard: bool) -> None:
        """The key manager's expire event for an SA we negotiated: a soft limit rekeys its
        Child SA, a hard one (the SA is dead) deletes it with the peer too."""
        for sa in list(self.sas.values()):
            for child in sa.children:
                if (child.spi_in if direction == "in" else child.spi_out) == spi and child.state == "installed":
                    if hard:
                        log.warning("%s: Child SA %08x_i %08x_o reached its hard lifetime", child.conn.name,
                                    child.spi_in, child.spi_out)
                        self.delete_child(child)
                    else:
                        self.rekey_child(child)
                    return

    def terminate(self, name: str) -> None:
        """Delete the connection's Child SAs; its IKE SA too unless other connections' Child
        SAs live on it."""
        for sa in list(self.sas.values()):
            if sa.state != "established" or sa.conn is None:
                continue
            mine = [c for c in sa.children if c.conn.name == name]
            if sa.conn.name != name and not mine:
                continue
            if all(c.conn.name == name for c in sa.children):
                self.delete_ike(sa)
            else:
                for child in mine:
                    self.delete_child(child)

    def rekey(self, name: str, *, ike: bool = False) -> int:
        """Rekey the connection's Child SAs (or its IKE SA); returns how many rekeys started."""
        if name not in self.connections:
            raise ConfigError(f"no connection is named {name!r}")
        started = 0
        for sa in list(self.sas.values()):
            if sa.conn is None or sa.conn.name != name or sa.state != "established":
                continue
            if ike:
                if not sa.rekeying:
                    self.rekey_ike(sa)
                    started += 1
                continue
            for child in list(sa.children):
                if child.state == "installed":
                    self.rekey_child(child)
                    started += 1
        return started

    def rekey_child(self, child: ChildSA) -> None:
        ike = self._owner(child)
        if ike is None or child.state != "installed":
            return
        child.state = "rekeying"
        self._create_child(ike, child.conn, rekey=child)

    def rekey_ike(self, sa: IkeSA) -> None:
        if sa.state != "established" or sa.rekeying:
            return
        sa.rekeying = True
        prop = sa.proposal
        spi = os.urandom(8)
        dh = DHGroup.for_id(prop.groups[0]).generate()
        ni = os.urandom(NONCE_LEN)
        offer = SA((prop.payload(1, spi),))

        def done(payloads):
            sa.rekeying = False
            n = _notifies(payloads)
            err = next((t for t in n if t <= _ERROR_MAX), None)
            if err is not None:
                self._retry_later(sa, None, err)
                return
            try:
                reply = _one(payloads, SA)
                chosen, group = accepted_ike(reply.proposals[0], (prop,))
                ke, nr = _one(payloads, KE), _one(payloads, Nonce)
                if len(reply.proposals[0].spi) != 8 or ke is None or ke.group != group or nr is None:
                    raise NoProposalChosen("IKE rekey response lacks SPI, KE or nonce")
                shared = dh.exchange(ke.data)
            except (NoProposalChosen, CryptoError, AttributeError, IndexError) as exc:
                log.warning("%r: IKE rekey response refused: %s", sa, exc)
                return
            new = self._rekeyed_ike(sa, True, spi, reply.proposals[0].spi, chosen, shared, ni, nr.data)
            log.info("%r: IKE SA rekeyed, new %r", sa, new)
            self.delete_ike(sa, rekeyed=True)

        sa.request(ExchangeType.CREATE_CHILD_SA, (offer, Nonce(ni), KE(dh.group.id, dh.public)), done,
                   lambda why: setattr(sa, "rekeying", False))

    def delete_ike(self, sa: IkeSA, *, rekeyed: bool = False) -> None:
        """INFORMATIONAL with Delete(IKE); the IKE SA and (unless it was rekeyed and its
        children moved on) its Child SAs go when the response comes or the peer is gone."""
        if sa.state == "deleting":
            return
        sa.state = "deleting"
        why = "rekeyed" if rekeyed else "deleted"
        sa.queue.clear()
        # after the request in flight, if any (window size 1: the peer takes message IDs in order)
        sa.request(ExchangeType.INFORMATIONAL, (Delete(ProtocolId.IKE, 0),),
                   lambda p: self._destroy(sa, why), lambda reason: self._destroy(sa, why))

    def delete_child(self, child: ChildSA) -> None:
        ike = self._owner(child)
        if ike is None:
            self._remove_child(child, None)
            return
        child.state = "deleting"
        ike.request(ExchangeType.INFORMATIONAL, (Delete(ProtocolId.ESP, 4, (child.spi_in.to_bytes(4, "big"),)),),
                    lambda p: self._remove_child(child, ike), lambda why: self._remove_child(child, ike))

    def ike_sas(self) -> list[IkeSA]:
        return list(self.sas.values())

    def children(self) -> list[ChildSA]:
        return [c for sa in self.sas.values() for c in sa.children]

    # -- time ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """Retransmissions, rekeys, liveness checks, half-open timeouts, cookie secrets."""
        now = self.clock()
        s = self.settings
        if now - self._cookie_rotated > 120:
            ver = self._cookie_secrets[0][0] + 1
            self._cookie_secrets = [(ver, os.urandom(32)), self._cookie_secrets[0]]
            self._cookie_rotated = now
        for key, sa in list(self.half_open.items()):
            if sa.state != "init" or now - sa.created > s.half_open_timeout:
                self._forget_half_open(key)
                if sa.state == "init":
                    self._destroy(sa, "half-open timeout")
        for sa in list(self.sas.values()):
            req = sa.pending
            if req is not None:
                due = req.sent_at + s.retransmit_timeout * s.retransmit_base ** (req.tries - 1)
                if now >= due:
                    if req.tries >= s.retransmit_tries:
                        self.stats["dead_peers"] += 1
                        log.warning("%r: no answer after %d transmissions: peer is gone", sa, req.tries)
                        sa.pending = None
                        if req.on_fail is not None:
                            req.on_fail("timeout")
                        if sa.state != "dead":
                            self._destroy(sa, "peer unreachable", restart=True)
                        continue
                    req.tries += 1
                    req.sent_at = now
                    self.stats["retransmits"] += 1
                    self.transmit(sa, req.data)
            if sa.state != "established":
                continue
            for what, at in list(sa.retry_at.items()):
                if now >= at:
                    del sa.retry_at[what]
                    if what is None:
                        self.rekey_ike(sa)
                    elif what in sa.children:
                        what.state = "installed"
                        self.rekey_child(what)
            if sa.rekey_at is not None and now >= sa.rekey_at and not sa.rekeying and None not in sa.retry_at:
                sa.rekey_at = None
                self.rekey_ike(sa)
            for child in list(sa.children):
                if child.state == "installed" and now >= child.rekey_at:
                    self.rekey_child(child)
                if child.out_pending is not None and now - child.out_pending_since > 10:
                    self._install_out(child)      # the Delete of the old SA never came
            conn = sa.conn
            if conn is not None and conn.dpd and sa.pending is None and not sa.queue:
                if self._heard_esp(sa):
                    sa.last_heard = now
                elif now - sa.last_heard > conn.dpd:
                    sa.last_heard = now
                    sa.request(ExchangeType.INFORMATIONAL, (), lambda p: None)

    def _heard_esp(self, sa: IkeSA) -> bool:
        """Inbound ESP counts as a sign of life (RFC 7296 2.4), so an IKE SA with busy tunnels
        sends no liveness checks."""
        heard = False
        for child in sa.children:
            try:
                packets = self.km.sad.get(child.spi_in, self.local, "in").usage()[1]
            except (KeyError, ConfigError):
                continue
            if packets != self._last_usage.get(child.spi_in, 0):
                heard = True
            self._last_usage[child.spi_in] = packets
        return heard

    # -- input --------------------------------------------------------------------------------

    def receive(self, data: bytes, remote: tuple[str, int], local_port: int) -> None:
        """One IKE message (without the non-ESP marker) from *remote* to our *local_port*.
        Malformed, unauthentic or unexpected messages change nothing and are counted."""
        self.stats["received"] += 1
        try:
            msg = Message.decode(data)
        except UnsupportedCriticalPayload as exc:
            self.stats["malformed"] += 1
            self.quiet(logging.INFO, "critical", "from %s:%d: %s", remote[0], remote[1], exc)
            return
        except MalformedMessage as exc:
            self.stats["malformed"] += 1
            self.quiet(logging.DEBUG, "malformed", "from %s:%d: %s", remote[0], remote[1], exc)
            return
        h = msg.header
        if h.spi_i == ZERO_SPI:
            self.stats["malformed"] += 1                # RFC 7296 3.1: the initiator's SPI is never zero
            return
        if h.exchange_type == ExchangeType.IKE_SA_INIT:
            if h.response:
                self._init_response(msg, data, remote)
            elif h.message_id == 0 and h.spi_r == ZERO_SPI:
                self._init_request(msg, data, remote, local_port)
            else:
                self.stats["unexpected"] += 1
            return
        sa = self.sas.get(h.spi_r if h.initiator else h.spi_i)
        if sa is None or (sa.spi_i, sa.spi_r) != (h.spi_i, h.spi_r) or sa.cin is None or sa.state == "dead":
            self.stats["unknown_spi"] += 1
            return
        if h.initiator == sa.initiator:
            self.stats["unexpected"] += 1               # our own message reflected
            return
        if h.response:
            req = sa.pending
            if req is None or h.message_id != req.mid or h.exchange_type != req.exchange:
                self.stats["unexpected"] += 1
                return
        elif h.message_id != sa.mid_in:
            if sa.last_response is not None and h.message_id == sa.last_response[0]:
                try:
                    _, enc = sa.open(data, msg)         # only an authentic retransmission is answered
                except IntegrityError:
                    self.stats["integrity_failed"] += 1
                    return
                except (MalformedMessage, UnsupportedCriticalPayload):
                    self.stats["malformed"] += 1
                    return
                if isinstance(enc, SKF) and enc.fragment_number != 1:
                    self.stats["fragments_received"] += 1   # RFC 7383 2.6.1: fragment 1 triggers the resend
                    return
                self.stats["responses_resent"] += 1     # RFC 7296 2.1: the response was lost
                self.transmit(sa, sa.last_response[1])
            else:
                self.stats["unexpected"] += 1
            return
        try:
            payloads = sa.unseal(data, msg)
        except IntegrityError:
            self.stats["integrity_failed"] += 1
            return
        except (MalformedMessage, UnsupportedCriticalPayload) as exc:
            self.stats["malformed"] += 1
            log.info("%r: inside the Encrypted payload: %s", sa, exc)
            return
        if payloads is None:
            self.stats["fragments_received"] += 1
            return
        sa.last_heard = self.clock()
        if sa.natt and (remote != sa.remote or local_port != sa.local_port):
            # RFC 7296 2.23: behind a NAT, answer where the latest authentic message came from
            moved = sa.state == "established" and remote != sa.remote
            sa.remote, sa.local_port = remote, local_port
            if moved:
                log.info("%r: peer moved to %s:%d", sa, *remote)
                self._follow_peer(sa)
        if h.response:
            req = sa.pending
            sa.pending = None
            try:
                req.on_response(payloads)
            except Exception:
                log.exception("%r: handling the response to message %d failed", sa, req.mid)
            sa.flush()
            return
        sa.mid_in += 1
        handler = {ExchangeType.IKE_AUTH: self._auth_request,
                   ExchangeType.CREATE_CHILD_SA: self._create_child_request,
                   ExchangeType.INFORMATIONAL: self._informational_request}.get(h.exchange_type)
        if handler is None:
            sa.respond(h.exchange_type, h.message_id, ())     # unknown exchanges get an empty answer
            return
        handler(sa, h, payloads)

    # -- IKE_SA_INIT ----------------------------------------------------------------------------

    def _start_ike(self, conn: Connection, *, cookie: bytes | None = None, group: int | None = None,
                   sa: IkeSA | None = None) -> IkeSA:
        if sa is None:
            sa = IkeSA(self, initiator=True, spi_i=os.urandom(8), spi_r=ZERO_SPI,
                       remote=(str(conn.remote), self.settings.port), local_port=self.settings.port, conn=conn)
            self.sas[sa.spi_i] = sa
            sa.ni = os.urandom(NONCE_LEN)
        group = group or conn.ike_proposals[0].groups[0]
        sa.dh = DHGroup.for_id(group).generate()
        payloads: list[Payload] = []
        if cookie is not None:
            payloads.append(Notify(0, b"", NotifyType.COOKIE, cookie))      # RFC 7296 2.6: first
        payloads += [SA(tuple(p.payload(i + 1) for i, p in enumerate(conn.ike_proposals))),
                     KE(group, sa.dh.public), Nonce(sa.ni)]
        payloads += self._nat_notifies(sa.spi_i, ZERO_SPI, sa.remote, conn.encap)
        if self.settings.fragmentation:
            payloads.append(Notify(0, b"", NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        if self.credential is not None:
            payloads.append(Notify(0, b"", NotifyType.SIGNATURE_HASH_ALGORITHMS,
                                   b"".join(struct.pack("!H", h) for h in SIGNATURE_HASHES)))
        msg = Message(Header(sa.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, 0, initiator=True), tuple(payloads))
        sa.init_request = msg.encode()
        sa.pending = _Request(ExchangeType.IKE_SA_INIT, (), lambda p: None, None, 0, [sa.init_request],
                              self.clock(), 1)
        sa.mid_out = 1
        log.info("%s: initiating IKE SA to %s", conn.name, conn.remote)
        self.transmit(sa, [sa.init_request])
        return sa

    def _nat_notifies(self, spi_i: bytes, spi_r: bytes, remote: tuple[str, int], fake: bool) -> list[Notify]:
        # a false source hash makes both sides see a NAT and encapsulate ESP in UDP, as
        # strongSwan's encap = yes does (RFC 7296 2.23 allows pretending to be behind one)
        src = os.urandom(20) if fake else _nat_hash(spi_i, spi_r, str(self.local), self.settings.port)
        dst = _nat_hash(spi_i, spi_r, remote[0], remote[1])
        return [Notify(0, b"", NotifyType.NAT_DETECTION_SOURCE_IP, src),
                Notify(0, b"", NotifyType.NAT_DETECTION_DESTINATION_IP, dst)]

    def _nat_detected(self, sa: IkeSA, n: dict[int, Notify], spi_r: bytes) -> bool:
        """Whether the peer's NAT detection hashes show a NAT either way (2.23)."""
        src, dst = n.get(NotifyType.NAT_DETECTION_SOURCE_IP), n.get(NotifyType.NAT_DETECTION_DESTINATION_IP)
        if src is None or dst is None:
            return False
        them = _nat_hash(sa.spi_i, spi_r, sa.remote[0], sa.remote[1])
        us = _nat_hash(sa.spi_i, spi_r, str(self.local), sa.local_port)
        return not (_hmac.compare_digest(src.data, them) and _hmac.compare_digest(dst.data, us))

    def _cookie(self, ver: int, secret: bytes, ni: bytes, addr: str, spi_i: bytes) -> bytes:
        # RFC 7296 2.6: <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>), as a MAC keyed by the secret
        mac = crypto_hmac.HMAC(secret, hashes.SHA256())
        mac.update(ni + ipaddress.ip_address(addr).packed + spi_i)
        return struct.pack("!I", ver) + mac.finalize()[:16]

    def _cookie_ok(self, cookie: bytes, ni: bytes, addr: str, spi_i: bytes) -> bool:
        if len(cookie) != 20:
            return False
        ver = struct.unpack_from("!I", cookie)[0]
        for v, secret in self._cookie_secrets:
            if v == ver:
                return _hmac.compare_digest(cookie, self._cookie(v, secret, ni, addr, spi_i))
        return False

    def _plain_reply(self, req: Message, remote: tuple[str, int], local_port: int, payloads) -> None:
        h = req.header
        msg = Message(Header(h.spi_i, ZERO_SPI, h.exchange_type, h.message_id, response=True), tuple(payloads))
        self.stats["sent"] += 1
        self.send(msg.encode(), remote, local_port)

    def _init_request(self, msg: Message, data: bytes, remote: tuple[str, int], local_port: int) -> None:
        h = msg.header
        key = (h.spi_i, remote[0])
        old = self.half_open.get(key)
        if old is not None:
            if old.init_request == data and old.init_response:
                self.stats["responses_resent"] += 1
                self.transmit(old, [old.init_response])
            else:
                self.stats["unexpected"] += 1
            return
        p = msg.payloads
        n = _notifies(p)
        sa_p, ke, nonce = _one(p, SA), _one(p, KE), _one(p, Nonce)
        if sa_p is None or ke is None or nonce is None:
            self.stats["malformed"] += 1
            self._plain_reply(msg, remote, local_port, (Notify(0, b"", NotifyType.INVALID_SYNTAX),))
            return
        # cookies from half the hard limit on whatever the threshold: past the limit only
        # initiators that proved their address could be refused, never everyone
        if len(self.half_open) >= min(self.settings.cookie_threshold, HALF_OPEN_LIMIT // 2):
            cookie = n.get(NotifyType.COOKIE)
            if cookie is None or not self._cookie_ok(cookie.data, nonce.data, remote[0], h.spi_i):
                # RFC 7296 2.6: no state until the initiator proves it receives at its address
                self.stats["cookies_sent" if cookie is None else "cookies_refused"] += 1
                ver, secret = self._cookie_secrets[0]
                self._plain_reply(msg, remote, local_port,
                                  (Notify(0, b"", NotifyType.COOKIE,
                                          self._cookie(ver, secret, nonce.data, remote[0], h.spi_i)),))
                return
        if len(self.half_open) >= HALF_OPEN_LIMIT or self._half_open_from[remote[0]] >= HALF_OPEN_PER_ADDRESS:
            # past the cookie: the initiator receives at its address, but holds too many already
            self.stats["half_open_full"] += 1
            self.quiet(logging.WARNING, "half_open_full", "IKE_SA_INIT from %s:%d: %d half-open IKE SAs, %d from "
                       "this address: dropped", remote[0], remote[1], len(self.half_open),
                       self._half_open_from[remote[0]])
            return
        ours = tuple(dict.fromkeys(pr for c in self.connections.values() for pr in c.ike_proposals))
        try:
            chosen, accepted, group = choose_ike(sa_p.proposals, ours)
        except NoProposalChosen as exc:
            self.stats["no_proposal"] += 1
            self.quiet(logging.WARNING, "no_proposal", "IKE_SA_INIT from %s:%d: %s: NO_PROPOSAL_CHOSEN",
                       remote[0], remote[1], exc)
            self._plain_reply(msg, remote, local_port, (Notify(0, b"", NotifyType.NO_PROPOSAL_CHOSEN),))
            return
        if ke.group != group:
            self.stats["invalid_ke"] += 1
            self.quiet(logging.INFO, "invalid_ke", "IKE_SA_INIT from %s:%d: KE for group %d, we want %d: "
                       "INVALID_KE_PAYLOAD", remote[0], remote[1], ke.group, group)
            self._plain_reply(msg, remote, local_port,
                              (Notify(0, b"", NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", group)),))
            return
        dh = DHGroup.for_id(group).generate()
        try:
            shared = dh.exchange(ke.data)
        except CryptoError as exc:
            self.stats["malformed"] += 1
            self.quiet(logging.INFO, "bad_ke", "IKE_SA_INIT from %s:%d: bad KE: %s", remote[0], remote[1], exc)
            self._plain_reply(msg, remote, local_port, (Notify(0, b"", NotifyType.INVALID_SYNTAX),))
            return
        sa = IkeSA(self, initiator=False, spi_i=h.spi_i, spi_r=os.urandom(8), remote=remote,
                   local_port=local_port, conn=None)
        sa.ni, sa.nr, sa.dh = nonce.data, os.urandom(NONCE_LEN), dh
        sa.natt = self._nat_detected(sa, n, ZERO_SPI) or any(c.encap for c in self.connections.values())
        self._keys(sa, chosen, skeyseed(Prf.for_id(chosen.prf), sa.ni, sa.nr, shared))
        sa.init_request = data
        reply: list[Payload] = [SA((accepted,)), KE(group, dh.public), Nonce(sa.nr)]
        reply += self._nat_notifies(sa.spi_i, sa.spi_r, remote, any(c.encap for c in self.connections.values()))
        if self.settings.fragmentation and NotifyType.IKEV2_FRAGMENTATION_SUPPORTED in n:
            reply.append(Notify(0, b"", NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
            sa.frag = True
        if self.trust is not None:
            reply.append(CERTREQ(certs.CERT_ENCODING_X509_SIGNATURE, certs.certreq_data(self.trust)))
        if self.credential is not None:
            reply.append(Notify(0, b"", NotifyType.SIGNATURE_HASH_ALGORITHMS,
                                b"".join(struct.pack("!H", x) for x in SIGNATURE_HASHES)))
        sa.init_response = Message(Header(sa.spi_i, sa.spi_r, ExchangeType.IKE_SA_INIT, 0, response=True),
                                   tuple(reply)).encode()
        sa.mid_in = 1
        self.sas[sa.spi_r] = sa
        self.half_open[key] = sa
        self._half_open_from[remote[0]] += 1
        self.stats["half_open_created"] += 1
        self.transmit(sa, [sa.init_response])

    def _forget_half_open(self, key: tuple[bytes, str]) -> None:
        if self.half_open.pop(key, None) is not None:
            self._half_open_from[key[1]] -= 1
            if not self._half_open_from[key[1]]:
                del self._half_open_from[key[1]]

    def _init_response(self, msg: Message, data: bytes, remote: tuple[str, int]) -> None:
        h = msg.header
        sa = self.sas.get(h.spi_i)
        if sa is None or not sa.initiator or sa.state != "init" or sa.cin is not None or h.message_id != 0:
            self.stats["unexpected"] += 1
            return
        p, conn = msg.payloads, sa.conn
        n = _notifies(p)
        if NotifyType.COOKIE in n:
            self._start_ike(conn, cookie=n[NotifyType.COOKIE].data, group=sa.dh.group.id, sa=sa)
            return
        if NotifyType.INVALID_KE_PAYLOAD in n:
            data_ = n[NotifyType.INVALID_KE_PAYLOAD].data
            want = struct.unpack("!H", data_)[0] if len(data_) == 2 else 0
            if want in {g for pr in conn.ike_proposals for g in pr.groups} and want != sa.dh.group.id:
                log.info("%s: responder asks for DH group %d", conn.name, want)
                self._start_ike(conn, group=want, sa=sa)
            else:
                self._fail(sa, f"responder asks for DH group {want}, which we did not offer")
            return
        err = next((t for t in n if t <= _ERROR_MAX), None)
        if err is not None:
            self._fail(sa, f"IKE_SA_INIT refused: {_notify_name(err)}")
            return
        try:
            reply, ke, nr = _one(p, SA), _one(p, KE), _one(p, Nonce)
            if reply is None or ke is None or nr is None or len(reply.proposals) != 1:
                raise NoProposalChosen("response lacks SA, KE or Nonce")
            chosen, group = accepted_ike(reply.proposals[0], conn.ike_proposals)
            if ke.group != group or group != sa.dh.group.id:
                raise NoProposalChosen(f"KE group {ke.group} is not the chosen group {group}")
            shared = sa.dh.exchange(ke.data)
        except (NoProposalChosen, CryptoError) as exc:
            self.stats["malformed"] += 1
            self._fail(sa, f"bad IKE_SA_INIT response: {exc}")
            return
        if h.spi_r == ZERO_SPI:
            self.stats["malformed"] += 1
            return
        sa.spi_r, sa.nr, sa.init_response = h.spi_r, nr.data, data
        sa.frag = self.settings.fragmentation and NotifyType.IKEV2_FRAGMENTATION_SUPPORTED in n
        sa.pending = None
        sa.natt = conn.encap or self._nat_detected(sa, n, sa.spi_r)
        if sa.natt:
            # RFC 7296 2.23: from IKE_AUTH on, both sides talk on 4500 with the non-ESP marker
            sa.remote, sa.local_port = (sa.remote[0], self.settings.nat_port), self.settings.nat_port
        self._keys(sa, chosen, skeyseed(Prf.for_id(chosen.prf), sa.ni, sa.nr, shared))
        sa.state = "auth"
        self._auth_send(sa, n)

    def _keys(self, sa: IkeSA, chosen: IkeProposal, seed: bytes) -> None:
        sa.proposal, sa.prf = chosen, Prf.for_id(chosen.prf)
        enc_len, integ_len = SKCipher.key_lengths(chosen.encr, chosen.key_bits, chosen.integ)
        k = ike_keys(sa.prf, seed, sa.ni, sa.nr, sa.spi_i, sa.spi_r, enc_len, integ_len)
        sa.keys = k
        ei = SKCipher(chosen.encr, chosen.key_bits, chosen.integ, k.sk_ei, k.sk_ai)
        er = SKCipher(chosen.encr, chosen.key_bits, chosen.integ, k.sk_er, k.sk_ar)
        sa.cout, sa.cin = (ei, er) if sa.initiator else (er, ei)

    # -- IKE_AUTH -------------------------------------------------------------------------------

    def _my_id(self, conn: Connection | None) -> Identity:
        ident = (conn.local_id if conn else None) or self.settings.local_id
        if ident is None and self.credential is not None:
            return self.credential.identities()[0]
        return ident or Identity("ip", str(self.local))

    def _id_payload(self, cls, ident: Identity) -> Payload:
        id_type, data = certs.id_payload(ident)
        return cls(id_type, data)

    def _my_auth(self, sa: IkeSA, peer: Peer, id_payload: Payload, octets_message: bytes, peer_nonce: bytes
                 ) -> list[Payload]:
        sk_p = sa.keys.sk_pi if sa.initiator else sa.keys.sk_pr
        octets = signed_octets(octets_message, peer_nonce, sa.prf, sk_p, _ID_BODY.pack(id_payload.id_type) + id_payload.data)
        if peer.auth == "psk":
            return [AUTH(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, psk_auth(sa.prf, peer.psk, octets))]
        if self.credential is None:
            raise _Refused(NotifyType.AUTHENTICATION_FAILED, f"peer {peer.name!r} wants certificates and we have none")
        method, data = sign(self.credential.key, octets)
        out: list[Payload] = [CERT(certs.CERT_ENCODING_X509_SIGNATURE, self.credential.cert.public_bytes(Encoding.DER))]
        out += [CERT(certs.CERT_ENCODING_X509_SIGNATURE, c.public_bytes(Encoding.DER)) for c in self.credential.chain]
        return out + [AUTH(method, data)]

    def _check_auth(self, sa: IkeSA, payloads: tuple[Payload, ...], id_p: Payload, remote_addr: str,
                    octets_message: bytes, my_nonce: bytes) -> Peer:
        """The peer's identity, its PAD entry and its AUTH (RFC 7296 2.15, RFC 4301 4.4.3);
        raises _Refused(AUTHENTICATION_FAILED) naming what failed."""
        fail = NotifyType.AUTHENTICATION_FAILED
        try:
            ident = certs.identity_from_payload(id_p.id_type, id_p.data)
        except ValueError as exc:
            raise _Refused(fail, f"unusable identity: {exc}") from None
        peer = self.pad.find(ident)
        if peer is None:
            raise _Refused(fail, f"no [[peer]] has the identity {ident}")
        if not peer.may_come_from(remote_addr):
            raise _Refused(fail, f"peer {peer.name!r} ({ident}) may not connect from {remote_addr}")
        auth = _one(payloads, AUTH)
        if auth is None:
            raise _Refused(fail, f"peer {peer.name!r} sent no AUTH payload")
        sk_p = sa.keys.sk_pr if sa.initiator else sa.keys.sk_pi
        octets = signed_octets(octets_message, my_nonce, sa.prf, sk_p, _ID_BODY.pack(id_p.id_type) + id_p.data)
        if peer.auth == "psk":
            if auth.method != AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE:
                raise _Refused(fail, f"peer {peer.name!r} must use its pre-shared key, used method {auth.method}")
            if not _hmac.compare_digest(auth.data, psk_auth(sa.prf, peer.psk, octets)):
                raise _Refused(fail, f"peer {peer.name!r} ({ident}): wrong pre-shared key")
        else:
            cert_ps = [p for p in payloads if isinstance(p, CERT) and p.encoding == certs.CERT_ENCODING_X509_SIGNATURE]
            if not cert_ps or self.trust is None:
                raise _Refused(fail, f"peer {peer.name!r} ({ident}) sent no X.509 certificate")
            try:
                chain = [certs.load_certificates(c.data)[0] for c in cert_ps]
                self.trust.verify(chain[0], chain[1:])
            except certs.CertificateError as exc:
                raise _Refused(fail, f"peer {peer.name!r} ({ident}): certificate refused: {exc}") from None
            except ValueError as exc:
                raise _Refused(fail, f"peer {peer.name!r} ({ident}): unreadable certificate: {exc}") from None
            if not certs.cert_matches_identity(chain[0], ident):
                raise _Refused(fail, f"peer {peer.name!r}: its certificate does not hold the identity {ident}")
            try:
                ok = verify(chain[0].public_key(), auth.method, auth.data, octets)
            except CryptoError as exc:
                raise _Refused(fail, f"peer {peer.name!r} ({ident}): {exc}") from None
            if not ok:
                raise _Refused(fail, f"peer {peer.name!r} ({ident}): bad signature")
        sa.peer, sa.peer_id = peer, ident
        return peer

    def _auth_send(self, sa: IkeSA, init_notifies: dict[int, Notify]) -> None:
        conn = sa.conn
        peer = self.pad.get(conn.peer)
        idi = self._id_payload(IDi, self._my_id(conn))
        try:
            payloads: list[Payload] = [idi]
            if peer.auth == "pubkey" and self.trust is not None:
                payloads.append(CERTREQ(certs.CERT_ENCODING_X509_SIGNATURE, certs.certreq_data(self.trust)))
            if conn.remote_id is not None:
                payloads.append(self._id_payload(IDr, conn.remote_id))
            payloads += self._my_auth(sa, peer, idi, sa.init_request, sa.nr)
        except _Refused as exc:
            self._fail(sa, str(exc))
            return
        if self.settings.initial_contact and not any(
                o is not sa and o.conn is not None and o.conn.peer == conn.peer and o.state == "established"
                for o in self.sas.values()):
            # RFC 7296 2.4: we hold no other IKE SA with this peer, so whatever it holds with us is stale
            payloads.append(Notify(0, b"", NotifyType.INITIAL_CONTACT))
            sa.sent_initial_contact = True
        spi_in = self.km.get_spi(self.local)
        payloads += [SA(tuple(p.payload(i + 1, spi_in.to_bytes(4, "big"), pfs=False)
                              for i, p in enumerate(conn.esp_proposals))),
                     TSi(ts_of(conn.local_ts)), TSr(ts_of(conn.remote_ts))]

        def done(reply: tuple[Payload, ...]) -> None:
            n = _notifies(reply)
            if NotifyType.AUTHENTICATION_FAILED in n:
                self.stats["auth_failed"] += 1
                self._fail(sa, f"peer {conn.peer!r} refused our authentication (AUTHENTICATION_FAILED)")
                return
            idr = _one(reply, IDr)
            try:
                if idr is None:
                    raise _Refused(NotifyType.AUTHENTICATION_FAILED, "response lacks IDr")
                got = self._check_auth(sa, reply, idr, sa.remote[0], sa.init_response, sa.ni)
                if got.name != conn.peer:
                    raise _Refused(NotifyType.AUTHENTICATION_FAILED,
                                   f"responder authenticated as peer {got.name!r}, not {conn.peer!r}")
            except _Refused as exc:
                self.stats["auth_failed"] += 1
                log.warning("%s: %s", conn.name, exc)
                # RFC 7296 2.21.2: tell the responder, then forget the IKE SA
                with contextlib.suppress(Exception):
                    self.transmit(sa, sa.seal(ExchangeType.INFORMATIONAL, sa.mid_out, False,
                                              (Notify(0, b"", NotifyType.AUTHENTICATION_FAILED),)))
                self._destroy(sa, "authentication failed")
                return
            self._established(sa)
            self._child_response(sa, conn, reply, spi_in, sa.ni, sa.nr, None, None)

        sa.request(ExchangeType.IKE_AUTH, payloads, done,
                   lambda why: log.warning("%s: IKE_AUTH got no answer", conn.name))

    def _established(self, sa: IkeSA) -> None:
        sa.state = "established"
        self.stats["ike_established"] += 1
        conn = sa.conn
        sa.rekey_at = self.clock() + conn.ike_rekey * (1 - conn.jitter * self.rng.random())
        log.info("%s: IKE SA established with %s (%s) at %s:%d, %s%s", conn.name, sa.peer.name, sa.peer_id,
                 sa.remote[0], sa.remote[1], sa.proposal.name, ", NAT-T" if sa.natt else "")

    def _auth_request(self, sa: IkeSA, h: Header, payloads: tuple[Payload, ...]) -> None:
        if sa.initiator or sa.state != "init":
            sa.respond(h.exchange_type, h.message_id, (Notify(0, b"", NotifyType.INVALID_SYNTAX),))
            return
        self._forget_half_open((sa.spi_i, sa.remote[0]))
        idi = _one(payloads, IDi)
        try:
            if idi is None:
                raise _Refused(NotifyType.AUTHENTICATION_FAILED, "IKE_AUTH without IDi")
            peer = self._check_auth(sa, payloads, idi, sa.remote[0], sa.init_request, sa.nr)
            conns = [c for c in self.connections.values() if c.peer == peer.name]
            if not conns:
                raise _Refused(NotifyType.AUTHENTICATION_FAILED, f"no [[connection]] uses peer {peer.name!r}")
            idr_p = _one(payloads, IDr)
            if idr_p is not None:
                try:
                    wanted = certs.identity_from_payload(idr_p.id_type, idr_p.data)
                except ValueError:
                    wanted = None
                if wanted is not None and not any(certs.identity_matches(wanted, self._my_id(c)) for c in conns):
                    raise _Refused(NotifyType.AUTHENTICATION_FAILED, f"peer asks for identity {wanted}, not ours")
            conn = self._conn_for(conns, payloads)
            sa.conn = conn
            idr = self._id_payload(IDr, self._my_id(conn))
            mine = [idr] + self._my_auth(sa, peer, idr, sa.init_response, sa.ni)
        except _Refused as exc:
            self.stats["auth_failed"] += 1
            log.warning("IKE_AUTH from %s:%d refused: %s", sa.remote[0], sa.remote[1], exc)
            sa.respond(h.exchange_type, h.message_id, (Notify(0, b"", exc.notify),))
            self._destroy(sa, "authentication failed")
            return
        if NotifyType.INITIAL_CONTACT in _notifies(payloads):
            for other in list(self.sas.values()):
                if other is not sa and other.peer_id is not None and other.peer_id == sa.peer_id:
                    log.info("%s: INITIAL_CONTACT from %s: its old %r is gone", conn.name, sa.peer_id, other)
                    self._destroy(other, "replaced after INITIAL_CONTACT")
        self._established(sa)
        mine += self._child_request(sa, conn, payloads, sa.ni, sa.nr, None, rekeying=None)
        sa.respond(h.exchange_type, h.message_id, mine)

    # -- Child SAs --------------------------------------------------------------------------------

    def _create_child(self, sa: IkeSA, conn: Connection, rekey: ChildSA | None = None) -> None:
        spi_in = self.km.get_spi(self.local)
        prop = rekey.proposal if rekey is not None else None
        group = next((g for p in conn.esp_proposals for g in p.groups), None)
        dh = DHGroup.for_id(group).generate() if group else None
        ni = os.urandom(NONCE_LEN)
        spi_b = spi_in.to_bytes(4, "big")
        offers = conn.esp_proposals if prop is None else tuple(
            [p for p in conn.esp_proposals if p.name == prop.name] + [p for p in conn.esp_proposals if p.name != prop.name])
        payloads: list[Payload] = []
        if rekey is not None:
            payloads.append(Notify(ProtocolId.ESP, rekey.spi_in.to_bytes(4, "big"), NotifyType.REKEY_SA))
        payloads += [SA(tuple(p.payload(i + 1, spi_b, pfs=dh is not None) for i, p in enumerate(offers))),
                     Nonce(ni)]
        if dh is not None:
            payloads.append(KE(dh.group.id, dh.public))
        ts_l = rekey.ts_local if rekey is not None else ts_of(conn.local_ts)
        ts_r = rekey.ts_remote if rekey is not None else ts_of(conn.remote_ts)
        payloads += [TSi(ts_l), TSr(ts_r)]

        def done(reply: tuple[Payload, ...]) -> None:
            n = _notifies(reply)
            err = next((t for t in n if t <= _ERROR_MAX), None)
            if err == NotifyType.TEMPORARY_FAILURE and rekey is not None:
                self._retry_later(sa, rekey, err)
                return
            if rekey is not None and err is not None:
                rekey.state = "installed"
                rekey.rekey_at = self.clock() + 30
            self._child_response(sa, conn, reply, spi_in, ni, None, dh, rekey)

        def failed(why: str) -> None:
            if rekey is not None:
                rekey.state = "installed"

        sa.request(ExchangeType.CREATE_CHILD_SA, payloads, done, failed)

    def _retry_later(self, sa: IkeSA, what: ChildSA | None, err: int) -> None:
        self.stats["temporary_failures"] += 1
        delay = self.rng.uniform(1.0, 3.0)
        log.info("%r: %s refused (%s): retrying in %.1f s", sa, "IKE rekey" if what is None else "Child rekey",
                 _notify_name(err), delay)
        sa.retry_at[what] = self.clock() + delay

    def _child_response(self, sa: IkeSA, conn: Connection, reply: tuple[Payload, ...], spi_in: int, ni: bytes,
                        nr: bytes | None, dh, rekey: ChildSA | None) -> None:
        """The initiator's end of a Child SA negotiation: check the choice, install both SAs."""
        n = _notifies(reply)
        err = next((t for t in n if t <= _ERROR_MAX), None)
        if err is not None:
            name = _notify_name(err)
            self.stats["ts_unacceptable" if err == NotifyType.TS_UNACCEPTABLE else "no_proposal"] += 1
            log.warning("%s: Child SA refused by the peer: %s", conn.name, name)
            return
        try:
            sa_p, tsi, tsr = _one(reply, SA), _one(reply, TSi), _one(reply, TSr)
            if sa_p is None or tsi is None or tsr is None or len(sa_p.proposals) != 1:
                raise NoProposalChosen("the response lacks SA, TSi or TSr")
            chosen = accepted_esp(sa_p.proposals[0], conn.esp_proposals, pfs_group=dh.group.id if dh else None)
            shared = b""
            if dh is not None:
                ke = _one(reply, KE)
                if ke is None or ke.group != dh.group.id:
                    raise NoProposalChosen("PFS: the response lacks the KE payload of our group")
                shared = dh.exchange(ke.data)
            if nr is None:
                nonce = _one(reply, Nonce)
                if nonce is None:
                    raise NoProposalChosen("the response lacks a nonce")
                nr = nonce.data
            want_l = rekey.ts_local if rekey else ts_of(conn.local_ts)
            want_r = rekey.ts_remote if rekey else ts_of(conn.remote_ts)
            if not all(_inside(s, want_l) for s in tsi.selectors) or not all(_inside(s, want_r) for s in tsr.selectors):
                raise NoProposalChosen("the responder widened the traffic selectors")
        except (NoProposalChosen, CryptoError) as exc:
            log.warning("%s: Child SA response refused: %s", conn.name, exc)
            if rekey is not None:
                rekey.state = "installed"
            return
        spi_out = int.from_bytes(sa_p.proposals[0].spi, "big")
        child = self._install(sa, conn, chosen, spi_in, spi_out, tsi.selectors, tsr.selectors, ni, nr, shared,
                              we_initiated=True, replaces=rekey)
        if rekey is not None:
            rekey.state, rekey.successor = "rekeyed", child
            self.stats["child_rekeyed"] += 1
            log.info("%s: Child SA rekeyed: %08x/%08x -> %08x/%08x", conn.name, rekey.spi_in, rekey.spi_out,
                     child.spi_in, child.spi_out)
            self.delete_child(rekey)

    def _child_request(self, sa: IkeSA, conn: Connection, payloads: tuple[Payload, ...], ni: bytes, nr: bytes,
                       pfs: tuple[int, bytes] | None, rekeying: ChildSA | None) -> list[Payload]:
        """The responder's end: choose, narrow, install; returns the payloads of the answer
        (SA, TSi, TSr, or an error notify: the IKE SA stays either way)."""
        sa_p, tsi, tsr = _one(payloads, SA), _one(payloads, TSi), _one(payloads, TSr)
        if sa_p is None or tsi is None or tsr is None:
            return [Notify(0, b"", NotifyType.INVALID_SYNTAX)]
        try:
            chosen, accepted = choose_esp(sa_p.proposals, conn.esp_proposals,
                                          pfs_group=pfs[0] if pfs is not None else None)
        except NoProposalChosen as exc:
            self.stats["no_proposal"] += 1
            log.warning("%s: Child SA: %s: NO_PROPOSAL_CHOSEN", conn.name, exc)
            return [Notify(0, b"", NotifyType.NO_PROPOSAL_CHOSEN)]
        remote_ok = conn.remote_ts
        if sa.peer is not None and sa.peer.allowed:
            # what the PAD lets this peer claim bounds what the connection offers (RFC 4301 4.4.3.4)
            remote_ok = tuple(a if a.subnet_of(b) else b for a in conn.remote_ts for b in sa.peer.allowed
                              if a.version == b.version and (a.subnet_of(b) or b.subnet_of(a)))
        ts_i, ts_r = narrow(tsi.selectors, remote_ok), narrow(tsr.selectors, conn.local_ts)
        if not ts_i or not ts_r:
            self.stats["ts_unacceptable"] += 1
            log.warning("%s: Child SA: %s === %s is outside %s === %s: TS_UNACCEPTABLE", conn.name,
                        _ts_text(tsi.selectors), _ts_text(tsr.selectors),
                        ", ".join(map(str, remote_ok)) or "nothing", ", ".join(map(str, conn.local_ts)))
            return [Notify(0, b"", NotifyType.TS_UNACCEPTABLE)]
        spi_out = int.from_bytes(accepted.spi, "big")
        spi_in = self.km.get_spi(self.local)
        shared = b"" if pfs is None else pfs[1]
        child = self._install(sa, conn, chosen, spi_in, spi_out, ts_r, ts_i, ni, nr, shared, we_initiated=False,
                              replaces=rekeying)
        if rekeying is not None:
            rekeying.successor = child
            rekeying.state = "rekeyed"
        proposal = type(accepted)(accepted.number, accepted.protocol_id, spi_in.to_bytes(4, "big"), accepted.transforms)
        return [SA((proposal,)), TSi(ts_i), TSr(ts_r)]

    def _install(self, sa: IkeSA, conn: Connection, prop: EspProposal, spi_in: int, spi_out: int,
                 ts_local, ts_remote, ni: bytes, nr: bytes, shared: bytes, *, we_initiated: bool,
                 replaces: ChildSA | None) -> ChildSA:
        """Keys (RFC 7296 2.17: initiator-to-responder SA first, encryption before integrity),
        both SAConfigs, the inbound SA at once, the outbound now or when the old one goes."""
        t = parse_proposal(prop.name)
        enc, auth = t.enc_key_len, t.auth_key_len
        keymat = bytearray(child_keymat(sa.prf, sa.keys.sk_d, ni, nr, 2 * (enc + auth), shared))
        ei, ai = bytes(keymat[:enc]), bytes(keymat[enc:enc + auth])
        er, ar = bytes(keymat[enc + auth:2 * enc + auth]), bytes(keymat[2 * enc + auth:])
        keymat[:] = bytes(len(keymat))
        (eo, ao), (ein, ain) = ((ei, ai), (er, ar)) if we_initiated else ((er, ar), (ei, ai))
        peer = ipaddress.ip_address(sa.remote[0])
        lport, rport = (sa.local_port, sa.remote[1]) if sa.natt else (4500, 4500)
        common = dict(transform=t, udp=sa.natt, replay_window=conn.replay_window, backend=conn.backend)
        cfg_in = SAConfig(spi_in, peer, self.local, enc_key=ein, auth_key=ain, sport=rport, dport=lport, **common)
        cfg_out = SAConfig(spi_out, self.local, peer, enc_key=eo, auth_key=ao, sport=lport, dport=rport, **common)
        now = self.clock()
        hard = Lifetimes(hard=Lifetime(add_seconds=conn.child_rekey * 1.1 + 60))
        # a rekey keeps the reqid (the key manager retires the old SAs for the new ones); a new
        # Child SA needs its own unless the connection's is free: two live Child SAs of one
        # reqid would be taken for a rekey of each other
        reqid = replaces.reqid if replaces is not None else self._free_reqid(conn)
        child = ChildSA(conn, spi_in, spi_out, prop, tuple(ts_local), tuple(ts_remote), (ni, nr), reqid, now,
                        now + conn.child_rekey * (1 - conn.jitter * self.rng.random()), lifetimes=hard)
        # the rekey initiator switches at once; the responder's outbound waits for the Delete
        outbound_now = replaces is None or we_initiated
        with self.changes():
            self._hold_policies(reqid, child.ts_local, child.ts_remote)
            self.km.add_sa(cfg_in, "in", lifetimes=hard, reqid=reqid, label=None)
            if outbound_now:
                self.km.add_sa(cfg_out, "out", lifetimes=hard, reqid=reqid)
            else:
                child.out_pending, child.out_pending_since = cfg_out, now
        sa.children.append(child)
        self.stats["child_installed"] += 1
        log.info("%s: Child SA %08x_i %08x_o installed, %s, %s === %s%s", conn.name, spi_in, spi_out, prop.name,
                 _ts_text(child.ts_local), _ts_text(child.ts_remote), "" if outbound_now else " (outbound waits)")
        return child

    def _install_out(self, child: ChildSA) -> None:
        cfg, child.out_pending = child.out_pending, None
        if cfg is not None:
            self.km.add_sa(cfg, "out", lifetimes=child.lifetimes, reqid=child.reqid)

    def _create_child_request(self, sa: IkeSA, h: Header, payloads: tuple[Payload, ...]) -> None:
        if sa.state != "established":
            sa.respond(h.exchange_type, h.message_id, (Notify(0, b"", NotifyType.TEMPORARY_FAILURE),))
            return
        sa_p, nonce, ke = _one(payloads, SA), _one(payloads, Nonce), _one(payloads, KE)
        n = _notifies(payloads)
        if sa_p is None or nonce is None:
            sa.respond(h.exchange_type, h.message_id, (Notify(0, b"", NotifyType.INVALID_SYNTAX),))
            return
        nr = os.urandom(NONCE_LEN)
        if sa_p.proposals and sa_p.proposals[0].protocol_id == ProtocolId.IKE:
            sa.respond(h.exchange_type, h.message_id, self._ike_rekey_request(sa, sa_p, nonce.data, nr, ke))
            return
        # another Child SA with this peer: the connection whose selectors it asks for
        conn = self._conn_for([c for c in self.connections.values() if c.peer == sa.conn.peer], payloads)
        rekeying = None
        if NotifyType.REKEY_SA in n:
            spi = int.from_bytes(n[NotifyType.REKEY_SA].spi, "big")
            rekeying = next((c for c in sa.children if c.spi_out == spi and c.state in ("installed", "rekeying")), None)
            if rekeying is None:
                sa.respond(h.exchange_type, h.message_id,
                           (Notify(ProtocolId.ESP, n[NotifyType.REKEY_SA].spi, NotifyType.CHILD_SA_NOT_FOUND),))
                return
            if rekeying.state == "rekeying":
                # both ends rekey the same Child SA: refuse, both retry after a random delay (2.25)
                sa.respond(h.exchange_type, h.message_id, (Notify(0, b"", NotifyType.TEMPORARY_FAILURE),))
                return
            conn = rekeying.conn
        dh = None
        if ke is not None:
            groups = {g for p in conn.esp_proposals for g in p.groups}
            if ke.group not in groups:
                want = next(iter(sorted(groups)), 0)
                sa.respond(h.exchange_type, h.message_id,
                           (Notify(0, b"", NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", want)),)
                           if want else (Notify(0, b"", NotifyType.NO_PROPOSAL_CHOSEN),))
                return
            mine = DHGroup.for_id(ke.group).generate()
            try:
                dh = (mine, mine.exchange(ke.data))
            except CryptoError:
                sa.respond(h.exchange_type, h.message_id, (Notify(0, b"", NotifyType.INVALID_SYNTAX),))
                return
        answer = self._child_request(sa, conn, payloads, nonce.data, nr,
                                     (dh[0].group.id, dh[1]) if dh is not None else None, rekeying)
        if any(isinstance(p, SA) for p in answer):
            answer.insert(1, Nonce(nr))
            if dh is not None:
                answer.insert(2, KE(dh[0].group.id, dh[0].public))
            if rekeying is not None:
                self.stats["child_rekeyed"] += 1
        sa.respond(h.exchange_type, h.message_id, answer)

    def _ike_rekey_request(self, sa: IkeSA, sa_p: SA, ni: bytes, nr: bytes, ke) -> list[Payload]:
        if sa.rekeying:
            return [Notify(0, b"", NotifyType.TEMPORARY_FAILURE)]
        try:
            chosen, accepted, group = choose_ike(sa_p.proposals, (sa.proposal,) + tuple(
                p for p in sa.conn.ike_proposals if p.name != sa.proposal.name))
        except NoProposalChosen:
            return [Notify(0, b"", NotifyType.NO_PROPOSAL_CHOSEN)]
        if ke is None or ke.group != group:
            return [Notify(0, b"", NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", group))]
        dh = DHGroup.for_id(group).generate()
        try:
            shared = dh.exchange(ke.data)
        except CryptoError:
            return [Notify(0, b"", NotifyType.INVALID_SYNTAX)]
        spi_r = os.urandom(8)
        new = self._rekeyed_ike(sa, False, accepted.spi, spi_r, chosen, shared, ni, nr)
        log.info("%r: IKE SA rekeyed by the peer, new %r", sa, new)
        reply = type(accepted)(accepted.number, accepted.protocol_id, spi_r, accepted.transforms)
        return [SA((reply,)), Nonce(nr), KE(group, dh.public)]

    def _rekeyed_ike(self, old: IkeSA, initiator: bool, spi_i: bytes, spi_r: bytes, chosen: IkeProposal,
                     shared: bytes, ni: bytes, nr: bytes) -> IkeSA:
        """The new IKE SA of a rekey (RFC 7296 2.18): keys from the old SK_d, the children move."""
        new = IkeSA(self, initiator=initiator, spi_i=spi_i, spi_r=spi_r, remote=old.remote,
                    local_port=old.local_port, conn=old.conn)
        new.natt, new.peer, new.peer_id, new.ni, new.nr = old.natt, old.peer, old.peer_id, ni, nr
        new.frag = old.frag
        self._keys(new, chosen, rekey_skeyseed(old.prf, old.keys.sk_d, shared, ni, nr))
        new.children, old.children = old.children, []
        self.sas[new.spi] = new
        self._established(new)
        self.stats["ike_rekeyed"] += 1
        return new

    # -- INFORMATIONAL ----------------------------------------------------------------------------

    def _informational_request(self, sa: IkeSA, h: Header, payloads: tuple[Payload, ...]) -> None:
        answer: list[Payload] = []
        n = _notifies(payloads)
        if NotifyType.AUTHENTICATION_FAILED in n:
            log.warning("%r: the peer refused our authentication", sa)
            self._destroy(sa, "authentication failed")
            return
        for d in (p for p in payloads if isinstance(p, Delete)):
            if d.protocol_id == ProtocolId.IKE:
                sa.respond(h.exchange_type, h.message_id, ())
                self._destroy(sa, "deleted by the peer")
                return
            if d.protocol_id != ProtocolId.ESP:
                continue
            mine = []
            for spi_b in d.spis:
                spi = int.from_bytes(spi_b, "big")
                child = next((c for c in sa.children if c.spi_out == spi), None)
                if child is None:
                    continue
                mine.append(child.spi_in.to_bytes(4, "big"))
                succ = child.successor
                if succ is not None and succ.out_pending is not None:
                    self._install_out(succ)       # the rekey initiator switched: so do we
                self._remove_child(child, sa)
            if mine:
                answer.append(Delete(ProtocolId.ESP, 4, tuple(mine)))
        sa.respond(h.exchange_type, h.message_id, answer)

    # -- teardown ---------------------------------------------------------------------------------

    def _remove_child(self, child: ChildSA, sa: IkeSA | None) -> None:
        """A deleted Child SA's SAs go now; a rekeyed one's were retired by their successors
        and live out the key manager's rekey grace for packets in flight."""
        if sa is not None and child in sa.children:
            sa.children.remove(child)
        with self.changes():
            if child.successor is None:
                with contextlib.suppress(KeyError, ConfigError):
                    self.km.del_sa(child.spi_in, self.local, "in")
                if child.out_pending is None:
                    for out in [x for x in self.km.sad if x.direction == "out" and x.spi == child.spi_out
                                and x.reqid == child.reqid]:
                        with contextlib.suppress(KeyError, ConfigError):
                            self.km.del_sa(out.spi, out.dst, "out")
            self._release_policies(child)
        child.out_pending = None
        self._last_usage.pop(child.spi_in, None)
        self.stats["child_deleted"] += 1
        log.info("%s: Child SA %08x_i %08x_o %s", child.conn.name, child.spi_in, child.spi_out,
                 "retired (rekeyed)" if child.successor else "deleted")

    def _destroy(self, sa: IkeSA, why: str, *, restart: bool = False) -> None:
        if sa.state == "dead":
            return
        was = sa.state
        sa.state = "dead"
        sa.pending = None
        sa.queue.clear()
        self.sas.pop(sa.spi, None)
        self._forget_half_open((sa.spi_i, sa.remote[0]))
        for child in list(sa.children):
            self._remove_child(child, sa)
        if sa.keys is not None:
            sa.keys = None
            sa.cin = sa.cout = None
        if was in ("established", "deleting") or sa.initiator:
            self.stats["ike_deleted"] += 1
            log.info("%r: gone: %s", sa, why)
        conn = sa.conn
        if restart and conn is not None and conn.start == "start" and conn.remote is not None:
            log.info("%s: restarting", conn.name)
            self._start_ike(conn)

    def _fail(self, sa: IkeSA, why: str) -> None:
        log.warning("%s: %s", sa.conn.name if sa.conn else "?", why)
        self._destroy(sa, why)

    # -- helpers ----------------------------------------------------------------------------------

    def transmit(self, sa: IkeSA, datagrams: list[bytes]) -> None:
        for data in datagrams:
            self.stats["sent"] += 1
            self.send(data, sa.remote, sa.local_port)

    def fragment_limit(self, sa: IkeSA) -> int:
        """The longest IKE message sent whole: the fragment size (an IP datagram) less the IP
        and UDP headers and, on the NAT-T port, the non-ESP marker (RFC 7383 2.5.1)."""
        ip = 20 if ipaddress.ip_address(sa.remote[0]).version == 4 else 40
        return self.settings.fragment_size - ip - 8 - (4 if sa.local_port != self.settings.port else 0)

    def _follow_peer(self, sa: IkeSA) -> None:
        """After a NAT rebinding the outbound SAs must go to the new address and port: they
        are SAs with other parameters, so each is reinstalled under the same SPI and keys."""
        # the engine's SAs are immutable; the simplest correct move is a rekey of each child
        for child in sa.children:
            if child.state == "installed":
                self.rekey_child(child)

    @staticmethod
    def _conn_for(conns: list[Connection], payloads: tuple[Payload, ...]) -> Connection:
        """Of a peer's connections, the first whose prefixes the proposed selectors meet."""
        tsi, tsr = _one(payloads, TSi), _one(payloads, TSr)
        return next((c for c in conns if tsi and tsr and narrow(tsi.selectors, c.remote_ts)
                     and narrow(tsr.selectors, c.local_ts)), conns[0])

    def _ike_for(self, conn: Connection) -> IkeSA | None:
        """The IKE SA serving *conn*: an established one, or one we are negotiating."""
        return next((s for s in self.sas.values() if s.conn is conn and (
            s.state == "established" or (s.initiator and s.state in ("init", "auth")))), None)

    def _children(self, conn: Connection, besides: ChildSA | None = None) -> list[ChildSA]:
        return [c for s in self.sas.values() for c in s.children if c.conn is conn and c is not besides]

    def _owner(self, child: ChildSA) -> IkeSA | None:
        return next((s for s in self.sas.values() if child in s.children and s.state == "established"), None)

    def _free_reqid(self, conn: Connection) -> int:
        used = {c.reqid for s in self.sas.values() for c in s.children}
        if conn.reqid not in used:
            return conn.reqid
        taken = used | {x.reqid for x in self.km.sad} | {p.reqid for d in Direction for p in self.km.spd.policies(d)}
        reqid = _DYNAMIC_REQID
        while reqid in taken:
            reqid += 1
        self._dynamic_reqids.add(reqid)
        return reqid

    def _hold_policies(self, reqid: int, ts_local, ts_remote) -> None:
        """PROTECT policies for the pairs of selectors, both directions, one set per reqid and
        selectors, counted per Child SA (a rekeyed one and its successor hold it together)."""
        key = (reqid, tuple(ts_local), tuple(ts_remote))
        if key in self._policies:
            pols, count = self._policies[key]
            self._policies[key] = (pols, count + 1)
            return
        pols = []
        for tl in ts_local:
            for tr in ts_remote:
                if tl.ts_type != tr.ts_type:
                    continue
                proto = tl.ip_protocol or tr.ip_protocol or ANY
                for ln in _networks(tl):
                    for rn in _networks(tr):
                        out = PolicySelector(ln, rn, proto, (tl.start_port, tl.end_port), (tr.start_port, tr.end_port))
                        inn = PolicySelector(rn, ln, proto, (tr.start_port, tr.end_port), (tl.start_port, tl.end_port))
                        pols.append(self.km.add_policy(out, Action.PROTECT, Direction.OUT, reqid=reqid))
                        pols.append(self.km.add_policy(inn, Action.PROTECT, Direction.IN, reqid=reqid))
        self._policies[key] = (pols, 1)

    def _release_policies(self, child: ChildSA) -> None:
        self._drop_policies((child.reqid, child.ts_local, child.ts_remote))

    def _drop_policies(self, key: tuple, force: bool = False) -> None:
        if key not in self._policies:
            return
        pols, count = self._policies[key]
        conn = next((c for c in self.connections.values() if c.reqid == key[0]), None)
        trapped = conn is not None and conn.start == "trap" and key[1:] == (ts_of(conn.local_ts), ts_of(conn.remote_ts))
        if count > 1 and not force:
            self._policies[key] = (pols, count - 1)
            return
        if trapped and not force:
            self._policies[key] = (pols, 1)       # a trap stays, so the next packet negotiates again
            return
        del self._policies[key]
        for p in pols:
            with contextlib.suppress(KeyError, ConfigError):
                self.km.del_policy(p.id)

