"""The Failed view and attempt chains: the store read on every store, the CLI, the API, the page, and a real worker.

Runs are made the way Sooner makes them (the run service on a fake clock,
or a real worker running a real script), so their chains and Failed-view
flags are the ones production writes.
"""

from __future__ import annotations

import html
import re
import sys
import threading
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from conftest import run_sooner, signed_in, wait_for
from sooner.clock import FakeClock
from sooner.config import Settings, load_settings
from sooner.errors import SoonerError
from sooner.model import FINISHED, ManualTrigger, RetryPolicy, Run, RunStatus
from sooner.model.failed import FailedQuery, InvalidFailedQuery
from sooner.runs.service import RunService
from sooner.store import open_store, schema

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
HOSTILE = "<script>alert(1)</script>"


def deploy(store, *names: str, attempts: int = 0) -> None:
    for name in names:
        store.jobs.record_deployed(name, commit="c" * 40, blob=f"blob-{name}")
        store.jobs.update_settings(name, {"retry": RetryPolicy(attempts, backoff_base_s=0).to_doc()})


def failed_run(service: RunService, job: str, *, worker: str = "w1", status: RunStatus = RunStatus.FAILED,
               note: str | None = None, exit_code: int | None = 1) -> Run:
    """A run of ``job`` that ``worker`` claimed and that ended ``status``, one minute after the previous one."""
    service.clock.advance(60)  # type: ignore[attr-defined]
    run = service.queue(job, ManualTrigger(author="me"), data={"job": job})
    assert run is not None and service.take(run.id, worker, lease_s=60) is not None
    ended = service.finish(run.id, status, exit_code=exit_code, note=note)
    assert ended is not None
    return service.store.runs.get(run.id)


@pytest.fixture
def service(any_store) -> RunService:
    deploy(any_store, "a.sh", "b.sh")
    return RunService(any_store, clock=FakeClock(T0))


# -- the store read, on mongomock and the embedded server ---------------------------------------------
def test_the_view_holds_failed_timed_out_and_lost_runs_without_a_further_attempt(any_store, service):
    # given a failed, a timed-out, a succeeded and a cancelled run of jobs without retries,
    failed = failed_run(service, "a.sh")
    timed_out = failed_run(service, "b.sh", status=RunStatus.TIMED_OUT, note="timed out after 5s", exit_code=None)
    failed_run(service, "a.sh", status=RunStatus.SUCCEEDED, exit_code=0)
    failed_run(service, "a.sh", status=RunStatus.CANCELLED, exit_code=None)
    # and a run of a retried job whose retry is still queued
    deploy(any_store, "c.sh", attempts=1)
    retried = failed_run(service, "c.sh")
    # when the view is read
    page = any_store.failed.page()
    # then it holds exactly the two that got no further attempt, newest first, without their data
    assert [r.id for r in page.runs] == [timed_out.id, failed.id] and page.total == 2
    assert all(r.data is None for r in page.runs)
    assert (page.runs[0].error, page.runs[1].error) == ("timed out after 5s", "exit code 1")
    assert retried.next_attempt and not retried.failed_view
    assert any_store.failed.count() == 2


def test_filters_sorts_and_groups_cover_every_matching_run(any_store, service):
    # given failures of two jobs on two workers with two kinds of error
    a1 = failed_run(service, "a.sh", worker="w1", note="killed: memory 700 MB over the job's limit of 512 MB")
    b1 = failed_run(service, "b.sh", worker="w2")
    a2 = failed_run(service, "a.sh", worker="w2", note="killed: memory 900 MB over the job's limit of 512 MB")
    b2 = failed_run(service, "b.sh", worker="w1")
    view = any_store.failed
    # sorts: newest first; by job (newest first within one); by worker; reversed
    assert [r.id for r in view.page(FailedQuery()).runs] == [b2.id, a2.id, b1.id, a1.id]
    assert [r.id for r in view.page(FailedQuery(sort="job")).runs] == [a2.id, a1.id, b2.id, b1.id]
    assert [r.id for r in view.page(FailedQuery(sort="worker", descending=True)).runs] == [a2.id, b1.id, b2.id, a1.id]
    assert [r.id for r in view.page(FailedQuery(descending=False)).runs] == [a1.id, b1.id, a2.id, b2.id]
    # filters, the limit (the total still counts all)
    assert [r.id for r in view.page(FailedQuery(job="a.sh", worker="w2")).runs] == [a2.id]
    limited = view.page(FailedQuery(limit=1))
    assert (len(limited.runs), limited.total) == (1, 4)
    # groups count every matching run, largest first
    by_worker = view.page(FailedQuery(group_by="worker", limit=1)).groups
    assert [(g.key, g.count) for g in by_worker] == [("w1", 2), ("w2", 2)]
    assert by_worker[0].newest == b2.finished_at
    by_error = view.page(FailedQuery(group_by="error")).groups
    assert [(g.key, g.count) for g in by_error] == [("exit code 1", 2),
                                                    ("killed: memory 700 MB over the job's limit of 512 MB", 1),
                                                    ("killed: memory 900 MB over the job's limit of 512 MB", 1)]
    assert [r.id for r in view.page(FailedQuery(error="exit code 1")).runs] == [b2.id, b1.id]


@pytest.mark.parametrize("text", [".*", "(", "[a-", "$where", "^killed", "\\", "' || '1'=='1"])
def test_the_search_takes_text_literally_even_when_it_looks_like_a_pattern(any_store, service, text):
    # given a run whose error holds the text literally, and one whose error would match it as a regex
    literal = failed_run(service, "a.sh", note=f"bad input {text} in line 3")
    failed_run(service, "b.sh", note="killed: memory 600 MB over the job's limit of 512 MB")
    # when the view is searched for it
    found = any_store.failed.page(FailedQuery(search=text)).runs
    # then only the literal match is found
    assert [r.id for r in found] == [literal.id]


def test_the_search_matches_any_case_in_the_error_and_the_job_name(any_store, service):
    lost = failed_run(service, "a.sh", status=RunStatus.LOST, note="lost: worker 'w1' stopped renewing its lease")
    other = failed_run(service, "b.sh")
    assert [r.id for r in any_store.failed.page(FailedQuery(search="STOPPED RENEWING")).runs] == [lost.id]
    assert [r.id for r in any_store.failed.page(FailedQuery(search="b.SH")).runs] == [other.id]
    assert any_store.failed.page(FailedQuery(search="nothing like it")).total == 0


@pytest.mark.parametrize("fields, message", [
    ({"sort": "size"}, "sort: must be one of time, job, worker, got 'size'"),
    ({"group_by": "colour"}, "group: must be one of job, worker, error, got 'colour'"),
    ({"limit": 0}, "limit: must be a whole number from 1 to 1000, got 0"),
    ({"search": "x" * 201}, "search: at most 200 characters, got 201"),
    ({"job": {"$ne": None}}, "job: must be text"),
])
def test_a_bad_query_is_refused_with_what_was_wrong(fields, message):
    with pytest.raises(InvalidFailedQuery, match=re.escape(message)):
        FailedQuery(**fields)


def test_dismiss_takes_runs_out_of_the_view_without_changing_their_status(any_store, service):
    first, second = failed_run(service, "a.sh"), failed_run(service, "b.sh")
    succeeded = failed_run(service, "a.sh", status=RunStatus.SUCCEEDED, exit_code=0)
    results = any_store.failed.dismiss([first.id, second.id, succeeded.id, first.id, "0" * 24], by="alice",
                                       now=T0)
    assert [(r.id, r.ok) for r in results] == [(first.id, True), (second.id, True), (succeeded.id, False),
                                               ("0" * 24, False)]
    assert "it is succeeded" in results[2].message and "no run with id" in results[3].message
    assert any_store.failed.page().total == 0
    dismissed = any_store.runs.get(first.id)
    assert (dismissed.status, dismissed.dismissed_by, dismissed.dismissed_at) == (RunStatus.FAILED, "alice", T0)
    again = any_store.failed.dismiss([first.id], by="bob")
    assert not again[0].ok and "dismissed already (by alice)" in again[0].message


def test_a_run_gets_at_most_one_next_attempt_however_many_retries_race(any_store, service):
    # given a failed run in the view
    run = failed_run(service, "a.sh")
    # when eight threads link a next attempt at once (the embedded server's find_one_and_update is atomic)
    winners: list[Run] = []
    barrier = threading.Barrier(8)

    def link(n: int) -> None:
        barrier.wait()
        if (previous := any_store.failed.link_next_attempt(run.id, f"next-{n}")) is not None:
            winners.append(previous)
    threads = [threading.Thread(target=link, args=(n,)) for n in range(8)]
    if any_store.is_mongomock:  # mongomock is not thread-safe: the same calls one after another
        for n in range(8):
            barrier = threading.Barrier(1)
            link(n)
    else:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    # then exactly one won, it saw the run in the view, and the run left the view
    assert len(winners) == 1 and winners[0].failed_view
    assert any_store.runs.get(run.id).next_attempt.startswith("next-")
    assert any_store.failed.page().total == 0


def test_a_manual_retry_is_the_next_attempt_of_the_chain_and_a_second_one_is_refused(any_store, service):
    # given a failed run of a job with no retries
    run = failed_run(service, "a.sh")
    # when someone retries it
    retry = service.retry(run.id, by="alice", source="cli")
    # then a manual run in the same chain, attempt 2, with the same data, is queued now
    assert (retry.status, retry.attempt, retry.chain_root, retry.data) == (RunStatus.QUEUED, 2, run.id, {"job": "a.sh"})
    assert retry.trigger.to_doc() == {"type": "manual", "source": "cli", "author": "alice", "rerun_of": run.id,
                                      "source_ref": run.ref}
    assert any_store.runs.get(run.id).next_attempt == retry.id and any_store.failed.page().total == 0
    assert [(r.id, r.attempt) for r in any_store.reads.chain(any_store.runs.get(retry.id))] == [(run.id, 1),
                                                                                                (retry.id, 2)]
    # and a second retry of the same run, or a retry of a run that did not fail, is refused
    with pytest.raises(SoonerError, match=f"retried already, as run {retry.id}"):
        service.retry(run.id, by="bob")
    with pytest.raises(SoonerError, match="is queued: only failed, timed-out, lost or poison runs are retried"):
        service.retry(retry.id, by="bob")
    # and when that attempt fails too, it is the one in the view
    assert service.take(retry.id, "w1", lease_s=60) is not None
    service.finish(retry.id, RunStatus.FAILED, exit_code=2)
    assert [r.id for r in any_store.failed.page().runs] == [retry.id]


def test_a_retry_that_cannot_start_leaves_the_run_in_the_view(any_store, service):
    run = failed_run(service, "a.sh")
    any_store.jobs.mark_deleted("a.sh", commit="d" * 40)
    results = service.retry_many([run.id, "nope"], by="alice", source="api")
    assert [(r.id, r.ok) for r in results] == [(run.id, False), ("nope", False)]
    assert "was removed from the repository" in results[0].message and "no run with id 'nope'" in results[1].message
    assert any_store.runs.get(run.id).next_attempt is None
    assert [r.id for r in any_store.failed.page().runs] == [run.id]


def test_a_chain_lists_every_attempt_and_runs_from_before_chains_are_chains_of_their_own(any_store, service):
    deploy(any_store, "c.sh", attempts=2)
    first = failed_run(service, "c.sh")
    second = any_store.runs.get(first.next_attempt)
    assert service.take(second.id, "w1", lease_s=60)
    service.finish(second.id, RunStatus.FAILED, exit_code=1)
    third = any_store.runs.get(any_store.runs.get(second.id).next_attempt)
    chain = any_store.reads.chain(second)
    assert [(r.id, r.attempt, r.status) for r in chain] == [
        (first.id, 1, RunStatus.FAILED), (second.id, 2, RunStatus.FAILED), (third.id, 3, RunStatus.QUEUED)]
    # a run stored before runs carried ``chain``
    any_store.import_documents(schema.RUNS, [{"_id": "0" * 24, "job": "a.sh", "status": "failed", "attempt": 1}])
    old = any_store.runs.get("0" * 24)
    assert old.chain_root == old.id and [r.id for r in any_store.reads.chain(old)] == [old.id]


# -- the CLI, through the real `sooner` ---------------------------------------------------------------------
@pytest.fixture
def site_runs(site):
    store = open_store(load_settings(site / "config.json", environ={}))
    deploy(store, "a.sh", "b.sh")
    deploy(store, "c.sh", attempts=2)
    service = RunService(store, clock=FakeClock(T0))
    runs = SimpleNamespace(a=failed_run(service, "a.sh", worker="w1", note=f"boom {HOSTILE}"),
                           b=failed_run(service, "b.sh", worker="w2"), c1=failed_run(service, "c.sh"))
    runs.c2 = store.runs.get(runs.c1.next_attempt)
    yield SimpleNamespace(site=site, store=store, service=service, runs=runs)
    store.close()


def sooner(site, *args: str):
    return run_sooner(*args, cwd=site, env={"USER": "alice"})


def test_runs_failed_lists_the_view_and_groups_it(site_runs):
    site, runs = site_runs.site, site_runs.runs
    listed = sooner(site, "runs", "--failed")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["RUN", "STATUS", "ATTEMPT", "WORKER", "ENDED", "ERROR", "ID"]
    assert [line.split()[-1] for line in lines[1:]] == [runs.b.id, runs.a.id]
    assert lines[2].split()[:4] == [runs.a.ref, "failed", "1/1", "w1"] and HOSTILE in lines[2]
    grouped = sooner(site, "runs", "--failed", "--group-by", "worker").stdout.splitlines()
    assert grouped[0].split() == ["WORKER", "RUNS", "LAST", "FAILED"] and [g.split()[:2] for g in grouped[1:]] == [
        ["w1", "1"], ["w2", "1"]]
    assert sooner(site, "runs", "--failed", "--job", "b.sh").stdout.splitlines()[1].split()[0] == runs.b.ref
    assert sooner(site, "runs", "--failed", "--search", "no such error").stdout.strip() == "no failed runs match"


@pytest.mark.parametrize("args, message", [
    (["runs", "--failed", "--group-by", "colour"], "Invalid value for '--group-by'"),
    (["runs", "--failed", "--status", "failed"], "--failed lists failed, timed-out and lost runs"),
    (["runs", "--group-by", "job"], "go with --failed"),
    (["runs", "--failed", "--search", "x" * 201], "search: at most 200 characters"),
    (["retry"], "Missing argument 'RUN...'"),
])
def test_bad_failed_view_arguments_get_one_clear_line(site_runs, args, message):
    result = sooner(site_runs.site, *args)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_retry_and_dismiss_act_per_run_and_report_each(site_runs):
    site, store, runs = site_runs.site, site_runs.store, site_runs.runs
    retried = sooner(site, "retry", runs.a.id, "0" * 24)
    assert retried.returncode == 1
    new_id = store.runs.get(runs.a.id).next_attempt
    assert f"{runs.a.id}: retried as run a.sh#2 (attempt 2)" in retried.stdout
    assert "sooner: error: " + "0" * 24 + ": no run with id" in retried.stderr
    new = store.runs.get(new_id)
    assert (new.trigger.author, new.trigger.source, new.chain_root) == ("alice", "cli", runs.a.id)
    dismissed = sooner(site, "dismiss", runs.b.id)
    assert dismissed.returncode == 0 and f"{runs.b.id}: dismissed by alice" in dismissed.stdout
    assert sooner(site, "runs", "--failed").stdout.strip().startswith("no failed runs")
    again = sooner(site, "dismiss", runs.b.id)
    assert again.returncode == 1 and "dismissed already (by alice)" in again.stderr


def test_runs_and_logs_show_the_attempt_and_the_chain(site_runs):
    site, runs = site_runs.site, site_runs.runs
    listed = sooner(site, "runs", "--job", "c.sh").stdout.splitlines()
    assert runs.c2.id in listed[1] and f"retry of {runs.c1.ref} · attempt 2/3" in listed[1]
    assert "attempt" not in listed[2]
    logs = sooner(site, "logs", runs.c2.id)
    assert logs.returncode == 0, logs.stderr
    assert f"sooner: attempt 2/3: {runs.c1.ref} failed → {runs.c2.ref} (this) queued" in logs.stderr
    assert "attempt" not in sooner(site, "logs", runs.a.id).stderr  # one attempt: no chain line


# -- the REST API --------------------------------------------------------------------------------------------
@pytest.fixture
def web(mock_store, mock_web_app):
    app, _, _ = mock_web_app
    deploy(mock_store, "a.sh", HOSTILE)
    deploy(mock_store, "c.sh", attempts=2)
    service = RunService(mock_store, clock=FakeClock(T0))
    runs = SimpleNamespace(a=failed_run(service, "a.sh", worker="w1", note=f"boom {HOSTILE}"),
                           h=failed_run(service, HOSTILE, worker="w2"), c1=failed_run(service, "c.sh"))
    return SimpleNamespace(app=app, store=mock_store, runs=runs, admin=mock_store.tokens.create("admin")[0],
                           viewer=mock_store.tokens.create("viewer")[0])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_api_lists_filters_and_groups_the_view(web):
    client, runs = web.app.test_client(), web.runs
    answer = client.get("/api/failed", headers=bearer(web.viewer))
    assert answer.status_code == 200
    assert [r["id"] for r in answer.json["runs"]] == [runs.h.id, runs.a.id] and answer.json["total"] == 2
    first = answer.json["runs"][1]
    assert (first["error"], first["attempt_label"], first["chain_root"], first["failed_view"]) == (
        f"boom {HOSTILE}", "1/1", runs.a.id, True)
    grouped = client.get("/api/failed?group=job&sort=job&order=desc&limit=1", headers=bearer(web.viewer)).json
    assert [g["key"] for g in grouped["groups"]] == [HOSTILE, "a.sh"] and grouped["group_by"] == "job"
    assert [r["id"] for r in grouped["runs"]] == [runs.a.id]
    assert client.get("/api/failed?q=BOOM", headers=bearer(web.viewer)).json["total"] == 1
    assert client.get("/api/failed").status_code == 401


@pytest.mark.parametrize("query, message", [
    ("sort=size", "sort: must be one of time, job, worker"),
    ("group=colour", "group: must be one of job, worker, error"),
    ("order=up", "order: must be asc or desc"),
    ("limit=many", "limit: must be a whole number, got 'many'"),
    ("limit=5000", "limit: must be a whole number from 1 to 1000"),
])
def test_api_refuses_bad_view_parameters_with_400_and_the_reason(web, query, message):
    answer = web.app.test_client().get(f"/api/failed?{query}", headers=bearer(web.viewer))
    assert answer.status_code == 400 and message in answer.json["error"]


def test_api_bulk_retry_and_dismiss_report_per_run(web):
    client, store, runs = web.app.test_client(), web.store, web.runs
    retried = client.post("/api/failed/retry", json={"runs": [runs.a.id, runs.c1.id, "nope"]}, headers=bearer(web.admin))
    assert retried.status_code == 200, retried.json
    results = retried.json["results"]
    new_id = store.runs.get(runs.a.id).next_attempt
    assert results[0] == {"id": runs.a.id, "ok": True, "message": "retried as run a.sh#2 (attempt 2)", "run": new_id}
    assert not results[1]["ok"] and "retried already" in results[1]["message"]  # its policy retried it
    assert not results[2]["ok"] and (retried.json["ok"], retried.json["refused"]) == (1, 2)
    dismissed = client.post("/api/failed/dismiss", json={"runs": [runs.h.id]}, headers=bearer(web.admin)).json
    assert dismissed["results"] == [{"id": runs.h.id, "ok": True, "message": "dismissed by admin"}]
    assert client.get("/api/failed", headers=bearer(web.viewer)).json["total"] == 0
    # the run JSON carries the attempt and the chain
    run = client.get(f"/api/runs/{new_id}", headers=bearer(web.viewer)).json
    assert run["attempt"] == 2 and run["chain"] == [
        {"id": runs.a.id, "ref": "a.sh#1", "status": "failed", "attempt": 1},
        {"id": new_id, "ref": "a.sh#2", "status": "queued", "attempt": 2}]
    assert client.get(f"/api/runs/{runs.h.id}", headers=bearer(web.viewer)).json["dismissed_by"] == "admin"


@pytest.mark.parametrize("body, kwargs, message", [
    ("{nope", {"content_type": "application/json"}, "the body is not a JSON object"),
    ('["a"]', {"content_type": "application/json"}, "the body is not a JSON object"),
    ('{"runs": "abc"}', {"content_type": "application/json"}, '"runs" must be a non-empty list'),
    ('{"runs": []}', {"content_type": "application/json"}, '"runs" must be a non-empty list'),
    ('{"runs": [{"$ne": null}]}', {"content_type": "application/json"}, "runs[0]: must be a run id"),
    ('{"runs": ["a"], "all": true}', {"content_type": "application/json"}, "unknown field(s) all"),
    ('{"runs": ["a"]}', {"content_type": "text/plain"}, "Content-Type: application/json"),
    ('{"runs": [' + ",".join(['"a"'] * 501) + "]}", {"content_type": "application/json"}, "at most 500 ids"),
])
def test_api_bulk_actions_refuse_a_bad_body_with_400_and_the_reason(web, body, kwargs, message):
    for action in ("retry", "dismiss"):
        answer = web.app.test_client().post(f"/api/failed/{action}", data=body, headers=bearer(web.admin), **kwargs)
        assert answer.status_code == 400 and message in answer.json["error"], (action, answer.json)
    assert web.store.failed.page().total == 2


def test_api_bulk_actions_need_an_admin_token(web):
    client = web.app.test_client()
    assert client.post("/api/failed/retry", json={"runs": [web.runs.a.id]}, headers=bearer(web.viewer)).status_code == 403
    assert client.post("/api/failed/dismiss", json={"runs": [web.runs.a.id]}).status_code == 401
    assert web.store.failed.page().total == 2


# -- the web page --------------------------------------------------------------------------------------------
def test_the_page_lists_groups_and_escapes_and_is_in_the_navigation(web):
    client = signed_in(web.app, "admin", "admin-password")
    page = client.get("/failed").text
    assert 'href="/failed"' in page and "Failed" in page
    assert HOSTILE not in page and html.escape(HOSTILE) in page
    assert f'value="{web.runs.a.id}"' in page and f'value="{web.runs.h.id}"' in page
    assert web.runs.c1.id not in page  # retried by its policy
    grouped = client.get("/failed?group=error").text
    assert 'id="failed-groups"' in grouped and "/failed?error=exit+code+1" in grouped
    only_a = client.get("/failed?job=a.sh").text
    assert f'value="{web.runs.a.id}"' in only_a and f'value="{web.runs.h.id}"' not in only_a
    bad = client.get("/failed?sort=size")
    assert bad.status_code == 400 and "sort: must be one of time, job, worker" in html.unescape(bad.text)


def test_the_page_bulk_buttons_retry_and_dismiss_with_the_csrf_token(web):
    client, store, runs = signed_in(web.app, "admin", "admin-password", "/failed"), web.store, web.runs
    # without the token nothing happens
    refused = client.post("/failed", data={"action": "retry", "run": [runs.a.id]})
    assert refused.status_code == 400 and "CSRF" in refused.text
    assert store.runs.get(runs.a.id).next_attempt is None
    # with it, the selected runs are retried and the browser goes back to the filtered page
    retried = client.post("/failed", data={"csrf_token": client.csrf, "action": "retry", "run": [runs.a.id],
                                           "next": "/failed?job=a.sh"})
    assert retried.status_code == 302 and retried.headers["Location"] == "/failed?job=a.sh"
    new = store.runs.get(store.runs.get(runs.a.id).next_attempt)
    assert (new.trigger.source, new.trigger.author, new.attempt) == ("web", "admin", 2)
    assert "retried 1 run(s)" in client.get("/failed").text
    client.post("/failed", data={"csrf_token": client.csrf, "action": "dismiss", "run": [runs.h.id, "nope"]})
    after = html.unescape(client.get("/failed").text)
    assert "dismissed 1 run(s)" in after and "nope: no run with id 'nope'" in after
    assert store.runs.get(runs.h.id).dismissed_by == "admin" and store.failed.page().total == 0
    # an offsite "next" is not followed
    away = client.post("/failed", data={"csrf_token": client.csrf, "action": "dismiss", "run": [runs.a.id],
                                        "next": "//evil.example/"})
    assert away.headers["Location"] == "/failed"


def test_anonymous_browsers_are_sent_to_the_login_page(web):
    response = web.app.test_client().get("/failed", headers={"Accept": "text/html"})
    assert response.status_code == 302 and response.headers["Location"].startswith("/login?next=")
    posted = web.app.test_client().post("/failed", data={"action": "dismiss", "run": [web.runs.a.id]})
    assert posted.status_code in (302, 400) and web.store.failed.page().total == 2


def test_viewers_see_the_page_without_buttons_and_cannot_post(web):
    client = signed_in(web.app, "viewer", "viewer-password", "/failed")
    page = client.get("/failed").text
    assert web.runs.a.id in page and 'id="retry-selected"' not in page and 'name="run"' not in page
    refused = client.post("/failed", data={"csrf_token": client.csrf, "action": "dismiss", "run": [web.runs.a.id]})
    assert refused.status_code == 403 and web.store.failed.page().total == 2


def test_the_run_page_links_each_attempt_of_its_chain(web):
    client, store, runs = signed_in(web.app, "admin", "admin-password"), web.store, web.runs
    second = store.runs.get(runs.c1.next_attempt)
    page = client.get(f"/runs/{second.id}").text
    chain = page[page.index('id="run-chain"'):page.index("</nav>", page.index('id="run-chain"'))]
    assert f'href="/runs/{runs.c1.id}"' in chain and f'href="/runs/{second.id}"' not in chain
    assert "st-failed" in chain and "st-queued" in chain
    assert 'id="run-attempt">2/3<' in page
    single = client.get(f"/runs/{runs.a.id}").text
    assert 'id="run-chain"' not in single and 'id="run-failed-view"' in single


# -- end to end: a real worker runs a failing script ------------------------------------------------------------
def test_a_failing_script_with_two_retries_makes_a_chain_of_three_and_appears_once_in_the_view(
        embedded_store, start_worker):
    from sooner.worker.testing import deploy_files

    # given a script that always fails, with attempts=2 and no wait, and a real worker
    store = embedded_store
    settings = Settings(mongo_url=store.url, database=store.database_name, heartbeat_s=0.2, lease_s=2.0,
                        cancel_grace_s=1.0, shutdown_grace_s=2.0, output_flush_ms=50)
    deploy_files(store, {"fail.sh": f"#!{sys.executable}\nimport sys\nprint('no data today', file=sys.stderr)\n"
                                    "sys.exit(3)\n"},
                 settings={"fail.sh": {"retry": RetryPolicy(attempts=2, backoff_base_s=0).to_doc()}})
    start_worker(store, settings, "w1", 2)
    # when it is started once
    first = RunService(store, settings).queue("fail.sh", ManualTrigger(author="me"))
    assert first is not None

    # then three attempts run and fail, one after the other, in one chain
    def chain_done() -> list[Run] | None:
        chain = store.reads.chain(store.runs.get(first.id))
        return chain if len(chain) == 3 and all(r.status in FINISHED for r in chain) else None
    chain = wait_for(chain_done, 60, message="three finished attempts")
    assert [(r.attempt, r.status, r.exit_code, r.worker) for r in chain] == [
        (n, RunStatus.FAILED, 3, "w1") for n in (1, 2, 3)]
    assert [r.trigger.kind for r in chain] == ["manual", "retry", "retry"]
    assert "no data today" in "".join(c["text"] for c in store.output.read(chain[2].id))
    # and the run appears in the Failed view exactly once: its last attempt
    page = wait_for(lambda: (p := store.failed.page()).total and p, 10, message="the failed view")
    assert [r.id for r in page.runs] == [chain[2].id] and page.total == 1
    assert store.failed.page(FailedQuery(group_by="job")).groups[0].count == 1
