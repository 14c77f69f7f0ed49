"""``/api/v1/queues`` and ``/api/v1/hooks``: browsing with the Queues page's safe filters, put/get/patch/delete,
the error envelope and statuses, token scopes and roles, the session's CSRF token; over a real HTTP server on
the embedded nx-27017 server."""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.parse
import urllib.request
from types import SimpleNamespace

import pytest

from conftest import csrf_of, served
from sooner.clock import FakeClock, utcnow
from sooner.config import load_settings
from sooner.model.token import TokenScope
from sooner.store import Store
from sooner.webapp import create_app
from sooner.worker.testing import deploy_files


@pytest.fixture
def web(embedded_store, fast_passwords):
    clock = FakeClock(utcnow())
    store = Store(embedded_store.url, embedded_store.database_name, clock=clock)
    store.users.add("ann", "ann-password", admin=True)
    store.users.add("vic", "vic-password")
    deploy_files(store, {"hello.sh": "#!/bin/sh\necho hi\n"})
    settings = load_settings(None, environ={}, overrides={
        "secret_key": "k" * 40, "mongo_url": store.url, "database": store.database_name})
    app, _ = create_app(settings, store, live=False)
    with served(app) as base:
        yield SimpleNamespace(base=base, store=store, clock=clock)
    store.close()


def token(store: Store, user: str = "ann", **options) -> dict[str, str]:
    secret, _ = store.tokens.create(user, **options)
    return {"Authorization": f"Bearer {secret}"}


def call(base: str, method: str, path: str, headers: dict[str, str] | None = None, body: object = None,
         raw: bytes | None = None, opener=None) -> tuple[int, dict, object]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(base + path, data=data, method=method, headers={
        **(headers or {}), **({"Content-Type": "application/json"} if data is not None else {})})
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=20) as answer:
            text = answer.read()
            return answer.status, dict(answer.headers), json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        text = error.read()
        return error.code, dict(error.headers), json.loads(text) if text else None


def _fill(store: Store, clock: FakeClock, n: int = 25) -> list:
    queue = store.queues("pages")
    ids = []
    for i in range(n):
        ids.append(queue.put({"n": i, "url": f"https://example.com/{i}"}, status="done" if i % 2 else "pending")["_id"])
        clock.advance(1)
    return ids


# -- reading --------------------------------------------------------------------------------------------------------

def test_the_queue_list_shows_each_queue_with_the_pages_size(web):
    _fill(web.store, web.clock, 3)
    status, _, body = call(web.base, "GET", "/api/v1/queues", token(web.store, scope=TokenScope.READ))
    assert status == 200
    assert body == {"queues": [{"name": "pages", "browsable": True, "size": 3, "exact": True}]}


def test_entries_filter_sort_and_page_with_the_queues_pages_parameters(web):
    ids = _fill(web.store, web.clock)
    auth = token(web.store, scope=TokenScope.READ)
    query = urllib.parse.urlencode([("status", "done"), ("f", "data.n"), ("op", "gte"), ("v", "5"),
                                    ("sort", "data.n"), ("dir", "asc"), ("per", "20")])
    status, _, body = call(web.base, "GET", f"/api/v1/queues/pages/entries?{query}", auth)
    assert status == 200, body
    assert [e["data"]["n"] for e in body["entries"]] == [5, 7, 9, 11, 13, 15, 17, 19, 21, 23]
    assert {e["status"] for e in body["entries"]} == {"done"} and body["has_next"] is False
    assert {"field": "data.n", "kind": "number"} in body["columns"]
    newest = call(web.base, "GET", "/api/v1/queues/pages/entries?per=20", auth)[2]
    assert newest["entries"][0]["id"] == str(ids[-1]) and newest["has_next"] is True and newest["size"] == 25
    second = call(web.base, "GET", "/api/v1/queues/pages/entries?per=20&page=2", auth)[2]
    assert [e["id"] for e in second["entries"]] == [str(i) for i in ids[:5][::-1]] and not second["has_next"]
    found = call(web.base, "GET", "/api/v1/queues/pages/entries?q=example.com/17", auth)[2]
    assert [e["data"]["n"] for e in found["entries"]] == [17]


def test_typed_text_is_a_value_never_an_operator_and_bad_parameters_name_themselves(web):
    _fill(web.store, web.clock, 4)
    auth = token(web.store)
    literal = urllib.parse.urlencode([("f", "data.url"), ("op", "eq"), ("v", '{"$gt": ""}')])
    status, _, body = call(web.base, "GET", f"/api/v1/queues/pages/entries?{literal}", auth)
    assert status == 200 and body["entries"] == []
    status, _, body = call(web.base, "GET", "/api/v1/queues/pages/entries?f=data.$where&op=eq&v=1", auth)
    assert status == 400 and "cannot filter on 'data.$where'" in body["error"]["message"]
    assert list(body["error"]["details"]) == ["query"]
    status, _, body = call(web.base, "GET", "/api/v1/queues/pages/entries?op=regex", auth)
    assert status == 400 and list(body["error"]["details"]) == ["op.0"]
    status, _, body = call(web.base, "GET", "/api/v1/queues/pages/entries?per=7", auth)
    assert status == 400 and "per" in body["error"]["details"]
    status, _, body = call(web.base, "GET", "/api/v1/queues/pages/entries?sneaky=1", auth)
    assert status == 400 and "unknown parameter 'sneaky'" in body["error"]["message"]
    assert call(web.base, "GET", "/api/v1/queues/nope/entries", auth)[0] == 404
    status, _, body = call(web.base, "GET", "/api/v1/queues/bad-name/entries", auth)
    assert status == 404 and body["error"]["code"] == "not_found"


# -- changing -------------------------------------------------------------------------------------------------------

def test_put_get_patch_and_delete_an_entry(web):
    auth = token(web.store)
    status, headers, created = call(web.base, "POST", "/api/v1/queues/jobs_todo/entries", auth,
                                    {"data": {"url": "https://a.example"}, "status": "new"})
    assert status == 201 and created["status"] == "new" and created["data"] == {"url": "https://a.example"}
    assert headers["Location"] == f"/api/v1/queues/jobs_todo/entries/{created['id']}"
    assert web.store.queues("jobs_todo").get(created["id"])["data"] == {"url": "https://a.example"}
    assert call(web.base, "GET", headers["Location"], auth)[2] == created
    web.clock.advance(5)
    status, _, patched = call(web.base, "PATCH", headers["Location"], auth, {"status": "done", "data": [1, 2]})
    assert status == 200 and (patched["status"], patched["data"]) == ("done", [1, 2])
    assert patched["updatedAt"] > created["updatedAt"]
    status, _, _ = call(web.base, "DELETE", headers["Location"], auth)
    assert status == 204 and web.store.queues("jobs_todo").get(created["id"]) is None
    assert call(web.base, "GET", headers["Location"], auth)[0] == 404
    assert call(web.base, "DELETE", headers["Location"], auth)[0] == 404
    assert call(web.base, "PATCH", headers["Location"], auth, {"status": "x"})[0] == 404


def test_a_script_chosen_id_with_a_slash_reaches_its_entry(web):
    web.store.queues("pages").collection.insert_one({"_id": "site/a b", "status": "pending", "data": 1})
    auth = token(web.store)
    listed = call(web.base, "GET", "/api/v1/queues/pages/entries", auth)[2]
    assert [e["id"] for e in listed["entries"]] == ["s:site/a b"]
    status, _, body = call(web.base, "GET", "/api/v1/queues/pages/entries/" + urllib.parse.quote("s:site/a b"), auth)
    assert status == 200 and body["data"] == 1
    status, _, body = call(web.base, "GET", "/api/v1/queues/pages/entries/zz", auth)
    assert status == 400 and list(body["error"]["details"]) == ["entry_id"]


def test_refused_values_are_422_and_malformed_bodies_400_naming_the_field(web):
    auth = token(web.store)
    location = call(web.base, "POST", "/api/v1/queues/pages/entries", auth, {"data": None})[1]["Location"]
    cases = [
        ("PATCH", {"status": "no spaces allowed"}, 422, "status"),
        ("PATCH", {"data": {"$set": {"status": "x"}}}, 422, "data"),
        ("PATCH", {"data": None}, 400, "data"),
        ("PATCH", {"colour": "red"}, 400, "colour"),
        ("PATCH", {}, 400, "body"),
        ("POST", {"status": "new"}, 400, "data"),
        ("POST", {"data": {"a.b": 1}}, 422, "data"),
    ]
    for method, body, expected, field in cases:
        path = location if method == "PATCH" else "/api/v1/queues/pages/entries"
        status, _, answer = call(web.base, method, path, auth, body)
        assert (status, list(answer["error"]["details"])) == (expected, [field]), (body, answer)
    assert web.store.queues("pages").sample(10)[0]["data"] is None  # nothing above changed it
    status, _, answer = call(web.base, "POST", "/api/v1/queues/pages/entries", auth,
                             raw=b'{"data": "' + b"x" * 300_000 + b'"}')
    assert status == 413 and answer["error"]["code"] == "request_entity_too_large"
    assert call(web.base, "POST", "/api/v1/queues/pages/entries", auth, raw=b"{nope")[0] == 400


def test_reading_needs_any_token_and_changing_the_admin_role_and_scope(web):
    store, base = web.store, web.base
    _fill(store, web.clock, 1)
    read, run = token(store, scope=TokenScope.READ), token(store, scope=TokenScope.RUN)
    viewer = token(store, "vic")
    assert call(base, "GET", "/api/v1/queues")[0] == 401
    assert call(base, "GET", "/api/v1/queues/pages/entries", viewer)[0] == 200
    for auth, message in ((read, "scope 'read'"), (run, "scope 'run'"), (viewer, "admin role")):
        status, _, body = call(base, "POST", "/api/v1/queues/pages/entries", auth, {"data": 1})
        assert status == 403 and message in body["error"]["message"]
    assert store.queues("pages").estimated_count(max_age_s=0) == 1


def test_the_signed_in_ui_changes_entries_with_its_csrf_token_only(web):
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    login = opener.open(web.base + "/login", timeout=20).read().decode()
    form = urllib.parse.urlencode({"username": "ann", "password": "ann-password", "csrf_token": csrf_of(login)})
    opener.open(urllib.request.Request(web.base + "/login", data=form.encode(), method="POST"), timeout=20)
    csrf = csrf_of(opener.open(web.base + "/", timeout=20).read().decode())
    assert call(web.base, "GET", "/api/v1/queues", opener=opener)[0] == 200
    status, _, body = call(web.base, "POST", "/api/v1/queues/pages/entries", body={"data": 1}, opener=opener)
    assert status == 400 and "CSRF" in json.dumps(body)
    status, _, _ = call(web.base, "POST", "/api/v1/queues/pages/entries", {"X-CSRF-Token": csrf}, {"data": 1},
                        opener=opener)
    assert status == 201


# -- hooks ----------------------------------------------------------------------------------------------------------

def test_hooks_and_their_delivery_log_are_for_admins_and_never_show_the_secret(web):
    store = web.store
    store.hooks.create("github", "gh", "hello.sh", secret="s3cret-value", events=["push"], by="ann")
    store.deliveries.record("gh", "refused", 401, "bad signature", delivery="d-1", address="10.0.0.9")
    admin = token(store, scope=TokenScope.READ)
    status, _, body = call(web.base, "GET", "/api/v1/hooks", admin)
    assert status == 200 and body["hooks"][0]["path"] == "/hooks/github/gh" and body["hooks"][0]["events"] == ["push"]
    assert "s3cret-value" not in json.dumps(body)
    status, _, log = call(web.base, "GET", "/api/v1/hooks/gh/deliveries?limit=5", admin)
    assert status == 200 and log["deliveries"][0]["delivery"] == "d-1" and log["deliveries"][0]["status"] == 401
    assert call(web.base, "GET", "/api/v1/hooks/none/deliveries", admin)[0] == 404
    assert call(web.base, "GET", "/api/v1/hooks", token(store, "vic"))[0] == 403
    assert call(web.base, "GET", "/api/v1/hooks/gh/deliveries", token(store, "vic"))[0] == 403
