"""Request rate limits for endpoints anyone may call (webhooks, signed trigger URLs).

A token bucket per key (a hook's name, a signed URL's job): ``burst`` requests
at once, then ``per_s`` a second. Memory is bounded: past ``capacity`` keys the
least recently seen go. Time is the app's clock's monotonic time, so a test's
FakeClock drives it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sooner.clock import Clock


class RateLimit:
    """Token buckets per key; :meth:`take` answers the seconds to wait (0: go ahead, a token was taken)."""

    def __init__(self, clock: Clock, *, burst: float = 30, per_s: float = 1.0, capacity: int = 10_000) -> None:
        self.clock, self.burst, self.per_s, self.capacity = clock, float(burst), float(per_s), capacity
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        now = self.clock.monotonic()
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.per_s)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.per_s
            self._buckets[key] = (tokens - 1 if wait == 0 else tokens, now)
            while len(self._buckets) > self.capacity:
                self._buckets.popitem(last=False)
            return wait
