"""``/metrics``: Prometheus text exposition of the whole site, read from the store at scrape time.

See :mod:`sooner.metrics` for why nothing here is counted in the web process:
every gunicorn process answers the same, so the endpoint is multi-process safe
without prometheus_client's multiprocess directory. A scrape reads the
process snapshots (one ``find``), three run counts and the workers; the
answer is reused for ``CACHE_S`` within one process, so scrapers polling often
cost the database little. Needs an API token (any scope) or a signed-in user.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from sooner.model import RunStatus
from sooner.webapp.context import web_state

bp = Blueprint("metrics", __name__)

CACHE_S = 2.0
CACHE_KEY = "sooner.metrics"  # app.extensions: (monotonic time, body) of the last scrape


class SiteCollector:
    """Collects every metric family of one scrape (a prometheus_client custom collector)."""

    def __init__(self, snapshots: list[dict[str, Any]], active: dict, workers: list, now: Any,
                 heartbeat_s: float) -> None:
        self.snapshots, self.active, self.workers, self.now, self.heartbeat_s = (
            snapshots, active, workers, now, heartbeat_s)

    def collect(self) -> Iterator[Metric]:
        runs = GaugeMetricFamily("sooner_runs", "Runs waiting, queued or running now", labels=["status"])
        for status, count in sorted(self.active.items(), key=lambda item: item[0].value):
            runs.add_metric([status.value], count)
        yield runs
        depth = GaugeMetricFamily("sooner_queue_depth", "Runs queued for a worker now")
        depth.add_metric([], self.active.get(RunStatus.QUEUED, 0))
        yield depth
        age = GaugeMetricFamily("sooner_worker_heartbeat_age_seconds", "Seconds since each worker's last heartbeat",
                                labels=["worker"])
        capacity = GaugeMetricFamily("sooner_worker_capacity", "Runs each worker may run at once", labels=["worker"])
        busy = GaugeMetricFamily("sooner_worker_running", "Runs each worker is running", labels=["worker"])
        online = GaugeMetricFamily("sooner_worker_online", "1 while a worker heartbeats", labels=["worker"])
        for worker in self.workers:
            seconds = worker.heartbeat_age(self.now)
            if seconds is not None:
                age.add_metric([worker.name], seconds)
            capacity.add_metric([worker.name], worker.capacity)
            busy.add_metric([worker.name], len(worker.running))
            online.add_metric([worker.name], 1.0 if worker.online(self.now, self.heartbeat_s) else 0.0)
        yield from (age, capacity, busy, online)
        yield from published_families(self.snapshots)


def published_families(snapshots: Iterable[dict[str, Any]]) -> Iterator[Metric]:
    """The families processes published, each sample labelled with its ``process`` (``kind:name``)."""
    families: dict[str, Metric] = {}
    for snapshot in snapshots:
        process = f"{snapshot.get('kind')}:{snapshot.get('name')}"
        for row in snapshot.get("samples") or []:
            try:
                family = families.get(row["family"])
                if family is None:
                    family = families[row["family"]] = Metric(row["family"], row.get("help", ""), row["type"])
                family.add_sample(row["name"], {**row.get("labels", {}), "process": process}, float(row["value"]))
            except (KeyError, TypeError, ValueError):
                continue  # a snapshot written by another version: skip what does not fit
    yield from families.values()


@bp.route("/metrics")
def metrics() -> Response:
    """The Prometheus text format of the site's metrics."""
    now_s = time.monotonic()
    cached = current_app.extensions.get(CACHE_KEY)
    if cached is None or now_s - cached[0] > CACHE_S:
        state = web_state()
        store = state.store
        now = store.clock.now()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SiteCollector(store.metrics.snapshots(now), store.metrics.active_runs(),
                                        store.workers.list(), now, state.settings.heartbeat_s))
        cached = current_app.extensions[CACHE_KEY] = (now_s, generate_latest(registry))
    return Response(cached[1], headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})
