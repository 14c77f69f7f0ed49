"""Jinja filters: times, durations, JSON and status names, all returning plain text (autoescaped).

Runs describe themselves: templates call ``run.trigger.describe()`` and
``run.duration(now)`` (the model's rules), not filters of their own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from flask import Flask

from sooner.cli.output import ago, duration
from sooner.model import Progress


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


def percent(progress: Progress | Mapping[str, Any] | None) -> float | None:
    """A run's progress as 0-100, or None (the model's rule; a mapping is a ``run_summary`` progress)."""
    if progress is not None and not isinstance(progress, Progress):
        progress = Progress.from_doc(progress)
    return progress.percent if progress is not None else None


def author_name(author: str | None) -> str:
    """A git author as pages show it: ``Ada <ada@example.org>`` is ``Ada``; a bare address stays whole."""
    text = (author or "").strip()
    name = re.sub(r"\s*<[^<>]*>$", "", text).strip()
    return name or text.strip("<>") or "?"


def status_name(status: Any) -> str:
    """The stored word of a RunStatus (or any other status text, as queue entries have), for classes and labels."""
    return str(getattr(status, "value", status) if status is not None else "")


def register(app: Flask) -> None:
    app.jinja_env.filters.update({
        "ago": ago, "duration": duration, "iso": iso, "short_time": short_time, "pretty_json": pretty_json,
        "compact_json": compact_json, "percent": percent, "status_name": status_name,
        "short_sha": lambda sha: (sha or "")[:8] or "-",
    })
