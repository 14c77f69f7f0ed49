"""The model: value classes that read and write the stored layout unchanged, and the rules they own.

Layout tests compare with documents as the repositories wrote them, read raw
from the collection, on every store kind (``any_store``).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import pytest

from sooner.clock import FakeClock
from sooner.model import (ACTIVE, BUSY, FAILED_KINDS, FINISHED, CronTrigger, Job, ManualTrigger, Missed, Overlap,
                          Progress, RetryPolicy, Run, RunStatus, Worker, WorkerHealth, late_after_s)
from sooner.model.job import DEFAULT_MAX_BACKOFF_S
from sooner.runs.service import RunService
from sooner.store import schema

UTC = timezone.utc
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def raw(store, collection: str, _id: str) -> dict:
    document = store.collection(collection).find_one({"_id": _id})
    assert document is not None
    return document


def deployed(store, name: str = "a.sh") -> Job:
    store.jobs.record_deployed(name, commit="c1", blob=f"blob-{name}", now=T0)
    return store.jobs.get(name)


# -- runs: the stored layout ------------------------------------------------------------------
def test_a_queued_manual_run_reads_and_writes_back_as_stored(any_store):
    # given a run written by the run service
    service = RunService(any_store, clock=FakeClock(T0))
    deployed(any_store)
    run = service.queue("a.sh", ManualTrigger(author="alice"), data={"rows": [1, 2]}, target="gpu")
    stored = raw(any_store, schema.RUNS, run.id)

    # when it is read as a Run and written back
    again = Run.from_doc(stored)

    # then the document is the same, key for key, and the value the service returned is the one stored
    assert again.to_doc() == stored
    assert again == run and run.to_doc() == stored
    assert stored["number"] == 1 and run.ref == "a.sh#1"  # the job's first run
    assert set(stored) == {"_id", "job", "number", "status", "trigger", "data", "commit", "target", "worker", "pid",
                           "exit_code", "progress", "attempt", "depth", "timeout_s", "queued_at", "not_before",
                           "started_at", "finished_at", "lease_until", "cancel_requested", "note", "chain"}
    assert (again.status, again.trigger, again.queued_at) == (RunStatus.QUEUED, ManualTrigger(author="alice"), T0)
    assert stored["chain"] == run.id == again.chain_root  # a first attempt is its own chain


def test_a_cron_run_keeps_its_top_level_scheduled_for(any_store):
    # given a run of a cron tick
    deployed(any_store)
    run = RunService(any_store, clock=FakeClock(T0)).queue("a.sh", CronTrigger(scheduled_for=T0, schedule="* * * * *"))
    stored = raw(any_store, schema.RUNS, run.id)

    # then scheduled_for is stored beside the trigger (the unique index uses it) and survives a round trip
    assert stored["scheduled_for"] == T0 == stored["trigger"]["scheduled_for"]
    assert Run.from_doc(stored).to_doc() == stored


def test_a_run_that_was_claimed_started_reported_progress_and_ended_reads_back_as_stored(any_store):
    # given a run through its whole life: claimed, started, progress, cancel asked, ended with a note
    clock = FakeClock(T0)
    service = RunService(any_store, clock=clock)
    deployed(any_store)
    run = service.queue("a.sh", ManualTrigger())
    service.claim("w1", ["gpu"], lease_s=30)
    any_store.runs.mark_started(run.id, pid=99, commit="c1", now=clock.advance(1))
    any_store.runs.set_progress(run.id, 3, 10)
    service.cancel(run.id, by="alice")
    clock.advance(4)
    service.finish(run.id, RunStatus.CANCELLED, exit_code=-15, note="cancelled by alice")
    stored = raw(any_store, schema.RUNS, run.id)

    # when it is read and written back
    ended = Run.from_doc(stored)

    # then nothing is lost or added, and the values are typed
    assert ended.to_doc() == stored
    assert {"claimed_at", "cancelled_by", "duration_s"} <= set(stored)
    assert (ended.status, ended.exit_code, ended.pid, ended.worker) == (RunStatus.CANCELLED, -15, 99, "w1")
    assert (ended.claimed_at, ended.started_at, ended.finished_at) == (T0, T0 + timedelta(seconds=1),
                                                                       T0 + timedelta(seconds=5))
    assert (ended.duration_s, ended.cancel_requested, ended.cancelled_by) == (4.0, True, "alice")
    assert ended.progress == Progress(3, 10) and ended.progress.percent == 30


def test_a_runs_process_record_reads_and_writes_back_as_stored(any_store):
    # given a run whose worker recorded its script's process and later confirmed it gone
    service = RunService(any_store, clock=FakeClock(T0))
    deployed(any_store)
    run = service.queue("a.sh", ManualTrigger())
    service.claim("w1", [], lease_s=30)
    any_store.runs.mark_started(run.id, pid=99, commit="c1", now=T0, host="h1", pid_started_at=1767614400.25,
                                pgid=99, supervisor_pid=98, supervisor_started_at=1767614400.2)
    service.finish(run.id, RunStatus.LOST, note="lost: test")
    any_store.runs.mark_process_gone(run.id)
    stored = raw(any_store, schema.RUNS, run.id)

    # when it is read and written back, then nothing is lost or added, and the values are typed
    ended = Run.from_doc(stored)
    assert ended.to_doc() == stored and ended.extra == {}
    assert (ended.host, ended.pid, ended.pid_started_at, ended.pgid) == ("h1", 99, 1767614400.25, 99)
    assert (ended.supervisor_pid, ended.supervisor_started_at, ended.process_gone) == (98, 1767614400.2, True)
    # and a run that never started writes none of them
    assert not {"host", "pgid", "process_gone"} & set(Run(id="r", job="a.sh").to_doc())


def test_a_jobs_memory_limit_is_whole_megabytes_and_zero_clears_it(any_store):
    from sooner.model.job_settings import InvalidJobSetting, settings_changes

    deployed(any_store)
    job = any_store.jobs.update_settings("a.sh", settings_changes(Job("a.sh"), {"memory_limit_mb": "500"}))
    assert job.memory_limit_mb == 500 and Job.from_doc(raw(any_store, schema.JOBS, "a.sh")).to_doc() == raw(
        any_store, schema.JOBS, "a.sh")
    assert settings_changes(job, {"memory_limit_mb": 0}) == {"memory_limit_mb": None}
    for bad in (-1, "lots", 1 << 40):
        with pytest.raises(InvalidJobSetting) as info:
            settings_changes(job, {"memory_limit_mb": bad})
        assert info.value.key == "memory_limit_mb"


def test_fields_a_run_does_not_know_are_kept():
    stored = {"_id": "r1", "job": "a.sh", "status": "queued", "trigger": {"type": "manual"}, "labels": ["x"]}
    run = Run.from_doc(stored)
    assert run.extra == {"labels": ["x"]}
    assert run.to_doc()["labels"] == ["x"]


# -- jobs: the stored layout --------------------------------------------------------------------
def test_a_job_as_a_push_creates_it_reads_and_writes_back_as_stored(any_store):
    # given a job document written by a deploy
    deployed(any_store)
    stored = raw(any_store, schema.JOBS, "a.sh")

    # when it is read and written back, then it is the same document
    job = Job.from_doc(stored)
    assert job.to_doc() == stored
    assert (job.name, job.enabled, job.new, job.overlap, job.missed) == ("a.sh", False, True, Overlap.SKIP, Missed.SKIP)


def test_a_job_with_settings_hooks_a_cursor_and_a_removal_reads_and_writes_back_as_stored(any_store):
    # given a job whose settings, hooks and scheduler cursor were changed, then removed from the repository
    deployed(any_store)
    any_store.jobs.set_enabled("a.sh", True)
    any_store.jobs.update_settings("a.sh", {"schedule": "*/5 * * * *", "timezone": "Europe/Berlin", "worker": "gpu",
                                            "timeout_s": 60.0, "retry": RetryPolicy(2, 10.0).to_doc(),
                                            "overlap": "queue", "missed": "catch_up_once"}, add_hooks=["go"])
    cursor = {"schedule": "*/5 * * * *", "timezone": "Europe/Berlin", "last_tick_at": T0, "since": T0, "by": "s1"}
    assert any_store.jobs.save_trigger_state("a.sh", "cron", cursor, previous=None)
    any_store.jobs.mark_deleted("a.sh", commit="c2", now=T0 + timedelta(hours=1))
    stored = raw(any_store, schema.JOBS, "a.sh")

    # when it is read and written back
    job = Job.from_doc(stored)

    # then it is the same document, and the values are typed
    assert job.to_doc() == stored
    assert (job.hooks, job.retry, job.overlap, job.missed) == (("go",), RetryPolicy(2, 10.0), Overlap.QUEUE,
                                                               Missed.CATCH_UP_ONCE)
    assert (job.deleted, job.enabled, job.schedulable, job.deleted_at) == (True, False, False, T0 + timedelta(hours=1))
    assert job.scheduler_state == cursor


def test_fields_a_job_does_not_know_are_kept_in_extra():
    job = Job.from_doc({"_id": "a.sh", "every_s": 5, "trigger_state": {"interval": {}}})
    assert job.extra == {"every_s": 5, "trigger_state": {"interval": {}}}
    assert job.to_doc()["every_s"] == 5
    assert Job.from_doc({"_id": "b.sh", "overlap": "sideways"}).overlap is Overlap.SKIP  # unknown → the default


# -- statuses ----------------------------------------------------------------------------------
def test_run_statuses_fall_into_active_and_finished_and_the_retried_and_busy_groups():
    assert ACTIVE == {RunStatus.WAITING, RunStatus.QUEUED, RunStatus.RUNNING}
    assert FINISHED == {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.TIMED_OUT,
                        RunStatus.LOST, RunStatus.POISON}
    assert ACTIVE | FINISHED == set(RunStatus) and not ACTIVE & FINISHED
    assert FAILED_KINDS == {RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.LOST} and FAILED_KINDS <= FINISHED
    assert BUSY == {RunStatus.QUEUED, RunStatus.RUNNING} and BUSY <= ACTIVE
    for status in RunStatus:
        assert status.active is (status in ACTIVE) and status.finished is (status in FINISHED)
        assert status.failed is (status in FAILED_KINDS)


@pytest.mark.parametrize(("status", "outcome"), [
    (RunStatus.SUCCEEDED, "succeeded"), (RunStatus.FAILED, "failed"), (RunStatus.TIMED_OUT, "failed"),
    (RunStatus.POISON, "failed"),
    (RunStatus.CANCELLED, None), (RunStatus.LOST, None), (RunStatus.WAITING, None), (RunStatus.QUEUED, None),
    (RunStatus.RUNNING, None),
])
def test_only_succeeded_failed_and_timed_out_runs_have_an_outcome_to_emit(status, outcome):
    assert status.outcome == outcome


def test_statuses_are_stored_as_their_lowercase_values_and_parsed_back():
    assert RunStatus.values() == ["waiting", "queued", "running", "succeeded", "failed", "cancelled", "timed_out",
                                  "lost", "poison"]
    assert RunStatus.values(BUSY) == ["queued", "running"]
    assert RunStatus.TIMED_OUT == "timed_out" and RunStatus.parse("lost") is RunStatus.LOST
    with pytest.raises(ValueError, match="unknown status 'done': use one of waiting, queued"):
        RunStatus.parse("done")


# -- retry policy --------------------------------------------------------------------------------
def test_retry_delays_double_from_the_base_delay_and_stop_at_an_hour():
    policy = RetryPolicy(attempts=20, backoff_base_s=30)
    assert [policy.delay_after(attempt) for attempt in range(1, 10)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert DEFAULT_MAX_BACKOFF_S == 3600 and policy.delay_after(50) == 3600
    assert RetryPolicy(backoff_base_s=10).delay_after(1) == 10 and RetryPolicy(backoff_base_s=0).delay_after(5) == 0


def test_a_retry_policy_allows_exactly_its_number_of_extra_attempts():
    policy = RetryPolicy(attempts=2)
    assert [policy.allows(attempt) for attempt in (1, 2, 3)] == [True, True, False]
    assert not RetryPolicy().allows(1)


def test_a_retry_policy_reads_the_stored_form_with_defaults():
    assert RetryPolicy.from_doc(None) == RetryPolicy(attempts=0, backoff_base_s=30)
    assert RetryPolicy.from_doc({"attempts": "3"}) == RetryPolicy(3, 30.0)
    assert RetryPolicy.from_doc({"attempts": 1, "delay_s": 5}).to_doc() == {  # the old form reads as the base
        "attempts": 1, "backoff_base_s": 5.0, "backoff_factor": 2.0, "max_backoff_s": 3600.0, "jitter": 0.0}


# -- workers ----------------------------------------------------------------------------------------
def beat(age_s: float, **fields) -> tuple[Worker, datetime]:
    """A worker last heard from ``age_s`` seconds before the moment returned."""
    return Worker(name="w1", heartbeat_at=T0, **fields), T0 + timedelta(seconds=age_s)


MS = 0.001


@pytest.mark.parametrize(("heartbeat_s", "late_after"), [(2.0, 6.0), (1.0, 5.0), (0.1, 5.0), (10.0, 30.0)])
def test_a_heartbeat_is_late_after_three_beats_and_never_sooner_than_five_seconds(heartbeat_s, late_after):
    # given a worker beating every heartbeat_s, with leases far longer
    assert late_after_s(heartbeat_s) == late_after
    lease_s = 100.0

    # then it is online up to and including late_after seconds of silence, late just after
    worker, now = beat(late_after)
    assert worker.health(now, heartbeat_s, lease_s) is WorkerHealth.ONLINE and worker.online(now, heartbeat_s)
    worker, now = beat(late_after + MS)
    assert worker.health(now, heartbeat_s, lease_s) is WorkerHealth.LATE and not worker.online(now, heartbeat_s)


def test_a_worker_is_stale_once_silent_for_longer_than_the_lease():
    worker, now = beat(30.0)
    assert worker.health(now, heartbeat_s=2, lease_s=30) is WorkerHealth.LATE
    worker, now = beat(30.0 + MS)
    assert worker.health(now, heartbeat_s=2, lease_s=30) is WorkerHealth.STALE
    never = Worker(name="w0")
    assert never.health(T0, 2, 30) is WorkerHealth.STALE and not never.online(T0, 2)


def test_a_stopped_worker_is_stopped_and_not_online_whatever_its_last_heartbeat():
    worker, now = beat(0, stopped_at=T0)
    assert worker.health(now, 2, 30) is WorkerHealth.STOPPED and not worker.online(now, 2)


def test_a_worker_serves_its_name_its_tags_and_untargeted_runs():
    worker = Worker(name="w1", tags=("gpu",))
    assert [worker.serves(t) for t in (None, "w1", "gpu", "w2", "cpu")] == [True, True, True, False, False]


def test_a_worker_document_reads_and_writes_back(any_store):
    any_store.workers.register("w1", instance="i1", host="h", pid=7, capacity=2, tags=["gpu"], version="1",
                               stale_after_s=30, now=T0)
    stored = raw(any_store, schema.WORKERS, "w1")
    worker = Worker.from_doc(stored)
    assert worker.to_doc() == stored
    assert (worker.tags, worker.capacity, worker.heartbeat_at, worker.running) == (("gpu",), 2, T0, ())


# -- run timing -----------------------------------------------------------------------------------
def test_a_runs_duration_is_recorded_once_ended_and_counted_until_now_while_running():
    started = T0 + timedelta(seconds=10)
    assert Run(id="r", job="a.sh").duration(T0) is None  # not started
    running = Run(id="r", job="a.sh", status=RunStatus.RUNNING, started_at=started)
    assert running.duration(started + timedelta(seconds=2.5)) == 2.5
    assert running.duration(started - timedelta(seconds=1)) == 0.0  # a clock behind the start is not negative
    ended = Run(id="r", job="a.sh", status=RunStatus.FAILED, started_at=started,
                finished_at=started + timedelta(seconds=7))
    assert ended.duration(started + timedelta(hours=1)) == 7.0  # finished_at, not now
    assert Run(id="r", job="a.sh", started_at=started, duration_s=3).duration(T0 + timedelta(days=1)) == 3.0
    naive = Run(id="r", job="a.sh", started_at=datetime(2026, 1, 5, 12, 0, 10))  # read from an old document
    assert naive.duration(started + timedelta(seconds=1)) == 1.0


def test_a_queued_run_is_due_from_its_not_before():
    run = Run(id="r", job="a.sh", not_before=T0)
    assert not run.due(T0 - timedelta(milliseconds=1)) and run.due(T0) and Run(id="r", job="a.sh").due(T0)


def test_evolving_a_run_equals_replacing_its_fields_and_refuses_unknown_names() -> None:
    run = Run.from_doc({"_id": "r1", "job": "a.sh", "status": "queued", "trigger": {"type": "manual"}})
    moment = datetime(2026, 1, 1, tzinfo=timezone.utc)
    evolved = run.evolve(number=7, queued_at=moment)
    assert evolved == dataclasses.replace(run, number=7, queued_at=moment)
    assert run.number is None and evolved.number == 7  # a copy: the original is unchanged
    with pytest.raises(TypeError, match="nuber"):
        run.evolve(nuber=7)
