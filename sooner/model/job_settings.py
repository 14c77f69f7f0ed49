"""Validation of job settings, shared by the CLI and the web UI."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Mapping

from sooner.errors import SoonerError
from sooner.model.job import Job
from sooner.model.status import Missed, Overlap

_EVENT_NAME = re.compile(r"^[\w.:/@+-]{1,200}$")
_WORKER_NAME = re.compile(r"^[\w.@+-]{1,100}$")
MAX_MEMORY_LIMIT_MB = 1 << 24  # 16 TB: anything larger is a typo


class InvalidJobSetting(SoonerError, ValueError):
    """A job setting given by a user is not valid."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


def validate_event_name(name: str, key: str = "hook") -> str:
    """Event names: 1-200 characters of letters, digits and ``_ . : / @ + -``; ``key`` starts the message."""
    if not isinstance(name, str) or not _EVENT_NAME.fullmatch(name):
        raise InvalidJobSetting(key, f"invalid event name {name!r}: use letters, digits and _ . : / @ + - (max 200)")
    return name


def validate_worker_name(name: str, key: str = "worker", kind: str = "worker name") -> str:
    """Worker names and tags: 1-100 characters of letters, digits and ``_ . @ + -``; ``key`` starts the message."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidJobSetting(key, f"a worker needs a name, got {name!r}")
    if not _WORKER_NAME.fullmatch(name):
        raise InvalidJobSetting(key, f"invalid {kind} {name!r}: use 1-100 letters, digits and _ . @ + -")
    return name


def settings_changes(job: Job, options: Mapping[str, Any]) -> dict[str, Any]:
    """Turn user options (None = unchanged) into validated job fields.

    Keys understood: schedule, tz, worker, timeout_s, memory_limit_mb, overlap, missed, retry_attempts,
    hooks/no_hooks (validated only; applied by the repository).
    """
    from sooner.scheduling.cron import validate_cron, validate_timezone  # cron maths is not part of the model

    changes: dict[str, Any] = {}
    if options.get("schedule") is not None:
        text = options["schedule"].strip()
        changes["schedule"] = _checked("schedule", validate_cron, text) if text else None
    if options.get("tz") is not None:
        changes["timezone"] = _checked("timezone", validate_timezone, options["tz"].strip() or "UTC")
    if options.get("worker") is not None:
        worker = options["worker"].strip()
        if worker and not _WORKER_NAME.fullmatch(worker):
            raise InvalidJobSetting("worker", f"invalid worker name or tag {worker!r}")
        changes["worker"] = worker or None
    if options.get("timeout_s") is not None:
        changes["timeout_s"] = _timeout(options["timeout_s"]) or None
    if options.get("memory_limit_mb") is not None:
        changes["memory_limit_mb"] = _memory_limit(options["memory_limit_mb"])
    if options.get("overlap") is not None:
        changes["overlap"] = _enum("overlap", Overlap, options["overlap"])
    if options.get("missed") is not None:
        changes["missed"] = _enum("missed", Missed, options["missed"])
    if options.get("retry_attempts") is not None:
        attempts = int(options["retry_attempts"])
        if not 0 <= attempts <= 100:
            raise InvalidJobSetting("retry", "must be between 0 and 100")
        changes["retry"] = replace(job.retry, attempts=attempts).to_doc()
    for event in list(options.get("hooks") or ()) + list(options.get("no_hooks") or ()):
        validate_event_name(event)
    return changes


def _memory_limit(value: Any) -> int | None:
    """Whole MB; 0 clears the limit."""
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise InvalidJobSetting("memory_limit_mb", f"must be a whole number of MB, got {value!r}") from None
    if limit < 0:
        raise InvalidJobSetting("memory_limit_mb", "must not be negative")
    if limit > MAX_MEMORY_LIMIT_MB:
        raise InvalidJobSetting("memory_limit_mb", f"must be at most {MAX_MEMORY_LIMIT_MB} MB")
    return limit or None


MAX_TIMEOUT_S = 30 * 24 * 3600


def _timeout(value: Any) -> float:
    """Seconds: a finite number from 0 to 30 days (bools and strings are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_TIMEOUT_S:
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        raise InvalidJobSetting("timeout", f"must be a finite number of seconds from 0 to {MAX_TIMEOUT_S} (30 days), "
                                           f"got {shown}")
    return float(value)


def _checked(key: str, validate: Any, value: str) -> Any:
    try:
        return validate(value)
    except ValueError as exc:
        raise InvalidJobSetting(key, str(exc)) from None


def _enum(key: str, enum: Any, value: str) -> str:
    try:
        return enum(value).value
    except ValueError:
        raise InvalidJobSetting(key, f"must be one of {', '.join(e.value for e in enum)}, got {value!r}") from None
