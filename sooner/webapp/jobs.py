"""Jobs: the list (filters, search, toggles), one job's page and form, Run now, schedule preview.

Job names are repository paths with slashes, so a job has one URL,
``/jobs/<path>``, and its state changes are POSTs there with an ``action``
field (``save``, ``enable``, ``disable``, ``run``): no suffix can be confused
with a job whose file happens to be called ``run``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import available_timezones

from flask import Blueprint, flash, redirect, render_template, request, url_for

from sooner.errors import ScheduleError, SoonerError
from sooner.jobs import InvalidJobSetting, settings_changes
from sooner.store.jobs import Missed, Overlap
from sooner.webapp.context import admin_required, json_error, user_name, wants_json, web_state, web_store
from sooner.webapp.stats import describe_schedule

bp = Blueprint("jobs", __name__)

FILTERS = ("all", "enabled", "disabled", "new", "failing", "deleted")
HISTORY = 50
MAX_SOURCE_BYTES = 512 * 1024
MAX_DATA_CHARS = 1024 * 1024
_TIMEZONES: list[str] = []


def timezones() -> list[str]:
    if not _TIMEZONES:
        _TIMEZONES.extend(sorted(available_timezones()))
    return _TIMEZONES


@bp.get("/jobs")
def index():
    state = web_state()
    show = request.args.get("show", "all")
    show = show if show in FILTERS else "all"
    search = request.args.get("q", "").strip()
    jobs = state.store.jobs.list(include_deleted=show in ("deleted", "all"))
    if search:
        needle = search.lower()
        jobs = [j for j in jobs if needle in j["_id"].lower()]
    stats = state.stats.get(j["_id"] for j in jobs)
    now = datetime.now(UTC)
    rows = []
    for job in jobs:
        row = {"job": job, "stats": stats[job["_id"]], "next": None, "description": None}
        if not _matches(show, job, row["stats"]):
            continue
        if job.get("schedule"):
            row["description"] = describe_schedule(job["schedule"])
            if job.get("enabled") and not job.get("deleted"):
                row["next"] = state.fires.next_fire(job["schedule"], job.get("timezone"), now)
        rows.append(row)
    # New jobs (just pushed, untouched) first, so a push is easy to follow up.
    rows.sort(key=lambda r: (not r["job"].get("new"), r["job"]["_id"]))
    return render_template("jobs.html", rows=rows, show=show, search=search, filters=FILTERS)


def _matches(show: str, job: dict, stats: Any) -> bool:
    deleted = bool(job.get("deleted"))
    if show == "deleted":
        return deleted
    if show == "all":
        return not deleted
    if deleted:
        return False
    return {"enabled": bool(job.get("enabled")), "disabled": not job.get("enabled"), "new": bool(job.get("new")),
            "failing": stats.failing}.get(show, True)


@bp.get("/jobs/<path:name>")
def detail(name: str):
    return _render_detail(web_store().jobs.get(name))


def _render_detail(job: dict, *, form: dict | None = None, errors: dict | None = None, run_data: str = "",
                   status: int = 200):
    store = web_store()
    name = job["_id"]
    history = store.retry(lambda: list(store.db.runs.find(
        {"job": name}, {"data": 0, "trigger.message": 0}).sort("queued_at", -1).limit(HISTORY)))
    fires, fires_error = _preview(job.get("schedule"), job.get("timezone") or "UTC")
    return render_template(
        "job.html", job=job, form=form or _form_values(job), errors=errors or {}, history=history,
        chart=history_chart(history), fires=fires, fires_error=fires_error, source=_source(job),
        timezones=timezones(), overlaps=[o.value for o in Overlap], misseds=[m.value for m in Missed],
        run_data=run_data, description=describe_schedule(job["schedule"]) if job.get("schedule") else None,
    ), status


def _form_values(job: dict) -> dict[str, Any]:
    return {
        "schedule": job.get("schedule") or "", "timezone": job.get("timezone") or "UTC",
        "worker": job.get("worker") or "", "hooks": ", ".join(job.get("hooks") or []),
        "timeout_s": _number_text(job.get("timeout_s")), "overlap": job.get("overlap") or Overlap.SKIP.value,
        "missed": job.get("missed") or Missed.SKIP.value,
        "retry_attempts": str((job.get("retry") or {}).get("attempts", 0)),
        "enabled": bool(job.get("enabled")),
    }


def _number_text(value: Any) -> str:
    if value in (None, ""):
        return ""
    number = float(value)
    return str(int(number)) if number.is_integer() else str(number)


def _source(job: dict) -> dict[str, Any]:
    blob = job.get("blob")
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


def history_chart(runs: list[dict], width: int = 600, height: int = 80) -> dict[str, Any] | None:
    """Bars of run durations, oldest left: SVG geometry computed here, so the page needs no chart script."""
    points = [r for r in reversed(runs) if r.get("duration_s") is not None]
    if not points:
        return None
    longest = max(float(r["duration_s"]) for r in points) or 1.0
    slots = max(len(points), 25)  # a few runs make narrow bars on the right, not one wide block
    slot = width / slots
    offset = slots - len(points)
    bars = []
    for i, run in enumerate(points):
        h = max(2.0, float(run["duration_s"]) / longest * (height - 4))
        bars.append({"x": round((offset + i) * slot + slot * 0.1, 2), "y": round(height - h, 2),
                     "w": round(slot * 0.8, 2), "h": round(h, 2), "status": run.get("status"), "id": run["_id"],
                     "duration": float(run["duration_s"])})
    return {"width": width, "height": height, "bars": bars, "longest": longest}


@bp.post("/jobs/<path:name>")
@admin_required
def change(name: str):
    store = web_store()
    job = store.jobs.get(name)
    action = request.form.get("action", "save")
    if action in ("enable", "disable"):
        job = store.jobs.set_enabled(name, action == "enable")
        if wants_json():
            return {"name": name, "enabled": job.get("enabled")}
        flash(f"{'enabled' if job.get('enabled') else 'disabled'} {name}")
        return redirect(_back(url_for("jobs.detail", name=name)))
    if action == "run":
        return _run_now(job)
    if action == "save":
        return _save(job)
    return json_error(400, f"unknown action {action!r}") if wants_json() else ("unknown action", 400)


def _back(default: str) -> str:
    target = request.form.get("next", "")
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else default


def _save(job: dict):
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
    try:
        changes = settings_changes(job, options) if not errors else {}
    except InvalidJobSetting as exc:
        errors[_field_of(exc.key)] = str(exc)
    if errors:
        return _render_detail(job, form=form, errors=errors, status=400)
    current = list(job.get("hooks") or [])
    store.jobs.update_settings(job["_id"], changes, add_hooks=[h for h in hooks if h not in current],
                               remove_hooks=[h for h in current if h not in hooks])
    if form["enabled"] != bool(job.get("enabled")):
        try:
            store.jobs.set_enabled(job["_id"], form["enabled"])
        except SoonerError as exc:
            return _render_detail(store.jobs.get(job["_id"]), form=form, errors={"enabled": str(exc)}, status=400)
    flash(f"saved {job['_id']}")
    return redirect(url_for("jobs.detail", name=job["_id"]))


def _field_of(key: str) -> str:
    return {"timezone": "timezone", "schedule": "schedule", "worker": "worker", "timeout": "timeout_s",
            "overlap": "overlap", "missed": "missed", "retry": "retry_attempts", "hook": "hooks"}.get(key, key)


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


def _run_now(job: dict):
    from sooner.runs import queue_run

    text = request.form.get("data", "")
    try:
        data = parse_run_data(text)
    except ValueError as exc:
        if wants_json():
            return json_error(400, str(exc))
        return _render_detail(job, errors={"data": str(exc)}, run_data=text, status=400)
    run = queue_run(web_store(), job, {"type": "manual", "source": "web", "author": user_name()}, data=data)
    if run is None:
        return json_error(409, "the run was not started") if wants_json() else ("the run was not started", 409)
    if wants_json():
        return {"run": run["_id"], "url": url_for("runs.detail", run_id=run["_id"])}, 201
    return redirect(url_for("runs.detail", run_id=run["_id"]))


def _preview(expr: str | None, tz: str) -> tuple[list[datetime], str | None]:
    from sooner.schedule import next_fires

    if not expr:
        return [], None
    try:
        return next_fires(expr, tz, datetime.now(UTC), 5), None
    except ScheduleError as exc:
        return [], str(exc)


@bp.get("/schedule/preview")
def preview():
    """Next 5 fire times for a schedule being typed (the same function the scheduler uses)."""
    from sooner.schedule import validate_cron, validate_timezone

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

