"""A small JSON REST API under ``/api``, authenticated with ``Authorization: Bearer <token>``.

GET  /api/jobs                       every job with its next fire and last run
GET  /api/jobs/<name>                one job
POST /api/jobs/<name>/runs           start a run; body ``{"data": <any JSON>}`` (optional)   [admin]
GET  /api/runs?job=&status=&limit=   newest runs
GET  /api/runs/<id>                  one run
GET  /api/runs/<id>/output?after=N   output chunks after seq N
POST /api/runs/<id>/cancel           cancel a run                                           [admin]
POST /api/events/<name>              emit an event; body ``{"data": <any JSON>}`` (optional) [admin]

Errors are ``{"error": "..."}`` with 400 (bad input), 401, 403, 404 or 409.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, request, url_for

from sooner.errors import SoonerError
from sooner.jobs import InvalidJobSetting
from sooner.store.runs import RunStatus
from sooner.webapp.context import admin_required, json_error, user_name, web_state, web_store
from sooner.webapp.formatting import iso
from sooner.webapp.runs import chunk_json
from sooner.webapp.views import run_summary

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_BODY_BYTES = 1024 * 1024


def job_json(job: dict, *, next_fire: datetime | None = None, last_run: dict | None = None) -> dict[str, Any]:
    return {
        "name": job["_id"], "enabled": bool(job.get("enabled")), "deleted": bool(job.get("deleted")),
        "new": bool(job.get("new")), "schedule": job.get("schedule"), "timezone": job.get("timezone") or "UTC",
        "worker": job.get("worker"), "hooks": list(job.get("hooks") or []), "timeout_s": job.get("timeout_s"),
        "overlap": job.get("overlap"), "missed": job.get("missed"), "retry": job.get("retry"),
        "commit": job.get("commit"), "updated_at": iso(job.get("updated_at")), "next_fire": iso(next_fire) or None,
        "last_run": last_run and {"id": last_run["_id"], "status": last_run["status"],
                                  "queued_at": iso(last_run.get("queued_at"))},
    }


def run_json(run: dict) -> dict[str, Any]:
    summary = run_summary(run, datetime.now(UTC))
    summary.update({"trigger": _plain(run.get("trigger")), "data": run.get("data"), "commit": run.get("commit"),
                    "attempt": run.get("attempt"), "target": run.get("target")})
    return summary


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return iso(value)
    return value


def _body_data() -> tuple[Any, Any]:
    """(data, error response): the optional ``data`` member of a JSON object body."""
    if request.content_length and request.content_length > MAX_BODY_BYTES:
        return None, json_error(413, f"body larger than {MAX_BODY_BYTES // 1024} KB")
    raw = request.get_data(cache=True)
    if not raw.strip():
        return None, None
    if not request.is_json:
        return None, json_error(400, "send the body as JSON with 'Content-Type: application/json'")
    body = request.get_json(silent=True)
    if body is None and raw.strip() != b"null":
        return None, json_error(400, "the body is not valid JSON")
    if not isinstance(body, dict):
        return None, json_error(400, 'the body must be a JSON object such as {"data": {...}}')
    unknown = sorted(set(body) - {"data"})
    if unknown:
        return None, json_error(400, f"unknown field(s) {', '.join(unknown)}: only \"data\" is accepted")
    return body.get("data"), None


@bp.get("/jobs")
def jobs():
    state = web_state()
    include_deleted = request.args.get("deleted") in ("1", "true", "yes")
    docs = state.store.jobs.list(include_deleted=include_deleted)
    stats = state.stats.get(j["_id"] for j in docs)
    now = datetime.now(UTC)
    return {"jobs": [job_json(j, last_run=stats[j["_id"]].last,
                              next_fire=state.fires.next_fire(j.get("schedule"), j.get("timezone"), now)
                              if j.get("enabled") else None) for j in docs]}


@bp.get("/jobs/<path:name>")
def job(name: str):
    state = web_state()
    doc = state.store.jobs.get(name)
    last = state.stats.get([name])[name].last
    nxt = state.fires.next_fire(doc.get("schedule"), doc.get("timezone"), datetime.now(UTC))
    return job_json(doc, last_run=last, next_fire=nxt if doc.get("enabled") else None)


@bp.post("/jobs/<path:name>/runs")
@admin_required
def start_run(name: str):
    from sooner.runs import queue_run

    store = web_store()
    job = store.jobs.get(name)
    data, error = _body_data()
    if error is not None:
        return error
    trigger = {"type": "api", "source": "api", "author": user_name()}
    run = queue_run(store, job, trigger, data=data)
    if run is None:
        return json_error(409, "the run was not started")
    return {"run": run_json(run), "url": url_for("runs.detail", run_id=run["_id"], _external=True)}, 201


@bp.get("/runs")
def runs():
    store = web_store()
    status = request.args.get("status") or None
    if status and status not in {s.value for s in RunStatus}:
        return json_error(400, f"unknown status {status!r}: use one of {', '.join(s.value for s in RunStatus)}")
    limit = min(max(request.args.get("limit", 50, type=int) or 50, 1), 500)
    job = request.args.get("job") or None
    query: dict[str, Any] = {k: v for k, v in (("job", job), ("status", status)) if v}
    sort = "queued_at" if job else "_id"
    docs = store.retry(lambda: list(store.db.runs.find(query).sort(sort, -1).limit(limit)))
    return {"runs": [run_json(r) for r in docs]}


@bp.get("/runs/<run_id>")
def run(run_id: str):
    return run_json(web_store().runs.get(run_id))


@bp.get("/runs/<run_id>/output")
def run_output(run_id: str):
    store = web_store()
    doc = store.runs.get(run_id)
    after = request.args.get("after", -1, type=int)
    limit = min(max(request.args.get("limit", 1000, type=int) or 1000, 1), 5000)
    chunks = store.output.read(doc["_id"], after_seq=after, limit=limit + 1)
    return {"run": doc["_id"], "status": doc["status"], "chunks": [chunk_json(c) for c in chunks[:limit]],
            "more": len(chunks) > limit}


@bp.post("/runs/<run_id>/cancel")
@admin_required
def cancel(run_id: str):
    store = web_store()
    doc = store.runs.get(run_id)
    try:
        doc = store.runs.request_cancel(doc["_id"], by=user_name())
    except SoonerError as exc:
        return json_error(409, str(exc))
    if doc["status"] == RunStatus.CANCELLED.value:
        store.runs.promote_waiting(doc["job"])
    return run_json(doc)


@bp.post("/events/<path:name>")
@admin_required
def emit_event(name: str):
    from sooner.events import emit

    data, error = _body_data()
    if error is not None:
        return error
    state = web_state()
    try:
        event = emit(state.store, name, data, source={"type": "api", "author": user_name()},
                     depth_limit=state.settings.chain_depth_limit)
    except InvalidJobSetting as exc:
        return json_error(400, str(exc))
    return {"id": event["_id"], "name": event["name"], "runs": event.get("runs") or [], "note": event.get("note")}, 201
