"""What an API token may do: its scope, its job glob and its expiry, and the one rule that checks them.

A token's **scope** narrows what its user's role allows; it never widens it:

- ``read``: GET requests only.
- ``run``: reading, plus starting and cancelling runs and emitting events; with a job glob
  (``--job 'reports/*'``) only for jobs whose name matches it (an event counts as acting on every
  job hooked to it).
- ``admin``: everything the user's role allows.

A token stored without a scope (made before scopes existed) is an ``admin`` token, so it acts
exactly as its user, as before. :func:`TokenGrant.denial` is the rule that the REST API
(``/api`` and ``/api/v1``) calls for every request made with a token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from fnmatch import fnmatchcase
from typing import Any, Iterable, Mapping

from sooner.errors import SoonerError

MAX_EXPIRY = timedelta(days=3650)
_DURATION = re.compile(r"^\s*(\d{1,6})\s*([mhdw])\s*$")
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
_GLOB = re.compile(r"^[\w.@+\-/*?\[\]!]{1,200}$")


class InvalidTokenSetting(SoonerError, ValueError):
    """A token's scope, job glob or expiry as typed by a user is not valid; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


class TokenScope(str, Enum):
    """How much of its user's rights a token carries."""

    READ = "read"
    RUN = "run"
    ADMIN = "admin"

    @classmethod
    def parse(cls, text: str | None) -> TokenScope:
        try:
            return cls((text or "").strip().lower())
        except ValueError:
            raise InvalidTokenSetting("scope", f"must be one of {', '.join(s.value for s in cls)}, "
                                               f"got {str(text)[:40]!r}") from None


class ApiAction(str, Enum):
    """What a request does, as far as token scopes care."""

    READ = "read"      # any GET
    RUN = "run"        # start or cancel a run, emit an event
    ADMIN = "admin"    # anything else that changes state (job settings, queue entries, moving runs, Failed view …)


def parse_expiry(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m`` or ``2w`` as a duration (up to 10 years)."""
    match = _DURATION.match(text or "")
    if not match:
        raise InvalidTokenSetting("expires", f"use a number and a unit m, h, d or w (such as 90d), got {text[:40]!r}")
    duration = int(match.group(1)) * _UNITS[match.group(2)]
    if not timedelta(0) < duration <= MAX_EXPIRY:
        raise InvalidTokenSetting("expires", f"must be more than 0 and at most {MAX_EXPIRY.days} days, got {text!r}")
    return duration


def validate_job_glob(text: str) -> str:
    """A shell-style glob of job names (``reports/*``, ``*.sh``)."""
    if not isinstance(text, str) or not _GLOB.match(text):
        raise InvalidTokenSetting("job", f"use 1-200 characters of letters, digits, _ . @ + - / and * ? [ ] !, "
                                         f"got {str(text)[:40]!r}")
    return text


@dataclass(frozen=True)
class TokenGrant:
    """A token's id, scope, job glob and expiry, as the REST API checks them."""

    id: str
    scope: TokenScope = TokenScope.ADMIN
    job_glob: str | None = None
    expires_at: datetime | None = None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> TokenGrant:
        expires = doc.get("expires_at")
        if isinstance(expires, datetime) and expires.tzinfo is None:
            expires = expires.replace(tzinfo=timezone.utc)
        return cls(id=str(doc.get("_id") or doc.get("id") or ""), scope=TokenScope(doc.get("scope") or "admin"),
                   job_glob=doc.get("job") or None, expires_at=expires)

    def to_doc(self) -> dict[str, Any]:
        return {"id": self.id, "scope": self.scope.value, "job": self.job_glob, "expires_at": self.expires_at}

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def covers(self, job: str) -> bool:
        return self.job_glob is None or fnmatchcase(job, self.job_glob)

    def denial(self, action: ApiAction, jobs: Iterable[str] = ()) -> str | None:
        """Why this token may not do ``action`` (on ``jobs``), or None when it may.

        The user's role is checked separately, as for a signed-in user; this only narrows it.
        """
        if action is ApiAction.READ or self.scope is TokenScope.ADMIN:
            return None
        if self.scope is TokenScope.READ:
            return "this API token has scope 'read': it may only read (GET)"
        if action is ApiAction.ADMIN:
            return "this API token has scope 'run': it may only start and cancel runs and emit events"
        outside = sorted(job for job in jobs if not self.covers(job))
        if outside:
            return f"this API token may only act on jobs matching {self.job_glob!r}, not {', '.join(outside[:5])}"
        return None
