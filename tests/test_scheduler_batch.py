"""A tick fires all its jobs in one batch: few round trips whatever the number of jobs, same answers as one by one.

Round trips are counted with a PyMongo command listener on the embedded server
(a real wire protocol); the race cases run on mongomock and the embedded server.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from pymongo import monitoring

from sooner.clock import FakeClock
from sooner.config import Settings
from sooner.model import ManualTrigger, RunStatus, Trigger
from sooner.model.trigger import trigger_kind
from sooner.scheduling.triggers import GRACE_S, TRIGGERS, DueTicks, TimeTrigger, TriggerRegistry
from sooner.model.missed import MissReason
from sooner.runs.service import RunService
from sooner.scheduling.scheduler import Scheduler
from sooner.store import Store

UTC = timezone.utc
START = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)


def make_jobs(store, count: int, prefix: str = "every", **settings) -> list[str]:
    names = [f"{prefix}/{i:03d}.sh" for i in range(count)]
    for name in names:
        store.jobs.record_deployed(name, commit="c1", blob=f"blob-{name}")
        store.jobs.set_enabled(name, True)
        store.jobs.update_settings(name, {"schedule": "* * * * * *", **settings})
    return names


class Commands(monitoring.CommandListener):
    """Counts the commands one thread sends while ``on``."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.thread: threading.Thread | None = None

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if threading.current_thread() is self.thread:
            self.counts[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def counted(embedded_store):
    """A second client on the embedded store's database, whose commands a listener counts while ``thread`` is set."""
    listener = Commands()
    monitoring.register(listener)  # for clients created from now on
    store = Store(embedded_store.url, embedded_store.database_name)
    yield store, listener
    listener.thread = None
    store.close()


def _jobs_on_a_fresh_scheduler(store: Store, count: int, prefix: str, **settings) -> tuple[list[str], FakeClock,
                                                                                         Scheduler]:
    """``count`` new every-second jobs (the earlier ones disabled) and a scheduler that took their cursors."""
    for job in store.jobs.list():
        store.jobs.set_enabled(job.name, False)
    names = make_jobs(store, count, prefix=prefix, **settings)
    clock = FakeClock(START + timedelta(hours=count))
    scheduler = Scheduler(store, Settings(), clock, cursor_store_s=0)  # every cursor stored each tick
    scheduler.metrics.every_s = float("inf")  # publishes with the first tick only, not a counted one
    scheduler.tick()  # takes the cursors
    return names, clock, scheduler


def _counted_tick(listener: Commands, scheduler: Scheduler) -> tuple[list, int]:
    listener.counts.clear()
    listener.thread = threading.current_thread()
    try:
        fired = scheduler.tick()
    finally:
        listener.thread = None
    return fired, sum(listener.counts.values())


def test_a_tick_of_many_fires_costs_the_same_few_round_trips_as_a_tick_of_a_few(counted):
    store, listener = counted
    per_tick = {}
    for count in (5, 40):
        _, clock, scheduler = _jobs_on_a_fresh_scheduler(store, count, f"round{count}")
        clock.advance(1)
        fired, per_tick[count] = _counted_tick(listener, scheduler)
        assert len(fired) == count
    # Eight times the jobs: the same round trips (a bulk insert, one cursor write, a few reads).
    assert per_tick[40] == per_tick[5], per_tick
    assert per_tick[40] <= 12, listener.counts


@pytest.mark.parametrize("setting", [{"overlap": "allow"}, {"overlap": "skip"}], ids=["missed", "overlap-skip"])
def test_a_late_tick_records_every_jobs_missed_or_skipped_ticks_in_the_same_few_round_trips(counted, setting):
    # A tick that runs late finds a missed tick on every job (and with overlap=skip, every fire dropped):
    # recording them one round trip each made the next tick later still, until most ticks were missed.
    store, listener = counted
    per_tick = {}
    skip = setting["overlap"] == "skip"
    for count in (5, 40):
        names, clock, scheduler = _jobs_on_a_fresh_scheduler(store, count, f"late{count}", **setting)
        clock.advance(1)
        scheduler.tick()  # fires every job (with overlap=skip, each run is still queued after it)
        clock.advance(GRACE_S + 2)  # the oldest tick in between is later than the grace: missed
        fired, per_tick[count] = _counted_tick(listener, scheduler)
        assert len(fired) == (0 if skip else count * (int(GRACE_S) + 1))  # the others fire, late
        records = {(m.job, m.reason) for m in store.missed.list() if m.job in names}
        expected = {(name, MissReason.SCHEDULER_DOWN) for name in names}
        if skip:
            expected |= {(name, MissReason.OVERLAP_SKIP) for name in names}
        assert records == expected
    assert per_tick[40] == per_tick[5], per_tick


@pytest.mark.parametrize("kind", ["mock", "embedded"])
def test_two_schedulers_on_one_tick_make_one_run_per_job_with_distinct_numbers(kind, request):
    store = request.getfixturevalue(f"{kind}_store")
    names = make_jobs(store, 12, overlap="allow")
    clocks = [FakeClock(START), FakeClock(START)]
    schedulers = [Scheduler(store, Settings(), clock, name=f"s{i}") for i, clock in enumerate(clocks)]
    for scheduler in schedulers:
        scheduler.tick()
    for clock in clocks:
        clock.advance(1)
    barrier = threading.Barrier(2)
    fired: list[list] = [[], []]

    def tick(i: int) -> None:
        barrier.wait()
        fired[i] = schedulers[i].tick()

    threads = [threading.Thread(target=tick, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    runs = store.runs.list(limit=1000)
    assert sorted(run.job for run in runs) == sorted(names)
    assert len(fired[0]) + len(fired[1]) == len(names)
    for name in names:
        numbers = [run.number for run in runs if run.job == name]
        assert len(numbers) == 1 and numbers[0] is not None


def test_numbers_taken_by_someone_else_between_read_and_write_are_never_given_twice(mock_store, monkeypatch):
    service = RunService(mock_store, Settings())
    names = make_jobs(mock_store, 3, overlap="allow")
    for name in names:
        service.queue(name, ManualTrigger())  # every counter at 1
    from sooner.store import counters

    real = counters.bulk_write

    def interleaved(store, collection, operations):
        # A manual run of the first job takes a number after the tick read the counters.
        service.queue(names[0], ManualTrigger())
        return real(store, collection, operations)

    monkeypatch.setattr(counters, "bulk_write", interleaved)
    clock = FakeClock(START)
    scheduler = Scheduler(mock_store, Settings(), clock)
    scheduler.tick()
    clock.advance(1)
    fired = scheduler.tick()
    monkeypatch.setattr(counters, "bulk_write", real)
    assert len(fired) == 3
    for name in names:
        numbers = sorted(run.number for run in mock_store.runs.list(job=name, limit=100))
        assert len(numbers) == len(set(numbers))
        assert numbers == list(range(1, len(numbers) + 1))  # the loser takes the next free numbers
    assert len(mock_store.runs.list(job=names[0], limit=100)) == 3


def test_a_fired_run_records_when_it_was_inserted_not_when_the_tick_began(mock_store):
    make_jobs(mock_store, 3)

    class Slow(FakeClock):
        """Each reading of the clock is 50 ms after the previous one, as if the tick took time."""

        def now(self) -> datetime:
            self.advance(0.05)
            return super().now()

    clock = Slow(START)
    scheduler = Scheduler(mock_store, Settings(), clock)
    scheduler.tick()
    clock.set(START + timedelta(seconds=1))
    fired = scheduler.tick()
    assert fired
    for run in fired:
        stored = mock_store.runs.get(run.id)
        assert stored.queued_at > stored.trigger.scheduled_for
        assert stored.not_before == stored.queued_at


def test_fired_runs_are_stamped_after_their_numbers_are_taken(mock_store, monkeypatch):
    # given taking a tick's run numbers takes 2 s (two round trips on a busy database)
    make_jobs(mock_store, 3)
    clock = FakeClock(START)
    scheduler = Scheduler(mock_store, Settings(), clock)
    scheduler.tick()
    take = mock_store.counters.take_run_numbers

    def slow(wanted):
        clock.advance(2)
        return take(wanted)
    monkeypatch.setattr(mock_store.counters, "take_run_numbers", slow)
    # when the next tick fires
    clock.set(START + timedelta(seconds=1))
    fired = scheduler.tick()
    # then each run's queued_at is its insert, after the numbers: what the lateness figure measures
    assert fired
    for run in fired:
        stored = mock_store.runs.get(run.id)
        assert stored.queued_at == stored.not_before == START + timedelta(seconds=3), stored


@dataclass(frozen=True)
class EverySecondToo(TimeTrigger):
    """A second time trigger of every scheduled job, firing every second as its cron schedule does."""

    kind: ClassVar[str] = "also"

    @classmethod
    def for_job(cls, job) -> list:
        return [cls()] if job.schedule else []

    def identity(self) -> dict[str, Any]:
        return {"also": 1}

    def next_after(self, moment: datetime) -> datetime | None:
        return moment + timedelta(seconds=1)

    def due(self, cursor: datetime, now: datetime, grace_s: float = 5.0) -> DueTicks | None:
        if now < cursor + timedelta(seconds=1):
            return None
        return DueTicks(latest=now, on_time=(now,), missed_count=0, missed_capped=False, missed_first=None,
                        missed_latest=None)

    def cause(self, moment: datetime, *, missed: DueTicks | None = None) -> Trigger:
        return AlsoTrigger(scheduled_for=moment)


@trigger_kind
@dataclass(frozen=True)
class AlsoTrigger(Trigger):
    type: ClassVar[str] = "also"
    scheduled_for: datetime | None = None


TWO_TRIGGERS = TriggerRegistry([*TRIGGERS, EverySecondToo])


def fire_both(store, name: str) -> list:
    clock = FakeClock(START)
    scheduler = Scheduler(store, Settings(), clock, triggers=TWO_TRIGGERS)
    scheduler.tick()
    clock.advance(1)
    return scheduler.tick()


def test_two_triggers_of_one_skip_job_firing_together_make_one_run_and_a_skip_record(mock_store):
    (name,) = make_jobs(mock_store, 1, overlap="skip")
    assert len(fire_both(mock_store, name)) == 1
    assert [t.reason for t in mock_store.missed.list(name)] == [MissReason.OVERLAP_SKIP]


def test_two_triggers_of_one_queue_job_firing_together_queue_one_and_the_other_waits_for_it(mock_store):
    (name,) = make_jobs(mock_store, 1, overlap="queue")
    first, second = sorted(fire_both(mock_store, name), key=lambda run: run.status is RunStatus.WAITING)
    assert (first.status, second.status) == (RunStatus.QUEUED, RunStatus.WAITING)
    service = RunService(mock_store, Settings())
    service.take(first.id, "w", 30)
    service.finish(first.id, RunStatus.SUCCEEDED, exit_code=0)
    assert mock_store.runs.get(second.id).status is RunStatus.QUEUED


def test_an_overlap_queue_job_firing_behind_its_running_run_waits(mock_store):
    (name,) = make_jobs(mock_store, 1, overlap="queue")
    service = RunService(mock_store, Settings())
    running = service.queue(name, ManualTrigger())
    assert running is not None
    clock = FakeClock(START)
    scheduler = Scheduler(mock_store, Settings(), clock)
    scheduler.tick()
    clock.advance(1)
    (fired,) = scheduler.tick()
    assert mock_store.runs.get(fired.id).status is RunStatus.WAITING


def test_a_waiting_run_is_released_by_whichever_run_it_ends_up_behind(mock_store):
    (name,) = make_jobs(mock_store, 1, overlap="queue")
    service = RunService(mock_store, Settings())
    running = service.queue(name, ManualTrigger(), overlap_check=True)
    service.take(running.id, "w", 30)
    waiting = service.queue(name, ManualTrigger(), overlap_check=True)
    assert waiting.status is RunStatus.WAITING
    manual = service.queue(name, ManualTrigger())  # no overlap check: queued beside the running one
    service.finish(running.id, RunStatus.SUCCEEDED, exit_code=0)
    assert mock_store.runs.get(waiting.id).status is RunStatus.WAITING  # still behind the manual run
    service.take(manual.id, "w", 30)
    service.finish(manual.id, RunStatus.FAILED, exit_code=1)
    assert mock_store.runs.get(waiting.id).status is RunStatus.QUEUED
