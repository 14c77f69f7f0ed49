"""Store contract suite: every repository behaves the same on mongomock, the embedded server and a real MongoDB.

`any_store` runs each test on mongomock and on the embedded nx-27017 server
(and on the real MongoDB named by SOONER_TEST_MONGO_URL when set). Tests with
several processes use the embedded store only: mongomock is one process and
not thread-safe.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from sooner.clock import FakeClock
from sooner.errors import JobNotFound, RunNotFound, SoonerError, WorkerError
from sooner.model import CronTrigger, Job, ManualTrigger, Run, RunStatus, Worker
from sooner.runs.service import RunService
from sooner.store import schema

UTC = timezone.utc
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def job(store, name: str = "a.sh", **fields) -> Job:
    store.jobs.record_deployed(name, commit="c1", blob=f"b-{name}", now=T0)
    if fields:
        store.collection(schema.JOBS).update_one({"_id": name}, {"$set": fields})
    return store.jobs.get(name)


def service_at(store, moment: datetime = T0) -> RunService:
    """A run service whose clock reads ``moment`` (the store itself may be on the system clock)."""
    return RunService(store, clock=FakeClock(moment))


def queued(store, job: Job, seconds: float = 0, **options) -> Run:
    run = service_at(store).queue(job, ManualTrigger(), now=T0 + timedelta(seconds=seconds), **options)
    assert run is not None
    return run


def claim(store, worker: str, tags: list[str], lease_s: float, *, now: datetime) -> Run | None:
    """What a worker's claim does at ``now``: take the oldest queued run it may run."""
    return service_at(store, now).claim(worker, tags, lease_s)


# -- jobs -------------------------------------------------------------------------------
def test_record_deployed_creates_disabled_then_updates_only_on_new_content(any_store):
    jobs = any_store.jobs
    assert jobs.record_deployed("a.sh", commit="c1", blob="b1", now=T0) == "created"
    created = jobs.get("a.sh")
    assert (created.enabled, created.deleted, created.schedule) == (False, False, None)
    assert (created.overlap, created.missed) == ("skip", "skip")
    assert created.created_at == T0
    assert jobs.record_deployed("a.sh", commit="c2", blob="b1") == "unchanged"
    assert jobs.get("a.sh").commit == "c1"
    assert jobs.record_deployed("a.sh", commit="c3", blob="b2") == "updated"
    assert jobs.get("a.sh").commit == "c3"


def test_a_deleted_job_keeps_history_and_comes_back_disabled_with_its_settings(any_store):
    jobs = any_store.jobs
    jobs.record_deployed("a.sh", commit="c1", blob="b1")
    jobs.set_enabled("a.sh", True)
    jobs.update_settings("a.sh", {"schedule": "0 * * * *"})
    jobs.mark_deleted("a.sh", commit="c2")

    gone = jobs.get("a.sh")
    assert gone.deleted and not gone.enabled and gone.deleted_at is not None
    assert [j.name for j in jobs.list()] == [] and [j.name for j in jobs.list(include_deleted=True)] == ["a.sh"]
    with pytest.raises(SoonerError, match="removed from the repository"):
        jobs.set_enabled("a.sh", True)
    assert jobs.record_deployed("a.sh", commit="c3", blob="b1") == "restored"
    back = jobs.get("a.sh")
    assert (back.deleted, back.enabled, back.schedule) == (False, False, "0 * * * *")


def test_the_schedulable_jobs_are_read_afresh_when_their_document_changes(any_store):
    jobs = any_store.jobs
    jobs.record_deployed("a.sh", commit="c1", blob="b1")
    jobs.set_enabled("a.sh", True)
    jobs.update_settings("a.sh", {"schedule": "* * * * *"})
    first = jobs.schedulable()
    assert [job.schedule for job in first] == ["* * * * *"]
    assert jobs.schedulable()[0] is first[0]  # an unchanged document is not decoded again
    jobs.update_settings("a.sh", {"schedule": "*/5 * * * *"})
    assert [job.schedule for job in jobs.schedulable()] == ["*/5 * * * *"]
    jobs.set_enabled("a.sh", False)
    assert jobs.schedulable() == []


def test_job_settings_and_hooks(any_store):
    jobs = any_store.jobs
    jobs.record_deployed("a.sh", commit="c1", blob="b1")
    jobs.record_deployed("b.sh", commit="c1", blob="b2")
    updated = jobs.update_settings("a.sh", {"timezone": "Europe/Berlin", "overlap": "queue"},
                                   add_hooks=["x", "y"])
    assert (updated.timezone, updated.overlap, sorted(updated.hooks)) == ("Europe/Berlin", "queue", ["x", "y"])
    assert jobs.update_settings("a.sh", {}, remove_hooks=["x"]).hooks == ("y",)
    with pytest.raises(ValueError, match="not job settings"):
        jobs.update_settings("a.sh", {"colour": "red"})
    with pytest.raises(JobNotFound, match="no job named 'nope.sh'"):
        jobs.update_settings("nope.sh", {})

    assert jobs.with_hook("y") == []  # disabled jobs are not hooked
    jobs.set_enabled("a.sh", True)
    assert [j.name for j in jobs.with_hook("y")] == ["a.sh"]
    assert jobs.scheduled() == []
    jobs.update_settings("a.sh", {"schedule": "*/5 * * * *"})
    jobs.update_settings("b.sh", {"schedule": "*/5 * * * *"})  # disabled: not scheduled
    assert [j.name for j in jobs.scheduled()] == ["a.sh"]


def test_scheduler_state_is_compare_and_set_and_cleared_for_disabled_jobs(any_store):
    jobs = any_store.jobs
    job(any_store, "a.sh", enabled=True, schedule="* * * * *")
    first = {"schedule": "* * * * *", "timezone": "UTC", "last_tick_at": T0}
    assert jobs.save_trigger_state("a.sh", "cron", first, previous=None)
    assert not jobs.save_trigger_state("a.sh", "cron", first, previous=None)  # someone set it already
    second = {**first, "last_tick_at": T0 + timedelta(minutes=1)}
    assert jobs.save_trigger_state("a.sh", "cron", second, previous=dict(jobs.get("a.sh").scheduler_state))
    assert not jobs.save_trigger_state("a.sh", "cron", {**first, "last_tick_at": T0 + timedelta(minutes=2)},
                                       previous=first)
    assert jobs.get("a.sh").scheduler_state["last_tick_at"] == T0 + timedelta(minutes=1)

    assert jobs.clear_trigger_states() == 0
    jobs.set_enabled("a.sh", False)
    assert jobs.clear_trigger_states() == 1
    assert jobs.get("a.sh").scheduler_state is None


def test_cursors_advance_together_only_forward_and_only_under_the_same_identity(any_store):
    # given three jobs on one schedule, one whose cursor is ahead, one whose schedule changed, one cleared
    jobs = any_store.jobs
    identity = {"schedule": "* * * * *", "timezone": "UTC"}
    for name in ("a.sh", "b.sh", "ahead.sh", "changed.sh", "cleared.sh"):
        job(any_store, name, enabled=True, schedule="* * * * *")
        assert jobs.save_trigger_state(name, "cron", {**identity, "last_tick_at": T0, "since": T0, "by": "s1"},
                                       previous=None)
    jobs.save_trigger_state("ahead.sh", "cron", {**identity, "last_tick_at": T0 + timedelta(minutes=5)},
                            previous=dict(jobs.get("ahead.sh").scheduler_state))
    jobs.save_trigger_state("changed.sh", "cron", {**identity, "schedule": "*/5 * * * *", "last_tick_at": T0},
                            previous=dict(jobs.get("changed.sh").scheduler_state))
    jobs.set_enabled("cleared.sh", False)
    jobs.clear_trigger_states()
    # when the scheduler moves them all to T0 + 1 min in one write
    moved = jobs.advance_trigger_cursors("cron", identity, ["a.sh", "b.sh", "ahead.sh", "changed.sh", "cleared.sh"],
                                         T0 + timedelta(minutes=1), by="s2")
    # then the two behind it moved (keeping since), and no other state changed
    assert moved == 2
    for name in ("a.sh", "b.sh"):
        assert jobs.get(name).scheduler_state == {**identity, "last_tick_at": T0 + timedelta(minutes=1),
                                                  "since": T0, "by": "s2"}
    assert jobs.get("ahead.sh").scheduler_state["last_tick_at"] == T0 + timedelta(minutes=5)
    assert jobs.get("changed.sh").scheduler_state["last_tick_at"] == T0
    assert jobs.get("cleared.sh").scheduler_state is None
    assert set(jobs.collection.find_one({"_id": "a.sh"})) == set(jobs.collection.find_one({"_id": "ahead.sh"}))
    # and another kind's cursor lives under trigger_state.<key>
    job(any_store, "i.sh", enabled=True)
    jobs.save_trigger_state("i.sh", "interval", {"every_s": 10, "last_tick_at": T0}, previous=None)
    assert jobs.advance_trigger_cursors("interval", {"every_s": 10}, ["i.sh"], T0 + timedelta(seconds=10), by="s2") == 1
    assert jobs.get("i.sh").extra["trigger_state"] == {
        "interval": {"every_s": 10, "last_tick_at": T0 + timedelta(seconds=10), "by": "s2"}}


def test_other_trigger_kinds_keep_their_cursor_under_trigger_state_and_lose_it_when_disabled(any_store):
    # given an enabled job without a schedule and a cursor of a non-cron trigger kind
    jobs = any_store.jobs
    job(any_store, "a.sh", enabled=True)
    state = {"every_s": 10, "last_tick_at": T0}
    # when it is saved with compare-and-set
    assert jobs.save_trigger_state("a.sh", "interval", state, previous=None)
    assert not jobs.save_trigger_state("a.sh", "interval", state, previous=None)
    # then it lives in trigger_state.<key>, apart from the cron cursor, and survives while the job is enabled
    stored = jobs.get("a.sh")
    assert stored.extra["trigger_state"] == {"interval": state} and stored.scheduler_state is None
    assert jobs.clear_trigger_states() == 0
    # and disabling the job forgets it
    jobs.set_enabled("a.sh", False)
    assert jobs.clear_trigger_states() == 1
    assert not jobs.get("a.sh").extra.get("trigger_state")


# -- runs ----------------------------------------------------------------------------------
def test_one_run_per_job_and_tick_but_any_number_of_manual_runs(any_store):
    a, b = job(any_store, "a.sh"), job(any_store, "b.sh")
    service = service_at(any_store)
    first = service.queue(a, CronTrigger(scheduled_for=T0))
    assert first is not None and first.trigger.scheduled_for == T0
    assert any_store.collection(schema.RUNS).find_one({"_id": first.id})["scheduled_for"] == T0
    assert service.queue(a, CronTrigger(scheduled_for=T0)) is None
    assert service.queue(b, CronTrigger(scheduled_for=T0)) is not None  # another job, same tick
    assert service.queue(a, CronTrigger(scheduled_for=T0 + timedelta(minutes=1))) is not None
    assert queued(any_store, a) and queued(any_store, a)
    assert len(any_store.runs.list(job="a.sh")) == 4


def test_claim_takes_runs_for_this_worker_its_tags_or_anyone(any_store):
    anyone = job(any_store, "any.sh")
    for_gpu = job(any_store, "gpu.sh", worker="gpu")
    for_w2 = job(any_store, "w2.sh", worker="w2")
    run_gpu = queued(any_store, for_gpu, 1)
    run_any = queued(any_store, anyone, 2)
    run_w2 = queued(any_store, for_w2, 3)
    at = T0 + timedelta(seconds=10)

    claimed = claim(any_store, "w1", ["gpu"], lease_s=30, now=at)
    assert claimed.id == run_gpu.id
    assert (claimed.status, claimed.worker) == ("running", "w1")
    assert (claimed.claimed_at, claimed.lease_until) == (at, T0 + timedelta(seconds=40))
    assert claim(any_store, "w1", ["gpu"], 30, now=at).id == run_any.id
    assert claim(any_store, "w1", ["gpu"], 30, now=at) is None  # w2.sh is not ours
    assert claim(any_store, "w2", [], 30, now=at).id == run_w2.id


def test_take_many_claims_the_runs_still_queued_in_the_order_given(any_store):
    a = job(any_store)
    runs = [queued(any_store, a, i) for i in range(4)]
    at = T0 + timedelta(seconds=10)
    rival = any_store.runs.take(runs[1].id, "rival", 30, now=at)  # taken meanwhile by another worker
    assert rival is not None

    taken = any_store.runs.take_many([runs[3].id, runs[1].id, runs[0].id, runs[3].id], "w1", 30, now=at)

    assert [run.id for run in taken] == [runs[3].id, runs[0].id]
    assert {(run.status, run.worker, run.claimed_at, run.lease_until) for run in taken} == {
        ("running", "w1", at, at + timedelta(seconds=30))}
    assert any_store.runs.get(runs[1].id).worker == "rival"
    assert any_store.runs.get(runs[2].id).status == "queued"
    # a second claim of the same runs (say a worker's retried update) takes nothing more
    assert any_store.runs.take_many([runs[0].id, runs[3].id], "w2", 30, now=at) == []
    assert any_store.runs.take_many([runs[2].id], "w2", 30, now=at)[0].worker == "w2"
    assert any_store.runs.take_many([], "w2", 30, now=at) == []


def test_claim_order_is_oldest_first_and_not_before_is_respected(any_store):
    a = job(any_store)
    later = queued(any_store, a, 5)
    delayed = queued(any_store, a, 0, not_before=T0 + timedelta(minutes=5))
    oldest = queued(any_store, a, 1)
    now = T0 + timedelta(minutes=1)
    assert [claim(any_store, "w", [], 30, now=now).id for _ in range(2)] == [oldest.id, later.id]
    assert claim(any_store, "w", [], 30, now=now) is None
    assert claim(any_store, "w", [], 30, now=T0 + timedelta(minutes=5)).id == delayed.id


def test_a_run_finishes_only_once(any_store):
    run = queued(any_store, job(any_store))
    claim(any_store, "w", [], 30, now=T0)
    any_store.runs.mark_started(run.id, pid=42, commit="c1", now=T0 + timedelta(seconds=1))
    done = any_store.runs.finish(run.id, RunStatus.SUCCEEDED, exit_code=0, now=T0 + timedelta(seconds=3))
    assert (done.status, done.exit_code, done.duration_s, done.lease_until) == ("succeeded", 0, 2.0, None)
    assert done.finished_at == T0 + timedelta(seconds=3)
    assert any_store.runs.finish(run.id, RunStatus.FAILED, exit_code=1, now=T0 + timedelta(seconds=4)) is None
    assert any_store.runs.get(run.id).status == "succeeded"


def test_cancel_ends_a_queued_run_at_once_and_flags_a_running_one(any_store):
    a = job(any_store)
    waiting, running = queued(any_store, a, 2), queued(any_store, a, 1)
    claim(any_store, "w", [], 30, now=T0 + timedelta(seconds=5))
    runs, service = any_store.runs, service_at(any_store, T0 + timedelta(seconds=6))

    cancelled = service.cancel(waiting.id, by="alice")
    assert (cancelled.status, cancelled.cancelled_by) == ("cancelled", "alice")
    assert cancelled.finished_at == T0 + timedelta(seconds=6)
    flagged = service.cancel(running.id, by="bob")
    assert (flagged.status, flagged.cancel_requested, flagged.cancelled_by) == ("running", True, "bob")
    assert runs.cancel_requested([running.id, waiting.id]) == [running.id]
    assert runs.flag_cancel(waiting.id, by="carol") is None  # only a running run is flagged
    runs.finish(running.id, RunStatus.CANCELLED, now=T0 + timedelta(seconds=7))
    with pytest.raises(SoonerError, match="already finished"):
        service.cancel(running.id, by="alice")


def test_promote_waiting_lets_the_oldest_waiting_run_go_when_none_is_active(any_store):
    a = job(any_store, overlap="queue")
    active = queued(any_store, a, 0)
    first = queued(any_store, a, 1, overlap_check=True)
    second = queued(any_store, a, 2, overlap_check=True)
    assert (first.status, second.status) == ("waiting", "waiting")
    later = T0 + timedelta(minutes=1)
    assert any_store.runs.promote_waiting("a.sh", now=later) is None
    assert any_store.runs.active_count("a.sh") == 3
    any_store.runs.finish(active.id, RunStatus.SUCCEEDED, now=later)
    promoted = any_store.runs.promote_waiting("a.sh", now=later)
    assert (promoted.id, promoted.status, promoted.not_before) == (first.id, "queued", later)
    assert any_store.runs.promote_waiting("a.sh", now=later) is None


def test_runs_are_found_by_id_or_unique_prefix(any_store):
    a = job(any_store)
    run = queued(any_store, a)
    other = queued(any_store, a)
    assert any_store.runs.get(run.id).id == run.id
    shared = next(i for i in range(24) if run.id[i] != other.id[i])
    assert any_store.runs.get(run.id[:max(6, shared + 1)]).id == run.id
    if shared >= 6:
        with pytest.raises(SoonerError, match="ambiguous"):
            any_store.runs.get(run.id[:6])
    with pytest.raises(RunNotFound):
        any_store.runs.get("ffffffffffff")
    with pytest.raises(RunNotFound):
        any_store.runs.get("abc")  # too short to be a prefix


def test_leases_are_renewed_by_their_worker_and_expire_otherwise(any_store):
    a = job(any_store)
    mine, theirs = queued(any_store, a, 0), queued(any_store, a, 1)
    claim(any_store, "w1", [], 30, now=T0 + timedelta(seconds=1))
    claim(any_store, "w2", [], 30, now=T0 + timedelta(seconds=1))
    any_store.runs.renew_leases("w1", [mine.id, theirs.id], 30, now=T0 + timedelta(seconds=20))
    expired = any_store.runs.expired_leases(now=T0 + timedelta(seconds=32))
    assert [r.id for r in expired] == [theirs.id]
    assert len(any_store.runs.running()) == 2
    assert [r.id for r in any_store.runs.running(worker="w1")] == [mine.id]
    assert any_store.runs.get(mine.id).lease_until == T0 + timedelta(seconds=50)


def test_runs_list_filters_and_pages_newest_first(any_store):
    a, b = job(any_store, "a.sh"), job(any_store, "b.sh")
    ids = [queued(any_store, a if i % 2 else b, i).id for i in range(6)]
    assert [r.id for r in any_store.runs.list()] == ids[::-1]
    assert [r.id for r in any_store.runs.list(job="a.sh", limit=2)] == [ids[5], ids[3]]
    assert [r.id for r in any_store.runs.list(before=ids[2])] == [ids[1], ids[0]]
    assert any_store.runs.list(status="running") == []
    last = any_store.runs.last_per_job(["a.sh", "b.sh", "c.sh"])
    assert {name: run.id for name, run in last.items()} == {"a.sh": ids[5], "b.sh": ids[4]}


# -- output, events, workers -----------------------------------------------------------------
def test_output_chunks_are_read_in_order_after_a_seq_and_a_retried_batch_is_skipped(any_store):
    out = any_store.output
    out.append("r1", [(0, "stdout", "one\n", None), (1, "stderr", "two\n", None)])
    out.append("r1", [(1, "stderr", "two again\n", None), (2, "system", "three\n", None)])  # seq 1 repeated
    out.append("r2", [(0, "stdout", "other run\n", None)])
    out.append("r1", [])
    assert out.text("r1") == "one\ntwo\nthree\n"
    assert [(c["seq"], c["stream"]) for c in out.read("r1", after_seq=0)] == [(1, "stderr"), (2, "system")]
    assert [c["seq"] for c in out.read("r1", limit=1)] == [0]
    assert out.read("r1", after_seq=2) == []
    assert (out.last_seq("r1"), out.last_seq("none")) == (2, -1)


def test_events_are_recorded_with_the_runs_they_started(any_store):
    events = any_store.events
    first = events.record("data-ready", {"n": 1}, source={"type": "cli", "author": "me"}, depth=0, now=T0)
    events.record("other", None, source={"type": "api"}, depth=0)
    events.attach_runs(first["_id"], ["r1", "r2"], note="why")
    stored = events.get(first["_id"])
    assert (stored["runs"], stored["note"], stored["data"], stored["t"]) == (["r1", "r2"], "why", {"n": 1}, T0)
    assert [e["name"] for e in events.list()] == ["other", "data-ready"]
    assert [e["_id"] for e in events.list(name="data-ready")] == [first["_id"]]


def register(store, name: str, instance: str, now: datetime, **options) -> Worker:
    return store.workers.register(name, instance=instance, host="h", pid=1, capacity=2, tags=["gpu"],
                                  version="1", stale_after_s=30, now=now, **options)


def test_a_worker_name_is_refused_while_its_holder_is_alive_and_taken_over_when_stale(any_store):
    workers = any_store.workers
    register(any_store, "w1", "i1", T0)
    with pytest.raises(WorkerError, match="already running on h"):
        register(any_store, "w1", "i2", T0 + timedelta(seconds=10))
    assert register(any_store, "w1", "i1", T0 + timedelta(seconds=10)).instance == "i1"  # its own restart
    assert workers.heartbeat("w1", "i1", running=["r1"], now=T0 + timedelta(seconds=20))

    taken = register(any_store, "w1", "i2", T0 + timedelta(seconds=51))
    assert taken.instance == "i2"
    assert not workers.heartbeat("w1", "i1", running=[])  # the old process learns it lost the name
    workers.unregister("w1", "i2", now=T0 + timedelta(seconds=52))
    assert workers.get("w1").stopped_at == T0 + timedelta(seconds=52)
    assert register(any_store, "w1", "i3", T0 + timedelta(seconds=53)).instance == "i3"
    assert [w.name for w in workers.list()] == ["w1"]


# -- queues --------------------------------------------------------------------------------------
def test_queue_put_find_claim_update_and_counts(any_store):
    queue = any_store.queues("emails")
    first = queue.put({"to": "a"})
    second = queue.put({"to": "b"})
    queue.put({"to": "c"}, status="done")
    assert [e["data"]["to"] for e in queue.find()] == ["a", "b", "c"]
    assert [e["data"]["to"] for e in queue.find(status="pending", limit=1)] == ["a"]

    claimed = queue.claim()
    assert (claimed["_id"], claimed["status"]) == (first["_id"], "working")
    assert queue.claim("pending", "mine")["_id"] == second["_id"]
    assert queue.claim() is None

    updated = queue.update(str(first["_id"]), status="done", data={"to": "a", "sent": True})
    assert (updated["status"], updated["data"]["sent"]) == ("done", True)
    assert updated["updatedAt"] >= updated["createdAt"]
    assert queue.update("0123456789abcdef01234567", status="x") is None
    assert queue.counts() == {"done": 2, "mine": 1}
    assert "emails" in any_store.queues.names()


# -- indexes -----------------------------------------------------------------------------------
def test_upgrading_replaces_the_one_run_per_tick_index_without_losing_uniqueness(any_store):
    # given a database indexed by version 2 (unique on job + scheduled_for only)
    runs = any_store.collection(schema.RUNS)
    for index in list(runs.list_indexes()):
        if "scheduled_for" in index["key"]:
            runs.drop_index(index["name"])
    runs.create_index([("job", 1), ("scheduled_for", 1)], unique=True, name="one_run_per_tick",
                      partialFilterExpression={"scheduled_for": {"$type": "date"}})
    runs.insert_one({"_id": "v2-run", "job": "a.sh", "status": "succeeded", "scheduled_for": T0 - timedelta(minutes=1)})
    any_store.collection(schema.META).delete_many({})
    # when the store opens it again
    any_store.ensure_indexes()
    # then the tick a version 2 scheduler fired is still fired once only
    assert service_at(any_store).queue(job(any_store), CronTrigger(scheduled_for=T0 - timedelta(minutes=1))) is None
    # then a second time trigger's run at the same moment is accepted, a repeated cron tick is not
    service = service_at(any_store)
    assert service.queue(job(any_store), CronTrigger(scheduled_for=T0)) is not None
    assert service.queue(job(any_store), CronTrigger(scheduled_for=T0)) is None
    keys = [list(index["key"]) for index in runs.list_indexes()]
    assert ["job", "scheduled_for"] not in keys


def test_ensure_indexes_is_idempotent_even_when_forced(any_store):
    any_store.ensure_indexes()
    any_store.collection(schema.META).delete_many({})
    any_store.ensure_indexes()
    any_store.ensure_indexes()
    keys = [list(index["key"]) for index in any_store.collection(schema.RUNS).list_indexes()]
    assert ["job", "scheduled_for", "fire_kind"] in keys  # (nx-27017 names indexes itself)
    assert ["job", "scheduled_for"] not in keys  # version 2's one_run_per_tick is gone
    service = service_at(any_store)
    run = service.queue(job(any_store), CronTrigger(scheduled_for=T0))
    assert run and service.queue(job(any_store), CronTrigger(scheduled_for=T0)) is None


# -- several processes (embedded store only) -----------------------------------------------------
CLAIMER = textwrap.dedent("""
    import json, os, sys, time
    from sooner.runs.service import RunService
    from sooner.store import Store
    url, database, name, go, kind = sys.argv[1:6]
    store = Store(url, database)
    service = RunService(store)
    store.ping()
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    claimed = []
    while True:
        if kind == "runs":
            run = service.claim(name, [], 30)
            item = run and run.id
        else:
            entry = store.queues("work").claim()
            item = entry and str(entry["_id"])
        if item is None:
            break
        claimed.append(item)
    print(json.dumps(claimed), flush=True)
""")


def claim_in_processes(store, tmp_path: Path, kind: str, processes: int = 4) -> list[list[str]]:
    go = tmp_path / f"go-{kind}"
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, store.url, store.database_name, f"w{i}", str(go), kind],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        go.touch()
        results = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in results]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in results]


def test_runs_claimed_by_several_processes_are_each_claimed_exactly_once(embedded_store, tmp_path):
    a = job(embedded_store)
    service = RunService(embedded_store)
    ids = {service.queue(a, ManualTrigger()).id for _ in range(200)}

    claimed = claim_in_processes(embedded_store, tmp_path, "runs")

    counts = Counter(run_id for batch in claimed for run_id in batch)
    assert set(counts) == ids and max(counts.values()) == 1
    assert sum(1 for batch in claimed if batch) >= 2  # they really competed
    workers = Counter(r.worker for r in embedded_store.runs.list(limit=500))
    assert sum(workers.values()) == 200 and all(r.status == "running" for r in embedded_store.runs.list(limit=500))


def test_queue_entries_claimed_by_several_processes_are_each_claimed_exactly_once(embedded_store, tmp_path):
    queue = embedded_store.queues("work")
    ids = {str(queue.put({"i": i})["_id"]) for i in range(200)}

    claimed = claim_in_processes(embedded_store, tmp_path, "queue")

    counts = Counter(entry for batch in claimed for entry in batch)
    assert set(counts) == ids and max(counts.values()) == 1
    assert queue.counts() == {"working": 200}
