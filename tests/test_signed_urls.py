"""Signed trigger URLs: `sooner sign` makes them; GET /t/<token> on a real HTTP server queues (and waits for) a run."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import timedelta
from types import SimpleNamespace

import pytest

from conftest import served, run_sooner
from sooner.clock import FakeClock, utcnow
from sooner.config import load_settings
from sooner.errors import SoonerError
from sooner.model import RunStatus
from sooner.model.signed_url import InvalidSignedUrl, parse_expires, sign, signing_key, verify
from sooner.model.trigger import SignedUrlTrigger
from sooner.store import Store
from sooner.webapp import create_app
from sooner.webapp.signed import signed_limit
from sooner.worker.testing import deploy_files

SECRET_KEY = "k" * 40
SCRIPTS = {
    "hello.sh": '#!/bin/sh\necho "hello $SOONER_DATA"\n',
    "result.py": "#!/usr/bin/env python3\nfrom sooner import api\napi.emit('result', {'sum': 1 + 2})\n",
}


@pytest.fixture
def web(embedded_store):
    clock = FakeClock(utcnow())
    store = Store(embedded_store.url, embedded_store.database_name, clock=clock)
    settings = load_settings(None, environ={}, overrides={
        "secret_key": SECRET_KEY, "mongo_url": store.url, "database": store.database_name})
    deploy_files(store, SCRIPTS)
    app, _ = create_app(settings, store, live=False)
    with served(app) as base:
        yield SimpleNamespace(base=base, clock=clock, store=store, settings=settings, app=app,
                              key=signing_key(SECRET_KEY))
    store.close()


@pytest.fixture
def worker_store(web):
    store = Store(web.store.url, web.store.database_name)
    yield store
    store.close()


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=90) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_a_signed_url_queues_a_run_with_the_signed_data(web):
    token = sign(web.key, "hello.sh", {"name": "ada"}, web.clock.now() + timedelta(days=7))
    assert "/" not in token and "+" not in token and "=" not in token
    status, _, body = get(f"{web.base}/t/{token}")
    assert status == 202
    answer = json.loads(body)
    run = web.store.runs.get(answer["run"])
    assert run.job == "hello.sh" and run.data == {"name": "ada"} and run.status is RunStatus.QUEUED
    assert isinstance(run.trigger, SignedUrlTrigger) and run.trigger.describe().startswith("signed_url (URL valid")
    assert answer["url"].endswith(f"/runs/{run.id}")


def test_a_tampered_url_is_403_and_starts_nothing(web):
    token = sign(web.key, "hello.sh", {"n": 1}, web.clock.now() + timedelta(days=1))
    other = sign(web.key, "result.py", None, web.clock.now() + timedelta(days=1))
    body, mac = token.split(".")
    forged = [
        f"{other.split('.')[0]}.{mac}",  # another job's body under this signature
        f"{body[:-2]}{'A' if body[-2] != 'A' else 'B'}{body[-1]}.{mac}",  # one character changed
        f"{body}.{mac[:-1]}",  # a shortened signature
        sign(signing_key("another-site-key-" * 3), "hello.sh", {"n": 1}, web.clock.now() + timedelta(days=1)),
        "not-a-token",
        f"{body}.{mac}.x",
    ]
    for token in forged:
        status, _, answer = get(f"{web.base}/t/{token}")
        assert status == 403, token
        assert "error" in json.loads(answer)
    assert web.store.runs.collection.count_documents({}) == 0


def test_an_expired_url_is_403_with_a_message(web):
    token = sign(web.key, "hello.sh", None, web.clock.now() + timedelta(hours=1))
    web.clock.advance(3599)
    assert get(f"{web.base}/t/{token}")[0] == 202
    web.clock.advance(1)
    status, _, answer = get(f"{web.base}/t/{token}")
    assert status == 403 and "expired" in json.loads(answer)["error"]
    assert web.store.runs.collection.count_documents({}) == 1


def test_a_bad_wait_is_400(web):
    token = sign(web.key, "hello.sh", None, web.clock.now() + timedelta(hours=1))
    for wait in ("61", "-1", "soon"):
        status, _, answer = get(f"{web.base}/t/{token}?wait={wait}")
        assert status == 400 and "wait" in json.loads(answer)["error"]
    assert web.store.runs.collection.count_documents({}) == 0


def test_wait_returns_the_output_of_the_run_once_it_ends(web, worker_store, start_worker):
    start_worker(worker_store, web.settings, "w1")
    token = sign(web.key, "hello.sh", "ada", web.clock.now() + timedelta(hours=1))
    status, headers, body = get(f"{web.base}/t/{token}?wait=30")
    assert status == 200, body
    assert body.decode().strip() == 'hello "ada"'
    assert headers["X-Sooner-Status"] == "succeeded"
    assert web.store.runs.get(headers["X-Sooner-Run"]).status is RunStatus.SUCCEEDED


def test_wait_returns_the_last_emitted_event_as_json(web, worker_store, start_worker):
    start_worker(worker_store, web.settings, "w1")
    token = sign(web.key, "result.py", None, web.clock.now() + timedelta(hours=1))
    status, headers, body = get(f"{web.base}/t/{token}?wait=30")
    assert status == 200, body
    answer = json.loads(body)
    assert answer["event"] == {"name": "result", "data": {"sum": 3}} and answer["status"] == "succeeded"


def test_wait_answers_202_with_the_run_url_when_the_run_does_not_end_in_time(web):
    token = sign(web.key, "hello.sh", None, web.clock.now() + timedelta(hours=1))
    status, _, body = get(f"{web.base}/t/{token}?wait=0.3")  # no worker: it stays queued
    assert status == 202
    assert json.loads(body)["status"] == "queued"


def test_signed_urls_are_rate_limited_per_job(web):
    token = sign(web.key, "hello.sh", None, web.clock.now() + timedelta(hours=1))
    with web.app.app_context():
        signed_limit().burst = 2
    statuses = [get(f"{web.base}/t/{token}")[0] for _ in range(3)]
    assert statuses == [202, 202, 429]
    web.clock.advance(2)
    assert get(f"{web.base}/t/{token}")[0] == 202


def test_the_signing_key_is_not_the_session_key_and_tokens_check_their_data():
    assert signing_key(SECRET_KEY) != SECRET_KEY.encode()
    key = signing_key(SECRET_KEY)
    now = utcnow()
    token = sign(key, "a.sh", {"x": [1, 2]}, now + timedelta(minutes=5))
    assert verify(key, token, now).data == {"x": [1, 2]}
    with pytest.raises(SoonerError, match="at most 4096"):
        sign(key, "a.sh", "x" * 5000, now)
    for text in ("7x", "0d", "400d", "", "d7"):
        with pytest.raises(InvalidSignedUrl):
            parse_expires(text)
    assert parse_expires("7d") == timedelta(days=7) and parse_expires("90s") == timedelta(seconds=90)


def test_sooner_sign_prints_a_url_that_works(site):
    from sooner.store import open_store

    store = open_store(load_settings(site / "config.json", environ={}))
    try:
        deploy_files(store, {"hello.sh": "#!/bin/sh\necho hi\n"})
    finally:
        store.close()
    signed = run_sooner("sign", "hello.sh", "--data", '{"a": 1}', "--expires", "2h", "--base-url",
                        "https://ci.example.com/", cwd=site)
    assert signed.returncode == 0, signed.stderr
    url = signed.stdout.strip()
    assert url.startswith("https://ci.example.com/t/") and "valid until" in signed.stderr
    settings = load_settings(site / "config.json", environ={})
    request = verify(signing_key(settings.secret_key or ""), url.rsplit("/", 1)[1], utcnow())
    assert request.job == "hello.sh" and request.data == {"a": 1}
    for args, message in ((("sign", "hello.sh", "--data", "{bad"), "--data"),
                          (("sign", "hello.sh", "--expires", "soon"), "expiry"),
                          (("sign", "nope.sh"), "nope.sh")):
        refused = run_sooner(*args, cwd=site)
        assert refused.returncode != 0 and message in refused.stderr and "Traceback" not in refused.stderr
