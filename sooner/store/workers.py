"""The ``workers`` collection: one document per worker name, owned by one live process."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from sooner.errors import WorkerError
from sooner.model import Worker
from sooner.store import schema

if TYPE_CHECKING:
    from sooner.store import Store


class WorkerRepo:
    """Domain operations on ``workers``. ``instance`` is a random id of the owning process."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.WORKERS)

    def register(self, name: str, *, instance: str, host: str, pid: int, capacity: int, tags: builtins.list[str],
                 version: str, stale_after_s: float, now: datetime | None = None, pid_started_at: float | None = None,
                 holder_gone: Callable[[Worker], bool] | None = None) -> Worker:
        """Take the name for this process, unless a live process (fresh heartbeat) holds it.

        A holder for which ``holder_gone(holder)`` is true is replaced even with a fresh heartbeat
        (the caller checks the holder's pid and ``pid_started_at`` when it ran on the same host);
        the swap is conditional on the holder's ``instance``, so two starters cannot both win.
        Sets every field; raises WorkerError naming the live holder.
        """
        now = now or self.store.clock.now()
        fields = {"instance": instance, "host": host, "pid": pid, "pid_started_at": pid_started_at,
                  "capacity": capacity, "tags": tags, "version": version, "started_at": now, "heartbeat_at": now,
                  "stopped_at": None, "running": [], "cpu_percent": None, "rss_bytes": None}
        try:
            self.store.retry(lambda: self.collection.insert_one({"_id": name, **fields}))
            return Worker.from_doc({"_id": name, **fields})
        except DuplicateKeyError:
            pass
        stale = now - timedelta(seconds=stale_after_s)
        taken = self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": name, "$or": [{"heartbeat_at": {"$lt": stale}}, {"stopped_at": {"$ne": None}},
                                  {"instance": instance}]},
            {"$set": fields}, return_document=ReturnDocument.AFTER))
        holder = self.get(name) if taken is None else None
        if holder is not None and holder.instance and holder_gone is not None and holder_gone(holder):
            dead = holder.instance
            taken = self.store.retry(lambda: self.collection.find_one_and_update(
                {"_id": name, "instance": dead}, {"$set": fields}, return_document=ReturnDocument.AFTER))
            holder = self.get(name) if taken is None else None
        if taken is None:
            holder = holder or Worker(name)
            age = holder.heartbeat_age(now) or 0
            raise WorkerError(f"a worker named {name!r} is already running on {holder.host} "
                              f"(pid {holder.pid}, heartbeat {age:.0f}s ago); choose another name with -n, "
                              f"or stop it (it counts as gone {stale_after_s:.0f}s after its last heartbeat)")
        return Worker.from_doc(taken)

    def heartbeat(self, name: str, instance: str, *, running: builtins.list[str], stats: dict[str, Any] | None = None,
                  now: datetime | None = None) -> bool:
        """Refresh ``heartbeat_at``, ``running`` and CPU/memory samples. False if another process took the name."""
        fields = {"heartbeat_at": now or self.store.clock.now(), "running": running, **(stats or {})}
        result = self.store.retry(lambda: self.collection.update_one(
            {"_id": name, "instance": instance}, {"$set": fields}))
        return result.matched_count == 1

    def unregister(self, name: str, instance: str, now: datetime | None = None) -> None:
        """Mark the worker stopped (kept for the UI); sets ``stopped_at`` and clears ``running``."""
        self.store.retry(lambda: self.collection.update_one(
            {"_id": name, "instance": instance}, {"$set": {"stopped_at": now or self.store.clock.now(), "running": []}}))

    def get(self, name: str) -> Worker | None:
        doc = self.store.retry(lambda: self.collection.find_one({"_id": name}))
        return Worker.from_doc(doc) if doc else None

    def list(self) -> builtins.list[Worker]:
        return self.store.retry(lambda: [Worker.from_doc(d) for d in self.collection.find({}).sort("_id", 1)])
