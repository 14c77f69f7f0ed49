"""Notifications end to end: a run that fails on the embedded server notifies a real local HTTP receiver
through apprise (``json://``) and a signed Standard Webhooks POST, with retries, and the run page, the API
and ``sooner logs`` show how each delivery went; a receiver that is down never touches the run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sooner.clock import FakeClock
from sooner.config import load_settings
from sooner.model import ManualTrigger, RunStatus
from sooner.model.notify import NotifyState
from sooner.model.webhook import Hook, read_delivery
from sooner.runs.notifier import Notifier
from sooner.runs.service import RunService
from sooner.store import open_store

from conftest import run_sooner, signed_in, wait_for

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Receiver:
    """A real HTTP server on a free port that records every POST; ``plan[path]`` lists the statuses to answer."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.plan: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    receiver.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    planned = receiver.plan.get(self.path) or [200]
                    status = planned.pop(0) if len(planned) > 1 else planned[0]
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def to(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(headers, body) for p, headers, body in self.posts if p == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.thread.join()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def scenario(embedded_store, receiver, fast_passwords):
    """A job on the embedded server that notifies the receiver on failure, a run service, a notifier on a
    fake clock with the real senders, and a signed-in web client."""
    from sooner.webapp import create_app

    settings = load_settings(None, environ={}, overrides={
        "mongo_url": embedded_store.url, "database": embedded_store.database_name, "secret_key": "k" * 40,
        "notify_webhook_secret": SECRET, "notify_backoff_s": 30.0, "public_url": "https://sooner.example"})
    store = embedded_store
    store.jobs.record_deployed("hello.sh", commit="c1", blob="b1")
    store.jobs.set_enabled("hello.sh", True)
    clock = FakeClock(datetime.now(timezone.utc))
    service = RunService(store, settings, clock)
    notifier = Notifier(store, settings, clock)
    store.users.add("admin", "admin-password", admin=True)
    app, _ = create_app(settings, store, live=False)
    app.config["TESTING"] = True
    return store, service, notifier, clock, signed_in(app, "admin", "admin-password")


def fail_a_run(store, service, notify: list[dict]):
    store.jobs.update_settings("hello.sh", {"notify": notify})
    run = service.queue("hello.sh", ManualTrigger())
    assert service.claim("w1", [], lease_s=30).id == run.id
    return service.finish(run.id, RunStatus.FAILED, exit_code=3, note="exit code 3")


def test_a_failed_run_notifies_through_apprise_and_a_signed_webhook_and_shows_sent(scenario, receiver,
                                                                                  embedded_site):
    # given a job that notifies an apprise json:// target and a signed webhook on failure
    store, service, notifier, clock, web = scenario
    run = fail_a_run(store, service, [{"on": ["failure"], "to": [f"json://{receiver.url}/apprise",
                                                              f"webhook+http://{receiver.url}/signed"]}])
    # when the notifier steps
    settled = notifier.step()
    # then the receiver got apprise's JSON POST, naming the run
    assert sorted(entry.state for entry in settled) == [NotifyState.SENT, NotifyState.SENT]
    [(_, body)] = receiver.to("/apprise")
    payload = json.loads(body)
    assert payload["title"] == f"{run.ref} failed"
    assert "Exit code: 3" in payload["message"] and f"https://sooner.example/runs/{run.id}" in payload["message"]
    # and a Standard Webhooks POST whose signature the repo's own verifier accepts
    [(headers, body)] = receiver.to("/signed")
    delivery = read_delivery(Hook(name="in", provider="standard", job="x", secret=SECRET), headers, body,
                             now=datetime.now(timezone.utc))
    assert delivery.event == "sooner.failure" and delivery.payload["data"]["ref"] == run.ref
    # and the run page and the API say so
    page = web.get(f"/runs/{run.id}").text
    assert f"json://{receiver.url}/apprise sent" in page and f"webhook+http://{receiver.url}/signed sent" in page
    api = web.get(f"/api/v1/runs/{run.id}/notifications").get_json()
    assert [(n["state"], n["attempts"]) for n in api["notifications"]] == [("sent", 1), ("sent", 1)]
    assert all(n["sent_at"] for n in api["notifications"])
    # and so does `sooner logs`, last
    logs = run_sooner("logs", run.id, env={"SOONER_CONFIG": str(embedded_site / "config.json"),
                                           "SOONER_DATABASE": store.database_name})
    assert logs.returncode == 0, logs.stderr
    assert f"notified: json://{receiver.url}/apprise sent" in (logs.stdout + logs.stderr).splitlines()[-1]


def test_a_receiver_that_answers_500_twice_gets_the_notification_on_the_third_try(scenario, receiver):
    store, service, notifier, clock, web = scenario
    receiver.plan["/flaky"] = [500, 500, 200]
    run = fail_a_run(store, service, [{"on": ["failure"], "to": [f"json://{receiver.url}/flaky"]}])
    [entry] = notifier.step()
    assert (entry.state, entry.error) == (NotifyState.PENDING, "HTTP 500")
    assert "failed (HTTP 500), retrying" in web.get(f"/runs/{run.id}").text
    clock.advance(30)
    [entry] = notifier.step()
    assert entry.attempts == 2 and entry.state is NotifyState.PENDING
    clock.advance(60)
    [entry] = notifier.step()
    assert (entry.state, entry.attempts) == (NotifyState.SENT, 3)
    assert len(receiver.to("/flaky")) == 3


def test_a_receiver_that_is_down_is_recorded_failed_and_the_run_is_unaffected(scenario, tmp_path):
    store, service, notifier, clock, web = scenario
    target = f"json://127.0.0.1:{closed_port()}/gone"
    run = fail_a_run(store, service, [{"on": ["failure"], "to": [target]}])
    for wait in (30, 60, 0):
        notifier.step()
        clock.advance(wait)
    [entry] = store.notifications.for_run(run.id)
    assert (entry.state, entry.attempts, entry.error) == (NotifyState.FAILED, 3, "Connection refused")
    # the run is as it ended, and its page says who could not be notified
    after = store.runs.get(run.id)
    assert (after.status, after.exit_code, after.note) == (RunStatus.FAILED, 3, "exit code 3")
    assert "failed (Connection refused) after 3 attempts" in web.get(f"/runs/{run.id}").text


def test_the_scheduler_process_sends_what_a_run_end_put_in_the_outbox(site, receiver):
    # given `sooner scheduler` running with a site-wide rule for the receiver
    rule = json.dumps([{"on": ["failure"], "to": [f"json://{receiver.url}/site"], "jobs": "*.sh"}])
    env = {**os.environ, "SOONER_CONFIG": str(site / "config.json"), "SOONER_NOTIFY": rule}
    settings = load_settings(site / "config.json", environ=env)
    store = open_store(settings)
    store.jobs.record_deployed("hello.sh", commit="c1", blob="b1")
    process = subprocess.Popen([sys.executable, "-m", "sooner", "scheduler"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert "ready" in process.stdout.readline()
        # when a run of a matching job fails (in another process: the outbox is the only link)
        service = RunService(store, settings)
        run = service.queue("hello.sh", ManualTrigger())
        assert service.claim("w1", [], lease_s=30).id == run.id
        service.finish(run.id, RunStatus.FAILED, exit_code=1)
        # then the scheduler's notifier delivers it and records it sent
        wait_for(lambda: receiver.to("/site"), timeout=15, message="the notification at the receiver")
        wait_for(lambda: store.notifications.for_run(run.id)[0].state is NotifyState.SENT, timeout=5)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert json.loads(receiver.to("/site")[0][1])["title"] == f"{run.ref} failed"
    store.close()


# -- setting a job's rules: CLI, the job page's form, the API (one validation) -----------------------------------

SLACK = "slack://TokenAAAA/TokenBBBB/TokenCCCC/#ops"


def test_job_set_notify_stores_the_rules_and_shows_them_without_secrets(site):
    store = open_store(load_settings(site / "config.json", environ={}))
    store.jobs.record_deployed("hello.sh", commit="c1", blob="b1")
    rules = json.dumps([{"on": ["failure", "recovery"], "to": [SLACK]}])
    result = run_sooner("job", "set", "hello.sh", "--notify", rules, cwd=site)
    assert result.returncode == 0, result.stderr
    assert "notify=failure, recovery → slack://" in result.stdout and "TokenBBBB" not in result.stdout
    assert store.jobs.get("hello.sh").notify_rules()[0].to == (SLACK,)
    shown = run_sooner("job", "show", "hello.sh", cwd=site)
    assert "notify:    failure, recovery → slack://" in shown.stdout and "TokenBBBB" not in shown.stdout
    bad = run_sooner("job", "set", "hello.sh", "--notify", '[{"on": ["sometimes"], "to": ["json://h/x"]}]', cwd=site)
    assert bad.returncode == 1 and "notify: rule[0].on[0]: 'sometimes' is not one of" in bad.stderr
    assert "Traceback" not in bad.stderr
    store.close()


def test_the_job_form_and_the_api_set_rules_and_never_show_the_targets_secrets(scenario):
    from sooner.model import Missed, Overlap

    store, service, notifier, clock, web = scenario
    form = {"action": "save", "csrf_token": web.csrf, "schedule": "", "timezone": "UTC", "worker": "", "hooks": "",
            "timeout_s": "", "overlap": Overlap.SKIP.value, "missed": Missed.SKIP.value, "retry_attempts": "0",
            "enabled": "on", "notify": json.dumps([{"on": ["failure"], "to": [SLACK]}])}
    saved = web.post("/jobs/hello.sh", data=form)
    assert saved.status_code == 302, saved.text
    assert store.jobs.get("hello.sh").notify_rules()[0].to == (SLACK,)
    page = web.get("/jobs/hello.sh").text
    assert "failure → slack://" in page and "TokenBBBB" not in page
    # an empty field keeps the rules; a bad one is refused on the page, naming the part
    assert web.post("/jobs/hello.sh", data={**form, "notify": ""}).status_code == 302
    assert store.jobs.get("hello.sh").notify
    refused = web.post("/jobs/hello.sh", data={**form, "notify": '[{"on": ["failure"], "to": ["nosuch://x"]}]'})
    assert refused.status_code == 400 and "rule[0].to[0]" in refused.text
    # the API patches the whole list and shows labels only
    headers = {"X-CSRF-Token": web.csrf}
    patched = web.patch("/api/v1/jobs/hello.sh", json={"notify": [{"on": ["success"], "to": [SLACK]}]},
                        headers=headers)
    assert patched.status_code == 200, patched.text
    assert patched.json["notify"][0]["on"] == ["success"] and "TokenBBBB" not in patched.text
    wrong = web.patch("/api/v1/jobs/hello.sh", json={"notify": [{"on": ["success"], "to": []}]}, headers=headers)
    assert wrong.status_code == 422 and "notify" in wrong.json["error"]["details"]
    cleared = web.patch("/api/v1/jobs/hello.sh", json={"notify": None}, headers=headers)
    assert cleared.json["notify"] == [] and store.jobs.get("hello.sh").notify == ()
