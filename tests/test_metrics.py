"""``/metrics``: what a real worker and a scheduler counted, and what the database says, over real HTTP.

The worker runs real scripts on the embedded server; the scrape is parsed
with prometheus_client's own parser, so the text format is checked as
Prometheus reads it.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import served, wait_for
from sooner.clock import FakeClock
from sooner.config import load_settings
from sooner.metrics import PROCESS, ProcessMetrics, Publisher
from sooner.model import ManualTrigger, RunStatus
from sooner.model.token import TokenScope
from sooner.runs.service import RunService
from sooner.scheduling.scheduler import Scheduler
from sooner.worker.testing import deploy_files


def scrape(base: str, token: str) -> dict[tuple[str, tuple], float]:
    response = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def published(name: str, **labels: str) -> float:
    """This process's own value of a sample (what it publishes next)."""
    for row in PROCESS.samples():
        if row["name"] == name and row["labels"] == labels:
            return row["value"]
    return 0.0


@pytest.fixture
def site(embedded_store, fast_passwords):
    from sooner.webapp import create_app

    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": embedded_store.url,
                                                         "database": embedded_store.database_name})
    app, _ = create_app(settings, embedded_store, live=False)
    embedded_store.users.add("ann", "ann-password", admin=True)
    token, _ = embedded_store.tokens.create("ann", scope=TokenScope.READ)
    with served(app) as base:
        yield embedded_store, settings, base, token


def test_metrics_need_a_token_or_a_session(site):
    _, _, base, _ = site
    assert requests.get(f"{base}/metrics", timeout=10).status_code == 401
    wrong = requests.get(f"{base}/metrics", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401


def test_a_scrape_shows_the_runs_a_real_worker_ended_and_the_database_counts(site, start_worker):
    store, settings, base, token = site
    deploy_files(store, {"noop.sh": "#!/bin/sh\nexit 0\n", "fail.sh": "#!/bin/sh\necho out; exit 3\n"})
    name = f"w-{uuid.uuid4().hex[:6]}"
    before_ok = published("sooner_runs_finished_total", job="noop.sh", status="succeeded")
    before_failed = published("sooner_runs_finished_total", job="fail.sh", status="failed")
    before_started = published("sooner_dispatch_latency_seconds_count")
    service = RunService(store, settings)
    runs = [service.queue("noop.sh", ManualTrigger()), service.queue("noop.sh", ManualTrigger()),
            service.queue("fail.sh", ManualTrigger())]
    waiting = [service.queue("noop.sh", ManualTrigger(), target="tag:nobody-has-it") for _ in range(2)]
    worker = start_worker(store, settings, name, capacity=2)
    wait_for(lambda: all(store.runs.get(run.id).finished for run in runs if run), message="runs finished")
    assert store.runs.get(runs[2].id).status is RunStatus.FAILED
    worker.metrics.maybe_publish(force=True)
    values = scrape(base, token)
    process = ("process", f"worker:{name}")
    assert values[("sooner_runs_finished_total", (("job", "noop.sh"), process, ("status", "succeeded")))] \
        == before_ok + 2
    assert values[("sooner_runs_finished_total", (("job", "fail.sh"), process, ("status", "failed")))] \
        == before_failed + 1
    assert values[("sooner_dispatch_latency_seconds_count", (process,))] == before_started + 3
    assert values[("sooner_dispatch_latency_seconds_bucket", (("le", "+Inf"), process))] == before_started + 3
    assert values[("sooner_output_bytes_total", (process,))] >= len("out\n")
    assert values[("sooner_runs", (("status", "queued"),))] == len(waiting)
    assert values[("sooner_queue_depth", ())] == len(waiting)
    assert values[("sooner_worker_online", (("worker", name),))] == 1.0
    assert values[("sooner_worker_capacity", (("worker", name),))] == 2.0
    assert values[("sooner_worker_heartbeat_age_seconds", (("worker", name),))] >= 0.0


def test_a_scheduler_publishes_how_late_its_fires_were_stored(site):
    store, settings, base, token = site
    deploy_files(store, {"tick.sh": "#!/bin/sh\nexit 0\n"}, settings={"tick.sh": {"schedule": "* * * * * *"}})
    metrics = ProcessMetrics()
    clock = FakeClock(store.clock.now().replace(microsecond=0))
    scheduler = Scheduler(store, settings, clock, name="sched-under-test")
    scheduler.metrics = Publisher(store, "scheduler", scheduler.name, metrics=metrics)
    import sooner.scheduling.scheduler as scheduling

    original, scheduling.PROCESS = scheduling.PROCESS, metrics  # count this scheduler's fires apart
    try:
        scheduler.tick()
        clock.advance(timedelta(seconds=1).total_seconds())
        assert len(scheduler.tick()) == 1
    finally:
        scheduling.PROCESS = original
    scheduler.metrics.maybe_publish(force=True)
    base_store = store.metrics.snapshots()
    assert any(doc["name"] == "sched-under-test" for doc in base_store)
    # The web process answers from a cache for 2 s: a fresh app reads the new snapshot.
    from sooner.webapp import create_app

    app, _ = create_app(settings, store, live=False)
    with served(app) as fresh:
        values = scrape(fresh, token)
    process = ("process", "scheduler:sched-under-test")
    assert values[("sooner_fire_lateness_seconds_count", (process,))] == 1.0
    assert values[("sooner_fire_lateness_seconds_bucket", (("le", "0.005"), process))] == 1.0  # fake clock: 0 s late


def test_snapshots_of_processes_that_stopped_an_hour_ago_are_dropped(embedded_store):
    now = embedded_store.clock.now()
    embedded_store.metrics.publish("worker", "old", [], host="h", pid=1, now=now - timedelta(hours=2))
    embedded_store.metrics.publish("worker", "new", [], host="h", pid=2, now=now)
    assert [doc["name"] for doc in embedded_store.metrics.snapshots(now)] == ["new"]
    assert [doc["name"] for doc in embedded_store.metrics.snapshots(now)] == ["new"]
