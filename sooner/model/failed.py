"""The Failed view's rules: what may be filtered, sorted and grouped, and how runs fall into groups.

A run is in the Failed view when it failed, timed out or was lost and got no
further attempt, and nobody dismissed it (``Run.failed_view``, kept by the
store: :mod:`sooner.store.failed`). The CLI, the API and the web page build a
:class:`FailedQuery` from what a user typed; its checks are the only ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sooner.clock import aware
from sooner.model.run import Run

# What the view sorts by and groups by (the CLI, the API and the page offer exactly these).
SORTS = ("time", "job", "worker")
GROUPS = ("job", "worker", "error")
MAX_SEARCH_CHARS = 200
MAX_FILTER_CHARS = 1000  # a job name, worker or error group to match exactly
MAX_LIMIT = 1000
# A bulk retry or dismiss takes at most this many run ids.
MAX_BULK = 500


class InvalidFailedQuery(ValueError):
    """A filter, sort or group of the Failed view is not valid; the message says which and why."""


@dataclass(frozen=True)
class FailedQuery:
    """Which failed runs to show and how: exact ``job``/``worker``/``error`` (an error group), a text
    search in the error and job name, a sort key of :data:`SORTS` and a group of :data:`GROUPS`.

    ``descending`` None is the natural order: newest first by time, A to Z by job or worker.
    """

    job: str | None = None
    worker: str | None = None
    error: str | None = None
    search: str | None = None
    sort: str = "time"
    descending: bool | None = None
    group_by: str | None = None
    limit: int = 100

    def __post_init__(self) -> None:
        if self.sort not in SORTS:
            raise InvalidFailedQuery(f"sort: must be one of {', '.join(SORTS)}, got {self.sort!r}")
        if self.group_by is not None and self.group_by not in GROUPS:
            raise InvalidFailedQuery(f"group: must be one of {', '.join(GROUPS)}, got {self.group_by!r}")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidFailedQuery(f"limit: must be a whole number from 1 to {MAX_LIMIT}, got {self.limit!r}")
        for name in ("job", "worker", "error", "search"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or len(value) > MAX_FILTER_CHARS):
                raise InvalidFailedQuery(f"{name}: must be text of at most {MAX_FILTER_CHARS} characters")
        if self.search is not None and len(self.search) > MAX_SEARCH_CHARS:
            raise InvalidFailedQuery(f"search: at most {MAX_SEARCH_CHARS} characters, got {len(self.search)}")

    def matches(self, run: Run) -> bool:
        """Whether the run passes the filters: exact job, worker and error group; the search (any case) in
        its error, job name or id."""
        if self.job and run.job != self.job:
            return False
        if self.worker and (run.worker or "-") != self.worker:
            return False
        if self.error and run.error_group != self.error:
            return False
        if self.search:
            needle = self.search.casefold()
            return needle in run.error.casefold() or needle in run.job.casefold() or needle in run.id
        return True

    def select(self, runs: list[Run], *, truncated: bool = False) -> FailedPage:
        """The page these runs (the whole view) make: matching ones in order, at most ``limit``, and the groups."""
        matching = sorted((run for run in runs if self.matches(run)), key=_moment, reverse=True)
        if self.sort == "time":
            if self.descending is False:
                matching.reverse()
        else:  # stable: newest first within a job or worker
            matching.sort(key=lambda run: group_key(run, self.sort), reverse=bool(self.descending))
        groups = group_runs(matching, self.group_by) if self.group_by else []
        return FailedPage(runs=matching[:self.limit], total=len(matching), groups=groups, truncated=truncated)


@dataclass(frozen=True)
class FailedGroup:
    """One group of the view: its key (a job, a worker or an error), how many runs, the newest end."""

    key: str
    count: int
    newest: datetime | None


@dataclass(frozen=True)
class FailedPage:
    """The view's answer: the first ``limit`` matching runs in order, how many match, and the groups.

    ``groups`` is empty unless the query groups; the counts cover every matching run, not just
    the page. ``truncated``: more than :data:`MAX_SCAN` runs are in the view and only that many were read.
    """

    runs: list[Run]
    total: int
    groups: list[FailedGroup] = field(default_factory=list)
    truncated: bool = False


@dataclass(frozen=True)
class BulkResult:
    """What a bulk action did to one run id: ``ok``, a ``message`` and, for a retry, the new ``run``."""

    id: str
    ok: bool
    message: str
    run: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "ok": self.ok, "message": self.message, **({"run": self.run} if self.run else {})}


def group_key(run: Run, group_by: str) -> str:
    """The group a run belongs to: its job, its worker (``-`` if none) or its error (:attr:`Run.error_group`)."""
    if group_by == "job":
        return run.job
    if group_by == "worker":
        return run.worker or "-"
    return run.error_group


def _moment(run: Run) -> datetime:
    """When the run ended (or was queued), for sorting."""
    return aware(run.finished_at or run.queued_at or _EPOCH)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)



def group_runs(runs: list[Run], group_by: str) -> list[FailedGroup]:
    """One group per key (:func:`group_key`) with its count and newest end, largest first."""
    counts: dict[str, int] = {}
    newest: dict[str, datetime | None] = {}
    for run in runs:
        key = group_key(run, group_by)
        counts[key] = counts.get(key, 0) + 1
        end = aware(run.finished_at) if run.finished_at else None
        known = newest.get(key)
        if end is not None and (known is None or end > known):
            newest[key] = end
        newest.setdefault(key, None)
    return sorted((FailedGroup(key, count, newest[key]) for key, count in counts.items()),
                  key=lambda group: (-group.count, group.key))
