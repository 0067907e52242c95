"""The key-manager API: how a key manager (manual keying, IKEv2) drives the engine.

Shaped like strongSwan's kernel interface and PF_KEY (RFC 2367): ``get_spi``, ``add_sa``,
``update_sa``, ``query_sa``, ``del_sa``, ``flush_sas``, ``add_policy``, ``query_policy``,
``del_policy``, ``flush_policies``; and events delivered to registered callbacks:

- ``acquire``: an outbound packet matched a PROTECT policy with no SA (negotiate one);
- ``expire``: an SA reached a soft limit (rekey) or a hard one (it is dead);
- ``mapping``: an ESP-in-UDP peer's address or port changed (NAT rebinding).

The SPI is the only coupling to the engine (the 1993 working group's SAID). Policies and SAs
meet through ``reqid``: a PROTECT policy uses the newest mature outbound SA with its reqid,
so a rekey installs the new SAs first and the switch is one lookup (make-before-break).
Installing an SA with the reqid, destination and direction of a live one (a rekey) retires
the old one: it keeps working for ``rekey_grace`` seconds (strongSwan keeps 5 s), for
packets in flight and a peer that switches late, counts those late packets, and is then
deleted by ``tick``. An SA's keys never change; a change is a new SA.

Listeners registered with ``subscribe`` are called after every change (the engine rebuilds
its packet-path tables there).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from ipsp.errors import ConfigError
from ipsp.pad import PeerAuthorizationDatabase
from ipsp.sa import SAConfig
from ipsp.sad import Expiry, Lifetimes, SADatabase, SAStateName, SecurityAssociation
from ipsp.spd import Action, Direction, Policy, PolicyDatabase, PolicySelector

__all__ = ["KeyManagerAPI", "Acquire", "Mapping", "EVENTS"]

log = logging.getLogger("ipsp.keymgr")
EVENTS = ("acquire", "expire", "mapping")


@dataclass(frozen=True)
class Acquire:
    policy: Policy
    src: str
    dst: str
    proto: int
    sport: int
    dport: int


@dataclass(frozen=True)
class Mapping:
    sa: SecurityAssociation
    old: tuple[str, int]
    new: tuple[str, int]


class KeyManagerAPI:
    def __init__(self, *, sad: SADatabase | None = None, spd: PolicyDatabase | None = None,
                 pad: PeerAuthorizationDatabase | None = None, clock: Callable[[], float] = time.monotonic,
                 rekey_grace: float = 5.0):
        if rekey_grace < 0:
            raise ConfigError(f"rekey_grace must be 0 or more seconds, got {rekey_grace}")
        self.clock = clock
        self.rekey_grace = rekey_grace
        self._listeners: list[Callable[[], None]] = []
        self.sad = sad if sad is not None else SADatabase(clock=clock)
        self.spd = spd if spd is not None else PolicyDatabase()
        self.pad = pad if pad is not None else PeerAuthorizationDatabase()
        self._callbacks: dict[str, list[Callable[[Any], None]]] = {e: [] for e in EVENTS}

    # -- events ---------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call *listener* after every change to SAs or policies."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def on(self, event: str, callback: Callable[[Any], None]) -> None:
        if event not in self._callbacks:
            raise ConfigError(f"unknown event {event!r} (known: {', '.join(EVENTS)})")
        self._callbacks[event].append(callback)

    def _emit(self, event: str, payload: Any) -> None:
        # a key manager's bug must not reach the packet path: report it, carry on
        for cb in self._callbacks[event]:
            try:
                cb(payload)
            except Exception:
                log.exception("%s callback %r failed", event, cb)

    def acquire(self, policy: Policy, src: str, dst: str, proto: int, sport: int, dport: int) -> None:
        """Called by the engine for a packet that matched PROTECT with no SA."""
        self._emit("acquire", Acquire(policy, src, dst, proto, sport, dport))

    def mapping(self, sa: SecurityAssociation, new: tuple[str, int]) -> None:
        """Called by the engine when an ESP-in-UDP SA's packets arrive from a new address/port."""
        old = (str(sa.config.src), sa.config.sport)
        if old != new:
            self._emit("mapping", Mapping(sa, old, new))

    def tick(self) -> list[Expiry]:
        """Check lifetimes (call periodically and after batches); emits and returns expiries."""
        before = len(self.sad)
        events = self.sad.expire()
        if events or len(self.sad) != before:
            self._changed()
        for ev in events:
            self._emit("expire", ev)
        return events

    # -- SAs ------------------------------------------------------------------------------

    def get_spi(self, dst, lo: int = 0x100, hi: int = 0xFFFFFFFF) -> int:
        return self.sad.get_spi(dst, lo, hi)

    def add_sa(self, config: SAConfig, direction: str, *, lifetimes: Lifetimes = Lifetimes(),
               label: str | None = None, reqid: int = 0, group_source=None) -> SecurityAssociation:
        sa = SecurityAssociation(config, direction, lifetimes=lifetimes, clock=self.clock, label=label,
                                 reqid=reqid, group_source=None if group_source is None
                                 else ipaddress.ip_address(group_source))
        self.sad.add(sa)
        if reqid:
            now = self.clock()
            for old in self.sad:
                if (old is not sa and old.direction == direction and old.reqid == reqid and old.dst == sa.dst
                        and old.group_source == sa.group_source and old.spi != sa.spi):
                    old.replace(now, self.rekey_grace)
        self._changed()
        return sa

    def update_sa(self, spi: int, dst, direction: str = "in", *, lifetimes: Lifetimes | None = None) -> SecurityAssociation:
        """Change what may change of a live SA: its lifetimes (PF_KEY UPDATE). Keys and
        selectors never change; that is a new SA."""
        sa = self.sad.get(spi, dst, direction)
        if lifetimes is not None:
            sa.lifetimes = lifetimes
        self._changed()
        return sa

    def query_sa(self, spi: int, dst, direction: str = "in", *, group_source=None) -> dict:
        """What PF_KEY's GET returns, without keys: parameters, state, usage, lifetimes,
        replay state and the kernel's counters."""
        return self.describe(self.sad.get(spi, dst, direction, group_source))

    def describe(self, sa: SecurityAssociation) -> dict:
        # one snapshot: usage and counters from the same read, so they agree
        counters = sa.counters()[sa.direction]
        nbytes, npackets = counters["bytes"], counters["packets"]
        now = self.clock()
        c = sa.config
        live = not sa.kernel.closed
        return {
            "spi": sa.spi, "src": str(c.src), "dst": str(sa.dst), "direction": sa.direction,
            "group_source": None if sa.group_source is None else str(sa.group_source),
            "mode": c.mode, "encap": "udp" if c.udp else None, "proposal": c.transform.name,
            "state": sa.state.value, "reqid": sa.reqid, "label": sa.label,
            "bytes": nbytes, "packets": npackets, "age": now - sa.added_at,
            "use_age": None if sa.first_used_at is None else now - sa.first_used_at,
            "lifetimes": {kind: {k: v for k, v in vars(getattr(sa.lifetimes, kind)).items() if v is not None}
                          for kind in ("soft", "hard")},
            "late_packets": sa.late_packets,
            "retire_in": None if sa.retire_at is None else max(0.0, sa.retire_at - now),
            "seq_out": sa.kernel.seq_out if live and sa.direction == "out" else None,
            "replay_top": sa.kernel.replay_top if live and sa.direction == "in" else None,
            "counters": {k: v for k, v in counters.items() if v},
        }

    def del_sa(self, spi: int, dst, direction: str = "in", *, group_source=None) -> None:
        self.sad.delete(spi, dst, direction, group_source)
        self._changed()

    def flush_sas(self) -> None:
        self.sad.flush()
        self._changed()

    def outbound_sa(self, policy: Policy) -> SecurityAssociation | None:
        """The SA a PROTECT policy uses now: the newest mature (or, lacking one, dying)
        outbound SA with its reqid and, if the policy names a label, that label."""
        best = None
        for sa in self.sad:
            if (sa.direction == "out" and sa.reqid == policy.reqid and sa.state is not SAStateName.DEAD
                    and (policy.label is None or sa.label == policy.label)):
                rank = (sa.state is SAStateName.MATURE, sa.added_at)
                if best is None or rank > best[0]:
                    best = (rank, sa)
        return best[1] if best else None

    # -- policies -------------------------------------------------------------------------

    def add_policy(self, selector: PolicySelector | Policy, action: Action | None = None,
                   direction: Direction = Direction.OUT, *, priority: int = 1000, reqid: int = 0,
                   label: str | None = None) -> Policy:
        """Install a policy: from its parts, or a Policy made elsewhere (a configuration
        file), which keeps its id."""
        policy = selector if isinstance(selector, Policy) else Policy(selector, action, direction, priority,
                                                                     label, reqid)
        if policy.action is Action.PROTECT and policy.reqid == 0:
            raise ConfigError("a PROTECT policy needs the reqid of the SAs that carry it")
        policy = self.spd.add(policy)
        self._changed()
        return policy

    def query_policy(self, policy_id: int) -> Policy:
        return self.spd.get(policy_id)

    def del_policy(self, policy_id: int) -> None:
        self.spd.delete(policy_id)
        self._changed()

    def flush_policies(self) -> None:
        self.spd.flush()
        self._changed()
