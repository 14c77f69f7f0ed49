"""The dead man's switch of scheduled jobs: gathers what :func:`sooner.model.missed.job_alert` judges.

For each job it finds, with the same cron functions the scheduler uses, the
latest tick at or before now and the latest one older than the job's grace
(:func:`sooner.model.missed.alert_after_s`), counting only ticks after the
job has been watched (:func:`watched_since`), and the scheduler's cursor
(ticks up to it were fired or recorded missed). Then three queries for all
jobs at once: the queued and the waiting runs of ticks (by status, from its
index) and the missed-tick records ending at those ticks (by ``_id``). The
embedded server scans a collection for any equality on a date, so nothing
here asks for a run by its ``scheduled_for``. The web pages, the API and the
CLI all call :func:`job_alerts`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sooner.clock import to_ms
from sooner.errors import SoonerError
from sooner.model import CronTrigger, Job
from sooner.model.missed import AlertState, JobAlert, alert_after_s, job_alert
from sooner.scheduling.cron import last_fire_at_or_before, next_fires
from sooner.scheduling.triggers import CronSchedule

if TYPE_CHECKING:
    from sooner.store import Store

_BEFORE = timedelta(microseconds=1)


class TickCache:
    """Each schedule's previous, latest and next tick around a moment, kept until the next tick comes."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._ticks: dict[tuple[str, str], tuple[datetime | None, datetime | None, datetime | None]] = {}
        self._lock = threading.Lock()

    def around(self, expr: str, tz: str, now: datetime) -> tuple[datetime | None, datetime | None, datetime | None]:
        """(tick before the latest, latest tick at or before ``now``, first tick after ``now``), aware UTC ms."""
        key = (expr, tz)
        with self._lock:
            cached = self._ticks.get(key)
        if cached is not None:
            _, latest, upcoming = cached
            if (latest is None or latest <= now) and (upcoming is None or now < upcoming):
                return cached
        latest = _ms(last_fire_at_or_before(expr, tz, now))
        previous = _ms(last_fire_at_or_before(expr, tz, latest - _BEFORE)) if latest else None
        following = next_fires(expr, tz, now, 1)
        ticks = (previous, latest, _ms(following[0]) if following else None)
        with self._lock:
            if len(self._ticks) >= self.size:
                self._ticks.clear()
            self._ticks[key] = ticks
        return ticks


TICKS = TickCache()


def watched_since(job: Job) -> datetime | None:
    """From when the job's ticks are expected: when the scheduler started following its schedule.

    That is the cron cursor's ``since`` while it belongs to the job's current
    schedule and timezone; before a scheduler has picked the schedule up, the
    job's last change (enabling it, setting the schedule).
    """
    state = _cursor_state(job)
    if state is not None and isinstance(state.get("since"), datetime):
        return to_ms(state["since"])
    moment = job.updated_at or job.created_at
    return to_ms(moment) if moment and job.schedule else None


def handled_until(job: Job) -> datetime | None:
    """The scheduler's cursor of the job's current schedule: ticks up to it were fired or recorded missed."""
    state = _cursor_state(job)
    cursor = state.get("last_tick_at") if state is not None else None
    return to_ms(cursor) if isinstance(cursor, datetime) else None


def _cursor_state(job: Job) -> Mapping[str, Any] | None:
    """The cron trigger's stored state, if it belongs to the job's current schedule and timezone."""
    if not job.schedule:
        return None
    trigger = CronSchedule(job.schedule, job.timezone or "UTC")
    state = trigger.saved_state(job)
    if state and all(state.get(k) == v for k, v in trigger.identity().items()):
        return state
    return None


def job_alerts(store: Store, jobs: Iterable[Job], now: datetime, *,
               ticks: TickCache = TICKS) -> dict[str, JobAlert]:
    """Each job's dead man's switch, by name (``off`` for jobs not watched)."""
    now = to_ms(now)
    alerts: dict[str, JobAlert] = {}
    facts: dict[str, tuple[Job, datetime | None, datetime | None, float]] = {}
    for job in jobs:
        if not job.schedulable or not job.schedule:
            alerts[job.name] = JobAlert(AlertState.OFF)
            continue
        try:
            facts[job.name] = (job, *_due_ticks(job, now, ticks))
        except (SoonerError, ValueError) as exc:  # a schedule stored before it was validated
            alerts[job.name] = JobAlert(AlertState.OFF, reason=f"schedule not usable: {exc}")
    wanted = {(name, tick) for name, (_, latest, expected, _) in facts.items() for tick in (latest, expected) if tick}
    unstarted = store.reads.unstarted_tick_runs(CronTrigger.type) if wanted else {}
    missed = store.missed.at_ticks(wanted, CronSchedule.kind) if wanted else {}
    for name, (job, latest, expected, grace_s) in facts.items():
        ticks_of = [tick for tick in (latest, expected) if tick is not None]
        alerts[name] = job_alert(
            job, latest=latest, expected=expected, grace_s=grace_s, handled_until=handled_until(job),
            unstarted={tick: unstarted[(name, tick)] for tick in ticks_of if (name, tick) in unstarted},
            missed={tick: missed[(name, tick)] for tick in ticks_of if (name, tick) in missed})
    return alerts


def alert_of(store: Store, job: Job, now: datetime) -> JobAlert:
    """One job's dead man's switch."""
    return job_alerts(store, [job], now)[job.name]


def _due_ticks(job: Job, now: datetime, ticks: TickCache) -> tuple[datetime | None, datetime | None, float]:
    """(latest tick, latest tick past the grace, the grace in seconds); ticks from before the watch are None."""
    assert job.schedule
    tz = job.timezone or "UTC"
    previous, latest, upcoming = ticks.around(job.schedule, tz, now)
    interval = (upcoming - latest) if latest and upcoming else (latest - previous) if latest and previous else None
    grace_s = alert_after_s(job.alert_after_s, interval.total_seconds() if interval else None)
    cutoff = now - timedelta(seconds=grace_s)
    if latest is not None and latest <= cutoff:
        expected: datetime | None = latest
    elif previous is not None and previous <= cutoff:
        expected = previous
    else:
        expected = _ms(last_fire_at_or_before(job.schedule, tz, cutoff))
    since = watched_since(job)
    if since is not None:
        latest = latest if latest and latest > since else None
        expected = expected if expected and expected > since else None
    return latest, expected, grace_s


def _ms(moment: datetime | None) -> datetime | None:
    return to_ms(moment) if moment is not None else None
