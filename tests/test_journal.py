"""The outage journal, the output writer and call handler that spool to it, and the lease rules around an outage.

Unit tests on mongomock with a fake clock; ``tests/test_outage.py`` runs the
same through real processes and real database faults.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from sooner.config import Settings
from sooner.errors import StoreUnreachable
from sooner.model import ManualTrigger, RunStatus
from sooner.scheduling.scheduler import Scheduler
from sooner.store import Store
from sooner.worker.calls import CallHandler
from sooner.worker.journal import RunJournal, StoreLink, replay_left_journals
from sooner.worker.loop import Worker
from sooner.worker.output import OutputWriter
from sooner.worker.runner import journal_dir_for
from sooner.worker.testing import deploy_files


class ManualLink(StoreLink):
    """A link whose probe never runs: the test says when the database is back (``answered()``)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, probe_s=3600)

    def _probe(self) -> None:
        return


class Outage:
    """Makes the store's writes of some repositories raise StoreUnreachable while ``down``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *targets: tuple[object, str]) -> None:
        self.down = False
        self.calls = 0
        for owner, name in targets:
            original = getattr(owner, name)
            monkeypatch.setattr(owner, name, self._guard(original))

    def _guard(self, original):
        def call(*args, **kwargs):
            self.calls += 1
            if self.down:
                raise StoreUnreachable("cannot reach the database (injected)")
            return original(*args, **kwargs)
        return call


@pytest.fixture
def running_run(clocked_store: Store, service):
    deploy_files(clocked_store, {"job.sh": "#!/bin/sh\n"})
    run = service.queue("job.sh", ManualTrigger())
    return service.take(run.id, "w1", 30)


def texts(store: Store, run_id: str) -> list[tuple[int, str]]:
    return [(chunk["seq"], chunk["text"]) for chunk in store.output.read(run_id)]


def test_output_the_database_cannot_take_is_journaled_in_order_and_replayed_with_its_numbers(
        clocked_store, service, running_run, tmp_path, monkeypatch):
    # given a writer with a journal, and a database that goes away after the first batch
    outage = Outage(monkeypatch, (clocked_store.output, "append"))
    link = ManualLink(clocked_store)
    journal = RunJournal(tmp_path, running_run.id, max_bytes=1 << 20)
    writer = OutputWriter(clocked_store, running_run.id, flush_s=0.01, journal=journal, link=link)
    writer.write("stdout", "one\n")
    writer.flush()
    outage.down = True
    # when two more batches are written during the outage, and one after it but before the replay
    writer.write("stdout", "two\n")
    writer.flush()
    assert link.down and journal.active
    calls = outage.calls
    writer.write("stderr", "three\n")
    writer.flush()
    assert outage.calls == calls, "a link that is down is not asked again"
    outage.down = False
    link.answered()
    writer.write("stdout", "four\n")
    writer.flush()
    # then nothing but the first batch is stored until the journal is replayed, and then all in order
    assert texts(clocked_store, running_run.id) == [(0, "one\n")]
    assert journal.replay(service) is True
    assert texts(clocked_store, running_run.id) == [(0, "one\n"), (1, "two\n"), (2, "three\n"), (3, "four\n")]
    assert not journal.active and journal.path.stat().st_size == 0
    writer.write("stdout", "five\n")
    writer.flush()
    assert texts(clocked_store, running_run.id)[-1] == (4, "five\n")


def test_replaying_a_journal_twice_stores_nothing_twice(clocked_store, service, running_run, tmp_path):
    # given a journal holding output, progress, an event and the run's end
    journal = RunJournal(tmp_path, running_run.id, max_bytes=1 << 20)
    now = clocked_store.clock.now()
    journal.output([(0, "stdout", "hello\n", now)])
    journal.progress(3, 4)
    event_id = journal.emit("thing.done", {"n": 1}, source={"type": "run", "run": running_run.id, "job": "job.sh"},
                           depth=1, t=now)
    journal.end(RunStatus.SUCCEEDED, exit_code=0, note=None, started_at=now, process_gone=False)
    journal.close(remove=False)
    copy = (tmp_path / "copy")
    copy.mkdir()
    (copy / journal.path.name).write_bytes(journal.path.read_bytes())
    # when a successor replays it, and then (killed mid-way, say) replays the same file again
    assert replay_left_journals(tmp_path, service) == [running_run.id]
    assert replay_left_journals(copy, service) == [running_run.id]
    # then each record is stored once, and the files are gone
    run = clocked_store.runs.get(running_run.id)
    assert (run.status, run.exit_code, run.progress.current) == (RunStatus.SUCCEEDED, 0, 3)
    assert texts(clocked_store, run.id) == [(0, "hello\n")]
    events = [e for e in clocked_store.events.list() if e["name"] == "thing.done"]
    assert [e["_id"] for e in events] == [event_id]
    assert not journal.path.exists() and not (copy / journal.path.name).exists()


def test_a_record_cut_short_by_a_kill_is_ignored_and_the_rest_replayed(clocked_store, service, running_run, tmp_path):
    journal = RunJournal(tmp_path, running_run.id, max_bytes=1 << 20)
    journal.output([(0, "stdout", "kept\n", clocked_store.clock.now())])
    journal.close(remove=False)
    with open(journal.path, "ab") as file:
        file.write(b'{"k": "output", "seq": 1, "stre')
    assert replay_left_journals(tmp_path, service) == [running_run.id]
    assert texts(clocked_store, running_run.id) == [(0, "kept\n")]


def test_a_full_journal_says_so_and_empties_as_it_is_replayed(clocked_store, service, running_run, tmp_path):
    journal = RunJournal(tmp_path, running_run.id, max_bytes=1 << 20)
    journal.output([(0, "stdout", "x" * 40 + "\n", clocked_store.clock.now())])
    journal.max_bytes = 3 * journal.path.stat().st_size  # room for three records
    for seq in range(1, 4):
        journal.output([(seq, "stdout", "x" * 40 + "\n", clocked_store.clock.now())])
    assert journal.full
    assert journal.replay(service, limit=2) is False and not journal.full
    assert journal.replay(service) is True
    assert [seq for seq, _ in texts(clocked_store, running_run.id)] == [0, 1, 2, 3]


def test_progress_and_events_during_an_outage_are_spooled_and_stored_once_it_is_back(
        clocked_store, service, running_run, tmp_path, monkeypatch):
    # given a call handler with a journal, and a database that is away
    outage = Outage(monkeypatch, (clocked_store.runs, "set_progress"), (clocked_store.events, "record"))
    link = ManualLink(clocked_store)
    journal = RunJournal(tmp_path, running_run.id, max_bytes=1 << 20)
    calls = CallHandler(service, running_run, throttle_s=0, journal=journal, link=link)
    outage.down = True
    # when the script reports progress and emits
    calls.progress(1, 10)
    reply = calls.emit("batch.done", {"n": 1})
    calls.progress(2, 10)
    # then neither raised: the event has its id already and is marked spooled
    assert reply["spooled"] is True and reply["runs"] == [] and "once it is back" in reply["note"]
    assert link.down and journal.active
    # and once the database is back and the journal replayed, both are stored, the event under that id
    outage.down = False
    link.answered()
    assert journal.replay(service) is True
    assert clocked_store.runs.get(running_run.id).progress.current == 2
    assert [e["_id"] for e in clocked_store.events.list() if e["name"] == "batch.done"] == [reply["event"]]


def test_an_event_stored_just_before_the_outage_is_not_stored_twice(clocked_store, service, running_run, tmp_path,
                                                                     monkeypatch):
    # given an emit whose event is stored, after which the database goes away (before the hooks are done)
    link = ManualLink(clocked_store)
    journal = RunJournal(tmp_path, running_run.id, max_bytes=1 << 20)
    calls = CallHandler(service, running_run, journal=journal, link=link)
    original = clocked_store.jobs.with_hook

    def gone(*args, **kwargs):
        raise StoreUnreachable("cannot reach the database (injected)")
    monkeypatch.setattr(clocked_store.jobs, "with_hook", gone)
    reply = calls.emit("half.done")
    monkeypatch.setattr(clocked_store.jobs, "with_hook", original)
    # when the journal is replayed
    link.answered()
    journal.replay(service)
    # then the event exists once, under the id the script was given
    assert reply["spooled"] is True
    assert [e["_id"] for e in clocked_store.events.list() if e["name"] == "half.done"] == [reply["event"]]


def test_a_refused_write_is_not_an_outage_and_is_not_journaled(clocked_store, service, running_run, tmp_path,
                                                              monkeypatch):
    from sooner.errors import StoreError
    from sooner.worker.calls import CallNotRecorded

    link = ManualLink(clocked_store)
    journal = RunJournal(tmp_path, running_run.id, max_bytes=1 << 20)
    calls = CallHandler(service, running_run, journal=journal, link=link)

    def refused(*args, **kwargs):
        raise StoreError("document too large (injected)")
    monkeypatch.setattr(clocked_store.events, "record", refused)
    with pytest.raises(CallNotRecorded):
        calls.emit("too.big")
    assert not link.down and not journal.active


def test_a_worker_replays_the_journal_its_predecessor_left_before_ending_its_runs(clocked_store, service, running_run,
                                                                                 tmp_path):
    # given a run marked running on w1, whose worker died during an outage after the script ended,
    # leaving the run's output and end in its journal
    settings = Settings(lease_s=30, heartbeat_s=1)
    directory = journal_dir_for(tmp_path / "cache", "w1")
    journal = RunJournal(directory, running_run.id, max_bytes=1 << 20)
    now = clocked_store.clock.now()
    journal.output([(0, "stdout", "all done\n", now)])
    journal.end(RunStatus.FAILED, exit_code=3, note=None, started_at=now, process_gone=False)
    journal.close(remove=False)
    # when w1 starts again on this host
    worker = Worker(clocked_store, settings, "w1", cache=tmp_path / "cache", service=service)
    worker.register()
    # then the run ended as its script did (not "lost"), with its output, and the journal is gone
    run = clocked_store.runs.get(running_run.id)
    assert (run.status, run.exit_code) == (RunStatus.FAILED, 3)
    assert texts(clocked_store, run.id) == [(0, "all done\n")]
    assert not journal.path.exists()


def test_a_link_tells_runs_when_the_database_is_back(clocked_store):
    link = ManualLink(clocked_store)
    back = threading.Event()
    forget = link.on_up(back.set)
    link.failed("injected")
    assert link.down and link.outages == 1
    link.answered()
    assert back.is_set() and not link.down
    forget()
    back.clear()
    link.failed("again")
    link.answered()
    assert not back.is_set()


# -- leases around an outage ------------------------------------------------------------------------
@pytest.fixture
def expired_run(clocked_store, make_service, fake_clock):
    service = make_service(clocked_store, lease_s=30, cancel_grace_s=10, outage_grace_s=300)
    deploy_files(clocked_store, {"job.sh": "#!/bin/sh\n"})
    run = service.queue("job.sh", ManualTrigger())
    service.take(run.id, "w1", 30)
    fake_clock.advance(31)
    return service, run


def test_the_scheduler_marks_no_lease_lost_for_a_lease_after_the_database_did_not_answer(clocked_store, fake_clock,
                                                                                          expired_run):
    service, run = expired_run
    scheduler = Scheduler(clocked_store, service=service)
    # when the scheduler could not reach the database (a failed tick), then can again
    scheduler.database_unreachable()
    assert scheduler.expire_leases() == []
    hold = 30 + clocked_store.retry_window_s  # a lease, once the worker's own retries are through
    fake_clock.advance(hold - 1)
    assert scheduler.expire_leases() == []
    assert clocked_store.runs.get(run.id).status is RunStatus.RUNNING
    # then once that has passed without a renewal, the run is lost
    fake_clock.advance(2)
    assert [r.id for r in scheduler.expire_leases()] == [run.id]


def test_an_outage_hidden_by_the_stores_retries_holds_the_lease_checks_too(clocked_store, fake_clock, expired_run,
                                                                          monkeypatch):
    service, run = expired_run
    scheduler = Scheduler(clocked_store, service=service)
    original = clocked_store.runs.expired_leases

    def listed_after_a_retry(**kwargs):
        clocked_store._retrier.failures += 1  # the listing needed a retry: the database was away meanwhile
        return original(**kwargs)
    monkeypatch.setattr(clocked_store.runs, "expired_leases", listed_after_a_retry)
    assert scheduler.expire_leases() == []
    monkeypatch.setattr(clocked_store.runs, "expired_leases", original)
    assert scheduler.expire_leases() == []
    fake_clock.advance(31 + clocked_store.retry_window_s)
    assert [r.id for r in scheduler.expire_leases()] == [run.id]


def test_a_lost_runs_retry_waits_until_its_script_cannot_be_running_any_more(clocked_store, make_service, fake_clock):
    # given a job that retries, whose run started on a worker that keeps scripts through a 300 s outage
    service = make_service(clocked_store, lease_s=30, cancel_grace_s=10, outage_grace_s=300)
    deploy_files(clocked_store, {"job.sh": "#!/bin/sh\n"}, settings={"job.sh": {"retry": {"attempts": 1}}})
    run = service.queue("job.sh", ManualTrigger())
    service.take(run.id, "w1", 30)  # the claim records how long the script may outlive the lease
    clocked_store.runs.mark_started(run.id, pid=1, commit=None)
    # when its lease expires (a worker cut off from the database, not the database) and it is marked lost
    fake_clock.advance(31)
    service.expire_leases()
    # then its retry waits the outage grace past the lease, plus the cancel grace
    retry = clocked_store.runs.list(status="queued")[0]
    assert retry.not_before == fake_clock.now() + timedelta(seconds=270 + 10)


def test_settings_fence_a_script_for_the_longer_of_the_lease_and_the_outage_grace():
    assert Settings(lease_s=30, outage_grace_s=300).fence_s == 300
    assert Settings(lease_s=30, outage_grace_s=300).outlives_lease_s == 270
    assert Settings(lease_s=30, outage_grace_s=0).fence_s == 30
    assert Settings(lease_s=30, outage_grace_s=0).outlives_lease_s == 0


def test_journal_dirs_are_one_per_worker_name(tmp_path: Path):
    assert journal_dir_for(tmp_path, "w1") != journal_dir_for(tmp_path, "w2")
    assert journal_dir_for(tmp_path, "../x").parent == tmp_path / "journal"


# -- a real worker: the journal's bound holds the script back, and nothing is lost ------------------------
def test_a_full_journal_makes_the_script_wait_and_loses_nothing(embedded_store, start_worker, tmp_path, monkeypatch):
    from conftest import wait_for
    from sooner.model import FINISHED
    from sooner.runs.service import RunService

    # given a worker whose runs may journal 1 MB, and a database that refuses output writes as if unreachable
    settings = Settings(mongo_url=embedded_store.url, database=embedded_store.database_name, heartbeat_s=0.2,
                        lease_s=5, outage_journal_mb=1, output_flush_ms=20)
    outage = Outage(monkeypatch, (embedded_store.output, "append"))
    outage.down = True
    worker = start_worker(embedded_store, settings, "w1", 1, cache=tmp_path / "cache")
    # and a script that prints 3 MB of numbered lines
    lines = 30_000
    deploy_files(embedded_store, {"flood.sh": f"#!/bin/sh\nseq 1 {lines} | sed 's/$/ {'x' * 90}/'\n"})
    run = RunService(embedded_store).queue("flood.sh", ManualTrigger())
    journal = journal_dir_for(tmp_path / "cache", "w1") / f"{run.id}.jsonl"
    # when the journal fills: the worker stops reading the script's output, so the file stays near its bound
    wait_for(lambda: journal.exists() and b"the outage journal is full" in journal.read_bytes(), 90,
             message="the journal to fill")
    assert journal.stat().st_size < 2 * 2 ** 20
    assert embedded_store.runs.get(run.id).status is RunStatus.RUNNING
    # then once the database takes output again, the run ends with every line, once, in order
    outage.down = False
    final = wait_for(lambda: (r := embedded_store.runs.get(run.id)).status in FINISHED and r, 60,
                     message="the run to end")
    assert final.status is RunStatus.SUCCEEDED
    out = "".join(c["text"] for c in embedded_store.output.read(run.id) if c["stream"] == "stdout").splitlines()
    assert [int(line.split()[0]) for line in out] == list(range(1, lines + 1))
    assert worker.running == []
