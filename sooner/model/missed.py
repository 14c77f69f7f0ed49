"""Missed ticks and the dead man's switch: the words for why a tick did not run, and the one alert rule.

A *missed tick* is a moment a job's schedule was due that got no run of its
own: the scheduler was not running (``scheduler_down``), a run was still
active under overlap=skip (``overlap_skip``), or missed=catch_up_once folded
it into one catch-up run (``caught_up``). The scheduler records each as a
:class:`MissedTick` (many ticks of one outage collapse into one record with
``count``, ``first`` and the latest one as ``scheduled_for``).

:func:`job_alert` is the dead man's switch: from a job, the ticks its
schedule had due, the runs of those ticks and the records of missed ones, it
says whether the job is ``ok``, ``overdue`` (a tick is older than the grace
and no worker took a run for it: no scheduler fired it, or its run is still
queued or waiting) or ``missed`` (its latest tick was recorded missed).
Gathering those facts (cron maths, store reads) is
:mod:`sooner.scheduling.alerts`'s job; the rule is here alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from sooner.model.job import Job
from sooner.model.run import Run
from sooner.model.status import RunStatus

# The default grace of the dead man's switch: this share of the time between two ticks, within the bounds.
ALERT_AFTER_SHARE = 0.1
ALERT_AFTER_MIN_S = 60.0
ALERT_AFTER_MAX_S = 3600.0


class MissReason(str, Enum):
    """Why a tick got no run of its own."""

    SCHEDULER_DOWN = "scheduler_down"  # no scheduler was running (or it stalled) when the tick was due
    OVERLAP_SKIP = "overlap_skip"  # a run of the job was still active and overlap=skip dropped the fire
    CAUGHT_UP = "caught_up"  # missed=catch_up_once folded it into one catch-up run

    def describe(self) -> str:
        return {MissReason.SCHEDULER_DOWN: "no scheduler was running",
                MissReason.OVERLAP_SKIP: "a run was still active (overlap=skip)",
                MissReason.CAUGHT_UP: "folded into one catch-up run"}[self]


class AlertState(str, Enum):
    """A job's dead man's switch (see :func:`job_alert`)."""

    OFF = "off"  # nothing to watch: disabled, removed or without a schedule
    OK = "ok"
    OVERDUE = "overdue"  # a tick is older than the grace and no worker took a run for it
    MISSED = "missed"  # the latest tick was recorded missed

    @property
    def alerting(self) -> bool:
        return self in (AlertState.OVERDUE, AlertState.MISSED)


def missed_tick_id(job: str, trigger_key: str, latest: datetime) -> str:
    """The record's ``_id``: one per (job, trigger, latest tick), so two schedulers recording it write one,
    and the record ending at a tick is found by its id (the embedded server scans for a date equality)."""
    key = "\0".join([job, trigger_key, _utc(latest).isoformat()])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class MissedTick:
    """Ticks of one job's trigger that got no run of their own, from ``first`` to ``scheduled_for`` (the latest).

    ``count`` is how many (counted up to the scheduler's limit; ``capped`` when
    there were more); ``run`` is the catch-up run for ``caught_up``.
    """

    id: str
    job: str
    reason: MissReason
    scheduled_for: datetime
    first: datetime
    count: int = 1
    capped: bool = False
    trigger_kind: str = "cron"
    trigger_key: str = "cron"
    recorded_at: datetime | None = None
    run: str | None = None

    @classmethod
    def of(cls, job: str, reason: MissReason, first: datetime, latest: datetime | None = None, *, count: int = 1,
           capped: bool = False, trigger_kind: str = "cron", trigger_key: str = "cron",
           recorded_at: datetime | None = None, run: str | None = None) -> MissedTick:
        """A record with its idempotent id."""
        return cls(id=missed_tick_id(job, trigger_key, latest or first), job=job, reason=reason,
                   scheduled_for=latest or first, first=first, count=count, capped=capped, trigger_kind=trigger_kind,
                   trigger_key=trigger_key, recorded_at=recorded_at, run=run)

    def covers(self, moment: datetime) -> bool:
        return _utc(self.first) <= _utc(moment) <= _utc(self.scheduled_for)

    def describe(self) -> str:
        """``3 ticks, 09:00 to 11:00 UTC: no scheduler was running`` and the like."""
        when = _text(self.scheduled_for)
        if self.count > 1 or self.first != self.scheduled_for:
            more = "more than " if self.capped else ""
            when = f"{more}{self.count} ticks, {_text(self.first)} to {_text(self.scheduled_for)}"
        return f"{when}: {self.reason.describe()}"

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> MissedTick:
        return cls(id=str(doc["_id"]), job=doc.get("job") or "", reason=MissReason(doc.get("reason")),
                   scheduled_for=doc["scheduled_for"], first=doc.get("first") or doc["scheduled_for"],
                   count=int(doc.get("count") or 1), capped=bool(doc.get("capped")),
                   trigger_kind=doc.get("trigger_kind") or "cron", trigger_key=doc.get("trigger_key") or "cron",
                   recorded_at=doc.get("recorded_at"), run=doc.get("run"))

    def to_doc(self) -> dict[str, Any]:
        return {"_id": self.id, "job": self.job, "reason": self.reason.value, "scheduled_for": self.scheduled_for,
                "first": self.first, "count": self.count, "capped": self.capped, "trigger_kind": self.trigger_kind,
                "trigger_key": self.trigger_key, "recorded_at": self.recorded_at, "run": self.run}


@dataclass(frozen=True)
class JobAlert:
    """A job's dead man's switch: ``state``, the tick it is about and, when alerting, why in words."""

    state: AlertState
    expected_at: datetime | None = None
    reason: str | None = None
    grace_s: float | None = None
    run: str | None = None
    missed: MissedTick | None = None

    @property
    def alerting(self) -> bool:
        return self.state.alerting

    def message(self) -> str:
        """``expected at 2026-01-05 10:00:00 UTC, did not run: no worker took it``, or ``ok``/``off``."""
        if not self.alerting or self.expected_at is None:
            return self.state.value
        return f"expected at {_text(self.expected_at)}, did not run: {self.reason}"

    def to_doc(self) -> dict[str, Any]:
        """The JSON the API shows (times as datetimes; the web's JSON provider writes them as ISO)."""
        return {"state": self.state.value, "expected_at": self.expected_at, "reason": self.reason,
                "message": self.message(), "grace_s": self.grace_s, "run": self.run,
                "missed": self.missed.id if self.missed else None}


def alert_after_s(setting: float | None, interval_s: float | None) -> float:
    """The grace before a due tick without a run alerts: the job's ``alert_after_s``, else the default.

    The default is 10 % of the time between two ticks (``interval_s``), at
    least 60 s and at most an hour.
    """
    if setting:
        return float(setting)
    if not interval_s:
        return ALERT_AFTER_MIN_S
    return max(ALERT_AFTER_MIN_S, min(ALERT_AFTER_MAX_S, interval_s * ALERT_AFTER_SHARE))


def job_alert(job: Job, *, latest: datetime | None, expected: datetime | None, grace_s: float,
              handled_until: datetime | None, unstarted: Mapping[datetime, Run],
              missed: Mapping[datetime, MissedTick]) -> JobAlert:
    """The dead man's switch of one job: the one rule.

    ``latest`` is the job's latest tick at or before now, ``expected`` its
    latest tick at or before now minus ``grace_s`` (each None when there is
    none since the job has been watched). ``handled_until`` is the
    scheduler's cursor for the schedule (ticks up to it were fired or
    recorded missed), ``unstarted`` the queued or waiting runs of those ticks
    and ``missed`` the records of missed ticks ending at them.

    The latest tick recorded missed makes the job ``missed`` (ticks folded
    into a catch-up run count as that run); else the expected tick that no
    scheduler fired, or whose run no worker took yet, makes it ``overdue``;
    else it is ``ok`` (a fired tick whose run is neither queued nor waiting
    was taken by a worker, or cancelled before it started). Disabled, removed
    and unscheduled jobs are ``off``.
    """
    if not job.schedulable or not job.schedule:
        return JobAlert(AlertState.OFF)
    for tick in dict.fromkeys(t for t in (latest, expected) if t is not None):
        run = unstarted.get(tick)
        record = missed.get(tick)
        if run is None and record is not None and record.reason is not MissReason.CAUGHT_UP:
            return JobAlert(AlertState.MISSED, tick, record.reason.describe(), grace_s, None, record)
        fired = handled_until is not None and tick <= handled_until
        if run is None and fired:
            return JobAlert(AlertState.OK, tick, None, grace_s)
        if tick == expected:  # past its grace, and no worker took a run for it
            return JobAlert(AlertState.OVERDUE, tick, _not_taken(run), grace_s, run.id if run else None, record)
    return JobAlert(AlertState.OK, latest, None, grace_s)


def _not_taken(run: Run | None) -> str:
    """Why the run of a due tick did not start, in words."""
    if run is None:
        return "no scheduler fired it"
    if run.status is RunStatus.QUEUED:
        target = f" (it needs worker {run.target!r})" if run.target else ""
        return f"queued, but no worker took it{target}"
    if run.status is RunStatus.WAITING:
        return "waiting behind an earlier run (overlap=queue)"
    return f"{run.status.value}, and no worker took it"


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _text(moment: datetime) -> str:
    return _utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC")
