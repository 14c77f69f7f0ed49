"""``/api/v1/jobs``: list, get, patch settings, start a run."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import url_for
from flask.typing import ResponseReturnValue

from sooner.model import ApiTrigger, Job, Run
from sooner.model.data import check_run_data
from sooner.model.dedupe import InvalidDedupeKey, validate_dedupe_key
from sooner.model.job_settings import InvalidJobSetting, settings_changes
from sooner.model.notify import shown_rule
from sooner.model.token import ApiAction
from sooner.webapp.context import api_token_id, user_name, web_now, web_runs, web_state, web_store
from sooner.webapp.formatting import iso
from sooner.webapp.v1 import schemas as s
from sooner.webapp.v1.common import allowed, blp, refuse
from sooner.webapp.v1.runs import run_body

# InvalidJobSetting keys (sooner.model.job_settings) -> the v1 field they are about.
_FIELDS = {"timeout": "timeout_s", "retry": "retry.attempts", "backoff_base": "retry.backoff_base_s",
           "backoff_factor": "retry.backoff_factor", "max_backoff": "retry.max_backoff_s", "jitter": "retry.jitter",
           "hook": "hooks", "alert_after": "alert_after_s", "dedupe_window": "dedupe_window_s"}
# v1 retry fields -> settings_changes' option names.
_RETRY_OPTIONS = {"attempts": "retry_attempts", "backoff_base_s": "backoff_base_s", "backoff_factor": "backoff_factor",
                  "max_backoff_s": "max_backoff_s", "jitter": "jitter"}


def job_body(job: Job, *, next_fire: datetime | None = None, last_run: Run | None = None) -> dict[str, Any]:
    return {
        "name": job.name, "kind": job.kind.value, "enabled": job.enabled, "deleted": job.deleted,
        "schedule": job.schedule,
        "timezone": job.timezone or "UTC", "worker": job.worker, "hooks": list(job.hooks), "timeout_s": job.timeout_s,
        "memory_limit_mb": job.memory_limit_mb, "retry": job.retry.to_doc(), "overlap": job.overlap.value,
        "missed": job.missed.value, "alert_after_s": job.alert_after_s, "dedupe_window_s": job.dedupe_window_s,
        "requires": list(job.requires), "max_concurrent": job.max_concurrent,
        "notify": [shown_rule(rule) for rule in job.notify_rules()], "commit": job.commit, "updated_at": iso(job.updated_at) or None, "next_fire": iso(next_fire) or None,
        "last_run": last_run and {"id": last_run.id, "number": last_run.number, "status": last_run.status.value,
                                  "queued_at": iso(last_run.queued_at) or None},
    }


def _next_fire(job: Job, now: datetime) -> datetime | None:
    return web_state().fires.next_fire(job.schedule, job.timezone, now) if job.enabled else None


def _one(job: Job) -> dict[str, Any]:
    return job_body(job, last_run=web_state().stats.get([job.name])[job.name].last, next_fire=_next_fire(job, web_now()))


@blp.route("/jobs")
@blp.arguments(s.JobListQuery, location="query")
@blp.response(200, s.JobListSchema)
def list_jobs(query: dict[str, Any]) -> ResponseReturnValue:
    """Every job, with its next fire and last run."""
    state, now = web_state(), web_now()
    found = state.store.jobs.list(include_deleted=query["deleted"])
    stats = state.stats.get(j.name for j in found)
    return {"jobs": [job_body(j, last_run=stats[j.name].last, next_fire=_next_fire(j, now)) for j in found]}


@blp.route("/jobs/<path:name>")
@blp.response(200, s.JobSchema)
def get_job(name: str) -> ResponseReturnValue:
    """One job."""
    return _one(web_store().jobs.get(name))


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """The patch as ``settings_changes`` options (None = unchanged; "" / 0 clear)."""
    options: dict[str, Any] = {}
    if "schedule" in body:
        options["schedule"] = body["schedule"] or ""
    if "timezone" in body:
        options["tz"] = body["timezone"]
    if "worker" in body:
        options["worker"] = body["worker"] or ""
    for key in ("timeout_s", "memory_limit_mb", "alert_after_s", "dedupe_window_s"):
        if key in body:
            options[key] = body[key] or 0
    for key in ("overlap", "missed", "hooks"):
        if key in body:
            options[key] = body[key]
    if "notify" in body:
        options["notify"] = body["notify"] or []
    if "requires" in body:
        options["requires"] = body["requires"] or []
    if "max_concurrent" in body:
        options["max_concurrent"] = body["max_concurrent"] or 0
    for key, option in _RETRY_OPTIONS.items():
        if key in (body.get("retry") or {}):
            options[option] = body["retry"][key]
    return options


@blp.route("/jobs/<path:name>", methods=["PATCH"])
@blp.arguments(s.JobPatchSchema)
@blp.response(200, s.JobSchema)
def patch_job(body: dict[str, Any], name: str) -> ResponseReturnValue:
    """Change a job's settings: only the fields given (the same validation as the UI and `sooner job set`)."""
    store = web_store()
    job = store.jobs.get(name)
    if (refusal := allowed(ApiAction.ADMIN, [job.name])) is not None:
        return refusal
    try:
        changes = settings_changes(job, _options(body))
    except InvalidJobSetting as exc:
        exc.field = _FIELDS.get(exc.key, exc.key)  # type: ignore[attr-defined]
        raise
    hooks = body.get("hooks")
    current = list(job.hooks)
    store.jobs.update_settings(job.name, changes,
                               add_hooks=[h for h in hooks if h not in current] if hooks is not None else (),
                               remove_hooks=[h for h in current if h not in hooks] if hooks is not None else ())
    if "enabled" in body and body["enabled"] != job.enabled:
        if body["enabled"] and job.deleted:
            return refuse(409, f"job {job.name!r} was removed from the repository; push it again to enable it",
                          "enabled")
        store.jobs.set_enabled(job.name, body["enabled"])
    return _one(store.jobs.get(job.name))


@blp.route("/jobs/<path:name>/runs", methods=["POST"])
@blp.arguments(s.StartRunSchema)
@blp.response(201, s.RunSchema, headers={"Location": {"description": "the new run", "schema": {"type": "string"}}})
@blp.alt_response(200, schema=s.RunSchema, description="a run holding the same dedupe key (no new run)")
def start_run(body: dict[str, Any], name: str) -> ResponseReturnValue:
    """Start a run now, with ``data``; answers at once (201 and ``Location``)."""
    job = web_store().jobs.get(name)
    if (refusal := allowed(ApiAction.RUN, [job.name])) is not None:
        return refusal
    try:
        key = validate_dedupe_key(body["dedupe_key"]) if body.get("dedupe_key") is not None else None
    except InvalidDedupeKey as exc:
        return refuse(422, str(exc), "dedupe_key")
    if job.deleted:
        return refuse(409, f"job {job.name!r} was removed from the repository")
    data = check_run_data(body.get("data"), "data")  # InvalidData: a 422 naming the part (v1.common)
    run = web_runs().queue(job, ApiTrigger(source="api", author=user_name(), token=api_token_id()), data=data, dedupe_key=key)
    if run is None:
        return refuse(409, "the run was not started")
    location = url_for("v1.get_run", run_id=run.id)
    return run_body(run), 200 if run.deduplicated else 201, {"Location": location}
