"""The web app through Flask's and Flask-SocketIO's test clients, on mongomock.

Access (login, roles, CSRF, API tokens), escaping of hostile text, the job
form, Run now, the REST API and the exact run-room join protocol.
"""

from __future__ import annotations

import html
import re
from datetime import timedelta
from types import SimpleNamespace

import pytest
from argon2 import PasswordHasher

from sooner.clock import utcnow
from sooner.config import load_settings
from sooner.model import ManualTrigger, Missed, Overlap, RunStatus
from sooner.runs.service import RunService
from sooner.webapp import create_app

from conftest import csrf_of, signed_in

ADMIN_PASSWORD = "admin-password"
VIEWER_PASSWORD = "viewer-password"
HOSTILE = "<script>alert(1)</script>"


@pytest.fixture
def web(mock_store, monkeypatch):
    # The production cost (argon2-cffi defaults) is for real passwords; tests only need the same algorithm.
    monkeypatch.setattr("sooner.store.users._passwords", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": mock_store.url})
    app, socketio = create_app(settings, mock_store, live=False)
    app.config["TESTING"] = True
    mock_store.users.add("admin", ADMIN_PASSWORD, admin=True)
    mock_store.users.add("viewer", VIEWER_PASSWORD)
    mock_store.jobs.record_deployed("reports/daily.sh", commit="c" * 40, blob="b" * 40)
    hub = app.extensions["sooner"].hub
    hub.min_gap_s = 0  # tests tick by hand, back to back
    return SimpleNamespace(app=app, socketio=socketio, store=mock_store, hub=hub, settings=settings)


def login(web, name: str = "admin", password: str = ADMIN_PASSWORD):
    return signed_in(web.app, name, password, "/")


def make_run(store, job="reports/daily.sh", status=RunStatus.RUNNING, chunks=0) -> str:
    """A run of ``job`` brought to ``status`` the way Sooner does it: queued, claimed by w1, started, ended."""
    service = RunService(store)
    run = service.queue(job, ManualTrigger(author="admin"))
    if status is not RunStatus.QUEUED:
        service.take(run.id, "w1", lease_s=60)
        store.runs.mark_started(run.id, pid=1, commit=None)
        if status is not RunStatus.RUNNING:
            service.finish(run.id, status, exit_code=0 if status is RunStatus.SUCCEEDED else 1)
    store.output.append(run.id, [(seq, "stdout", f"line {seq}\n", None) for seq in range(chunks)])
    return run.id


# -- access ---------------------------------------------------------------

PAGES = ["/", "/jobs", "/jobs/reports/daily.sh", "/runs", "/workers", "/events", "/deploys", "/account",
         "/schedule/preview?schedule=@daily"]


@pytest.mark.parametrize("url", PAGES)
def test_every_page_sends_anonymous_browsers_to_the_login_page(web, url):
    response = web.app.test_client().get(url, headers={"Accept": "text/html"})
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


def test_anonymous_fetch_calls_get_401_json(web):
    response = web.app.test_client().get("/schedule/preview?schedule=@daily", headers={"X-Requested-With": "fetch"})
    assert response.status_code == 401
    assert response.json["error"]


def test_login_page_explains_how_to_create_the_first_user_only_when_there_is_none(web, mock_store):
    client = web.app.test_client()
    assert "sooner user add NAME --admin" not in client.get("/login").text
    mock_store.users.remove("admin")
    mock_store.users.remove("viewer")
    assert "sooner user add NAME --admin" in client.get("/login").text


def test_wrong_password_is_refused_and_the_session_stays_anonymous(web):
    client = web.app.test_client()
    page = client.get("/login")
    response = client.post("/login", data={"username": "admin", "password": "nope", "csrf_token": csrf_of(page.text)})
    assert response.status_code == 401
    assert "wrong user name or password" in response.text
    assert client.get("/jobs").status_code == 302


def test_login_never_redirects_to_another_site(web):
    client = web.app.test_client()
    page = client.get("/login")
    response = client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD, "next": "//evil.example/x",
                                           "csrf_token": csrf_of(page.text)})
    assert response.headers["Location"] == "/"


def test_session_cookie_is_httponly_and_samesite_lax(web):
    client = web.app.test_client()
    page = client.get("/login")
    response = client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD,
                                           "csrf_token": csrf_of(page.text)})
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    secure = client.post("/login", base_url="https://localhost", data={
        "username": "admin", "password": ADMIN_PASSWORD, "csrf_token": csrf_of(page.text)})
    assert "Secure" in secure.headers["Set-Cookie"]


def test_login_itself_needs_the_csrf_token(web):
    response = web.app.test_client().post("/login", data={"username": "admin", "password": ADMIN_PASSWORD})
    assert response.status_code == 400
    assert "CSRF" in response.text


def test_state_changes_without_the_csrf_token_are_rejected(web, mock_store):
    client = login(web)
    response = client.post("/jobs/reports/daily.sh", data={"action": "enable"})
    assert response.status_code == 400
    assert "CSRF" in response.text
    forged = client.post("/jobs/reports/daily.sh", data={"action": "enable", "csrf_token": "forged"})
    assert forged.status_code == 400
    assert mock_store.jobs.get("reports/daily.sh").enabled is False
    accepted = client.post("/jobs/reports/daily.sh", data={"action": "enable"}, headers={"X-CSRF-Token": client.csrf})
    assert accepted.status_code == 302
    assert mock_store.jobs.get("reports/daily.sh").enabled is True


def test_viewers_read_everything_but_change_nothing(web, mock_store):
    run_id = make_run(mock_store)
    client = login(web, "viewer", VIEWER_PASSWORD)
    for url in PAGES + [f"/runs/{run_id}"]:
        assert client.get(url).status_code == 200, url
    token = {"csrf_token": client.csrf}
    assert client.post("/jobs/reports/daily.sh", data={**token, "action": "enable"}).status_code == 403
    assert client.post("/jobs/reports/daily.sh", data={**token, "action": "run"}).status_code == 403
    saved = client.post("/jobs/reports/daily.sh", data={**token, "action": "save", "schedule": "@daily"})
    assert saved.status_code == 403
    assert client.post(f"/runs/{run_id}", data={**token, "action": "cancel"}).status_code == 403
    job = mock_store.jobs.get("reports/daily.sh")
    assert job.enabled is False and job.schedule is None
    assert mock_store.runs.get(run_id).cancel_requested is False
    assert 'id="run-now"' not in client.get("/jobs/reports/daily.sh").text


def test_changing_the_password_ends_other_sessions(web, mock_store):
    first = login(web)
    second = login(web)
    response = first.post("/account/password", data={"csrf_token": first.csrf, "current": ADMIN_PASSWORD,
                                                     "new": "a-new-password", "confirm": "a-new-password"})
    assert response.status_code == 302
    assert first.get("/jobs").status_code == 200
    assert second.get("/jobs").status_code == 302


def test_removed_users_are_signed_out(web, mock_store):
    client = login(web, "viewer", VIEWER_PASSWORD)
    mock_store.users.remove("viewer")
    assert client.get("/").status_code == 302


# -- escaping -------------------------------------------------------------

def test_hostile_job_names_output_and_event_data_are_escaped(web, mock_store):
    name = f"evil/{HOSTILE}<img src=x onerror=alert(2)>.sh"
    mock_store.jobs.record_deployed(name, commit="d" * 40, blob="e" * 40)
    mock_store.jobs.update_settings(name, {}, add_hooks=["evt"])
    mock_store.jobs.set_enabled(name, True)
    run_id = make_run(mock_store, job=name)
    mock_store.output.append(run_id, [(0, "stdout", f"{HOSTILE}\n</script><script>alert(3)</script>\n", None)])
    RunService(mock_store).emit("evt", {"html": HOSTILE, "k": "</script>"}, source={"type": "api", "author": HOSTILE})
    client = login(web)
    pages = ["/", "/jobs", f"/jobs/{name}", f"/runs/{run_id}", "/events", "/runs", "/deploys"]
    for url in pages:
        text = client.get(url).text
        assert "<script>alert" not in text, url
        assert "<img src=x" not in text, url
    assert html.escape(name, quote=False) in client.get("/jobs").text
    run_page = client.get(f"/runs/{run_id}").text
    assert "\\u003cscript\\u003ealert(1)" in run_page  # the output tail is JSON inside a non-executable block
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get("/events").text
    assert client.get(f"/runs/{run_id}/log.txt").text.startswith(HOSTILE)
    assert client.get(f"/runs/{run_id}/log.txt").headers["Content-Type"].startswith("text/plain")


def test_pages_forbid_inline_scripts_with_a_content_security_policy(web):
    response = login(web).get("/")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert "<script>" not in response.text.replace('<script type="application/json"', "")


# -- jobs -----------------------------------------------------------------

def save_form(client, **fields):
    form = {"csrf_token": client.csrf, "action": "save", "schedule": "", "timezone": "UTC", "worker": "",
            "hooks": "", "timeout_s": "", "overlap": "skip", "missed": "skip", "retry_attempts": "0", **fields}
    return client.post("/jobs/reports/daily.sh", data=form)


def test_admin_enables_and_schedules_a_job_with_the_form(web, mock_store):
    client = login(web)
    response = save_form(client, enabled="on", schedule="30 2 * * *", timezone="Europe/Berlin", worker="gpu",
                         hooks="data-ready, job:x.sh:succeeded", timeout_s="90", overlap="queue",
                         missed="catch_up_once", retry_attempts="2")
    assert response.status_code == 302
    job = mock_store.jobs.get("reports/daily.sh")
    assert (job.enabled, job.schedule, job.timezone) == (True, "30 2 * * *", "Europe/Berlin")
    assert job.worker == "gpu"
    assert sorted(job.hooks) == ["data-ready", "job:x.sh:succeeded"]
    assert (job.timeout_s, job.overlap, job.missed) == (90, Overlap.QUEUE, Missed.CATCH_UP_ONCE)
    assert job.retry.attempts == 2
    assert job.new is False
    save_form(client, enabled="on", hooks="data-ready")
    assert mock_store.jobs.get("reports/daily.sh").hooks == ("data-ready",)


@pytest.mark.parametrize("fields, message", [
    ({"schedule": "61 * * * *"}, "minute field"),
    ({"schedule": "* * *"}, "expected 5 or 6 fields"),
    ({"timezone": "Mars/Olympus"}, "unknown timezone"),
    ({"timeout_s": "soon"}, "not a number"),
    ({"overlap": "sometimes"}, "must be one of"),
    ({"hooks": "bad hook!"}, "invalid event name"),
])
def test_invalid_settings_are_refused_with_a_message_and_change_nothing(web, mock_store, fields, message):
    client = login(web)
    response = save_form(client, enabled="on", **fields)
    assert response.status_code == 400
    assert message in html.unescape(response.text)
    job = mock_store.jobs.get("reports/daily.sh")
    assert job.enabled is False and job.schedule is None


def test_schedule_preview_shows_the_next_five_fires_or_the_error(web):
    client = login(web)
    answer = client.get("/schedule/preview?schedule=30+2+*+*+*&tz=Europe/Berlin").json
    assert answer["ok"] and len(answer["fires"]) == 5
    assert all("T02:30:00+01:00" in f or "T02:30:00+02:00" in f for f in answer["fires"])
    bad = client.get("/schedule/preview?schedule=0+0+30+2+*").json
    assert not bad["ok"] and "never fires" in bad["error"]


def test_run_now_queues_a_manual_run_with_json_data(web, mock_store):
    client = login(web)
    response = client.post("/jobs/reports/daily.sh", data={"csrf_token": client.csrf, "action": "run",
                                                           "data": '{"date": "2026-01-01"}'})
    assert response.status_code == 302
    run_id = response.headers["Location"].rsplit("/", 1)[1]
    run = mock_store.runs.get(run_id)
    assert run.data == {"date": "2026-01-01"}
    assert isinstance(run.trigger, ManualTrigger) and run.trigger.author == "admin"
    bad = client.post("/jobs/reports/daily.sh", data={"csrf_token": client.csrf, "action": "run", "data": "{nope"})
    assert bad.status_code == 400 and "not valid JSON" in bad.text


def test_jobs_list_filters_searches_and_highlights_new_jobs(web, mock_store):
    mock_store.jobs.record_deployed("etl/load.py", commit="c" * 40, blob="f" * 40)
    mock_store.jobs.set_enabled("etl/load.py", True)
    run_id = make_run(mock_store, job="etl/load.py", status=RunStatus.FAILED)
    client = login(web)
    page = client.get("/jobs").text
    assert re.search(r'<tr class="is-new"[^>]*data-name="reports/daily.sh"', page)
    assert 'data-name="etl/load.py"' in page and run_id in page
    assert 'data-name="reports/daily.sh"' not in client.get("/jobs?show=enabled").text
    assert 'data-name="etl/load.py"' in client.get("/jobs?show=failing").text
    assert 'data-name="etl/load.py"' not in client.get("/jobs?q=daily").text


def test_toggling_from_the_list_answers_json_to_fetch(web, mock_store):
    client = login(web)
    response = client.post("/jobs/reports/daily.sh", data={"csrf_token": client.csrf, "action": "enable"},
                           headers={"X-Requested-With": "fetch"})
    assert response.json == {"name": "reports/daily.sh", "enabled": True}


def test_job_page_shows_the_deployed_script_escaped_and_a_history_chart(web, mock_store):
    mock_store.objects.put_blobs([("b" * 40, b"#!/bin/sh\necho '<b>hi</b>'\n")])
    make_run(mock_store, status=RunStatus.SUCCEEDED)
    page = login(web).get("/jobs/reports/daily.sh").text
    assert "echo &#39;&lt;b&gt;hi&lt;/b&gt;&#39;" in page
    assert '<rect class="bar st-succeeded"' in page


# -- runs -----------------------------------------------------------------

def test_run_page_embeds_the_output_tail_and_pages_older_chunks(web, mock_store):
    run_id = make_run(mock_store, chunks=450)
    client = login(web)
    page = client.get(f"/runs/{run_id}").text
    assert "line 449" in page and '"more": true' in page
    assert "line 0\\n" not in page
    older = client.get(f"/runs/{run_id}/output?before=300&limit=100").json
    assert [c["seq"] for c in older["chunks"]] == list(range(200, 300)) and older["more"]
    newest = client.get(f"/runs/{run_id}/output?after=447").json["chunks"]
    assert "".join(c["text"] for c in newest) == "line 448\nline 449\n"
    log = client.get(f"/runs/{run_id}/log.txt")
    assert log.text == "".join(f"line {i}\n" for i in range(450))
    assert "attachment" in log.headers["Content-Disposition"]


def test_cancel_and_rerun(web, mock_store):
    queued = make_run(mock_store, status=RunStatus.QUEUED)
    running = make_run(mock_store)
    client = login(web)
    ask = {"csrf_token": client.csrf}
    assert client.post(f"/runs/{queued}", data={**ask, "action": "cancel"}).status_code == 302
    assert mock_store.runs.get(queued).status is RunStatus.CANCELLED
    assert client.post(f"/runs/{running}", data={**ask, "action": "cancel"}).status_code == 302
    assert mock_store.runs.get(running).cancel_requested is True
    again = client.post(f"/runs/{queued}", data={**ask, "action": "cancel"}, headers={"X-Requested-With": "fetch"})
    assert again.status_code == 409 and "already finished" in again.json["error"]
    rerun = client.post(f"/runs/{queued}", data={**ask, "action": "rerun"})
    new_id = rerun.headers["Location"].rsplit("/", 1)[1]
    assert mock_store.runs.get(new_id).trigger.rerun_of == queued


def queued_with_one_waiting_behind(store) -> tuple[str, str]:
    """A job with overlap=queue: run A queued, run B waiting behind it (as the scheduler or an event leaves them)."""
    store.jobs.update_settings("reports/daily.sh", {"overlap": Overlap.QUEUE.value})
    service = RunService(store)
    first = service.queue("reports/daily.sh", ManualTrigger(author="admin"))
    second = service.queue("reports/daily.sh", ManualTrigger(author="admin"), overlap_check=True)
    assert store.runs.get(second.id).status is RunStatus.WAITING
    return first.id, second.id


def test_cancelling_a_queued_run_in_the_form_releases_the_run_waiting_behind_it(web, mock_store):
    # given run A queued and run B waiting behind it
    first, second = queued_with_one_waiting_behind(mock_store)
    client = login(web)
    # when an admin cancels A with the run page's form
    response = client.post(f"/runs/{first}", data={"csrf_token": client.csrf, "action": "cancel"})
    # then A is cancelled and B may go at once
    assert response.status_code == 302
    assert mock_store.runs.get(first).status is RunStatus.CANCELLED
    assert mock_store.runs.get(second).status is RunStatus.QUEUED


def test_cancelling_a_queued_run_through_the_api_releases_the_run_waiting_behind_it(web, mock_store):
    # given run A queued and run B waiting behind it, and an admin's API token
    first, second = queued_with_one_waiting_behind(mock_store)
    token, _ = mock_store.tokens.create("admin")
    # when A is cancelled through the REST API
    answer = web.app.test_client().post(f"/api/runs/{first}/cancel", headers=bearer(token))
    # then A is cancelled and B may go at once
    assert answer.status_code == 200 and answer.json["status"] == "cancelled"
    assert mock_store.runs.get(first).status is RunStatus.CANCELLED
    assert mock_store.runs.get(second).status is RunStatus.QUEUED


def test_workers_page_marks_stale_heartbeats(web, mock_store):
    now = utcnow()
    for name, age in (("fresh", 1), ("late", 15), ("gone", 600)):
        mock_store.workers.register(name, instance=name, host="h", pid=1, capacity=2, tags=["t"], version="0.1.0",
                                    stale_after_s=30, now=now - timedelta(seconds=age))
    page = login(web).get("/workers").text
    assert 'class="health-row h-online"' in page
    assert 'class="health-row h-late"' in page
    assert 'class="health-row h-stale"' in page and "no heartbeat for 10m00s" in page


# -- REST API ---------------------------------------------------------------

def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_api_needs_a_valid_bearer_token_and_ignores_session_cookies(web, mock_store):
    client = login(web)
    assert client.get("/api/jobs").status_code == 401
    assert client.get("/api/jobs", headers=bearer("sooner_0123456789abcdef_" + "x" * 43)).status_code == 401
    token, document = mock_store.tokens.create("viewer", "ci")
    anonymous = web.app.test_client()
    answer = anonymous.get("/api/jobs", headers=bearer(token))
    assert answer.status_code == 200 and answer.json["jobs"][0]["name"] == "reports/daily.sh"
    assert anonymous.post("/api/jobs/reports/daily.sh/runs", headers=bearer(token)).status_code == 403
    mock_store.tokens.revoke(document["_id"])
    assert anonymous.get("/api/jobs", headers=bearer(token)).status_code == 401
    assert "hash" not in str(mock_store.tokens.list())


def test_api_starts_runs_with_validated_data(web, mock_store):
    token, _ = mock_store.tokens.create("admin")
    client = web.app.test_client()
    created = client.post("/api/jobs/reports/daily.sh/runs", json={"data": {"n": 1}}, headers=bearer(token))
    assert created.status_code == 201
    run = created.json["run"]
    assert run["data"] == {"n": 1} and run["trigger"]["type"] == "api" and run["status"] == "queued"
    assert client.post("/api/jobs/reports/daily.sh/runs", headers=bearer(token)).status_code == 201
    for body, kwargs, message in (
            ("{nope", {"content_type": "application/json"}, "not valid JSON"),
            ("[1, 2]", {"content_type": "application/json"}, "must be a JSON object"),
            ('{"data": 1, "extra": 2}', {"content_type": "application/json"}, "unknown field"),
            ('{"data": 1}', {"content_type": "text/plain"}, "Content-Type: application/json")):
        bad = client.post("/api/jobs/reports/daily.sh/runs", data=body, headers=bearer(token), **kwargs)
        assert bad.status_code == 400 and message in bad.json["error"], body
    assert client.post("/api/jobs/nope.sh/runs", headers=bearer(token)).status_code == 404
    got = client.get(f"/api/runs/{run['id']}", headers=bearer(token)).json
    assert got["id"] == run["id"] and got["job"] == "reports/daily.sh"
    assert client.post(f"/api/runs/{run['id']}/cancel", headers=bearer(token)).json["status"] == "cancelled"
    assert client.post(f"/api/runs/{run['id']}/cancel", headers=bearer(token)).status_code == 409


def test_api_events_start_hooked_jobs(web, mock_store):
    mock_store.jobs.update_settings("reports/daily.sh", {}, add_hooks=["data-ready"])
    mock_store.jobs.set_enabled("reports/daily.sh", True)
    token, _ = mock_store.tokens.create("admin")
    client = web.app.test_client()
    answer = client.post("/api/events/data-ready", json={"data": {"rows": 3}}, headers=bearer(token))
    assert answer.status_code == 201 and len(answer.json["runs"]) == 1
    assert mock_store.runs.get(answer.json["runs"][0]).data == {"rows": 3}
    assert client.post("/api/events/bad%20name!", headers=bearer(token)).status_code == 400


def test_account_page_creates_a_token_once_and_revokes_it(web, mock_store):
    client = login(web)
    created = client.post("/account/tokens", data={"csrf_token": client.csrf, "name": "laptop"})
    token = re.search(r'id="token-value">([^<]+)<', created.text).group(1)
    assert web.app.test_client().get("/api/jobs", headers=bearer(token)).status_code == 200
    assert token not in client.get("/account").text
    token_id = mock_store.tokens.list("admin")[0]["_id"]
    client.post(f"/account/tokens/{token_id}/revoke", data={"csrf_token": client.csrf})
    assert web.app.test_client().get("/api/jobs", headers=bearer(token)).status_code == 401


# -- Socket.IO --------------------------------------------------------------

def socket_for(web, client=None):
    return web.socketio.test_client(web.app, flask_test_client=client)


def outputs(received: list[dict]) -> list[dict]:
    return [chunk for message in received if message["name"] == "output" for chunk in message["args"][0]["chunks"]]


def test_socket_connections_need_a_signed_in_session(web):
    assert not socket_for(web, web.app.test_client()).is_connected()
    assert socket_for(web, login(web)).is_connected()


def test_joining_a_run_after_seq_n_delivers_exactly_the_rest_then_the_live_tail(web, mock_store):
    run_id = make_run(mock_store, chunks=10)
    socket = socket_for(web, login(web))
    ack = socket.emit("join_run", {"run": run_id, "after_seq": 6}, callback=True)
    assert ack["ok"] and ack["last_seq"] == 9
    received = socket.get_received()
    assert [c["seq"] for c in outputs(received)] == [7, 8, 9]
    assert [m["args"][0]["status"] for m in received if m["name"] == "run"] == ["running"]
    mock_store.output.append(run_id, [(10, "stderr", "oops\n", None), (11, "stdout", "line 11\n", None)])
    mock_store.runs.set_progress(run_id, 5, 10)
    web.hub.tick()
    received = socket.get_received()
    assert [(c["seq"], c["stream"]) for c in outputs(received)] == [(10, "stderr"), (11, "stdout")]
    assert [m["args"][0]["percent"] for m in received if m["name"] == "run"] == [50.0]
    web.hub.tick()
    assert socket.get_received() == []


def test_a_reconnecting_client_neither_misses_nor_repeats_chunks(web, mock_store):
    run_id = make_run(mock_store, chunks=3)
    client = login(web)
    watcher = socket_for(web, client)  # keeps the room alive and moving while the other client is away
    watcher.emit("join_run", {"run": run_id, "after_seq": -1}, callback=True)
    first = socket_for(web, client)
    first.emit("join_run", {"run": run_id, "after_seq": -1}, callback=True)
    seen = [c["seq"] for c in outputs(first.get_received())]
    first.disconnect()
    mock_store.output.append(run_id, [(3, "stdout", "a\n", None), (4, "stdout", "b\n", None)])
    web.hub.tick()  # broadcast while the first client is away
    mock_store.output.append(run_id, [(5, "stdout", "c\n", None)])
    again = socket_for(web, client)
    again.emit("join_run", {"run": run_id, "after_seq": seen[-1]}, callback=True)
    web.hub.tick()
    seen += [c["seq"] for c in outputs(again.get_received())]
    assert seen == [0, 1, 2, 3, 4, 5]


def test_a_client_claiming_a_future_seq_does_not_hide_output_from_others(web, mock_store):
    run_id = make_run(mock_store, chunks=2)
    liar = socket_for(web, login(web))
    liar.emit("join_run", {"run": run_id, "after_seq": 1000}, callback=True)
    honest = socket_for(web, login(web))
    honest.emit("join_run", {"run": run_id, "after_seq": -1}, callback=True)
    mock_store.output.append(run_id, [(2, "stdout", "x\n", None)])
    web.hub.tick()
    assert [c["seq"] for c in outputs(honest.get_received())] == [0, 1, 2]


def test_join_run_validates_its_arguments(web, mock_store):
    socket = socket_for(web, login(web))
    assert not socket.emit("join_run", {"run": "nope", "after_seq": -1}, callback=True)["ok"]
    assert not socket.emit("join_run", {"run": "x", "after_seq": "1; drop"}, callback=True)["ok"]
    assert not socket.emit("join_run", "garbage", callback=True)["ok"]


def test_dashboard_room_gets_a_snapshot_and_live_changes(web, mock_store):
    socket = socket_for(web, login(web))
    socket.emit("join_dashboard", {}, callback=True)
    first = [m for m in socket.get_received() if m["name"] == "dashboard"]
    assert first and first[0]["args"][0]["running"] == []
    run_id = make_run(mock_store)
    web.hub.dashboard_s = 0
    web.hub.tick()
    snapshot = [m for m in socket.get_received() if m["name"] == "dashboard"][-1]["args"][0]
    assert [r["id"] for r in snapshot["running"]] == [run_id]


def test_behind_a_trusted_proxy_https_sessions_get_secure_cookies(mock_store, monkeypatch):
    monkeypatch.setattr("sooner.store.users._passwords", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": mock_store.url})
    app, _ = create_app(settings, mock_store, live=False, trusted_proxies=1)
    mock_store.users.add("admin", ADMIN_PASSWORD, admin=True)
    client = app.test_client()
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "sooner.example.com", "X-Forwarded-For": "10.0.0.9"}
    page = client.get("/login", headers=proxied)
    response = client.post("/login", headers=proxied, data={"username": "admin", "password": ADMIN_PASSWORD,
                                                            "csrf_token": csrf_of(page.text)})
    assert "Secure" in response.headers["Set-Cookie"]
    untrusted_app, _ = create_app(settings, mock_store, live=False)
    untrusted = untrusted_app.test_client().get("/login", headers=proxied)
    assert "Secure" not in untrusted.headers.get("Set-Cookie", "")
