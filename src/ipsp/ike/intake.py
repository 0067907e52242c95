"""The bounded way in to the IKE daemon's loop: every datagram for IKE passes here.

A datagram is sorted by its IKE header alone (RFC 7296 3.1), before any parsing, on whatever
thread it arrived on (the gateway's receive thread, the daemon's loop):

- *established*: the SPI the datagram names as ours (the responder's SPI in a message from an
  initiator, the initiator's in one from a responder) is non-zero and belongs to one of our
  IKE SAs. Rekeys, liveness checks and Deletes of working tunnels are these.
- *new*: everything else that looks like IKE: IKE_SA_INIT requests, and messages naming an
  SPI we do not hold (an attacker can make up any number of those).
- dropped at once, counted as *malformed*: shorter than the header, a length field that is
  not the datagram's length, a major version other than 2 (what Message.decode would refuse).

Each class has its own queue, bounded in datagrams and in bytes (a 64 KiB datagram costs what
it weighs); a datagram that does not fit is dropped and counted, and the sender's own
retransmission (RFC 7296 2.1) is the retry. The loop serves the established queue first,
at most ``BUDGET`` datagrams per loop iteration, so control calls and timers interleave with
a flood and a flood of IKE_SA_INIT never delays the messages of working IKE SAs; what is
left of the new queue after that waits for the next iteration. Memory is bounded by the
queues' byte limits, whatever arrives.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Iterator

from ipsp.ike.message import FLAG_INITIATOR, HEADER_LEN, IKE_MAJOR_VERSION

__all__ = ["Intake", "ESTABLISHED", "NEW"]

ESTABLISHED, NEW = "established", "new"
_ZERO_SPI = bytes(8)


class Intake:
    """Two bounded queues of (datagram, remote, local port), filled from any thread by
    :meth:`put` and emptied on the loop by :meth:`take`. *known(spi)* says whether an 8-byte
    SPI is one of our IKE SAs' (a dict lookup: safe from another thread); *wake()* is called,
    from the putting thread, when the queues go from empty to not empty."""

    BUDGET = 64          # datagrams served per loop iteration

    def __init__(self, known: Callable[[bytes], bool], wake: Callable[[], None], *,
                 limits: dict[str, tuple[int, int]] | None = None):
        self._known = known
        self._wake = wake
        # (datagrams, bytes) per queue: established ones are few and precious, new ones cheap to lose
        self.limits = {ESTABLISHED: (1024, 4 << 20), NEW: (256, 512 << 10), **(limits or {})}
        self._queues: dict[str, deque] = {ESTABLISHED: deque(), NEW: deque()}
        self._bytes = {ESTABLISHED: 0, NEW: 0}
        self._lock = threading.Lock()
        self._waiting = False          # wake() was called and take() has not emptied the queues since
        self.counters = {f"{what}_{q}": 0 for what in ("queued", "dropped") for q in (ESTABLISHED, NEW)}
        self.counters["malformed"] = 0

    def classify(self, data: bytes) -> str | None:
        """ESTABLISHED, NEW, or None for what is not an IKE message at all."""
        if len(data) < HEADER_LEN or data[17] >> 4 != IKE_MAJOR_VERSION \
                or int.from_bytes(data[24:28], "big") != len(data):
            return None
        ours = data[8:16] if data[19] & FLAG_INITIATOR else data[0:8]
        return ESTABLISHED if ours != _ZERO_SPI and self._known(ours) else NEW

    def put(self, data: bytes, remote: tuple[str, int], local_port: int) -> bool:
        """Queue one datagram (marker removed); False if it was dropped (counted either way)."""
        kind = self.classify(data)
        with self._lock:
            if kind is None:
                self.counters["malformed"] += 1
                return False
            count, size = self.limits[kind]
            q = self._queues[kind]
            if len(q) >= count or self._bytes[kind] + len(data) > size:
                self.counters[f"dropped_{kind}"] += 1
                return False
            q.append((data, remote, local_port))
            self._bytes[kind] += len(data)
            self.counters[f"queued_{kind}"] += 1
            wake, self._waiting = not self._waiting, True
        if wake:
            self._wake()
        return True

    def take(self, budget: int | None = None) -> Iterator[tuple[bytes, tuple[str, int], int]]:
        """Up to *budget* datagrams, established ones first. When this leaves the queues empty
        the next put() wakes the loop again; otherwise the caller runs take() again later."""
        budget = self.BUDGET if budget is None else budget
        for _ in range(budget):
            with self._lock:
                kind = ESTABLISHED if self._queues[ESTABLISHED] else NEW if self._queues[NEW] else None
                if kind is None:
                    self._waiting = False
                    return
                item = self._queues[kind].popleft()
                self._bytes[kind] -= len(item[0])
            yield item

    def pending(self) -> bool:
        with self._lock:
            if self._queues[ESTABLISHED] or self._queues[NEW]:
                return True
            self._waiting = False
            return False

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self.counters, **{f"queue_{k}": len(q) for k, q in self._queues.items()},
                    **{f"queue_{k}_bytes": b for k, b in self._bytes.items()}}
