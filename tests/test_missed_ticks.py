"""Missed ticks are recorded: a scheduler downtime as one collapsed record, overlap skips, catch-up runs.

The scheduler is driven with a FakeClock (``Scheduler.tick``); records must
not double when two schedulers see the same ticks, on mongomock and on the
embedded server with two clients.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from sooner.clock import FakeClock
from sooner.config import Settings, load_settings
from sooner.model import CronTrigger, Job, Run, RunStatus
from sooner.model.missed import MissedTick, MissReason, missed_tick_id
from sooner.scheduling.scheduler import Scheduler
from sooner.store import open_store
from sooner.store.missed import RETENTION

UTC = timezone.utc


def at(hour: int, minute: int = 0, second: int = 0, day: int = 5) -> datetime:
    return datetime(2026, 1, day, hour, minute, second, tzinfo=UTC)


def make_job(store, name: str = "tick.sh", schedule: str = "*/5 * * * *", **settings) -> Job:
    store.jobs.record_deployed(name, commit="c1", blob=f"blob-{name}")
    store.jobs.set_enabled(name, True)
    return store.jobs.update_settings(name, {"schedule": schedule, **settings})


def drive(scheduler: Scheduler, clock: FakeClock, until: datetime, step: float = 30) -> list[Run]:
    fired = []
    while clock.now() <= until:
        fired += scheduler.tick()
        clock.advance(step)
    return fired


@pytest.fixture
def store(clocked_store):
    return clocked_store


@pytest.fixture
def clock(fake_clock) -> FakeClock:
    assert fake_clock.now() == at(12)
    return fake_clock


def down_for_three_hours(store, clock, **settings) -> tuple[Scheduler, list[Run]]:
    """A scheduler fires 12:05 and 12:10, then none runs until 15:10:30; returns the new one and what it fired."""
    make_job(store, overlap="allow", **settings)
    assert len(drive(Scheduler(store, Settings(), clock, name="before"), clock, at(12, 10))) == 2
    clock.set(at(15, 10, 30))
    after = Scheduler(store, Settings(), clock, name="after")
    return after, after.tick()


# -- the scheduler was down ------------------------------------------------------------------------
def test_three_hours_without_a_scheduler_are_one_record_with_count_and_span(store, clock):
    _, fired = down_for_three_hours(store, clock)

    assert fired == []  # missed=skip
    [miss] = store.missed.list("tick.sh")
    # 12:15 … 15:10 (15:10 itself is 30 s late: past the 5 s grace, so missed too)
    assert (miss.reason, miss.first, miss.scheduled_for, miss.count) == (
        MissReason.SCHEDULER_DOWN, at(12, 15), at(15, 10), 36)
    assert (miss.trigger_kind, miss.trigger_key, miss.recorded_at, miss.run, miss.capped) == (
        "cron", "cron", at(15, 10, 30), None, False)
    assert "36 ticks, 2026-01-05 12:15:00 UTC to 2026-01-05 15:10:00 UTC: no scheduler was running" == miss.describe()


def test_a_month_of_downtime_is_one_record_counted_up_to_the_limit(store, clock):
    make_job(store, schedule="* * * * *")
    Scheduler(store, Settings(), clock).tick()
    assert Scheduler(store, Settings(), clock).tick(at(12) + timedelta(days=30, seconds=30)) == []

    [miss] = store.missed.list()
    assert miss.capped and miss.count == 1000
    assert miss.first == at(12, 1) and miss.scheduled_for == at(12) + timedelta(days=30)


def test_ticks_after_the_restart_fire_and_record_nothing(store, clock):
    after, _ = down_for_three_hours(store, clock)
    assert [r.trigger.scheduled_for for r in drive(after, clock, at(15, 20))] == [at(15, 15), at(15, 20)]
    assert len(store.missed.list()) == 1


def test_the_same_ticks_seen_by_two_schedulers_are_recorded_once(store, clock, monkeypatch):
    make_job(store, overlap="allow")
    drive(Scheduler(store, Settings(), clock, name="s0"), clock, at(12, 10))
    clock.set(at(15, 10, 30))
    # Both schedulers read the job (and its cursor) before either moved the cursor on.
    seen_by_both = store.jobs.schedulable()
    first, second = Scheduler(store, Settings(), clock, name="s1"), Scheduler(store, Settings(), clock, name="s2")
    first.tick()
    monkeypatch.setattr(store.jobs, "schedulable", lambda: seen_by_both)
    second.tick()

    [miss] = store.missed.list()
    assert (miss.count, miss.first, miss.scheduled_for) == (36, at(12, 15), at(15, 10))


def test_two_schedulers_with_their_own_clients_record_each_missed_tick_once(embedded_store, embedded_site):
    make_job(embedded_store, "a.sh", schedule="* * * * *", overlap="allow")
    make_job(embedded_store, "b.sh", schedule="*/2 * * * *", overlap="skip")
    settings = load_settings(embedded_site / "config.json", environ={},
                             overrides={"database": embedded_store.database_name})
    stores = [open_store(settings) for _ in range(2)]
    moments = [at(12) + timedelta(seconds=20 * i) for i in range(10)]
    moments += [at(15) + timedelta(seconds=20 * i) for i in range(10)]  # both come back after three hours
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            scheduler = Scheduler(stores[index], settings, FakeClock(at(12)), name=f"s{index}")
            for moment in moments:
                barrier.wait(timeout=30)
                scheduler.tick(moment)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for other in stores:
            other.close()
    assert not errors

    records = embedded_store.missed.list()
    covered = [(m.job, m.first, m.scheduled_for) for m in records if m.reason is MissReason.SCHEDULER_DOWN]
    assert sorted(job for job, _, _ in covered) == ["a.sh", "b.sh"]
    # 15:00 itself is on time (and fires): the downtime is 12:04 … 14:59 (a.sh), 12:04 … 14:58 (b.sh).
    assert {job: (first, last) for job, first, last in covered} == {
        "a.sh": (at(12, 4), at(14, 59)), "b.sh": (at(12, 4), at(14, 58))}
    # b.sh's 12:02 run stays queued (no worker): overlap=skip drops 15:00 and 15:02, each recorded once.
    skips = [(m.job, m.scheduled_for, m.count) for m in records if m.reason is MissReason.OVERLAP_SKIP]
    assert sorted(skips) == [("b.sh", at(15), 1), ("b.sh", at(15, 2), 1)]
    assert len(records) == 4


# -- overlap=skip ---------------------------------------------------------------------------
def test_a_tick_dropped_by_overlap_skip_is_recorded(store, clock):
    make_job(store, overlap="skip")
    scheduler = Scheduler(store, Settings(), clock)
    fired = drive(scheduler, clock, at(12, 10))

    assert [r.trigger.scheduled_for for r in fired] == [at(12, 5)]  # 12:05 is still queued at 12:10
    [miss] = store.missed.list()
    assert (miss.reason, miss.first, miss.scheduled_for, miss.count) == (MissReason.OVERLAP_SKIP, at(12, 10),
                                                                         at(12, 10), 1)
    assert miss.recorded_at == at(12, 10)


def test_a_tick_another_scheduler_fired_is_not_recorded_as_an_overlap_skip(store, clock, monkeypatch):
    make_job(store, overlap="skip")
    Scheduler(store, Settings(), clock, name="s0").tick()
    clock.set(at(12, 5))
    seen_by_both = store.jobs.schedulable()
    Scheduler(store, Settings(), clock, name="s1").tick()
    monkeypatch.setattr(store.jobs, "schedulable", lambda: seen_by_both)
    # s2 sees s1's run of 12:05 active: overlap=skip drops its fire, but that tick did run.
    assert Scheduler(store, Settings(), clock, name="s2").tick() == []
    assert store.missed.list() == []
    assert len(store.runs.list()) == 1


def test_run_service_tells_its_caller_why_it_started_nothing(store, service, clock):
    job = make_job(store, schedule=None, overlap="skip")
    service.queue(job, CronTrigger(scheduled_for=at(12)), overlap_check=True)
    skipped: list[Job] = []

    assert service.queue(job, CronTrigger(scheduled_for=at(12, 5)), overlap_check=True, on_skip=skipped.append) is None
    assert [j.name for j in skipped] == ["tick.sh"]
    # A tick fired already is None too, but not a skip.
    allow = store.jobs.update_settings("tick.sh", {"overlap": "allow"})
    assert service.queue(allow, CronTrigger(scheduled_for=at(12)), overlap_check=True, on_skip=skipped.append) is None
    assert len(skipped) == 1


# -- missed=catch_up_once -----------------------------------------------------------------------
def test_ticks_folded_into_a_catch_up_run_are_recorded_with_that_run(store, clock):
    _, fired = down_for_three_hours(store, clock, missed="catch_up_once")

    [catch_up] = fired
    [miss] = store.missed.list()
    assert (miss.reason, miss.first, miss.scheduled_for, miss.count, miss.run) == (
        MissReason.CAUGHT_UP, at(12, 15), at(15, 10), 36, catch_up.id)
    assert catch_up.trigger.scheduled_for == at(15, 10)


def test_a_catch_up_run_dropped_by_overlap_skip_records_its_ticks_as_skipped(store, clock):
    make_job(store, overlap="skip", missed="catch_up_once")
    drive(Scheduler(store, Settings(), clock), clock, at(12, 5))  # 12:05 is queued and stays so
    clock.set(at(13, 0, 30))
    assert Scheduler(store, Settings(), clock).tick() == []

    [miss] = store.missed.list()
    assert (miss.reason, miss.first, miss.scheduled_for, miss.count) == (MissReason.OVERLAP_SKIP, at(12, 10),
                                                                         at(13), 11)


# -- the store ------------------------------------------------------------------------------------
def test_recording_is_idempotent_and_keeps_the_first_record(any_store):
    miss = MissedTick.of("a.sh", MissReason.SCHEDULER_DOWN, at(9), at(11), count=3, recorded_at=at(11, 1))
    assert miss.id == missed_tick_id("a.sh", "cron", at(11))

    assert any_store.missed.record(miss) is True
    # The same ticks as another scheduler saw them a moment later:
    assert any_store.missed.record(MissedTick.of("a.sh", MissReason.SCHEDULER_DOWN, at(9), at(11), count=3,
                                                 recorded_at=at(11, 2))) is False
    [stored] = any_store.missed.list()
    assert stored == miss
    # and in a batch (a tick's records at once) the existing one stays as it was, the new one is added
    other = MissedTick.of("b.sh", MissReason.OVERLAP_SKIP, at(11))
    any_store.missed.record_many([MissedTick.of("a.sh", MissReason.SCHEDULER_DOWN, at(9), at(11), count=3,
                                                recorded_at=at(11, 3)), other])
    assert any_store.missed.list("a.sh") == [miss]
    [added] = any_store.missed.list("b.sh")
    assert (added.reason, added.scheduled_for) == (MissReason.OVERLAP_SKIP, at(11))
    assert added.recorded_at is not None and added.recorded_at <= any_store.clock.now()  # the store's clock


def test_a_jobs_records_page_newest_first(any_store):
    for hour in range(1, 8):
        any_store.missed.record(MissedTick.of("a.sh", MissReason.OVERLAP_SKIP, at(hour), recorded_at=at(hour)))
    any_store.missed.record(MissedTick.of("b.sh", MissReason.OVERLAP_SKIP, at(5), recorded_at=at(5)))

    first = any_store.missed.page("a.sh", limit=3)
    assert [m.scheduled_for for m in first.items] == [at(7), at(6), at(5)] and first.more
    second = any_store.missed.page("a.sh", before=first.next_before, limit=3)
    assert [m.scheduled_for for m in second.items] == [at(4), at(3), at(2)] and second.more
    last = any_store.missed.page("a.sh", before=second.next_before, limit=3)
    assert [m.scheduled_for for m in last.items] == [at(1)] and not last.more and last.next_before is None


def test_records_are_found_by_the_tick_they_end_at(any_store):
    any_store.missed.record(MissedTick.of("a.sh", MissReason.SCHEDULER_DOWN, at(9), at(11), count=3))
    any_store.missed.record(MissedTick.of("b.sh", MissReason.OVERLAP_SKIP, at(11)))

    found = any_store.missed.at_ticks([("a.sh", at(11)), ("b.sh", at(11)), ("a.sh", at(9)), ("c.sh", at(11))])
    assert sorted(found) == [("a.sh", at(11)), ("b.sh", at(11))]
    assert found[("a.sh", at(11))].count == 3
    assert any_store.missed.at_ticks([("a.sh", at(11))], "interval") == {}


def test_runs_of_ticks_no_worker_took_are_found_by_status(any_store):
    from sooner.runs.service import RunService

    for name in ("a.sh", "b.sh", "c.sh"):
        any_store.jobs.record_deployed(name, commit="c", blob=name)
    service = RunService(any_store)
    queued = service.queue("a.sh", CronTrigger(scheduled_for=at(10)))
    waiting = service.queue(any_store.jobs.update_settings("b.sh", {"overlap": "queue"}),
                            CronTrigger(scheduled_for=at(10)), overlap_check=True)
    service.queue("c.sh", CronTrigger(scheduled_for=at(10)))
    service.claim("w1", [], lease_s=30)  # takes a.sh's (the oldest)
    service.queue("b.sh", CronTrigger(scheduled_for=at(11)))
    from sooner.model import ManualTrigger

    service.queue("c.sh", ManualTrigger())

    unstarted = any_store.reads.unstarted_tick_runs("cron")
    assert sorted(unstarted) == [("b.sh", at(10)), ("b.sh", at(11)), ("c.sh", at(10))]
    assert unstarted[("b.sh", at(10))].status is RunStatus.QUEUED  # released: nothing of b.sh was busy
    assert any_store.reads.unstarted_tick_runs("interval") == {}
    found = any_store.reads.tick_runs([("a.sh", at(10), "cron"), ("b.sh", at(10), "cron"), ("a.sh", at(11), "cron")])
    assert found[("a.sh", at(10), "cron")].id == queued.id
    assert found[("b.sh", at(10), "cron")].id == waiting.id
    assert ("a.sh", at(11), "cron") not in found


def test_old_records_are_pruned_at_most_hourly(store, clock):
    make_job(store, overlap="skip")
    scheduler = Scheduler(store, Settings(), clock)
    drive(scheduler, clock, at(12, 10))
    assert len(store.missed.list()) == 1

    clock.set(at(12, 10) + RETENTION + timedelta(minutes=1))
    store.jobs.set_enabled("tick.sh", False)  # nothing new to record
    scheduler.tick()
    assert store.missed.list() == []
    store.missed.record(MissedTick.of("tick.sh", MissReason.OVERLAP_SKIP, at(9), recorded_at=at(9)))
    scheduler.tick(clock.now() + timedelta(minutes=5))  # within the hour: not pruned again yet
    assert len(store.missed.list()) == 1
    scheduler.tick(clock.now() + timedelta(hours=1))
    assert store.missed.list() == []
