"""Validation of job settings, shared by the CLI and the web UI."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any, Mapping

from sooner.errors import SoonerError
from sooner.model.job import Job
from sooner.model.status import Missed, Overlap

_EVENT_NAME = re.compile(r"^[\w.:/@+-]{1,200}$")
_WORKER_NAME = re.compile(r"^[\w.@+-]{1,100}$")
MAX_MEMORY_LIMIT_MB = 1 << 24  # 16 TB: anything larger is a typo
MAX_ALERT_AFTER_S = 30 * 24 * 3600
MAX_DEDUPE_WINDOW_S = 30 * 24 * 3600


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

    Keys understood: schedule, tz, worker, timeout_s, memory_limit_mb, overlap, missed, alert_after_s, dedupe_window_s, public_badge,
    requires (tags, :func:`validate_requires`), max_concurrent,
    notify (rules, :func:`sooner.model.notify.parse_rules`), the retry policy's
    (:data:`RETRY_OPTIONS`), hooks/no_hooks (validated only; applied by the repository).
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
    if options.get("alert_after_s") is not None:  # 0 = the default grace (sooner.model.missed.alert_after_s)
        changes["alert_after_s"] = _alert_after(options["alert_after_s"])
    if options.get("dedupe_window_s") is not None:  # 0 = off: dedupe keys are ignored
        changes["dedupe_window_s"] = _number_in_range("dedupe_window", options["dedupe_window_s"], 0,
                                                      MAX_DEDUPE_WINDOW_S, "seconds (30 days)", False) or None
    if options.get("public_badge") is not None:
        changes["public_badge"] = _yes_no("public_badge", options["public_badge"])
    if options.get("requires") is not None:  # tags as a list or comma-separated text; '' or [] clears them
        changes["requires"] = validate_requires(options["requires"])
    if options.get("max_concurrent") is not None:  # 0 or '' = no limit
        changes["max_concurrent"] = _max_concurrent(options["max_concurrent"])
    if options.get("notify") is not None:  # rules as JSON text or a list; '' or [] clears them
        changes["notify"] = _notify(options["notify"])
    retry = retry_changes(options)
    if retry:
        changes["retry"] = replace(job.retry, **retry).to_doc()
    for event in list(options.get("hooks") or ()) + list(options.get("no_hooks") or ()):
        validate_event_name(event)
    return changes


MAX_REQUIRED_TAGS = 20


def validate_requires(value: Any) -> list[str]:
    """The tags a job requires of its worker: a list, or text with commas (``gpu,eu``); each a valid tag."""
    if isinstance(value, str):
        tags = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        tags = list(value)
    else:
        raise InvalidJobSetting("requires", f"must be a list of tags or text like 'gpu,eu', got {value!r}")
    for tag in tags:
        validate_worker_name(tag, "requires", "tag")
    if len(tags) > MAX_REQUIRED_TAGS:
        raise InvalidJobSetting("requires", f"at most {MAX_REQUIRED_TAGS} tags, got {len(tags)}")
    return list(dict.fromkeys(tags))


def _max_concurrent(value: Any) -> int | None:
    """A whole number of runs at once fleet-wide, 1-10000; 0 or empty text = no limit."""
    if isinstance(value, str) and not value.strip():
        return None
    number = _number_in_range("max_concurrent", value, 0, 10_000, "runs (0 = no limit)", True)
    return int(number) or None


def _notify(value: Any) -> list[dict[str, Any]]:
    from sooner.model.notify import InvalidNotifyRule, parse_rules

    try:
        return [rule.to_doc() for rule in parse_rules(value, "rule")]
    except InvalidNotifyRule as exc:
        raise InvalidJobSetting("notify", str(exc)) from None


def _yes_no(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true", "on", "1"):
        return True
    if text in ("no", "false", "off", "0"):
        return False
    raise InvalidJobSetting(key, f"is yes or no, not {str(value)[:30]!r}")


# Retry policy options: option name -> (RetryPolicy field, message key, lowest, highest, unit, whole number).
RETRY_OPTIONS: dict[str, tuple[str, str, float, float, str, bool]] = {
    "retry_attempts": ("attempts", "retry", 0, 100, "retries", True),
    "backoff_base_s": ("backoff_base_s", "backoff_base", 0, 24 * 3600, "seconds (1 day)", False),
    "backoff_factor": ("backoff_factor", "backoff_factor", 1, 10, "", False),
    "max_backoff_s": ("max_backoff_s", "max_backoff", 0, 7 * 24 * 3600, "seconds (7 days)", False),
    "jitter": ("jitter", "jitter", 0, 1, "(a fraction: 0.1 = ±10%)", False),
}


def retry_changes(options: Mapping[str, Any]) -> dict[str, Any]:
    """The retry policy fields among ``options`` (None = unchanged), validated: {RetryPolicy field: value}.

    Values may be numbers or the text a user typed; NaN, infinities, bools and values out of
    range are refused with :class:`InvalidJobSetting` naming the setting and the range.
    """
    fields: dict[str, Any] = {}
    for option, (name, key, low, high, unit, whole) in RETRY_OPTIONS.items():
        value = options.get(option)
        if value is None:
            continue
        number = _number_in_range(key, value, low, high, unit, whole)
        fields[name] = int(number) if whole else number
    return fields


def _number_in_range(key: str, value: Any, low: float, high: float, unit: str, whole: bool) -> float:
    kind = "a whole number" if whole else "a finite number"
    wanted = f"must be {kind} from {low:g} to {high:g}{' ' + unit if unit else ''}"
    number: float | None = None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise InvalidJobSetting(key, f"{wanted}, got {value!r}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    if number is None or not math.isfinite(number) or not low <= number <= high or whole and not number.is_integer():
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        raise InvalidJobSetting(key, f"{wanted}, got {shown}")
    return number


def _alert_after(value: Any) -> float | None:
    """Seconds from 0 to 30 days, as a number or typed text; 0 = the default grace (None)."""
    try:
        return _number_in_range("alert_after", value, 0, MAX_ALERT_AFTER_S, "", False) or None
    except InvalidJobSetting:
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        raise InvalidJobSetting("alert_after", f"must be a finite number of seconds from 0 to {MAX_ALERT_AFTER_S} "
                                               f"(30 days; 0 = the default), got {shown}") from None


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
