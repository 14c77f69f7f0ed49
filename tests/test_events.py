"""Events start hooked jobs: from the CLI, from ending runs (job:<name>:succeeded), with a chain depth limit."""

from __future__ import annotations

import getpass
import os

import pytest

from conftest import run_sooner
from sooner.config import load_settings
from sooner.model import Job, ManualTrigger, Run, RunStatus
from sooner.runs.service import RunService
from sooner.store import open_store


def hooked(store, name: str, *hooks: str, enabled: bool = True, **settings) -> Job:
    store.jobs.record_deployed(name, commit="c1", blob=f"b-{name}")
    if enabled:
        store.jobs.set_enabled(name, True)
    return store.jobs.update_settings(name, settings, add_hooks=hooks)


def finish(service: RunService, run_id: str, status: RunStatus = RunStatus.SUCCEEDED) -> Run:
    """What a worker does: claim the run, then end it."""
    claimed = service.claim("w", [], 30)
    assert claimed and claimed.id == run_id
    return service.finish(run_id, status, exit_code=0 if status is RunStatus.SUCCEEDED else 1)


@pytest.fixture
def site_store(site):
    store = open_store(load_settings(site / "config.json", environ={}))
    yield store
    store.close()


def test_emit_from_the_cli_starts_enabled_hooked_jobs_only_with_the_data(site, site_store):
    hooked(site_store, "a.sh", "data-ready")
    hooked(site_store, "b.sh", "data-ready", enabled=False)
    hooked(site_store, "c.sh", "other-event")

    result = run_sooner("emit", "data-ready", "--data", '{"rows": 3}', cwd=site, env={"USER": "alice"})

    assert result.returncode == 0, result.stderr
    runs = site_store.runs.list()
    assert [r.job for r in runs] == ["a.sh"]
    assert result.stdout.strip() == f"started run a.sh#1 ({runs[0].id})"
    run = runs[0]
    assert run.data == {"rows": 3}
    trigger = run.trigger
    assert (trigger.kind, trigger.event, trigger.author) == ("event", "data-ready", "alice")
    event = site_store.events.list()[0]
    assert (event["name"], event["data"], event["runs"]) == ("data-ready", {"rows": 3}, [run.id])
    assert event["source"] == {"type": "cli", "author": "alice"}


def test_emit_of_an_event_nobody_listens_to_says_so(site):
    result = run_sooner("emit", "nobody-listens", cwd=site)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no job is hooked to nobody-listens"


def test_emit_refuses_bad_json_and_bad_event_names_clearly(site):
    bad = run_sooner("emit", "x", "--data", "{rows: 3}", cwd=site)
    assert bad.returncode == 1
    assert "--data is not valid JSON" in bad.stderr and "Traceback" not in bad.stderr
    name = run_sooner("emit", "bad name", cwd=site)
    assert name.returncode == 1 and "invalid event name" in name.stderr


def test_an_event_does_not_start_a_second_run_of_a_busy_job_with_overlap_skip(clocked_store, service):
    hooked(clocked_store, "a.sh", "go")
    first = service.emit("go", source={"type": "api"})
    second = service.emit("go", source={"type": "api"})
    assert len(first["runs"]) == 1 and second["runs"] == []


def test_past_the_depth_limit_no_run_starts_and_the_event_and_run_say_why(clocked_store, make_service):
    service = make_service(clocked_store, chain_depth_limit=3)
    job = hooked(clocked_store, "a.sh", "loop")
    source_run = service.queue(job, ManualTrigger())

    event = service.emit("loop", {"x": 1}, source={"type": "run", "run": source_run.id, "job": "a.sh"}, depth=4)

    assert event["runs"] == [] and "chain depth limit (3) reached" in event["note"]
    assert "a.sh" in event["note"]
    assert clocked_store.events.get(event["_id"])["note"] == event["note"]
    assert "chain depth limit" in clocked_store.runs.get(source_run.id).note
    assert len(clocked_store.runs.list()) == 1


def test_a_run_that_ends_emits_job_succeeded_or_failed_and_chains_the_next_job(clocked_store, service):
    first = hooked(clocked_store, "extract.sh")
    hooked(clocked_store, "load.sh", "job:extract.sh:succeeded")
    hooked(clocked_store, "alert.sh", "job:extract.sh:failed")

    ok = service.queue(first, ManualTrigger(), data={"day": 1})
    finish(service, ok.id)
    chained = clocked_store.runs.list(job="load.sh")[0]
    assert chained.trigger.event == "job:extract.sh:succeeded"
    assert chained.trigger.source == ok.id and chained.depth == 1
    assert chained.data["run"] == ok.id and chained.data["data"] == {"day": 1}
    finish(service, chained.id)

    bad = service.queue(first, ManualTrigger())
    finish(service, bad.id, RunStatus.FAILED)
    assert [r.trigger.event for r in clocked_store.runs.list(job="alert.sh")] == ["job:extract.sh:failed"]
    names = [e["name"] for e in clocked_store.events.list()]
    assert names.count("job:extract.sh:succeeded") == 1 and names.count("job:extract.sh:failed") == 1


def test_a_cycle_of_chained_jobs_stops_at_the_depth_limit(clocked_store, make_service, fake_clock):
    service = make_service(clocked_store, chain_depth_limit=3)
    ping = hooked(clocked_store, "ping.sh", "job:pong.sh:succeeded")
    hooked(clocked_store, "pong.sh", "job:ping.sh:succeeded")
    service.queue(ping, ManualTrigger())

    for _ in range(20):
        queued = clocked_store.runs.list(status="queued")
        if not queued:
            break
        fake_clock.advance(1)  # each run takes a second, so each event is newer than the one before
        finish(service, queued[0].id)

    assert clocked_store.runs.list(status="queued") == []
    assert len(clocked_store.runs.list()) == 4  # depths 0, 1, 2, 3
    assert "chain depth limit (3) reached" in clocked_store.events.list()[0]["note"]


def test_the_cli_names_the_user_as_author_by_default(site, site_store):
    hooked(site_store, "a.sh", "hi")
    env = {k: v for k, v in os.environ.items() if k != "USER"}
    result = run_sooner("emit", "hi", cwd=site, env={**env, "USER": ""})
    assert result.returncode == 0, result.stderr
    assert site_store.runs.list()[0].trigger.author == getpass.getuser()
