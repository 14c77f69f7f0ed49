"""Throttles for sign-in and bearer tokens: bounded hash work and exponential backoff with bounded memory.

:class:`AuthThrottle` (one per web app, see :func:`sooner.webapp.auth.register`)
allows at most two argon2 password checks at once (each up to 64 MiB) and
answers 429 to a sign-in that waits over half a second for a slot. Failures
back off exponentially (1 s, 2 s, 4 s … up to 5 minutes, after a few free
ones) per (address, account) and per address for passwords, per address for
bearer tokens (REST API and Socket.IO alike). Refused attempts are not failures, so a lockout never outlasts
the backoff, and a user at another address is never slowed down. Limits are
per web process (Flask-Limiter was considered: its MongoDB storage does not
work on nx-27017, its memory storage is unbounded, and it has neither
backoff nor a bound on concurrent hash work).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sooner.clock import Clock

logger = logging.getLogger(__name__)

# Typed names are cut to this in throttle keys, so a long one costs no more memory than a real one.
KEY_NAME_CHARS = 64


@dataclass(frozen=True)
class Backoff:
    """The wait after the n-th failure: none while n < ``free``, then ``base_s``, doubling each time, up to ``cap_s``.
    """

    free: int
    base_s: float = 1.0
    cap_s: float = 300.0

    def delay(self, failures: int) -> float:
        if failures < self.free:
            return 0.0
        return min(self.cap_s, self.base_s * 2.0 ** min(failures - self.free, 64))


class _Entry:
    __slots__ = ("failures", "last", "until")

    def __init__(self) -> None:
        self.failures, self.last, self.until = 0, 0.0, 0.0


class FailureLedger:
    """Failures per key and the time until each key may try again. Its memory is bounded, and it is never
    cleared as a whole.

    Keys are kept in order of last use, where a failure or a refused attempt
    is a use. When full, the ledger forgets the least recently used key and
    logs that it did (at most once a minute). A key that keeps trying
    is therefore always remembered. A key is forgotten ``forget_s`` after its
    last failure. Times come from ``clock.monotonic()``.
    """

    def __init__(self, clock: Clock, capacity: int = 50_000, forget_s: float = 3600.0) -> None:
        self.clock = clock
        self.capacity = capacity
        self.forget_s = forget_s
        self._entries: OrderedDict[object, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._evicted = 0
        self._warned_at = -math.inf

    def __len__(self) -> int:
        return len(self._entries)

    def wait(self, key: object) -> float:
        """Seconds until ``key`` may try again: 0 means now."""
        now = self.clock.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return 0.0
            if now - entry.last >= self.forget_s and now >= entry.until:
                del self._entries[key]
                return 0.0
            self._entries.move_to_end(key)
            return max(0.0, entry.until - now)

    def failed(self, key: object, backoff: Backoff) -> None:
        """Count a failure of ``key``; from now on it waits ``backoff.delay(failures)``."""
        now = self.clock.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._make_room(now)
                entry = self._entries[key] = _Entry()
            self._entries.move_to_end(key)
            entry.failures += 1
            entry.last = now
            entry.until = now + backoff.delay(entry.failures)

    def forget(self, key: object) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def _make_room(self, now: float) -> None:
        """Drop stale keys from the old end, then the least recently used ones while full."""
        while self._entries:
            key, oldest = next(iter(self._entries.items()))
            stale = now - oldest.last >= self.forget_s and now >= oldest.until
            if not stale and len(self._entries) < self.capacity:
                break
            del self._entries[key]
            if not stale:
                self._evicted += 1
        if self._evicted and now - self._warned_at >= 60:
            logger.warning("the sign-in throttle is full (%d keys): forgot the recent failures of %d; "
                           "many addresses are failing to sign in", self.capacity, self._evicted)
            self._warned_at, self._evicted = now, 0


class HashSlots:
    """At most ``size`` hash checks at once; a caller waits at most ``wait_s`` for a slot."""

    def __init__(self, size: int, wait_s: float) -> None:
        self._semaphore = threading.BoundedSemaphore(size)
        self.wait_s = wait_s

    def try_acquire(self, wait_s: float | None = None) -> bool:
        timeout = self.wait_s if wait_s is None else wait_s
        return self._semaphore.acquire(timeout=timeout) if timeout > 0 else self._semaphore.acquire(blocking=False)

    def release(self) -> None:
        self._semaphore.release()


class AuthThrottle:
    """The app's hash slots and failure ledger, and the sign-in and token policies on them."""

    PER_ACCOUNT = Backoff(free=5)  # failures of one (address, account)
    PER_ADDRESS = Backoff(free=20)  # sign-in failures of one address, whatever the account (a spray of names)
    PER_TOKEN_ADDRESS = Backoff(free=10)  # invalid bearer tokens from one address

    def __init__(self, clock: Clock, *, password_slots: int = 2, token_slots: int = 8, slot_wait_s: float = 0.5,
                 capacity: int = 50_000) -> None:
        self.failures = FailureLedger(clock, capacity)
        self.password_slots = HashSlots(password_slots, slot_wait_s)
        self.token_slots = HashSlots(token_slots, slot_wait_s)

    def login_wait(self, address: str, name: str) -> float:
        return max(self.failures.wait(("login", address, name[:KEY_NAME_CHARS])),
                   self.failures.wait(("login-address", address)))

    def login_failed(self, address: str, name: str) -> None:
        self.failures.failed(("login", address, name[:KEY_NAME_CHARS]), self.PER_ACCOUNT)
        self.failures.failed(("login-address", address), self.PER_ADDRESS)

    def login_succeeded(self, address: str, name: str) -> None:
        # Only this account's failures: signing into one's own account must not clear a spray's record.
        self.failures.forget(("login", address, name[:KEY_NAME_CHARS]))

    def token_wait(self, address: str) -> float:
        return self.failures.wait(("token", address))

    def token_failed(self, address: str) -> None:
        self.failures.failed(("token", address), self.PER_TOKEN_ADDRESS)
