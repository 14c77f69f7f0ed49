"""The ``notifications`` collection: the outbox of notifications, one document per (run or missed tick, target).

An end-of-run listener inserts entries (:meth:`NotificationRepo.enqueue`); their ``_id`` is derived from the
run and the target, so a replayed end inserts nothing new. The notifier (:mod:`sooner.runs.notifier`) lists
pending entries by ``state`` (one equality on its index; ``not_before`` and the lease are checked in Python,
as run claims do), takes one with a single ``find_one_and_update`` on ``{_id, state: pending, claim}`` that
sets a fresh ``claim`` and ``lease_until`` (so two notifiers never send one entry at once, and a notifier
that died holding one loses it when the lease ends), and records the outcome. The per-target rate limit is
counted from here too (sent entries of a target, newest first), so it holds across processes. Entries are
kept :data:`RETENTION` by ``created_at``.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from sooner.model.notify import Notification, NotifyState
from sooner.store import schema
from sooner.store.retention import prune_by_age

if TYPE_CHECKING:
    from sooner.store import Store

RETENTION = timedelta(days=30)
PRUNE_EVERY = timedelta(hours=1)


class NotificationRepo:
    """Domain operations on ``notifications`` (``store.notifications``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.NOTIFICATIONS)
        self._pruned_at: datetime | None = None

    def enqueue(self, entries: Iterable[Notification]) -> int:
        """Insert each entry unless one with its id exists (then nothing changes); returns how many were new."""
        new = 0
        for entry in entries:
            document = entry.to_doc()

            def insert(document: dict[str, Any] = document) -> bool:
                try:
                    self.collection.insert_one(dict(document))
                except DuplicateKeyError:  # a replayed end, or a retried insert that had been stored
                    return False
                return True
            new += self.store.retry(insert)
        return new

    def pending(self, limit: int = 100) -> builtins.list[Notification]:
        """Pending entries, the soonest due first (so entries waiting for a retry never hide due ones);
        the caller checks ``not_before`` and the lease."""
        return self._find({"state": NotifyState.PENDING.value}, sort=[("not_before", 1)], limit=limit)

    def take(self, entry: Notification, *, claim: str, lease_until: datetime) -> Notification | None:
        """Claim a pending entry seen with ``entry.claim``: sets ``claim``, ``lease_until``, ``attempts`` + 1.

        None if another notifier took (or finished) it first.
        """
        doc = self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": entry.id, "state": NotifyState.PENDING.value, "claim": entry.claim},
            {"$set": {"claim": claim, "lease_until": lease_until}, "$inc": {"attempts": 1}},
            return_document=ReturnDocument.AFTER))
        return Notification.from_doc(doc) if doc else None

    def record_sent(self, entry_id: str, claim: str, *, now: datetime) -> None:
        """``state: sent``, ``sent_at``, ``finished_at``; the error of an earlier attempt is kept."""
        self._settle(entry_id, claim, {"state": NotifyState.SENT.value, "sent_at": now, "finished_at": now,
                                       "lease_until": None})

    def record_retry(self, entry_id: str, claim: str, *, error: str, not_before: datetime) -> None:
        """Still ``pending``: ``error`` and ``not_before`` of the next attempt; the lease ends."""
        self._settle(entry_id, claim, {"error": error, "not_before": not_before, "lease_until": None})

    def record_failed(self, entry_id: str, claim: str, *, error: str, now: datetime) -> None:
        """``state: failed`` with the last ``error``, ``finished_at``."""
        self._settle(entry_id, claim, {"state": NotifyState.FAILED.value, "error": error, "finished_at": now,
                                       "lease_until": None})

    def record_suppressed(self, entry_id: str, claim: str, *, now: datetime) -> None:
        """``state: suppressed`` (over the target's rate limit) and ``summary_due`` until a summary counts it."""
        self._settle(entry_id, claim, {"state": NotifyState.SUPPRESSED.value, "finished_at": now,
                                       "lease_until": None, "reported": False, "summary_due": True})

    def _settle(self, entry_id: str, claim: str, fields: dict[str, Any]) -> None:
        # Only the holder of the claim writes: a notifier whose lease ran out must not overwrite a newer attempt.
        self.store.retry(lambda: self.collection.update_one({"_id": entry_id, "claim": claim}, {"$set": fields}))

    def sent_times(self, target_key: str, limit: int) -> builtins.list[datetime]:
        """When the newest ``limit`` entries sent to the target were sent, newest first (the rate limit)."""
        docs = self.store.retry(lambda: list(self.collection.find(
            {"target_key": target_key}, {"state": 1, "sent_at": 1}, sort=[("sent_at", -1)], limit=limit * 4 + 10)))
        times = [doc["sent_at"] for doc in docs if doc.get("state") == NotifyState.SENT.value and doc.get("sent_at")]
        return sorted(times, reverse=True)[:limit]

    def unreported_suppressed(self, limit: int = 1000) -> builtins.list[Notification]:
        """Suppressed entries no summary has counted yet, oldest first (one equality on ``summary_due``)."""
        entries = self._find({"summary_due": True}, sort=[("created_at", 1)], limit=limit)
        return [entry for entry in entries if not entry.reported]

    def mark_reported(self, ids: Iterable[str]) -> None:
        """``reported: true``, and ``summary_due`` removed (its index then holds only what is still due)."""
        wanted = list(ids)
        if wanted:
            self.store.retry(lambda: self.collection.update_many(
                {"_id": {"$in": wanted}}, {"$set": {"reported": True}, "$unset": {"summary_due": ""}}))

    def for_run(self, run_id: str) -> builtins.list[Notification]:
        """A run's notifications, oldest first (one equality on the indexed ``run``)."""
        return self._find({"run": run_id}, sort=[("created_at", 1)], limit=200)

    def find(self, entry_id: str) -> Notification | None:
        doc = self.store.retry(lambda: self.collection.find_one({"_id": entry_id}))
        return Notification.from_doc(doc) if doc else None

    def prune_expired(self, now: datetime) -> int:
        """Delete entries created more than :data:`RETENTION` ago; works at most every :data:`PRUNE_EVERY`."""
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return 0
        self._pruned_at = now
        return prune_by_age(self.store, self.collection, "created_at", now - RETENTION)

    def _find(self, query: dict[str, Any], *, sort: list[tuple[str, int]], limit: int) -> builtins.list[Notification]:
        docs = self.store.retry(lambda: list(self.collection.find(query, sort=sort, limit=limit)))
        return [Notification.from_doc(doc) for doc in docs]
