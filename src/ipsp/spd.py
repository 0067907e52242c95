"""The Security Policy Database (RFC 4301 section 4.4.1): ordered policies, each a selector
and an action (PROTECT, BYPASS, DISCARD) per direction.

Outbound, the first policy whose selector matches a packet decides (the SPD is ordered;
RFC 4301 4.4.1.1). Inbound, after decapsulation, the inner packet must match a selector of
a policy bound to the SA it arrived on, else it is dropped (RFC 4301 5.2 step 4; the
WireGuard allowed-ips check). Policies are immutable; the database swaps whole compiled
tables so a lookup never sees half an update.
"""

from __future__ import annotations

import bisect
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
    """Ordered policies per direction: by priority, equal priorities in insertion order.

    Readers take a snapshot without locking: the whole state (both directions' tuples and
    the id index) is one immutable object published with one assignment, so a reader never
    sees one direction updated and the other not, or a policy in the list but not the index.
    Writers build the next state under a lock. One insert is a binary search and a tuple
    copy; :meth:`replace` applies a whole configuration's removals and additions in one
    O(n log n) step and one publication (a reload is never visible half-done).
    """

    def __init__(self, policies: Iterable[Policy] = ()):
        self._lock = threading.Lock()
        self._state = _State({Direction.OUT: (), Direction.IN: ()}, {}, 0)
        if policies:
            self.replace((), policies)

    @property
    def generation(self) -> int:
        return self._state.generation

    def __iter__(self) -> Iterator[Policy]:
        by_dir = self._state.by_dir
        for d in Direction:
            yield from by_dir[d]

    def __len__(self) -> int:
        return len(self._state.by_id)

    def policies(self, direction: Direction) -> tuple[Policy, ...]:
        return self._state.by_dir[direction]

    def snapshot(self) -> dict[Direction, tuple[Policy, ...]]:
        """Both directions as of one moment."""
        return dict(self._state.by_dir)

    def add(self, policy: Policy) -> Policy:
        with self._lock:
            state = self._state
            if policy.id in state.by_id:
                raise ConfigError(f"policy id {policy.id} already exists")
            rows = state.by_dir[policy.direction]
            # after every policy of equal or lower priority: insertion order among equals
            at = bisect.bisect_right(rows, policy.priority, key=_priority)
            by_dir = {**state.by_dir, policy.direction: (*rows[:at], policy, *rows[at:])}
            self._state = _State(by_dir, {**state.by_id, policy.id: policy}, state.generation + 1)
        return policy

    def replace(self, remove: Iterable[int], add: Iterable[Policy]) -> list[Policy]:
        """Delete the policies with ids in *remove* (those still here) and add *add*, in
        order, as one change: the same result as those deletes and adds one at a time, but
        sorted once and published once. If an added id is taken (by a policy not removed,
        or twice in *add*) nothing changes. Returns the policies removed."""
        add = list(add)
        with self._lock:
            state = self._state
            gone = {i for i in remove if i in state.by_id}
            by_id = {i: p for i, p in state.by_id.items() if i not in gone}
            for p in add:
                if p.id in by_id:
                    raise ConfigError(f"policy id {p.id} already exists")
                by_id[p.id] = p
            by_dir = {}
            for d in Direction:
                kept = [p for p in state.by_dir[d] if p.id not in gone]
                # kept rows are already in order; a stable sort of kept + new keeps ties in
                # insertion order (the existing ones first), as single adds would
                rows = kept + [p for p in add if p.direction is d]
                rows.sort(key=_priority)
                by_dir[d] = tuple(rows)
            self._state = _State(by_dir, by_id, state.generation + 1)
            return [state.by_id[i] for i in gone]

    def get(self, policy_id: int) -> Policy:
        try:
            return self._state.by_id[policy_id]
        except (KeyError, TypeError):
            raise KeyError(f"no policy with id {policy_id}") from None

    def delete(self, policy_id: int) -> Policy:
        with self._lock:
            p = self.get(policy_id)
            state = self._state
            by_dir = {**state.by_dir, p.direction: tuple(q for q in state.by_dir[p.direction] if q.id != policy_id)}
            by_id = dict(state.by_id)
            del by_id[policy_id]
            self._state = _State(by_dir, by_id, state.generation + 1)
        return p

    def flush(self) -> None:
        with self._lock:
            self._state = _State({Direction.OUT: (), Direction.IN: ()}, {}, self._state.generation + 1)

    def lookup(self, direction: Direction, src, dst, proto: int, sport: int, dport: int) -> Policy | None:
        """First matching policy, the reference (slow, Python) lookup."""
        for p in self._state.by_dir[direction]:
            if p.selector.matches(src, dst, proto, sport, dport):
                return p
        return None


def _priority(p: Policy) -> int:
    return p.priority


@dataclass(frozen=True)
class _State:
    by_dir: dict[Direction, tuple[Policy, ...]]
    by_id: dict[int, Policy]
    generation: int
