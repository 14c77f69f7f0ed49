"""``/settings/hooks``: admins make, list and delete webhooks (the secret shown once) and read each hook's
delivery log; over a real HTTP server on the embedded nx-27017 server, and once in headless Chromium."""

from __future__ import annotations

import hashlib
import hmac
import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from types import SimpleNamespace

import pytest

from conftest import csrf_of, require_chromium, served
from sooner.config import load_settings
from sooner.store import Store
from sooner.store.webhooks import REFUSED
from sooner.webapp import create_app
from sooner.webapp.testing import launch_chromium, sign_in
from sooner.worker.testing import deploy_files

ADMIN, VIEWER = ("ann", "ann-password"), ("vic", "vic-password")


@pytest.fixture
def web(embedded_store, fast_passwords):
    store = Store(embedded_store.url, embedded_store.database_name)
    store.users.add(*ADMIN, admin=True)
    store.users.add(*VIEWER)
    deploy_files(store, {"hello.sh": "#!/bin/sh\necho hi\n"})
    settings = load_settings(None, environ={}, overrides={
        "secret_key": "k" * 40, "mongo_url": store.url, "database": store.database_name})
    app, _ = create_app(settings, store, live=False)
    with served(app) as base:
        yield SimpleNamespace(base=base, store=store)
    store.close()


class Browser:
    """A signed-in user over real HTTP: cookies kept, redirects not followed, the page's CSRF token at hand."""

    def __init__(self, base: str, user: tuple[str, str] | None) -> None:
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
                                                  NoRedirect())
        self.csrf = ""
        if user:
            self.get("/login")
            status, _, _ = self.post("/login", {"username": user[0], "password": user[1]})
            assert status == 302
            self.get("/")

    def open(self, method: str, path: str, form: dict | None = None,
             headers: dict | None = None) -> tuple[int, dict, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with self.opener.open(request, timeout=20) as answer:
                status, found, text = answer.status, dict(answer.headers), answer.read().decode()
        except urllib.error.HTTPError as error:
            status, found, text = error.code, dict(error.headers), error.read().decode()
        if 'name="csrf-token"' in text:
            self.csrf = csrf_of(text)
        return status, found, text

    def get(self, path: str) -> tuple[int, dict, str]:
        return self.open("GET", path)

    def post(self, path: str, form: dict, *, csrf: bool = True) -> tuple[int, dict, str]:
        return self.open("POST", path, {**form, **({"csrf_token": self.csrf} if csrf else {})})


def _deliver(base: str, hook: str, secret: str, delivery: str) -> tuple[int, dict]:
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    headers = {"Content-Type": "application/json", "X-GitHub-Delivery": delivery, "X-GitHub-Event": "push",
               "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}
    request = urllib.request.Request(f"{base}/hooks/github/{hook}", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_an_admin_makes_a_hook_whose_generated_secret_is_shown_once_and_works(web):
    ann = Browser(web.base, ADMIN)
    status, _, page = ann.get("/settings/hooks/")
    assert status == 200 and "No hooks yet." in page and 'href="/settings/hooks/"' in page  # the nav link
    status, headers, page = ann.post("/settings/hooks/", {"provider": "github", "name": "gh", "job": "hello.sh",
                                                          "events": "push, release", "branches": "main"})
    assert status == 201 and headers["Cache-Control"] == "no-store"
    secret = re.search(r'<pre class="cmd" id="hook-secret">([^<]+)</pre>', page).group(1)
    hook = web.store.hooks.get("gh")
    assert hook.secret == secret and (hook.events, hook.branches, hook.created_by) == (("push", "release"), ("main",),
                                                                                       "ann")
    assert f"{web.base}/hooks/github/gh" in page
    status, _, again = ann.get("/settings/hooks/")
    assert status == 200 and secret not in again and "/hooks/github/gh" in again
    # the hook receives a delivery signed with that secret, and its log shows it with the run's link
    status, answer = _deliver(web.base, "gh", secret, "d-42")
    assert status == 202
    assert _deliver(web.base, "gh", secret, "d-42")[0] == 200  # the same delivery again: a duplicate
    assert _deliver(web.base, "gh", "wrong", "d-43")[0] == 401
    status, _, log = ann.get("/settings/hooks/gh")
    assert status == 200 and "d-42" in log and "accepted" in log and "1 more" in log
    assert f'href="/runs/{answer["run"]}"' in log and "refused" in log and "401" in log


def test_a_given_secret_is_kept_and_bad_input_is_refused_with_a_message(web):
    ann = Browser(web.base, ADMIN)
    ann.get("/settings/hooks/")
    status, _, page = ann.post("/settings/hooks/", {"provider": "gitlab", "name": "gl", "job": "hello.sh",
                                                    "secret": "typed-secret"})
    assert status == 201 and "typed-secret" in page and web.store.hooks.get("gl").secret == "typed-secret"
    deploy_files(web.store, {"hello.sh": "#!/bin/sh\necho hi\n", "gone.sh": "#!/bin/sh\n"})
    web.store.jobs.mark_deleted("gone.sh", commit="c" * 40)
    cases = [({"name": "bad name!"}, "is not valid"), ({"job": "nope.sh"}, "no job named"),
             ({"job": "gone.sh"}, "was removed from the repository"),
             ({"name": "gl"}, "exists already"), ({"provider": "svn"}, "unknown webhook provider"),
             ({"events": "<b>x</b>"}, "is not valid"), ({"provider": "standard", "secret": "plain"}, "whsec_")]
    for change, message in cases:
        form = {"provider": "gitlab", "name": "another", "job": "hello.sh", **change}
        status, _, page = ann.post("/settings/hooks/", form)
        assert status == 400 and message in page, (change, page[:300])
        assert "<b>x</b>" not in page
    assert [h.name for h in web.store.hooks.all()] == ["gl"]


def test_pages_escape_what_senders_and_admins_typed(web):
    web.store.hooks.create("github", "gh", "hello.sh", branches=["<i>b</i>"])
    web.store.deliveries.record("gh", REFUSED, 400, "<script>alert(1)</script>", delivery="<d>")
    ann = Browser(web.base, ADMIN)
    listing, log = ann.get("/settings/hooks/")[2], ann.get("/settings/hooks/gh")[2]
    assert "<i>b</i>" not in listing and "&lt;i&gt;b&lt;/i&gt;" in listing
    assert "<script>alert" not in log and "&lt;script&gt;alert(1)&lt;/script&gt;" in log and "&lt;d&gt;" in log


def test_deleting_needs_the_csrf_token_and_removes_the_hook_and_its_log(web):
    web.store.hooks.create("github", "gh", "hello.sh")
    web.store.deliveries.record("gh", REFUSED, 401, "unsigned")
    ann = Browser(web.base, ADMIN)
    ann.get("/settings/hooks/")
    assert ann.post("/settings/hooks/gh/delete", {}, csrf=False)[0] == 400
    assert web.store.hooks.get("gh") is not None
    status, headers, _ = ann.post("/settings/hooks/gh/delete", {})
    assert status == 302 and headers["Location"].endswith("/settings/hooks/")
    assert web.store.hooks.get("gh") is None and web.store.deliveries.log("gh") == []
    assert ann.post("/settings/hooks/gh/delete", {})[0] == 404
    assert ann.get("/settings/hooks/gh")[0] == 404


def test_only_admins_see_or_change_hooks(web):
    web.store.hooks.create("github", "gh", "hello.sh")
    vic = Browser(web.base, VIEWER)
    assert vic.get("/settings/hooks/")[0] == 403
    assert 'href="/settings/hooks/"' not in vic.get("/")[2]
    assert vic.get("/settings/hooks/gh")[0] == 403
    assert vic.post("/settings/hooks/gh/delete", {})[0] == 403
    assert vic.post("/settings/hooks/", {"provider": "github", "name": "x", "job": "hello.sh"})[0] == 403
    assert [h.name for h in web.store.hooks.all()] == ["gh"]
    status, headers, _ = Browser(web.base, None).get("/settings/hooks/")
    assert status == 302 and "/login" in headers["Location"]


def test_in_chromium_an_admin_makes_a_hook_and_opens_its_log(web):
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            sign_in(page, web.base, *ADMIN)
            page.click("nav >> text=Webhooks")
            page.select_option("select[name=provider]", "gitea")
            page.fill("input[name=name]", "tea")
            page.fill("input[name=job]", "hello.sh")
            page.click("#new-hook-form button[type=submit]")
            page.wait_for_selector("#hook-secret")
            assert page.text_content("#hook-secret") == web.store.hooks.get("tea").secret
            page.click("#hooks >> text=tea")
            page.wait_for_selector("#deliveries")
            assert "No deliveries yet." in page.text_content("#deliveries")
        finally:
            browser.close()
