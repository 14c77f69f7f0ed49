"""The ``run_output`` collection: a run's output as numbered chunks, kept for a while.

A chunk holds consecutive text of one stream (stdout, stderr or system); the
whole output of a run is its chunks in ``seq`` order. Writers number chunks
themselves (one writer per run: its worker), so readers can ask for
"everything after seq N" and never miss or repeat a line across reconnects.

The store's :class:`OutputPolicy` (the ``output_*`` settings) says how much a
run may store, which the worker enforces (:mod:`sooner.worker.streams`), and
how long chunks are kept. Retention goes by each chunk's ``t``, so it applies
to runs from before the setting too; runs' own documents are never removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Iterable

from sooner.store import schema
from sooner.store.bulk import insert_all
from sooner.store.group import GroupCommit
from sooner.store.retention import prune_by_age, server_sweeps, shape_age_index

if TYPE_CHECKING:
    from sooner.config import Settings
    from sooner.store import Store

# Keep each chunk document small enough to stream and render in pieces, and its JSON (at most 6 bytes
# per character, "\u001b") within one output page's budget (store.reads.OUTPUT_PAGE_BYTES, 1 MB).
MAX_CHUNK_CHARS = 160 * 1024
# How often prune_expired does its work; MongoDB's own TTL monitor runs every 60 s.
PRUNE_EVERY = timedelta(hours=1)
_MARKER = "output_retention"  # the META document remembering how the index on t was last shaped

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputPolicy:
    """How much of a run's output is stored and for how long: the ``output_*`` settings."""

    max_bytes_per_run: int
    max_line_bytes: int
    retention_days: float

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> OutputPolicy:
        """The policy of ``settings`` (the defaults without)."""
        if settings is None:
            from sooner.config import Settings

            settings = Settings()
        return cls(settings.output_max_bytes_per_run, settings.output_max_line_bytes, settings.output_retention_days)

    @property
    def retention(self) -> timedelta | None:
        """How long chunks are kept; None = forever."""
        return timedelta(days=self.retention_days) if self.retention_days > 0 else None


class OutputRepo:
    """Domain operations on ``run_output``, under the store's :class:`OutputPolicy`."""

    def __init__(self, store: Store, policy: OutputPolicy | None = None) -> None:
        self.store = store
        self.policy = policy or OutputPolicy.from_settings()
        self.collection = store.collection(schema.RUN_OUTPUT)
        self._pruned_at: datetime | None = None
        # Runs on a worker's threads flush at nearly the same moments: one insert carries them all.
        self._appends: GroupCommit[list[dict], None] = GroupCommit(self._insert_batches)

    def append(self, run_id: str, chunks: Iterable[tuple[int, str, str, datetime | None]]) -> None:
        """Insert chunks (seq, stream, text, t). A chunk already stored (a retried batch) is skipped.

        Appends of other runs made meanwhile on this process's other threads go in the same insert
        (:mod:`sooner.store.group`); this returns once these chunks are stored.
        """
        documents = [{"run": run_id, "seq": seq, "stream": stream, "text": text, "t": t or self.store.clock.now()}
                     for seq, stream, text, t in chunks]
        if documents:
            self._appends.submit(documents)

    def _insert_batches(self, batches: list[list[dict]]) -> list[None]:
        insert_all(self.store, self.collection, [doc for batch in batches for doc in batch])  # duplicates: stored
        return [None] * len(batches)

    def read(self, run_id: str, *, after_seq: int = -1, limit: int = 0) -> list[dict]:
        """Chunks with seq > after_seq, in order (at most ``limit`` if given)."""
        cursor = self.collection.find({"run": run_id, "seq": {"$gt": after_seq}},
                                      {"_id": 0, "seq": 1, "stream": 1, "text": 1, "t": 1}).sort("seq", 1)
        if limit:
            cursor = cursor.limit(limit)
        return self.store.retry(lambda: list(cursor.clone()))

    def last_seq(self, run_id: str) -> int:
        doc = self.store.retry(lambda: self.collection.find_one({"run": run_id}, sort=[("seq", -1)]))
        return doc["seq"] if doc else -1

    def text(self, run_id: str) -> str:
        """The whole output as one string (for tests and downloads of small runs)."""
        return "".join(chunk["text"] for chunk in self.read(run_id))

    # -- retention ---------------------------------------------------------------
    def prune(self, older_than: datetime, *, batch: int = 1000) -> int:
        """Delete every chunk written before ``older_than``, of any run; returns how many.

        Oldest first, ``batch`` at a time. A chunk without a date (never written
        by Sooner) counts as old. Runs' documents are kept.
        """
        return prune_by_age(self.store, self.collection, "t", older_than, batch=batch)

    def prune_expired(self, now: datetime) -> int:
        """Apply the retention: :meth:`prune` what is older than it, at most once per :data:`PRUNE_EVERY`.

        Cheap to call on every loop iteration (the scheduler's tick); returns
        how many chunks were removed (0 when not due or kept forever).
        """
        retention = self.policy.retention
        if retention is None or (self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY):
            return 0
        self._pruned_at = now
        removed = self.prune(now - retention)
        if removed:
            logger.info("removed %d output chunks older than %g days", removed, self.policy.retention_days)
        return removed

    def ensure_retention(self, *, server_sweeps: bool | None = None) -> None:
        """Shape the index on ``t`` for the retention (``open_store`` calls it); once per setting.

        Where the server expires documents in the background (MongoDB's TTL
        monitor), it is a TTL index whose ``expireAfterSeconds`` is the
        retention, changed with ``collMod`` (or dropped and created again where
        that does not take) when the setting changes. nx-27017 honours TTL
        indexes by purging on every read of the collection, a scan that doubles
        the cost of each output read, and mongomock never expires anything:
        there the index is plain and :meth:`prune_expired` removes old chunks.
        ``server_sweeps`` answers the question instead of the server (tests).
        """
        retention = self.policy.retention
        if retention is not None and server_sweeps is None:
            server_sweeps = self._server_sweeps()
        ttl_s = max(1, int(retention.total_seconds())) if retention is not None and server_sweeps else None
        shape_age_index(self.store, self.collection, schema.RUN_OUTPUT_AGE, ttl_s, _MARKER)

    def _server_sweeps(self) -> bool:
        return server_sweeps(self.store, self.collection)
