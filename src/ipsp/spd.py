"""The Security Policy Database (RFC 4301 section 4.4.1): ordered policies, each a selector
and an action (PROTECT, BYPASS, DISCARD) per direction.

Outbound, the first policy whose selector matches a packet decides (the SPD is ordered;
RFC 4301 4.4.1.1). Inbound, after decapsulation, the inner packet must match a selector of
a policy bound to the SA it arrived on, else it is dropped (RFC 4301 5.2 step 4; the
WireGuard allowed-ips check). Policies are immutable; the database swaps whole compiled
tables so a lookup never sees half an update.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import threading
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ipsp.errors import ConfigError

__all__ = ["Action", "Direction", "PolicySelector", "Policy", "PolicyDatabase"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ANY = -1


class Action(enum.IntEnum):
    PROTECT = 0
    BYPASS = 1
    DISCARD = 2


class Direction(enum.IntEnum):
    OUT = 0
    IN = 1


@dataclass(frozen=True)
class PolicySelector:
    """RFC 4301 4.4.1.1 selector: prefixes, next-layer protocol, port ranges (or, for ICMP,
    type and code: RFC 4301 4.4.1.3 carries them in the port fields)."""

    src: IPNetwork = ipaddress.ip_network("0.0.0.0/0")
    dst: IPNetwork = ipaddress.ip_network("0.0.0.0/0")
    proto: int = ANY
    sport: tuple[int, int] = (0, 65535)
    dport: tuple[int, int] = (0, 65535)

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ConfigError(f"selector mixes IPv{self.src.version} {self.src} and IPv{self.dst.version} {self.dst}")
        if not (self.proto == ANY or 0 <= self.proto <= 255):
            raise ConfigError(f"protocol must be 0..255 or any, got {self.proto}")
        for name in ("sport", "dport"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi <= 65535:
                raise ConfigError(f"{name} range must be within 0..65535 and ordered, got {lo}-{hi}")

    @property
    def version(self) -> int:
        return self.src.version

    def matches(self, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
                dst: ipaddress.IPv4Address | ipaddress.IPv6Address, proto: int, sport: int, dport: int) -> bool:
        """The reference definition of a match; the engine's compiled lookup must agree."""
        return (src.version == self.version and src in self.src and dst in self.dst
                and (self.proto == ANY or self.proto == proto)
                and self.sport[0] <= sport <= self.sport[1] and self.dport[0] <= dport <= self.dport[1])


_ids = itertools.count(1)


@dataclass(frozen=True)
class Policy:
    selector: PolicySelector
    action: Action
    direction: Direction = Direction.OUT
    priority: int = 1000          # lower first; equal priorities keep insertion order
    label: str | None = None      # a security label the SA must carry (the seed: the SAID implies it)
    reqid: int = 0                # PROTECT: the SAs (of the key manager) that carry this policy
    id: int = field(default_factory=lambda: next(_ids))


class PolicyDatabase:
    """Ordered policies per direction. Readers take a snapshot (a tuple) without locking;
    writers build a new tuple under a lock and publish it with one assignment."""

    def __init__(self, policies: Iterable[Policy] = ()):
        self._lock = threading.Lock()
        self._by_dir: dict[Direction, tuple[Policy, ...]] = {Direction.OUT: (), Direction.IN: ()}
        self.generation = 0
        for p in policies:
            self.add(p)

    def __iter__(self) -> Iterator[Policy]:
        for d in Direction:
            yield from self._by_dir[d]

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_dir.values())

    def policies(self, direction: Direction) -> tuple[Policy, ...]:
        return self._by_dir[direction]

    def _publish(self, direction: Direction, new: list[Policy]) -> None:
        new.sort(key=lambda p: p.priority)          # stable: ties keep insertion order
        self._by_dir[direction] = tuple(new)
        self.generation += 1

    def add(self, policy: Policy) -> Policy:
        with self._lock:
            if any(p.id == policy.id for p in self):
                raise ConfigError(f"policy id {policy.id} already exists")
            self._publish(policy.direction, [*self._by_dir[policy.direction], policy])
        return policy

    def get(self, policy_id: int) -> Policy:
        for p in self:
            if p.id == policy_id:
                return p
        raise KeyError(f"no policy with id {policy_id}")

    def delete(self, policy_id: int) -> Policy:
        with self._lock:
            p = self.get(policy_id)
            self._publish(p.direction, [q for q in self._by_dir[p.direction] if q.id != policy_id])
        return p

    def flush(self) -> None:
        with self._lock:
            for d in Direction:
                self._publish(d, [])

    def lookup(self, direction: Direction, src, dst, proto: int, sport: int, dport: int) -> Policy | None:
        """First matching policy, the reference (slow, Python) lookup."""
        for p in self._by_dir[direction]:
            if p.selector.matches(src, dst, proto, sport, dport):
                return p
        return None
