"""The web process's cache of verified API tokens (``web_token_cache_s``): a poll within the TTL is not
verified again, and revocation, a user's epoch change, expiry, scopes and the failure throttle still hold;
another process's change counts within the TTL, this process's at once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from argon2 import PasswordHasher

from conftest import signed_in
from sooner.config import load_settings
from sooner.errors import ConfigError
from sooner.model.token import TokenScope
from sooner.store import Store, schema
from sooner.store.token_cache import DEFAULT_CAPACITY, TokenCache

JOB = "reports/daily.sh"
TTL = 10.0


class CountingHasher(PasswordHasher):
    """The token hasher's cheap setting, counting every verify (each one is argon2 work a poll pays)."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # noqa: A002 (argon2's own name)
        self.verified += 1
        return super().verify(hash, password)


@pytest.fixture
def hasher(monkeypatch, fast_passwords) -> CountingHasher:
    counting = CountingHasher()
    monkeypatch.setattr("sooner.store.users._token_hasher", counting)
    return counting


@pytest.fixture
def store(clocked_store: Store, hasher) -> Store:
    clocked_store.users.add("ann", "ann-password", admin=True)
    clocked_store.jobs.record_deployed(JOB, commit="c" * 40, blob="b" * 40)
    clocked_store.jobs.set_enabled(JOB, True)
    return clocked_store


def make_app(store: Store, ttl_s: float = TTL):
    from sooner.webapp import create_app

    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": store.url,
                                                          "web_token_cache_s": ttl_s})
    app, _ = create_app(settings, store, live=False)
    app.config["TESTING"] = True
    return app


def other_process(store: Store) -> Store:
    """Another process's store: the same database and clock, its own repositories (and cache)."""
    return Store(store.url, "sooner", clock=store.clock)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def poll(client, token: str) -> int:
    return client.get("/api/v1/workers", headers=bearer(token)).status_code


def start_run(client, token: str) -> int:
    return client.post(f"/api/v1/jobs/{JOB}/runs", headers=bearer(token), json={}).status_code


def test_a_token_verified_moments_ago_is_not_verified_again_until_the_ttl_passes(store, hasher, fake_clock):
    token, _ = store.tokens.create("ann")
    client = make_app(store).test_client()
    assert [poll(client, token) for _ in range(20)] == [200] * 20
    assert hasher.verified == 1
    fake_clock.advance(TTL - 0.5)
    assert poll(client, token) == 200 and hasher.verified == 1
    fake_clock.advance(0.5)
    assert poll(client, token) == 200 and hasher.verified == 2


def test_with_the_cache_off_every_request_is_verified(store, hasher):
    token, _ = store.tokens.create("ann")
    client = make_app(store, ttl_s=0).test_client()
    assert [poll(client, token) for _ in range(5)] == [200] * 5
    assert hasher.verified == 5 and store.tokens.cache is None


def test_a_revocation_in_this_process_refuses_the_token_at_once(mock_store, hasher):
    # On the system clock: mongomock's TTL index would drop a session stamped with the fake clock's time.
    store = mock_store
    store.users.add("ann", "ann-password", admin=True)
    token, document = store.tokens.create("ann")
    app = make_app(store)
    client = app.test_client()
    assert poll(client, token) == 200
    page = signed_in(app, "ann", "ann-password", landing="/account")
    revoked = page.post(f"/account/tokens/{document['_id']}/revoke", data={"csrf_token": page.csrf})
    assert revoked.status_code == 302
    assert poll(client, token) == 401


def test_a_revocation_in_another_process_counts_within_the_ttl(store, fake_clock):
    token, document = store.tokens.create("ann")
    client = make_app(store).test_client()
    assert poll(client, token) == 200
    other_process(store).tokens.revoke(document["_id"])  # `sooner token revoke` elsewhere
    assert poll(client, token) == 200  # the documented staleness: this process verified it moments ago
    fake_clock.advance(TTL)
    assert poll(client, token) == 401


def test_a_role_change_counts_at_once_here_and_within_the_ttl_from_another_process(store, fake_clock):
    token, _ = store.tokens.create("ann")
    client = make_app(store).test_client()
    assert start_run(client, token) == 201
    store.users.set_role("ann", "viewer")  # through this web process's store: its epoch moves
    assert start_run(client, token) == 403
    store.users.set_role("ann", "admin")
    assert start_run(client, token) == 201
    other_process(store).users.set_role("ann", "viewer")
    fake_clock.advance(TTL)
    assert start_run(client, token) == 403


def test_a_password_change_or_removal_of_the_user_drops_its_cached_tokens(store, fake_clock):
    token, _ = store.tokens.create("ann")
    client = make_app(store).test_client()
    assert poll(client, token) == 200
    epoch = store.users.get("ann")["epoch"]
    store.users.set_password("ann", "another-password")
    assert store.users.get("ann")["epoch"] == epoch + 1 and len(store.tokens.cache) == 0
    assert poll(client, token) == 200
    other_process(store).users.remove("ann")
    fake_clock.advance(TTL)
    assert poll(client, token) == 401


def test_an_expiring_token_is_refused_when_it_expires_even_within_the_ttl(store, fake_clock):
    token, _ = store.tokens.create("ann", expires_in=timedelta(seconds=5))
    client = make_app(store).test_client()
    assert poll(client, token) == 200
    fake_clock.advance(5)
    answer = client.get("/api/v1/workers", headers=bearer(token))
    assert answer.status_code == 401 and "expired" in answer.json["error"]["message"]


def test_a_cached_token_keeps_its_scope(store):
    read, _ = store.tokens.create("ann", scope=TokenScope.READ)
    elsewhere, _ = store.tokens.create("ann", scope=TokenScope.RUN, job_glob="etl/*")
    client = make_app(store).test_client()
    for _ in range(2):  # the first verifies, the second is answered from the cache
        assert poll(client, read) == 200 and start_run(client, read) == 403
        assert start_run(client, elsewhere) == 403


def test_wrong_tokens_are_never_cached_and_still_back_off(store, hasher):
    token, document = store.tokens.create("ann")
    wrong = f"sooner_{document['_id']}_{'x' * 43}"
    client = make_app(store).test_client()
    statuses = [poll(client, wrong) for _ in range(12)]
    assert statuses[:10] == [401] * 10 and statuses[-1] == 429
    assert len(store.tokens.cache) == 0 and hasher.verified == statuses.count(401)
    assert poll(client, token) == 429  # the address backs off, cached or not, as before the cache


def test_last_use_is_still_written_at_most_once_a_minute(store, fake_clock):
    token, document = store.tokens.create("ann")
    client = make_app(store).test_client()
    seen = set()
    for _ in range(60):  # a poll every 2 s for two minutes
        assert poll(client, token) == 200
        seen.add(store.collection(schema.TOKENS).find_one({"_id": document["_id"]})["last_used_at"])
        fake_clock.advance(2)
    assert 2 <= len(seen) <= 3


def test_the_cache_holds_at_most_its_capacity_and_drops_the_least_recently_used(fake_clock):
    cache = TokenCache(fake_clock, TTL, capacity=2)
    now = fake_clock.now()
    for name in ("a", "b"):
        cache.put(cache.ticket(), f"token-{name}", {"_id": name, "token": {"id": name, "scope": "admin"}})
    assert cache.get("token-a", now) is not None  # a is now the most recently used
    cache.put(cache.ticket(), "token-c", {"_id": "c", "token": {"id": "c", "scope": "admin"}})
    assert len(cache) == 2 and cache.get("token-b", now) is None
    assert cache.get("token-a", now)["_id"] == "a" and cache.get("token-c", now)["_id"] == "c"
    assert TokenCache(fake_clock, TTL).capacity == DEFAULT_CAPACITY == 1000


def test_a_verification_that_raced_with_a_revocation_is_not_remembered(fake_clock):
    cache = TokenCache(fake_clock, TTL)
    ticket = cache.ticket()  # a request read the token document here ...
    cache.forget(token_id="t1")  # ... then another thread of this process revoked it
    cache.put(ticket, "token", {"_id": "ann", "token": {"id": "t1", "scope": "admin"}})
    assert cache.get("token", fake_clock.now()) is None and len(cache) == 0


def test_the_ttl_setting_is_checked():
    assert load_settings(None, environ={}).web_token_cache_s == 10.0
    assert load_settings(None, environ={"SOONER_WEB_TOKEN_CACHE_S": "0"}).web_token_cache_s == 0.0
    for bad in ("-1", "301", "nan"):
        with pytest.raises(ConfigError, match="web_token_cache_s"):
            load_settings(None, environ={"SOONER_WEB_TOKEN_CACHE_S": bad})
