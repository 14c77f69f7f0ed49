"""Webhooks: each provider's signature, duplicates, the delivery log, and accepted = stored.

Requests go to a real HTTP server (werkzeug, threads) in front of the web app,
on the embedded nx-27017 server, with a fake clock for the replay window.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

from conftest import served, run_sooner, wait_for
from sooner.clock import FakeClock, utcnow
from sooner.config import load_settings
from sooner.model import FINISHED, RunStatus
from sooner.model.trigger import WebhookTrigger, trigger_from_doc
from sooner.model.webhook import InvalidHook, make_hook
from sooner.store import Store
from sooner.webapp import create_app
from sooner.webapp.hooks import hook_limit
from sooner.worker.testing import deploy_files

SECRET = "s3cret-for-tests"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
PUSH = {"ref": "refs/heads/main", "compare": "https://example.com/compare/1",
        "head_commit": {"message": "Fix the thing", "url": "https://example.com/c/abc",
                        "author": {"name": "Ada L", "email": "ada@example.com", "username": "ada"}},
        "pusher": {"name": "ada", "email": "ada@example.com"}}


@pytest.fixture
def web(embedded_store):
    """The web app on the embedded database (fake clock) behind a real HTTP server, job hello.sh deployed."""
    clock = FakeClock(utcnow())  # not a fixed date: the database's TTL indexes work on real time
    store = Store(embedded_store.url, embedded_store.database_name, clock=clock)
    settings = load_settings(None, environ={}, overrides={
        "secret_key": "k" * 40, "mongo_url": store.url, "database": store.database_name})
    deploy_files(store, {"hello.sh": '#!/bin/sh\nprintf "%s\\n" "$SOONER_DATA"\n'})
    app, _ = create_app(settings, store, live=False)
    with served(app) as base:
        yield SimpleNamespace(base=base, clock=clock, store=store, settings=settings, app=app)
    store.close()


def post(base: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(base + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed_headers(provider: str, body: bytes, delivery: str, *, secret: str = SECRET, now: float = 0.0,
                   event: str = "push") -> dict[str, str]:
    """What each provider sends for ``body``."""
    if provider == "github":
        return {"X-Hub-Signature-256": "sha256=" + hex_hmac(secret, body), "X-GitHub-Delivery": delivery,
                "X-GitHub-Event": event}
    if provider == "gitlab":
        return {"X-Gitlab-Token": secret, "X-Gitlab-Event-UUID": delivery, "X-Gitlab-Event": "Push Hook"}
    if provider == "gitea":
        return {"X-Gitea-Signature": hex_hmac(secret, body), "X-Gitea-Delivery": delivery, "X-Gitea-Event": event}
    if provider == "forgejo":
        return {"X-Forgejo-Signature": hex_hmac(secret, body), "X-Forgejo-Delivery": delivery,
                "X-Forgejo-Event": event}
    stamp = str(int(now))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signature = base64.b64encode(hmac.new(key, f"{delivery}.{stamp}.".encode() + body, hashlib.sha256).digest())
    return {"webhook-id": delivery, "webhook-timestamp": stamp, "webhook-signature": f"v1,{signature.decode()}"}


def payload_for(provider: str) -> dict:
    if provider == "gitlab":
        return {"object_kind": "push", "ref": "refs/heads/main", "user_name": "Ada L", "user_email": "ada@example.com",
                "user_username": "ada", "commits": [{"message": "Fix the thing", "url": "https://example.com/c/abc"}]}
    if provider == "standard":
        return {"type": "push", "ref": "refs/heads/main", "data": {"n": 1}}
    return PUSH


def add_hook(store: Store, provider: str, name: str = "h1", **options) -> None:
    secret = STANDARD_SECRET if provider == "standard" else SECRET
    store.hooks.add(make_hook(provider, name, "hello.sh", secret=options.pop("secret", secret), **options))


PROVIDERS = ["github", "gitlab", "gitea", "forgejo", "standard"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_signed_delivery_is_stored_as_a_queued_run_before_the_answer(web, provider):
    # given a hook for the provider
    add_hook(web.store, provider)
    body = json.dumps(payload_for(provider)).encode()
    secret = STANDARD_SECRET if provider == "standard" else SECRET
    # when it delivers a signed push
    status, answer = post(web.base, f"/hooks/{provider}/h1", body,
                          signed_headers(provider, body, "d-1", secret=secret, now=web.clock.now().timestamp()))
    # then the answer is 202 and names a run that is in the database already, with the payload as its data
    assert status == 202, answer
    run = web.store.runs.get(answer["run"])
    assert run.status is RunStatus.QUEUED and run.job == "hello.sh"
    assert run.data == payload_for(provider)
    assert answer["url"].endswith(f"/runs/{run.id}")
    trigger = run.trigger
    assert isinstance(trigger, WebhookTrigger)
    assert (trigger.provider, trigger.hook, trigger.delivery, trigger.event, trigger.branch) == (
        provider, "h1", "d-1", "push", "main")
    stored = web.store.runs.collection.find_one({"_id": run.id})["trigger"]
    assert stored["type"] == "webhook"
    assert stored["source"] == {"type": "webhook", "provider": provider, "hook": "h1", "delivery": "d-1"}
    if provider != "standard":
        assert stored["author"] == {"name": "Ada L", "email": "ada@example.com", "username": "ada"}
        assert stored["message"] == "Fix the thing" and stored["url"] == "https://example.com/c/abc"
    assert "timestamp" in stored
    assert trigger.describe().startswith(f"webhook {provider}/h1 push main")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_wrongly_signed_delivery_is_refused_with_401_and_logged(web, provider):
    add_hook(web.store, provider)
    body = json.dumps(payload_for(provider)).encode()
    wrong = "whsec_" + base64.b64encode(b"x" * 24).decode() if provider == "standard" else "not-the-secret"
    status, answer = post(web.base, f"/hooks/{provider}/h1", body,
                          signed_headers(provider, body, "d-bad", secret=wrong, now=web.clock.now().timestamp()))
    assert status == 401 and "error" in answer
    assert web.store.runs.collection.count_documents({}) == 0
    log = web.store.deliveries.log("h1")
    assert [(doc["state"], doc["status"], doc.get("delivery")) for doc in log] == [("refused", 401, "d-bad")]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_unsigned_delivery_is_refused_with_401(web, provider):
    add_hook(web.store, provider)
    body = json.dumps(payload_for(provider)).encode()
    status, answer = post(web.base, f"/hooks/{provider}/h1", body, {"X-GitHub-Event": "push"})
    assert status == 401 and "unsigned" in answer["error"]
    assert web.store.runs.collection.count_documents({}) == 0
    assert web.store.deliveries.log("h1")[0]["status"] == 401


def test_a_body_signed_for_different_content_is_refused(web):
    add_hook(web.store, "github")
    body = json.dumps(PUSH).encode()
    headers = signed_headers("github", body, "d-1")
    status, _ = post(web.base, "/hooks/github/h1", body.replace(b"main", b"evil"), headers)
    assert status == 401


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_duplicate_delivery_names_the_first_run_and_starts_no_second(web, provider):
    add_hook(web.store, provider)
    body = json.dumps(payload_for(provider)).encode()
    secret = STANDARD_SECRET if provider == "standard" else SECRET
    headers = signed_headers(provider, body, "dup-1", secret=secret, now=web.clock.now().timestamp())
    first_status, first = post(web.base, f"/hooks/{provider}/h1", body, headers)
    second_status, second = post(web.base, f"/hooks/{provider}/h1", body, headers)
    assert first_status == 202 and second_status == 200
    assert second["run"] == first["run"] and second["duplicate"] is True
    assert web.store.runs.collection.count_documents({}) == 1
    assert web.store.deliveries.log("h1")[0]["duplicates"] == 1


def test_two_concurrent_identical_deliveries_make_one_run(web):
    # given a hook, and many copies of one delivery sent at the same moment
    add_hook(web.store, "github")
    body = json.dumps(PUSH).encode()
    headers = signed_headers("github", body, "race-1")
    answers: list[tuple[int, dict]] = []
    start = threading.Barrier(8)

    def send() -> None:
        start.wait()
        answers.append(post(web.base, "/hooks/github/h1", body, headers))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # then there is one run, every answer names it, and exactly one answer is the first acceptance
    assert len(answers) == 8
    runs = list(web.store.runs.collection.find({}))
    assert len(runs) == 1
    assert {answer["run"] for _, answer in answers} == {runs[0]["_id"]}
    assert all(status in (200, 202) for status, _ in answers)
    assert sum(1 for _, answer in answers if not answer.get("duplicate")) == 1


def test_a_claim_cut_short_is_stored_by_the_next_copy_under_the_same_run_id(web):
    # given a claim of delivery d-1 whose run was never stored (its web process died in between)
    add_hook(web.store, "github")
    body = json.dumps(PUSH).encode()
    assert web.store.deliveries.claim("h1", "d-1", "run-of-the-claim", now=web.clock.now()) is None
    # when a copy arrives while the claim is young, it names the claim's run and stores nothing
    status, answer = post(web.base, "/hooks/github/h1", body, signed_headers("github", body, "d-1"))
    assert (status, answer["run"], answer["duplicate"]) == (202, "run-of-the-claim", True)
    assert web.store.runs.collection.count_documents({}) == 0
    # and when one arrives after 30 s, it stores the run under the claim's id
    web.clock.advance(31)
    status, answer = post(web.base, "/hooks/github/h1", body, signed_headers("github", body, "d-1"))
    assert (status, answer["run"]) == (202, "run-of-the-claim")
    assert web.store.runs.get("run-of-the-claim").status is RunStatus.QUEUED
    status, answer = post(web.base, "/hooks/github/h1", body, signed_headers("github", body, "d-1"))
    assert (status, answer["run"]) == (200, "run-of-the-claim")
    assert web.store.runs.collection.count_documents({}) == 1


def test_standard_webhooks_outside_the_replay_window_are_refused(web):
    add_hook(web.store, "standard")
    body = json.dumps(payload_for("standard")).encode()
    sent_at = web.clock.now().timestamp()
    early = signed_headers("standard", body, "msg-1", secret=STANDARD_SECRET, now=sent_at)
    late = signed_headers("standard", body, "msg-2", secret=STANDARD_SECRET, now=sent_at)
    ahead = signed_headers("standard", body, "msg-3", secret=STANDARD_SECRET, now=sent_at + 302)
    web.clock.advance(299)  # 4 min 59 s after signing: inside the window
    assert post(web.base, "/hooks/standard/h1", body, early)[0] == 202
    web.clock.advance(2)  # a message signed 5 min 1 s ago is a replay
    status, answer = post(web.base, "/hooks/standard/h1", body, late)
    assert status == 401 and "replay window" in answer["error"]
    assert post(web.base, "/hooks/standard/h1", body, ahead)[0] == 202  # 1 s ahead of the clock is fine
    status, _ = post(web.base, "/hooks/standard/h1", body,
                     signed_headers("standard", body, "msg-4", secret=STANDARD_SECRET, now=sent_at + 700))
    assert status == 401  # and one from more than 5 min in the future too
    assert web.store.runs.collection.count_documents({}) == 2


def test_events_and_branches_the_hook_does_not_map_start_nothing(web):
    add_hook(web.store, "github", events=("push",), branches=("release",))
    body = json.dumps(PUSH).encode()  # a push to main
    status, answer = post(web.base, "/hooks/github/h1", body, signed_headers("github", body, "d-1"))
    assert status == 200 and "branch 'main'" in answer["ignored"]
    status, answer = post(web.base, "/hooks/github/h1", body, signed_headers("github", body, "d-2", event="issues"))
    assert status == 200 and "event 'issues'" in answer["ignored"]
    assert web.store.runs.collection.count_documents({}) == 0
    assert [doc["state"] for doc in web.store.deliveries.log("h1")] == ["ignored", "ignored"]


def test_github_ping_is_answered_without_a_run(web):
    add_hook(web.store, "github")
    body = json.dumps({"zen": "Keep it simple."}).encode()
    status, answer = post(web.base, "/hooks/github/h1", body, signed_headers("github", body, "p-1", event="ping"))
    assert status == 200 and answer["ignored"].startswith("ping")
    assert web.store.runs.collection.count_documents({}) == 0


def test_unknown_hooks_wrong_providers_and_odd_names_are_404(web):
    add_hook(web.store, "github")
    body = json.dumps(PUSH).encode()
    headers = signed_headers("github", body, "d-1")
    assert post(web.base, "/hooks/gitlab/h1", body, headers)[0] == 404
    assert post(web.base, "/hooks/github/nope", body, headers)[0] == 404
    assert post(web.base, "/hooks/nosuch/h1", body, headers)[0] == 404
    assert post(web.base, "/hooks/github/%24where", body, headers)[0] == 404


def test_an_oversized_body_is_413_and_bad_json_is_400(web):
    add_hook(web.store, "github")
    big = json.dumps({"ref": "refs/heads/main", "pad": "x" * 100_000}).encode()
    status, answer = post(web.base, "/hooks/github/h1", big, signed_headers("github", big, "d-big"))
    assert status == 413 and "KiB" in answer["error"]
    bad = b"{not json"
    status, answer = post(web.base, "/hooks/github/h1", bad, signed_headers("github", bad, "d-bad"))
    assert status == 400 and "not JSON" in answer["error"]
    assert web.store.runs.collection.count_documents({}) == 0


def test_a_hook_is_rate_limited_and_recovers_with_time(web):
    add_hook(web.store, "github")
    body = json.dumps({"zen": "x"}).encode()
    headers = signed_headers("github", body, "p", event="ping")
    with web.app.app_context():
        limit = hook_limit()
    limit.burst = 3
    statuses = [post(web.base, "/hooks/github/h1", body, headers)[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    web.clock.advance(1.5)
    assert post(web.base, "/hooks/github/h1", body, headers)[0] == 200


@pytest.fixture
def worker_store(web):
    """A second store on the same database, on real time, for a worker (closed after the worker stops)."""
    store = Store(web.store.url, web.store.database_name)
    yield store
    store.close()


def test_a_delivery_while_no_worker_runs_waits_and_runs_when_a_worker_starts(web, worker_store, start_worker):
    # given no worker at all: the delivery is accepted (stored)
    add_hook(web.store, "github")
    body = json.dumps(PUSH).encode()
    status, answer = post(web.base, "/hooks/github/h1", body, signed_headers("github", body, "d-1"))
    assert status == 202
    assert web.store.runs.get(answer["run"]).status is RunStatus.QUEUED
    # when a worker starts later
    start_worker(worker_store, web.settings, "w1")
    # then it runs the delivery's run, with the payload as SOONER_DATA
    run = wait_for(lambda: (found := worker_store.runs.get(answer["run"])).status in FINISHED and found,
                   timeout=30, message="the webhook's run to finish")
    assert run.status is RunStatus.SUCCEEDED
    assert "refs/heads/main" in worker_store.output.text(run.id)


# -- the model and the CLI ---------------------------------------------------------------------------

def test_hook_names_and_secrets_are_validated():
    for name in ("", "-x", "a/b", "$where", "x" * 65, "a b"):
        with pytest.raises(InvalidHook):
            make_hook("github", name, "hello.sh", secret=SECRET)
    with pytest.raises(InvalidHook):
        make_hook("standard", "ok", "hello.sh", secret="whsec_not base64!")
    with pytest.raises(InvalidHook):
        make_hook("bitbucket", "ok", "hello.sh", secret=SECRET)
    assert make_hook("standard", "ok", "hello.sh", secret=None).secret.startswith("whsec_")


def test_a_stored_webhook_trigger_reads_back_as_it_was():
    trigger = WebhookTrigger(provider="gitlab", hook="h", delivery="d", event="push", author="ada",
                             author_name="Ada", author_username="ada", message="m")
    again = trigger_from_doc(trigger.to_doc())
    assert again == trigger and again.to_doc() == trigger.to_doc()


def test_the_cli_adds_lists_and_removes_hooks_and_prints_a_generated_secret_once(site):
    deploy = run_sooner("job", "show", "nothing", cwd=site)
    assert deploy.returncode != 0  # no such job yet: hook add must refuse it too
    refused = run_sooner("hook", "add", "github", "ci", "--job", "nothing", cwd=site)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    bad = run_sooner("hook", "add", "github", "bad/name", "--job", "nothing", cwd=site)
    assert bad.returncode == 1 and "hook name 'bad/name' is not valid" in bad.stderr and "Traceback" not in bad.stderr
    from sooner.config import load_settings as load
    from sooner.store import open_store

    store = open_store(load(site / "config.json", environ={}))
    try:
        deploy_files(store, {"hello.sh": "#!/bin/sh\necho hi\n"})
    finally:
        store.close()
    added = run_sooner("hook", "add", "github", "ci", "--job", "hello.sh", "--event", "push", cwd=site)
    assert added.returncode == 0, added.stderr
    assert "/hooks/github/ci runs hello.sh" in added.stdout and "secret (shown only now" in added.stdout
    listed = run_sooner("hook", "list", cwd=site)
    assert "ci" in listed.stdout and "push" in listed.stdout
    secret = added.stdout.strip().splitlines()[-1].rsplit(" ", 1)[-1]
    assert secret not in listed.stdout
    log = run_sooner("hook", "list", "--log", "ci", cwd=site)
    assert log.returncode == 0 and "no deliveries yet" in log.stdout
    removed = run_sooner("hook", "remove", "ci", cwd=site)
    assert removed.returncode == 0 and run_sooner("hook", "remove", "ci", cwd=site).returncode == 1
