"""The ``samples`` collection: monitoring samples (:class:`~sooner.model.sample.Sample`), kept for a while.

Workers write their host's, their own process's and their runs' samples in one
``insert_many`` per heartbeat that has any (:meth:`SampleRepo.insert`); the
scheduler samples the queue depth (:meth:`SampleRepo.tick`). Charts read one
series at a time through :meth:`sooner.store.reads.Reads.samples`.

Retention is ``sample_retention_hours`` by ``t``: on MongoDB a TTL index, on the
embedded server and mongomock a plain index through which :meth:`prune_expired`
deletes the oldest samples (the same shaping and pruning as ``run_output``'s,
:mod:`sooner.store.retention`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Iterable

from sooner.errors import StoreError, StoreUnreachable
from sooner.model import RunStatus
from sooner.model.sample import Sample, SampleKind
from sooner.store import schema
from sooner.store.bulk import insert_all
from sooner.store.retention import prune_by_age, server_sweeps, shape_age_index

if TYPE_CHECKING:
    from sooner.store import Store

logger = logging.getLogger(__name__)

DEFAULT_RETENTION_HOURS = 24.0
PRUNE_EVERY = timedelta(hours=1)
_MARKER = "sample_retention"  # the META document remembering how the index on t was last shaped


class SampleRepo:
    """Domain operations on ``samples`` (``store.samples``).

    ``retention_hours`` is the ``sample_retention_hours`` setting (``open_store`` sets it).
    """

    def __init__(self, store: Store, retention_hours: float = DEFAULT_RETENTION_HOURS) -> None:
        self.store = store
        self.collection = store.collection(schema.SAMPLES)
        self.retention_hours = retention_hours
        self._pruned_at: datetime | None = None
        self._queue_sampled_at: datetime | None = None

    @property
    def retention(self) -> timedelta:
        return timedelta(hours=self.retention_hours)

    def insert(self, samples: Iterable[Sample]) -> int:
        """Store ``samples`` in one unordered ``insert_many`` (none: no round trip); returns how many."""
        documents = [sample.to_doc() for sample in samples]
        insert_all(self.store, self.collection, documents)
        return len(documents)

    def tick(self, now: datetime, *, every_s: float) -> None:
        """The scheduler's share, cheap to call on every tick: sample the queue depth every ``every_s``, prune hourly.

        The depth is fleet-wide, so one process samples it rather than every worker; the
        sample's ``_id`` is its time slot, so two schedulers store one sample per slot.
        """
        try:
            if self._queue_sampled_at is None or (now - self._queue_sampled_at).total_seconds() >= every_s:
                self._queue_sampled_at = now
                self.sample_queue(now, every_s=every_s)
            self.prune_expired(now)
        except StoreUnreachable:
            raise  # an outage: the tick's caller backs off
        except StoreError as exc:  # a refusal: monitoring must not stop the tick's firing
            logger.warning("could not sample the queue or prune samples: %s", exc)

    def sample_queue(self, now: datetime, *, every_s: float) -> None:
        """Store how many runs are queued and running now (the counts ``/metrics`` shows), one per ``every_s`` slot."""
        counts = self.store.metrics.active_runs()
        sample = Sample(SampleKind.QUEUE, "", now, depth=counts.get(RunStatus.QUEUED, 0),
                        running=counts.get(RunStatus.RUNNING, 0))
        slot = int(now.timestamp() // max(every_s, 0.001))
        insert_all(self.store, self.collection, [{"_id": f"queue:{slot}", **sample.to_doc()}])  # a duplicate: taken

    # -- retention ---------------------------------------------------------------
    def prune(self, older_than: datetime, *, batch: int = 1000) -> int:
        """Delete every sample taken before ``older_than``, oldest first; returns how many."""
        return prune_by_age(self.store, self.collection, "t", older_than, batch=batch)

    def prune_expired(self, now: datetime) -> int:
        """:meth:`prune` what is older than the retention, at most once per :data:`PRUNE_EVERY`; how many went."""
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return 0
        self._pruned_at = now
        removed = self.prune(now - self.retention)
        if removed:
            logger.info("removed %d monitoring samples older than %g hours", removed, self.retention_hours)
        return removed

    def ensure_retention(self, *, server_sweeps_ttl: bool | None = None) -> None:
        """Shape the index on ``t``: a TTL index of the retention where the server sweeps, else plain; once per value.

        ``server_sweeps_ttl`` answers the question instead of the server (tests).
        """
        sweeps = server_sweeps(self.store, self.collection) if server_sweeps_ttl is None else server_sweeps_ttl
        ttl_s = max(1, int(self.retention.total_seconds())) if sweeps else None
        shape_age_index(self.store, self.collection, schema.SAMPLE_AGE, ttl_s, _MARKER)
