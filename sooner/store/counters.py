"""The ``counters`` collection: one document per job that hands out its run numbers (``hello.sh#42``).

A number is taken with one ``find_one_and_update`` ``$inc`` (upsert) on the
job's counter just before its run is inserted, so any number of processes
get distinct numbers (measured on the embedded server, tests/test_run_numbers.py).
A number taken is never given back: an insert that stores no run (a time
trigger's fire that another scheduler made first, refused by
``one_run_per_fire``; a dedupe-key holder returned instead of a new run)
leaves a gap. The runs' unique ``one_run_number`` index on (job, number) is
the backstop.

Runs stored before numbers existed get theirs once, at the schema upgrade
(:meth:`Counters.number_old_runs`, called by ``Store.ensure_indexes``), in the
order they were queued.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from collections.abc import Mapping

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from sooner.clock import aware
from sooner.store import schema
from sooner.store.bulk import Update, bulk_write

if TYPE_CHECKING:
    from sooner.store import Store

# Old runs are numbered in bulk writes of this many updates.
NUMBERING_BATCH = 1000
_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def counter_id(job: str) -> str:
    """The ``_id`` of ``job``'s run-number counter (prefixed, so other counters may share the collection)."""
    return f"run:{job}"


class Counters:
    """Run numbers per job (``store.counters``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.COUNTERS)

    def next_run_number(self, job: str) -> int:
        """Take the next run number of ``job`` (1 for its first run). Changes the counter's ``n``."""
        doc = self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": counter_id(job)}, {"$inc": {"n": 1}}, upsert=True, return_document=ReturnDocument.AFTER))
        return int(doc["n"])

    def take_run_numbers(self, wanted: Mapping[str, int]) -> dict[str, list[int]]:
        """Take ``wanted[job]`` consecutive run numbers for each job, in two round trips for all of them.

        For a scheduler tick that fires many jobs at once. One ``find`` reads the counters,
        then one unordered bulk write moves each from the value read to that value plus
        the count, as a compare-and-set (upsert from 0 for a job without a counter). A
        counter someone moved in between fails its compare-and-set (the upsert collides on
        ``_id``) and that job takes its numbers one by one, as :meth:`next_run_number`
        does, so a number is never handed out twice.
        """
        wanted = {job: count for job, count in wanted.items() if count > 0}
        if not wanted:
            return {}
        ids = {counter_id(job): job for job in wanted}
        current = {doc["_id"]: int(doc.get("n") or 0) for doc in self.store.retry(
            lambda: list(self.collection.find({"_id": {"$in": list(ids)}}, {"n": 1}).batch_size(len(ids) + 1)))}
        jobs = list(wanted)
        starts = [current.get(counter_id(job), 0) for job in jobs]
        refused = bulk_write(self.store, self.collection, [
            Update({"_id": counter_id(job), "n": start}, {"$set": {"n": start + wanted[job]}}, upsert=True)
            for job, start in zip(jobs, starts)])
        numbers: dict[str, list[int]] = {}
        for index, (job, start) in enumerate(zip(jobs, starts)):
            if index in refused:
                numbers[job] = [self.next_run_number(job) for _ in range(wanted[job])]
            else:
                numbers[job] = list(range(start + 1, start + wanted[job] + 1))
        return numbers

    def last_run_number(self, job: str) -> int:
        """The highest run number ``job`` handed out so far (0 for none)."""
        doc = self.store.retry(lambda: self.collection.find_one({"_id": counter_id(job)}))
        return int(doc["n"]) if doc else 0

    def number_old_runs(self) -> int:
        """Give every run without a ``number`` one, per job in ``queued_at`` order; returns how many were numbered.

        For the schema upgrade that introduced numbers: it runs before ``one_run_number``
        exists. A job is numbered only by the process that creates its counter (with
        ``n`` = its count of old runs), so two processes upgrading at once never number
        a job twice; a job whose counter exists already keeps its old runs unnumbered
        (they show their id and are found by it). Each update also matches on the run
        still having no number.
        """
        runs = self.store.collection(schema.RUNS)
        unnumbered = {"number": {"$exists": False}}
        numbered = 0
        for job in self.store.retry(lambda: runs.distinct("job", unnumbered)):
            if not isinstance(job, str):
                continue
            old = self.store.retry(lambda: list(runs.find({"job": job, **unnumbered}, {"_id": 1, "queued_at": 1})))
            old.sort(key=lambda d: (_aware(d.get("queued_at")), str(d["_id"])))
            try:
                self.store.retry(lambda: self.collection.insert_one({"_id": counter_id(job), "n": len(old)}))
            except DuplicateKeyError:
                continue  # another process numbers them, or new runs were numbered first
            updates = [({"_id": doc["_id"], **unnumbered}, {"$set": {"number": i}}) for i, doc in enumerate(old, start=1)]
            for start in range(0, len(updates), NUMBERING_BATCH):
                self._update_all(runs, updates[start:start + NUMBERING_BATCH])
            numbered += len(old)
        return numbered

    def _update_all(self, runs: Any, updates: list[tuple[dict, dict]]) -> None:
        bulk_write(self.store, runs, [Update(query, change) for query, change in updates])


def _aware(moment: datetime | None) -> datetime:
    return _EPOCH if moment is None else aware(moment)
