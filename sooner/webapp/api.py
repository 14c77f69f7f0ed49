"""A small JSON REST API under ``/api``, authenticated with ``Authorization: Bearer <token>``.

GET  /api/jobs                       every job with its next fire and last run
GET  /api/jobs/<name>                one job (with its dead man's switch, ``alert``)
GET  /api/jobs/<name>/missed?before=&limit=   its missed ticks, newest first (``more``, ``next_before``)
POST /api/jobs/<name>/runs           start a run; body ``{"data": <any JSON>, "dedupe_key": "…"}`` (both
                                     optional); 201, or 200 with ``"deduplicated": true`` and the run that
                                     holds the key within the job's ``dedupe_window_s``       [admin]
GET  /api/runs?job=&status=&limit=   newest runs
GET  /api/runs/<run>                 one run, with ``chain``: its attempts [{id, ref, status, attempt}], and
                                     ``emitted``: the first 100 events it emitted (``emitted_more``)
GET  /api/runs/<run>/events?offset=&limit=   the events the run emitted, oldest first, with the runs each
                                     started (``more``, ``next_offset``)
GET  /api/failed, POST /api/failed/retry|dismiss   the Failed view (sooner.webapp.failed)
GET  /api/runs/<id>/output?after=N   output chunks after seq N, at most 1 MB (``more``, ``next_after``)
POST /api/runs/<id>/cancel           cancel a run                                           [admin]
POST /api/runs/<id>/move             body ``{"worker": "NAME"}``, ``{"tag": "TAG"}`` or ``{"any": true}``, and
                                     ``"kill": true`` to kill and relocate a running run; answers ``run``,
                                     ``relocated_from`` and ``warning`` (no online worker serves it) [admin]
POST /api/events/<name>              emit an event; body ``{"data": <any JSON>}`` (optional) [admin]

``<run>`` is ``JOB#N`` (url-encoded: ``hello.sh%2342``), ``JOB:N``, the run's id, or 6+ characters
from the start or end of its id; runs carry ``number`` and ``ref`` (``hello.sh#42``) beside ``id``.

Errors are ``{"error": "..."}`` with 400 (bad input), 401, 403, 404 or 409.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, request, url_for
from flask.typing import ResponseReturnValue

from sooner.errors import SoonerError
from sooner.model import ApiTrigger, Job, Run, RunStatus
from sooner.model.missed import JobAlert, MissedTick
from sooner.model.dedupe import InvalidDedupeKey, validate_dedupe_key
from sooner.model.job_settings import InvalidJobSetting
from sooner.model.target import ANY_WORKER, tag_target, worker_target
from sooner.model.waiting import WaitReason, wait_reasons
from sooner.scheduling.alerts import job_alerts
from sooner.webapp.context import (admin_required, api_token_id, json_error, user_name, web_now, web_runs, web_state,
                                   web_store)
from sooner.webapp.formatting import iso
from sooner.webapp.jobs import parse_time_arg
from sooner.store.reads import EMITTED_PAGE, OUTPUT_PAGE_BYTES, Emitted
from sooner.webapp.runs import chunk_json
from sooner.webapp.views import run_summary

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_BODY_BYTES = 1024 * 1024


def job_json(job: Job, *, next_fire: datetime | None = None, last_run: Run | None = None,
             alert: JobAlert | None = None) -> dict[str, Any]:
    return {
        "name": job.name, "enabled": job.enabled, "deleted": job.deleted, "new": job.new, "schedule": job.schedule,
        "timezone": job.timezone or "UTC", "worker": job.worker, "hooks": list(job.hooks), "timeout_s": job.timeout_s,
        "overlap": job.overlap.value, "missed": job.missed.value, "retry": job.retry.to_doc(), "commit": job.commit,
        "updated_at": iso(job.updated_at), "next_fire": iso(next_fire) or None,
        "last_run": last_run and {"id": last_run.id, "status": last_run.status.value,
                                  "queued_at": iso(last_run.queued_at)},
        "alert_after_s": job.alert_after_s, "dedupe_window_s": job.dedupe_window_s, "alert": _plain(alert.to_doc()) if alert else None,
    }


def missed_json(miss: MissedTick) -> dict[str, Any]:
    return {"id": miss.id, "job": miss.job, "reason": miss.reason.value, "description": miss.describe(),
            "scheduled_for": iso(miss.scheduled_for), "first": iso(miss.first), "count": miss.count,
            "capped": miss.capped, "trigger": {"kind": miss.trigger_kind, "key": miss.trigger_key},
            "recorded_at": iso(miss.recorded_at) or None, "run": miss.run}


def run_json(run: Run, waiting: WaitReason | None = None) -> dict[str, Any]:
    summary = run_summary(run, web_now(), waiting)
    summary.update({"trigger": _plain(run.trigger.to_doc()), "data": run.data, "commit": run.commit,
                    "attempt": run.attempt, "target": run.target, "dedupe_key": run.dedupe_key,
                    "relocated_to": run.relocated_to, "chain_root": run.chain_root, "next_attempt": run.next_attempt,
                    "failed_view": run.failed_view, "dismissed_at": iso(run.dismissed_at) or None,
                    "dismissed_by": run.dismissed_by})
    return summary


def chain_json(chain: list[Run]) -> list[dict[str, Any]]:
    """A run's attempts, first attempt first: ``[{id, ref, status, attempt}, …]``."""
    return [{"id": r.id, "ref": r.ref, "status": r.status.value, "attempt": r.attempt} for r in chain]


def emitted_json(emitted: Emitted) -> list[dict[str, Any]]:
    """Events a run emitted: name, time, data, depth, source, note, and the runs each started with their status."""
    def started(run_id: str) -> dict[str, Any]:
        run = emitted.runs.get(run_id)
        return ({"id": run_id, "ref": run.ref, "job": run.job, "number": run.number, "status": run.status.value}
                if run else {"id": run_id, "ref": run_id, "job": None, "number": None, "status": None})
    return [{"id": str(e["_id"]), "name": e.get("name"), "t": iso(e.get("t")) or None, "data": e.get("data"),
             "depth": e.get("depth"), "source": _plain(e.get("source")), "note": e.get("note"),
             "runs": [started(run_id) for run_id in e.get("runs") or []]} for e in emitted.events]


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
    body, error = _body_object(("data",), 'such as {"data": {...}}')
    return (body or {}).get("data"), error


def _body_object(fields: tuple[str, ...], example: str) -> tuple[dict[str, Any] | None, Any]:
    """(members, error response): a JSON object body with only ``fields`` (None when the body is empty)."""
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
        return None, json_error(400, f"the body must be a JSON object {example}")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        accepted = ", ".join(f'"{f}"' for f in fields)
        return None, json_error(400, f"unknown field(s) {', '.join(unknown)}: only {accepted} "
                                     f"{'is' if len(fields) == 1 else 'are'} accepted")
    return body, None


@bp.get("/jobs")
def jobs() -> ResponseReturnValue:
    state = web_state()
    include_deleted = request.args.get("deleted") in ("1", "true", "yes")
    found = state.store.jobs.list(include_deleted=include_deleted)
    stats = state.stats.get(j.name for j in found)
    now = web_now()
    alerts = job_alerts(state.store, found, now)
    return {"jobs": [job_json(j, last_run=stats[j.name].last, next_fire=_next_fire(j, now), alert=alerts[j.name])
                     for j in found]}


@bp.get("/jobs/<path:name>")
def job(name: str) -> ResponseReturnValue:
    state = web_state()
    found = state.store.jobs.get(name)
    now = web_now()
    return job_json(found, last_run=state.stats.get([name])[name].last, next_fire=_next_fire(found, now),
                    alert=job_alerts(state.store, [found], now)[name])


@bp.get("/jobs/<path:name>/missed")
def job_missed(name: str) -> ResponseReturnValue:
    """The job's missed ticks, newest first; page back with ``before`` = the answer's ``next_before``."""
    store = web_store()
    found = store.jobs.get(name)
    limit_text = request.args.get("limit", "").strip()
    if limit_text and not (limit_text.isdigit() and 1 <= int(limit_text) <= 500):
        return json_error(400, f"limit: must be a whole number from 1 to 500, got {limit_text[:20]!r}")
    before = parse_time_arg("before")
    page = store.missed.page(found.name, before=before, limit=int(limit_text) if limit_text else 50)
    return {"job": found.name, "missed": [missed_json(m) for m in page.items], "more": page.more,
            "next_before": iso(page.next_before) or None}


def _next_fire(job: Job, now: datetime) -> datetime | None:
    return web_state().fires.next_fire(job.schedule, job.timezone, now) if job.enabled else None


@bp.post("/jobs/<path:name>/runs")
@admin_required
def start_run(name: str) -> ResponseReturnValue:
    job = web_store().jobs.get(name)
    body, error = _body_object(("data", "dedupe_key"), 'such as {"data": {...}, "dedupe_key": "order-42"}')
    if error is not None:
        return error
    body = body or {}
    try:
        key = validate_dedupe_key(body["dedupe_key"]) if body.get("dedupe_key") is not None else None
    except InvalidDedupeKey as exc:
        return json_error(400, str(exc))
    run = web_runs().queue(job, ApiTrigger(source="api", author=user_name(), token=api_token_id()),
                           data=body.get("data"), dedupe_key=key)
    if run is None:
        return json_error(409, "the run was not started")
    answer = {"run": run_json(run, _waits([run]).get(run.id)), "url": url_for("runs.detail", run_id=run.id, _external=True),
              "deduplicated": run.deduplicated}
    return answer, 200 if run.deduplicated else 201


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
    waits = _waits(found)
    return {"runs": [run_json(r, waits.get(r.id)) for r in found]}


def _waits(runs: list[Run]) -> dict[str, WaitReason]:
    """Why those of ``runs`` that have not started wait (``waiting`` in a run's JSON)."""
    state = web_state()
    return wait_reasons(state.store.reads, runs, web_now(), state.settings.heartbeat_s)


@bp.get("/runs/<path:run_id>")
def run(run_id: str) -> ResponseReturnValue:
    store = web_store()
    found = store.runs.get(run_id)
    emitted = store.reads.emitted_events(found.id)
    return {**run_json(found, _waits([found]).get(found.id)), "chain": chain_json(store.reads.chain(found)), "emitted": emitted_json(emitted),
            "emitted_more": emitted.more}


@bp.get("/runs/<path:run_id>/events")
def run_events(run_id: str) -> ResponseReturnValue:
    """The events the run emitted, oldest first, from ``offset``: at most ``limit`` (100); page on with ``next_offset``."""
    store = web_store()
    found = store.runs.get(run_id)
    offset, error = _whole_arg("offset", 0, 0, 10**9)
    if error is not None:
        return error
    limit, error = _whole_arg("limit", EMITTED_PAGE, 1, EMITTED_PAGE)
    if error is not None:
        return error
    emitted = store.reads.emitted_events(found.id, offset=offset, limit=limit)
    return {"run": found.id, "ref": found.ref, "events": emitted_json(emitted), "more": emitted.more,
            "next_offset": emitted.next_offset}


def _whole_arg(name: str, default: int, low: int, high: int) -> tuple[int, Any]:
    """(value, error response): query argument ``name`` as a whole number from ``low`` to ``high``."""
    text = request.args.get(name, "").strip()
    if not text:
        return default, None
    if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
        return default, json_error(400, f"{name}: must be a whole number from {low} to {high}, got {text[:20]!r}")
    return int(text), None


@bp.get("/runs/<path:run_id>/output")
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


@bp.post("/runs/<path:run_id>/cancel")
@admin_required
def cancel(run_id: str) -> ResponseReturnValue:
    found = web_store().runs.get(run_id)
    try:
        return run_json(web_runs().cancel(found.id, by=user_name()))
    except SoonerError as exc:
        return json_error(409, str(exc))


@bp.post("/runs/<path:run_id>/move")
@admin_required
def move(run_id: str) -> ResponseReturnValue:
    """Aim a queued or waiting run at another worker or tag; ``"kill": true`` relocates a running one."""
    found = web_store().runs.get(run_id)
    body, error = _body_object(("worker", "tag", "any", "kill"), 'such as {"worker": "NAME"} or {"tag": "TAG"}')
    if error is not None:
        return error
    body = body or {}
    given = [key for key in ("worker", "tag", "any") if body.get(key) not in (None, False)]
    if len(given) != 1 or body.get("any") not in (None, True, False) or body.get("kill") not in (None, True, False):
        return json_error(400, 'give exactly one of "worker": "NAME", "tag": "TAG" or "any": true '
                               '(and "kill": true or false)')
    if given != ["any"] and not isinstance(body[given[0]], str):
        return json_error(400, f"{given[0]}: must be a string, got {type(body[given[0]]).__name__}")
    try:
        target = (worker_target(body["worker"]) if given == ["worker"] else
                  tag_target(body["tag"]) if given == ["tag"] else ANY_WORKER)
        moved = web_runs().move(found.id, target, by=user_name(), kill=bool(body.get("kill")))
    except InvalidJobSetting as exc:
        return json_error(400, str(exc))
    except SoonerError as exc:
        return json_error(409, str(exc))
    return {"run": run_json(moved.run), "relocated_from": moved.relocated_from and run_json(moved.relocated_from),
            "warning": moved.warning}


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
