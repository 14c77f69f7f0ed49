"""The ``jobs`` collection: one document per deployed script path."""

from __future__ import annotations

import builtins
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from pymongo import ReturnDocument

from sooner.errors import JobNotFound, SoonerError
from sooner.model import JOB_DEFAULTS, Job
from sooner.model.http_job import JobKind
from sooner.store import schema
from sooner.store.bulk import Insert, Update, bulk_write

if TYPE_CHECKING:
    from sooner.store import Store

logger = logging.getLogger(__name__)

READ_BATCH = 2000  # documents per batch of a read of every job (nx-27017 sends 101 unless told)


class JobRepo:
    """Domain operations on ``jobs``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.JOBS)
        self._unreadable: set[tuple[str, str]] = set()  # (job, why) already warned about
        self._schedulable: dict[str, tuple[Mapping[str, Any], Job]] = {}  # name -> (document, Job) last read

    def find(self, name: str) -> Job | None:
        doc = self.store.retry(lambda: self.collection.find_one({"_id": name}))
        return Job.from_doc(doc) if doc else None

    def get(self, name: str) -> Job:
        """The job, or JobNotFound."""
        job = self.find(name)
        if job is None:
            raise JobNotFound(name)
        return job

    def list(self, *, include_deleted: bool = False) -> builtins.list[Job]:
        query = {} if include_deleted else {"deleted": {"$ne": True}}
        return self._jobs(query, sort=[("_id", 1)])

    def record_deployed(self, name: str, *, commit: str, blob: str, now: datetime | None = None) -> str:
        """Create or update the job for a deployed script.

        Returns ``created`` (new job, disabled), ``restored`` (was deleted; keeps
        its settings but comes back disabled), ``updated`` (script content
        changed: ``commit``/``blob`` set) or ``unchanged``. Changes ``commit``,
        ``blob``, ``deleted``, ``updated_at`` and, on creation, every default.
        """
        now = now or self.store.clock.now()
        existing = self.find(name)
        if existing is None:
            document = {"_id": name, **JOB_DEFAULTS, "hooks": [], "deleted": False, "commit": commit,
                        "blob": blob, "created_at": now, "updated_at": now, "new": True,
                        "kind": JobKind.of(name).value}
            self.store.retry(lambda: self.collection.update_one(
                {"_id": name}, {"$setOnInsert": document}, upsert=True))
            return "created"
        if existing.deleted:
            self._set(name, {"deleted": False, "enabled": False, "commit": commit, "blob": blob,
                             "updated_at": now, "deleted_at": None, "new": True})
            return "restored"
        if existing.blob != blob:
            self._set(name, {"commit": commit, "blob": blob, "updated_at": now})
            return "updated"
        return "unchanged"

    def mark_deleted(self, name: str, *, commit: str, now: datetime | None = None) -> None:
        """Mark a job whose script was removed (or lost its x bit); its history is kept.

        Changes ``deleted``, ``enabled`` (false), ``deleted_at``, ``commit``, ``updated_at``.
        """
        now = now or self.store.clock.now()
        self._set(name, {"deleted": True, "enabled": False, "deleted_at": now, "commit": commit, "updated_at": now})

    def set_enabled(self, name: str, enabled: bool) -> Job:
        """Enable or disable a job (never a deleted one). Changes ``enabled``, ``new``, ``updated_at``."""
        job = self.get(name)
        if enabled and job.deleted:
            raise SoonerError(f"job {name!r} was removed from the repository; push it again to use it")
        return self._set(name, {"enabled": enabled, "new": False, "updated_at": self.store.clock.now()})

    def update_settings(self, name: str, changes: dict[str, Any], *, add_hooks: Iterable[str] = (),
                        remove_hooks: Iterable[str] = ()) -> Job:
        """Change user settings (keys of JOB_DEFAULTS, already validated) and hooks."""
        self.get(name)
        unknown = set(changes) - set(JOB_DEFAULTS)
        if unknown:
            raise ValueError(f"not job settings: {sorted(unknown)}")
        update: dict[str, Any] = {"$set": {**changes, "updated_at": self.store.clock.now(), "new": False}}
        add, remove = list(add_hooks), list(remove_hooks)
        if add:
            update["$addToSet"] = {"hooks": {"$each": add}}
        doc = self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": name}, update, return_document=ReturnDocument.AFTER))
        if remove:
            doc = self.store.retry(lambda: self.collection.find_one_and_update(
                {"_id": name}, {"$pull": {"hooks": {"$in": remove}}}, return_document=ReturnDocument.AFTER))
        if doc is None:
            raise JobNotFound(name)
        return Job.from_doc(doc)

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
        now = now or self.store.clock.now()
        inserts = [{"_id": name, **JOB_DEFAULTS, "hooks": [], "deleted": False, "commit": commit, "blob": blob,
                    "created_at": now, "updated_at": now, "new": True, "kind": JobKind.of(name).value}
                   for name, blob in (created or {}).items()]
        updates = [(name, {"deleted": False, "enabled": False, "commit": commit, "blob": blob, "updated_at": now,
                           "deleted_at": None, "new": True}) for name, blob in (restored or {}).items()]
        updates += [(name, {"commit": commit, "blob": blob, "updated_at": now}) for name, blob in (updated or {}).items()]
        updates += [(name, {"deleted": True, "enabled": False, "deleted_at": now, "commit": commit, "updated_at": now})
                    for name in removed]
        if inserts or updates:
            self._bulk_write(inserts, updates)

    def _bulk_write(self, inserts: builtins.list[dict], updates: builtins.list[tuple[str, dict]]) -> None:
        """Insert new jobs (an existing one is left alone) and ``$set`` fields on others, in one bulk write."""
        # A duplicate insert is a job that exists already (or a retried batch).
        bulk_write(self.store, self.collection, [*(Insert(document) for document in inserts),
                                                 *(Update({"_id": name}, {"$set": fields}) for name, fields in updates)])

    def with_hook(self, event: str) -> builtins.list[Job]:
        """Enabled, not deleted jobs whose ``hooks`` contain the event name."""
        # ``$in`` rather than ``{"hooks": event}``: nx-27017 0.8.1 answers an equality match on an
        # indexed array field with nothing (tests/test_store.py covers it on every store).
        return self._jobs({"hooks": {"$in": [event]}, "enabled": True, "deleted": {"$ne": True}})

    def with_hooks(self, events: Iterable[str], *, also: str | None = None) -> tuple[Job | None, dict[str, builtins.list[Job]]]:
        """:meth:`with_hook` for several events in one query; with ``also``, that job too (None if gone).

        For a run that starts: its job, and the jobs hooked to the events its end may emit,
        in one round trip instead of one per read (see :class:`sooner.runs.facts.JobFacts`).
        """
        found, hooked = self.named_with_hooks([] if also is None else [also], events)
        return (found.get(also) if also is not None else None), hooked

    def named_with_hooks(self, names: Iterable[str], events: Iterable[str]) -> tuple[dict[str, Job], dict[str, builtins.list[Job]]]:
        """The jobs called ``names`` (those that exist) and the jobs hooked to each of ``events``, in one query."""
        names, events = builtins.list(names), builtins.list(events)
        hooked_query = {"hooks": {"$in": events}, "enabled": True, "deleted": {"$ne": True}}
        query = hooked_query if not names else {"$or": [{"_id": {"$in": names}}, hooked_query]}
        jobs = self._jobs(query)
        hooked = {event: [job for job in jobs if event in job.hooks and job.enabled and not job.deleted]
                  for event in events}
        return {job.name: job for job in jobs if job.name in names}, hooked

    def scheduled(self) -> builtins.list[Job]:
        """Enabled, not deleted jobs that have a schedule."""
        return self._jobs({"enabled": True, "deleted": {"$ne": True}, "schedule": {"$ne": None}})

    def schedulable(self) -> builtins.list[Job]:
        """Enabled, not deleted jobs: the ones whose triggers may start runs.

        A document that does not read as a job (edited by hand: ``retry: 5``) is left out
        with one warning naming it and what is wrong, so one bad document stops neither the
        other jobs' triggers nor the rest of the scheduler's tick.
        """
        query = {"enabled": True, "deleted": {"$ne": True}}
        # Big batches: nx-27017 answers each getMore with 101 documents, ten round trips for 1,000 jobs.
        docs = self.store.retry(lambda: builtins.list(self.collection.find(query).batch_size(READ_BATCH)))
        jobs = []
        decoded, self._schedulable = self._schedulable, {}
        for doc in docs:
            # The scheduler reads every job each tick and most are unchanged: a document equal to the
            # one read last time gives the same (immutable) Job without decoding it again.
            name = doc.get("_id")
            known = decoded.get(name) if isinstance(name, str) else None
            if known is not None and known[0] == doc:
                self._schedulable[name] = known
                jobs.append(known[1])
                continue
            try:
                job = Job.from_doc(doc)
                jobs.append(job)
                if isinstance(name, str):
                    self._schedulable[name] = (doc, job)
            except (TypeError, ValueError, AttributeError, KeyError) as exc:
                problem = (str(doc.get("_id")), f"{type(exc).__name__}: {exc}")
                if problem not in self._unreadable:
                    self._unreadable.add(problem)
                    logger.warning("job %s: its stored document cannot be read (%s); its triggers are skipped "
                                   "until the document is fixed", *problem)
        return jobs

    def save_trigger_state(self, name: str, key: str, state: dict[str, Any], *,
                           previous: dict[str, Any] | None) -> bool:
        """Set the cursor of the job's time trigger ``key`` if it still equals ``previous`` (None = absent).

        False if another scheduler moved it first. The cron trigger keeps its
        cursor in ``scheduler_state`` (the documented field); other kinds in
        ``trigger_state.<key>``. Comparing field by field (``since`` and ``by``
        aside) keeps the compare-and-set independent of subdocument key order.
        """
        query = _trigger_state_query(name, key, previous)
        result = self.store.retry(lambda: self.collection.update_one(query, {"$set": {_state_field(key): state}}))
        return result.matched_count == 1

    def save_trigger_states(self, states: Iterable[tuple[str, str, dict[str, Any], dict[str, Any] | None]]) -> None:
        """:meth:`save_trigger_state` for many ``(job, key, state, previous)`` at once, in one unordered bulk write.

        Each update is the same compare-and-set; one that matches nothing (another
        scheduler moved that cursor first) changes nothing, and the next tick reads it.
        """
        bulk_write(self.store, self.collection, [
            Update(_trigger_state_query(name, key, previous), {"$set": {_state_field(key): state}})
            for name, key, state, previous in states])

    def advance_trigger_cursors(self, key: str, identity: Mapping[str, Any], names: Sequence[str], cursor: datetime, *,
                                by: str) -> int:
        """Move trigger ``key``'s cursor to ``cursor`` on the jobs ``names``, in one update for all of them.

        Only where the trigger's identity is still ``identity`` and its cursor is behind
        ``cursor``: a cursor never moves back (another scheduler may be ahead), and a trigger
        whose settings changed or whose state was cleared meanwhile keeps its own state (the
        next tick reads it). ``since`` stays as it was. One scheduler tick moves the cursors of
        every job on one schedule this way: a thousand every-second jobs cost one update, not a
        thousand compare-and-sets (issue #12). Returns how many cursors moved.
        """
        field = _state_field(key)
        # Not $max: nx-27017 applies $max on a dotted path as a new top-level key named by the path.
        query = {"_id": {"$in": list(names)}, **{f"{field}.{k}": v for k, v in identity.items()},
                 f"{field}.last_tick_at": {"$lt": cursor}}
        result = self.store.retry(lambda: self.collection.update_many(
            query, {"$set": {f"{field}.last_tick_at": cursor, f"{field}.by": by}}))
        return result.modified_count

    def clear_trigger_states(self) -> int:
        """Forget the trigger cursors of jobs that are disabled, deleted or unscheduled.

        So a job enabled again later starts from that moment instead of counting
        the disabled time as missed ticks.
        """
        idle = [{"enabled": {"$ne": True}}, {"deleted": True}]
        # $exists as well: nx-27017 matches a missing field with {"$ne": None} (MongoDB does not);
        # and $and around the $or: nx-27017's update_many ignores a field condition beside a
        # top-level $or (its find does not), which cleared the cursors of enabled jobs.
        result = self.store.retry(lambda: self.collection.update_many(
            {"$and": [{"scheduler_state": {"$exists": True, "$ne": None}}, {"$or": [*idle, {"schedule": None}]}]},
            {"$set": {"scheduler_state": None}}))
        others = self.store.retry(lambda: self.collection.update_many(
            {"$and": [{"trigger_state": {"$exists": True, "$ne": None}}, {"$or": idle}]},
            {"$set": {"trigger_state": None}}))
        return result.modified_count + others.modified_count

    def forget_trigger_states(self, name: str, keys: Iterable[str]) -> None:
        """Drop the cursors of time triggers the job no longer has (``trigger_state.<key>``; never cron's)."""
        fields = {_state_field(key): "" for key in keys if key != "cron"}
        if fields:
            self.store.retry(lambda: self.collection.update_one({"_id": name}, {"$unset": fields}))

    def _set(self, name: str, fields: dict[str, Any]) -> Job:
        doc = self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": name}, {"$set": fields}, return_document=ReturnDocument.AFTER))
        if doc is None:
            raise JobNotFound(name)
        return Job.from_doc(doc)

    def _jobs(self, query: dict[str, Any], sort: builtins.list[tuple[str, int]] | None = None) -> builtins.list[Job]:
        return self.store.retry(lambda: [Job.from_doc(d) for d in self.collection.find(query, sort=sort)])


def _state_field(key: str) -> str:
    return "scheduler_state" if key == "cron" else f"trigger_state.{key}"


def _trigger_state_query(name: str, key: str, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """Match job ``name`` while its trigger ``key``'s cursor still equals ``previous`` (None = absent)."""
    field = _state_field(key)
    query: dict[str, Any] = {"_id": name}
    if previous is None:
        query[field] = None
    else:
        query.update({f"{field}.{k}": v for k, v in previous.items() if k not in ("since", "by")})
    return query
