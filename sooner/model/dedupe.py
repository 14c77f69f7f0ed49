"""Dedupe keys: what a run request's ``dedupe_key`` may be, and when a run stops holding its key.

A request may carry a key (``sooner run --dedupe-key``, the API's ``dedupe_key``, later
webhooks). While a run of the job queued under that key is younger than the job's
``dedupe_window_s``, another request with the key gets that run instead of a new one
(:meth:`sooner.runs.service.RunService.queue`; the store makes it race-free,
:meth:`sooner.store.runs.RunRepo.insert_holding_key`). A job without a window ignores keys.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from sooner.errors import SoonerError

MAX_KEY_CHARS = 200
_KEY = re.compile(r"[A-Za-z0-9_.:/@+=#-]{1,%d}" % MAX_KEY_CHARS)


class InvalidDedupeKey(SoonerError, ValueError):
    """A dedupe key given by a user is empty, too long or has characters keys may not have."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        super().__init__(f"{where}: {problem}")


def validate_dedupe_key(key: object, where: str = "dedupe_key") -> str:
    """The key if it is 1-200 characters of letters, digits and ``_ . : / @ + = # -``; ``where`` starts the error."""
    if not isinstance(key, str):
        raise InvalidDedupeKey(where, f"must be a string, got {type(key).__name__}")
    if not key:
        raise InvalidDedupeKey(where, "must not be empty")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidDedupeKey(where, f"is {len(key)} characters long; at most {MAX_KEY_CHARS} are allowed")
    if not _KEY.fullmatch(key):
        bad = next(c for c in key if not _KEY.fullmatch(c))
        raise InvalidDedupeKey(where, f"character {bad!r} is not allowed: use letters, digits and _ . : / @ + = # -")
    return key


def key_expired(queued_at: datetime | None, window_s: float, now: datetime) -> bool:
    """Whether a run queued at ``queued_at`` no longer holds its key at ``now`` (a window of ``window_s``)."""
    if queued_at is None:
        return True
    aware = queued_at if queued_at.tzinfo else queued_at.replace(tzinfo=timezone.utc)
    return aware + timedelta(seconds=window_s) <= now
