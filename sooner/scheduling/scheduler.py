"""The scheduler: turns due time triggers (cron ticks) into runs and ends runs whose worker vanished.

Any number of schedulers may run side by side (on one machine or many); they
agree through MongoDB alone. A run for a tick carries
``trigger.scheduled_for``, and the unique ``(job, scheduled_for)`` index lets
only one of them insert it, so a tick never fires twice.

Firing rules, per time trigger of each enabled job (:mod:`sooner.scheduling.triggers`;
the cron schedule is the first kind), read afresh every tick, so a change
made in the UI or CLI takes effect on the next tick:

* The trigger's state (``scheduler_state`` for cron) holds ``last_tick_at``, a cursor: the latest tick
  already dealt with (fired, dropped by a policy, or the moment the scheduler
  started tracking the schedule).
  The scheduler stores a cursor that only moves forward about every
  ``cursor_store_s`` (:meth:`Scheduler._store_now`) and remembers it in between;
  the runs witness what fired since a stored cursor (:meth:`Scheduler._plan`).
* A trigger without state, or whose identity (``schedule``/``timezone`` for
  cron) differs from the one in its state, starts from *now*: ticks before that never fire. Jobs
  that are disabled, deleted or unscheduled lose their state, so enabling one
  again later also starts from then (the disabled time is not "missed").
* A tick ``t`` is *due* when ``last_tick_at < t <= now``. A due tick is *on
  time* when ``now - t <= grace_s`` (default 5 s): each fires as a normal run,
  so a scheduler that fell a few seconds behind (a tick of a thousand jobs that
  took longer than a second) fires every tick, late, instead of dropping all
  but the latest. An older due tick is *missed* -- no scheduler was running, or
  this one stalled -- and the job's ``missed`` policy decides:

  - ``skip`` (default): none of the missed ticks fires (a warning is logged);
  - ``catch_up_once``: one run for the whole missed period, with
    ``scheduled_for`` = the latest missed tick and ``trigger.missed`` = how
    many ticks were missed (counted up to ``MISSED_COUNT_LIMIT``;
    ``trigger.missed_capped`` says when there were more).

  So a job fires at most one catch-up run per tick beside its on-time ticks, of which
  there are at most ``grace_s + 1`` (cron's finest step is a second): never a storm.
* The job's ``overlap`` policy (allow / skip / queue) applies to every fire,
  through :meth:`sooner.runs.service.RunService.queue`.
* Every tick that gets no run of its own is recorded in ``store.missed``
  (:class:`~sooner.model.missed.MissedTick`): missed ticks as one
  ``scheduler_down`` record (``count``, ``first`` and latest) or, with
  ``catch_up_once``, one ``caught_up`` record naming the catch-up run; a fire
  dropped by overlap=skip as ``overlap_skip``. Records are idempotent (their
  id is derived from job, trigger and first tick), so two schedulers write one.

Each tick also ends runs whose lease expired (their worker stopped renewing
it) as ``lost``, through :meth:`~sooner.runs.service.RunService.expire_leases`,
whose end-of-run listeners retry them per the job's policy.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import zlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable

from sooner.clock import to_ms
from sooner.errors import SoonerError, StoreUnreachable
from sooner.metrics import PROCESS, Publisher
from sooner.model import Job, Missed, Run, Trigger
from sooner.model.missed import MissedTick, MissReason
from sooner.runs.service import Fire, RunService
from sooner.scheduling.triggers import GRACE_S, TRIGGERS, DueTicks, TimeTrigger, TriggerRegistry, missed_span

if TYPE_CHECKING:
    from sooner.clock import Clock
    from sooner.config import Settings
    from sooner.store import Store

logger = logging.getLogger(__name__)

INTERVAL_S = 0.5  # longest sleep between ticks: changes take effect within this
MISSED_LOG_LIMIT = 5  # jobs named one warning each when a tick finds missed ticks; the rest in one line
BACKOFF_MAX_S = 30.0
CURSOR_STORE_S = 10.0  # a cursor that moves every tick is stored about this often (see _store_now)


class Scheduler:
    """Fires due time triggers as runs; ``tick(now)`` is one step, ``run_forever`` loops it.

    ``clock`` is the only source of time inside ``tick``; tests pass a fake
    one and call ``tick`` directly.
    """

    def __init__(self, store: Store, settings: Settings | None = None, clock: Clock | None = None, *,
                 grace_s: float = GRACE_S, interval_s: float = INTERVAL_S, name: str | None = None,
                 service: RunService | None = None, triggers: TriggerRegistry = TRIGGERS,
                 cursor_store_s: float = CURSOR_STORE_S) -> None:
        self.store = store
        self.clock = clock or store.clock
        self.service = service or RunService(store, settings, self.clock)
        self.settings = self.service.settings
        self.triggers = triggers
        self.grace_s = grace_s
        self.interval_s = interval_s
        self.cursor_store_s = cursor_store_s
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.next_due: datetime | None = None  # earliest upcoming fire seen by the last tick()
        # (job, trigger key) -> (identity, cursor, next fire after cursor): saves maths on idle ticks.
        self._upcoming: dict[tuple[str, str], tuple[dict[str, Any], datetime, datetime | None]] = {}
        # (job, trigger key) -> (identity, cursor): where this scheduler last moved a cursor, stored or not.
        self._handled: dict[tuple[str, str], tuple[dict[str, Any], datetime]] = {}
        # Whether another scheduler moved cursors lately: asked only when a tick finds missed ticks.
        self._shared: Callable[[], bool] = lambda: False
        self._warned: set[tuple[str, str]] = set()
        # What this tick recorded so far, written at once before the cursors move (see _write_records).
        self._records: list[MissedTick] = []
        self._skips: list[tuple[Job, TimeTrigger, datetime, datetime, DueTicks | None]] = []
        self._missed_notes: list[tuple[str, str, str, str]] = []
        self._outage_seen = False  # the database did not answer since the last lease check
        self._failures_seen = store.connection_failures
        self._leases_resume_at: datetime | None = None
        self.metrics = Publisher(store, "scheduler", self.name)  # this process's counters, for /metrics

    # -- one step ---------------------------------------------------------
    def tick(self, now: datetime | None = None) -> list[Run]:
        """Fire every due trigger, then expire lost runs and do the housekeeping; returns the runs created.

        Firing comes first: a fire's lateness is the time from its tick to its insert, and
        nothing else in the tick has to happen before it.
        """
        now = _utc_ms(now or self.clock.now())
        self._records, self._skips, self._missed_notes = [], [], []  # this tick's alone (a failed one's are recomputed)
        plans: list[_Plan] = []
        seen: set[tuple[str, str]] = set()
        jobs = self.store.jobs.schedulable()
        self._shared = functools.cache(lambda: self._others_active(jobs, now))
        for job in jobs:
            triggers = self._time_triggers(job)
            self._forget_removed(job, triggers)
            for trigger in triggers:
                seen.add((job.name, trigger.key))
                try:
                    plans.append(self._plan(job, trigger, now))
                except SoonerError as exc:  # a bad stored schedule or a job removed meanwhile
                    self._warn_once(job, trigger, str(exc))
        fired = self._fire_all(plans, now)
        upcoming: list[datetime] = []
        for plan in plans:
            try:
                next_fire = self._next_after(plan.job, plan.trigger, plan.cursor)
            except SoonerError as exc:
                self._warn_once(plan.job, plan.trigger, str(exc))
                continue
            if next_fire is not None:
                upcoming.append(next_fire)
        self.next_due = min(upcoming, default=None)
        for cache in (self._upcoming, self._handled):
            for key in [k for k in cache if k not in seen]:
                del cache[key]
        self.expire_leases(now)
        self.store.output.prune_expired(now)  # retention where no TTL index does it (at most hourly)
        self.store.missed.prune_expired(now)
        self.store.samples.tick(now, every_s=self.settings.sample_s)  # queue depth for the workers page; retention
        self.store.jobs.clear_trigger_states()  # of disabled jobs: schedulable() does not read them
        self.metrics.maybe_publish()
        return fired

    def _fire_all(self, plans: list[_Plan], now: datetime) -> list[Run]:
        """Queue the on-time fires of all plans at once, then move their cursors at once.

        Runs first, cursors second: a crash in between fires the same ticks again, which
        the unique index rejects. Batching keeps a tick's database work close to one bulk
        insert whatever the number of jobs (issue #12; ``bench/round_trips.py``).
        """
        due = [(plan, moment) for plan in plans for moment in plan.on_time]
        fires = [Fire(plan.job, replace(plan.trigger.cause(moment), source=self.name),
                      on_skip=self._on_skip(plan.job, plan.trigger, moment, now))
                 for plan, moment in due]
        runs = [*(plan.caught_up for plan in plans if plan.caught_up is not None)]
        for (plan, moment), run in zip(due, self.service.queue_fires(fires)):
            if run is not None:
                logger.info("fired %s for %s: run %s", plan.job.name, moment, run.id)
                if run.queued_at is not None:
                    PROCESS.fire_lateness.observe(max(0.0, (run.queued_at - moment).total_seconds()))
                runs.append(run)
        self._write_records()
        self._save_cursors([plan for plan in plans if plan.save], now)
        return runs

    def _write_records(self) -> None:
        """Write the tick's missed-tick records in one bulk write, before the cursors move past their ticks.

        A tick that runs late finds missed ticks on every job at once: one round trip per record
        made the next tick later still. A fire overlap=skip dropped is recorded unless its tick has
        a run after all (another scheduler fired it a moment ago), asked for all of them at once.
        """
        if self._skips:
            fired = self.store.reads.tick_runs((job.name, moment, trigger.kind)
                                               for job, trigger, moment, _, _ in self._skips)
            for job, trigger, moment, now, due in self._skips:
                if (job.name, moment, trigger.kind) not in fired:
                    self._record(job, trigger, MissReason.OVERLAP_SKIP, moment, now, due=due)
        notes = self._missed_notes
        for name, count, span, policy in notes[:MISSED_LOG_LIMIT]:
            logger.warning("job %s: %s tick(s) missed (%s) not fired (missed=%s)", name, count, span, policy)
        if len(notes) > MISSED_LOG_LIMIT:
            logger.warning("%d more jobs missed ticks in this tick, not fired (each job's page lists its missed "
                           "ticks)", len(notes) - MISSED_LOG_LIMIT)
        self.store.missed.record_many(self._records)

    def _save_cursors(self, plans: list[_Plan], now: datetime) -> None:
        """Store where each plan's cursor went: a new or reset state by compare-and-set, one per trigger;
        a cursor moving forward under the same settings with every other one that moves to the same
        tick under the same settings, in one update (a tick's fires share their tick), when
        :meth:`_store_now` says so, else only in this scheduler's memory.

        Where another scheduler moved a cursor first, the next tick reads its state.
        """
        skipped = {(job.name, trigger.key) for job, trigger, _, _, _ in self._skips}
        moving: list[tuple[tuple[str, str], tuple[dict[str, Any], datetime]]] = []
        for plan in plans:
            slot, handled = (plan.job.name, plan.trigger.key), (plan.trigger.identity(), plan.cursor)
            self._handled[slot] = handled
            if plan.advance and (plan.recorded or slot in skipped or self._store_now(plan)):
                moving.append((slot, handled))  # the others are remembered in _handled only
        self._advance(moving)
        self.store.jobs.save_trigger_states(
            (plan.job.name, plan.trigger.key, self._state(plan.trigger, plan.cursor, plan.since or now),
             dict(plan.previous) if plan.previous else None)
            for plan in plans if not plan.advance)

    def _store_now(self, plan: _Plan) -> bool:
        """Whether an advancing cursor is stored in this tick, or only remembered.

        A thousand every-second jobs moved a thousand cursors every tick, the second biggest
        write of a tick on the embedded server (150-250 ms). Each cursor is stored when it
        crosses a boundary of its job's own grid of ``cursor_store_s`` (phases spread by the
        job's name, so a tenth of them per tick), and at once when the tick recorded something
        for it (missed ticks, a catch-up, a skipped fire) or when the trigger's key is not its
        kind (the runs could not witness it). The stored cursor is at most one interval behind:
        a scheduler that takes a cursor over, or that sees another one at work, asks the runs
        what fired since before it calls a tick missed (:meth:`_plan`), and a job's dead man's
        switch waits at least twice the interval (``alert_after_s``/2 caps it).
        """
        if not _runs_witness(plan.trigger) or plan.stored is None or self.cursor_store_s <= 0:
            return True
        every = self.cursor_store_s
        if plan.job.alert_after_s:
            every = min(every, plan.job.alert_after_s / 2)
        phase = zlib.crc32(plan.job.name.encode()) % 1000 / 1000 * every
        def bucket(moment: datetime) -> int:
            return int((moment.timestamp() - phase) // every)
        return bucket(plan.cursor) != bucket(plan.stored)

    def _others_active(self, jobs: list[Job], now: datetime) -> bool:
        """Whether another scheduler moved a cursor lately (its ticks may be ahead of the stored cursors)."""
        recent = now - timedelta(seconds=2 * self.cursor_store_s + self.grace_s)
        for job in jobs:
            states = [job.scheduler_state, *((job.extra.get("trigger_state") or {}).values())]
            for state in states:
                if (isinstance(state, dict) and state.get("by") not in (None, self.name)
                        and isinstance(state.get("last_tick_at"), datetime)
                        and _utc_ms(state["last_tick_at"]) > recent):
                    return True
        return False

    def _witnessed(self, job: Job, trigger: TimeTrigger, cursor: datetime) -> datetime:
        """``cursor`` moved to the latest tick a run was fired for since (by any scheduler)."""
        if not _runs_witness(trigger):
            return cursor
        fired = self.store.reads.latest_fire(job.name, trigger.kind, after=cursor)
        return max(cursor, fired) if fired is not None else cursor

    def _on_skip(self, job: Job, trigger: TimeTrigger, moment: datetime, now: datetime) -> Callable[[Job], None]:
        return lambda _: self._skipped(job, trigger, moment, now, due=None)

    def expire_leases(self, now: datetime | None = None) -> list[Run]:
        """End running runs whose lease expired as ``lost`` (retried per their job's policy).

        Not for ``lease_s`` (plus the store's retry window) after this scheduler could not
        reach the database (a failed tick, or a connection failure the store's retries hid):
        leases that ran out during an outage belong to workers that could not renew them
        either, and those get one whole lease, once their own retries are through, to do so.
        """
        now = _utc_ms(now or self.clock.now())
        failures = self.store.connection_failures
        if self._outage_seen or failures != self._failures_seen:
            self._outage_seen, self._failures_seen = False, failures
            # A worker's heartbeat may still be inside the store's retries when the database is back.
            self._leases_resume_at = now + timedelta(seconds=self.settings.lease_s + self.store.retry_window_s)
            logger.warning("the database did not answer: no run is marked lost before %s UTC (workers renew "
                           "their leases meanwhile)", f"{self._leases_resume_at:%H:%M:%S}")
        if self._leases_resume_at is not None:
            if now < self._leases_resume_at:
                return []
            self._leases_resume_at = None
        # An outage during the listing (hidden by the store's retries) holds the checks too.
        lost = self.service.expire_leases(now, trusted=lambda: self.store.connection_failures == failures)
        if self.store.connection_failures != failures:
            self.database_unreachable()
        return lost

    def database_unreachable(self) -> None:
        """The database did not answer: once it does, lease checks wait a whole lease first."""
        self._outage_seen = True

    def _time_triggers(self, job: Job) -> list[TimeTrigger]:
        try:
            return self.triggers.time_triggers(job)
        except (SoonerError, ValueError) as exc:
            self._warn_once(job, None, str(exc))
            return []

    def _forget_removed(self, job: Job, triggers: list[TimeTrigger]) -> None:
        # A trigger the job no longer has must not keep its cursor: set again later, it
        # would count the time in between as missed. (Cron's cursor is cleared by
        # clear_trigger_states when the schedule is removed.)
        stored = job.extra.get("trigger_state") or {}
        removed = set(stored) - {trigger.key for trigger in triggers}
        if removed:
            self.store.jobs.forget_trigger_states(job.name, removed)

    def _plan(self, job: Job, trigger: TimeTrigger, now: datetime) -> _Plan:
        """What ``trigger`` has due: its on-time fire (queued with the tick's others), its missed ticks
        (handled here, one by one: rare), and where its cursor goes."""
        state = trigger.saved_state(job)
        identity = trigger.identity()
        if not state or any(state.get(k) != v for k, v in identity.items()) or not state.get("last_tick_at"):
            return _Plan(job, trigger, cursor=now, previous=state, since=now, save=True)
        stored = cursor = _utc_ms(state["last_tick_at"])
        handled = self._handled.get((job.name, trigger.key))
        remembered = handled[1] if handled is not None and handled[0] == identity else None
        if remembered is not None and remembered > cursor:
            cursor = remembered  # moved by this scheduler, not stored yet (_store_now)
        next_fire = self._next_after(job, trigger, cursor)
        if next_fire is None or next_fire > now:
            return _Plan(job, trigger, cursor=cursor)
        due = trigger.due(cursor, now, self.grace_s)
        if due is not None and due.missed_count and (remembered is None or self._shared()):
            # Taken over, or another scheduler fires too: the stored cursor may lag its cursor by one
            # store interval, and the runs say which ticks since then were fired.
            witnessed = self._witnessed(job, trigger, cursor)
            due = trigger.due(witnessed, now, self.grace_s) if witnessed > cursor else due
            cursor = witnessed
            self._handled[(job.name, trigger.key)] = (identity, cursor)  # not asked again next tick
        if due is None:
            return _Plan(job, trigger, cursor=cursor)
        caught_up = self._handle_missed(job, trigger, due, now) if due.missed_count else None
        return _Plan(job, trigger, cursor=due.latest, previous=state, since=state.get("since") or now, save=True,
                     advance=True, on_time=due.on_time, caught_up=caught_up, stored=stored,
                     recorded=bool(due.missed_count))

    def _handle_missed(self, job: Job, trigger: TimeTrigger, due: DueTicks, now: datetime) -> Run | None:
        assert due.missed_latest is not None
        count = f"{'more than ' if due.missed_capped else ''}{due.missed_count}"
        if job.missed is not Missed.CATCH_UP_ONCE:
            self._missed_notes.append((job.name, count, missed_span(due), job.missed.value))
            self._record(job, trigger, MissReason.SCHEDULER_DOWN, due.missed_latest, now, due=due)
            return None
        logger.warning("job %s: %s tick(s) missed (%s); firing one catch-up run", job.name, count, missed_span(due))
        run = self._queue(job, trigger, trigger.cause(due.missed_latest, missed=due), due.missed_latest, now, due=due)
        if run is not None:
            self._record(job, trigger, MissReason.CAUGHT_UP, due.missed_latest, now, due=due, run=run.id)
        return run

    def _queue(self, job: Job, trigger: TimeTrigger, cause: Trigger, moment: datetime, now: datetime, *,
               due: DueTicks | None = None) -> Run | None:
        """Queue the run of ``moment`` (of the missed ticks in ``due`` for a catch-up run); a fire dropped by
        overlap=skip is recorded. None too when another scheduler fired it first (and recorded what it did)."""
        run = self.service.queue(job, replace(cause, source=self.name), overlap_check=True,
                                 on_skip=lambda _: self._skipped(job, trigger, moment, now, due=due))
        if run is not None:
            logger.info("fired %s for %s: run %s", job.name, moment, run.id)
        return run

    def _skipped(self, job: Job, trigger: TimeTrigger, moment: datetime, now: datetime, *,
                 due: DueTicks | None) -> None:
        """overlap=skip dropped the fire of ``moment``: recorded with the tick's other records, unless the
        active run is that tick's own (another scheduler fired it a moment ago)."""
        self._skips.append((job, trigger, moment, now, due))

    def _record(self, job: Job, trigger: TimeTrigger, reason: MissReason, latest: datetime, now: datetime, *,
                due: DueTicks | None = None, run: str | None = None) -> None:
        """Record ticks that got no run of their own: ``latest`` alone, or the missed ones of ``due``
        (written with the tick's other records)."""
        first = due.missed_first if due is not None and due.missed_first is not None else latest
        self._records.append(MissedTick.of(
            job.name, reason, first, latest, count=due.missed_count if due is not None else 1,
            capped=due.missed_capped if due is not None else False, trigger_kind=trigger.kind,
            trigger_key=trigger.key, recorded_at=now, run=run))

    def _state(self, trigger: TimeTrigger, cursor: datetime, since: datetime) -> dict[str, Any]:
        return {**trigger.identity(), "last_tick_at": cursor, "since": since, "by": self.name}

    def _next_after(self, job: Job, trigger: TimeTrigger, cursor: datetime) -> datetime | None:
        """The first fire after the trigger's cursor (cached until the cursor or the trigger changes)."""
        identity = trigger.identity()
        cached = self._upcoming.get((job.name, trigger.key))
        if cached and cached[0] == identity and cached[1] == cursor:
            return cached[2]
        fire = trigger.next_after(cursor)
        next_fire = _utc_ms(fire) if fire else None
        self._upcoming[(job.name, trigger.key)] = (identity, cursor, next_fire)
        return next_fire

    def _warn_once(self, job: Job, trigger: TimeTrigger | None, message: str) -> None:
        key = (job.name, repr(trigger.identity()) if trigger else "")
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("job %s: not scheduled: %s", job.name, message)

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
                if isinstance(exc, StoreUnreachable):
                    self.database_unreachable()
                failures += 1
                wait = min(BACKOFF_MAX_S, self.interval_s * 2 ** failures)
                if isinstance(exc, SoonerError):
                    logger.error("tick failed: %s (retrying in %.1fs)", exc, wait)
                else:
                    logger.exception("tick failed (retrying in %.1fs)", wait)
            stop_event.wait(wait)
        # Not while the ticks fail (the database is away): the stop would wait out the store's
        # retries, and the next scheduler asks the runs instead.
        if failures == 0:
            try:
                self.store_cursors()
            except SoonerError as exc:
                logger.warning("could not store the trigger cursors on the way out: %s", exc)
        logger.info("scheduler %s stopped", self.name)

    def store_cursors(self) -> int:
        """Store every cursor this scheduler moved and only remembers (a stop that is not a crash), so the
        next scheduler starts from them instead of asking the runs. Returns how many moved."""
        return self._advance(list(self._handled.items()))

    def _advance(self, moves: list[tuple[tuple[str, str], tuple[dict[str, Any], datetime]]]) -> int:
        """Move these ((job, trigger key), (identity, cursor)) stored cursors forward: one update for all
        that move to the same cursor under the same trigger settings (a tick's fires share their tick)."""
        groups: dict[tuple[str, str, datetime], tuple[dict[str, Any], list[str]]] = {}
        for (name, key), (identity, cursor) in moves:
            groups.setdefault((key, repr(identity), cursor), (identity, []))[1].append(name)
        return sum(self.store.jobs.advance_trigger_cursors(key, identity, names, cursor, by=self.name)
                   for (key, _, cursor), (identity, names) in groups.items())


@dataclass
class _Plan:
    """One time trigger of one job in a tick: its cursor after the tick, and what it fires."""

    job: Job
    trigger: TimeTrigger
    cursor: datetime
    previous: Any = None  # the stored state the cursor moves from (compare-and-set)
    since: datetime | None = None
    save: bool = False  # the cursor moves
    advance: bool = False  # ... forward from a stored state of the same settings (not a new or reset state)
    on_time: tuple[datetime, ...] = ()  # the ticks that fire now, oldest first
    caught_up: Run | None = None  # the catch-up run queued for missed ticks
    stored: datetime | None = None  # the cursor as stored (this scheduler may be ahead of it)
    recorded: bool = False  # missed ticks were recorded or caught up: the cursor is stored at once


def _runs_witness(trigger: TimeTrigger) -> bool:
    """Whether the runs tell which ticks of ``trigger`` fired: they carry its kind (``fire_kind``), not its key."""
    return trigger.key == trigger.kind


def _utc_ms(moment: datetime) -> datetime:
    """Aware UTC with millisecond precision, as BSON stores it (so stored and computed times compare equal)."""
    if moment.tzinfo is None:
        raise ValueError(f"the scheduler needs timezone-aware times, got naive {moment!r}")
    return to_ms(moment)
