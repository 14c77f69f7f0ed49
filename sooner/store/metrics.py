"""The ``metrics`` collection: one snapshot per process of what it counted (see :mod:`sooner.metrics`)."""

from __future__ import annotations

import builtins
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sooner.clock import aware
from sooner.model import ACTIVE, RunStatus
from sooner.store import schema

if TYPE_CHECKING:
    from sooner.store import Store

# Snapshots older than this belong to processes that stopped; they are not shown and are removed.
STALE_AFTER = timedelta(hours=1)


class MetricsRepo:
    """Process snapshots (``store.metrics``) and the run counts ``/metrics`` reads from the database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.METRICS)

    def publish(self, kind: str, name: str, samples: builtins.list[dict[str, Any]], *, host: str, pid: int,
                now: datetime | None = None) -> None:
        """Replace the snapshot of process ``kind:name`` (a worker's name, a scheduler's host:pid)."""
        document = {"kind": kind, "name": name, "host": host, "pid": pid, "samples": samples,
                    "updated_at": now or self.store.clock.now()}
        self.store.retry(lambda: self.collection.replace_one({"_id": f"{kind}:{name}"}, document, upsert=True))

    def snapshots(self, now: datetime | None = None) -> builtins.list[dict[str, Any]]:
        """The snapshots of processes that published in the last hour (older ones are deleted)."""
        oldest = (now or self.store.clock.now()) - STALE_AFTER
        documents = self.store.retry(lambda: builtins.list(self.collection.find({})))
        stale = [doc["_id"] for doc in documents
                 if not isinstance(doc.get("updated_at"), datetime) or aware(doc["updated_at"]) < oldest]
        if stale:
            self.store.retry(lambda: self.collection.delete_many({"_id": {"$in": stale}}))
        return [doc for doc in documents if doc["_id"] not in stale]

    def active_runs(self) -> dict[RunStatus, int]:
        """How many runs are waiting, queued and running (an indexed count each)."""
        runs = self.store.collection(schema.RUNS)
        counts = {}
        for status in ACTIVE:
            rows = self.store.retry(lambda: builtins.list(runs.aggregate(
                [{"$match": {"status": schema.eq(status.value)}}, {"$count": "n"}])))
            counts[status] = int(rows[0]["n"]) if rows else 0
        return counts
