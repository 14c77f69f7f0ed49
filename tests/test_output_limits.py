"""Output limits and retention: per-line and per-run caps, byte-bounded output pages, old output removed.

The caps are exercised with real scripts through a real in-process worker on
the embedded nx-27017 server, with small caps set through the settings the
store and the worker are opened with. The output API and the web's JSON pages
are read through a real `sooner web` process over HTTP. Retention is checked
on the embedded server's own index handling and on every store's ``prune``.
"""

from __future__ import annotations

import http.cookiejar
import json
import sys
import threading
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import ROOT, csrf_of, wait_for
from sooner.config import load_settings
from sooner.errors import ConfigError
from sooner.model import FINISHED, ManualTrigger, Run, RunStatus
from sooner.runs.service import RunService
from sooner.site import init_site
from sooner.store import open_store, schema
from sooner.store.output import OutputPolicy
from sooner.webapp.testing import WebServer
from sooner.worker.loop import Worker
from sooner.worker.protocol import MAX_LINE_BYTES
from sooner.worker.testing import deploy_files

PY = f"#!{sys.executable}\n"
UTC = timezone.utc
# What an output response may carry besides its chunks' budget: the envelope and one chunk's fields.
ENVELOPE_BYTES = 512
WORKER_LINES = ("sooner: run ", "sooner: exited with code ")


@pytest.fixture
def make_worker(embedded_site, tmp_path):
    """``make_worker(**settings)``: a store opened with these settings (own database) and a worker running on it."""
    started = []

    def make(**overrides):
        settings = load_settings(embedded_site / "config.json", environ={}, overrides={
            "database": f"t{uuid.uuid4().hex[:12]}", "heartbeat_s": 0.2, "lease_s": 2.0, "cancel_grace_s": 1.0,
            "shutdown_grace_s": 2.0, "output_flush_ms": 50, **overrides})
        store = open_store(settings)
        worker = Worker(store, settings, "caps", 2, cache=tmp_path / f"cache{len(started)}")
        worker.register()
        stop = threading.Event()
        thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
        thread.start()
        started.append((store, stop, thread))
        return store
    yield make
    for store, stop, thread in started:
        stop.set()
        thread.join(20)
        store.client.drop_database(store.database_name)
        store.close()


def run_job(store, job: str, timeout: float = 60) -> Run:
    run_id = RunService(store).queue(job, ManualTrigger()).id
    return wait_for(lambda: (r := store.runs.get(run_id)).status in FINISHED and r, timeout,
                    message=f"run {run_id} to finish")


def transcript(store, run_id: str) -> list[tuple[str, str]]:
    """The run's output as (stream, text), consecutive text of one stream joined, the worker's own lines left out."""
    chunks = store.output.read(run_id)
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    entries: list[tuple[str, str]] = []
    for chunk in chunks:
        text = chunk["text"]
        if chunk["stream"] == "system":
            text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith(WORKER_LINES))
        if not text:
            continue
        if entries and entries[-1][0] == chunk["stream"]:
            entries[-1] = (chunk["stream"], entries[-1][1] + text)
        else:
            entries.append((chunk["stream"], text))
    return entries


def stored_text(store, run_id: str, stream: str) -> str:
    return "".join(c["text"] for c in store.output.read(run_id) if c["stream"] == stream)


# -- caps in the worker -------------------------------------------------------------
def test_a_line_over_the_line_cap_is_cut_on_a_character_and_marked_after_it(make_worker):
    # given a worker whose lines may be 999 bytes, and a script with long lines (one of two-byte characters)
    store = make_worker(output_max_line_bytes=999)
    deploy_files(store, {"long.py": PY + "import sys\nout = sys.stdout\n"
                                         "out.write('a' * 5000 + '\\n')\nout.write('short\\n')\n"
                                         "out.write('\\u00e9' * 1000 + '\\n')\n"
                                         "out.write('tail without newline ' + 'b' * 3000)\n"})
    # when it runs
    run = run_job(store, "long.py")
    # then each long line keeps its first 999 bytes (498 + a half character → 499 characters of é) and its
    # newline, and the marker follows as a system line of its own, never inside the line; the run goes on
    assert run.status == RunStatus.SUCCEEDED
    assert transcript(store, run.id) == [
        ("stdout", "a" * 999 + "\n"),
        ("system", "sooner: line truncated: 4.9 KB, kept the first 999 bytes\n"),
        ("stdout", "short\n" + "\u00e9" * 499 + "\n"),
        ("system", "sooner: line truncated: 2 KB, kept the first 999 bytes\n"),
        ("stdout", "tail without newline " + "b" * 978 + "\n"),
        ("system", "sooner: line truncated: 3 KB, kept the first 999 bytes\n")]


def test_output_past_the_run_cap_is_counted_not_stored_and_calls_still_work(make_worker):
    # given a worker that stores 2.5 KB of a run's output, and a script that prints 4,000 bytes, then reports
    # progress, emits an event, prints more and reports progress again
    store = make_worker(output_max_bytes_per_run=2560)
    deploy_files(store, {"chatty.py": PY + "import sys\nout = sys.stdout.buffer\n"
                                           "for i in range(40):\n    out.write(b'%04d' % i + b'x' * 95 + b'\\n')\n"
                                           "out.flush()\n"
                                           "print('>>> sooner.progress(7, 10)', file=sys.stderr, flush=True)\n"
                                           "print('>>> sooner.emit(\"capped\")', file=sys.stderr, flush=True)\n"
                                           "out.write(b'more\\n'); out.flush()\n"
                                           "print('>>> sooner.progress(10, 10)', file=sys.stderr, flush=True)\n"})
    # when it runs
    run = run_job(store, "chatty.py")
    # then exactly the first 2,560 bytes are stored, the cut line ended so the marker starts a line, one marker
    # says the limit was reached and one line at the end gives what was dropped (1,440 + 5 bytes)
    everything = b"".join(b"%04d" % i + b"x" * 95 + b"\n" for i in range(40)) + b"more\n"
    assert transcript(store, run.id) == [
        ("stdout", everything[:2560].decode() + "\n"),
        ("system", "sooner: output limit of 2.5 KB reached; the rest is not stored (its size is given at the end)\n"
                   "sooner: output limit of 2.5 KB reached: 1.4 KB (1,445 bytes) more were not stored\n")]
    # and the run is unaffected: it succeeded, its progress after the cap was recorded, its event was emitted
    assert run.status == RunStatus.SUCCEEDED and run.exit_code == 0
    assert (run.progress.current, run.progress.max) == (10, 10)
    assert [e["name"] for e in store.events.list(name="capped")] == ["capped"]
    assert "sooner: exited with code 0" in stored_text(store, run.id, "system")


def test_the_note_about_an_overlong_call_follows_its_line(make_worker):
    # given lines may be long (4 MB), and a script whose stderr "call" is longer than any call may be
    store = make_worker(output_max_line_bytes=4 * 1024 * 1024)
    deploy_files(store, {"call.py": PY + "import sys\nerr = sys.stderr\n"
                                         f"err.write('>>> sooner.' + 'z' * {MAX_LINE_BYTES + 100_000} + '\\n')\n"
                                         "err.write('next\\n')\n"})
    # when it runs
    run = run_job(store, "call.py")
    # then the whole line is output, and the note saying why it was ignored comes after it, not inside it
    assert transcript(store, run.id) == [
        ("stderr", ">>> sooner." + "z" * (MAX_LINE_BYTES + 100_000) + "\n"),
        ("system", f"sooner: ignored malformed call: call too long: over {MAX_LINE_BYTES} bytes\n"),
        ("stderr", "next\n")]


def test_an_overlong_call_over_the_line_cap_gets_both_notes_after_the_cut_line(make_worker):
    # given the default line cap (1 MB), and an endless "call" on stderr without a newline
    store = make_worker()
    deploy_files(store, {"endless.py": PY + "import sys\nsys.stderr.write('>>> sooner.' + 'z' * 3_000_000)\n"})
    # when it runs
    run = run_job(store, "endless.py")
    # then the first megabyte is kept and ended, then the truncation marker and the ignored-call note
    assert transcript(store, run.id) == [
        ("stderr", (">>> sooner." + "z" * MAX_LINE_BYTES)[:MAX_LINE_BYTES] + "\n"),
        ("system", "sooner: line truncated: 2.9 MB, kept the first 1 MB\n"
                   f"sooner: ignored malformed call: call too long: over {MAX_LINE_BYTES} bytes\n")]
    assert run.status == RunStatus.SUCCEEDED


# -- settings ---------------------------------------------------------------------------
@pytest.mark.parametrize("key, value", [("output_max_bytes_per_run", 0), ("output_max_line_bytes", -1),
                                        ("output_retention_days", -1.0), ("output_retention_days", float("nan")),
                                        ("output_retention_days", float("inf"))])
def test_output_settings_are_checked(key, value):
    with pytest.raises(ConfigError, match=key):
        load_settings(None, environ={}, overrides={key: value})


def test_output_settings_come_from_the_environment_and_are_documented():
    settings = load_settings(None, environ={"SOONER_OUTPUT_RETENTION_DAYS": "0", "SOONER_OUTPUT_MAX_LINE_BYTES": "4096"})
    assert OutputPolicy.from_settings(settings) == OutputPolicy(max_bytes_per_run=50 * 1024 * 1024,
                                                                max_line_bytes=4096, retention_days=0.0)
    assert OutputPolicy.from_settings(settings).retention is None  # 0 = keep forever
    with pytest.raises(ConfigError, match="SOONER_OUTPUT_RETENTION_DAYS"):
        load_settings(None, environ={"SOONER_OUTPUT_RETENTION_DAYS": "inf"})
    readme = (ROOT / "README.md").read_text()
    assert "## Output limits and retention" in readme or "### Output limits and retention" in readme


# -- retention ----------------------------------------------------------------------------
def age_index(store) -> dict | None:
    indexes = [i for i in store.collection(schema.RUN_OUTPUT).list_indexes() if list(i["key"].items()) == [("t", 1)]]
    assert len(indexes) <= 1
    return dict(indexes[0]) if indexes else None


def chunk_at(store, run_id: str, seq: int, t: datetime) -> None:
    store.output.append(run_id, [(seq, "stdout", f"line {seq}\n", t)])


def test_prune_removes_chunks_older_than_the_cutoff_and_keeps_runs(any_store):
    # given a finished run with chunks 40, 31 and 1 day old, and another run's chunks of today
    now = datetime(2026, 3, 1, tzinfo=UTC)
    service = RunService(any_store)
    any_store.jobs.record_deployed("a.sh", commit="c" * 40, blob="b" * 40)
    run = service.queue("a.sh", ManualTrigger())
    for seq, days in enumerate((40, 31, 1)):
        chunk_at(any_store, run.id, seq, now - timedelta(days=days))
    for seq in range(3):
        chunk_at(any_store, "other", seq, now)
    # when chunks older than 30 days are pruned, in batches of one
    removed = any_store.output.prune(now - timedelta(days=30), batch=1)
    # then the two old chunks are gone, the rest and the run's record are kept
    assert removed == 2
    assert [c["seq"] for c in any_store.output.read(run.id)] == [2]
    assert [c["seq"] for c in any_store.output.read("other")] == [0, 1, 2]
    assert any_store.runs.get(run.id).id == run.id
    assert any_store.output.prune(now - timedelta(days=30)) == 0


def test_prune_expired_follows_the_retention_at_most_hourly(embedded_store):
    # given a store keeping output 30 days, with a chunk 31 days old
    now = datetime(2026, 3, 1, tzinfo=UTC)
    chunk_at(embedded_store, "r1", 0, now - timedelta(days=31))
    # when retention is applied now and again within the hour
    assert embedded_store.output.prune_expired(now) == 1
    chunk_at(embedded_store, "r1", 1, now - timedelta(days=31))
    assert embedded_store.output.prune_expired(now + timedelta(minutes=59)) == 0
    # then the second pass waits for the next hour
    assert embedded_store.output.prune_expired(now + timedelta(minutes=61)) == 1


def test_retention_zero_keeps_output_forever(make_mock_store):
    store = make_mock_store()
    store.output.policy = OutputPolicy(max_bytes_per_run=1, max_line_bytes=1, retention_days=0)
    chunk_at(store, "r1", 0, datetime(2000, 1, 1, tzinfo=UTC))
    assert store.output.prune_expired(datetime(2026, 1, 1, tzinfo=UTC)) == 0
    assert len(store.output.read("r1")) == 1


def test_the_embedded_server_gets_a_plain_index_on_t_because_it_would_purge_on_every_read(embedded_store):
    # given a store opened on the embedded server (open_store applied the retention)
    index = age_index(embedded_store)
    # then run_output has an index on t for prune, without expireAfterSeconds
    assert index is not None and "expireAfterSeconds" not in index
    assert ([("run", 1)], {}) in schema.INDEXES[schema.RUN_OUTPUT]


def test_a_ttl_index_follows_the_setting_and_the_server_removes_expired_chunks(embedded_store):
    # given a server that sweeps TTL indexes (forced here: nx-27017 honours them by purging on reads)
    output = embedded_store.output
    output.policy = OutputPolicy(max_bytes_per_run=1, max_line_bytes=1, retention_days=30)
    output.ensure_retention(server_sweeps=True)
    assert age_index(embedded_store)["expireAfterSeconds"] == 30 * 86400
    # when the retention changes, the index changes with it (collMod, or drop and create where unsupported)
    output.policy = OutputPolicy(max_bytes_per_run=1, max_line_bytes=1, retention_days=1.5)
    output.ensure_retention(server_sweeps=True)
    assert age_index(embedded_store)["expireAfterSeconds"] == 129600
    # and the server removes chunks older than the TTL, and keeps the others
    now = datetime.now(UTC)
    chunk_at(embedded_store, "r1", 0, now - timedelta(days=2))
    chunk_at(embedded_store, "r1", 1, now - timedelta(days=1))
    left = wait_for(lambda: len(chunks := output.read("r1")) == 1 and chunks, 10, message="the server's TTL purge")
    assert [c["seq"] for c in left] == [1]
    # when retention is switched off (0), the index keeps no TTL
    output.policy = OutputPolicy(max_bytes_per_run=1, max_line_bytes=1, retention_days=0)
    output.ensure_retention(server_sweeps=True)
    assert "expireAfterSeconds" not in (age_index(embedded_store) or {})


@pytest.mark.skipif("SOONER_TEST_MONGO_URL" not in __import__("os").environ, reason="needs SOONER_TEST_MONGO_URL")
def test_a_real_mongodb_gets_a_ttl_index_from_the_setting(real_store):
    real_store.output.ensure_retention()
    assert age_index(real_store)["expireAfterSeconds"] == 30 * 86400


# -- pages bounded in bytes, through a real web server ----------------------------------------
MIXED = PY + """import sys
out, err = sys.stdout, sys.stderr
for i in range(3000):
    out.write('out %05d ' % i + 'o' * 990 + '\\n')
    if i % 7 == 0:
        out.flush()
        err.write('err %05d\\n' % i)
        err.flush()
out.write('\\u00e9' * 1_500_000 + '\\n')
out.flush()
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A site with `sooner web` running, an admin with an API token, and a run of ~6 MB of mixed output."""
    root = tmp_path_factory.mktemp("output-pages")
    config = root / "site" / "config.json"
    init_site(root / "site")
    config.write_text(json.dumps({**json.loads(config.read_text()), "output_max_line_bytes": 4 * 1024 * 1024}))
    settings = load_settings(config, environ={})
    store = open_store(settings)
    store.users.add("admin", "admin-password", admin=True)
    token, _ = store.tokens.create("admin", "tests")
    deploy_files(store, {"mixed.py": MIXED})
    worker = Worker(store, settings, "pages", 1, cache=root / "cache")
    worker.register()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
    thread.start()
    run = run_job(store, "mixed.py", timeout=120)
    web = WebServer(config, root / "web.log").wait_ready()
    yield type("Served", (), {"store": store, "run": run, "web": web, "token": token, "settings": settings})
    web.stop()
    stop.set()
    thread.join(20)
    store.close()
    from sooner.store.embedded import EmbeddedServer

    EmbeddedServer(settings.state_dir).stop()


def fetch(url: str, headers: dict | None = None, opener=None) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    with (opener.open(request, timeout=60) if opener else urllib.request.urlopen(request, timeout=60)) as response:
        return response.read()


def page_through(get, after: int = -1, limit: int = 5000) -> tuple[list[dict], list[int]]:
    chunks, sizes = [], []
    while True:
        body = get(after, limit)
        sizes.append(len(body))
        page = json.loads(body)
        chunks += page["chunks"]
        if not page["more"]:
            return chunks, sizes
        assert page["chunks"] and page["next_after"] == page["chunks"][-1]["seq"]
        after = page["next_after"]


def test_the_output_api_pages_by_seq_within_a_byte_budget(served):
    from sooner.webapp.api import OUTPUT_PAGE_BYTES

    stored = served.store.output.read(served.run.id)
    assert served.run.status == RunStatus.SUCCEEDED and sum(len(c["text"]) for c in stored) > 4_000_000
    headers = {"Authorization": f"Bearer {served.token}"}
    url = f"{served.web.base_url}/api/runs/{served.run.id}/output"
    # when a client pages through with the largest limit
    chunks, sizes = page_through(lambda after, limit: fetch(f"{url}?after={after}&limit={limit}", headers))
    # then every response stays within the budget, and every chunk arrives exactly once, in order
    assert max(sizes) <= OUTPUT_PAGE_BYTES + ENVELOPE_BYTES, sizes
    assert len(sizes) >= 5
    assert [c["seq"] for c in chunks] == [c["seq"] for c in stored]
    assert "".join(c["text"] for c in chunks) == "".join(c["text"] for c in stored)
    # and a small limit still pages (limit counts chunks)
    few, _ = page_through(lambda after, limit: fetch(f"{url}?after={after}&limit=3", headers), after=len(stored) - 8)
    assert [c["seq"] for c in few] == list(range(len(stored) - 7, len(stored)))
    print(f"\n{sum(len(c['text']) for c in stored) / 1e6:.1f} MB of output in {len(sizes)} responses of at most "
          f"{max(sizes) / 1e6:.2f} MB")


def signed_in_opener(base_url: str):
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    login = fetch(base_url + "/login", opener=opener).decode()
    form = urllib.parse.urlencode({"username": "admin", "password": "admin-password", "csrf_token": csrf_of(login)})
    opener.open(base_url + "/login", data=form.encode(), timeout=30).read()
    return opener


def test_the_web_output_pages_are_bounded_in_bytes_too(served):
    from sooner.webapp.runs import OUTPUT_PAGE_BYTES

    opener = signed_in_opener(served.web.base_url)
    url = f"{served.web.base_url}/runs/{served.run.id}/output"
    stored = served.store.output.read(served.run.id)
    # forwards with ?after=
    chunks, sizes = page_through(lambda after, limit: fetch(f"{url}?after={after}&limit=2000", opener=opener))
    assert [c["seq"] for c in chunks] == [c["seq"] for c in stored]
    assert max(sizes) <= OUTPUT_PAGE_BYTES + ENVELOPE_BYTES
    # backwards with ?before= ("load earlier"), newest page first
    before, seen, pages = len(stored), [], 0
    while True:
        page = json.loads(body := fetch(f"{url}?before={before}&limit=2000", opener=opener))
        assert len(body) <= OUTPUT_PAGE_BYTES + ENVELOPE_BYTES and page["chunks"]
        seen = [c["seq"] for c in page["chunks"]] + seen
        before, pages = page["chunks"][0]["seq"], pages + 1
        if not page["more"]:
            break
    assert seen == [c["seq"] for c in stored] and pages >= 5
    # the run page embeds a bounded tail, and the log download is the whole output
    run_page = fetch(f"{served.web.base_url}/runs/{served.run.id}", opener=opener)
    assert len(run_page) < 600_000
    log = fetch(f"{served.web.base_url}/runs/{served.run.id}/log.txt", opener=opener).decode()
    assert log == "".join(c["text"] for c in stored)


def test_a_run_whose_output_was_removed_by_retention_says_so(served):
    # given a run that finished 40 days ago and whose output chunks are gone
    finished = datetime.now(UTC) - timedelta(days=40)
    old = {"_id": f"old{uuid.uuid4().hex[:20]}", "job": "mixed.py", "status": RunStatus.SUCCEEDED.value,
           "trigger": {"type": "manual"}, "queued_at": finished - timedelta(minutes=1),
           "started_at": finished - timedelta(minutes=1), "finished_at": finished, "exit_code": 0}
    served.store.import_documents(schema.RUNS, [old])
    # then the run page and the output API say the retention removed it
    opener = signed_in_opener(served.web.base_url)
    page = fetch(f"{served.web.base_url}/runs/{old['_id']}", opener=opener).decode()
    assert "output older than 30 days was removed (retention)" in page.lower()
    answer = json.loads(fetch(f"{served.web.base_url}/api/runs/{old['_id']}/output",
                              {"Authorization": f"Bearer {served.token}"}))
    assert answer["chunks"] == [] and answer["removed_by_retention"] is True
    # and a run with output does not
    assert "was removed (retention)" not in fetch(f"{served.web.base_url}/runs/{served.run.id}", opener=opener).decode()


def test_readme_and_architecture_document_the_limits():
    readme = (ROOT / "README.md").read_text()
    for key in ("output_max_bytes_per_run", "output_max_line_bytes", "output_retention_days"):
        assert f"`{key}`" in readme
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    row = next(line for line in architecture.splitlines() if line.startswith("| `run_output`"))
    assert "retention" in row and "output_retention_days" in row
    assert Path(ROOT / "README.md").exists()
