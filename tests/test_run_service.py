"""The run service owns a run's life: queue, claim, finish, cancel, expire leases; one fake clock drives it all.

Every test here runs on ``clocked_store`` (mongomock on the test's
``fake_clock``), whose time is 2026-01-05 12:00 UTC, far from the wall
clock: a time that equals the fake clock's was taken from it, not from the
system. Nothing sleeps; time passes by ``fake_clock.advance``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from conftest import run_sooner
from sooner.config import load_settings
from sooner.errors import SoonerError
from sooner.model import Job, ManualTrigger, RunStatus
from sooner.runs.listeners import LISTENERS
from sooner.runs.service import RunService
from sooner.scheduling.scheduler import Scheduler
from sooner.store import open_store


def deployed(store, name: str, *, hooks: tuple[str, ...] = (), **settings) -> Job:
    """A job as a push creates it, then enabled and given ``settings``/``hooks`` as `sooner job set` would."""
    store.jobs.record_deployed(name, commit="c1", blob=f"blob-{name}")
    store.jobs.set_enabled(name, True)
    return store.jobs.update_settings(name, settings, add_hooks=hooks)


def only(runs: list) -> Any:
    """The one item of ``runs``."""
    assert len(runs) == 1, runs
    return runs[0]


# -- one clock, one scenario ------------------------------------------------------------
def test_one_fake_clock_drives_a_failure_its_retry_and_the_hooked_run_without_sleeping(
        clocked_store, service, fake_clock):
    # given extract.sh retried once after 30 s, load.sh hooked to its success, and a scheduler on the same clock
    store = clocked_store
    deployed(store, "extract.sh")
    store.jobs.update_settings("extract.sh", {"retry": {"attempts": 1, "delay_s": 30}})
    deployed(store, "load.sh", hooks=("job:extract.sh:succeeded",))
    scheduler = Scheduler(store, service=service)
    assert scheduler.clock is fake_clock
    start = fake_clock.now()

    # when extract.sh is queued by hand and a worker claims it
    first = service.queue("extract.sh", ManualTrigger(author="alice"))
    claimed = service.claim("w1", [], lease_s=60)

    # then both are stamped with the fake clock's time
    assert (first.queued_at, first.not_before, first.trigger.author) == (start, start, "alice")
    assert claimed.id == first.id
    assert (claimed.status, claimed.claimed_at, claimed.lease_until) == ("running", start, start + timedelta(seconds=60))

    # when the script starts, runs 5 s and fails
    store.runs.mark_started(first.id, pid=4242, commit="c1")
    fake_clock.advance(5)
    failed = service.finish(first.id, RunStatus.FAILED, exit_code=1)

    # then the failure is recorded at the fake time and a retry waits exactly 30 s from then
    failed_at = fake_clock.now()
    assert (failed.status, failed.finished_at, failed.duration_s) == ("failed", failed_at, 5.0)
    retry = only([run for run in store.runs.list(job="extract.sh") if run.id != first.id])
    assert (retry.status, retry.attempt, retry.trigger.kind, retry.trigger.source) == ("queued", 2, "retry", first.id)
    assert retry.not_before == failed_at + timedelta(seconds=30)
    assert retry.queued_at == failed_at
    assert "retrying as run" in store.runs.get(first.id).note
    failure = only(store.events.list(name="job:extract.sh:failed"))
    assert failure["t"] == failed_at
    # and nothing may claim it before then, and a scheduler tick changes nothing
    assert service.claim("w1", [], lease_s=60) is None
    assert scheduler.tick() == []
    fake_clock.advance(29.999)
    assert service.claim("w1", [], lease_s=60) is None

    # when the retry is due it is the one claimed
    fake_clock.advance(0.001)
    again = service.claim("w1", [], lease_s=60)
    assert again.id == retry.id and again.claimed_at == failed_at + timedelta(seconds=30)

    # when it succeeds
    fake_clock.advance(2)
    succeeded = service.finish(retry.id, RunStatus.SUCCEEDED, exit_code=0)

    # then load.sh is queued at the fake clock's time by the event the success emitted, stored at that time too
    now = fake_clock.now()
    assert now == start + timedelta(seconds=37)
    assert succeeded.finished_at == now
    event = only(store.events.list(name="job:extract.sh:succeeded"))
    assert event["t"] == now
    load = only(store.runs.list(job="load.sh"))
    assert (load.status, load.queued_at, load.not_before) == ("queued", now, now)
    assert (load.trigger.kind, load.trigger.event_id, load.trigger.source) == ("event", event["_id"], retry.id)
    assert event["runs"] == [load.id]
    assert load.data["run"] == retry.id and load.depth == 1


# -- queued_at ----------------------------------------------------------------------------------
def test_a_run_records_when_it_was_inserted_not_when_queueing_began(clocked_store, service, fake_clock,
                                                                     monkeypatch):
    # given taking the run's number takes 2 s (the deploy read and counter are round trips)
    deployed(clocked_store, "job.sh")
    take_number = clocked_store.counters.next_run_number

    def slow_number(job: str) -> int:
        fake_clock.advance(2)
        return take_number(job)
    monkeypatch.setattr(clocked_store.counters, "next_run_number", slow_number)
    began = fake_clock.now()
    # when a run is queued (no time given: now is meant)
    run = service.queue("job.sh", ManualTrigger())
    # then it is queued, and may start, from its insert: queued->started counts from there
    stored = clocked_store.runs.get(run.id)
    assert stored.queued_at == run.queued_at == began + timedelta(seconds=2)
    assert stored.not_before == stored.queued_at
    # and a time given by the caller (an event's, a replay's) is kept as it is
    given = service.queue("job.sh", ManualTrigger(), now=began)
    assert clocked_store.runs.get(given.id).queued_at == began


# -- lost leases --------------------------------------------------------------------------
def test_a_claimed_run_whose_lease_passed_is_ended_lost_by_a_scheduler_tick_and_retried(
        clocked_store, service, fake_clock):
    # given a job retried once after 10 s and a run of it claimed with a 60 s lease
    deployed(clocked_store, "flaky.sh", retry={"attempts": 1, "delay_s": 10})
    scheduler = Scheduler(clocked_store, service=service)
    run = service.queue("flaky.sh", ManualTrigger(), data={"n": 1})
    service.claim("w1", [], lease_s=60)

    # when the worker goes silent for exactly the lease, the run is still its
    fake_clock.advance(60)
    assert scheduler.tick() == []
    assert clocked_store.runs.get(run.id).status == "running"

    # when the lease has passed
    fake_clock.advance(0.001)
    scheduler.tick()

    # then the run is lost at that moment, its note names the worker, and its retry is queued per the policy
    lost = clocked_store.runs.get(run.id)
    assert (lost.status, lost.finished_at, lost.lease_until) == ("lost", fake_clock.now(), None)
    assert "worker 'w1' stopped renewing its lease" in lost.note and "retrying as run" in lost.note
    retry = only(clocked_store.runs.list(status="queued"))
    assert (retry.attempt, retry.data, retry.trigger.kind, retry.trigger.previous_status) == (2, {"n": 1}, "retry",
                                                                                              "lost")
    # not before the policy's 10 s, nor before the old copy is surely dead: the claim said how long its
    # script may outlive the lease (a worker cut off from the database keeps it running that long)
    settings = service.settings
    assert lost.outlives_lease_s == settings.outlives_lease_s
    wait_s = max(10, settings.cancel_grace_s + settings.outlives_lease_s)
    assert retry.not_before == fake_clock.now() + timedelta(seconds=wait_s)


def test_expire_leases_ends_each_expired_run_once_and_the_last_attempt_is_not_retried(
        clocked_store, service, fake_clock):
    # given a job without retries and two claimed runs, one of whose worker keeps renewing its lease
    deployed(clocked_store, "once.sh")
    silent = service.queue("once.sh", ManualTrigger())
    alive = service.queue("once.sh", ManualTrigger())
    service.claim("w1", [], lease_s=30)
    service.claim("w2", [], lease_s=30)
    fake_clock.advance(20)
    clocked_store.runs.renew_leases("w2", [alive.id], 30, now=fake_clock.now())

    # when the first lease has passed
    fake_clock.advance(11)
    lost = service.expire_leases()

    # then only the silent worker's run is lost, once, and nothing is queued again
    assert [run.id for run in lost] == [silent.id]
    assert lost[0].status == "lost" and lost[0].finished_at == fake_clock.now()
    assert service.expire_leases() == []
    assert clocked_store.runs.get(alive.id).status == "running"
    assert clocked_store.runs.list(status="queued") == []


# -- cancel ------------------------------------------------------------------------------------
def test_cancelling_the_queued_run_of_an_overlap_queue_job_lets_the_waiting_run_go_at_once(
        clocked_store, service, fake_clock):
    # given a job with overlap=queue: run A queued, run B waiting behind it
    deployed(clocked_store, "serial.sh", overlap="queue")
    a = service.queue("serial.sh", ManualTrigger(), overlap_check=True)
    b = service.queue("serial.sh", ManualTrigger(), overlap_check=True)
    assert (a.status, b.status) == ("queued", "waiting")

    # when alice cancels A
    fake_clock.advance(3)
    cancelled = service.cancel(a.id, by="alice")

    # then A ended, and B is queued right away (it used to stay waiting after `sooner cancel`)
    assert (cancelled.status, cancelled.cancelled_by, cancelled.finished_at) == ("cancelled", "alice", fake_clock.now())
    assert "cancelled by alice before it started" in cancelled.note
    released = clocked_store.runs.get(b.id)
    assert (released.status, released.not_before) == ("queued", fake_clock.now())
    assert service.claim("w1", [], lease_s=30).id == b.id


def test_cancelling_a_running_run_flags_it_and_the_waiting_run_goes_when_its_worker_ends_it(
        clocked_store, service):
    # given a running run A of an overlap=queue job and run B waiting behind it
    deployed(clocked_store, "serial.sh", overlap="queue")
    a = service.queue("serial.sh", ManualTrigger(), overlap_check=True)
    b = service.queue("serial.sh", ManualTrigger(), overlap_check=True)
    service.claim("w1", [], lease_s=30)

    # when it is cancelled, only its worker is asked to stop it
    flagged = service.cancel(a.id, by="bob")
    assert (flagged.status, flagged.cancel_requested, flagged.cancelled_by) == ("running", True, "bob")
    assert clocked_store.runs.get(b.id).status == "waiting"

    # when the worker has stopped it
    service.finish(a.id, RunStatus.CANCELLED, exit_code=-15)

    # then B goes
    assert clocked_store.runs.get(b.id).status == "queued"


def test_cancel_of_a_finished_run_is_refused_with_a_sooner_error(clocked_store, service):
    # given a run that succeeded
    deployed(clocked_store, "a.sh")
    run = service.queue("a.sh", ManualTrigger())
    service.claim("w1", [], lease_s=30)
    service.finish(run.id, RunStatus.SUCCEEDED, exit_code=0)

    # when someone cancels it, then the error names the run and its end
    with pytest.raises(SoonerError, match=f"run {run.id} has already finished \\(succeeded\\)"):
        service.cancel(run.id, by="alice")
    assert clocked_store.runs.get(run.id).status == "succeeded"


def test_finish_of_a_run_that_already_ended_returns_none_and_runs_no_listener(clocked_store, make_service):
    # given a service whose listeners include one that records every call
    calls = []
    listeners = LISTENERS.copy()
    listeners.register("record", lambda ended: calls.append((ended.run.id, ended.run.status)))
    service = make_service(clocked_store, listeners=listeners)
    deployed(clocked_store, "a.sh", retry={"attempts": 3, "delay_s": 1})
    run = service.queue("a.sh", ManualTrigger())
    service.claim("w1", [], lease_s=30)
    assert service.finish(run.id, RunStatus.SUCCEEDED, exit_code=0).status == "succeeded"

    # when it is ended again (a late worker report, a second scheduler)
    again = service.finish(run.id, RunStatus.FAILED, exit_code=1)

    # then nothing changes and no listener ran a second time: no retry, no second outcome event
    assert again is None
    assert calls == [(run.id, RunStatus.SUCCEEDED)]
    assert clocked_store.runs.get(run.id).status == "succeeded"
    assert len(clocked_store.runs.list(job="a.sh")) == 1
    assert clocked_store.events.list(name="job:a.sh:failed") == []
    assert len(clocked_store.events.list(name="job:a.sh:succeeded")) == 1


def test_finish_refuses_an_active_status(clocked_store, service):
    deployed(clocked_store, "a.sh")
    run = service.queue("a.sh", ManualTrigger())
    with pytest.raises(ValueError, match="cannot end as queued"):
        service.finish(run.id, RunStatus.QUEUED)


# -- the same through the real CLI ------------------------------------------------------------
def test_sooner_cancel_of_the_queued_run_lets_the_waiting_run_go(site):
    # given a site whose overlap=queue job has run A queued and run B waiting
    store = open_store(load_settings(site / "config.json", environ={}))
    try:
        deployed(store, "serial.sh", overlap="queue")
        service = RunService(store)
        a = service.queue("serial.sh", ManualTrigger(), overlap_check=True)
        b = service.queue("serial.sh", ManualTrigger(), overlap_check=True)
        assert (a.status, b.status) == ("queued", "waiting")

        # when `sooner cancel <A>` runs
        result = run_sooner("cancel", a.id, cwd=site)

        # then A is cancelled and B is queued at once
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"cancelled run {a.ref} (it had not started)"
        assert (store.runs.get(a.id).status, store.runs.get(a.id).cancelled_by) == ("cancelled", "cli")
        assert store.runs.get(b.id).status == "queued"

        # and cancelling it again is one clear error line
        again = run_sooner("cancel", a.id, cwd=site)
        assert again.returncode == 1
        assert "already finished (cancelled)" in again.stderr and "Traceback" not in again.stderr
    finally:
        store.close()
