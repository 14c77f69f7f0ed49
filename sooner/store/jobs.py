"""The ``jobs`` collection: one document per deployed script path."""

from __future__ import annotations

import builtins
from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from pymongo import ReturnDocument

from sooner.errors import JobNotFound
from sooner.store import schema

if TYPE_CHECKING:
    from sooner.store import Store


class Overlap(str, Enum):
    """What the scheduler does when a job fires while a run of it is queued or running."""

    ALLOW = "allow"  # start another run alongside
    SKIP = "skip"  # drop the new fire (default)
    QUEUE = "queue"  # queue it; it starts when the earlier run ends


class Missed(str, Enum):
    """What the scheduler does with ticks missed while no scheduler ran."""

    SKIP = "skip"  # forget them (default)
    CATCH_UP_ONCE = "catch_up_once"  # one run for the whole missed period


# Settings a user may change with `sooner job set` or the web UI, with defaults.
JOB_DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "schedule": None,
    "timezone": "UTC",
    "worker": None,
    "hooks": [],
    "timeout_s": None,
    "retry": {"attempts": 0, "delay_s": 30},
    "overlap": Overlap.SKIP.value,
    "missed": Missed.SKIP.value,
}


def utcnow() -> datetime:
    """Now, in UTC with millisecond precision (what BSON keeps)."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class JobRepo:
    """Domain operations on ``jobs``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.JOBS)

    def find(self, name: str) -> dict | None:
        return self.store.retry(lambda: self.collection.find_one({"_id": name}))

    def get(self, name: str) -> dict:
        """The job, or JobNotFound."""
        job = self.find(name)
        if job is None:
            raise JobNotFound(name)
        return job

    def list(self, *, include_deleted: bool = False) -> builtins.list[dict]:
        query = {} if include_deleted else {"deleted": {"$ne": True}}
        return self.store.retry(lambda: list(self.collection.find(query).sort("_id", 1)))

    def record_deployed(self, name: str, *, commit: str, blob: str, now: datetime | None = None) -> str:
        """Create or update the job for a deployed script.

        Returns ``created`` (new job, disabled), ``restored`` (was deleted; keeps
        its settings but comes back disabled), ``updated`` (script content
        changed: ``commit``/``blob`` set) or ``unchanged``. Changes ``commit``,
        ``blob``, ``deleted``, ``updated_at`` and, on creation, every default.
        """
        now = now or utcnow()
        existing = self.find(name)
        if existing is None:
            document = {"_id": name, **JOB_DEFAULTS, "hooks": [], "deleted": False, "commit": commit,
                        "blob": blob, "created_at": now, "updated_at": now, "new": True}
            self.store.retry(lambda: self.collection.update_one(
                {"_id": name}, {"$setOnInsert": document}, upsert=True))
            return "created"
        if existing.get("deleted"):
            self._set(name, {"deleted": False, "enabled": False, "commit": commit, "blob": blob,
                             "updated_at": now, "deleted_at": None, "new": True})
            return "restored"
        if existing.get("blob") != blob:
            self._set(name, {"commit": commit, "blob": blob, "updated_at": now})
            return "updated"
        return "unchanged"

    def mark_deleted(self, name: str, *, commit: str, now: datetime | None = None) -> None:
        """Mark a job whose script was removed (or lost its x bit); its history is kept.

        Changes ``deleted``, ``enabled`` (false), ``deleted_at``, ``commit``, ``updated_at``.
        """
        now = now or utcnow()
        self._set(name, {"deleted": True, "enabled": False, "deleted_at": now, "commit": commit, "updated_at": now})

    def set_enabled(self, name: str, enabled: bool) -> dict:
        """Enable or disable a job (never a deleted one). Changes ``enabled``, ``new``, ``updated_at``."""
        job = self.get(name)
        if enabled and job.get("deleted"):
            from sooner.errors import SoonerError

            raise SoonerError(f"job {name!r} was removed from the repository; push it again to use it")
        return self._set(name, {"enabled": enabled, "new": False, "updated_at": utcnow()})

    def update_settings(self, name: str, changes: dict[str, Any], *, add_hooks: Iterable[str] = (),
                        remove_hooks: Iterable[str] = ()) -> dict:
        """Change user settings (keys of JOB_DEFAULTS, already validated) and hooks."""
        self.get(name)
        unknown = set(changes) - set(JOB_DEFAULTS)
        if unknown:
            raise ValueError(f"not job settings: {sorted(unknown)}")
        update: dict[str, Any] = {"$set": {**changes, "updated_at": utcnow(), "new": False}}
        add, remove = list(add_hooks), list(remove_hooks)
        if add:
            update["$addToSet"] = {"hooks": {"$each": add}}
        job = self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": name}, update, return_document=ReturnDocument.AFTER))
        if remove:
            job = self.store.retry(lambda: self.collection.find_one_and_update(
                {"_id": name}, {"$pull": {"hooks": {"$in": remove}}}, return_document=ReturnDocument.AFTER))
        return job

    def deployed_state(self) -> dict[str, dict]:
        """Every job, deleted ones too, as ``{name: {"_id", "blob", "deleted"}}``: what a deploy compares with."""
        # An aggregate $project answers faster than find() with a projection on the embedded server.
        docs = self.store.retry(lambda: list(self.collection.aggregate([{"$project": {"blob": 1, "deleted": 1}}])))
        return {doc["_id"]: doc for doc in docs}

    def record_deploy_changes(self, *, commit: str, created: Mapping[str, str] | None = None,
                              updated: Mapping[str, str] | None = None, restored: Mapping[str, str] | None = None,
                              removed: Iterable[str] = (), now: datetime | None = None) -> None:
        """Apply a whole deploy's job changes in one bulk write (a deploy of 1,000 scripts is one round trip).

        ``created``/``updated``/``restored`` map job names to blob shas and
        change the same fields as :meth:`record_deployed` for that outcome;
        ``removed`` changes what :meth:`mark_deleted` changes. A job in
        ``created`` that exists already is left alone, as ``$setOnInsert`` would.
        """
        now = now or utcnow()
        inserts = [{"_id": name, **JOB_DEFAULTS, "hooks": [], "deleted": False, "commit": commit, "blob": blob,
                    "created_at": now, "updated_at": now, "new": True} for name, blob in (created or {}).items()]
        updates = [(name, {"deleted": False, "enabled": False, "commit": commit, "blob": blob, "updated_at": now,
                           "deleted_at": None, "new": True}) for name, blob in (restored or {}).items()]
        updates += [(name, {"commit": commit, "blob": blob, "updated_at": now}) for name, blob in (updated or {}).items()]
        updates += [(name, {"deleted": True, "enabled": False, "deleted_at": now, "commit": commit, "updated_at": now})
                    for name in removed]
        if inserts or updates:
            self.store.retry(lambda: self._bulk_write(inserts, updates))

    def _bulk_write(self, inserts: builtins.list[dict], updates: builtins.list[tuple[str, dict]]) -> None:
        """Insert new jobs (an existing one is left alone) and ``$set`` fields on others, in one bulk write."""
        from pymongo import InsertOne, UpdateOne
        from pymongo.errors import BulkWriteError

        if self.store.is_mongomock:  # mongomock's bulk_write rejects PyMongo 4.20's UpdateOne
            for document in inserts:
                if self.collection.find_one({"_id": document["_id"]}) is None:
                    self.collection.insert_one(dict(document))
            for name, fields in updates:
                self.collection.update_one({"_id": name}, {"$set": fields})
            return
        ops: list[Any] = [InsertOne(document) for document in inserts]
        ops += [UpdateOne({"_id": name}, {"$set": fields}) for name, fields in updates]
        try:
            self.collection.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            # A duplicate insert is a job that exists already (or a retried batch).
            if any(error.get("code") != 11000 for error in exc.details.get("writeErrors", [])):
                raise

    def with_hook(self, event: str) -> builtins.list[dict]:
        """Enabled, not deleted jobs whose ``hooks`` contain the event name."""
        # ``$in`` rather than ``{"hooks": event}``: nx-27017 0.8.1 answers an equality match on an
        # indexed array field with nothing (tests/test_store.py covers it on every store).
        return self.store.retry(lambda: list(self.collection.find(
            {"hooks": {"$in": [event]}, "enabled": True, "deleted": {"$ne": True}})))

    def scheduled(self) -> builtins.list[dict]:
        """Enabled, not deleted jobs that have a schedule."""
        return self.store.retry(lambda: list(self.collection.find(
            {"enabled": True, "deleted": {"$ne": True}, "schedule": {"$ne": None}})))

    def save_scheduler_state(self, name: str, state: dict[str, Any], *, previous: dict[str, Any] | None) -> bool:
        """Set ``scheduler_state`` if it still equals ``previous`` (None = absent); False if another scheduler won.

        The state is {schedule, timezone, last_tick_at, …}; comparing field by
        field keeps the compare-and-set independent of subdocument key order.
        """
        query: dict[str, Any] = {"_id": name}
        if previous is None:
            query["scheduler_state"] = None
        else:
            query.update({f"scheduler_state.{key}": previous.get(key)
                          for key in ("schedule", "timezone", "last_tick_at")})
        result = self.store.retry(lambda: self.collection.update_one(query, {"$set": {"scheduler_state": state}}))
        return result.matched_count == 1

    def clear_scheduler_state(self) -> int:
        """Forget ``scheduler_state`` of jobs that are disabled, deleted or unscheduled.

        So a job enabled again later starts from that moment instead of counting
        the disabled time as missed ticks.
        """
        result = self.store.retry(lambda: self.collection.update_many(
            {"scheduler_state": {"$ne": None},
             "$or": [{"enabled": {"$ne": True}}, {"deleted": True}, {"schedule": None}]},
            {"$set": {"scheduler_state": None}}))
        return result.modified_count

    def _set(self, name: str, fields: dict[str, Any]) -> dict:
        job = self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": name}, {"$set": fields}, return_document=ReturnDocument.AFTER))
        if job is None:
            raise JobNotFound(name)
        return job
