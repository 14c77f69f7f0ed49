"""The ``limits`` collection: fleet-wide concurrency limits as slots that runs hold (issue #12).

A limit ``key`` with a maximum of ``n`` (see :func:`sooner.model.dispatch.limit_keys`) is ``n``
documents ``<key>#0`` … ``<key>#<n-1>``, each ``{run: <run id> | None, at}``. A claim takes a
free slot of each limit its run counts against with one ``find_one_and_update`` on
``{_id: {$in: the key's slots}, run: None}`` (atomic per document, so any
number of workers on any number of hosts never put ``n + 1`` runs in ``n`` slots), then takes
the run itself (recording the slots on it as ``limit_slots``). The run's end frees them with one
``update_many`` on ``{_id: {$in: limit_slots}, run: <run id>}``.

Why slots rather than a counter with a conditional ``$inc``: freeing a slot names its holder, so
releasing twice (a finish replayed from a journal, a lease expiry racing the worker's own end)
frees nothing extra, and a slot whose holder is gone can be found and freed (:meth:`repair`); a
counter that lost a decrement would stay too high for ever. A changed maximum needs no
migration: slots past a lowered maximum are simply never asked for (their holders still free
them), and a raised one gets its new slots on first use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pymongo import ReturnDocument

from sooner.clock import aware
from sooner.model import RunStatus
from sooner.model.dispatch import slot_ids
from sooner.store import schema
from sooner.store.bulk import Insert, bulk_write

if TYPE_CHECKING:
    from sooner.store import Store

logger = logging.getLogger(__name__)

# A full limit looks for slots whose holder is gone at most this often per process and key.
REPAIR_EVERY_S = 5.0
# A slot taken for a run that is still queued this long after is one whose claimer died between the
# slot and the run (a live claimer takes the run within milliseconds).
ORPHAN_AFTER_S = 60.0


class LimitRepo:
    """Slots of fleet-wide concurrency limits; each method names the fields it changes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.LIMITS)
        self._made: set[tuple[str, int]] = set()  # limits whose slots this process knows exist
        self._repaired: dict[str, float] = {}
        self._lock = threading.Lock()

    def acquire(self, limits: Sequence[tuple[str, int]], run_id: str, *,
                now: datetime) -> tuple[list[str], None] | tuple[None, str]:
        """Take a slot of every limit for ``run_id``: (the slot ids, None), or (None, the full limit's key)
        with nothing held.

        Sets ``run`` and ``at`` of each slot taken. Only free slots are taken, never one the run
        holds already: two workers racing for one run each take their own slot, and the loser of
        the run frees exactly the slots it took (a slot its claimer left behind is :meth:`repair`'s).
        """
        taken: list[str] = []
        for key, limit in limits:
            slot = self._take(key, limit, run_id, now)
            if slot is None and self._repair_due(key):
                if self.repair(key, limit, now=now):
                    slot = self._take(key, limit, run_id, now)
            if slot is None:
                self.release(taken, run_id)
                return None, key
            taken.append(slot)
        return taken, None

    def _take(self, key: str, limit: int, run_id: str, now: datetime) -> str | None:
        self._make(key, limit)
        doc = self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": {"$in": slot_ids(key, limit)}, "run": None},
            {"$set": {"run": run_id, "at": now}}, projection={"_id": 1}, return_document=ReturnDocument.AFTER))
        return str(doc["_id"]) if doc else None

    def _make(self, key: str, limit: int) -> None:
        with self._lock:
            if (key, limit) in self._made:
                return
        # Slots that exist already are refused as duplicates: that is the point.
        bulk_write(self.store, self.collection, [Insert({"_id": slot, "run": None, "at": None})
                                                 for slot in slot_ids(key, limit)])
        with self._lock:
            self._made.add((key, limit))

    def release(self, slots: Sequence[str], run_id: str) -> None:
        """Free the slots ``run_id`` holds among ``slots`` (idempotent). Sets ``run`` to None."""
        if not slots:
            return
        self.store.retry(lambda: self.collection.update_many(
            {"_id": {"$in": list(slots)}, "run": run_id}, {"$set": {"run": None, "at": None}}))

    def holders(self, key: str, limit: int) -> dict[str, str]:
        """Which run holds each taken slot of a limit: {slot id: run id}."""
        docs = self.store.retry(lambda: list(self.collection.find({"_id": {"$in": slot_ids(key, limit)}})))
        return {str(doc["_id"]): doc["run"] for doc in docs if doc.get("run")}

    def repair(self, key: str, limit: int, *, now: datetime) -> int:
        """Free slots of a limit whose holder is not running: ended, gone, or queued long after its slot was taken.

        Returns how many were freed. Each is freed only if the same run still holds it.
        """
        docs = self.store.retry(lambda: list(self.collection.find({"_id": {"$in": slot_ids(key, limit)},
                                                                   "run": {"$ne": None}})))
        held = {str(doc["_id"]): doc for doc in docs if doc.get("run")}
        if not held:
            return 0
        statuses = self.store.runs.statuses([doc["run"] for doc in held.values()])
        freed = 0
        for slot, doc in held.items():
            status, at = statuses.get(doc["run"]), doc.get("at")
            orphan = status is RunStatus.QUEUED and at is not None and aware(at) < now - timedelta(
                seconds=ORPHAN_AFTER_S)
            if status is None or status.finished or orphan:
                result = self.store.retry(lambda: self.collection.update_one(
                    {"_id": slot, "run": doc["run"]}, {"$set": {"run": None, "at": None}}))
                if result.modified_count:
                    logger.warning("limit %s: freed slot %s held by run %s (%s)", key, slot, doc["run"],
                                   status.value if status else "gone")
                    freed += 1
        return freed

    def _repair_due(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._repaired.get(key, -REPAIR_EVERY_S) < REPAIR_EVERY_S:
                return False
            self._repaired[key] = now
            return True

