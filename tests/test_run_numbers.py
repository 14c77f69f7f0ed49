"""Run numbers (``hello.sh#42``): given atomically at insert, the one short form every command accepts.

The resolver (``store.runs.get``) runs on mongomock and the embedded server;
numbering under concurrent inserts runs on the embedded server with real
processes; the CLI, the web routes and the API are driven as people use them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import run_sooner, signed_in
from sooner.clock import FakeClock
from sooner.config import load_settings
from sooner.errors import RunNotFound, SoonerError
from sooner.model import CronTrigger, ManualTrigger, Run, RunStatus
from sooner.model.run_ref import parse_run_ref, run_label
from sooner.runs.service import RunService
from sooner.store import Store, open_store, schema

UTC = timezone.utc
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def deployed(store: Store, *names: str, window: float | None = None) -> None:
    for name in names:
        store.jobs.record_deployed(name, commit="c1", blob=f"b-{name}", now=T0)
        if window:
            store.collection(schema.JOBS).update_one({"_id": name}, {"$set": {"dedupe_window_s": window}})


def queue(store: Store, job: str, seconds: float = 0, **options) -> Run:
    run = RunService(store, clock=FakeClock(T0 + timedelta(seconds=seconds))).queue(job, ManualTrigger(), **options)
    assert run is not None
    return run


# -- the model: what a reference may be --------------------------------------------------------------------------
@pytest.mark.parametrize("text, job, number, partial", [
    ("hello.sh#42", "hello.sh", 42, None),
    ("hello.sh:42", "hello.sh", 42, None),
    ("reports/daily.sh#3", "reports/daily.sh", 3, None),
    ("odd#name.sh#7", "odd#name.sh", 7, None),  # the last separator counts: job paths may hold '#'
    ("a:b.sh:7", "a:b.sh", 7, None),
    ("  hello.sh#1 ", "hello.sh", 1, None),
    ("hello.sh#0", None, None, None),  # numbers start at 1
    ("hello.sh#", None, None, None),
    ("B9E9E23C", None, None, "b9e9e23c"),  # hex of any case, shorter than an id
    ("b9e9e", None, None, None),  # too short to mean anything
    ("0" * 24, None, None, None),  # a whole id is looked up as an id only
    ("zz", None, None, None),
])
def test_a_typed_run_reference_reads_as_a_number_an_id_part_or_an_id(text, job, number, partial):
    ref = parse_run_ref(text)
    assert (ref.job, ref.number, ref.partial) == (job, number, partial)


def test_a_run_is_labelled_by_its_job_and_number_and_by_its_id_without_one():
    assert run_label("hello.sh", 42, "0" * 24) == "hello.sh#42"
    assert run_label("hello.sh", None, "0" * 24) == "0" * 24
    assert Run(id="r1", job="a.sh", number=3).ref == "a.sh#3" and Run(id="r1", job="a.sh").ref == "r1"


# -- the store: numbering and the resolver (mongomock and the embedded server) ---------------------------------------
def test_each_job_numbers_its_runs_from_one_and_the_number_is_stored(any_store):
    deployed(any_store, "a.sh", "reports/daily.sh")
    a1, b1, a2 = queue(any_store, "a.sh"), queue(any_store, "reports/daily.sh", 1), queue(any_store, "a.sh", 2)
    assert [(r.ref, r.number) for r in (a1, b1, a2)] == [("a.sh#1", 1), ("reports/daily.sh#1", 1), ("a.sh#2", 2)]
    assert any_store.runs.find(a2.id).number == 2
    assert any_store.counters.last_run_number("a.sh") == 2 and any_store.counters.last_run_number("nope.sh") == 0


def test_the_resolver_finds_a_run_by_id_number_prefix_or_suffix(any_store):
    deployed(any_store, "hello.sh", "reports/daily.sh")
    runs = [queue(any_store, "hello.sh", i) for i in range(3)]
    daily = queue(any_store, "reports/daily.sh", 5)
    get = any_store.runs.get
    assert get(runs[2].id) == runs[2]
    assert get("hello.sh#3").id == get("hello.sh:3").id == get(" hello.sh#3 ").id == runs[2].id
    assert get("reports/daily.sh#1").id == daily.id
    assert get(runs[1].id[-8:]).id == runs[1].id  # what the old UI showed
    assert get(runs[1].id[-8:].upper()).id == runs[1].id


def test_the_resolver_takes_a_prefix_or_suffix_only_when_it_names_one_run(any_store):
    deployed(any_store, "a.sh")
    any_store.import_documents(schema.RUNS, [
        {"_id": "abcdef" + "1" * 18, "job": "a.sh", "number": 1, "status": "queued"},
        {"_id": "2" * 18 + "abcdef", "job": "a.sh", "number": 2, "status": "queued"},
        {"_id": "3" * 18 + "fedcba", "job": "a.sh", "number": 3, "status": "queued"}])
    assert any_store.runs.get("abcdef1").id == "abcdef" + "1" * 18  # a prefix
    assert any_store.runs.get("fedcba").id == "3" * 18 + "fedcba"  # a suffix
    with pytest.raises(SoonerError, match=r"'abcdef' is ambiguous: .*a\.sh#1 \(abcdef1+\), a\.sh#2 \(2+abcdef\)"):
        any_store.runs.get("abcdef")  # the start of one id and the end of another


@pytest.mark.parametrize("text, message", [
    ("hello.sh#9", "no run with id 'hello.sh#9': job 'hello.sh' has no run #9 (its runs are numbered up to #2)"),
    ("nope.sh:1", "no run with id 'nope.sh:1': job 'nope.sh' has no numbered runs"),
    ("ffffffffff", "no run with id 'ffffffffff': no run id starts or ends with it"),
    ("zz", "no run with id 'zz': give a run id, JOB#N such as hello.sh#42 (or JOB:N), or 6+ characters"),
    ("", "no run with id '': give a run id"),
    ("0" * 24, f"no run with id '{'0' * 24}' (see `sooner runs`)"),
])
def test_a_reference_to_no_run_says_what_was_wrong(any_store, text, message):
    deployed(any_store, "hello.sh")
    queue(any_store, "hello.sh"), queue(any_store, "hello.sh", 1)
    with pytest.raises(RunNotFound) as caught:
        any_store.runs.get(text)
    assert str(caught.value).startswith(message)


def test_a_dedupe_hit_uses_no_number_and_a_refused_tick_burns_one(any_store):
    deployed(any_store, "a.sh", window=600)
    first = queue(any_store, "a.sh", dedupe_key="k")
    again = queue(any_store, "a.sh", 1, dedupe_key="k")
    assert again.deduplicated and again.id == first.id and queue(any_store, "a.sh", 2).number == 2  # no gap
    # a tick another scheduler fired already: its number is taken, then the insert is refused
    service = RunService(any_store, clock=FakeClock(T0))
    tick = CronTrigger(scheduled_for=T0, schedule="0 * * * *")
    assert service.queue("a.sh", tick).number == 3 and service.queue("a.sh", tick) is None
    assert queue(any_store, "a.sh", 3).number == 5  # 4 was burnt, as docs/architecture.md says


def test_runs_from_before_numbers_are_numbered_in_queue_order_at_the_upgrade(embedded_store):
    # given a database of the previous version: runs without numbers (inserted out of order) and no counters
    # (on the embedded server only: mongomock cannot build the unique indexes over documents lacking their fields)
    old = Store(embedded_store.url, f"t{uuid.uuid4().hex[:12]}")
    try:
        old.import_documents(schema.RUNS, [
            {"_id": f"{i:024x}", "job": job, "status": "succeeded", "queued_at": T0 + timedelta(minutes=minute)}
            for i, (job, minute) in enumerate([("a.sh", 5), ("b.sh", 1), ("a.sh", 2), ("a.sh", 9), ("b.sh", 0)])])
        # when the new version opens it (twice: a second process upgrading at the same time numbers nothing more)
        old.ensure_indexes()
        assert old.counters.number_old_runs() == 0
        # then each job's old runs are numbered by queued_at and new runs go on from there
        numbers = {run.id: run.ref for run in old.runs.list(limit=10)}
        assert numbers == {f"{0:024x}": "a.sh#2", f"{1:024x}": "b.sh#2", f"{2:024x}": "a.sh#1",
                           f"{3:024x}": "a.sh#3", f"{4:024x}": "b.sh#1"}
        deployed(old, "a.sh")
        assert queue(old, "a.sh").ref == "a.sh#4"
        # and the unique index holds: a second a.sh#4 is refused
        with pytest.raises(Exception, match="(?i)duplicate|unique"):
            old.import_documents(schema.RUNS, [{"_id": "x" * 24, "job": "a.sh", "number": 4}])
    finally:
        old.client.drop_database(old.database_name)
        old.close()


# -- concurrency on the embedded server, with real processes ------------------------------------------------------
QUEUER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sooner.model import ManualTrigger
    from sooner.runs.service import RunService
    from sooner.store import Store
    url, database, go, count = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    store = Store(url, database)
    service = RunService(store)
    store.ping()
    while not go.exists():  # start together: the inserts should overlap
        time.sleep(0.005)
    for _ in range(count):
        print(service.queue("hello.sh", ManualTrigger()).number, flush=True)
""")


def test_concurrent_inserts_from_several_processes_get_distinct_numbers_without_gaps(embedded_store, tmp_path):
    # given one job and four processes, each with its own client, ready to queue 40 runs at once
    deployed(embedded_store, "hello.sh")
    go = tmp_path / "go"
    processes = [subprocess.Popen([sys.executable, "-c", QUEUER, embedded_store.url, embedded_store.database_name,
                                   str(go), "40"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
    # when they are let go
    go.touch()
    outputs = [p.communicate(timeout=120) for p in processes]
    # then 160 runs have the numbers 1..160, each once, and every process saw its own numbers rise
    assert all(p.returncode == 0 for p in processes), [err for _, err in outputs]
    printed = [[int(n) for n in out.split()] for out, _ in outputs]
    assert all(numbers == sorted(numbers) for numbers in printed)
    assert sorted(n for numbers in printed for n in numbers) == list(range(1, 161))
    stored = [run.number for run in embedded_store.runs.list(job="hello.sh", limit=500)]
    assert sorted(stored) == list(range(1, 161))


# -- the CLI -----------------------------------------------------------------------------------------------------
@pytest.fixture
def site_store(site: Path):
    store = open_store(load_settings(site / "config.json", environ={}))
    yield store
    store.close()


def test_sooner_logs_takes_job_number_the_old_ui_suffix_and_a_unique_prefix(site, site_store):
    # given three runs of hello.sh made close together (their ids differ only at the end) and some output
    deployed(site_store, "hello.sh")
    runs = [queue(site_store, "hello.sh", i) for i in range(3)]
    site_store.output.append(runs[2].id, [(0, "stdout", "third run\n", None)])

    # when the third is asked for in each form, then each prints its output
    for ref in ("hello.sh#3", "hello.sh:3", runs[2].id[-8:], runs[2].id):
        shown = run_sooner("logs", ref, cwd=site)
        assert (shown.returncode, shown.stdout) == (0, "third run\n"), (ref, shown.stderr)
    # and `sooner runs` shows the short form with the id
    listed = run_sooner("runs", "--job", "hello.sh", cwd=site).stdout.splitlines()
    assert listed[1].split()[0] == "hello.sh#3" and listed[1].split()[-1] == runs[2].id
    # and a number that does not exist is one clear line
    missing = run_sooner("logs", "hello.sh#7", cwd=site)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "job 'hello.sh' has no run #7 (its runs are numbered up to #3)" in missing.stderr


def test_sooner_logs_takes_a_prefix_that_names_one_run_and_refuses_a_shared_one(site, site_store):
    # given two runs whose ids start alike (as ids made in one second do)
    site_store.import_documents(schema.RUNS, [
        {"_id": "abcdef0" + "0" * 17, "job": "old.sh", "number": 1, "status": "succeeded"},
        {"_id": "abcdef1" + "1" * 17, "job": "old.sh", "number": 2, "status": "succeeded"}])
    site_store.output.append("abcdef1" + "1" * 17, [(0, "stdout", "second\n", None)])
    # then a prefix that only one of them has finds it, and one both have is refused with both named
    assert run_sooner("logs", "abcdef1", cwd=site).stdout == "second\n"
    shared = run_sooner("logs", "abcdef", cwd=site)
    assert shared.returncode == 1 and "Traceback" not in shared.stderr
    assert "'abcdef' is ambiguous" in shared.stderr and "old.sh#1" in shared.stderr and "old.sh#2" in shared.stderr


def test_sooner_run_names_the_run_by_its_number_and_cancel_takes_it(site, site_store):
    deployed(site_store, "hello.sh")
    queued = run_sooner("run", "hello.sh", cwd=site)
    assert queued.returncode == 0 and "sooner: queued run hello.sh#1" in queued.stderr
    run_id = queued.stdout.strip()  # stdout stays the id, for scripts
    cancelled = run_sooner("cancel", "hello.sh:1", cwd=site)
    assert cancelled.stdout.strip() == "cancelled run hello.sh#1 (it had not started)"
    assert site_store.runs.get(run_id).status is RunStatus.CANCELLED


# -- the web routes and the API ------------------------------------------------------------------------------------
@pytest.fixture
def web(mock_store, mock_web_app):
    app, _, _ = mock_web_app
    deployed(mock_store, "reports/daily.sh")
    runs = [queue(mock_store, "reports/daily.sh", i) for i in range(2)]
    return app, mock_store, runs


def test_the_run_page_is_found_by_its_url_encoded_number_and_shows_it_with_the_id(web):
    app, store, runs = web
    client = signed_in(app, "viewer", "viewer-password")
    # when the page is asked for as reports/daily.sh#2 (url-encoded), as reports/daily.sh:2, or by the old suffix
    for path in ("/runs/reports/daily.sh%232", "/runs/reports/daily.sh:2", f"/runs/{runs[1].id[-8:]}"):
        moved = client.get(path)
        # then it redirects to the page by id
        assert moved.status_code == 302 and moved.headers["Location"].endswith(f"/runs/{runs[1].id}"), path
    page = client.get(f"/runs/{runs[1].id}").text
    assert f'<span class="mono" id="run-ref" title="{runs[1].id}">reports/daily.sh#2</span>' in page
    assert f'id="run-id">{runs[1].id}<' in page
    listing = client.get("/runs").text
    assert f'title="{runs[0].id}">reports/daily.sh#1</a>' in listing and runs[0].id[-8:] + "<" not in listing
    missing = client.get("/runs/reports/daily.sh%239")
    assert missing.status_code == 404 and "has no run #9" in missing.text


def test_the_api_takes_the_number_and_answers_with_it(web):
    app, store, runs = web
    token, _ = store.tokens.create("admin")
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    answer = client.get("/api/runs/reports/daily.sh%231", headers=headers)
    assert answer.status_code == 200
    assert (answer.json["id"], answer.json["number"], answer.json["ref"]) == (runs[0].id, 1, "reports/daily.sh#1")
    assert client.get("/api/runs/reports/daily.sh:2/output", headers=headers).json["run"] == runs[1].id
    cancelled = client.post("/api/runs/reports/daily.sh:2/cancel", headers=headers)
    assert cancelled.status_code == 200 and cancelled.json["status"] == "cancelled"
    listed = client.get("/api/runs?job=reports/daily.sh", headers=headers).json["runs"]
    assert [r["ref"] for r in listed] == ["reports/daily.sh#2", "reports/daily.sh#1"]
    missing = client.get("/api/runs/reports/daily.sh:7", headers=headers)
    assert missing.status_code == 404 and "has no run #7" in missing.json["error"]
