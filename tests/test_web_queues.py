"""The queue browser through Flask's test client, on mongomock and on the embedded nx-27017 server.

Listing, filters, search, sort, pages, counts, the JSON view, bulk actions
(admin only, CSRF, confirmation) and escaping of hostile queue data.
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
from argon2 import PasswordHasher
from bson import ObjectId

from sooner.config import load_settings
from sooner.site import init_site
from sooner.store import open_store
from sooner.store.embedded import EmbeddedServer
from sooner.webapp import create_app
from sooner.webapp.testing import WebServer

from conftest import signed_in
from test_web_sessions import Browser

ADMIN_PASSWORD = "admin-password"
VIEWER_PASSWORD = "viewer-password"
HOSTILE = '<script>alert("q")</script>'
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def cheap_password_hashes(monkeypatch):
    monkeypatch.setattr("sooner.store.users._passwords", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))


@pytest.fixture(params=["mock", "embedded"])
def web(request):
    store = request.getfixturevalue(f"{request.param}_store")
    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": store.url})
    app, socketio = create_app(settings, store, live=False)
    app.config["TESTING"] = True
    store.users.add("admin", ADMIN_PASSWORD, admin=True)
    store.users.add("viewer", VIEWER_PASSWORD)
    return SimpleNamespace(app=app, store=store, kind=request.param)


def fill(store, name="pages", n=30):
    """``n`` entries: url/host/size/attempts in data, every third pending, createdAt one minute apart."""
    queue = store.queues(name)
    queue._ensure_indexes()
    entries = []
    for i in range(n):
        moment = START + timedelta(minutes=i)
        entries.append({"_id": ObjectId(), "status": "pending" if i % 3 == 0 else "done",
                        "data": {"url": f"https://example.com/page/{i}", "host": f"Host{i % 4}", "size": i * 10,
                                 "attempts": i % 2},
                        "createdAt": moment, "updatedAt": moment})
    queue.collection.insert_many(entries)
    return queue, entries


def login(web, name="admin", password=ADMIN_PASSWORD):
    return signed_in(web.app, name, password, "/queues/")


def urls(text: str) -> list[str]:
    """The example.com page URLs shown in a table, in order."""
    return re.findall(r">https://example\.com/page/(\d+)<", text)


def shown(client, query: str) -> list[int]:
    response = client.get(f"/queues/pages?{query}")
    assert response.status_code == 200, response.text
    return [int(n) for n in urls(response.text)]


# -- listing ---------------------------------------------------------------------------

def test_anonymous_browsers_are_sent_to_the_login_page(web):
    fill(web.store)
    for url in ("/queues/", "/queues/pages", "/queues/pages/stats"):
        response = web.app.test_client().get(url, headers={"Accept": "text/html"})
        assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_the_list_shows_every_queue_with_an_estimate_and_counts_once_computed(web):
    fill(web.store)
    fill(web.store, "mail", 3)
    client = login(web, "viewer", VIEWER_PASSWORD)
    page = client.get("/queues/").text
    assert 'href="/queues/pages"' in page and 'href="/queues/mail"' in page
    assert '<span title="counted">30</span>' in page and "≈" not in page and "counting…" in page  # small: exact
    stats = client.get("/queues/pages/stats").json
    assert stats == {"estimate": 30, "by_status": {"pending": 10, "done": 20}}
    page = client.get("/queues/").text
    assert 'href="/queues/pages?status=done"' in page and "counting…" in page  # mail is not counted yet


def test_a_missing_queue_is_404(web):
    client = login(web)
    assert client.get("/queues/nothing").status_code == 404
    assert client.get("/queues/bad-name!").status_code == 404


# -- the table ------------------------------------------------------------------------------

def test_flat_data_keys_become_sortable_columns_and_nested_data_links_to_json(web):
    queue, _ = fill(web.store)
    nested = queue.put({"url": "https://example.com/page/99", "meta": {"deep": [1, 2]}})
    page = login(web).get("/queues/pages").text
    for key in ("url", "host", "size", "attempts", "meta"):
        assert f">{key}" in page
    assert "/queues/pages?sort=data.size&amp;dir=asc" in page
    assert f'/queues/pages/entries/{nested["_id"]}' in page
    assert '{"deep": [1, 2]}' in html.unescape(page)


def test_default_order_is_newest_first_with_pages_of_the_chosen_size(web):
    fill(web.store)
    client = login(web)
    assert shown(client, "per=20") == list(range(29, 9, -1))
    assert shown(client, "per=20&page=2") == list(range(9, -1, -1))
    page2 = client.get("/queues/pages?per=20&page=2").text
    assert 'id="q-prev"' in page2 and 'id="q-next"' not in page2
    assert 'id="q-next"' in client.get("/queues/pages?per=20").text


def test_sorting_by_a_data_column_indexes_it_once_and_orders_rows(web):
    queue, _ = fill(web.store)
    client = login(web)
    first = client.get("/queues/pages?sort=data.size&dir=asc&per=20")
    assert "Created an index on data.size" in first.text
    assert [int(n) for n in urls(first.text)] == list(range(20))
    assert "data.size" in queue.indexed_fields()
    again = client.get("/queues/pages?sort=data.size&dir=desc&per=20")
    assert "Created an index" not in again.text
    assert [int(n) for n in urls(again.text)] == list(range(29, 9, -1))


def test_the_number_of_data_indexes_per_queue_is_bounded(web):
    queue, _ = fill(web.store)
    for key in ("url", "host", "size"):
        assert queue.ensure_sort_index(f"data.{key}", max_data_indexes=3) == "created"
    assert queue.ensure_sort_index("data.attempts", max_data_indexes=3) == "limit"
    assert queue.ensure_sort_index("data.size", max_data_indexes=3) == "indexed"
    with pytest.raises(ValueError):
        queue.ensure_sort_index("data.$where")


def test_status_equality_range_and_contains_filters(web):
    fill(web.store)
    client = login(web)
    assert shown(client, "status=pending") == [27, 24, 21, 18, 15, 12, 9, 6, 3, 0]
    assert shown(client, "f=data.host&op=eq&v=Host1") == [29, 25, 21, 17, 13, 9, 5, 1]
    assert shown(client, "f=data.size&op=gte&v=100&f=data.size&op=lt&v=150") == [14, 13, 12, 11, 10]
    assert shown(client, "f=data.url&op=contains&v=PAGE/2") == [29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 2]
    assert shown(client, "status=done&f=data.attempts&op=eq&v=0&sort=data.size&dir=asc") == [2, 4, 8, 10, 14, 16,
                                                                                              20, 22, 26, 28]
    assert shown(client, "f=data.host&op=ne&v=Host0&f=data.size&op=lte&v=50") == [5, 3, 2, 1]


def test_date_ranges_on_created_at(web):
    fill(web.store)
    client = login(web)
    assert shown(client, "f=createdAt&op=gte&v=2026-01-01T00:25:00Z") == [29, 28, 27, 26, 25]
    assert shown(client, "f=createdAt&op=gt&v=2026-01-01T00:03:00&f=createdAt&op=lte&v=2026-01-01T01:06:00%2B01:00"
                         "&sort=createdAt&dir=asc") == [4, 5, 6]
    assert shown(client, "f=createdAt&op=lt&v=2025-12-31") == []


def test_search_finds_text_in_any_text_column_case_insensitively(web):
    fill(web.store)
    client = login(web)
    assert shown(client, "q=host3") == [27, 23, 19, 15, 11, 7, 3]
    assert shown(client, "q=page/1&per=20&sort=data.size&dir=asc") == [1] + list(range(10, 20))
    assert shown(client, "q=PENDING&f=data.size&op=lt&v=100") == [9, 6, 3, 0]
    assert shown(client, "q=nothing-like-this") == []


def test_search_pages_do_not_repeat_or_skip_rows(web):
    fill(web.store)
    client = login(web)
    seen = shown(client, "q=example&per=20") + shown(client, "q=example&per=20&page=2")
    assert seen == list(range(29, -1, -1))


def test_the_capped_count_of_matching_entries(web):
    fill(web.store)
    client = login(web)
    assert client.get("/queues/pages/count?status=pending").json == {"count": 10, "more": False, "cap": 10_000}
    assert client.get("/queues/pages/count?f=data.size&op=gte&v=250").json["count"] == 5
    assert client.get("/queues/pages/count?q=x").status_code == 422


def test_bad_parameters_are_a_400_page_that_says_why(web):
    fill(web.store)
    client = login(web)
    for query, words in [("where=1", "unknown parameter"), ("f=data.$where&op=eq&v=1", "cannot filter on"),
                         ("f=data.size&op=$gt&v=1", "unknown operator"), ("f=data.size&op=gt&v=abc", "a number"),
                         ("page=9999", "pages stop at row")]:
        response = client.get(f"/queues/pages?{query}")
        assert response.status_code == 400
        assert words in html.unescape(response.text)
        assert 'id="q-error"' in response.text
    assert client.get("/queues/pages/count?where=1").status_code == 400


def test_operator_shaped_values_are_looked_for_literally(web):
    queue, _ = fill(web.store)
    literal = queue.put({"url": '{"$gt": ""}', "size": "1"})
    client = login(web)
    page = client.get("/queues/pages", query_string={"f": "data.url", "op": "eq", "v": '{"$gt": ""}'}).text
    assert page.count('name="id" value="') == 1 and str(literal["_id"]) in page
    page = client.get("/queues/pages", query_string={"f": "data.url", "op": "contains", "v": ".*"}).text
    assert page.count('name="id" value="') == 0


# -- escaping ------------------------------------------------------------------------------

def test_hostile_data_keys_values_and_statuses_are_escaped(web):
    queue = web.store.queues("pages")
    entry = queue.put({HOSTILE: HOSTILE, "url": HOSTILE, "nested": {"x": HOSTILE}}, status=HOSTILE)
    client = login(web)
    for url in ("/queues/pages", f"/queues/pages/entries/{entry['_id']}", "/queues/pages?q=script",
                "/queues/pages?status=" + HOSTILE):
        page = client.get(url)
        assert page.status_code == 200
        assert "<script>alert" not in page.text
        assert "&lt;script&gt;alert" in page.text
    stats = client.get("/queues/pages/stats")
    assert stats.mimetype == "application/json"


def test_the_json_view_is_pretty_and_the_raw_form_is_json(web):
    queue = web.store.queues("pages")
    entry = queue.put({"url": "u", "tags": ["a", "b"], "deep": {"n": 1}})
    client = login(web, "viewer", VIEWER_PASSWORD)
    page = client.get(f"/queues/pages/entries/{entry['_id']}").text
    assert "&#34;tags&#34;: [\n" in page or '"tags": [\n' in html.unescape(page)
    raw = client.get(f"/queues/pages/entries/{entry['_id']}?format=json")
    assert raw.mimetype == "application/json"
    assert raw.json["data"] == {"url": "u", "tags": ["a", "b"], "deep": {"n": 1}}
    assert raw.json["_id"] == str(entry["_id"])
    assert client.get(f"/queues/pages/entries/{ObjectId()}").status_code == 404
    assert client.get("/queues/pages/entries/not-an-id").status_code == 400


def test_entries_with_string_and_integer_ids_can_be_viewed_and_selected(web):
    queue = web.store.queues("pages")
    queue.collection.insert_many([{"_id": "job/42", "status": "done", "data": {"url": "text id"}},
                                  {"_id": 7, "status": "done", "data": {"url": "int id"}}])
    client = login(web)
    page = client.get("/queues/pages").text
    assert 'value="s:job/42"' in page and 'value="i:7"' in page
    assert "text id" in client.get("/queues/pages/entries/s:job/42").text
    response = client.post("/queues/pages/bulk", data={"action": "delete", "id": ["s:job/42", "i:7"],
                                                       "confirm": "yes", "csrf_token": client.csrf})
    assert response.status_code == 302
    assert queue.collection.count_documents({}) == 0


# -- bulk actions -----------------------------------------------------------------------------

def test_viewers_see_no_bulk_controls_and_may_not_post(web):
    queue, entries = fill(web.store)
    client = login(web, "viewer", VIEWER_PASSWORD)
    page = client.get("/queues/pages").text
    assert 'class="q-pick"' not in page and 'id="q-apply"' not in page
    response = client.post("/queues/pages/bulk", data={"action": "delete", "id": [str(entries[0]["_id"])],
                                                       "confirm": "yes", "csrf_token": client.csrf})
    assert response.status_code == 403
    assert queue.get_exact(entries[0]["_id"]) is not None


def test_bulk_actions_need_the_csrf_token(web):
    queue, entries = fill(web.store)
    client = login(web)
    response = client.post("/queues/pages/bulk", data={"action": "delete", "id": [str(entries[0]["_id"])],
                                                       "confirm": "yes"})
    assert response.status_code == 400 and "CSRF" in response.text
    assert queue.get_exact(entries[0]["_id"]) is not None


def test_bulk_actions_ask_for_confirmation_then_apply_and_return_to_the_same_view(web):
    queue, entries = fill(web.store)
    client = login(web)
    ids = [str(entries[n]["_id"]) for n in (0, 1, 2)]
    back = "/queues/pages?status=done&sort=data.size"
    form = {"action": "set_status", "status": "failed", "id": ids, "back": back, "csrf_token": client.csrf}
    confirm = client.post("/queues/pages/bulk", data=form)
    assert confirm.status_code == 200 and "3</strong> selected entries" in confirm.text
    assert queue.get_exact(entries[0]["_id"])["status"] == "pending"
    done = client.post("/queues/pages/bulk", data={**form, "confirm": "yes"})
    assert done.status_code == 302 and done.headers["Location"] == back
    assert [queue.get_exact(entries[n]["_id"])["status"] for n in (0, 1, 2)] == ["failed"] * 3
    assert queue.get_exact(entries[0]["_id"])["updatedAt"] > entries[0]["updatedAt"]
    assert "Set status &#39;failed&#39; on 3 entries" in client.get(back).text


def test_requeue_and_delete(web):
    queue, entries = fill(web.store)
    client = login(web)
    done_ids = [str(e["_id"]) for e in entries[1:3]]
    requeue = client.post("/queues/pages/bulk", data={"action": "requeue", "id": done_ids, "confirm": "yes",
                                                      "csrf_token": client.csrf},
                          headers={"X-Requested-With": "fetch"})
    assert requeue.json["changed"] == 2
    assert {queue.get_exact(e["_id"])["status"] for e in entries[1:3]} == {"pending"}
    gone = client.post("/queues/pages/bulk", data={"action": "delete", "id": done_ids + [str(ObjectId())],
                                                   "confirm": "yes", "csrf_token": client.csrf})
    assert gone.status_code == 302
    assert queue.counts() == {"pending": 10, "done": 18}
    assert "1 selected entries no longer existed" in client.get("/queues/pages").text


@pytest.mark.parametrize("form, words", [
    ({"action": "drop", "id": ["x"]}, "unknown action"),
    ({"action": "set_status", "status": "$set", "id": ["0" * 24]}, "new status must be"),
    ({"action": "delete"}, "select at least one entry"),
])
def test_bad_bulk_requests_are_refused(web, form, words):
    fill(web.store)
    client = login(web)
    response = client.post("/queues/pages/bulk", data={**form, "csrf_token": client.csrf, "confirm": "yes"},
                           headers={"X-Requested-With": "fetch"})
    assert response.status_code == 400 and words in response.json["error"]


def test_bulk_actions_never_redirect_elsewhere(web):
    queue, entries = fill(web.store)
    client = login(web)
    response = client.post("/queues/pages/bulk", data={"action": "requeue", "id": [str(entries[1]["_id"])],
                                                       "back": "https://evil.example/", "confirm": "yes",
                                                       "csrf_token": client.csrf})
    assert response.headers["Location"] == "/queues/pages"


def test_a_query_over_its_time_budget_is_a_clear_message(web, monkeypatch):
    from sooner.store import queues as queues_module

    fill(web.store)

    def slow(self, *args, **kwargs):
        raise queues_module.QueueQueryTimeout("pages", 2.0)
    monkeypatch.setattr(queues_module.Queue, "page", slow)
    response = login(web).get("/queues/pages?status=done")
    assert response.status_code == 503
    assert "took more than 2 s" in response.text


def test_search_reads_only_a_window_of_the_view_and_says_so(web, monkeypatch):
    queue, _ = fill(web.store)
    branch = [{"data.url": {"$regex": "(?i)page/1"}}]
    rows, complete = queue.search_page({}, branch, ("createdAt", -1), window=15)
    assert [e["data"]["size"] for e in rows] == [190, 180, 170, 160, 150] and not complete
    rows, complete = queue.search_page({"status": {"$in": ["done"]}}, branch, ("data.size", 1), window=100)
    assert [e["data"]["size"] for e in rows] == [10, 100, 110, 130, 140, 160, 170, 190] and complete
    monkeypatch.setattr("sooner.webapp.queues.SEARCH_WINDOW", 15)
    page = login(web).get("/queues/pages?q=page/1").text
    assert "looked through the first 15 entries" in page
    assert [int(n) for n in urls(page)] == [19, 18, 17, 16, 15]


# -- data keys with '-' or a space -------------------------------------------------------------

def fill_odd_keys(store, n: int = 12):
    """``n`` entries whose data keys hold a '-' and a space, valued so that each key gives another order."""
    queue = store.queues("pages")
    for i in range(n):
        queue.put({"url": f"https://example.com/page/{i}", "my-key": (i * 5) % n, "my key": (i * 7) % n})
    return queue


def order_by(key: str, n: int = 12) -> list[int]:
    factor = 5 if key == "my-key" else 7
    return sorted(range(n), key=lambda i: (i * factor) % n)


@pytest.mark.parametrize("key", ["my-key", "my key"])
def test_sorting_on_a_data_key_with_a_dash_or_a_space_works(web, key):
    queue = fill_odd_keys(web.store)
    response = login(web).get("/queues/pages", query_string={"sort": f"data.{key}", "dir": "asc"})
    assert response.status_code == 200, response.text
    assert [int(n) for n in urls(response.text)] == order_by(key)
    if web.kind == "embedded":  # its SQLite index names allow letters, digits and '_' only
        assert f"data.{key} cannot have an index on this database" in html.unescape(response.text)
        assert queue.ensure_sort_index(f"data.{key}") == "unindexable"


@pytest.fixture(scope="module")
def served_site(tmp_path_factory):
    """`sooner web` as a real process on a site's embedded database, with an admin and the odd-keyed queue."""
    root = tmp_path_factory.mktemp("queues-http")
    settings = init_site(root / "site")
    store = open_store(settings)
    store.users.add("admin", ADMIN_PASSWORD, admin=True)
    fill_odd_keys(store)
    web = WebServer(root / "site" / "config.json", root / "web.log")
    try:
        web.wait_ready()
        yield web.base_url
    finally:  # a server that failed to start is stopped too
        web.stop()
        store.close()
        EmbeddedServer(settings.state_dir).stop()


@pytest.mark.parametrize("key", ["my-key", "my key"])
def test_sorting_on_a_data_key_with_a_dash_or_a_space_works_through_the_http_server(served_site, key):
    browser = Browser(served_site)
    assert browser.sign_in("admin", ADMIN_PASSWORD, "/queues/").status == 302
    for direction, expected in (("asc", order_by(key)), ("desc", order_by(key)[::-1])):
        page = browser.get("/queues/pages?" + urlencode({"sort": f"data.{key}", "dir": direction}))
        assert page.status == 200, page.text
        assert [int(n) for n in urls(page.text)] == expected
