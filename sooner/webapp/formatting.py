"""Jinja filters: times, durations, JSON and status names, all returning plain text (autoescaped)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from flask import Flask

from sooner.cli.output import ago, duration


def iso(moment: datetime | None) -> str:
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def short_time(moment: datetime | None) -> str:
    """UTC time for the page; the browser rewrites <time> elements into local time."""
    if moment is None:
        return "-"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty_json(value: Any) -> str:
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(value)


def compact_json(value: Any, limit: int = 200) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def percent(progress: dict | None) -> float | None:
    """A run's progress as 0-100, or None."""
    if not progress:
        return None
    try:
        current, maximum = float(progress.get("current") or 0), float(progress.get("max") or 100)
    except (TypeError, ValueError):
        return None
    if maximum <= 0:
        return None
    return max(0.0, min(100.0, current * 100.0 / maximum))


def run_duration(run: dict, now: datetime | None = None) -> float | None:
    if run.get("duration_s") is not None:
        return float(run["duration_s"])
    started = run.get("started_at")
    if started is None:
        return None
    end = run.get("finished_at") or now or datetime.now(timezone.utc)
    if started.tzinfo is None:
        started = started.replace(tzinfo=timezone.utc)
    if end.tzinfo is None:
        end = end.replace(tzinfo=timezone.utc)
    return max(0.0, (end - started).total_seconds())


def trigger_text(trigger: dict | None) -> str:
    """One line saying what started a run."""
    if not trigger:
        return "-"
    kind = trigger.get("type", "?")
    parts = [kind]
    if kind == "event" and trigger.get("event"):
        parts.append(f"“{trigger['event']}”")
    if trigger.get("author"):
        parts.append(f"by {trigger['author']}")
    if kind == "retry" and trigger.get("source"):
        parts.append(f"of {trigger['source']}")
    elif kind == "event" and trigger.get("source_job"):
        parts.append(f"from {trigger['source_job']}")
    return " ".join(parts)


def register(app: Flask) -> None:
    app.jinja_env.filters.update({
        "ago": ago, "duration": duration, "iso": iso, "short_time": short_time, "pretty_json": pretty_json,
        "compact_json": compact_json, "percent": percent, "run_duration": run_duration,
        "trigger_text": trigger_text, "short_sha": lambda sha: (sha or "")[:8] or "-",
    })
