"""Read-only pages: dashboard, workers, events and deploys (plus a health check)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, render_template, request

from sooner.store.runs import RunStatus
from sooner.webapp.context import web_state, web_store
from sooner.webapp.formatting import iso, percent, run_duration

bp = Blueprint("views", __name__)

RECENT_RUNS = 15
PAGE = 50


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def worker_health(worker: dict, now: datetime, heartbeat_s: float, lease_s: float) -> tuple[str, float | None]:
    """('online' | 'late' | 'stale' | 'stopped', heartbeat age in seconds)."""
    beat = worker.get("heartbeat_at")
    age = (now - beat).total_seconds() if beat else None
    if worker.get("stopped_at"):
        return "stopped", age
    if age is None or age > lease_s:
        return "stale", age
    if age > max(3 * heartbeat_s, 5.0):
        return "late", age
    return "online", age


def run_summary(run: dict, now: datetime) -> dict[str, Any]:
    """The fields of a run that pages show and live updates carry (JSON-friendly)."""
    progress = run.get("progress") or None
    return {
        "id": run["_id"], "job": run.get("job"), "status": run.get("status"), "worker": run.get("worker"),
        "progress": progress, "percent": percent(progress), "queued_at": iso(run.get("queued_at")),
        "started_at": iso(run.get("started_at")), "finished_at": iso(run.get("finished_at")),
        "duration_s": run_duration(run, now), "exit_code": run.get("exit_code"), "note": run.get("note"),
        "cancel_requested": bool(run.get("cancel_requested")),
    }


def dashboard_snapshot(now: datetime | None = None) -> dict[str, Any]:
    """What the dashboard shows and pushes live: active runs, recent runs, workers, last deploy."""
    state = web_state()
    return build_snapshot(state.store, state.settings, now or now_utc())


def build_snapshot(store, settings, now: datetime) -> dict[str, Any]:
    collection = store.db.runs
    # Equality on status uses its index; an $in over statuses is a scan on the embedded server.
    running = store.retry(lambda: list(collection.find({"status": RunStatus.RUNNING.value}).limit(100)))
    queued = store.retry(lambda: list(collection.find({"status": RunStatus.QUEUED.value}).sort("queued_at", 1)
                                      .limit(20)))
    recent = store.retry(lambda: list(collection.find({}).sort("_id", -1).limit(RECENT_RUNS)))
    workers = []
    for worker in store.workers.list():
        health, age = worker_health(worker, now, settings.heartbeat_s, settings.lease_s)
        if health == "stopped" and age is not None and age > 86400:
            continue
        workers.append({"name": worker["_id"], "host": worker.get("host"), "health": health, "age_s": age,
                        "running": len(worker.get("running") or []), "capacity": worker.get("capacity")})
    deploy = store.deploys.latest()
    return {
        "running": [run_summary(r, now) for r in sorted(running, key=lambda r: r.get("started_at") or now)],
        "queued": [run_summary(r, now) for r in queued],
        "recent": [run_summary(r, now) for r in recent],
        "workers": workers,
        "deploy": deploy and {"commit": deploy.get("commit"), "author": deploy.get("author"),
                              "message": deploy.get("message"), "time": iso(deploy.get("time")),
                              "changes": sum(len(deploy.get(k) or []) for k in ("created", "updated", "removed"))},
    }


def upcoming_fires(limit: int = 10) -> list[dict]:
    """The next fire of each enabled scheduled job, soonest first."""
    state = web_state()
    now = now_utc()
    fires = []
    for job in state.store.jobs.scheduled():
        fire = state.fires.next_fire(job.get("schedule"), job.get("timezone"), now)
        if fire is not None:
            fires.append({"job": job["_id"], "at": fire, "schedule": job["schedule"]})
    fires.sort(key=lambda f: f["at"])
    return fires[:limit]


@bp.get("/")
def dashboard():
    snapshot = dashboard_snapshot()
    return render_template("dashboard.html", snapshot=snapshot, upcoming=upcoming_fires())


@bp.get("/healthz")
def health():
    return {"ok": True}


@bp.get("/workers")
def workers():
    state = web_state()
    store = state.store
    now = now_utc()
    rows = []
    running_ids = []
    for worker in store.workers.list():
        health, age = worker_health(worker, now, state.settings.heartbeat_s, state.settings.lease_s)
        rows.append({"doc": worker, "health": health, "age": age})
        running_ids += list(worker.get("running") or [])
    runs = _runs_by_id(running_ids)
    return render_template("workers.html", workers=rows, runs=runs, now=now)


def _runs_by_id(ids: list[str]) -> dict[str, dict]:
    if not ids:
        return {}
    store = web_store()
    docs = store.retry(lambda: list(store.db.runs.find({"_id": {"$in": ids[:500]}},
                                                       {"job": 1, "status": 1, "progress": 1})))
    return {d["_id"]: d for d in docs}


@bp.get("/events")
def events():
    store = web_store()
    name = request.args.get("name", "").strip()
    before = _parse_iso(request.args.get("before"))
    query: dict[str, Any] = {}
    if name:
        query["name"] = name
    if before:
        query["t"] = {"$lt": before}
    # Page by time: ranges on the indexed ``t`` are fast; ranges on _id are not (embedded server).
    docs = store.retry(lambda: list(store.db.events.find(query).sort("t", -1).limit(PAGE + 1)))
    more = len(docs) > PAGE
    docs = docs[:PAGE]
    runs = _runs_by_id([run_id for event in docs for run_id in (event.get("runs") or [])])
    return render_template("events.html", events=docs, runs=runs, name=name, more=more,
                           next_before=iso(docs[-1]["t"]) if more and docs else None)


@bp.get("/deploys")
def deploys():
    store = web_store()
    before = _parse_iso(request.args.get("before"))
    query = {"time": {"$lt": before}} if before else {}
    docs = store.retry(lambda: list(store.db.deploys.find(query).sort("time", -1).limit(PAGE + 1)))
    more = len(docs) > PAGE
    docs = docs[:PAGE]
    return render_template("deploys.html", deploys=docs, more=more,
                           next_before=iso(docs[-1]["time"]) if more and docs else None)


def _parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
