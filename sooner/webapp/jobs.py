"""Jobs: the list (filters, search, toggles), one job's page and form, Run now, schedule preview.

Job names are repository paths with slashes, so a job has one URL,
``/jobs/<path>``, and its state changes are POSTs there with an ``action``
field (``save``, ``enable``, ``disable``, ``run``): no suffix can be confused
with a job whose file happens to be called ``run``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any
from zoneinfo import available_timezones

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from sooner.errors import ScheduleError, SoonerError
from sooner.model import Job, ManualTrigger, Missed, Overlap, RetryPolicy, Run
from sooner.model.job_settings import InvalidJobSetting, settings_changes
from sooner.scheduling.alerts import job_alerts
from sooner.webapp.context import (admin_required, json_error, user_name, wants_json, web_now, web_runs, web_state,
                                   web_store)
from sooner.webapp.stats import JobRunStats, describe_schedule

bp = Blueprint("jobs", __name__)

FILTERS = ("all", "enabled", "disabled", "new", "failing", "deleted")
HISTORY = 50
MISSED_PAGE = 20  # missed-tick records per page of a job's page
BACKOFF_FIELDS = ("backoff_base_s", "backoff_factor", "max_backoff_s", "jitter")
MAX_SOURCE_BYTES = 512 * 1024
MAX_DATA_CHARS = 1024 * 1024
_TIMEZONES: list[str] = []


def timezones() -> list[str]:
    if not _TIMEZONES:
        _TIMEZONES.extend(sorted(available_timezones()))
    return _TIMEZONES


@bp.get("/jobs")
def index() -> ResponseReturnValue:
    state = web_state()
    show = request.args.get("show", "all")
    show = show if show in FILTERS else "all"
    search = request.args.get("q", "").strip()
    jobs = state.store.jobs.list(include_deleted=show in ("deleted", "all"))
    if search:
        needle = search.lower()
        jobs = [j for j in jobs if needle in j.name.lower()]
    stats = state.stats.get(j.name for j in jobs)
    now = web_now()
    alerts = job_alerts(state.store, jobs, now)
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": job, "stats": stats[job.name], "next": None, "description": None,
                               "alert": alerts[job.name]}
        if not _matches(show, job, row["stats"]):
            continue
        if job.schedule:
            row["description"] = describe_schedule(job.schedule)
            if job.schedulable:
                row["next"] = state.fires.next_fire(job.schedule, job.timezone, now)
        rows.append(row)
    # New jobs (just pushed, untouched) first, so a push is easy to follow up.
    rows.sort(key=lambda r: (not r["job"].new, r["job"].name))
    return render_template("jobs.html", rows=rows, show=show, search=search, filters=FILTERS)


def _matches(show: str, job: Job, stats: JobRunStats) -> bool:
    if show == "deleted":
        return job.deleted
    if show == "all":
        return not job.deleted
    if job.deleted:
        return False
    return {"enabled": job.enabled, "disabled": not job.enabled, "new": job.new,
            "failing": stats.failing}.get(show, True)


@bp.get("/jobs/<path:name>")
def detail(name: str) -> ResponseReturnValue:
    return _render_detail(web_store().jobs.get(name))


def _render_detail(job: Job, *, form: dict | None = None, errors: dict | None = None, run_data: str = "",
                   status: int = 200) -> ResponseReturnValue:
    history = web_store().reads.job_history(job.name, HISTORY)
    now = web_now()
    if form:  # a refused form previews what was typed, not the saved schedule
        shown = (form["schedule"].strip(), form["timezone"].strip() or "UTC")
    else:
        shown = (job.schedule or "", job.timezone or "UTC")
    fires, fires_error = _preview(*shown)
    before = parse_time_arg("missed_before")
    missed = web_store().missed.page(job.name, before=before, limit=MISSED_PAGE)
    missed_runs = web_store().reads.runs_by_id([m.run for m in missed.items if m.run], ("number",))
    return render_template(
        "job.html", job=job, form=form or _form_values(job), errors=errors or {}, history=history, now=now,
        alert=job_alerts(web_store(), [job], now)[job.name], missed=missed, missed_runs=missed_runs,
        missed_paged=before is not None,
        chart=history_chart(history, now), fires=fires, fires_error=fires_error, source=_source(job),
        timezones=timezones(), overlaps=[o.value for o in Overlap], misseds=[m.value for m in Missed],
        run_data=run_data, description=describe_schedule(job.schedule) if job.schedule else None,
        preview_description=describe_schedule(shown[0]) if fires else None,
        usage=web_store().reads.job_usage(job.name), http=_http_steps(job),
    ), status


def _http_steps(job: Job) -> dict[str, Any] | None:
    """An HTTP job's deployed steps (placeholders, never secret values) for its page; None for a script."""
    from sooner.model.http_job import InvalidHttpJob, JobKind, parse_http_job

    if job.kind is not JobKind.HTTP:
        return None
    data = web_store().objects.get_blob(job.blob) if job.blob else None
    try:
        return {"spec": parse_http_job(data or b""), "error": None}
    except InvalidHttpJob as exc:
        return {"spec": None, "error": f"the deployed document is not valid: {exc}"}


def _form_values(job: Job) -> dict[str, Any]:
    return {
        "schedule": job.schedule or "", "timezone": job.timezone or "UTC", "worker": job.worker or "",
        "hooks": ", ".join(job.hooks), "timeout_s": _number_text(job.timeout_s), "overlap": job.overlap.value,
        "missed": job.missed.value, "retry_attempts": str(job.retry.attempts), "enabled": job.enabled,
        "alert_after_s": _number_text(job.alert_after_s), "dedupe_window_s": _number_text(job.dedupe_window_s),
        "backoff_base_s": _number_text(job.retry.backoff_base_s), "backoff_factor": _number_text(job.retry.backoff_factor),
        "max_backoff_s": _number_text(job.retry.max_backoff_s), "jitter": _number_text(job.retry.jitter),
        "notify": "", "requires": ", ".join(job.requires), "max_concurrent": str(job.max_concurrent or ""),
    }


def _number_text(value: Any) -> str:
    if value in (None, ""):
        return ""
    number = float(value)
    return str(int(number)) if number.is_integer() else str(number)


def _source(job: Job) -> dict[str, Any]:
    blob = job.blob
    data = web_store().objects.get_blob(blob) if blob else None
    if data is None:
        return {"text": None, "note": "the script's content is not stored (deployed before Sooner kept blobs?)"}
    if b"\0" in data[:8192]:
        return {"text": None, "note": f"binary file, {len(data):,} bytes"}
    note = None
    if len(data) > MAX_SOURCE_BYTES:
        note = f"showing the first {MAX_SOURCE_BYTES // 1024} KB of {len(data):,} bytes"
        data = data[:MAX_SOURCE_BYTES]
    return {"text": data.decode("utf-8", errors="replace"), "note": note}


def history_chart(runs: list[Run], now: datetime, width: int = 600,
                  height: int = 80) -> dict[str, Any] | None:
    """Bars of the durations of finished runs, oldest left: SVG geometry computed here, so the page needs no script."""
    points = [(run, seconds) for run in reversed(runs) if run.finished
              for seconds in [run.duration(now)] if seconds is not None]
    if not points:
        return None
    longest = max(seconds for _, seconds in points) or 1.0
    slots = max(len(points), 25)  # a few runs make narrow bars on the right, not one wide block
    slot = width / slots
    offset = slots - len(points)
    bars = []
    for i, (run, seconds) in enumerate(points):
        h = max(2.0, seconds / longest * (height - 4))
        bars.append({"x": round((offset + i) * slot + slot * 0.1, 2), "y": round(height - h, 2),
                     "w": round(slot * 0.8, 2), "h": round(h, 2), "status": run.status.value, "id": run.id,
                     "duration": seconds})
    return {"width": width, "height": height, "bars": bars, "longest": longest}


@bp.post("/jobs/<path:name>")
@admin_required
def change(name: str) -> ResponseReturnValue:
    store = web_store()
    job = store.jobs.get(name)
    action = request.form.get("action", "save")
    if action in ("enable", "disable"):
        job = store.jobs.set_enabled(name, action == "enable")
        if wants_json():
            return {"name": name, "enabled": job.enabled}
        flash(f"{'enabled' if job.enabled else 'disabled'} {name}")
        return redirect(_back(url_for("jobs.detail", name=name)))
    if action == "run":
        return _run_now(job)
    if action == "save":
        return _save(job)
    return json_error(400, f"unknown action {action!r}") if wants_json() else ("unknown action", 400)


def _back(default: str) -> str:
    target = request.form.get("next", "")
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else default


def _save(job: Job) -> ResponseReturnValue:
    store = web_store()
    keys = ("schedule", "timezone", "worker", "hooks", "timeout_s", "overlap", "missed", "retry_attempts")
    form: dict[str, Any] = {key: request.form.get(key, "") for key in keys}
    form["enabled"] = request.form.get("enabled") == "on"
    hooks = [h for h in re.split(r"[\s,]+", form["hooks"]) if h]
    errors: dict[str, str] = {}
    options: dict[str, Any] = {"schedule": form["schedule"], "tz": form["timezone"], "worker": form["worker"],
                               "overlap": form["overlap"], "missed": form["missed"], "hooks": hooks}
    for key, label in (("timeout_s", "timeout"), ("retry_attempts", "retry")):
        text = form[key].strip()
        try:
            options[key] = (float(text) if key == "timeout_s" else int(text)) if text else 0
        except ValueError:
            errors[key] = f"{label}: not a number: {text!r}"
    if "alert_after_s" in request.form:  # empty: the default grace (0)
        form["alert_after_s"] = request.form["alert_after_s"]
        options["alert_after_s"] = form["alert_after_s"].strip() or "0"
    if "dedupe_window_s" in request.form:  # empty: off (0)
        form["dedupe_window_s"] = request.form["dedupe_window_s"]
        options["dedupe_window_s"] = form["dedupe_window_s"].strip() or "0"
    for key in ("requires", "max_concurrent"):  # absent: unchanged; empty: none / no limit
        if key in request.form:
            form[key] = request.form[key]
            options[key] = form[key]
    if request.form.get("notify", "").strip():  # empty: unchanged (the stored targets hold secrets, never shown)
        form["notify"] = request.form["notify"]
        options["notify"] = form["notify"]
    for key in BACKOFF_FIELDS:  # absent: unchanged; empty: the default; settings_changes checks the text
        if key in request.form:
            form[key] = request.form[key]
            options[key] = form[key].strip() or str(getattr(RetryPolicy(), key))
    try:
        changes = settings_changes(job, options) if not errors else {}
    except InvalidJobSetting as exc:
        errors[_field_of(exc.key)] = str(exc)
    if errors:
        return _render_detail(job, form=form, errors=errors, status=400)
    current = list(job.hooks)
    store.jobs.update_settings(job.name, changes, add_hooks=[h for h in hooks if h not in current],
                               remove_hooks=[h for h in current if h not in hooks])
    if form["enabled"] != job.enabled:
        try:
            store.jobs.set_enabled(job.name, form["enabled"])
        except SoonerError as exc:
            return _render_detail(store.jobs.get(job.name), form=form, errors={"enabled": str(exc)}, status=400)
    flash(f"saved {job.name}")
    return redirect(url_for("jobs.detail", name=job.name))


def _field_of(key: str) -> str:
    return {"timezone": "timezone", "schedule": "schedule", "worker": "worker", "timeout": "timeout_s",
            "overlap": "overlap", "missed": "missed", "retry": "retry_attempts", "hook": "hooks",
            "backoff_base": "backoff_base_s", "max_backoff": "max_backoff_s",
            "alert_after": "alert_after_s", "dedupe_window": "dedupe_window_s", "notify": "notify"}.get(key, key)


def parse_time_arg(name: str) -> datetime | None:
    """The ISO-8601 time in query argument ``name`` (naive = UTC), None if absent; SoonerError (400) if malformed."""
    text = request.args.get(name, "").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SoonerError(f"{name}: not an ISO-8601 time such as 2026-01-05T10:00:00Z: {text[:40]!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_run_data(text: str) -> Any:
    """The optional JSON data of a manual run; ValueError with a readable message."""
    if not text.strip():
        return None
    if len(text) > MAX_DATA_CHARS:
        raise ValueError(f"data is larger than {MAX_DATA_CHARS // 1024} KB")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"data is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _run_now(job: Job) -> ResponseReturnValue:
    text = request.form.get("data", "")
    try:
        data = parse_run_data(text)
    except ValueError as exc:
        if wants_json():
            return json_error(400, str(exc))
        return _render_detail(job, errors={"data": str(exc)}, run_data=text, status=400)
    run = web_runs().queue(job, ManualTrigger(source="web", author=user_name()), data=data)
    if run is None:
        return json_error(409, "the run was not started") if wants_json() else ("the run was not started", 409)
    if wants_json():
        return {"run": run.id, "url": url_for("runs.detail", run_id=run.id)}, 201
    return redirect(url_for("runs.detail", run_id=run.id))


def _preview(expr: str | None, tz: str) -> tuple[list[datetime], str | None]:
    from sooner.scheduling.cron import next_fires

    if not expr:
        return [], None
    try:
        return next_fires(expr, tz, web_now(), 5), None
    except ScheduleError as exc:
        return [], str(exc)


@bp.get("/schedule/preview")
def preview() -> ResponseReturnValue:
    """Next 5 fire times for a schedule being typed (the same function the scheduler uses)."""
    from sooner.scheduling.cron import validate_cron, validate_timezone

    expr = request.args.get("schedule", "").strip()
    tz = request.args.get("tz", "").strip() or "UTC"
    if not expr:
        return {"ok": True, "empty": True, "fires": [], "description": "no schedule: runs only on demand or by hooks"}
    try:
        validate_timezone(tz)
        normalised = validate_cron(expr)
        fires, _ = _preview(normalised, tz)
    except ScheduleError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "schedule": normalised, "description": describe_schedule(normalised),
            "fires": [f.isoformat() for f in fires],
            "fires_text": [f.strftime("%a %Y-%m-%d %H:%M:%S %Z (UTC%z)") for f in fires]}

