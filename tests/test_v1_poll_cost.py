"""What a ``GET /api/v1/runs/{id}`` poll with ``If-None-Match`` costs the database, counted command by command
(a PyMongo command listener) on the embedded server, over a real HTTP server with keep-alive: one small
read of the run with a warm token cache, three with the cache off. Counts, never times."""

from __future__ import annotations

import functools
import http.client
import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest
from pymongo import MongoClient, monitoring

from conftest import served
from sooner.config import load_settings
from sooner.model import ManualTrigger
from sooner.runs.service import RunService
from sooner.store import open_store, schema

JOB = "reports/daily.sh"
POLLS = 20


class CommandCounter(monitoring.CommandListener):
    """The commands sent to one database: (command name, collection) → how many, and each find's projection."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.counts: Counter[tuple[str, str]] = Counter()
        self.projections: list[dict | None] = []
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name != self.database:
            return
        with self._lock:
            self.counts[(event.command_name, str(event.command.get(event.command_name)))] += 1
            if event.command_name == "find":
                self.projections.append(event.command.get("projection"))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.projections.clear()


@pytest.fixture
def poller(embedded_site: Path, monkeypatch, fast_passwords):
    """``poller(web_token_cache_s)`` → (counter, poll): the web app on the embedded server, a run, a token;
    ``poll()`` sends one conditional GET on a kept-alive connection and returns its status."""
    opened = []

    def make(ttl_s: float):
        database = f"t{uuid.uuid4().hex[:12]}"
        counter = CommandCounter(database)
        monkeypatch.setattr("sooner.store.client.MongoClient", functools.partial(MongoClient,
                                                                                  event_listeners=[counter]))
        settings = load_settings(embedded_site / "config.json", environ={},
                                 overrides={"database": database, "secret_key": "k" * 40, "web_token_cache_s": ttl_s})
        store = open_store(settings)
        opened.append(store)
        store.users.add("ann", "ann-password", admin=True)
        store.jobs.record_deployed(JOB, commit="c" * 40, blob="b" * 40)
        store.jobs.set_enabled(JOB, True)
        token, _ = store.tokens.create("ann")
        run = RunService(store).queue(JOB, ManualTrigger())
        from sooner.webapp import create_app

        app, _ = create_app(settings, store, live=False)
        return counter, app, token, run.id
    yield make
    for store in opened:
        store.client.drop_database(store.database_name)
        store.close()


class Poller:
    """One kept-alive HTTP connection polling one run: :meth:`etag` once (a plain GET), then :meth:`poll`."""

    def __init__(self, base: str, token: str, run_id: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=10)
        self.path, self.headers = f"/api/v1/runs/{run_id}", {"Authorization": f"Bearer {token}"}
        self.tag = ""

    def get(self, headers: dict[str, str]) -> http.client.HTTPResponse:
        self.connection.request("GET", self.path, headers={**self.headers, **headers})
        answer = self.connection.getresponse()
        answer.read()
        return answer

    def etag(self) -> None:
        first = self.get({})
        assert first.status == 200, first.status
        self.tag = first.getheader("ETag") or ""

    def poll(self, count: int) -> list[int]:
        return [self.get({"If-None-Match": self.tag}).status for _ in range(count)]


def test_a_304_poll_with_a_warm_token_cache_costs_one_small_read_of_the_run(poller):
    counter, app, token, run_id = poller(10.0)
    with served(app) as base:
        client = Poller(base, token, run_id)
        client.etag()  # verifies the token: the cache is warm after it
        counter.reset()
        statuses = client.poll(POLLS)
        client.connection.close()
    assert statuses == [304] * POLLS
    assert dict(counter.counts) == {("find", schema.RUNS): POLLS}
    assert all(p is not None and "data" not in p and "status" in p for p in counter.projections)


def test_with_the_token_cache_off_a_304_poll_reads_the_token_and_the_user_too(poller):
    counter, app, token, run_id = poller(0.0)
    with served(app) as base:
        client = Poller(base, token, run_id)
        client.etag()  # writes last_used_at, which is then not written again for a minute
        counter.reset()
        statuses = client.poll(POLLS)
        client.connection.close()
    assert statuses == [304] * POLLS
    assert dict(counter.counts) == {("find", schema.TOKENS): POLLS, ("find", schema.USERS): POLLS,
                                    ("find", schema.RUNS): POLLS}
