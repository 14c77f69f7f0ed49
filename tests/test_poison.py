"""The poison list: the store read on every store, the v1 API, the page (CSRF, admin) and `sooner runs --poison`."""

from __future__ import annotations

import html
from datetime import datetime, timezone

import pytest

from conftest import signed_in
from sooner.clock import FakeClock
from sooner.model import ManualTrigger, Run, RunStatus
from sooner.model.token import TokenScope
from sooner.runs.service import RunService

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
JOB = "api/ping.http.json"
HOSTILE = "<script>alert(1)</script>"


def ended_run(service: RunService, status: RunStatus = RunStatus.POISON, job: str = JOB,
              note: str | None = "step 1/1 'ping' failed 5 times, last: HTTP 500") -> Run:
    """A run of ``job`` that worker w1 took and that ended ``status``, a minute after the previous one."""
    service.clock.advance(60)  # type: ignore[attr-defined]
    run = service.queue(job, ManualTrigger(author="me"), data={"secret": "not in lists"})
    assert run is not None and service.take(run.id, "w1", lease_s=60) is not None
    assert service.finish(run.id, status, note=note) is not None
    return service.store.runs.get(run.id)


def deploy(store, *names: str) -> None:
    for name in names:
        store.jobs.record_deployed(name, commit="c" * 40, blob=f"blob-{name}")


@pytest.fixture
def service(any_store) -> RunService:
    deploy(any_store, JOB, "other.http.json", "a.sh")
    return RunService(any_store, clock=FakeClock(T0))


# -- the store read ------------------------------------------------------------------------------------------------
def test_the_list_holds_poison_runs_not_retried_or_discarded_newest_first(any_store, service):
    # given two poison runs, a failed run and a poison run of another job
    first = ended_run(service)
    ended_run(service, RunStatus.FAILED, job="a.sh", note="exit code 1")
    other = ended_run(service, job="other.http.json")
    second = ended_run(service)
    # when the list is read
    runs, total, truncated = any_store.poison.page()
    # then it holds the poison runs, newest first, without their data
    assert [r.id for r in runs] == [second.id, other.id, first.id] and total == 3 and not truncated
    assert all(r.data is None for r in runs)
    assert [r.id for r in any_store.poison.page(job=JOB)[0]] == [second.id, first.id]
    assert any_store.poison.count() == 3


def test_a_poison_run_is_not_retried_by_its_jobs_policy_and_is_not_in_the_failed_view(any_store, service):
    any_store.jobs.update_settings(JOB, {"retry": {"attempts": 3, "backoff_base_s": 0}})
    run = ended_run(service)
    assert run.next_attempt is None and not run.failed_view
    assert len(any_store.runs.list(job=JOB)) == 1


def test_retry_takes_a_run_off_the_list_and_discard_keeps_its_status(any_store, service):
    retried, discarded = ended_run(service), ended_run(service)
    # when one is retried and the other discarded
    (result,) = service.retry_many([retried.id], by="alice", source="test")
    assert result.ok and "retried as run" in result.message
    (gone,) = any_store.poison.discard([discarded.id], by="bob")
    assert gone.ok and gone.message == "discarded by bob"
    # then the list is empty, the discarded run is still poison, and the retry is a new attempt in the chain
    assert any_store.poison.page()[1] == 0
    assert any_store.runs.get(discarded.id).status is RunStatus.POISON
    new = any_store.runs.get(result.run)
    assert new.status is RunStatus.QUEUED and new.attempt == 2 and new.chain_root == retried.chain_root
    # and doing either again is refused with the reason
    (again,) = any_store.poison.discard([discarded.id, ], by="bob")
    assert not again.ok and again.message == "discarded already (by bob)"
    (twice,) = any_store.poison.discard([retried.id], by="bob")
    assert not twice.ok and twice.message.startswith("retried already, as run ")


def test_discard_refuses_runs_that_are_not_poison(any_store, service):
    failed = ended_run(service, RunStatus.FAILED, job="a.sh")
    (result,) = any_store.poison.discard([failed.id], by="x")
    assert not result.ok and result.message == "not on the poison list: it is failed"
    (missing,) = any_store.poison.discard(["nope"], by="x")
    assert not missing.ok


# -- the API -------------------------------------------------------------------------------------------------------
@pytest.fixture
def web(mock_web_app):
    app, _, _ = mock_web_app
    store = app.extensions["sooner"].store
    deploy(store, JOB, "a.sh")
    service = RunService(store, clock=FakeClock(T0))
    return app, store, service


def bearer(store, user: str = "admin", **options) -> dict[str, str]:
    token, _ = store.tokens.create(user, **options)
    return {"Authorization": f"Bearer {token}"}


def test_the_api_lists_retries_and_discards(web):
    app, store, service = web
    one, two = ended_run(service), ended_run(service)
    client = app.test_client()
    headers = bearer(store)
    # the list
    listed = client.get("/api/v1/poison", headers=headers)
    assert listed.status_code == 200
    body = listed.get_json()
    assert [r["id"] for r in body["runs"]] == [two.id, one.id] and body["total"] == 2
    assert body["runs"][0]["status"] == "poison" and body["runs"][0]["note"].startswith("step 1/1")
    # retry (by its JOB#N form) makes a new attempt
    retried = client.post(f"/api/v1/poison/{JOB}%23{one.number}/retry", headers=headers)
    assert retried.status_code == 201, retried.get_json()
    assert retried.get_json()["retried"] == one.id and retried.get_json()["run"]["attempt"] == 2
    # discard
    discarded = client.delete(f"/api/v1/poison/{two.id}", headers=headers)
    assert discarded.status_code == 200 and discarded.get_json()["message"] == "discarded by admin"
    assert client.get("/api/v1/poison", headers=headers).get_json()["total"] == 0
    # and again: 409 with the reason; an unknown run: 404
    again = client.delete(f"/api/v1/poison/{two.id}", headers=headers)
    assert again.status_code == 409 and "discarded already" in again.get_json()["error"]["message"]
    assert client.post(f"/api/v1/poison/{one.id}/retry", headers=headers).status_code == 409
    assert client.delete("/api/v1/poison/no-such-run", headers=headers).status_code == 404


def test_the_api_needs_auth_and_the_admin_role_to_change(web):
    app, store, service = web
    run = ended_run(service)
    client = app.test_client()
    assert client.get("/api/v1/poison").status_code == 401
    viewer = bearer(store, "viewer")
    assert client.get("/api/v1/poison", headers=viewer).status_code == 200
    assert client.delete(f"/api/v1/poison/{run.id}", headers=viewer).status_code == 403
    read_only = bearer(store, "admin", scope=TokenScope.READ)
    assert client.post(f"/api/v1/poison/{run.id}/retry", headers=read_only).status_code == 403
    assert store.runs.get(run.id).dismissed_at is None and store.runs.get(run.id).next_attempt is None


def test_the_api_refuses_a_bad_query(web):
    app, store, _ = web
    response = app.test_client().get("/api/v1/poison?limit=0", headers=bearer(store))
    assert response.status_code == 400 and "limit" in response.get_json()["error"]["details"]


def test_the_list_is_in_the_api_document(web):
    app, store, _ = web
    spec = app.test_client().get("/api/v1/openapi.json", headers=bearer(store)).get_json()
    assert {"/api/v1/poison", "/api/v1/poison/{run_id}/retry", "/api/v1/poison/{run_id}"} <= set(spec["paths"])


# -- the page ------------------------------------------------------------------------------------------------------
def test_the_page_lists_poison_runs_escaped_and_is_in_the_nav(web):
    app, store, service = web
    run = ended_run(service, note=f"step 1/1 {HOSTILE} failed")
    client = signed_in(app, "admin", "admin-password")
    page = client.get("/poison")
    assert page.status_code == 200
    assert run.ref in page.text and html.escape(HOSTILE) in page.text and HOSTILE not in page.text
    assert 'href="/poison"' in client.get("/").text
    assert 'id="retry-selected"' in page.text and 'id="discard-selected"' in page.text


def test_the_page_retries_and_discards_with_csrf(web):
    app, store, service = web
    one, two = ended_run(service), ended_run(service)
    client = signed_in(app, "admin", "admin-password", landing="/poison")
    # without the CSRF token nothing happens
    refused = client.post("/poison", data={"action": "discard", "run": [one.id]})
    assert refused.status_code in (400, 403)
    assert store.runs.get(one.id).dismissed_at is None
    # with it: retry one, discard the other
    done = client.post("/poison", data={"action": "retry", "run": [one.id], "csrf_token": client.csrf},
                       follow_redirects=True)
    assert "retried 1 run(s)" in done.text
    done = client.post("/poison", data={"action": "discard", "run": [two.id], "csrf_token": client.csrf},
                       follow_redirects=True)
    assert "discarded 1 run(s)" in done.text and "No poison runs." in done.text
    assert store.runs.get(one.id).next_attempt is not None
    assert store.runs.get(two.id).dismissed_by == "admin"


def test_a_viewer_sees_the_page_but_cannot_act(web):
    app, store, service = web
    run = ended_run(service)
    client = signed_in(app, "viewer", "viewer-password", landing="/poison")
    page = client.get("/poison")
    assert run.ref in page.text and 'id="retry-selected"' not in page.text
    response = client.post("/poison", data={"action": "discard", "run": [run.id], "csrf_token": client.csrf})
    assert response.status_code == 403
    assert store.runs.get(run.id).dismissed_at is None


# -- the CLI -------------------------------------------------------------------------------------------------------
def test_runs_poison_lists_the_list_and_discard_takes_a_run_off(site):
    from conftest import run_sooner
    from sooner.config import load_settings
    from sooner.store import open_store

    store = open_store(load_settings(site / "config.json", environ={}))
    try:
        deploy(store, JOB, "a.sh")
        service = RunService(store, clock=FakeClock(T0))
        poison = ended_run(service)
        ended_run(service, RunStatus.FAILED, job="a.sh", note="exit code 1")
    finally:
        store.close()
    listed = run_sooner("runs", "--poison", cwd=site, env={"USER": "alice"})
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["RUN", "WORKER", "ENDED", "WHY", "ID"]
    assert lines[1].split()[0] == poison.ref and lines[1].split()[-1] == poison.id and len(lines) == 3
    assert "failed 5 times, last: HTTP 500" in lines[1]
    discarded = run_sooner("discard", poison.id, cwd=site, env={"USER": "alice"})
    assert discarded.returncode == 0 and f"{poison.id}: discarded by alice" in discarded.stdout
    assert run_sooner("runs", "--poison", cwd=site).stdout.strip() == "no poison runs"
    again = run_sooner("discard", poison.id, cwd=site)
    assert again.returncode == 1 and "discarded already (by alice)" in again.stderr
    both = run_sooner("runs", "--poison", "--failed", cwd=site)
    assert both.returncode == 2 and "--poison lists poison runs" in both.stderr


def test_the_job_page_shows_an_http_jobs_steps_without_secrets(mock_web_app):
    import json

    from sooner.worker.testing import deploy_files

    app, _, _ = mock_web_app
    store = app.extensions["sooner"].store
    document = {"description": HOSTILE, "steps": [{"name": "ping", "url": "https://api.example.com/ping?k=${secret:KEY}",
                           "headers": {"Authorization": "Bearer ${secret:TOKEN}"}, "retry_exponent": 2},
                          {"name": "log", "method": "POST", "url": "https://api.example.com/log"}]}
    deploy_files(store, {"api/ping.http.json": json.dumps(document)})
    client = signed_in(app, "admin", "admin-password")
    page = client.get("/jobs/api/ping.http.json")
    assert page.status_code == 200
    assert 'id="http-steps"' in page.text
    assert "GET https://api.example.com/ping?k=${secret:KEY}" in page.text
    assert "headers: Authorization" in page.text and "1s, 4s, 9s, 16s" in page.text
    assert html.escape(HOSTILE) in page.text and HOSTILE not in page.text
    assert app.test_client().get("/api/v1/jobs/api/ping.http.json", headers=bearer(store)).get_json()["kind"] == "http"
    # and a script's page has no such section
    deploy_files(store, {"hello.sh": "#!/bin/sh\necho hi\n"})
    assert 'id="http-steps"' not in client.get("/jobs/hello.sh").text
