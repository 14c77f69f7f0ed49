"""Monitoring samples for the charts: ``/api/v1/workers/samples`` (the workers page), one worker's, one run's.

Every answer holds samples taken after ``since`` (epoch seconds; default: an hour
ago), oldest first, ``t`` in epoch seconds. The workers page polls with the newest
``t`` it has, so a poll reads a few samples per series: each series is read newest
first, at most as many as ``sample_s`` allows since then (:meth:`sooner.store.reads.Reads.samples`).
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import marshmallow as ma
from flask import current_app
from flask.typing import ResponseReturnValue
from marshmallow import fields as f

from sooner.model.sample import Sample, SampleKind
from sooner.store.reads import SAMPLE_LIMIT, RunsPerMinute
from sooner.webapp.context import web_now, web_state
from sooner.webapp.v1.common import blp, refuse

WINDOW = timedelta(hours=1)  # what the charts show, and the default ``since``
# Runs per minute reads up to 5,000 runs (~0.3 s on the embedded server) and changes by the minute: each web
# process reuses its answer this long, so tabs polling every 5 s cost the database little.
RATE_CACHE_S = 30.0
RATE_CACHE_KEY = "sooner.runs_per_minute"  # app.extensions: (monotonic time, RunsPerMinute)
# Answers change with every sample: never a stored copy.
SAMPLES_CACHE_CONTROL = "no-store"


class SamplesQuery(ma.Schema):
    since = f.Float(validate=ma.validate.Range(min=0, max=2 ** 33),
                    metadata={"description": "only samples taken after this time (epoch seconds); default an hour ago"})


class SampleSchema(ma.Schema):
    t = f.Float(required=True, metadata={"description": "when it was taken (epoch seconds)"})
    cpu_percent = f.Float(metadata={"description": "CPU % (100 = one core busy; a host's: of all cores)"})
    rss_bytes = f.Integer(metadata={"description": "resident memory (a host's: memory in use)"})
    load1 = f.Float(metadata={"description": "host: 1-minute load average"})
    mem_used_percent = f.Float(metadata={"description": "host: memory in use, %"})
    depth = f.Integer(metadata={"description": "queue: runs queued"})
    running = f.Integer(metadata={"description": "queue: runs running"})


class WorkerSamplesSchema(ma.Schema):
    name = f.String(required=True)
    host = f.List(f.Nested(SampleSchema), required=True, metadata={"description": "the worker's machine"})
    process = f.List(f.Nested(SampleSchema), required=True, metadata={"description": "the worker process itself"})


class RunsPerMinuteSchema(ma.Schema):
    t = f.Integer(required=True, metadata={"description": "the minute's start (epoch seconds)"})
    runs = f.Integer(required=True, metadata={"description": "runs that finished in it"})


class FleetSamplesSchema(ma.Schema):
    now = f.Float(required=True, metadata={"description": "the server's time (epoch seconds): pass the newest t "
                                                          "seen as the next since"})
    sample_s = f.Float(required=True, metadata={"description": "how often workers sample"})
    workers = f.List(f.Nested(WorkerSamplesSchema), required=True)
    queue = f.List(f.Nested(SampleSchema), required=True, metadata={"description": "runs queued and running"})
    runs_per_minute = f.List(f.Nested(RunsPerMinuteSchema), required=True,
                             metadata={"description": "the last hour, always whole (not limited by since)"})
    runs_per_minute_capped = f.Boolean(required=True, metadata={"description": "more runs ran than were counted"})


class RunSamplesSchema(ma.Schema):
    run = f.String(required=True)
    status = f.String(required=True)
    peak_rss_bytes = f.Integer(allow_none=True, metadata={"description": "peak of the tree's summed RSS (at its end)"})
    cpu_s = f.Float(allow_none=True, metadata={"description": "CPU seconds of the whole tree (at its end)"})
    samples = f.List(f.Nested(SampleSchema), required=True)


def _since(query: dict[str, Any], now: datetime) -> datetime:
    since = query.get("since")
    if since is None:
        return now - WINDOW
    return datetime.fromtimestamp(since, timezone.utc)


def _series(kind: SampleKind, key: str, since: datetime, now: datetime) -> list[dict[str, Any]]:
    """A series after ``since``; reads at most as many samples as could have been taken since then."""
    sample_s = web_state().settings.sample_s
    expected = math.ceil(max(0.0, (now - since).total_seconds()) / sample_s) + 10  # + clock skew between hosts
    samples: list[Sample] = web_state().store.reads.samples(kind, key, since, limit=min(SAMPLE_LIMIT, expected))
    return [sample.to_api() for sample in samples]


def _runs_per_minute(now: datetime) -> RunsPerMinute:
    cached = current_app.extensions.get(RATE_CACHE_KEY)
    if cached is None or time.monotonic() - cached[0] > RATE_CACHE_S:
        cached = (time.monotonic(), web_state().store.reads.runs_per_minute(now - WINDOW, now))
        current_app.extensions[RATE_CACHE_KEY] = cached
    return cached[1]


def _worker_body(name: str, since: datetime, now: datetime) -> dict[str, Any]:
    return {"name": name, "host": _series(SampleKind.HOST, name, since, now),
            "process": _series(SampleKind.WORKER, name, since, now)}


@blp.route("/workers/samples")
@blp.arguments(SamplesQuery, location="query")
@blp.response(200, FleetSamplesSchema)
def fleet_samples(query: dict[str, Any]) -> ResponseReturnValue:
    """What the workers page charts: every worker's CPU and memory, the queue depth and runs finished per minute."""
    state, now = web_state(), web_now()
    since = _since(query, now)
    workers = []
    for worker in state.store.workers.list():
        body = _worker_body(worker.name, since, now)
        if body["host"] or body["process"] or worker.stopped_at is None:
            workers.append(body)
    rate = _runs_per_minute(now)
    body = {"now": round(now.timestamp(), 3), "sample_s": state.settings.sample_s, "workers": workers,
            "queue": _series(SampleKind.QUEUE, "", since, now),
            "runs_per_minute": [{"t": minute, "runs": count} for minute, count in rate.minutes],
            "runs_per_minute_capped": rate.capped}
    return body, 200, {"Cache-Control": SAMPLES_CACHE_CONTROL}


@blp.route("/workers/<name>/samples")
@blp.arguments(SamplesQuery, location="query")
@blp.response(200, WorkerSamplesSchema)
def worker_samples(query: dict[str, Any], name: str) -> ResponseReturnValue:
    """One worker's samples: its host's CPU, memory and load, and its own process's CPU and memory."""
    now = web_now()
    if web_state().store.workers.get(name) is None:
        return refuse(404, f"no worker named {name!r}")
    return _worker_body(name, _since(query, now), now), 200, {"Cache-Control": SAMPLES_CACHE_CONTROL}


@blp.route("/runs/<path:run_id>/samples")
@blp.arguments(SamplesQuery, location="query")
@blp.response(200, RunSamplesSchema)
def run_samples(query: dict[str, Any], run_id: str) -> ResponseReturnValue:
    """A run's process tree over time (CPU %, memory), and its peak memory and CPU seconds once it ended."""
    store = web_state().store
    run = store.runs.get(run_id)
    since = datetime.fromtimestamp(query["since"], timezone.utc) if query.get("since") is not None else None
    samples = store.reads.samples(SampleKind.RUN, run.id, since)
    body = {"run": run.id, "status": run.status.value, "peak_rss_bytes": run.peak_rss_bytes, "cpu_s": run.cpu_s,
            "samples": [sample.to_api() for sample in samples]}
    return body, 200, {"Cache-Control": SAMPLES_CACHE_CONTROL}
