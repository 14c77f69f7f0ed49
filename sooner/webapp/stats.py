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
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Iterable

from sooner.errors import ScheduleError
from sooner.store.runs import ACTIVE

if TYPE_CHECKING:
    from sooner.store import Store

logger = logging.getLogger(__name__)

FAILED = ("failed", "timed_out", "lost")
_PROJECTION = {"job": 1, "status": 1, "queued_at": 1, "duration_s": 1}


@dataclass
class JobRunStats:
    """A job's newest runs (newest first): enough for its last status and success rate."""

    runs: list[dict] = field(default_factory=list)

    @property
    def last(self) -> dict | None:
        return self.runs[0] if self.runs else None

    @property
    def success_rate(self) -> float | None:
        finished = [r["status"] for r in self.runs if r["status"] not in ACTIVE and r["status"] != "cancelled"]
        if not finished:
            return None
        return sum(1 for s in finished if s == "succeeded") / len(finished)

    @property
    def failing(self) -> bool:
        last = next((r for r in self.runs if r["status"] not in ACTIVE), None)
        return bool(last and last["status"] in FAILED)


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
            if not force and time.monotonic() - self._refreshed < self.refresh_s:
                return
            self._refreshed = time.monotonic()
            self._take_new_runs()
            self._update_active()

    def _take_new_runs(self) -> None:
        # Run ids are ObjectIds made by several processes, so a run inserted
        # later may sort just below one seen before (same second): compare
        # with the ids of the previous scan instead of one high-water mark.
        docs = self.store.retry(lambda: list(self.store.db.runs.find({}, _PROJECTION).sort("_id", -1).limit(self.scan)))
        seen = self._seen
        fresh = [] if seen is None else [d for d in docs if d["_id"] not in seen]
        if seen and docs and len(fresh) == len(docs):
            logger.info("run stats: more than %d new runs since the last refresh; reloading", self.scan)
            self._jobs.clear()
            self._active.clear()
            fresh = []
        self._seen = {d["_id"] for d in docs}
        for doc in sorted(fresh, key=lambda d: d["_id"]):
            stats = self._jobs.get(doc["job"])
            if stats is None or any(r["_id"] == doc["_id"] for r in stats.runs):
                continue  # a job not loaded yet gets this run when first asked for
            stats.runs.insert(0, doc)
            del stats.runs[self.per_job:]
            if doc["status"] in ACTIVE:
                self._active[doc["_id"]] = doc["job"]

    def _update_active(self) -> None:
        if not self._active:
            return
        ids = list(self._active)
        docs = self.store.retry(lambda: list(self.store.db.runs.find({"_id": {"$in": ids}}, _PROJECTION)))
        for doc in docs:
            stats = self._jobs.get(doc["job"])
            if stats:
                for i, run in enumerate(stats.runs):
                    if run["_id"] == doc["_id"]:
                        stats.runs[i] = doc
            if doc["status"] not in ACTIVE:
                self._active.pop(doc["_id"], None)
        for missing in set(ids) - {d["_id"] for d in docs}:
            self._active.pop(missing, None)

    def _load_job(self, name: str) -> None:
        docs = self.store.retry(lambda: list(self.store.db.runs.find({"job": name}, _PROJECTION)
                                             .sort("queued_at", -1).limit(self.per_job)))
        self._jobs[name] = JobRunStats(docs)
        for doc in docs:
            if doc["status"] in ACTIVE:
                self._active[doc["_id"]] = name

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
        from sooner.schedule import next_fires

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
    from sooner.schedule import describe

    return describe(expr)
