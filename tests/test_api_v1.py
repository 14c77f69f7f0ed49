"""``/api/v1``: the generated OpenAPI 3.1 document, every endpoint, the error envelope, ETag polling, token
scopes, the session cookie with CSRF, the reference page; end to end over a real HTTP server (ETag/304,
scopes, expiry) and schemathesis against it."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from argon2 import PasswordHasher

from conftest import signed_in
from sooner.config import load_settings
from sooner.model import ManualTrigger, RunStatus
from sooner.model.token import TokenScope
from sooner.runs.service import RunService

JOB, OTHER = "reports/daily.sh", "etl/load.py"


def _app(store):
    from sooner.webapp import create_app

    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": store.url})
    app, _ = create_app(settings, store, live=False)
    app.config["TESTING"] = True
    return app


def _seed(store) -> None:
    if store.users.get("ann") is None:
        store.users.add("ann", "ann-password", admin=True)
        store.users.add("vic", "vic-password")
    for name in (JOB, OTHER):
        store.jobs.record_deployed(name, commit="c" * 40, blob="b" * 40)
        store.jobs.set_enabled(name, True)
    store.jobs.update_settings(OTHER, {}, add_hooks=["data-ready"])


@pytest.fixture(autouse=True)
def _fast_passwords(monkeypatch):
    monkeypatch.setattr("sooner.store.users._passwords", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))


@pytest.fixture
def store(clocked_store):
    _seed(clocked_store)
    return clocked_store


@pytest.fixture
def app(store):
    return _app(store)


def bearer(store, user: str = "ann", **options) -> dict[str, str]:
    token, _ = store.tokens.create(user, **options)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(app, store):
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = bearer(store)["Authorization"]
    return client


# -- the document -----------------------------------------------------------------------------------------

def test_the_document_is_valid_openapi_3_1_generated_from_the_code(client):
    from openapi_spec_validator import validate

    spec = client.get("/api/v1/openapi.json").json
    validate(spec)
    assert spec["openapi"] == "3.1.0"
    assert {"/api/v1/jobs", "/api/v1/jobs/{name}", "/api/v1/jobs/{name}/runs", "/api/v1/runs",
            "/api/v1/runs/{run_id}", "/api/v1/runs/{run_id}/output", "/api/v1/events", "/api/v1/workers",
            "/api/v1/deploys"} <= set(spec["paths"])
    assert set(spec["paths"]["/api/v1/runs/{run_id}"]) >= {"get", "delete"}
    assert "Location" in spec["paths"]["/api/v1/jobs/{name}/runs"]["post"]["responses"]["201"]["headers"]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_the_reference_page_renders_the_document_for_a_signed_in_user(mock_web_app):
    app, _, _ = mock_web_app
    page = signed_in(app, "viewer", "viewer-password").get("/api/v1/docs")
    assert page.status_code == 200 and "/api/v1/runs/{run_id}/output" in page.text and 'id="schema-Run"' in page.text
    assert "<script" not in page.text.split("<main", 1)[-1].split("</main>", 1)[0]


# -- jobs -------------------------------------------------------------------------------------------------------

def test_jobs_list_get_and_patch_with_the_uis_validation(client):
    assert {j["name"] for j in client.get("/api/v1/jobs").json["jobs"]} == {JOB, OTHER}
    assert client.get(f"/api/v1/jobs/{JOB}").json["enabled"] is True
    patched = client.patch(f"/api/v1/jobs/{JOB}", json={"schedule": "*/5 * * * *", "timezone": "Europe/Paris",
                                                         "hooks": ["a", "b"], "retry": {"attempts": 3},
                                                         "overlap": "queue", "enabled": False})
    assert patched.status_code == 200, patched.text
    body = patched.json
    assert (body["schedule"], body["timezone"], body["hooks"], body["retry"]["attempts"], body["overlap"],
            body["enabled"]) == ("*/5 * * * *", "Europe/Paris", ["a", "b"], 3, "queue", False)
    assert client.patch(f"/api/v1/jobs/{JOB}", json={"hooks": ["b"]}).json["hooks"] == ["b"]


def test_a_bad_patch_names_the_field(client):
    unknown = client.patch(f"/api/v1/jobs/{JOB}", json={"shedule": "x"})
    assert unknown.status_code == 400 and "shedule" in unknown.json["error"]["details"]
    wrong_type = client.patch(f"/api/v1/jobs/{JOB}", json={"retry": {"attempts": "many"}})
    assert wrong_type.status_code == 400 and "retry.attempts" in wrong_type.json["error"]["details"]
    bad_cron = client.patch(f"/api/v1/jobs/{JOB}", json={"schedule": "61 * * * *"})
    assert bad_cron.status_code == 422 and list(bad_cron.json["error"]["details"]) == ["schedule"]
    out_of_range = client.patch(f"/api/v1/jobs/{JOB}", json={"retry": {"jitter": 5}})
    assert out_of_range.status_code == 422 and "retry.jitter" in out_of_range.json["error"]["details"]
    assert client.patch("/api/v1/jobs/nope.sh", json={}).json["error"]["code"] == "not_found"


def test_starting_a_run_answers_201_with_its_location(client):
    answer = client.post(f"/api/v1/jobs/{JOB}/runs", json={"data": {"n": 1}})
    assert answer.status_code == 201 and answer.headers["Location"] == f"/api/v1/runs/{answer.json['id']}"
    assert client.get(answer.headers["Location"]).json["data"] == {"n": 1}


# -- runs --------------------------------------------------------------------------------------------------------

def test_runs_filter_and_page_with_a_cursor(client, store, fake_clock):
    service = RunService(store, clock=fake_clock)
    ids = []
    for _ in range(5):
        ids.append(service.queue(JOB, ManualTrigger()).id)
        fake_clock.advance(1)
    service.queue(OTHER, ManualTrigger())
    seen, cursor = [], None
    while True:
        page = client.get("/api/v1/runs", query_string={"job": JOB, "limit": 2, **({"cursor": cursor} if cursor else {})}).json
        seen += [r["id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    service.cancel(ids[0], by="t")
    assert [r["id"] for r in client.get("/api/v1/runs?status=cancelled").json["runs"]] == [ids[0]]
    assert client.get("/api/v1/runs?cursor=!!").status_code == 400
    assert client.get("/api/v1/runs?limit=0").json["error"]["details"] == {"limit": ["Must be greater than or "
                                                                                     "equal to 1 and less than or "
                                                                                     "equal to 200."]}


def test_polling_a_run_gets_304_from_one_small_read_until_it_changes(client, store, monkeypatch):
    run = RunService(store).queue(JOB, ManualTrigger())
    first = client.get(f"/api/v1/runs/{run.id}")
    assert first.headers["Cache-Control"] == "no-cache"
    etag = first.headers["ETag"]

    def no_full_read(*args, **kwargs):
        raise AssertionError("a 304 needs only the small projection")
    with monkeypatch.context() as patch:
        patch.setattr(store.runs, "get", no_full_read)
        again = client.get(f"/api/v1/runs/{run.id}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["ETag"] == etag and not again.data
    store.runs.set_progress(run.id, 3, 10)
    changed = client.get(f"/api/v1/runs/{run.id}", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert changed.json["progress"] == {"current": 3, "max": 10}


def test_the_etag_read_and_the_cursor_work_on_the_embedded_server(embedded_store):
    """The 304 path's projection (``_id $in``) and the cursor (``_id $lt``) on nx-27017, not only mongomock."""
    _seed(embedded_store)
    client = _app(embedded_store).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = bearer(embedded_store)["Authorization"]
    service = RunService(embedded_store)
    ids = [service.queue(OTHER, ManualTrigger()).id for _ in range(3)]
    first = client.get("/api/v1/runs", query_string={"limit": 2}).json
    second = client.get("/api/v1/runs", query_string={"limit": 2, "cursor": first["next_cursor"]}).json
    assert [r["id"] for r in first["runs"] + second["runs"]] == ids[::-1] and second["next_cursor"] is None
    etag = client.get(f"/api/v1/runs/{ids[0]}").headers["ETag"]
    assert client.get(f"/api/v1/runs/{ids[0]}", headers={"If-None-Match": etag}).status_code == 304
    embedded_store.runs.set_progress(ids[0], 1, 2)
    assert client.get(f"/api/v1/runs/{ids[0]}", headers={"If-None-Match": etag}).status_code == 200


def test_output_pages_follow_after(client, store):
    run = RunService(store).queue(JOB, ManualTrigger())
    store.output.append(run.id, [(seq, "stdout", f"line {seq}\n", None) for seq in range(5)])
    first = client.get(f"/api/v1/runs/{run.id}/output?limit=3").json
    assert [c["seq"] for c in first["chunks"]] == [0, 1, 2] and first["more"]
    rest = client.get(f"/api/v1/runs/{run.id}/output?after={first['next_after']}").json
    assert [c["text"] for c in rest["chunks"]] == ["line 3\n", "line 4\n"] and not rest["more"]
    assert client.get(f"/api/v1/runs/{run.id}/output?after=x").status_code == 400


def test_delete_cancels_and_a_finished_run_is_a_409(client, store):
    run = RunService(store).queue(JOB, ManualTrigger())
    cancelled = client.delete(f"/api/v1/runs/{run.id}")
    assert cancelled.status_code == 200 and cancelled.json["status"] == RunStatus.CANCELLED.value
    again = client.delete(f"/api/v1/runs/{run.id}")
    assert again.status_code == 409 and again.json["error"]["code"] == "conflict"
    assert client.delete("/api/v1/runs/0123456789abcdef01234567").status_code == 404


# -- events, workers, deploys ------------------------------------------------------------------------------------

def test_events_emit_and_list_workers_and_deploys(client, store):
    emitted = client.post("/api/v1/events", json={"name": "data-ready", "data": {"rows": 3}})
    assert emitted.status_code == 201 and len(emitted.json["runs"]) == 1
    assert client.get("/api/v1/events?name=data-ready").json["events"][0]["data"] == {"rows": 3}
    assert client.post("/api/v1/events", json={"name": "bad name!"}).status_code == 422
    store.deploys.record(commit="a" * 40, tree="t" * 40, branch="main", author="ann", message="m", created=[JOB],
                         updated=[], removed=[], restored=[])
    assert client.get("/api/v1/deploys").json["deploys"][0]["created"] == [JOB]
    assert client.get("/api/v1/workers").json == {"workers": []}


# -- errors and auth ------------------------------------------------------------------------------------------

def test_errors_have_the_envelope_and_the_right_status(app, client):
    anonymous = app.test_client().get("/api/v1/jobs")
    assert anonymous.status_code == 401 and anonymous.json["error"]["code"] == "unauthorized"
    assert "WWW-Authenticate" in anonymous.headers
    big = client.post(f"/api/v1/jobs/{JOB}/runs", data=b'{"data": "' + b"x" * 300_000 + b'"}',
                      content_type="application/json")
    assert big.status_code == 413 and big.json["error"]["code"] == "request_entity_too_large"
    broken = client.post(f"/api/v1/jobs/{JOB}/runs", data=b"{nope", content_type="application/json")
    assert broken.status_code == 400 and broken.json["error"]["message"]
    assert client.get("/api/v1/nothing").json["error"]["code"] == "not_found"


def test_data_that_cannot_be_stored_is_a_422_naming_the_part_not_a_server_error(client):
    started = client.post(f"/api/v1/jobs/{JOB}/runs", json={"data": {"$set": {"status": "x"}}})
    assert started.status_code == 422 and list(started.json["error"]["details"]) == ["data"]
    emitted = client.post("/api/v1/events", json={"name": "data-ready", "data": {"n": 2 ** 70}})
    assert emitted.status_code == 422 and "64 bits" in emitted.json["error"]["message"]
    assert client.get("/api/v1/runs").json["runs"] == []


def test_token_scopes_apply_to_v1_with_the_same_rule(app, store):
    client = app.test_client()
    read = bearer(store, scope=TokenScope.READ)
    run = bearer(store, scope=TokenScope.RUN, job_glob="reports/*")
    assert client.get("/api/v1/jobs", headers=read).status_code == 200
    assert client.post(f"/api/v1/jobs/{JOB}/runs", headers=read, json={}).status_code == 403
    started = client.post(f"/api/v1/jobs/{JOB}/runs", headers=run, json={})
    assert started.status_code == 201
    assert client.post(f"/api/v1/jobs/{OTHER}/runs", headers=run, json={}).status_code == 403
    assert client.patch(f"/api/v1/jobs/{JOB}", headers=run, json={"enabled": False}).status_code == 403
    assert client.post("/api/v1/events", headers=run, json={"name": "data-ready"}).status_code == 403
    assert client.delete(f"/api/v1/runs/{started.json['id']}", headers=run).status_code == 200
    viewer = client.post(f"/api/v1/jobs/{JOB}/runs", headers=bearer(store, "vic"), json={})
    assert viewer.status_code == 403 and viewer.json["error"]["message"] == "this needs the admin role"


def test_the_signed_in_ui_uses_v1_with_its_session_and_csrf_token(mock_web_app):
    app, _, _ = mock_web_app
    store = app.extensions["sooner"].store
    _seed(store)
    ui = signed_in(app, "admin", "admin-password")
    assert ui.get("/api/v1/jobs").status_code == 200
    assert ui.post(f"/api/v1/jobs/{JOB}/runs", json={}).status_code == 400  # no CSRF token
    assert ui.post(f"/api/v1/jobs/{JOB}/runs", json={}, headers={"X-CSRF-Token": ui.csrf}).status_code == 201
    assert app.test_client().get("/api/jobs").status_code == 401  # the old /api stays bearer-only


# -- a real HTTP server ---------------------------------------------------------------------------------------------

@pytest.fixture
def served(app):
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=False)  # one request at a time: mongomock is not thread-safe
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


def http(method: str, url: str, headers: dict[str, str], body: object = None) -> tuple[int, dict, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={**headers, **({"Content-Type": "application/json"} if data else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            raw = answer.read()
            return answer.status, dict(answer.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, dict(exc.headers), json.loads(raw) if raw else None


def test_end_to_end_poll_with_etags_scopes_and_expiry(served, store, fake_clock):
    runner = bearer(store, scope=TokenScope.RUN, job_glob="reports/*", expires_in=timedelta(hours=1))
    status, headers, body = http("POST", f"{served}/api/v1/jobs/{JOB}/runs", runner, {"data": {"x": 1}})
    assert status == 201
    url = served + headers["Location"]
    status, headers, body = http("GET", url, runner)
    etag = headers["ETag"]
    polls = [http("GET", url, {**runner, "If-None-Match": etag})[0] for _ in range(5)]
    assert polls == [304] * 5
    RunService(store, clock=fake_clock).cancel(body["id"], by="test")
    status, headers, body = http("GET", url, {**runner, "If-None-Match": etag})
    assert status == 200 and body["status"] == "cancelled" and headers["ETag"] != etag
    assert http("POST", f"{served}/api/v1/jobs/{OTHER}/runs", runner, {})[0] == 403
    fake_clock.advance(hours=1)
    status, _, body = http("GET", url, runner)
    assert status == 401 and "expired" in body["error"]["message"]


def test_a_run_ref_with_a_slash_reaches_the_v1_run_routes(served, store):
    """``reports/daily.sh#1``, url-encoded, names the run in every ``/api/v1/runs/{run_id}`` route (path converter)."""
    from urllib.parse import quote

    run = RunService(store).queue(JOB, ManualTrigger())
    auth, url = bearer(store), f"{served}/api/v1/runs/{quote(run.ref, safe='')}"
    assert run.ref == f"{JOB}#1" and "%2F" in url
    status, headers, body = http("GET", url, auth)
    assert status == 200 and body["id"] == run.id and headers["ETag"]
    assert http("GET", url + "/output", auth)[2]["run"] == run.id
    status, _, body = http("DELETE", url, auth)
    assert status == 200 and body["status"] == RunStatus.CANCELLED.value
    assert http("GET", f"{served}/api/v1/runs/{quote(JOB + '#9', safe='')}", auth)[0] == 404


def test_schemathesis_finds_no_server_error_and_every_answer_matches_the_document(served, store):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    auth = bearer(store)
    store.queues("pages").put({"url": "https://example.com", "n": 1})  # so queue operations meet an entry too
    store.hooks.create("github", "gh", JOB, events=["push"])
    store.deliveries.record("gh", "refused", 401, "unsigned", delivery="d-1", address="127.0.0.1")
    _, _, spec = http("GET", f"{served}/api/v1/openapi.json", auth)
    schema = schemathesis.openapi.from_dict(spec)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 19
    assert {"/api/v1/queues", "/api/v1/queues/{name}/entries", "/api/v1/queues/{name}/entries/{entry_id}",
            "/api/v1/hooks", "/api/v1/hooks/{name}/deliveries"} <= {op.path for op in operations}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(base_url=served, headers=auth, checks=checks)
        check()
