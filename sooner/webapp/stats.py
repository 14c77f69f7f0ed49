"""In-memory caches that keep list pages fast on large histories.

The jobs page shows every job's last run and recent success rate. Asking the
database per job costs ~1 ms each on the embedded server (500 jobs = 500 ms),
and aggregating over all runs is slower still, so :class:`RunStats` loads each
job's newest runs once and then follows changes incrementally: new runs (the
newest few by ``_id``) and the runs it saw active. :class:`FireCache` keeps
each schedule's next fire time until it has passed.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Iterable

from sooner.errors import ScheduleError
from sooner.model import Run, RunStatus
from sooner.store.reads import STATS_FIELDS

if TYPE_CHECKING:
    from sooner.store import Store

logger = logging.getLogger(__name__)


@dataclass
class JobRunStats:
    """A job's newest runs (newest first, projected to :data:`STATS_FIELDS`): its last status and success rate."""

    runs: list[Run] = field(default_factory=list)

    @property
    def last(self) -> Run | None:
        return self.runs[0] if self.runs else None

    @property
    def success_rate(self) -> float | None:
        """Succeeded out of the finished runs, cancelled ones aside; None if there is none."""
        ended = [r.status for r in self.runs if r.finished and r.status is not RunStatus.CANCELLED]
        if not ended:
            return None
        return sum(1 for s in ended if s is RunStatus.SUCCEEDED) / len(ended)

    @property
    def failing(self) -> bool:
        """The last finished run failed, timed out or was lost."""
        last = next((r for r in self.runs if r.finished), None)
        return bool(last and last.status.unsuccessful)


class RunStats:
    """Per-job recent runs, refreshed at most every ``refresh_s`` seconds. Thread-safe."""

    def __init__(self, store: Store, *, per_job: int = 20, refresh_s: float = 1.0, scan: int = 200) -> None:
        self.store = store
        self.per_job = per_job
        self.refresh_s = refresh_s
        self.scan = scan
        self._jobs: dict[str, JobRunStats] = {}
        self._active: dict[str, str] = {}  # run id -> job
        self._seen: set[str] | None = None  # ids of the previous scan of the newest runs
        self._refreshed = float("-inf")
        self._lock = threading.RLock()

    def get(self, names: Iterable[str]) -> dict[str, JobRunStats]:
        """Stats for each named job (loading the ones not seen yet)."""
        with self._lock:
            self.refresh()
            result = {}
            for name in names:
                if name not in self._jobs:
                    self._load_job(name)
                result[name] = self._jobs[name]
            return result

    def refresh(self, force: bool = False) -> None:
        with self._lock:
            if not force and self.store.clock.monotonic() - self._refreshed < self.refresh_s:
                return
            self._refreshed = self.store.clock.monotonic()
            self._take_new_runs()
            self._update_active()

    def _take_new_runs(self) -> None:
        # Run ids are ObjectIds made by several processes, so a run inserted
        # later may sort just below one seen before (same second): compare
        # with the ids of the previous scan instead of one high-water mark.
        runs = self.store.reads.recent_runs(self.scan, fields=STATS_FIELDS)
        seen = self._seen
        fresh = [] if seen is None else [r for r in runs if r.id not in seen]
        if seen and runs and len(fresh) == len(runs):
            logger.info("run stats: more than %d new runs since the last refresh; reloading", self.scan)
            self._jobs.clear()
            self._active.clear()
            fresh = []
        self._seen = {r.id for r in runs}
        for run in sorted(fresh, key=lambda r: r.id):
            stats = self._jobs.get(run.job)
            if stats is None or any(r.id == run.id for r in stats.runs):
                continue  # a job not loaded yet gets this run when first asked for
            stats.runs.insert(0, run)
            del stats.runs[self.per_job:]
            if run.active:
                self._active[run.id] = run.job

    def _update_active(self) -> None:
        if not self._active:
            return
        ids = list(self._active)
        found = self.store.reads.runs_by_id(ids, STATS_FIELDS)
        for current in found.values():
            stats = self._jobs.get(current.job)
            if stats:
                stats.runs = [current if r.id == current.id else r for r in stats.runs]
            if not current.active:
                self._active.pop(current.id, None)
        for missing in set(ids) - set(found):
            self._active.pop(missing, None)

    def _load_job(self, name: str) -> None:
        runs = self.store.reads.job_history(name, self.per_job, fields=STATS_FIELDS)
        self._jobs[name] = JobRunStats(runs)
        for run in runs:
            if run.active:
                self._active[run.id] = name

    def warm(self, names: Iterable[str]) -> None:
        """Load the named jobs ahead of the first page view (a server does this at start)."""
        self.get(names)


class FireCache:
    """Next fire time per (schedule, timezone), valid until it has passed. Thread-safe enough: a race recomputes."""

    def __init__(self) -> None:
        self._next: dict[tuple[str, str], datetime | None] = {}

    def next_fire(self, expr: str | None, tz: str | None, now: datetime) -> datetime | None:
        if not expr:
            return None
        key = (expr, tz or "UTC")
        cached = self._next.get(key)
        if cached is not None and cached > now:
            return cached
        from sooner.scheduling.cron import next_fires

        try:
            fires = next_fires(expr, tz or "UTC", now, 1)
        except ScheduleError:
            return None
        fire = fires[0] if fires else None
        if len(self._next) > 10_000:
            self._next.clear()
        self._next[key] = fire
        return fire


@functools.lru_cache(maxsize=4096)
def describe_schedule(expr: str) -> str:
    from sooner.scheduling.cron import describe

    return describe(expr)
