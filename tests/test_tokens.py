"""Scoped API tokens: the model's rule, the repository (hash, expiry, last use), the old ``/api`` enforcing
scopes, the CLI (real subprocess) and the account page (CSRF)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from argon2 import PasswordHasher

from conftest import csrf_of, run_sooner, signed_in
from sooner.errors import AuthError
from sooner.model.token import ApiAction, InvalidTokenSetting, TokenGrant, TokenScope, parse_expiry
from sooner.store import schema


@pytest.fixture
def store(clocked_store, monkeypatch):
    monkeypatch.setattr("sooner.store.users._passwords", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
    clocked_store.users.add("ann", "ann-password", admin=True)
    clocked_store.users.add("vic", "vic-password")
    return clocked_store


# -- the model's rule ---------------------------------------------------------------------------------

def test_scopes_narrow_what_a_token_may_do():
    read, admin = TokenGrant("a", TokenScope.READ), TokenGrant("b", TokenScope.ADMIN)
    run = TokenGrant("c", TokenScope.RUN, job_glob="reports/*")
    assert read.denial(ApiAction.READ) is None and "read" in read.denial(ApiAction.RUN)
    assert admin.denial(ApiAction.ADMIN) is None
    assert run.denial(ApiAction.RUN, ["reports/daily.sh"]) is None
    assert "reports/*" in run.denial(ApiAction.RUN, ["reports/daily.sh", "etl/load.py"])
    assert run.denial(ApiAction.ADMIN) is not None
    assert TokenGrant("d", TokenScope.RUN).denial(ApiAction.RUN, ["anything"]) is None


def test_expiry_text_is_checked_and_a_stored_token_without_scope_is_an_admin_token():
    assert parse_expiry("90d") == timedelta(days=90) and parse_expiry("12h") == timedelta(hours=12)
    for bad in ("90", "0d", "soon", "99999w"):
        with pytest.raises(InvalidTokenSetting, match="expires"):
            parse_expiry(bad)
    with pytest.raises(InvalidTokenSetting, match="scope"):
        TokenScope.parse("write")
    assert TokenGrant.from_doc({"_id": "x"}).scope is TokenScope.ADMIN


# -- the repository -----------------------------------------------------------------------------------

def test_a_token_is_stored_hashed_with_its_scope_and_expires(store, fake_clock):
    token, document = store.tokens.create("ann", "ci", scope=TokenScope.RUN, job_glob="reports/*",
                                          expires_in=timedelta(days=1))
    stored = store.collection(schema.TOKENS).find_one({"_id": document["_id"]})
    assert token.split("_", 2)[2] not in repr(stored) and stored["scope"] == "run" and stored["job"] == "reports/*"
    user = store.tokens.authenticate(token)
    assert user["_id"] == "ann" and user["token"]["scope"] == "run"
    fake_clock.advance(days=1)
    with pytest.raises(AuthError, match="expired"):
        store.tokens.authenticate(token)


def test_a_job_glob_needs_scope_run(store):
    with pytest.raises(InvalidTokenSetting, match="job"):
        store.tokens.create("ann", job_glob="x*")


def test_a_token_from_before_scopes_still_acts_as_its_user(store):
    token, document = store.tokens.create("ann")
    store.collection(schema.TOKENS).update_one({"_id": document["_id"]},
                                               {"$unset": {"scope": "", "job": "", "expires_at": ""}})
    assert TokenGrant.from_doc(store.tokens.authenticate(token)["token"]).scope is TokenScope.ADMIN


def test_last_use_and_address_are_written_at_most_once_a_minute(store, fake_clock):
    token, document = store.tokens.create("ann")
    tokens = store.collection(schema.TOKENS)
    store.tokens.authenticate(token, address="10.0.0.1")
    first = tokens.find_one({"_id": document["_id"]})
    assert first["last_used_address"] == "10.0.0.1"
    fake_clock.advance(30)
    store.tokens.authenticate(token, address="10.0.0.2")
    assert tokens.find_one({"_id": document["_id"]})["last_used_address"] == "10.0.0.1"
    fake_clock.advance(31)
    store.tokens.authenticate(token, address="10.0.0.2")
    later = tokens.find_one({"_id": document["_id"]})
    assert later["last_used_address"] == "10.0.0.2" and later["last_used_at"] > first["last_used_at"]


# -- the old /api enforces the same rule --------------------------------------------------------------

@pytest.fixture
def app(store):
    from sooner.config import load_settings
    from sooner.webapp import create_app

    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": store.url})
    app, _ = create_app(settings, store, live=False)
    app.config["TESTING"] = True
    for name in ("reports/daily.sh", "etl/load.py"):
        store.jobs.record_deployed(name, commit="c" * 40, blob="b" * 40)
        store.jobs.set_enabled(name, True)
    store.jobs.update_settings("etl/load.py", {}, add_hooks=["data-ready"])
    return app


def _bearer(store, user: str = "ann", **options) -> dict[str, str]:
    token, _ = store.tokens.create(user, **options)
    return {"Authorization": f"Bearer {token}"}


def test_the_old_api_refuses_what_a_tokens_scope_does_not_allow(app, store):
    client = app.test_client()
    read = _bearer(store, scope=TokenScope.READ)
    run = _bearer(store, scope=TokenScope.RUN, job_glob="reports/*")
    assert client.get("/api/jobs", headers=read).status_code == 200
    refused = client.post("/api/jobs/reports/daily.sh/runs", headers=read)
    assert refused.status_code == 403 and "read" in refused.json["error"]
    started = client.post("/api/jobs/reports/daily.sh/runs", headers=run)
    assert started.status_code == 201
    assert client.post("/api/jobs/etl/load.py/runs", headers=run).status_code == 403
    assert client.post(f"/api/runs/{started.json['run']['id']}/cancel", headers=run).status_code == 200
    # an event starting etl/load.py is outside the glob; one hooked to nothing is not
    assert client.post("/api/events/data-ready", headers=run).status_code == 403
    assert client.post("/api/events/nothing-hooked", headers=run).status_code == 201
    assert client.post(f"/api/runs/{started.json['run']['id']}/move", headers=run,
                       json={"any": True}).status_code == 403
    # a scope never widens the role: a viewer's admin token still cannot start runs
    assert client.post("/api/jobs/reports/daily.sh/runs", headers=_bearer(store, "vic")).status_code == 403


def test_an_expired_token_gets_401(app, store, fake_clock):
    headers = _bearer(store, expires_in=timedelta(minutes=5))
    client = app.test_client()
    assert client.get("/api/jobs", headers=headers).status_code == 200
    fake_clock.advance(minutes=5)
    answer = client.get("/api/jobs", headers=headers)
    assert answer.status_code == 401 and "expired" in answer.json["error"]


# -- the account page -----------------------------------------------------------------------------------

def test_the_account_page_creates_lists_and_revokes_scoped_tokens(mock_web_app):
    # on the system clock: mongomock expires sessions (a TTL index) by the real time
    app, _, _ = mock_web_app
    store = app.extensions["sooner"].store
    client = signed_in(app, "admin", "admin-password", landing="/account")
    created = client.post("/account/tokens", data={"csrf_token": client.csrf, "name": "deploy bot", "scope": "run",
                                                   "job": "reports/*", "expires": "90d"})
    assert created.status_code == 201
    token = re.search(r'id="token-value">([^<]+)<', created.text).group(1)
    assert store.tokens.authenticate(token)["token"]["job"] == "reports/*"
    page = client.get("/account").text
    assert "reports/*" in page and "run" in page and token not in page
    bad = client.post("/account/tokens", data={"csrf_token": client.csrf, "scope": "read", "expires": "forever"})
    assert bad.status_code == 400 and "expires:" in bad.text
    assert client.post("/account/tokens", data={"scope": "read"}).status_code == 400  # no CSRF token
    token_id = token.split("_")[1]
    revoked = client.post(f"/account/tokens/{token_id}/revoke", data={"csrf_token": csrf_of(page)})
    assert revoked.status_code == 302 and token_id not in [t["_id"] for t in store.tokens.list("admin")]
    with pytest.raises(AuthError):
        store.tokens.authenticate(token)


# -- the CLI (a real process on a real site) ----------------------------------------------------------------

def test_the_cli_creates_lists_and_revokes_scoped_tokens(site):
    config = str(site / "config.json")
    assert run_sooner("--config", config, "user", "add", "cli-user", "--password-stdin", input="cli-password\n",
                      cwd=site).returncode == 0
    created = run_sooner("--config", config, "token", "create", "cli-user", "--scope", "run", "--job", "reports/*",
                         "--expires", "90d", cwd=site)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    token_id = token.split("_")[1]
    listing = run_sooner("--config", config, "token", "list", "cli-user", cwd=site).stdout
    assert token_id in listing and "run reports/*" in listing and token not in listing
    bad = run_sooner("--config", config, "token", "create", "cli-user", "--expires", "tomorrow", cwd=site)
    assert bad.returncode != 0 and "expires:" in bad.stderr and "Traceback" not in bad.stderr
    glob_without_run = run_sooner("--config", config, "token", "create", "cli-user", "--job", "x*", cwd=site)
    assert glob_without_run.returncode != 0 and "scope 'run'" in glob_without_run.stderr
    assert run_sooner("--config", config, "token", "revoke", token_id, cwd=site).returncode == 0
    assert token_id not in run_sooner("--config", config, "token", "list", cwd=site).stdout


def test_admins_see_everyones_tokens_and_revoke_them_viewers_may_not(mock_web_app):
    app, _, _ = mock_web_app
    store = app.extensions["sooner"].store
    token, document = store.tokens.create("viewer", "laptop", scope=TokenScope.READ)
    admin = signed_in(app, "admin", "admin-password", landing="/admin/users")
    page = admin.get("/admin/users")
    assert page.status_code == 200 and document["_id"] in page.text and "laptop" in page.text
    assert token not in page.text
    assert admin.post(f"/admin/tokens/{document['_id']}/revoke").status_code == 400  # no CSRF token
    assert admin.post(f"/admin/tokens/{document['_id']}/revoke", data={"csrf_token": admin.csrf}).status_code == 302
    assert store.tokens.list("viewer") == []
    viewer = signed_in(app, "viewer", "viewer-password")
    assert viewer.get("/admin/users").status_code == 403
