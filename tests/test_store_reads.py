"""The store's read models (``store.reads``) and change feed (``store.changes``), on every store.

`any_store` runs each test on mongomock and on the embedded nx-27017 server
(and on the real MongoDB named by SOONER_TEST_MONGO_URL when set). Runs are
made the way Sooner makes them, through the run service on a fake clock, so
their times are known.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from conftest import wait_for
from sooner.clock import FakeClock
from sooner.model import ManualTrigger, Progress, Run, RunStatus
from sooner.model.sample import Sample, SampleKind
from sooner.runs.service import RunService
from sooner.store import reads, schema
from sooner.store.changes import Change

UTC = timezone.utc
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def service(any_store, clock) -> RunService:
    for name in ("a.sh", "b.sh"):
        any_store.jobs.record_deployed(name, commit="c" * 40, blob=f"blob-{name}", now=T0)
    return RunService(any_store, clock=clock)


def queue(service: RunService, job: str = "a.sh", *, data: object = None, message: str | None = None,
          at: datetime | None = None) -> Run:
    """A queued run of ``job``; the clock moves one second first (``at`` overrides its queued_at)."""
    service.clock.advance(1)  # type: ignore[attr-defined]
    run = service.queue(job, ManualTrigger(author="me", message=message), data=data, now=at)
    assert run is not None
    return run


def start(service: RunService, run: Run, worker: str = "w1") -> Run:
    taken = service.take(run.id, worker, lease_s=60)
    assert taken is not None
    service.store.runs.mark_started(run.id, pid=1, commit=None, now=service.clock.advance(1))  # type: ignore[attr-defined]
    return service.store.runs.get(run.id)


def finish(service: RunService, run: Run, status: RunStatus = RunStatus.SUCCEEDED, seconds: float = 5) -> Run:
    start(service, run)
    service.clock.advance(seconds)  # type: ignore[attr-defined]
    ended = service.finish(run.id, status, exit_code=0 if status is RunStatus.SUCCEEDED else 1)
    assert ended is not None
    return ended


# -- runs ----------------------------------------------------------------------------------
def test_recent_runs_are_the_newest_first_and_may_be_projected(any_store, service):
    # given three runs, the oldest finished
    first = finish(service, queue(service, data={"big": "x" * 100}))
    second, third = queue(service), queue(service, "b.sh")
    # when the newest two are read, whole and projected
    whole = any_store.reads.recent_runs(2)
    projected = any_store.reads.recent_runs(3, fields=reads.STATS_FIELDS)
    # then they come newest first as models; a projection keeps job, status and the fields asked for
    assert [r.id for r in whole] == [third.id, second.id]
    assert all(isinstance(r, Run) for r in whole)
    assert [(r.id, r.job, r.status) for r in projected] == [
        (third.id, "b.sh", RunStatus.QUEUED), (second.id, "a.sh", RunStatus.QUEUED),
        (first.id, "a.sh", RunStatus.SUCCEEDED)]
    assert projected[2].duration_s == 5 and projected[2].data is None and projected[2].worker is None


def test_runs_page_sorts_a_jobs_runs_by_queued_at_and_others_by_id(any_store, service):
    # given a run created first but queued later than the next one (a retry waiting for its time, say)
    late = queue(service, at=T0 + timedelta(hours=1))
    early = queue(service)
    other = queue(service, "b.sh")
    # when pages are read with and without a job
    # then a job's page follows queued_at, the all-runs page follows creation (the index each can sort with)
    assert [r.id for r in any_store.reads.runs_page(job="a.sh")] == [late.id, early.id]
    assert [r.id for r in any_store.reads.runs_page()] == [other.id, early.id, late.id]


def test_runs_page_filters_by_status_pages_back_and_can_leave_out_data(any_store, service):
    # given a finished run with data and two queued runs
    done = finish(service, queue(service, data={"rows": [1, 2, 3]}))
    queued = [queue(service), queue(service, "b.sh")]
    # when pages are read by status, before a run, and without data
    by_status = any_store.reads.runs_page(status=RunStatus.QUEUED)
    by_text = any_store.reads.runs_page(status="succeeded")
    older = any_store.reads.runs_page(before=queued[1].id, limit=1)
    light = any_store.reads.runs_page(job="a.sh", with_data=False)
    # then each holds what was asked for
    assert [r.id for r in by_status] == [queued[1].id, queued[0].id]
    assert [r.id for r in by_text] == [done.id] and by_text[0].data == {"rows": [1, 2, 3]}
    assert [r.id for r in older] == [queued[0].id]
    assert [(r.id, r.data, r.status) for r in light] == [(queued[0].id, None, RunStatus.QUEUED),
                                                         (done.id, None, RunStatus.SUCCEEDED)]
    with pytest.raises(ValueError, match="unknown status 'done'"):
        any_store.reads.runs_page(status="done")


def test_runs_by_id_returns_the_existing_runs_asking_in_batches(any_store, service, monkeypatch):
    # given five runs and a batch size of two ids
    runs = [queue(service) for _ in range(5)]
    monkeypatch.setattr(reads, "ID_BATCH", 2)
    # when they are asked for by id, with a missing id and a repeated one
    found = any_store.reads.runs_by_id([r.id for r in runs] + ["0" * 24, runs[0].id], fields=("progress",))
    # then every existing run comes back once, keyed by id
    assert sorted(found) == sorted(r.id for r in runs)
    assert all(found[r.id].job == "a.sh" and found[r.id].status is RunStatus.QUEUED for r in runs)
    assert any_store.reads.runs_by_id([]) == {}


def test_job_history_is_newest_first_without_data_or_trigger_messages(any_store, service):
    # given two runs of a.sh with data and a trigger message, and one of b.sh
    first = queue(service, data={"n": 1}, message="m" * 1000)
    second = finish(service, queue(service, data={"n": 2}, message="why"), RunStatus.FAILED)
    queue(service, "b.sh")
    # when the job's history is read, whole and for the stats
    history = any_store.reads.job_history("a.sh", 10)
    stats = any_store.reads.job_history("a.sh", 1, fields=reads.STATS_FIELDS)
    # then it is that job's runs only, newest first, light
    assert [r.id for r in history] == [second.id, first.id]
    assert [(r.data, r.trigger.message, r.trigger.author) for r in history] == [(None, None, "me")] * 2
    assert history[0].status is RunStatus.FAILED and history[0].duration_s == 5
    assert [(r.id, r.status) for r in stats] == [(second.id, RunStatus.FAILED)]


def test_run_statuses_carry_what_a_status_line_shows(any_store, service):
    # given a running run with progress and a cancel request
    run = start(service, queue(service, data={"secret": 1}))
    any_store.runs.set_progress(run.id, 3, 4)
    service.cancel(run.id, by="me")
    # when its status line is read
    [status] = any_store.reads.run_statuses([run.id, "missing"])
    # then it has the summary fields and nothing else
    assert (status.id, status.job, status.status, status.worker) == (run.id, "a.sh", RunStatus.RUNNING, "w1")
    assert status.progress == Progress(3, 4) and status.progress.percent == 75
    assert status.cancel_requested and status.started_at == run.started_at and status.queued_at == run.queued_at
    assert status.data is None and status.trigger.author is None  # neither is part of a status line


def test_dashboard_runs_are_running_queued_and_recent(any_store, service):
    # given two runs started in turn, two queued and a finished one
    done = finish(service, queue(service))
    runs = [queue(service) for _ in range(4)]
    started = [start(service, runs[1]), start(service, runs[0])]
    service.clock.advance(1)
    # when the dashboard reads its runs
    dashboard = any_store.reads.dashboard_runs(queued=1, recent=3)
    # then running runs come earliest-started first, queued ones oldest first, recent ones newest first
    assert [r.id for r in dashboard.running] == [s.id for s in started]
    assert [r.id for r in dashboard.queued] == [runs[2].id]
    assert [r.id for r in dashboard.recent] == [runs[3].id, runs[2].id, runs[1].id]
    assert done.id not in [r.id for r in dashboard.recent]


def test_waiting_facts_gather_the_workers_the_queue_and_recent_durations(any_store, service):
    # given a worker, two finished runs (5 s and 7 s), a running one, queued ones (one a later attempt
    # not due yet, one for a tag), a waiting one, and a run of another job
    any_store.workers.register("w1", instance="i1", host="h", pid=1, capacity=2, tags=["gpu"], version="t",
                               stale_after_s=60, now=service.clock.now())
    finish(service, queue(service), seconds=5)
    finish(service, queue(service), seconds=7)
    running = start(service, queue(service))
    first = queue(service)
    service.clock.advance(1)
    gpu = service.queue("b.sh", ManualTrigger(author="me"), target="tag:gpu")
    service.clock.advance(1)
    later = service.queue("a.sh", ManualTrigger(author="me"), attempt=2, not_before=service.clock.now() + timedelta(60))
    service.clock.advance(1)
    waiting = any_store.runs.insert(Run(id=any_store.runs.new_id(), job="a.sh", status=RunStatus.WAITING,
                                        queued_at=service.clock.now()))
    assert gpu and later and waiting
    # when the facts of the not-started ones (and others) are read
    facts = any_store.reads.waiting_facts([first.id, gpu.id, later.id, waiting.id, running.id, "missing"])
    # then they hold what the wait rule needs, in claim order
    assert set(facts.runs) == {first.id, gpu.id, later.id, waiting.id}
    assert facts.runs[gpu.id].target == "tag:gpu" and facts.runs[later.id].attempt == 2
    assert facts.runs[later.id].not_before is not None
    assert [w.name for w in facts.workers] == ["w1"] and facts.workers[0].tags == ("gpu",)
    assert [r.id for r in facts.queued] == [first.id, gpu.id, later.id] and facts.queued_complete
    assert [(r.id, r.worker) for r in facts.running] == [(running.id, "w1")]
    assert [r.id for r in facts.waiting] == [waiting.id]
    assert facts.durations == {"a.sh": [7, 5], "b.sh": []}
    assert set(facts.retry) == {"a.sh"}
    # and a started run alone needs nothing more
    assert any_store.reads.waiting_facts([running.id]).runs == {}


def test_job_usage_counts_runs_by_trigger_token_and_hook(any_store, service, fast_passwords):
    from sooner.model import ApiTrigger
    from sooner.model.trigger import WebhookTrigger

    # given runs of a.sh started by hand, by two API calls with a token, one without, by a webhook twice
    any_store.users.add("admin", "admin-password", admin=True)
    _, token = any_store.tokens.create("admin", "ci-token")
    service.queue("a.sh", ManualTrigger(author="me"))
    for _ in range(2):
        service.queue("a.sh", ApiTrigger(source="api", author="admin", token=token["_id"]))
    service.queue("a.sh", ApiTrigger(source="api", author="admin"))
    for delivery in ("d1", "d2"):
        service.queue("a.sh", WebhookTrigger(provider="github", hook="deploy-hook", delivery=delivery))
    service.queue("b.sh", ApiTrigger(source="api", author="admin", token=token["_id"]))
    # when its usage is read
    usage = any_store.reads.job_usage("a.sh")
    # then
    assert usage.total == 6
    assert usage.triggers == {"manual": 1, "api": 3, "webhook": 2}
    assert usage.tokens == {token["_id"]: 2, None: 1}
    assert usage.token_names == {token["_id"]: "ci-token"}
    assert usage.hooks == {"deploy-hook": 2}
    # and ``since`` counts runs created from then on (a run's id holds its creation time)
    real_now = datetime.now(UTC)
    assert any_store.reads.job_usage("a.sh", since=real_now - timedelta(hours=1)).total == 6
    assert any_store.reads.job_usage("a.sh", since=real_now + timedelta(hours=1)).triggers == {}
    assert any_store.reads.job_usage("nothing.sh").total == 0


# -- output --------------------------------------------------------------------------------
def chunks(store, run_id: str, n: int) -> None:
    store.output.append(run_id, [(seq, "stderr" if seq % 3 == 0 else "stdout", f"line {seq}\n", T0)
                                 for seq in range(n)])


def test_output_tail_is_the_newest_chunks_in_order_and_pages_back(any_store):
    # given a run with ten chunks
    chunks(any_store, "r1", 10)
    # when the tail is read, and then the page before seq 4
    tail, more = any_store.reads.output_tail("r1", limit=3)
    older, more_older = any_store.reads.output_tail("r1", before=4, limit=3)
    oldest, none_older = any_store.reads.output_tail("r1", before=1, limit=3)
    # then each page is in seq order and says whether older chunks exist
    assert ([c["seq"] for c in tail], more) == ([7, 8, 9], True)
    assert ([c["seq"] for c in older], more_older) == ([1, 2, 3], True)
    assert ([c["seq"] for c in oldest], none_older) == ([0], False)
    assert tail[0] == {"seq": 7, "stream": "stdout", "text": "line 7\n", "t": T0}
    assert any_store.reads.output_tail("nothing") == ([], False)


def test_output_between_keeps_the_newest_chunks_of_a_range(any_store):
    # given a run with ten chunks
    chunks(any_store, "r1", 10)
    # when ranges are read, one larger than the limit
    # then the newest of the range come, in order, with a flag when older ones were left out
    assert [c["seq"] for c in any_store.reads.output_between("r1", 2, 5)[0]] == [3, 4, 5]
    got, skipped = any_store.reads.output_between("r1", -1, 9, newest=4)
    assert ([c["seq"] for c in got], skipped) == ([6, 7, 8, 9], True)
    assert any_store.reads.output_between("r1", 5, 5) == ([], False)
    assert any_store.reads.output_between("r1", 9, 20) == ([], False)


def sized(store, run_id: str, texts: list[str]) -> None:
    store.output.append(run_id, [(seq, "stdout", text, T0) for seq, text in enumerate(texts)])


def test_output_after_pages_by_seq_within_a_byte_budget(any_store):
    # given chunks whose JSON weighs 100, 100, 300, 100 and 100 bytes (an "é" is six bytes: "\u00e9")
    weights = [100, 100, 300, 100, 100]
    overhead = reads.chunk_bytes({"seq": 0, "text": ""})
    sized(any_store, "r1", ["x" * (w - overhead) if seq != 2 else "é" * ((w - overhead) // 6) + "x" * ((w - overhead) % 6)
                            for seq, w in enumerate(weights)])
    assert [reads.chunk_bytes(c) for c in any_store.output.read("r1")] == weights
    # when pages of at most 250 bytes are read, by next_after
    pages, after = [], -1
    while True:
        page = any_store.reads.output_after("r1", after, max_bytes=250)
        pages.append(([c["seq"] for c in page.chunks], page.more))
        if not page.more:
            break
        after = page.next_after
    # then each page stays within the budget, except a single chunk larger than it, and all come once in order
    assert pages == [([0, 1], True), ([2], True), ([3, 4], False)]
    # and limit counts chunks; past the end, or for no output, the page is empty and says where it is
    assert [c["seq"] for c in any_store.reads.output_after("r1", 0, limit=2).chunks] == [1, 2]
    assert any_store.reads.output_after("r1", 4) == reads.OutputPage([], False, 4)
    assert any_store.reads.output_after("nothing") == reads.OutputPage([], False, -1)


def test_output_after_reads_many_small_chunks_across_its_batches(any_store):
    chunks(any_store, "r1", 300)
    page = any_store.reads.output_after("r1", 10, limit=200)
    assert [c["seq"] for c in page.chunks] == list(range(11, 211)) and page.more and page.next_after == 210
    rest = any_store.reads.output_after("r1", page.next_after, limit=200)
    assert [c["seq"] for c in rest.chunks] == list(range(211, 300)) and not rest.more


def test_output_tail_stays_within_a_byte_budget_and_keeps_the_newest_chunk(any_store):
    chunks(any_store, "r1", 40)
    one = reads.chunk_bytes(any_store.output.read("r1")[-1])
    tail, more = any_store.reads.output_tail("r1", max_bytes=one * 3)
    assert ([c["seq"] for c in tail], more) == ([37, 38, 39], True)
    assert [c["seq"] for c in any_store.reads.output_tail("r1", max_bytes=1)[0]] == [39]
    whole, none_older = any_store.reads.output_tail("r1", limit=100)
    assert [c["seq"] for c in whole] == list(range(40)) and not none_older


def test_output_removed_means_a_finished_run_past_the_retention_without_chunks(any_store, service, clock):
    # given (retention 30 days) a run finished with its output gone, one with output, and a running one
    gone, kept, running = queue(service), queue(service), queue(service)
    for run in (gone, kept):
        finish(service, run)
    start(service, running)
    chunks(any_store, kept.id, 1)
    gone, kept, running = (any_store.runs.get(r.id) for r in (gone, kept, running))
    # then only the finished run without chunks, once it is older than the retention, counts as removed
    later = clock.now() + timedelta(days=31)
    assert [any_store.reads.output_removed(r, later) for r in (gone, kept, running)] == [True, False, False]
    assert any_store.reads.output_removed(gone, clock.now() + timedelta(days=29)) is False


# -- events and deploys ----------------------------------------------------------------------
def test_events_page_by_time_and_the_event_list_follows_the_same_rule(any_store):
    # given five events a second apart, recorded out of time order, two of them named "b"
    for i in (3, 0, 4, 1, 2):
        any_store.events.record("b" if i % 2 else "a", {"i": i}, source={"type": "cli"}, depth=0,
                                now=T0 + timedelta(seconds=i))
    # when pages of two are read, following next_before
    first = any_store.reads.events_page(limit=2)
    second = any_store.reads.events_page(before_t=first.next_before, limit=2)
    third = any_store.reads.events_page(before_t=second.next_before, limit=2)
    # then they come newest first by time, every event once
    assert [[e["data"]["i"] for e in page.items] for page in (first, second, third)] == [[4, 3], [2, 1], [0]]
    assert (first.more, first.next_before, third.more, third.next_before) == (True, T0 + timedelta(seconds=3),
                                                                               False, None)
    assert [e["data"]["i"] for e in any_store.reads.events_page(name="b").items] == [3, 1]
    assert [e["data"]["i"] for e in any_store.events.list(limit=3)] == [4, 3, 2]
    assert [e["data"]["i"] for e in any_store.events.list(name="a", before=T0 + timedelta(seconds=4))] == [2, 0]


def test_deploys_page_by_time(any_store):
    # given three deploys an hour apart
    for i in range(3):
        any_store.deploys.record(commit=f"{i:040x}", tree="t", branch="main", author="me", message=f"change {i}",
                                 created=[], updated=[], removed=[], restored=[], now=T0 + timedelta(hours=i))
    # when pages of two are read
    first = any_store.reads.deploys_page(limit=2)
    second = any_store.reads.deploys_page(before=first.next_before, limit=2)
    # then they come newest first, every deploy once
    assert [d["message"] for d in first.items] == ["change 2", "change 1"] and first.more
    assert first.next_before == T0 + timedelta(hours=1)
    assert ([d["message"] for d in second.items], second.more, second.next_before) == (["change 0"], False, None)


# -- monitoring samples -------------------------------------------------------------------------
def test_samples_are_one_series_after_since_oldest_first_bounded_and_merged_down(any_store):
    # given 30 host samples of w1 five seconds apart, and samples of other series at the same times
    any_store.samples.insert([Sample(SampleKind.HOST, "w1", T0 + timedelta(seconds=5 * i), cpu_percent=float(i),
                                     rss_bytes=i) for i in range(30)])
    any_store.samples.insert([Sample(SampleKind.WORKER, "w1", T0, cpu_percent=99.0),
                              Sample(SampleKind.HOST, "w2", T0 + timedelta(seconds=60), cpu_percent=98.0)])
    # when the series is read after its tenth sample, then only that series' newer samples come, oldest first
    found = any_store.reads.samples(SampleKind.HOST, "w1", T0 + timedelta(seconds=45))
    assert [s.cpu_percent for s in found] == [float(i) for i in range(10, 30)]
    assert {(s.kind, s.key) for s in found} == {(SampleKind.HOST, "w1")}
    # a limit keeps the newest; more than `points` are merged (CPU averaged, memory peaked, the last time kept)
    assert [s.cpu_percent for s in any_store.reads.samples(SampleKind.HOST, "w1", limit=5)] == [25.0, 26.0, 27.0,
                                                                                              28.0, 29.0]
    merged = any_store.reads.samples(SampleKind.HOST, "w1", points=10)
    assert len(merged) == 10 and (merged[0].cpu_percent, merged[0].rss_bytes) == (1.0, 2)
    assert merged[-1].t == T0 + timedelta(seconds=145)


def test_runs_per_minute_counts_finished_runs_by_minute_and_says_when_it_read_too_few(any_store, service, clock):
    # given two runs that finished in the first minute, one two minutes later and one still queued
    finish(service, queue(service))
    finish(service, queue(service, "b.sh"))
    clock.advance(120)
    finish(service, queue(service))
    queue(service)
    # when the last five minutes are counted
    rate = any_store.reads.runs_per_minute(T0, T0 + timedelta(minutes=5))
    # then every minute of the window has its count, oldest first
    first = int(T0.timestamp())
    assert rate.minutes == [(first + 60 * i, n) for i, n in enumerate([2, 0, 1, 0, 0, 0])] and not rate.capped
    # and reading fewer runs than the window holds says so
    assert any_store.reads.runs_per_minute(T0, T0 + timedelta(minutes=5), limit=2).capped


# -- seeding and collection names --------------------------------------------------------------
def test_imported_documents_are_stored_as_given_and_only_in_sooners_collections(any_store):
    # when documents are imported into runs
    count = any_store.import_documents(schema.RUNS, [
        {"_id": f"{i:024x}", "job": "a.sh", "status": RunStatus.SUCCEEDED.value, "queued_at": T0} for i in range(3)])
    # then the read models see them, and other collections are refused
    assert count == 3 and [r.id for r in any_store.reads.recent_runs(5)] == [f"{i:024x}" for i in (2, 1, 0)]
    assert any_store.import_documents(schema.EVENTS, []) == 0
    with pytest.raises(ValueError, match="not a Sooner collection"):
        any_store.import_documents(schema.USERS, [{"_id": "mallory", "role": "admin"}])
    assert schema.RUNS in any_store.collection_names()


# -- the change feed ------------------------------------------------------------------------
def streams_expected(store) -> bool | None:
    """mongomock has no change streams, the embedded server has; a real MongoDB may or may not."""
    if store.is_mongomock:
        return False
    return True if store.embedded is not None else None


def test_a_change_stream_reports_new_runs_and_chunks_where_the_database_has_streams(any_store, service):
    # given change streams on runs and run_output, if the database offers them
    runs_stream = any_store.changes.open("runs", max_await_ms=200)
    output_stream = any_store.changes.open("run_output", max_await_ms=200)
    expected = streams_expected(any_store)
    if expected is not None:
        assert (runs_stream is not None, output_stream is not None) == (expected, expected)
    if runs_stream is None or output_stream is None:
        return  # polling it is: the hub sweeps instead
    with runs_stream, output_stream:
        # when a run is queued and writes a chunk
        run = queue(service)
        any_store.output.append(run.id, [(0, "stdout", "hi\n", None)])
        # then both streams name the run
        change = wait_for(runs_stream.next, timeout=10, message="the run's insert")
        chunk = wait_for(output_stream.next, timeout=10, message="the chunk's insert")
    assert (change.kind, change.operation, change.run_id, change.document_id) == ("runs", "insert", run.id, run.id)
    assert (chunk.kind, chunk.operation, chunk.run_id) == ("run_output", "insert", run.id)


def test_following_changes_reports_whether_streams_work_and_delivers_changes(any_store, service):
    # given a follower thread on runs
    stop = threading.Event()
    states: list[bool] = []
    changes: list[Change] = []

    def on_state(streaming: bool) -> None:
        states.append(streaming)
        if not streaming:
            stop.set()  # polling from here on; nothing more to see in this test

    follower = threading.Thread(target=any_store.changes.follow, args=("runs", changes.append),
                                kwargs={"stop": stop, "on_state": on_state, "max_await_ms": 100}, daemon=True)
    follower.start()
    try:
        wait_for(lambda: states, timeout=10, message="the follower to report its state")
        expected = streams_expected(any_store)
        if expected is not None:
            assert states[0] is expected
        if states[0]:
            # when a run is queued and updated while a stream is open
            run = queue(service)
            any_store.runs.add_note(run.id, "hello")
            # then its insert and its update are delivered
            wait_for(lambda: [c.operation for c in changes if c.run_id == run.id] == ["insert", "update"],
                     timeout=10, message="the run's insert and update")
    finally:
        stop.set()
        follower.join(timeout=10)
    assert not follower.is_alive()


def test_an_unknown_change_feed_is_refused(any_store):
    with pytest.raises(ValueError, match="no change feed for 'jobs'"):
        any_store.changes.open("jobs")
