"""Read-only pages: dashboard, workers, events and deploys (plus a health check)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from flask import Blueprint, render_template, request
from flask.typing import ResponseReturnValue

from sooner.model import Run, WorkerHealth
from sooner.model.missed import AlertState
from sooner.model.waiting import WaitReason, wait_reasons
from sooner.scheduling.alerts import job_alerts
from sooner.webapp.context import web_now, web_state, web_store
from sooner.webapp.formatting import author_name, iso

if TYPE_CHECKING:
    from sooner.config import Settings
    from sooner.store import Store

bp = Blueprint("views", __name__)

RECENT_RUNS = 15
PAGE = 50
# A stopped worker drops off the dashboard after a day (the workers page keeps it).
STOPPED_SHOWN_S = 86400
# What the workers and events pages show of the runs they link to.
LINKED_RUN_FIELDS = ("job", "number", "status", "progress")


def run_summary(run: Run, now: datetime, waiting: WaitReason | None = None) -> dict[str, Any]:
    """The fields of a run that pages show and live updates carry (JSON-friendly).

    ``waiting`` is why a run that has not started waits (:func:`sooner.model.waiting.wait_reasons`);
    null when the caller did not ask, or the run has started.
    """
    progress = run.progress
    return {
        "id": run.id, "job": run.job, "number": run.number, "ref": run.ref, "status": run.status.value,
        "worker": run.worker,
        "progress": progress.to_doc() if progress else None, "percent": progress.percent if progress else None,
        # A time the run does not have yet is null, never "" (API clients test for null).
        "queued_at": iso(run.queued_at) or None, "started_at": iso(run.started_at) or None,
        "finished_at": iso(run.finished_at) or None,
        "duration_s": run.duration(now), "exit_code": run.exit_code, "note": run.note,
        "cancel_requested": run.cancel_requested, "waiting": waiting.to_doc() if waiting else None,
    }


def dashboard_snapshot(now: datetime | None = None) -> dict[str, Any]:
    """What the dashboard shows and pushes live: active runs, recent runs, workers, last deploy."""
    state = web_state()
    return build_snapshot(state.store, state.settings, now or web_now())


def build_snapshot(store: Store, settings: Settings, now: datetime) -> dict[str, Any]:
    runs = store.reads.dashboard_runs(recent=RECENT_RUNS)
    waits = wait_reasons(store.reads, [*runs.queued, *runs.recent], now, settings.heartbeat_s)
    workers = []
    for worker in store.workers.list():
        health = worker.health(now, settings.heartbeat_s, settings.lease_s)
        age = worker.heartbeat_age(now)
        if health is WorkerHealth.STOPPED and age is not None and age > STOPPED_SHOWN_S:
            continue
        workers.append({"name": worker.name, "host": worker.host, "health": health.value, "age_s": age,
                        "running": len(worker.running), "capacity": worker.capacity})
    deploy = store.deploys.latest()
    return {
        "running": [run_summary(r, now) for r in runs.running],
        "queued": [run_summary(r, now, waits.get(r.id)) for r in runs.queued],
        "recent": [run_summary(r, now, waits.get(r.id)) for r in runs.recent],
        "workers": workers,
        "deploy": deploy and {"commit": deploy.get("commit"), "author": deploy.get("author"),
                              "author_name": author_name(deploy.get("author")),
                              "message": deploy.get("message"), "time": iso(deploy.get("time")),
                              "changes": sum(len(deploy.get(k) or []) for k in ("created", "updated", "removed"))},
    }


def upcoming_fires(limit: int = 10) -> list[dict]:
    """The next fire of each enabled scheduled job, soonest first."""
    state = web_state()
    now = web_now()
    fires: list[tuple[datetime, dict]] = []
    for job in state.store.jobs.scheduled():
        fire = state.fires.next_fire(job.schedule, job.timezone, now)
        if fire is not None:
            fires.append((fire, {"job": job.name, "at": fire, "schedule": job.schedule}))
    fires.sort(key=lambda pair: pair[0])
    return [entry for _, entry in fires[:limit]]


@bp.get("/")
def dashboard() -> ResponseReturnValue:
    snapshot = dashboard_snapshot()
    return render_template("dashboard.html", snapshot=snapshot, upcoming=upcoming_fires(), alerts=alert_summary())


def alert_summary(shown: int = 10) -> dict[str, Any]:
    """The dead man's switch over every enabled scheduled job: how many are overdue or missed, and which."""
    state = web_state()
    alerts = job_alerts(state.store, state.store.jobs.scheduled(), web_now())
    overdue = sorted(name for name, alert in alerts.items() if alert.state is AlertState.OVERDUE)
    missed = sorted(name for name, alert in alerts.items() if alert.state is AlertState.MISSED)
    return {"overdue": len(overdue), "missed": len(missed), "jobs": (overdue + missed)[:shown]}


@bp.get("/healthz")
def health() -> ResponseReturnValue:
    """For load balancers: public (``auth.PUBLIC_ENDPOINTS``), and it says nothing but that the server answers."""
    return {"ok": True}


@bp.get("/workers")
def workers() -> ResponseReturnValue:
    state = web_state()
    now = web_now()
    rows = []
    running_ids: list[str] = []
    for worker in state.store.workers.list():
        health = worker.health(now, state.settings.heartbeat_s, state.settings.lease_s)
        rows.append({"worker": worker, "health": health.value, "age": worker.heartbeat_age(now)})
        running_ids += worker.running
    runs = state.store.reads.runs_by_id(running_ids, LINKED_RUN_FIELDS)
    return render_template("workers.html", workers=rows, runs=runs, now=now, sample_s=state.settings.sample_s)


@bp.get("/events")
def events() -> ResponseReturnValue:
    store = web_store()
    name = request.args.get("name", "").strip()
    page = store.reads.events_page(name=name or None, before_t=_parse_iso(request.args.get("before")), limit=PAGE)
    sources = [event["source"]["run"] for event in page.items
               if isinstance(event.get("source"), dict) and isinstance(event["source"].get("run"), str)]
    runs = store.reads.runs_by_id([run_id for event in page.items for run_id in (event.get("runs") or [])] + sources,
                                  LINKED_RUN_FIELDS)
    return render_template("events.html", events=page.items, runs=runs, name=name, more=page.more,
                           next_before=iso(page.next_before) or None)


@bp.get("/deploys")
def deploys() -> ResponseReturnValue:
    page = web_store().reads.deploys_page(before=_parse_iso(request.args.get("before")), limit=PAGE)
    return render_template("deploys.html", deploys=page.items, more=page.more,
                           next_before=iso(page.next_before) or None)


def _parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
