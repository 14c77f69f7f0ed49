"""The Failed view: runs that failed, timed out or were lost and got no further attempt (``store.failed``).

A run enters the view when the retry listener decides it gets no further
attempt (its job's attempts are used up, the job has no retries, or it is
gone): :meth:`FailedRuns.mark_failed_view` sets ``failed_view``. It leaves the
view when it gets a next attempt (:meth:`FailedRuns.link_next_attempt`, from
an automatic or a manual retry) or someone dismisses it
(:meth:`FailedRuns.dismiss`: ``dismissed_at``/``dismissed_by``; the status is
unchanged). So the view is one equality on the indexed ``failed_view`` field,
which the embedded server answers from its index however many runs there are.
Filters, the text search, sorting and grouping are applied here, in Python,
to that (small) set: no text a user types ever reaches the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable

from pymongo import ReturnDocument

from sooner.errors import SoonerError
from sooner.model import Run
from sooner.model.failed import BulkResult, FailedPage, FailedQuery
from sooner.store import schema

if TYPE_CHECKING:
    from sooner.store import Store

# The view reads at most this many runs (without their data); more are reported as ``truncated``.
MAX_SCAN = 20_000
# What a row of the view needs (never the run's data).
VIEW_FIELDS = {"data": 0, "trigger.message": 0}


class FailedRuns:
    """Reads and writes of the Failed view on ``runs`` (``store.failed``); each write names its fields."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._runs = store.collection(schema.RUNS)

    # -- reading ----------------------------------------------------------------
    def page(self, query: FailedQuery | None = None) -> FailedPage:
        """The runs in the view that match ``query``, sorted, with group counts (see :class:`FailedPage`)."""
        runs, truncated = self._in_view()
        return (query or FailedQuery()).select(runs, truncated=truncated)

    def count(self) -> int:
        """How many runs are in the view (for the navigation badge)."""
        docs = self.store.retry(lambda: list(self._runs.aggregate([
            {"$match": {"failed_view": True}}, {"$count": "n"}])))
        return int(docs[0]["n"]) if docs else 0

    def _in_view(self) -> tuple[list[Run], bool]:
        docs = self.store.retry(lambda: list(self._runs.find({"failed_view": True}, dict(VIEW_FIELDS),
                                                             limit=MAX_SCAN + 1)))
        # nx-27017 ignores the nested exclusion: drop the message here too, so every store answers alike.
        for doc in docs:
            if isinstance(doc.get("trigger"), dict):
                doc["trigger"].pop("message", None)
        # The flag is what the index finds; the run as stored decides (a write racing the read).
        runs = [run for run in map(Run.from_doc, docs[:MAX_SCAN])
                if run.failed_view and run.status.failed and not run.next_attempt and run.dismissed_at is None]
        return runs, len(docs) > MAX_SCAN

    # -- writing ------------------------------------------------------------------
    def mark_failed_view(self, run_id: str) -> None:
        """The run got no further attempt: it enters the view. Sets ``failed_view`` (unless it has a next attempt)."""
        self.store.retry(lambda: self._runs.update_one({"_id": run_id, "next_attempt": None},
                                                       {"$set": {"failed_view": True}}))

    def link_next_attempt(self, run_id: str, next_id: str) -> Run | None:
        """Record ``next_id`` as the run's next attempt, unless it has one already; it leaves the view.

        Atomic: of two callers, one gets the run as it was before (its ``failed_view`` tells
        :meth:`unlink_next_attempt` what to restore) and the other None. Sets
        ``next_attempt``, clears ``failed_view``.
        """
        doc = self.store.retry(lambda: self._runs.find_one_and_update(
            {"_id": run_id, "next_attempt": None}, {"$set": {"next_attempt": next_id}, "$unset": {"failed_view": ""}},
            return_document=ReturnDocument.BEFORE))
        return Run.from_doc(doc) if doc else None

    def unlink_next_attempt(self, run_id: str, next_id: str, *, failed_view: bool) -> None:
        """Undo :meth:`link_next_attempt` when the next attempt could not be queued (``failed_view`` as it was)."""
        changes: dict[str, Any] = {"$unset": {"next_attempt": ""}}
        if failed_view:
            changes["$set"] = {"failed_view": True}
        self.store.retry(lambda: self._runs.update_one({"_id": run_id, "next_attempt": next_id}, changes))

    def dismiss(self, run_ids: Iterable[str], *, by: str, now: datetime | None = None) -> list[BulkResult]:
        """Take these runs out of the view (their status stays); one result per id, in order.

        Sets ``dismissed_at`` and ``dismissed_by``, clears ``failed_view``. A run that is not
        in the view is left alone and reported so (runs in any form ``store.runs.get`` takes).
        """
        moment = now or self.store.clock.now()
        return take_off_list(self.store, self._runs, run_ids, listed=lambda run: {"_id": run.id, "failed_view": True},
                             update={"$set": {"dismissed_at": moment, "dismissed_by": by},
                                     "$unset": {"failed_view": ""}},
                             refusal=_not_in_view, done=f"dismissed by {by}")


def take_off_list(store: Store, runs: Any, run_ids: Iterable[str], *, listed: Callable[[Run], dict[str, Any]],
                  update: dict[str, Any], refusal: Callable[[Run], str], done: str) -> list[BulkResult]:
    """Take runs off a list (the Failed view, the poison list): one result per distinct id, in order.

    Each run is one ``find_one_and_update`` on ``runs`` whose filter, ``listed(run)``, holds only
    while the run is on the list, so of two takers one wins; a run it does not match is left
    alone and ``refusal(run)`` says why. Ids in any form ``store.runs.get`` takes.
    """
    results = []
    for given in dict.fromkeys(run_ids):
        try:
            run = store.runs.get(given)
        except SoonerError as exc:  # not found, or an ambiguous prefix
            results.append(BulkResult(given, False, str(exc)))
            continue
        query = listed(run)
        doc = store.retry(lambda: runs.find_one_and_update(query, update))
        results.append(BulkResult(run.id, True, done) if doc is not None else BulkResult(run.id, False, refusal(run)))
    return results


def _not_in_view(run: Run) -> str:
    """Why a run is not in the Failed view, for a refused dismiss."""
    if run.dismissed_at is not None:
        return f"dismissed already (by {run.dismissed_by})"
    if run.next_attempt:
        return f"retried already, as run {run.next_attempt}"
    if not run.status.failed:
        return f"not in the Failed view: it is {run.status.value}"
    return "not in the Failed view"
