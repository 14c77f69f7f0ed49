"""End-of-run listeners: a new one is registered in one place, runs in its slot, once per ended run.

The listener defined here counts usage per job (what a quota or billing
feature would do) and notes what it can see when it is called, to show its
place in the order: after ``retry``, before ``release-waiting`` and
``emit-outcome``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest

from sooner.errors import SoonerError
from sooner.model import Job, ManualTrigger, RunStatus
from sooner.runs.listeners import LISTENERS, ListenerRegistry, RunEnded

DEFAULT_ORDER = ["retry", "release-waiting", "emit-outcome", "notify"]


@dataclass
class UsageCounter:
    """Counts ended runs per job and notes, for each call, what the store shows at that moment."""

    ended: list[tuple[str, RunStatus]] = field(default_factory=list)
    per_job: dict[str, int] = field(default_factory=dict)
    seen: list[dict[str, object]] = field(default_factory=list)

    def __call__(self, ended: RunEnded) -> None:
        run, store = ended.run, ended.service.store
        self.ended.append((run.id, run.status))
        self.per_job[run.job] = self.per_job.get(run.job, 0) + 1
        others = [r for r in store.runs.list(job=run.job) if r.id != run.id]
        self.seen.append({
            "retry": [r.id for r in others if r.trigger.kind == "retry" and r.trigger.source == run.id],
            "waiting": [r.id for r in others if r.status is RunStatus.WAITING],
            "outcome events": [e["_id"] for e in store.events.list() if e["name"].startswith(f"job:{run.job}:")],
            "now": ended.now,
            "job": ended.job.name if ended.job else None,
        })


def deployed(store, name: str, **settings) -> Job:
    store.jobs.record_deployed(name, commit="c1", blob=f"blob-{name}")
    store.jobs.set_enabled(name, True)
    return store.jobs.update_settings(name, settings)


def claim_and_finish(service, run_id: str, status: RunStatus, exit_code: int | None = None) -> None:
    """What a worker does: claim the run, then end it."""
    assert service.claim("w1", [], lease_s=30).id == run_id
    assert service.finish(run_id, status, exit_code=exit_code) is not None


def test_a_listener_added_after_retry_runs_in_that_slot_and_is_removed_afterwards(clocked_store, make_service):
    # given the default registry and a service that uses it
    assert LISTENERS.names() == DEFAULT_ORDER
    counter = UsageCounter()
    service = make_service(clocked_store)
    assert service.listeners is LISTENERS

    # when a usage counter is added after retry for the duration of a block
    with LISTENERS.added("count-usage", counter, after="retry"):
        # then it sits between retry and release-waiting
        assert LISTENERS.names() == ["retry", "count-usage", "release-waiting", "emit-outcome", "notify"]
        deployed(clocked_store, "a.sh")
        run = service.queue("a.sh", ManualTrigger())
        claim_and_finish(service, run.id, RunStatus.SUCCEEDED, exit_code=0)

    # and is called for the run that ended; after the block the registry is as it was
    assert counter.ended == [(run.id, RunStatus.SUCCEEDED)]
    assert LISTENERS.names() == DEFAULT_ORDER


def test_the_listener_is_called_once_per_ended_run_after_retry_and_before_release_and_emit(
        clocked_store, make_service, fake_clock):
    # given a job retried once, with overlap=queue, and a usage counter on a copy of the registry
    counter = UsageCounter()
    listeners = LISTENERS.copy()
    listeners.register("count-usage", counter, after="retry")
    service = make_service(clocked_store, listeners=listeners)
    deployed(clocked_store, "etl.sh", retry={"attempts": 1, "delay_s": 30}, overlap="queue")
    first = service.queue("etl.sh", ManualTrigger(), overlap_check=True)
    waiting = service.queue("etl.sh", ManualTrigger(), overlap_check=True)

    # when the first run fails
    fake_clock.advance(5)
    claim_and_finish(service, first.id, RunStatus.FAILED, exit_code=1)

    # then the counter ran once, when the retry existed but the outcome event did not yet
    assert counter.ended == [(first.id, RunStatus.FAILED)]
    [seen] = counter.seen
    retry = clocked_store.runs.list(status="queued")[0]
    assert seen["retry"] == [retry.id]
    assert seen["outcome events"] == []
    assert (seen["now"], seen["job"]) == (fake_clock.now(), "etl.sh")
    # and the listeners after it still ran: the failure was emitted
    assert [e["name"] for e in clocked_store.events.list()] == ["job:etl.sh:failed"]
    assert clocked_store.runs.get(waiting.id).status == "waiting"  # the retry is queued ahead of it

    # when the retry succeeds and then the waiting run is cancelled before it starts
    fake_clock.advance(30)
    claim_and_finish(service, retry.id, RunStatus.SUCCEEDED, exit_code=0)
    assert counter.seen[1]["waiting"] == [waiting.id]  # release-waiting had not run yet
    assert clocked_store.runs.get(waiting.id).status == "queued"  # … and did afterwards
    service.cancel(waiting.id, by="alice")

    # then every ended run was counted once, in the order they ended
    assert counter.ended == [(first.id, RunStatus.FAILED), (retry.id, RunStatus.SUCCEEDED),
                             (waiting.id, RunStatus.CANCELLED)]
    assert counter.per_job == {"etl.sh": 3}
    # and the default registry never saw it
    assert LISTENERS.names() == DEFAULT_ORDER


def test_the_listener_is_not_called_for_a_run_that_had_already_ended(clocked_store, make_service):
    # given a counter and a run that ended
    counter = UsageCounter()
    with LISTENERS.added("count-usage", counter, after="retry"):
        service = make_service(clocked_store)
        deployed(clocked_store, "a.sh")
        run = service.queue("a.sh", ManualTrigger())
        claim_and_finish(service, run.id, RunStatus.SUCCEEDED, exit_code=0)

        # when it is ended again, lost by a late scheduler, or cancelled
        assert service.finish(run.id, RunStatus.FAILED, exit_code=1) is None
        assert service.finish(run.id, RunStatus.LOST) is None
        with pytest.raises(SoonerError, match="already finished"):
            service.cancel(run.id, by="alice")

    # then it was counted once only
    assert counter.ended == [(run.id, RunStatus.SUCCEEDED)]


def test_a_listener_that_raises_is_logged_and_the_others_still_run(clocked_store, make_service, caplog):
    # given a broken listener right after retry, and the usage counter after it
    def broken(ended: RunEnded) -> None:
        raise RuntimeError("quota service down")

    counter = UsageCounter()
    listeners = LISTENERS.copy()
    listeners.register("broken", broken, after="retry")
    listeners.register("count-usage", counter, after="broken")
    assert listeners.names() == ["retry", "broken", "count-usage", "release-waiting", "emit-outcome", "notify"]
    service = make_service(clocked_store, listeners=listeners)
    deployed(clocked_store, "a.sh", retry={"attempts": 1, "delay_s": 30})
    run = service.queue("a.sh", ManualTrigger())

    # when a run fails
    with caplog.at_level(logging.ERROR, logger="sooner.runs.listeners"):
        claim_and_finish(service, run.id, RunStatus.FAILED, exit_code=2)

    # then the end is recorded, the failure is logged with the run and the listener's name …
    assert clocked_store.runs.get(run.id).status == "failed"
    [record] = [r for r in caplog.records if r.name == "sooner.runs.listeners"]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == f"run {run.id}: end-of-run listener 'broken' failed"
    assert "quota service down" in caplog.text  # the traceback is kept
    # … and every other listener ran: the retry, the counter and the outcome event
    assert counter.ended == [(run.id, RunStatus.FAILED)]
    assert len(clocked_store.runs.list(status="queued")) == 1
    assert [e["name"] for e in clocked_store.events.list()] == ["job:a.sh:failed"]


def test_duplicate_listener_names_are_refused_and_leave_the_registry_unchanged():
    # given a registry with the defaults and one more
    registry = LISTENERS.copy()
    registry.register("count-usage", UsageCounter())

    # when the same name is registered again, or a default's name is reused
    with pytest.raises(ValueError, match="'count-usage' is registered already"):
        registry.register("count-usage", UsageCounter(), after="retry")
    with pytest.raises(ValueError, match="'retry' is registered already"):
        with LISTENERS.added("retry", UsageCounter()):
            pytest.fail("a duplicate name must not be added")

    # then neither registry changed
    assert registry.names() == [*DEFAULT_ORDER, "count-usage"]
    assert LISTENERS.names() == DEFAULT_ORDER


def test_a_listener_goes_at_the_end_or_before_another_and_can_be_removed():
    # given an empty registry
    registry = ListenerRegistry()
    noop = UsageCounter()

    # when listeners are placed at the end, before and after others
    remove_last = registry.register("last", noop)
    registry.register("first", noop, before="last")
    registry.register("middle", noop, after="first")

    # then the order is as asked, and removing one keeps the others in place
    assert registry.names() == ["first", "middle", "last"]
    remove_last()
    assert registry.names() == ["first", "middle"]
    # and a copy is independent of its original
    copy = registry.copy()
    copy.unregister("first")
    assert (registry.names(), copy.names()) == (["first", "middle"], ["middle"])
