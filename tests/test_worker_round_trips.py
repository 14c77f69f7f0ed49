"""A no-op run costs the worker five database commands, and what it reads at the start stands for its end.

Counted with a PyMongo command listener on the embedded server (a real wire
protocol): claim, the job and its hooked jobs, output, finished (with the start
record: the script ended before it was due, ``start_record_s``), the outcome
event -- plus one query for candidates, shared by a burst of claims, which also
reads the facts of every job it found once. The workers here wait a minute
before storing a start on its own, so a slow machine counts the same.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from pymongo import monitoring

from conftest import LongWaits, wait_for
from sooner.config import Settings
from sooner.model import ManualTrigger, RunStatus
from sooner.runs import doorbell
from sooner.runs import facts as facts_module
from sooner.runs.facts import JobFacts
from sooner.runs.service import RunService
from sooner.store import Store
from sooner.worker.testing import deploy_files


class Commands(monitoring.CommandListener):
    """Counts commands by (name, collection) while ``on``."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.on = False
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on and event.command_name not in ("endSessions", "hello", "isMaster", "ping"):
            with self._lock:
                self.counts[(event.command_name, str(event.command.get(event.command_name)))] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def counted(embedded_store):
    listener = Commands()
    monitoring.register(listener)  # for clients created from now on: a second client on the same database
    store = Store(embedded_store.url, embedded_store.database_name)
    yield store, listener
    listener.on = False
    store.close()


def run_one(worker, store: Store, job: str) -> None:
    run = RunService(store, Settings()).queue(job, ManualTrigger())
    started = worker.run_once()
    assert started is not None and started.id == run.id
    assert worker.wait_idle(30)
    assert store.runs.get(run.id).status is RunStatus.SUCCEEDED


def counting_worker(start_worker, store: Store, name: str, capacity: int):
    """A registered worker (not looping) whose runs' starts go with their ends (they end within a minute)."""
    worker = start_worker(store, Settings(), name, capacity=capacity, start=False)
    worker.runner.start_record_s = 60.0
    return worker


def test_a_no_op_run_costs_five_commands_and_one_for_its_claim_candidates(counted, start_worker):
    store, listener = counted
    deploy_files(store, {"noop.sh": "#!/bin/sh\nexit 0\n"})
    worker = counting_worker(start_worker, store, "trips", 1)
    run_one(worker, store, "noop.sh")  # materialises the tree: not what a run costs once warm
    run = RunService(store, Settings()).queue("noop.sh", ManualTrigger())
    listener.counts.clear()
    listener.on = True
    started = worker.run_once()
    assert worker.wait_idle(30)
    listener.on = False
    assert started is not None and started.id == run.id
    assert store.runs.get(run.id).status is RunStatus.SUCCEEDED
    assert listener.counts == Counter({
        ("find", "runs"): 1,  # claim candidates (a burst of claims shares it)
        ("findAndModify", "runs"): 2,  # take; finish, with the start record (pid, host, times)
        ("find", "jobs"): 1,  # the job and the jobs hooked to its end, at once
        ("insert", "run_output"): 1,  # the start and exit lines in one batch
        ("insert", "events"): 1,  # job:noop.sh:succeeded
    }), listener.counts


def burst(store: Store, count: int) -> list[str]:
    """Queue ``count`` runs of noop.sh; their ids."""
    return [RunService(store, Settings()).queue("noop.sh", ManualTrigger()).id for _ in range(count)]


def claim_and_finish(worker, ids: list[str]) -> None:
    for _ in ids:
        assert worker.run_once() is not None
    assert worker.wait_idle(30)


def assert_succeeded(store: Store, ids: list[str]) -> None:
    assert [store.runs.get(run_id).status for run_id in ids] == [RunStatus.SUCCEEDED] * len(ids)


def warm_worker_and_burst(counted, start_worker, name: str, count: int) -> tuple:
    """A capacity-4 worker that ran one run (its tree is materialised), ``count`` runs queued, counting on."""
    store, listener = counted
    deploy_files(store, {"noop.sh": "#!/bin/sh\nexit 0\n"})
    worker = counting_worker(start_worker, store, name, 4)
    run_one(worker, store, "noop.sh")
    ids = burst(store, count)
    listener.counts.clear()
    listener.on = True
    return store, listener, worker, ids


def test_a_burst_of_runs_found_in_one_look_reads_their_jobs_once(counted, start_worker):
    store, listener, worker, ids = warm_worker_and_burst(counted, start_worker, "burst", 4)
    claim_and_finish(worker, ids)
    listener.on = False
    assert_succeeded(store, ids)
    assert_grouped(listener.counts, {("insert", "run_output"): 4, ("insert", "events"): 4})
    assert listener.counts == Counter({
        ("find", "runs"): 1,  # one look at the queue finds all four
        ("find", "jobs"): 1,  # and their job's facts with them, for every run it finds
        ("findAndModify", "runs"): 8,  # take and finish, each
    }), listener.counts


def assert_grouped(counts: Counter, at_most: dict[tuple[str, str], int]) -> None:
    """Writes that runs ending together share (sooner.store.group): at least one command, at most one per run.

    Removes them from ``counts``: how many commands carried them depends on how the runs' threads met.
    """
    for kind, most in at_most.items():
        assert 1 <= counts.pop(kind, 0) <= most, (kind, most)


def test_a_burst_claimed_at_once_costs_one_update_and_one_read_for_all_its_claims(counted, start_worker):
    store, listener, worker, ids = warm_worker_and_burst(counted, start_worker, "batch", 5)

    # when the worker claims what there is room for
    started = worker.run_batch()
    assert worker.wait_idle(30)
    listener.on = False

    # then it took the four oldest (its capacity), and four claims cost one update and one read
    assert [run.id for run in started] == ids[:4]
    assert_succeeded(store, ids[:4])
    assert store.runs.get(ids[4]).status is RunStatus.QUEUED
    assert_grouped(listener.counts, {("insert", "run_output"): 4, ("insert", "events"): 4})
    assert listener.counts == Counter({
        ("update", "runs"): 1,  # the claim of all four (their starts go with their ends)
        ("find", "runs"): 2,  # the look at the queue, and the read of what the update took
        ("find", "jobs"): 1, ("findAndModify", "runs"): 4,  # the facts of all four; each one's finish
    }), listener.counts


def test_facts_from_an_old_look_are_not_reused(counted, start_worker, monkeypatch):
    store, listener = counted
    deploy_files(store, {"noop.sh": "#!/bin/sh\nexit 0\n"})
    worker = start_worker(store, Settings(), "stale", capacity=2, start=False)
    run_one(worker, store, "noop.sh")
    ids = burst(store, 2)
    monkeypatch.setattr(facts_module, "REUSE_S", -1.0)  # whatever the look read is too old by the claim
    listener.counts.clear()
    listener.on = True
    claim_and_finish(worker, ids)
    listener.on = False
    assert_succeeded(store, ids)
    assert listener.counts[("find", "jobs")] == 3, listener.counts  # the look's read, then each run its own


def test_the_end_of_a_run_starts_the_jobs_hooked_when_it_started(counted, start_worker):
    store, _ = counted
    deploy_files(store, {"noop.sh": "#!/bin/sh\nexit 0\n", "next.sh": "#!/bin/sh\nexit 0\n"},
                 hooks={"next.sh": ["job:noop.sh:succeeded"]})
    worker = start_worker(store, Settings(), "hooks", capacity=1, start=False)
    run_one(worker, store, "noop.sh")
    wait_for(lambda: store.runs.list(job="next.sh"), message="the hooked job was queued")


def test_facts_older_than_fresh_s_are_read_again(mock_store, monkeypatch):
    deploy_files(mock_store, {"noop.sh": "#!/bin/sh\nexit 0\n", "next.sh": "#!/bin/sh\nexit 0\n"})
    facts = JobFacts.read(mock_store, "noop.sh")
    assert facts.hooked_to("job:noop.sh:succeeded") == []
    mock_store.jobs.update_settings("next.sh", {}, add_hooks=["job:noop.sh:succeeded"])
    assert facts.hooked_to("job:noop.sh:succeeded") == []  # fresh: a hook added a moment ago waits for the next run
    clock = [facts.read_at + facts_module.FRESH_S + 0.1]
    monkeypatch.setattr(facts_module.time, "monotonic", lambda: clock[0])
    assert facts.hooked_to("job:noop.sh:succeeded") is None  # stale: the end reads the hooks again
    service = RunService(mock_store, Settings())
    run = service.queue("noop.sh", ManualTrigger())
    service.take(run.id, "w", 30)
    service.finish(run.id, RunStatus.SUCCEEDED, exit_code=0, facts=facts)
    assert [r.job for r in mock_store.runs.list(job="next.sh")] == ["next.sh"]


def test_a_run_queued_in_this_process_wakes_an_idle_worker_at_once(mock_store, tmp_path):
    from sooner.worker.loop import Worker

    # A worker that would not look again for a minute (poll and heartbeat) still takes the run now:
    # under `sooner up` the web, the scheduler and the worker share the process and its doorbell.
    settings = Settings(heartbeat_s=60, lease_s=180)
    deploy_files(mock_store, {"noop.sh": "#!/bin/sh\nexit 0\n"})
    worker = Worker(mock_store, settings, "doorbell", 1, cache=tmp_path / "cache", poll_s=60)
    worker.finished = waits = LongWaits()
    doorbell.listen(waits)
    worker.register()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        assert waits.long_wait.wait(20), "the loop never waited"  # it looked once and found nothing
        run = RunService(mock_store, settings).queue("noop.sh", ManualTrigger())
        wait_for(lambda: mock_store.runs.get(run.id).finished, timeout=20, message="the run was taken without a poll")
        assert mock_store.runs.get(run.id).worker == "doorbell"
    finally:
        stop.set()
        worker.finished.set()  # the loop's wait is a minute long: end it
        thread.join(30)
    assert not thread.is_alive()
