"""A small JSON REST API under ``/api``, authenticated with ``Authorization: Bearer <token>``.

GET  /api/jobs                       every job with its next fire and last run
GET  /api/jobs/<name>                one job
POST /api/jobs/<name>/runs           start a run; body ``{"data": <any JSON>}`` (optional)   [admin]
GET  /api/runs?job=&status=&limit=   newest runs
GET  /api/runs/<id>                  one run
GET  /api/runs/<id>/output?after=N   output chunks after seq N, at most 1 MB (``more``, ``next_after``)
POST /api/runs/<id>/cancel           cancel a run                                           [admin]
POST /api/events/<name>              emit an event; body ``{"data": <any JSON>}`` (optional) [admin]

Errors are ``{"error": "..."}`` with 400 (bad input), 401, 403, 404 or 409.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, request, url_for
from flask.typing import ResponseReturnValue

from sooner.errors import SoonerError
from sooner.model import ApiTrigger, Job, Run, RunStatus
from sooner.model.job_settings import InvalidJobSetting
from sooner.webapp.context import admin_required, json_error, user_name, web_now, web_runs, web_state, web_store
from sooner.webapp.formatting import iso
from sooner.store.reads import OUTPUT_PAGE_BYTES
from sooner.webapp.runs import chunk_json
from sooner.webapp.views import run_summary

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_BODY_BYTES = 1024 * 1024


def job_json(job: Job, *, next_fire: datetime | None = None, last_run: Run | None = None) -> dict[str, Any]:
    return {
        "name": job.name, "enabled": job.enabled, "deleted": job.deleted, "new": job.new, "schedule": job.schedule,
        "timezone": job.timezone or "UTC", "worker": job.worker, "hooks": list(job.hooks), "timeout_s": job.timeout_s,
        "overlap": job.overlap.value, "missed": job.missed.value, "retry": job.retry.to_doc(), "commit": job.commit,
        "updated_at": iso(job.updated_at), "next_fire": iso(next_fire) or None,
        "last_run": last_run and {"id": last_run.id, "status": last_run.status.value,
                                  "queued_at": iso(last_run.queued_at)},
    }


def run_json(run: Run) -> dict[str, Any]:
    summary = run_summary(run, web_now())
    summary.update({"trigger": _plain(run.trigger.to_doc()), "data": run.data, "commit": run.commit,
                    "attempt": run.attempt, "target": run.target})
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
def jobs() -> ResponseReturnValue:
    state = web_state()
    include_deleted = request.args.get("deleted") in ("1", "true", "yes")
    found = state.store.jobs.list(include_deleted=include_deleted)
    stats = state.stats.get(j.name for j in found)
    now = web_now()
    return {"jobs": [job_json(j, last_run=stats[j.name].last, next_fire=_next_fire(j, now)) for j in found]}


@bp.get("/jobs/<path:name>")
def job(name: str) -> ResponseReturnValue:
    state = web_state()
    found = state.store.jobs.get(name)
    return job_json(found, last_run=state.stats.get([name])[name].last, next_fire=_next_fire(found, web_now()))


def _next_fire(job: Job, now: datetime) -> datetime | None:
    return web_state().fires.next_fire(job.schedule, job.timezone, now) if job.enabled else None


@bp.post("/jobs/<path:name>/runs")
@admin_required
def start_run(name: str) -> ResponseReturnValue:
    job = web_store().jobs.get(name)
    data, error = _body_data()
    if error is not None:
        return error
    run = web_runs().queue(job, ApiTrigger(source="api", author=user_name()), data=data)
    if run is None:
        return json_error(409, "the run was not started")
    return {"run": run_json(run), "url": url_for("runs.detail", run_id=run.id, _external=True)}, 201


@bp.get("/runs")
def runs() -> ResponseReturnValue:
    store = web_store()
    status = request.args.get("status") or None
    try:
        status = RunStatus.parse(status).value if status else None
    except ValueError as exc:
        return json_error(400, str(exc))
    limit = min(max(request.args.get("limit", 50, type=int) or 50, 1), 500)
    found = store.reads.runs_page(job=request.args.get("job") or None, status=status, limit=limit)
    return {"runs": [run_json(r) for r in found]}


@bp.get("/runs/<run_id>")
def run(run_id: str) -> ResponseReturnValue:
    return run_json(web_store().runs.get(run_id))


@bp.get("/runs/<run_id>/output")
def run_output(run_id: str) -> ResponseReturnValue:
    """Chunks after seq ``after``: at most ``limit`` and :data:`OUTPUT_PAGE_BYTES`; page on with ``next_after``."""
    store = web_store()
    found = store.runs.get(run_id)  # before the chunks: a finished status then means nothing follows them
    after = request.args.get("after", -1, type=int)
    limit = min(max(request.args.get("limit", 1000, type=int) or 1000, 1), 5000)
    page = store.reads.output_after(found.id, after, limit=limit, max_bytes=OUTPUT_PAGE_BYTES)
    answer = {"run": found.id, "status": found.status.value, "chunks": [chunk_json(c) for c in page.chunks],
              "more": page.more, "next_after": page.next_after}
    if not page.chunks and after < 0:
        answer["removed_by_retention"] = store.reads.output_removed(found, web_now())
    return answer


@bp.post("/runs/<run_id>/cancel")
@admin_required
def cancel(run_id: str) -> ResponseReturnValue:
    found = web_store().runs.get(run_id)
    try:
        return run_json(web_runs().cancel(found.id, by=user_name()))
    except SoonerError as exc:
        return json_error(409, str(exc))


@bp.post("/events/<path:name>")
@admin_required
def emit_event(name: str) -> ResponseReturnValue:
    data, error = _body_data()
    if error is not None:
        return error
    try:
        event = web_runs().emit(name, data, source={"type": "api", "author": user_name()})
    except InvalidJobSetting as exc:
        return json_error(400, str(exc))
    return {"id": event["_id"], "name": event["name"], "runs": event.get("runs") or [], "note": event.get("note")}, 201
