"""HTTP jobs run by a real worker against a real local HTTP server, on a fake clock (no sleeps).

The server (``ThreadingHTTPServer`` on 127.0.0.1, port 0) answers from a script of statuses and
records when each request arrived by the test's FakeClock; the worker's retry waits advance that
clock, so attempt times are exactly the sums of ``base × attempt ** retry_exponent``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conftest import wait_for
from sooner.clock import FakeClock
from sooner.config import Settings
from sooner.model import FINISHED, ManualTrigger, Run, RunStatus
from sooner.runs.service import RunService
from sooner.worker.testing import deploy_files

JOB = "api/ping.http.json"


class Server:
    """A local HTTP server: ``answers`` is a list of (status, headers, body), the last repeated forever."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.answers: list[tuple[int, dict[str, str], bytes]] = [(200, {}, b"ok")]
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                server.requests.append({"t": server.clock.now(), "method": self.command, "path": self.path,
                                        "headers": dict(self.headers), "body": self.rfile.read(length)})
                index = min(len(server.requests), len(server.answers)) - 1
                status, headers, body = server.answers[index]
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value.replace("{port}", str(server.port)))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(fake_clock) -> Iterator[Server]:
    running = Server(fake_clock)
    yield running
    running.close()


class Harness:
    """A store, a run service and a worker on one fake clock; the worker's retry waits advance it."""

    def __init__(self, store, clock: FakeClock, start_worker, **settings: Any) -> None:
        self.store, self.clock = store, clock
        settings.setdefault("http_allow", ("127.0.0.1",))
        self.settings = Settings(output_flush_ms=10, **settings)
        self.service = RunService(store, self.settings, clock)
        self.worker = start_worker(store, self.settings, "w1", 1, start=False, clock=clock, service=self.service)
        self.sleeps: list[float] = []
        self.on_sleep = lambda seconds: None
        self.worker.runner.http_sleep = self._sleep

    def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)
        self.on_sleep(seconds)

    def deploy(self, document: Any, **job_settings: Any) -> None:
        text = document if isinstance(document, str) else json.dumps(document)
        deploy_files(self.store, {JOB: text}, settings={JOB: job_settings} if job_settings else None)

    def run(self, **queue: Any) -> Run:
        run = self.service.queue(JOB, ManualTrigger(), **queue)
        assert run is not None
        assert self.worker.run_once() is not None
        active = self.worker._active.get(run.id)
        if active is not None:
            assert active.done.wait(30), "the HTTP run did not end"
        return wait_for(lambda: (r := self.store.runs.get(run.id)).status in FINISHED and r, 10,
                        message="the run's end to be stored")

    def output(self, run: Run, stream: str | None = None) -> str:
        return "".join(c["text"] for c in self.store.output.read(run.id) if stream in (None, c["stream"]))


@pytest.fixture
def harness(clocked_store, fake_clock, start_worker):
    def make(**settings: Any) -> Harness:
        return Harness(clocked_store, fake_clock, start_worker, **settings)
    return make


def steps(*items: dict[str, Any]) -> dict[str, Any]:
    return {"steps": list(items)}


def test_a_step_that_fails_twice_then_succeeds_is_retried_after_1_then_2_seconds(harness, server):
    # given a server that answers 503 twice, then 200, and a job with the default exponent (1)
    h = harness()
    server.answers = [(503, {}, b"busy"), (503, {}, b"busy"), (200, {"X-Served": "yes"}, b"pong")]
    h.deploy(steps({"name": "ping", "method": "GET", "url": server.url("/ping")}))
    t0 = h.clock.now()
    # when the worker runs it
    run = h.run()
    # then it succeeded on the third attempt, the waits were base × attempt^1
    assert run.status is RunStatus.SUCCEEDED, h.output(run)
    assert [r["t"] - t0 for r in server.requests] == [timedelta(0), timedelta(seconds=1), timedelta(seconds=3)]
    assert h.sleeps == [1.0, 2.0]
    # and each attempt's request and answer are in the output, in order, with the progress of steps
    out = h.output(run)
    assert out.index("attempt 1/5") < out.index("< 503 Service Unavailable") < out.index("attempt 3/5")
    assert f"> GET {server.url('/ping')}" in out and "< X-Served: yes" in out and "pong" in out
    assert out.splitlines()[0].startswith(f"sooner: run {run.id} of {JOB} on worker w1")
    assert out.splitlines()[-1].startswith("sooner: succeeded after")
    assert (run.progress.current, run.progress.max) == (1, 1)


def test_a_step_that_never_succeeds_ends_poison_after_1_4_9_16_seconds(harness, server):
    # given seed 002's sample: retry_exponent 2, the default 5 attempts, and a job retry policy of its own
    h = harness()
    server.answers = [(500, {}, b"down")]
    h.deploy(steps({"name": "ping", "url": server.url("/"), "retry_exponent": 2}),
             retry={"attempts": 3, "backoff_base_s": 1})
    t0 = h.clock.now()
    # when it runs
    run = h.run()
    # then every attempt came at the expected time and the run is poison after 30 s of waits
    assert [(r["t"] - t0).total_seconds() for r in server.requests] == [0, 1, 5, 14, 30]
    assert h.sleeps == [1.0, 4.0, 9.0, 16.0]
    assert run.status is RunStatus.POISON
    assert run.note == "step 1/1 'ping' failed 5 times, last: HTTP 500"
    # and the job's own retry policy does not retry it (its steps were retried), but its failure is announced
    assert run.next_attempt is None
    assert len(h.store.runs.list(job=JOB)) == 1
    events = [e["name"] for e in h.store.events.list(limit=10)]
    assert f"job:{JOB}:failed" in events


def test_a_client_error_is_not_retried(harness, server):
    h = harness()
    server.answers = [(404, {}, b"no such thing")]
    h.deploy(steps({"name": "get", "url": server.url("/missing")}))
    run = h.run()
    assert run.status is RunStatus.POISON
    assert len(server.requests) == 1 and h.sleeps == []
    assert "HTTP 404" in run.note and "would not change" in run.note


def test_steps_run_in_order_with_methods_headers_and_bodies(harness, server):
    # given two steps: a JSON POST and a DELETE with a text body
    h = harness()
    h.deploy(steps({"name": "create", "method": "POST", "url": server.url("/items"), "body": {"a": 1}},
                   {"name": "remove", "method": "DELETE", "url": server.url("/items/1"), "body": "bye",
                    "headers": {"X-Reason": "test"}}))
    run = h.run()
    assert run.status is RunStatus.SUCCEEDED
    first, second = server.requests
    assert (first["method"], first["path"], json.loads(first["body"])) == ("POST", "/items", {"a": 1})
    assert first["headers"]["Content-Type"] == "application/json"
    assert (second["method"], second["body"], second["headers"]["X-Reason"]) == ("DELETE", b"bye", "test")
    assert (run.progress.current, run.progress.max) == (2, 2)


def test_secrets_are_sent_but_never_shown(harness, server):
    # given a header with a secret placeholder and a server that echoes it back
    h = harness(http_secrets={"TOKEN": "s3cr3t-value"})
    server.answers = [(200, {"X-Echo": "Bearer s3cr3t-value"}, b"you sent s3cr3t-value")]
    h.deploy(steps({"name": "auth", "url": server.url("/me?key=${secret:TOKEN}"),
                    "headers": {"Authorization": "Bearer ${secret:TOKEN}"}}))
    run = h.run()
    # then the server got the value, and the output shows only the placeholder or ***
    assert run.status is RunStatus.SUCCEEDED
    assert server.requests[0]["headers"]["Authorization"] == "Bearer s3cr3t-value"
    assert server.requests[0]["path"] == "/me?key=s3cr3t-value"
    out = h.output(run)
    assert "s3cr3t" not in out
    assert "${secret:TOKEN}" in out and "you sent ***" in out and "< X-Echo: Bearer ***" in out


def test_a_missing_secret_fails_the_run_naming_the_setting(harness, server):
    h = harness()
    h.deploy(steps({"name": "auth", "url": server.url("/"), "headers": {"Authorization": "${secret:NOPE}"}}))
    run = h.run()
    assert run.status is RunStatus.FAILED
    assert "NOPE" in run.note and "http_secrets" in run.note
    assert server.requests == []


def test_a_host_outside_the_allow_list_is_not_called(harness, server):
    # given the safe default: nothing allowed
    h = harness(http_allow=())
    h.deploy(steps({"name": "ping", "url": server.url("/")}))
    run = h.run()
    # then no request went out and the note says which setting to change
    assert run.status is RunStatus.FAILED
    assert server.requests == []
    assert f"host 127.0.0.1:{server.port} is not in the http_allow setting" in run.note
    assert "add it to http_allow" in h.output(run)


def test_an_allow_list_entry_with_another_port_does_not_allow(harness, server):
    h = harness(http_allow=("127.0.0.1:1",))
    h.deploy(steps({"name": "ping", "url": server.url("/")}))
    assert h.run().status is RunStatus.FAILED and server.requests == []


def test_redirects_are_followed_and_a_loop_is_cut(harness, server):
    # given a redirect that goes on forever
    h = harness()
    server.answers = [(302, {"Location": "/next"}, b"")]
    h.deploy(steps({"name": "loop", "url": server.url("/start")}))
    run = h.run()
    # then it stops after the limit (1 request + 5 redirects) and is not retried
    assert run.status is RunStatus.POISON and "more than 5 redirects" in run.note
    assert [r["path"] for r in server.requests] == ["/start"] + ["/next"] * 5


def test_a_redirect_to_a_host_not_allowed_is_not_followed(harness, server):
    h = harness(http_allow=(f"127.0.0.1:{server.port}",))
    server.answers = [(307, {"Location": "http://localhost:{port}/elsewhere"}, b"")]
    h.deploy(steps({"name": "hop", "url": server.url("/")}))
    run = h.run()
    assert run.status is RunStatus.FAILED and "host localhost" in run.note
    assert len(server.requests) == 1


def test_a_post_redirected_with_303_becomes_a_get(harness, server):
    h = harness()
    server.answers = [(303, {"Location": "/result"}, b""), (200, {}, b"done")]
    h.deploy(steps({"name": "submit", "method": "POST", "url": server.url("/submit"), "body": "x=1"}))
    run = h.run()
    assert run.status is RunStatus.SUCCEEDED
    assert [(r["method"], r["path"]) for r in server.requests] == [("POST", "/submit"), ("GET", "/result")]


def test_a_long_body_is_cut_to_2_kib_in_the_output(harness, server):
    h = harness()
    server.answers = [(200, {}, b"a" * 5000 + b"END")]
    h.deploy(steps({"name": "big", "url": server.url("/")}))
    run = h.run()
    out = h.output(run, "stdout")
    assert "a" * 2048 in out and "a" * 2049 not in out and "END" not in out
    assert "body cut at 2048 bytes" in out


def test_a_cancel_during_a_retry_wait_ends_the_run_cancelled(harness, server):
    h = harness()
    server.answers = [(503, {}, b"")]
    h.deploy(steps({"name": "ping", "url": server.url("/")}))
    h.on_sleep = lambda seconds: h.worker._active[next(iter(h.worker._active))].cancel("cancelled by test")
    run = h.run()
    assert run.status is RunStatus.CANCELLED and run.note == "cancelled by test"
    assert len(server.requests) == 1


def test_the_run_timeout_cuts_the_retry_waits(harness, server):
    # given a 3 s run timeout and waits of 1, 4, … s
    h = harness()
    server.answers = [(503, {}, b"")]
    h.deploy(steps({"name": "ping", "url": server.url("/"), "retry_exponent": 2}), timeout_s=3)
    run = h.run()
    # then the second wait is cut to what is left of the 3 s, and the run timed out
    assert h.sleeps == [1.0, 2.0]
    assert run.status is RunStatus.TIMED_OUT and run.note == "timed out after 3s"
    assert len(server.requests) == 2


def test_a_lease_that_could_not_be_renewed_stops_the_run_lost(harness, server):
    # given a worker whose lease on the run ran out during a retry wait (the database did not answer)
    h = harness()
    server.answers = [(503, {}, b"")]
    h.deploy(steps({"name": "ping", "url": server.url("/")}))

    def lease_runs_out(seconds: float) -> None:
        active = next(iter(h.worker._active.values()))
        active.lease_deadline = time.monotonic() - 1
    h.on_sleep = lease_runs_out
    run = h.run()
    # then no further attempt went out and the run ended lost, its copy known gone
    assert run.status is RunStatus.LOST and "could not renew its lease" in run.note
    assert len(server.requests) == 1 and run.process_gone


def test_a_connection_refused_is_retried(harness, server):
    h = harness()
    port = server.port
    server.close()  # nothing listens there any more
    h.deploy(steps({"name": "ping", "url": f"http://127.0.0.1:{port}/", "attempts": 2}))
    run = h.run()
    assert run.status is RunStatus.POISON and "connection failed" in run.note
    assert h.sleeps == [1.0]


def test_the_real_wait_ends_at_a_cancel(clocked_store, fake_clock, start_worker, server):
    # given the worker's own wait (no fake sleep) and a step that waits 1000 s before its second attempt
    h = Harness(clocked_store, fake_clock, start_worker)
    h.worker.runner.http_sleep = None
    server.answers = [(503, {}, b"")]
    h.deploy({"retry_base_s": 1000, "steps": [{"name": "ping", "url": server.url("/")}]})
    run = h.service.queue(JOB, ManualTrigger())
    assert run is not None and h.worker.run_once() is not None
    active = h.worker._active[run.id]
    wait_for(lambda: "attempt 2 in 1000s" in h.output(run), 10, message="the retry wait to start")
    # when the run is cancelled
    active.cancel("cancelled while waiting")
    # then the wait ends at once
    assert active.done.wait(10)
    assert h.store.runs.get(run.id).status is RunStatus.CANCELLED
