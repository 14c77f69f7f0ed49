"""What a run emitted, and the runs its events started: on the run page, in `sooner logs` and in the API.

The store read runs on mongomock and the embedded server; the page and the API
on the Flask test client; `sooner logs` through the real CLI, once after a
real worker ran a script that emits.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from conftest import run_sooner, signed_in, wait_for
from sooner.clock import FakeClock
from sooner.config import load_settings
from sooner.model import Job, ManualTrigger, Run
from sooner.runs.service import RunService
from sooner.store import Store, open_store, schema
from sooner.store.reads import EMITTED_PAGE
from sooner.worker.testing import deploy_files

UTC = timezone.utc
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script>"


def hooked(store: Store, name: str, *hooks: str, **settings: object) -> Job:
    store.jobs.record_deployed(name, commit="c1", blob=f"b-{name}", now=T0)
    store.jobs.set_enabled(name, True)
    return store.jobs.update_settings(name, settings, add_hooks=hooks)


def emitter(store: Store, service: RunService, job: str = "emit.sh") -> Run:
    store.jobs.record_deployed(job, commit="c1", blob=f"b-{job}", now=T0)
    run = service.queue(job, ManualTrigger())
    assert run is not None
    return run


def emit(service: RunService, run: Run, name: str, data: object = None, depth: int = 1) -> dict:
    return service.emit(name, data, source={"type": "run", "run": run.id, "job": run.job}, depth=depth)


@pytest.fixture
def scenario(any_store):
    """A run of emit.sh that emitted three events: one started b.sh and c.sh, one nothing, one hit the depth limit."""
    service = RunService(any_store, clock=FakeClock(T0))
    hooked(any_store, "b.sh", "rows.ready")
    hooked(any_store, "c.sh", "rows.ready", "loop")
    run = emitter(any_store, service)
    other = emitter(any_store, service, "other.sh")
    emit(service, run, "rows.ready", {"rows": 3})
    emit(service, other, "rows.ready")  # another run's: not this run's
    emit(service, run, "nobody.listens")
    emit(service, run, "loop", depth=service.depth_limit + 1)
    return any_store, service, run


# -- the store read ------------------------------------------------------------------------------------------------
def test_a_runs_emitted_events_come_oldest_first_with_the_runs_each_started(scenario):
    store, _, run = scenario
    emitted = store.reads.emitted_events(run.id)
    assert [e["name"] for e in emitted.events] == ["rows.ready", "nobody.listens", "loop"]
    assert (emitted.more, emitted.next_offset) == (False, 3)
    first, quiet, stopped = emitted.events
    assert first["data"] == {"rows": 3}
    assert [emitted.runs[run_id].ref for run_id in first["runs"]] == ["b.sh#1", "c.sh#1"]
    assert {emitted.runs[run_id].status.value for run_id in first["runs"]} == {"queued"}
    assert quiet["runs"] == [] and not quiet.get("note")
    assert stopped["runs"] == [] and "chain depth limit" in stopped["note"]


def test_a_runs_emitted_events_page_by_offset_in_one_order(any_store):
    # given a run that emitted more than a page of events, all in the same millisecond
    service = RunService(any_store, clock=FakeClock(T0))
    run = emitter(any_store, service)
    for i in range(EMITTED_PAGE + 5):
        emit(service, run, f"e.{i}")
    # when it is read a page at a time
    first = any_store.reads.emitted_events(run.id)
    second = any_store.reads.emitted_events(run.id, offset=first.next_offset)
    # then the pages hold every event once, in the order they were emitted
    assert (len(first.events), first.more, first.next_offset) == (EMITTED_PAGE, True, EMITTED_PAGE)
    assert (len(second.events), second.more) == (5, False)
    assert [e["name"] for e in first.events + second.events] == [f"e.{i}" for i in range(EMITTED_PAGE + 5)]
    assert ([("source.run", 1)], {}) in schema.INDEXES[schema.EVENTS]


# -- the run page ----------------------------------------------------------------------------------------------------
@pytest.fixture
def web(mock_store, mock_web_app):
    app, _, _ = mock_web_app
    service = RunService(mock_store, clock=FakeClock(T0))
    hooked(mock_store, "b.sh", "rows.ready")
    run = emitter(mock_store, service)
    emit(service, run, "rows.ready", {"note": HOSTILE})
    emit(service, run, "rows.ready", depth=service.depth_limit + 1)
    token, _ = mock_store.tokens.create("viewer")
    return app, mock_store, service, run, {"Authorization": f"Bearer {token}"}


def test_the_run_page_shows_each_emitted_event_escaped_with_the_runs_it_started(web):
    app, store, _, run, _ = web
    page = signed_in(app, "viewer", "viewer-password").get(f"/runs/{run.id}").text
    section = page[page.index('id="emitted"'):page.index("</section>", page.index('id="emitted"'))]
    assert section.count('<a href="/events?name=rows.ready">rows.ready</a>') == 2
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in section  # the data excerpt
    started = store.runs.get("b.sh#1")
    assert f'href="/runs/{started.id}" title="{started.id}">b.sh#1</a> <span class="badge st-queued">' in section
    assert "chain depth limit" in section and 'id="emitted-more"' not in section


def test_the_run_page_shows_a_hundred_events_and_links_to_the_next_ones(web):
    app, store, service, run, _ = web
    for i in range(EMITTED_PAGE):
        emit(service, run, f"bulk.{i}")
    client = signed_in(app, "viewer", "viewer-password")
    page = client.get(f"/runs/{run.id}").text
    assert page.count('<a href="/events?name=bulk.') == EMITTED_PAGE - 2  # the first two are rows.ready
    assert f'id="emitted-more" href="/runs/{run.id}?emitted={EMITTED_PAGE}#emitted"' in page
    rest = client.get(f"/runs/{run.id}?emitted={EMITTED_PAGE}").text
    assert "bulk.98" in rest and "bulk.99" in rest and "bulk.97<" not in rest and 'id="emitted-more"' not in rest
    quiet = store.runs.get("b.sh#1")  # a run that emitted nothing has no section
    assert 'id="emitted"' not in client.get(f"/runs/{quiet.id}").text


# -- the API -----------------------------------------------------------------------------------------------------------
def test_the_api_run_carries_its_emitted_events_and_pages_them(web):
    app, store, _, run, headers = web
    client = app.test_client()
    answer = client.get("/api/runs/emit.sh%231", headers=headers).json
    assert answer["emitted_more"] is False
    first, stopped = answer["emitted"]
    started = store.runs.get("b.sh#1")
    assert (first["name"], first["data"], first["depth"], first["t"]) == (
        "rows.ready", {"note": HOSTILE}, 1, "2026-01-05T12:00:00Z")
    assert first["source"] == {"type": "run", "run": run.id, "job": "emit.sh"}
    assert first["runs"] == [{"id": started.id, "ref": "b.sh#1", "job": "b.sh", "number": 1, "status": "queued"}]
    assert stopped["runs"] == [] and "chain depth limit" in stopped["note"]
    paged = client.get("/api/runs/emit.sh:1/events?offset=1&limit=1", headers=headers).json
    assert (paged["run"], paged["ref"], paged["more"], paged["next_offset"]) == (run.id, "emit.sh#1", False, 2)
    assert [e["note"] for e in paged["events"]] == [stopped["note"]]


@pytest.mark.parametrize("query, message", [
    ("offset=-1", "offset: must be a whole number from 0 to 1000000000, got '-1'"),
    ("offset=x", "offset: must be a whole number"),
    ("limit=0", "limit: must be a whole number from 1 to 100, got '0'"),
    ("limit=101", "limit: must be a whole number from 1 to 100"),
    ("limit=%C2%B2", "limit: must be a whole number"),
])
def test_the_api_refuses_bad_paging_of_events_with_the_reason(web, query, message):
    app, _, _, run, headers = web
    answer = app.test_client().get(f"/api/runs/{run.id}/events?{query}", headers=headers)
    assert answer.status_code == 400 and message in answer.json["error"]
    assert app.test_client().get(f"/api/runs/{run.id}/events").status_code == 401


# -- sooner logs ---------------------------------------------------------------------------------------------------------
EMITTER = """#!/bin/sh
echo working
echo '>>> sooner.emit("rows.ready", {"rows": 3})' >&2
echo done
"""


@pytest.fixture
def site_store(site):
    store = open_store(load_settings(site / "config.json", environ={}))
    yield store
    store.close()


def test_sooner_logs_lists_what_a_real_run_emitted_after_its_output(site, site_store, start_worker):
    # given a script that emits an event next.sh is hooked to (next.sh waits for a worker that never comes)
    settings, store = load_settings(site / "config.json", environ={}), site_store
    deploy_files(store, {"emit.sh": EMITTER, "next.sh": "#!/bin/sh\necho next\n"},
                 hooks={"next.sh": ["rows.ready"]}, settings={"next.sh": {"worker": "elsewhere"}})
    start_worker(store, settings, "w1")
    # when it has run (its own event and the one announcing its end are stored)
    run = RunService(store).queue("emit.sh", ManualTrigger())
    wait_for(lambda: len(store.reads.emitted_events(run.id).events) == 2, 60, message="the run's two events")
    shown = run_sooner("logs", "emit.sh#1", cwd=site)
    # then the output comes first, then the end, then each event with the runs it started
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "working\ndone\n"
    tail = shown.stderr.splitlines()[-3:]
    assert tail[0].startswith("sooner: run emit.sh#1 succeeded (exit code 0)")
    assert tail[1:] == ["sooner: emitted rows.ready → started next.sh#1 (queued)",
                        "sooner: emitted job:emit.sh:succeeded"]


def test_sooner_logs_says_when_the_chain_depth_limit_stopped_an_event(site, site_store):
    store = site_store
    service = RunService(store, clock=FakeClock(T0 + timedelta(seconds=1)))
    hooked(store, "b.sh", "loop")
    run = emitter(store, service)
    emit(service, run, "loop", depth=service.depth_limit + 1)
    shown = run_sooner("logs", run.id[-8:], cwd=site)
    assert shown.returncode == 0, shown.stderr
    assert "sooner: emitted loop → chain depth limit (" in shown.stderr and "b.sh" in shown.stderr
