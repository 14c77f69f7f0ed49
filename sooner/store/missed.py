"""The ``missed_ticks`` collection: every tick a job's schedule had due that got no run of its own.

The scheduler writes a :class:`~sooner.model.missed.MissedTick` per skipped
tick (overlap=skip), or one per outage for ticks no scheduler was running for
(``count``, ``first``, the latest as ``scheduled_for``), so a month of
downtime is one document, not 40,000. A record's ``_id`` comes from (job,
trigger key, latest tick): two schedulers recording the same ticks write one
document, and the dead man's switch finds the record ending at a tick by id.

Records are kept :data:`RETENTION` by ``recorded_at``; :meth:`MissedRepo.prune_expired`
(the scheduler calls it every tick, it works at most hourly) removes older
ones through the index on ``recorded_at``, as :meth:`OutputRepo.prune_expired`
does for output on the embedded server.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pymongo.errors import DuplicateKeyError

from sooner.model.missed import MissedTick, missed_tick_id
from sooner.store import schema
from sooner.store.bulk import Update, bulk_write
from sooner.store.reads import Page
from sooner.store.retention import prune_by_age

if TYPE_CHECKING:
    from sooner.store import Store

logger = logging.getLogger(__name__)

RETENTION = timedelta(days=90)
PRUNE_EVERY = timedelta(hours=1)
# Longer ``$in`` lists of ticks are asked in batches of this many.
TICK_BATCH = 500


class MissedRepo:
    """Domain operations on ``missed_ticks``."""

    def __init__(self, store: Store, retention: timedelta | None = RETENTION) -> None:
        self.store = store
        self.retention = retention
        self.collection = store.collection(schema.MISSED_TICKS)
        self._pruned_at: datetime | None = None

    def record(self, miss: MissedTick) -> bool:
        """Insert the record unless one with its id exists (then nothing changes); True if it was new.

        Writes every field of :meth:`MissedTick.to_doc`, ``recorded_at``
        defaulting to the store's clock.
        """
        document = self._document(miss, self.store.clock.now())

        def upsert() -> bool:
            try:
                result = self.collection.update_one({"_id": miss.id}, {"$setOnInsert": document}, upsert=True)
            except DuplicateKeyError:  # another scheduler's upsert of the same id won the race
                return False
            return result.upserted_id is not None
        return self.store.retry(upsert)

    def record_many(self, misses: Iterable[MissedTick]) -> None:
        """:meth:`record` for many records at once, in one unordered bulk write (one scheduler tick's)."""
        now = self.store.clock.now()
        bulk_write(self.store, self.collection, [
            Update({"_id": miss.id}, {"$setOnInsert": self._document(miss, now)}, upsert=True) for miss in misses])

    @staticmethod
    def _document(miss: MissedTick, now: datetime) -> dict[str, Any]:
        document = miss.to_doc()
        document["recorded_at"] = document["recorded_at"] or now
        return document

    def page(self, job: str, *, before: datetime | None = None, limit: int = 20) -> Page[MissedTick]:
        """The job's records newest first by ``scheduled_for``; ``before`` pages back (strictly older)."""
        query: dict[str, Any] = {"job": schema.eq(job)}
        if before is not None:
            query["scheduled_for"] = {"$lt": before}
        docs = self.store.retry(lambda: list(self.collection.find(query).sort("scheduled_for", -1).limit(limit + 1)))
        more = len(docs) > limit
        items = [MissedTick.from_doc(doc) for doc in docs[:limit]]
        return Page(items=items, more=more, next_before=items[-1].scheduled_for if more and items else None)

    def at_ticks(self, ticks: Iterable[tuple[str, datetime]], trigger_key: str = "cron"
                 ) -> dict[tuple[str, datetime], MissedTick]:
        """The records of ``trigger_key`` ending at these (job, tick) pairs, by pair: one ``_id`` lookup per batch."""
        ids = {missed_tick_id(job, trigger_key, moment): (job, moment) for job, moment in ticks}
        wanted = list(ids)
        found: dict[tuple[str, datetime], MissedTick] = {}
        for start in range(0, len(wanted), TICK_BATCH):
            batch = wanted[start:start + TICK_BATCH]
            for doc in self.store.retry(lambda: list(self.collection.find({"_id": {"$in": batch}}))):
                found[ids[doc["_id"]]] = MissedTick.from_doc(doc)
        return found

    def list(self, job: str | None = None) -> builtins.list[MissedTick]:
        """Every record (of ``job``), oldest tick first; for tests and small tools."""
        query = {"job": job} if job else {}
        return self.store.retry(lambda: [MissedTick.from_doc(doc) for doc in
                                         self.collection.find(query).sort("scheduled_for", 1)])

    # -- retention ---------------------------------------------------------------
    def prune(self, older_than: datetime, *, batch: int = 1000) -> int:
        """Delete records recorded before ``older_than``, oldest first; returns how many."""
        return prune_by_age(self.store, self.collection, "recorded_at", older_than, batch=batch)

    def prune_expired(self, now: datetime) -> int:
        """Apply :data:`RETENTION`, at most once per :data:`PRUNE_EVERY`; cheap to call every tick."""
        if self.retention is None or (self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY):
            return 0
        self._pruned_at = now
        removed = self.prune(now - self.retention)
        if removed:
            logger.info("removed %d missed-tick records older than %s", removed, self.retention)
        return removed
