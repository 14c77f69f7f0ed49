"""The ``events`` collection: every emitted event and the runs it triggered."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from sooner.store import schema
from sooner.store.bulk import insert_all
from sooner.store.group import GroupCommit

if TYPE_CHECKING:
    from sooner.store import Store


class EventRepo:
    """Domain operations on ``events``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.EVENTS)
        # Outcome events of runs ending together on a worker's threads: one insert (sooner.store.group).
        self._inserts: GroupCommit[dict, bool] = GroupCommit(self._insert_events)

    def record(self, name: str, data: Any, *, source: dict[str, Any], depth: int,
               now: datetime | None = None, event_id: str | None = None) -> dict:
        """Store an emitted event. ``source`` is {type: run/cli/api/system, run, job}.

        ``event_id`` is the id chosen when the event was emitted (a worker's outage
        journal does); if an event with it is stored already, that one is returned,
        marked ``"replayed": True``, and nothing is written.
        """
        event = {"_id": event_id or str(ObjectId()), "name": name, "data": data, "source": source, "depth": depth,
                 "t": now or self.store.clock.now(), "runs": [], "note": None}
        if self._inserts.submit(event):
            return event
        if event_id is None:  # a duplicate of a new id: our own insert, retried after its answer was lost
            return event
        stored = self.store.retry(lambda: self.collection.find_one({"_id": event_id}))
        return {**(stored or event), "replayed": True}

    def _insert_events(self, events: builtins.list[dict]) -> builtins.list[bool]:
        """Insert these events in one command; for each, False if its ``_id`` was stored already."""
        duplicates = insert_all(self.store, self.collection, events)
        return [index not in duplicates for index in range(len(events))]

    def attach_runs(self, event_id: str, run_ids: builtins.list[str], note: str | None = None) -> None:
        """Remember which runs the event started (``runs``) and why it started none (``note``)."""
        fields: dict[str, Any] = {"runs": run_ids}
        if note:
            fields["note"] = note
        self.store.retry(lambda: self.collection.update_one({"_id": event_id}, {"$set": fields}))

    def list(self, *, name: str | None = None, limit: int = 50,
             before: datetime | None = None) -> builtins.list[dict]:
        """Events (named ``name`` if given), newest first by ``t``; ``before`` pages back: events older than it.

        The one order and paging rule for events; the events page pages with
        it too (``store.reads.events_page``). By the time they were recorded,
        not by ``_id``: ``t`` is indexed, and the embedded server answers a
        range on ``_id`` more slowly still. An event recorded in the same
        millisecond as the last one of a page may be skipped by the next page.
        """
        query: dict[str, Any] = {}
        if name:
            query["name"] = schema.eq(name)
        if before:
            query["t"] = {"$lt": before}
        return self.store.retry(lambda: list(self.collection.find(query).sort("t", -1).limit(limit)))

    def emitted_by(self, run_id: str, *, offset: int = 0, limit: int = 100) -> builtins.list[dict]:
        """Events whose ``source.run`` is ``run_id`` (it emitted them, or they announce its end), oldest first.

        Ordered by (``t``, ``_id``) and paged by ``offset``: a run's events only ever
        grow at the end, so an offset is stable, and the embedded server answers an
        equality on the indexed ``source.run`` with a sort in ~6 ms at 50,000 events,
        while any range on ``t`` beside it is a collection scan (~117 ms).
        """
        return self.store.retry(lambda: list(self.collection.find({"source.run": run_id})
                                             .sort([("t", 1), ("_id", 1)]).skip(offset).limit(limit)))

    def get(self, event_id: str) -> dict | None:
        return self.store.retry(lambda: self.collection.find_one({"_id": event_id}))
