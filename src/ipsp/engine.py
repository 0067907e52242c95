"""The engine: policy, SAs and the kernel put together for whole batches of packets.

An :class:`Engine` owns a :class:`~ipsp.keymgr.KeyManagerAPI` (SAD, SPD, PAD, events) and
the packet path, :class:`fastpath.engine.EngineCore`. After every change the key manager
reports, the engine compiles the databases into one immutable table set and publishes it
with a single reference swap: a batch running on another thread finishes on the tables it
started with, so a rekey's outbound switch is atomic with respect to concurrent batches.

The data plane is two calls, each one C call per batch with the GIL released::

    ok = engine.outbound(buf, offsets, lengths, status, stride)   # policy, then ESP
    ok = engine.inbound(buf, offsets, lengths, status)            # ESP, then selectors

with the buffer contract of :meth:`fastpath.SAState.encap_batch` / ``decap_batch``. Statuses
say per packet what happened: OK, BYPASS (forward unchanged) or a named drop. The engine
raises ``acquire`` for PROTECT traffic without an SA and ``mapping`` when an ESP-in-UDP peer
moves (after the packet authenticated), both through the key manager's callbacks.

Counters: :meth:`counters` (a dict) and :meth:`prometheus` (text exposition format). Drops
are logged by :meth:`tick`, at most one line per reason and SA per ``log_interval``: the
packet path itself never logs.
"""

from __future__ import annotations

import collections
import ipaddress
import itertools
import logging
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from fastpath.engine import EngineCore, EngineTables

from ipsp.errors import ConfigError
from ipsp.keymgr import EVENTS, KeyManagerAPI
from ipsp.sad import SAStateName, SecurityAssociation
from ipsp.spd import Action, Direction, Policy, PolicySelector

__all__ = ["Engine", "selector_rule"]

log = logging.getLogger("ipsp.engine")

_ANY_PORTS = (0, 65535)
# statuses that are outcomes, not drops: never logged as problems
# (TOO_BIG: the forwarder answers it with an ICMP error or fragments, and counts that)
_NOT_DROPS = {"packets", "bytes", "BYPASS", "NAT_KEEPALIVE", "DUMMY", "TOO_BIG"}


def selector_rule(sel: PolicySelector) -> tuple:
    """A selector in the classifier's rule form (fastpath.classify.Classifier)."""
    return (sel.version, sel.src.network_address.packed, sel.src.prefixlen,
            sel.dst.network_address.packed, sel.dst.prefixlen, sel.proto, *sel.sport, *sel.dport)


def _mirror(sel: PolicySelector) -> PolicySelector:
    # an outbound selector seen from the other side: what the peer sends back (the traffic
    # selector pair IKE negotiates, RFC 7296 2.9)
    return PolicySelector(sel.dst, sel.src, sel.proto, sel.dport, sel.sport)


def _fields(packet: bytes) -> tuple[str, str, int, int, int] | None:
    """(src, dst, proto, sport, dport) of an IP packet, for an acquire event."""
    try:
        if packet[0] >> 4 == 4:
            ihl = (packet[0] & 0x0F) * 4
            src, dst, proto, rest = packet[12:16], packet[16:20], packet[9], packet[ihl:]
        else:
            src, dst, proto, rest = packet[8:24], packet[24:40], packet[6], packet[40:]
        sport = dport = 0
        if proto in (6, 17, 132) and len(rest) >= 4:
            sport, dport = int.from_bytes(rest[0:2], "big"), int.from_bytes(rest[2:4], "big")
        elif proto in (1, 58) and len(rest) >= 2:
            sport, dport = rest[0], rest[1]
        return str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), proto, sport, dport
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class _Context:
    # what the tables were built from, handed back with the events of their batches
    outbound: tuple[Policy, ...]
    sas: tuple[SecurityAssociation, ...]


class Engine:
    """Policy, SAs and kernel for batches; safe to drive from several threads."""

    def __init__(self, *, keymgr: KeyManagerAPI | None = None, clock: Callable[[], float] = time.monotonic,
                 rekey_grace: float = 5.0, log_interval: float = 1.0, acquire_interval: float = 1.0,
                 history: int = 1000):
        self.km = keymgr if keymgr is not None else KeyManagerAPI(clock=clock, rekey_grace=rekey_grace)
        self.clock = self.km.clock
        self.log_interval = log_interval
        self.acquire_interval = acquire_interval
        self._core = EngineCore()
        self._core.on_acquire = self._on_acquire
        self._core.on_mapping = self._on_mapping
        # the data plane: the core's own methods, no Python frame per batch
        self.outbound = self._core.outbound
        self.inbound = self._core.inbound
        self._lock = threading.RLock()
        self._deferred = 0
        self._pending = False
        self._in_tables: dict[int, SecurityAssociation] = {}
        # counters of SAs gone from the tables (see _publish)
        self._count_lock = threading.Lock()
        self._retired: dict[str, collections.Counter] = {"in": collections.Counter(), "out": collections.Counter()}
        self._draining: list[tuple[SecurityAssociation, list[weakref.ref]]] = []
        self._past_tables: list[weakref.ref] = []
        self._events: collections.deque[dict] = collections.deque(maxlen=history)
        self._event_ids = itertools.count(1)
        self._last_acquire: dict[int, float] = {}
        self._last_mapping: dict[int, tuple] = {}
        self._logged: dict[tuple, int] = {}
        self._last_log = self.clock()
        self._listen_udp: frozenset[int] = frozenset()
        self._config_sas: dict[Any, SecurityAssociation] = {}
        self._config_policies: list[Policy] = []
        self.config = None
        for event in EVENTS:
            self.km.on(event, lambda payload, event=event: self._record(event, payload))
        self.km.subscribe(self._rebuild)
        self._rebuild()

    # -- tables ---------------------------------------------------------------------------

    @contextmanager
    def changes(self) -> Iterator[None]:
        """Group several key-manager calls into one table rebuild (and one swap)."""
        with self._lock:
            self._deferred += 1
            try:
                yield
            finally:
                self._deferred -= 1
                if self._deferred == 0 and self._pending:
                    self._rebuild()

    def _rebuild(self) -> None:
        with self._lock:
            if self._deferred:
                self._pending = True
                return
            self._pending = False
            sas = tuple(sa for sa in self.km.sad if sa.state is not SAStateName.DEAD)
            slot = {id(sa): i for i, sa in enumerate(sas)}
            out_policies = self.km.spd.policies(Direction.OUT)
            in_policies = self.km.spd.policies(Direction.IN)
            # the SA each PROTECT policy uses now: newest mature, else newest dying, of its
            # reqid (and label); decided here, once per change, never per packet
            best: dict[tuple, SecurityAssociation] = {}
            for sa in sas:
                if sa.direction == "out":
                    for key in ((sa.reqid, None), (sa.reqid, sa.label)):
                        cur = best.get(key)
                        if cur is None or self._rank(sa) > self._rank(cur):
                            best[key] = sa
            outbound = []
            for p in out_policies:
                sa = best.get((p.reqid, p.label)) if p.action is Action.PROTECT else None
                outbound.append((selector_rule(p.selector), int(p.action), slot[id(sa)] if sa else -1))
            inbound = [(selector_rule(p.selector), int(p.action)) for p in in_policies]
            # an inbound SA carries what its reqid's inbound PROTECT policies allow, or else
            # the mirror of its outbound ones (RFC 4301 5.2 step 4)
            allowed: dict[int, list] = collections.defaultdict(list)
            for p in in_policies:
                if p.action is Action.PROTECT and p.reqid:
                    allowed[p.reqid].append(p)
            mirrored: dict[int, list] = collections.defaultdict(list)
            for p in out_policies:
                if p.action is Action.PROTECT and p.reqid and p.reqid not in allowed:
                    mirrored[p.reqid].append(p)
            rows, spis, ports = [], [], set()
            for i, sa in enumerate(sas):
                rules, peer = [], None
                if sa.direction == "in":
                    for p in allowed.get(sa.reqid) or mirrored.get(sa.reqid, ()):
                        if p.label is None or p.label == sa.label:
                            sel = p.selector if p.direction is Direction.IN else _mirror(p.selector)
                            rules.append(selector_rule(sel))
                    match = sa.config.match
                    if match is not None:
                        rules.append(selector_rule(PolicySelector(match.src, match.dst)))
                    if sa.reqid and not rules:
                        rules = None          # a reqid with no policy left: carries nothing
                    spis.append((sa.spi, sa.dst.packed, sa.group_source.packed if sa.group_source else None, i))
                    if sa.config.udp:
                        peer = (sa.config.src.packed, sa.config.sport)
                        ports.add(sa.config.dport)
                hard = sa.lifetimes.hard
                if rules is None:
                    # no selector can match this: the impossible rule (an IPv4 selector the
                    # key's IPv6 traffic never meets and vice versa is not enough)
                    rules = [(4, bytes(4), 32, bytes(4), 32, 255, 1, 0, 1, 0)]
                rows.append((sa.kernel, sa.direction == "in", rules, hard.packets, hard.bytes, peer))
            tables = EngineTables(outbound, inbound, rows, spis, sorted(ports | self._listen_udp) or [4500],
                                  _Context(out_policies, sas))
            self._publish(tables, {id(sa): sa for sa in sas})

    def _publish(self, tables: EngineTables, current: dict[int, SecurityAssociation]) -> None:
        """Swap the tables in. An SA leaving them still counts until no batch can be running
        on tables that hold it: a batch that took the old tables just before the swap may
        still be processing (or, once the SA is closed, marking SA_DEAD) on it. So it drains,
        read live, until every tables object published before the swap is gone (a running
        batch holds a reference to its own); only then are its final counts folded into the
        totals. Every packet is in exactly one of: the engine's own counts, a live SA, a
        draining SA, the folded totals."""
        with self._count_lock:
            self._past_tables = [r for r in self._past_tables if r() is not None]
            self._past_tables.append(weakref.ref(self._core.tables))
            for key, sa in self._in_tables.items():
                if key not in current:
                    self._draining.append((sa, list(self._past_tables)))
            self._in_tables = current
            self._core.load(tables)
        self._fold_drained()

    def _fold_drained(self) -> None:
        with self._count_lock:
            still = []
            for sa, tables in self._draining:
                if any(r() is not None for r in tables):
                    still.append((sa, tables))
                    continue
                for direction, counts in sa.counters().items():
                    self._retired[direction].update({k: v for k, v in counts.items() if v})
            self._draining = still

    def listen_udp(self, *ports: int) -> None:
        """UDP ports ESP-in-UDP arrives on besides those of the installed SAs (a gateway's own
        port): their IKE (the non-ESP marker) is BYPASS even before the first SA exists."""
        with self._lock:
            self._listen_udp = frozenset(ports)
            self._rebuild()

    def slot_sas(self) -> tuple[SecurityAssociation, ...]:
        """The SAs of the tables batches run on now, by slot: what ``slots=`` of outbound and
        inbound holds indexes this. A new tuple after every change, so ``is`` on the tuples
        taken before and after a batch tells whether its slots still name the same SAs."""
        return self._core.tables.context.sas

    @staticmethod
    def _rank(sa: SecurityAssociation) -> tuple:
        return (sa.state is SAStateName.MATURE, sa.added_at, sa.spi)

    # -- events ---------------------------------------------------------------------------

    def _record(self, kind: str, payload: Any) -> None:
        if kind == "expire":
            text = (f"{'hard' if payload.hard else 'soft'} expiry ({payload.limit}) of {payload.sa.direction}bound "
                    f"SA {payload.sa.spi:#010x} to {payload.sa.dst}")
        elif kind == "acquire":
            text = (f"acquire for policy {payload.policy.id} (reqid {payload.policy.reqid}): "
                    f"{payload.src} -> {payload.dst} proto {payload.proto}")
        else:
            text = (f"mapping of SA {payload.sa.spi:#010x}: peer moved from "
                    f"{payload.old[0]}:{payload.old[1]} to {payload.new[0]}:{payload.new[1]}")
        self._events.append({"id": next(self._event_ids), "time": time.time(), "kind": kind, "text": text})

    def events(self, since: int = 0) -> list[dict]:
        """Recent events (acquire, expire, mapping) with ids above *since*, oldest first."""
        return [e for e in list(self._events) if e["id"] > since]

    def _on_acquire(self, context: _Context, rule: int, packet: bytes) -> None:
        try:
            policy = context.outbound[rule]
            now = self.clock()
            last = self._last_acquire.get(policy.id)
            if last is not None and now - last < self.acquire_interval:
                return              # one acquire per policy per interval, like a larval SA
            self._last_acquire[policy.id] = now
            fields = _fields(packet)
            if fields is not None:
                self.km.acquire(policy, *fields)
        except Exception:
            log.exception("acquire handling failed")

    def _on_mapping(self, context: _Context, slot: int, address: bytes, port: int) -> None:
        try:
            sa = context.sas[slot]
            new = (str(ipaddress.ip_address(address)), port)
            if self._last_mapping.get(id(sa)) != new:
                self._last_mapping[id(sa)] = new
                self.km.mapping(sa, new)
        except Exception:
            log.exception("mapping handling failed")

    def tick(self) -> list:
        """Lifetimes (expire events, retirement of rekeyed SAs) and rate-limited drop
        logging. Call it periodically (a gateway: every second)."""
        events = self.km.tick()
        now = self.clock()
        if now - self._last_log >= self.log_interval:
            self._last_log = now
            self._log_drops()
        return events

    def _log_drops(self) -> None:
        seen: dict[tuple, int] = {}
        for direction, counts in self._core.counters().items():
            for name, n in counts.items():
                seen[("engine", direction, name)] = n
        with self._count_lock:
            sas = list(self._in_tables.values()) + [sa for sa, _ in self._draining]
        for sa in sas:
            for name, n in sa.counters()[sa.direction].items():
                if n and name not in _NOT_DROPS:
                    seen[(f"SA {sa.spi:#010x}", sa.direction, name)] = n
        for key, n in seen.items():
            if key[2] in _NOT_DROPS:
                continue
            delta = n - self._logged.get(key, 0)
            if delta > 0:
                log.warning("%s %sbound: %d packets dropped as %s", key[0], key[1], delta, key[2])
        self._logged = seen

    # -- counters -------------------------------------------------------------------------

    def counters(self) -> dict:
        """Totals per direction and outcome (engine decisions, live, draining and retired
        SAs), and each live SA's own counters."""
        self._fold_drained()
        with self._count_lock:
            totals = {d: collections.Counter(c) for d, c in self._retired.items()}
            live = list(self._in_tables.values())
            for sa, _ in self._draining:
                for direction, counts in sa.counters().items():
                    totals[direction].update({k: v for k, v in counts.items() if v})
        for direction, counts in self._core.counters().items():
            totals[direction].update(counts)
        sas = []
        for sa in live:
            c = sa.counters()
            for direction in ("in", "out"):
                totals[direction].update({k: v for k, v in c[direction].items() if v})
            sas.append({"spi": sa.spi, "dst": str(sa.dst), "direction": sa.direction, "state": sa.state.value,
                        "reqid": sa.reqid, "late_packets": sa.late_packets,
                        "counters": {k: v for k, v in c[sa.direction].items() if v}})
        return {"totals": {d: dict(c) for d, c in totals.items()}, "sas": sas}

    def prometheus(self) -> str:
        """The counters in the Prometheus text exposition format (version 0.0.4)."""
        c = self.counters()
        lines = ["# HELP ipsp_packets_total Packets by direction and outcome (OK, BYPASS or a drop reason).",
                 "# TYPE ipsp_packets_total counter"]
        for direction, counts in sorted(c["totals"].items()):
            for name, n in sorted(counts.items()):
                if name == "bytes":
                    continue
                status = "OK" if name == "packets" else name
                lines.append(f'ipsp_packets_total{{direction="{direction}",status="{status}"}} {n}')
        lines += ["# HELP ipsp_bytes_total Bytes of packets processed successfully, by direction.",
                  "# TYPE ipsp_bytes_total counter"]
        for direction, counts in sorted(c["totals"].items()):
            lines.append(f'ipsp_bytes_total{{direction="{direction}"}} {counts.get("bytes", 0)}')
        lines += ["# HELP ipsp_sa_packets_total Packets per SA by outcome.",
                  "# TYPE ipsp_sa_packets_total counter"]
        for sa in c["sas"]:
            labels = f'spi="{sa["spi"]:#010x}",dst="{sa["dst"]}",direction="{sa["direction"]}"'
            for name, n in sorted(sa["counters"].items()):
                if name != "bytes":
                    lines.append(f'ipsp_sa_packets_total{{{labels},status="{"OK" if name == "packets" else name}"}} {n}')
        lines += ["# HELP ipsp_sas Installed SAs by state.", "# TYPE ipsp_sas gauge"]
        states = collections.Counter(sa["state"] for sa in c["sas"])
        for state in SAStateName:
            lines.append(f'ipsp_sas{{state="{state.value}"}} {states.get(state.value, 0)}')
        return "\n".join(lines) + "\n"

    # -- management (the CLI and the control socket use these) ---------------------------

    def sa_list(self) -> list[dict]:
        """Every SA as the key manager's query describes it (no keys)."""
        return [self.km.describe(sa) for sa in self.km.sad]

    def policy_list(self) -> list[Policy]:
        return list(self.km.spd)

    # -- configuration --------------------------------------------------------------------

    def apply_config(self, config, *, cancelled: Callable[[], bool] | None = None) -> None:
        """Install an ipsp.config.Config: its peers, policies and manual SAs replace those
        of the previous configuration; SAs it keeps unchanged keep their state (sequence
        numbers, replay windows); SAs and policies added through the API stay. All or
        nothing: if anything fails, what is running is unchanged.

        The new SAs are built off to the side without the engine's lock, so batches, ticks
        and the control socket go on meanwhile; the lock is held only to check the result
        against what is installed then and to swap it in: the SAD and the SPD each change
        in one publication and the packet path in one table swap, so no reader sees half a
        reload. *cancelled* (checked while building and once more under the lock) abandons
        the change: the engine is stopping, and the SAs built for it are wiped."""
        def check() -> None:
            if cancelled is not None and cancelled():
                raise ConfigError("configuration change abandoned: the engine is stopping")

        def build(m) -> SecurityAssociation:
            return SecurityAssociation(m.config, m.direction, lifetimes=m.lifetimes, clock=self.clock,
                                       label=m.label, reqid=m.reqid, group_source=m.group_source)

        def kept(config_sas: dict) -> dict:
            # an SA of the old file stays as it is if the new file has it unchanged and it is
            # still installed (not deleted, expired or retired by a rekey meanwhile)
            installed = {id(sa) for sa in self.km.sad}
            wanted = set(config.sas)
            return {m: sa for m, sa in config_sas.items()
                    if m in wanted and id(sa) in installed and sa.state is not SAStateName.DEAD}

        fresh: dict[Any, SecurityAssociation] = {}
        try:
            keep = kept(dict(self._config_sas))
            for i, m in enumerate(config.sas):
                if i % 256 == 0:
                    check()
                if m not in keep and m not in fresh:
                    fresh[m] = build(m)
            check()
            names = {p.name for p in config.peers}
            policies = list(config.policies)
            with self._lock:
                check()
                # what happened while building (a rekey, a delete, another reload) decides
                keep = kept(self._config_sas)
                for m in [m for m in fresh if m in keep]:
                    fresh.pop(m).kill()
                for m in config.sas:
                    if m not in keep and m not in fresh:
                        fresh[m] = build(m)
                leaving = [sa for m, sa in self._config_sas.items() if m not in keep]
                leaving_keys = {self.km.sad.key(x) for x in leaving if x.state is not SAStateName.DEAD}
                taken = {self.km.sad.key(x) for x in self.km.sad} - leaving_keys
                for m, sa in fresh.items():
                    key = self.km.sad.key(sa)
                    if key in taken:
                        raise ConfigError(f"{m.direction}bound SPI {sa.spi:#x} to {sa.dst} is already installed "
                                          "(by the key manager)", key="sa")
                    taken.add(key)
                with self.changes():
                    # the SPD first: the one step that can still refuse (a policy id the API
                    # took meanwhile), before anything else changed
                    self.km.spd.replace([p.id for p in self._config_policies], policies)
                    self.km.sad.replace(leaving, list(fresh.values()))
                    for peer in list(self.km.pad):
                        if peer.name in names or peer.name in self._config_peer_names():
                            self.km.pad.remove(peer.name)
                    for peer in config.peers:
                        self.km.pad.add(peer)
                    self._config_sas = {**keep, **fresh}
                    self._config_policies = policies
                    self.config = config
                    self.km.rekey_grace = config.engine.rekey_grace
                    self.log_interval = config.engine.log_interval
                    self._pending = True
        except BaseException:
            installed = {id(x) for x in self._config_sas.values()}
            for sa in fresh.values():
                if id(sa) not in installed:
                    sa.kill()
            raise

    def _config_peer_names(self) -> set[str]:
        return {p.name for p in self.config.peers} if self.config is not None else set()

    def close(self) -> None:
        """Delete every SA (keys wiped) and policy."""
        with self.changes():
            self.km.flush_sas()
            self.km.flush_policies()
