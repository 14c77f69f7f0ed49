"""Monitoring samples: a run's process tree is measured (peak memory, CPU time, samples), the worker stores its
host's, its own and its runs' samples in one insert per heartbeat, the scheduler samples the queue, and
retention removes old samples.

Runs are real scripts under a real worker on the embedded server; commands are counted with a PyMongo
command listener on that thread only (as tests/test_scheduler_batch.py does).
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from pymongo import monitoring

from conftest import wait_for
from sooner.clock import FakeClock
from sooner.config import Settings
from sooner.model import FINISHED, ManualTrigger, Run, RunStatus
from sooner.model.sample import Sample, SampleKind
from sooner.runs.service import RunService
from sooner.store import Store, schema
from sooner.worker.testing import deploy_files

UTC = timezone.utc
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
MB = 1 << 20

# Holds ~50 MB (written, so resident) while it burns about half a second of CPU, then exits.
HUNGRY = f"""#!{sys.executable}
import time
block = b"x" * (50 << 20)
start = time.process_time()
while time.process_time() - start < 0.6:
    pass
time.sleep(0.6)
print(len(block))
"""
# A child that burns CPU and is gone before the first sample (after 0.5 s): only its rusage shows it.
BRIEF_CHILD = f"""#!/bin/sh
{sys.executable} -c 'import time
s = time.process_time()
while time.process_time() - s < 0.3: pass'
sleep 0.8
"""


@pytest.fixture
def settings(embedded_store) -> Settings:
    return Settings(mongo_url=embedded_store.url, database=embedded_store.database_name, heartbeat_s=0.2, lease_s=5.0,
                    cancel_grace_s=1.0, shutdown_grace_s=2.0, output_flush_ms=50, sample_s=0.5)


def queue(store: Store, job: str) -> str:
    run = RunService(store).queue(job, ManualTrigger())
    assert run is not None
    return run.id


def finished(store: Store, run_id: str, timeout: float = 30) -> Run:
    return wait_for(lambda: (r := store.runs.get(run_id)).status in FINISHED and r, timeout,
                    message=f"run {run_id} to finish")


class Commands(monitoring.CommandListener):
    """Counts (command, collection) of the commands one thread sends."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.thread: threading.Thread | None = None

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if threading.current_thread() is self.thread:
            self.counts[(event.command_name, str(event.command.get(event.command_name)))] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_a_run_records_its_trees_peak_memory_and_cpu_time_and_samples_of_it(embedded_store, settings, start_worker):
    # given a script that holds about 50 MB while it burns CPU
    deploy_files(embedded_store, {"hungry.py": HUNGRY})
    start_worker(embedded_store, settings, "w1")
    # when it runs
    run = finished(embedded_store, queue(embedded_store, "hungry.py"))
    # then its end records the peak of its memory and its CPU seconds
    assert run.status is RunStatus.SUCCEEDED, embedded_store.output.text(run.id)
    assert run.peak_rss_bytes is not None and run.peak_rss_bytes >= 40 * MB, run.peak_rss_bytes
    assert run.cpu_s is not None and 0.4 < run.cpu_s < 5, run.cpu_s
    # and the heartbeat stored samples of its tree, one of them holding the memory
    samples = wait_for(lambda: embedded_store.reads.samples(SampleKind.RUN, run.id), 10,
                       message="the run's samples to be stored")
    assert max(s.rss_bytes or 0 for s in samples) >= 40 * MB, samples
    assert all(s.cpu_percent is not None and s.cpu_percent >= 0 for s in samples)


def test_cpu_time_of_a_child_that_ended_between_samples_is_counted(embedded_store, settings, start_worker):
    # given a script whose child burns 0.3 s of CPU and exits before the tree is first sampled
    deploy_files(embedded_store, {"brief.sh": BRIEF_CHILD})
    start_worker(embedded_store, settings, "w1")
    # when it runs
    run = finished(embedded_store, queue(embedded_store, "brief.sh"))
    # then the supervisor's report of what its children used counts it
    assert run.status is RunStatus.SUCCEEDED, embedded_store.output.text(run.id)
    assert run.cpu_s is not None and run.cpu_s >= 0.25, run.cpu_s


def test_a_heartbeat_stores_the_host_worker_and_run_samples_in_one_insert(embedded_store, settings, start_worker):
    # given a worker running a script, whose tree has been sampled for a while
    deploy_files(embedded_store, {"sleepy.sh": "#!/bin/sh\nsleep 30\n"})
    worker = start_worker(embedded_store, settings, "w1", start=False)
    run_id = queue(embedded_store, "sleepy.sh")
    assert worker.run_once() is not None
    active = worker.active(run_id)
    assert active is not None
    wait_for(lambda: active.usage.pending() >= 2, 10, message="the run's tree to be sampled")
    listener = Commands()
    monitoring.register(listener)  # for clients made from now on: the worker's own store on the same database
    store = Store(embedded_store.url, embedded_store.database_name)
    try:
        worker.store = store
        worker.sampler._next = 0.0  # the host sample is due now
        # when the worker heartbeats, counting this thread's commands
        listener.thread = threading.current_thread()
        worker.heartbeat()
        listener.thread = None
        # then one insert into samples carried the host's, the worker process's and the run's samples
        inserts = {key: n for key, n in listener.counts.items() if key[0] == "insert"}
        assert inserts == {("insert", schema.SAMPLES): 1}, listener.counts
        assert embedded_store.reads.samples(SampleKind.HOST, "w1")[0].mem_used_percent is not None
        assert embedded_store.reads.samples(SampleKind.WORKER, "w1")[0].rss_bytes > 0
        assert len(embedded_store.reads.samples(SampleKind.RUN, run_id)) >= 2
        # and a heartbeat before the next sample is due stores none
        listener.counts.clear()
        listener.thread = threading.current_thread()
        worker.heartbeat()
        listener.thread = None
        assert not [key for key in listener.counts if key[1] == schema.SAMPLES], listener.counts
    finally:
        listener.thread = None
        worker.store = embedded_store
        store.close()
        worker.cancel_all("test over")
        worker.wait_idle(20)


def test_retention_removes_samples_past_it_at_most_hourly_on_a_fake_clock(any_store):
    # given samples 30 hours, 23 hours and 1 minute old, and a retention of 24 hours
    clock = FakeClock(T0)
    samples = any_store.samples
    samples.retention_hours = 24
    samples.insert([Sample(SampleKind.HOST, "w1", T0 - age, cpu_percent=1.0)
                    for age in (timedelta(hours=30), timedelta(hours=23), timedelta(minutes=1))])
    # when the scheduler's share runs, then only the sample past the retention goes
    samples.tick(clock.now(), every_s=5)
    assert [s.t for s in any_store.reads.samples(SampleKind.HOST, "w1")] == [T0 - timedelta(hours=23),
                                                                          T0 - timedelta(minutes=1)]
    # an hour and a half later the 23-hour-old one is past it too, but the next prune waits for the hour
    clock.advance(1.5 * 3600 - 60)
    samples.tick(clock.now(), every_s=5)
    assert len(any_store.reads.samples(SampleKind.HOST, "w1")) == 1
    clock.advance(30)
    assert samples.prune_expired(clock.now()) == 0


def test_the_age_index_is_a_ttl_index_of_the_retention_where_the_server_sweeps(mock_store):
    # given a retention of 6 hours
    mock_store.samples.retention_hours = 6
    # when the index is shaped for a server that expires documents itself, then it is a TTL index of 6 hours
    mock_store.samples.ensure_retention(server_sweeps_ttl=True)
    ages = [i for i in mock_store.collection(schema.SAMPLES).list_indexes() if list(i["key"]) == ["t"]]
    assert [i.get("expireAfterSeconds") for i in ages] == [6 * 3600]
    # and where it does not (the embedded server), a plain one
    mock_store.samples.ensure_retention(server_sweeps_ttl=False)
    ages = [i for i in mock_store.collection(schema.SAMPLES).list_indexes() if list(i["key"]) == ["t"]]
    assert [i.get("expireAfterSeconds") for i in ages] == [None]


def test_two_schedulers_sampling_the_queue_in_one_slot_store_one_sample(embedded_store):
    # given two queued runs and two schedulers' stores on one database
    deploy_files(embedded_store, {"a.sh": "#!/bin/sh\n"})
    queue(embedded_store, "a.sh")
    queue(embedded_store, "a.sh")
    other = Store(embedded_store.url, embedded_store.database_name)
    try:
        # when both sample the queue within one 5 s slot
        embedded_store.samples.tick(T0, every_s=5)
        other.samples.tick(T0 + timedelta(seconds=1), every_s=5)
        # then one sample holds the depth; the next slot gets its own
        depth = embedded_store.reads.samples(SampleKind.QUEUE, "")
        assert [(s.depth, s.running) for s in depth] == [(2, 0)]
        other.samples.tick(T0 + timedelta(seconds=6), every_s=5)
        assert len(embedded_store.reads.samples(SampleKind.QUEUE, "")) == 2
    finally:
        other.close()


def test_the_sample_settings_are_checked_with_the_key_named():
    from sooner.config import load_settings
    from sooner.errors import ConfigError

    for key, value in (("sample_s", 0.1), ("sample_retention_hours", 0.5), ("sample_retention_hours", float("nan"))):
        with pytest.raises(ConfigError, match=key):
            load_settings(None, environ={}, overrides={key: value})
