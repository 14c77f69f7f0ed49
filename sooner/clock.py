"""The one source of time: wall time for records, monotonic time for waiting.

Every long-lived object (store, run service, scheduler, worker, web app)
takes a :class:`Clock`; production code passes :data:`SYSTEM_CLOCK`, tests
pass one :class:`FakeClock` to all of them and move it with
:meth:`FakeClock.advance`, so a whole scenario (queue, claim, finish, retry
due, hooked run) runs without sleeping.

Wall times are aware UTC with millisecond precision, because that is what
BSON keeps: a time computed here and the same time read back from the
database compare equal.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Protocol

UTC = timezone.utc


def aware(moment: datetime) -> datetime:
    """``moment`` with UTC as its zone if it has none (a stored time read back naive is UTC); else as it is."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def to_ms(moment: datetime) -> datetime:
    """``moment`` as aware UTC truncated to milliseconds (naive times are taken as UTC)."""
    moment = aware(moment).astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class Clock(Protocol):
    """What code asks for the time. ``now()`` is aware UTC (ms precision); ``monotonic()`` is seconds."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return to_ms(datetime.now(UTC))

    def monotonic(self) -> float:
        return time.monotonic()

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """A clock that moves only when told to; thread-safe. Wall and monotonic time advance together."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = to_ms(start or datetime(2026, 1, 1, tzinfo=UTC))
        self._monotonic = 1000.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    @property
    def current(self) -> datetime:
        """The wall time shown now; assigning to it is :meth:`set`."""
        return self.now()

    @current.setter
    def current(self, moment: datetime) -> None:
        self.set(moment)

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move both times forward by ``seconds`` (or ``timedelta`` keywords: ``minutes=5``); returns the new time."""
        seconds += timedelta(**delta).total_seconds()
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now = to_ms(self._now + timedelta(seconds=seconds))
            self._monotonic += seconds
            return self._now

    def set(self, moment: datetime) -> None:
        """Jump the wall time to ``moment`` (monotonic time follows when it is later)."""
        moment = to_ms(moment)
        with self._lock:
            delta = (moment - self._now).total_seconds()
            self._now = moment
            self._monotonic += max(0.0, delta)

    def __repr__(self) -> str:
        return f"FakeClock({self._now.isoformat()})"


SYSTEM_CLOCK = SystemClock()


def utcnow() -> datetime:
    """The system clock's wall time, for code that has no clock of its own (one-shot scripts)."""
    return SYSTEM_CLOCK.now()
