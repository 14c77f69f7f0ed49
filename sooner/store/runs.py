"""The ``runs`` collection: one document per run of a job, and its life cycle.

Run ids are ObjectId hex strings: unique, sortable by creation time, and
readable in a terminal (the CLI accepts any unique prefix of 6+ characters).
"""

from __future__ import annotations

import builtins
import re
from datetime import datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any, Iterable

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from sooner.errors import RunNotFound, SoonerError
from sooner.store import schema
from sooner.store.jobs import utcnow

if TYPE_CHECKING:
    from sooner.store import Store


class RunStatus(str, Enum):
    """Where a run is in its life. ``waiting`` runs wait for an earlier run of the same job (overlap=queue)."""

    WAITING = "waiting"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"

    @property
    def finished(self) -> bool:
        return self not in (RunStatus.WAITING, RunStatus.QUEUED, RunStatus.RUNNING)


ACTIVE = [RunStatus.WAITING.value, RunStatus.QUEUED.value, RunStatus.RUNNING.value]
FINISHED = [s.value for s in RunStatus if s.finished]
# How many of the oldest queued runs one claim considers (others may be not yet due).
CLAIM_CANDIDATES = 20


class RunRepo:
    """Domain operations on ``runs``; each names the fields it changes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.RUNS)

    # -- creating ---------------------------------------------------------
    def enqueue(self, job: dict, trigger: dict[str, Any], *, data: Any = None, target: str | None = None,
                commit: str | None = None, depth: int = 0, attempt: int = 1, status: RunStatus = RunStatus.QUEUED,
                not_before: datetime | None = None, now: datetime | None = None) -> dict | None:
        """Insert a run of ``job``. Returns None when a run for the same cron tick exists already.

        ``trigger`` is {type: cron/manual/event/api/webhook/retry, source, author, message, event,
        scheduled_for}; a ``scheduled_for`` makes the insert idempotent per (job, tick).
        """
        now = now or utcnow()
        run = {
            "_id": str(ObjectId()), "job": job["_id"], "status": status.value, "trigger": trigger,
            "data": data, "commit": commit, "target": target if target is not None else job.get("worker"),
            "worker": None, "pid": None, "exit_code": None, "progress": None, "attempt": attempt,
            "depth": depth, "timeout_s": job.get("timeout_s"), "queued_at": now, "not_before": not_before or now,
            "started_at": None, "finished_at": None, "lease_until": None, "cancel_requested": False, "note": None,
        }
        if trigger.get("scheduled_for") is not None:
            run["scheduled_for"] = trigger["scheduled_for"]
        try:
            self.store.retry(lambda: self.collection.insert_one(run))
        except DuplicateKeyError:
            return None
        return run

    # -- claiming and running ----------------------------------------------
    def claim(self, worker: str, tags: Iterable[str], lease_s: float, now: datetime | None = None) -> dict | None:
        """Atomically take the oldest queued run this worker may run (by name, tag or untargeted).

        Changes ``status`` (running), ``worker``, ``claimed_at``, ``lease_until``.
        """
        now = now or utcnow()
        for run_id in self.claim_candidates(worker, tags, now=now):
            run = self.take(run_id, worker, lease_s, now=now)
            if run is not None:
                return run
        return None

    def claim_candidates(self, worker: str, tags: Iterable[str], *, limit: int = CLAIM_CANDIDATES,
                         now: datetime | None = None) -> builtins.list[str]:
        """Ids of the oldest queued runs this worker may run and that are due; :meth:`take` claims one."""
        now = now or utcnow()
        targets: list[Any] = [None, worker, *tags]
        # The embedded server answers status + target from its index but scans the whole
        # collection for a date range (measured: 100 ms with 5,000 finished runs, vs 1 ms),
        # so not_before is checked here.
        candidates = self.store.retry(lambda: list(self.collection.find(
            {"status": RunStatus.QUEUED.value, "target": {"$in": targets}}, {"_id": 1, "not_before": 1},
            sort=[("queued_at", 1)], limit=limit)))
        return [c["_id"] for c in candidates if c.get("not_before") is None or c["not_before"] <= now]

    def take(self, run_id: str, worker: str, lease_s: float, now: datetime | None = None) -> dict | None:
        """Claim this run if it is still queued (None if another worker was faster).

        Changes ``status`` (running), ``worker``, ``claimed_at``, ``lease_until``.
        """
        now = now or utcnow()
        return self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": run_id, "status": RunStatus.QUEUED.value},
            {"$set": {"status": RunStatus.RUNNING.value, "worker": worker, "claimed_at": now,
                      "lease_until": now + timedelta(seconds=lease_s)}},
            return_document=ReturnDocument.AFTER))

    def mark_started(self, run_id: str, *, pid: int, commit: str | None, now: datetime | None = None) -> None:
        """The script's process exists. Changes ``pid``, ``started_at``, ``commit``."""
        self._update(run_id, {"pid": pid, "started_at": now or utcnow(), "commit": commit})

    def set_progress(self, run_id: str, current: float, maximum: float) -> None:
        """Changes ``progress`` to {current, max}."""
        self._update(run_id, {"progress": {"current": current, "max": maximum}})

    def add_note(self, run_id: str, note: str) -> None:
        """Sets ``note``: one line a person should read about the run (limit hit, lost, …)."""
        self._update(run_id, {"note": note})

    def finish(self, run_id: str, status: RunStatus, *, exit_code: int | None = None, note: str | None = None,
               now: datetime | None = None, started_at: datetime | None = None) -> dict | None:
        """Record the end of a running (or queued) run; returns None if it had finished already.

        ``started_at`` (when the caller knows it) saves reading the run first.
        Changes ``status``, ``exit_code``, ``finished_at``, ``duration_s``, ``lease_until`` (cleared), ``note``.
        """
        now = now or utcnow()
        started = started_at or self.get(run_id).get("started_at") or now
        fields: dict[str, Any] = {"status": status.value, "exit_code": exit_code, "finished_at": now,
                                  "lease_until": None, "duration_s": max(0.0, (now - started).total_seconds())}
        if note:
            fields["note"] = note
        return self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": run_id, "status": {"$in": ACTIVE}}, {"$set": fields}, return_document=ReturnDocument.AFTER))

    def request_cancel(self, run_id: str, *, by: str = "cli") -> dict:
        """Cancel a run: a queued/waiting one ends at once; a running one is flagged for its worker.

        Changes ``cancel_requested``/``cancelled_by``, or ``status`` (cancelled) for runs not started.
        """
        run = self.get(run_id)
        if run["status"] in (RunStatus.QUEUED.value, RunStatus.WAITING.value):
            done = self.store.retry(lambda: self.collection.find_one_and_update(
                {"_id": run["_id"], "status": {"$in": [RunStatus.QUEUED.value, RunStatus.WAITING.value]}},
                {"$set": {"status": RunStatus.CANCELLED.value, "finished_at": utcnow(), "cancelled_by": by,
                          "note": f"cancelled by {by} before it started"}},
                return_document=ReturnDocument.AFTER))
            if done:
                return done
            run = self.get(run_id)
        if run["status"] != RunStatus.RUNNING.value:
            raise SoonerError(f"run {run['_id']} has already finished ({run['status']})")
        self._update(run["_id"], {"cancel_requested": True, "cancelled_by": by})
        return self.get(run["_id"])

    def cancel_requested(self, run_ids: builtins.list[str]) -> builtins.list[str]:
        """Which of these runs someone asked to cancel."""
        if not run_ids:
            return []
        return [d["_id"] for d in self.store.retry(lambda: list(self.collection.find(
            {"_id": {"$in": run_ids}, "cancel_requested": True}, {"_id": 1})))]

    def still_running(self, worker: str, run_ids: builtins.list[str]) -> dict[str, dict]:
        """Which of these runs are still running on ``worker`` (by id), with ``cancel_requested``/``cancelled_by``.

        A run missing from the answer was ended elsewhere (cancelled before it started, marked lost …).
        """
        if not run_ids:
            return {}
        docs = self.store.retry(lambda: list(self.collection.find(
            {"_id": {"$in": run_ids}, "worker": worker, "status": RunStatus.RUNNING.value},
            {"_id": 1, "cancel_requested": 1, "cancelled_by": 1})))
        return {doc["_id"]: doc for doc in docs}

    def renew_leases(self, worker: str, run_ids: builtins.list[str], lease_s: float,
                     now: datetime | None = None) -> None:
        """Extend ``lease_until`` of this worker's running runs (called with each heartbeat)."""
        if not run_ids:
            return
        now = now or utcnow()
        self.store.retry(lambda: self.collection.update_many(
            {"_id": {"$in": run_ids}, "worker": worker, "status": RunStatus.RUNNING.value},
            {"$set": {"lease_until": now + timedelta(seconds=lease_s)}}))

    def expired_leases(self, now: datetime | None = None) -> builtins.list[dict]:
        """Running runs whose worker stopped renewing their lease."""
        now = now or utcnow()
        return self.store.retry(lambda: list(self.collection.find(
            {"status": RunStatus.RUNNING.value, "lease_until": {"$lt": now}})))

    def promote_waiting(self, job: str) -> dict | None:
        """If no run of ``job`` is queued or running, move its oldest waiting run to queued."""
        # Most databases have no waiting run at all; this check uses the status index
        # (a job + status filter scans the job's whole history on the embedded server).
        if self.store.retry(lambda: self.collection.find_one({"status": RunStatus.WAITING.value}, {"_id": 1})) is None:
            return None
        busy = self.store.retry(lambda: self.collection.find_one(
            {"job": job, "status": {"$in": [RunStatus.QUEUED.value, RunStatus.RUNNING.value]}}, {"_id": 1}))
        if busy:
            return None
        return self.store.retry(lambda: self.collection.find_one_and_update(
            {"job": job, "status": RunStatus.WAITING.value},
            {"$set": {"status": RunStatus.QUEUED.value, "not_before": utcnow()}},
            sort=[("queued_at", 1)], return_document=ReturnDocument.AFTER))

    # -- reading ------------------------------------------------------------
    def get(self, run_id: str) -> dict:
        """The run with this id or unique id prefix (6+ characters), else RunNotFound."""
        run = self.store.retry(lambda: self.collection.find_one({"_id": run_id}))
        if run is None and 6 <= len(run_id) < 24 and re.fullmatch(r"[0-9a-f]+", run_id):
            matches = self.store.retry(lambda: list(self.collection.find(
                {"_id": {"$regex": f"^{run_id}"}}, limit=2)))
            if len(matches) > 1:
                raise SoonerError(f"run id prefix {run_id!r} is ambiguous; give more characters")
            run = matches[0] if matches else None
        if run is None:
            raise RunNotFound(run_id)
        return run

    def active_count(self, job: str) -> int:
        """How many runs of ``job`` are waiting, queued or running."""
        return len(self.store.retry(lambda: list(self.collection.find(
            {"job": job, "status": {"$in": ACTIVE}}, {"_id": 1}).limit(1000))))

    def list(self, *, job: str | None = None, status: str | None = None, limit: int = 50,
             before: str | None = None) -> builtins.list[dict]:
        """Newest first; ``before`` (a run id) pages backwards."""
        query: dict[str, Any] = {}
        if job:
            query["job"] = job
        if status:
            query["status"] = status
        if before:
            query["_id"] = {"$lt": before}
        return self.store.retry(lambda: list(self.collection.find(query).sort("_id", -1).limit(limit)))

    def running(self) -> builtins.list[dict]:
        return self.store.retry(lambda: list(self.collection.find({"status": RunStatus.RUNNING.value})))

    def last_per_job(self, jobs: builtins.list[str]) -> dict[str, dict]:
        """The newest run of each named job."""
        result: dict[str, dict] = {}
        for job in jobs:
            run = self.store.retry(lambda: self.collection.find_one({"job": job}, sort=[("queued_at", -1)]))
            if run:
                result[job] = run
        return result

    def _update(self, run_id: str, fields: dict[str, Any]) -> None:
        self.store.retry(lambda: self.collection.update_one({"_id": run_id}, {"$set": fields}))
