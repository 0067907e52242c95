"""Rate limits for what the network can make us do: send ICMP errors, write log lines.

- :class:`RateLimit`, a token bucket (Linux's icmp_msgs_per_sec and icmp_msgs_burst defaults).
- :class:`QuietLog`, log lines caused by arriving packets, limited per reason, so that a flood
  of forged input cannot flood the log as well (IKE intake, ICMP path-MTU reports).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

__all__ = ["RateLimit", "QuietLog"]


class RateLimit:
    """A token bucket: at most *rate* per second, *burst* at once (Linux's icmp_msgs_per_sec
    and icmp_msgs_burst defaults)."""

    def __init__(self, rate: float = 1000.0, burst: int = 50, *, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


class QuietLog:
    """Log lines that arriving datagrams cause, limited per *reason* (a fixed string) to
    *burst* at once and *rate* a second, so a flood cannot flood the log too; what is held
    back is counted and the next line let through for that reason says how many."""

    def __init__(self, logger: logging.Logger, *, rate: float = 1.0, burst: int = 10,
                 clock: Callable[[], float] = time.monotonic):
        self.logger, self.rate, self.burst, self.clock = logger, rate, burst, clock
        self._limits: dict[str, RateLimit] = {}
        self._held: dict[str, int] = {}
        self.suppressed = 0

    def __call__(self, level: int, reason: str, msg: str, *args, exc_info: bool = False) -> None:
        if not self.logger.isEnabledFor(level):
            return
        limit = self._limits.get(reason)
        if limit is None:
            limit = self._limits[reason] = RateLimit(self.rate, self.burst, clock=self.clock)
        if not limit.allow():
            self._held[reason] = self._held.get(reason, 0) + 1
            self.suppressed += 1
            return
        held = self._held.pop(reason, 0)
        if held:
            msg, args = msg + " (and %d more like it, not logged)", (*args, held)
        self.logger.log(level, msg, *args, exc_info=exc_info, stacklevel=2)
