"""Events start hooked jobs: from the CLI, from ending runs (job:<name>:succeeded), with a chain depth limit."""

from __future__ import annotations

import getpass
import os

import pytest

from conftest import run_sooner
from sooner.config import load_settings
from sooner.events import emit
from sooner.runs import end_run, queue_run
from sooner.store import open_store
from sooner.store.runs import RunStatus


def hooked(store, name: str, *hooks: str, enabled: bool = True, **settings) -> dict:
    store.jobs.record_deployed(name, commit="c1", blob=f"b-{name}")
    if enabled:
        store.jobs.set_enabled(name, True)
    return store.jobs.update_settings(name, settings, add_hooks=hooks)


def finish(store, run_id: str, status: RunStatus = RunStatus.SUCCEEDED, **options) -> dict:
    """What a worker does: claim the run, then end it."""
    claimed = store.runs.claim("w", [], 30)
    assert claimed and claimed["_id"] == run_id
    return end_run(store, run_id, status, exit_code=0 if status is RunStatus.SUCCEEDED else 1, **options)


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
    assert [r["job"] for r in runs] == ["a.sh"]
    assert result.stdout.strip() == f"started run {runs[0]['_id']} of a.sh"
    run = runs[0]
    assert run["data"] == {"rows": 3}
    trigger = run["trigger"]
    assert (trigger["type"], trigger["event"], trigger["author"]) == ("event", "data-ready", "alice")
    event = site_store.events.list()[0]
    assert (event["name"], event["data"], event["runs"]) == ("data-ready", {"rows": 3}, [run["_id"]])
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


def test_an_event_does_not_start_a_second_run_of_a_busy_job_with_overlap_skip(mock_store):
    hooked(mock_store, "a.sh", "go")
    first = emit(mock_store, "go", source={"type": "api"})
    second = emit(mock_store, "go", source={"type": "api"})
    assert len(first["runs"]) == 1 and second["runs"] == []


def test_past_the_depth_limit_no_run_starts_and_the_event_and_run_say_why(mock_store):
    job = hooked(mock_store, "a.sh", "loop")
    source_run = queue_run(mock_store, job, {"type": "manual"})

    event = emit(mock_store, "loop", {"x": 1}, source={"type": "run", "run": source_run["_id"], "job": "a.sh"},
                 depth=4, depth_limit=3)

    assert event["runs"] == [] and "chain depth limit (3) reached" in event["note"]
    assert "a.sh" in event["note"]
    assert mock_store.events.get(event["_id"])["note"] == event["note"]
    assert "chain depth limit" in mock_store.runs.get(source_run["_id"])["note"]
    assert len(mock_store.runs.list()) == 1


def test_a_run_that_ends_emits_job_succeeded_or_failed_and_chains_the_next_job(mock_store):
    first = hooked(mock_store, "extract.sh")
    hooked(mock_store, "load.sh", "job:extract.sh:succeeded")
    hooked(mock_store, "alert.sh", "job:extract.sh:failed")

    ok = queue_run(mock_store, first, {"type": "manual"}, data={"day": 1})
    finish(mock_store, ok["_id"])
    chained = mock_store.runs.list(job="load.sh")[0]
    assert chained["trigger"]["event"] == "job:extract.sh:succeeded"
    assert chained["trigger"]["source"] == ok["_id"] and chained["depth"] == 1
    assert chained["data"]["run"] == ok["_id"] and chained["data"]["data"] == {"day": 1}
    finish(mock_store, chained["_id"])

    bad = queue_run(mock_store, first, {"type": "manual"})
    finish(mock_store, bad["_id"], RunStatus.FAILED)
    assert [r["trigger"]["event"] for r in mock_store.runs.list(job="alert.sh")] == ["job:extract.sh:failed"]
    names = [e["name"] for e in mock_store.events.list()]
    assert names.count("job:extract.sh:succeeded") == 1 and names.count("job:extract.sh:failed") == 1


def test_a_cycle_of_chained_jobs_stops_at_the_depth_limit(mock_store):
    ping = hooked(mock_store, "ping.sh", "job:pong.sh:succeeded")
    hooked(mock_store, "pong.sh", "job:ping.sh:succeeded")
    queue_run(mock_store, ping, {"type": "manual"})

    for _ in range(20):
        queued = mock_store.runs.list(status="queued")
        if not queued:
            break
        finish(mock_store, queued[0]["_id"], depth_limit=3)

    assert mock_store.runs.list(status="queued") == []
    assert len(mock_store.runs.list()) == 4  # depths 0, 1, 2, 3
    assert "chain depth limit (3) reached" in mock_store.events.list()[0]["note"]


def test_the_cli_names_the_user_as_author_by_default(site, site_store):
    hooked(site_store, "a.sh", "hi")
    env = {k: v for k, v in os.environ.items() if k != "USER"}
    result = run_sooner("emit", "hi", cwd=site, env={**env, "USER": ""})
    assert result.returncode == 0, result.stderr
    assert site_store.runs.list()[0]["trigger"]["author"] == getpass.getuser()
