"""Server-side web sessions: a saved cookie signs in no more after logout, a password or a role change.

Through real HTTP servers: `sooner web` as a real process on a site's embedded
database (logout, `sooner user passwd|role`, the Socket.IO handshake), and the
app served in-process by werkzeug on the embedded database with a fake clock
(idle and absolute lifetimes). Plus the store's session repository on every
store kind.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import urllib.parse
from datetime import timedelta
from types import SimpleNamespace

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.sessions import SecureCookieSessionInterface

from sooner.clock import FakeClock, utcnow
from sooner.config import load_settings
from sooner.site import init_site
from sooner.store import Store, open_store, schema
from sooner.store.embedded import EmbeddedServer
from sooner.webapp import create_app
from sooner.webapp.testing import WebServer

from conftest import served, csrf_of, run_sooner

PASSWORD = "session-test-password"
_names = itertools.count()


# -- a small HTTP client for real servers ------------------------------------------------------

class Browser:
    """Talks HTTP to a real server: keeps its cookies, never follows redirects.

    ``copy()`` is a cookie saved at that moment (what an attacker who stole it holds).
    """

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.base_url = base_url
        self.host, self.port = parts.hostname, parts.port
        self.headers = dict(headers or {})
        self.cookies: dict[str, str] = {}
        self.csrf = ""

    def copy(self) -> Browser:
        other = Browser(self.base_url, self.headers)
        other.cookies, other.csrf = dict(self.cookies), self.csrf
        return other

    def request(self, method: str, path: str, form: dict | None = None, body: str | None = None,
                headers: dict[str, str] | None = None) -> SimpleNamespace:
        sent = {**self.headers, **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if form is not None:
            body = urllib.parse.urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            text = response.read().decode("utf-8", "replace")
        finally:
            connection.close()
        for value in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            content = rest.split(";", 1)[0]
            if not content or "Expires=Thu, 01 Jan 1970" in value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = content
        return SimpleNamespace(status=response.status, headers=response.headers, text=text,
                               location=response.headers.get("Location", ""))

    def get(self, path: str, **kwargs) -> SimpleNamespace:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, form: dict | None = None, **kwargs) -> SimpleNamespace:
        return self.request("POST", path, form=form, **kwargs)

    def sign_in(self, name: str, password: str, landing: str = "/") -> SimpleNamespace:
        page = self.get("/login")
        answer = self.post("/login", {"username": name, "password": password, "csrf_token": csrf_of(page.text)})
        if answer.status == 302:
            self.csrf = csrf_of(self.get(landing).text)
        return answer


def socket_accepted(browser: Browser) -> bool:
    """Open an Engine.IO polling transport and connect the Socket.IO namespace: accepted or refused?"""
    opened = browser.get("/socket.io/?EIO=4&transport=polling")
    assert opened.status == 200, opened.text
    sid = json.loads(opened.text[1:])["sid"]
    path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    assert browser.request("POST", path, body="40", headers={"Content-Type": "text/plain"}).status == 200
    reply = browser.get(path).text  # a long poll: returns once the server answered the connect
    assert reply[:2] in ("40", "44"), reply
    return reply.startswith("40")


def session_cookie(browser: Browser, secret: str) -> dict:
    """What the signed session cookie holds."""
    app = Flask("decode")
    app.secret_key = secret
    return SecureCookieSessionInterface().get_signing_serializer(app).loads(browser.cookies["sooner_session"])


# -- `sooner web` as a real process -------------------------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A site with `sooner web` running on its embedded database, and a store on that database."""
    root = tmp_path_factory.mktemp("sessions")
    settings = init_site(root / "site")
    config = root / "site" / "config.json"
    store = open_store(settings)
    web = WebServer(config, root / "web.log")

    def new_user(admin: bool = True) -> str:
        name = f"user{next(_names)}"
        store.users.add(name, PASSWORD, admin=admin)
        return name

    def new_job() -> str:
        name = f"t/job{next(_names)}.sh"
        store.jobs.record_deployed(name, commit="c" * 40, blob="b" * 40)
        return name
    try:
        web.wait_ready()
        yield SimpleNamespace(base=web.base_url, store=store, config=config, settings=settings, web=web,
                              new_user=new_user, new_job=new_job)
    finally:  # a server that failed to start is stopped too
        web.stop()
        store.close()
        EmbeddedServer(settings.state_dir).stop()


def refused(browser: Browser, job: str) -> bool:
    """The browser's cookie no longer signs in: pages send it to the login page and job changes fail."""
    page = browser.get("/jobs")
    change = browser.post(f"/jobs/{job}", {"action": "enable", "csrf_token": browser.csrf})
    return (page.status == 302 and page.location.startswith("/login")
            and change.status in (302, 400, 401) and "/login" in change.location + change.text)


def test_a_cookie_saved_before_logout_signs_in_no_more_and_cannot_change_a_job(live):
    # given a signed-in admin whose cookie someone saved
    name, job = live.new_user(), live.new_job()
    browser = Browser(live.base)
    assert browser.sign_in(name, PASSWORD).status == 302
    saved = browser.copy()
    assert saved.get("/jobs").status == 200
    # when the admin signs out
    assert browser.post("/logout", {"csrf_token": browser.csrf}).status == 302
    # then the saved cookie is refused: pages redirect to the login page, the job stays disabled
    assert refused(saved, job)
    assert live.store.jobs.get(job).enabled is False
    assert not socket_accepted(saved)


def test_the_session_cookie_carries_only_a_session_id_stored_hashed(live):
    name = live.new_user()
    browser = Browser(live.base)
    browser.sign_in(name, PASSWORD)
    content = session_cookie(browser, live.settings.secret_key)
    assert set(content) <= {"sid", "_permanent", "_flashes"}, content
    stored = live.store.sessions.collection.find_one({"user": name})
    assert stored["_id"] == hashlib.sha256(content["sid"].encode()).hexdigest()
    assert content["sid"] not in json.dumps(stored, default=str)


def test_sooner_user_passwd_ends_every_session_of_the_user(live):
    name, job = live.new_user(), live.new_job()
    first, second = Browser(live.base), Browser(live.base)
    first.sign_in(name, PASSWORD)
    second.sign_in(name, PASSWORD)
    result = run_sooner("user", "passwd", name, "--password-stdin", input="another-password\n",
                        env={"SOONER_CONFIG": str(live.config)})
    assert result.returncode == 0, result.stderr
    assert "2 web sessions ended" in result.stdout
    assert refused(first, job) and refused(second, job)
    assert live.store.sessions.collection.count_documents({"user": name}) == 0
    assert Browser(live.base).sign_in(name, "another-password").status == 302


def test_a_role_change_ends_every_session_of_the_user(live):
    name, job = live.new_user(admin=True), live.new_job()
    browser = Browser(live.base)
    browser.sign_in(name, PASSWORD)
    saved = browser.copy()
    result = run_sooner("user", "role", name, "viewer", env={"SOONER_CONFIG": str(live.config)})
    assert result.returncode == 0, result.stderr
    assert refused(saved, job) and not socket_accepted(saved)
    again = Browser(live.base)
    again.sign_in(name, PASSWORD)
    assert again.post(f"/jobs/{job}", {"action": "enable", "csrf_token": again.csrf}).status == 403
    assert live.store.jobs.get(job).enabled is False


def test_changing_the_password_on_the_account_page_keeps_this_session_and_ends_the_others(live):
    name, job = live.new_user(), live.new_job()
    here, elsewhere = Browser(live.base), Browser(live.base)
    here.sign_in(name, PASSWORD, "/account")
    elsewhere.sign_in(name, PASSWORD)
    before = here.copy()
    changed = here.post("/account/password", {"csrf_token": here.csrf, "current": PASSWORD, "new": "changed-password",
                                              "confirm": "changed-password"})
    assert changed.status == 302
    assert refused(elsewhere, job)
    assert refused(before, job), "the session id is rotated: the cookie from before the change ends too"
    here.csrf = csrf_of(here.get("/account").text)
    assert here.post(f"/jobs/{job}", {"action": "enable", "csrf_token": here.csrf}).status == 302
    assert live.store.jobs.get(job).enabled is True


def test_a_signed_in_socket_connection_is_accepted(live):
    name = live.new_user(admin=False)
    browser = Browser(live.base)
    assert not socket_accepted(browser)
    browser.sign_in(name, PASSWORD)
    assert socket_accepted(browser)


def test_healthz_answers_json_without_a_session_and_nothing_else_becomes_public(live):
    anonymous = Browser(live.base)
    health = anonymous.get("/healthz")
    assert health.status == 200 and json.loads(health.text) == {"ok": True}
    assert health.headers["Content-Type"].startswith("application/json")
    for path in ("/", "/jobs", "/account", "/workers", "/queues/", "/healthz/x"):
        answer = anonymous.get(path)
        assert answer.status in (302, 404) and (answer.status == 404 or "/login" in answer.location), path
    assert anonymous.get("/api/jobs").status == 401


# -- idle and absolute lifetimes, on a fake clock --------------------------------------------------

@pytest.fixture
def clocked(embedded_store, monkeypatch):
    """The web app on the embedded database with a fake clock, idle lifetime 600 s, absolute 3600 s."""
    monkeypatch.setattr("sooner.store.users._passwords", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
    clock = FakeClock(utcnow())  # not a fixed date: the database's TTL index deletes sessions on real time
    store = Store(embedded_store.url, embedded_store.database_name, clock=clock)
    settings = load_settings(None, environ={}, overrides={
        "secret_key": "k" * 40, "mongo_url": store.url, "database": store.database_name,
        "web_session_idle_s": 600, "web_session_max_s": 3600})
    app, _ = create_app(settings, store, live=False)
    store.users.add("admin", PASSWORD, admin=True)
    with served(app) as base:
        yield SimpleNamespace(base=base, clock=clock, store=store)
    store.close()


def test_a_session_ends_after_the_idle_lifetime_without_requests(clocked):
    browser = Browser(clocked.base)
    browser.sign_in("admin", PASSWORD)
    for _ in range(3):  # each request within the idle lifetime keeps the session going
        clocked.clock.advance(590)
        assert browser.get("/jobs").status == 200
    clocked.clock.advance(601)
    page = browser.get("/jobs")
    assert page.status == 302 and page.location.startswith("/login")
    assert clocked.store.sessions.collection.count_documents({"user": "admin"}) == 0


def test_a_session_ends_at_its_absolute_lifetime_however_busy(clocked):
    browser = Browser(clocked.base)
    browser.sign_in("admin", PASSWORD)
    for _ in range(7):  # a request every 500 s, for 3500 s
        clocked.clock.advance(500)
        assert browser.get("/jobs").status == 200
    clocked.clock.advance(101)  # 3601 s after sign-in, 101 s after the last request
    page = browser.get("/jobs")
    assert page.status == 302 and page.location.startswith("/login")


# -- the session repository, on every store ----------------------------------------------------------
# Times start at the real now: mongomock and the embedded server run the TTL index on real time.

@pytest.fixture
def t0():
    return utcnow()


def test_sessions_are_stored_under_the_hash_of_a_random_id_and_end_when_revoked(any_store, t0):
    sid, document = any_store.sessions.create("alice", 1, max_s=3600, now=t0)
    assert len(sid) >= 43 and document["_id"] == hashlib.sha256(sid.encode()).hexdigest()
    assert any_store.sessions.find_live(sid, idle_s=600, now=t0)["user"] == "alice"
    other, _ = any_store.sessions.create("alice", 1, max_s=3600, now=t0)
    assert other != sid
    assert any_store.sessions.revoke(sid) is True
    assert any_store.sessions.find_live(sid, idle_s=600, now=t0) is None
    assert any_store.sessions.find_live(other, idle_s=600, now=t0) is not None
    assert any_store.sessions.find_live("not-a-session", idle_s=600, now=t0) is None


def test_sessions_end_when_idle_or_past_their_absolute_expiry(any_store, t0):
    sid, _ = any_store.sessions.create("bob", 1, max_s=3600, now=t0)
    live = any_store.sessions.find_live(sid, idle_s=600, now=t0 + timedelta(seconds=599))
    any_store.sessions.touch(live, now=t0 + timedelta(seconds=599), resolution_s=0)
    assert any_store.sessions.find_live(sid, idle_s=600, now=t0 + timedelta(seconds=1198)) is not None
    assert any_store.sessions.find_live(sid, idle_s=600, now=t0 + timedelta(seconds=1200)) is None
    late, _ = any_store.sessions.create("bob", 1, max_s=3600, now=t0)
    assert any_store.sessions.find_live(late, idle_s=10_000, now=t0 + timedelta(seconds=3600)) is None


def test_revoking_a_user_ends_all_of_their_sessions_only(any_store, t0):
    any_store.users.add("carol", PASSWORD)
    any_store.users.add("dave", PASSWORD)
    mine = [any_store.sessions.create("carol", 1, max_s=3600, now=t0)[0] for _ in range(3)]
    theirs, _ = any_store.sessions.create("dave", 1, max_s=3600, now=t0)
    assert any_store.users.set_password("carol", "a-new-password") == 3
    assert all(any_store.sessions.find_live(sid, idle_s=600, now=t0) is None for sid in mine)
    assert any_store.sessions.find_live(theirs, idle_s=600, now=t0) is not None
    assert any_store.users.set_role("dave", "admin") == 1
    assert any_store.sessions.find_live(theirs, idle_s=600, now=t0) is None
    again, _ = any_store.sessions.create("dave", 2, max_s=3600, now=t0)
    any_store.users.remove("dave")
    assert any_store.sessions.find_live(again, idle_s=600, now=t0) is None


def test_the_database_expires_sessions_past_their_absolute_lifetime(any_store, t0):
    indexes = list(any_store.collection(schema.SESSIONS).list_indexes())
    ttl = [index for index in indexes if "expireAfterSeconds" in index]
    assert [(list(index["key"]), index["expireAfterSeconds"]) for index in ttl] == [(["expires_at"], 0)]
