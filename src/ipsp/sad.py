"""The Security Association Database (RFC 4301 section 4.4.2).

Each :class:`SecurityAssociation` couples an :class:`~ipsp.sa.SAConfig` with the kernel state
that processes its packets, a lifecycle (larval -> mature -> dying -> dead) and lifetimes.
Lifetimes count what the kernel counted as processed (inbound: only packets that
authenticated and were not replays, so forged or replayed traffic never ages an SA) and run
on an injectable clock, so tests drive time instead of sleeping.

Inbound lookup follows RFC 4301 section 4.1: the longest match of (SPI, destination, source)
for multicast group SAs, then (SPI, destination), then the SPI alone.
"""

from __future__ import annotations

import enum
import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import fastpath

from ipsp.errors import ConfigError
from ipsp.sa import SAConfig

__all__ = ["SAStateName", "Lifetime", "Lifetimes", "SecurityAssociation", "SADatabase", "Expiry"]

Clock = Callable[[], float]


class SAStateName(enum.Enum):
    LARVAL = "larval"        # an SPI reserved by get_spi, no keys yet
    MATURE = "mature"        # in use
    DYING = "dying"          # soft lifetime reached, or replaced by a rekey: still processes
    DEAD = "dead"            # hard lifetime reached or deleted: keys wiped


@dataclass(frozen=True)
class Lifetime:
    """One limit set; None means no limit (RFC 4301 4.4.2.1: bytes, packets, time)."""

    bytes: int | None = None
    packets: int | None = None
    add_seconds: float | None = None     # since the SA was added
    use_seconds: float | None = None     # since its first packet

    def reached(self, nbytes: int, npackets: int, age: float, used: float | None) -> str | None:
        if self.bytes is not None and nbytes >= self.bytes:
            return "bytes"
        if self.packets is not None and npackets >= self.packets:
            return "packets"
        if self.add_seconds is not None and age >= self.add_seconds:
            return "add_seconds"
        if self.use_seconds is not None and used is not None and used >= self.use_seconds:
            return "use_seconds"
        return None


@dataclass(frozen=True)
class Lifetimes:
    soft: Lifetime = Lifetime()
    hard: Lifetime = Lifetime()


@dataclass(frozen=True)
class Expiry:
    """An expire event: the SA, soft or hard, and which limit was reached."""

    sa: "SecurityAssociation"
    hard: bool
    limit: str


class SecurityAssociation:
    """One SA: its configuration, kernel state, lifecycle and lifetimes. ``direction`` is
    "in" or "out" (RFC 4301 SAs are unidirectional)."""

    def __init__(self, config: SAConfig, direction: str, *, lifetimes: Lifetimes = Lifetimes(),
                 clock: Clock = time.monotonic, group_source: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
                 label: str | None = None, reqid: int = 0):
        if direction not in ("in", "out"):
            raise ConfigError(f"direction must be 'in' or 'out', got {direction!r}")
        self.config = config
        self.direction = direction
        self.lifetimes = lifetimes
        self.label = label
        self.reqid = reqid                        # which policy (or IKE child) it serves
        self.group_source = group_source          # RFC 5374 group SA: the sender, or None
        self._clock = clock
        self.added_at = clock()
        self.first_used_at: float | None = None
        self.state = SAStateName.MATURE
        self.kernel: fastpath.SAState = config.make_state()
        self._soft_sent = False
        self.replaced_at: float | None = None     # a rekey installed its successor then
        self.retire_at: float | None = None       # and it is deleted at this time
        self._usage_at_replace = (0, 0)

    @property
    def spi(self) -> int:
        return self.config.spi

    @property
    def dst(self):
        return self.config.dst

    def usage(self) -> tuple[int, int]:
        """(bytes, packets) this SA has processed successfully in its direction."""
        c = self.kernel.counters()[self.direction]
        return c["bytes"], c["packets"]

    def counters(self) -> dict:
        """The kernel's counters. They outlive close(): a batch that was running when the SA
        died is in them, and so is every packet that met it dead (SA_DEAD)."""
        return self.kernel.counters()

    def replace(self, now: float, grace: float) -> None:
        """A rekey installed the successor: keep working for *grace* seconds (packets
        already in flight, the peer's switch), then die. Not an expiry: no event."""
        if self.replaced_at is None and self.state is not SAStateName.DEAD:
            self.replaced_at = now
            self.retire_at = now + grace
            self._usage_at_replace = self.usage()
            self.state = SAStateName.DYING

    @property
    def late_packets(self) -> int:
        """Packets this SA processed after its successor was installed."""
        return 0 if self.replaced_at is None else self.usage()[1] - self._usage_at_replace[1]

    def check_lifetimes(self) -> Expiry | None:
        """Compare usage and age with the limits; move to DYING (soft) or DEAD (hard) and
        return the event, once per limit kind."""
        if self.state in (SAStateName.DEAD, SAStateName.LARVAL):
            return None
        now = self._clock()
        nbytes, npackets = self.usage()
        if npackets and self.first_used_at is None:
            self.first_used_at = now
        used = None if self.first_used_at is None else now - self.first_used_at
        age = now - self.added_at
        if self.kernel.seq_exhausted:
            self.kill()
            return Expiry(self, True, "sequence")   # RFC 4303 3.3.3: a hard expiry
        limit = self.lifetimes.hard.reached(nbytes, npackets, age, used)
        if limit:
            self.kill()
            return Expiry(self, True, limit)
        if not self._soft_sent:
            limit = self.lifetimes.soft.reached(nbytes, npackets, age, used)
            if limit:
                self._soft_sent = True
                self.state = SAStateName.DYING
                return Expiry(self, False, limit)
        return None

    def kill(self) -> None:
        """Dead: the kernel state closes (keys wiped, after any batch running on it); its
        packets get SA_DEAD, counted on it. No counter is copied here: a copy taken before
        close() would miss the batch close() waits for."""
        if self.state is not SAStateName.DEAD:
            self.state = SAStateName.DEAD
            self.kernel.close()

    def __repr__(self) -> str:
        return f"<SA {self.direction} spi={self.spi:#010x} dst={self.dst} {self.state.value}>"


@dataclass
class _Larval:
    spi: int
    dst: object
    expires: float


class SADatabase:
    """All SAs, indexed for inbound lookup. Writers hold a lock; readers use dictionaries
    that are replaced, never mutated in place, so a lookup from a packet thread is safe."""

    LARVAL_SECONDS = 30.0      # PF_KEY's larval SAs expire if the key manager never completes them

    def __init__(self, *, clock: Clock = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._by_key: dict[tuple, SecurityAssociation] = {}
        self._larval: dict[tuple, _Larval] = {}

    # -- lookup ---------------------------------------------------------------------------

    def lookup_inbound(self, spi: int, dst, src=None) -> SecurityAssociation | None:
        """RFC 4301 4.1 longest match: (SPI, dst, src), then (SPI, dst), then (SPI)."""
        table = self._by_key
        dstp = ipaddress.ip_address(dst).packed
        if src is not None:
            sa = table.get(("in", spi, dstp, ipaddress.ip_address(src).packed))
            if sa is not None:
                return sa
        return table.get(("in", spi, dstp, None)) or table.get(("in", spi, None, None))

    def __iter__(self) -> Iterator[SecurityAssociation]:
        return iter(list(self._by_key.values()))

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, spi: int, dst, direction: str = "in", group_source=None) -> SecurityAssociation:
        """The SA with this key; an inbound SA by longest match unless group_source names
        one sender's SA of a multicast group SA exactly."""
        if direction == "in" and group_source is None:
            sa = self.lookup_inbound(spi, dst)
        else:
            src = None if group_source is None else ipaddress.ip_address(group_source).packed
            sa = self._by_key.get((direction, spi, ipaddress.ip_address(dst).packed, src))
        if sa is None:
            sender = f" from sender {group_source}" if group_source is not None else ""
            raise KeyError(f"no {direction}bound SA with SPI {spi:#x} to {dst}{sender}")
        return sa

    # -- key manager operations -----------------------------------------------------------

    def get_spi(self, dst, lo: int = 0x100, hi: int = 0xFFFFFFFF) -> int:
        """Reserve a random SPI in [lo, hi], unique for dst among live and larval SAs (the
        PF_KEY GETSPI of RFC 2367); it is released if not used within LARVAL_SECONDS."""
        if not 0x100 <= lo <= hi <= 0xFFFFFFFF:
            raise ConfigError(f"SPI range must lie within 0x100..0xffffffff, got {lo:#x}..{hi:#x}")
        dstp = ipaddress.ip_address(dst).packed
        now = self._clock()
        with self._lock:
            self._larval = {k: v for k, v in self._larval.items() if v.expires > now}
            for _ in range(64):
                spi = lo + secrets.randbelow(hi - lo + 1)
                key = ("in", spi, dstp, None)
                if key not in self._by_key and key not in self._larval:
                    self._larval[key] = _Larval(spi, dst, now + self.LARVAL_SECONDS)
                    return spi
        raise ConfigError(f"no free SPI in {lo:#x}..{hi:#x} for {dst}")

    def key(self, sa: SecurityAssociation) -> tuple:
        """The SA's lookup key: unique in the database."""
        if sa.direction == "out":
            return ("out", sa.spi, sa.dst.packed, None)
        return ("in", sa.spi, sa.dst.packed, sa.group_source.packed if sa.group_source else None)

    def add(self, sa: SecurityAssociation) -> SecurityAssociation:
        """Install an SA (after get_spi for inbound SAs the key manager negotiated, or directly
        for manual keying). An SA with the same lookup key is an error: nothing changes."""
        key = self.key(sa)
        with self._lock:
            if key in self._by_key:
                sa.kill()
                raise ConfigError(f"an {sa.direction}bound SA with SPI {sa.spi:#x} to {sa.dst} already exists")
            table = dict(self._by_key)
            table[key] = sa
            self._larval.pop(key, None)
            self._by_key = table
        return sa

    def delete(self, spi: int, dst, direction: str = "in", group_source=None) -> SecurityAssociation:
        sa = self.get(spi, dst, direction, group_source)
        self._remove(sa)
        sa.kill()
        return sa

    def flush(self) -> None:
        with self._lock:
            old, self._by_key, self._larval = self._by_key, {}, {}
        for sa in old.values():
            sa.kill()

    def expire(self) -> list[Expiry]:
        """Check every SA's lifetimes; dead SAs leave the database, and so do SAs replaced
        by a rekey once their grace period is over. Returns the expire events."""
        events = []
        now = self._clock()
        for sa in list(self._by_key.values()):
            if sa.retire_at is not None and now >= sa.retire_at:
                self._remove(sa)
                sa.kill()
                continue
            ev = sa.check_lifetimes()
            if ev is not None:
                events.append(ev)
                if ev.hard:
                    self._remove(sa)
        return events

    def replace(self, leaving: list[SecurityAssociation], arriving: list[SecurityAssociation]) -> None:
        """Take *leaving* out (those still there) and install *arriving* in one publication,
        so a reader sees all of the change or none (a reload); then kill *leaving*. A key
        taken by an SA that stays, or twice in *arriving*, is an error: nothing changes."""
        with self._lock:
            table = dict(self._by_key)
            for sa in leaving:
                key = self.key(sa)
                if table.get(key) is sa:
                    del table[key]
            for sa in arriving:
                key = self.key(sa)
                if key in table:
                    raise ConfigError(f"an {sa.direction}bound SA with SPI {sa.spi:#x} to {sa.dst} already exists")
                table[key] = sa
            for sa in arriving:
                self._larval.pop(self.key(sa), None)
            self._by_key = table
        for sa in leaving:
            sa.kill()

    def remove(self, sa: SecurityAssociation) -> None:
        """Take this very SA out (if it is still there) and kill it."""
        self._remove(sa)
        sa.kill()

    def _remove(self, sa: SecurityAssociation) -> None:
        key = self.key(sa)
        with self._lock:
            if self._by_key.get(key) is sa:
                table = dict(self._by_key)
                del table[key]
                self._by_key = table
