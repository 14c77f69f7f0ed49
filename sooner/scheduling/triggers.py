"""The triggers a job has: what can start its runs, as one small class per kind.

A job's triggers are derived from its settings by the kinds registered in
:data:`TRIGGERS` (``schedule`` → :class:`CronSchedule`, ``hooks`` →
:class:`EventHooks`). Two families:

* :class:`TimeTrigger` -- the scheduler keeps a cursor per (job, trigger
  ``key``) and asks ``due(cursor, now)`` each tick and ``next_after(cursor)``
  to know when to look again; :meth:`TimeTrigger.cause` turns a due moment
  into the run's :class:`~sooner.model.Trigger` record;
* :class:`EventTrigger` -- :func:`sooner.runs.events.emit_event` asks
  ``matches(event)`` and ``cause(event)`` of the hooked jobs' triggers.

A new kind (interval, webhook, signed URL, fan-in) is one subclass plus
``TRIGGERS.register(Kind)``; the scheduler and the emit path pick it up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

from sooner.model import CronTrigger, EventTrigger as EventRecord, Job, Trigger
from sooner.scheduling.cron import fires_between, last_fire_at_or_before, next_fires

GRACE_S = 5.0  # a tick this late still fires as "on time"
MISSED_COUNT_LIMIT = 1000  # missed ticks are counted up to this many
_JUST_BEFORE = timedelta(microseconds=1)  # cron ticks are whole seconds: this separates "grace_s old" from older

K = TypeVar("K", bound=type["JobTrigger"])


@dataclass(frozen=True)
class DueTicks:
    """What a time trigger has due between its cursor and now.

    ``latest`` is the new cursor; ``on_time`` are the due ticks at most the
    grace old, oldest first, each fired as a normal run (a scheduler a few
    seconds behind fires every tick, late); the older due ticks are *missed*
    (``missed_count`` of them, from ``missed_first`` to ``missed_latest``;
    ``missed_capped`` when there were more than counted).
    """

    latest: datetime
    on_time: tuple[datetime, ...]
    missed_count: int
    missed_capped: bool
    missed_first: datetime | None
    missed_latest: datetime | None


class JobTrigger(ABC):
    """One way a job's runs start. ``for_job`` reads a job's settings and returns its triggers of this kind."""

    kind: ClassVar[str]

    @classmethod
    @abstractmethod
    def for_job(cls, job: Job) -> list[JobTrigger]: ...


class TimeTrigger(JobTrigger):
    """A trigger that fires at moments in time; the scheduler drives it with a cursor."""

    @property
    def key(self) -> str:
        """Names the cursor in the job's trigger state (one cursor per key)."""
        return self.kind

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Settings the cursor belongs to; when they change, the trigger starts again from now."""

    @abstractmethod
    def next_after(self, moment: datetime) -> datetime | None:
        """The first moment after ``moment`` this trigger fires (aware UTC), or None if never."""

    @abstractmethod
    def due(self, cursor: datetime, now: datetime, grace_s: float = GRACE_S) -> DueTicks | None:
        """Classify the moments in ``(cursor, now]`` as on time or missed; None when none is due."""

    @abstractmethod
    def cause(self, moment: datetime, *, missed: DueTicks | None = None) -> Trigger:
        """The run's trigger record for firing at ``moment`` (``missed`` for a catch-up run)."""

    def saved_state(self, job: Job) -> Mapping[str, Any] | None:
        """This trigger's cursor state as stored on the job (see JobRepo.save_trigger_state)."""
        states = job.extra.get("trigger_state") or {}
        return states.get(self.key) if isinstance(states, Mapping) else None


class EventTrigger(JobTrigger):
    """A trigger that fires when an event is emitted."""

    @abstractmethod
    def matches(self, event: str) -> bool: ...

    @abstractmethod
    def cause(self, event: Mapping[str, Any]) -> Trigger:
        """The run's trigger record for the stored ``event`` (with ``_id``, ``name``, ``source``)."""


@dataclass(frozen=True)
class CronSchedule(TimeTrigger):
    """The job's ``schedule`` (a cron expression) in its ``timezone``; see :mod:`sooner.scheduling.cron`."""

    kind: ClassVar[str] = "cron"
    expr: str
    timezone: str = "UTC"

    @classmethod
    def for_job(cls, job: Job) -> list[JobTrigger]:
        return [cls(job.schedule, job.timezone or "UTC")] if job.schedule else []

    def identity(self) -> dict[str, Any]:
        return {"schedule": self.expr, "timezone": self.timezone}

    def saved_state(self, job: Job) -> Mapping[str, Any] | None:
        return job.scheduler_state  # the documented field, from before triggers had their own cursors

    def next_after(self, moment: datetime) -> datetime | None:
        return next_fire_after(self.expr, self.timezone, moment)

    def due(self, cursor: datetime, now: datetime, grace_s: float = GRACE_S) -> DueTicks | None:
        return due_ticks(self.expr, self.timezone, cursor, now, grace_s)

    def cause(self, moment: datetime, *, missed: DueTicks | None = None) -> Trigger:
        if missed is None:
            return CronTrigger(scheduled_for=moment, schedule=self.expr, timezone=self.timezone)
        assert missed.missed_first is not None
        count = f"{'more than ' if missed.missed_capped else ''}{missed.missed_count}"
        return CronTrigger(scheduled_for=moment, schedule=self.expr, timezone=self.timezone, catch_up=True,
                           missed=missed.missed_count, missed_capped=missed.missed_capped,
                           missed_from=missed.missed_first,
                           message=f"catch-up for {count} missed tick(s), {missed_span(missed)}")


@dataclass(frozen=True)
class EventHooks(EventTrigger):
    """The job's ``hooks``: event names whose emission starts a run with the event's data."""

    kind: ClassVar[str] = "event"
    events: frozenset[str]

    @classmethod
    def for_job(cls, job: Job) -> list[JobTrigger]:
        return [cls(frozenset(job.hooks))] if job.hooks else []

    def matches(self, event: str) -> bool:
        return event in self.events

    def cause(self, event: Mapping[str, Any]) -> Trigger:
        source = event.get("source") or {}
        return EventRecord(event=event["name"], event_id=event["_id"], source=source.get("run"),
                           source_job=source.get("job"), author=source.get("author"))


class TriggerRegistry:
    """The trigger kinds Sooner knows, in registration order."""

    def __init__(self, kinds: list[type[JobTrigger]] | None = None) -> None:
        self._kinds: list[type[JobTrigger]] = list(kinds or [])

    def register(self, kind: K) -> K:
        """Add a trigger kind (usable as a class decorator)."""
        if any(k.kind == kind.kind for k in self._kinds):
            raise ValueError(f"a trigger kind named {kind.kind!r} is registered already")
        self._kinds.append(kind)
        return kind

    def unregister(self, kind: type[JobTrigger]) -> None:
        self._kinds = [k for k in self._kinds if k is not kind]

    def __iter__(self) -> Iterator[type[JobTrigger]]:
        return iter(list(self._kinds))

    def for_job(self, job: Job) -> list[JobTrigger]:
        return [trigger for kind in self for trigger in kind.for_job(job)]

    def time_triggers(self, job: Job) -> list[TimeTrigger]:
        return [t for t in self.for_job(job) if isinstance(t, TimeTrigger)]

    def event_triggers(self, job: Job) -> list[EventTrigger]:
        return [t for t in self.for_job(job) if isinstance(t, EventTrigger)]


# The one place trigger kinds are registered.
TRIGGERS = TriggerRegistry([CronSchedule, EventHooks])


# Cron maths is a pure function of its arguments, and a tick asks the same question of every job on a
# schedule (one cursor, one now): cached, a thousand every-second jobs cost one answer per tick, not a thousand.
CRON_ANSWERS_CACHED = 4096


@lru_cache(maxsize=CRON_ANSWERS_CACHED)
def next_fire_after(expr: str, tz: str, moment: datetime) -> datetime | None:
    """The first fire of ``expr`` in ``tz`` after ``moment`` (aware UTC), or None if it never fires again."""
    fires = next_fires(expr, tz, moment, 1)
    return fires[0] if fires else None


@lru_cache(maxsize=CRON_ANSWERS_CACHED)
def due_ticks(expr: str, tz: str, cursor: datetime, now: datetime, grace_s: float = GRACE_S) -> DueTicks | None:
    """Classify the cron ticks in ``(cursor, now]``: at most ``grace_s`` old, on time; older, missed. None when none is due.

    Cron's finest step is a second, so at most ``grace_s + 1`` ticks are on time: never a storm.
    """
    too_late = now - timedelta(seconds=grace_s) - _JUST_BEFORE  # a tick at or before this is missed
    on_time = tuple(fires_between(expr, tz, max(cursor, too_late), now, limit=int(grace_s) + 2))
    missed = fires_between(expr, tz, cursor, too_late, limit=MISSED_COUNT_LIMIT + 1) if cursor < too_late else []
    if not on_time and not missed:
        return None
    capped = len(missed) > MISSED_COUNT_LIMIT
    missed_latest = (last_fire_at_or_before(expr, tz, too_late) if capped else missed[-1]) if missed else None
    latest = on_time[-1] if on_time else missed_latest
    assert latest is not None
    return DueTicks(latest=latest, on_time=on_time, missed_count=min(len(missed), MISSED_COUNT_LIMIT),
                    missed_capped=capped, missed_first=missed[0] if missed else None, missed_latest=missed_latest)


def missed_span(due: DueTicks) -> str:
    """``first to latest UTC`` of the missed ticks, for messages."""
    assert due.missed_first is not None and due.missed_latest is not None
    return f"{due.missed_first:%Y-%m-%d %H:%M:%S} to {due.missed_latest:%Y-%m-%d %H:%M:%S} UTC"
