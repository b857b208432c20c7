"""Pacing for StartSession: a token bucket whose rate adapts to what AWS tells us.

StartSession allows about 3 calls per second per account. The bucket starts at the configured
rate, halves it on every ThrottlingException (not below a floor) and grows it back additively
on each success, like TCP's congestion window. It is separate from the cap on open sessions:
the bucket says *when* the next session may start, the cap says *how many* may be open.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Callable

MIN_RATE = 0.2          # never slower than one start per 5 s, so a throttling storm still makes progress
INCREASE_PER_SUCCESS = 0.05
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0


class AdaptiveRate:
    """Thread-safe token bucket (capacity 1: no bursts above the rate)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic):
        self.max_rate = rate
        self.rate = rate
        self._clock = clock
        self._next = clock()
        self._lock = threading.Lock()
        self.throttles = 0

    def delay(self) -> float:
        """Seconds until a start is allowed (0 when one is allowed now)."""
        with self._lock:
            return max(0.0, self._next - self._clock())

    def try_acquire(self) -> bool:
        """Take the next start slot if it is due."""
        with self._lock:
            now = self._clock()
            if now < self._next:
                return False
            interval = 1.0 / self.rate
            # Keep to the schedule: a slot taken a little late must not push every later slot back
            # (a busy caller would otherwise keep a lower rate than it set); after a pause, start afresh.
            start = self._next if now - self._next < interval else now
            self._next = start + interval
            return True

    def on_throttled(self) -> None:
        with self._lock:
            self.throttles += 1
            self.rate = max(MIN_RATE, self.rate / 2)
            # Push the next slot out too: the calls already in flight were sent too fast.
            self._next = max(self._next, self._clock() + 1.0 / self.rate)

    def on_success(self) -> None:
        with self._lock:
            self.rate = min(self.max_rate, self.rate + INCREASE_PER_SUCCESS)


def jittered_backoff(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Full jitter: a random wait in [0, min(cap, base * 2^attempt)], so retries do not line up."""
    return random.uniform(0, min(cap, base * 2 ** attempt))
