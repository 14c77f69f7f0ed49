"""The scheduler: cron ticks become runs exactly once, with the missed-tick and overlap policies.

Tests drive ``Scheduler.tick`` with a FakeClock and never sleep; only the
multi-process test runs real `sooner scheduler` processes on the wall clock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from conftest import wait_for
from sooner.clock import FakeClock
from sooner.config import Settings, load_settings
from sooner.model import Job, ManualTrigger, Run, RunStatus
from sooner.scheduling.scheduler import Scheduler
from sooner.scheduling.triggers import GRACE_S, due_ticks
from sooner.store import open_store

UTC = timezone.utc


def at(hour: int, minute: int = 0, second: int = 0, day: int = 5, month: int = 1) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


def make_job(store, name: str = "tick.sh", schedule: str | None = "*/5 * * * *", *, enabled: bool = True,
             **settings) -> Job:
    store.jobs.record_deployed(name, commit="c1", blob=f"blob-{name}")
    if enabled:
        store.jobs.set_enabled(name, True)
    return store.jobs.update_settings(name, {"schedule": schedule, **settings})


def ticks(runs: list[Run]) -> list[datetime]:
    return [run.trigger.scheduled_for for run in runs]


def drive(scheduler: Scheduler, clock: FakeClock, until: datetime, step=timedelta(seconds=30)) -> list[Run]:
    """Tick every ``step`` up to and including ``until``; return every run fired."""
    fired = []
    while clock.now() <= until:
        fired += scheduler.tick()
        clock.advance(step.total_seconds())
    return fired


@pytest.fixture
def clock(fake_clock: FakeClock) -> FakeClock:
    """The test's one clock, at 2026-01-05 12:00 UTC; ``store`` records its time too."""
    assert fake_clock.now() == at(12)
    return fake_clock


@pytest.fixture
def store(clocked_store):
    """A mongomock store on ``clock``."""
    return clocked_store


def test_scheduler_fires_each_tick_once_and_only_from_when_it_started(store, clock):
    make_job(store, overlap="allow")
    scheduler = Scheduler(store, Settings(), clock)

    fired = drive(scheduler, clock, at(12, 16))

    # 12:00 itself is not fired: the schedule is tracked from the first tick on, strictly after it.
    assert ticks(fired) == [at(12, 5), at(12, 10), at(12, 15)]
    assert all(run.trigger.kind == "cron" and run.status == "queued" for run in fired)
    assert scheduler.tick(at(12, 16)) == []
    assert ticks(store.runs.list()) == [at(12, 15), at(12, 10), at(12, 5)]


def test_scheduler_fires_in_the_jobs_timezone(store, clock):
    make_job(store, schedule="30 2 * * *", timezone="Europe/Berlin", overlap="allow")
    clock.set(at(0))
    scheduler = Scheduler(store, Settings(), clock)
    scheduler.tick()

    assert scheduler.tick(at(1, 29, 59)) == []
    assert ticks(scheduler.tick(at(1, 30))) == [at(1, 30)]  # 02:30 CET is 01:30 UTC
    assert scheduler.next_due == at(1, 30, day=6)


def test_a_time_skipped_by_spring_forward_fires_right_after_the_change(store, clock):
    make_job(store, schedule="30 2 * * *", timezone="Europe/Berlin")
    clock.set(at(0, day=29, month=3))
    scheduler = Scheduler(store, Settings(), clock)
    scheduler.tick()

    assert scheduler.tick(at(0, 59, 59, day=29, month=3)) == []
    # 02:30 does not exist on 2026-03-29 in Berlin; 03:00 CEST = 01:00 UTC fires instead.
    assert ticks(scheduler.tick(at(1, 0, 1, day=29, month=3))) == [at(1, day=29, month=3)]


def test_a_disabled_job_never_fires(store, clock):
    make_job(store, enabled=False, overlap="allow")
    scheduler = Scheduler(store, Settings(), clock)

    assert drive(scheduler, clock, at(12, 30)) == []
    assert store.runs.list() == []


def test_enabling_a_job_takes_effect_on_the_next_tick_and_starts_from_then(store, clock):
    make_job(store, enabled=False, missed="catch_up_once")
    scheduler = Scheduler(store, Settings(), clock)
    drive(scheduler, clock, at(12, 7))

    store.jobs.set_enabled("tick.sh", True)
    assert scheduler.tick(at(12, 7, 30)) == []  # nothing before the moment it was enabled, not even catch-up
    assert ticks(scheduler.tick(at(12, 10))) == [at(12, 10)]


def test_a_job_enabled_again_after_hours_does_not_count_the_disabled_time_as_missed(store, clock):
    make_job(store, missed="catch_up_once", overlap="allow")
    scheduler = Scheduler(store, Settings(), clock)
    assert ticks(drive(scheduler, clock, at(12, 5))) == [at(12, 5)]

    store.jobs.set_enabled("tick.sh", False)
    scheduler.tick(at(12, 6))
    store.jobs.set_enabled("tick.sh", True)
    assert scheduler.tick(at(15, 2)) == []
    assert ticks(scheduler.tick(at(15, 5))) == [at(15, 5)]


def test_changing_the_schedule_takes_effect_on_the_next_tick(store, clock):
    make_job(store, schedule="0 * * * *", overlap="allow")
    scheduler = Scheduler(store, Settings(), clock)
    scheduler.tick()
    assert scheduler.tick(at(12, 5)) == []

    store.jobs.update_settings("tick.sh", {"schedule": "*/5 * * * *"})
    assert scheduler.tick(at(12, 6)) == []
    assert ticks(scheduler.tick(at(12, 10))) == [at(12, 10)]
    store.jobs.update_settings("tick.sh", {"schedule": None})
    assert scheduler.tick(at(12, 15)) == []


def downtime(store, missed: str, restart_at: datetime) -> list[Run]:
    """Fire 12:15, stop for three hours, start a new scheduler at ``restart_at``; return what it fires."""
    make_job(store, schedule="*/15 * * * *", missed=missed, overlap="allow")
    clock = store.clock
    assert clock.now() == at(12)
    before = Scheduler(store, Settings(), clock)
    assert ticks(drive(before, clock, at(12, 15))) == [at(12, 15)]
    clock.set(restart_at)
    return Scheduler(store, Settings(), clock).tick()


def test_skip_fires_nothing_for_ticks_missed_during_a_downtime(store):
    assert downtime(store, "skip", at(15, 20)) == []
    assert len(store.runs.list()) == 1
    assert store.jobs.get("tick.sh").scheduler_state["last_tick_at"] == at(15, 15)


def test_catch_up_once_fires_exactly_one_run_for_a_downtime(store):
    fired = downtime(store, "catch_up_once", at(15, 20))

    assert len(fired) == 1
    trigger = fired[0].trigger
    assert trigger.scheduled_for == at(15, 15)  # the latest missed tick
    assert trigger.catch_up is True
    assert trigger.missed == 12  # 12:30, 12:45, … 15:15
    assert trigger.missed_from == at(12, 30)
    assert len(store.runs.list()) == 2


def test_a_tick_due_within_the_grace_still_fires_beside_the_catch_up(store):
    fired = downtime(store, "catch_up_once", at(15, 30, 3))
    assert [(r.trigger.scheduled_for, r.trigger.missed) for r in fired] == [
        (at(15, 15), 12), (at(15, 30), None)]


def test_skip_still_fires_the_current_tick_after_a_downtime(store):
    fired = downtime(store, "skip", at(15, 30, 3))
    assert ticks(fired) == [at(15, 30)]


def test_a_tick_later_than_the_grace_counts_as_missed():
    assert due_ticks("*/5 * * * *", "UTC", at(12), at(12, 5) + timedelta(seconds=GRACE_S)).on_time == (at(12, 5),)
    late = due_ticks("*/5 * * * *", "UTC", at(12), at(12, 5) + timedelta(seconds=GRACE_S + 0.001))
    assert late.on_time == () and late.missed_count == 1 and late.missed_latest == at(12, 5)
    assert due_ticks("*/5 * * * *", "UTC", at(12, 5), at(12, 9)) is None


def test_a_scheduler_a_few_seconds_behind_fires_each_tick_late_instead_of_missing_it(store, clock):
    # A tick that took longer than a second (1,000 every-second jobs on a busy machine) found two
    # ticks due: the older was recorded missed although it was only a second late.
    make_job(store, schedule="* * * * * *", overlap="allow")
    scheduler = Scheduler(store, Settings(), clock)
    scheduler.tick(at(12))  # takes the cursor
    assert ticks(scheduler.tick(at(12, 0, 3))) == [at(12, 0, 1), at(12, 0, 2), at(12, 0, 3)]
    assert store.missed.list() == []
    assert store.jobs.get("tick.sh").scheduler_state["last_tick_at"] == at(12, 0, 3)


def test_only_ticks_older_than_the_grace_are_missed_the_others_fire(store, clock):
    make_job(store, schedule="* * * * * *", overlap="allow")
    scheduler = Scheduler(store, Settings(), clock)
    scheduler.tick(at(12))
    behind = 8
    fired = scheduler.tick(at(12, 0, behind))
    on_time = [at(12, 0, s) for s in range(1, behind + 1) if behind - s <= GRACE_S]
    assert ticks(fired) == on_time
    [record] = store.missed.list()
    assert (record.count, record.first, record.scheduled_for) == (behind - len(on_time), at(12, 0, 1),
                                                                  on_time[0] - timedelta(seconds=1))


def test_overlap_skip_keeps_one_of_the_late_ticks_and_records_the_others(store, clock):
    make_job(store, schedule="* * * * * *", overlap="skip")
    scheduler = Scheduler(store, Settings(), clock)
    scheduler.tick(at(12))
    assert ticks(scheduler.tick(at(12, 0, 2))) == [at(12, 0, 1)]
    assert [(m.reason.value, m.scheduled_for) for m in store.missed.list()] == [("overlap_skip", at(12, 0, 2))]


def test_missed_ticks_are_counted_up_to_a_limit_and_never_fired_one_by_one(store, clock):
    make_job(store, schedule="* * * * * *", missed="catch_up_once", overlap="allow")  # every second
    Scheduler(store, Settings(), clock).tick()
    fired = Scheduler(store, Settings(), clock).tick(at(15))
    assert len(fired) == 1 + int(GRACE_S) + 1  # one catch-up + the ticks within the grace (14:59:55 to 15:00)
    assert fired[0].trigger.missed_capped is True


@pytest.mark.parametrize("overlap, statuses", [
    ("allow", ["queued", "queued"]),
    ("skip", ["queued"]),
    ("queue", ["queued", "waiting"]),
])
def test_overlap_policy_applies_when_a_tick_fires_while_a_run_is_active(store, clock, overlap, statuses):
    make_job(store, overlap=overlap)
    scheduler = Scheduler(store, Settings(), clock)
    fired = drive(scheduler, clock, at(12, 10))

    runs = sorted(store.runs.list(), key=lambda r: r.queued_at)
    assert [r.status for r in runs] == statuses
    assert len(fired) == len(statuses)
    if overlap == "queue":
        clock.set(at(12, 11))
        assert scheduler.service.claim("w", [], 30).id == runs[0].id
        scheduler.service.finish(runs[0].id, RunStatus.SUCCEEDED, exit_code=0, now=at(12, 12))
        assert store.runs.get(runs[1].id).status == "queued"


def test_a_run_whose_lease_expired_is_lost_and_retried_per_the_job_policy(store, clock):
    job = make_job(store, schedule=None, retry={"attempts": 1, "delay_s": 10})
    # An outage grace no longer than the lease: the claim says no script outlives it, so lost at expiry.
    scheduler = Scheduler(store, Settings(outage_grace_s=30.0), clock)
    run = scheduler.service.queue(job, ManualTrigger(), data={"n": 1})
    assert scheduler.service.claim("w1", [], lease_s=30).id == run.id

    assert scheduler.tick(at(12, 0, 29)) == []
    assert store.runs.get(run.id).status == "running"
    scheduler.tick(at(12, 0, 31))

    lost = store.runs.get(run.id)
    assert lost.status == "lost"
    assert "w1" in lost.note and "retrying as run" in lost.note
    retry = store.runs.list(status="queued")[0]
    assert (retry.attempt, retry.data, retry.trigger.kind) == (2, {"n": 1}, "retry")
    assert retry.not_before == at(12, 0, 41)

    # The retry is lost too: no attempts left, so nothing more is queued.
    clock.set(at(12, 0, 41))
    assert scheduler.service.claim("w1", [], lease_s=30).id == retry.id
    scheduler.tick(at(12, 2))
    assert store.runs.get(retry.id).status == "lost"
    assert store.runs.list(status="queued") == []


def test_a_bad_stored_schedule_is_skipped_without_stopping_other_jobs(store, clock):
    make_job(store, "good.sh")
    store.jobs.record_deployed("bad.sh", commit="c1", blob="b")
    store.jobs.set_enabled("bad.sh", True)
    store.collection("jobs").update_one({"_id": "bad.sh"}, {"$set": {"schedule": "not cron"}})
    scheduler = Scheduler(store, Settings(), clock)

    assert [r.job for r in drive(scheduler, clock, at(12, 5))] == ["good.sh"]


def test_a_job_document_that_cannot_be_read_is_skipped_without_stopping_firing_or_lease_expiry(store, clock, caplog):
    # given a good job, a running run whose lease expires, and a job whose stored document was edited by hand
    good = make_job(store, "good.sh", schedule=None)
    make_job(store, "every.sh", schedule="* * * * *", overlap="allow")
    make_job(store, "broken.sh", schedule="* * * * *")
    store.collection("jobs").update_one({"_id": "broken.sh"}, {"$set": {"retry": 5, "timeout_s": "soon"}})
    scheduler = Scheduler(store, Settings(), clock)
    run = scheduler.service.queue(good, ManualTrigger())
    assert scheduler.service.claim("w1", [], lease_s=30).id == run.id
    # when the scheduler ticks past the next minute and the lease
    fired = drive(scheduler, clock, at(12, 1, 30))
    # then the other job fired, the lost run ended, and the broken job is named once, with what is wrong
    assert [r.job for r in fired] == ["every.sh"]
    assert store.runs.get(run.id).status == "lost"
    warnings = [r.getMessage() for r in caplog.records if "broken.sh" in r.getMessage()]
    assert len(warnings) == 1 and "cannot be read" in warnings[0], warnings


def test_run_forever_ticks_until_stopped(store):
    make_job(store, schedule="* * * * * *", overlap="allow")  # every second
    stop = threading.Event()

    clock = FakeClock(at(12))

    class SteppingScheduler(Scheduler):
        """Each tick sees a moment one second later; the loop stops after five ticks."""

        ticks = 0

        def tick(self, now: datetime | None = None) -> list:
            clock.advance(1)
            self.ticks += 1
            if self.ticks >= 5:
                stop.set()
            return super().tick(now)

    scheduler = SteppingScheduler(store, Settings(), clock, interval_s=0.001)
    scheduler.run_forever(stop)
    assert ticks(store.runs.list()) == [at(12, 0, 5), at(12, 0, 4), at(12, 0, 3), at(12, 0, 2)]


def test_run_forever_survives_a_failing_database(store, clock):
    stop = threading.Event()
    calls = []

    def failing_tick(now=None):
        calls.append(now)
        if len(calls) == 3:
            stop.set()
        raise RuntimeError("database exploded")

    scheduler = Scheduler(store, Settings(), clock, interval_s=0.001)
    scheduler.tick = failing_tick
    scheduler.run_forever(stop)
    assert len(calls) == 3


# -- several schedulers ------------------------------------------------------------------
def test_two_schedulers_with_their_own_clients_never_fire_a_tick_twice(embedded_store, embedded_site):
    make_job(embedded_store, "a.sh", schedule="* * * * *", overlap="allow", missed="catch_up_once")
    make_job(embedded_store, "b.sh", schedule="*/2 * * * *", overlap="queue")
    make_job(embedded_store, "c.sh", schedule="*/3 * * * *", overlap="skip")
    settings = load_settings(embedded_site / "config.json", environ={},
                             overrides={"database": embedded_store.database_name})
    stores = [open_store(settings) for _ in range(2)]
    times = [at(12) + timedelta(seconds=20 * i) for i in range(0, 31)]  # ten minutes
    times.insert(20, at(12, 30))  # a jump forward (catch-up) both schedulers see
    barrier = threading.Barrier(2)
    fired: list[list[Run]] = [[], []]

    def run(index: int) -> None:
        scheduler = Scheduler(stores[index], settings, FakeClock(at(12)))
        for moment in times:
            barrier.wait(timeout=30)
            fired[index] += scheduler.tick(moment)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for store in stores:
            store.close()

    runs = embedded_store.runs.list(limit=1000)
    per_tick = Counter((run.job, run.trigger.scheduled_for) for run in runs)
    assert per_tick and max(per_tick.values()) == 1
    assert len(fired[0]) + len(fired[1]) == len(runs)  # each run was reported by the scheduler that won it
    assert sum(1 for job, _ in per_tick if job == "a.sh") >= 6


def test_two_scheduler_processes_fire_each_tick_once_and_pick_up_changes_live(site):
    store = open_store(load_settings(site / "config.json", environ={}))
    make_job(store, "every-second.sh", schedule="* * * * * *", enabled=False, overlap="allow")
    env = {**os.environ, "SOONER_CONFIG": str(site / "config.json")}
    processes = [subprocess.Popen([sys.executable, "-m", "sooner", "scheduler"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for process in processes:
            assert "ready" in process.stdout.readline()
        # Taken before enabling: a scheduler may see the job enabled (and fire its next
        # tick) before set_enabled has even returned to this test.
        enabled_at = datetime.now(UTC)
        store.jobs.set_enabled("every-second.sh", True)
        # The running schedulers pick the change up (no restart) and fire from then on, not before.
        wait_for(lambda: store.jobs.get("every-second.sh").scheduler_state, timeout=5)
        first = wait_for(lambda: store.runs.list(limit=1), timeout=5, message="a run after enabling")[0]
        assert first.trigger.scheduled_for > enabled_at
        assert first.queued_at >= first.trigger.scheduled_for
        wait_for(lambda: len(store.runs.list(limit=10)) >= 4, timeout=10, message="four ticks")
        store.jobs.set_enabled("every-second.sh", False)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        outputs = [process.communicate(timeout=15) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert all("stopped" in out for out, _ in outputs)
    runs = store.runs.list(limit=100)
    per_tick = Counter(run.trigger.scheduled_for for run in runs)
    assert max(per_tick.values()) == 1
    assert {run.trigger.source for run in runs} <= {f"{os.uname().nodename}:{p.pid}" for p in processes}
    store.close()
