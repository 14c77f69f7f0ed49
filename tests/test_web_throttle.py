"""Sign-in and API-token throttling: bounded hash work, exponential backoff per (address, account), per address.

Through real HTTP servers: the app served in-process by werkzeug on the
embedded database with a fake clock (backoff, lockout, token guesses), and
`sooner web` as a real process at the production argon2 cost (memory under 24
concurrent failed sign-ins, 200 token guesses). Addresses come from
``X-Forwarded-For`` behind one trusted proxy hop.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from types import SimpleNamespace

import psutil
import pytest
from argon2 import PasswordHasher

from sooner.clock import FakeClock, utcnow
from sooner.config import load_settings
from sooner.site import init_site
from sooner.store import Store, open_store
from sooner.store.embedded import EmbeddedServer
from sooner.webapp import create_app
from sooner.webapp.throttle import AuthThrottle, Backoff, FailureLedger
from sooner.webapp.testing import WebServer

from conftest import csrf_of
from test_web_sessions import Browser, served

PASSWORD = "throttle-test-password"
WRONG = "not-the-password"
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
ATTACKER, USER = "203.0.113.7", "198.51.100.20"


@pytest.fixture
def clocked(embedded_store, monkeypatch):
    """The web app behind one trusted proxy on the embedded database, on a fake clock; user admin exists."""
    monkeypatch.setattr("sooner.store.users._passwords", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
    clock = FakeClock(utcnow())  # not a fixed date: the database's TTL index deletes sessions on real time
    store = Store(embedded_store.url, embedded_store.database_name, clock=clock)
    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": store.url,
                                                          "database": store.database_name})
    app, _ = create_app(settings, store, live=False, trusted_proxies=1)
    store.users.add("admin", PASSWORD, admin=True)
    with served(app) as base:
        yield SimpleNamespace(base=base, clock=clock, store=store, app=app,
                              throttle=app.extensions["sooner"].throttle)
    store.close()


def at(base: str, address: str) -> Browser:
    """A browser whose requests come from ``address`` (through the trusted proxy), with the login form's token."""
    browser = Browser(base, {"X-Forwarded-For": address})
    browser.csrf = csrf_of(browser.get("/login").text)
    return browser


def sign_in(browser: Browser, name: str, password: str):
    return browser.post("/login", {"username": name, "password": password, "csrf_token": browser.csrf})


def test_after_200_wrong_passwords_the_right_one_works_again_once_the_backoff_has_passed(clocked):
    attacker = at(clocked.base, ATTACKER)
    answers = [sign_in(attacker, "admin", WRONG) for _ in range(200)]
    assert [a.status for a in answers[:5]] == [401] * 5
    assert {a.status for a in answers[5:]} == {429}
    assert {a.headers["Retry-After"] for a in answers[5:]} == {"1"}, "refused attempts do not extend the lockout"
    # the real user at the same address waits no longer than the backoff
    refused = sign_in(attacker, "admin", PASSWORD)
    assert refused.status == 429 and refused.headers["Retry-After"] == "1"
    clocked.clock.advance(1)
    assert sign_in(attacker, "admin", PASSWORD).status == 302


def test_the_backoff_doubles_with_each_failure_and_stops_at_five_minutes(clocked):
    attacker = at(clocked.base, ATTACKER)
    for _ in range(5):
        assert sign_in(attacker, "admin", WRONG).status == 401
    waits = []
    for _ in range(11):
        refused = sign_in(attacker, "admin", WRONG)
        assert refused.status == 429
        waits.append(int(refused.headers["Retry-After"]))
        clocked.clock.advance(waits[-1])
        assert sign_in(attacker, "admin", WRONG).status == 401
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]


def test_failures_from_one_address_never_lock_the_user_out_elsewhere(clocked):
    attacker = at(clocked.base, ATTACKER)
    for _ in range(200):
        sign_in(attacker, "admin", WRONG)
    assert sign_in(at(clocked.base, USER), "admin", PASSWORD).status == 302


def test_one_address_trying_many_names_is_slowed_down_as_a_whole(clocked):
    attacker = at(clocked.base, ATTACKER)
    assert [sign_in(attacker, f"nobody{i}", WRONG).status for i in range(20)] == [401] * 20
    refused = sign_in(attacker, "somebody-new", WRONG)
    assert refused.status == 429 and refused.headers["Retry-After"] == "1"
    assert sign_in(attacker, "admin", PASSWORD).status == 429
    assert sign_in(at(clocked.base, USER), "admin", PASSWORD).status == 302
    clocked.clock.advance(1)
    assert sign_in(attacker, "admin", PASSWORD).status == 302


def test_a_success_forgets_the_failures_of_that_address_and_account(clocked):
    user = at(clocked.base, USER)
    for _ in range(4):
        assert sign_in(user, "admin", WRONG).status == 401
    assert sign_in(user, "admin", PASSWORD).status == 302
    typing = at(clocked.base, USER)
    assert [sign_in(typing, "admin", WRONG).status for _ in range(5)] == [401] * 5


def test_api_token_guesses_are_throttled_per_address(clocked):
    token, _ = clocked.store.tokens.create("admin")
    guesser = Browser(clocked.base, {"X-Forwarded-For": ATTACKER})
    guesses = [guesser.get("/api/jobs", headers={"Authorization": f"Bearer sooner_{i:016x}_{'x' * 43}"})
               for i in range(200)]
    assert [g.status for g in guesses[:10]] == [401] * 10
    assert {g.status for g in guesses[10:]} == {429}
    assert {g.headers["Retry-After"] for g in guesses[10:]} == {"1"}
    assert "error" in guesses[-1].text
    real = {"Authorization": f"Bearer {token}"}
    assert Browser(clocked.base, {"X-Forwarded-For": USER}).get("/api/jobs", headers=real).status == 200
    assert guesser.get("/api/jobs", headers=real).status == 429
    clocked.clock.advance(1)
    assert guesser.get("/api/jobs", headers=real).status == 200


def test_sign_ins_beyond_the_hash_slots_get_429_quickly_and_do_not_count_as_failures(clocked):
    slots = clocked.throttle.password_slots
    assert slots.try_acquire(0) and slots.try_acquire(0)  # both slots busy
    try:
        started = time.monotonic()
        busy = sign_in(at(clocked.base, USER), "admin", WRONG)
        assert busy.status == 429 and busy.headers["Retry-After"] == "1"
        assert time.monotonic() - started < 5
    finally:
        slots.release()
        slots.release()
    user = at(clocked.base, USER)
    assert [sign_in(user, "admin", WRONG).status for _ in range(5)] == [401] * 5


# -- the failure ledger: bounded, and it never forgets the active keys ------------------------------

def test_the_ledger_holds_at_most_its_capacity_and_keeps_the_keys_still_failing(caplog):
    clock = FakeClock(T0)
    throttle = AuthThrottle(clock, capacity=100)
    for _ in range(30):
        throttle.login_failed(ATTACKER, "admin")
    blocked = throttle.login_wait(ATTACKER, "admin")
    assert blocked > 0
    with caplog.at_level(logging.WARNING, logger="sooner.webapp.auth"):
        for i in range(10_001):  # more addresses than the old throttle's reset point, each failing once
            throttle.login_failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "admin")
            if i % 20 == 0:
                assert throttle.login_wait(ATTACKER, "admin") == blocked  # still trying: never forgotten
    assert len(throttle.failures) <= 100
    assert throttle.login_wait(ATTACKER, "admin") == blocked
    assert "full" in caplog.text


def test_the_ledger_forgets_a_key_an_hour_after_its_last_failure():
    clock = FakeClock(T0)
    ledger = FailureLedger(clock, capacity=10, forget_s=3600)
    for _ in range(8):
        ledger.failed("k", Backoff(free=5))
    assert ledger.wait("k") > 0
    clock.advance(3601)
    assert ledger.wait("k") == 0 and len(ledger) == 0


# -- `sooner web` as a real process, production argon2 cost ----------------------------------------

@pytest.fixture(scope="module")
def production(tmp_path_factory):
    root = tmp_path_factory.mktemp("throttle")
    settings = init_site(root / "site")
    config = root / "site" / "config.json"
    config.write_text(config.read_text().replace('"web_trusted_proxies": 0', '"web_trusted_proxies": 1'))
    store = open_store(settings)
    store.users.add("admin", PASSWORD, admin=True)
    web = WebServer(config, root / "web.log")
    try:
        web.wait_ready()
        worker = psutil.Process(web.process.pid).children()[0]  # gunicorn's one worker serves the requests
        yield SimpleNamespace(base=web.base_url, store=store, worker=worker)
    finally:  # a server that failed to start is stopped too
        web.stop()
        store.close()
        EmbeddedServer(settings.state_dir).stop()


@pytest.mark.slow
def test_24_concurrent_failed_sign_ins_keep_the_web_process_memory_bounded(production):
    browsers = [at(production.base, f"192.0.2.{i + 1}") for i in range(24)]
    baseline = production.worker.memory_info().rss
    peak, done = [baseline], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(production.worker.memory_info().rss)
            done.wait(0.005)
    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda b: sign_in(b[1], f"guess{b[0]}", WRONG), enumerate(browsers)))
    elapsed = time.monotonic() - started
    done.set()
    sampler.join()
    grown_mb = (max(peak) - baseline) / 2 ** 20
    statuses = [a.status for a in answers]
    print(f"\n24 concurrent failed sign-ins: RSS {baseline / 2 ** 20:.0f} MB -> peak {max(peak) / 2 ** 20:.0f} MB "
          f"(+{grown_mb:.0f} MB), {statuses.count(401)}x401 {statuses.count(429)}x429 in {elapsed:.1f} s")
    assert set(statuses) <= {401, 429}
    assert all(a.headers["Retry-After"] for a in answers if a.status == 429)
    assert grown_mb < 350, f"the web process grew by {grown_mb:.0f} MB"


@pytest.mark.slow
def test_200_token_guesses_from_one_address_get_429_after_a_few(production):
    guesser = Browser(production.base, {"X-Forwarded-For": "192.0.2.200"})
    started = time.monotonic()
    statuses = [guesser.get("/api/jobs", headers={"Authorization": f"Bearer sooner_{i:016x}_{'y' * 43}"}).status
                for i in range(200)]
    elapsed = time.monotonic() - started
    answered = statuses.index(429) if 429 in statuses else len(statuses)
    print(f"\n200 token guesses: {answered} answered (401) before the first 429, {statuses.count(429)}x429 "
          f"in {elapsed:.1f} s")
    assert answered == 10
    # Real time passes here: each backoff that ends during the run lets one more guess through (1 s, 2 s, 4 s …).
    assert statuses.count(401) <= 10 + math.ceil(math.log2(elapsed + 1)) + 1
