"""The scheduler: turns cron ticks into runs and ends runs whose worker vanished.

Any number of schedulers may run side by side (on one machine or many); they
agree through MongoDB alone. A run for a tick carries
``trigger.scheduled_for``, and the unique ``(job, scheduled_for)`` index lets
only one of them insert it, so a tick never fires twice.

Firing rules, per enabled job with a schedule (read afresh every tick, so a
change made in the UI or CLI takes effect on the next tick):

* The job's ``scheduler_state.last_tick_at`` is a cursor: the latest tick
  already dealt with (fired, dropped by a policy, or the moment the scheduler
  started tracking the schedule).
* A job without state, or whose ``schedule``/``timezone`` differ from the
  ones in its state, starts from *now*: ticks before that never fire. Jobs
  that are disabled, deleted or unscheduled lose their state, so enabling one
  again later also starts from then (the disabled time is not "missed").
* A tick ``t`` is *due* when ``last_tick_at < t <= now``. The latest due tick
  is *on time* when ``now - t <= grace_s`` (default 5 s): it fires as a normal
  run. Every other due tick is *missed* -- no scheduler was running, or this
  one stalled -- and the job's ``missed`` policy decides:

  - ``skip`` (default): none of the missed ticks fires (a warning is logged);
  - ``catch_up_once``: one run for the whole missed period, with
    ``scheduled_for`` = the latest missed tick and ``trigger.missed`` = how
    many ticks were missed (counted up to ``MISSED_COUNT_LIMIT``;
    ``trigger.missed_capped`` says when there were more).

  So a job fires at most two runs per tick (catch-up + on time), never a storm.
* The job's ``overlap`` policy (allow / skip / queue) applies to every fire,
  through :func:`sooner.runs.queue_run`.

Each tick also ends runs whose lease expired (their worker stopped renewing
it) as ``lost``, through :func:`sooner.runs.end_run`, which retries them per
the job's policy.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol

from sooner.errors import SoonerError
from sooner.runs import end_run, queue_run
from sooner.schedule import fires_between, last_fire_at_or_before, next_fires
from sooner.store.runs import RunStatus

if TYPE_CHECKING:
    from sooner.config import Settings
    from sooner.store import Store

logger = logging.getLogger(__name__)

UTC = timezone.utc
GRACE_S = 5.0  # a tick this late still fires as "on time"
INTERVAL_S = 0.5  # longest sleep between ticks: changes take effect within this
MISSED_COUNT_LIMIT = 1000  # missed ticks are counted up to this many
BACKOFF_MAX_S = 30.0


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """The real time, aware UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass(frozen=True)
class DueTicks:
    """What a job has due between its cursor and now (see the module docstring)."""

    latest: datetime  # the latest due tick: the new cursor
    on_time: datetime | None  # fires normally
    missed_count: int  # due ticks other than ``on_time``
    missed_capped: bool  # there were more than ``missed_count``
    missed_first: datetime | None
    missed_latest: datetime | None


def due_ticks(expr: str, tz: str, cursor: datetime, now: datetime, grace_s: float = GRACE_S) -> DueTicks | None:
    """Classify the ticks in ``(cursor, now]`` as on time or missed; None when none is due."""
    latest = last_fire_at_or_before(expr, tz, now)
    if latest is None or latest <= cursor:
        return None
    due = fires_between(expr, tz, cursor, now, limit=MISSED_COUNT_LIMIT + 1)
    capped = len(due) > MISSED_COUNT_LIMIT
    on_time = latest if (now - latest).total_seconds() <= grace_s else None
    if on_time is None:
        missed_latest: datetime | None = latest
    elif len(due) > 1:
        missed_latest = due[-2] if not capped else last_fire_at_or_before(expr, tz, latest - timedelta(microseconds=1))
    else:
        missed_latest = None
    count = min(len(due), MISSED_COUNT_LIMIT) - (1 if on_time and not capped else 0)
    return DueTicks(latest=latest, on_time=on_time, missed_count=count if missed_latest else 0,
                    missed_capped=capped, missed_first=due[0] if missed_latest else None,
                    missed_latest=missed_latest)


class Scheduler:
    """Fires due cron ticks as runs; ``tick(now)`` is one step, ``run_forever`` loops it.

    ``clock`` (``now() -> aware datetime``) is the only source of time inside
    ``tick``; tests pass a fake one and call ``tick`` directly.
    """

    def __init__(self, store: Store, settings: Settings | None = None, clock: Clock | None = None, *,
                 grace_s: float = GRACE_S, interval_s: float = INTERVAL_S, name: str | None = None) -> None:
        from sooner.config import Settings

        self.store = store
        self.settings = settings or Settings()
        self.clock = clock or SystemClock()
        self.grace_s = grace_s
        self.interval_s = interval_s
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.next_due: datetime | None = None  # earliest upcoming tick seen by the last tick()
        # job -> (schedule, timezone, cursor, next tick after cursor): saves cron maths on idle ticks.
        self._upcoming: dict[str, tuple[str, str, datetime, datetime | None]] = {}
        self._warned: set[tuple[str, str, str]] = set()

    # -- one step ---------------------------------------------------------
    def tick(self, now: datetime | None = None) -> list[dict]:
        """Expire lost runs, then fire every due tick; returns the runs created for ticks."""
        now = _utc_ms(now or self.clock.now())
        self.expire_leases(now)
        self.store.jobs.clear_scheduler_state()
        fired: list[dict] = []
        upcoming: list[datetime] = []
        jobs = self.store.jobs.scheduled()
        for job in jobs:
            try:
                fired += self._fire_job(job, now)
                next_tick = self._next_after(job)
            except SoonerError as exc:  # a bad stored schedule or a job removed meanwhile
                self._warn_once(job, str(exc))
                continue
            if next_tick is not None:
                upcoming.append(next_tick)
        self.next_due = min(upcoming, default=None)
        names = {job["_id"] for job in jobs}
        for name in [n for n in self._upcoming if n not in names]:
            del self._upcoming[name]
        return fired

    def expire_leases(self, now: datetime | None = None) -> list[dict]:
        """End running runs whose lease expired as ``lost`` (retried per their job's policy)."""
        now = _utc_ms(now or self.clock.now())
        lost = []
        for run in self.store.runs.expired_leases(now):
            lease = run.get("lease_until")
            note = (f"lost: worker {run.get('worker')!r} stopped renewing its lease "
                    f"(expired {lease:%Y-%m-%d %H:%M:%S} UTC)" if lease else "lost: its lease expired")
            ended = end_run(self.store, run["_id"], RunStatus.LOST, note=note,
                            depth_limit=self.settings.chain_depth_limit, now=now)
            if ended is not None:  # None: another scheduler (or the worker) ended it first
                logger.warning("run %s of %s %s", run["_id"], run["job"], note)
                lost.append(ended)
        return lost

    def _fire_job(self, job: dict, now: datetime) -> list[dict]:
        expr, tz = job["schedule"], job.get("timezone") or "UTC"
        state = job.get("scheduler_state")
        if not state or state.get("schedule") != expr or state.get("timezone") != tz or not state.get("last_tick_at"):
            self._save(job, state, now, since=now)
            return []
        cursor = _utc_ms(state["last_tick_at"])
        next_tick = self._next_after(job, cursor)
        if next_tick is None or next_tick > now:
            return []
        due = due_ticks(expr, tz, cursor, now, self.grace_s)
        if due is None:
            return []
        runs: list[dict | None] = []
        if due.missed_count:
            runs.append(self._handle_missed(job, due, now))
        if due.on_time is not None:
            runs.append(self._queue(job, {"type": "cron", "scheduled_for": due.on_time}, now))
        # Runs first, cursor second: a crash in between re-fires the same ticks, which the unique index rejects.
        self._save(job, state, due.latest, since=state.get("since") or now)
        return [run for run in runs if run is not None]

    def _handle_missed(self, job: dict, due: DueTicks, now: datetime) -> dict | None:
        assert due.missed_latest is not None and due.missed_first is not None
        count = f"{'more than ' if due.missed_capped else ''}{due.missed_count}"
        span = f"{due.missed_first:%Y-%m-%d %H:%M:%S} to {due.missed_latest:%Y-%m-%d %H:%M:%S} UTC"
        if job.get("missed", "skip") != "catch_up_once":
            logger.warning("job %s: %s tick(s) missed (%s) not fired (missed=skip)", job["_id"], count, span)
            return None
        logger.warning("job %s: %s tick(s) missed (%s); firing one catch-up run", job["_id"], count, span)
        trigger = {"type": "cron", "scheduled_for": due.missed_latest, "catch_up": True,
                   "missed": due.missed_count, "missed_capped": due.missed_capped,
                   "missed_from": due.missed_first, "message": f"catch-up for {count} missed tick(s), {span}"}
        return self._queue(job, trigger, now)

    def _queue(self, job: dict, trigger: dict[str, Any], now: datetime) -> dict | None:
        trigger = {**trigger, "schedule": job["schedule"], "timezone": job.get("timezone") or "UTC",
                   "source": self.name}
        run = queue_run(self.store, job, trigger, overlap_check=True, now=now)
        if run is not None:
            logger.info("fired %s for %s: run %s", job["_id"], trigger["scheduled_for"], run["_id"])
        return run

    def _save(self, job: dict, previous: dict | None, cursor: datetime, *, since: datetime) -> None:
        state = {"schedule": job["schedule"], "timezone": job.get("timezone") or "UTC",
                 "last_tick_at": cursor, "since": since, "by": self.name}
        if self.store.jobs.save_scheduler_state(job["_id"], state, previous=previous):
            job["scheduler_state"] = state
        # else another scheduler moved the cursor first; the next tick reads its state.

    def _next_after(self, job: dict, cursor: datetime | None = None) -> datetime | None:
        """The first tick after the job's cursor (cached until the cursor or schedule changes)."""
        expr, tz = job["schedule"], job.get("timezone") or "UTC"
        if cursor is None:
            state = job.get("scheduler_state") or {}
            if not state.get("last_tick_at"):
                return None
            cursor = _utc_ms(state["last_tick_at"])
        cached = self._upcoming.get(job["_id"])
        if cached and cached[:3] == (expr, tz, cursor):
            return cached[3]
        fires = next_fires(expr, tz, cursor, 1)
        next_tick = fires[0].astimezone(UTC) if fires else None
        self._upcoming[job["_id"]] = (expr, tz, cursor, next_tick)
        return next_tick

    def _warn_once(self, job: dict, message: str) -> None:
        key = (job["_id"], str(job.get("schedule")), str(job.get("timezone")))
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("job %s: not scheduled: %s", job["_id"], message)

    # -- the loop -----------------------------------------------------------
    def wait_s(self) -> float:
        """How long to sleep before the next tick: until the next due tick, at most ``interval_s``."""
        if self.next_due is None:
            return self.interval_s
        until = (self.next_due - self.clock.now()).total_seconds()
        return min(self.interval_s, max(0.005, until + 0.001))

    def run_forever(self, stop_event: threading.Event) -> None:
        """Tick until ``stop_event`` is set; database trouble backs off and retries, never exits."""
        logger.info("scheduler %s started", self.name)
        failures = 0
        while not stop_event.is_set():
            try:
                self.tick()
                failures, wait = 0, self.wait_s()
            except Exception as exc:  # noqa: BLE001 - a daemon keeps going; a bug still logs its traceback
                failures += 1
                wait = min(BACKOFF_MAX_S, self.interval_s * 2 ** failures)
                if isinstance(exc, SoonerError):
                    logger.error("tick failed: %s (retrying in %.1fs)", exc, wait)
                else:
                    logger.exception("tick failed (retrying in %.1fs)", wait)
            stop_event.wait(wait)
        logger.info("scheduler %s stopped", self.name)


def _utc_ms(moment: datetime) -> datetime:
    """Aware UTC with millisecond precision, as BSON stores it (so stored and computed times compare equal)."""
    if moment.tzinfo is None:
        raise ValueError(f"the scheduler needs timezone-aware times, got naive {moment!r}")
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
